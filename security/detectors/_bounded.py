"""Tiny helpers shared by detectors for keeping their state bounded."""
from __future__ import annotations

from itertools import islice
from typing import Any


def evict_oldest(table: dict[Any, Any], limit: int) -> None:
    """Keep ``table`` at most ``limit`` entries by dropping the oldest-inserted quarter.

    Dicts keep insertion order, so the first keys are the oldest. Eviction works in batches
    and rebuilds the dict: deleting one key at a time from the front leaves dummy slots that
    every later ``next(iter(table))`` has to skip, which turns a full table quadratic.
    """
    if len(table) <= limit:
        return
    keep = max(0, limit - limit // 4)
    survivors = list(islice(table.items(), len(table) - keep, None))
    table.clear()
    table.update(survivors)
