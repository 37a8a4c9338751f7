"""Names for addresses: passive DNS first, then reverse DNS (PTR) in the background.

:meth:`DNSResolver.host_info` answers at once from (1) the passive-DNS map (the name the
host itself looked up, from the DNS tracker), (2) the PTR cache, (3) the negative cache;
otherwise it schedules a PTR query on a bounded worker pool and returns None.

PTR queries are built and sent here (dnspython message API over our own UDP socket to the
system's nameserver) so the resolver knows its own traffic: :meth:`own_traffic` and
:meth:`own_local_ports` let the pipeline leave those packets out of flows and statistics.
Queries are never sent for special ranges or addresses the user marked private.
"""
from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Callable, Sequence

from config import (DB_DNS_CACHE_TTL, DNS_CACHE_SIZE, DNS_CACHE_TTL, DNS_RDNS_ENABLED,
                    DNS_RDNS_WORKERS, DNS_TIMEOUT)
from geo.cache import CacheStats, CacheStore, ResolverCache
from geo.names import host_from_name, no_name
from geo.own_traffic import OwnTraffic
from geo.records import HostInfo
from geo.scopes import PUBLIC, NetSet, scope_of
from geo.workers import WorkQueue
from utils.logger import get_logger

if TYPE_CHECKING:
    import dns.name

# dnspython is imported where reverse lookups happen: only a run with rDNS on needs it, and it
# is most of this module's import time (~85 ms of a headless file read's start-up).

log = get_logger(__name__)

NEGATIVE_TTL = 300.0       # seconds "no PTR" is remembered


def system_nameserver() -> str | None:
    """The first nameserver of /etc/resolv.conf (None if there is none)."""
    import dns.exception
    import dns.resolver
    try:
        servers = dns.resolver.Resolver(configure=True).nameservers
    except (OSError, dns.exception.DNSException):
        return None
    return str(servers[0]) if servers else None


def name_bytes(name: dns.name.Name) -> bytes:
    """The name exactly as on the wire, labels joined by dots, no escaping."""
    labels = name.labels[:-1] if name.is_absolute() else name.labels
    return b".".join(labels)


class DNSResolver:
    """Instant names for addresses.

    Args:
        passive_lookup: ip -> names the host looked up (the DNS tracker); first name wins.
        rdns: send PTR queries at all (``DNS_RDNS_ENABLED``; off with --no-rdns/--offline).
        timeout: per PTR query, seconds (``DNS_TIMEOUT``).
        workers: concurrent PTR queries (``DNS_RDNS_WORKERS``).
        store: persistence of PTR answers (dns_cache repository), see :mod:`geo.cache`.
        private_nets: user-marked private networks: never asked about.
        nameserver / port: where PTR queries go (default: /etc/resolv.conf).
        cache_size / cache_ttl: ``DNS_CACHE_SIZE`` / ``DNS_CACHE_TTL``.
        negative_ttl: how long "no name" is remembered.
        persist_ttl: age up to which stored answers are reused (``DB_DNS_CACHE_TTL``).
    """

    def __init__(self, passive_lookup: Callable[[str], list[str]] | None = None,
                 rdns: bool = DNS_RDNS_ENABLED, timeout: float = DNS_TIMEOUT,
                 workers: int = DNS_RDNS_WORKERS, store: CacheStore | None = None,
                 private_nets: Sequence[str] = (), nameserver: str | None = None, port: int = 53,
                 cache_size: int = DNS_CACHE_SIZE, cache_ttl: float = DNS_CACHE_TTL,
                 negative_ttl: float = NEGATIVE_TTL, persist_ttl: float = DB_DNS_CACHE_TTL,
                 queue_size: int = 4096) -> None:
        self.passive_lookup = passive_lookup
        self.timeout = timeout
        self.private = NetSet(private_nets)
        self.port = port
        self.nameserver = (nameserver or system_nameserver()) if rdns else None
        self.rdns = rdns and self.nameserver is not None
        self.negative_ttl = negative_ttl
        self.own = OwnTraffic()
        if self.rdns and self.nameserver:
            self.own.add_remote(self.nameserver, port)
        self.cache: ResolverCache[HostInfo] = ResolverCache(
            "dns", cache_size, cache_ttl, store=store, encode=HostInfo.to_dict,
            decode=HostInfo.from_dict)
        if store is not None:
            self.cache.load_from_store(persist_ttl)
        self.queries = 0
        self.failures = 0
        self._work: WorkQueue | None = (WorkQueue("rdns", self._resolve, workers, queue_size)
                                        if self.rdns else None)

    def host_info(self, ip: str) -> HostInfo | None:
        """The best name known now, or None (a PTR query may have been scheduled)."""
        if self.passive_lookup is not None:
            names = self.passive_lookup(ip)
            if names:
                return host_from_name(names[0], "passive")
        info = self.cache.get(ip)
        if info is not None:
            return info
        if self._work is not None and self._may_ask(ip):
            self._work.submit(ip)
        return None

    def _may_ask(self, ip: str) -> bool:
        return scope_of(ip) == PUBLIC and ip not in self.private

    def _resolve(self, ip: str) -> None:
        raw = self.query_ptr(ip)
        if raw is None:
            self.cache.put(ip, no_name(ip), ttl=self.negative_ttl)
            return
        fqdn = raw.decode("utf-8", errors="replace")
        self.cache.put(ip, host_from_name(fqdn, "ptr", raw), persist=True)

    def query_ptr(self, ip: str) -> bytes | None:
        """One PTR query now (blocking); the first answer's name as wire bytes, or None."""
        if self.nameserver is None:
            return None
        import dns.exception
        import dns.message
        import dns.query
        import dns.rcode
        import dns.rdatatype
        import dns.reversename
        try:
            qname = dns.reversename.from_address(ip)
        except (ValueError, dns.exception.SyntaxError):
            return None
        q = dns.message.make_query(qname, dns.rdatatype.PTR)
        family = socket.AF_INET6 if ":" in self.nameserver else socket.AF_INET
        self.queries += 1
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as sock:
                sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
                sock.setblocking(False)      # dnspython requires it of a socket it is given
                self.own.add_local_port(sock.getsockname()[1])
                resp = dns.query.udp(q, self.nameserver, timeout=self.timeout, port=self.port,
                                     sock=sock, ignore_unexpected=True)
        except (OSError, dns.exception.DNSException, ValueError) as exc:
            # Timeouts, unreachable servers and malformed (possibly hostile) answers alike.
            self.failures += 1
            log.info("PTR %s failed: %s", ip, exc)
            return None
        if resp.rcode() != dns.rcode.NOERROR:
            return None
        for rrset in resp.answer:
            if rrset.rdtype == dns.rdatatype.PTR and rrset.name == qname:
                for rdata in rrset:
                    return name_bytes(rdata.target)
        return None

    def drain(self, timeout: float) -> bool:
        return self._work.drain(timeout) if self._work is not None else True

    def own_traffic(self) -> set[tuple[str, int]]:
        """(nameserver ip, port) when reverse lookups are on."""
        return self.own.remotes()

    def own_local_ports(self) -> set[int]:
        return self.own.local_ports()

    def stats(self) -> CacheStats:
        return self.cache.stats()

    def close(self) -> None:
        if self._work is not None:
            self._work.close()
