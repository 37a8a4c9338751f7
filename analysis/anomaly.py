"""Explainable anomaly scores for flows and hosts.

Each rule has a fixed weight and a human-readable reason; a flow's score is the sum of the
weights of the rules it tripped (each rule once), capped at 100, and the reasons are listed
with it so a user can see exactly why. A host's score sums the distinct rules tripped by flows
it initiated. The per-packet checks are table lookups and integer compares.
"""
from __future__ import annotations

from array import array
from dataclasses import dataclass, field
from itertools import islice
from sys import getsizeof
from typing import Any

from capture.packet import ACK, FIN, PROTO_TCP, PSH, RST, SYN, URG
from utils.bounded import drop_oldest_share

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


def steady_period(series: list[float], min_interval: float, max_jitter: float) -> float | None:
    """The mean gap of a series of start times when it is beacon-like: the gaps average at
    least ``min_interval`` and their standard deviation is within ``max_jitter`` of the mean."""
    gaps = [b - a for a, b in zip(series, series[1:])]
    mean = sum(gaps) / len(gaps)
    if mean < min_interval:
        return None
    var = sum((g - mean) ** 2 for g in gaps) / len(gaps)
    if var ** 0.5 / mean > max_jitter:
        return None
    return mean


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
                drop_oldest_share(self._hosts)
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

    The starts are kept per host pair, not per service: a client reaches a few services of
    each server, and a key and a list per service cost ~150 bytes where a start costs 8. A
    service seen once, while its pair has no log, is one float under its own key (most pairs,
    alone on their hosts, never see a second connection); a pair's second start of any one
    service gives the pair a log: its starts in order (an ``array('d')``) and a string naming
    each one's service with one character (the port; UDP ports on the next plane), which
    ``str.count``/``rfind`` search in C. The pair's later services go straight to its log.
    Periods are computed from the same floats in the same order as with one list per service.
    """

    def __init__(self, window: int = 8, min_events: int = 6, min_interval: float = 1.0,
                 max_jitter: float = 0.1, max_keys: int = 20000) -> None:
        self.window = window
        self.min_events = min_events
        self.min_interval = min_interval
        self.max_jitter = max_jitter
        #: most services (series) seen once, and most in the pairs' logs; past either the
        #: oldest eighth of that table is dropped
        self.max_keys = max_keys
        #: (client, server, port, proto) -> the start of a service seen once, its pair logless
        self._once: dict[tuple[str, str, int, int], float] = {}
        #: (client, server) -> [tags, starts]: the pair's logged starts (up to ``window + 1``
        #: per service), oldest first, and one character per start naming its service
        self._logs: dict[tuple[str, str], list[Any]] = {}
        #: clients with a log (or that had one): most connections skip the pair lookup
        self._log_clients: set[str] = set()
        #: services held in the logs (those in _once are len(_once))
        self._logged = 0

    def services(self) -> int:
        """Number of (client, server, port, proto) series held."""
        return len(self._once) + self._logged

    def observe(self, client: str, server: str, port: int, proto: int,
                ts: float) -> float | None:
        """Record one new connection (``proto``: TCP or UDP); returns the period (s) when the
        series is beacon-like."""
        log = self._logs.get((client, server)) if client in self._log_clients else None
        if log is None:
            key = (client, server, port, proto)
            once = self._once
            first = once.pop(key, None)
            if first is None:
                if len(once) >= self.max_keys:
                    drop_oldest_share(once)
                once[key] = ts
                return None
            # A second start: the pair gets a log.
            self._shrink_once()
            # a service's tag: its port, UDP on the next plane (one character either way)
            tag = chr(port) if proto == PROTO_TCP else chr(port | 0x10000)
            tags = tag + tag
            times = array("d", (first, ts))
            self._logs[(client, server)] = [tags, times]
            self._log_clients.add(client)
            self._logged += 1
            if self._logged > self.max_keys:
                self._evict_logs()
            n = 2
        else:
            tags, times = log
            tag = chr(port) if proto == PROTO_TCP else chr(port | 0x10000)
            if tag in tags:  # (``in`` is cheaper than a count that finds nothing)
                n = tags.count(tag)
            else:
                # a service new to the log; it may have started once before the log existed
                first = self._once.pop((client, server, port, proto), None) \
                    if self._once else None
                if first is None:
                    n = 0
                    self._logged += 1
                    if self._logged > self.max_keys:
                        self._evict_logs()
                else:
                    self._shrink_once()
                    tags += tag
                    times.append(first)
                    n = 1
            tags += tag
            times.append(ts)
            n += 1
            if n > self.window + 1:  # keep the last window + 1 starts of the service
                i = tags.find(tag)
                tags = tags[:i] + tags[i + 1:]
                del times[i]
                n -= 1
            log[0] = tags
            if len(tags) > _MAX_LOG:
                self._trim(log)
                tags = log[0]
                n = tags.count(tag)
        if n <= self.min_events:
            return None
        # Cheap pre-check: a steady series has its last two gaps nearly equal.
        j = tags.rfind(tag, 0, len(tags) - 1)
        prev_ts = times[j]
        last, prev = ts - prev_ts, prev_ts - times[tags.rfind(tag, 0, j)]
        if abs(last - prev) > 2 * self.max_jitter * max(prev, 1e-9):
            return None
        return steady_period([t for c, t in zip(tags, times) if c == tag], self.min_interval,
                             self.max_jitter)

    def _shrink_once(self) -> None:
        """_once empties as pairs get logs, and a dict never shrinks: copy it when its table
        is over twice what its entries need (~40 bytes each; called after a pop from it)."""
        once = self._once
        if getsizeof(once) > 96 * len(once) + 4096:
            self._once = dict(once)

    def _trim(self, log: list[Any]) -> None:
        """Drop the oldest eighth of a long log (a pair touching hundreds of services, as a
        scan does): the searches stay short, and services left without a start are gone."""
        tags, times = log
        cut = len(tags) // 8
        self._logged -= len(set(tags[:cut]).difference(tags[cut:]))
        log[0] = tags[cut:]
        del times[:cut]

    def _evict_logs(self) -> None:
        """Drop the oldest eighth of the pairs' logs."""
        logs = self._logs
        for pair in list(islice(logs, len(logs) // 8 or (1 if logs else 0))):
            self._logged -= len(set(logs.pop(pair)[0]))
        self._log_clients = {client for client, _ in logs}


#: starts a pair's log keeps (the oldest eighth goes past it)
_MAX_LOG = 2048
