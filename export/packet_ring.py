"""The last frames of the run, kept in memory so the selected flows' packets can be saved.

The ring is a flow stage: for each packet that belongs to a flow it appends a reference to the
parsed packet (which holds the captured frame's bytes object, its time stamp, length, link type
and interface) and to the flow. Nothing is copied or decoded per packet; the frame bytes are the
ones the source already allocated. It is bounded twice: by frame count and by an estimate of the
memory the kept frames hold (frame bytes plus a fixed allowance for the parsed packet object),
and drops the oldest frames first.

A frame of a tunnel is handed to the flow stages once for the outer flow and once for each inner
flow, with the same bytes object; exports write each frame once.
"""
from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Any, Collection, Iterator

from capture.packet import ParsedPacket
from capture.reader import RawFrame
from capture.writer import PcapngWriter

#: bytes counted per kept frame on top of its data: the parsed packet object and its address
#: strings (sys.getsizeof of a ParsedPacket is ~350 bytes; two address strings ~60 each)
ENTRY_OVERHEAD = 480
#: defaults; config constants PACKET_RING_FRAMES / PACKET_RING_MB override them
DEFAULT_FRAMES = 50_000
DEFAULT_MB = 64


class PacketRing:
    """Bounded FIFO of (packet, flow) references; call :meth:`add` from the pipeline thread.

    Args:
        max_frames: frames kept at most.
        max_bytes: estimated memory the kept frames may hold.
        lock: the lock the pipeline holds while it calls :meth:`add` (the flow table's); readers
            take it to copy the ring.
    """

    __slots__ = ("max_frames", "max_bytes", "lock", "_pkts", "_flows", "_bytes", "evicted")

    def __init__(self, max_frames: int = DEFAULT_FRAMES, max_bytes: int = DEFAULT_MB * 1024 * 1024,
                 lock: Any = None) -> None:
        self.max_frames = max(1, int(max_frames))
        self.max_bytes = max(0, int(max_bytes))
        self.lock = lock
        # Both deques drop their oldest entry on their own (maxlen) when the count is reached,
        # in step, since every add appends to both.
        self._pkts: deque[ParsedPacket] = deque(maxlen=self.max_frames)
        self._flows: deque[Any] = deque(maxlen=self.max_frames)
        self._bytes = 0
        #: frames dropped for the byte bound (the count bound drops silently inside the deque)
        self.evicted = 0

    # ---- hot path: a flow stage --------------------------------------------------------------
    def add(self, pkt: ParsedPacket, flow: Any, forward: bool) -> None:
        pkts = self._pkts
        if len(pkts) == self.max_frames:           # the append below pushes out the oldest
            self._bytes -= len(pkts[0].data) + ENTRY_OVERHEAD
        pkts.append(pkt)
        self._flows.append(flow)
        self._bytes += len(pkt.data) + ENTRY_OVERHEAD
        if self._bytes > self.max_bytes:
            self._trim()

    def _trim(self) -> None:
        pkts, flows = self._pkts, self._flows
        while pkts and self._bytes > self.max_bytes:
            old = pkts.popleft()
            flows.popleft()
            self._bytes -= len(old.data) + ENTRY_OVERHEAD
            self.evicted += 1

    # ---- readers -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._pkts)

    @property
    def bytes_held(self) -> int:
        return self._bytes

    def _copy(self) -> tuple[list[ParsedPacket], list[Any]]:
        if self.lock is None:
            return list(self._pkts), list(self._flows)
        with self.lock:
            return list(self._pkts), list(self._flows)

    def frames_for(self, flow_keys: Collection[str]) -> Iterator[RawFrame]:
        """Frames of the flows with these ``flow_key`` s, oldest first, each frame once."""
        pkts, flows = self._copy()
        wanted = set(flow_keys)
        verdict: dict[int, bool] = {}      # id(flow) -> wanted, so each flow key is built once
        last_data: Any = None
        for pkt, flow in zip(pkts, flows):
            hit = verdict.get(id(flow))
            if hit is None:
                hit = verdict[id(flow)] = flow.flow_key in wanted
            if not hit:
                continue
            data = pkt.data
            if data is last_data:          # the inner flow of a tunnel frame already written
                continue
            last_data = data
            yield RawFrame(pkt.ts, data, pkt.wire_len, pkt.linktype, pkt.iface)

    def oldest_ts(self) -> float | None:
        pkts, _ = self._copy()
        return pkts[0].ts if pkts else None

    def stats(self) -> dict[str, int]:
        return {"frames": len(self._pkts), "bytes": self._bytes, "evicted_for_bytes": self.evicted,
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
