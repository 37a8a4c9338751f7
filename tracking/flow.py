"""Bidirectional flows keyed by the 5-tuple.

Each flow is stored once, under its 5-tuple in initiator order, the same tuple the flow keeps as
its endpoints: a packet of the initiator finds it with one dict lookup, a packet of the responder
with a second one by the reversed tuple, and which lookup hit gives the packet's direction. The
flow's ``src`` is the initiator: the sender of the SYN for TCP, otherwise the sender of the first
packet seen (tshark's A side).

Flows leave the table by idle expiry, LRU-style eviction over ``max_flows``, or (TCP) a close
followed by a short linger from the last packet; they are never lost: retired flows are handed to listeners (the
database writer) and kept, bounded, for exports.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Protocol

from capture.packet import (
    ACK, PROTO_ICMP, PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP, PROTO_UDP, SYN, ParsedPacket,
    proto_name,
)
from config import FLOW_HISTORY_LIMIT, FLOW_TIMEOUT, MAX_FLOWS, TCP_CLOSE_LINGER

_PORTED = (PROTO_TCP, PROTO_UDP, PROTO_SCTP)
_ECHO_TYPES = {PROTO_ICMP: (0, 8, 13, 14), PROTO_ICMPV6: (128, 129)}


class TcpAnalyzer(Protocol):
    """What the flow tracker needs from the per-connection TCP analysis (tracking/tcp_state)."""

    state: str

    @property
    def closed(self) -> bool: ...

    def update(self, pkt: ParsedPacket, forward: bool) -> int: ...

    def is_new_connection(self, pkt: ParsedPacket, forward: bool) -> bool: ...

    def as_dict(self) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the classifier decided about a flow. Interned (see :func:`verdict`): flows share
    these few objects instead of carrying three fields each."""

    category: str = ""
    encrypted: bool = False
    #: decided for good (a signature seen, or past the flow's first packets)
    final: bool = False


_VERDICTS: dict[tuple[str, bool, bool], Verdict] = {}


def verdict(category: str, encrypted: bool = False, final: bool = False) -> Verdict:
    """The shared :class:`Verdict` for these values."""
    key = (category, bool(encrypted), bool(final))
    v = _VERDICTS.get(key)
    if v is None:
        v = _VERDICTS[key] = Verdict(*key)
    return v


UNCLASSIFIED = verdict("")

#: one int object per packed TTL pair or flag pair in use (Flow._ttls, Flow._flags): the pairs
#: repeat across flows (64/64, 64/128; SYN|ACK|PSH|FIN each way), so flows share them instead of
#: each holding an int (a value over 256 is an object of its own). Past _SHARE_MAX values a new
#: one is not kept: the flow then holds its own int, which is only a little memory.
_SHARED_INTS: dict[int, int] = {}
_SHARE_MAX = 4096


def _share(v: int) -> int:
    s = _SHARED_INTS.get(v)
    if s is None:
        if len(_SHARED_INTS) >= _SHARE_MAX:
            return v
        s = _SHARED_INTS[v] = v
    return s


