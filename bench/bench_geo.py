"""Cost of resolution lookups: the offline path (µs per address) and the cached path.

    .venv/bin/python -m bench.bench_geo [--n 20000]

Reports: bundled data load time; OfflineGeo.lookup on distinct public addresses (IPv4 and
IPv6, no cache); GeoResolver.lookup on cache hits; scope_of on cached addresses;
Enricher.endpoint (geo + passive names) on hits. Offline only: nothing is sent.
"""
from __future__ import annotations

import argparse
import random
import time

from geo.dns_resolver import DNSResolver
from geo.enrich import Enricher
from geo.offline import OfflineGeo, _bundled
from geo.resolver import GeoResolver
from geo.scopes import scope_of


def _per_call_us(fn, items: list[str]) -> float:  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    for x in items:
        fn(x)
    return (time.perf_counter() - t) / len(items) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    n = ap.parse_args().n
    rnd = random.Random(7)
    v4 = [f"{rnd.choice([1, 8, 23, 31, 45, 77, 91, 104, 140, 151, 185, 213])}.{rnd.randrange(256)}."
          f"{rnd.randrange(256)}.{rnd.randrange(1, 255)}" for _ in range(n)]
    v6 = [f"2a0{rnd.randrange(10)}:{rnd.randrange(65536):x}::{rnd.randrange(65536):x}" for _ in range(n // 4)]

    t = time.perf_counter()
    _bundled()
    print(f"bundled data load:            {(time.perf_counter() - t) * 1e3:8.1f} ms (once per process)")
    off = OfflineGeo()
    scope_of.cache_clear()
    print(f"offline lookup IPv4 (cold):   {_per_call_us(off.lookup, v4):8.2f} µs/address")
    print(f"offline lookup IPv6 (cold):   {_per_call_us(off.lookup, v6):8.2f} µs/address")
    print(f"scope_of (memoised):          {_per_call_us(scope_of, v4):8.2f} µs/address")
    geo = GeoResolver(online=False, offline=off, cache_size=2 * n)
    for ip in v4:
        geo.lookup(ip)
    print(f"GeoResolver.lookup (hit):     {_per_call_us(geo.lookup, v4):8.2f} µs/address")
    names = {ip: [f"host{i}.example{i % 50}.co.uk"] for i, ip in enumerate(v4)}
    e = Enricher(geo, DNSResolver(passive_lookup=lambda ip: names.get(ip, []), rdns=False), None)
    for ip in v4:
        e.endpoint(ip)
    print(f"Enricher.endpoint (hits):     {_per_call_us(e.endpoint, v4):8.2f} µs/address")
    e.close()


if __name__ == "__main__":
    main()
