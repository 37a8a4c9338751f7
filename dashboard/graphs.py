"""Text graphs: sparklines and horizontal bar charts (pure functions of numbers)."""
from __future__ import annotations

from typing import Iterable, Sequence

from rich.text import Text

from dashboard.blocks import Block
from dashboard.widgets import table
from utils.sanitize import clean_text

_BLOCKS = " ▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[float], width: int | None = None, style: str = "green") -> Text:
    """The last ``width`` values as block characters scaled to their maximum."""
    vals = list(values)[-width:] if width else list(values)
    if not vals:
        return Text("")
    top = max(vals)
    if top <= 0:
        return Text(_BLOCKS[1] * len(vals), style="dim")
    n = len(_BLOCKS) - 1
    chars = "".join(_BLOCKS[max(1, round(v / top * n))] if v > 0 else _BLOCKS[1] for v in vals)
    return Text(chars, style=style)


def bar(value: float, top: float, width: int, style: str = "cyan") -> Text:
    """One horizontal bar, eighth-cell resolution."""
    if top <= 0 or value <= 0 or width <= 0:
        return Text("")
    cells = value / top * width
    full = int(cells)
    part = int((cells - full) * 8)
    return Text("█" * full + ("▏▎▍▌▋▊▉"[part - 1] if part else ""), style=style)


def bar_chart(title: str, items: Iterable[tuple[str, float]], width: int = 30,
              fmt: object = None, style: str = "cyan") -> Block:
    """Label, bar, value for each item (items already in the wanted order)."""
    rows = list(items)
    top = max((v for _, v in rows), default=0)
    t = table(title, "", "", "")
    t.show_header = False
    for label, v in rows:
        shown = fmt(v) if callable(fmt) else f"{v:g}"
        t.add_row(Text(clean_text(label, 24)), bar(v, top, width, style), Text(str(shown)))
    if not rows:
        t.add_row(Text("none yet", style="dim"), "", "")
    return t