class Flow:
    """One conversation. ``src`` is the initiator; *_sent counts src->dst, *_recv dst->src.

    The endpoints are kept as ``key``, the 5-tuple in initiator order, which is also the flow's
    key in the tracker's table: one tuple serves both (one slot instead of five, 32 bytes a
    flow). ``proto``, ``src_ip``, ``src_port``, ``dst_ip``, ``dst_port`` are properties reading
    it, which is why this is a plain slotted class and not a dataclass.
    """

    __slots__ = ("key", "first_seen", "last_seen", "packets_sent", "packets_recv", "bytes_sent",
                 "bytes_recv", "_ttls", "_flags", "tcp",
                 "verdict", "retired", "_key", "dpi", "svc")

    def __init__(self, proto: int, src_ip: str, src_port: int, dst_ip: str, dst_port: int,
                 first_seen: float, last_seen: float, packets_sent: int = 0,
                 packets_recv: int = 0, bytes_sent: int = 0, bytes_recv: int = 0,
                 ttl_sent: int = 0, ttl_recv: int = 0, flags_sent: int = 0, flags_recv: int = 0,
                 tcp: TcpAnalyzer | None = None, verdict: Verdict = UNCLASSIFIED,
                 retired: str = "", _key: str = "", dpi: Any = None, svc: Any = None) -> None:
        #: (proto, src_ip, src_port, dst_ip, dst_port), initiator first
        self.key: tuple[int, str, int, str, int] = (proto, src_ip, src_port, dst_ip, dst_port)
        self.first_seen = first_seen
        self.last_seen = last_seen
        self.packets_sent = packets_sent
        self.packets_recv = packets_recv
        self.bytes_sent = bytes_sent
        self.bytes_recv = bytes_recv
        #: last TTL/hop limit each way, ttl_sent | ttl_recv << 8 (a shared int, see _share)
        self._ttls = _share(ttl_sent | ttl_recv << 8)
        #: TCP flags seen each way, flags_sent | flags_recv << 9 (a shared int)
        self._flags = _share(flags_sent | flags_recv << 9)
        self.tcp = tcp
        #: the classifier's verdict (category, encrypted, final): one shared object per combination
        self.verdict = verdict
        #: why the flow left the table: "" (active), "idle", "closed", "evicted", "end"
        self.retired = retired
        #: the flow key once made; made at creation for a reused 5-tuple, whose key carries the
        #: generation (so no slot holds a generation that is 0 on almost every flow)
        self._key = _key
        #: deep inspection's state for this flow (analysis.inspector.FlowInspector.flow_stage),
        #: kept here so the per-packet stage needs no key string or table lookup
        self.dpi = dpi
        #: the record of the flow's service port (tracking.ports: decided on the first packet)
        self.svc = svc

    @property
    def proto(self) -> int:
        return self.key[0]

    @property
    def src_ip(self) -> str:
        """The initiator's address."""
        return self.key[1]

    @property
    def src_port(self) -> int:
        """The initiator's port (ICMP echo: the id; other protocols: 0)."""
        return self.key[2]

    @property
    def dst_ip(self) -> str:
        return self.key[3]

    @property
    def dst_port(self) -> int:
        return self.key[4]

    @property
    def ttl_sent(self) -> int:
        """TTL/hop limit of the initiator's last packet (0: none yet)."""
        return self._ttls & 0xFF

    @property
    def ttl_recv(self) -> int:
        return self._ttls >> 8

    @property
    def flags_sent(self) -> int:
        """TCP flags the initiator has sent (OR of its packets' flags, 9 bits)."""
        return self._flags & 0x1FF

    @property
    def flags_recv(self) -> int:
        return self._flags >> 9

    def __repr__(self) -> str:
        p, a, ap, b, bp = self.key
        return (f"Flow({proto_name(p)} {a}:{ap} -> {b}:{bp}, sent {self.packets_sent}/"
                f"{self.bytes_sent}, recv {self.packets_recv}/{self.bytes_recv}, "
                f"{self.state}{', ' + self.retired if self.retired else ''})")

    @property
    def flow_key(self) -> str:
        """Stable id: the same flow in a replay or after a restart gets the same key."""
        if not self._key:
            # made on first use only (the writer and the dashboard ask; --no-db runs never do)
            self._key = self._tuple_key()
        return self._key

    def _tuple_key(self) -> str:
        return f"{proto_name(self.proto)}|{self.src_ip}|{self.src_port}|{self.dst_ip}|{self.dst_port}"

    @property
    def generation(self) -> int:
        """Earlier connections of this 5-tuple in the run (port reuse); 0 for the first."""
        k = self._key
        return int(k.rsplit("|", 1)[1]) if k.count("|") == 5 else 0

    @property
    def classification(self) -> str:
        return self.verdict.category

    @property
    def encrypted(self) -> bool:
        return self.verdict.encrypted

    @property
    def class_final(self) -> bool:
        """The classifier has decided for good (signature seen, or past its first packets)."""
        return self.verdict.final

    @property
    def ip_version(self) -> int:
        return 6 if ":" in self.src_ip else 4

    @property
    def protocol(self) -> str:
        return proto_name(self.proto)

    @property
    def packets(self) -> int:
        return self.packets_sent + self.packets_recv

    @property
    def bytes(self) -> int:
        return self.bytes_sent + self.bytes_recv

    @property
    def state(self) -> str:
        if self.tcp is not None:
            return self.tcp.state
        if self.retired:
            return "CLOSED"
        return "ACTIVE"

    @property
    def has_ports(self) -> bool:
        return self.proto in _PORTED

    def as_dict(self) -> dict[str, Any]:
        """The flow part of the export contract (see README "Export")."""
        ported = self.proto in _PORTED
        d: dict[str, Any] = {
            "flow_key": self.flow_key,
            "protocol": self.protocol,
            "ip_version": self.ip_version,
            "src_ip": self.src_ip,
            "src_port": self.src_port if ported else None,
            "dst_ip": self.dst_ip,
            "dst_port": self.dst_port if ported else None,
            "packets_sent": self.packets_sent,
            "packets_recv": self.packets_recv,
            "bytes_sent": self.bytes_sent,
            "bytes_recv": self.bytes_recv,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "duration": round(self.last_seen - self.first_seen, 6),
            "state": self.state,
            "classification": self.classification or None,
            "encrypted": self.encrypted,
            "ttl_sent": self.ttl_sent or None,
            "ttl_recv": self.ttl_recv or None,
        }
        if self.proto in (PROTO_ICMP, PROTO_ICMPV6) and self.src_port:
            d["icmp_id"] = self.src_port
        tcp_fields = ("retransmissions", "fast_retransmissions", "out_of_order", "dup_acks",
                      "zero_windows", "resets", "handshake_rtt_ms")
        if self.tcp is not None:
            td = self.tcp.as_dict()
            for name in tcp_fields:
                d[name] = td.get(name)
            for name, value in td.items():
                d.setdefault("tcp_" + name if name not in tcp_fields else name, value)
        else:
            for name in tcp_fields:
                d[name] = None
        return d


