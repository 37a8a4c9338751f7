"""Geo lookups that never wait: cache, then offline data, then (if asked) ip-api.com.

:meth:`GeoResolver.lookup` answers at once. When online, a public address not yet asked
about is queued (bounded) for a background thread that talks to ip-api.com within its
published limits (45 single / 15 batch requests per minute; ``X-Rl``/``X-Ttl`` headers
and 429 answers are obeyed) and merges city/region/coordinates/ISP into the cached answer.
"""
from __future__ import annotations

import json
import queue
import threading
import time
from collections import deque
from dataclasses import replace
from typing import Any, Callable, Sequence

from config import (DB_GEO_CACHE_TTL, GEO_API_BATCH_URL, GEO_API_RATE_LIMIT, GEO_API_URL,
                    GEO_CACHE_SIZE, GEO_CACHE_TTL)
from geo.cache import CacheStats, CacheStore, ResolverCache
from geo.http_client import HttpClient
from geo.offline import OfflineGeo
from geo.own_traffic import OwnTraffic
from geo.ratelimit import RateLimiter
from geo.records import GeoInfo
from geo.scopes import PUBLIC, scope_of
from utils.logger import get_logger

log = get_logger(__name__)

BATCH_RATE_LIMIT = 15        # ip-api.com batch requests per minute
BATCH_MAX = 100              # addresses per batch request (ip-api.com maximum)
_STOP = ""                   # queue sentinel (never a valid address)


def parse_as(text: Any) -> tuple[int | None, str | None]:
    """ip-api's ``as`` field, "AS15169 Google LLC" -> (15169, "Google LLC")."""
    if not isinstance(text, str) or not text.startswith("AS"):
        return None, None
    num, _, org = text[2:].partition(" ")
    return (int(num) if num.isdigit() else None), (org.strip() or None)


def _str(v: Any) -> str | None:
    return v if isinstance(v, str) and v else None


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def merge_ip_api(base: GeoInfo, d: dict[str, Any]) -> GeoInfo:
    """The offline answer with what ip-api adds (its fields win where it has them)."""
    asn, as_org = parse_as(d.get("as"))
    return replace(
        base,
        country=_str(d.get("country")) or base.country,
        country_code=_str(d.get("countryCode")) or base.country_code,
        region=_str(d.get("regionName")) or base.region,
        city=_str(d.get("city")) or base.city,
        lat=_num(d.get("lat")) if _num(d.get("lat")) is not None else base.lat,
        lon=_num(d.get("lon")) if _num(d.get("lon")) is not None else base.lon,
        asn=asn if asn is not None else base.asn,
        as_org=as_org or _str(d.get("org")) or base.as_org,
        isp=_str(d.get("isp")) or base.isp,
        source="ip-api",
    )


