"""The ``?`` overlay: every key of the key table, in two columns so it fits 80x24."""
from __future__ import annotations

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from dashboard import keys
from dashboard.state import DashboardState
from dashboard.view_state import VIEWS, ViewState


def entries() -> list[tuple[str, str]]:
    """(keys, help) for every binding; the view-switch keys are folded into one line."""
    out: list[tuple[str, str]] = []
    view_keys = [b for b in keys.BINDINGS if b.action == "view"]
    out.append(("".join(b.keys[0] for b in view_keys), "switch view (names in the tab bar)"))
    for b in keys.BINDINGS:
        if b.action == "view":
            continue
        where = "" if not b.views else " (" + ",".join(VIEWS[v][1] for v in b.views) + ")"
        out.append((keys.label(b.keys), b.help + where))
    return out


def render(state: DashboardState, view: ViewState) -> RenderableType:
    items = entries()
    half = (len(items) + 1) // 2
    grid = Table.grid(padding=(0, 2), expand=True)
    grid.add_column(ratio=1)
    grid.add_column(ratio=1)

    def cell(i: int) -> Text:
        if i >= len(items):
            return Text("")
        k, h = items[i]
        t = Text.assemble((f"{k:>9} ", "bold cyan"), h)
        t.no_wrap = True
        t.overflow = "ellipsis"
        return t

    for i in range(half):
        grid.add_row(cell(i), cell(i + half))
    return Panel(Group(Text("Keys — Esc or ? closes this help", style="bold"), grid),
                 title="Help", border_style="cyan")
