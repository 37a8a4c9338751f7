"""Footer: the filter prompt while typing, else the keys of the current view."""
from __future__ import annotations

from rich.console import RenderableType
from rich.text import Text

from dashboard import keys
from dashboard.state import DashboardState
from dashboard.view_state import ViewState
from utils.sanitize import clean_text


def render(state: DashboardState, view: ViewState) -> RenderableType:
    if view.prompt is not None:
        what = "filter (IP or name)" if view.prompt == "/" else "port"
        t = Text.assemble((f"{what}{view.prompt} ", "bold yellow"), clean_text(view.prompt_buf, 100),
                          ("█", "blink"), ("   Enter apply · Esc cancel", "dim"))
        return t
    t = Text(no_wrap=True, overflow="ellipsis")
    if view.message:
        t.append(clean_text(view.message, 120) + "  ", style="bold yellow")
    if view.simple:
        t.append("Ctrl+C", style="bold")
        t.append(" quit")
        return t
    shown = [b for b in keys.for_view(view.view) if b.footer]
    shown += [b for b in keys.BINDINGS if not b.views and b.footer]
    for b in shown:
        t.append(keys.label(b.keys), style="bold reverse")
        t.append(f" {b.help}  ")
    return t
