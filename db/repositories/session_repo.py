"""Capture sessions: one row per run of the program, with its totals once it ends."""
from __future__ import annotations

import time
from typing import Any

from db.connection import ConnectionPool
from db.repositories._codec import rows_as_dicts

_COLUMNS = ("id, started_at, ended_at, source, interface, bpf_filter, packets, bytes, flows, "
            "dropped")


class SessionRepository:
    """Start, close, list and purge sessions. Writes are synchronous (a few per run)."""

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool

    def start(self, source: str, interface: str, bpf_filter: str = "",
              started_at: float | None = None) -> int:
        """Record a new session and return its id.

        Args:
            source: "live", "file" or "relay".
            interface: the interface name, or the capture file for ``-r``.
            bpf_filter: the capture filter ("" for none).
            started_at: epoch seconds (now by default; a file import may pass its first packet).
        """
        ts = time.time() if started_at is None else started_at
        with self.pool.transaction() as conn:
            cur = conn.execute(
                "INSERT INTO sessions (started_at, source, interface, bpf_filter) VALUES (?, ?, ?, ?)",
                (ts, source, interface, bpf_filter))
            return int(cur.lastrowid or 0)

    def close(self, session_id: int, end_ts: float, packets: int, bytes: int, flows: int,
              dropped: int = 0) -> None:
        """Store the end time and totals (flush the DatabaseWriter first)."""
        with self.pool.transaction() as conn:
            conn.execute(
                "UPDATE sessions SET ended_at = ?, packets = ?, bytes = ?, flows = ?, dropped = ? "
                "WHERE id = ?", (end_ts, packets, bytes, flows, dropped, session_id))

    def list(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Sessions, newest first. ``ended_at`` is None for a running or killed session."""
        sql = f"SELECT {_COLUMNS} FROM sessions ORDER BY started_at DESC, id DESC"
        params: tuple[Any, ...] = ()
        if limit is not None:
            sql += " LIMIT ?"
            params = (int(limit),)
        with self.pool.reader() as conn:
            return rows_as_dicts(conn.execute(sql, params))

    def get(self, session_id: int) -> dict[str, Any] | None:
        with self.pool.reader() as conn:
            rows = rows_as_dicts(conn.execute(f"SELECT {_COLUMNS} FROM sessions WHERE id = ?",
                                              (session_id,)))
        return rows[0] if rows else None

    def purge_older_than(self, days: float, now: float | None = None) -> int:
        """Delete sessions that ended (or, if killed, started) more than ``days`` ago.

        Their flows, ports, DNS queries, alerts, traceroutes and the rest go with them (foreign
        keys cascade). Returns the number of sessions removed. ``days <= 0`` keeps everything.
        """
        if days <= 0:
            return 0
        cutoff = (time.time() if now is None else now) - days * 86400.0
        with self.pool.transaction() as conn:
            cur = conn.execute("DELETE FROM sessions WHERE COALESCE(ended_at, started_at) < ?",
                               (cutoff,))
            return int(cur.rowcount)
