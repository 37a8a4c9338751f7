"""File logging: the screen belongs to the dashboard, so logs go to a rotating file.

Library modules call :func:`get_logger`; only the entry point calls :func:`setup_logging`.
Repeated identical warnings are throttled so a packet storm cannot fill the disk.
"""
from __future__ import annotations

import logging
import os
import time
from logging.handlers import RotatingFileHandler
from pathlib import Path

ROOT_NAME = "packettracer"


def get_logger(name: str) -> logging.Logger:
    """A named child of the ``packettracer`` logger (``get_logger(__name__)``)."""
    return logging.getLogger(f"{ROOT_NAME}.{name}" if not name.startswith(ROOT_NAME) else name)


class ThrottleFilter(logging.Filter):
    """Lets a given (logger, message template) through at most once per ``interval`` seconds."""

    def __init__(self, interval: float = 10.0) -> None:
        super().__init__()
        self.interval = interval
        self._last: dict[tuple[str, str], float] = {}
        self._suppressed: dict[tuple[str, str], int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, str(record.msg))
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        self._last[key] = now
        n = self._suppressed.pop(key, 0)
        if n:
            record.msg = f"{record.msg} (repeated {n} more times)"
        if len(self._last) > 10000:
            self._last.clear()
        return True


def invoking_user_home() -> Path:
    """Home of the user who ran sudo (so files land in their home, not root's)."""
    sudo_user = os.environ.get("SUDO_USER")
    if sudo_user and os.geteuid() == 0:
        try:
            import pwd
            return Path(pwd.getpwnam(sudo_user).pw_dir)
        except KeyError:
            pass
    return Path.home()


def expand_user_path(path: str) -> Path:
    """``~`` means the invoking user's home even under sudo."""
    if path.startswith("~"):
        return invoking_user_home() / path[2:] if path.startswith("~/") else invoking_user_home()
    return Path(path)


def chown_to_invoking_user(path: Path) -> None:
    """Give a file created under sudo back to the user who ran sudo."""
    uid, gid = os.environ.get("SUDO_UID"), os.environ.get("SUDO_GID")
    if uid and gid and os.geteuid() == 0:
        try:
            os.chown(path, int(uid), int(gid))
        except OSError:
            pass


def setup_logging(log_file: str, verbosity: int = 0, max_bytes: int = 5 * 1024 * 1024,
                  backups: int = 3) -> Path | None:
    """Attach the rotating file handler; returns the path, or None if it cannot be written."""
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    root = logging.getLogger(ROOT_NAME)
    root.setLevel(level)
    root.propagate = False
    for h in list(root.handlers):
        root.removeHandler(h)
    path = expand_user_path(log_file)
    try:
        created = not path.parent.exists()
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if created:
            chown_to_invoking_user(path.parent)
        handler = RotatingFileHandler(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
        chown_to_invoking_user(path)
    except OSError:
        root.addHandler(logging.NullHandler())
        return None
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(ThrottleFilter())
    root.addHandler(handler)
    return path
