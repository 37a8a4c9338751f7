"""PacketAnalyzer against tshark's ground truth, and a property test on its totals."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capture.packet import ArpInfo, ParsedPacket
from capture.reader import iter_parsed
from tests.conftest import CAPTURE_FILES, expected_for
from tracking.packet_stats import SIZE_BUCKETS, PacketAnalyzer, size_bucket

READABLE = [p for p in CAPTURE_FILES if p.name != "invalid-pcap-version.pcap"]


def _analyze(path: Path) -> tuple[PacketAnalyzer, list[ParsedPacket]]:
    pkts = list(iter_parsed(path))
    a = PacketAnalyzer()
    for p in pkts:
        a.process(p)
    return a, pkts


@pytest.mark.parametrize("path", READABLE, ids=lambda p: p.name)
def test_distribution_agrees_with_tshark(path: Path) -> None:
    exp = expected_for(path)
    a, pkts = _analyze(path)
    s = a.snapshot()
    assert s.packets == exp["packets"] == len(pkts)
    assert sum(s.protocols.values()) == s.packets == sum(s.sizes.values()) \
        == sum(s.ip_versions.values())
    ta, li = exp["tcp_analysis"], exp["link_icmp"]
    # tshark's "tcp" filter matches TCP in the frame, tunnelled or not
    assert s.protocols.get("TCP", 0) + s.tunneled.get("TCP", 0) == ta["tcp_frames"]
    assert s.tcp_flags["SYN-only"] == ta["syn"]
    assert s.tcp_flags["SYN/ACK"] == ta["syn_ack"]
    assert s.tcp_flags["RST"] == ta["rst"]
    assert s.tcp_flags["FIN"] == ta["fin"]
    assert s.icmp_types == li["icmp_type_code"]
    assert s.icmpv6_types == li["icmpv6_type_code"]
    assert s.arp_opcodes == li["arp_opcodes"]
    assert s.bytes == sum(p.wire_len for p in pkts)
    # frame lengths bucketed the way tshark's plen statistics do
    want = Counter(SIZE_BUCKETS[size_bucket(p.wire_len)] for p in pkts)
    assert {k: v for k, v in s.sizes.items() if v} == dict(want)
    if exp["packets"]:
        assert s.first_ts == pkts[0].ts and s.last_ts == max(p.ts for p in pkts)


def test_size_buckets_edges() -> None:
    edges = {19: "0-19", 20: "20-39", 39: "20-39", 40: "40-79", 79: "40-79", 80: "80-159",
             159: "80-159", 160: "160-319", 639: "320-639", 640: "640-1279", 1279: "640-1279",
             1280: "1280-2559", 2559: "1280-2559", 2560: "2560-5119", 5119: "2560-5119",
             5120: "5120-", 65535: "5120-", 0: "0-19"}
    for n, label in edges.items():
        assert SIZE_BUCKETS[size_bucket(n)] == label, n


def test_throughput_per_second_and_minute() -> None:
    path = next(p for p in READABLE if p.name == "http-espn-browse.pcapng")
    a, pkts = _analyze(path)
    s = a.snapshot()
    last = int(max(p.ts for p in pkts))
    assert [r[0] for r in s.per_second] == list(range(last - 59, last + 1))
    for sec, n, b in s.per_second:
        in_sec = [p for p in pkts if int(p.ts) == sec]
        assert (n, b) == (len(in_sec), sum(p.wire_len for p in in_sec))
    per_min = Counter(int(p.ts) // 60 * 60 for p in pkts)
    assert {m: n for m, n, _ in s.per_minute} == dict(per_min)
    # rates average the complete seconds of the window that the session covers
    first = max(int(pkts[0].ts), last - 59)
    done = [p for p in pkts if first <= int(p.ts) < last]
    assert s.pps == pytest.approx(len(done) / (last - first))
    assert s.bps == pytest.approx(8 * sum(p.wire_len for p in done) / (last - first))
    d = a.as_dict()
    assert d["packets"] == len(pkts) and d["protocols"] == s.protocols
    assert sum(r["packets"] for r in d["per_minute"]) == len(pkts)


def test_malformed_frames_are_counted() -> None:
    for name in ("truncated-ipv4-header.pcap", "malformed-ipv4-bad-total-length.pcap"):
        path = next(p for p in READABLE if p.name == name)
        a, pkts = _analyze(path)
        assert a.malformed == sum(1 for p in pkts if p.malformed) >= 1
        assert sum(a.malformed_reasons.values()) == a.malformed


_packet = st.builds(
    lambda ts, wl, kind, proto, flags, icmp, op: _make(ts, wl, kind, proto, flags, icmp, op),
    st.floats(min_value=0, max_value=5000, allow_nan=False),
    st.integers(min_value=0, max_value=70000),
    st.sampled_from(["v4", "v6", "arp", "other", "trunc"]),
    st.sampled_from([0, 1, 2, 6, 17, 47, 50, 58, 132, 200]),
    st.integers(min_value=0, max_value=0x1FF),
    st.tuples(st.integers(-1, 255), st.integers(-1, 255)),
    st.integers(min_value=0, max_value=10),
)


def _make(ts: float, wl: int, kind: str, proto: int, flags: int, icmp: tuple[int, int],
          op: int) -> ParsedPacket:
    p = ParsedPacket(ts=ts, wire_len=wl)
    if kind in ("v4", "v6"):
        p.ip_version = 4 if kind == "v4" else 6
        p.src_ip, p.dst_ip, p.proto, p.tcp_flags = "a", "b", proto, flags
        p.icmp_type, p.icmp_code = icmp
    elif kind == "trunc":
        p.ip_version, p.malformed = 4, "truncated IPv4 header"
    elif kind == "arp":
        p.ethertype = 0x0806
        p.arp = ArpInfo(op, b"", "", b"", "")
    else:
        p.ethertype = 0x88CC
    return p


@settings(max_examples=200, deadline=None)
@given(st.lists(_packet, max_size=300))
def test_totals_equal_packets_fed(pkts: list[ParsedPacket]) -> None:
    a = PacketAnalyzer()
    for p in pkts:
        a.process(p)
    s = a.snapshot()
    n = len(pkts)
    assert s.packets == n and a.packets == n
    assert s.bytes == sum(p.wire_len for p in pkts)
    assert sum(s.protocols.values()) == n
    assert sum(s.sizes.values()) == n
    assert sum(s.ip_versions.values()) == n
    assert sum(r[1] for r in s.per_minute) == n
    assert sum(r[2] for r in s.per_minute) == s.bytes
    assert s.malformed == sum(1 for p in pkts if p.malformed)
