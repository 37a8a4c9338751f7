"""View 8, Alerts: the live alert list (newest first); Space/Enter acknowledges the one under the cursor.

Data: ``security`` = SecurityMonitor.snapshot() (``alerts`` list of Alert.to_dict(), newest first).
"""
from __future__ import annotations

import time
from typing import Any

from rich.console import Group, RenderableType
from rich.text import Text

from dashboard.panels._common import scope, touches
from dashboard.state import DashboardState
from dashboard.view_state import ViewState
from dashboard.widgets import net_text, notice, table

SEVERITY_STYLE = {"critical": "bold white on red", "high": "bold red", "medium": "yellow",
                  "low": "cyan", "info": "dim"}


def alert_rows(state: DashboardState) -> list[dict[str, Any]]:
    snap = state.data.get("security")
    if not isinstance(snap, dict):
        return []
    rows = list(snap.get("alerts") or [])
    ips = state.data.get("selected_ips")
    if ips:
        rows = [r for r in rows if touches(r, ips)]
    return rows


def render(state: DashboardState, view: ViewState) -> RenderableType:
    snap = state.data.get("security")
    if snap is None:
        return Group(Text("Alerts", style="bold"), notice("no security monitor in this run: no detections"))
    rows = alert_rows(state)
    unack = snap.get("unacknowledged", 0) if isinstance(snap, dict) else 0
    head = scope(state, f"Alerts: {len(rows)} shown, {unack} unacknowledged")
    t = table(None, " ", "severity", "time", "source", "rule", "detail", "count", expand=True,
              justify_right=("count",))
    page = max(1, view.page_rows - 2)
    cur = min(view.alert_cursor, max(0, len(rows) - 1))
    start = max(0, cur - page + 1)
    for i, r in enumerate(rows[start:start + page], start):
        sev = str(r.get("severity", ""))
        ts = r.get("last_ts") or r.get("ts") or 0
        style = "reverse" if i == cur else ("dim" if r.get("acknowledged") else "")
        t.add_row("✓" if r.get("acknowledged") else "!",
                  Text(sev, style=SEVERITY_STYLE.get(sev, "")),
                  time.strftime("%H:%M:%S", time.localtime(ts)) if ts else "—",
                  net_text(r.get("src"), 40), net_text(r.get("rule_id"), 24),
                  net_text(r.get("message"), 200), str(r.get("count", 1)), style=style)
    if not rows:
        return Group(head, Text("no alerts", style="green"))
    return Group(head, t)
