"""Per-hop statistics as mtr shows them, and the frozen records of a path snapshot."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from tracking.path_probe import UNREACH


class HopStats:
    """Probes sent to one TTL of one destination and what came back (mtr's columns).

    ``sent`` counts probes whose fate is known (answered or timed out), so a probe still in
    flight is never shown as lost. RTT mean and deviation use Welford's running update.
    """

    __slots__ = ("ttl", "sent", "received", "last", "best", "worst", "_mean", "_m2",
                 "addresses", "kinds")

    def __init__(self, ttl: int) -> None:
        self.ttl = ttl
        self.sent = 0
        self.received = 0
        self.last: float | None = None
        self.best: float | None = None
        self.worst: float | None = None
        self._mean = 0.0
        self._m2 = 0.0
        #: responding address -> replies (ECMP or a changed route shows several)
        self.addresses: dict[str, int] = {}
        #: reply kinds seen (path_probe.HOP / DEST / UNREACH)
        self.kinds: set[int] = set()

    def lost(self) -> None:
        self.sent += 1

    def answered(self, addr: str, rtt_ms: float, kind: int) -> None:
        self.sent += 1
        self.received += 1
        n = self.received
        self.last = rtt_ms
        if self.best is None or rtt_ms < self.best:
            self.best = rtt_ms
        if self.worst is None or rtt_ms > self.worst:
            self.worst = rtt_ms
        d = rtt_ms - self._mean
        self._mean += d / n
        self._m2 += d * (rtt_ms - self._mean)
        self.addresses[addr] = self.addresses.get(addr, 0) + 1
        self.kinds.add(kind)

    @property
    def loss_pct(self) -> float:
        return 100.0 * (self.sent - self.received) / self.sent if self.sent else 0.0

    @property
    def avg(self) -> float | None:
        return self._mean if self.received else None

    @property
    def stddev(self) -> float | None:
        # population deviation, as mtr prints it
        return math.sqrt(self._m2 / self.received) if self.received else None

    def freeze(self, is_destination: bool) -> "HopRow":
        addrs = tuple(a for a, _ in sorted(self.addresses.items(), key=lambda kv: -kv[1]))
        return HopRow(self.ttl, addrs, self.sent, self.received, round(self.loss_pct, 1),
                      self.last, self.best, self.avg, self.worst, self.stddev, is_destination,
                      UNREACH in self.kinds)


@dataclass(frozen=True, slots=True)
class HopRow:
    """One line of the hop table. RTTs in milliseconds; None where nothing answered."""

    ttl: int
    #: responding addresses, most frequent first; empty for a silent hop ("*")
    addresses: tuple[str, ...]
    sent: int
    received: int
    loss_pct: float
    last_ms: float | None
    best_ms: float | None
    avg_ms: float | None
    worst_ms: float | None
    stddev_ms: float | None
    is_destination: bool
    #: a router answered "unreachable" here (traceroute's !N/!H/!X)
    unreachable: bool = False

    @property
    def address(self) -> str | None:
        return self.addresses[0] if self.addresses else None

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["addresses"] = list(self.addresses)
        return d


@dataclass(frozen=True, slots=True)
class RouteRecord:
    """One distinct route (the hop addresses in TTL order, None for a silent hop)."""

    hops: tuple[str | None, ...]
    first_seen: float
    last_seen: float
    times_seen: int

    def as_dict(self) -> dict[str, Any]:
        return {"hops": list(self.hops), "first_seen": self.first_seen,
                "last_seen": self.last_seen, "times_seen": self.times_seen}


@dataclass(frozen=True, slots=True)
class RouteChange:
    """The route to ``target`` changed from ``old`` to ``new`` at ``ts`` (wall clock)."""

    target: str
    ts: float
    old: tuple[str | None, ...]
    new: tuple[str | None, ...]
    #: hop numbers (TTL) whose address differs
    changed_hops: tuple[int, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"target": self.target, "ts": self.ts, "old": list(self.old), "new": list(self.new),
                "changed_hops": list(self.changed_hops)}


@dataclass(frozen=True, slots=True)
class DestinationPath:
    """Everything known about the path to one destination."""

    target: str
    #: what the user asked for (a host name or the address itself)
    name: str
    family: int            # 4 or 6
    method: str
    port: int | None
    #: "starting", "running", "done", "stopped" or "error"
    state: str
    error: str
    rounds: int
    reached: bool
    #: hop number of the destination (or of the last hop that answered when not reached)
    hop_count: int
    hops: tuple[HopRow, ...]
    route: tuple[str | None, ...]
    routes: tuple[RouteRecord, ...] = ()
    changes: tuple[RouteChange, ...] = ()
    started: float = 0.0
    last_round: float = 0.0
    #: HopAnalyzer's passive estimate of the destination's hop number (TTL numbering), if any
    passive_hops: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target, "name": self.name, "family": self.family,
            "method": self.method, "port": self.port, "state": self.state, "error": self.error,
            "rounds": self.rounds, "reached": self.reached, "hop_count": self.hop_count,
            "hops": [h.as_dict() for h in self.hops], "route": list(self.route),
            "routes": [r.as_dict() for r in self.routes],
            "changes": [c.as_dict() for c in self.changes],
            "started": self.started, "last_round": self.last_round,
            "passive_hops": self.passive_hops,
        }


@dataclass(frozen=True, slots=True)
class PathsSnapshot:
    """The Paths view's data: one entry per traced destination, in the order requested."""

    destinations: tuple[DestinationPath, ...] = ()
    probes_sent: int = 0
    replies: int = 0
    unmatched: int = 0
    rate_limit_pps: float = 0.0
    errors: tuple[str, ...] = field(default_factory=tuple)

    def get(self, target: str) -> DestinationPath | None:
        for d in self.destinations:
            if d.target == target or d.name == target:
                return d
        return None

    def as_dict(self) -> dict[str, Any]:
        return {"destinations": [d.as_dict() for d in self.destinations],
                "probes_sent": self.probes_sent, "replies": self.replies,
                "unmatched": self.unmatched, "rate_limit_pps": self.rate_limit_pps,
                "errors": list(self.errors)}
