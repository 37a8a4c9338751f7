"""DBPathTracer: the path tracer with its routes and measurements kept in the database.

Per destination it stores (db/repositories/hop_repo.py, route_repo.py):

* every round's route in ``route_patterns`` (times seen, first/last seen) and, when it differs
  from the previous route, a row in ``route_changes`` (both paths are the two patterns);
* every probe's RTT in ``latency_samples`` (lost probes with no RTT, at the hop's address);
* a traceroute (``traceroutes`` + ``hops``, folded into ``path_summary``) after the first
  round, after a route change, every ``save_every`` seconds and when tracing stops.

A destination traced before starts from its stored route history, so a route that changed
between two runs is reported as a change too. Writes go through a DatabaseWriter when one is
given (the tracer thread only queues them); otherwise they are committed on the tracer thread.
"""
from __future__ import annotations

from typing import Any, Callable

from db.connection import ConnectionPool
from db.repositories import hop_repo, route_repo
from db.repositories.route_repo import RouteRepository
from tracking.path import PathTracer, RoundResult, _Dest
from tracking.path_stats import HopRow, RouteChange, RouteRecord
from utils.logger import get_logger

log = get_logger(__name__)

DEFAULT_SAVE_EVERY = 60.0


def hop_rows(hops: tuple[HopRow, ...]) -> list[dict[str, Any]]:
    """Hop table rows as ``hop_repo.save_traceroute`` takes them (names are joined later)."""
    return [{"ttl": h.ttl, "ip": h.address, "rtt_ms": h.avg_ms,
             "loss": (h.sent - h.received) / h.sent if h.sent else None} for h in hops]


class DBPathTracer(PathTracer):
    """A :class:`PathTracer` that persists routes, changes, traceroutes and latency samples.

    Args:
        pool: the database.
        writer: queue writes here (``DatabaseWriter.submit``) instead of committing them on
            the tracer thread.
        session_id: the capture session the traceroutes belong to (None: none).
        save_every: seconds between stored traceroutes of a destination traced continuously.
        **kwargs: as :class:`PathTracer`.
    """

    def __init__(self, pool: ConnectionPool, writer: Any = None, session_id: int | None = None,
                 save_every: float = DEFAULT_SAVE_EVERY, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pool = pool
        self.writer = writer
        self.session_id = session_id
        self.save_every = save_every
        self.routes = RouteRepository(pool)
        #: target -> (wall time of the last stored traceroute, start of the rounds since)
        self._saved: dict[str, tuple[float, float]] = {}
        self.listeners.append(self._on_round)

    # ---- history ---------------------------------------------------------------------------
    def _seed(self, d: _Dest) -> None:
        try:
            patterns = self.routes.patterns(d.target)
            stored = self.routes.changes(d.target, limit=d.memory.changes.maxlen or 64)
        except Exception as exc:  # boundary: a damaged database must not stop tracing
            log.warning("route history for %s unavailable: %s", d.target, exc)
            self.errors.append(f"route history: {exc}")
            return
        by_hash = {p["route_hash"]: tuple(p["hops"]) for p in patterns}
        records = [RouteRecord(tuple(p["hops"]), p["first_seen"], p["last_seen"], p["times_seen"])
                   for p in patterns]
        changes = [RouteChange(d.target, c["ts"], by_hash.get(c["old_hash"], ()),
                               by_hash.get(c["new_hash"], ()), tuple(c["changed_hops"] or ()))
                   for c in stored]
        d.memory.seed(records, changes)

    # ---- persistence (tracer thread) -------------------------------------------------------
    def _write(self, op: Callable[[Any], Any]) -> None:
        if self.writer is not None:
            self.writer.submit(op)
            return
        with self.pool.transaction() as conn:
            op(conn)

    def _on_round(self, r: RoundResult) -> None:
        route = list(r.route)
        addr_at = {i + 1: a for i, a in enumerate(route)}
        samples = [{"ip": ip or addr_at.get(ttl), "ttl": ttl, "ts": r.finished, "rtt_ms": rtt}
                   for ttl, ip, rtt in r.samples if ip or addr_at.get(ttl)]
        last, since = self._saved.get(r.target, (0.0, r.started))
        due = (not last or r.change is not None or r.finished - last >= self.save_every
               or self._finished(r.target))
        hops = hop_rows(r.hops) if due else []
        target, ts, sid = r.target, r.finished, self.session_id
        proto, name, reached = r.method.upper(), r.name, r.reached

        def op(conn: Any) -> None:
            if route:
                route_repo.record_route(conn, target, route, ts)
            trace_id = None
            if hops:
                trace_id = hop_repo.save_traceroute(conn, target, hops, since, ts, session_id=sid,
                                                    protocol=proto, target_name=name, reached=reached)
            if samples:
                for s in samples:
                    s["traceroute_id"] = trace_id
                hop_repo.add_latency_samples(conn, samples)

        self._write(op)
        if hops:
            # only a stored traceroute counts as saved: a round that got no answer (the first
            # probes can meet ICMP rate limits or neighbour resolution) leaves the next one due
            self._saved[r.target] = (ts, ts)

    def _finished(self, target: str) -> bool:
        d = self._dests.get(target)
        return d is not None and d.rounds_limit is not None and d.rounds_done >= d.rounds_limit

    def stop(self) -> None:
        """Stop tracing and store the last traceroute of every destination with unsaved rounds."""
        super().stop()
        with self._lock:
            pending = [(d, self._saved.get(d.target)) for d in self._dests.values()
                       if d.rounds_done and self._saved.get(d.target, (0.0, 0.0))[0] < d.last_round]
            frozen = [(d.freeze(None), since) for d, since in pending]
        for dp, saved in frozen:
            since = saved[1] if saved else dp.started
            hops = hop_rows(dp.hops)
            target, ts, name = dp.target, dp.last_round, dp.name
            proto, reached, sid = dp.method.upper(), dp.reached, self.session_id

            def op(conn: Any, target: str = target, hops: list = hops, since: float = since,
                   ts: float = ts, name: str = name, proto: str = proto,
                   reached: bool = reached) -> None:
                hop_repo.save_traceroute(conn, target, hops, since, ts, session_id=sid,
                                         protocol=proto, target_name=name, reached=reached)
            try:
                self._write(op)
            except Exception as exc:  # boundary: shutting down must not raise for the db
                log.warning("could not store the last traceroute to %s: %s", target, exc)
        self._saved.update({dp.target: (dp.last_round, dp.last_round) for dp, _ in frozen})

    close = stop

    def history(self, target: str, limit: int = 20) -> dict[str, Any]:
        """Stored route patterns, changes and traceroutes for ``target`` (newest first)."""
        return {"patterns": self.routes.patterns(target)[:limit],
                "changes": self.routes.changes(target, limit=limit),
                "latest": hop_repo.HopRepository(self.pool).latest(target),
                "summary": hop_repo.HopRepository(self.pool).summary(target)}

