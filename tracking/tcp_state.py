"""Per-connection TCP state and sequence analysis, to the packet as tshark 4.0 does it.

One :class:`TcpConnection` lives inside each TCP flow of the flow tracker. The tracker calls
:meth:`TcpConnection.update` for every TCP packet of the connection and gets back a bitmask of
``EV_*`` events for that packet.

The analysis reproduces ``tcp_analyze_sequence_number()`` of Wireshark's packet-tcp.c as
tshark 4.0 runs it (default preferences), check for check and in the same order, because the
order decides which label a segment gets:

1. zero-window probe (skips 2-8)    6. window full
2. zero window                      7. keep-alive ACK / zero-window-probe ACK (skip 8)
3. lost segment (previous not seen) 8. duplicate ACK
4. keep-alive                       9. ACKed unseen segment
5. window update
10. for data/SYN/FIN that does not advance the sequence (keep-alives excepted), the first of:
    spurious retransmission (all of it already ACKed), fast retransmission (>= 2 dup ACKs,
    within 20 ms), out-of-order (within the handshake RTT, else 3 ms, of the highest segment;
    SYN/FIN count in its end), retransmission.

Spurious comes before fast retransmission and out-of-order, and the out-of-order end counts
SYN/FIN: older packet-tcp.c copies differ, but this is what tshark 4.0.17 does (checked on
crafted captures by tests/test_tcp_tshark_diff.py).

Sequence numbers are compared modulo 2**32 (Wireshark's GT_SEQ/LT_SEQ/LE_SEQ). Wireshark runs
the analysis on the absolute numbers and makes them relative only for display, so a per-direction
``nextseq``/``lastack`` of 0 means "not seen yet" exactly as in packet-tcp.c (the relative base
only matters for the port-reuse rule, see :meth:`TcpConnection.is_new_connection`). SYN and FIN
each count as one sequence number.

Known differences from tshark (each one is deliberate, for speed and memory):

* Wireshark adds the SYN/FIN "+1" to ``nextseq`` only while fewer than 1000 segments of that
  direction are un-ACKed (TCP_MAX_UNACKED_SEGMENTS); we always add it. This only changes a
  SYN or FIN sent after 1000 unacknowledged segments (a one-way capture), never a data segment.
* Wireshark analyses a fragmented IPv4 TCP segment on the frame that completes reassembly; we
  see the TCP header on the first fragment (the flow tracker decides whether to feed it).
* On rare sequences tshark 4.0 labels a retransmission "fast" although the other side sent no
  two duplicate ACKs by the rule above (seen only in random crafted traffic, e.g. a segment
  that also ACKs data never captured). We label it a plain retransmission; it is in
  ``retransmissions`` either way, so tcp.analysis.retransmission counts still match.
* Times are float seconds; a difference within 0.5 µs of the 3 ms / 20 ms / RTT limits can be
  judged differently from tshark's integer nanoseconds on nanosecond-resolution captures.
* Packets whose TCP header is malformed (truncated, header length < 20) are not analysed; Wireshark
  analyses a header length < 20 but then stops dissecting that frame, so no label shows.
"""
from __future__ import annotations

from typing import Any

from capture.packet import ACK, FIN, RST, SYN, ParsedPacket

# --- events returned by update(); one bit per Wireshark tcp.analysis flag (TCP_A_*), plus ours.
EV_RETRANSMISSION = 0x0001
EV_LOST_SEGMENT = 0x0002           # tcp.analysis.lost_segment ("previous segment not captured")
EV_ACKED_UNSEEN = 0x0004           # tcp.analysis.ack_lost_segment ("ACKed unseen segment")
EV_KEEP_ALIVE = 0x0008
EV_DUP_ACK = 0x0010
EV_ZERO_WINDOW = 0x0020
EV_ZERO_WINDOW_PROBE = 0x0040
EV_ZERO_WINDOW_PROBE_ACK = 0x0080
EV_KEEP_ALIVE_ACK = 0x0100
EV_OUT_OF_ORDER = 0x0200
EV_FAST_RETRANSMISSION = 0x0400
EV_WINDOW_UPDATE = 0x0800
EV_WINDOW_FULL = 0x1000
EV_SPURIOUS_RETRANSMISSION = 0x4000
# ours, not Wireshark's
EV_RST = 0x10000                   # the packet has RST set (tcp.flags.reset == 1)
EV_HANDSHAKE = 0x20000             # this packet gave the connection its handshake RTT
EV_CLOSED = 0x40000                # the connection became closed with this packet

