"""Special address ranges: labelled, never looked up anywhere.

A table of (network, label) from the IANA special-purpose registries, checked most-specific
first on integers; other IPv4 is public, other IPv6 is public only in 2000::/3. Results are cached
per address because the same few thousand addresses are asked about again and again.
"""
from __future__ import annotations

import ipaddress
import socket
from functools import lru_cache
from typing import Iterable

PUBLIC = "public"
PRIVATE = "private"
LOOPBACK = "loopback"
LINK_LOCAL = "link-local"
MULTICAST = "multicast"
CGNAT = "cgnat"
DOCUMENTATION = "documentation"
BENCHMARK = "benchmark"
UNSPECIFIED = "unspecified"
BROADCAST = "broadcast"
ULA = "ula"
RESERVED = "reserved"
INVALID = "invalid"

# Most specific first: the first match wins (e.g. 255.255.255.255 before 240.0.0.0/4).
_TABLE: tuple[tuple[str, str], ...] = (
    ("0.0.0.0/32", UNSPECIFIED),
    ("255.255.255.255/32", BROADCAST),
    ("0.0.0.0/8", RESERVED),              # "this network" (RFC 791)
    ("10.0.0.0/8", PRIVATE),
    ("172.16.0.0/12", PRIVATE),
    ("192.168.0.0/16", PRIVATE),
    ("100.64.0.0/10", CGNAT),             # RFC 6598 shared address space
    ("127.0.0.0/8", LOOPBACK),
    ("169.254.0.0/16", LINK_LOCAL),
    ("192.0.0.0/24", RESERVED),           # IETF protocol assignments
    ("192.0.2.0/24", DOCUMENTATION),      # TEST-NET-1
    ("198.51.100.0/24", DOCUMENTATION),   # TEST-NET-2
    ("203.0.113.0/24", DOCUMENTATION),    # TEST-NET-3
    ("198.18.0.0/15", BENCHMARK),         # RFC 2544
    ("192.88.99.0/24", RESERVED),         # deprecated 6to4 relay anycast
    ("224.0.0.0/4", MULTICAST),
    ("240.0.0.0/4", RESERVED),
    ("::/128", UNSPECIFIED),
    ("::1/128", LOOPBACK),
    ("fe80::/10", LINK_LOCAL),
    ("fec0::/10", PRIVATE),               # deprecated site-local
    ("fc00::/7", ULA),
    ("ff00::/8", MULTICAST),
    ("2001:db8::/32", DOCUMENTATION),
    ("3fff::/20", DOCUMENTATION),         # RFC 9637
    ("100::/64", RESERVED),               # discard-only
    ("2001:2::/48", BENCHMARK),           # RFC 5180
    ("2001::/32", PUBLIC),                # Teredo: globally routed
    ("2001::/23", RESERVED),              # IETF protocol assignments
    ("2000::/3", PUBLIC),                 # global unicast
    ("::/0", RESERVED),                   # the rest of IPv6 is not global unicast
)


def _compile(version: int) -> tuple[tuple[int, int, str], ...]:
    # (network as int, mask as int, label): a match is two integer operations, where an
    # ``ipaddress`` membership test costs microseconds.
    out = []
    for text, label in _TABLE:
        net = ipaddress.ip_network(text)
        if net.version == version:
            out.append((int(net.network_address), int(net.netmask), label))
    return tuple(out)


_NETS_V4 = _compile(4)
_NETS_V6 = _compile(6)


def _classify_int(value: int, v6: bool) -> str:
    if v6 and value >> 32 == 0xFFFF:      # ::ffff:a.b.c.d is the IPv4 host
        return _classify_int(value & 0xFFFFFFFF, False)
    for net, mask, label in (_NETS_V6 if v6 else _NETS_V4):
        if value & mask == net:
            return label
    return PUBLIC


@lru_cache(maxsize=65536)
def scope_of(ip: str) -> str:
    """The scope label of ``ip``: "public", or why it must not be looked up ("private",
    "loopback", "link-local", "multicast", "cgnat", "documentation", "benchmark",
    "unspecified", "broadcast", "ula", "reserved"), or "invalid" for a non-address."""
    text = ip.split("%", 1)[0]            # drop an IPv6 zone id
    v6 = ":" in text
    try:
        packed = socket.inet_pton(socket.AF_INET6 if v6 else socket.AF_INET, text)
    except (OSError, ValueError):
        return INVALID
    return _classify_int(int.from_bytes(packed, "big"), v6)


def is_public(ip: str) -> bool:
    return scope_of(ip) == PUBLIC


def lookup_address(ip: str) -> str:
    """The address to look up in geo data: the embedded IPv4 of ``::ffff:a.b.c.d``."""
    if "." in ip and ip[:7].lower() == "::ffff:":
        return ip[7:]
    return ip


class NetSet:
    """Networks the user marked private (never resolved online); membership cached per address."""

    __slots__ = ("_nets", "_memo")

    def __init__(self, networks: Iterable[str] = ()) -> None:
        self._nets = tuple(ipaddress.ip_network(n, strict=False) for n in networks)
        self._memo: dict[str, bool] = {}

    def __bool__(self) -> bool:
        return bool(self._nets)

    def __contains__(self, ip: object) -> bool:
        if not self._nets or not isinstance(ip, str):
            return False
        hit = self._memo.get(ip)
        if hit is None:
            try:
                addr = ipaddress.ip_address(ip.split("%", 1)[0])
            except ValueError:
                return False
            hit = any(addr.version == n.version and addr in n for n in self._nets)
            if len(self._memo) > 65536:   # bound memory on address sweeps
                self._memo.clear()
            self._memo[ip] = hit
        return hit
