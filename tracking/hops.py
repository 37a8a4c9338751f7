"""Hop distance to each host, passively, from the TTL / hop limit of the packets it sends.

Senders start at one of a few initial TTLs (32, 64, 128, 255); the initial TTL is taken as the
smallest of those that is >= the observed value, and ``hops = initial - observed`` is the number
of routers the packet crossed. (In traceroute's numbering the host is hop ``hops + 1``.)
A return path can differ from the forward path, and a host can use an unusual initial TTL, so
this is an estimate; min/max/last are kept to show how stable it is.

Traceroutes seen on the wire give exact answers: a probe with a small TTL (ICMP echo, UDP, TCP
SYN) is remembered, and the ICMP time-exceeded (or echo reply / reply from the target) that
quotes or answers it tells which host sits at that probe's TTL: ``probe_ttl``. The probes
themselves (TTL <= ``PROBE_TTL_MAX``) are not used as samples of their sender's distance; a
real host more than ~34 hops away would be mistaken for a prober, which is rare on the Internet.

Threading and time follow the other trackers: ``process`` on the pipeline thread (which holds
``lock`` per batch), readers copy under ``lock``; timestamps are packet time.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

from analysis.anomaly import evict_oldest
from capture.packet import ACK, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, SYN, ParsedPacket

INITIAL_TTLS = (32, 64, 128, 255)
#: observed TTL -> inferred initial TTL
_INITIAL: tuple[int, ...] = tuple(next(i for i in INITIAL_TTLS if i >= t) for t in range(256))
#: probes with a TTL at most this are remembered for traceroute matching
PROBE_TTL_MAX = 30

_TIME_EXCEEDED = {PROTO_ICMP: 11, PROTO_ICMPV6: 3}
_ECHO_REQUEST = {PROTO_ICMP: 8, PROTO_ICMPV6: 128}
_ECHO_REPLY = {PROTO_ICMP: 0, PROTO_ICMPV6: 129}


def initial_ttl(ttl: int) -> int:
    """The initial TTL a sender most likely used, for an observed ``ttl`` (0..255)."""
    return _INITIAL[ttl]


def hop_count(ttl: int) -> int:
    """Routers crossed by a packet that arrived with ``ttl``."""
    return _INITIAL[ttl] - ttl


@dataclass(slots=True, eq=False)
class _Host:
    ip: str
    first_seen: float
    last_seen: float
    #: the last TTL seen; the initial TTL and hop count follow from it (not stored: 16 bytes a
    #: host, and a busy link has tens of thousands of hosts)
    last_ttl: int
    min_hops: int
    max_hops: int
    packets: int = 1
    probe_ttl: int = 0


@dataclass(frozen=True, slots=True)
class HostHops:
    ip: str
    initial_ttl: int
    last_ttl: int
    hops: int
    min_hops: int
    max_hops: int
    packets: int
    first_seen: float
    last_seen: float
    #: traceroute distance learned from a matched probe (hop number, 1 = first router); 0 = none
    probe_ttl: int


@dataclass(frozen=True, slots=True)
class HopsSnapshot:
    hosts: tuple[HostHops, ...]

    def get(self, ip: str) -> HostHops | None:
        for h in self.hosts:
            if h.ip == ip:
                return h
        return None


class HopAnalyzer:
    """Per-source hop estimates. ``local_ips`` (our own addresses) are not tracked."""

    def __init__(self, max_hosts: int = 50000, max_probes: int = 4096,
                 local_ips: frozenset[str] | set[str] = frozenset(),
                 lock: threading.RLock | None = None) -> None:
        self.max_hosts = max_hosts
        self.max_probes = max_probes
        self.local_ips = frozenset(local_ips)
        self.lock = lock if lock is not None else threading.RLock()
        self._hosts: dict[str, _Host] = {}
        #: (target, proto, id_or_sport, seq_or_dport) -> probe TTL
        self._probes: dict[tuple[str, int, int, int], int] = {}

    # ---- hot path ----------------------------------------------------------------------------
    def process(self, pkt: ParsedPacket) -> None:
        ttl = pkt.ttl
        if not ttl or not pkt.ip_version:
            return
        src = pkt.src_ip
        if ttl <= PROBE_TTL_MAX or pkt.quoted is not None or pkt.icmp_type == 0 or pkt.icmp_type == 129:
            if self._traceroute(pkt):
                return  # a traceroute probe's TTL says nothing about its sender's distance
        if src in self.local_ips:
            return
        h = self._hosts.get(src)
        if h is None:
            hops = _INITIAL[ttl] - ttl
            self._hosts[src] = _Host(src, pkt.ts, pkt.ts, ttl, hops, hops)
            if len(self._hosts) > self.max_hosts:
                # the oldest-seen eighth in one go: deleting the front key one at a time
                # re-scans the deleted slots each time (quadratic once the table is full)
                evict_oldest(self._hosts)
            return
        h.packets += 1
        h.last_seen = pkt.ts
        if ttl != h.last_ttl:
            hops = _INITIAL[ttl] - ttl
            h.last_ttl = ttl
            if hops < h.min_hops:
                h.min_hops = hops
            if hops > h.max_hops:
                h.max_hops = hops

    def _traceroute(self, pkt: ParsedPacket) -> bool:
        """Match traceroute replies to probes; True when ``pkt`` is itself a probe."""
        proto = pkt.proto
        q = pkt.quoted
        if q is not None:
            if pkt.icmp_type != _TIME_EXCEEDED.get(proto):
                return False
            if q.proto in _ECHO_REQUEST and q.icmp_id is not None:
                key = (q.dst_ip, q.proto, q.icmp_id, q.icmp_seq or 0)
            elif q.sport is not None:
                key = (q.dst_ip, q.proto, q.sport, q.dport or 0)
            else:
                return False
            self._learn(pkt.src_ip, pkt.ts, key)
            return False
        if proto in _ECHO_REPLY and pkt.icmp_type == _ECHO_REPLY[proto]:
            self._learn(pkt.src_ip, pkt.ts, (pkt.src_ip, proto, pkt.icmp_id, pkt.icmp_seq))
            return False
        if pkt.ttl > PROBE_TTL_MAX:
            return False
        if proto in _ECHO_REQUEST and pkt.icmp_type == _ECHO_REQUEST[proto]:
            key = (pkt.dst_ip, proto, pkt.icmp_id, pkt.icmp_seq)
        elif proto == PROTO_UDP or (proto == PROTO_TCP and pkt.tcp_flags & (SYN | ACK) == SYN):
            key = (pkt.dst_ip, proto, pkt.sport, pkt.dport)
        else:
            return False
        self._probes[key] = pkt.ttl
        if len(self._probes) > self.max_probes:
            evict_oldest(self._probes)
        return True

    def _learn(self, ip: str, ts: float, key: tuple[str, int, int, int]) -> None:
        probe_ttl = self._probes.pop(key, 0)
        if not probe_ttl:
            return
        h = self._hosts.get(ip)
        if h is None:
            # First packet from this host: a placeholder (no packets yet) that the caller's
            # accounting of this same packet fills in right after.
            h = self._hosts[ip] = _Host(ip, ts, ts, 0, 1 << 30, -1, packets=0)
        h.probe_ttl = probe_ttl

    # ---- readers -----------------------------------------------------------------------------
    def hops(self, ip: str) -> int | None:
        """Last estimated hop count to ``ip`` (routers in between), or None if never seen."""
        h = self._hosts.get(ip)
        if h is None or not h.packets:
            return None
        return _INITIAL[h.last_ttl] - h.last_ttl

    def get(self, ip: str) -> HostHops | None:
        h = self._hosts.get(ip)
        return _freeze(h) if h is not None and h.packets else None

    def snapshot(self) -> HopsSnapshot:
        with self.lock:
            hosts = list(self._hosts.values())
        return HopsSnapshot(tuple(_freeze(h) for h in hosts if h.packets))

    def __len__(self) -> int:
        return len(self._hosts)


def _freeze(h: _Host) -> HostHops:
    init = _INITIAL[h.last_ttl]
    return HostHops(h.ip, init, h.last_ttl, init - h.last_ttl, h.min_hops, h.max_hops,
                    h.packets, h.first_seen, h.last_seen, h.probe_ttl)
