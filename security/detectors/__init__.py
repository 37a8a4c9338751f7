"""Per-packet detections. Each module holds one detector with its own bounded state.

A detector is any object with ``process(pkt: ParsedPacket) -> None`` that reports through an
:class:`security.alerts.AlertEngine`. The built-in ones also have narrow entry points (one
kind of packet each: ``PortScanDetector.tcp_probe``, ``SynFloodDetector.syn``, ...) that
:class:`security.monitor.SecurityMonitor` calls from its flow stage only for the packets that
can matter; ``process`` stays the complete per-packet path.
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
