"""View 7, DPI: OS fingerprints, TLS SNI/JA3/JA4, HTTP hosts, application protocols, anomaly scores.

Data: ``dpi`` (tallies from dashboard.collect.dpi_facts over all or the selected flows);
``devices`` (optional: the device inventory's rows, export.devices.device_section).
"""
from __future__ import annotations

from rich.console import Group, RenderableType
from rich.text import Text

from dashboard.blocks import Block, Tiles
from dashboard.panels._common import missing, scope
from dashboard.state import DashboardState
from dashboard.view_state import ViewState
from dashboard.widgets import counts_table, net_text, table


def render(state: DashboardState, view: ViewState) -> RenderableType:
    head = scope(state, "Deep packet inspection")
    d = state.data.get("dpi")
    if d is None:
        return Group(head, missing(state, "dpi", "no deep packet inspection in this run: SNI, "
                                   "JA3/JA4, HTTP hosts and OS fingerprints are not being collected"))
    n = max(3, (view.page_rows - 6) // 2)
    parts = [counts_table("Application protocols (flows)", d["apps"], "protocol", limit=n),
             counts_table("TLS SNI", d["sni"], "server name", limit=n),
             counts_table("HTTP hosts", d["http_hosts"], "host", limit=n),
             counts_table("JA3", d["ja3"], "fingerprint", limit=n),
             counts_table("JA4", d["ja4"], "fingerprint", limit=n),
             counts_table("OS fingerprints", d["os"], "host / OS", limit=n)]
    an = table("Anomalies", "score", "flow", "reasons", justify_right=("score",))
    for score, key, reasons in d["anomalies"][:n]:
        an.add_row(str(score), net_text(key, 60), net_text(", ".join(reasons), 80))
    if not d["anomalies"]:
        an.add_row("", Text("no anomalies", style="green"), "")
    extra = [an]
    devs = state.data.get("devices")
    if devs:
        extra.append(devices_table(devs, state.data.get("selected_ips"), n))
    return Group(head, Text(f"{d['inspected']} flows inspected", style="dim"),
                 Tiles(parts + extra))


def devices_table(devices: list[dict], selected_ips: frozenset[str] | None, limit: int) -> Block:
    """Hosts on the local segment (passive inventory), busiest first; the selection's first."""
    rows = sorted(devices, key=lambda d: (not (selected_ips and set(d.get("ips") or ()) &
                                              selected_ips), -(d.get("packets") or 0)))
    t = table(f"Devices ({len(devices)})", "MAC / vendor", "IP", "name", "OS", "role")
    for d in rows[:limit]:
        t.add_row(net_text(f"{d['mac']} {d.get('vendor') or ''}", 36),
                  net_text(", ".join(d.get("ips") or ()), 30), net_text(d.get("hostname") or "", 24),
                  net_text(d.get("os") or "", 16), net_text(d.get("role") or "", 10))
    return t
