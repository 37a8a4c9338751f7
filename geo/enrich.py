"""One facade over the resolvers for exports and the dashboard snapshot.

Enrichment is joined when a snapshot or an export is built, never per packet. Each call
returns at once with what is known; resolvers that are off (None) contribute nothing and
send nothing.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator, Protocol

from geo.cache import CacheStats
from geo.dns_resolver import DNSResolver
from geo.ownership import OwnershipResolver
from geo.resolver import GeoResolver

#: the per-endpoint export fields (flows carry them as src_<field> and dst_<field>)
ENDPOINT_FIELDS: tuple[str, ...] = ("country", "city", "asn", "as_org", "fqdn", "domain",
                                    "name_source")


class _FlowLike(Protocol):
    src_ip: str
    dst_ip: str


class Enricher:
    """Geo, ownership and names for one address at a time."""

    def __init__(self, geo: GeoResolver | None = None, names: DNSResolver | None = None,
                 owner: OwnershipResolver | None = None) -> None:
        self.geo = geo
        self.names = names
        self.owner = owner
        #: address -> endpoint fields, while an export is being built (see :meth:`memoized`)
        self._memo: dict[str, dict[str, Any]] | None = None

    @contextmanager
    def memoized(self) -> Iterator[None]:
        """Within the block, each address is looked up once. For building an export: every
        flow asks for both its ends, and a capture with more hosts than the resolvers' caches
        hold would otherwise look most of them up again (50k flows over 100k hosts: 5.8 s).
        Outside it, answers stay fresh (names arrive as the capture goes on)."""
        self._memo = {}
        try:
            yield
        finally:
            self._memo = None

    def endpoint(self, ip: str) -> dict[str, Any]:
        """The export fields for one end: country (ISO code), city, asn, as_org, fqdn,
        domain, name_source ("passive", "ptr" or "none")."""
        memo = self._memo
        if memo is not None:
            hit = memo.get(ip)
            if hit is None:
                hit = memo[ip] = self._endpoint(ip)
            return hit
        return self._endpoint(ip)

    def _endpoint(self, ip: str) -> dict[str, Any]:
        out: dict[str, Any] = dict.fromkeys(ENDPOINT_FIELDS)
        out["name_source"] = "none"
        if self.geo is not None:
            g = self.geo.lookup(ip)
            out["country"] = g.country_code
            out["city"] = g.city
            out["asn"] = g.asn
            out["as_org"] = g.as_org
        if self.owner is not None:
            o = self.owner.lookup(ip)
            if o is not None:
                out["asn"] = out["asn"] if out["asn"] is not None else o.asn
                out["as_org"] = out["as_org"] or o.org
                out["country"] = out["country"] or o.country
        if self.names is not None:
            h = self.names.host_info(ip)
            if h is not None:
                out["fqdn"] = h.fqdn
                out["domain"] = h.domain
                out["name_source"] = h.source
        return out

    def flow_fields(self, flow: _FlowLike) -> dict[str, Any]:
        """src_* and dst_* fields for a flow export row (a ``flow_enrichers`` hook)."""
        row: dict[str, Any] = {}
        for prefix, ip in (("src_", flow.src_ip), ("dst_", flow.dst_ip)):
            for k, v in self.endpoint(ip).items():
                row[prefix + k] = v
        return row

    def drain(self, timeout: float) -> bool:
        """Wait (up to ``timeout`` seconds each) for scheduled online lookups, e.g. before a
        final export of a capture file."""
        ok = True
        for r in (self.geo, self.names, self.owner):
            if r is not None:
                ok = r.drain(timeout) and ok
        return ok

    def own_traffic(self) -> set[tuple[str, int]]:
        """Remote (ip, port) endpoints the resolvers talk to: leave them out of the capture."""
        out: set[tuple[str, int]] = set()
        for r in (self.geo, self.names, self.owner):
            if r is not None:
                out |= r.own_traffic()
        return out

    def own_local_ports(self) -> set[int]:
        out: set[int] = set()
        for r in (self.geo, self.names, self.owner):
            if r is not None:
                out |= r.own_local_ports()
        return out

    def stats(self) -> list[CacheStats]:
        """Cache counters for the Stats panel."""
        return [r.stats() for r in (self.geo, self.names, self.owner) if r is not None]

    def close(self) -> None:
        for r in (self.geo, self.names, self.owner):
            if r is not None:
                r.close()


def build_enricher(settings: Any, passive_lookup: Callable[[str], list[str]] | None = None,
                   geo_store: Any = None, dns_store: Any = None,
                   private_nets: tuple[str, ...] = (), warm: bool = True) -> Enricher:
    """The Enricher a run's settings ask for (``GEO_ENABLED``, ``GEO_ONLINE``,
    ``DNS_RDNS_ENABLED``, ``WHOIS_ENABLED`` ...). ``--offline`` / ``--no-geo`` turn the
    online parts off, so nothing is sent. ``warm`` loads the offline database now, in a
    thread, for a screen that shows places from the start; without it the first lookup loads it."""
    s = settings
    geo = None
    if s.GEO_ENABLED:
        geo = GeoResolver(online=s.GEO_ONLINE, api_url=s.GEO_API_URL, batch_url=s.GEO_API_BATCH_URL,
                          rate_per_min=s.GEO_API_RATE_LIMIT, store=geo_store,
                          mmdb_paths=tuple(s.GEO_MMDB_PATHS), cache_size=s.GEO_CACHE_SIZE,
                          cache_ttl=s.GEO_CACHE_TTL, persist_ttl=s.DB_GEO_CACHE_TTL)
        if warm:
            geo.offline.warm()
    # --no-geo promises that nothing is sent for resolution: PTR queries included.
    names = DNSResolver(passive_lookup, rdns=s.GEO_ENABLED and s.DNS_RDNS_ENABLED, timeout=s.DNS_TIMEOUT,
                        workers=s.DNS_RDNS_WORKERS, store=dns_store, private_nets=private_nets,
                        cache_size=s.DNS_CACHE_SIZE, cache_ttl=s.DNS_CACHE_TTL,
                        persist_ttl=s.DB_DNS_CACHE_TTL)
    owner = None
    if s.GEO_ENABLED and s.WHOIS_ENABLED:
        owner = OwnershipResolver(server=s.WHOIS_SERVER, port=s.WHOIS_PORT, timeout=s.WHOIS_TIMEOUT,
                                  private_nets=private_nets)
    return Enricher(geo, names, owner)