class RecordedFlow(Flow):
    """A flow rebuilt from a record (a stored session's row, a relay agent's report): it carries
    the agent that saw it (relay), which live flows need no slot for. Give it the key it was
    recorded under as ``_key``."""

    __slots__ = ("agent",)

    def __init__(self, *args: Any, agent: str = "", **kw: Any) -> None:
        Flow.__init__(self, *args, **kw)
        self.agent = agent

    def as_dict(self) -> dict[str, Any]:
        d = Flow.as_dict(self)
        if self.agent:
            d["agent"] = self.agent
        return d


FlowListener = Callable[[Flow], None]


class FlowTracker:
    """The flow table. ``process`` runs on the pipeline thread; readers call ``snapshot``.

    The pipeline holds ``lock`` around each batch of packets, and readers around their copy, so
    a snapshot is consistent and the capture path takes the lock once per batch, not per packet.
    """

    def __init__(self, max_flows: int = MAX_FLOWS, idle_timeout: float = FLOW_TIMEOUT,
                 close_linger: float = TCP_CLOSE_LINGER, history_limit: int = FLOW_HISTORY_LIMIT,
                 tcp_factory: Callable[[], TcpAnalyzer] | None = None) -> None:
        self.max_flows = max_flows
        self.idle_timeout = idle_timeout
        self.close_linger = close_linger
        self.history_limit = history_limit
        self.tcp_factory = tcp_factory
        self.lock = threading.RLock()
        #: the flow's own ``key`` (5-tuple in initiator order) -> the live flow; its values are
        #: the active flows. One entry per flow, not one per direction: a packet of the
        #: responder finds its flow by the reversed tuple, a second lookup that costs less than
        #: a second key tuple, slot and (flow, direction) pair per flow (~250 bytes).
        self._table: dict[tuple, Flow] = {}
        # IPv4/IPv6 fragment id -> (flow, forward), so later fragments land in the first's flow
        self._frags: dict[tuple, tuple[Flow, bool]] = {}
        self._generations: dict[tuple, int] = {}
        self.retired: list[Flow] = []
        self.retired_dropped = 0
        #: the flows :meth:`finish` retired (all of them, whatever the history keeps); the
        #: :attr:`fold_listeners` never see them, their readers take them from :meth:`last_flows`
        self.ended: list[Flow] = []
        self.total_flows = 0
        self.evicted = 0
        self.expired = 0
        self.listeners: list[FlowListener] = []
        #: listeners that fold retired flows into running totals (the connection graph, the TCP
        #: totals), called for the flows that leave during the run only: the flows finish()
        #: retires stay in :attr:`ended` and are counted when someone reads those totals (a
        #: run's end then folds nothing that no one may read: 50k flows took ~0.4 s)
        self.fold_listeners: list[FlowListener] = []
        self.new_flow_listeners: list[FlowListener] = []
        self._last_expiry = 0.0

    # ---- hot path ----------------------------------------------------------------------------
    def process(self, pkt: ParsedPacket) -> tuple[Flow, bool] | None:
        """Account one packet; returns (flow, forward) or None for non-IP frames."""
        if not pkt.ip_version or pkt.malformed and not pkt.src_ip:
            return None
        proto = pkt.proto
        src = pkt.src_ip
        dst = pkt.dst_ip
        frag = pkt.is_fragment
        if frag and pkt.frag_offset:
            fk = (src, dst, pkt.ip_id, proto)
            hit = self._frags.get(fk)
            if hit is None:
                flow = self._table.get((proto, src, 0, dst, 0))
                if flow is not None:
                    hit = (flow, True)
                else:
                    flow = self._table.get((proto, dst, 0, src, 0))
                    hit = (flow, False) if flow is not None else self._new_flow(pkt, src, 0, dst, 0)
            flow, fwd = hit
            self._account(flow, fwd, pkt)
            if not pkt.more_fragments:
                self._frags.pop(fk, None)
            return hit
        if proto == PROTO_TCP or proto == PROTO_UDP or proto == PROTO_SCTP:
            sport = pkt.sport
            dport = pkt.dport
        elif proto in _ECHO_TYPES and pkt.icmp_type in _ECHO_TYPES[proto]:
            sport = dport = pkt.icmp_id
        else:
            sport = dport = 0
        table = self._table
        flow = table.get((proto, src, sport, dst, dport))
        if flow is not None:
            fwd = True
        else:
            flow = table.get((proto, dst, dport, src, sport))
            if flow is None:
                flow, fwd = self._new_flow(pkt, src, sport, dst, dport)
            else:
                fwd = False
        tcp = flow.tcp
        if tcp is not None and pkt.tcp_flags & (SYN | ACK) == SYN and \
                tcp.is_new_connection(pkt, fwd):
            # A SYN with a new initial sequence number starts a new connection on the same
            # 5-tuple (tshark: a new tcp.stream); its sender is the new flow's initiator.
            self._retire(flow, "closed" if tcp.closed else "reused")
            flow, fwd = self._new_flow(pkt, src, sport, dst, dport)
            tcp = flow.tcp
        # _account, inlined: this runs for every packet. TTLs and flags rarely change within a
        # flow, so their packed ints are only remade when they do.
        ts = pkt.ts
        ttl = pkt.ttl
        fl = pkt.tcp_flags
        if fwd:
            flow.packets_sent += 1
            flow.bytes_sent += pkt.wire_len
            v = flow._ttls
            if v & 0xFF != ttl:
                flow._ttls = _share(v & 0xFF00 | ttl)
        else:
            flow.packets_recv += 1
            flow.bytes_recv += pkt.wire_len
            v = flow._ttls
            if v >> 8 != ttl:
                flow._ttls = _share(v & 0xFF | ttl << 8)
            fl <<= 9
        v = flow._flags
        if v | fl != v:
            flow._flags = _share(v | fl)
        if ts > flow.last_seen:
            flow.last_seen = ts
        if frag:  # a first fragment: no TCP analysis (its header may be cut), as in _account
            self._frags[(src, dst, pkt.ip_id, proto)] = (flow, fwd)
            if len(self._frags) > 4096:
                self._frags.clear()
        elif tcp is not None and proto == PROTO_TCP:
            tcp.update(pkt, fwd)
        return flow, fwd

    def _account(self, flow: Flow, fwd: bool, pkt: ParsedPacket) -> None:
        if fwd:
            flow.packets_sent += 1
            flow.bytes_sent += pkt.wire_len
            flow._ttls = _share(flow._ttls & 0xFF00 | pkt.ttl)
            flow._flags = _share(flow._flags | pkt.tcp_flags)
        else:
            flow.packets_recv += 1
            flow.bytes_recv += pkt.wire_len
            flow._ttls = _share(flow._ttls & 0xFF | pkt.ttl << 8)
            flow._flags = _share(flow._flags | pkt.tcp_flags << 9)
        if pkt.ts > flow.last_seen:
            flow.last_seen = pkt.ts
        tcp = flow.tcp
        if tcp is not None and pkt.proto == PROTO_TCP and not pkt.is_fragment:
            tcp.update(pkt, fwd)

    def _new_flow(self, pkt: ParsedPacket, src: str, sport: int, dst: str,
                  dport: int) -> tuple[Flow, bool]:
        """A flow for ``pkt`` (sent from ``src`` to ``dst``); returns (flow, pkt is forward)."""
        proto = pkt.proto
        if len(self._table) >= self.max_flows:
            # Make room first, so the flow being created can never be the one evicted.
            self._evict()
        # The initiator is the sender of a SYN; a SYN/ACK seen first means the other side began.
        fwd = True
        if proto == PROTO_TCP and pkt.tcp_flags & (SYN | ACK) == SYN | ACK:
            src, sport, dst, dport = dst, dport, src, sport
            fwd = False
        # the last generation of this 5-tuple is recorded when its flow retires (live flows
        # need no entry: a 5-tuple has at most one live flow)
        gen = self._generations.pop((proto, src, sport, dst, dport), -1) + 1 \
            if self._generations else 0
        flow = Flow(proto, src, sport, dst, dport, pkt.ts, pkt.ts)
        if gen:
            flow._key = f"{flow._tuple_key()}|{gen}"
        if proto == PROTO_TCP and self.tcp_factory is not None:
            flow.tcp = self.tcp_factory()
        self._table[flow.key] = flow
        self.total_flows += 1
        for cb in self.new_flow_listeners:
            cb(flow)
        return flow, fwd

    # ---- lifecycle ---------------------------------------------------------------------------
    def _unlink(self, flow: Flow) -> None:
        key = flow.key
        if self._table.get(key) is flow:
            del self._table[key]

    def adopt(self, flow: Flow) -> None:
        """Put an already built flow (a stored session's) in the table as active."""
        self._table[flow.key] = flow

    def _retire(self, flow: Flow, why: str) -> None:
        self._unlink(flow)
        self._record(flow, why)
        for cb in self.fold_listeners:
            cb(flow)

    def _record(self, flow: Flow, why: str) -> None:
        """Mark ``flow`` (already out of the table) retired, keep it, tell the listeners."""
        flow.retired = why
        gens = self._generations
        if len(gens) >= 4 * self.max_flows:
            gens.clear()
        gens[flow.key] = flow.generation
        if len(self.retired) < self.history_limit:
            self.retired.append(flow)
        else:
            self.retired_dropped += 1
        for cb in self.listeners:
            cb(flow)

    def _evict(self) -> None:
        # Evict the least recently seen ~1% in one pass instead of maintaining LRU order per packet.
        n = max(1, len(self._table) // 100)
        victims = sorted(self._table.values(), key=lambda f: f.last_seen)[:n]
        for flow in victims:
            self.evicted += 1
            self._retire(flow, "evicted")

    def expire(self, now: float) -> int:
        """Retire idle flows and closed TCP flows past their linger; returns how many.

        The linger runs from a closed connection's last packet (a late ACK or a retransmitted
        FIN still lands in its flow), so no close time is kept per flow.
        """
        self._last_expiry = now
        idle_before = now - self.idle_timeout
        linger_before = now - self.close_linger
        gone = [f for f in self._table.values()
                if f.last_seen < idle_before or f.last_seen < linger_before
                and f.tcp is not None and f.tcp.closed]
        for flow in gone:
            why = "closed" if flow.tcp is not None and flow.tcp.closed else "idle"
            if why == "idle":
                self.expired += 1
            self._retire(flow, why)
        return len(gone)

    def maybe_expire(self, now: float, every: float = 1.0) -> None:
        if now - self._last_expiry >= every:
            self.expire(now)

    def finish(self) -> None:
        """End of capture: every active flow is retired ("end") so listeners see its final
        state; they also stay in :attr:`ended`."""
        flows = list(self._table.values())
        self._table.clear()  # at once: no flow is looked up any more
        self.ended.extend(flows)
        for flow in flows:
            self._record(flow, "end")

    # ---- readers -----------------------------------------------------------------------------
    def snapshot(self) -> list[Flow]:
        """Active flows (shared objects: read them, don't change them)."""
        with self.lock:
            return list(self._table.values())

    def last_flows(self) -> list[Flow]:
        """The active flows and those :meth:`finish` retired: what a reader of totals that
        :attr:`fold_listeners` keep still has to count."""
        with self.lock:
            return list(self._table.values()) + self.ended

    def active_flows(self) -> Iterable[Flow]:
        """The live view of the active flows, for code on the pipeline thread (no copy)."""
        return self._table.values()

    def all_flows(self) -> list[Flow]:
        """Active and retired flows of the run, retired first (for exports)."""
        with self.lock:
            return list(self.retired) + list(self._table.values())

    @property
    def active_count(self) -> int:
        return len(self._table)


# ---- snapshot helpers (pure functions over lists of flows) -----------------------------------
SORT_KEYS: dict[str, Callable[[Flow], Any]] = {
    "bytes": lambda f: f.bytes_sent + f.bytes_recv,
    "packets": lambda f: f.packets_sent + f.packets_recv,
    "time": lambda f: f.last_seen,
    "start": lambda f: f.first_seen,
}


def filter_flows(flows: Iterable[Flow], text: str = "", port: int | None = None,
                 proto: str = "", local: bool | None = None,
                 is_local: Callable[[str], bool] | None = None,
                 names: Callable[[Flow], str] | None = None) -> list[Flow]:
    """Filter by IP (or name) substring, port, protocol name, and local/remote traffic."""
    out = []
    text = text.lower()
    proto = proto.upper()
    for f in flows:
        if proto and f.protocol.upper() != proto:
            continue
        if port is not None and port not in (f.src_port, f.dst_port):
            continue
        if text and text not in f.src_ip and text not in f.dst_ip and not (
                names is not None and text in names(f).lower()):
            continue
        if local is not None and is_local is not None:
            both_local = is_local(f.src_ip) and is_local(f.dst_ip)
            if both_local != local:
                continue
        out.append(f)
    return out


def sort_flows(flows: list[Flow], mode: str = "bytes", rates: dict[str, float] | None = None,
               limit: int | None = None) -> list[Flow]:
    if mode == "rate" and rates is not None:
        key: Callable[[Flow], Any] = lambda f: rates.get(f.flow_key, 0.0)
    else:
        key = SORT_KEYS.get(mode, SORT_KEYS["bytes"])
    if limit is not None and limit < len(flows):
        import heapq
        return heapq.nlargest(limit, flows, key=key)
    return sorted(flows, key=key, reverse=True)


@dataclass(slots=True)
class Destination:
    """Flows aggregated by remote endpoint (the Traffic view's destinations mode)."""

    ip: str
    flows: int = 0
    packets: int = 0
    bytes_sent: int = 0
    bytes_recv: int = 0
    ports: set[int] = field(default_factory=set)
    protocols: set[str] = field(default_factory=set)
    last_seen: float = 0.0


def destinations(flows: Iterable[Flow]) -> list[Destination]:
    out: dict[str, Destination] = {}
    for f in flows:
        d = out.get(f.dst_ip)
        if d is None:
            d = out[f.dst_ip] = Destination(f.dst_ip)
        d.flows += 1
        d.packets += f.packets
        d.bytes_sent += f.bytes_sent
        d.bytes_recv += f.bytes_recv
        if f.has_ports:
            d.ports.add(f.dst_port)
        d.protocols.add(f.protocol)
        d.last_seen = max(d.last_seen, f.last_seen)
    return sorted(out.values(), key=lambda d: d.bytes_sent + d.bytes_recv, reverse=True)
