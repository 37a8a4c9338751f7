"""Turning a DNS name into the parts shown on screen: hostname, registered domain, display.

The public suffix list comes from the publicsuffixlist package (shipped offline, loaded
once, lazily). Names are attacker-controlled: they are kept as received in ``fqdn`` and
only ``display_name`` (through :func:`utils.sanitize.clean_text`) is fit for a screen.
"""
from __future__ import annotations

import threading
from functools import lru_cache
from typing import Any

from geo.records import HostInfo
from utils.sanitize import clean_text

DISPLAY_MAX = 80     # characters of a name shown on screen

_psl: Any = None
_psl_lock = threading.Lock()


def _suffix_list() -> Any:
    global _psl
    if _psl is None:
        with _psl_lock:
            if _psl is None:
                from publicsuffixlist import PublicSuffixList
                _psl = PublicSuffixList()
    return _psl


def registered_domain(fqdn: str) -> str | None:
    """"lb-1.iad.github.com" -> "github.com"; None for a bare public suffix or junk."""
    name = fqdn.rstrip(".").lower()
    if not name or ".." in name:
        return None
    try:
        return _suffix_list().privatesuffix(name)
    except (ValueError, TypeError):
        return None


@lru_cache(maxsize=32768)
def host_from_name(fqdn: str, source: str, raw: bytes | None = None) -> HostInfo:
    """The :class:`HostInfo` for a name (cached: the same names come back all the time)."""
    name = fqdn[:-1] if fqdn.endswith(".") and len(fqdn) > 1 else fqdn
    return HostInfo(fqdn=name, hostname=name.split(".", 1)[0] or None,
                    domain=registered_domain(name), display_name=clean_text(name, DISPLAY_MAX),
                    source=source, raw=raw)


def no_name(ip: str) -> HostInfo:
    """Asked, and no name exists: show the address."""
    return HostInfo(fqdn=None, hostname=None, domain=None, display_name=ip, source="none")
