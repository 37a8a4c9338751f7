"""Agent tokens: read from files or the environment, never from the command line.

A token file holds one token per line, either bare (valid for any agent id) or as
``AGENT-ID TOKEN`` (valid for that agent only); ``#`` starts a comment. The environment
variable PACKETTRACER_RELAY_TOKEN holds one bare token.
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Mapping

from relay.errors import RelayError

ENV_TOKEN = "PACKETTRACER_RELAY_TOKEN"
#: shorter tokens are refused: a guessable token is no authentication
MIN_TOKEN_LENGTH = 16
ANY_AGENT = "*"


def _lines(path: Path) -> list[list[str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RelayError(f"cannot read token file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise RelayError(f"token file {path} is not UTF-8 text") from None
    out = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            out.append(line.split())
    return out


def _check(token: str, origin: str) -> str:
    if len(token) < MIN_TOKEN_LENGTH:
        raise RelayError(f"token in {origin} is shorter than {MIN_TOKEN_LENGTH} characters")
    return token


class TokenStore:
    """Server side: which tokens each agent id may present."""

    def __init__(self, tokens: Mapping[str, list[str]]) -> None:
        self._tokens = {k: list(v) for k, v in tokens.items()}
        if not any(self._tokens.values()):
            raise RelayError("no relay token: give --token-file FILE or set " + ENV_TOKEN)

    @classmethod
    def load(cls, files: list[str] | None = None,
             environ: Mapping[str, str] | None = None) -> "TokenStore":
        env = os.environ if environ is None else environ
        tokens: dict[str, list[str]] = {}
        for name in files or []:
            path = Path(name)
            for fields in _lines(path):
                if len(fields) == 1:
                    agent, token = ANY_AGENT, fields[0]
                elif len(fields) == 2:
                    agent, token = fields
                else:
                    raise RelayError(f"token file {path}: lines are 'TOKEN' or 'AGENT-ID TOKEN'")
                tokens.setdefault(agent, []).append(_check(token, str(path)))
        if not files and env.get(ENV_TOKEN):
            tokens[ANY_AGENT] = [_check(env[ENV_TOKEN].strip(), ENV_TOKEN)]
        return cls(tokens)

    def for_agent(self, agent: str) -> list[str]:
        return self._tokens.get(agent, []) + self._tokens.get(ANY_AGENT, [])


def agent_token(agent: str, file: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """Agent side: the token for ``agent`` from ``file`` (a bare line or its own line), or env."""
    env = os.environ if environ is None else environ
    if file:
        bare = None
        for fields in _lines(Path(file)):
            if len(fields) == 2 and fields[0] == agent:
                return _check(fields[1], file)
            if len(fields) == 1 and bare is None:
                bare = fields[0]
        if bare is None:
            raise RelayError(f"token file {file} has no token for agent {agent}")
        return _check(bare, file)
    token = env.get(ENV_TOKEN, "").strip()
    if not token:
        raise RelayError("no relay token: give --token-file FILE or set " + ENV_TOKEN)
    return _check(token, ENV_TOKEN)


def new_token() -> str:
    return secrets.token_urlsafe(32)
