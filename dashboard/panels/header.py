"""Header: source, filter, session, elapsed, rates, packets, drops, malformed, persistence."""
from __future__ import annotations

from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.text import Text

from dashboard.state import DashboardState
from dashboard.view_state import VIEWS, ViewState
from dashboard.widgets import fmt_bps, fmt_count
from utils.format import human_bytes
from utils.sanitize import clean_text


def _elapsed(s: float) -> str:
    s = int(s)
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def render(state: DashboardState, view: ViewState) -> RenderableType:
    h = state.header
    line1 = Text.assemble(("PacketTracer ", "bold cyan"))
    kind = "file" if h.source_kind == "file" else "iface"
    line1.append(f"{kind} ")
    line1.append(clean_text(h.source, 60), style="bold")
    if h.bpf:
        line1.append("  filter ")
        line1.append(clean_text(h.bpf, 40), style="bold")
    if h.session:
        line1.append(f"  session {h.session}")
    line1.append(f"  up {_elapsed(h.elapsed)}  ")
    line1.append(h.persistence, style="dim")
    if h.paused:
        line1.append("  PAUSED", style="bold black on yellow")
    if h.capture_error:
        line1.append("  capture stopped: " + clean_text(h.capture_error, 60), style="bold red")
    elif h.capture_done:
        line1.append("  capture finished", style="bold green")

    line2 = Text()
    pps = "—" if h.pps is None else f"{fmt_count(h.pps)} pps"
    line2.append(f"{pps}  {fmt_bps(h.bps)}  ")
    line2.append(f"pkts {h.packets}  {human_bytes(h.bytes)}  flows {h.flows_active}/{h.flows_total}  ")
    line2.append(f"drops {h.drops}", style="bold red" if h.drops else "")
    line2.append("  ")
    line2.append(f"malformed {h.malformed}", style="yellow" if h.malformed else "")
    if h.alerts_unack:
        line2.append(f"  alerts {h.alerts_unack}", style="bold red")
    if state.selected_count:
        line2.append(f"  selected {state.selected_count}", style="bold yellow")

    for line in (line1, line2):
        line.no_wrap = True
        line.overflow = "ellipsis"
    return Group(line1, line2, TabBar(view.view))


class TabBar:
    """View tabs; when the full names do not fit, only the active view keeps its name."""

    def __init__(self, active: str) -> None:
        self.active = active

    def _build(self, short: bool) -> Text:
        tabs = Text(no_wrap=True, overflow="ellipsis")
        for vid, (key, title) in VIEWS.items():
            on = vid == self.active
            tabs.append(f" {key} {title} " if on or not short else f" {key} ",
                        style="bold reverse" if on else "dim")
        return tabs

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        full = self._build(False)
        yield full if full.cell_len <= options.max_width else self._build(True)
