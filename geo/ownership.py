"""Who holds an address block: WHOIS (TCP 43) with referral following.

The first question goes to IANA, which answers ``refer: whois.arin.net`` (or RIPE, APNIC,
LACNIC, AFRINIC); ARIN itself may point on with ``ReferralServer: whois://...``. Each
answer is parsed by :mod:`geo.whois_parse`; the most specific one wins. Lookups run on a
background worker; :meth:`OwnershipResolver.lookup` only ever reads the cache. One answer
covers a whole block, so later addresses inside a known block need no query at all.
"""
from __future__ import annotations

import socket
import threading
import time
from typing import Mapping

import pytricia

from config import WHOIS_PORT, WHOIS_SERVER, WHOIS_TIMEOUT
from geo.cache import CacheStats, CacheStore, ResolverCache
from geo.own_traffic import OwnTraffic
from geo.records import OwnershipInfo
from geo.scopes import PUBLIC, NetSet, lookup_address, scope_of
from geo.whois_parse import WhoisAnswer, parse_whois
from geo.workers import WorkQueue
from utils.logger import get_logger

log = get_logger(__name__)

MAX_ANSWER_BYTES = 256 * 1024    # a registry answer is a few KB; cap what a hostile server sends
WHOIS_CACHE_TTL = 86400.0        # registry data changes slowly
_KNOWN_NETS_MAX = 20000


def _query_text(server_name: str, ip: str) -> str:
    # ARIN needs "n + addr" to return the network records with full detail.
    if server_name == "whois.arin.net":
        return f"n + {ip}\r\n"
    return f"{ip}\r\n"


