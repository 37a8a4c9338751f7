"""The last frames of the run, kept in memory so the selected flows' packets can be saved.

The ring is a flow stage: for each packet that belongs to a flow it appends one small tuple
(frame bytes, time stamp, wire length, link type, interface, flow). The frame bytes are the
object the source already allocated, so nothing is copied; the parsed packet itself is not
kept (with its address strings and option records it weighed ~5x the tuple, and a 50k-frame
ring held ~30 MiB of them). It is bounded twice: by frame count and by an estimate of the memory
the kept frames hold (frame bytes plus a fixed allowance per entry), and drops the oldest first.

A frame of a tunnel is handed to the flow stages once for the outer flow and once for each inner
flow, with the same bytes object; exports write each frame once.
"""
from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Any, Collection, Iterator

from capture.packet import ParsedPacket
from capture.reader import RawFrame

#: one kept frame: (data, ts, wire_len, linktype, iface, flow)
_Entry = tuple[bytes, float, int, int, int, Any]
from capture.writer import PcapngWriter

#: bytes counted per kept frame on top of its data: the 6-tuple (88 bytes), the deque slot and
#: the float time stamp (measured by bench/bench_memory.py: ~130 bytes per entry)
ENTRY_OVERHEAD = 136
#: defaults; config constants PACKET_RING_FRAMES / PACKET_RING_MB override them
DEFAULT_FRAMES = 50_000
DEFAULT_MB = 64


class PacketRing:
    """Bounded FIFO of kept frames with their flows; call :meth:`add` from the pipeline thread.

    Args:
        max_frames: frames kept at most.
        max_bytes: estimated memory the kept frames may hold.
        lock: the lock the pipeline holds while it calls :meth:`add` (the flow table's); readers
            take it to copy the ring.
    """

    __slots__ = ("max_frames", "max_bytes", "lock", "_ring", "_bytes", "evicted")

    def __init__(self, max_frames: int = DEFAULT_FRAMES, max_bytes: int = DEFAULT_MB * 1024 * 1024,
                 lock: Any = None) -> None:
        self.max_frames = max(1, int(max_frames))
        self.max_bytes = max(0, int(max_bytes))
        self.lock = lock
        # The deque drops its oldest entry on its own (maxlen) when the count is reached.
        self._ring: deque[_Entry] = deque(maxlen=self.max_frames)
        self._bytes = 0
        #: frames dropped for the byte bound (the count bound drops silently inside the deque)
        self.evicted = 0

    # ---- hot path: a flow stage --------------------------------------------------------------
    def add(self, pkt: ParsedPacket, flow: Any, forward: bool) -> None:
        ring = self._ring
        data = pkt.data
        if len(ring) == self.max_frames:           # the append below pushes out the oldest
            self._bytes -= len(ring[0][0]) + ENTRY_OVERHEAD
        ring.append((data, pkt.ts, pkt.wire_len, pkt.linktype, pkt.iface, flow))
        self._bytes += len(data) + ENTRY_OVERHEAD
        if self._bytes > self.max_bytes:
            self._trim()

    def _trim(self) -> None:
        ring = self._ring
        while ring and self._bytes > self.max_bytes:
            self._bytes -= len(ring.popleft()[0]) + ENTRY_OVERHEAD
            self.evicted += 1

    def clear(self) -> None:
        """Drop every kept frame (the bounds and the eviction count stay)."""
        self._ring.clear()
        self._bytes = 0

    # ---- readers -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._ring)

    @property
    def bytes_held(self) -> int:
        return self._bytes

    def _copy(self) -> list[_Entry]:
        if self.lock is None:
            return list(self._ring)
        with self.lock:
            return list(self._ring)

    def frames_for(self, flow_keys: Collection[str]) -> Iterator[RawFrame]:
        """Frames of the flows with these ``flow_key`` s, oldest first, each frame once."""
        wanted = set(flow_keys)
        verdict: dict[int, bool] = {}      # id(flow) -> wanted, so each flow key is built once
        last_data: Any = None
        for data, ts, wire_len, linktype, iface, flow in self._copy():
            hit = verdict.get(id(flow))
            if hit is None:
                hit = verdict[id(flow)] = flow.flow_key in wanted
            if not hit:
                continue
            if data is last_data:          # the inner flow of a tunnel frame already written
                continue
            last_data = data
            yield RawFrame(ts, data, wire_len, linktype, iface)

    def oldest_ts(self) -> float | None:
        ring = self._copy()
        return ring[0][1] if ring else None

    def stats(self) -> dict[str, int]:
        return {"frames": len(self._ring), "bytes": self._bytes, "evicted_for_bytes": self.evicted,
                "max_frames": self.max_frames,
                "max_bytes": self.max_bytes}


def write_flow_packets(ring: PacketRing, flow_keys: Collection[str], path: str | Path) -> int:
    """Write the kept frames of ``flow_keys`` to a pcapng file; returns how many were written.

    Frames that already left the ring are not in the file (the count tells); raises
    :class:`capture.errors.WriteError` when the file cannot be written.
    """
    writer = PcapngWriter(path)
    try:
        batch: list[RawFrame] = []
        for frame in ring.frames_for(flow_keys):
            batch.append(frame)
            if len(batch) >= 1024:
                writer.write(batch)
                batch = []
        if batch:
            writer.write(batch)
    finally:
        writer.close()
    return writer.written
