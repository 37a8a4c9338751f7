"""Keyboard input in cbreak mode: non-blocking reads with select, escape sequences decoded.

Keys come out as names: single characters ("q", "/", "A"), or "up", "down", "left", "right",
"pgup", "pgdn", "home", "end", "enter", "space", "esc", "tab", "shift_tab", "backspace".
The terminal's previous mode is restored in ``close`` (called from ``__exit__``), whatever
happened in between.
"""
from __future__ import annotations

import os
import select
import termios
import tty
from types import TracebackType

#: how long to wait for the rest of an escape sequence before treating ESC as the Esc key
ESC_TIMEOUT = 0.05

# Declared, not branched: every escape sequence we understand and the key it means.
SEQUENCES: dict[bytes, str] = {
    b"\x1b[A": "up", b"\x1b[B": "down", b"\x1b[C": "right", b"\x1b[D": "left",
    b"\x1bOA": "up", b"\x1bOB": "down", b"\x1bOC": "right", b"\x1bOD": "left",
    b"\x1b[5~": "pgup", b"\x1b[6~": "pgdn",
    b"\x1b[H": "home", b"\x1b[F": "end", b"\x1bOH": "home", b"\x1bOF": "end",
    b"\x1b[1~": "home", b"\x1b[4~": "end", b"\x1b[7~": "home", b"\x1b[8~": "end",
    b"\x1b[2~": "insert", b"\x1b[3~": "delete",
    b"\x1b[Z": "shift_tab",
}
SINGLE: dict[int, str] = {0x0d: "enter", 0x0a: "enter", 0x20: "space", 0x09: "tab",
                          0x7f: "backspace", 0x08: "backspace", 0x1b: "esc"}


def decode(data: bytes) -> list[str]:
    """Split a burst of input bytes into key names."""
    keys: list[str] = []
    i = 0
    n = len(data)
    while i < n:
        b = data[i]
        if b == 0x1b and i + 1 < n and data[i + 1] in (0x5b, 0x4f):  # ESC [ or ESC O
            j = i + 2
            # CSI: parameters (digits ;) then one final byte in 0x40-0x7e
            while j < n and (0x30 <= data[j] <= 0x3f):
                j += 1
            if j < n:
                seq = data[i:j + 1]
                keys.append(SEQUENCES.get(seq, "unknown"))
                i = j + 1
                continue
            keys.append("esc")  # incomplete sequence: give up on it
            i = n
            continue
        if b in SINGLE:
            keys.append(SINGLE[b])
            i += 1
            continue
        # UTF-8: take the whole character
        width = 1 if b < 0x80 else 2 if b >> 5 == 0b110 else 3 if b >> 4 == 0b1110 else 4
        ch = data[i:i + width].decode("utf-8", errors="replace")
        if ch.isprintable():
            keys.append(ch)
        i += width
    return keys


class InputHandler:
    """cbreak mode on ``fd`` while open; ``read(timeout)`` returns the keys typed meanwhile."""

    def __init__(self, fd: int | None = None) -> None:
        self.fd = fd if fd is not None else 0
        self._saved: list | None = None

    def open(self) -> "InputHandler":
        if os.isatty(self.fd):
            self._saved = termios.tcgetattr(self.fd)
            tty.setcbreak(self.fd, termios.TCSANOW)
        return self

    def close(self) -> None:
        if self._saved is not None:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
            self._saved = None

    def __enter__(self) -> "InputHandler":
        return self.open()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def read(self, timeout: float, wake: int | None = None) -> list[str]:
        """Wait up to ``timeout`` s for input; decode everything available.

        ``wake``: a non-blocking fd (a signal wakeup pipe) that ends the wait early when it
        becomes readable; it is drained here. Without it a signal cannot shorten the wait:
        select is retried after a Python signal handler returns (PEP 475).
        """
        fds = [self.fd] if wake is None else [self.fd, wake]
        ready, _, _ = select.select(fds, [], [], max(0.0, timeout))
        if wake is not None and wake in ready:
            _drain(wake)
        if self.fd not in ready:
            return []
        data = os.read(self.fd, 1024)
        if not data:
            return []
        # A lone ESC may be the start of a sequence whose rest is still in flight.
        while data.endswith(b"\x1b") or (data[-2:] in (b"\x1b[", b"\x1bO")) or _open_csi(data):
            more, _, _ = select.select([self.fd], [], [], ESC_TIMEOUT)
            if not more:
                break
            chunk = os.read(self.fd, 1024)
            if not chunk:
                break
            data += chunk
        return decode(data)


def _drain(fd: int) -> None:
    """Empty a non-blocking wakeup pipe (the bytes only say that a signal came)."""
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def _open_csi(data: bytes) -> bool:
    """True when data ends inside an unfinished CSI sequence (ESC [ digits...)."""
    k = data.rfind(b"\x1b")
    if k < 0 or k + 1 >= len(data) or data[k + 1] not in (0x5b, 0x4f):
        return False
    tail = data[k + 2:]
    return all(0x30 <= c <= 0x3f for c in tail)
