"""TcpConnection on handcrafted packet sequences: every analysis label, the state machine,
the handshake RTT, the port-reuse rule, totals, and random input (hypothesis)."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capture.packet import ACK, FIN, PROTO_TCP, PSH, RST, SYN, ParsedPacket, TcpOptions
from tracking.tcp_state import (
    CLOSE_WAIT, CLOSED, CLOSING, ESTABLISHED, EV_ANY_RETRANSMISSION, EV_CLOSED, EV_DUP_ACK,
    EV_FAST_RETRANSMISSION, EV_HANDSHAKE, EV_KEEP_ALIVE, EV_KEEP_ALIVE_ACK, EV_LOST_SEGMENT,
    EV_OUT_OF_ORDER, EV_RETRANSMISSION, EV_RST, EV_SPURIOUS_RETRANSMISSION, EV_WINDOW_FULL,
    EV_WINDOW_UPDATE, EV_ZERO_WINDOW, EV_ZERO_WINDOW_PROBE, EV_ZERO_WINDOW_PROBE_ACK, FIN_WAIT,
    MIDSTREAM, RESET, STATES, SYN_RECEIVED, SYN_SENT, TcpConnection,
)
from tracking.tcp_totals import COUNTERS, TcpTotals
from tests.conftest import traced_growth

CLIENT = ("10.0.0.1", 40000)
SERVER = ("10.0.0.2", 80)
ISN_C = 1000
ISN_S = 5000


def seg(ts: float, forward: bool, flags: int, seq: int, ack: int = 0, length: int = 0,
        window: int = 65535, wscale: int | None = None) -> tuple[ParsedPacket, bool]:
    src, dst = (CLIENT, SERVER) if forward else (SERVER, CLIENT)
    opts = TcpOptions(wscale=wscale) if wscale is not None else None
    pkt = ParsedPacket(ts=ts, ip_version=4, proto=PROTO_TCP, src_ip=src[0], dst_ip=dst[0],
                       sport=src[1], dport=dst[1], tcp_flags=flags, seq=seq & 0xFFFFFFFF,
                       ack=ack & 0xFFFFFFFF, window=window, tcp_options=opts,
                       payload_len=length, wire_len=54 + length)
    return pkt, forward


def feed(conn: TcpConnection, *packets: tuple[ParsedPacket, bool]) -> list[int]:
    return [conn.update(p, fwd) for p, fwd in packets]


def handshake(conn: TcpConnection, t0: float = 1.0, rtt: float = 0.010,
              wscale: tuple[int | None, int | None] = (None, None)) -> list[int]:
    return feed(conn,
                seg(t0, True, SYN, ISN_C, wscale=wscale[0]),
                seg(t0 + rtt * 0.9, False, SYN | ACK, ISN_S, ISN_C + 1, wscale=wscale[1]),
                seg(t0 + rtt, True, ACK, ISN_C + 1, ISN_S + 1))


C1 = ISN_C + 1   # client's first data byte
S1 = ISN_S + 1   # server's first data byte


def test_handshake_states_and_rtt() -> None:
    conn = TcpConnection()
    syn, synack, ack = seg(1.0, True, SYN, ISN_C), \
        seg(1.009, False, SYN | ACK, ISN_S, C1), seg(1.0125, True, ACK, C1, S1)
    assert conn.update(*syn) == 0 and conn.state == SYN_SENT
    assert conn.update(*synack) == 0 and conn.state == SYN_RECEIVED
    assert conn.handshake_rtt is None
    assert conn.update(*ack) == EV_HANDSHAKE
    assert conn.state == ESTABLISHED
    assert conn.handshake_rtt == pytest.approx(0.0125, abs=1e-9)
    assert not conn.closed
    assert conn.as_dict()["handshake_rtt_ms"] == 12.5


def test_rtt_is_measured_from_the_last_syn_and_only_once() -> None:
    conn = TcpConnection()
    evs = feed(conn,
               seg(1.0, True, SYN, ISN_C),
               seg(2.0, True, SYN, ISN_C),                 # SYN retransmitted after 1 s
               seg(2.02, False, SYN | ACK, ISN_S, C1),
               seg(2.03, True, ACK, C1, S1),
               seg(2.5, True, ACK | PSH, C1, S1, length=10))
    assert evs[1] & EV_RETRANSMISSION
    assert evs[3] == EV_HANDSHAKE and not evs[4] & EV_HANDSHAKE
    assert conn.handshake_rtt == pytest.approx(0.03, abs=1e-9)


def test_midstream_pickup_has_no_rtt_and_no_false_labels() -> None:
    conn = TcpConnection()
    evs = feed(conn,
               seg(1.0, True, ACK | PSH, 777, 888, length=100),
               seg(1.01, False, ACK, 888, 877),
               seg(1.02, True, ACK | PSH, 877, 888, length=100))
    assert evs == [0, 0, 0]
    assert conn.state == MIDSTREAM and conn.handshake_rtt is None


def test_retransmission_after_timeout() -> None:
    conn = TcpConnection()
    handshake(conn)
    evs = feed(conn,
               seg(2.0, True, ACK | PSH, C1, S1, length=100),
               seg(2.5, True, ACK | PSH, C1, S1, length=100))
    assert evs == [0, EV_RETRANSMISSION]
    assert conn.retransmissions == 1 and conn.fast_retransmissions == 0


def test_lost_segment_then_out_of_order_within_rtt() -> None:
    conn = TcpConnection()
    handshake(conn, rtt=0.010)
    evs = feed(conn,
               seg(2.000, True, ACK, C1, S1, length=100),
               seg(2.001, True, ACK, C1 + 200, S1, length=100),   # 101-200 not seen yet
               seg(2.004, True, ACK, C1 + 100, S1, length=100))   # it arrives 3 ms later
    assert evs == [0, EV_LOST_SEGMENT, EV_OUT_OF_ORDER]
    assert (conn.lost_segments, conn.out_of_order, conn.retransmissions) == (1, 1, 0)


def test_out_of_order_threshold_is_3ms_without_handshake() -> None:
    # No handshake RTT: tshark uses 3 ms. 2 ms late is out-of-order, 4 ms late a retransmission.
    for delay, expected in ((0.002, EV_OUT_OF_ORDER), (0.004, EV_RETRANSMISSION)):
        conn = TcpConnection()
        evs = feed(conn,
                   seg(1.0, True, ACK, 100, 1, length=100),
                   seg(1.0, True, ACK, 300, 1, length=100),
                   seg(1.0 + delay, True, ACK, 200, 1, length=100))
        assert evs[1] == EV_LOST_SEGMENT
        assert evs[2] == expected, delay


def test_duplicate_acks_then_fast_retransmission() -> None:
    conn = TcpConnection()
    handshake(conn)
    evs = feed(conn,
               seg(2.000, True, ACK, C1, S1, length=100),
               seg(2.001, True, ACK, C1 + 200, S1, length=100),         # 101-200 lost
               seg(2.050, False, ACK, S1, C1 + 100),
               seg(2.051, False, ACK, S1, C1 + 100),                    # dup #1
               seg(2.052, False, ACK, S1, C1 + 100),                    # dup #2
               seg(2.060, True, ACK, C1 + 100, S1, length=100))         # within 20 ms
    assert evs[1] == EV_LOST_SEGMENT
    assert evs[2:5] == [0, EV_DUP_ACK, EV_DUP_ACK]
    assert evs[5] == EV_FAST_RETRANSMISSION
    assert conn.dup_acks == 2 and conn.fast_retransmissions == 1
    assert conn.retransmissions == 1   # tcp.analysis.retransmission matches fast ones too
    assert evs[5] & EV_ANY_RETRANSMISSION


def test_spurious_retransmission_of_acknowledged_data() -> None:
    conn = TcpConnection()
    handshake(conn)
    evs = feed(conn,
               seg(2.0, True, ACK, C1, S1, length=100),
               seg(2.1, False, ACK, S1, C1 + 100),
               seg(2.5, True, ACK, C1, S1, length=100))
    assert evs == [0, 0, EV_SPURIOUS_RETRANSMISSION]
    assert conn.spurious_retransmissions == 1 and conn.retransmissions == 1


def test_zero_window_probe_probe_ack_and_window_update() -> None:
    conn = TcpConnection()
    handshake(conn)
    evs = feed(conn,
               seg(2.0, True, ACK, C1, S1, length=100),
               seg(2.1, False, ACK, S1, C1 + 100, window=0),            # receiver full
               seg(2.3, True, ACK, C1 + 100, S1, length=1),             # 1-byte probe
               seg(2.4, False, ACK, S1, C1 + 100, window=0),            # probe not accepted
               seg(2.9, False, ACK, S1, C1 + 100, window=8192))         # room again
    assert evs[1] == EV_ZERO_WINDOW
    assert evs[2] == EV_ZERO_WINDOW_PROBE
    assert evs[3] == EV_ZERO_WINDOW | EV_ZERO_WINDOW_PROBE_ACK
    assert evs[4] == EV_WINDOW_UPDATE
    assert (conn.zero_windows, conn.zero_window_probes, conn.window_updates) == (2, 1, 1)
    assert conn.dup_acks == 0


def test_keep_alive_and_its_ack_are_not_dup_acks() -> None:
    conn = TcpConnection()
    handshake(conn)
    evs = feed(conn,
               seg(2.0, True, ACK, C1, S1, length=100),
               seg(2.1, False, ACK, S1, C1 + 100),
               seg(60.0, True, ACK, C1 + 99, S1),                       # seq one before next
               seg(60.1, False, ACK, S1, C1 + 100))
    assert evs[2] == EV_KEEP_ALIVE
    assert evs[3] == EV_KEEP_ALIVE_ACK
    assert conn.keep_alives == 1 and conn.dup_acks == 0 and conn.retransmissions == 0


def test_window_full_uses_the_scaled_window() -> None:
    conn = TcpConnection()
    handshake(conn, wscale=(2, 3))
    # the server advertises 100 << 3 = 800 bytes (a window update: same seq/ack, new window);
    # the client then fills exactly that
    evs = feed(conn,
               seg(2.0, False, ACK, S1, C1, window=100),
               seg(2.1, True, ACK, C1, S1, length=500),
               seg(2.2, True, ACK, C1 + 500, S1, length=300))
    assert evs == [EV_WINDOW_UPDATE, 0, EV_WINDOW_FULL]
    assert conn.window_full == 1


def test_window_full_needs_a_known_scale() -> None:
    conn = TcpConnection()   # mid-stream: the scale is unknown, so tshark never says "full"
    evs = feed(conn,
               seg(2.0, False, ACK, S1, C1, window=100),
               seg(2.1, True, ACK, C1, S1, length=100))
    assert evs == [0, 0]


def test_orderly_close_initiator_first() -> None:
    conn = TcpConnection()
    handshake(conn)
    evs = feed(conn, seg(3.0, True, FIN | ACK, C1, S1))
    assert conn.state == FIN_WAIT and not conn.closed and evs == [0]
    feed(conn, seg(3.01, False, ACK, S1, C1 + 1))
    assert conn.state == FIN_WAIT
    feed(conn, seg(3.02, False, FIN | ACK, S1, C1 + 1))
    assert conn.state == CLOSING and not conn.closed
    evs = feed(conn, seg(3.03, True, ACK, C1 + 1, S1 + 1))
    assert evs == [EV_CLOSED] and conn.state == CLOSED and conn.closed


def test_responder_closes_first_then_fin_retransmitted() -> None:
    conn = TcpConnection()
    handshake(conn)
    feed(conn, seg(3.0, False, FIN | ACK, S1, C1))
    assert conn.state == CLOSE_WAIT
    evs = feed(conn, seg(3.5, False, FIN | ACK, S1, C1))
    assert evs == [EV_RETRANSMISSION]                 # a FIN counts as one sequence number
    feed(conn, seg(3.6, True, FIN | ACK, C1, S1 + 1), seg(3.7, False, ACK, S1 + 1, C1 + 1))
    assert conn.closed and conn.state == CLOSED


def test_reset_closes_and_counts() -> None:
    conn = TcpConnection()
    evs = feed(conn, seg(1.0, True, SYN, ISN_C), seg(1.001, False, RST | ACK, 0, C1))
    assert evs[1] == EV_RST | EV_CLOSED | EV_HANDSHAKE   # tshark: RST/ACK gives an initial RTT
    assert conn.state == RESET and conn.closed and conn.resets == 1
    assert conn.handshake_rtt == pytest.approx(0.001, abs=1e-9)


def test_port_reuse_rule() -> None:
    conn = TcpConnection()
    fresh_syn = seg(9.0, True, SYN, ISN_C + 123456)
    assert not conn.is_new_connection(*fresh_syn)           # nothing seen yet
    handshake(conn)
    assert not conn.is_new_connection(*seg(9.0, True, SYN, ISN_C))          # retransmission
    assert conn.is_new_connection(*fresh_syn)                                # new ISN
    assert not conn.is_new_connection(*seg(9.0, True, SYN | ACK, 42, 1))    # SYN-ACK never
    # the responder's direction learned its base from the SYN-ACK
    assert conn.is_new_connection(*seg(9.0, False, SYN, ISN_S + 99))
    assert not conn.is_new_connection(*seg(9.0, False, SYN, ISN_S))


@pytest.mark.parametrize("forward", [True, False])
def test_port_reuse_rule_with_one_base_known(forward: bool) -> None:
    """A direction's base comes from its first segment (seq-1) or from the other side's first
    ACK (ack-1); a direction with no base yet never starts a new connection."""
    conn = TcpConnection()
    conn.update(*seg(1.0, forward, PSH, 7000, 0, 100))      # no ACK flag: only its own base
    assert conn.is_new_connection(*seg(2.0, forward, SYN, 7000))
    assert not conn.is_new_connection(*seg(2.0, forward, SYN, 6999))  # seq-1 is its base
    assert not conn.is_new_connection(*seg(2.0, not forward, SYN, 123))  # no base: never
    conn.update(*seg(3.0, forward, ACK, 7100, 0xFFFFFFFF, 0))  # the other base: ack-1
    assert conn.is_new_connection(*seg(4.0, not forward, SYN, 0xFFFFFFFF))
    assert not conn.is_new_connection(*seg(4.0, not forward, SYN, 0xFFFFFFFE))
    assert not conn.is_new_connection(*seg(4.0, forward, SYN, 6999))


def test_sequence_numbers_wrap() -> None:
    conn = TcpConnection()
    isn = 0xFFFFFF00
    evs = feed(conn,
               seg(1.0, True, SYN, isn),
               seg(1.01, False, SYN | ACK, ISN_S, isn + 1),
               seg(1.02, True, ACK, isn + 1, S1),
               seg(1.03, True, ACK, isn + 1, S1, length=1000),         # crosses 2**32
               seg(1.04, False, ACK, S1, isn + 1001),
               seg(1.05, True, ACK, isn + 1001, S1, length=1000),
               seg(1.50, True, ACK, isn + 1001, S1, length=1000))
    assert evs[:6] == [0, 0, EV_HANDSHAKE, 0, 0, 0]
    assert evs[6] == EV_RETRANSMISSION


def test_documented_difference_fin_always_counts_one() -> None:
    # Wireshark stops adding the FIN's +1 once 1000 segments are un-ACKed (a one-way capture);
    # we always add it (documented in tcp_state). So a FIN after 1001 unanswered segments is
    # still followed by nothing "lost", and the same FIN again is a retransmission.
    conn = TcpConnection()
    seq = 1
    for i in range(1001):
        assert conn.update(*seg(1.0 + i * 0.01, True, ACK, seq, 1, length=10)) == 0
        seq += 10
    assert conn.update(*seg(20.0, True, FIN | ACK, seq, 1)) == 0
    assert conn.update(*seg(21.0, True, FIN | ACK, seq, 1)) == EV_RETRANSMISSION


def test_malformed_tcp_header_is_not_analysed() -> None:
    conn = TcpConnection()
    pkt, fwd = seg(1.0, True, SYN, ISN_C)
    pkt.malformed = "bad TCP header length 8"
    assert conn.update(pkt, fwd) == 0
    assert conn.packets == 0 and conn.state == "NEW"


def test_totals_fold_connections_and_histogram() -> None:
    a, b, c = TcpConnection(), TcpConnection(), TcpConnection()
    handshake(a, rtt=0.0004)
    feed(a, seg(2.0, True, ACK, C1, S1, length=10), seg(2.5, True, ACK, C1, S1, length=10))
    handshake(b, rtt=0.030)
    feed(c, seg(1.0, True, SYN, ISN_C), seg(1.001, False, RST | ACK, 0, C1))
    totals = TcpTotals()
    totals.add(a)
    snap = totals.merged([b, c])
    assert totals.connections == 1                      # merged() leaves the running totals
    d = snap.as_dict()
    assert d["connections"] == 3
    assert d["packets"] == a.packets + b.packets + c.packets
    assert d["retransmissions"] == 1 and d["resets"] == 1
    assert d["states"] == {ESTABLISHED: 2, RESET: 1}
    rtt = d["handshake_rtt_ms"]
    assert rtt["count"] == 3
    assert rtt["min"] == pytest.approx(0.4) and rtt["max"] == pytest.approx(30.0)
    assert rtt["buckets"]["le_1ms"] == 2 and rtt["buckets"]["le_50ms"] == 1
    assert sum(rtt["buckets"].values()) == 3


# ---------------------------------------------------------------------- properties
_FLAG_CHOICES = (SYN, SYN | ACK, ACK, ACK | PSH, FIN | ACK, RST, RST | ACK, 0, FIN, SYN | FIN,
                 SYN | RST | FIN | ACK, 0x1FF)
_SEQS = st.one_of(st.sampled_from((0, 1, 2, 999, 1000, 1001, 0x7FFFFFFF, 0x80000000,
                                   0xFFFFFFFE, 0xFFFFFFFF)),
                  st.integers(0, 0xFFFFFFFF))
_PACKET = st.tuples(st.floats(-1.0, 5.0, allow_nan=False), st.booleans(),
                    st.sampled_from(_FLAG_CHOICES), _SEQS, _SEQS,
                    st.sampled_from((0, 1, 2, 100, 1460)), st.sampled_from((0, 1, 100, 65535)),
                    st.sampled_from((None, 0, 7, 14, 255)))

_EVENT_COUNTERS = (
    (EV_FAST_RETRANSMISSION, "fast_retransmissions"),
    (EV_SPURIOUS_RETRANSMISSION, "spurious_retransmissions"),
    (EV_OUT_OF_ORDER, "out_of_order"), (EV_DUP_ACK, "dup_acks"),
    (EV_ZERO_WINDOW, "zero_windows"), (EV_ZERO_WINDOW_PROBE, "zero_window_probes"),
    (EV_KEEP_ALIVE, "keep_alives"), (EV_WINDOW_UPDATE, "window_updates"),
    (EV_WINDOW_FULL, "window_full"), (EV_LOST_SEGMENT, "lost_segments"), (EV_RST, "resets"),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_PACKET, max_size=60))
def test_random_packets_never_raise_and_counters_add_up(packets: list) -> None:
    conn = TcpConnection()
    seen: dict[str, int] = {name: 0 for _, name in _EVENT_COUNTERS}
    rtx = closed_events = 0
    for ts, fwd, flags, seq, ack, length, window, wscale in packets:
        pkt, fwd = seg(ts, fwd, flags, seq, ack, length, window, wscale)
        conn.is_new_connection(pkt, fwd)
        ev = conn.update(pkt, fwd)
        assert isinstance(ev, int) and ev >= 0
        # one retransmission label at most per packet, as in Wireshark
        assert bin(ev & (EV_ANY_RETRANSMISSION | EV_OUT_OF_ORDER)).count("1") <= 1
        for bit, name in _EVENT_COUNTERS:
            seen[name] += bool(ev & bit)
        rtx += bool(ev & EV_ANY_RETRANSMISSION)
        closed_events += bool(ev & EV_CLOSED)
    assert conn.packets == len(packets)
    for _, name in _EVENT_COUNTERS:
        assert getattr(conn, name) == seen[name], name
        assert 0 <= seen[name] <= len(packets)
    assert conn.retransmissions == rtx
    assert conn.fast_retransmissions + conn.spurious_retransmissions <= conn.retransmissions
    assert conn.state in STATES
    assert closed_events == (1 if conn.closed else 0)
    if conn.closed:
        assert conn.state in (CLOSED, RESET)
    d = conn.as_dict()
    assert set(COUNTERS) <= set(d)
    totals = TcpTotals()
    totals.add(conn)
    assert all(totals.counters[name] == getattr(conn, name) for name in COUNTERS)


class _GeneralPathOnly(TcpConnection):
    """The same analysis with the in-order fast path switched off (it needs ``_steady``;
    without it every packet also runs the state machine, which leaves a steady state as is)."""

    __slots__ = ()

    @property  # type: ignore[override]
    def _steady(self) -> bool:
        return False

    @_steady.setter
    def _steady(self, value: bool) -> None:
        pass


_HALF_FIELDS = ("nextseq", "nextseqtime", "maxseqtobeacked", "lastack", "window",
                "win_scale", "fin")


def _quirks(half: object) -> tuple[int, float, int] | None:
    q = getattr(half, "quirks")
    return None if q is None else (q.dupacks, q.lastacktime, q.lastflags)

# A mostly well-behaved bulk transfer: in-order data and ACKs (the fast path's diet), with the
# occasional retransmission, gap, zero window, repeated ACK, window change and wscale.
_STEP = st.tuples(
    st.booleans(),                                              # direction
    st.sampled_from(["data", "data", "data", "ack", "ack", "dupack", "retx", "gap", "zero",
                     "window", "fin", "rst"]),
    st.sampled_from([0, 1, 100, 1460]),                         # length
    st.floats(min_value=0.0, max_value=0.05),                   # time step
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([(None, None), (7, 7), (2, None)]),
       st.sampled_from([0.0, 0.010]), st.lists(_STEP, max_size=80))
def test_fast_path_gives_the_general_paths_events_and_state(wscale, rtt, steps) -> None:
    fast, slow = TcpConnection(), _GeneralPathOnly()
    seqs = {True: C1, False: S1}
    acked = {True: S1, False: C1}
    wins = {True: 65535, False: 65535}
    t = 1.0
    packets = []
    if rtt:
        packets += [seg(t, True, SYN, ISN_C, wscale=wscale[0]),
                    seg(t + rtt * 0.9, False, SYN | ACK, ISN_S, C1, wscale=wscale[1]),
                    seg(t + rtt, True, ACK, C1, S1)]
        t += rtt
    for fwd, kind, length, dt in steps:
        t += dt
        seq = seqs[fwd]
        ack = acked[fwd]
        flags, win = ACK | (PSH if length else 0), wins[fwd]
        if kind == "ack":
            length, ack = 0, seqs[not fwd]
            acked[fwd] = ack
        elif kind == "dupack":
            length = 0
        elif kind == "retx":
            seq -= length
        elif kind == "gap":
            seq += 1460
        elif kind == "zero":
            win = 0
        elif kind == "window":
            win = wins[fwd] = max(1, win // 2)
        elif kind == "fin":
            flags |= FIN
        elif kind == "rst":
            flags = RST | ACK
        packets.append(seg(t, fwd, flags, seq, ack, length, win))
        if kind in ("data", "gap"):
            seqs[fwd] = seq + length
    for pkt, fwd in packets:
        assert fast.update(pkt, fwd) == slow.update(pkt, fwd)
        for name in ("state", "closed", "handshake_rtt", "packets", "_bases", "_hs", *COUNTERS):
            assert getattr(fast, name) == getattr(slow, name), name
        for fast_half, slow_half in ((fast._a, slow._a), (fast._b, slow._b)):
            for name in _HALF_FIELDS:
                assert getattr(fast_half, name) == getattr(slow_half, name), name
            assert _quirks(fast_half) == _quirks(slow_half)


# ---------------------------------------------------------------------- memory
def _live_connections(module_conn: type, n: int) -> float:
    """Bytes each of ``n`` live connections keeps after a handshake, data both ways and a FIN
    (the connection, its halves, and the ints and floats they hold: the packets are gone)."""
    kept: list[object] = [None] * n

    def run() -> None:
        for i in range(n):
            conn = module_conn()
            c, s, t = 1_000_000_000 + i * 7919, 3_000_000_000 + i * 104729, 1.7e9 + i
            feed(conn,  # type: ignore[arg-type]
                 seg(t, True, SYN, c), seg(t + 0.01, False, SYN | ACK, s, c + 1),
                 seg(t + 0.02, True, ACK | PSH, c + 1, s + 1, 100),
                 seg(t + 0.03, False, ACK | PSH, s + 1, c + 101, 200),
                 seg(t + 0.04, True, FIN | ACK, c + 101, s + 201))
            kept[i] = conn

    return traced_growth(run) / n


def test_a_live_connection_keeps_few_bytes() -> None:
    # Measured 484 B (CPython 3.11); 532 before the base sequence numbers and the handshake
    # times were packed and ``closed`` derived. tracemalloc counts are exact, so the bound
    # leaves no room for one more slot (8 B) or a field holding its own int or float.
    per = _live_connections(TcpConnection, 2000)
    assert per < 490, f"{per:.0f} bytes per live connection"
