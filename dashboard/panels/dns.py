"""View 6, DNS: queries per second, top domains, response codes, slowest and unanswered
queries, per-client NXDOMAIN. With a selection, client tables keep the selected addresses.

Data: ``dns`` (tracking.dns_tracker.DnsSnapshot), ``rcodes`` (Counter of rcode names).
"""
from __future__ import annotations

from typing import Any

from rich.console import Group, RenderableType
from rich.text import Text

from dashboard.blocks import Tiles
from dashboard.panels._common import missing, scope
from dashboard.state import DashboardState
from dashboard.view_state import ViewState
from dashboard.widgets import counts_table, kv_table, net_text, notice, table


def _keep(ips: frozenset[str] | None, *addrs: str) -> bool:
    return not ips or any(a in ips for a in addrs)


def render(state: DashboardState, view: ViewState) -> RenderableType:
    head = scope(state, "DNS")
    snap: Any = state.data.get("dns")
    if snap is None:
        return Group(head, notice("no DNS tracker in this run: DNS queries are not being analysed"))
    ips = state.data.get("selected_ips")
    n = max(3, (view.page_rows - 4) // 2)
    overview = kv_table("Overview", [
        ("queries/s", f"{snap.qps:.2f}"), ("messages", snap.messages), ("queries", snap.queries),
        ("responses", snap.responses), ("pending", snap.pending),
        ("unanswered", snap.unanswered_total), ("malformed", snap.malformed),
        *((p, c) for p, c in snap.by_proto)])
    top = counts_table("Top domains (queries)", dict(snap.top_domains), "domain", limit=n)
    rc = state.data.get("rcodes")
    rcodes = counts_table("Response codes", rc, "rcode", limit=n) if rc is not None \
        else missing(state, "rcodes", "response codes: not available", "Response codes")
    clients = table("Clients", "client", "queries", "answers", "NXDOMAIN", "rate",
                    justify_right=("queries", "answers", "NXDOMAIN", "rate"))
    for c in [c for c in snap.clients if _keep(ips, c.client)][:n]:
        clients.add_row(c.client, str(c.queries), str(c.responses),
                        Text(str(c.nxdomain), style="bold red" if c.nxdomain else ""),
                        f"{100 * c.nxdomain_rate:.0f}%")
    slow = table("Slowest", "name", "server", "ms", justify_right=("ms",))
    for r in [r for r in snap.slowest if _keep(ips, r.client, r.server)][:n]:
        slow.add_row(net_text(r.qname, 40), r.server, f"{r.latency_ms:.1f}" if r.latency_ms is not None else "—")
    unans = table("Unanswered", "name", "client", "server")
    for r in [r for r in snap.unanswered if _keep(ips, r.client, r.server)][:n]:
        unans.add_row(net_text(r.qname, 40), r.client, r.server)
    if not snap.unanswered:
        unans.add_row(Text("none", style="green"), "", "")
    return Group(head, Tiles([overview, top, rcodes, clients]),
                 Tiles([slow, unans]))
