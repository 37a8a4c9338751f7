"""CSV export of row dicts: a header row, one row per record, lists joined with ';'.

The file opens in any spreadsheet: UTF-8, RFC 4180 quoting, and text cells that a spreadsheet
would run as a formula (network-derived names can start with ``=``) are prefixed with ``'``.
Written to a temporary file and renamed, so a crash never leaves half a file.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any, Callable, Iterable

from capture.errors import WriteError

#: a text cell starting with one of these is a formula to a spreadsheet (OWASP "CSV injection")
_FORMULA_START = ("=", "+", "@", "\t", "\r", "-")


def columns_of(rows: Iterable[dict[str, Any]], first: Iterable[str] = ()) -> list[str]:
    """Every key of ``rows`` in first-seen order, ``first`` ones leading."""
    columns: list[str] = []
    seen: set[str] = set()
    for k in first:
        if k not in seen:
            seen.add(k)
            columns.append(k)
    for r in rows:
        for k in r:
            if k not in seen:
                seen.add(k)
                columns.append(k)
    return columns


def write_rows_csv(rows: Iterable[dict[str, Any]], path: str | Path,
                   columns: list[str] | None = None,
                   on_row: Callable[[], None] | None = None) -> Path:
    """Write ``rows`` with a header; ``on_row`` is called after each row (progress bars)."""
    if columns is None:
        rows = list(rows)
        columns = columns_of(rows)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(columns)
            for r in rows:
                w.writerow([_cell(r.get(c)) for c in columns])
                if on_row is not None:
                    on_row()
        os.replace(tmp, path)
    except OSError as exc:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise WriteError(f"cannot write {path}: {exc.strerror}") from None
    return path


def write_flows_csv(rows: Iterable[dict[str, Any]], path: str | Path) -> Path:
    return write_rows_csv(rows, path)


def _cell(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, (list, tuple, set, frozenset)):
        v = ";".join(str(x) for x in v)
    elif isinstance(v, dict):
        v = ";".join(f"{k}={x}" for k, x in v.items())
    elif isinstance(v, bytes):
        return v.hex()
    if isinstance(v, str) and v.startswith(_FORMULA_START) and not _is_number(v):
        return "'" + v
    return v


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
