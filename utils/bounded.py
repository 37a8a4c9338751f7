"""Keeping insertion-ordered dicts bounded: the oldest entries go a batch at a time.

Dicts keep insertion order, so the first keys are the oldest. Deleting a batch costs O(n); the
dummy slots it leaves at the front are skipped once by the next batch's scan and vanish at the
dict's next resize. Deleting one front key per insert instead makes every ``next(iter(table))``
skip all of them, which turns a full table quadratic; rebuilding the dict copies every survivor
each time.
"""
from __future__ import annotations

from itertools import islice
from typing import Any


def drop_oldest(table: dict[Any, Any], n: int) -> list[Any]:
    """Delete the ``n`` oldest-inserted keys of ``table`` in one pass; returns them."""
    keys = list(islice(table, n))
    for key in keys:
        del table[key]
    return keys


def evict_oldest(table: dict[Any, Any], limit: int) -> list[Any]:
    """Keep ``table`` at most ``limit`` entries: once over, drop the oldest eighth of ``limit``
    (and any excess) at once, so a full table pays for eviction every ``limit // 8`` inserts.
    Returns the keys dropped (tables kept beside this one drop their share of them)."""
    excess = len(table) - limit
    return drop_oldest(table, excess + limit // 8) if excess > 0 else []


def drop_oldest_share(table: dict[Any, Any], fraction: int = 8) -> None:
    """Drop the oldest ``1/fraction`` of ``table`` (at least one key) in one go."""
    drop_oldest(table, max(1, len(table) // fraction))