class GeoResolver:
    """Instant geo answers; optional background enrichment from ip-api.com.

    Args:
        online: query ip-api.com (``GEO_ONLINE``); off means nothing is ever sent.
        api_url: single-address URL with ``{ip}`` (``GEO_API_URL``).
        batch_url: batch URL taking a JSON list by POST (``GEO_API_BATCH_URL``); "" = never batch.
        rate_per_min: single requests per window (``GEO_API_RATE_LIMIT``).
        store: persistence for online answers (geo_cache repository), see :mod:`geo.cache`.
        mmdb_paths: MaxMind .mmdb files (``GEO_MMDB_PATHS``).
        cache_size / cache_ttl: in-memory cache (``GEO_CACHE_SIZE`` / ``GEO_CACHE_TTL``).
        persist_ttl: age up to which stored answers are reused (``DB_GEO_CACHE_TTL``).
        batch_rate_per_min: batch requests per window.
        rate_window: the limit's window in seconds (60 for ip-api; tests shrink it).
        queue_size: addresses waiting for the online source; more are dropped and retried later.
        batch_min: send a batch once this many addresses are waiting.
        batch_wait: seconds the worker waits for more addresses to fill a batch.
        timeout: HTTP timeout in seconds.
        offline: an :class:`OfflineGeo` to share (else one is made from ``mmdb_paths``).
    """

    def __init__(self, online: bool = False, api_url: str = GEO_API_URL,
                 batch_url: str = GEO_API_BATCH_URL, rate_per_min: int = GEO_API_RATE_LIMIT,
                 store: CacheStore | None = None, mmdb_paths: Sequence[str] = (),
                 cache_size: int = GEO_CACHE_SIZE, cache_ttl: float = GEO_CACHE_TTL,
                 persist_ttl: float = DB_GEO_CACHE_TTL, batch_rate_per_min: int = BATCH_RATE_LIMIT,
                 rate_window: float = 60.0, queue_size: int = 1024, batch_min: int = 3,
                 batch_wait: float = 0.2, timeout: float = 5.0,
                 offline: OfflineGeo | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.online = online
        self.api_url = api_url
        self.batch_url = batch_url
        self.offline = offline if offline is not None else OfflineGeo(mmdb_paths)
        self.cache: ResolverCache[GeoInfo] = ResolverCache(
            "geo", cache_size, cache_ttl, store=store, encode=GeoInfo.to_dict,
            decode=GeoInfo.from_dict, clock=clock)
        if store is not None:
            self.cache.load_from_store(persist_ttl)
        self.own = OwnTraffic()
        self.single_limit = RateLimiter(rate_per_min, rate_window, clock)
        self.batch_limit = RateLimiter(batch_rate_per_min, rate_window, clock)
        self._batch_min = max(2, batch_min)
        self._batch_wait = batch_wait
        self._retry_ttl = min(60.0, float(cache_ttl))   # offline answer kept this long if not queued
        self._queue: queue.Queue[str] = queue.Queue(maxsize=queue_size)
        self._pending: set[str] = set()
        self._idle = threading.Condition()
        self._stop = threading.Event()
        self._http = HttpClient(self.own, timeout)
        self.requests = 0
        self.rate_limited = 0
        self.failures = 0
        self.dropped = 0
        self._thread: threading.Thread | None = None
        if online:
            self._thread = threading.Thread(target=self._run, name="geo-online", daemon=True)
            self._thread.start()

    # ---- the instant path ---------------------------------------------------------------------
    def lookup(self, ip: str) -> GeoInfo:
        """What is known about ``ip`` now; schedules the online lookup if it helps."""
        info = self.cache.get(ip)
        if info is not None:
            return info
        scope = scope_of(ip)
        info = self.offline.lookup(ip, scope)
        if self.online and scope == PUBLIC and not self._stop.is_set():
            if self._enqueue(ip):
                self.cache.put(ip, info)
            else:   # queue full: keep the offline answer briefly, then ask again
                self.cache.put(ip, info, ttl=self._retry_ttl)
        else:
            self.cache.put(ip, info)
        return info

    def _enqueue(self, ip: str) -> bool:
        with self._idle:
            if ip in self._pending:
                return True
            try:
                self._queue.put_nowait(ip)
            except queue.Full:
                self.dropped += 1
                return False
            self._pending.add(ip)
            return True

    # ---- the background path ------------------------------------------------------------------
    def _run(self) -> None:
        retry: deque[str] = deque()
        while not self._stop.is_set():
            batch = self._gather(retry)
            if not batch:
                continue
            try:
                if self.batch_url and len(batch) >= self._batch_min:
                    self._send_batch(batch, retry)
                else:
                    for i, ip in enumerate(batch):
                        if not self._send_single(ip):
                            retry.extend(batch[i:])
                            break
            except Exception:  # boundary: the worker must survive any bad answer
                log.exception("geo online worker error")
                self._done(batch)

    def _gather(self, retry: deque[str]) -> list[str]:
        batch: list[str] = []
        while retry and len(batch) < BATCH_MAX:
            batch.append(retry.popleft())
        if not batch:
            try:
                first = self._queue.get(timeout=0.5)
            except queue.Empty:
                return []
            if first == _STOP:
                return []
            batch.append(first)
            deadline = time.monotonic() + self._batch_wait
        else:
            deadline = time.monotonic()
        while len(batch) < BATCH_MAX:
            left = deadline - time.monotonic()
            try:
                ip = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if ip == _STOP:
                break
            batch.append(ip)
        return batch

    def _wait(self, limiter: RateLimiter) -> bool:
        """Sleep until ``limiter`` allows a request; False if closing."""
        while True:
            d = limiter.delay()
            if d <= 0:
                return not self._stop.is_set()
            if self._stop.wait(d):
                return False

    def _send_single(self, ip: str) -> bool:
        """One GET; False means "rate-limited, try this address again later"."""
        if not self._wait(self.single_limit):
            return False
        self.single_limit.record()
        self.requests += 1
        try:
            status, headers, body = self._http.request("GET", self.api_url.format(ip=ip))
        except OSError as exc:
            self._failed(exc)
            self._done([ip])
            return True
        self.single_limit.feedback(headers.get("x-rl"), headers.get("x-ttl"), status)
        if status == 429:
            self.rate_limited += 1
            return False
        if status == 200:
            self._apply([self._json(body)])
        else:
            log.warning("ip-api answered HTTP %s", status)
        self._done([ip])
        return True

    def _send_batch(self, batch: list[str], retry: deque[str]) -> None:
        if not self._wait(self.batch_limit):
            retry.extend(batch)
            return
        self.batch_limit.record()
        self.requests += 1
        try:
            status, headers, body = self._http.request(
                "POST", self.batch_url, body=json.dumps(batch).encode(),
                headers={"Content-Type": "application/json"})
        except OSError as exc:
            self._failed(exc)
            self._done(batch)
            return
        self.batch_limit.feedback(headers.get("x-rl"), headers.get("x-ttl"), status)
        if status == 429:
            self.rate_limited += 1
            retry.extend(batch)
            return
        if status == 200:
            answers = self._json(body)
            self._apply(answers if isinstance(answers, list) else [])
        else:
            log.warning("ip-api batch answered HTTP %s", status)
        self._done(batch)

    @staticmethod
    def _json(body: bytes) -> Any:
        try:
            return json.loads(body)
        except ValueError:
            log.warning("ip-api sent a body that is not JSON")
            return None

    def _apply(self, answers: list[Any]) -> None:
        for d in answers:
            if not isinstance(d, dict) or d.get("status") != "success":
                continue
            ip = d.get("query")
            if not isinstance(ip, str):
                continue
            base = self.cache.peek(ip) or self.offline.lookup(ip)
            self.cache.put(ip, merge_ip_api(base, d), persist=True)

    def _failed(self, exc: OSError) -> None:
        self.failures += 1
        log.warning("ip-api unreachable: %s", exc)
        # Back off so an unreachable service costs one attempt per window, not one per address.
        self.single_limit.pause(self.single_limit.window / 4)
        self.batch_limit.pause(self.batch_limit.window / 4)

    def _done(self, ips: list[str]) -> None:
        with self._idle:
            self._pending.difference_update(ips)
            if not self._pending:
                self._idle.notify_all()

    # ---- control ------------------------------------------------------------------------------
    def drain(self, timeout: float) -> bool:
        """Wait until every queued online lookup is answered (for exports at the end of a
        file run); True if idle."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._pending, timeout)

    def own_traffic(self) -> set[tuple[str, int]]:
        """(server ip, port) of every API server this resolver connected to."""
        return self.own.remotes()

    def own_local_ports(self) -> set[int]:
        return self.own.local_ports()

    def stats(self) -> CacheStats:
        return self.cache.stats()

    def counters(self) -> dict[str, int]:
        return {"requests": self.requests, "rate_limited": self.rate_limited,
                "server_pauses": self.single_limit.server_pauses + self.batch_limit.server_pauses,
                "failures": self.failures, "dropped": self.dropped, "queued": self._queue.qsize()}

    def close(self) -> None:
        self._stop.set()
        try:
            self._queue.put_nowait(_STOP)
        except queue.Full:
            pass
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        self._http.close()
        with self._idle:
            self._pending.clear()
            self._idle.notify_all()
