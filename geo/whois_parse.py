"""Reading registry WHOIS answers (IANA, ARIN, RIPE, APNIC, LACNIC, AFRINIC).

Two dialects: ARIN writes CamelCase keys and lists the least specific network first, so the
*last* value wins; the RIPE family (RIPE, APNIC, AFRINIC, LACNIC, IANA) writes lowercase keys
and puts the matching object first, so the *first* value wins.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

# field -> keys in order of preference
_FIELDS: dict[str, tuple[str, ...]] = {
    "netname": ("NetName", "netname"),
    "org": ("OrgName", "org-name", "owner", "Organization", "descr", "organisation"),
    "cidr": ("CIDR", "inet6num", "inetnum", "route6", "route"),
    "country": ("Country", "country"),
    "asn": ("OriginAS", "origin", "aut-num"),
}


@dataclass(frozen=True, slots=True)
class WhoisAnswer:
    netname: str | None
    org: str | None
    cidr: str | None
    country: str | None
    asn: int | None
    referral: tuple[str, int] | None   # (host, port) of the next server to ask, if any


def _pairs(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if not line or line[0] in "%#" or line[0].isspace():
            continue
        key, sep, value = line.partition(":")
        if not sep or not key or " " in key:
            continue
        value = value.strip()
        if value:
            out.setdefault(key, []).append(value)
    return out


def _pick(pairs: dict[str, list[str]], keys: tuple[str, ...]) -> str | None:
    for key in keys:
        values = pairs.get(key)
        if values:
            return values[-1] if key[0].isupper() else values[0]
    return None


def _cidr(value: str) -> str:
    """"a.b.c.d - e.f.g.h" -> CIDR list; LACNIC's short "200.160/20" -> "200.160.0.0/20"."""
    if " - " in value:
        lo, _, hi = value.partition(" - ")
        try:
            nets = ipaddress.summarize_address_range(ipaddress.ip_address(lo.strip()),
                                                     ipaddress.ip_address(hi.strip()))
            return ", ".join(str(n) for n in nets)
        except (ValueError, TypeError):
            return value
    addr, slash, plen = value.partition("/")
    if slash and ":" not in addr and addr.count(".") < 3:
        addr = ".".join((addr.split(".") + ["0", "0", "0"])[:4])
        return f"{addr}/{plen}"
    return value


def _asn(value: str | None) -> int | None:
    if not value:
        return None
    first = value.replace(",", " ").split()[0].upper()
    digits = first[2:] if first.startswith("AS") else first
    return int(digits) if digits.isdigit() else None


def _referral(pairs: dict[str, list[str]]) -> tuple[str, int] | None:
    for key in ("refer", "ReferralServer", "whois"):
        for value in pairs.get(key, ()):
            v = value.strip().rstrip("/")
            if v.startswith("rwhois://"):     # a different protocol: not followed
                continue
            if v.startswith("whois://"):
                v = v[8:]
            host, _, port = v.partition(":")
            if host:
                return host.lower(), int(port) if port.isdigit() else 43
    return None


def parse_whois(text: str) -> WhoisAnswer:
    pairs = _pairs(text)
    org = _pick(pairs, _FIELDS["org"])
    if org and org.endswith(")") and " (" in org:        # ARIN "Organization: Google LLC (GOGL)"
        org = org[: org.rindex(" (")]
    cidr = _pick(pairs, _FIELDS["cidr"])
    return WhoisAnswer(
        netname=_pick(pairs, _FIELDS["netname"]),
        org=org,
        cidr=_cidr(cidr) if cidr else None,
        country=(_pick(pairs, _FIELDS["country"]) or "").upper() or None,
        asn=_asn(_pick(pairs, _FIELDS["asn"])),
        referral=_referral(pairs),
    )
