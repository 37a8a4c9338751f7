"""The packet-side trackers, and a second process that runs them while a file is read.

Four trackers never look at a flow: packet statistics, hops, DNS and devices. They take each
parsed packet as it is. When a capture file is read (at full speed, not --realtime), a second
process reads the same file and runs them, while this process runs the flow table and everything that
hangs off it. It uses the machine's second core; on bench-1m the packet side is about a third
of the work per packet, and the smaller working set makes each process faster still.

Both processes read the file in the same batches. Before this process works on a batch it tells
the other one the frame count so far, and the other process never goes past the count it was
told. So a run stopped by Ctrl+C (or by an error) ends with both sides at the same frame, and
the packet-side results are exactly what one process would have had. At the end the other
process sends its trackers' state, which is copied into this process's trackers (the objects
that exports, the database and the enricher already hold); for a dashboard it also sends its
state every second while it reads, so the views fill as the file is read. If the other process
fails or dies, this process reads the file again up to the same frame and runs the packet side
itself.
"""
from __future__ import annotations

import logging
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from capture.packet import ParsedPacket
from capture.reader import RawFrame
from capture.sniffer import FileSource
from config import Settings
from utils.logger import get_logger, setup_logging

log = get_logger(__name__)

#: with FILE_READ_JOBS = 0 (automatic), files at least this big are read by two processes: below
#: it, starting the second interpreter (~0.5 s of its own core) gains nothing
AUTO_MIN_BYTES = 16 * 1024 * 1024
#: attributes a tracker is handed when it is built (locks, lookup databases, callbacks): they
#: stay this process's own when the other process's state is copied in
_WIRING = frozenset({"lock", "oui", "on_message"})
#: the parent's message per batch: frames started on so far; -(n + 1) ends the run at n frames
_COUNT = struct.Struct("<q")
#: the child's messages: their length, then ("snapshot" | "ok" | "error", state or reason)
_LEN = struct.Struct("<Q")
ROOT = Path(__file__).resolve().parent
#: seconds between the other process's snapshots while a dashboard shows a file being read
SNAPSHOT_EVERY = 1.0


@dataclass
class PacketSide:
    """The trackers that take parsed packets and never a flow, with their pipeline hooks."""

    packet_stats: Any
    hops: Any
    dns: Any
    devices: Any
    #: the lock readers take (the flow table's): held while the trackers take a batch
    lock: Any
    stages: list[Callable[[ParsedPacket], None]] = field(default_factory=list)
    batch_stages: list[Callable[[list[ParsedPacket]], None]] = field(default_factory=list)

    def trackers(self) -> dict[str, Any]:
        return {name: obj for name, obj in (("packet_stats", self.packet_stats),
                                            ("hops", self.hops), ("dns", self.dns),
                                            ("devices", self.devices)) if obj is not None}

    def state(self) -> dict[str, dict[str, Any]]:
        """Everything the trackers learnt, without what they were handed (:data:`_WIRING`)."""
        return {name: {k: v for k, v in vars(obj).items() if k not in _WIRING}
                for name, obj in self.trackers().items()}

    def adopt(self, state: dict[str, dict[str, Any]]) -> None:
        """Take over another process's :meth:`state`, in place: the tracker objects stay the
        ones that exports, the database and the enricher hold."""
        mine = self.trackers()
        with self.lock:
            for name, attrs in state.items():
                obj = mine[name]
                # the DNS tracker's readers take its own lock
                own = getattr(obj, "lock", None)
                with own if own is not None and own is not self.lock else nullcontext():
                    for k, v in attrs.items():
                        setattr(obj, k, v)


def build_packet_side(settings: Settings, lock: Any) -> PacketSide:
    """The packet-side trackers of a run; ``lock`` is the one readers take (the flow table's)."""
    from analysis.devices import DeviceInventory
    from tracking.hops import HopAnalyzer
    from tracking.packet_stats import PacketAnalyzer

    try:
        from tracking.dns_tracker import DNSTracker
        dns = DNSTracker(max_records=settings.DNS_MAX_RECORDS)
    except ImportError:  # the DNS tracker is optional (dnspython-free installs)
        dns = None
    side = PacketSide(packet_stats=PacketAnalyzer(lock=lock), hops=HopAnalyzer(lock=lock),
                      dns=dns, devices=DeviceInventory(), lock=lock)
    side.batch_stages = [side.packet_stats.process_batch]
    side.stages = [side.hops.process]
    if dns is not None:
        side.stages.append(dns.process)
    side.stages.append(side.devices.observe)
    return side


