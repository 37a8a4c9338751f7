"""The last frames of the run, kept in memory so the selected flows' packets can be saved.

The ring is fed once per batch (:meth:`PacketRing.add_batch`) with the batch's frames and, in
step, the flow each belongs to: a frame of a tunnel comes once for the outer flow and once for
each inner flow. It keeps (frame, flow) pairs; the frame is the object the source already
allocated, so nothing is copied, and the parsed packet is not kept (with its address strings and
option records it weighed ~5x the pair). Per batch, not per packet: a per-packet stage call with
its tuple cost ~2 us a packet, the batch's two C-level list walks cost ~0.1 us.

It is bounded twice: by frame count and by an estimate of the memory the kept frames hold (frame
bytes plus a fixed allowance per entry), and drops the oldest first. Exports write each frame once.
"""
from __future__ import annotations

from collections import deque
from itertools import islice
from operator import attrgetter, itemgetter
from pathlib import Path
from typing import Any, Collection, Iterator

from capture.reader import RawFrame
from capture.writer import PcapngWriter

#: one kept frame and its flow
_Entry = tuple[RawFrame, Any]

_frame = itemgetter(0)
_data = attrgetter("data")

#: bytes counted per kept frame on top of its data: the frame record (56) with its float time
#: stamp (24), the pair (56) and the deque slot (measured by bench/bench_memory.py)
ENTRY_OVERHEAD = 144
#: defaults; config constants PACKET_RING_FRAMES / PACKET_RING_MB override them
DEFAULT_FRAMES = 50_000
DEFAULT_MB = 64


class PacketRing:
    """Bounded FIFO of kept frames with their flows; call :meth:`add_batch` from the pipeline.

    Args:
        max_frames: frames kept at most.
        max_bytes: estimated memory the kept frames may hold.
        lock: the lock the pipeline holds while it calls :meth:`add_batch` (the flow table's);
            readers take it to copy the ring.
    """

    __slots__ = ("max_frames", "max_bytes", "lock", "_ring", "_bytes", "evicted")

    def __init__(self, max_frames: int = DEFAULT_FRAMES, max_bytes: int = DEFAULT_MB * 1024 * 1024,
                 lock: Any = None) -> None:
        self.max_frames = max(1, int(max_frames))
        self.max_bytes = max(0, int(max_bytes))
        self.lock = lock
        # The deque drops its oldest entries on its own (maxlen) when the count is reached.
        self._ring: deque[_Entry] = deque(maxlen=self.max_frames)
        self._bytes = 0
        #: frames dropped for the byte bound (the count bound drops silently inside the deque)
        self.evicted = 0

    # ---- pipeline side: once per batch ---------------------------------------------------------
    def add_batch(self, frames: list[RawFrame], flows: list[Any]) -> None:
        """Keep ``frames[i]`` as a packet of ``flows[i]`` (lists of equal length)."""
        ring = self._ring
        n = len(frames)
        if not n:
            return
        # what the deque's count bound is about to push out
        overflow = len(ring) + n - self.max_frames
        if overflow > 0:
            gone = min(overflow, len(ring))
            self._bytes -= sum(map(len, map(_data, map(_frame, islice(ring, gone))))) \
                + gone * ENTRY_OVERHEAD
            if n > self.max_frames:  # a batch larger than the ring keeps only its tail
                frames = frames[-self.max_frames:]
                flows = flows[-self.max_frames:]
                n = len(frames)
        ring.extend(zip(frames, flows))
        self._bytes += sum(map(len, map(_data, frames))) + n * ENTRY_OVERHEAD
        if self._bytes > self.max_bytes:
            self._trim()

    def _trim(self) -> None:
        ring = self._ring
        while ring and self._bytes > self.max_bytes:
            self._bytes -= len(ring.popleft()[0].data) + ENTRY_OVERHEAD
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
        last: Any = None
        for frame, flow in self._copy():
            hit = verdict.get(id(flow))
            if hit is None:
                hit = verdict[id(flow)] = flow.flow_key in wanted
            if not hit:
                continue
            if frame is last:              # the inner flow of a tunnel frame already written
                continue
            last = frame
            yield frame

    def oldest_ts(self) -> float | None:
        ring = self._copy()
        return ring[0][0].ts if ring else None

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
