"""TcpConnection against tshark 4.0 on every real capture: the frames behind each
tcp.analysis.* label, the split into tcp.stream connections, and each stream's initial RTT."""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import pytest

from capture.errors import CaptureFileError
from capture.packet import ACK, FIN, PROTO_TCP, SYN, ParsedPacket
from capture.reader import iter_parsed
from tests.conftest import CAPTURE_FILES, expected_for, require
from tracking.tcp_state import (
    EV_ANY_RETRANSMISSION, EV_DUP_ACK, EV_FAST_RETRANSMISSION, EV_KEEP_ALIVE, EV_LOST_SEGMENT,
    EV_OUT_OF_ORDER, EV_RST, EV_SPURIOUS_RETRANSMISSION, EV_WINDOW_FULL, EV_ZERO_WINDOW,
    EV_ZERO_WINDOW_PROBE, TcpConnection,
)
from tracking.tcp_totals import TcpTotals

#: expected-file category -> the events whose frames tshark's ``tcp.analysis.<name>`` matches
CATEGORIES: dict[str, int] = {
    "retransmission": EV_ANY_RETRANSMISSION,
    "fast_retransmission": EV_FAST_RETRANSMISSION,
    "spurious_retransmission": EV_SPURIOUS_RETRANSMISSION,
    "out_of_order": EV_OUT_OF_ORDER,
    "duplicate_ack": EV_DUP_ACK,
    "zero_window": EV_ZERO_WINDOW,
    "zero_window_probe": EV_ZERO_WINDOW_PROBE,
    "keep_alive": EV_KEEP_ALIVE,
    "window_full": EV_WINDOW_FULL,
    "lost_segment": EV_LOST_SEGMENT,
    "rst": EV_RST,
}
RTT_TOLERANCE = 1e-6 + 1e-9   # 1 µs (plus float noise)


class Conn:
    __slots__ = ("tcp", "a", "b")

    def __init__(self, a: tuple[str, int], b: tuple[str, int]) -> None:
        self.tcp = TcpConnection()
        self.a = a   # sender of the first packet (tshark's A side)
        self.b = b


class Analysis(NamedTuple):
    frames: dict[str, list[int]]        # category -> frame numbers
    conns: list[Conn]                   # in order of their first packet (= tcp.stream index)
    flags_seen: dict[str, list[int]]    # syn / syn_ack / fin -> frame numbers
    streams: list[int]                  # stream index of every TCP frame, in frame order


def analyse(path: Path) -> Analysis:
    """Feed every TCP packet (the innermost one for tunnels) to per-connection analysers.

    Connections are grouped by the unordered address/port pair; a new one starts when
    ``is_new_connection`` says so (the rule the flow tracker uses).
    """
    frames: dict[str, list[int]] = {name: [] for name in CATEGORIES}
    flags_seen: dict[str, list[int]] = {"syn": [], "syn_ack": [], "fin": []}
    live: dict[tuple, Conn] = {}
    conns: list[Conn] = []
    index: dict[int, int] = {}
    streams: list[int] = []
    for num, outer in enumerate(iter_parsed(path), 1):
        pkt: ParsedPacket = outer.innermost()
        if pkt.proto != PROTO_TCP or not pkt.ip_version:
            continue
        src = (pkt.src_ip, pkt.sport)
        dst = (pkt.dst_ip, pkt.dport)
        key = (src, dst) if src <= dst else (dst, src)
        conn = live.get(key)
        if conn is not None and conn.tcp.is_new_connection(pkt, src == conn.a):
            conn = None
        if conn is None:
            conn = live[key] = Conn(src, dst)
            index[id(conn)] = len(conns)
            conns.append(conn)
        streams.append(index[id(conn)])
        ev = conn.tcp.update(pkt, src == conn.a)
        for name, bits in CATEGORIES.items():
            if ev & bits:
                frames[name].append(num)
        f = pkt.tcp_flags
        if f & (SYN | ACK) == SYN:
            flags_seen["syn"].append(num)
        elif f & (SYN | ACK) == SYN | ACK:
            flags_seen["syn_ack"].append(num)
        if f & FIN:
            flags_seen["fin"].append(num)
    return Analysis(frames, conns, flags_seen, streams)


def _id(p: Path) -> str:
    return p.name


@pytest.mark.parametrize("path", CAPTURE_FILES, ids=_id)
def test_tcp_analysis_frames_match_tshark(path: Path) -> None:
    exp = expected_for(path)
    ta = exp["tcp_analysis"]
    if not exp["readable"]:
        # tshark cannot open it; neither can we, and there is nothing to analyse
        with pytest.raises(CaptureFileError):
            analyse(path)
        assert ta["tcp_frames"] == 0
        return
    frames, conns, flags_seen, _ = analyse(path)
    # the packets we fed are tshark's TCP frames (SYN/SYN-ACK/FIN frame numbers agree)
    for name, got in flags_seen.items():
        assert got == sorted(ta["frames"][name]), f"{path.name}: {name} frames"
    for name, got in frames.items():
        want = sorted(ta["frames"][name])
        assert got == want, f"{path.name}: tcp.analysis.{name}: got {got}, tshark {want}"
        assert len(got) == ta[name]


@pytest.mark.parametrize("path", CAPTURE_FILES, ids=_id)
def test_streams_and_initial_rtt_match_tshark(path: Path) -> None:
    exp = expected_for(path)
    if not exp["readable"]:
        with pytest.raises(CaptureFileError):
            analyse(path)
        assert exp["tcp_analysis"]["initial_rtt"] == []
        assert not [c for c in exp["conversations"] if c["proto"] == "tcp"]
        return
    conns = analyse(path).conns
    streams = [c for c in exp["conversations"] if c["proto"] == "tcp"]
    # same number of connections, in the same order, with the same A side (first sender)
    assert [((c.a, c.b)) for c in conns] == [
        ((s["addr_a"], s["port_a"]), (s["addr_b"], s["port_b"])) for s in streams]
    want = {r["stream"]: r for r in exp["tcp_analysis"]["initial_rtt"]}
    got = {i: c for i, c in enumerate(conns) if c.tcp.handshake_rtt is not None}
    assert sorted(got) == sorted(want), f"{path.name}: streams with an initial RTT"
    for stream, row in want.items():
        conn = got[stream]
        assert (conn.a, conn.b) == ((row["addr_a"], row["port_a"]), (row["addr_b"], row["port_b"]))
        assert abs(conn.tcp.handshake_rtt - row["initial_rtt"]) <= RTT_TOLERANCE, \
            f"{path.name} stream {stream}: {conn.tcp.handshake_rtt} vs {row['initial_rtt']}"


def test_totals_over_a_real_capture_equal_tshark_counts() -> None:
    path = next((p for p in CAPTURE_FILES if p.name == "mobile-android-mix.pcap"), None)
    require(path is not None, "mobile-android-mix.pcap not present")
    ta = expected_for(path)["tcp_analysis"]
    conns = analyse(path).conns
    totals = TcpTotals().merged(c.tcp for c in conns).as_dict()
    assert totals["retransmissions"] == ta["retransmission"]
    assert totals["out_of_order"] == ta["out_of_order"]
    assert totals["dup_acks"] == ta["duplicate_ack"]
    assert totals["lost_segments"] == ta["lost_segment"]
    assert totals["resets"] == ta["rst"]
    assert totals["packets"] == ta["tcp_frames"]
    assert totals["handshake_rtt_ms"]["count"] == len(ta["initial_rtt"])
    assert totals["connections"] == sum(totals["states"].values()) == len(conns)
