"""Persistent geo cache: lookups survive a restart for ``DB_GEO_CACHE_TTL`` (24 h)."""
from __future__ import annotations

import sqlite3
import time
from typing import Any, Iterable

from config import DB_GEO_CACHE_TTL
from db.connection import ConnectionPool
from db.repositories._codec import from_json, to_json

_SAVE = ("INSERT INTO geo_cache (ip, data, cached_at) VALUES (?, ?, ?) "
         "ON CONFLICT(ip) DO UPDATE SET data = excluded.data, cached_at = excluded.cached_at")


def save_geo(conn: sqlite3.Connection, items: Iterable[tuple[str, dict[str, Any], float]]) -> int:
    """Store (ip, value, stored_at) items inside the caller's transaction."""
    params = [(ip, to_json(value), ts) for ip, value, ts in items]
    conn.executemany(_SAVE, params)
    return len(params)


class GeoRepository:
    """``load_all`` at start fills the in-memory cache; ``save`` stores each fresh lookup."""

    def __init__(self, pool: ConnectionPool, ttl_s: float = DB_GEO_CACHE_TTL) -> None:
        self.pool = pool
        self.ttl_s = ttl_s

    def load_all(self, max_age_s: float | None = None) -> list[tuple[str, dict[str, Any], float]]:
        """Entries younger than ``max_age_s`` (default: the TTL) as (ip, value, stored_at)."""
        cutoff = time.time() - (self.ttl_s if max_age_s is None else max_age_s)
        with self.pool.reader() as conn:
            rows = conn.execute("SELECT ip, data, cached_at FROM geo_cache WHERE cached_at >= ?",
                                (cutoff,)).fetchall()
        out = []
        for ip, data, ts in rows:
            value = from_json(data)
            if isinstance(value, dict):
                out.append((ip, value, float(ts)))
        return out

    def save(self, key: str, value: dict[str, Any], stored_at: float | None = None) -> None:
        self.save_many([(key, value)], stored_at)

    def save_many(self, items: Iterable[tuple[str, dict[str, Any]]],
                  stored_at: float | None = None) -> int:
        ts = time.time() if stored_at is None else stored_at
        with self.pool.transaction() as conn:
            return save_geo(conn, ((k, v, ts) for k, v in items))

    def purge_expired(self, max_age_s: float | None = None) -> int:
        cutoff = time.time() - (self.ttl_s if max_age_s is None else max_age_s)
        with self.pool.transaction() as conn:
            return int(conn.execute("DELETE FROM geo_cache WHERE cached_at < ?", (cutoff,)).rowcount)
