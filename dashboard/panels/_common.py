"""Pieces several panels share: the scope line and a generic renderer for component snapshots."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from rich.console import Group, RenderableType
from rich.text import Text

from dashboard.blocks import Tiles
from dashboard.state import DashboardState
from dashboard.widgets import generic_section, kv_table, notice

_IP_FIELDS = ("src", "dst", "src_ip", "dst_ip", "client", "server", "ip", "host", "resolver")


def scope(state: DashboardState, what: str) -> Text:
    """Says whether the view covers all traffic or only the selected flows."""
    if state.selected_count:
        return Text(f"{what} — only the {state.selected_count} selected flow(s) (Traffic: c clears)",
                    style="bold yellow")
    return Text(f"{what} — all traffic", style="bold")


def plain(value: Any) -> Any:
    """Dataclasses (frozen snapshots) to dicts, so one renderer handles every component."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)) and value and dataclasses.is_dataclass(value[0]):
        return [plain(v) for v in value]
    return value


def missing(state: DashboardState, name: str, message: str, title: str = "") -> RenderableType:
    """What to show for absent data: "computing…" while the background worker is on it,
    else the plain statement that the feature is not there."""
    if name in state.pending:
        return Text(f"{title + ': ' if title else ''}computing… ({state.header.flows_active} flows)",
                    style="dim")
    return notice(message, title)


def touches(row: Mapping[str, Any], ips: frozenset[str]) -> bool:
    return any(row.get(k) in ips for k in _IP_FIELDS)


def component(state: DashboardState, name: str, missing: str, limit: int = 8,
              skip: tuple[str, ...] = ()) -> RenderableType:
    """A component's snapshot as sections; rows are filtered to the selection when they name IPs."""
    if name not in state.data or state.data[name] is None:
        return notice(missing)
    data = plain(state.data[name])
    ips = state.data.get("selected_ips")
    if not isinstance(data, Mapping):
        data = {name: data}
    parts: list[RenderableType] = []
    scalars = [(k, v) for k, v in data.items() if k not in skip and not isinstance(v, (Mapping, list, tuple))]
    if scalars:
        parts.append(kv_table(name.replace("_", " "), scalars))
    for key, value in data.items():
        if key in skip or (key, value) in scalars:
            continue
        if ips and isinstance(value, list) and value and isinstance(value[0], Mapping) \
                and any(k in value[0] for k in _IP_FIELDS):
            value = [r for r in value if touches(r, ips)]
        parts.append(generic_section(str(key), value, limit))
    return Tiles(parts) if parts else Text("nothing recorded yet", style="dim")


def group(*items: RenderableType) -> RenderableType:
    return Group(*items)
