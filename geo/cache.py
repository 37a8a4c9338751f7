"""LRU + TTL caches with hit/miss counters, optionally persisted through a store.

cachetools caches are not thread-safe, and ours are read by the snapshot builder while
background workers fill them, so every access goes through one lock. A store is any
object with ``load_all(max_age_s) -> list[(key, dict, stored_at)]`` and
``save(key, value: dict)`` (db/repositories/geo_repo.py and dns_repo.py provide them).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Generic, Hashable, Protocol, TypeVar

from cachetools import TLRUCache

from utils.logger import get_logger

log = get_logger(__name__)

V = TypeVar("V")


class CacheStore(Protocol):
    def load_all(self, max_age_s: float) -> list[tuple[Any, dict[str, Any], float]]: ...

    def save(self, key: Any, value: dict[str, Any]) -> None: ...


@dataclass(frozen=True, slots=True)
class CacheStats:
    """What the Stats panel shows for one cache."""

    name: str
    hits: int
    misses: int
    size: int
    maxsize: int

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


class _Entry(Generic[V]):
    __slots__ = ("value", "expires")

    def __init__(self, value: V, expires: float) -> None:
        self.value = value
        self.expires = expires


def _ttu(_key: Any, entry: _Entry[Any], _now: float) -> float:
    return entry.expires


class ResolverCache(Generic[V]):
    """A thread-safe LRU cache whose entries expire ``ttl`` seconds after being stored.

    Args:
        name: label for :meth:`stats`.
        maxsize: entries kept; the least recently used goes first.
        ttl: seconds an entry lives in memory.
        store: optional persistence; entries put with ``persist=True`` are saved to it.
        encode / decode: value <-> dict for the store.
        clock: monotonic clock (tests pass a fake one).
    """

    def __init__(self, name: str, maxsize: int, ttl: float, store: CacheStore | None = None,
                 encode: Callable[[V], dict[str, Any]] | None = None,
                 decode: Callable[[dict[str, Any]], V] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.ttl = float(ttl)
        self._clock = clock
        self._cache: TLRUCache[Hashable, _Entry[V]] = TLRUCache(maxsize=maxsize, ttu=_ttu, timer=clock)
        self._lock = threading.Lock()
        self._store = store
        self._encode = encode
        self._decode = decode
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> V | None:
        with self._lock:
            entry = self._cache.get(key)
            if entry is None:
                self.misses += 1
                return None
            self.hits += 1
            return entry.value

    def peek(self, key: Hashable) -> V | None:
        """Like :meth:`get` without counting (for internal re-checks)."""
        with self._lock:
            entry = self._cache.get(key)
            return None if entry is None else entry.value

    def put(self, key: Hashable, value: V, persist: bool = False, ttl: float | None = None) -> None:
        expires = self._clock() + (self.ttl if ttl is None else ttl)
        with self._lock:
            self._cache[key] = _Entry(value, expires)
        if persist and self._store is not None and self._encode is not None:
            try:
                self._store.save(key, self._encode(value))
            except Exception as exc:  # boundary: a failing database must not stop resolution
                log.warning("%s cache: saving to store failed: %s", self.name, exc)

    def attach_store(self, store: Any, max_age_s: float) -> int:
        """Persist from now on through ``store`` and warm the cache from it (the database
        opens after the resolvers are built)."""
        self._store = store
        return self.load_from_store(max_age_s)

    def load_from_store(self, max_age_s: float) -> int:
        """Warm the cache from the store: an entry lives until its stored age reaches
        ``max_age_s``, and never longer than ``ttl`` from now."""
        if self._store is None or self._decode is None:
            return 0
        try:
            rows = self._store.load_all(max_age_s)
        except Exception as exc:  # boundary: a damaged database only means a cold cache
            log.warning("%s cache: loading from store failed: %s", self.name, exc)
            return 0
        now_wall, now = time.time(), self._clock()
        loaded = 0
        with self._lock:
            for key, data, stored_at in rows:
                left = min(self.ttl, max_age_s - (now_wall - stored_at))
                if left <= 0:
                    continue
                try:
                    value = self._decode(data)
                except (TypeError, ValueError, KeyError) as exc:
                    log.warning("%s cache: skipping unreadable stored entry: %s", self.name, exc)
                    continue
                self._cache[key] = _Entry(value, now + left)
                loaded += 1
        return loaded

    def __len__(self) -> int:
        with self._lock:
            self._cache.expire()
            return len(self._cache)

    def stats(self) -> CacheStats:
        with self._lock:
            self._cache.expire()
            return CacheStats(self.name, self.hits, self.misses, len(self._cache), int(self._cache.maxsize))
