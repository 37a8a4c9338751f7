"""Traffic detail (Enter): every counter of one flow, TCP state, names, DPI facts, geo/ASN."""
from __future__ import annotations

from typing import Any

from rich.console import Group, RenderableType
from rich.text import Text

from dashboard.blocks import Tiles
from dashboard.state import DashboardState
from dashboard.view_state import ViewState
from dashboard.widgets import fmt_bps, fmt_value, kv_table, net_text, notice


def render(state: DashboardState, view: ViewState) -> RenderableType:
    d = state.detail
    if d is None:
        return notice("this flow is no longer in the table (Esc returns to the list)")
    f: dict[str, Any] = d["flow"]
    title = Text.assemble(("flow ", "bold"), net_text(f["flow_key"], 120), ("   Esc back", "dim"))
    counters = kv_table("Counters", [
        ("protocol", f["protocol"]), ("source", f"{f['src_ip']}:{f['src_port']}" if f["src_port"] is not None else f["src_ip"]),
        ("destination", f"{f['dst_ip']}:{f['dst_port']}" if f["dst_port"] is not None else f["dst_ip"]),
        ("packets sent", f["packets_sent"]), ("packets recv", f["packets_recv"]),
        ("bytes sent", f["bytes_sent"]), ("bytes recv", f["bytes_recv"]),
        ("rate", fmt_bps(d.get("rate"))), ("duration s", f["duration"]),
        ("state", f["state"]), ("ttl sent/recv", f"{f['ttl_sent']}/{f['ttl_recv']}"),
        ("class", f.get("classification") or "—"), ("encrypted", f.get("encrypted")),
    ])
    tcp_keys = [k for k in f if k.startswith("tcp_") or k in (
        "retransmissions", "fast_retransmissions", "out_of_order", "dup_acks", "zero_windows",
        "resets", "handshake_rtt_ms")]
    if f["protocol"] == "TCP" and any(f.get(k) is not None for k in tcp_keys):
        tcp: RenderableType = kv_table("TCP", [(k, f.get(k)) for k in tcp_keys])
    elif f["protocol"] == "TCP":
        tcp = notice("no TCP analysis in this run", "TCP")
    else:
        tcp = Text("")
    names = d.get("names")
    if names is None:
        dns: RenderableType = notice("no DNS tracker in this run", "DNS names")
    else:
        dns = kv_table("DNS names", [("source", net_text(names["src"])),
                                     ("destination", net_text(names["dst"]))])
    dpi_d = d.get("dpi")
    dpi: RenderableType = notice("no deep packet inspection in this run", "DPI") if dpi_d is None else \
        kv_table("DPI", [(k, fmt_value(v)) for k, v in dpi_d.items()] or [("facts", "none seen")])
    extra = d.get("extra") or {}
    geo: RenderableType = kv_table("Geo / owner", [(k, fmt_value(v)) for k, v in extra.items()]) if extra \
        else (Text("Geo / owner: looking up…", style="dim") if "detail" in state.pending
              else notice("no geo/ASN enrichment in this run", "Geo / owner"))
    return Group(title, Tiles([counters, tcp, Group(dns, dpi, geo)]))
