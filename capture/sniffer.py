"""Packet sources: a live interface through libpcap's ring in batches, or a capture file.

Both produce batches of :class:`~capture.reader.RawFrame` on a bounded queue; the sniffer
thread does no parsing (the pipeline does), so the only work between the kernel ring and the
queue is libpcap's ``next_batch`` copy. A full queue drops the batch and counts it.
"""
from __future__ import annotations

import queue
import select
import struct
import threading
import time
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Callable, Iterator

from capture.errors import CapturePermissionError, FilterError, InterfaceError
from capture.interfaces import list_interfaces
from capture.reader import CaptureFile, RawFrame
from config import (CAPTURE_BATCH_SIZE, CAPTURE_BUFFER_MB, CAPTURE_QUEUE_SIZE, CAPTURE_TIMEOUT_MS,
                    SNAP_LENGTH)
from utils.logger import get_logger

log = get_logger(__name__)

_META = struct.Struct("=IIII")

#: pcap_activate() status codes (pcap/pcap.h) -> what the user is told
_ACTIVATE_ERRORS = {
    -1: "generic libpcap error", -4: "the interface is already active",
    -5: "no such device", -6: "monitor mode is not supported",
    -7: "no permission: not permitted to capture", -8: "permission denied",
    -9: "the interface is not up", -10: "timestamp precision not supported",
    -11: "promiscuous mode: permission denied",
}

#: one queue item: a list of frames, or None = end of stream
Batch = list[RawFrame]


@dataclass(slots=True)
class CaptureStats:
    """Counters the header shows; drops are surfaced, never hidden."""

    received: int = 0          # frames handed to the pipeline
    kernel_dropped: int = 0    # pcap_stats ps_drop: the ring overflowed
    if_dropped: int = 0        # pcap_stats ps_ifdrop: dropped by the interface/driver
    queue_dropped: int = 0     # frames lost because the pipeline queue was full
    queue_depth: int = 0
    queue_capacity: int = 0
    file_damage: str = ""

    @property
    def dropped(self) -> int:
        return self.kernel_dropped + self.if_dropped + self.queue_dropped


class PacketSource:
    """Base: a thread fills ``queue`` with batches; ``stop()`` ends it early."""

    description = ""
    #: on stop, process what is already queued (live packets exist nowhere else)
    drain_on_stop = False

    def __init__(self, queue_size: int = CAPTURE_QUEUE_SIZE) -> None:
        self.queue: queue.Queue[Batch | None] = queue.Queue(maxsize=queue_size)
        self.stats = CaptureStats(queue_capacity=queue_size)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.linktypes: tuple[int, ...] = ()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._guarded_run, name=type(self).__name__,
                                        daemon=True)
        self._thread.start()

    def _guarded_run(self) -> None:
        try:
            self._run()
        except Exception as exc:  # boundary: a dying sniffer is shown as state, not a crash
            log.exception("capture thread failed")
            self.error = exc
        finally:
            self._put_end()

    def _run(self) -> None:
        raise NotImplementedError

    def _put_end(self) -> None:
        while True:
            try:
                self.queue.put(None, timeout=0.2)
                return
            except queue.Full:
                if self._stop.is_set():
                    # Make room: the consumer is gone or stopping; the end marker matters more.
                    try:
                        self.queue.get_nowait()
                    except queue.Empty:
                        pass

    def _offer(self, batch: Batch, block: bool) -> None:
        if block:
            while not self._stop.is_set():
                try:
                    self.queue.put(batch, timeout=0.2)
                    break
                except queue.Full:
                    continue
        else:
            try:
                self.queue.put_nowait(batch)
            except queue.Full:
                self.stats.queue_dropped += len(batch)
                return
        self.stats.received += len(batch)

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def refresh_stats(self) -> CaptureStats:
        self.stats.queue_depth = self.queue.qsize()
        return self.stats

    def batches(self) -> Iterator[Batch]:
        """Consumer side: yields batches until the end marker."""
        while True:
            item = self.queue.get()
            if item is None:
                return
            yield item


