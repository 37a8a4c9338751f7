"""HopAnalyzer keeps each host in one packed int: the figures it shows must be what a plain
per-packet account gives (times to the centisecond), whatever the sequence, and a host must
cost at most 64 bytes beyond its table entry and address string."""
from __future__ import annotations

import gc
import sys
import tracemalloc
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from capture.packet import ACK, PROTO_ICMP, PROTO_TCP, ParsedPacket, QuotedHeader
from tracking.hops import HopAnalyzer, hop_count, initial_ttl

HOSTS = [f"198.51.100.{i}" for i in range(1, 7)]


def _tcp(ts: float, src: str, ttl: int) -> ParsedPacket:
    # an ACK: never taken for a traceroute probe, whatever its TTL
    return ParsedPacket(ts=ts, wire_len=60, ip_version=4, src_ip=src, dst_ip="192.0.2.1",
                        proto=PROTO_TCP, ttl=ttl, sport=443, dport=40000, tcp_flags=ACK)


def _shown_as(shown: float, ts: float) -> bool:
    """``shown`` is packet time ``ts`` rounded down to the centisecond (give or take a float
    rounding step)."""
    eps = 1e-6 + ts * 1e-15
    return round(shown * 100.0) / 100.0 == shown and shown - eps <= ts < shown + 0.01 + eps


@dataclass
class _Plain:
    """The straightforward account of one host, per packet."""
    first_seen: float
    ttls: list[int] = field(default_factory=list)
    last_seen: float = 0.0


_packets = st.lists(st.tuples(st.sampled_from(HOSTS), st.integers(1, 255),
                              st.floats(0.0, 4e9, allow_nan=False)), max_size=60)


@settings(max_examples=300, deadline=None)
@given(_packets)
def test_every_figure_matches_a_plain_account(seq: list[tuple[str, int, float]]) -> None:
    h = HopAnalyzer()
    plain: dict[str, _Plain] = {}
    for src, ttl, ts in seq:
        h.process(_tcp(ts, src, ttl))
        p = plain.setdefault(src, _Plain(ts))
        p.ttls.append(ttl)
        p.last_seen = ts  # the last packet's time, also when packets come out of order
    snap = h.snapshot()
    assert {x.ip for x in snap.hosts} == set(plain)
    for ip, p in plain.items():
        got = snap.get(ip)
        hops = [hop_count(t) for t in p.ttls]
        last = p.ttls[-1]
        assert got == h.get(ip)
        assert (got.last_ttl, got.initial_ttl, got.hops, got.min_hops, got.max_hops,
                got.packets, got.probe_ttl) == \
            (last, initial_ttl(last), hop_count(last), min(hops), max(hops), len(p.ttls), 0)
        assert h.hops(ip) == hop_count(last)
        assert _shown_as(got.first_seen, p.first_seen), (got.first_seen, p.first_seen)
        assert _shown_as(got.last_seen, p.last_seen), (got.last_seen, p.last_seen)


def test_times_keep_the_centisecond() -> None:
    h = HopAnalyzer()
    for ts in (1700000000.123456, 1700000000.129, 1700000003.5, 1700000002.25):
        h.process(_tcp(ts, HOSTS[0], 117))
    got = h.get(HOSTS[0])
    assert (got.first_seen, got.last_seen, got.packets) == (1700000000.12, 1700000002.25, 4)


def test_traceroute_answer_before_any_sample() -> None:
    """A router known first from a time-exceeded answer: its probe distance, then its samples."""
    h = HopAnalyzer(local_ips={"10.0.0.1"})
    probe = ParsedPacket(ts=5.0, wire_len=74, ip_version=4, src_ip="10.0.0.1",
                         dst_ip="203.0.113.9", proto=PROTO_ICMP, ttl=3, icmp_type=8, icmp_id=7,
                         icmp_seq=1)
    h.process(probe)
    quoted = QuotedHeader(src_ip="10.0.0.1", dst_ip="203.0.113.9", proto=PROTO_ICMP, ttl=1,
                          ip_id=0, icmp_id=7, icmp_seq=1)
    answer = ParsedPacket(ts=5.004, wire_len=102, ip_version=4, src_ip="192.0.2.254",
                          dst_ip="10.0.0.1", proto=PROTO_ICMP, ttl=253, icmp_type=11,
                          quoted=quoted)
    h.process(answer)
    got = h.get("192.0.2.254")
    assert (got.probe_ttl, got.packets, got.last_ttl, got.min_hops, got.max_hops) == \
        (3, 1, 253, 2, 2)
    assert (got.first_seen, got.last_seen) == (5.0, 5.0)
    h.process(_tcp(6.0, "192.0.2.254", 250))
    got = h.get("192.0.2.254")
    assert (got.probe_ttl, got.packets, got.min_hops, got.max_hops, got.last_seen) == \
        (3, 2, 2, 5, 6.0)
    # the prober (our own address) is not a remote host, and its probe is not a sample
    assert h.hops("10.0.0.1") is None and h.get("10.0.0.1") is None
    assert [x.ip for x in h.snapshot().hosts] == ["192.0.2.254"]


def test_eviction_drops_the_first_added_hosts() -> None:
    h = HopAnalyzer(max_hosts=16)
    ips = [f"203.0.113.{i}" for i in range(40)]
    for i, ip in enumerate(ips):
        h.process(_tcp(float(i), ip, 54))
        h.process(_tcp(i + 0.5, ips[0], 54))  # busy, but its place is where it was added
    kept = [x.ip for x in h.snapshot().hosts]
    assert 0 < len(kept) <= 16 and ips[39] in kept
    others = [ip for ip in kept if ip != ips[0]]
    assert others == ips[40 - len(others):]  # the newest, in order
    # the busy host was dropped with the oldest and came back: its count started again
    assert h.get(ips[0]).packets < 40


def test_a_host_costs_at_most_64_bytes() -> None:
    n = 5000
    h = HopAnalyzer(max_hosts=n)
    pkts = [_tcp(1700000000.0 + i * 0.013 + k * 0.37, f"10.{i >> 8 & 255}.{i & 255}.{k}", 117 - k)
            for i in range(n // 2) for k in range(2)]
    pkts += [_tcp(p.ts + 1.0, p.src_ip, p.ttl - 1) for p in pkts]  # a second packet, new TTL
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for p in pkts:
            h.process(p)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(h) == n and all(x.packets == 2 for x in h.snapshot().hosts)
    # what the table holds beyond its own slots (the address strings were made before)
    table = sys.getsizeof(h._hosts)
    values = held - table
    assert values / n <= 64, f"{values / n:.0f} bytes per host"
    assert max(sys.getsizeof(v) for v in h._hosts.values()) <= 48
