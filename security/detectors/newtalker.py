"""New talkers: the first connection of the session to a country or ASN not seen before.

Off by default (noisy on a laptop); after a learning period every new country/ASN a local host
reaches is reported once. The lookup is the caller's (geo/ joins it), passed in as a callable.
"""
from __future__ import annotations

from typing import Callable

from capture.packet import ACK, PROTO_TCP, SYN, ParsedPacket
from security.alerts import AlertEngine

Lookup = Callable[[str], "tuple[str | None, int | str | None]"]


class NewTalkerDetector:
    """Raises ``new_country`` / ``new_asn`` for TCP connections and UDP flows.

    Args:
        lookup: ``lookup(ip) -> (country, asn)``; either may be None when unknown.
        learn_seconds: seconds from the first packet during which everything is learnt silently.
    """

    def __init__(self, engine: AlertEngine, lookup: Lookup, learn_seconds: float = 60.0,
                 max_addresses: int = 65536) -> None:
        self.engine = engine
        self.lookup = lookup
        self.learn_seconds = learn_seconds
        self.max_addresses = max_addresses
        self._seen_ips: set[str] = set()
        self._countries: set[str] = set()
        self._asns: set[str] = set()
        self._start: float | None = None

    def process(self, pkt: ParsedPacket) -> None:
        if not pkt.ip_version:
            return
        if pkt.proto == PROTO_TCP and (pkt.tcp_flags & (SYN | ACK)) != SYN:
            return  # only connection openings name a new talker
        dst = pkt.dst_ip
        if dst in self._seen_ips:
            return
        if len(self._seen_ips) >= self.max_addresses:
            self._seen_ips.clear()
        self._seen_ips.add(dst)
        if self._start is None:
            self._start = pkt.ts
        country, asn = self.lookup(dst)
        learning = pkt.ts - self._start < self.learn_seconds
        if country and country not in self._countries:
            self._countries.add(country)
            if not learning:
                self.engine.raise_alert(
                    "new_country", "info", pkt.src_ip, dst,
                    f"{pkt.src_ip} contacted {dst}, the first address in {country} this session",
                    {"country": country, "countries_seen": len(self._countries)}, ts=pkt.ts)
        if asn is not None and str(asn) not in self._asns:
            self._asns.add(str(asn))
            if not learning:
                self.engine.raise_alert(
                    "new_asn", "info", pkt.src_ip, dst,
                    f"{pkt.src_ip} contacted {dst}, the first address in AS{asn} this session",
                    {"asn": str(asn), "asns_seen": len(self._asns)}, ts=pkt.ts)
