"""The frame: header, the active view (or help), error line, footer — from one state.

    ┌ header: source · filter · session · elapsed · persistence ┐  3 lines
    │ rates · packets · drops · malformed · alerts · selection   │
    │ tab bar 1 Traffic 2 Paths … r Relay                        │
    ├ body: the active panel, or the help overlay                ┤  height - 4 (- errors)
    ├ errors of components, if any                               ┤  0-1 line
    └ footer: this view's keys, or the filter prompt             ┘  1 line
"""
from __future__ import annotations

from typing import Callable

from rich.console import RenderableType
from rich.layout import Layout
from rich.text import Text

from dashboard.panels import (alerts, analysis, dns, dpi, footer, header, help as help_panel,
                              paths, ports, relay, stats, tcp, traffic, trends)
from dashboard.state import DashboardState
from dashboard.view_state import ViewState
from utils.logger import get_logger
from utils.sanitize import clean_text

log = get_logger(__name__)

HEADER_LINES = 3
FOOTER_LINES = 1
#: lines of the Traffic body above the first row: title line, column header, rule
TABLE_CHROME = 3

Panel = Callable[[DashboardState, ViewState], RenderableType]
PANELS: dict[str, Panel] = {
    "traffic": traffic.render, "paths": paths.render, "stats": stats.render,
    "analysis": analysis.render, "ports": ports.render, "dns": dns.render, "dpi": dpi.render,
    "alerts": alerts.render, "tcp": tcp.render, "trends": trends.render, "relay": relay.render,
}


def page_rows(height: int, state: DashboardState | None = None) -> int:
    errors = 1 if state is not None and state.errors else 0
    return max(1, height - HEADER_LINES - FOOTER_LINES - TABLE_CHROME - errors)


def body(state: DashboardState, view: ViewState) -> RenderableType:
    if view.help:
        return help_panel.render(state, view)
    try:
        return PANELS[view.view](state, view)
    except Exception as exc:  # boundary: one broken panel must not take the dashboard down
        log.exception("panel %s failed", view.view)
        return Text(f"this view failed to render: {type(exc).__name__}: {clean_text(exc, 200)}",
                    style="bold red")


def frame(state: DashboardState, view: ViewState) -> RenderableType:
    layout = Layout()
    parts = [Layout(header.render(state, view), name="header", size=HEADER_LINES),
             Layout(body(state, view), name="body", ratio=1)]
    if state.errors:
        parts.append(Layout(Text("errors: " + "; ".join(clean_text(e, 120) for e in state.errors[:3]),
                                 style="bold red", no_wrap=True, overflow="ellipsis"), size=1))
    parts.append(Layout(footer.render(state, view), name="footer", size=FOOTER_LINES))
    layout.split_column(*parts)
    return layout