#: Wireshark's display filter ``tcp.analysis.retransmission`` matches fast and spurious
#: retransmissions too (packet-tcp.c adds the retransmission expert item for all three).
EV_ANY_RETRANSMISSION = EV_RETRANSMISSION | EV_FAST_RETRANSMISSION | EV_SPURIOUS_RETRANSMISSION
#: events that move one of the counters (_count)
_COUNTED = (EV_ANY_RETRANSMISSION | EV_OUT_OF_ORDER | EV_DUP_ACK | EV_ZERO_WINDOW
            | EV_ZERO_WINDOW_PROBE | EV_KEEP_ALIVE | EV_WINDOW_UPDATE | EV_WINDOW_FULL
            | EV_LOST_SEGMENT)

#: event bit -> tshark display filter name (``tcp.analysis.<name>``), for reports and tests.
EVENT_NAMES: dict[int, str] = {
    EV_RETRANSMISSION: "retransmission",
    EV_FAST_RETRANSMISSION: "fast_retransmission",
    EV_SPURIOUS_RETRANSMISSION: "spurious_retransmission",
    EV_OUT_OF_ORDER: "out_of_order",
    EV_DUP_ACK: "duplicate_ack",
    EV_ZERO_WINDOW: "zero_window",
    EV_ZERO_WINDOW_PROBE: "zero_window_probe",
    EV_ZERO_WINDOW_PROBE_ACK: "zero_window_probe_ack",
    EV_KEEP_ALIVE: "keep_alive",
    EV_KEEP_ALIVE_ACK: "keep_alive_ack",
    EV_WINDOW_UPDATE: "window_update",
    EV_WINDOW_FULL: "window_full",
    EV_LOST_SEGMENT: "lost_segment",
    EV_ACKED_UNSEEN: "ack_lost_segment",
    EV_RST: "rst",
    EV_HANDSHAKE: "handshake",
    EV_CLOSED: "closed",
}

# --- connection states (strings, so snapshots and exports need no mapping)
NEW = "NEW"                      # constructed, no packet yet
SYN_SENT = "SYN_SENT"            # initiator's SYN seen
SYN_RECEIVED = "SYN_RECEIVED"    # SYN-ACK seen (also when the capture starts at the SYN-ACK)
ESTABLISHED = "ESTABLISHED"      # handshake completed (ACK of the SYN-ACK, or data)
MIDSTREAM = "MIDSTREAM"          # picked up without a handshake; otherwise like ESTABLISHED
FIN_WAIT = "FIN_WAIT"            # the initiator sent FIN, the responder has not
CLOSE_WAIT = "CLOSE_WAIT"        # the responder sent FIN, the initiator has not
CLOSING = "CLOSING"              # FIN both ways, not both acknowledged yet
CLOSED = "CLOSED"                # FIN both ways acknowledged
RESET = "RESET"                  # RST seen
STATES: tuple[str, ...] = (NEW, SYN_SENT, SYN_RECEIVED, ESTABLISHED, MIDSTREAM, FIN_WAIT,
                           CLOSE_WAIT, CLOSING, CLOSED, RESET)

