"""Relay view (r): connected agents, their rates, drops, buffers and last heartbeat.

Reads ``state.data["relay"]``: the relay server's ``snapshot()`` (a dict with ``agents`` rows),
or None when this run has no relay server.
"""
from __future__ import annotations

from typing import Any, Mapping

from rich.console import Group, RenderableType
from rich.text import Text

from dashboard.state import DashboardState
from dashboard.view_state import ViewState
from dashboard.widgets import NA, fmt_bps, fmt_bytes, fmt_count, net_text, notice, table

_STATE_STYLE = {"connected": "green", "lost": "red", "closed": "dim"}
COLUMNS = ("Agent", "State", "Address", "Version", "Heartbeat", "Packets/s", "Rate", "Packets",
           "Drops", "Buffered", "Buf. dropped", "CPU")


def _age(seconds: Any) -> str:
    if seconds is None:
        return NA
    return f"{seconds:.0f} s ago" if seconds < 120 else f"{seconds / 60:.0f} min ago"


def agent_row(a: Mapping[str, Any]) -> list[Text]:
    state = str(a.get("state") or "")
    drops = int(a.get("drops") or 0)
    dropped = int(a.get("buffer_dropped") or 0)
    return [
        net_text(a.get("agent"), 32, "bold"),
        Text(state or NA, style=_STATE_STYLE.get(state, "")),
        net_text(a.get("address"), 40),
        net_text(a.get("version"), 16),
        Text(_age(a.get("heartbeat_age"))),
        Text(fmt_count(a.get("pps"))),
        Text(fmt_bps(a.get("bps"))),
        Text(fmt_count(a.get("packets"))),
        Text(fmt_count(drops), style="red" if drops else ""),
        Text(fmt_count(a.get("buffered"))),
        Text(fmt_count(dropped), style="red" if dropped else ""),
        Text(f"{a.get('cpu_percent') or 0.0:.0f}%"),
    ]


def render(state: DashboardState, view: ViewState) -> RenderableType:
    snap = state.data.get("relay")
    if snap is None:
        return Group(Text("Relay", style="bold"),
                     notice("no relay is connected: this run captures locally only"))
    agents = list(snap.get("agents") or [])
    head = Text.assemble(
        ("Relay server ", "bold"), net_text(snap.get("listening"), 60),
        f" — {snap.get('connected', 0)} of {len(agents)} agent(s) connected, "
        f"{fmt_count(snap.get('flows', 0))} flows merged")
    parts: list[RenderableType] = [head]
    rejected = snap.get("rejected") or {}
    if rejected:
        parts.append(Text("rejected: " + ", ".join(f"{k} {v}" for k, v in sorted(rejected.items())),
                          style="yellow"))
    if not agents:
        parts.append(notice("no agent has connected yet"))
        return Group(*parts)
    t = table(None, *COLUMNS, justify_right=COLUMNS[5:])
    for a in agents[:50]:
        t.add_row(*agent_row(a))
    parts.append(t)
    total_in = sum(int(a.get("bytes_in") or 0) for a in agents)
    parts.append(Text(f"received from agents: {fmt_bytes(total_in)}", style="dim"))
    return Group(*parts)
