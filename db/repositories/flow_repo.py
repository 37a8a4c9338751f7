"""Flows: one row per (session, flow_key), updated in place as the flow grows.

The row dict is the flow tracker's ``Flow.as_dict()`` plus enrichment (geo, names, DPI). Keys
this schema has no column for are kept in the ``extra`` JSON column, so new fields upstream
never break persistence. ``None`` in an update never erases a stored value (enrichment that
arrived earlier survives a later counter-only update).
"""
from __future__ import annotations

import sqlite3
from typing import Any, Iterable, Iterator

from db.connection import ConnectionPool
from db.repositories._codec import from_json, like_pattern, to_json

#: columns filled from the row dict, in statement order (session_id comes first, extra last)
FLOW_COLUMNS: tuple[str, ...] = (
    "flow_key", "protocol", "ip_version", "src_ip", "src_port", "dst_ip", "dst_port",
    "packets_sent", "packets_recv", "bytes_sent", "bytes_recv", "first_seen", "last_seen",
    "state", "classification", "encrypted", "ttl_sent", "ttl_recv",
    "retransmissions", "fast_retransmissions", "out_of_order", "dup_acks", "zero_windows",
    "resets", "handshake_rtt_ms",
    "src_country", "src_city", "src_asn", "src_as_org", "src_fqdn", "src_domain",
    "src_name_source",
    "dst_country", "dst_city", "dst_asn", "dst_as_org", "dst_fqdn", "dst_domain",
    "dst_name_source",
    "app_protocol", "sni", "alpn", "tls_version", "ja3", "ja4", "ja3s", "http_host",
    "http_user_agent", "src_os", "dst_os", "anomaly_score", "anomaly_reasons", "agent",
)
_KNOWN = frozenset(FLOW_COLUMNS)
#: keys computed from other columns: not stored, rebuilt on read
_DERIVED = frozenset({"duration", "packets", "bytes"})
_JSON_COLUMNS = frozenset({"anomaly_reasons", "alpn"})
#: their positions in the parameter list (after session_id)
_JSON_IDX = tuple(i + 1 for i, c in enumerate(FLOW_COLUMNS) if c in _JSON_COLUMNS)
_SKIP = _KNOWN | _DERIVED
#: NOT NULL counters: a new row without them stores 0 (an explicit NULL bypasses the default)
_COUNTERS = frozenset({"packets_sent", "packets_recv", "bytes_sent", "bytes_recv"})

_ALL = ("session_id",) + FLOW_COLUMNS + ("extra",)
# Numbered parameters let the update read the row's raw values: a key that is None (or missing)
# in an update keeps the stored value, while a new row still gets 0 for a missing counter.
UPSERT_SQL = (
    f"INSERT INTO flows ({', '.join(_ALL)}) VALUES ("
    + ", ".join(f"COALESCE(?{i}, 0)" if c in _COUNTERS else f"?{i}" for i, c in enumerate(_ALL, 1))
    + ") ON CONFLICT(session_id, flow_key) DO UPDATE SET "
    + ", ".join(f"{c} = COALESCE(?{i}, {c})" for i, c in enumerate(_ALL, 1) if i > 2)
)

#: sort keys the panels and CLI may ask for -> SQL (a whitelist: never user text in SQL)
SORTS: dict[str, str] = {
    "bytes": "bytes_sent + bytes_recv",      # matches idx_flows_session_bytes
    "packets": "packets_sent + packets_recv",
    "first_seen": "first_seen",
    "last_seen": "last_seen",
    "duration": "last_seen - first_seen",
    "src_ip": "src_ip",
    "dst_ip": "dst_ip",
    "dst_port": "dst_port",
    "protocol": "protocol",
    "retransmissions": "retransmissions",
    "anomaly_score": "anomaly_score",
}
#: columns a free-text filter looks in
_FILTER_COLUMNS = ("src_ip", "dst_ip", "protocol", "src_fqdn", "dst_fqdn", "dst_domain",
                   "sni", "http_host", "dst_country", "dst_as_org", "classification",
                   "app_protocol")


def flow_params(session_id: int, row: dict[str, Any]) -> list[Any]:
    """The statement parameters for one row dict (runs on the writer thread for every row)."""
    values: list[Any] = [session_id, *map(row.get, FLOW_COLUMNS)]
    for idx in _JSON_IDX:
        value = values[idx]
        if value is not None and not isinstance(value, str):
            values[idx] = to_json(value) if value else "[]"
    unknown = row.keys() - _SKIP
    values.append(to_json({k: row[k] for k in unknown}) if unknown else None)
    return values


def upsert_flows(conn: sqlite3.Connection, session_id: int, rows: Iterable[dict[str, Any]]) -> int:
    """Insert or update flows (inside the caller's transaction). Returns the rows handed."""
    params = [flow_params(session_id, r) for r in rows]
    conn.executemany(UPSERT_SQL, params)
    return len(params)


def upsert_flow_params(conn: sqlite3.Connection, params: list[list[Any]]) -> None:
    """Upsert rows already turned into parameters by :func:`flow_params` (the writer's path)."""
    conn.executemany(UPSERT_SQL, params)


