"""Devices seen on the network and who owns the addresses (ASN / registry data).

Both outlive sessions: a device or an owner learned yesterday is known today.
"""
from __future__ import annotations

import sqlite3
import time
from typing import Any, Iterable

from db.connection import ConnectionPool
from db.repositories._codec import from_json, rows_as_dicts, to_json

DEVICE_COLUMNS = ("ip", "mac", "device_type", "vendor", "hostname", "os", "first_seen", "last_seen")
_DEVICE_KNOWN = frozenset(DEVICE_COLUMNS)
_DEVICE_UPSERT = (
    f"INSERT INTO devices ({', '.join(DEVICE_COLUMNS)}, extra) "
    f"VALUES ({', '.join('?' * (len(DEVICE_COLUMNS) + 1))}) ON CONFLICT(ip) DO UPDATE SET "
    "mac = COALESCE(excluded.mac, mac), device_type = COALESCE(excluded.device_type, device_type), "
    "vendor = COALESCE(excluded.vendor, vendor), hostname = COALESCE(excluded.hostname, hostname), "
    "os = COALESCE(excluded.os, os), first_seen = MIN(COALESCE(first_seen, excluded.first_seen), "
    "COALESCE(excluded.first_seen, first_seen)), last_seen = MAX(COALESCE(last_seen, 0), "
    "COALESCE(excluded.last_seen, 0)), extra = COALESCE(excluded.extra, extra)"
)
OWNER_COLUMNS = ("asn", "as_name", "org", "isp", "network", "country", "source")
_OWNER_UPSERT = (
    f"INSERT INTO node_ownership (ip, {', '.join(OWNER_COLUMNS)}, updated_at) "
    f"VALUES ({', '.join('?' * (len(OWNER_COLUMNS) + 2))}) ON CONFLICT(ip) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in OWNER_COLUMNS + ("updated_at",))
)


def upsert_devices(conn: sqlite3.Connection, rows: Iterable[dict[str, Any]]) -> int:
    """Merge device facts by IP: new non-null facts win, the seen-window widens."""
    params = []
    for r in rows:
        extra = {k: v for k, v in r.items() if k not in _DEVICE_KNOWN}
        params.append((*(r.get(c) for c in DEVICE_COLUMNS), to_json(extra) if extra else None))
    conn.executemany(_DEVICE_UPSERT, params)
    return len(params)


def save_ownership(conn: sqlite3.Connection, items: Iterable[tuple[str, dict[str, Any], float]]) -> int:
    params = [(ip, *(v.get(c) for c in OWNER_COLUMNS), ts) for ip, v, ts in items]
    conn.executemany(_OWNER_UPSERT, params)
    return len(params)


class DeviceRepository:
    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool

    def upsert(self, rows: Iterable[dict[str, Any]]) -> int:
        with self.pool.transaction() as conn:
            return upsert_devices(conn, rows)

    def list(self, device_type: str | None = None) -> list[dict[str, Any]]:
        sql = f"SELECT {', '.join(DEVICE_COLUMNS)}, extra FROM devices"
        params: tuple[Any, ...] = ()
        if device_type is not None:
            sql += " WHERE device_type = ?"
            params = (device_type,)
        with self.pool.reader() as conn:
            rows = rows_as_dicts(conn.execute(sql + " ORDER BY last_seen DESC, ip", params))
        for row in rows:
            for k, v in (from_json(row.pop("extra"), {}) or {}).items():
                row.setdefault(k, v)
        return rows

    def save_owner(self, ip: str, value: dict[str, Any], stored_at: float | None = None) -> None:
        with self.pool.transaction() as conn:
            save_ownership(conn, [(ip, value, time.time() if stored_at is None else stored_at)])

    def load_owners(self, max_age_s: float) -> list[tuple[str, dict[str, Any], float]]:
        """Ownership entries younger than ``max_age_s`` as (ip, value, stored_at)."""
        cutoff = time.time() - max_age_s
        with self.pool.reader() as conn:
            rows = rows_as_dicts(conn.execute(
                f"SELECT ip, {', '.join(OWNER_COLUMNS)}, updated_at FROM node_ownership "
                "WHERE updated_at >= ?", (cutoff,)))
        return [(r.pop("ip"), r, float(r.pop("updated_at"))) for r in rows]
