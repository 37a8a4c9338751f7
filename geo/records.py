"""The answers the resolvers give: one slotted record per kind of question.

Records are frozen because caches hand the same object to several threads; an update
(an online answer arriving) builds a new record with :func:`dataclasses.replace`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(frozen=True, slots=True)
class GeoInfo:
    """Where an address is and which network announces it.

    ``scope`` is "public" or the special-range label from :mod:`geo.scopes` (special
    addresses carry no other data). ``source`` names the best source merged in:
    "scope" (special range, never looked up), "offline" (bundled data), "mmdb" (user's
    MaxMind files), "ip-api" (online answer merged over the offline one), "none".
    """

    ip: str
    scope: str = "public"
    country: str | None = None
    country_code: str | None = None
    region: str | None = None
    city: str | None = None
    lat: float | None = None
    lon: float | None = None
    asn: int | None = None
    as_org: str | None = None
    isp: str | None = None
    source: str = "none"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GeoInfo:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True, slots=True)
class HostInfo:
    """A name for an address.

    ``fqdn`` is the name as received (invalid UTF-8 bytes become U+FFFD; ``raw`` keeps the
    exact wire bytes of a PTR answer). ``display_name`` is the only field fit for a screen:
    control/bidi characters removed and length bounded. ``source``: "passive" (a name the
    host itself looked up), "ptr" (reverse DNS), "none" (asked, no name exists).
    """

    fqdn: str | None
    hostname: str | None
    domain: str | None
    display_name: str
    source: str
    raw: bytes | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["raw"] = self.raw.hex() if self.raw is not None else None
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HostInfo:
        raw = data.get("raw")
        return cls(fqdn=data.get("fqdn"), hostname=data.get("hostname"), domain=data.get("domain"),
                   display_name=data.get("display_name") or "", source=data.get("source") or "ptr",
                   raw=bytes.fromhex(raw) if isinstance(raw, str) else None)


@dataclass(frozen=True, slots=True)
class OwnershipInfo:
    """Who holds the address block, from the registry (WHOIS) answer.

    ``registry`` is the WHOIS server that gave the final answer (after referrals).
    """

    ip: str
    netname: str | None = None
    org: str | None = None
    cidr: str | None = None
    country: str | None = None
    asn: int | None = None
    registry: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OwnershipInfo:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})
