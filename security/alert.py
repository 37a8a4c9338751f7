"""The alert record every detection produces and every destination delivers."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: severities, lowest first; the index is the rank used for sorting and filtering
SEVERITIES: tuple[str, ...] = ("info", "low", "medium", "high", "critical")
SEVERITY_RANK: dict[str, int] = {name: i for i, name in enumerate(SEVERITIES)}


@dataclass(slots=True)
class Alert:
    """One security finding.

    ``message`` is readable text built from addresses and counters only: detectors never put
    payload bytes (passwords, query contents) into it. ``evidence`` holds the counters that
    justified the alert; ``count`` is how many times the same (rule, source) fired inside the
    deduplication window (1 for a fresh alert).
    """

    ts: float
    severity: str
    rule_id: str
    src: str
    dst: str
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)
    count: int = 1
    #: engine-assigned sequence number, unique within a session
    id: int = 0
    #: time of the newest repeat folded into this alert
    last_ts: float = 0.0
    acknowledged: bool = False

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy (the evidence dict is copied, not shared)."""
        return {
            "id": self.id, "ts": self.ts, "last_ts": self.last_ts or self.ts,
            "severity": self.severity, "rule_id": self.rule_id, "src": self.src,
            "dst": self.dst, "message": self.message, "evidence": dict(self.evidence),
            "count": self.count, "acknowledged": self.acknowledged,
        }
