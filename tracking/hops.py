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

from utils.bounded import drop_oldest_share
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


# ---- one int per host ---------------------------------------------------------------------
# A busy link has tens of thousands of hosts, so a host is one int in ``HopAnalyzer._hosts``:
# 150 bits, 48 bytes, no garbage-collector tracking (a slotted object with two float times and
# a packet-count int took ~172 bytes and was walked by every full collection). The sum that
# ``process`` stores is allocated one 30-bit digit wider than needed, 6 digits, still 48 bytes.
# Fields, low bits first:
#   bits   0-7    last TTL seen (0 = placeholder: a traceroute answer seen before any sample)
#   bits   8-14   min hops (127 in a placeholder: above any hop count, which is at most 126)
#   bits  15-21   max hops
#   bits  22-27   probe TTL (traceroute distance, <= PROBE_TTL_MAX; 0 = none)
#   bits  28-71   packets (44 bits: 1.7e13, almost three years of one host at 200k packets/s)
#   bits  72-110  first seen, in whole centiseconds of packet time (39 bits: to year 2144)
#   bits 111-149  last seen, likewise; the top field, so one mask clears it
# Times are kept to the centisecond (finer than any view of them shows; HostHops gives them
# rounded down to it). Within one centisecond ``process`` reuses precomputed time bits (at
# 100k packets/s they change once per 1000 packets), so a packet from a known host whose TTL
# did not change costs a TTL test, a mask and an add.
_TTL_MASK = 0xFF
_MIN_SHIFT, _MAX_SHIFT, _PROBE_SHIFT, _PKT_SHIFT = 8, 15, 22, 28
_FIRST_SHIFT, _LAST_SHIFT = 72, 111
_HOPS_MASK = 0x7F
_PROBE_MASK = 0x3F
_PKT_ONE = 1 << _PKT_SHIFT
_PKT_MASK = (1 << 44) - 1
_CS_MASK = (1 << 39) - 1
#: everything but last seen
_KEEP = (1 << _LAST_SHIFT) - 1
#: everything but the probe TTL
_NO_PROBE = ~(_PROBE_MASK << _PROBE_SHIFT)
#: min hops of a placeholder, above any real hop count
_NO_MIN = _HOPS_MASK
assert max(_INITIAL[t] - t for t in range(1, 256)) < _NO_MIN and PROBE_TTL_MAX <= _PROBE_MASK
#: TTL -> its bits in a new host (last TTL, min and max hops)
_NEW: tuple[int, ...] = tuple(
    t | (_INITIAL[t] - t) << _MIN_SHIFT | (_INITIAL[t] - t) << _MAX_SHIFT for t in range(256))


def _cs(ts: float) -> int:
    """Packet time in whole centiseconds, clamped to the field (NaN and negatives are 0)."""
    if not ts > 0.0:
        return 0
    return _CS_MASK if ts >= _CS_MASK / 100.0 else int(ts * 100.0)


