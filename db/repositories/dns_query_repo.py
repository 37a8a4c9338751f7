"""DNS transactions seen on the wire (Zeek dns.log shape), per session."""
from __future__ import annotations

import sqlite3
from typing import Any, Iterable, Iterator

from db.connection import ConnectionPool
from db.repositories._codec import from_json, like_pattern, to_json

DNS_COLUMNS = ("ts", "src_ip", "src_port", "dst_ip", "dst_port", "proto", "trans_id", "query",
               "qtype", "rcode", "answers", "ttls", "rtt_ms")
_KNOWN = frozenset(DNS_COLUMNS)
_JSON = ("answers", "ttls")
_INSERT = (f"INSERT INTO dns_queries (session_id, {', '.join(DNS_COLUMNS)}, extra) "
           f"VALUES ({', '.join('?' * (len(DNS_COLUMNS) + 2))})")


def add_queries(conn: sqlite3.Connection, session_id: int, rows: Iterable[dict[str, Any]]) -> int:
    """Append DNS transactions (``ts`` required; ``answers``/``ttls`` are lists)."""
    params = []
    for r in rows:
        values: list[Any] = [session_id]
        for c in DNS_COLUMNS:
            v = r.get(c)
            values.append(to_json(v) if c in _JSON and v is not None else v)
        extra = {k: v for k, v in r.items() if k not in _KNOWN}
        values.append(to_json(extra) if extra else None)
        params.append(tuple(values))
    conn.executemany(_INSERT, params)
    return len(params)


def _decode(names: list[str], row: tuple[Any, ...]) -> dict[str, Any]:
    d = dict(zip(names, row))
    for c in _JSON:
        d[c] = from_json(d.get(c), [])
    for k, v in (from_json(d.pop("extra", None), {}) or {}).items():
        d.setdefault(k, v)
    return d


class DnsQueryRepository:
    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool

    def add(self, session_id: int, rows: Iterable[dict[str, Any]]) -> int:
        with self.pool.transaction() as conn:
            return add_queries(conn, session_id, rows)

    def list(self, session_id: int, limit: int = 100, query_filter: str = "") -> list[dict[str, Any]]:
        """Newest first; ``query_filter`` keeps names containing the text."""
        sql = f"SELECT {', '.join(DNS_COLUMNS)}, extra FROM dns_queries WHERE session_id = ?"
        params: list[Any] = [session_id]
        if query_filter:
            sql += " AND query LIKE ? ESCAPE '\\'"
            params.append(like_pattern(query_filter))
        sql += " ORDER BY ts DESC, id DESC LIMIT ?"
        params.append(int(limit))
        with self.pool.reader() as conn:
            cur = conn.execute(sql, params)
            names = [d[0] for d in cur.description]
            return [_decode(names, r) for r in cur.fetchall()]

    def iter_all(self, session_id: int, batch: int = 1000) -> Iterator[dict[str, Any]]:
        """Every transaction in time order, read in pages."""
        last_id = -1
        while True:
            with self.pool.reader() as conn:
                cur = conn.execute(
                    f"SELECT id, {', '.join(DNS_COLUMNS)}, extra FROM dns_queries "
                    "WHERE session_id = ? AND id > ? ORDER BY id LIMIT ?",
                    (session_id, last_id, batch))
                names = [d[0] for d in cur.description]
                rows = cur.fetchall()
            if not rows:
                return
            last_id = rows[-1][0]
            for r in rows:
                d = _decode(names, r)
                d.pop("id", None)
                yield d
