"""Security alerts of a session. An alert is one row, updated as repeats fold into it."""
from __future__ import annotations

import sqlite3
from typing import Any, Iterable

from db.connection import ConnectionPool
from db.repositories._codec import from_json, rows_as_dicts, to_json

_SEVERITY_RANK_SQL = ("CASE severity WHEN 'info' THEN 0 WHEN 'low' THEN 1 WHEN 'medium' THEN 2 "
                      "WHEN 'high' THEN 3 WHEN 'critical' THEN 4 ELSE 0 END")
_RANKS = {"info": 0, "low": 1, "medium": 2, "high": 3, "critical": 4}
_UPSERT = (
    "INSERT INTO alerts (session_id, alert_id, ts, last_ts, severity, rule_id, src, dst, message, "
    "evidence, count, acknowledged) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT(session_id, alert_id) DO UPDATE SET last_ts = excluded.last_ts, "
    "severity = excluded.severity, message = excluded.message, evidence = excluded.evidence, "
    "count = excluded.count, acknowledged = excluded.acknowledged"
)


def upsert_alerts(conn: sqlite3.Connection, session_id: int, rows: Iterable[dict[str, Any]]) -> int:
    """Store ``Alert.to_dict()`` rows; the same ``id`` again updates count/last_ts/ack."""
    params = [(session_id, r["id"], r["ts"], r.get("last_ts") or r["ts"], r["severity"],
               r["rule_id"], r.get("src"), r.get("dst"), r["message"],
               to_json(r.get("evidence") or {}), r.get("count", 1),
               bool(r.get("acknowledged", False))) for r in rows]
    conn.executemany(_UPSERT, params)
    return len(params)


class AlertRepository:
    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool

    def upsert(self, session_id: int, rows: Iterable[dict[str, Any]]) -> int:
        with self.pool.transaction() as conn:
            return upsert_alerts(conn, session_id, rows)

    def list(self, session_id: int, min_severity: str = "info",
             limit: int = 1000) -> list[dict[str, Any]]:
        """Alerts at or above ``min_severity``, newest first, in ``Alert.to_dict()`` shape."""
        rank = _RANKS.get(min_severity)
        if rank is None:
            raise ValueError(f"unknown severity {min_severity!r}")
        with self.pool.reader() as conn:
            rows = rows_as_dicts(conn.execute(
                "SELECT alert_id AS id, ts, last_ts, severity, rule_id, src, dst, message, "
                f"evidence, count, acknowledged FROM alerts WHERE session_id = ? AND "
                f"{_SEVERITY_RANK_SQL} >= ? ORDER BY ts DESC, alert_id DESC LIMIT ?",
                (session_id, rank, int(limit))))
        for row in rows:
            row["evidence"] = from_json(row["evidence"], {})
            row["acknowledged"] = bool(row["acknowledged"])
        return rows

    def counts(self, session_id: int) -> dict[str, int]:
        """Alert count per severity."""
        with self.pool.reader() as conn:
            rows = conn.execute("SELECT severity, count(*) FROM alerts WHERE session_id = ? "
                                "GROUP BY severity", (session_id,)).fetchall()
        return {s: int(n) for s, n in rows}
