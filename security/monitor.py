"""The security facade the pipeline calls, and one ``snapshot()`` for the dashboard and exports.

Wiring in a run (see runtime.build_components)::

    mon.attach(flows)                       # listeners on the flow table; the graph reads it
    other_stages.append(mon.process_other)  # every frame without IP, tunnelled ones too: ARP
    flow_stages.append(mon.flow_stage)      # every IP packet with its flow (inner ones too)

Each packet pays only for the detections that can care about it: the protocol and TCP flags
are read once and only the matching entry point of a detector is called, most packets of an
established connection touch no detector at all. UDP probes and answers are looked at only
on the first datagram of each direction of a flow (later ones repeat them), cleartext logins
only on login ports and in the first segments of other flows, DNS only on port 53, and the
connection graph is derived from the flows when read rather than counted per packet.

Without :meth:`SecurityMonitor.attach`, :meth:`SecurityMonitor.process` is complete on its
own: it keeps a private flow table and runs the same flow stage (tests, benchmarks, tools that
feed packets by hand).
"""
from __future__ import annotations

import time
from typing import Any, Callable, Iterable, Mapping

from config import (ALERTS_DEDUP_WINDOW, ALERTS_NEW_TALKER, ALERTS_PORT_SCAN_THRESHOLD,
                    ALERTS_SCAN_RATE, BLOCKLIST_DIR, REPUTATION_API_KEY, REPUTATION_API_URL)
from capture.packet import ACK, RST, SYN, ParsedPacket
from security.alerts import AlertEngine
from security.destinations import QueuedDestination, build_destinations
from security.detectors import (ArpSpoofDetector, CleartextCredentialDetector, DnsDetector,
                                NewTalkerDetector, PortScanDetector, ReputationDetector,
                                SynFloodDetector)
from security.detectors.cleartext import HTTP_METHODS, LOGIN_PORTS
from security.detectors.newtalker import Lookup
from security.graph import ConnectionGraph
from security.reputation import AbuseIPDBClient, BlockList, ReputationService
from tracking.flow import Flow, FlowTracker
from utils.logger import get_logger

log = get_logger(__name__)

#: client segments of a connection that may still complete its handshake (the SYN, up to two
#: retransmissions, the ACK; attempts older than that are dropped by the SYN-flood detector
#: anyway): its half-open bookkeeping only needs those
HANDSHAKE_SEGMENTS = 4
#: seconds a snapshot of the connection graph is reused by snapshot()
GRAPH_REFRESH = 2.0
#: the private flow table of a monitor used without attach() (tests, tools)
_OWN_MAX_FLOWS = 50000


def _own_tracker() -> FlowTracker:
    from tracking.tcp_state import TcpConnection
    return FlowTracker(max_flows=_OWN_MAX_FLOWS, tcp_factory=TcpConnection)


