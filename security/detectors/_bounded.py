"""Tiny helpers shared by detectors for keeping their state bounded."""
from __future__ import annotations

from typing import Any


def evict_oldest(table: dict[Any, Any], limit: int) -> None:
    """Drop the oldest-inserted entries until ``table`` holds at most ``limit``.

    Dicts keep insertion order, so the first key is the oldest: O(1) per eviction and no
    extra bookkeeping per packet.
    """
    while len(table) > limit:
        del table[next(iter(table))]
