"""View 2, Paths: mtr-style hop tables of the traced destinations, with route history.

Data: ``paths`` (tracking.path_stats.PathsSnapshot from ``runtime.components.paths``, None when
the run has no tracer), ``path_endpoints`` (ip -> fqdn/asn/as_org/country/city from the
enricher, may be missing), ``selected_ips`` (the Traffic selection: only destinations in it are
shown when any is traced).
"""
from __future__ import annotations

import time
from typing import Any, Mapping

from rich.console import Group, RenderableType
from rich.text import Text

from dashboard.state import DashboardState
from dashboard.view_state import ViewState
from dashboard.widgets import notice, table
from utils.sanitize import clean_text

_STATE_STYLE = {"running": "green", "starting": "yellow", "done": "cyan", "stopped": "dim",
                "error": "bold red"}


def _ms(v: float | None) -> str:
    return f"{v:.1f}" if v is not None else "-"


def _loss_style(pct: float) -> str:
    return "" if pct == 0 else "yellow" if pct < 20 else "bold red"


def _owner(e: Mapping[str, Any]) -> str:
    asn, org = e.get("asn"), e.get("as_org")
    if asn and org:
        return f"AS{asn} {org}"
    return f"AS{asn}" if asn else (org or "")


def _loc(e: Mapping[str, Any]) -> str:
    return ", ".join(x for x in (e.get("city"), e.get("country")) if x)


def _route(hops: tuple[str | None, ...] | list[str | None]) -> str:
    return " > ".join(h or "*" for h in hops)


def _destination(d: Any, names: Mapping[str, Mapping[str, Any]], rows: int) -> list[RenderableType]:
    head = Text()
    head.append(clean_text(d.name, 60), style="bold")
    if d.name != d.target:
        head.append(f" ({d.target})", style="dim")
    port = f" :{d.port}" if d.port else ""
    head.append(f"  {d.method.upper()}{port}  ")
    head.append(d.state, style=_STATE_STYLE.get(d.state, ""))
    head.append(f"  {d.rounds} rounds  ")
    hops = f"{d.hop_count} hops" if d.reached else f"{d.hop_count} hops, destination not reached"
    if d.passive_hops is not None:
        hops += f" (passive estimate {d.passive_hops})"
    head.append(hops)
    if d.error:
        head.append(f"  {clean_text(d.error, 80)}", style="red")
    out: list[RenderableType] = [head]
    t = table(None, "Hop", "Address", "Name", "Owner", "Location", "Loss%", "Snt", "Last",
              "Avg", "Best", "Wrst", "StDev",
              justify_right=("Hop", "Loss%", "Snt", "Last", "Avg", "Best", "Wrst", "StDev"))
    for h in d.hops[:rows]:
        addrs = h.addresses or ("*",)
        for i, addr in enumerate(addrs[:3]):  # ECMP: further addresses on their own lines
            e = names.get(addr, {}) if addr != "*" else {}
            shown = clean_text(addr, 40) + (" !" if h.unreachable and i == 0 else "")
            if i:
                t.add_row("", Text(shown, style="dim"), clean_text(e.get("fqdn") or "", 32),
                          clean_text(_owner(e), 28), clean_text(_loc(e), 20), "", "", "", "", "",
                          "", "")
                continue
            t.add_row(str(h.ttl), Text(shown, style="bold" if h.is_destination else ""),
                      clean_text(e.get("fqdn") or "", 32), clean_text(_owner(e), 28),
                      clean_text(_loc(e), 20), Text(f"{h.loss_pct:.1f}", style=_loss_style(h.loss_pct)),
                      str(h.sent), _ms(h.last_ms), _ms(h.avg_ms), _ms(h.best_ms), _ms(h.worst_ms),
                      _ms(h.stddev_ms))
    if len(d.hops) > rows:
        t.add_row("", Text(f"… {len(d.hops) - rows} more hops", style="dim"), *[""] * 10)
    out.append(t if d.hops else Text("  waiting for replies…", style="dim"))
    if d.changes:
        c = d.changes[-1]
        when = time.strftime("%H:%M:%S", time.localtime(c.ts))
        out.append(Text(f"  route changed {len(d.changes)}× — last {when} at hop "
                        f"{', '.join(map(str, c.changed_hops))}: {clean_text(_route(c.old), 120)}"
                        f"  →  {clean_text(_route(c.new), 120)}", style="yellow"))
    if len(d.routes) > 1:
        out.append(Text(f"  {len(d.routes)} routes seen: " + "; ".join(
            f"{clean_text(_route(r.hops), 80)} ×{r.times_seen}" for r in d.routes[:3]), style="dim"))
    return out


def render(state: DashboardState, view: ViewState) -> RenderableType:
    parts: list[RenderableType] = [Text("Paths", style="bold")]
    snap = state.data.get("paths")
    if snap is None:
        parts.append(notice("no traceroute engine is available in this run "
                            "(the path tracer needs root or CAP_NET_RAW)"))
        if view.trace_requests:
            parts.append(Text("requested from Traffic (t): " + ", ".join(
                clean_text(x, 60) for x in view.trace_requests[-5:]), style="dim"))
        return Group(*parts)
    dests = list(snap.destinations)
    ips = state.data.get("selected_ips")
    if ips and any(d.target in ips for d in dests):
        dests = [d for d in dests if d.target in ips]
    parts[0] = Text.assemble(("Paths", "bold"), (
        f"  {len(dests)} destination(s) · {snap.probes_sent} probes · {snap.replies} replies · "
        f"limit {snap.rate_limit_pps:.0f} probes/s", "dim"))
    if not dests:
        parts.append(Text("no traceroutes yet: t (or Enter) on a flow in Traffic, s here for the "
                          "selected flows, or start with -t HOST", style="dim"))
    names = state.data.get("path_endpoints") or {}
    budget = max(4, view.page_rows - 2 * len(dests))
    per = max(3, budget // max(1, len(dests)))
    for d in dests:
        parts.extend(_destination(d, names, per))
    for e in snap.errors[-3:]:
        parts.append(Text(clean_text(e, 120), style="red"))
    return Group(*parts)