class SecurityMonitor:
    """Holds the alert engine, the enabled detectors and (optionally) the connection graph.

    Args:
        engine: the alert engine every detector reports to.
        detectors: the built-in detectors are driven through their narrow entry points; any
            other object with ``process(pkt)`` gets every IP packet (an ArpSpoofDetector: every
            ARP packet; with a ``protocols`` set, only IP packets of those protocols).
        graph: a ConnectionGraph, given the flows on :meth:`attach`, or None.
        closables: things with ``close()`` to stop at the end (destinations, services).
    """

    def __init__(self, engine: AlertEngine, detectors: Iterable[Any] = (),
                 graph: ConnectionGraph | None = None, closables: Iterable[Any] = ()) -> None:
        self.engine = engine
        self.detectors = list(detectors)
        self.graph = graph
        self._closables = list(closables)
        self._arp: list[Callable[[ParsedPacket], None]] = []
        self._scan: PortScanDetector | None = None
        self._syn: SynFloodDetector | None = None
        self._dns: DnsDetector | None = None
        self._clear: CleartextCredentialDetector | None = None
        generic: list[Any] = []
        for d in self.detectors:
            # Exact types: a subclass may override process(), so it is driven like any other.
            kind = type(d)
            if isinstance(d, ArpSpoofDetector):
                self._arp.append(d.process)
            elif kind is PortScanDetector and self._scan is None:
                self._scan = d
            elif kind is SynFloodDetector and self._syn is None:
                self._syn = d
            elif kind is DnsDetector and self._dns is None:
                self._dns = d
            elif kind is CleartextCredentialDetector and self._clear is None:
                self._clear = d
            else:
                generic.append(d)
        #: IP protocol -> the other detectors that want it; _ip_other for protocols none names
        self._by_proto: dict[int, list[Callable[[ParsedPacket], None]]] = {}
        wanted: set[int] = set()
        for d in generic:
            wanted.update(getattr(d, "protocols", None) or ())
        for proto in wanted:
            self._by_proto[proto] = [
                d.process for d in generic
                if getattr(d, "protocols", None) is None or proto in d.protocols]
        self._ip_other = [d.process for d in generic if getattr(d, "protocols", None) is None]
        self._generic = bool(generic)
        #: packets given to :meth:`process` (outer and tunnelled)
        self.packets = 0
        self._graph_snap: tuple[float, int, dict[str, Any]] | None = None
        #: the flow stage: ``flow_stage(pkt, flow, forward)`` for every IP packet with its flow
        #: and direction (True: sent by the flow's initiator); it reads the protocol and flags
        #: once and calls only the detector entry points that can care
        self.flow_stage: Callable[[ParsedPacket, Flow, bool], None] = self._make_flow_stage()
        #: the flow table this monitor listens to: its own until attach() names the run's
        self._tracker: FlowTracker | None = None
        self._own: FlowTracker | None = _own_tracker()
        self._listen(self._own)

    # ---- wiring ------------------------------------------------------------------------------
    def attach(self, flows: FlowTracker) -> None:
        """Use the run's flow table: its pipeline calls :meth:`flow_stage` for every IP packet
        (so :meth:`process` is left with ARP), and the graph reads its flows."""
        if self._tracker is not None:
            self._unlisten(self._tracker)
        self._own = None
        self._listen(flows)

    def _listen(self, tracker: FlowTracker) -> None:
        self._tracker = tracker
        if self.graph is not None:
            self.graph.attach(tracker)
        if self._scan is not None:
            # its first-probe records may be flows: they become tuples as the flows retire
            tracker.listeners.append(self._scan.on_retire)

    def _unlisten(self, tracker: FlowTracker) -> None:
        if self.graph is not None:
            self.graph.detach(tracker)
        if self._scan is not None and self._scan.on_retire in tracker.listeners:
            tracker.listeners.remove(self._scan.on_retire)

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any] | Any, lookup: Lookup | None = None,
                      destinations: Iterable[QueuedDestination] | None = None,
                      with_graph: bool = True) -> "SecurityMonitor":
        """Build the default set of detectors from configuration values.

        ``settings`` is a config.Settings or any mapping with ``get``. Destinations are built
        from the ALERT_* values unless given.
        """
        get = settings.get
        dests = list(build_destinations(settings) if destinations is None else destinations)
        engine = AlertEngine(dedup_window=get("ALERTS_DEDUP_WINDOW", ALERTS_DEDUP_WINDOW),
                             destinations=dests)
        detectors: list[Any] = [
            PortScanDetector(engine, threshold=get("ALERTS_PORT_SCAN_THRESHOLD",
                                                   ALERTS_PORT_SCAN_THRESHOLD),
                             scan_rate=get("ALERTS_SCAN_RATE", ALERTS_SCAN_RATE)),
            SynFloodDetector(engine),
            ArpSpoofDetector(engine),
            DnsDetector(engine),
            CleartextCredentialDetector(engine),
        ]
        closables: list[Any] = list(dests)
        blocklist = None
        folder = get("BLOCKLIST_DIR", BLOCKLIST_DIR)
        if folder:
            blocklist = BlockList()
            try:
                blocklist.load_dir(folder)
            except OSError as exc:
                log.warning("blocklist folder %s unusable: %s", folder, exc.strerror)
                blocklist = None
        online = None
        key = get("REPUTATION_API_KEY", REPUTATION_API_KEY)
        if key:
            online = ReputationService(AbuseIPDBClient(
                key, url=get("REPUTATION_API_URL", REPUTATION_API_URL)))
            closables.append(online)
        if blocklist is not None or online is not None:
            detectors.append(ReputationDetector(engine, blocklist=blocklist, online=online))
        if get("ALERTS_NEW_TALKER", ALERTS_NEW_TALKER) and lookup is not None:
            detectors.append(NewTalkerDetector(engine, lookup))
        return cls(engine, detectors, ConnectionGraph() if with_graph else None, closables)

    # ---- hot path ----------------------------------------------------------------------------
    def process(self, pkt: ParsedPacket | None) -> None:
        """The packet stage: ARP (outer and tunnelled). Without :meth:`attach`, also every IP
        packet through the monitor's own flow table and :meth:`flow_stage`."""
        own = self._own
        while pkt is not None:
            self.packets += 1
            if pkt.arp is not None:
                self.process_other(pkt)
            elif own is not None and pkt.ip_version:
                hit = own.process(pkt)
                if hit is not None:
                    self.flow_stage(pkt, hit[0], hit[1])
                own.maybe_expire(pkt.ts)
            pkt = pkt.inner

    def process_other(self, pkt: ParsedPacket) -> None:
        """The pipeline's stage for packets without a flow (once attached): of those, only ARP
        needs a look. The pipeline hands tunnelled packets over one by one."""
        if pkt.arp is not None:
            for fn in self._arp:
                fn(pkt)

    def _make_flow_stage(self) -> Callable[[ParsedPacket, Flow, bool], None]:
        """Build :attr:`flow_stage` as a closure: the detectors' entry points are bound once
        and read as locals (this runs for every IP packet)."""
        scan, syn, dns, clear = self._scan, self._syn, self._dns, self._clear
        # An absent detector's entry point is a no-op, so the dispatch has no None checks.
        def _nothing(*_args: Any) -> None:
            return None
        tcp_open = scan.tcp_open if scan is not None else _nothing
        tcp_probe = scan.tcp_probe if scan is not None else _nothing
        udp_probe = scan.udp if scan is not None else _nothing
        icmp = scan.icmp if scan is not None else _nothing
        syn_seen = syn.syn if syn is not None else _nothing
        client_ack = syn.client_ack if syn is not None else _nothing
        dns_message = dns.process if dns is not None else _nothing
        login_port = clear.login_port if clear is not None else _nothing
        http_request = clear.http_request if clear is not None else _nothing
        login_ports = LOGIN_PORTS if clear is not None else frozenset()
        http_methods = HTTP_METHODS if clear is not None else frozenset()
        # the methods' first bytes: most payloads fail on one byte read, no slice made
        http_first = frozenset(m[0] for m in http_methods)
        by_proto = self._by_proto
        ip_other = self._ip_other
        generic = self._generic

        def flow_stage(pkt: ParsedPacket, flow: Flow, forward: bool) -> None:
            proto = pkt.proto
            if proto == 6:  # TCP
                flags = pkt.tcp_flags
                if flags & ACK:
                    if flags & SYN:  # SYN/ACK: answers a probe
                        tcp_open(pkt)
                    elif forward and flow.packets_sent <= HANDSHAKE_SEGMENTS:
                        # may complete a half-open attempt; a later ACK finds none to end (a
                        # dict lookup, for at most four segments a flow: cheaper than a "done"
                        # flag slot on every flow)
                        client_ack(pkt)
                else:  # no ACK: a SYN, a client's RST, or a stealth probe
                    if flags & SYN:
                        syn_seen(pkt)
                    elif flags & RST:
                        client_ack(pkt)
                    tcp_probe(pkt, flags, flow if forward and flow.packets_sent == 1
                              and not flow.packets_recv else None)
                if pkt.payload_len >= 5:
                    sport = pkt.sport
                    dport = pkt.dport
                    if dport in login_ports or sport == 23:
                        login_port(pkt)
                    else:
                        off = pkt.payload_offset
                        data = pkt.data
                        if len(data) > off and data[off] in http_first and \
                                data[off:off + 4] in http_methods:
                            http_request(pkt)
                    if sport == 53 or dport == 53:
                        dns_message(pkt)
            elif proto == 17:  # UDP
                if pkt.sport == 53 or pkt.dport == 53:
                    dns_message(pkt)
                # Only the first datagram of each direction can probe a port or answer a probe.
                if forward:
                    if flow.packets_sent == 1:
                        udp_probe(pkt, None if flow.packets_recv else flow)
                elif flow.packets_recv == 1:
                    udp_probe(pkt, None)
            elif proto == 1 or proto == 58:  # ICMP, ICMPv6
                icmp(pkt, flow if forward and flow.packets_sent == 1 and not flow.packets_recv
                     else None)
            if generic:
                for fn in by_proto.get(proto, ip_other):
                    fn(pkt)

        flow_stage.__qualname__ = "SecurityMonitor.flow_stage"  # as benchmarks name stages
        return flow_stage

    def snapshot(self, max_alerts: int = 200, top_edges: int = 10) -> dict[str, Any]:
        """Plain data for the Alerts panel and exports: newest alerts first."""
        alerts = self.engine.alerts()
        out: dict[str, Any] = {
            "alerts": [a.to_dict() for a in reversed(alerts[-max_alerts:])],
            "total_alerts": len(alerts),
            "unacknowledged": sum(1 for a in alerts if not a.acknowledged),
            "counters": self.engine.counters(),
            "destinations": {getattr(d, "name", type(d).__name__): d.stats()
                             for d in self.engine.destinations if hasattr(d, "stats")},
        }
        if self.graph is not None:
            # The graph walks every flow: recompute it at most every GRAPH_REFRESH seconds
            # (the dashboard asks once per refresh) and reuse the last result in between.
            now = time.monotonic()
            cached = self._graph_snap
            if cached is None or now - cached[0] >= GRAPH_REFRESH or cached[1] != top_edges:
                cached = self._graph_snap = (now, top_edges, self.graph.snapshot(top_edges))
            out["graph"] = cached[2]
        return out

    def close(self) -> None:
        for c in self._closables:
            c.close()
