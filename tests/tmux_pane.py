"""A real terminal for tests: tmux sessions whose screen is read and typed into.

Every wait polls the pane with a deadline; nothing sleeps for a fixed time.
"""
from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator

import pytest

from conftest import require_tool

DEADLINE = 20.0


def tmux(*args: str, check: bool = True) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, check=check).stdout


class Pane:
    def __init__(self, name: str) -> None:
        self.name = name

    def screen(self) -> str:
        return tmux("capture-pane", "-p", "-t", self.name, check=False)

    def keys(self, *keys: str, literal: bool = False) -> None:
        tmux("send-keys", "-t", self.name, *(["-l"] if literal else []), *keys)

    def wait(self, cond: Callable[[str], bool], what: str, timeout: float = DEADLINE) -> str:
        end = time.monotonic() + timeout
        text = ""
        while time.monotonic() < end:
            text = self.screen()
            if cond(text):
                return text
            time.sleep(0.05)  # polling interval, not a wait for an event we could block on
        raise AssertionError(f"timed out waiting for {what}; screen:\n{text}")

    def wait_for(self, needle: str, timeout: float = DEADLINE) -> str:
        return self.wait(lambda t: needle in t, repr(needle), timeout)


@pytest.fixture
def pane(tmp_path: Path) -> Iterator[Pane]:
    require_tool("tmux")
    name = f"ptdash-{uuid.uuid4().hex[:8]}"
    tmux("new-session", "-d", "-s", name, "-x", "160", "-y", "48", "bash --norc --noprofile")
    p = Pane(name)
    # COLUMNS/LINES exported, as some shells and CI environments have them: the dashboard
    # inherits the start size as a snapshot and must still follow the terminal's size.
    p.keys("export PS1='$ ' COLUMNS=160 LINES=48", "Enter")
    try:
        yield p
    finally:
        tmux("kill-session", "-t", name, check=False)


