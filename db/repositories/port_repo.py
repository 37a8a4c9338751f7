"""Per-port statistics and port-scan activity of a session.

The port tracker hands cumulative totals, so an upsert replaces the stored values; unknown
keys go to the ``extra`` JSON column.
"""
from __future__ import annotations

import sqlite3
from typing import Any, Iterable

from db.connection import ConnectionPool
from db.repositories._codec import from_json, rows_as_dicts, to_json

PORT_COLUMNS = ("port", "protocol", "service", "packets", "bytes", "hits", "flows",
                "first_seen", "last_seen")
_KNOWN = frozenset(PORT_COLUMNS)
_ALL = ("session_id",) + PORT_COLUMNS + ("extra",)
_COUNTERS = frozenset({"packets", "bytes", "hits"})   # NOT NULL: 0 when a new row lacks them
# numbered parameters let the update see the row's raw value: a key missing from an update keeps
# the stored value, while a new row still gets 0 for a missing counter
_UPSERT = (
    f"INSERT INTO port_stats ({', '.join(_ALL)}) VALUES ("
    + ", ".join(f"COALESCE(?{i}, 0)" if c in _COUNTERS else f"?{i}" for i, c in enumerate(_ALL, 1))
    + ") ON CONFLICT(session_id, port, protocol) DO UPDATE SET "
    + ", ".join(f"{c} = COALESCE(?{i}, {c})" for i, c in enumerate(_ALL, 1) if i > 3)
)
SCAN_COLUMNS = ("src_ip", "first_seen", "last_seen", "ports_hit", "scan_rate", "likely_scanner",
                "ports")
_SCAN_UPSERT = (
    f"INSERT INTO scan_activity (session_id, {', '.join(SCAN_COLUMNS)}) "
    f"VALUES ({', '.join('?' * (len(SCAN_COLUMNS) + 1))}) "
    "ON CONFLICT(session_id, src_ip) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in SCAN_COLUMNS[1:])
)
PORT_SORTS = {"bytes": "bytes", "packets": "packets", "hits": "hits", "port": "port",
              "last_seen": "last_seen"}


def _params(session_id: int, row: dict[str, Any]) -> tuple[Any, ...]:
    extra = {k: v for k, v in row.items() if k not in _KNOWN}
    return (session_id, *(row.get(c) for c in PORT_COLUMNS), to_json(extra) if extra else None)


def upsert_ports(conn: sqlite3.Connection, session_id: int, rows: Iterable[dict[str, Any]]) -> int:
    """Insert or replace port rows (``port`` and ``protocol`` are required keys)."""
    params = [_params(session_id, r) for r in rows]
    conn.executemany(_UPSERT, params)
    return len(params)


def upsert_scan_activity(conn: sqlite3.Connection, session_id: int,
                         rows: Iterable[dict[str, Any]]) -> int:
    """Insert or replace scan activity per source (``ports`` may be a list)."""
    params = []
    for r in rows:
        ports = r.get("ports")
        params.append((session_id, r["src_ip"], r.get("first_seen"), r.get("last_seen"),
                       r.get("ports_hit", 0), r.get("scan_rate"),
                       None if r.get("likely_scanner") is None else bool(r["likely_scanner"]),
                       to_json(sorted(ports)) if ports is not None else None))
    conn.executemany(_SCAN_UPSERT, params)
    return len(params)


class PortRepository:
    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool

    def upsert(self, session_id: int, rows: Iterable[dict[str, Any]]) -> int:
        with self.pool.transaction() as conn:
            return upsert_ports(conn, session_id, rows)

    def list(self, session_id: int, sort: str = "bytes", limit: int = 100) -> list[dict[str, Any]]:
        order = PORT_SORTS.get(sort)
        if order is None:
            raise ValueError(f"unknown sort {sort!r} (known: {', '.join(PORT_SORTS)})")
        with self.pool.reader() as conn:
            rows = rows_as_dicts(conn.execute(
                f"SELECT {', '.join(PORT_COLUMNS)}, extra FROM port_stats WHERE session_id = ? "
                f"ORDER BY {order} DESC, port LIMIT ?", (session_id, int(limit))))
        for row in rows:
            for k, v in (from_json(row.pop("extra"), {}) or {}).items():
                row.setdefault(k, v)
        return rows

    def by_service(self, session_id: int) -> list[dict[str, Any]]:
        """Traffic per service name (the Ports panel's service breakdown)."""
        with self.pool.reader() as conn:
            return rows_as_dicts(conn.execute(
                "SELECT COALESCE(service, '') AS service, SUM(packets) AS packets, "
                "SUM(bytes) AS bytes, count(*) AS ports FROM port_stats WHERE session_id = ? "
                "GROUP BY 1 ORDER BY bytes DESC", (session_id,)))

    def scanners(self, session_id: int, likely_only: bool = False) -> list[dict[str, Any]]:
        sql = "SELECT * FROM scan_activity WHERE session_id = ?"
        if likely_only:
            sql += " AND likely_scanner = 1"
        with self.pool.reader() as conn:
            rows = rows_as_dicts(conn.execute(sql + " ORDER BY ports_hit DESC", (session_id,)))
        for row in rows:
            row.pop("session_id", None)
            row["ports"] = from_json(row.get("ports"), [])
            if row.get("likely_scanner") is not None:
                row["likely_scanner"] = bool(row["likely_scanner"])
        return rows
