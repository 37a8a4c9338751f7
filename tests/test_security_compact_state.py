"""The port-scan and beacon detectors keep their per-pair state in compact forms (targets as a
string of port characters or a tuple of hosts, first probes as the flows that made them,
connection starts as one log per host pair). These tests check that the compact forms raise
exactly the alerts of the plain ones (sets of targets, tuples, one list of starts per service)
and that they hold less memory where many flows share a few hosts."""
from __future__ import annotations

import gc
import tracemalloc
import types
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analysis.anomaly import BeaconDetector, steady_period
from capture.packet import PROTO_ICMP, PROTO_TCP, PROTO_UDP, ParsedPacket, QuotedHeader
from security.alerts import AlertEngine
from security.detectors import PortScanDetector
from security.monitor import SecurityMonitor
from tracking.flow import FlowTracker


# --- the plain forms, as the detectors were before the compact ones ---------------------------
class _SetProbes:
    __slots__ = ("first", "last", "probed", "answered", "kinds", "unreach", "next_report",
                 "reported")

    def __init__(self, ts: float, first_report: int) -> None:
        self.first = self.last = ts
        self.probed: set[object] = set()
        self.answered: set[object] | None = None
        self.kinds = self.unreach = 0
        self.next_report = first_report
        self.reported = 0.0

    def unanswered(self) -> int:
        return len(self.probed) - (len(self.answered) if self.answered else 0)

    def answer(self, target: object) -> None:
        if target in self.probed:
            if self.answered is None:
                self.answered = set()
            self.answered.add(target)


def _plain_track(self: PortScanDetector, table: dict[Any, Any], seen: dict[Any, Any], key: Any,
                 ts: float, target: Any, kind: int, _flow: object, _from_flow: object) -> Any:
    entry = table.get(key)
    if entry is not None:
        if ts - entry.last <= self.idle_timeout:
            entry.last = ts
            entry.kinds |= kind
            probed = entry.probed
            if target in probed or len(probed) >= 65536:
                return None
            probed.add(target)
            if len(probed) >= entry.next_report or (
                    entry.reported and ts - entry.reported >= 1.0):
                return entry
            return None
        del table[key]
    first = seen.get(key)
    if first is not None and ts - first[0] > self.idle_timeout:
        first = None
    if first is None and self.threshold > 1:
        seen[key] = (ts, target, kind)
        return None
    entry = _SetProbes(ts, self.threshold)
    if first is not None:
        if first[1] == target:
            return None
        del seen[key]
        entry.first, entry.kinds = first[0], first[2]
        entry.probed.add(first[1])
    entry.last = ts
    entry.kinds |= kind
    entry.probed.add(target)
    table[key] = entry
    return entry if len(entry.probed) >= entry.next_report else None


def _plain_scan(engine: AlertEngine, threshold: int) -> PortScanDetector:
    """A PortScanDetector (the monitor routes by its type) doing plain per-pair bookkeeping
    with sets and tuples: no single-probe shortcut, no flows kept, no compact targets."""
    det = PortScanDetector(engine, threshold=threshold, scan_rate=0.5)
    det._track = types.MethodType(_plain_track, det)  # type: ignore[method-assign]
    det._solo_probe = lambda *_args: False  # type: ignore[method-assign]
    return det


class _PlainBeacons:
    """The beacon detector with one list of start times per (client, server, port, proto)."""

    def __init__(self, window: int = 8, min_events: int = 6, min_interval: float = 1.0,
                 max_jitter: float = 0.1) -> None:
        self.window, self.min_events = window, min_events
        self.min_interval, self.max_jitter = min_interval, max_jitter
        self._starts: dict[tuple[str, str, int, int], list[float]] = {}

    def observe(self, client: str, server: str, port: int, proto: int,
                ts: float) -> float | None:
        times = self._starts.setdefault((client, server, port, proto), [])
        times.append(ts)
        if len(times) > self.window + 1:
            del times[0]
        n = len(times)
        if n <= self.min_events:
            return None
        last, prev = ts - times[n - 2], times[n - 2] - times[n - 3]
        if abs(last - prev) > 2 * self.max_jitter * max(prev, 1e-9):
            return None
        # the statistics are shared; what is compared is how the starts are kept
        return steady_period(times, self.min_interval, self.max_jitter)


# --- packets ---------------------------------------------------------------------------------
# (source, destination, port, what, seconds since the previous packet); what: a TCP flags
# byte, or "udp" (a probe), "udp-reply", "echo", "echo-reply", "unreach" (ICMP port
# unreachable quoting the UDP probe)
_WHAT = st.sampled_from([0x02, 0x02, 0x02, 0x12, 0x14, 0x04, 0x01, 0x00, 0x29, 0x10,
                         "udp", "udp", "udp-reply", "unreach", "echo", "echo-reply"])
_STEP = st.tuples(st.integers(0, 5), st.integers(0, 5),
                  st.sampled_from([22, 80, 443, 8080, 3306, 40000, 65535, 1, 255, 256, 53,
                                   5353, 1000, 1001, 1002, 1003, 1004, 1005]),
                  _WHAT, st.sampled_from([0.001, 0.01, 0.2, 2.0, 400.0]))


