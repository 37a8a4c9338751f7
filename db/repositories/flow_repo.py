"""Flows: one row per (session, flow_key), updated in place as the flow grows.

The row dict is the flow tracker's ``Flow.as_dict()`` plus enrichment (geo, names, DPI). Keys
this schema has no column for are kept in the ``extra`` JSON column, so new fields upstream
never break persistence. ``None`` in an update never erases a stored value (enrichment that
arrived earlier survives a later counter-only update), and a row writes only the columns it
carries, so a counters-only update is cheap. The flow's identity (key, protocol, addresses,
ports, first_seen) is written once, when the row is created.
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
_SKIP = _KNOWN | _DERIVED
#: NOT NULL counters: a new row without them stores 0 (an explicit NULL bypasses the default)
_COUNTERS = frozenset({"packets_sent", "packets_recv", "bytes_sent", "bytes_recv"})
#: written when the row is created, never updated: the key spells the addresses, ports and
#: protocol, and a flow's first packet does not move. Leaving them out of the update spares the writes to the unique,
#: dst_ip and first_seen indexes on every counter update.
_INSERT_ONLY = frozenset({"flow_key", "protocol", "ip_version", "src_ip", "src_port", "dst_ip",
                          "dst_port", "first_seen"})


class _Shape:
    """The statement for rows with one set of keys: only the columns a row carries are written.

    A counters-only row (the tracker's update of a flow already stored) then binds a dozen
    parameters and touches two indexes instead of ~55 columns and five indexes.
    """

    __slots__ = ("sql", "columns", "json_idx", "unknown")

    def __init__(self, keys: tuple[str, ...]) -> None:
        present = frozenset(keys)
        self.columns = tuple(c for c in FLOW_COLUMNS if c in present)
        #: keys with no column (kept in ``extra``), in the row's order
        self.unknown = tuple(k for k in keys if k not in _SKIP)
        #: positions of JSON columns in the parameter list (after session_id)
        self.json_idx = tuple(i + 1 for i, c in enumerate(self.columns) if c in _JSON_COLUMNS)
        cols = ("session_id",) + self.columns + (("extra",) if self.unknown else ())
        # Numbered parameters let the update read the row's raw values: a key that is None in
        # an update keeps the stored value, while a new row still gets 0 for a missing counter.
        updates = [f"{c} = COALESCE(?{i}, {c})" for i, c in enumerate(cols, 1)
                   if c != "session_id" and c not in _INSERT_ONLY]
        self.sql = (
            f"INSERT INTO flows ({', '.join(cols)}) VALUES ("
            + ", ".join(f"COALESCE(?{i}, 0)" if c in _COUNTERS else f"?{i}"
                        for i, c in enumerate(cols, 1))
            + ") ON CONFLICT(session_id, flow_key) DO "
            + ("UPDATE SET " + ", ".join(updates) if updates else "NOTHING"))


#: statement per tuple of row keys (rows from one producer share their key order, so this
#: holds a handful of entries; cleared if some producer keeps inventing new shapes)
_SHAPES: dict[tuple[str, ...], _Shape] = {}
_SHAPES_MAX = 256

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


def flow_statement(session_id: int, row: dict[str, Any]) -> tuple[str, list[Any]]:
    """The upsert statement for ``row``'s keys and its parameters (the writer's per-row work).

    Rows with the same keys get the same statement string, so a caller can group them into
    one ``executemany``.
    """
    keys = tuple(row)
    shape = _SHAPES.get(keys)
    if shape is None:
        if len(_SHAPES) >= _SHAPES_MAX:
            _SHAPES.clear()
        shape = _SHAPES[keys] = _Shape(keys)
    values: list[Any] = [session_id, *map(row.__getitem__, shape.columns)]
    for idx in shape.json_idx:
        value = values[idx]
        if value is not None and not isinstance(value, str):
            values[idx] = to_json(value) if value else "[]"
    if shape.unknown:
        values.append(to_json({k: row[k] for k in shape.unknown}))
    return shape.sql, values


def upsert_flows(conn: sqlite3.Connection, session_id: int, rows: Iterable[dict[str, Any]]) -> int:
    """Insert or update flows (inside the caller's transaction). Returns the rows handed."""
    # runs of rows with the same keys share one executemany; the order of rows is kept (the
    # same flow may come twice, and its later row must win)
    run_sql, run, n = "", [], 0
    for row in rows:
        sql, params = flow_statement(session_id, row)
        if sql != run_sql and run:
            conn.executemany(run_sql, run)
            run = []
        run_sql = sql
        run.append(params)
        n += 1
    if run:
        conn.executemany(run_sql, run)
    return n


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
