"""View 1, Traffic: the live flow table (or destinations), with cursor and selection marks.

Columns are added by priority until the width is used, so 80 columns still show who talks to
whom and how much, and 160 columns show everything.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
from rich.text import Text

from dashboard.blocks import emit
from dashboard.state import DashboardState, FlowRow
from dashboard.view_state import ViewState
from dashboard.widgets import NA, fmt_bps, fmt_bytes, fmt_count, net_text, table
from utils.sanitize import clean_text


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    width: int          # cells it needs, with padding
    priority: int       # lower = kept longer
    right: bool
    cell: Callable[[FlowRow], Text | str]


def _rate(r: FlowRow) -> str:
    return NA if r.rate is None else fmt_bps(r.rate)


COLUMNS: tuple[Column, ...] = (
    Column("Source", 23, 1, False, lambda r: r.src),
    Column("Destination", 23, 2, False, lambda r: r.dst),
    Column("FQDN", 26, 7, False, lambda r: net_text(r.fqdn, 60)),
    Column("Proto", 7, 3, False, lambda r: r.proto),
    Column("Sent", 10, 4, True, lambda r: fmt_bytes(r.sent)),
    Column("Recv", 10, 5, True, lambda r: fmt_bytes(r.recv)),
    Column("Pkts", 8, 8, True, lambda r: fmt_count(r.packets)),
    Column("Rate", 11, 6, True, _rate),
    Column("Location", 16, 10, False, lambda r: net_text(r.location, 30)),
    Column("Class", 13, 9, False, lambda r: net_text(r.cls, 20)),
)


def pick_columns(width: int) -> list[Column]:
    budget = width - 2  # selection mark
    chosen: set[str] = set()
    for c in sorted(COLUMNS, key=lambda c: c.priority):
        if c.width <= budget:
            chosen.add(c.name)
            budget -= c.width
    return [c for c in COLUMNS if c.name in chosen]


class FlowTable:
    """Renders the visible rows at whatever width the console offers.

    Rows are laid out by hand into fixed-width cells (one Text per line) instead of a Rich Table:
    a Table measures every cell of every row, which costs ~100 ms for a 160x48 screen, while
    fixed columns cost a few milliseconds. Lines go out as segments (they fit by construction,
    so Rich's wrapping pass is skipped). Cell text is sanitized before layout.
    """

    def __init__(self, state: DashboardState, view: ViewState) -> None:
        self.state = state
        self.view = view

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        st, vs = self.state, self.view
        width = options.max_width
        cols = pick_columns(width)
        widths = [c.width - 1 for c in cols]
        spare = width - 2 - sum(c.width for c in cols)
        # Give what is left to the text columns that can use it.
        flex = [i for i, c in enumerate(cols) if c.name in ("FQDN", "Source", "Destination")]
        for n, i in enumerate(flex):
            extra = spare // len(flex) + (1 if n < spare % len(flex) else 0)
            widths[i] += max(0, extra)
        head = Text("  ", style="bold")
        for c, w in zip(cols, widths):
            head.append(_fit(c.name, w, c.right) + " ", style="bold")
        yield from emit(console, head, width)
        yield from emit(console, Text("─" * min(width, sum(widths) + len(widths) + 2), style="dim"), width)
        for i, r in enumerate(st.rows):
            idx = st.offset + i
            style = "reverse" if idx == vs.cursor else ("bold yellow" if r.selected else "")
            line = Text("* " if r.selected else "  ", style=style, no_wrap=True, overflow="crop")
            for c, w in zip(cols, widths):
                v = c.cell(r)
                if isinstance(v, Text):
                    line.append(_fit(v.plain, w, c.right) + " ", style=v.style or None)
                else:
                    line.append(_fit(v, w, c.right) + " ")
            yield from emit(console, line, width)


def _fit(text: str, width: int, right: bool) -> str:
    if len(text) > width:
        return text[:max(0, width - 1)] + "…" if width > 0 else ""
    return text.rjust(width) if right else text.ljust(width)


def _title(state: DashboardState, view: ViewState) -> Text:
    t = Text()
    what = "destinations" if view.destinations else "flows"
    t.append(f"{what} {state.total_flows}", style="bold")
    if state.total_flows:
        t.append(f"  row {view.cursor + 1}")
    t.append(f"  sort {view.sort}" if not view.destinations else "  sort bytes")
    if view.filter_text:
        t.append("  /" + clean_text(view.filter_text, 40), style="yellow")
    if view.port_filter is not None:
        t.append(f"  :{view.port_filter}", style="yellow")
    if view.proto_filter:
        t.append(f"  proto {view.proto_filter}", style="yellow")
    if view.hide_local:
        t.append("  local hidden", style="yellow")
    if not state.names_available:
        t.append("  (no DNS tracker: FQDN from enrichment only)", style="dim")
    return t


def _destinations(state: DashboardState, view: ViewState) -> RenderableType:
    t = table(None, " ", "Destination", "FQDN", "Flows", "Pkts", "Sent", "Recv", "Ports", "Protocols",
              expand=True, justify_right=("Flows", "Pkts", "Sent", "Recv"))
    for i, (d, name, _) in enumerate(state.dest_rows):
        idx = state.offset + i
        ports = ",".join(str(p) for p in sorted(d.ports)[:6]) + ("…" if len(d.ports) > 6 else "")
        t.add_row("", d.ip, net_text(name, 50), str(d.flows), fmt_count(d.packets),
                  fmt_bytes(d.bytes_sent), fmt_bytes(d.bytes_recv), ports,
                  ",".join(sorted(d.protocols)), style="reverse" if idx == view.cursor else "")
    return t


def render(state: DashboardState, view: ViewState) -> RenderableType:
    from rich.console import Group
    if view.detail_key is not None:
        from dashboard.panels import detail
        return detail.render(state, view)
    body: RenderableType = _destinations(state, view) if view.destinations else FlowTable(state, view)
    if not state.total_flows:
        body = Text("no flows match" if (view.filter_text or view.port_filter is not None
                                         or view.proto_filter or view.hide_local)
                    else "waiting for traffic…", style="dim")
    return Group(_title(state, view), body)
