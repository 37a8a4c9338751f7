"""Route patterns per target and the changes between them.

A route is the sequence of hop IPs (None for a silent hop). Each distinct sequence to a target
is one pattern row; a trace whose pattern differs from the target's previous one records a
change.
"""
from __future__ import annotations

import hashlib
import sqlite3
import time
from typing import Any, Sequence

from db.connection import ConnectionPool
from db.repositories._codec import from_json, rows_as_dicts, to_json


def route_hash(hops: Sequence[str | None]) -> str:
    return hashlib.sha1("|".join(h or "*" for h in hops).encode()).hexdigest()[:16]


def record_route(conn: sqlite3.Connection, target_ip: str, hops: Sequence[str | None],
                 ts: float) -> dict[str, Any] | None:
    """Count this route; returns the change record if it differs from the previous route."""
    new_hash = route_hash(hops)
    prev = conn.execute("SELECT route_hash, hops FROM route_patterns WHERE target_ip = ? "
                        "ORDER BY last_seen DESC, id DESC LIMIT 1", (target_ip,)).fetchone()
    conn.execute(
        "INSERT INTO route_patterns (target_ip, route_hash, hops, first_seen, last_seen) "
        "VALUES (?, ?, ?, ?, ?) ON CONFLICT(target_ip, route_hash) DO UPDATE SET "
        "last_seen = excluded.last_seen, times_seen = times_seen + 1",
        (target_ip, new_hash, to_json(list(hops)), ts, ts))
    if prev is None or prev[0] == new_hash:
        return None
    old_hops = from_json(prev[1], []) or []
    changed = [i + 1 for i in range(max(len(old_hops), len(hops)))
               if (old_hops[i] if i < len(old_hops) else None) != (hops[i] if i < len(hops) else None)]
    conn.execute("INSERT INTO route_changes (target_ip, ts, old_hash, new_hash, changed_hops) "
                 "VALUES (?, ?, ?, ?, ?)", (target_ip, ts, prev[0], new_hash, to_json(changed)))
    return {"target_ip": target_ip, "ts": ts, "old_hash": prev[0], "new_hash": new_hash,
            "changed_hops": changed}


class RouteRepository:
    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool

    def record(self, target_ip: str, hops: Sequence[str | None],
               ts: float | None = None) -> dict[str, Any] | None:
        with self.pool.transaction() as conn:
            return record_route(conn, target_ip, hops, time.time() if ts is None else ts)

    def patterns(self, target_ip: str) -> list[dict[str, Any]]:
        with self.pool.reader() as conn:
            rows = rows_as_dicts(conn.execute(
                "SELECT route_hash, hops, first_seen, last_seen, times_seen FROM route_patterns "
                "WHERE target_ip = ? ORDER BY last_seen DESC", (target_ip,)))
        for row in rows:
            row["hops"] = from_json(row["hops"], [])
        return rows

    def changes(self, target_ip: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        sql = "SELECT target_ip, ts, old_hash, new_hash, changed_hops FROM route_changes"
        params: list[Any] = []
        if target_ip is not None:
            sql += " WHERE target_ip = ?"
            params.append(target_ip)
        with self.pool.reader() as conn:
            rows = rows_as_dicts(conn.execute(sql + " ORDER BY ts DESC LIMIT ?",
                                              (*params, int(limit))))
        for row in rows:
            row["changed_hops"] = from_json(row["changed_hops"], [])
        return rows
