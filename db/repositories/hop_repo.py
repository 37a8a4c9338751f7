"""Traceroutes, their hops, latency samples and the per-target path summary."""
from __future__ import annotations

import sqlite3
import time
from typing import Any, Iterable

from db.connection import ConnectionPool
from db.repositories._codec import rows_as_dicts

HOP_COLUMNS = ("ttl", "ip", "rtt_ms", "loss", "fqdn", "hostname", "asn", "as_org", "country", "city")


def save_traceroute(conn: sqlite3.Connection, target_ip: str, hops: list[dict[str, Any]],
                    started_at: float, finished_at: float | None = None,
                    session_id: int | None = None, protocol: str = "ICMP",
                    target_name: str | None = None, reached: bool | None = None) -> int:
    """Store one traceroute with its hops and fold it into ``path_summary``. Returns its id."""
    answered = [h for h in hops if h.get("ip")]
    if reached is None:
        reached = any(h.get("ip") == target_ip for h in hops)
    cur = conn.execute(
        "INSERT INTO traceroutes (session_id, target_ip, target_name, protocol, started_at, "
        "finished_at, hop_count, reached) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (session_id, target_ip, target_name, protocol, started_at, finished_at,
         max((int(h["ttl"]) for h in hops), default=0), bool(reached)))
    trace_id = int(cur.lastrowid or 0)
    conn.executemany(
        f"INSERT INTO hops (traceroute_id, {', '.join(HOP_COLUMNS)}) "
        f"VALUES (?, {', '.join('?' * len(HOP_COLUMNS))})",
        [(trace_id, *(h.get(c) for c in HOP_COLUMNS)) for h in hops])
    last_rtt = next((h.get("rtt_ms") for h in reversed(answered) if h.get("rtt_ms") is not None), None)
    conn.execute(
        "INSERT INTO path_summary (target_ip, hop_count, avg_rtt_ms, traces, last_traced) "
        "VALUES (?, ?, ?, 1, ?) ON CONFLICT(target_ip) DO UPDATE SET "
        "hop_count = excluded.hop_count, traces = traces + 1, last_traced = excluded.last_traced, "
        # running mean of the end-to-end RTT over all traces that measured one
        "avg_rtt_ms = CASE WHEN excluded.avg_rtt_ms IS NULL THEN avg_rtt_ms "
        "WHEN avg_rtt_ms IS NULL THEN excluded.avg_rtt_ms "
        "ELSE (avg_rtt_ms * traces + excluded.avg_rtt_ms) / (traces + 1) END",
        (target_ip, max((int(h["ttl"]) for h in hops), default=0), last_rtt,
         finished_at or started_at))
    return trace_id


def add_latency_samples(conn: sqlite3.Connection, rows: Iterable[dict[str, Any]]) -> int:
    """Append (ip, ts, rtt_ms[, ttl, traceroute_id]) samples; rtt_ms None = lost probe."""
    params = [(r.get("traceroute_id"), r["ip"], r.get("ttl"), r["ts"], r.get("rtt_ms")) for r in rows]
    conn.executemany("INSERT INTO latency_samples (traceroute_id, ip, ttl, ts, rtt_ms) "
                     "VALUES (?, ?, ?, ?, ?)", params)
    return len(params)


class HopRepository:
    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool

    def save_traceroute(self, target_ip: str, hops: list[dict[str, Any]],
                        started_at: float | None = None, **kwargs: Any) -> int:
        with self.pool.transaction() as conn:
            return save_traceroute(conn, target_ip, hops,
                                   time.time() if started_at is None else started_at, **kwargs)

    def latest(self, target_ip: str) -> dict[str, Any] | None:
        """The newest traceroute to ``target_ip`` with its hops (ttl order)."""
        with self.pool.reader() as conn:
            traces = rows_as_dicts(conn.execute(
                "SELECT * FROM traceroutes WHERE target_ip = ? ORDER BY started_at DESC, id DESC "
                "LIMIT 1", (target_ip,)))
            if not traces:
                return None
            trace = traces[0]
            trace["hops"] = rows_as_dicts(conn.execute(
                f"SELECT {', '.join(HOP_COLUMNS)} FROM hops WHERE traceroute_id = ? "
                "ORDER BY ttl, id", (trace["id"],)))
        trace["reached"] = bool(trace["reached"])
        return trace

    def list(self, session_id: int | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Traceroutes (without hops), newest first; all sessions when ``session_id`` is None."""
        sql = "SELECT * FROM traceroutes"
        params: list[Any] = []
        if session_id is not None:
            sql += " WHERE session_id = ?"
            params.append(session_id)
        with self.pool.reader() as conn:
            return rows_as_dicts(conn.execute(sql + " ORDER BY started_at DESC, id DESC LIMIT ?",
                                              (*params, int(limit))))

    def add_latency(self, rows: Iterable[dict[str, Any]]) -> int:
        with self.pool.transaction() as conn:
            return add_latency_samples(conn, rows)

    def latency_history(self, ip: str, since: float = 0.0, limit: int = 1000) -> list[dict[str, Any]]:
        with self.pool.reader() as conn:
            return rows_as_dicts(conn.execute(
                "SELECT ts, rtt_ms, ttl FROM latency_samples WHERE ip = ? AND ts >= ? "
                "ORDER BY ts LIMIT ?", (ip, since, int(limit))))

    def summary(self, target_ip: str | None = None) -> list[dict[str, Any]]:
        sql = "SELECT * FROM path_summary"
        params: tuple[Any, ...] = ()
        if target_ip is not None:
            sql += " WHERE target_ip = ?"
            params = (target_ip,)
        with self.pool.reader() as conn:
            return rows_as_dicts(conn.execute(sql + " ORDER BY last_traced DESC", params))
