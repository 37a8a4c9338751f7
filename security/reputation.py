"""Address reputation: offline blocklists in a radix tree, and the AbuseIPDB check API.

Offline lists are plain text, one IPv4/IPv6 address or CIDR per line, with ``#`` or ``;``
comments (FireHOL ``.netset``/``.ipset``, Spamhaus DROP ``1.2.3.0/24 ; SBL123``). Every file in
the folder is loaded into one pytricia tree (longest-prefix match over both families), so a
lookup costs about a microsecond whatever the list size.

Online checks go through :class:`AbuseIPDBClient` (cached, rate-limited) and, on the packet
path, through :class:`ReputationService`, whose worker thread does the HTTP so capture never
waits on the network.
"""
from __future__ import annotations

import ipaddress
import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

import pytricia
from cachetools import TTLCache

from config import REPUTATION_API_URL
from utils.logger import get_logger

if TYPE_CHECKING:
    import requests

log = get_logger(__name__)


class BlockList:
    """Longest-prefix lookup over many IP/CIDR lists; values are the list (file) names."""

    def __init__(self) -> None:
        self._tree = pytricia.PyTricia(128)
        self.sources: dict[str, int] = {}
        self.rejected = 0

    def __len__(self) -> int:
        return len(self._tree)

    def add(self, prefix: str, source: str = "manual") -> bool:
        """Insert one address or CIDR; False (and counted) if it is not one."""
        if self._insert(prefix, source):
            self.sources[source] = self.sources.get(source, 0) + 1
            return True
        return False

    def _insert(self, prefix: str, source: str) -> bool:
        slash = prefix.find("/")
        if slash >= 0:
            bits = prefix[slash + 1:]
            if not bits.isdigit() or int(bits) > (128 if ":" in prefix else 32):
                self.rejected += 1
                return False
        try:
            self._tree[prefix] = source
        except (ValueError, KeyError):
            self.rejected += 1
            return False
        return True

    def load_lines(self, lines: Iterable[str], source: str) -> int:
        """Load one list's lines; returns how many entries were accepted."""
        added = 0
        insert = self._insert
        for line in lines:
            if "#" in line or ";" in line:
                line = line.split("#", 1)[0].split(";", 1)[0]
            entry = line.strip()
            if not entry:
                continue
            if " " in entry or "\t" in entry:
                # Some lists put extra columns after the prefix; the first one is the address.
                entry = entry.split(None, 1)[0]
            if insert(entry, source):
                added += 1
        if added:
            self.sources[source] = self.sources.get(source, 0) + added
        return added

    def load_file(self, path: str | os.PathLike[str]) -> int:
        p = Path(path)
        with p.open("r", encoding="utf-8", errors="replace") as fh:
            return self.load_lines(fh, p.stem)

    def load_dir(self, folder: str | os.PathLike[str]) -> int:
        """Load every regular, non-hidden file of ``folder``; returns entries accepted."""
        total = 0
        for p in sorted(Path(folder).expanduser().iterdir()):
            if p.is_file() and not p.name.startswith("."):
                try:
                    n = self.load_file(p)
                except OSError as exc:
                    log.warning("cannot read blocklist %s: %s", p.name, exc.strerror)
                    continue
                log.info("blocklist %s: %d entries", p.name, n)
                total += n
        return total

    def lookup(self, ip: str) -> str | None:
        """Name of the list holding ``ip`` (most specific prefix), or None."""
        try:
            return self._tree.get(ip)
        except ValueError:
            return None

    def __contains__(self, ip: str) -> bool:
        return self.lookup(ip) is not None


@dataclass(slots=True)
class ReputationResult:
    ip: str
    score: int
    country: str | None = None
    reports: int = 0
    whitelisted: bool = False
    usage_type: str | None = None
    isp: str | None = None


class ReputationError(RuntimeError):
    """The online service refused or failed a request (message has no key in it)."""


