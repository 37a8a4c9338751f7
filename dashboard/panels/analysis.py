"""View 4, Analysis: classification and encryption share, protocols, sizes, TCP flags."""
from __future__ import annotations

from rich.console import Group, RenderableType

from dashboard.blocks import Tiles
from dashboard.graphs import bar_chart
from dashboard.panels._common import missing, scope
from dashboard.state import DashboardState
from dashboard.view_state import ViewState
from dashboard.widgets import counts_table, fmt_bytes, fmt_pct, kv_table, notice


def render(state: DashboardState, view: ViewState) -> RenderableType:
    agg = state.data.get("agg")
    if agg is None:
        return Group(scope(state, "Analysis"), missing(state, "agg", "no flow data"))
    share = kv_table("Encryption / classification", [
        ("encrypted flows", f"{agg.encrypted_flows} ({fmt_pct(agg.encrypted_flows, agg.flows)})"),
        ("encrypted bytes", f"{fmt_bytes(agg.encrypted_bytes)} ({fmt_pct(agg.encrypted_bytes, agg.bytes)})"),
        ("classified flows", f"{agg.classified_flows} ({fmt_pct(agg.classified_flows, agg.flows)})"),
    ])
    classes = counts_table("Classes (bytes)", agg.classes, "class", fmt=fmt_bytes) if agg.classes \
        else notice("no flow classification in this run (classifier not running)", "Classes")
    protos = bar_chart("Protocols (flows)", agg.proto_flows.most_common(8), width=20)
    flags = bar_chart("TCP flags (flows carrying)", [(k, agg.tcp_flags[k]) for k in
                                                     ("SYN", "ACK", "FIN", "RST", "PSH", "URG")
                                                     if k in agg.tcp_flags], width=20)
    parts = [share, classes, protos, flags]
    ps = state.data.get("packet_stats")
    if ps is None:
        parts.append(notice("packet size histogram: no packet statistics in this run"))
    else:
        # Packet-level counts come from the packet statistics, which cover all traffic.
        parts.append(bar_chart("Packet sizes (all traffic)", list(ps.sizes.items()), width=16))
        if ps.icmp_types:
            parts.append(counts_table("ICMP types", ps.icmp_types, "type"))
    return Group(scope(state, "Analysis"), Tiles(parts))
