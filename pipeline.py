"""The per-packet fan-out: parse, then hand each packet to every tracker, inspector and detector.

This wiring layer sits above tracking/ and security/ so that neither has to know the other.
One thread (the caller of :meth:`Pipeline.run`) owns all tracker state; readers take
``flows.lock`` (held here once per batch) or read their own snapshot methods.
"""
from __future__ import annotations

import gc
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from capture.packet import ParsedPacket
from capture.parser import parse
from capture.reader import RawFrame
from capture.sniffer import PacketSource
from capture.writer import PcapngWriter
from tracking.flow import Flow, FlowTracker
from utils.logger import get_logger

log = get_logger(__name__)

PacketStage = Callable[[ParsedPacket], None]
#: called once per batch with the batch's parsed packets (outer ones; tunnels are theirs to follow)
BatchStage = Callable[[list[ParsedPacket]], None]
#: called with each packet, outer or tunnelled, that the flow table does not take (frames
#: without IP: ARP, STP, LLDP...)
OtherStage = Callable[[ParsedPacket], None]
FlowStage = Callable[[ParsedPacket, Flow, bool], None]
#: called once per batch with its frames and, in step, their flows (tunnel frames once per flow)
FrameSink = Callable[[list[RawFrame], list[Flow]], None]

#: gen0/gen1/gen2 thresholds of the cyclic GC during a run (Python's defaults: 700, 10, 10)
GC_THRESHOLDS = (50_000, 20, 20)


def tune_gc() -> tuple[int, int, int]:
    """Make the cyclic garbage collector cheap for a long run of packets; returns the
    thresholds it replaced (for :func:`restore_gc`).

    Per-packet records die by reference counting; what costs is the collector walking the
    long-lived objects. With the default gen0 threshold of 700 a collection runs every few
    hundred packets and promotes each batch's frames, so full collections (walking every
    flow) come often. Start-up objects (modules, tables, trackers) are frozen out of the
    collector's sight, and gen0 runs every 50k allocations. Measured on the first 250k
    packets of bench-1m: 6.6 s in 2134 collections (8 full) by default, 1.9 s in 25.
    """
    previous = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    return previous


def restore_gc(previous: tuple[int, int, int]) -> None:
    """Undo :func:`tune_gc` (the frozen objects become collectable again)."""
    gc.unfreeze()
    gc.set_threshold(*previous)


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic collection inside: for bursts that make many long-lived objects and no
    garbage cycles, after a run (default thresholds again, every object of the run in the
    oldest generation). Such a burst sets off collections by the hundred, full ones among
    them, each walking every object of the run."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


@dataclass(slots=True)
class PipelineCounters:
    packets: int = 0
    bytes: int = 0
    malformed: int = 0
    excluded: int = 0
    first_ts: float = 0.0
    last_ts: float = 0.0
    stage_errors: int = 0
    malformed_reasons: dict[str, int] = field(default_factory=dict)


