"""View 3, Stats: overview, protocols, top talkers/destinations with names, domains, countries, ASNs.

Data: ``agg`` (FlowAggregate of all or selected flows), ``names`` (ip -> name), ``domains``,
``countries`` and ``owners`` (bytes over the busiest destinations; None without enrichment),
``packet_stats`` (the packet statistics component, if any).
"""
from __future__ import annotations

from typing import Any, Mapping

from rich.console import Group, RenderableType
from rich.text import Text

from dashboard.blocks import Tiles
from dashboard.panels._common import missing, scope
from dashboard.state import DashboardState
from dashboard.view_state import ViewState
from dashboard.widgets import counts_table, fmt_bytes, kv_table, net_text, notice, table


def _talkers(title: str, top: list[tuple[str, int]], names: Mapping[str, str], limit: int = 8) -> Any:
    t = table(title, "address", "name", "bytes", justify_right=("bytes",))
    for ip, b in top[:limit]:
        t.add_row(ip, net_text(names.get(ip, ""), 40), fmt_bytes(b))
    if not top:
        t.add_row(Text("none yet", style="dim"), "", "")
    return t


def render(state: DashboardState, view: ViewState) -> RenderableType:
    agg = state.data.get("agg")
    if agg is None:
        return Group(scope(state, "Statistics"), missing(state, "agg", "no flow data"))
    names = state.data.get("names") or {}
    overview = kv_table("Overview", [
        ("flows", agg.flows), ("packets", agg.packets), ("bytes", fmt_bytes(agg.bytes)),
        ("sources", len(agg.talkers)), ("destinations", len(agg.destinations)),
        ("capture packets", state.header.packets), ("malformed", state.header.malformed),
    ])
    n = max(3, view.page_rows // 3)
    protos = counts_table("Protocols (bytes)", agg.proto_bytes, "protocol", fmt=fmt_bytes, limit=n)
    # Most telling first: on a small terminal the later tables fall off the bottom.
    parts: list[RenderableType] = [_talkers("Top destinations", agg.top_destinations, names, n),
                                   _talkers("Top talkers", agg.top_talkers, names, n),
                                   protos, overview]
    domains = state.data.get("domains")
    parts.append(counts_table("Top domains (bytes)", domains, "domain", fmt=fmt_bytes, limit=n) if domains
                 else missing(state, "stats", "no names for destinations yet (needs DNS answers)",
                              "Top domains"))
    for key, title in (("countries", "Countries"), ("owners", "ISPs / ASNs")):
        c = state.data.get(key)
        parts.append(counts_table(f"{title} (bytes)", c, fmt=fmt_bytes, limit=n) if c
                     else missing(state, "stats", "no geo/ASN enrichment in this run", title))
    ps = state.data.get("packet_stats")
    if ps is None:
        parts.append(notice("packet statistics: not available in this run"))
    else:
        parts.append(counts_table("Packets by protocol", ps.protocols, "protocol"))
        parts.append(counts_table("IP versions", ps.ip_versions, "version"))
        if ps.tunneled:
            parts.append(counts_table("Tunnelled", ps.tunneled, "tunnel"))
    caches = state.data.get("caches")
    if caches:
        parts.append(component_list("Caches", caches))
    return Group(scope(state, "Statistics"), Tiles(parts))


def component_list(title: str, items: list) -> RenderableType:
    from dashboard.panels._common import plain
    from dashboard.widgets import rows_table
    return rows_table(title, [plain(i) for i in items])
