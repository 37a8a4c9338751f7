"""Per-packet detections. Each module holds one detector with its own bounded state.

A detector is any object with ``process(pkt: ParsedPacket) -> None`` that reports through an
:class:`security.alerts.AlertEngine`; :class:`security.monitor.SecurityMonitor` routes packets
to them.
"""
from security.detectors.arpspoof import ArpSpoofDetector
from security.detectors.cleartext import CleartextCredentialDetector
from security.detectors.dns import DnsDetector
from security.detectors.newtalker import NewTalkerDetector
from security.detectors.portscan import PortScanDetector
from security.detectors.reputation import ReputationDetector
from security.detectors.synflood import SynFloodDetector

__all__ = ["ArpSpoofDetector", "CleartextCredentialDetector", "DnsDetector", "NewTalkerDetector",
           "PortScanDetector", "ReputationDetector", "SynFloodDetector"]
