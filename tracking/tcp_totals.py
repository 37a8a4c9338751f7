"""TCP totals across connections: analysis counters, handshake RTT distribution, final states.

The flow tracker folds a connection in with :meth:`TcpTotals.add` when it retires the flow
(closed, expired or evicted); for a snapshot or the export it calls :meth:`TcpTotals.merged`
with the connections still live, which leaves the running totals untouched.
"""
from __future__ import annotations

from bisect import bisect_left
from typing import Iterable

from tracking.tcp_state import COUNTERS, STATES, TcpConnection

#: upper bounds (ms, inclusive) of the handshake RTT histogram buckets; the last bucket is open
RTT_BUCKETS_MS: tuple[float, ...] = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)


def _bucket_labels(bounds: tuple[float, ...]) -> tuple[str, ...]:
    return tuple(f"le_{b:g}ms" for b in bounds) + (f"gt_{bounds[-1]:g}ms",)


class TcpTotals:
    """Sums of :class:`TcpConnection` counters, an RTT histogram and counts per final state."""

    __slots__ = ("connections", "packets", "counters", "states", "rtt_bounds", "rtt_labels",
                 "rtt_hist", "rtt_count", "rtt_sum", "rtt_min", "rtt_max")

    def __init__(self, rtt_bounds_ms: tuple[float, ...] = RTT_BUCKETS_MS) -> None:
        self.connections = 0
        self.packets = 0
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.states: dict[str, int] = dict.fromkeys(STATES, 0)
        self.rtt_bounds = tuple(float(b) for b in rtt_bounds_ms)
        self.rtt_labels = _bucket_labels(self.rtt_bounds)
        self.rtt_hist = [0] * (len(self.rtt_bounds) + 1)
        self.rtt_count = 0
        self.rtt_sum = 0.0
        self.rtt_min: float | None = None
        self.rtt_max: float | None = None

    def add(self, conn: TcpConnection) -> None:
        """Fold one connection in (call once per connection, when its flow is retired)."""
        self.connections += 1
        self.packets += conn.packets
        counts = conn.counts
        if counts is not None:  # most connections had no event: 12 reads of 0 saved
            counters = self.counters
            for name in COUNTERS:
                counters[name] += getattr(counts, name)
        self.states[conn.state] = self.states.get(conn.state, 0) + 1
        rtt = conn.handshake_rtt
        if rtt is not None:
            ms = rtt * 1000.0
            self.rtt_hist[bisect_left(self.rtt_bounds, ms)] += 1
            self.rtt_count += 1
            self.rtt_sum += ms
            if self.rtt_min is None or ms < self.rtt_min:
                self.rtt_min = ms
            if self.rtt_max is None or ms > self.rtt_max:
                self.rtt_max = ms

    def copy(self) -> "TcpTotals":
        other = TcpTotals.__new__(TcpTotals)
        other.connections = self.connections
        other.packets = self.packets
        other.counters = dict(self.counters)
        other.states = dict(self.states)
        other.rtt_bounds = self.rtt_bounds
        other.rtt_labels = self.rtt_labels
        other.rtt_hist = list(self.rtt_hist)
        other.rtt_count = self.rtt_count
        other.rtt_sum = self.rtt_sum
        other.rtt_min = self.rtt_min
        other.rtt_max = self.rtt_max
        return other

    def merged(self, live: Iterable[TcpConnection]) -> "TcpTotals":
        """A copy that also counts ``live`` connections (for snapshots and the export)."""
        other = self.copy()
        for conn in live:
            other.add(conn)
        return other

    def as_dict(self) -> dict[str, object]:
        """The export's ``tcp`` section."""
        n = self.rtt_count
        return {
            "connections": self.connections,
            "packets": self.packets,
            **self.counters,
            "states": {k: v for k, v in self.states.items() if v},
            "handshake_rtt_ms": {
                "count": n,
                "min": None if self.rtt_min is None else round(self.rtt_min, 3),
                "mean": round(self.rtt_sum / n, 3) if n else None,
                "max": None if self.rtt_max is None else round(self.rtt_max, 3),
                "buckets": dict(zip(self.rtt_labels, self.rtt_hist)),
            },
        }
