"""CSV export of row dicts: a header row, one row per record, lists joined with ';'."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Iterable

from capture.errors import WriteError


def write_rows_csv(rows: Iterable[dict[str, Any]], path: str | Path,
                   columns: list[str] | None = None) -> Path:
    rows = list(rows)
    if columns is None:
        columns = []
        seen: set[str] = set()
        for r in rows:
            for k in r:
                if k not in seen:
                    seen.add(k)
                    columns.append(k)
    path = Path(path)
    try:
        with open(path, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(columns)
            for r in rows:
                w.writerow([_cell(r.get(c)) for c in columns])
    except OSError as exc:
        raise WriteError(f"cannot write {path}: {exc.strerror}") from None
    return path


def write_flows_csv(rows: Iterable[dict[str, Any]], path: str | Path) -> Path:
    return write_rows_csv(rows, path)


def _cell(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, (list, tuple, set)):
        return ";".join(str(x) for x in v)
    if isinstance(v, dict):
        return ";".join(f"{k}={x}" for k, x in v.items())
    return v