def _rettl(v: int, ttl: int) -> int:
    """``v`` with a new last TTL, min and max hops widened to cover it."""
    hops = _INITIAL[ttl] - ttl
    lo = v >> _MIN_SHIFT & _HOPS_MASK
    hi = v >> _MAX_SHIFT & _HOPS_MASK
    if hops < lo:
        lo = hops
    if hops > hi:
        hi = hops
    return (v >> _PROBE_SHIFT << _PROBE_SHIFT) | ttl | lo << _MIN_SHIFT | hi << _MAX_SHIFT


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
        #: ip -> the host packed in one int (fields above ``_TTL_MASK``)
        self._hosts: dict[str, int] = {}
        #: (target, proto, id_or_sport, seq_or_dport) -> probe TTL
        self._probes: dict[tuple[str, int, int, int], int] = {}
        # The current centisecond of packet time: a packet with ``_lo <= ts < _hi`` adds
        # ``_tick`` (its last-seen bits and one packet) to its host, a new host gets
        # ``_tick_new`` (first seen too).
        self._lo = self._hi = 0.0
        self._tick = self._tick_new = _PKT_ONE

    # ---- hot path ----------------------------------------------------------------------------
    def process(self, pkt: ParsedPacket) -> None:
        ttl = pkt.ttl
        if not ttl or not pkt.ip_version:
            return
        # ICMP (icmp_type >= 0) may be a traceroute answer: time exceeded (quoted) or echo reply
        if ttl <= PROBE_TTL_MAX or pkt.icmp_type >= 0:
            if self._traceroute(pkt):
                return  # a traceroute probe's TTL says nothing about its sender's distance
        ts = pkt.ts
        if ts >= self._hi or ts < self._lo:  # two float tests, cheaper than a chained one
            self._set_tick(ts)
        hosts = self._hosts
        src = pkt.src_ip
        v = hosts.get(src, 0)
        if v & 0xFF == ttl:  # a known host, same TTL as last time (0 & 0xFF never matches)
            hosts[src] = (v & _KEEP) + self._tick
        elif v:
            # a new TTL, or a placeholder's first sample; our own addresses (which can have a
            # placeholder, see _learn) are tested here and below, never on the path above
            if src not in self.local_ips:
                hosts[src] = (_rettl(v, ttl) & _KEEP) + self._tick
        elif src not in self.local_ips:
            hosts[src] = _NEW[ttl] | self._tick_new  # '|': no spare digit
            if len(hosts) > self.max_hosts:
                # the oldest-seen eighth in one go: deleting the front key one at a time
                # re-scans the deleted slots each time (quadratic once the table is full)
                drop_oldest_share(hosts)

    def _set_tick(self, ts: float) -> None:
        """Make ``ts``'s centisecond the current one."""
        cs = _cs(ts)
        # settle float rounding at the edges so that lo <= ts < hi holds (else every packet of
        # this centisecond would come back here)
        if cs and ts < cs / 100.0:
            cs -= 1
        elif cs < _CS_MASK and ts >= (cs + 1) / 100.0:
            cs += 1
        self._lo = cs / 100.0 if cs else float("-inf")
        self._hi = (cs + 1) / 100.0 if cs < _CS_MASK else float("inf")
        self._tick = (cs << _LAST_SHIFT) + _PKT_ONE
        self._tick_new = self._tick | cs << _FIRST_SHIFT

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
            drop_oldest_share(self._probes)
        return True

    def _learn(self, ip: str, ts: float, key: tuple[str, int, int, int]) -> None:
        probe_ttl = self._probes.pop(key, 0)
        if not probe_ttl:
            return
        v = self._hosts.get(ip)
        if v is None:
            # First packet from this host: a placeholder (no packets, last TTL 0) that the
            # caller's accounting of this same packet fills in right after (unless it is one of
            # our own addresses: then it stays hidden, holding a table slot as it always did).
            cs = _cs(ts)
            v = _NO_MIN << _MIN_SHIFT | cs << _FIRST_SHIFT | cs << _LAST_SHIFT
        self._hosts[ip] = (v & _NO_PROBE) | probe_ttl << _PROBE_SHIFT

    # ---- readers -----------------------------------------------------------------------------
    def hops(self, ip: str) -> int | None:
        """Last estimated hop count to ``ip`` (routers in between), or None if never seen."""
        v = self._hosts.get(ip)
        if v is None or not v >> _PKT_SHIFT & _PKT_MASK:
            return None
        ttl = v & _TTL_MASK
        return _INITIAL[ttl] - ttl

    def get(self, ip: str) -> HostHops | None:
        v = self._hosts.get(ip)
        return _freeze(ip, v) if v is not None and v >> _PKT_SHIFT & _PKT_MASK else None

    def snapshot(self) -> HopsSnapshot:
        with self.lock:
            hosts = list(self._hosts.items())
        return HopsSnapshot(tuple(_freeze(ip, v) for ip, v in hosts if v >> _PKT_SHIFT & _PKT_MASK))

    def __len__(self) -> int:
        return len(self._hosts)


def _freeze(ip: str, v: int) -> HostHops:
    ttl = v & _TTL_MASK
    init = _INITIAL[ttl]
    return HostHops(ip, init, ttl, init - ttl, v >> _MIN_SHIFT & _HOPS_MASK,
                    v >> _MAX_SHIFT & _HOPS_MASK, v >> _PKT_SHIFT & _PKT_MASK,
                    (v >> _FIRST_SHIFT & _CS_MASK) / 100.0, (v >> _LAST_SHIFT) / 100.0,
                    v >> _PROBE_SHIFT & _PROBE_MASK)
