"""Offline country and AS organisation: data that ships inside a PyPI package.

Why geoip2fast: of the packages on PyPI, it is the one that carries both country and ASN
data for IPv4 and IPv6 in the wheel itself (MaxMind GeoLite2 derived, ~11 MB gzipped) and
answers in ~10 µs from plain Python lists and ``bisect``. pyasn and ip2asn ship no data
(they need a RIB dump or a TSV downloaded first), iptocc is country-only, and
maxminddb-geolite2/python-geoip-geolite2 carry 2018/2015 data. geoip2fast's ASN file has
AS names but not AS numbers, so ``asn`` stays None offline unless a MaxMind ASN .mmdb is
configured (or an online source fills it in).

Optional MaxMind .mmdb files (City, Country, ASN, ISP; any vendor with the same record
layout) add region, city and coordinates and override the bundled answer field by field.
"""
from __future__ import annotations

import threading
from typing import Any, Sequence

import maxminddb

from geo.records import GeoInfo
from geo.scopes import PUBLIC, lookup_address, scope_of
from utils.logger import expand_user_path, get_logger

log = get_logger(__name__)

#: country + ASN, IPv4 + IPv6 (the richest file the package ships)
BUNDLED_DATA_FILE = "geoip2fast-asn-ipv6.dat.gz"
# geoip2fast's markers for "no data" in its answers
_NO_COUNTRY = frozenset({"", "--"})
_NO_ASN = frozenset({"", "<unknown>", "IANA.ORG"})


class GeoDataError(ValueError):
    """A configured geo database cannot be opened; the message is one line for the user."""


# geoip2fast keeps its tables in module globals, so there can only be one loaded copy per
# process: load it once, lazily, behind a lock.
_bundled_lock = threading.Lock()
_bundled_db: Any = None
_bundled_failed = False


def _bundled() -> Any:
    global _bundled_db, _bundled_failed
    db = _bundled_db
    if db is not None or _bundled_failed:
        return db
    with _bundled_lock:
        if _bundled_db is None and not _bundled_failed:
            try:
                from geoip2fast import GeoIP2Fast
                _bundled_db = GeoIP2Fast(verbose=False, geoip2fast_data_file=BUNDLED_DATA_FILE)
            except Exception as exc:  # boundary: a broken package install means "no offline data"
                _bundled_failed = True
                log.warning("bundled geo data unavailable: %s", exc)
        return _bundled_db


def _name(rec: Any) -> str | None:
    if isinstance(rec, dict):
        names = rec.get("names")
        if isinstance(names, dict):
            n = names.get("en")
            return n if isinstance(n, str) else None
    return None


class OfflineGeo:
    """Country/AS from the bundled data, refined by the user's .mmdb files.

    Args:
        mmdb_paths: MaxMind DB files (``GEO_MMDB_PATHS`` / ``--geoip-db``); later files win.
        bundled: use the data shipped in geoip2fast.
    Raises:
        GeoDataError: a configured .mmdb file cannot be opened.
    """

    def __init__(self, mmdb_paths: Sequence[str] = (), bundled: bool = True) -> None:
        self._use_bundled = bundled
        self._readers: list[Any] = []
        for p in mmdb_paths:
            path = expand_user_path(str(p))
            try:
                self._readers.append(maxminddb.open_database(str(path)))
            except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
                self.close()
                raise GeoDataError(f"cannot open GeoIP database {path}: {exc}") from None
            log.info("geo: using %s (%s)", path, self._readers[-1].metadata().database_type)

    @property
    def mmdb_count(self) -> int:
        return len(self._readers)

    def warm(self) -> None:
        """Load the bundled data now (about half a second) in a background thread."""
        if self._use_bundled:
            threading.Thread(target=_bundled, name="geo-offline-load", daemon=True).start()

    def lookup(self, ip: str, scope: str | None = None) -> GeoInfo:
        """Everything the offline data knows about ``ip``; special ranges are only labelled."""
        scope = scope_of(ip) if scope is None else scope
        if scope != PUBLIC:
            return GeoInfo(ip=ip, scope=scope, source="scope")
        addr = lookup_address(ip)
        f: dict[str, Any] = {}
        source = "none"
        if self._use_bundled:
            db = _bundled()
            if db is not None:
                r = db.lookup(addr)
                if r.country_code not in _NO_COUNTRY:
                    f["country_code"] = r.country_code
                    f["country"] = r.country_name
                    source = "offline"
                if r.asn_name not in _NO_ASN:
                    f["as_org"] = r.asn_name
                    source = "offline"
        for reader in self._readers:
            try:
                rec = reader.get(addr)
            except ValueError:
                continue
            if isinstance(rec, dict) and self._merge_mmdb(rec, f):
                source = "mmdb"
        return GeoInfo(ip=ip, scope=scope, source=source, **f)

    @staticmethod
    def _merge_mmdb(rec: dict[str, Any], f: dict[str, Any]) -> bool:
        before = dict(f)
        country = rec.get("country") or rec.get("registered_country")
        if isinstance(country, dict):
            if isinstance(country.get("iso_code"), str):
                f["country_code"] = country["iso_code"]
            f["country"] = _name(country) or f.get("country")
        subs = rec.get("subdivisions")
        if isinstance(subs, list) and subs:
            f["region"] = _name(subs[0]) or f.get("region")
        city = _name(rec.get("city"))
        if city:
            f["city"] = city
        loc = rec.get("location")
        if isinstance(loc, dict) and isinstance(loc.get("latitude"), (int, float)):
            f["lat"] = float(loc["latitude"])
            f["lon"] = float(loc.get("longitude") or 0.0)
        asn = rec.get("autonomous_system_number")
        if isinstance(asn, int):
            f["asn"] = asn
        org = rec.get("autonomous_system_organization")
        if isinstance(org, str) and org:
            f["as_org"] = org
        isp = rec.get("isp")
        if isinstance(isp, str) and isp:
            f["isp"] = isp
        return f != before

    def close(self) -> None:
        for r in self._readers:
            r.close()
        self._readers = []

