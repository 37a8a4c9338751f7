"""View 9, TCP: connection states, handshake RTT distribution, retransmissions, resets,
zero windows, and the flows with the most trouble.

Data: ``agg`` (per-flow TCP analysis of all or selected flows), ``tcp_totals`` (run totals incl.
retired connections, or None).
"""
from __future__ import annotations

from rich.console import Group, RenderableType
from rich.text import Text

from dashboard.blocks import Tiles
from dashboard.aggregate import TCP_COUNTERS
from dashboard.graphs import bar_chart
from dashboard.panels._common import missing, scope
from dashboard.state import DashboardState
from dashboard.view_state import ViewState
from dashboard.widgets import counts_table, kv_table, notice, table

RTT_EDGES_MS = (1, 5, 10, 25, 50, 100, 250, 500, 1000)


def _rtt_hist(rtts: list[float]) -> list[tuple[str, float]]:
    counts = [0] * (len(RTT_EDGES_MS) + 1)
    for r in rtts:
        i = 0
        while i < len(RTT_EDGES_MS) and r >= RTT_EDGES_MS[i]:
            i += 1
        counts[i] += 1
    labels = [f"<{RTT_EDGES_MS[0]}ms"] + [f"{a}-{b}ms" for a, b in zip(RTT_EDGES_MS, RTT_EDGES_MS[1:])] \
        + [f">={RTT_EDGES_MS[-1]}ms"]
    return [(l, c) for l, c in zip(labels, counts) if c]


def render(state: DashboardState, view: ViewState) -> RenderableType:
    agg = state.data.get("agg")
    head = scope(state, "TCP")
    if agg is None:
        return Group(head, missing(state, "agg", "no flow data"))
    if not agg.tcp_flows:
        return Group(head, Text("no TCP flows", style="dim"))
    if not agg.tcp_analyzed:
        return Group(head, notice(f"{agg.tcp_flows} TCP flows, but TCP analysis is not running in this run "
                                  "(no states, RTTs or retransmission counts)"))
    totals = state.data.get("tcp_totals") or {}
    live = kv_table("Active flows", [("TCP flows", agg.tcp_flows)] +
                    [(k.replace("_", " "), agg.tcp_counters.get(k, 0)) for k in TCP_COUNTERS])
    parts = [live, counts_table("States", agg.tcp_states, "state"),
             bar_chart("Handshake RTT", _rtt_hist(agg.rtts_ms), width=14)]
    if totals:
        run = kv_table("Whole run", [(k.replace("_", " "), v) for k, v in totals.items()
                                     if isinstance(v, (int, float)) and not isinstance(v, bool)][:10])
        parts.append(run)
    worst = table("Most trouble", "flow", "retrans", "dup acks", "zero win", "resets", "rtt ms",
                  justify_right=("retrans", "dup acks", "zero win", "resets", "rtt ms"))
    for _, f, d in agg.tcp_worst[:max(3, view.page_rows - 14)]:
        rtt = d.get("handshake_rtt_ms")
        worst.add_row(f"{f.src_ip}:{f.src_port} → {f.dst_ip}:{f.dst_port}",
                      str(d.get("retransmissions", 0)), str(d.get("dup_acks", 0)),
                      str(d.get("zero_windows", 0)), str(d.get("resets", 0)),
                      "—" if rtt is None else f"{rtt:.1f}")
    if not agg.tcp_worst:
        worst.add_row(Text("no retransmissions, resets or zero windows", style="green"), "", "", "", "", "")
    return Group(head, Tiles(parts), worst)
