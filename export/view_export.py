"""Exports started from the dashboard: what a view shows, to a file named for the session and time.

``e`` writes the rows of the current view (the flows of Traffic, the DNS, Ports, Alerts, TCP or
Paths rows of those views), honouring the selection and, on Traffic, the filters:

* with flows selected: the selected flows (and, in the other views, the rows about them: DNS
  transactions and alerts of their addresses, their ports, their TCP connections);
* otherwise: the flows the Traffic filters let through, in the view's sort order, or all the rows
  of the other views.

``w`` writes the selected flows' packets (or the flow under the cursor) from the packet ring to a
pcapng file.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from export.base import ExportResult, RuntimeSource, exporter_for, tcp_rows
from export.packet_ring import write_flow_packets
from tracking.flow import filter_flows, sort_flows
from utils.logger import chown_to_invoking_user, expand_user_path

#: view -> kind of rows its export holds (views without rows of their own export their flows)
VIEW_KINDS: dict[str, str] = {"traffic": "flows", "dns": "dns", "ports": "ports",
                              "alerts": "alerts", "tcp": "tcp", "paths": "paths"}
#: defaults; config constants EXPORT_DIR / EXPORT_FORMAT override them
DEFAULT_FORMAT = "csv"


#: what the rows of each kind are, for messages: (one, many)
KIND_LABELS: dict[str, tuple[str, str]] = {
    "flows": ("flow", "flows"), "dns": ("DNS transaction", "DNS transactions"),
    "ports": ("port", "ports"), "alerts": ("alert", "alerts"),
    "tcp": ("TCP connection", "TCP connections"), "paths": ("path row", "path rows"),
    "devices": ("device", "devices")}


def count_label(kind: str, n: int) -> str:
    one, many = KIND_LABELS.get(kind, (kind, kind))
    return f"{n} {one if n == 1 else many}"


@dataclass(frozen=True, slots=True)
class ViewScope:
    """What the user has chosen on screen, as far as an export cares."""

    view: str = "traffic"
    selected: frozenset[str] = frozenset()
    filter_text: str = ""
    port_filter: int | None = None
    proto_filter: str = ""
    hide_local: bool = False
    sort: str = "bytes"
    #: is_local(ip) for the hide-local filter; names(flow) for name matching (dashboard's)
    is_local: Callable[[str], bool] | None = field(default=None, compare=False)
    names: Callable[[Any], str] | None = field(default=None, compare=False)


def export_name(session: Any, what: str, suffix: str, now: float | None = None) -> str:
    """``packettracer-s12-traffic-20261125-153000.csv`` (no ``s12-`` without a session)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(time.time() if now is None else now))
    sess = f"s{session}-" if session not in (None, "") else ""
    return f"packettracer-{sess}{what}-{stamp}{suffix}"


def _free_path(directory: Path, name: str) -> Path:
    path = directory / name
    stem, dot, ext = name.rpartition(".")
    n = 2
    while path.exists():
        path = directory / f"{stem}-{n}.{ext}"
        n += 1
    return path


def export_dir(settings: Any) -> Path:
    d = settings.get("EXPORT_DIR", "") if hasattr(settings, "get") else ""
    return Path(expand_user_path(d)) if d else Path.cwd()


def scoped_flows(runtime: Any, scope: ViewScope) -> list[Any]:
    """The flows the view stands for: the selection, else what the filters let through."""
    flows = runtime.flows.snapshot()
    if scope.selected:
        chosen = [f for f in flows if f.flow_key in scope.selected]
        if len(chosen) < len(scope.selected):       # selected flows that retired since
            have = {f.flow_key for f in chosen}
            chosen += [f for f in runtime.flows.retired
                       if f.flow_key in scope.selected and f.flow_key not in have]
        return sort_flows(chosen, scope.sort if scope.sort != "rate" else "bytes")
    if scope.filter_text or scope.port_filter is not None or scope.proto_filter or scope.hide_local:
        flows = filter_flows(flows, scope.filter_text, scope.port_filter, scope.proto_filter,
                             local=False if scope.hide_local else None, is_local=scope.is_local,
                             names=scope.names)
    return sort_flows(flows, scope.sort if scope.sort != "rate" else "bytes")


