"""Explainable anomaly scores for flows and hosts.

Each rule has a fixed weight and a human-readable reason; a flow's score is the sum of the
weights of the rules it tripped (each rule once), capped at 100, and the reasons are listed
with it so a user can see exactly why. A host's score sums the distinct rules tripped by flows
it initiated. The per-packet checks are table lookups and integer compares.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from capture.packet import ACK, FIN, PSH, RST, SYN, URG

MAX_SCORE = 100

#: rule id -> (weight, reason shown to the user)
RULES: dict[str, tuple[int, str]] = {
    "syn_fin": (40, "SYN and FIN set together (impossible in a real connection)"),
    "syn_rst": (35, "SYN and RST set together"),
    "fin_rst": (20, "FIN and RST set together"),
    "null_flags": (35, "TCP segment with no flags (NULL scan)"),
    "xmas": (40, "FIN+PSH+URG without ACK (Xmas scan)"),
    "fin_no_ack": (25, "FIN without ACK (FIN scan)"),
    "ttl_change": (20, "TTL changed mid-flow (possible injection or route change)"),
    "tiny_fragment": (30, "tiny IP fragment (can hide headers from filters)"),
    "port_mismatch": (25, "protocol does not match the port"),
    "beacon": (30, "beacon-like regular connection timing"),
    "port_zero": (20, "port 0 used"),
    "land": (40, "same source and destination address and port (LAND)"),
}

#: flags byte -> rule id of the impossible/suspicious combination it forms, or None
FLAG_RULES: tuple[str | None, ...] = tuple(
    "syn_fin" if f & SYN and f & FIN else
    "syn_rst" if f & SYN and f & RST else
    "xmas" if f & (FIN | PSH | URG) == FIN | PSH | URG and not f & ACK else
    "fin_rst" if f & FIN and f & RST else
    "null_flags" if f & 0x3F == 0 else
    "fin_no_ack" if f & (FIN | ACK) == FIN else None
    for f in range(256))

#: a TTL that moves by more than this within one direction is reported
TTL_TOLERANCE = 2
#: non-final fragments smaller than this many payload bytes are "tiny"
TINY_FRAGMENT = 256


def evict_oldest(table: dict[Any, Any], fraction: int = 8) -> None:
    """Drop the oldest 1/fraction of an insertion-ordered dict in one go.

    Popping one key at a time from the front of a dict re-scans the deleted slots each time
    (quadratic under churn); removing a batch keeps eviction amortised O(1).
    """
    for key in list(islice(table, max(1, len(table) // fraction))):
        del table[key]


def flag_rule(flags: int) -> str | None:
    """The rule a TCP flags byte breaks, if any."""
    return FLAG_RULES[flags & 0xFF]


def add_rule(score: int, rules: list[str], reasons: list[str], rule: str,
             detail: str = "") -> int | None:
    """Record a rule in a flow's ``rules``/``reasons`` lists; returns the new score, or None if
    the rule was already recorded (each rule counts once)."""
    if rule in rules:
        return None
    weight, text = RULES[rule]
    rules.append(rule)
    reasons.append(f"{text}: {detail}" if detail else text)
    return min(MAX_SCORE, score + weight)


@dataclass(slots=True)
class AnomalyScore:
    """Score plus reasons for one flow; each rule counts once."""

    score: int = 0
    rules: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)

    def add(self, rule: str, detail: str = "") -> bool:
        """Record a rule; returns False if it was already recorded."""
        score = add_rule(self.score, self.rules, self.reasons, rule, detail)
        if score is None:
            return False
        self.score = score
        return True


@dataclass(slots=True)
class HostAnomaly:
    score: int = 0
    #: rule id -> number of flows that tripped it
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def reasons(self) -> list[str]:
        return [f"{RULES[r][1]} ({n} flow{'s' if n != 1 else ''})" for r, n in self.counts.items()]


class HostAnomalies:
    """Per-host roll-up: the distinct rules a host's flows tripped, each counted once."""

    def __init__(self, max_hosts: int = 10000) -> None:
        self.max_hosts = max_hosts
        self._hosts: dict[str, HostAnomaly] = {}

    def add(self, host: str, rule: str) -> None:
        entry = self._hosts.get(host)
        if entry is None:
            if len(self._hosts) >= self.max_hosts:
                evict_oldest(self._hosts)
            entry = self._hosts[host] = HostAnomaly()
        n = entry.counts.get(rule, 0)
        entry.counts[rule] = n + 1
        if n == 0:
            entry.score = min(MAX_SCORE, entry.score + RULES[rule][0])

    def get(self, host: str) -> HostAnomaly | None:
        return self._hosts.get(host)

    def scores(self) -> dict[str, HostAnomaly]:
        return dict(self._hosts)


class BeaconDetector:
    """Finds hosts that open connections to the same service at a steady interval.

    Malware check-ins ("beacons") repeat on a timer; people and most software do not. For each
    (client, server, port, proto) the last ``window`` connection start times are kept; when at
    least ``min_events`` intervals of at least ``min_interval`` seconds vary by less than
    ``max_jitter`` (coefficient of variation), the series is called beacon-like.
    """

    def __init__(self, window: int = 8, min_events: int = 6, min_interval: float = 1.0,
                 max_jitter: float = 0.1, max_keys: int = 20000) -> None:
        self.window = window
        self.min_events = min_events
        self.min_interval = min_interval
        self.max_jitter = max_jitter
        self.max_keys = max_keys
        #: key -> the first start time alone (most keys never see a second connection, so
        #: they cost one float, not a deque), then the list of the last ``window + 1`` starts
        self._starts: dict[tuple[str, str, int, int], float | list[float]] = {}

    def observe(self, client: str, server: str, port: int, proto: int,
                ts: float) -> float | None:
        """Record one new connection; returns the period (s) when the series is beacon-like."""
        key = (client, server, port, proto)
        starts = self._starts
        times = starts.get(key)
        if times is None:
            if len(starts) >= self.max_keys:
                evict_oldest(starts)
            starts[key] = ts
            return None
        if not isinstance(times, list):
            times = starts[key] = [times, ts]
        else:
            times.append(ts)
            if len(times) > self.window + 1:
                del times[0]
        n = len(times)
        if n <= self.min_events:
            return None
        # Cheap pre-check: a steady series has its last two gaps nearly equal.
        last, prev = ts - times[n - 2], times[n - 2] - times[n - 3]
        if abs(last - prev) > 2 * self.max_jitter * max(prev, 1e-9):
            return None
        gaps = [b - a for a, b in zip(times, times[1:])]
        mean = sum(gaps) / len(gaps)
        if mean < self.min_interval:
            return None
        var = sum((g - mean) ** 2 for g in gaps) / len(gaps)
        if var ** 0.5 / mean > self.max_jitter:
            return None
        return mean