class OwnershipResolver:
    """Background WHOIS lookups with a cache.

    Args:
        enabled: off means :meth:`lookup` returns None and nothing is sent (``WHOIS_ENABLED``).
        server / port: where the first question goes (``WHOIS_SERVER`` / ``WHOIS_PORT``).
        timeout: per connection, seconds (``WHOIS_TIMEOUT``).
        servers: referral host name -> (host, port) to connect to instead (tests, proxies).
        follow_unmapped: follow referrals to hosts not in ``servers``.
        max_referrals: referral hops after the first server.
        min_interval: seconds between two queries (registries block eager clients).
        private_nets: user-marked private networks, never asked about.
    """

    def __init__(self, enabled: bool = True, server: str = WHOIS_SERVER, port: int = WHOIS_PORT,
                 timeout: float = WHOIS_TIMEOUT, servers: Mapping[str, tuple[str, int]] | None = None,
                 follow_unmapped: bool = True, max_referrals: int = 3, min_interval: float = 1.0,
                 cache_size: int = 10000, cache_ttl: float = WHOIS_CACHE_TTL,
                 store: CacheStore | None = None, queue_size: int = 256,
                 private_nets: tuple[str, ...] | list[str] = ()) -> None:
        self.enabled = enabled
        self.server = server
        self.port = port
        self.timeout = timeout
        self.servers = dict(servers or {})
        self.follow_unmapped = follow_unmapped
        self.max_referrals = max_referrals
        self.min_interval = min_interval
        self.private = NetSet(private_nets)
        self.own = OwnTraffic()
        self.cache: ResolverCache[OwnershipInfo] = ResolverCache(
            "whois", cache_size, cache_ttl, store=store, encode=OwnershipInfo.to_dict,
            decode=OwnershipInfo.from_dict)
        if store is not None:
            self.cache.load_from_store(cache_ttl)
        self._nets4 = pytricia.PyTricia(32)
        self._nets6 = pytricia.PyTricia(128)
        self._nets_lock = threading.Lock()
        self._last_query = 0.0
        self.queries = 0
        self.failures = 0
        self._work: WorkQueue | None = (WorkQueue("whois", self._resolve, 1, queue_size)
                                        if enabled else None)

    def lookup(self, ip: str) -> OwnershipInfo | None:
        """The cached answer for ``ip``, or None (and a query is scheduled)."""
        if self._work is None:
            return None
        info = self.cache.get(ip)
        if info is not None:
            return info
        info = self._from_known_block(ip)
        if info is not None:
            self.cache.put(ip, info)
            return info
        if scope_of(ip) == PUBLIC and ip not in self.private:
            self._work.submit(ip)
        return None

    def _from_known_block(self, ip: str) -> OwnershipInfo | None:
        addr = lookup_address(ip)
        tree = self._nets6 if ":" in addr else self._nets4
        with self._nets_lock:
            try:
                block = tree.get(addr)
            except (ValueError, KeyError):
                return None
        if block is None:
            return None
        return OwnershipInfo(ip=ip, netname=block.netname, org=block.org, cidr=block.cidr,
                             country=block.country, asn=block.asn, registry=block.registry)

    def _remember_block(self, info: OwnershipInfo) -> None:
        if not info.cidr:
            return
        with self._nets_lock:
            for net in info.cidr.split(","):
                net = net.strip()
                tree = self._nets6 if ":" in net else self._nets4
                if len(tree) >= _KNOWN_NETS_MAX:
                    for key in list(tree):
                        tree.delete(key)
                try:
                    tree[net] = info
                except (ValueError, KeyError):
                    continue

    def _resolve(self, ip: str) -> None:
        if self._from_known_block(ip) is None:
            info = self.query(ip)
            if info is not None:
                self.cache.put(ip, info, persist=True)
                self._remember_block(info)

    def query(self, ip: str) -> OwnershipInfo | None:
        """Ask the registries now (blocking, on the calling thread), following referrals."""
        addr = lookup_address(ip)
        name = self.server
        target = self.servers.get(name) or (self.server, self.port)
        best: tuple[WhoisAnswer, str] | None = None
        visited: set[str] = set()
        for _ in range(self.max_referrals + 1):
            visited.add(name)
            text = self._ask(name, target, addr)
            if text is None:
                break
            ans = parse_whois(text)
            if ans.netname or ans.org or ans.cidr:
                best = (ans, name)
            ref = ans.referral
            if ref is None or ref[0] in visited:
                break
            name = ref[0]
            mapped = self.servers.get(name)
            if mapped is None and not self.follow_unmapped:
                break
            target = mapped or ref
        if best is None:
            return None
        ans, registry = best
        return OwnershipInfo(ip=ip, netname=ans.netname, org=ans.org, cidr=ans.cidr,
                             country=ans.country, asn=ans.asn, registry=registry)

    def _ask(self, name: str, target: tuple[str, int], addr: str) -> str | None:
        wait = self._last_query + self.min_interval - time.monotonic()
        if wait > 0:
            time.sleep(wait)   # worker thread only: registries throttle eager clients
        self._last_query = time.monotonic()
        self.queries += 1
        host, port = target
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            family, stype, proto, _, sockaddr = infos[0]
            self.own.add_remote(str(sockaddr[0]), port)
            with socket.socket(family, stype, proto) as sock:
                sock.settimeout(self.timeout)
                sock.connect(sockaddr)
                self.own.add_local_port(sock.getsockname()[1])
                sock.sendall(_query_text(name, addr).encode("ascii"))
                chunks: list[bytes] = []
                size = 0
                while size < MAX_ANSWER_BYTES:
                    data = sock.recv(65536)
                    if not data:
                        break
                    chunks.append(data)
                    size += len(data)
        except OSError as exc:
            self.failures += 1
            log.warning("WHOIS %s:%s failed: %s", host, port, exc)
            return None
        return b"".join(chunks).decode("utf-8", errors="replace")

    def drain(self, timeout: float) -> bool:
        return self._work.drain(timeout) if self._work is not None else True

    def own_traffic(self) -> set[tuple[str, int]]:
        return self.own.remotes()

    def own_local_ports(self) -> set[int]:
        return self.own.local_ports()

    def stats(self) -> CacheStats:
        return self.cache.stats()

    def close(self) -> None:
        if self._work is not None:
            self._work.close()
