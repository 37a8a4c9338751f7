"""Per-flow deep inspection: the one entry point the packet pipeline calls.

:class:`FlowInspector` keeps, per flow and direction, a small in-order buffer of the first
bytes of TCP payload (out-of-order segments are parked, retransmissions trimmed), runs the
detectors on it once (application protocol, TLS hello, HTTP head, QUIC Initial), then frees
the buffer and marks the direction done. A direction whose first payload settles it (most do:
SSH, DNS, unknown binary...) never gets a buffer at all. After that, a packet of the flow costs
a few attribute reads and integer compares (the anomaly rules). HTTP client directions are the
one exception: request heads keep being read, up to ``http_requests`` per flow, so keep-alive
connections report every request they carry.

Memory: a flow being inspected holds one 80-byte :class:`_FlowState`; the application protocol
and OS guesses are a shared interned :class:`_Labels` value, and the full :class:`DpiFacts` record
is made only for flows with TLS, HTTP or anomaly facts. Once a flow is finished (both directions
done, no record, both first TTLs known: most flows) it points at a :class:`_SharedState` interned
per (labels, TTLs) instead, and gets its own copy back only if something is ever written.

Privacy: payload bytes live only in these buffers, in memory, and only until the direction is
classified or its ``stream_bytes`` limit is reached. Facts exclude secrets: no cookies,
authorization headers, bodies, TLS randoms, session ids or keys.

Wiring: the pipeline calls ``flow_stage(pkt, flow, forward)`` for every packet after the flow
tracker has placed it (``forward`` = initiator -> responder); the state lives on ``flow.dpi``, and
``retire(flow)`` (a flow-tracker listener) cuts it down to the facts when the flow leaves the
table. Read ``facts(flow)``/``as_export(flow)`` when building a snapshot or export. Without a
Flow object, ``inspect(pkt, flow_key, forward)`` keeps the state in a table by key (bounded by
``max_flows``; ``forget(flow_key)`` drops an entry).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from analysis import apps
from analysis.anomaly import (
    FLAG_RULES, TINY_FRAGMENT, TTL_TOLERANCE, BeaconDetector, HostAnomalies, add_rule,
)
from analysis.http import (
    MAX_HEAD, HttpRequest, head_end, parse_request, parse_response, starts_request,
)
from analysis.osfp import fingerprint
from analysis.quic import CryptoAssembler, is_long_header
from analysis.tls import NEED_MORE, ClientHello, ServerHello, parse_tls_stream, \
    version_name
from capture.packet import ACK, PROTO_TCP, PROTO_UDP, SYN, ParsedPacket
from config import MAX_FLOWS
from utils.bounded import drop_oldest_share

#: bytes of each direction's stream kept while it is being classified
STREAM_BYTES = 8192
#: HTTP request heads recorded per flow (keep-alive connections carry many)
HTTP_REQUESTS = 32
#: out-of-order TCP segments parked per direction before giving up on it
MAX_PENDING = 32
#: UDP datagrams per direction looked at (QUIC may need several for one ClientHello)
MAX_DATAGRAMS = 8

#: data segments after which a direction that still fits nothing is called unknown
UNDECIDED_SEGMENTS = 4

# Direction modes.
_CLASSIFY, _TLS, _HTTP_REQ, _HTTP_RESP, _QUIC, _DONE = range(6)
_MASK = 0xFFFFFFFF


@dataclass(slots=True)
class DpiFacts:
    """What inspection found out about one flow. Missing facts are None."""

    app_protocol: str | None = None
    #: registered service of the responder's port
    port_guess: str | None = None
    #: the payload protocol is not what the port is registered for
    mismatch: bool = False
    sni: str | None = None
    #: the ALPN the server chose, else the client's offer joined by ","
    alpn: str | None = None
    #: negotiated version when the ServerHello was seen, else the highest offered
    tls_version: str | None = None
    ja3: str | None = None
    ja3_full: str | None = None
    ja4: str | None = None
    ja3s: str | None = None
    http_host: str | None = None
    http_method: str | None = None
    http_path: str | None = None
    http_user_agent: str | None = None
    http_status: int | None = None
    http_server: str | None = None
    http_content_type: str | None = None
    client_os: str | None = None
    server_os: str | None = None
    anomaly_score: int = 0
    #: (an empty tuple until the first rule trips: no allocation for clean flows)
    anomaly_reasons: Sequence[str] = ()
    #: every request head seen on the flow (bounded by ``http_requests``)
    http_requests: Sequence[HttpRequest] = ()
    client_hello: ClientHello | None = None
    server_hello: ServerHello | None = None
    #: the rule ids of ``anomaly_reasons``, in the same order
    anomaly_rules: Sequence[str] = ()


@dataclass(slots=True, frozen=True)
class _Labels:
    """The per-flow facts nearly every flow has, as one shared value: there are few
    combinations, so flows point at one interned instance instead of holding the fields."""

    app: str | None = None
    client_os: str | None = None
    server_os: str | None = None
    #: whether a TTL change means anything here (not for ICMP, where traceroute raises it on
    #: purpose, nor for broadcast/multicast or unconfigured senders such as DHCP clients)
    ttl_rule: bool = True


_LABELS: dict[tuple[str | None, str | None, str | None, bool], _Labels] = {}
#: labels come from fixed tables (apps, osfp), so this bound is never reached in practice
_LABELS_MAX = 4096


def _labels(app: str | None, client_os: str | None, server_os: str | None,
            ttl_rule: bool) -> _Labels:
    """The shared :class:`_Labels` with these values."""
    key = (app, client_os, server_os, ttl_rule)
    hit = _LABELS.get(key)
    if hit is None:
        hit = _Labels(app, client_os, server_os, ttl_rule)
        if len(_LABELS) < _LABELS_MAX:
            _LABELS[key] = hit
    return hit


_TTL_RULE = _labels(None, None, None, True)
_NO_TTL_RULE = _labels(None, None, None, False)


@dataclass(slots=True)
class _Dir:
    """One direction's reassembly and detector state (only while it is being classified)."""

    mode: int = _CLASSIFY
    next_seq: int = -1
    buf: bytearray = field(default_factory=bytearray)
    pending: dict[int, bytes] | None = None
    #: HTTP: body bytes still to skip before the next request head
    skip: int = 0
    #: HTTP: lost the message boundary; wait for a segment that starts a request
    resync: bool = False
    datagrams: int = 0
    quic: CryptoAssembler | None = None


