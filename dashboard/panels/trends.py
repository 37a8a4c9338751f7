"""View 0, Trends: pps/bps over the last minutes, and bps per protocol and per class, as sparklines."""
from __future__ import annotations

from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.table import Table
from rich.text import Text

from dashboard.graphs import sparkline
from dashboard.state import DashboardState, TrendPoint
from dashboard.view_state import ViewState
from dashboard.widgets import fmt_bps, fmt_count
from utils.sanitize import clean_text

LABEL_W = 14
VALUE_W = 12


class _Sparks:
    def __init__(self, points: tuple[TrendPoint, ...]) -> None:
        self.points = points

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        pts = self.points
        w = max(8, options.max_width - LABEL_W - VALUE_W - 4)
        g = Table.grid(padding=(0, 1))
        g.add_column(width=LABEL_W, no_wrap=True)
        g.add_column(width=VALUE_W, justify="right", no_wrap=True)
        g.add_column(no_wrap=True)

        def line(label: str, series: list[float], fmt: object, style: str) -> None:
            g.add_row(Text(clean_text(label, LABEL_W)), fmt(series[-1]) if series else "—",
                      sparkline(series, w, style))

        line("packets/s", [p.pps for p in pts], fmt_count, "green")
        line("bits/s", [p.bps for p in pts], fmt_bps, "cyan")
        for title, attr, style in (("per protocol", "proto_bps", "magenta"),
                                   ("per class", "class_bps", "yellow")):
            totals: dict[str, float] = {}
            for p in pts[-w:]:
                for k, v in getattr(p, attr).items():
                    totals[k] = totals.get(k, 0.0) + v
            g.add_row(Text(title, style="bold"), "", "")
            for k, _ in sorted(totals.items(), key=lambda kv: kv[1], reverse=True)[:5]:
                line("  " + k, [getattr(p, attr).get(k, 0.0) for p in pts], fmt_bps, style)
        yield g


def render(state: DashboardState, view: ViewState) -> RenderableType:
    pts = state.trends
    head = Text(f"Trends — one point per second of capture time, {len(pts)} points", style="bold")
    if not pts:
        return Group(head, Text("collecting… (the first sample comes after one second)", style="dim"))
    return Group(head, _Sparks(pts))
