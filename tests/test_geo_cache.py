"""Resolver caches: LRU + TTL, counters, persistence through a store (a real sqlite file)."""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from geo.cache import ResolverCache
from geo.records import GeoInfo, HostInfo
from geo.resolver import GeoResolver


class SqliteStore:
    """The store contract (load_all/save) on a sqlite file, as the db repositories provide it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE IF NOT EXISTS c (k TEXT PRIMARY KEY, v TEXT, stored_at REAL)")

    def save(self, key: Any, value: dict[str, Any], stored_at: float | None = None) -> None:
        with sqlite3.connect(self.path) as db:
            db.execute("INSERT OR REPLACE INTO c VALUES (?, ?, ?)",
                       (key, json.dumps(value), time.time() if stored_at is None else stored_at))

    def load_all(self, max_age_s: float) -> list[tuple[Any, dict[str, Any], float]]:
        with sqlite3.connect(self.path) as db:
            rows = db.execute("SELECT k, v, stored_at FROM c WHERE stored_at >= ?",
                              (time.time() - max_age_s,)).fetchall()
        return [(k, json.loads(v), t) for k, v, t in rows]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_ttl_expiry_lru_eviction_and_counters() -> None:
    clock = FakeClock()
    c: ResolverCache[str] = ResolverCache("t", maxsize=2, ttl=10, clock=clock)
    c.put("a", "A")
    c.put("b", "B")
    assert c.get("a") == "A"          # a is now most recently used
    c.put("c", "C")                   # evicts b, the least recently used
    assert c.get("b") is None and c.get("c") == "C"
    clock.now += 10.5
    assert c.get("a") is None and c.get("c") is None
    s = c.stats()
    assert (s.hits, s.misses, s.size, s.maxsize) == (2, 3, 0, 2)
    assert abs(s.hit_rate - 0.4) < 1e-9
    c.put("short", "S", ttl=1)
    clock.now += 2
    assert c.peek("short") is None


def test_persisted_entries_survive_a_restart_with_their_remaining_life(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "cache.db")
    c1: ResolverCache[GeoInfo] = ResolverCache("geo", 100, 3600, store=store,
                                               encode=GeoInfo.to_dict, decode=GeoInfo.from_dict)
    info = GeoInfo(ip="8.8.8.8", country="United States", country_code="US", city="Mountain View",
                   asn=15169, as_org="Google LLC", source="ip-api")
    c1.put("8.8.8.8", info, persist=True)
    c1.put("9.9.9.9", GeoInfo(ip="9.9.9.9"))            # not persisted
    store.save("1.1.1.1", GeoInfo(ip="1.1.1.1", city="Sydney").to_dict(),
               stored_at=time.time() - 86400 * 2)        # older than the store's max age
    store.save("5.5.5.5", {"ip": "5.5.5.5", "lat": "x"} | {"bogus": 1})  # unknown keys ignored

    clock = FakeClock()
    c2: ResolverCache[GeoInfo] = ResolverCache("geo", 100, 3600, store=store,
                                               encode=GeoInfo.to_dict, decode=GeoInfo.from_dict,
                                               clock=clock)
    assert c2.load_from_store(86400) == 2
    assert c2.get("8.8.8.8") == info
    assert c2.get("9.9.9.9") is None and c2.get("1.1.1.1") is None
    clock.now += 3601                                     # capped by the in-memory TTL
    assert c2.get("8.8.8.8") is None


def test_near_expiry_stored_entry_keeps_only_its_remaining_life(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "dns.db")
    host = HostInfo(fqdn="dns.google", hostname="dns", domain="dns.google",
                    display_name="dns.google", source="ptr", raw=b"dns.google")
    store.save("8.8.8.8", host.to_dict(), stored_at=time.time() - 3500)
    clock = FakeClock()
    c: ResolverCache[HostInfo] = ResolverCache("dns", 10, 3600, store=store, encode=HostInfo.to_dict,
                                               decode=HostInfo.from_dict, clock=clock)
    assert c.load_from_store(3600) == 1
    assert c.get("8.8.8.8") == host                       # raw bytes round-trip too
    clock.now += 200
    assert c.get("8.8.8.8") is None


class BrokenStore:
    def load_all(self, max_age_s: float) -> list[tuple[Any, dict[str, Any], float]]:
        raise sqlite3.OperationalError("database disk image is malformed")

    def save(self, key: Any, value: dict[str, Any]) -> None:
        raise sqlite3.OperationalError("disk I/O error")


def test_a_failing_store_only_means_a_cold_cache() -> None:
    c: ResolverCache[GeoInfo] = ResolverCache("geo", 10, 60, store=BrokenStore(),
                                              encode=GeoInfo.to_dict, decode=GeoInfo.from_dict)
    assert c.load_from_store(60) == 0
    c.put("8.8.8.8", GeoInfo(ip="8.8.8.8"), persist=True)
    assert c.get("8.8.8.8") == GeoInfo(ip="8.8.8.8")


def test_geo_resolver_starts_warm_from_its_store(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "geo.db")
    store.save("8.8.8.8", GeoInfo(ip="8.8.8.8", country_code="US", city="Mountain View",
                                  source="ip-api").to_dict())
    r = GeoResolver(online=False, store=store)
    try:
        g = r.lookup("8.8.8.8")
        assert (g.city, g.source) == ("Mountain View", "ip-api")
        assert r.stats().hits == 1
    finally:
        r.close()


def test_counters_are_consistent_under_threads() -> None:
    c: ResolverCache[int] = ResolverCache("t", 1000, 60)
    for i in range(100):
        c.put(i, i)

    def work() -> None:
        for i in range(2000):
            c.get(i % 200)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    s = c.stats()
    assert s.hits + s.misses == 8000 and s.hits == 4000