#: the state of every direction that is done for good (shared: never written to)
_DONE_DIR = _Dir(mode=_DONE)


class _FlowState:
    """Per-flow inspection state, kept small (80 bytes): one lives on every flow still being
    inspected (finished ones share a :class:`_SharedState`).

    The facts nearly every flow has (application protocol, OS guesses) are a shared
    :class:`_Labels`; the full :class:`DpiFacts` record (TLS, HTTP, anomalies, mismatch) is made
    only when the flow yields one of those. The flow's addresses and ports are read from the
    flow itself.
    """

    __slots__ = ("c", "s", "ttl_c", "ttl_s", "labels", "facts")

    def __init__(self, labels: _Labels) -> None:
        #: per direction: None (nothing yet), an int (the sequence number after a SYN, until
        #: payload arrives), a :class:`_Dir` while classifying, or the shared ``_DONE_DIR``
        self.c: _Dir | int | None = None
        self.s: _Dir | int | None = None
        #: first TTL seen in each direction (-1 = none yet)
        self.ttl_c = -1
        self.ttl_s = -1
        self.labels = labels
        #: the rarer facts, made on first use (see :meth:`FlowInspector._rich`)
        self.facts: DpiFacts | None = None


class _SharedState(_FlowState):
    """A finished state (both directions done, no facts record, both first TTLs known) shared
    by every flow with the same labels and TTLs: such a state holds nothing else, and most
    live flows end up in one, so they point at an interned instance instead of owning 80
    bytes. Never written to: a writer first gives its flow a private copy
    (:meth:`FlowInspector._own`)."""

    __slots__ = ()


_SHARED: dict[tuple[_Labels, int, int], _SharedState] = {}
#: interned finished states at most (labels x TTL pairs in use; beyond it flows keep their own)
_SHARED_MAX = 4096