def _packets(steps: list[tuple[int, int, int, Any, float]]) -> list[ParsedPacket]:
    out, t = [], 1000.0
    for a, b, port, what, dt in steps:
        t += dt
        src, dst = f"10.4.0.{a}", f"10.4.1.{b}" if a % 2 else f"10.4.0.{b}"
        base = {"ts": t, "wire_len": 60, "ip_version": 4}
        if isinstance(what, int):  # flags from the prober, SYN/ACK and RST/ACK from the target
            fwd = not what & 0x10 or what == 0x29
            s, d = (src, dst) if fwd else (dst, src)
            sp, dp = (40000 + a, port) if fwd else (port, 40000 + a)
            out.append(ParsedPacket(**base, src_ip=s, dst_ip=d, proto=PROTO_TCP, sport=sp,
                                    dport=dp, tcp_flags=what))
        elif what == "udp":
            out.append(ParsedPacket(**base, src_ip=src, dst_ip=dst, proto=PROTO_UDP,
                                    sport=45000 + a, dport=port))
        elif what == "udp-reply":
            out.append(ParsedPacket(**base, src_ip=dst, dst_ip=src, proto=PROTO_UDP, sport=port,
                                    dport=45000 + a))
        elif what == "unreach":
            out.append(ParsedPacket(**base, src_ip=dst, dst_ip=src, proto=PROTO_ICMP,
                                    icmp_type=3, icmp_code=3,
                                    quoted=QuotedHeader(src_ip=src, dst_ip=dst, proto=PROTO_UDP, ttl=64, ip_id=1,
                                                        sport=45000 + a, dport=port)))
        else:
            s, d = (src, dst) if what == "echo" else (dst, src)
            out.append(ParsedPacket(**base, src_ip=s, dst_ip=d, proto=PROTO_ICMP,
                                    icmp_type=8 if what == "echo" else 0, icmp_id=port))
    return out


def _facts(engine: AlertEngine) -> list[tuple[object, ...]]:
    return [(a.rule_id, a.src, a.dst, a.count, a.message, sorted(a.evidence.items()))
            for a in engine.alerts()]


@settings(max_examples=150, deadline=None)
@given(steps=st.lists(_STEP, min_size=1, max_size=300), threshold=st.sampled_from([2, 3, 6]))
def test_compact_scan_state_raises_the_alerts_of_plain_sets(
        steps: list[tuple[int, int, int, Any, float]], threshold: int) -> None:
    """Alone and inside a monitor (flows as first probes, flows retired by idle expiry), the
    detector raises the same alerts, counts, messages and evidence as plain set bookkeeping
    fed the same way."""
    pkts = _packets(steps)
    engines = [AlertEngine() for _ in range(4)]
    plain, compact = _plain_scan(engines[0], threshold), PortScanDetector(
        engines[1], threshold=threshold, scan_rate=0.5)
    mon_plain = SecurityMonitor(engines[2], [_plain_scan(engines[2], threshold)])
    mon_compact = SecurityMonitor(engines[3], [PortScanDetector(engines[3], threshold=threshold,
                                                                scan_rate=0.5)])
    for p in pkts:
        plain.process(p)
        compact.process(p)
        mon_plain.process(p)
        mon_compact.process(p)
    assert _facts(engines[1]) == _facts(engines[0])
    assert _facts(engines[3]) == _facts(engines[2])


def test_a_long_scan_past_the_compact_form_counts_every_port_and_answer() -> None:
    """Past the compact form's size the targets move to sets: counts and answers carry over
    (the same evidence as plain sets, hundreds of ports, the open ones counted as answered)."""
    engines = AlertEngine(), AlertEngine()
    dets = PortScanDetector(engines[0], threshold=10, scan_rate=0.5), _plain_scan(engines[1], 10)
    t = 1000.0
    pkts = []
    for port in list(range(1, 301)) + [1, 20]:  # and two repeats: not new targets
        t += 0.01
        pkts.append(ParsedPacket(ts=t, wire_len=60, ip_version=4, src_ip="10.5.0.1",
                                 dst_ip="10.5.0.2", proto=PROTO_TCP, sport=40000, dport=port,
                                 tcp_flags=0x02))
        if port % 10 == 0:  # every tenth port is open
            pkts.append(ParsedPacket(ts=t, wire_len=60, ip_version=4, src_ip="10.5.0.2",
                                     dst_ip="10.5.0.1", proto=PROTO_TCP, sport=port,
                                     dport=40000, tcp_flags=0x12))
    for det in dets:
        for p in pkts:
            det.process(p)
    (alert,) = engines[0].alerts()
    assert _facts(engines[0]) == _facts(engines[1])
    probed = alert.evidence["ports"] + alert.evidence["answered"]
    assert probed > 200 and alert.evidence["answered"] == probed // 10


