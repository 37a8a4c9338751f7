"""The alert engine: deduplicates, rate-limits, keeps and fans out alerts.

Detectors call :meth:`AlertEngine.raise_alert` from the pipeline thread; the dashboard and
exporters read :meth:`AlertEngine.alerts` from theirs, so state is guarded by one lock. A
repeat of the same (rule, source) inside ``dedup_window`` seconds is folded into the existing
alert (its ``count`` and evidence grow) instead of producing a new one, which is what stops a
2000-probe scan from becoming 2000 alerts.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any, Callable, Iterable, Mapping, Protocol

from config import ALERTS_DEDUP_WINDOW
from security.alert import SEVERITY_RANK, Alert
from utils.logger import get_logger

log = get_logger(__name__)

Listener = Callable[[Alert], None]


class Destination(Protocol):
    """Anything that accepts alerts without blocking (see security/destinations.py)."""

    def submit(self, alert: Alert) -> bool: ...


class AlertEngine:
    """Holds the session's alerts.

    Args:
        dedup_window: seconds during which a repeat of (rule_id, src) updates the existing alert.
        destinations: delivery targets; each gets every *new* alert through ``submit``.
        clock: time source used when ``raise_alert`` is not given a timestamp.
        max_alerts: newest alerts kept in memory (older ones are still persisted by listeners).
    """

    def __init__(self, dedup_window: float = ALERTS_DEDUP_WINDOW,
                 destinations: Iterable[Destination] = (),
                 clock: Callable[[], float] = time.time, max_alerts: int = 10000) -> None:
        self.dedup_window = float(dedup_window)
        self.destinations: list[Destination] = list(destinations)
        self._clock = clock
        self._lock = threading.Lock()
        self._alerts: deque[Alert] = deque(maxlen=max_alerts)
        self._by_id: dict[int, Alert] = {}
        #: (rule_id, src) -> the alert that repeats fold into
        self._open: dict[tuple[str, str], Alert] = {}
        self._listeners: list[Listener] = []
        self._update_listeners: list[Listener] = []
        #: id -> alert created or changed since the last take_changes() (for the db writer)
        self._dirty: dict[int, Alert] = {}
        self._next_id = 1
        self._raised: dict[str, int] = {}
        self._suppressed: dict[str, int] = {}
        self.listener_errors = 0

    # --- wiring -------------------------------------------------------------------------
    def add_listener(self, listener: Listener, on_update: bool = False) -> None:
        """Call ``listener(alert)`` for every new (not deduplicated) alert; with ``on_update``
        also with a copy of the alert each time a repeat folds into it."""
        self._listeners.append(listener)
        if on_update:
            self._update_listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        self._listeners.remove(listener)
        if listener in self._update_listeners:
            self._update_listeners.remove(listener)

    def take_changes(self) -> list[Alert]:
        """Copies of the alerts created, repeated or acknowledged since the previous call.

        Meant for one consumer (the database writer, once per tick), so repeats are stored as
        one upsert per alert instead of one per packet.
        """
        with self._lock:
            changed = [_copy(a) for a in self._dirty.values()]
            self._dirty.clear()
        return changed

    def add_destination(self, destination: Destination) -> None:
        self.destinations.append(destination)

    # --- raising ------------------------------------------------------------------------
    def raise_alert(self, rule_id: str, severity: str, src: str, dst: str, message: str,
                    evidence: Mapping[str, Any] | None = None,
                    ts: float | None = None) -> Alert | None:
        """Record a finding; returns the new Alert, or None when it was folded into one.

        Numeric evidence keeps the larger value (detectors report running totals, so a counter
        never goes backwards); other values and the message take the newest; the severity only
        ever rises.
        """
        if severity not in SEVERITY_RANK:
            raise ValueError(f"unknown severity {severity!r}")
        now = self._clock() if ts is None else ts
        key = (rule_id, src)
        with self._lock:
            prev = self._open.get(key)
            if prev is not None and now - prev.ts < self.dedup_window:
                prev.count += 1
                prev.last_ts = max(prev.last_ts, now)
                if evidence:
                    _merge_evidence(prev.evidence, evidence)
                if SEVERITY_RANK[severity] > SEVERITY_RANK[prev.severity]:
                    prev.severity = severity
                prev.message = message  # the newest description carries the latest counters
                self._suppressed[rule_id] = self._suppressed.get(rule_id, 0) + 1
                self._mark(prev)
                if not self._update_listeners:
                    return None
                updated = _copy(prev)
                update_listeners = list(self._update_listeners)
            else:
                updated = None
                alert = Alert(ts=now, severity=severity, rule_id=rule_id, src=src, dst=dst,
                              message=message, evidence=dict(evidence or {}), count=1,
                              id=self._next_id, last_ts=now)
                self._next_id += 1
                if len(self._alerts) == self._alerts.maxlen:
                    self._by_id.pop(self._alerts[0].id, None)
                self._alerts.append(alert)
                self._by_id[alert.id] = alert
                self._open[key] = alert
                if len(self._open) > 4 * (self._alerts.maxlen or 10000):
                    self._expire_open(now)
                self._raised[rule_id] = self._raised.get(rule_id, 0) + 1
                self._mark(alert)
                listeners = list(self._listeners)
                destinations = list(self.destinations)
        if updated is not None:
            self._notify(update_listeners, updated)
            return None
        self._notify(listeners, alert)
        for dest in destinations:
            dest.submit(alert)
        return alert

    def _mark(self, alert: Alert) -> None:
        self._dirty[alert.id] = alert
        if len(self._dirty) > 4 * (self._alerts.maxlen or 10000):
            self._dirty.clear()  # nobody is taking changes; do not grow without bound

    def _notify(self, listeners: list[Listener], alert: Alert) -> None:
        for listener in listeners:
            try:
                listener(alert)
            except Exception:  # boundary: a broken listener must not stop detection
                self.listener_errors += 1
                log.exception("alert listener %r failed", listener)

    def _expire_open(self, now: float) -> None:
        self._open = {k: a for k, a in self._open.items() if now - a.ts < self.dedup_window}

    # --- reading ------------------------------------------------------------------------
    def alerts(self) -> list[Alert]:
        """A snapshot list, oldest first (the Alert objects are copies)."""
        with self._lock:
            return [_copy(a) for a in self._alerts]

    def acknowledge(self, key: int | str) -> bool:
        """Mark an alert seen, by its ``id`` (int or numeric str); False if unknown."""
        try:
            alert_id = int(key)
        except (TypeError, ValueError):
            return False
        with self._lock:
            alert = self._by_id.get(alert_id)
            if alert is None:
                return False
            alert.acknowledged = True
            self._mark(alert)
            return True

    def acknowledge_index(self, index: int) -> bool:
        """Mark the alert at ``index`` of :meth:`alerts` (negative counts from the newest)."""
        with self._lock:
            try:
                alert = self._alerts[index]
            except IndexError:
                return False
            alert.acknowledged = True
            self._mark(alert)
            return True

    def unacknowledged(self) -> int:
        with self._lock:
            return sum(1 for a in self._alerts if not a.acknowledged)

    def counters(self) -> dict[str, dict[str, int]]:
        """Per rule: ``raised`` (distinct alerts) and ``suppressed`` (folded repeats)."""
        with self._lock:
            rules = set(self._raised) | set(self._suppressed)
            return {r: {"raised": self._raised.get(r, 0), "suppressed": self._suppressed.get(r, 0)}
                    for r in sorted(rules)}


def _merge_evidence(into: dict[str, Any], new: Mapping[str, Any]) -> None:
    for k, v in new.items():
        old = into.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool) \
                and isinstance(old, (int, float)) and not isinstance(old, bool):
            into[k] = max(old, v)
        else:
            into[k] = v


def _copy(a: Alert) -> Alert:
    return Alert(ts=a.ts, severity=a.severity, rule_id=a.rule_id, src=a.src, dst=a.dst,
                 message=a.message, evidence=dict(a.evidence), count=a.count, id=a.id,
                 last_ts=a.last_ts, acknowledged=a.acknowledged)
