"""Route memory: the distinct routes seen to each destination, and the changes between them.

A route is the tuple of hop addresses in TTL order (None for a hop that never answered). A
round where a hop stayed silent keeps that hop's address from the current route: a lost probe
is loss, not a new route. A round whose route differs from the current one is a change.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Sequence

from tracking.path_stats import RouteChange, RouteRecord

Route = tuple[str | None, ...]


def changed_hops(old: Sequence[str | None], new: Sequence[str | None]) -> tuple[int, ...]:
    """TTLs (1-based) where the two routes name different addresses."""
    n = max(len(old), len(new))
    return tuple(i + 1 for i in range(n)
                 if (old[i] if i < len(old) else None) != (new[i] if i < len(new) else None))


def merge_round(current: Route | None, observed: Sequence[str | None]) -> Route:
    """This round's route, with silent hops filled from ``current`` (same length only)."""
    if not current:
        return tuple(observed)
    return tuple(a if a is not None else (current[i] if i < len(current) else None)
                 for i, a in enumerate(observed))


@dataclass(slots=True)
class _Pattern:
    hops: Route
    first_seen: float
    last_seen: float
    times_seen: int


class RouteMemory:
    """Routes and changes for one destination (bounded history)."""

    def __init__(self, target: str, max_patterns: int = 32, max_changes: int = 64) -> None:
        self.target = target
        self.max_patterns = max_patterns
        self.current: Route | None = None
        self._patterns: dict[Route, _Pattern] = {}
        self.changes: deque[RouteChange] = deque(maxlen=max_changes)
        self._complete_seen = False

    def seed(self, patterns: Sequence[RouteRecord], changes: Sequence[RouteChange] = ()) -> None:
        """Start from stored history (newest pattern = the current route)."""
        for r in sorted(patterns, key=lambda p: p.last_seen):
            self._patterns[tuple(r.hops)] = _Pattern(tuple(r.hops), r.first_seen, r.last_seen,
                                                     r.times_seen)
            self.current = tuple(r.hops)
            self._complete_seen = True
        for c in sorted(changes, key=lambda c: c.ts):
            self.changes.append(c)

    def observe(self, observed: Sequence[str | None], ts: float,
                complete: bool = True) -> tuple[Route | None, RouteChange | None]:
        """Count one round's route: (the route counted or None, the change if it is one).

        ``complete`` says the round reached the destination. Once a complete route is known,
        incomplete rounds (the destination or the hops before it silent) are loss, not routes,
        and so is an incomplete round shorter than the current route.
        """
        if not complete and (self._complete_seen or (
                self.current is not None and len(observed) < len(self.current))):
            return None, None
        if complete:
            self._complete_seen = True
        route = merge_round(self.current, observed)
        p = self._patterns.get(route)
        if p is None:
            self._patterns[route] = _Pattern(route, ts, ts, 1)
            if len(self._patterns) > self.max_patterns:
                oldest = min(self._patterns.values(), key=lambda x: x.last_seen)
                del self._patterns[oldest.hops]
        else:
            p.last_seen = ts
            p.times_seen += 1
        old = self.current
        self.current = route
        if old is None or old == route:
            return route, None
        change = RouteChange(self.target, ts, old, route, changed_hops(old, route))
        self.changes.append(change)
        return route, change

    def records(self) -> tuple[RouteRecord, ...]:
        """Distinct routes, most recently seen first."""
        return tuple(RouteRecord(p.hops, p.first_seen, p.last_seen, p.times_seen)
                     for p in sorted(self._patterns.values(), key=lambda x: -x.last_seen))
