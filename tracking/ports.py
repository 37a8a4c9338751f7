"""Per-port traffic statistics and per-source scan activity.

Which port a packet counts for: the *service* side of its connection. A connection's service
port is decided once, on its flow's first packet, and kept on the flow (``Flow.svc``: the port's
record), so the per-packet work needs no table of its own:

* a TCP packet without ACK/RST (SYN, or a FIN/NULL/Xmas probe) goes to its destination port; a
  SYN/ACK comes from the service port;
* a first UDP packet goes to its destination port, unless only its source port is a known
  service (a capture that starts with the reply);
* anything else picked up mid-stream: the known service port, else the lower port.

A *connection* is a new TCP SYN (a SYN with another initial sequence number on a known 5-tuple
is a new one, as it starts a new flow; a retransmitted SYN is not), a SYN/ACK whose SYN was not
seen, or a new UDP flow. TCP connections picked up mid-stream are counted in packets/bytes, not connections.

Scan activity: each packet that *probes* a port -- a TCP segment without ACK or RST (so SYN
half-open scans, FIN/NULL/Xmas scans) or the first packet of a UDP 5-tuple sent to its service
port -- adds the destination port and host to its source's :class:`ScanActivity`. A source is a
likely scanner when it touched more than ``ALERTS_PORT_SCAN_THRESHOLD`` ports at more than
``ALERTS_SCAN_RATE`` ports/s (ports / max(1 s, last - first)). A source idle for ``scan_idle``
seconds starts a fresh activity record, so an old quiet period does not dilute a new scan's rate.

Threading: ``flow_stage`` runs on the pipeline thread, which holds ``lock`` around each batch (pass
the flow tracker's lock in to share it); readers take ``lock`` only to copy references.
Time is packet time (``pkt.ts``), so a replayed file gives the file's timeline.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from utils.bounded import drop_oldest_share
from capture.packet import ACK, PROTO_SCTP, PROTO_TCP, PROTO_UDP, RST, SYN, ParsedPacket, proto_name
from config import ALERTS_PORT_SCAN_THRESHOLD, ALERTS_SCAN_RATE
from tracking.services import known_port_keys, port_range, service_name

if TYPE_CHECKING:
    from tracking.flow import Flow, FlowTracker

HISTORY_SECONDS = 60
SORT_MODES = ("bytes", "packets", "connections", "rate", "hits", "port")

_KNOWN = known_port_keys()
_SYN_ACK = SYN | ACK
_ACK_RST = ACK | RST


@dataclass(slots=True, eq=False)
class _PortStats:
    proto: int
    port: int
    service: str
    first_seen: float
    last_seen: float
    packets: int = 0
    bytes: int = 0
    connections: int = 0
    sources: set[str] = field(default_factory=set)
    # the second being counted (hsec) and its packets/bytes, filed into the ring when it ends
    hsec: int = -1
    hp: int = 0
    hb: int = 0
    #: dropped from the table for room (flows holding it move to a fresh record)
    evicted: bool = False


@dataclass(slots=True, eq=False)
class _Scan:
    src: str
    first_seen: float
    last_seen: float
    # Most sources probe one port of one host (they are clients): the first port and host are
    # kept as they are, and sets are made only when a second one comes (two empty sets cost
    # ~430 bytes per source).
    #: ports touched: the only one so far (-1 = none yet), or the set of them
    ports: int | set[int] = -1
    #: hosts probed: the only one so far ("" = none yet), or the set of them
    hosts: str | set[str] = ""
    probes: int = 0
    syn_probes: int = 0

    def port_set(self) -> frozenset[int]:
        p = self.ports
        if isinstance(p, int):
            return frozenset((p,)) if p >= 0 else frozenset()
        return frozenset(p)

    def host_set(self) -> frozenset[str]:
        h = self.hosts
        if isinstance(h, str):
            return frozenset((h,)) if h else frozenset()
        return frozenset(h)

    def port_count(self) -> int:
        p = self.ports
        if isinstance(p, int):
            return 1 if p >= 0 else 0
        return len(p)


@dataclass(frozen=True, slots=True)
class PortRow:
    """One port in a snapshot. ``pps``/``bps`` average the last ``rate_window`` seconds."""

    port: int
    proto: str
    service: str
    range: str
    packets: int
    bytes: int
    connections: int
    #: unique client addresses seen talking to the port (capped at ``max_sources_per_port``)
    hits: int
    first_seen: float
    last_seen: float
    pps: float
    bps: float


@dataclass(frozen=True, slots=True)
class ScanActivity:
    """What one source probed during its current activity period."""

    src_ip: str
    #: ports touched (capped at ``max_scan_ports``; ``port_count`` is the set's size)
    ports: frozenset[int]
    hosts: frozenset[str]
    probes: int
    syn_probes: int
    first_seen: float
    last_seen: float
    #: ports per second over max(1 s, last - first)
    rate: float
    likely_scanner: bool

    @property
    def port_count(self) -> int:
        return len(self.ports)

    @property
    def host_count(self) -> int:
        return len(self.hosts)

    @property
    def duration(self) -> float:
        return self.last_seen - self.first_seen


@dataclass(frozen=True, slots=True)
class PortsSnapshot:
    now: float
    rows: tuple[PortRow, ...]
    total_ports: int
    scanners: tuple[ScanActivity, ...]


class PortTracker:
    """Per-port packets/bytes/connections/hits, per-second history and scan activity."""

    def __init__(self, scan_threshold: int = ALERTS_PORT_SCAN_THRESHOLD,
                 scan_rate: float = ALERTS_SCAN_RATE, scan_idle: float = 300.0,
                 max_ports: int = 20000, max_connections: int = 200000,
                 max_sources: int = 10000, max_sources_per_port: int = 4096,
                 max_scan_ports: int = 4096, max_scan_hosts: int = 1024,
                 rate_window: int = 10, lock: threading.RLock | None = None) -> None:
        self.scan_threshold = scan_threshold
        self.scan_rate = scan_rate
        self.scan_idle = scan_idle
        self.max_ports = max_ports
        self.max_connections = max_connections
        self.max_sources = max_sources
        self.max_sources_per_port = max_sources_per_port
        self.max_scan_ports = max_scan_ports
        self.max_scan_hosts = max_scan_hosts
        self.rate_window = max(1, min(rate_window, HISTORY_SECONDS))
        self.lock = lock if lock is not None else threading.RLock()
        #: proto << 16 | port -> stats
        self._ports: dict[int, _PortStats] = {}
        #: flows for :meth:`process` (standalone use); the pipeline passes the run's flows
        self._own_flows: FlowTracker | None = None
        self._scans: dict[str, _Scan] = {}
        # per-second ring: slot sec % 60 holds {port key: (packets, bytes)} for second
        # _ring_sec[slot]; each port's current second is kept on its stats until it ends
        self._ring: list[dict[int, tuple[int, int]]] = [{} for _ in range(HISTORY_SECONDS)]
        self._ring_sec: list[int] = [-1] * HISTORY_SECONDS
        self._sec = -1
        self._first_sec = -1
        self.evicted_ports = 0
        service_name(0, PROTO_TCP)  # load /etc/services now, not on the first packet

    # ---- hot path ----------------------------------------------------------------------------
    def process(self, pkt: ParsedPacket) -> None:
        """Account one packet on its own (tests, tools): through a private flow table.

        The pipeline does not call this: it runs :meth:`flow_stage` with the run's flow, so a
        connection is looked up once per packet, not once per tracker.
        """
        flows = self._own_flows
        if flows is None:
            from tracking.flow import FlowTracker
            from tracking.tcp_state import TcpConnection
            flows = self._own_flows = FlowTracker(max_flows=self.max_connections,
                                                   tcp_factory=TcpConnection)
        hit = flows.process(pkt)
        if hit is not None:
            self.flow_stage(pkt, hit[0], hit[1])

    def flow_stage(self, pkt: ParsedPacket, flow: Flow, forward: bool) -> None:
        proto = pkt.proto
        if proto != PROTO_TCP and proto != PROTO_UDP and proto != PROTO_SCTP:
            return
        sport = pkt.sport
        dport = pkt.dport
        if (pkt.is_fragment and pkt.frag_offset) or (sport == 0 and dport == 0):
            return  # later fragments carry no ports; port 0 both ways = header not decoded
        ts = pkt.ts
        flags = pkt.tcp_flags
        st = flow.svc
        new_conn = False
        if st is None:
            # The flow's first packet decides its service port (the flow table makes a new flow
            # for a SYN that reuses a 5-tuple, so that SYN lands here too).
            if proto == PROTO_TCP:
                if not flags & _ACK_RST:
                    svc = dport
                    new_conn = flags & SYN != 0
                elif flags & _SYN_ACK == _SYN_ACK:
                    svc = sport
                    new_conn = True
                else:
                    svc = _pick(proto, sport, dport)
            else:
                new_conn = True
                svc = sport if ((proto << 16 | sport) in _KNOWN
                                and (proto << 16 | dport) not in _KNOWN) else dport
            st = self._ports.get(proto << 16 | svc)
            if st is None:
                st = self._new_port(proto, svc, ts)
            flow.svc = st
            client = pkt.src_ip if svc == dport else pkt.dst_ip
            if client not in st.sources and len(st.sources) < self.max_sources_per_port:
                st.sources.add(client)
        elif st.evicted:
            # the port's record was dropped for room: carry on in a fresh one
            svc = st.port
            st = self._ports.get(proto << 16 | svc)
            if st is None:
                st = self._new_port(proto, svc, ts)
            flow.svc = st
        else:
            svc = st.port
        wl = pkt.wire_len
        st.packets += 1
        st.bytes += wl
        st.last_seen = ts
        if new_conn:
            st.connections += 1
        sec = int(ts)
        if sec == st.hsec:
            st.hp += 1
            st.hb += wl
        else:
            self._roll(st, sec, wl)
        if proto == PROTO_TCP:
            if not flags & _ACK_RST:
                self._probe(pkt.src_ip, pkt.dst_ip, dport, ts, flags & SYN)
        elif new_conn and svc == dport:
            self._probe(pkt.src_ip, pkt.dst_ip, dport, ts, 0)

    def _probe(self, src: str, dst: str, port: int, ts: float, syn: int) -> None:
        sc = self._scans.get(src)
        if sc is None or ts - sc.last_seen > self.scan_idle:
            if sc is not None:
                del self._scans[src]  # re-insert so insertion order stays oldest-first
            sc = self._scans[src] = _Scan(src, ts, ts)
            if len(self._scans) > self.max_sources:
                drop_oldest_share(self._scans)  # in a batch: one-at-a-time front deletes are quadratic
        sc.probes += 1
        if syn:
            sc.syn_probes += 1
        if ts > sc.last_seen:
            sc.last_seen = ts
        ports = sc.ports
        if isinstance(ports, int):
            if ports < 0:
                sc.ports = port
            elif ports != port and self.max_scan_ports > 1:
                sc.ports = {ports, port}
        elif len(ports) < self.max_scan_ports:
            ports.add(port)
        hosts = sc.hosts
        if isinstance(hosts, str):
            if not hosts:
                sc.hosts = dst
            elif hosts != dst and self.max_scan_hosts > 1:
                sc.hosts = {hosts, dst}
        elif len(hosts) < self.max_scan_hosts:
            hosts.add(dst)

    def _new_port(self, proto: int, port: int, ts: float) -> _PortStats:
        st = self._ports[proto << 16 | port] = _PortStats(proto, port, service_name(port, proto), ts, ts)
        if len(self._ports) > self.max_ports:
            # Drop the quietest tenth in one pass (a scan leaves thousands of 1-packet ports)
            # rather than keeping LRU order on every packet. Flows still point at a dropped
            # record: it is marked, and their next packet moves them to a fresh one.
            victims = sorted(self._ports.values(), key=lambda s: s.packets)
            for v in victims[:max(1, len(victims) // 10)]:
                if v is not st:
                    del self._ports[v.proto << 16 | v.port]
                    v.evicted = True
                    self.evicted_ports += 1
        return st

    def _roll(self, st: _PortStats, sec: int, wl: int) -> None:
        """The port's first packet in a new second: file its last second into the ring."""
        if sec < st.hsec:  # a slightly older timestamp: count it in the current second
            st.hp += 1
            st.hb += wl
            return
        if sec > self._sec:
            if self._first_sec < 0:
                self._first_sec = sec
            self._sec = sec
        if st.hsec >= 0:
            i = st.hsec % HISTORY_SECONDS
            if self._ring_sec[i] != st.hsec:
                if self._ring_sec[i] > st.hsec:
                    st.hsec, st.hp, st.hb = sec, 1, wl
                    return  # older than the ring reaches
                self._ring_sec[i] = st.hsec
                self._ring[i] = {}
            self._ring[i][st.proto << 16 | st.port] = (st.hp, st.hb)
        st.hsec, st.hp, st.hb = sec, 1, wl

    # ---- readers -----------------------------------------------------------------------------
    @property
    def now(self) -> int:
        """The current second of packet time (-1 before the first packet)."""
        return self._sec

    def _seconds(self, stats: list[_PortStats], seconds: int) -> tuple[dict[int, list[int]], int]:
        """Packets/bytes per port over the last ``seconds`` seconds, and the divisor to use."""
        now = self._sec
        lo = now - seconds
        with self.lock:
            dicts = [self._ring[i].copy() for i in range(HISTORY_SECONDS) if self._ring_sec[i] > lo]
            pending = [(s.proto << 16 | s.port, s.hsec, s.hp, s.hb) for s in stats]
        acc: dict[int, list[int]] = {}
        for d in dicts:
            for k, (p, b) in d.items():
                a = acc.get(k)
                if a is None:
                    acc[k] = [p, b]
                else:
                    a[0] += p
                    a[1] += b
        for k, sec, p, b in pending:
            if sec > lo:
                a = acc.get(k)
                if a is None:
                    acc[k] = [p, b]
                else:
                    a[0] += p
                    a[1] += b
        span = min(seconds, now - self._first_sec + 1) if now >= 0 else 1
        return acc, max(1, span)

    def snapshot(self, sort: str = "bytes", limit: int | None = None) -> PortsSnapshot:
        """A frozen view for the dashboard: port rows sorted by ``sort`` and likely scanners."""
        with self.lock:
            stats = list(self._ports.values())
        rate, span = self._seconds(stats, self.rate_window)
        rows = [self._row(s, rate.get(s.proto << 16 | s.port), span) for s in stats]
        rows = sort_rows(rows, sort)
        if limit is not None:
            rows = rows[:limit]
        return PortsSnapshot(float(self._sec), tuple(rows), len(stats), tuple(self.get_likely_scanners()))

    @staticmethod
    def _row(s: _PortStats, r: list[int] | None, span: int) -> PortRow:
        pps, bps = (r[0] / span, r[1] * 8 / span) if r else (0.0, 0.0)
        return PortRow(s.port, proto_name(s.proto), s.service, port_range(s.port), s.packets,
                       s.bytes, s.connections, len(s.sources), s.first_seen, s.last_seen, pps, bps)

    def rows(self) -> list[dict[str, object]]:
        """The export's ``ports`` section: every tracked port, busiest (bytes) first."""
        with self.lock:
            stats = list(self._ports.values())
        stats.sort(key=lambda s: (-s.bytes, s.port, s.proto))
        return [{"port": s.port, "proto": proto_name(s.proto), "service": s.service or None,
                 "range": port_range(s.port), "packets": s.packets, "bytes": s.bytes,
                 "connections": s.connections, "hits": len(s.sources),
                 "first_seen": s.first_seen, "last_seen": s.last_seen} for s in stats]

    def history(self, port: int, proto: int = PROTO_TCP) -> tuple[tuple[int, int], ...]:
        """(packets, bytes) per second for the last 60 seconds of packet time, oldest first."""
        pk = proto << 16 | port
        now = self._sec
        with self.lock:
            slots = {self._ring_sec[i]: self._ring[i].get(pk) for i in range(HISTORY_SECONDS)}
            st = self._ports.get(pk)
            if st is not None and st.hsec >= 0:
                slots[st.hsec] = (st.hp, st.hb)
        out = []
        for sec in range(now - HISTORY_SECONDS + 1, now + 1):
            h = slots.get(sec)
            out.append((h[0], h[1]) if h else (0, 0))
        return tuple(out)

    def _activity(self, sc: _Scan) -> ScanActivity:
        ports = sc.port_set()
        rate = len(ports) / max(1.0, sc.last_seen - sc.first_seen)
        likely = len(ports) > self.scan_threshold and rate > self.scan_rate
        return ScanActivity(sc.src, ports, sc.host_set(), sc.probes, sc.syn_probes,
                            sc.first_seen, sc.last_seen, rate, likely)

    def get_scan_activity(self, src_ip: str | None = None) -> list[ScanActivity]:
        """Scan activity of every source (or of ``src_ip``), most ports first."""
        with self.lock:
            if src_ip is not None:
                one = self._scans.get(src_ip)
                scans = [one] if one is not None else []
            else:
                scans = list(self._scans.values())
        out = [self._activity(sc) for sc in scans]
        out.sort(key=lambda a: (-len(a.ports), a.src_ip))
        return out

    def get_likely_scanners(self) -> list[ScanActivity]:
        with self.lock:
            scans = list(self._scans.values())  # one C-level copy: safe against a writer
        out = [self._activity(sc) for sc in scans if sc.port_count() > self.scan_threshold]
        out = [a for a in out if a.likely_scanner]
        out.sort(key=lambda a: (-len(a.ports), a.src_ip))
        return out

    def port_stats(self, port: int, proto: int = PROTO_TCP) -> PortRow | None:
        """One port's row (rates over the last ``rate_window`` seconds), or None if unseen."""
        s = self._ports.get(proto << 16 | port)
        if s is None:
            return None
        rate, span = self._seconds([s], self.rate_window)
        return self._row(s, rate.get(proto << 16 | port), span)


def _pick(proto: int, sport: int, dport: int) -> int:
    """The service port of a connection picked up mid-stream."""
    d_known = (proto << 16 | dport) in _KNOWN
    if d_known != ((proto << 16 | sport) in _KNOWN):
        return dport if d_known else sport
    return dport if dport <= sport else sport


_SORT_KEYS = {
    "bytes": lambda r: (-r.bytes, r.port),
    "packets": lambda r: (-r.packets, r.port),
    "connections": lambda r: (-r.connections, -r.bytes, r.port),
    "rate": lambda r: (-r.bps, -r.bytes, r.port),
    "hits": lambda r: (-r.hits, -r.bytes, r.port),
    "port": lambda r: (r.port, r.proto),
}


def sort_rows(rows: list[PortRow], mode: str = "bytes") -> list[PortRow]:
    """Rows sorted by one of :data:`SORT_MODES` (unknown modes sort by bytes)."""
    return sorted(rows, key=_SORT_KEYS.get(mode, _SORT_KEYS["bytes"]))