class AbuseIPDBClient:
    """AbuseIPDB ``/api/v2/check`` with a TTL cache and a token-bucket rate limit.

    Args:
        api_key: sent in the ``Key`` header; never logged.
        url: the check endpoint (configurable so tests and proxies can stand in for it).
        rate_per_minute: requests allowed per minute (bursts up to that many).
        cache_ttl: seconds an answer is reused.
    """

    def __init__(self, api_key: str, url: str = REPUTATION_API_URL, max_age_days: int = 90,
                 timeout: float = 5.0, rate_per_minute: float = 30.0, cache_size: int = 10000,
                 cache_ttl: float = 86400.0, session: requests.Session | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._key = api_key
        self.url = url
        self.max_age_days = max_age_days
        self.timeout = timeout
        self.rate = rate_per_minute / 60.0
        self.capacity = max(1.0, rate_per_minute)
        self._tokens = self.capacity
        self._clock = clock
        self._stamp = clock()
        self._blocked_until = 0.0
        self._cache: TTLCache[str, ReputationResult] = TTLCache(cache_size, cache_ttl)
        if session is None:
            import requests  # (only a configured client needs it: ~55 ms of start-up)
            session = requests.Session()
        self._session = session
        self._lock = threading.Lock()
        self.requests = 0
        self.cache_hits = 0
        self.rate_limited = 0
        self.errors = 0

    def _take_token(self) -> bool:
        now = self._clock()
        if now < self._blocked_until:
            return False
        self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def cached(self, ip: str) -> ReputationResult | None:
        with self._lock:
            return self._cache.get(ip)

    def check(self, ip: str) -> ReputationResult | None:
        """The address's reputation, or None when rate-limited (try later).

        Raises ReputationError when the service answers with an error.
        """
        with self._lock:
            hit = self._cache.get(ip)
            if hit is not None:
                self.cache_hits += 1
                return hit
            if not self._take_token():
                self.rate_limited += 1
                return None
            self.requests += 1
        import requests
        try:
            resp = self._session.get(
                self.url, params={"ipAddress": ip, "maxAgeInDays": str(self.max_age_days)},
                headers={"Key": self._key, "Accept": "application/json"}, timeout=self.timeout)
        except requests.RequestException as exc:
            self.errors += 1
            raise ReputationError(f"reputation service unreachable: {type(exc).__name__}") from None
        if resp.status_code == 429:
            retry = _retry_after(resp.headers.get("Retry-After"))
            with self._lock:
                self._blocked_until = self._clock() + retry
                self.rate_limited += 1
            return None
        if resp.status_code != 200:
            self.errors += 1
            raise ReputationError(f"reputation service answered HTTP {resp.status_code}")
        try:
            data: dict[str, Any] = resp.json()["data"]
            result = ReputationResult(
                ip=str(data.get("ipAddress", ip)), score=int(data["abuseConfidenceScore"]),
                country=data.get("countryCode"), reports=int(data.get("totalReports") or 0),
                whitelisted=bool(data.get("isWhitelisted")), usage_type=data.get("usageType"),
                isp=data.get("isp"))
        except (ValueError, KeyError, TypeError):
            self.errors += 1
            raise ReputationError("reputation service sent an unexpected body") from None
        with self._lock:
            self._cache[ip] = result
        return result

    def stats(self) -> dict[str, int]:
        return {"requests": self.requests, "cache_hits": self.cache_hits,
                "rate_limited": self.rate_limited, "errors": self.errors}


def _retry_after(value: str | None) -> float:
    try:
        return max(1.0, float(value)) if value else 60.0
    except ValueError:
        return 60.0


def is_public(ip: str) -> bool:
    """Worth asking an online service about (not private, loopback, multicast, ...)."""
    try:
        return ipaddress.ip_address(ip).is_global
    except ValueError:
        return False


class ReputationService:
    """Non-blocking scores for the packet path: ``score(ip)`` answers from memory and queues
    unknown public addresses for a worker thread that asks the client."""

    def __init__(self, client: AbuseIPDBClient, queue_size: int = 1024,
                 max_known: int = 100000) -> None:
        self.client = client
        self._queue: queue.Queue[str | None] = queue.Queue(queue_size)
        self._scores: dict[str, int] = {}
        self._asked: set[str] = set()
        self.max_known = max_known
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="reputation", daemon=True)
        self._thread.start()

    def score(self, ip: str) -> int | None:
        s = self._scores.get(ip)
        if s is not None or ip in self._asked:
            return s
        if len(self._asked) >= self.max_known:
            self._asked.clear()
        self._asked.add(ip)
        if not is_public(ip):
            return None
        try:
            self._queue.put_nowait(ip)
        except queue.Full:
            self.dropped += 1
            self._asked.discard(ip)  # ask again later
        return None

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Block until queued lookups are done (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self._queue.unfinished_tasks

    def _run(self) -> None:
        while True:
            ip = self._queue.get()
            try:
                if ip is None:
                    return
                try:
                    result = self.client.check(ip)
                except ReputationError as exc:
                    log.warning("reputation lookup failed: %s", exc)
                    result = None
                if result is None:
                    self._asked.discard(ip)  # rate-limited or failed: retried on a later packet
                else:
                    if len(self._scores) >= self.max_known:
                        self._scores.clear()
                    self._scores[ip] = 0 if result.whitelisted else result.score
            finally:
                self._queue.task_done()

    def close(self, timeout: float = 2.0) -> None:
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            return
        self._thread.join(timeout)