def _matcher(kind: str, chosen: list[Any]) -> Callable[[dict[str, Any]], bool]:
    """Which rows of ``kind`` are about the selected flows."""
    ends = set()
    for f in chosen:
        ends.add((f.src_ip, f.src_port, f.dst_ip, f.dst_port))
        ends.add((f.dst_ip, f.dst_port, f.src_ip, f.src_port))
    remote = {f.dst_ip for f in chosen}
    ips = remote | {f.src_ip for f in chosen}
    ports = {(f.dst_port, f.protocol) for f in chosen if f.has_ports}
    if kind == "dns":
        # the flow's own DNS transaction, or the lookup that gave a selected flow its address
        return lambda r: (r.get("client"), r.get("client_port"), r.get("server"),
                          r.get("server_port")) in ends or bool(remote.intersection(
                              r.get("answers") or ()))
    if kind == "ports":
        return lambda r: (r.get("port"), r.get("proto")) in ports
    if kind == "alerts":
        return lambda r: r.get("src") in ips or r.get("dst") in ips
    if kind == "devices":
        return lambda r: bool(ips.intersection(r.get("ips") or ()))
    return lambda r: any(isinstance(v, str) and v in remote for v in r.values())   # paths


def view_rows(runtime: Any, scope: ViewScope) -> tuple[str, list[dict[str, Any]], RuntimeSource]:
    """(kind, rows, source) for the current view."""
    kind = VIEW_KINDS.get(scope.view, "flows")
    if kind in ("flows", "tcp"):
        source = RuntimeSource(runtime, scoped_flows(runtime, scope)
                               if (scope.selected or kind == "flows") else None)
        rows = source.rows("flows")
        return kind, (tcp_rows(rows) if kind == "tcp" else rows), source
    source = RuntimeSource(runtime)
    rows = source.rows(kind)
    if scope.selected:
        keep = _matcher(kind, scoped_flows(runtime, scope))
        rows = [r for r in rows if keep(r)]
    return kind, rows, source


def export_view(runtime: Any, scope: ViewScope, directory: Path | None = None,
                fmt: str | None = None, now: float | None = None) -> ExportResult:
    """Write the current view's rows to a new file in ``directory``; returns where and how many."""
    settings = runtime.settings
    fmt = (fmt or (settings.get("EXPORT_FORMAT", DEFAULT_FORMAT) if hasattr(settings, "get")
                   else DEFAULT_FORMAT)).lower()
    kind, rows, source = view_rows(runtime, scope)
    exporter = exporter_for(fmt, kind, progress=False)     # the dashboard owns the terminal
    directory = directory or export_dir(settings)
    what = scope.view if scope.view in VIEW_KINDS else f"{scope.view}-flows"
    path = _free_path(directory, export_name(getattr(runtime, "session_id", None), what,
                                             exporter.suffix, now))
    result = exporter.export(source, path, rows=rows)
    chown_to_invoking_user(path)
    return result


@dataclass(frozen=True, slots=True)
class PacketExport:
    path: Path
    flows: int
    packets: int
    #: packets those flows had in all; more than ``packets`` when older frames left the ring
    seen: int


def save_flow_packets(runtime: Any, flow_keys: set[str], directory: Path | None = None,
                      now: float | None = None) -> PacketExport:
    """Write the packets still in the ring of these flows to a new pcapng file."""
    ring = getattr(runtime.components, "packet_ring", None)
    if ring is None:
        raise ValueError("no packets are kept in memory in this run (PACKET_RING_FRAMES = 0, "
                         "or a stored session)")
    directory = directory or export_dir(runtime.settings)
    path = _free_path(directory, export_name(getattr(runtime, "session_id", None), "packets",
                                             ".pcapng", now))
    written = write_flow_packets(ring, flow_keys, path)
    chown_to_invoking_user(path)
    flows = [f for f in runtime.flows.all_flows() if f.flow_key in flow_keys]
    return PacketExport(path, len(flows), written, sum(f.packets for f in flows))

