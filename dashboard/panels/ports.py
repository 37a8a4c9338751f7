"""View 5, Ports: port table, ranges, services, scan detection, top hit ports bar chart.

Data: ``ports`` (tracking.ports.PortsSnapshot) or, with a selection, ``agg.ports`` from flows.
"""
from __future__ import annotations

from collections import Counter
from typing import Any

from rich.console import Group, RenderableType
from rich.text import Text

from dashboard.blocks import Tiles
from dashboard.graphs import bar_chart
from dashboard.panels._common import missing, scope
from dashboard.state import DashboardState
from dashboard.view_state import ViewState
from dashboard.widgets import fmt_bps, fmt_bytes, fmt_count, net_text, notice, table
from tracking.services import port_range, service_name


def _from_selection(state: DashboardState, view: ViewState) -> RenderableType:
    agg = state.data["agg"]
    t = table("Destination ports of the selected flows", "port", "proto", "service", "packets",
              "bytes", "flows", justify_right=("packets", "bytes", "flows"))
    key = {"packets": 0, "bytes": 1, "connections": 2, "rate": 1}[view.ports_sort]
    for (proto, port), v in sorted(agg.ports.items(), key=lambda kv: kv[1][key], reverse=True)[:view.page_rows]:
        t.add_row(str(port), proto, service_name(port) or "", fmt_count(v[0]), fmt_bytes(v[1]), str(v[2]))
    return t


def render(state: DashboardState, view: ViewState) -> RenderableType:
    head = scope(state, f"Ports (sort {view.ports_sort})")
    if state.selected_count and state.data.get("agg") is not None:
        return Group(head, _from_selection(state, view))
    if state.selected_count and "agg" in state.pending:
        return Group(head, missing(state, "agg", ""))
    snap: Any = state.data.get("ports")
    if snap is None:
        return Group(head, notice("no port tracker in this run"))
    rows = snap.rows
    t = table(f"{snap.total_ports} ports", "port", "proto", "service", "range", "packets", "bytes",
              "conns", "hits", "rate", justify_right=("packets", "bytes", "conns", "hits", "rate"))
    for r in rows[:max(3, view.page_rows - 12)]:
        t.add_row(str(r.port), r.proto, net_text(r.service, 16), r.range, fmt_count(r.packets),
                  fmt_bytes(r.bytes), fmt_count(r.connections), str(r.hits), fmt_bps(r.bps / 8))
    ranges: Counter = Counter()
    services: Counter = Counter()
    for r in rows:
        ranges[r.range or port_range(r.port)] += r.bytes
        if r.service:
            services[r.service] += r.bytes
    scans = table("Scan detection", "source", "ports", "hosts", "rate/s", "verdict",
                  justify_right=("ports", "hosts", "rate/s"))
    for s in snap.scanners[:6]:
        scans.add_row(s.src_ip, str(s.port_count), str(s.host_count), f"{s.rate:.1f}",
                      Text("LIKELY SCANNER", style="bold red") if s.likely_scanner else Text("suspicious", style="yellow"))
    if not snap.scanners:
        scans.add_row(Text("no scanning seen", style="green"), "", "", "", "")
    hits = bar_chart("Top hit ports", [(f"{r.port}/{r.proto}", r.hits) for r in
                                       sorted(rows, key=lambda r: r.hits, reverse=True)[:6]], width=16)
    side = Tiles([bar_chart("Ranges (bytes)", ranges.most_common(3), width=12, fmt=fmt_bytes),
                    scans, hits])
    return Group(head, t, side)
