"""Port scans: vertical (one source, many ports of one host) and horizontal sweeps (one source,
one port, many hosts), for SYN/connect, FIN/NULL/XMAS, UDP and ICMP echo probes.

Only *unanswered or refused* probes count: a port or host that answers (SYN/ACK, a UDP reply, an
echo reply) is subtracted, which is what keeps a browser opening 30 connections to port 443 or an
FTP client opening many passive data ports from looking like a scan. A source is reported when
at least ``threshold`` unanswered targets were probed at more than ``scan_rate`` targets/s.

Memory goes where scans are: almost every source probes one (host, port) and nothing else, so a
source's first probe is one entry keyed by the source address alone (``_solo``: no key tuple,
and when the probe is the first packet of a flow the entry is that flow itself, which holds
everything the probe said). Only a second, different probe from the same source turns it into
the per-(source, host) and per-(source, port) records that count targets.

Those records are where memory goes when many flows share few hosts (each client reaching a
handful of services of its servers), so they are kept small too: a first probe recorded in
``_seen_v``/``_seen_h`` is the flow it opened when there is one (as in ``_solo``), and the targets
of an entry are a string of one character per port, or a tuple of hosts, until there are
``_SMALL`` of them (a set of ints costs ~60 B a port, a character 2-4 B).
"""
from __future__ import annotations

from typing import Any, Callable

from config import ALERTS_PORT_SCAN_THRESHOLD, ALERTS_SCAN_RATE
from capture.packet import ACK, FIN, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, PSH, RST, \
    SYN, URG, ParsedPacket
from security.alerts import AlertEngine
from utils.bounded import evict_oldest
from tracking.flow import Flow

# Probe kinds, as bits so one int per target records which techniques were seen.
K_SYN, K_FIN, K_NULL, K_XMAS, K_STEALTH, K_UDP, K_ICMP = 1, 2, 4, 8, 16, 32, 64
_KIND_NAMES = ((K_SYN, "SYN/connect"), (K_FIN, "FIN"), (K_NULL, "NULL"), (K_XMAS, "XMAS"),
               (K_STEALTH, "odd-flag"), (K_UDP, "UDP"), (K_ICMP, "ICMP echo"))
_XMAS = FIN | PSH | URG
#: UDP services that fan out to many hosts by design (resolvers, time, discovery, STUN)
_UDP_FANOUT_PORTS = frozenset({53, 67, 68, 123, 137, 138, 1900, 3478, 5353, 5355, 19302})
#: classic UDP traceroute destination ports: one probe per hop, not a scan
_TRACEROUTE_PORTS = range(33434, 33535)
#: seconds after which an ongoing, already reported scan refreshes its alert
_REFRESH = 1.0
#: most distinct targets remembered per scanner entry (counting stops growing past it)
_MAX_TARGETS = 65536
#: targets an entry keeps in a string or tuple before it moves them to a set (a search of this
#: many is still short, and a set of them is ~5-10x bigger)
_SMALL = 32
#: a vertical target is the port, plus this bit for UDP (kept apart from TCP; the sum fits in
#: one character, so a few targets are a short string)
_UDP_BIT = 0x10000


#: a source's only probe so far: the flow it opened, or (ts, dst, proto, dport, kind)
_Solo = Flow | tuple[float, str, int, int, int]
#: the first probe of a pair in _seen_v/_seen_h: the flow it opened, or (ts, target, kind)
_Seen = Flow | tuple[float, object, int]
#: the probe kind a flow's first packet implies, by IP protocol (K_SYN: a plain SYN)
_FLOW_KIND = {PROTO_TCP: K_SYN, PROTO_UDP: K_UDP, PROTO_ICMP: K_ICMP, PROTO_ICMPV6: K_ICMP}


def kind_names(kinds: int) -> str:
    return "+".join(name for bit, name in _KIND_NAMES if kinds & bit) or "unknown"


#: targets of an entry: ports as a string of chr(target) or hosts as a tuple while there are
#: few, then a set (of ints for ports)
_Targets = str | tuple[str, ...] | set[Any]