def _finish(st: _FlowState, flow: Any) -> None:
    """Put the flow on the shared state equal to ``st`` if ``st`` is finished (see
    :class:`_SharedState`). The caller must not write to ``st`` afterwards."""
    if st.c is _DONE_DIR and st.s is _DONE_DIR and st.facts is None and st.ttl_c >= 0 \
            and st.ttl_s >= 0:
        key = (st.labels, st.ttl_c, st.ttl_s)
        shared = _SHARED.get(key)
        if shared is None:
            if len(_SHARED) >= _SHARED_MAX:
                return
            shared = _SHARED[key] = _SharedState(st.labels)
            shared.c = shared.s = _DONE_DIR
            shared.ttl_c, shared.ttl_s = st.ttl_c, st.ttl_s
        flow.dpi = shared


class _Keyed:
    """Holds the state of a flow inspected by key (:meth:`FlowInspector.inspect`), with the
    flow fields the inspector reads (the initiator is the client)."""

    __slots__ = ("dpi", "key", "src_ip")

    def __init__(self, pkt: ParsedPacket, forward: bool) -> None:
        self.dpi: _FlowState | None = None
        if forward:
            self.key = (pkt.proto, pkt.src_ip, pkt.sport, pkt.dst_ip, pkt.dport)
        else:
            self.key = (pkt.proto, pkt.dst_ip, pkt.dport, pkt.src_ip, pkt.sport)
        self.src_ip = self.key[1]


#: TCP flags byte -> whether it needs a look beyond the per-packet checks (a suspicious
#: combination, or a SYN: OS fingerprint and sequence numbers)
_FLAG_WORK: tuple[bool, ...] = tuple(FLAG_RULES[f] is not None or bool(f & SYN)
                                     for f in range(256))