def save_classification(conn: sqlite3.Connection, session_id: int, flow_key: str,
                        classification: str, encrypted: bool | None, ts: float,
                        details: dict[str, Any] | None = None) -> None:
    conn.execute(
        "INSERT INTO classifications (session_id, flow_key, classification, encrypted, ts, details)"
        " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(session_id, flow_key) DO UPDATE SET "
        "classification = excluded.classification, encrypted = excluded.encrypted, "
        "ts = excluded.ts, details = excluded.details",
        (session_id, flow_key, classification, encrypted, ts, to_json(details)))


def row_to_flow(row: dict[str, Any]) -> dict[str, Any]:
    """A stored row back into the flow dict shape (extra keys merged, JSON decoded)."""
    extra = from_json(row.pop("extra", None), {})
    row.pop("id", None)
    row.pop("session_id", None)
    for name in _JSON_COLUMNS:
        text = row.get(name)
        if isinstance(text, str) and text[:1] in "[{\"":
            row[name] = from_json(text, text)
    if row.get("encrypted") is not None:
        row["encrypted"] = bool(row["encrypted"])
    row["duration"] = round((row.get("last_seen") or 0.0) - (row.get("first_seen") or 0.0), 6)
    if isinstance(extra, dict):
        for k, v in extra.items():
            row.setdefault(k, v)
    return row


class FlowRepository:
    """Reads of stored flows for the panels, ``--session`` and exports."""

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool

    def upsert(self, session_id: int, rows: Iterable[dict[str, Any]]) -> int:
        """Synchronous upsert (tests, imports); live capture goes through the DatabaseWriter."""
        with self.pool.transaction() as conn:
            return upsert_flows(conn, session_id, rows)

    def list(self, session_id: int, sort: str = "bytes", descending: bool = True,
             limit: int = 50, offset: int = 0, filter_text: str = "") -> list[dict[str, Any]]:
        """One page of a session's flows.

        ``sort`` is a key of :data:`SORTS` (ValueError otherwise); ``filter_text`` keeps flows
        whose addresses, names, protocol, country, organisation or classification contain it.
        """
        order = SORTS.get(sort)
        if order is None:
            raise ValueError(f"unknown sort {sort!r} (known: {', '.join(SORTS)})")
        sql = ["SELECT * FROM flows WHERE session_id = ?"]
        params: list[Any] = [session_id]
        if filter_text:
            sql.append("AND (" + " OR ".join(f"{c} LIKE ? ESCAPE '\\'" for c in _FILTER_COLUMNS) + ")")
            params.extend([like_pattern(filter_text)] * len(_FILTER_COLUMNS))
        sql.append(f"ORDER BY {order} {'DESC' if descending else 'ASC'}, id LIMIT ? OFFSET ?")
        params += [int(limit), int(offset)]
        with self.pool.reader() as conn:
            cur = conn.execute(" ".join(sql), params)
            names = [d[0] for d in cur.description]
            return [row_to_flow(dict(zip(names, r))) for r in cur.fetchall()]

    def get(self, session_id: int, flow_key: str) -> dict[str, Any] | None:
        with self.pool.reader() as conn:
            cur = conn.execute("SELECT * FROM flows WHERE session_id = ? AND flow_key = ?",
                               (session_id, flow_key))
            row = cur.fetchone()
            if row is None:
                return None
            return row_to_flow(dict(zip([d[0] for d in cur.description], row)))

    def count(self, session_id: int) -> int:
        with self.pool.reader() as conn:
            return int(conn.execute("SELECT count(*) FROM flows WHERE session_id = ?",
                                    (session_id,)).fetchone()[0])

    def totals(self, session_id: int) -> dict[str, int]:
        """Flows, packets and bytes of a session as stored."""
        with self.pool.reader() as conn:
            row = conn.execute(
                "SELECT count(*), COALESCE(SUM(packets_sent + packets_recv), 0), "
                "COALESCE(SUM(bytes_sent + bytes_recv), 0) FROM flows WHERE session_id = ?",
                (session_id,)).fetchone()
        return {"flows": int(row[0]), "packets": int(row[1]), "bytes": int(row[2])}

    def iter_all(self, session_id: int, batch: int = 1000) -> Iterator[dict[str, Any]]:
        """Every flow of a session in first-seen order, read in pages (for exports).

        Paging by (first_seen, id) keeps memory flat and does not hold a read transaction (and
        so a WAL snapshot) open for the whole export.
        """
        last: tuple[float, int] = (float("-inf"), -1)
        while True:
            with self.pool.reader() as conn:
                cur = conn.execute(
                    "SELECT * FROM flows WHERE session_id = ? AND (first_seen, id) > (?, ?) "
                    "ORDER BY first_seen, id LIMIT ?", (session_id, last[0], last[1], batch))
                names = [d[0] for d in cur.description]
                rows = [dict(zip(names, r)) for r in cur.fetchall()]
            if not rows:
                return
            last = (rows[-1]["first_seen"], rows[-1]["id"])
            for row in rows:
                yield row_to_flow(row)
            if len(rows) < batch:
                return

    def classifications(self, session_id: int) -> dict[str, int]:
        """Flow count per classification (the Analysis panel's breakdown)."""
        with self.pool.reader() as conn:
            rows = conn.execute(
                "SELECT COALESCE(classification, ''), count(*) FROM flows WHERE session_id = ? "
                "GROUP BY 1 ORDER BY 2 DESC", (session_id,)).fetchall()
        return {name: int(n) for name, n in rows}
