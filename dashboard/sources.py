"""The one place that knows how to ask the runtime's components for what the screen shows.

Trackers are built by other modules and may be absent (``None``) in a run; every function here
returns ``None`` (or an empty value) for "not available", and panels say so plainly instead of
showing a made-up number. Component calls are a plugin boundary: a failing component is reported
as an error string in the state, never a crash of the dashboard.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any, Callable

from tracking.flow import Flow
from utils.logger import get_logger

log = get_logger(__name__)


def _method(obj: Any, *names: str) -> Callable[..., Any] | None:
    """The first of ``names`` that ``obj`` has as a callable (components differ in API age)."""
    if obj is None:
        return None
    for n in names:
        fn = getattr(obj, n, None)
        if callable(fn):
            return fn
    return None


def component_data(comp: Any) -> Any:
    """A component's frozen view: ``snapshot()`` if it has one, else ``as_dict()``, else rows."""
    fn = _method(comp, "snapshot", "as_dict", "rows", "records")
    return None if fn is None else fn()


@lru_cache(maxsize=65536)
def is_local(ip: str) -> bool:
    """Private, loopback, link-local or multicast: not a remote internet endpoint."""
    from geo.scopes import is_public
    try:
        return not is_public(ip)
    except ValueError:
        return False


class Names:
    """Hostnames for addresses, from the DNS tracker (answers seen on the wire) if present."""

    def __init__(self, dns: Any) -> None:
        self._fn = _method(dns, "passive_names", "name_for", "hostname_for")
        self.available = self._fn is not None

    def __call__(self, ip: str) -> str:
        if self._fn is None:
            return ""
        try:
            v = self._fn(ip)
        except (KeyError, ValueError, TypeError):
            return ""
        if isinstance(v, (list, tuple)):
            v = v[0] if v else ""
        return str(v or "")


def enrich(flow: Flow, enrichers: list[Callable[[Flow], dict[str, Any]]]) -> dict[str, Any]:
    """Joined extras of one flow (geo, owner, names, class) from the runtime's enrichers."""
    out: dict[str, Any] = {}
    for fn in enrichers:
        out.update(fn(flow))
    return out


_NAME_KEYS = ("dst_fqdn", "fqdn")


def pick(extra: dict[str, Any], keys: tuple[str, ...]) -> str:
    for k in keys:
        v = extra.get(k)
        if v:
            return str(v)
    return ""


def location_of(extra: dict[str, Any], prefix: str = "dst_") -> str:
    """"City, CC" from geo/enrich.py's endpoint fields (``dst_city``, ``dst_country``)."""
    city = extra.get(prefix + "city") or ""
    cc = extra.get(prefix + "country") or ""
    return f"{city}, {cc}" if city and cc else str(city or cc)


def owner_of(extra: dict[str, Any], prefix: str = "dst_") -> str:
    """"AS1234 Org" from ``dst_asn`` / ``dst_as_org``."""
    asn = extra.get(prefix + "asn")
    org = extra.get(prefix + "as_org") or ""
    return (f"AS{asn} {org}" if asn else str(org)).strip()


def endpoint(enricher: Any, ip: str) -> dict[str, Any]:
    """geo/enrich.py Enricher.endpoint: country, city, asn, as_org, fqdn, domain (or {})."""
    fn = _method(enricher, "endpoint")
    return fn(ip) if fn is not None else {}


def name_of(extra: dict[str, Any]) -> str:
    return pick(extra, _NAME_KEYS)


def flow_facts(inspector: Any, flow: Flow) -> dict[str, Any] | None:
    """DPI facts of one flow (SNI, JA3/JA4, HTTP host, app protocol) if the inspector keeps them."""
    fn = _method(inspector, "as_export")
    if fn is None:
        return None
    return {k: v for k, v in fn(flow.flow_key).items() if v is not None}
