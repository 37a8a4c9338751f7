"""The security facade the pipeline calls: one ``process(pkt)`` for every detection, one
``snapshot()`` for the dashboard and exports.

Packets are routed by kind before any detector sees them (ARP to the ARP detector, IP to the
rest), and tunnelled inner packets are examined too, so a scan carried in VXLAN is still a scan.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

from config import (ALERTS_DEDUP_WINDOW, ALERTS_NEW_TALKER, ALERTS_PORT_SCAN_THRESHOLD,
                    ALERTS_SCAN_RATE, BLOCKLIST_DIR, REPUTATION_API_KEY, REPUTATION_API_URL)
from capture.packet import ParsedPacket
from security.alerts import AlertEngine
from security.destinations import QueuedDestination, build_destinations
from security.detectors import (ArpSpoofDetector, CleartextCredentialDetector, DnsDetector,
                                NewTalkerDetector, PortScanDetector, ReputationDetector,
                                SynFloodDetector)
from security.detectors.newtalker import Lookup
from security.graph import ConnectionGraph
from security.reputation import AbuseIPDBClient, BlockList, ReputationService
from utils.logger import get_logger

log = get_logger(__name__)


class SecurityMonitor:
    """Holds the alert engine, the enabled detectors and (optionally) the connection graph.

    Args:
        engine: the alert engine every detector reports to.
        detectors: objects with ``process(pkt)``; an ArpSpoofDetector among them gets only ARP;
            a detector with a ``protocols`` set gets only IP packets of those protocols.
        graph: a ConnectionGraph fed with every IP packet, or None.
        closables: things with ``close()`` to stop at the end (destinations, services).
    """

    def __init__(self, engine: AlertEngine, detectors: Iterable[Any] = (),
                 graph: ConnectionGraph | None = None, closables: Iterable[Any] = ()) -> None:
        self.engine = engine
        self.detectors = list(detectors)
        self.graph = graph
        self._closables = list(closables)
        self._arp: list[Callable[[ParsedPacket], None]] = []
        #: IP protocol -> the detectors that want it; _ip_other for protocols none names
        self._by_proto: dict[int, list[Callable[[ParsedPacket], None]]] = {}
        self._ip_other: list[Callable[[ParsedPacket], None]] = []
        wanted: set[int] = set()
        for d in self.detectors:
            wanted.update(getattr(d, "protocols", None) or ())
        for proto in wanted:
            self._by_proto[proto] = [
                d.process for d in self.detectors if not isinstance(d, ArpSpoofDetector)
                and (getattr(d, "protocols", None) is None or proto in d.protocols)]
        self._ip_other = [d.process for d in self.detectors
                          if not isinstance(d, ArpSpoofDetector)
                          and getattr(d, "protocols", None) is None]
        self._arp = [d.process for d in self.detectors if isinstance(d, ArpSpoofDetector)]
        if graph is not None:
            for fns in self._by_proto.values():
                fns.append(graph.process)
            self._ip_other.append(graph.process)
        self.packets = 0

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

    def process(self, pkt: ParsedPacket | None) -> None:
        """Run every enabled detection on one packet (and on its tunnelled inner packets)."""
        while pkt is not None:
            self.packets += 1
            if pkt.arp is not None:
                for fn in self._arp:
                    fn(pkt)
            elif pkt.ip_version:
                for fn in self._by_proto.get(pkt.proto, self._ip_other):
                    fn(pkt)
            pkt = pkt.inner

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
            "packets": self.packets,
        }
        if self.graph is not None:
            out["graph"] = self.graph.snapshot(top_edges)
        return out

    def close(self) -> None:
        for c in self._closables:
            c.close()
