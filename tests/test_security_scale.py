"""The monitor's cost per live flow: a source's single probe and a single host pair are kept
without per-pair records, and that shortcut raises exactly the alerts of the plain per-pair
bookkeeping."""
from __future__ import annotations

import gc
import tracemalloc

from hypothesis import given, settings
from hypothesis import strategies as st

from capture.packet import PROTO_ICMP, PROTO_TCP, ParsedPacket
from security.alerts import AlertEngine
from security.detectors import PortScanDetector
from security.monitor import SecurityMonitor
from tracking.flow import FlowTracker

# One probe-or-answer: (source host, destination host, port, TCP flags or -1 for an ICMP echo
# request / -2 for an echo reply, seconds since the previous packet).
_STEP = st.tuples(st.integers(0, 7), st.integers(0, 7), st.integers(1, 12),
                  st.sampled_from([0x02, 0x02, 0x02, 0x12, 0x14, 0x04, 0x01, 0x00, 0x29, -1, -2]),
                  st.sampled_from([0.001, 0.01, 0.2, 2.0, 400.0]))


def _packets(steps: list[tuple[int, int, int, int, float]]) -> list[ParsedPacket]:
    out, t = [], 1000.0
    for a, b, port, flags, dt in steps:
        t += dt
        src, dst = f"10.3.0.{a}", f"10.3.1.{b}" if a % 2 else f"10.3.0.{b}"
        if flags >= 0:
            out.append(ParsedPacket(ts=t, wire_len=60, ip_version=4, src_ip=src, dst_ip=dst,
                                    proto=PROTO_TCP, sport=40000 + a, dport=port,
                                    tcp_flags=flags))
        else:
            out.append(ParsedPacket(ts=t, wire_len=60, ip_version=4, src_ip=src, dst_ip=dst,
                                    proto=PROTO_ICMP, icmp_type=8 if flags == -1 else 0,
                                    icmp_id=port))
    return out


class _PerPair(PortScanDetector):
    """The reference: every probe goes through the per-(source, host) and per-(source, port)
    records, never through the single-probe shortcut."""

    def _solo_probe(self, *_args: object) -> bool:
        return False


def _facts(engine: AlertEngine) -> list[tuple[object, ...]]:
    return [(a.rule_id, a.src, a.dst, a.count, sorted(a.evidence.items()))
            for a in engine.alerts()]


@settings(max_examples=150, deadline=None)
@given(steps=st.lists(_STEP, min_size=1, max_size=300), threshold=st.sampled_from([2, 3, 6]))
def test_scan_alerts_are_the_same_with_and_without_the_flow_table(
        steps: list[tuple[int, int, int, int, float]], threshold: int) -> None:
    """TCP and ICMP probes reach the detector the same way through the monitor (UDP is
    thinned by design), so the alerts, counts and evidence must equal the reference's, whether
    a source's first probe is remembered as its flow (monitor), as a tuple (detector alone),
    or spilled into the per-pair records by a second one."""
    pkts = _packets(steps)
    ref, alone, inside = AlertEngine(), AlertEngine(), AlertEngine()
    reference = _PerPair(ref, threshold=threshold, scan_rate=0.5)
    det = PortScanDetector(alone, threshold=threshold, scan_rate=0.5)
    mon = SecurityMonitor(inside, [PortScanDetector(inside, threshold=threshold,
                                                    scan_rate=0.5)])
    for p in pkts:
        reference.process(p)
        det.process(p)
        mon.process(p)
    assert _facts(alone) == _facts(ref)
    assert _facts(inside) == _facts(ref)


def _handshakes(n: int) -> list[ParsedPacket]:
    """``n`` TCP connections, each between its own pair of hosts, left open."""
    out = []
    for i in range(n):
        a, b = f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", f"172.16.{i >> 8 & 255}.{i & 255}"
        t = 1000.0 + i * 1e-4
        for src, dst, sp, dp, flags in ((a, b, 40000, 443, 0x02), (b, a, 443, 40000, 0x12),
                                        (a, b, 40000, 443, 0x10)):
            out.append(ParsedPacket(ts=t, wire_len=60, ip_version=4, src_ip=src, dst_ip=dst,
                                    proto=PROTO_TCP, sport=sp, dport=dp, tcp_flags=flags,
                                    seq=1000 if flags == 0x02 else 5000))
    return out


def _held(pkts: list[ParsedPacket], with_monitor: bool) -> tuple[int, int]:
    flows = FlowTracker(max_flows=100000)
    mon = SecurityMonitor.from_settings({}, destinations=[]) if with_monitor else None
    if mon is not None:
        mon.attach(flows)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for p in pkts:
            hit = flows.process(p)
            if mon is not None and hit is not None:
                mon.flow_stage(p, hit[0], hit[1])
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    return held, flows.active_count


def test_security_state_per_live_flow_stays_small() -> None:
    """What a user sees as the memory per flow: with 10k open connections between distinct
    host pairs, the security monitor adds under 250 bytes per flow to the flow table (~150,
    most of it the SYN-flood detector's bounded table of services; tuple-keyed records per
    (source, host) and (source, port) pair made it ~670)."""
    pkts = _handshakes(10000)
    base, n = _held(pkts, with_monitor=False)
    total, n2 = _held(pkts, with_monitor=True)
    assert n == n2 == 10000
    per_flow = (total - base) / n
    assert per_flow < 250, f"{per_flow:.0f} bytes per flow"