class FlowInspector:
    """Deep inspection of flows, fed one packet at a time.

    Args:
        max_flows: flows tracked at once; the oldest eighth is dropped when it is reached (the
            tracker normally calls :meth:`forget` first).
        stream_bytes: bytes of each direction buffered while classifying it.
        http_requests: request heads recorded per flow.
        beacons: the detector for regular connection timing (pass one to share it).
        all_flows: the flow tracker's ``all_flows``, so :meth:`facts` and :meth:`as_export`
            can also be given a ``flow_key`` for flows inspected by :meth:`flow_stage`.
    """

    def __init__(self, max_flows: int = MAX_FLOWS, stream_bytes: int = STREAM_BYTES,
                 http_requests: int = HTTP_REQUESTS,
                 beacons: BeaconDetector | None = None,
                 all_flows: Callable[[], Iterable[Any]] | None = None) -> None:
        self.max_flows = max_flows
        self.stream_bytes = stream_bytes
        self.http_requests = http_requests
        self.beacons = beacons if beacons is not None else BeaconDetector()
        self.hosts = HostAnomalies()
        self._flows: dict[str, _Keyed] = {}
        #: where :meth:`facts` finds flows fed through :meth:`flow_stage` when given a key
        #: (e.g. ``FlowTracker.all_flows``)
        self.all_flows = all_flows
        self._created = 0
        self._index: dict[str, Any] = {}
        self._index_created = -1

    # ---- public API --------------------------------------------------------------------------
    def flow_stage(self, pkt: ParsedPacket, flow: Any, forward: bool) -> None:
        """The pipeline's flow stage: inspect one packet of ``flow`` (``forward``: initiator ->
        responder), with the state kept on ``flow.dpi``.

        No flow key string and no table entry per flow: the state lives and goes with the flow
        (call :meth:`retire` when the flow leaves the table to keep only its facts). Once both
        directions are classified, a packet costs a few attribute reads and integer compares
        (the anomaly rules).
        """
        st = flow.dpi
        if st is None:
            st = flow.dpi = self._state(pkt, flow, forward)
            self._created += 1
        # --- anomaly rules: integer checks only (the rare cases in helpers)
        ttl = pkt.ttl
        if ttl != (st.ttl_c if forward else st.ttl_s):
            st = self._ttl(st, flow, ttl, forward)
        if pkt.proto == PROTO_TCP and _FLAG_WORK[pkt.tcp_flags & 0xFF]:
            self._tcp_flags(st, flow, pkt, forward)
        if pkt.is_fragment:
            if pkt.more_fragments and pkt.payload_len < TINY_FRAGMENT:
                self._flag(st, flow, "tiny_fragment", f"{pkt.payload_len} bytes")
            return
        if not pkt.payload_len:
            return
        d = st.c if forward else st.s
        if d is not _DONE_DIR:
            self._payload(st, flow, pkt, forward, d)

    def inspect(self, pkt: ParsedPacket, flow_key: str, forward: bool) -> None:
        """:meth:`flow_stage` for callers without a Flow object: the state is kept by key."""
        holder = self._flows.get(flow_key)
        if holder is None:
            if len(self._flows) >= self.max_flows:
                drop_oldest_share(self._flows)
            holder = self._flows[flow_key] = _Keyed(pkt, forward)
        self.flow_stage(pkt, holder, forward)

    def facts(self, flow: Any) -> DpiFacts | None:
        """Facts of a flow: pass the :class:`~tracking.flow.Flow` (or its ``flow_key``)."""
        if isinstance(flow, str):
            flow = self._flows.get(flow) or self._by_key(flow)
            if flow is None:
                return None
        st = getattr(flow, "dpi", None)
        if st is None:
            return None
        return st if type(st) is DpiFacts else self._facts_of(st, flow)

    def _by_key(self, flow_key: str) -> Any:
        """The flow with this key among ``all_flows()`` (for readers that pass keys); the index
        is rebuilt on a miss only when flows were inspected since it was built."""
        index = self._index
        flow = index.get(flow_key)
        if flow is None and self.all_flows is not None and self._index_created != self._created:
            self._index_created = self._created
            index = self._index = {f.flow_key: f for f in self.all_flows()
                                   if getattr(f, "dpi", None) is not None}
            flow = index.get(flow_key)
        return flow

    def retire(self, flow: Any) -> None:
        """A flow left the table: keep only its facts (buffers and per-packet state go)."""
        st = flow.dpi
        if st is not None and type(st) is not DpiFacts:
            flow.dpi = self._facts_of(st, flow)

    def as_export(self, flow: Any) -> dict[str, Any]:
        """The export fields of a flow (every key present; missing facts are None)."""
        f = self.facts(flow)
        if f is None:
            return dict.fromkeys(EXPORT_FIELDS)
        return {
            "app_protocol": f.app_protocol, "sni": f.sni, "alpn": f.alpn,
            "tls_version": f.tls_version, "ja3": f.ja3, "ja4": f.ja4, "ja3s": f.ja3s,
            "http_host": f.http_host, "http_user_agent": f.http_user_agent,
            "src_os": f.client_os, "dst_os": f.server_os,
            "anomaly_score": f.anomaly_score if f.anomaly_reasons else None,
            "anomaly_reasons": list(f.anomaly_reasons) if f.anomaly_reasons else None,
        }

    def forget(self, flow_key: str) -> None:
        """Drop a retired flow (and any payload bytes still buffered for it)."""
        self._flows.pop(flow_key, None)

    def __len__(self) -> int:
        return len(self._flows)

    def buffered_bytes(self) -> int:
        """Payload bytes held right now, over all flows (for the privacy/memory tests)."""
        total = 0
        for holder in self._flows.values():
            st = holder.dpi
            if st is None:
                continue
            for d in (st.c, st.s):
                if type(d) is _Dir:
                    total += len(d.buf) + sum(len(b) for b in (d.pending or {}).values())
        return total

    # ---- facts -------------------------------------------------------------------------------
    @staticmethod
    def _facts_of(st: _FlowState, flow: Any) -> DpiFacts:
        """The whole :class:`DpiFacts` of a flow: the record, with the facts kept as slots of
        the state filled in (made up for flows that have no record)."""
        f = st.facts
        if f is None:
            f = _new_facts(flow)
        labels = st.labels
        f.app_protocol = labels.app
        f.client_os = labels.client_os
        f.server_os = labels.server_os
        return f

    @staticmethod
    def _rich(st: _FlowState, flow: Any) -> DpiFacts:
        """The flow's :class:`DpiFacts` record, made on first use."""
        f = st.facts
        if f is None:
            if type(st) is _SharedState:
                st = FlowInspector._own(flow)
                f = st.facts
                if f is not None:
                    return f
            f = st.facts = _new_facts(flow)
        return f

    @staticmethod
    def _own(flow: Any) -> _FlowState:
        """The flow's state, made its own (a copy) if it is the shared one: every write to a
        state that may be shared goes through here. Reads ``flow.dpi``, not the caller's
        state, which may be a shared one the flow has already left (``flow.dpi`` is always set
        before a write can happen, and is the flow's current state)."""
        st = flow.dpi
        if type(st) is _SharedState:
            own = _FlowState(st.labels)
            own.c, own.s, own.ttl_c, own.ttl_s = st.c, st.s, st.ttl_c, st.ttl_s
            st = flow.dpi = own
        return st

    # ---- flow set-up and anomaly bookkeeping -------------------------------------------------
    def _state(self, pkt: ParsedPacket, flow: Any, forward: bool) -> _FlowState:
        if forward:
            client_ip, client_port, server_port = pkt.src_ip, pkt.sport, pkt.dport
            server_ip = pkt.dst_ip
        else:
            client_ip, client_port, server_port = pkt.dst_ip, pkt.dport, pkt.sport
            server_ip = pkt.src_ip
        proto = pkt.proto
        # TCP never runs to broadcast/multicast, so only UDP needs the address check
        st = _FlowState(_TTL_RULE if proto == PROTO_TCP or (
            proto == PROTO_UDP and not _multi_party(client_ip, server_ip)) else _NO_TTL_RULE)
        if (proto == PROTO_TCP or proto == PROTO_UDP) and not (pkt.is_fragment and pkt.frag_offset):
            if (client_port == 0 or server_port == 0):
                self._flag(st, flow, "port_zero")
            if client_ip == server_ip and client_port == server_port:
                self._flag(st, flow, "land")
            if proto == PROTO_UDP or pkt.tcp_flags & (SYN | ACK) == SYN:
                period = self.beacons.observe(client_ip, server_ip, server_port, proto, pkt.ts)
                if period is not None:
                    self._flag(st, flow, "beacon", f"every {period:.1f} s")
        else:
            st.c = st.s = _DONE_DIR             # no transport payload to look at
        return st

    def _flag(self, st: _FlowState, flow: Any, rule: str, detail: str = "") -> None:
        f = self._rich(st, flow)
        rules, reasons = f.anomaly_rules, f.anomaly_reasons
        if not isinstance(rules, list) or not isinstance(reasons, list):
            rules, reasons = [], []             # (empty tuples until the first rule trips)
            f.anomaly_rules, f.anomaly_reasons = rules, reasons
        score = add_rule(f.anomaly_score, rules, reasons, rule, detail)
        if score is not None:
            f.anomaly_score = score
            self.hosts.add(flow.src_ip, rule)

    def _ttl(self, st: _FlowState, flow: Any, ttl: int, forward: bool) -> _FlowState:
        """A TTL that differs from the direction's first one (or the first one); returns the
        flow's state, which may now be a shared one (reads only from there on)."""
        first = st.ttl_c if forward else st.ttl_s
        if first < 0:
            if forward:
                st.ttl_c = ttl
            else:
                st.ttl_s = ttl
            _finish(st, flow)                   # (an ICMP flow's reply finishes it here)
            return flow.dpi
        if st.labels.ttl_rule and abs(ttl - first) > TTL_TOLERANCE:
            self._flag(st, flow, "ttl_change", f"{first} -> {ttl}")
        return flow.dpi

    def _tcp_flags(self, st: _FlowState, flow: Any, pkt: ParsedPacket, forward: bool) -> None:
        flags = pkt.tcp_flags
        rule = FLAG_RULES[flags & 0xFF]
        if rule is not None and not pkt.is_fragment:
            self._flag(st, flow, rule)
        if flags & SYN:
            self._syn(st, flow, pkt, forward, flags)

    def _syn(self, st: _FlowState, flow: Any, pkt: ParsedPacket, forward: bool,
             flags: int) -> None:
        isn = (pkt.seq + 1) & _MASK
        d = st.c if forward else st.s
        if type(d) is _Dir:
            if d.mode != _DONE:                 # (a done direction may be the shared marker)
                d.next_seq = isn
                if d.buf:
                    d.buf.clear()
        elif forward:
            st.c = isn
        else:
            st.s = isn
        # One guess per end: retransmitted SYNs (and scans' repeats) cost nothing more.
        lb = st.labels
        if flags & ACK:
            if not forward and lb.server_os is None:
                guess = fingerprint(pkt)
                if guess is not None:
                    self._own(flow).labels = _labels(lb.app, lb.client_os, guess.label,
                                                     lb.ttl_rule)
        elif forward and lb.client_os is None:
            guess = fingerprint(pkt)
            if guess is not None:
                self._own(flow).labels = _labels(lb.app, guess.label, lb.server_os, lb.ttl_rule)

    # ---- payload -----------------------------------------------------------------------------
    def _payload(self, st: _FlowState, flow: Any, pkt: ParsedPacket, forward: bool,
                 d: _Dir | int | None) -> None:
        """A payload-bearing packet of a direction not yet done."""
        proto = pkt.proto
        if type(d) is not _Dir:
            # The direction's first payload: when it starts the stream (TCP) and names a
            # protocol that needs no further reading, decide without making any buffers.
            if self._first_payload(st, flow, pkt, forward, d):
                if forward:
                    st.c = _DONE_DIR
                else:
                    st.s = _DONE_DIR
                self._both_done(st)
                _finish(st, flow)
                return
            d = _Dir(next_seq=-1 if d is None else d)
            if forward:
                st.c = d
            else:
                st.s = d
        elif d.mode == _DONE:
            return
        if proto == PROTO_TCP:
            if self._feed_tcp(d, pkt.seq, pkt.payload):
                self._run_stream(st, flow, d, forward)
        elif proto == PROTO_UDP:
            self._datagram(st, flow, d, bytes(pkt.payload), forward)
        else:
            d.mode = _DONE
        if d.mode == _DONE and d.quic is None:
            # Classified for good: the shared done marker replaces this direction's buffers.
            if forward:
                st.c = _DONE_DIR
            else:
                st.s = _DONE_DIR
        self._both_done(st)
        _finish(st, flow)

    @staticmethod
    def _both_done(st: _FlowState) -> None:
        """Both directions done: drop what is still kept (a QUIC client's DCID)."""
        c, s = st.c, st.s
        if type(c) is _Dir and type(s) is _Dir and c.mode == _DONE and s.mode == _DONE:
            st.c = st.s = _DONE_DIR

    def _first_payload(self, st: _FlowState, flow: Any, pkt: ParsedPacket, forward: bool,
                       isn: int | None) -> bool:
        """Classify a direction from its first payload alone when that settles it (the same
        answer the buffered path gives); False when buffering is needed."""
        proto = pkt.proto
        if proto == PROTO_TCP:
            if isn is not None and pkt.seq != isn:
                return False                    # out of order or overlapping: reassemble
            n = pkt.payload_len
            if n > 64:
                n = 64
            if n > self.stream_bytes:
                n = self.stream_bytes
            off = pkt.payload_offset
            data = pkt.data[off:off + n]
            key = flow.key  # (proto, src, sport, dst, dport): one read, not two properties
            app = apps.identify(data, PROTO_TCP, forward, key[2], key[4])
            if app == apps.UNDECIDED or app == apps.TLS or app == apps.HTTP:
                return False
        elif proto == PROTO_UDP:
            off = pkt.payload_offset
            data = pkt.data[off:off + pkt.payload_len]
            key = flow.key
            app = apps.identify(data, PROTO_UDP, forward, key[2], key[4])
            if app == apps.QUIC and is_long_header(data):
                return False
        else:
            return True
        self._set_app(st, flow, app)
        return True

    # ---- TCP reassembly ----------------------------------------------------------------------
    def _feed_tcp(self, d: _Dir, seq: int, data: memoryview) -> bool:
        """Append in-order bytes to ``d.buf``; park early segments. True if bytes were added."""
        if d.next_seq < 0:
            d.next_seq = seq
        off = (seq - d.next_seq) & _MASK
        if off >= 0x80000000:
            off -= 0x100000000
        n = len(data)
        if off > 0:
            if off > 4 * self.stream_bytes:
                self._give_up(d)                # a gap we will never fill within the budget
                return False
            pend = d.pending
            if pend is None:
                pend = d.pending = {}
            if len(pend) >= MAX_PENDING:
                self._give_up(d)
                return False
            key = (d.next_seq + off) & _MASK
            if n > len(pend.get(key, b"")):
                pend[key] = bytes(data)
            return False
        if off + n <= 0:
            return False                        # a retransmission of bytes already taken
        self._take(d, data[-off:] if off else data)
        pend = d.pending
        while pend:
            progressed = False
            for key in list(pend):
                o = (key - d.next_seq) & _MASK
                if o >= 0x80000000:
                    o -= 0x100000000
                if o > 0:
                    continue
                seg = pend.pop(key)
                if o + len(seg) > 0:
                    self._take(d, memoryview(seg)[-o:] if o else seg)
                progressed = True
            if not progressed:
                break
        return True

    def _take(self, d: _Dir, data: memoryview | bytes) -> None:
        d.next_seq = (d.next_seq + len(data)) & _MASK
        if d.skip:                              # HTTP body we are not reading
            cut = min(d.skip, len(data))
            d.skip -= cut
            data = data[cut:]
            if not data:
                return
        if d.resync:
            if d.buf or not starts_request(data):
                return
            d.resync = False
        room = self.stream_bytes - len(d.buf)
        if room > 0:
            d.buf += data[:room]

    def _give_up(self, d: _Dir) -> None:
        d.mode = _DONE
        d.buf = bytearray()
        d.pending = None
        d.quic = None

    # ---- detectors ---------------------------------------------------------------------------
    def _set_app(self, st: _FlowState, flow: Any, app: str) -> None:
        lb = st.labels
        if lb.app is None or lb.app == apps.UNKNOWN:
            st.labels = _labels(app, lb.client_os, lb.server_os, lb.ttl_rule)
            proto, _, sport, _, dport = flow.key
            if apps.is_mismatch(app, proto, dport, sport):
                self._rich(st, flow).mismatch = True
                self._flag(st, flow, "port_mismatch", f"{app} on {dport}")

    def _run_stream(self, st: _FlowState, flow: Any, d: _Dir, forward: bool) -> None:
        if d.mode == _CLASSIFY:
            key = flow.key
            app = apps.identify(bytes(d.buf[:64]), PROTO_TCP, forward, key[2], key[4])
            if app == apps.UNDECIDED:
                d.datagrams += 1
                if d.datagrams >= UNDECIDED_SEGMENTS:
                    self._set_app(st, flow, apps.UNKNOWN)
                    self._give_up(d)
                return
            self._set_app(st, flow, app)
            if app == apps.TLS:
                d.mode = _TLS
            elif app == apps.HTTP:
                d.mode = _HTTP_REQ if starts_request(d.buf) else _HTTP_RESP
            else:
                self._give_up(d)
                return
        if d.mode == _TLS:
            self._tls(st, flow, d)
        elif d.mode == _HTTP_REQ:
            self._http_requests(st, flow, d)
        elif d.mode == _HTTP_RESP:
            self._http_response(st, flow, d)

    def _tls(self, st: _FlowState, flow: Any, d: _Dir) -> None:
        res = parse_tls_stream(bytes(d.buf))
        if res == NEED_MORE:
            if len(d.buf) >= self.stream_bytes:
                self._give_up(d)
            return
        if isinstance(res, ClientHello):
            self._client_hello(self._rich(st, flow), res)
        elif isinstance(res, ServerHello):
            self._server_hello(self._rich(st, flow), res)
        self._give_up(d)

    @staticmethod
    def _client_hello(f: DpiFacts, hello: ClientHello) -> None:
        f.client_hello = hello
        f.sni = hello.sni
        if f.server_hello is None:
            f.alpn = ",".join(hello.alpn) if hello.alpn else None
            f.tls_version = version_name(hello.max_version)
        f.ja3_full = hello.ja3_full()
        f.ja3 = hello.ja3()
        f.ja4 = hello.ja4()

    @staticmethod
    def _server_hello(f: DpiFacts, hello: ServerHello) -> None:
        f.server_hello = hello
        f.ja3s = hello.ja3s()
        f.tls_version = version_name(hello.version)
        if hello.alpn is not None:
            f.alpn = hello.alpn

    def _http_requests(self, st: _FlowState, flow: Any, d: _Dir) -> None:
        buf = d.buf
        while buf:
            if not starts_request(buf):
                d.resync = True
                buf.clear()
                return
            end = head_end(buf)
            if end < 0:
                if len(buf) >= min(self.stream_bytes, MAX_HEAD):
                    d.resync = True             # head too large to buffer: skip this one
                    buf.clear()
                return
            req = parse_request(bytes(buf[:end]))
            del buf[:end]
            if req is None:
                d.resync = True
                buf.clear()
                return
            f = self._rich(st, flow)
            if not f.http_requests:
                f.http_method, f.http_path = req.method, req.path
                f.http_host, f.http_user_agent = req.host, req.user_agent
                f.http_requests = [req]
            else:
                f.http_requests.append(req)  # type: ignore[attr-defined]
            if len(f.http_requests) >= self.http_requests:
                self._give_up(d)
                return
            if req.body_length < 0:
                d.resync = True
                buf.clear()
                return
            if req.body_length:
                cut = min(req.body_length, len(buf))
                del buf[:cut]
                d.skip = req.body_length - cut

    def _http_response(self, st: _FlowState, flow: Any, d: _Dir) -> None:
        end = head_end(d.buf)
        if end < 0:
            if len(d.buf) >= min(self.stream_bytes, MAX_HEAD):
                self._give_up(d)
            return
        resp = parse_response(bytes(d.buf[:end]))
        if resp is not None:
            f = self._rich(st, flow)
            f.http_status, f.http_server = resp.status, resp.server
            f.http_content_type = resp.content_type
        self._give_up(d)

    def _datagram(self, st: _FlowState, flow: Any, d: _Dir, data: bytes,
                  forward: bool) -> None:
        d.datagrams += 1
        if d.mode == _CLASSIFY:
            key = flow.key
            app = apps.identify(data, PROTO_UDP, forward, key[2], key[4])
            self._set_app(st, flow, app)
            if app == apps.QUIC and is_long_header(data):
                d.mode = _QUIC
                if forward:
                    d.quic = CryptoAssembler()
                else:
                    client = st.c.quic if type(st.c) is _Dir else None
                    if client is None or client.dcid is None:
                        self._give_up(d)
                        return
                    d.quic = CryptoAssembler(server=True, dcid=client.dcid)
            else:
                self._give_up(d)
                return
        if d.mode == _QUIC and d.quic is not None:
            hello = d.quic.feed(data)
            if isinstance(hello, ClientHello):
                self._client_hello(self._rich(st, flow), hello)
            elif isinstance(hello, ServerHello):
                self._server_hello(self._rich(st, flow), hello)
            if d.quic.done or d.datagrams >= MAX_DATAGRAMS:
                if forward and d.quic.dcid is not None:
                    # keep the DCID (not payload) so the server's Initial can be read
                    d.quic.chunks.clear()
                    d.mode = _DONE
                    d.buf = bytearray()
                else:
                    self._give_up(d)


def _new_facts(flow: Any) -> DpiFacts:
    """An empty record for a flow, with the registered service of its responder's port."""
    proto, _, sport, _, dport = flow.key
    return DpiFacts(port_guess=apps.port_guess(proto, dport, sport))


def _multi_party(client_ip: str, server_ip: str) -> bool:
    """Broadcast, multicast or unspecified addresses: senders' TTLs legitimately differ."""
    if client_ip in ("0.0.0.0", "::") or server_ip.endswith(".255"):
        return True
    first = server_ip[:1]
    if first == "f" or first == "F":
        return server_ip[1:2] in ("f", "F")     # IPv6 multicast ff00::/8
    if first != "2":
        return False                            # (addresses are canonical: no leading zeros)
    head = server_ip.split(".", 1)[0]
    return head.isdigit() and 224 <= int(head) <= 239


EXPORT_FIELDS = ("app_protocol", "sni", "alpn", "tls_version", "ja3", "ja4", "ja3s",
                 "http_host", "http_user_agent", "src_os", "dst_os", "anomaly_score",
                 "anomaly_reasons")
