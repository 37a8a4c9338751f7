"""Tiny helpers shared by detectors for keeping their state bounded."""
from __future__ import annotations

from itertools import islice
from typing import Any


def drop_oldest(table: dict[Any, Any], n: int) -> None:
    """Delete the ``n`` oldest-inserted keys of ``table`` in one pass.

    Dicts keep insertion order, so the first keys are the oldest. Deleting a batch costs O(n);
    the dummy slots it leaves at the front are skipped once by the next batch's scan and vanish
    at the dict's next resize (deleting one front key per insert instead makes every
    ``next(iter(table))`` skip all of them, which turns a full table quadratic; rebuilding the
    dict copies every survivor each time).
    """
    for key in list(islice(table, n)):
        del table[key]


def evict_oldest(table: dict[Any, Any], limit: int) -> None:
    """Keep ``table`` at most ``limit`` entries: once over, drop the oldest eighth of ``limit``
    (and any excess) at once, so a full table pays for eviction every ``limit // 8`` inserts."""
    excess = len(table) - limit
    if excess <= 0:
        return
    drop_oldest(table, excess + limit // 8)