class FileSource(PacketSource):
    """Frames from a capture file; ``realtime`` replays at the original pace.

    The file is read in the consumer's own thread (:meth:`batches`): a reader thread would only
    contend for the GIL with the pipeline (on bench-1m the whole run took ~2 s of 46 less
    without it), and a file cannot overflow a ring.
    """

    def __init__(self, path: str | Path, realtime: bool = False, count: int = 0,
                 batch_size: int = CAPTURE_BATCH_SIZE, queue_size: int = CAPTURE_QUEUE_SIZE,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(queue_size)
        self.file = CaptureFile(path)  # raises CaptureFileError now, before any reading starts
        self.linktypes = self.file.info.linktypes
        self.description = str(path)
        self.realtime = realtime
        self.count = count
        self.batch_size = batch_size
        self._sleep = sleep
        self._clock = clock

    def start(self) -> None:
        """Nothing to start: :meth:`batches` reads the file."""

    def batches(self) -> Iterator[Batch]:
        try:
            yield from self._read()
        except Exception as exc:  # boundary: a failing read is shown as state, not a crash
            log.exception("reading the capture file failed")
            self.error = exc
        finally:
            self.stats.file_damage = self.file.info.damage

    def _read_fast(self) -> Iterator[Batch]:
        """As fast as the file can be read: batches cut by islice (no Python step per frame)."""
        frames = iter(self.file)
        left = self.count or -1
        size = self.batch_size
        stats = self.stats
        while left and not self._stop.is_set():
            batch = list(islice(frames, size if left < 0 else min(size, left)))
            if not batch:
                return
            if left > 0:
                left -= len(batch)
            stats.received += len(batch)
            yield batch

    def _read(self) -> Iterator[Batch]:
        if self.realtime:
            yield from self._read_realtime()
        else:
            yield from self._read_fast()

    def _read_realtime(self) -> Iterator[Batch]:
        """At the file's own pace: small batches, with sleeps over the gaps."""
        batch: Batch = []
        n = 0
        start_wall = start_ts = None
        limit = self.count
        size = min(16, self.batch_size)  # small batches keep the replay's pace smooth
        stats = self.stats
        for frame in self.file:
            if self._stop.is_set():
                break
            if start_ts is None:
                start_wall, start_ts = self._clock(), frame.ts
            delay = (frame.ts - start_ts) - (self._clock() - start_wall)
            if delay > 0.002:
                if batch:
                    stats.received += len(batch)
                    yield batch
                    batch = []
                # Sleep in slices so stop() is honoured during long gaps.
                while delay > 0 and not self._stop.is_set():
                    self._sleep(min(delay, 0.1))
                    delay = (frame.ts - start_ts) - (self._clock() - start_wall)
            batch.append(frame)
            n += 1
            if len(batch) >= size:
                stats.received += len(batch)
                yield batch
                batch = []
            if limit and n >= limit:
                break
        if batch:
            stats.received += len(batch)
            yield batch


class LiveSource(PacketSource):
    """Live capture through libpcap (pcapy-ng ``next_batch``: one C call per batch)."""

    drain_on_stop = True

    def __init__(self, interface: str, bpf: str = "", snaplen: int = SNAP_LENGTH,
                 promisc: bool = True, timeout_ms: int = CAPTURE_TIMEOUT_MS,
                 buffer_mb: int = CAPTURE_BUFFER_MB, batch_size: int = CAPTURE_BATCH_SIZE,
                 queue_size: int = CAPTURE_QUEUE_SIZE, count: int = 0) -> None:
        super().__init__(queue_size)
        import pcapy  # imported here so that file reading works without libpcap installed
        self._pcapy = pcapy
        self.interface = interface
        self.description = interface
        self.batch_size = batch_size
        self.count = count
        self.handle = self._open(interface, bpf, snaplen, promisc, timeout_ms, buffer_mb)
        self.linktypes = (self.handle.datalink(),)

    def _open(self, iface: str, bpf: str, snaplen: int, promisc: bool, timeout_ms: int,
              buffer_mb: int):  # noqa: ANN202 - pcapy's Reader type is not exported
        pcapy = self._pcapy
        known = [i.name for i in list_interfaces()]
        if known and iface not in known and iface != "any":
            raise InterfaceError(f"unknown interface '{iface}' (available: {', '.join(known)})")
        try:
            h = pcapy.create(iface)
            h.set_snaplen(snaplen)
            h.set_promisc(promisc)
            h.set_timeout(timeout_ms)
            h.set_buffer_size(buffer_mb * 1024 * 1024)
            rc = h.activate()
            # pcapy-ng returns pcap_activate's status instead of raising: <0 is an error.
            if isinstance(rc, int) and rc < 0:
                raise pcapy.PcapError(_ACTIVATE_ERRORS.get(rc, f"pcap_activate failed ({rc})"))
        except pcapy.PcapError as exc:
            text = str(exc)
            low = text.lower()
            if "permission" in low or "not permitted" in low:
                raise CapturePermissionError(
                    f"no permission to capture on {iface}: run with sudo, or read a file with -r") from None
            if "no such device" in low or "doesn't exist" in low:
                raise InterfaceError(f"unknown interface '{iface}' (available: {', '.join(known)})") from None
            raise InterfaceError(f"cannot open {iface}: {text}") from None
        if bpf:
            try:
                h.setfilter(bpf)
            except (pcapy.PcapError, getattr(pcapy, "BPFError", pcapy.PcapError)) as exc:
                raise FilterError(f"invalid BPF filter '{bpf}': {exc}") from None
        return h

    def _run(self) -> None:
        h = self.handle
        linktype = self.linktypes[0]
        meta_unpack = _META.unpack_from
        n = 0
        limit = self.count
        last_stats = 0.0
        # Non-blocking reads behind select(): a quiet interface (or a filter that matches
        # nothing) must not park the thread inside libpcap where stop() cannot reach it.
        h.setnonblock(1)
        fd = h.getfd()
        while not self._stop.is_set():
            pkts, meta = h.next_batch(self.batch_size)
            if not meta:
                select.select([fd], [], [], 0.1)
            if meta:
                # next_batch reports (sec, usec, offset, caplen); with a 256 KiB snaplen the
                # captured length is the wire length for every frame Linux delivers.
                batch = []
                for i in range(0, len(meta), 16):
                    sec, usec, off, caplen = meta_unpack(meta, i)
                    batch.append(RawFrame(sec + usec * 1e-6, pkts[off:off + caplen], caplen,
                                          linktype, 0))
                if limit and n + len(batch) >= limit:
                    batch = batch[:limit - n]
                n += len(batch)
                self._offer(batch, block=False)
                if limit and n >= limit:
                    break
            now = time.monotonic()
            if now - last_stats > 0.5:
                last_stats = now
                self._pcap_stats()
        self._pcap_stats()

    def _pcap_stats(self) -> None:
        try:
            _recv, drop, ifdrop = self.handle.stats()
        except self._pcapy.PcapError:
            return
        self.stats.kernel_dropped = drop
        self.stats.if_dropped = ifdrop