class _Probes:
    """Targets (ports or hosts) one source probed, and which of them answered."""

    __slots__ = ("first", "last", "probed", "answered", "kinds", "unreach", "next_report",
                 "reported")

    def __init__(self, ts: float, first_report: int, empty: str | tuple[()]) -> None:
        self.first = ts
        self.last = ts
        #: ``empty`` is "" for ports (int targets), () for hosts
        self.probed: _Targets = empty
        #: created on the first answer: most entries (clients) never need one; the same form
        #: as ``probed`` (both move to sets together)
        self.answered: _Targets | None = None
        self.kinds = 0
        self.unreach = 0
        self.next_report = first_report
        #: time of the last report (0 = never): an ongoing scan is re-reported now and then
        self.reported = 0.0

    def unanswered(self) -> int:
        return len(self.probed) - (len(self.answered) if self.answered else 0)

    def add(self, target: Any) -> bool:
        """Record a probed target; False when it was already there (or the entry is full)."""
        probed = self.probed
        form = type(probed)
        if form is str:
            ch = chr(target)
            if ch in probed:
                return False
            if len(probed) < _SMALL:
                self.probed = probed + ch
                return True
        elif form is tuple:
            if target in probed:
                return False
            if len(probed) < _SMALL:
                self.probed = probed + (target,)
                return True
        elif target in probed or len(probed) >= _MAX_TARGETS:
            return False
        self._as_sets().add(target)
        return True

    def answer(self, target: Any) -> None:
        probed, answered = self.probed, self.answered
        if type(probed) is str:
            ch = chr(target)
            if ch in probed and (answered is None or ch not in answered):
                self.answered = ch if answered is None else answered + ch
        elif target in probed:
            if type(probed) is tuple:
                if answered is None or target not in answered:
                    self.answered = (target,) if answered is None else answered + (target,)
            elif answered is None:
                self.answered = {target}
            else:
                answered.add(target)  # type: ignore[union-attr]

    def _as_sets(self) -> set[Any]:
        """Move the targets (and answers) to sets; returns the probed set."""
        probed, answered = self.probed, self.answered
        if type(probed) is set:
            return probed
        if type(probed) is str:
            new = set(map(ord, probed))
            self.answered = None if answered is None else set(map(ord, answered))
        else:
            new = set(probed)
            self.answered = None if answered is None else set(answered)
        self.probed = new
        return new


