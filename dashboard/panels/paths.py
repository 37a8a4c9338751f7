"""View 2, Paths: traceroutes (mtr-like) once a path tracer exists in the runtime."""
from __future__ import annotations

from rich.console import Group, RenderableType
from rich.text import Text

from dashboard.panels._common import component
from dashboard.state import DashboardState
from dashboard.view_state import ViewState
from dashboard.widgets import notice
from utils.sanitize import clean_text


def render(state: DashboardState, view: ViewState) -> RenderableType:
    parts: list[RenderableType] = [Text("Paths", style="bold")]
    if state.data.get("paths") is None:
        parts.append(notice("no traceroute engine is available in this build yet "
                            "(path tracing arrives with tracking/path.py)"))
    else:
        parts.append(component(state, "paths", "no traceroutes yet", limit=30))
    if view.trace_requests:
        parts.append(Text("requested from Traffic (t): " +
                          ", ".join(clean_text(x, 60) for x in view.trace_requests[-5:]), style="dim"))
    return Group(*parts)