_M = 0xFFFFFFFF
_HALF = 0x80000000
_SFR = SYN | FIN | RST
_SF = SYN | FIN
_SFRA = SYN | FIN | RST | ACK
#: Wireshark compares times in integer nanoseconds; ours are float epoch seconds (about 0.24 µs
#: resolution), so "t < limit" is tested as "t < limit - _TIME_EPS". That is exact for captures
#: with microsecond timestamps (true differences are whole µs); with nanosecond timestamps a
#: difference within 0.5 µs of a limit may be judged differently from Wireshark.
_TIME_EPS = 5e-7
_FAST_RTX_WINDOW = 0.020 - _TIME_EPS   # fast retransmission: within 20 ms of the last dup ACK
_OOO_DEFAULT = 0.003 - _TIME_EPS       # out-of-order limit without a handshake RTT: 3 ms
#: _Quirks.lastflags keeps only these events of a direction's last segment (later checks read
#: no others)
_LAST_FLAGS = EV_KEEP_ALIVE | EV_ZERO_WINDOW_PROBE
#: _Half.fin: no FIN sent yet / our FIN acknowledged (else: the sequence number after our FIN)
_NO_FIN = -1
_FIN_ACKED = -2
#: TcpConnection._bases: both directions' base sequence numbers known (flag bit), and neither
_BOTH_KNOWN = 1 << 64
_NONE_KNOWN = -(1 << 33)
#: parser messages for frames whose TCP header could not be read (then: no analysis)
_BAD_TCP_HEADER = ("truncated TCP header", "bad TCP header length", "truncated TCP options")


#: the analysis counters of a connection (names of the flow-export contract, summed by
#: tracking.tcp_totals)
COUNTERS: tuple[str, ...] = (
    "retransmissions", "fast_retransmissions", "spurious_retransmissions", "out_of_order",
    "dup_acks", "zero_windows", "zero_window_probes", "keep_alives", "window_updates",
    "window_full", "lost_segments", "resets",
)


class _Counts:
    """A connection's analysis counters (only connections with events carry one)."""

    __slots__ = COUNTERS

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0)


class _Counter:
    """Reads one counter of a :class:`TcpConnection`: 0 until the connection had an event.

    Twelve counters as slots cost 96 bytes on every connection; almost all stay 0.
    """

    __slots__ = ("name",)

    def __init__(self) -> None:
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: "TcpConnection | None", owner: type | None = None) -> Any:
        if obj is None:
            return self
        n = obj._n
        return getattr(n, self.name) if n is not None else 0


#: one int object per TCP window value in use. A connection keeps the last window of each
#: direction; holding the packet's own int costs 32 bytes each, and window values repeat across
#: connections (65535, 64240, 502...). Bounded by the 16-bit field: at most 65,536 entries.
_WINDOWS: dict[int, int] = {}


def _ooo_limit(hs: float | complex) -> float:
    """Out-of-order limit: the handshake RTT once known (and non-zero), else 3 ms (ooo_thres).

    ``hs`` is TcpConnection._hs: a float only for a known non-zero RTT.
    """
    return hs - _TIME_EPS if type(hs) is float else _OOO_DEFAULT


class _Quirks:
    """A direction's memory of rare events: made at its first duplicate ACK, keep-alive or
    zero-window probe, dropped again once all three fields are back to these defaults."""

    __slots__ = ("dupacks", "lastacktime", "lastflags")

    def __init__(self) -> None:
        #: duplicate ACKs in a row from this direction (reset when its ACK number changes)
        self.dupacks = 0
        #: time of this direction's last segment while ``dupacks`` > 0, else 0.0 (only the
        #: fast-retransmission check reads it, after two duplicate ACKs)
        self.lastacktime = 0.0
        #: the keep-alive / zero-window-probe events of this direction's last segment (the
        #: only ones a later check reads)
        self.lastflags = 0


class _Half:
    """What one direction has sent (Wireshark's tcp_flow_t + tcp_analyze_seq_flow_info_t).

    Fields are kept few, and the int and float objects they hold are shared where the values
    agree (see the memory note on :class:`TcpConnection`).
    """

    __slots__ = ("nextseq", "nextseqtime", "maxseqtobeacked", "lastack", "window", "win_scale",
                 "quirks", "fin")

    def __init__(self) -> None:
        self.nextseq = 0          # highest seq+len(+SYN/FIN) seen; 0 = none yet (as Wireshark)
        self.nextseqtime = 0.0
        self.maxseqtobeacked = 0  # end of the contiguous data seen; 0 = none yet
        self.lastack = 0          # ack field of the last segment (also without the ACK flag)
        self.window = _M          # unscaled window of the last segment; G_MAXUINT32 = unknown
        self.win_scale = -1       # -1 unknown, -2 known unused, else the shift
        #: duplicate ACKs, keep-alives, zero-window probes: None while there are none
        self.quirks: _Quirks | None = None
        #: our FIN: _NO_FIN, the sequence number just after it while unacknowledged, _FIN_ACKED
        self.fin = _NO_FIN