class PortScanDetector:
    """Raises ``port_scan`` (vertical) and ``port_sweep`` (horizontal) alerts.

    Args:
        engine: where alerts go.
        threshold: unanswered ports (or hosts) before a source is reported.
        scan_rate: minimum probes per second over the entry's lifetime.
        idle_timeout: seconds without a probe after which an entry starts over.
        max_entries: bound on tracked (source, target) entries per table.
    """

    #: IP protocols this detector looks at (the monitor routes only these to it)
    protocols = frozenset({PROTO_TCP, PROTO_UDP, PROTO_ICMP, PROTO_ICMPV6})

    def __init__(self, engine: AlertEngine, threshold: int = ALERTS_PORT_SCAN_THRESHOLD,
                 scan_rate: float = ALERTS_SCAN_RATE, idle_timeout: float = 300.0,
                 max_entries: int = 20000) -> None:
        self.engine = engine
        self.threshold = max(1, int(threshold))
        self.scan_rate = float(scan_rate)
        self.idle_timeout = idle_timeout
        self.max_entries = max_entries
        #: (src, dst) -> ports probed on dst
        self._vertical: dict[tuple[str, str], _Probes] = {}
        #: (src, proto, dport) -> hosts probed on that port
        self._horizontal: dict[tuple[str, int, int], _Probes] = {}
        #: first probe of pairs that have not reached a second target yet
        self._seen_v: dict[tuple[str, str], _Seen] = {}
        self._seen_h: dict[tuple[str, int, int], _Seen] = {}
        #: source -> its only probe, standing for its entries of _seen_v and _seen_h (none of
        #: whose keys exist while it is here); sources known to probe more skip it
        self._solo: dict[str, _Solo] = {}
        self._multi: dict[str, None] = {}
        self.probes_seen = 0

    def process(self, pkt: ParsedPacket) -> None:
        """Examine one packet without a flow table (every packet; see the entry points below
        for what :class:`security.monitor.SecurityMonitor` calls with one)."""
        proto = pkt.proto
        if proto == PROTO_TCP:
            flags = pkt.tcp_flags
            if flags & ACK:
                if flags & SYN:
                    self.tcp_open(pkt)
                return
            self.tcp_probe(pkt, flags)
        elif proto == PROTO_UDP:
            self.udp(pkt)
        elif proto == PROTO_ICMP or proto == PROTO_ICMPV6:
            self.icmp(pkt)

    # --- entry points: each handles one kind of packet ------------------------------------
    def tcp_open(self, pkt: ParsedPacket) -> None:
        """A SYN/ACK: the port is open, so that probe was answered."""
        if self._vertical or self._horizontal:  # else there is no count to correct
            self._answered(pkt.dst_ip, pkt.src_ip, PROTO_TCP, pkt.sport)

    def tcp_probe(self, pkt: ParsedPacket, flags: int, first: Flow | None = None) -> None:
        """A TCP segment without ACK (``flags``: its flags): SYN, FIN, NULL, XMAS or odd.
        ``first``: the flow this segment opened, when it is that flow's first packet."""
        if flags & RST or pkt.frag_offset:
            return
        if flags & SYN:
            kind = K_SYN
        elif flags == 0:
            if pkt.malformed:
                return  # a cut-off header reads as no flags; not a NULL probe
            kind = K_NULL
        elif flags == FIN:
            kind = K_FIN
        elif flags & _XMAS == _XMAS:
            kind = K_XMAS
        else:
            kind = K_STEALTH
        self._probe(pkt, PROTO_TCP, pkt.dport, kind, first)

    def udp(self, pkt: ParsedPacket, first: Flow | None = None) -> None:
        """A UDP datagram. Only the first of each direction of a 5-tuple can probe a new port
        or answer a probe (the rest repeat them), so with a flow table only those come here
        (``first``: the flow, when the datagram opened it)."""
        if pkt.is_fragment and pkt.frag_offset:
            return
        sport, dport = pkt.sport, pkt.dport
        # Any UDP datagram may be the answer to an earlier probe of its source port.
        if self._vertical or self._horizontal:
            self._answered(pkt.dst_ip, pkt.src_ip, PROTO_UDP, sport)
        if sport < 1024 <= dport:  # a service replying to a client, not a probe
            return
        if dport in _TRACEROUTE_PORTS or _is_group(pkt.dst_ip):
            return
        self._probe(pkt, PROTO_UDP, dport, K_UDP, first)

    def icmp(self, pkt: ParsedPacket, first: Flow | None = None) -> None:
        """ICMP/ICMPv6: echo requests probe hosts, replies answer, port-unreachables confirm
        closed UDP ports (each one counts, so every ICMP packet comes here; ``first``: the
        flow, when the packet opened it)."""
        t = pkt.icmp_type
        v6 = pkt.proto == PROTO_ICMPV6
        if t == (128 if v6 else 8):
            if not _is_group(pkt.dst_ip) and (self.threshold == 1 or not self._solo_probe(
                    pkt.src_ip, pkt.dst_ip, pkt.ts, PROTO_ICMP, 8, K_ICMP, first)):
                self._probe_host(pkt, PROTO_ICMP, 8, K_ICMP, first)
        elif t == (129 if v6 else 0):
            if self._vertical or self._horizontal:
                self._answered(pkt.dst_ip, pkt.src_ip, PROTO_ICMP, 8)
        elif (t == 3 and pkt.icmp_code == 3) or (v6 and t == 1 and pkt.icmp_code == 4):
            q = pkt.quoted
            if q is not None and q.proto == PROTO_UDP:
                entry = self._vertical.get((q.src_ip, q.dst_ip))
                if entry is not None:
                    entry.unreach += 1

    # --- bookkeeping ---------------------------------------------------------------------
    def _probe(self, pkt: ParsedPacket, proto: int, dport: int, kind: int,
               first: Flow | None = None) -> None:
        self.probes_seen += 1
        src, dst = pkt.src_ip, pkt.dst_ip
        if self.threshold > 1 and self._solo_probe(src, dst, pkt.ts, proto, dport, kind, first):
            return
        if first is not None and _FLOW_KIND.get(first.proto) != kind:
            first = None  # the flow does not say what this probe was
        target = dport if proto == PROTO_TCP else dport | _UDP_BIT
        entry = self._track(self._vertical, self._seen_v, (src, dst), pkt.ts, target, kind,
                            first, _v_seen)
        if entry is not None:
            self._check(entry, "port_scan", src, dst, pkt.ts)
        if proto != PROTO_UDP or dport not in _UDP_FANOUT_PORTS:
            self._probe_host(pkt, proto, dport, kind, first)

    def _probe_host(self, pkt: ParsedPacket, proto: int, dport: int, kind: int,
                    first: Flow | None = None) -> None:
        src = pkt.src_ip
        if first is not None and _FLOW_KIND.get(first.proto) != kind:
            first = None
        entry = self._track(self._horizontal, self._seen_h, (src, proto, dport), pkt.ts,
                            pkt.dst_ip, kind, first, _h_seen)
        if entry is not None:
            self._check(entry, "port_sweep", src, f"port {dport}" if proto != PROTO_ICMP
                        else "ICMP echo", pkt.ts)

    def _solo_probe(self, src: str, dst: str, ts: float, proto: int, dport: int, kind: int,
                    first: Flow | None) -> bool:
        """Keep the probe as ``src``'s only one when it can be; True when nothing else is to do.

        Equivalent to the ``_seen_v``/``_seen_h`` bookkeeping of :meth:`_track`: a source's
        first probe is remembered once here instead of in both, a repeat of it changes nothing,
        and a different probe moves it into both tables (as if it had been there all along)
        before taking the ordinary path. ``proto`` is PROTO_ICMP for ICMP and ICMPv6 echoes.
        """
        solo = self._solo
        rec = solo.get(src)
        if rec is not None:
            if type(rec) is tuple:
                rts, rdst, rproto, rport, rkind = rec
            else:
                rts, rdst, rproto, rport, rkind = _from_flow(rec)
            if ts - rts <= self.idle_timeout:
                if rdst == dst and rport == dport and rproto == proto:
                    return True  # the same target again
                del solo[src]
                self._spill(src, rec, rts, rdst, rproto, rport, rkind)
                multi = self._multi
                multi[src] = None
                if len(multi) > 4 * self.max_entries:
                    evict_oldest(multi, 4 * self.max_entries)
                return False
            del solo[src]  # too old to count: as if never seen
        elif src in self._multi:
            return False  # this source has probed more than once: the ordinary path
        # Nothing may stand for keys the tables already hold.
        if proto != PROTO_ICMP:
            vkey = (src, dst)
            if vkey in self._vertical or vkey in self._seen_v:
                return False
        if proto != PROTO_UDP or dport not in _UDP_FANOUT_PORTS:
            hkey = (src, proto, dport)
            if hkey in self._horizontal or hkey in self._seen_h:
                return False
        if first is not None and _FLOW_KIND.get(first.key[0]) == kind:
            solo[src] = first
        else:
            solo[src] = (ts, dst, proto, dport, kind)
        if len(solo) > 4 * self.max_entries:
            evict_oldest(solo, 4 * self.max_entries)
        return True

    def _spill(self, src: str, rec: _Solo, ts: float, dst: str, proto: int, dport: int,
               kind: int) -> None:
        """Write a source's only probe (``rec``, unpacked in the rest) into _seen_v and
        _seen_h, as _track would have: the flow itself when the probe opened one."""
        flow = rec if type(rec) is not tuple else None
        if proto != PROTO_ICMP:
            seen_v = self._seen_v
            seen_v[(src, dst)] = flow or (ts, dport if proto == PROTO_TCP else dport | _UDP_BIT,
                                          kind)
            if len(seen_v) > 4 * self.max_entries:
                evict_oldest(seen_v, 4 * self.max_entries)
        if proto != PROTO_UDP or dport not in _UDP_FANOUT_PORTS:
            seen_h = self._seen_h
            seen_h[(src, proto, dport)] = flow or (ts, dst, kind)
            if len(seen_h) > 4 * self.max_entries:
                evict_oldest(seen_h, 4 * self.max_entries)

    def on_retire(self, flow: Flow) -> None:
        """A flow left the flow table: if it stands for its source's only probe, or for the
        first probe of a pair, keep the probe as a tuple, so the detector never holds retired
        flows (flow table listener)."""
        solo = self._solo
        src = flow.src_ip
        if solo.get(src) is flow:
            solo[src] = _from_flow(flow)
            return  # (a source's only probe has no pair records)
        seen_v, seen_h = self._seen_v, self._seen_h
        if seen_v:
            key: Any = (src, flow.dst_ip)
            if seen_v.get(key) is flow:
                seen_v[key] = _v_seen(flow)  # (same key: its place in the eviction order stays)
        if seen_h:
            proto = flow.proto
            key = (src, proto, flow.dst_port) if proto == PROTO_TCP or proto == PROTO_UDP \
                else (src, PROTO_ICMP, 8)
            if seen_h.get(key) is flow:
                seen_h[key] = _h_seen(flow)

    def _track(self, table: dict[Any, _Probes], seen: dict[Any, _Seen], key: Any, ts: float,
               target: Any, kind: int, flow: Flow | None,
               from_flow: Callable[[Flow], tuple[float, Any, int]]) -> _Probes | None:
        """Record one probe; returns the entry when it has reached its next report size.

        A (source, target-set) pair starts as a light ``(ts, target, kind)`` tuple in ``seen``
        (or as ``flow``, the flow the probe opened, which ``from_flow`` reads back as that
        tuple) and becomes a full entry only at its second distinct target: almost every
        client reaches a single port of a host, and this keeps those out of the bounded
        tables. (An answer to that first target is not remembered, so a count may be one too
        high.)
        """
        entry = table.get(key)
        if entry is not None:
            if ts - entry.last <= self.idle_timeout:
                entry.last = ts
                entry.kinds |= kind
                if not entry.add(target):
                    return None
                if len(entry.probed) >= entry.next_report or (
                        entry.reported and ts - entry.reported >= _REFRESH):
                    return entry
                return None
            del table[key]  # idle for too long: start over
        first = seen.get(key)
        if first is not None:
            if type(first) is not tuple:
                first = from_flow(first)
            if ts - first[0] > self.idle_timeout:
                first = None
        if first is None and self.threshold > 1:
            seen[key] = flow or (ts, target, kind)
            if len(seen) > 4 * self.max_entries:
                evict_oldest(seen, 4 * self.max_entries)
            return None
        entry = _Probes(ts, self.threshold, "" if type(target) is int else ())
        if first is not None:
            if first[1] == target:
                return None
            del seen[key]
            entry.first = first[0]
            entry.kinds = first[2]
            entry.add(first[1])
        entry.last = ts
        entry.kinds |= kind
        entry.add(target)
        table[key] = entry
        if len(table) > self.max_entries:
            evict_oldest(table, self.max_entries)
        return entry if len(entry.probed) >= entry.next_report else None

    def _answered(self, scanner: str, target: str, proto: int, port: int) -> None:
        entry = self._vertical.get((scanner, target))
        if entry is not None:
            entry.answer(port if proto == PROTO_TCP else port | _UDP_BIT)
        hentry = self._horizontal.get((scanner, proto, port))
        if hentry is not None:
            hentry.answer(target)

    def _check(self, entry: _Probes, rule: str, src: str, dst: str, ts: float) -> None:
        n = entry.unanswered()
        if n < self.threshold:
            return
        if entry.kinds == K_UDP and rule == "port_scan" and entry.unreach == 0:
            return  # UDP only counts once the target itself says ports are closed
        span = entry.last - entry.first
        rate = n / span if span > 0 else float(n)
        if rate <= self.scan_rate:
            return
        # Report again when the count doubles, or after _REFRESH seconds of new targets, so
        # the alert's evidence follows a long scan without an engine call per probe.
        entry.next_report = len(entry.probed) * 2
        entry.reported = ts
        kinds = kind_names(entry.kinds)
        if rule == "port_scan":
            message = (f"{src} scanned {n} ports on {dst} ({kinds} probes, "
                       f"{rate:.1f} ports/s)")
            evidence = {"ports": n, "answered": len(entry.answered or ()), "rate": round(rate, 2),
                        "kinds": kinds, "icmp_unreachable": entry.unreach}
        else:
            message = f"{src} swept {n} hosts on {dst} ({kinds} probes, {rate:.1f} hosts/s)"
            evidence = {"hosts": n, "answered": len(entry.answered or ()), "rate": round(rate, 2),
                        "kinds": kinds}
        self.engine.raise_alert(rule, "high" if rule == "port_scan" else "medium", src, dst,
                                message, evidence, ts=ts)

    def stats(self) -> dict[str, int]:
        return {"probes": self.probes_seen, "vertical_entries": len(self._vertical),
                "horizontal_entries": len(self._horizontal),
                "single_target_pairs": len(self._seen_v) + len(self._seen_h) + len(self._solo)}