def jobs_for(path: str, jobs: int) -> int:
    """Processes to read ``path`` with: ``jobs`` 1 or 2 as asked, 0 = two when the machine has a
    second core and the file is big enough to repay starting the second process."""
    if jobs:
        return 1 if jobs == 1 else 2
    try:
        big = os.path.getsize(path) >= AUTO_MIN_BYTES
    except OSError:
        return 1
    return 2 if big and (os.cpu_count() or 1) >= 2 else 1


class _NoFlows:
    """The flow table of a pipeline that runs only the packet side."""

    total_flows = 0

    def __init__(self, lock: Any) -> None:
        self.lock = lock

    @staticmethod
    def process(pkt: ParsedPacket) -> None:
        return None

    def maybe_expire(self, now: float) -> None:
        """No flows to expire."""

    def finish(self) -> None:
        """No flows to retire."""


def run_packet_side(side: PacketSide, batches: Iterable[list[RawFrame]],
                    allowed: Callable[[int], int | None],
                    after_batch: Callable[[], None] | None = None) -> int:
    """Feed ``batches`` to ``side``'s trackers; returns the frames processed.

    ``allowed(n)`` answers how many frames in all may be processed when ``n`` would be wanted: at
    least ``n`` to go on, fewer (or None when the count is open) to stop at that frame.
    ``after_batch`` is called after each batch (the child's snapshots for a dashboard).
    """
    from pipeline import Pipeline, restore_gc, tune_gc
    pipeline = Pipeline(_NoFlows(side.lock), stages=side.stages,  # type: ignore[arg-type]
                        batch_stages=side.batch_stages)
    done = 0
    gc_before = tune_gc()  # as Pipeline.run does for the flow side
    try:
        for batch in batches:
            want = done + len(batch)
            limit = allowed(want)
            if limit is not None and limit < want:
                batch = batch[:max(0, limit - done)]
                want = limit
            if batch:
                pipeline.process_frames(batch)
                if after_batch is not None:
                    after_batch()
            done = want
            if limit is not None and limit <= done:
                break
    finally:
        restore_gc(gc_before)
    pipeline.finish()
    return done