@settings(max_examples=200, deadline=None)
@given(events=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 1),
                                 st.sampled_from([(443, PROTO_TCP), (53, PROTO_UDP),
                                                  (8443, PROTO_TCP), (8443, PROTO_UDP),
                                                  (40000, PROTO_TCP)]),
                                 st.sampled_from([30.0, 30.0, 30.0, 30.5, 29.8, 5.0, 0.5, 120.0])),
                       min_size=1, max_size=200))
def test_beacon_periods_are_those_of_one_list_per_service(
        events: list[tuple[int, int, tuple[int, int], float]]) -> None:
    """Each connection start returns the same period (or None) as one list of start times per
    (client, server, port, protocol)."""
    plain, compact = _PlainBeacons(), BeaconDetector()
    clock: dict[tuple[int, int, tuple[int, int]], float] = {}
    for c, s, service, gap in events:
        key = (c, s, service)
        ts = clock[key] = clock.get(key, 1000.0 + c + s) + gap
        args = (f"10.6.0.{c}", f"10.6.1.{s}", service[0], service[1], ts)
        assert compact.observe(*args) == plain.observe(*args)


def test_beacon_state_stays_bounded_under_many_services() -> None:
    """A host pair touching thousands of ports (a scan) and thousands of pairs: the detector
    keeps at most its bound of services, and a beacon started afterwards is still found."""
    det = BeaconDetector(max_keys=2000)
    t = 1000.0
    for port in range(1, 20001):
        t += 0.001
        det.observe("10.7.0.1", "10.7.0.2", port, PROTO_TCP, t)
    for i in range(5000):
        t += 0.001
        det.observe(f"10.8.{i >> 8}.{i & 255}", "10.7.0.3", 443, PROTO_TCP, t)
    assert det.services() <= 2000
    periods = [det.observe("10.7.0.9", "10.7.0.10", 8443, PROTO_TCP, t + 60.0 * k)
               for k in range(1, 9)]
    assert periods[-1] == pytest.approx(60.0)


# --- memory ------------------------------------------------------------------------------------
def _shared_host_packets(pairs: int, flows_per_pair: int) -> list[ParsedPacket]:
    """``pairs`` client/server pairs, each opening ``flows_per_pair`` TCP connections (answered)
    to 10 service ports of its server: many flows, few hosts."""
    out = []
    ports = (22, 80, 443, 993, 3306, 5432, 6379, 8080, 8443, 9200)
    t = 1000.0
    for k in range(flows_per_pair):
        for i in range(pairs):
            a, b = f"10.20.{i >> 8}.{i & 255}", f"172.20.{i >> 8}.{i & 255}"
            port, sport = ports[(i + k * 7) % 10], 20000 + k
            t += 1e-4
            out.append(ParsedPacket(ts=t, wire_len=60, ip_version=4, src_ip=a, dst_ip=b,
                                    proto=PROTO_TCP, sport=sport, dport=port, tcp_flags=0x02))
            out.append(ParsedPacket(ts=t, wire_len=60, ip_version=4, src_ip=b, dst_ip=a,
                                    proto=PROTO_TCP, sport=port, dport=sport, tcp_flags=0x12))
    return out


def _held(pkts: list[ParsedPacket], scan: Any) -> int:
    """Bytes held after feeding ``pkts`` through a flow table and, when ``scan`` makes a
    detector, a monitor holding it (the flows stay open)."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        flows = FlowTracker(max_flows=100000)
        mon = None
        if scan is not None:
            mon = SecurityMonitor(AlertEngine(), [scan()])
            mon.attach(flows)
        for p in pkts:
            hit = flows.process(p)
            if mon is not None and hit is not None:
                mon.flow_stage(p, hit[0], hit[1])
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


def test_scan_state_per_flow_is_small_when_hosts_are_shared() -> None:
    """400 client/server pairs x 25 open connections to 10 service ports each: the scan
    detector's records (one per pair and one per (client, port)) take under half the plain
    forms' size (~60 against ~130 bytes per flow)."""
    pkts = _shared_host_packets(400, 25)
    base = _held(pkts, None)
    compact = _held(pkts, lambda: PortScanDetector(AlertEngine(), threshold=15)) - base
    plain = _held(pkts, lambda: _plain_scan(AlertEngine(), 15)) - base
    flows = 400 * 25
    assert compact < 0.5 * plain, (compact / flows, plain / flows)


def test_beacon_state_per_connection_is_small_when_hosts_are_shared() -> None:
    """The same 10,000 connections as starts for the beacon detector: one log per host pair
    takes under half of one key and list per service."""
    starts = [(p.src_ip, p.dst_ip, p.dport, p.proto, p.ts)
              for p in _shared_host_packets(400, 25) if p.tcp_flags == 0x02]
    held = []
    for make in (BeaconDetector, _PlainBeacons):
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            det = make()
            for args in starts:
                det.observe(*args)
            gc.collect()
            held.append(tracemalloc.get_traced_memory()[0] - before)
        finally:
            tracemalloc.stop()
    assert held[0] < 0.5 * held[1], [h / len(starts) for h in held]