def _v_seen(flow: Flow) -> tuple[float, int, int]:
    """The (ts, port target, kind) of _seen_v a TCP or UDP flow's first packet was."""
    proto, _, _, _, dport = flow.key  # (one read: the endpoints are properties over it)
    if proto == PROTO_TCP:
        return flow.first_seen, dport, K_SYN
    return flow.first_seen, dport | _UDP_BIT, K_UDP


def _h_seen(flow: Flow) -> tuple[float, str, int]:
    """The (ts, host, kind) of _seen_h a flow's first packet was."""
    proto, _, _, dst, _ = flow.key
    return flow.first_seen, dst, _FLOW_KIND[proto]


def _from_flow(flow: Flow) -> tuple[float, str, int, int, int]:
    """The probe a flow's first packet was (see PortScanDetector._solo_probe)."""
    proto, _, _, dst, dport = flow.key
    if proto == PROTO_TCP or proto == PROTO_UDP:
        return flow.first_seen, dst, proto, dport, _FLOW_KIND[proto]
    return flow.first_seen, dst, PROTO_ICMP, 8, K_ICMP


def _is_group(ip: str) -> bool:
    """Multicast or broadcast destinations: discovery traffic, never a scan target."""
    if ":" in ip:
        return ip[:2].lower() == "ff"
    if ip.endswith(".255"):
        return True
    first = ip[:ip.find(".")]
    return first.isdigit() and 224 <= int(first) <= 239
