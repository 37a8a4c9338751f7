"""The packet-side trackers, and a second process that runs them while a file is read headless.

Four trackers never look at a flow: packet statistics, hops, DNS and devices. They take each
parsed packet as it is. When a capture file is read without the dashboard, a second process
reads the same file and runs them, while this process runs the flow table and everything that
hangs off it. It uses the machine's second core; on bench-1m the packet side is about a third
of the work per packet, and the smaller working set makes each process faster still.

Both processes read the file in the same batches. Before this process works on a batch it tells
the other one the frame count so far, and the other process never goes past the count it was
told. So a run stopped by Ctrl+C (or by an error) ends with both sides at the same frame, and
the packet-side results are exactly what one process would have had. At the end the other
process sends its trackers' state, which is copied into this process's trackers (the objects
that exports, the database and the enricher already hold). If the other process fails or dies,
this process reads the file again up to the same frame and runs the packet side itself.
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
from pathlib import Path
from dataclasses import dataclass, field
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
ROOT = Path(__file__).resolve().parent


@dataclass
class PacketSide:
    """The trackers that take parsed packets and never a flow, with their pipeline hooks."""

    packet_stats: Any
    hops: Any
    dns: Any
    devices: Any
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
        for name, attrs in state.items():
            obj = mine[name]
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
                      dns=dns, devices=DeviceInventory())
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

    def __init__(self) -> None:
        self.lock = threading.RLock()

    @staticmethod
    def process(pkt: ParsedPacket) -> None:
        return None

    def maybe_expire(self, now: float) -> None:
        """No flows to expire."""

    def finish(self) -> None:
        """No flows to retire."""


def run_packet_side(side: PacketSide, batches: Iterable[list[RawFrame]],
                    allowed: Callable[[int], int | None]) -> int:
    """Feed ``batches`` to ``side``'s trackers; returns the frames processed.

    ``allowed(n)`` answers how many frames in all may be processed when ``n`` would be wanted: at
    least ``n`` to go on, fewer (or None when the count is open) to stop at that frame.
    """
    from pipeline import Pipeline, restore_gc, tune_gc
    pipeline = Pipeline(_NoFlows(), stages=side.stages,  # type: ignore[arg-type]
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
            done = want
            if limit is not None and limit <= done:
                break
    finally:
        restore_gc(gc_before)
    pipeline.finish()
    return done


def child_main(result_fd: int) -> None:
    """The second process (``python -c 'import sidecar; sidecar.child_main(FD)'``): the packet
    side over the file the parent reads, paced by the counts on stdin; the result goes to the
    pipe ``result_fd`` (not stdout, where a stray line from any library would spoil it)."""
    # Ctrl+C reaches the whole process group; the parent decides when this side stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stdin = sys.stdin.buffer
    path, values, count, batch_size, verbosity = pickle.load(stdin)
    # the run's log file, appended to and never rotated from here (the parent rotates it)
    setup_logging(values["LOG_FILE"], verbosity, max_bytes=0)
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
        source = FileSource(path, count=count, batch_size=batch_size)
        run_packet_side(side, source.batches(), allowed)
        while not told[1]:  # the file ended here first: wait for the parent's last count
            allowed(told[0] + 1)
        payload = pickle.dumps(("ok", side.state()), pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # boundary: the parent runs the packet side itself instead
        payload = pickle.dumps(("error", f"{type(exc).__name__}: {exc}"))
    try:
        with os.fdopen(result_fd, "wb") as out:
            out.write(payload)
    except OSError:  # the parent is gone and with it any use for the result
        pass
    # The parent waits for this process to end: skip freeing every object one by one.
    logging.shutdown()
    os._exit(0)


class Sidecar:
    """This process's end of the second process: tap every batch, then :meth:`join_into`."""

    def __init__(self, path: str, settings: Settings, count: int, batch_size: int,
                 verbosity: int = 0) -> None:
        self.path = path
        self.batch_size = batch_size
        self.sent = 0
        self.error: str | None = None
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
        self._send(pickle.dumps((path, dict(settings.values), count, batch_size, verbosity)))
        log.info("reading %s in two processes: the packet side runs in pid %d", path, self._proc.pid)

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
            log.info("packet side of %d frames taken over from pid %d in %.2f s", self.sent,
                     self._proc.pid, time.perf_counter() - t)
            return "2"
        log.warning("%s; running the packet side in this process", self.error)
        if self.sent:
            source = FileSource(self.path, count=self.sent, batch_size=self.batch_size)
            run_packet_side(side, source.batches(), lambda n: None)
        return f"1 ({self.error})"

    def _collect(self) -> dict[str, dict[str, Any]] | None:
        self._send(_COUNT.pack(-self.sent - 1))
        if self.error is None:
            try:
                kind, body = pickle.load(self._from)
            except (OSError, EOFError, pickle.UnpicklingError) as exc:
                kind, body = "error", f"packet-side process lost ({type(exc).__name__})"
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
