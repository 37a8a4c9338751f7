"""HopAnalyzer: TTL-based distance, and traceroute matching on a real Windows tracert."""
from __future__ import annotations

import pytest

from capture.packet import PROTO_ICMP, ParsedPacket
from capture.reader import iter_parsed
from tests.conftest import CAPTURES, require
from tracking.hops import HopAnalyzer, hop_count, initial_ttl

TRACERT = CAPTURES / "icmp-traceroute-windows.pcapng"


def _packets() -> list[ParsedPacket]:
    require(TRACERT.exists(), f"{TRACERT} missing")
    return list(iter_parsed(TRACERT))


def test_traceroute_hops_match_the_probes() -> None:
    pkts = _packets()
    h = HopAnalyzer()
    for p in pkts:
        h.process(p)
    # from the capture itself: the probe TTL behind each answer (time-exceeded quotes the
    # probe's echo id/seq, the target's echo reply repeats them)
    probe_ttl = {(p.icmp_id, p.icmp_seq): p.ttl for p in pkts if p.icmp_type == 8}
    answered: dict[str, int] = {}
    for p in pkts:
        if p.icmp_type == 11 and p.quoted is not None:
            answered[p.src_ip] = probe_ttl[(p.quoted.icmp_id, p.quoted.icmp_seq)]
        elif p.icmp_type == 0:
            answered[p.src_ip] = probe_ttl[(p.icmp_id, p.icmp_seq)]
    assert len(answered) >= 9
    snap = h.snapshot()
    for ip, ttl in answered.items():
        host = snap.get(ip)
        assert host is not None and host.probe_ttl == ttl, ip
        # every reply crossed at most the routers in front of its sender
        assert 0 <= host.hops <= 255
    target = next(p for p in pkts if p.icmp_type == 0)
    # the target answers the first probe that reaches it: routers in between = probe TTL - 1
    assert h.hops(target.src_ip) == answered[target.src_ip] - 1
    assert snap.get(target.src_ip).initial_ttl == 64
    first_router = next(ip for ip, ttl in answered.items() if ttl == 1)
    assert h.hops(first_router) == 0 and snap.get(first_router).initial_ttl == 255
    # the sender of the probes is not given a bogus distance from its own tiny probe TTLs
    assert h.hops(pkts[0].src_ip) is None


@pytest.mark.parametrize(("ttl", "initial", "hops"), [
    (1, 32, 31), (32, 32, 0), (33, 64, 31), (56, 64, 8), (64, 64, 0), (65, 128, 63),
    (117, 128, 11), (128, 128, 0), (129, 255, 126), (250, 255, 5), (255, 255, 0)])
def test_initial_ttl_inference(ttl: int, initial: int, hops: int) -> None:
    assert initial_ttl(ttl) == initial
    assert hop_count(ttl) == hops


def _ip(ts: float, src: str, ttl: int) -> ParsedPacket:
    return ParsedPacket(ts=ts, wire_len=60, ip_version=4, src_ip=src, dst_ip="10.0.0.1",
                        proto=PROTO_ICMP, ttl=ttl, icmp_type=3, icmp_code=3)


def test_min_max_last_and_bounds() -> None:
    h = HopAnalyzer(max_hosts=3, local_ips={"10.0.0.1"})
    for ts, ttl in ((1.0, 52), (2.0, 50), (3.0, 55), (4.0, 55)):
        h.process(_ip(ts, "93.184.216.34", ttl))
    host = h.get("93.184.216.34")
    assert (host.hops, host.min_hops, host.max_hops, host.packets) == (9, 9, 14, 4)
    assert (host.first_seen, host.last_seen, host.last_ttl) == (1.0, 4.0, 55)
    h.process(_ip(5.0, "10.0.0.1", 64))
    assert h.hops("10.0.0.1") is None  # our own address is not a remote host
    for i in range(10):
        h.process(_ip(6.0 + i, f"198.51.100.{i}", 120))
    assert len(h) <= 3
    assert len(h.snapshot().hosts) <= 3
