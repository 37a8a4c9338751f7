"""-w: save captured frames to pcapng, one interface block per link type, rotating by size."""
from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO, Iterable

from capture.errors import WriteError
from capture.reader import RawFrame

_SHB = struct.pack("<IIIHHq", 0x0A0D0D0A, 28, 0x1A2B3C4D, 1, 0, -1) + struct.pack("<I", 28)


def _idb(linktype: int, snaplen: int = 262144) -> bytes:
    # if_tsresol = 9 (nanoseconds) so that nanosecond captures survive the round trip
    opts = struct.pack("<HHB3x", 9, 1, 9) + struct.pack("<HH", 0, 0)
    body = struct.pack("<HHI", linktype, 0, snaplen) + opts
    blen = 12 + len(body)
    return struct.pack("<II", 1, blen) + body + struct.pack("<I", blen)


def _epb(iface: int, frame: RawFrame) -> bytes:
    ns = int(round(frame.ts * 1e9))
    data = bytes(frame.data)
    pad = (-len(data)) % 4
    blen = 32 + len(data) + pad
    return (struct.pack("<IIIIIII", 6, blen, iface, ns >> 32, ns & 0xFFFFFFFF, len(data),
                        max(frame.wire_len, len(data)))
            + data + b"\0" * pad + struct.pack("<I", blen))


class PcapngWriter:
    """Appends frames; with ``max_mb`` it rotates to PATH.1, PATH.2, ... when a file is full."""

    def __init__(self, path: str | Path, max_mb: int = 0) -> None:
        self.base = Path(path)
        self.max_bytes = max_mb * 1024 * 1024
        self.index = 0
        self.written = 0
        self.files: list[Path] = []
        self._fh: BinaryIO | None = None
        self._ifaces: dict[int, int] = {}
        self._size = 0
        self._open()

    def _path(self) -> Path:
        return self.base if self.index == 0 else self.base.with_name(f"{self.base.name}.{self.index}")

    def _open(self) -> None:
        path = self._path()
        try:
            self._fh = open(path, "wb")
            self._fh.write(_SHB)
        except OSError as exc:
            raise WriteError(f"cannot write capture file {path}: {exc.strerror}") from None
        self.files.append(path)
        self._ifaces = {}
        self._size = len(_SHB)

    def write(self, frames: Iterable[RawFrame]) -> None:
        fh = self._fh
        if fh is None:
            return
        try:
            for f in frames:
                iface = self._ifaces.get(f.linktype)
                if iface is None:
                    iface = self._ifaces[f.linktype] = len(self._ifaces)
                    block = _idb(f.linktype)
                    fh.write(block)
                    self._size += len(block)
                block = _epb(iface, f)
                fh.write(block)
                self._size += len(block)
                self.written += 1
                if self.max_bytes and self._size >= self.max_bytes:
                    fh.close()
                    self.index += 1
                    self._open()
                    fh = self._fh
        except OSError as exc:
            raise WriteError(f"writing {self._path()} failed: {exc.strerror}") from None

    def close(self) -> None:
        if self._fh is not None:
            try:
                self._fh.close()
            except OSError:
                pass
            self._fh = None
