"""Relay view (r): connected agents, their rates, drops, last heartbeat."""
from __future__ import annotations

from rich.console import Group, RenderableType
from rich.text import Text

from dashboard.panels._common import component
from dashboard.state import DashboardState
from dashboard.view_state import ViewState
from dashboard.widgets import notice


def render(state: DashboardState, view: ViewState) -> RenderableType:
    if state.data.get("relay") is None:
        return Group(Text("Relay", style="bold"),
                     notice("no relay is connected: this run captures locally only"))
    return Group(Text("Relay agents", style="bold"), component(state, "relay", "no agents", limit=20))
