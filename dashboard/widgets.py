"""Shared Rich pieces: formatting of counts, bytes and rates, and small tables built from plain data.

Every value that may come from the network goes through :func:`net_text`, which sanitizes it and
returns a Rich ``Text`` (never a markup string), so a hostile name cannot style or corrupt the screen.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

from rich.console import RenderableType
from rich.text import Text

from dashboard.blocks import Block

from utils.format import human_bytes, human_count, human_rate
from utils.sanitize import clean_text

NA = "—"
NOT_AVAILABLE_STYLE = "yellow"


def net_text(value: object, max_len: int = 80, style: str = "") -> Text:
    """Network-derived text, sanitized, as a Text object."""
    if value is None or value == "":
        return Text(NA, style="dim")
    return Text(clean_text(value, max_len), style=style)


def fmt_bytes(n: float | None) -> str:
    return NA if n is None else human_bytes(n)


def fmt_bps(bytes_per_s: float | None) -> str:
    """A byte rate shown in bits per second, as network tools do."""
    return NA if bytes_per_s is None else human_rate(bytes_per_s * 8)


def fmt_count(n: float | None) -> str:
    return NA if n is None else human_count(n)


def fmt_pct(part: float, whole: float) -> str:
    return f"{100.0 * part / whole:.1f}%" if whole else NA


def fmt_value(v: Any) -> Text:
    """Any scalar from a tracker's dict, sanitized; floats kept short."""
    if isinstance(v, bool):
        return Text("yes" if v else "no")
    if isinstance(v, float):
        return Text(f"{v:.3f}".rstrip("0").rstrip(".") if v != int(v) else f"{int(v)}")
    if isinstance(v, int):
        return Text(str(v))
    if isinstance(v, (list, tuple, set, frozenset)):
        return net_text(", ".join(str(x) for x in list(v)[:8]))
    if isinstance(v, Mapping):
        return net_text(", ".join(f"{k}={x}" for k, x in list(v.items())[:6]))
    return net_text(v)


def notice(message: str, title: str = "") -> RenderableType:
    """A plain statement that a feature is missing (no invented numbers)."""
    t = Text(message, style=NOT_AVAILABLE_STYLE)
    if not title:
        return t
    return Text.assemble((title + ": ", "bold"), t)


def table(title: str | None = None, *columns: str, expand: bool = False,
          justify_right: Iterable[str] = ()) -> Block:
    """A compact table in the dashboard's style (one-line cells, laid out by hand: fast)."""
    right = set(justify_right)
    t = Block(title, expand=expand)
    for c in columns:
        t.add_column(c, justify="right" if c in right else "left")
    return t


def kv_table(title: str, items: Iterable[tuple[str, Any]]) -> Block:
    """Two columns: label and value."""
    t = table(title, "", "")
    t.show_header = False
    for k, v in items:
        t.add_row(Text(str(k), style="bold"), v if isinstance(v, Text) else fmt_value(v))
    return t


def counts_table(title: str, counts: Mapping[Any, float], label: str = "", limit: int = 10,
                 total: float | None = None, fmt: Any = fmt_count) -> Block:
    """Top entries of a counter, with share of the total."""
    t = table(title, label or "name", "count", "share", justify_right=("count", "share"))
    whole = total if total is not None else sum(v for v in counts.values() if isinstance(v, (int, float)))
    rows = sorted(((k, v) for k, v in counts.items() if isinstance(v, (int, float))),
                  key=lambda kv: kv[1], reverse=True)[:limit]
    for k, v in rows:
        t.add_row(net_text(k, 40), fmt(v), fmt_pct(v, whole))
    if not rows:
        t.add_row(Text("none yet", style="dim"), "", "")
    return t


def rows_table(title: str, rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None,
               limit: int = 10) -> Block:
    """A list of dicts (a tracker's records) as a table; columns default to the first row's keys."""
    cols = list(columns) if columns else (list(rows[0].keys())[:8] if rows else ["-"])
    t = table(title, *cols)
    for r in rows[:limit]:
        t.add_row(*(fmt_value(r.get(c)) for c in cols))
    if not rows:
        t.add_row(*([Text("none yet", style="dim")] + [Text("")] * (len(cols) - 1)))
    return t


def generic_section(title: str, value: Any, limit: int = 10) -> RenderableType:
    """Render whatever a tracker's as_dict() gives: a counter, a record list, or a scalar map."""
    if isinstance(value, Mapping):
        if value and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value.values()):
            return counts_table(title, value, limit=limit)
        return kv_table(title, ((k, v) for k, v in list(value.items())[:limit * 2]))
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], Mapping):
        return rows_table(title, value, limit=limit)
    return kv_table(title, [(title, value)])