def _write_message(out: Any, kind: str, body: Any) -> None:
    """One framed message on the result pipe: length, then the pickle of ``(kind, body)``."""
    try:
        payload = pickle.dumps((kind, body), pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # boundary: a state that does not pickle is an error reply
        payload = pickle.dumps(("error", f"{type(exc).__name__}: {exc}"))
    out.write(_LEN.pack(len(payload)))
    out.write(payload)
    out.flush()


def child_main(result_fd: int) -> None:
    """The second process (``python -c 'import sidecar; sidecar.child_main(FD)'``): the packet
    side over the file the parent reads, paced by the counts on stdin; its messages go to the
    pipe ``result_fd`` (not stdout, where a stray line from any library would spoil them)."""
    # Ctrl+C reaches the whole process group; the parent decides when this side stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stdin = sys.stdin.buffer
    path, values, count, batch_size, verbosity, every = pickle.load(stdin)
    # the run's log file, appended to and never rotated from here (the parent rotates it)
    setup_logging(values["LOG_FILE"], verbosity, max_bytes=0)
    out = os.fdopen(result_fd, "wb")
    told = [0, False]  # frames the parent has started on, and whether it has ended

    def allowed(want: int) -> int | None:
        while told[0] < want and not told[1]:
            raw = stdin.read(_COUNT.size)
            if len(raw) < _COUNT.size:  # the parent is gone
                raise EOFError("the reading process closed the pipe")
            n = _COUNT.unpack(raw)[0]
            told[0], told[1] = (n, False) if n >= 0 else (-n - 1, True)
        return told[0] if told[1] or told[0] < want else None

    try:
        side = build_packet_side(Settings(values, {}), threading.RLock())
        after_batch = None
        if every > 0:  # a dashboard shows the packet side while the file is read
            last = [time.monotonic()]

            def after_batch() -> None:
                now = time.monotonic()
                if now - last[0] >= every:
                    _write_message(out, "snapshot", side.state())
                    last[0] = time.monotonic()  # pickling time is not counted as reading time
        source = FileSource(path, count=count, batch_size=batch_size)
        run_packet_side(side, source.batches(), allowed, after_batch)
        while not told[1]:  # the file ended here first: wait for the parent's last count
            allowed(told[0] + 1)
        kind, body = "ok", side.state()
    except Exception as exc:  # boundary: the parent runs the packet side itself instead
        kind, body = "error", f"{type(exc).__name__}: {exc}"
    try:
        _write_message(out, kind, body)
        out.close()
    except OSError:  # the parent is gone and with it any use for the result
        pass
    # The parent waits for this process to end: skip freeing every object one by one.
    logging.shutdown()
    os._exit(0)


class Sidecar:
    """This process's end of the second process: tap every batch, then :meth:`join_into`."""

    def __init__(self, path: str, settings: Settings, count: int, batch_size: int,
                 verbosity: int = 0,
                 on_snapshot: Callable[[dict[str, dict[str, Any]]], None] | None = None,
                 snapshot_every: float = SNAPSHOT_EVERY) -> None:
        """``on_snapshot`` (a dashboard's): called from a reader thread with the other process's
        state every ``snapshot_every`` seconds while the file is read; without it the state
        comes once, at the end."""
        self.path = path
        self._settings = settings
        self.batch_size = batch_size
        self.sent = 0
        self.error: str | None = None
        self.snapshots = 0
        self._final: tuple[str, Any] = ("error", "packet-side process lost (no reply)")
        self._reader: threading.Thread | None = None
        # A fresh interpreter (not fork: this process has threads; not multiprocessing's spawn:
        # that re-runs the parent's main module, which need not be main.py).
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(ROOT), env.get("PYTHONPATH"))))
        read_end, write_end = os.pipe()
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", f"import sidecar; sidecar.child_main({write_end})"],
                stdin=subprocess.PIPE, env=env, pass_fds=(write_end,))
        except BaseException:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)  # the child's copy is the only writer: EOF when it is gone
        assert self._proc.stdin is not None
        self._to, self._from = self._proc.stdin, os.fdopen(read_end, "rb")
        every = snapshot_every if on_snapshot is not None else 0.0
        self._send(pickle.dumps((path, dict(settings.values), count, batch_size, verbosity, every)))
        if on_snapshot is not None:
            self._reader = threading.Thread(target=self._read_all, args=(on_snapshot,),
                                            name="packet-side-reader", daemon=True)
            self._reader.start()
        log.info("reading %s in two processes: the packet side runs in pid %d", path, self._proc.pid)

    def _read_message(self) -> tuple[str, Any]:
        try:
            head = self._from.read(_LEN.size)
            if len(head) == _LEN.size:
                (size,) = _LEN.unpack(head)
                data = self._from.read(size)
                if len(data) == size:
                    from pipeline import gc_paused
                    # the other process's trackers, tens of thousands of objects at once
                    # (bench-1m: 0.32 s to load with the collector on, most of it collections)
                    with gc_paused():
                        return pickle.loads(data)
            raise EOFError
        except (OSError, EOFError, ValueError, pickle.UnpicklingError) as exc:
            # ValueError: close() shut the pipe under a waiting reader thread
            return "error", f"packet-side process lost ({type(exc).__name__})"

    def _read_all(self, on_snapshot: Callable[[dict[str, dict[str, Any]]], None]) -> None:
        """Reader thread: hand over snapshots until the final reply (or the end of the pipe)."""
        while True:
            kind, body = self._read_message()
            if kind != "snapshot":
                self._final = (kind, body)
                return
            on_snapshot(body)
            self.snapshots += 1

    def _send(self, data: bytes) -> None:
        if self.error is None:
            try:
                self._to.write(data)
                self._to.flush()
            except OSError as exc:  # the other process is gone: the side is re-run here
                self.error = f"packet-side process lost ({exc})"

    def tap(self, batch: list[RawFrame]) -> None:
        """Pipeline batch tap: this process is about to process ``batch``."""
        self.sent += len(batch)
        self._send(_COUNT.pack(self.sent))

    def join_into(self, side: PacketSide) -> str:
        """End the run at the frames processed here and take the other process's results into
        ``side``; returns the processes it took, for the summary: "2", or "1 (why)" when the
        packet side had to run here again."""
        t = time.perf_counter()
        state = self._collect()
        if state is not None:
            side.adopt(state)
            log.info("packet side of %d frames taken over from pid %d in %.2f s (after %d "
                     "snapshots)", self.sent, self._proc.pid, time.perf_counter() - t,
                     self.snapshots)
            return "2"
        log.warning("%s; running the packet side in this process", self.error)
        if self.snapshots:  # start again from nothing: the file is read again from its start
            side.adopt(build_packet_side(self._settings, side.lock).state())
        if self.sent:
            source = FileSource(self.path, count=self.sent, batch_size=self.batch_size)
            run_packet_side(side, source.batches(), lambda n: None)
        return f"1 ({self.error})"

    def _collect(self) -> dict[str, dict[str, Any]] | None:
        self._send(_COUNT.pack(-self.sent - 1))
        kind, body = "error", self.error
        if self._reader is not None:
            self._reader.join()  # it ends with the final reply or at the end of the pipe
            kind, body = self._final
        elif self.error is None:
            kind, body = self._read_message()
        if self.error is None:
            self.error = None if kind == "ok" else body
        self.close()
        return body if self.error is None else None

    def close(self) -> None:
        """Stop the other process (a no-op once it has ended)."""
        for f in (self._to, self._from):
            try:
                f.close()
            except OSError:
                pass
        try:
            self._proc.wait(2.0)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
