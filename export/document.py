"""The export document: one JSON object whose layout is the contract documented in the README.

Additions are allowed; renaming or removing a field is a breaking change.
"""
from __future__ import annotations

from typing import Any

SCHEMA_VERSION = 1


def build_document(meta: dict[str, Any], flows: list[dict[str, Any]], *,
                   dns: list[dict[str, Any]] | None = None, ports: list[dict[str, Any]] | None = None,
                   tcp: dict[str, Any] | None = None, stats: dict[str, Any] | None = None,
                   extra: dict[str, Any] | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "meta": {"schema": SCHEMA_VERSION, **meta},
        "flows": flows,
        "dns": dns or [],
        "ports": ports or [],
        "tcp": tcp or {},
        "stats": stats or {},
    }
    for key, value in (extra or {}).items():
        doc.setdefault(key, value)
    return doc
