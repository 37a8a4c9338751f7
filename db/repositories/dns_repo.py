"""Persistent name caches: reverse DNS per IP (``DB_DNS_CACHE_TTL``, 1 h) and NS lookups.

A value is the resolver's dict; ``fqdn``, ``hostname`` and ``domain`` get their own columns
(the exports and panels search them), anything else is kept in the ``data`` JSON column.
"""
from __future__ import annotations

import sqlite3
import time
from typing import Any, Iterable

from config import DB_DNS_CACHE_TTL
from db.connection import ConnectionPool
from db.repositories._codec import from_json, to_json

_NAMED = ("fqdn", "hostname", "domain")
_SAVE = ("INSERT INTO dns_cache (ip, fqdn, hostname, domain, data, cached_at) "
         "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(ip) DO UPDATE SET fqdn = excluded.fqdn, "
         "hostname = excluded.hostname, domain = excluded.domain, data = excluded.data, "
         "cached_at = excluded.cached_at")
_SAVE_NS = ("INSERT INTO ns_lookup (domain, nameservers, cached_at) VALUES (?, ?, ?) "
            "ON CONFLICT(domain) DO UPDATE SET nameservers = excluded.nameservers, "
            "cached_at = excluded.cached_at")


def save_names(conn: sqlite3.Connection, items: Iterable[tuple[str, dict[str, Any], float]]) -> int:
    """Store (ip, value, stored_at) items inside the caller's transaction."""
    params = []
    for ip, value, ts in items:
        rest = {k: v for k, v in value.items() if k not in _NAMED}
        params.append((ip, value.get("fqdn"), value.get("hostname"), value.get("domain"),
                       to_json(rest) if rest else None, ts))
    conn.executemany(_SAVE, params)
    return len(params)


class DnsRepository:
    def __init__(self, pool: ConnectionPool, ttl_s: float = DB_DNS_CACHE_TTL) -> None:
        self.pool = pool
        self.ttl_s = ttl_s

    def load_all(self, max_age_s: float | None = None) -> list[tuple[str, dict[str, Any], float]]:
        """Entries younger than ``max_age_s`` (default: the TTL) as (ip, value, stored_at)."""
        cutoff = time.time() - (self.ttl_s if max_age_s is None else max_age_s)
        with self.pool.reader() as conn:
            rows = conn.execute("SELECT ip, fqdn, hostname, domain, data, cached_at FROM dns_cache "
                                "WHERE cached_at >= ?", (cutoff,)).fetchall()
        out = []
        for ip, fqdn, hostname, domain, data, ts in rows:
            value: dict[str, Any] = {"fqdn": fqdn, "hostname": hostname, "domain": domain}
            rest = from_json(data, {})
            if isinstance(rest, dict):
                value.update(rest)
            out.append((ip, value, float(ts)))
        return out

    def save(self, key: str, value: dict[str, Any], stored_at: float | None = None) -> None:
        self.save_many([(key, value)], stored_at)

    def save_many(self, items: Iterable[tuple[str, dict[str, Any]]],
                  stored_at: float | None = None) -> int:
        ts = time.time() if stored_at is None else stored_at
        with self.pool.transaction() as conn:
            return save_names(conn, ((k, v, ts) for k, v in items))

    def purge_expired(self, max_age_s: float | None = None) -> int:
        cutoff = time.time() - (self.ttl_s if max_age_s is None else max_age_s)
        with self.pool.transaction() as conn:
            return int(conn.execute("DELETE FROM dns_cache WHERE cached_at < ?", (cutoff,)).rowcount)

    # ---- NS records ---------------------------------------------------------------------------
    def save_nameservers(self, domain: str, nameservers: list[str],
                         stored_at: float | None = None) -> None:
        ts = time.time() if stored_at is None else stored_at
        with self.pool.transaction() as conn:
            conn.execute(_SAVE_NS, (domain, to_json(list(nameservers)), ts))

    def load_nameservers(self, max_age_s: float | None = None) -> dict[str, list[str]]:
        cutoff = time.time() - (self.ttl_s if max_age_s is None else max_age_s)
        with self.pool.reader() as conn:
            rows = conn.execute("SELECT domain, nameservers FROM ns_lookup WHERE cached_at >= ?",
                                (cutoff,)).fetchall()
        return {d: list(from_json(ns, []) or []) for d, ns in rows}