class TcpConnection:
    """One TCP connection: state machine, handshake RTT and tshark-compatible analysis counters.

    ``update(pkt, forward)`` must see every TCP packet of the connection in capture order;
    ``forward`` is True for packets sent by the flow's initiator (the SYN sender, else the sender
    of the first packet).

    Memory (a flow table holds one per live TCP flow): three slotted objects (this one and a
    :class:`_Half` per direction) plus the int and float objects their fields hold, which is
    as much again. Kept small by holding few fields (no set-flags beside values that can be
    None, one FIN field per direction, the rare dup-ACK/keep-alive memory in a per-direction
    :class:`_Quirks` made only when needed, the out-of-order limit derived from the RTT) and by
    sharing int and float objects where values agree (an ACK number equal to the other side's
    end of data holds that int, not the packet's; a FIN end equal to ``nextseq`` holds the same
    int; the SYN time is dropped once the RTT is known), by deriving ``closed`` from the
    state, and by packing fields the fast path never reads: both base sequence numbers in one
    int (``_bases``), the SYN time and the RTT in one slot (``_hs``). With a handshake, data
    and a FIN: about 458 bytes per connection with its ints and floats (tracemalloc, with the
    ints and floats of parsed packets the connection keeps), 508 before the packing, 777
    before the sharing. Each costs a few thousand instructions on a connection's handshake
    packets and none on the fast path (callgrind).

    Tried and left out: making this object the initiator's half (a subclass of
    :class:`_Half`) would save 40 bytes more, but then ``fwd``/``rev`` are of two types and
    CPython 3.11's attribute-access specialisation misses on every other packet (fast path
    about 4% slower). ``packets`` and ``_steady`` in one signed slot (count, negative while not
    steady) would save 8 bytes, but the fast path's ``> 0`` test stays unspecialised in 3.11:
    about 130 instructions more per in-order packet (2%). A new local name in :meth:`update`
    costs every call too (the frame clears each one), so the handshake code reuses names.
    """

    __slots__ = ("_a", "_b", "_bases", "_hs", "_steady", "state", "packets", "_n")

    #: frames matching tshark's tcp.analysis.retransmission (includes fast and spurious)
    retransmissions = _Counter()
    fast_retransmissions = _Counter()
    spurious_retransmissions = _Counter()
    out_of_order = _Counter()
    dup_acks = _Counter()
    zero_windows = _Counter()
    zero_window_probes = _Counter()
    keep_alives = _Counter()
    window_updates = _Counter()
    window_full = _Counter()
    lost_segments = _Counter()
    resets = _Counter()

    def __init__(self) -> None:
        self._a = _Half()          # initiator -> responder
        self._b = _Half()          # responder -> initiator
        #: base sequence number of each direction (its SYN's, else seq-1 of its first segment,
        #: else ack-1 of the other side's first ACK), in one int: _NONE_KNOWN; the initiator's
        #: alone (0 <= n < 2**32: the SYN's own int); the responder's alone (~n, negative);
        #: both: _BOTH_KNOWN | initiator's | responder's << 32 (a 36-byte int, for two 32-byte
        #: ints and two slots). Only the port-reuse rule and _steady read them.
        self._bases = _NONE_KNOWN
        #: the in-order fast path may run: ESTABLISHED/MIDSTREAM with no FIN yet (a packet
        #: without SYN/FIN/RST changes no state), both bases known, the handshake RTT settled
        self._steady = False
        self.state: str = NEW
        #: the handshake in one slot, as the SYN time is only needed until the RTT is known:
        #: a float: the RTT (non-zero; no SYN time kept); else complex(z, t): the time t of the
        #: most recent SYN (Wireshark's ts_mru_syn; 0.0 = none) with no RTT yet (z == 0.0) or an
        #: RTT of exactly 0.0 (z == 1.0: then a later SYN and ACK measure it again, as in
        #: Wireshark). So ``_hs.imag`` is the SYN time in both cases (a float's imag is 0.0).
        self._hs: float | complex = 0j
        self.packets = 0
        #: the analysis counters, made at the first event (most connections never have one)
        self._n: _Counts | None = None

    @property
    def handshake_rtt(self) -> float | None:
        """Seconds from the (last) SYN to the first ACK without SYN (tcp.analysis.initial_rtt)."""
        hs = self._hs
        if type(hs) is complex:
            return 0.0 if hs.real else None
        return hs

    @property
    def counts(self) -> _Counts | None:
        """The analysis counters, or None while the connection had no event (all are 0)."""
        return self._n

    @property
    def closed(self) -> bool:
        """FIN both ways acknowledged, or RST: the tracker may retire the flow after a linger.

        Derived from the state (both are final) rather than kept in a slot: read only on SYNs
        and by the tracker's expiry.
        """
        state = self.state
        return state == CLOSED or state == RESET

    # ------------------------------------------------------------------ stream splitting
    def is_new_connection(self, pkt: ParsedPacket, forward: bool) -> bool:
        """True when ``pkt`` starts a new connection on the same 5-tuple (tshark's tcp.stream rule).

        Wireshark 4.0 (dissect_tcp) starts a new conversation when a SYN without ACK arrives
        and the sending direction already has a base sequence number (from its SYN, or seq-1 of
        its first segment, or ack-1 of the other side's first ACK) different from this SYN's
        sequence number. A SYN with the same sequence number is a retransmission and stays.
        The flow tracker calls this before :meth:`update` and, when True, retires this connection
        and starts a fresh flow with the SYN sender as initiator.
        """
        if pkt.tcp_flags & (SYN | ACK) != SYN:
            return False
        bases = self._bases
        if bases >= _BOTH_KNOWN:
            base = bases & _M if forward else (bases >> 32) & _M
        elif bases >= 0:  # the initiator's alone
            base = bases if forward else None
        else:
            base = ~bases if not forward and bases != _NONE_KNOWN else None
        return base is not None and pkt.seq != base

    # ------------------------------------------------------------------ per packet
    def update(self, pkt: ParsedPacket, forward: bool) -> int:
        """Analyse one packet of this connection; return its ``EV_*`` bitmask."""
        if pkt.malformed and pkt.malformed.startswith(_BAD_TCP_HEADER):
            return 0
        flags = pkt.tcp_flags
        seq = pkt.seq
        ack = pkt.ack
        seglen = pkt.payload_len
        window = pkt.window
        now = pkt.ts
        if forward:
            fwd = self._a
            rev = self._b
        else:
            fwd = self._b
            rev = self._a

        # Fast path: the next in-order segment (or an ACK that moves the ACK number) of a
        # steady connection (see _steady), with ACK and no SYN/FIN/RST and both windows open.
        # Under those conditions every check of the general path below is false (zero-window
        # probe and zero window need a 0 window; lost segment and keep-alive need
        # seq != nextseq; dup ACK, window update and their kin need an empty segment with an
        # unchanged ACK; ACKed-unseen, spurious and window-full are tested here), no state
        # changes, and the updates are exactly those the general path makes for a segment
        # without events (the other side's quirks only matter to a repeated ACK or a segment
        # that does not advance). Anything else falls through to it.
        if self._steady and flags & _SFRA == ACK and seq == fwd.nextseq and window \
                and rev.window:
            rmx = rev.maxseqtobeacked
            if not rmx or ((rmx - ack) & _M) < _HALF:
                if seglen:
                    end = (seq + seglen) & _M
                    lastack = rev.lastack
                    ws = rev.win_scale
                    if (not lastack or 0 < ((end - lastack) & _M) < _HALF) and (
                            ws == -1 or end != (lastack + ((rev.window << (ws if ws > 0 else 0))
                                                           & _M)) & _M):
                        self.packets += 1
                        fq = fwd.quirks
                        if fq is not None:  # as at the end of the general path
                            if fq.dupacks and ack == fwd.lastack:
                                fq.lastacktime = now
                                fq.lastflags = 0
                            else:
                                fwd.quirks = None
                        fwd.nextseq = end
                        fwd.nextseqtime = now
                        mx = fwd.maxseqtobeacked
                        if seq == mx or not mx:
                            fwd.maxseqtobeacked = end
                        if window != fwd.window:
                            fwd.window = _WINDOWS.setdefault(window, window)
                        # hold the other side's int, not the packet's, when they are equal
                        fwd.lastack = rmx if ack == rmx else ack
                        return 0
                elif ack != fwd.lastack:
                    self.packets += 1
                    fwd.quirks = None  # a new ACK number ends a dup-ACK run
                    mx = fwd.maxseqtobeacked
                    if seq == mx or not mx:
                        fwd.maxseqtobeacked = fwd.nextseq
                    if window != fwd.window:
                        fwd.window = _WINDOWS.setdefault(window, window)
                    fwd.lastack = rmx if ack == rmx else ack
                    return 0

        self.packets += 1

        if not self._steady and self._bases < _BOTH_KNOWN:  # (steady: both known)
            self._learn_bases(flags, seq, ack, forward)

        nextseq = fwd.nextseq
        sfr = flags & _SFR
        ev = 0
        if seglen == 1 and seq == nextseq and rev.window == 0:
            ev = EV_ZERO_WINDOW_PROBE
        else:
            if window == 0 and not sfr:
                ev = EV_ZERO_WINDOW
            # GT_SEQ(seq, nextseq)
            if nextseq and ((nextseq - seq) & _M) >= _HALF and not flags & RST:
                ev |= EV_LOST_SEGMENT
            if seglen <= 1 and not sfr and seq == (nextseq - 1) & _M:
                ev |= EV_KEEP_ALIVE
            if seglen == 0:
                if not sfr and seq == nextseq and ack == fwd.lastack:
                    if window != fwd.window:
                        if window:
                            ev |= EV_WINDOW_UPDATE
                    elif window:
                        if (rq := rev.quirks) is not None and rq.lastflags & EV_KEEP_ALIVE:
                            ev |= EV_KEEP_ALIVE_ACK
                        else:
                            if (fq := fwd.quirks) is None:
                                fq = fwd.quirks = _Quirks()
                            fq.dupacks += 1
                            ev |= EV_DUP_ACK
                    elif (rq := rev.quirks) is not None and rq.lastflags & EV_ZERO_WINDOW_PROBE:
                        ev |= EV_ZERO_WINDOW_PROBE_ACK
            elif not sfr and rev.win_scale != -1:
                shift = rev.win_scale if rev.win_scale > 0 else 0
                if (seq + seglen) & _M == (rev.lastack + ((rev.window << shift) & _M)) & _M:
                    ev |= EV_WINDOW_FULL

        # ACKed unseen segment: this ACK covers data of the other side we never saw
        mx = rev.maxseqtobeacked
        if mx and flags & ACK and ((mx - ack) & _M) >= _HALF:
            rev.maxseqtobeacked = rev.nextseq
            ev |= EV_ACKED_UNSEEN

        if (seglen or flags & _SF) and not ev & EV_KEEP_ALIVE:
            # LT_SEQ(seq, nextseq); a segment of >1 byte starting one before nextseq carries
            # new data after a zero-window probe, so it is not "not advanced"
            not_adv = bool(nextseq) and ((seq - nextseq) & _M) >= _HALF
            if seglen > 1 and (nextseq - 1) & _M == seq:
                not_adv = False
            # data the other side has already acknowledged: LE_SEQ(seq + seglen, rev.lastack)
            if seglen and rev.lastack and (
                    (d := (seq + seglen - rev.lastack) & _M) == 0 or d >= _HALF):
                ev |= EV_SPURIOUS_RETRANSMISSION
            elif not_adv and (rq := rev.quirks) is not None and rq.dupacks >= 2 \
                    and rev.lastack == seq and 0.0 <= now - rq.lastacktime < _FAST_RTX_WINDOW:
                ev |= EV_FAST_RETRANSMISSION
            elif not_adv and 0.0 <= now - fwd.nextseqtime < _ooo_limit(self._hs) \
                    and nextseq != (seq + seglen + (1 if flags & _SF else 0)) & _M:
                ev |= EV_OUT_OF_ORDER
            elif not_adv:
                ev |= EV_RETRANSMISSION

        nxt = seq + seglen + 1 if flags & _SF else seq + seglen
        nxt &= _M
        if (not nextseq or ((nextseq - nxt) & _M) >= _HALF) and not ev & EV_ZERO_WINDOW_PROBE:
            fwd.nextseq = nxt
            fwd.nextseqtime = now
        mx = fwd.maxseqtobeacked
        if (seq == mx or not mx) and not ev & EV_ZERO_WINDOW_PROBE:
            fwd.maxseqtobeacked = fwd.nextseq
        if window != fwd.window:
            fwd.window = _WINDOWS.setdefault(window, window)
        fq = fwd.quirks
        if fq is not None:
            if ack != fwd.lastack:
                fq.dupacks = 0
            if fq.dupacks or ev & _LAST_FLAGS:
                fq.lastacktime = now if fq.dupacks else 0.0
                fq.lastflags = ev & _LAST_FLAGS
            else:
                fwd.quirks = None
        elif ev & _LAST_FLAGS:
            fq = fwd.quirks = _Quirks()
            fq.lastflags = ev & _LAST_FLAGS
        mx = rev.maxseqtobeacked
        fwd.lastack = mx if ack == mx else ack

        if flags & SYN:
            opts = pkt.tcp_options
            if opts is not None and opts.wscale is not None:
                fwd.win_scale = opts.wscale if opts.wscale <= 14 else 14
            # verify_tcp_window_scaling(): scaling is used only if both SYNs carried the option
            if fwd.win_scale == -1:
                fwd.win_scale = -2
                rev.win_scale = -2
            elif flags & ACK and rev.win_scale == -2:
                fwd.win_scale = -2
            # (the SYN time only matters until the RTT is known: while _hs is no float)
            # (no new local names here: each one costs every call of update, fast path included)
            if not flags & ACK and type(self._hs) is complex:
                self._hs = complex(self._hs.real, now)
        elif flags & ACK and not self._steady and type(self._hs) is complex \
                and self._hs.imag:  # a SYN time (so no RTT yet, so not steady)
            # (cheapest tests first: a steady connection or a known RTT is the common case)
            rtt = now - self._hs.imag
            # (an RTT of 0.0: now is the SYN time)
            self._hs = rtt if rtt else complex(1.0, now)
            ev |= EV_HANDSHAKE

        if ev & _COUNTED:
            self._count(ev)
        if self._steady and not sfr:
            return ev
        return self._advance_state(flags, seq, ack, seglen, forward, fwd, rev, ev)

    def _learn_bases(self, flags: int, seq: int, ack: int, forward: bool) -> None:
        """Learn the base sequence numbers this packet gives (see _bases; not both known yet)."""
        bases = self._bases
        if bases == _NONE_KNOWN or (bases >= 0) != forward:
            # this side's base is not known: from this packet's sequence number
            own = seq if flags & SYN else (seq - 1) & _M
            if bases != _NONE_KNOWN:  # the other side's is known
                self._bases = _BOTH_KNOWN | own | ~bases << 32 if forward \
                    else _BOTH_KNOWN | bases | own << 32
            elif not flags & ACK:
                self._bases = own if forward else ~own
            else:
                other = (ack - 1) & _M
                self._bases = _BOTH_KNOWN | own | other << 32 if forward \
                    else _BOTH_KNOWN | other | own << 32
        elif flags & ACK:  # this side's is known: the other side's from the ACK number
            other = (ack - 1) & _M
            self._bases = _BOTH_KNOWN | bases | other << 32 if forward \
                else _BOTH_KNOWN | other | ~bases << 32

    def _counts(self) -> _Counts:
        n = self._n
        if n is None:
            n = self._n = _Counts()
        return n

    def _count(self, ev: int) -> None:
        n = self._counts()
        if ev & EV_ANY_RETRANSMISSION:
            n.retransmissions += 1
            if ev & EV_FAST_RETRANSMISSION:
                n.fast_retransmissions += 1
            elif ev & EV_SPURIOUS_RETRANSMISSION:
                n.spurious_retransmissions += 1
        if ev & EV_OUT_OF_ORDER:
            n.out_of_order += 1
        if ev & EV_DUP_ACK:
            n.dup_acks += 1
        if ev & EV_ZERO_WINDOW:
            n.zero_windows += 1
        if ev & EV_ZERO_WINDOW_PROBE:
            n.zero_window_probes += 1
        if ev & EV_KEEP_ALIVE:
            n.keep_alives += 1
        if ev & EV_WINDOW_UPDATE:
            n.window_updates += 1
        if ev & EV_WINDOW_FULL:
            n.window_full += 1
        if ev & EV_LOST_SEGMENT:
            n.lost_segments += 1

    def _advance_state(self, flags: int, seq: int, ack: int, seglen: int, forward: bool,
                       fwd: _Half, rev: _Half, ev: int) -> int:
        """Connection state machine (ours; Wireshark has none). Returns ``ev`` plus RST/CLOSED."""
        if flags & RST:
            self._counts().resets += 1
            ev |= EV_RST
            self._steady = False
            state = self.state
            if state != RESET:
                self.state = RESET
                if state != CLOSED:
                    ev |= EV_CLOSED
            return ev
        state = self.state
        if state == RESET or state == CLOSED:
            return ev
        if state == NEW:
            if flags & SYN:
                state = SYN_RECEIVED if flags & ACK else SYN_SENT
            else:
                state = MIDSTREAM
        elif state == SYN_SENT:
            if flags & SYN and flags & ACK and not forward:
                state = SYN_RECEIVED
        elif state == SYN_RECEIVED:
            # the ACK of the SYN-ACK (or data) completes it; when the capture began at the
            # SYN-ACK its sender counts as the initiator, so either side may send that ACK
            if not flags & SYN and (seglen or flags & ACK):
                state = ESTABLISHED
        if flags & FIN and fwd.fin == _NO_FIN:
            end = (seq + seglen + 1) & _M
            fwd.fin = fwd.nextseq if end == fwd.nextseq else end  # share the int object
        # the other side's FIN is acknowledged once this ACK reaches past it: GE_SEQ(ack, fin)
        if flags & ACK and rev.fin >= 0 and ((ack - rev.fin) & _M) < _HALF:
            rev.fin = _FIN_ACKED
        if fwd.fin != _NO_FIN or rev.fin != _NO_FIN:
            a_fin = self._a.fin
            b_fin = self._b.fin
            if a_fin == _FIN_ACKED and b_fin == _FIN_ACKED:
                state = CLOSED
                ev |= EV_CLOSED
            elif a_fin != _NO_FIN and b_fin != _NO_FIN:
                state = CLOSING
            elif a_fin != _NO_FIN:
                state = FIN_WAIT
            else:
                state = CLOSE_WAIT
            self.state = state
            self._steady = False
            return ev
        self.state = state
        # (always a bool: the fast path's first test)
        self._steady = (state == ESTABLISHED or state == MIDSTREAM) \
            and self._bases >= _BOTH_KNOWN \
            and (type(self._hs) is float or not self._hs.imag)
        return ev

    # ------------------------------------------------------------------ export
    def as_dict(self) -> dict[str, object]:
        """TCP counters for a flow in the export (names are the flow-export contract)."""
        rtt = self.handshake_rtt
        n = self._n
        d: dict[str, object] = {name: getattr(n, name) if n is not None else 0
                                for name in COUNTERS}
        d["handshake_rtt_ms"] = None if rtt is None else round(rtt * 1000.0, 3)
        d["state"] = self.state
        return d
