"""Relay agents that fed a session, with their last known status and totals."""
from __future__ import annotations

import sqlite3
from typing import Any, Iterable

from db.connection import ConnectionPool
from db.repositories._codec import from_json, rows_as_dicts, to_json

AGENT_COLUMNS = ("agent", "hostname", "address", "version", "connected_at", "last_seen", "status",
                 "packets", "bytes")
_KNOWN = frozenset(AGENT_COLUMNS)
_UPSERT = (
    f"INSERT INTO relay_agents (session_id, {', '.join(AGENT_COLUMNS)}, extra) "
    f"VALUES ({', '.join('?' * (len(AGENT_COLUMNS) + 2))}) "
    "ON CONFLICT(session_id, agent) DO UPDATE SET "
    + ", ".join(f"{c} = COALESCE(excluded.{c}, {c})" for c in AGENT_COLUMNS[1:] + ("extra",))
)


def upsert_agents(conn: sqlite3.Connection, session_id: int, rows: Iterable[dict[str, Any]]) -> int:
    params = []
    for r in rows:
        extra = {k: v for k, v in r.items() if k not in _KNOWN}
        params.append((session_id, *(r.get(c) for c in AGENT_COLUMNS),
                       to_json(extra) if extra else None))
    conn.executemany(_UPSERT, params)
    return len(params)


class RelayRepository:
    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool

    def upsert(self, session_id: int, rows: Iterable[dict[str, Any]]) -> int:
        with self.pool.transaction() as conn:
            return upsert_agents(conn, session_id, rows)

    def list(self, session_id: int) -> list[dict[str, Any]]:
        with self.pool.reader() as conn:
            rows = rows_as_dicts(conn.execute(
                f"SELECT {', '.join(AGENT_COLUMNS)}, extra FROM relay_agents WHERE session_id = ? "
                "ORDER BY agent", (session_id,)))
        for row in rows:
            for k, v in (from_json(row.pop("extra"), {}) or {}).items():
                row.setdefault(k, v)
        return rows