class Pipeline:
    """Parse frames and fan them out; also runs the periodic chores on packet time."""

    def __init__(self, flows: FlowTracker, stages: Iterable[PacketStage] = (),
                 flow_stages: Iterable[FlowStage] = (),
                 exclude: Callable[[ParsedPacket], bool] | None = None,
                 periodic: Iterable[Callable[[float], None]] = (),
                 writer: PcapngWriter | None = None,
                 on_packet_inner: bool = True,
                 frame_sinks: Iterable[FrameSink] = (),
                 batch_stages: Iterable[BatchStage] = (),
                 other_stages: Iterable[OtherStage] = ()) -> None:
        self.flows = flows
        self.stages = list(stages)
        #: stages that take the whole batch at once: no call per packet, and their tables stay
        #: in locals for the batch (counting stages, whose per-packet work is a few additions).
        #: With one, the batch's parsed packets are kept until its end instead of each being
        #: freed as the next is made: on bench-1m that made the flow side ~6% slower (memory
        #: reused at once stays in cache), so stages that need only some packets are
        #: ``other_stages`` or flow stages instead.
        self.batch_stages = list(batch_stages)
        self.other_stages = list(other_stages)
        self.flow_stages = list(flow_stages)
        self.frame_sinks = list(frame_sinks)
        self.exclude = exclude
        #: asked once per batch whether ``exclude`` has anything to leave out (when it says no,
        #: the batch skips the per-packet call: almost every run has nothing to exclude)
        self.exclude_needed: Callable[[], bool] | None = None
        self.periodic = list(periodic)
        self.pcap_writer = writer
        #: called by :meth:`run` with each batch before it is processed (the packet-side process
        #: of a file read is told how far to go)
        self.batch_taps: list[Callable[[list[RawFrame]], None]] = []
        self.track_inner = on_packet_inner
        self.counters = PipelineCounters()
        self.paused = threading.Event()
        self.source: PacketSource | None = None
        self._last_tick = 0.0

    # ---- hot path ----------------------------------------------------------------------------
    def process_frames(self, frames: list[RawFrame]) -> None:
        c = self.counters
        flows = self.flows
        fprocess = flows.process
        stages = self.stages
        flow_stages = self.flow_stages
        other_stages = self.other_stages
        exclude = self.exclude
        if exclude is not None and self.exclude_needed is not None and not self.exclude_needed():
            exclude = None
        track_inner = self.track_inner
        sinks = self.frame_sinks
        kept_frames: list[RawFrame] = []
        kept_flows: list[Flow] = []
        batch_stages = self.batch_stages
        parsed: list[ParsedPacket] = []
        keep_parsed = parsed.append if batch_stages else None
        keep_frame = kept_frames.append if sinks else None
        keep_flow = kept_flows.append
        _parse = parse
        # Counters live in locals for the batch (attribute stores per packet add up) and are
        # written back even if a stage raises.
        packets = nbytes = excluded = 0
        first_ts = c.first_ts
        last_ts = c.last_ts
        with flows.lock:
            try:
                for fr in frames:
                    pkt = _parse(fr.data, fr.linktype, fr.ts, fr.wire_len, fr.iface)
                    if exclude is not None and exclude(pkt):
                        excluded += 1
                        continue
                    packets += 1
                    nbytes += pkt.wire_len
                    ts = pkt.ts
                    if ts > last_ts:
                        last_ts = ts
                    if not first_ts:
                        first_ts = ts
                    if pkt.malformed:
                        c.malformed += 1
                        reasons = c.malformed_reasons
                        reasons[pkt.malformed] = reasons.get(pkt.malformed, 0) + 1
                    if keep_parsed is not None:
                        keep_parsed(pkt)
                    for stage in stages:
                        stage(pkt)
                    hit = fprocess(pkt)
                    if hit is not None:
                        flow, fwd = hit
                        for fs in flow_stages:
                            fs(pkt, flow, fwd)
                        if keep_frame is not None:
                            keep_frame(fr)
                            keep_flow(flow)
                    else:
                        for os_ in other_stages:
                            os_(pkt)
                    p = pkt.inner
                    while p is not None and track_inner:
                        hit = fprocess(p)
                        if hit is not None:
                            flow, fwd = hit
                            for fs in flow_stages:
                                fs(p, flow, fwd)
                            if keep_frame is not None:
                                keep_frame(fr)
                                keep_flow(flow)
                        else:
                            for os_ in other_stages:
                                os_(p)
                        p = p.inner
                for bstage in batch_stages:
                    bstage(parsed)
            finally:
                c.packets += packets
                c.bytes += nbytes
                c.excluded += excluded
                c.first_ts = first_ts
                c.last_ts = last_ts
                for sink in sinks:
                    sink(kept_frames, kept_flows)
            if last_ts - self._last_tick >= 1.0:
                self.tick(last_ts)

    def process_packet(self, pkt: ParsedPacket) -> None:
        """Feed one already-parsed packet (tests, relay)."""
        self.process_frames([RawFrame(pkt.ts, pkt.data, pkt.wire_len, pkt.linktype, pkt.iface)])

    def tick(self, now: float) -> None:
        """Once a second of packet time: expiry and other chores."""
        self._last_tick = now
        self.flows.maybe_expire(now)
        for chore in self.periodic:
            chore(now)

    # ---- driving a source --------------------------------------------------------------------
    def run(self, source: PacketSource, stop: threading.Event | None = None) -> None:
        """Consume ``source`` until it ends or ``stop`` is set (Ctrl+C, --duration)."""
        self.source = source
        gc_before = tune_gc()
        source.start()
        try:
            for batch in source.batches():
                while self.paused.is_set() and not (stop and stop.is_set()):
                    time.sleep(0.05)
                if self.pcap_writer is not None:
                    self.pcap_writer.write(batch)
                for tap in self.batch_taps:
                    tap(batch)
                self.process_frames(batch)
                # A live capture's queued packets are already off the wire: process them (the
                # source stops reading and ends the stream). A file can simply stop here.
                if stop is not None and stop.is_set() and not source.drain_on_stop:
                    break
        finally:
            source.stop()
            source.join(2.0)
            restore_gc(gc_before)

    def finish(self) -> None:
        """End of the run: retire every flow so exports and the database see final state."""
        # Retiring every live flow at once allocates a few objects per flow (graph edges, DPI
        # facts, TCP totals) in one burst (bench-1m's 50k flows: collections took 1.5 s of 2.3).
        with gc_paused(), self.flows.lock:
            if self.counters.last_ts:
                for chore in self.periodic:
                    chore(self.counters.last_ts)
            self.flows.finish()
        if self.pcap_writer is not None:
            self.pcap_writer.close()

    def summary(self) -> dict[str, Any]:
        c = self.counters
        return {"packets": c.packets, "bytes": c.bytes, "malformed": c.malformed,
                "excluded": c.excluded, "first_ts": c.first_ts, "last_ts": c.last_ts,
                "duration": round(c.last_ts - c.first_ts, 6) if c.packets else 0.0,
                "flows": self.flows.total_flows}
