"""One frozen ``DashboardState`` per tick, built from the runtime and the user's ViewState.

The builder reads the trackers under their locks briefly (a list copy of the flows, a component's
own ``snapshot()``), sorts outside the lock, and turns only the visible rows into display rows.
Panels render from the state alone, so a test can render them without a capture running.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from dashboard import collect, sources
from dashboard.aggregate import FlowAggregate, aggregate
from capture.packet import proto_name
from dashboard.view_state import ViewState
from tracking.flow import Destination, Flow, destinations, filter_flows, sort_flows
from utils.logger import get_logger

log = get_logger(__name__)

#: seconds between rate samples, and how many samples the Trends view keeps (10 minutes)
SAMPLE_INTERVAL = 1.0
TREND_POINTS = 600
#: seconds an aggregate over all flows is reused before it is recomputed
AGGREGATE_TTL = 1.0


@dataclass(frozen=True, slots=True)
class FlowRow:
    flow_key: str
    src: str
    dst: str
    fqdn: str
    proto: str
    sent: int
    recv: int
    packets: int
    rate: float | None      # bytes/s over the last sample, None before the first sample
    location: str
    cls: str
    state: str
    selected: bool


@dataclass(frozen=True, slots=True)
class Header:
    source: str
    source_kind: str
    bpf: str
    session: str
    elapsed: float
    pps: float | None
    bps: float | None       # bytes/s
    packets: int
    bytes: int
    drops: int
    malformed: int
    flows_active: int
    flows_total: int
    persistence: str
    paused: bool
    capture_done: bool
    capture_error: str
    alerts_unack: int | None


@dataclass(frozen=True, slots=True)
class TrendPoint:
    ts: float
    pps: float
    bps: float
    proto_bps: Mapping[str, float]
    class_bps: Mapping[str, float]


@dataclass(frozen=True, slots=True)
class DashboardState:
    header: Header
    view: str
    #: Traffic: every flow after filters, in display order (Flow objects: read only)
    flows: tuple[Flow, ...] | list[Flow] = ()
    total_flows: int = 0
    rows: tuple[FlowRow, ...] = ()
    offset: int = 0
    dest_rows: tuple[tuple[Destination, str, str], ...] = ()
    detail: Mapping[str, Any] | None = None
    selected_count: int = 0
    #: view-specific data (component snapshots, aggregates); keys documented per panel
    data: Mapping[str, Any] = field(default_factory=dict)
    trends: tuple[TrendPoint, ...] = ()
    errors: tuple[str, ...] = ()
    names_available: bool = False


class RateSampler:
    """Per-flow and total rates from successive samples, measured in packet time.

    Packet time (the capture's timestamps) makes a --realtime replay and a live capture show
    their real rates; a file read at full speed shows its average rate in one sample.
    """

    def __init__(self, interval: float = SAMPLE_INTERVAL, points: int = TREND_POINTS) -> None:
        self.interval = interval
        self.rates: dict[str, float] = {}
        self.history: deque[TrendPoint] = deque(maxlen=points)
        self.pps: float | None = None
        self.bps: float | None = None
        self._last_wall = 0.0
        self._prev_bytes: dict[str, int] = {}
        self._prev_ts = 0.0
        self._prev_packets = 0
        self._prev_total_bytes = 0

    def maybe_sample(self, flows: list[Flow], packets: int, nbytes: int, first_ts: float,
                     last_ts: float, wall: float) -> None:
        if wall - self._last_wall < self.interval:
            return
        self._last_wall = wall
        prev_ts = self._prev_ts or first_ts
        dt = last_ts - prev_ts
        cur: dict[str, int] = {}
        rates: dict[str, float] = {}
        proto_n: dict[int, float] = {}
        class_b: dict[str, float] = {}
        prev = self._prev_bytes
        get = prev.get
        # Hot for 50k flows once a second: locals, the cached key, protocol names resolved after.
        for f in flows:
            k = f._key or f.flow_key
            b = f.bytes_sent + f.bytes_recv
            cur[k] = b
            d = b - get(k, 0)
            if d > 0 and dt > 0:
                r = d / dt
                rates[k] = r
                p = f.proto
                proto_n[p] = proto_n.get(p, 0.0) + r
                c = f.classification or "unclassified"
                class_b[c] = class_b.get(c, 0.0) + r
        proto_b = {proto_name(p): v for p, v in proto_n.items()}
        self._prev_bytes = cur
        self.rates = rates
        if dt > 0:
            self.pps = (packets - self._prev_packets) / dt
            self.bps = (nbytes - self._prev_total_bytes) / dt
        else:
            self.pps = 0.0 if self._prev_ts or packets else None
            self.bps = 0.0 if self._prev_ts or packets else None
        if packets:
            self._prev_ts = last_ts
            self._prev_packets = packets
            self._prev_total_bytes = nbytes
            self.history.append(TrendPoint(last_ts, self.pps or 0.0, self.bps or 0.0, proto_b, class_b))


class StateBuilder:
    """Builds a DashboardState from a Runtime each tick."""

    def __init__(self, runtime: Any, clock: Callable[[], float] = time.monotonic) -> None:
        self.rt = runtime
        self.clock = clock
        self.sampler = RateSampler()
        comps = runtime.components
        self.names = sources.Names(comps.dns)
        self._agg: tuple[float, Any, FlowAggregate] | None = None
        self._cache: dict[str, tuple[float, frozenset[str], Any]] = {}

    def close(self) -> None:
        """Release what the builder started (nothing yet)."""

    # ---- header ------------------------------------------------------------------------------
    def header(self, errors: list[str]) -> Header:
        rt = self.rt
        c = rt.pipeline.counters
        drops = 0
        if rt.source is not None:
            try:
                drops = rt.source.refresh_stats().dropped
            except OSError as exc:  # pcap stats can fail on a vanished interface
                errors.append(f"capture stats: {exc}")
        s = rt.settings
        persistence = getattr(rt, "persistence_state", None) or (
            "db" if getattr(s, "DB_ENABLED", False) else "memory only")
        session = getattr(rt, "session_id", None)
        unack = None
        sec = rt.components.security
        if sec is not None and hasattr(sec, "engine"):
            try:
                unack = sec.engine.unacknowledged()
            except Exception as exc:  # boundary: a component must not take the screen down
                errors.append(f"alerts: {exc}")
        return Header(
            source=str(rt.args.read or (rt.source.description if rt.source else "")),
            source_kind=getattr(rt, "source_kind", ""),
            bpf=s.CAPTURE_FILTER or "",
            session=str(session) if session is not None else "",
            elapsed=time.time() - rt.started,
            pps=self.sampler.pps, bps=self.sampler.bps,
            packets=c.packets, bytes=c.bytes, drops=drops, malformed=c.malformed,
            flows_active=rt.flows.active_count, flows_total=rt.flows.total_flows,
            persistence=persistence, paused=rt.pipeline.paused.is_set(),
            capture_done=bool(rt.capture_done), capture_error=getattr(rt, "capture_error", "") or "",
            alerts_unack=unack)

    # ---- traffic -----------------------------------------------------------------------------
    def _filtered(self, flows: list[Flow], vs: ViewState) -> list[Flow]:
        if not (vs.filter_text or vs.port_filter is not None or vs.proto_filter or vs.hide_local):
            return flows
        names = None
        if vs.filter_text and self.names.available:
            nm = self.names
            names = lambda f: nm(f.dst_ip) + " " + nm(f.src_ip)  # noqa: E731
        return filter_flows(flows, vs.filter_text, vs.port_filter, vs.proto_filter,
                            local=False if vs.hide_local else None,
                            is_local=sources.is_local, names=names)

    def _row(self, f: Flow, vs: ViewState, rates: dict[str, float], enrichers: list) -> FlowRow:
        extra = sources.enrich(f, enrichers) if enrichers else {}
        fqdn = sources.name_of(extra) or self.names(f.dst_ip)
        src = f"{f.src_ip}:{f.src_port}" if f.has_ports else f.src_ip
        dst = f"{f.dst_ip}:{f.dst_port}" if f.has_ports else f.dst_ip
        key = f.flow_key
        rate = rates.get(key, 0.0) if self.sampler.history or rates else None
        return FlowRow(key, src, dst, fqdn, f.protocol, f.bytes_sent, f.bytes_recv, f.packets,
                       rate, sources.location_of(extra), f.classification, f.state,
                       key in vs.selected)

    def traffic(self, flows: list[Flow], vs: ViewState, errors: list[str]) -> dict[str, Any]:
        shown = self._filtered(flows, vs)
        total = len(shown)
        page = max(1, vs.page_rows)
        if vs.destinations:
            dests = destinations(shown)
            total = len(dests)
            _clamp(vs, total)
            window = dests[vs.scroll:vs.scroll + page]
            rows = tuple((d, self.names(d.ip), "") for d in window)
            return {"flows": shown, "total": total, "dest_rows": rows}
        _clamp(vs, total)
        need = vs.scroll + page
        ordered = sort_flows(shown, vs.sort, self.sampler.rates,
                             limit=need if need < total // 2 else None)
        window = ordered[vs.scroll:need]
        enrichers = list(self.rt.components.flow_enrichers)
        rates = self.sampler.rates
        try:
            with self.rt.flows.lock:
                rows = tuple(self._row(f, vs, rates, enrichers) for f in window)
        except Exception as exc:  # boundary: an enricher failing must not blank the table
            errors.append(f"enrichment: {exc}")
            rows = tuple(self._row(f, vs, rates, []) for f in window)
        return {"flows": ordered if len(ordered) == total else shown, "total": total, "rows": rows,
                "ordered_keys_partial": len(ordered) != total}

    def detail(self, flows: list[Flow], key: str, errors: list[str]) -> dict[str, Any] | None:
        flow = next((f for f in flows if f.flow_key == key), None)
        if flow is None:
            flow = next((f for f in reversed(self.rt.flows.retired) if f.flow_key == key), None)
        if flow is None:
            return None
        comps = self.rt.components
        with self.rt.flows.lock:
            d = flow.as_dict()
        out: dict[str, Any] = {"flow": d, "rate": self.sampler.rates.get(key)}
        try:
            out["extra"] = sources.enrich(flow, list(comps.flow_enrichers))
        except Exception as exc:  # boundary
            errors.append(f"enrichment: {exc}")
            out["extra"] = {}
        out["names"] = {"src": self.names(flow.src_ip), "dst": self.names(flow.dst_ip)} \
            if self.names.available else None
        try:
            out["dpi"] = sources.flow_facts(comps.inspector, flow)
        except Exception as exc:  # boundary
            errors.append(f"dpi: {exc}")
            out["dpi"] = None
        return out

    # ---- other views -------------------------------------------------------------------------
    def _aggregate(self, flows: list[Flow], vs: ViewState) -> FlowAggregate:
        now = self.clock()
        sel = frozenset(vs.selected)
        if self._agg is not None and self._agg[1] == sel and now - self._agg[0] < AGGREGATE_TTL:
            return self._agg[2]
        subset = [f for f in flows if f.flow_key in sel] if sel else flows
        agg = aggregate(subset, want_tcp=True, want_ports=bool(sel))
        self._agg = (now, sel, agg)
        return agg

    def _cached(self, name: str, vs: ViewState, fn: Callable[[], Any]) -> Any:
        """``fn()`` at most once per AGGREGATE_TTL per selection: these walk every flow."""
        now = self.clock()
        sel = frozenset(vs.selected)
        hit = self._cache.get(name)
        if hit is not None and hit[1] == sel and now - hit[0] < AGGREGATE_TTL:
            return hit[2]
        value = fn()
        self._cache[name] = (now, sel, value)
        return value

    def _subset(self, flows: list[Flow], vs: ViewState) -> list[Flow]:
        return [f for f in flows if f.flow_key in vs.selected] if vs.selected else flows

    def view_data(self, flows: list[Flow], vs: ViewState, errors: list[str]) -> dict[str, Any]:
        comps = self.rt.components
        view = vs.view
        data: dict[str, Any] = {}

        def comp(name: str, obj: Any, fn: Callable[[], Any] | None = None) -> None:
            if obj is None:
                data[name] = None
                return
            try:
                data[name] = fn() if fn is not None else sources.component_data(obj)
            except Exception as exc:  # boundary: show the failure as state
                errors.append(f"{name}: {type(exc).__name__}: {exc}")
                data[name] = None

        if view in ("stats", "analysis", "tcp") or (view == "ports" and vs.selected):
            data["agg"] = self._aggregate(flows, vs)
        if view == "stats":
            comp("packet_stats", comps.packet_stats)
            agg = data["agg"]
            try:
                data.update(self._cached("stats", vs, lambda: collect.stats_extras(comps, agg, self.names)))
            except Exception as exc:  # boundary: enrichment is another component
                errors.append(f"enrichment: {type(exc).__name__}: {exc}")
        elif view == "analysis":
            comp("classifier", comps.classifier)
            comp("packet_stats", comps.packet_stats)
        elif view == "ports":
            ports = comps.ports
            comp("ports", ports, (lambda: ports.snapshot(sort=vs.ports_sort, limit=200))
                 if hasattr(ports, "snapshot") else None)
        elif view == "dns":
            comp("dns", comps.dns)
            comp("rcodes", comps.dns, lambda: self._cached("rcodes", vs, lambda: collect.dns_rcodes(comps.dns)))
        elif view == "dpi":
            comp("dpi", comps.inspector, lambda: self._cached(
                "dpi", vs, lambda: collect.dpi_facts(comps.inspector, self._subset(flows, vs))))
            devices = getattr(comps, "devices", None)
            if devices is not None:
                from export.devices import device_section
                comp("devices", devices, lambda: self._cached(
                    "devices", vs, lambda: device_section(devices, comps.devices_lock)))
        elif view == "alerts":
            sec = comps.security
            comp("security", sec)
        elif view == "tcp":
            comp("tcp_totals", comps.tcp_totals_fn,
                 lambda: self._cached("tcp_totals", vs, comps.tcp_totals))
        elif view == "paths":
            tracer = getattr(comps, "paths", None) or getattr(self.rt, "tracer", None)
            comp("paths", tracer)
            # hop names/owners/locations are joined here, above tracking/ (see collect.py)
            if data.get("paths") is not None and comps.enricher is not None:
                snap = data["paths"]
                comp("path_endpoints", comps.enricher, lambda: self._cached(
                    "path_endpoints", vs, lambda: collect.path_endpoints(comps.enricher, snap)))
        elif view == "relay":
            relay = getattr(self.rt, "relay", None)
            comp("relay", relay)
        if vs.selected:
            data["selected_ips"] = frozenset(
                ip for f in flows if f.flow_key in vs.selected for ip in (f.src_ip, f.dst_ip))
        return data

    # ---- the tick ----------------------------------------------------------------------------
    def build(self, vs: ViewState) -> DashboardState:
        errors: list[str] = []
        rt = self.rt
        flows = rt.flows.snapshot()
        c = rt.pipeline.counters
        self.sampler.maybe_sample(flows, c.packets, c.bytes, c.first_ts, c.last_ts, self.clock())
        header = self.header(errors)
        kw: dict[str, Any] = {}
        if vs.view == "traffic":
            if vs.detail_key is not None:
                kw["detail"] = self.detail(flows, vs.detail_key, errors)
            else:
                t = self.traffic(flows, vs, errors)
                kw.update(flows=t["flows"], total_flows=t["total"], rows=t.get("rows", ()),
                          dest_rows=t.get("dest_rows", ()), offset=vs.scroll)
        data = self.view_data(flows, vs, errors)
        return DashboardState(header=header, view=vs.view, selected_count=len(vs.selected),
                              data=data, trends=tuple(self.sampler.history) if vs.view == "trends" else (),
                              errors=tuple(errors), names_available=self.names.available, **kw)


def _clamp(vs: ViewState, total: int) -> None:
    """Keep cursor and scroll inside the list after it shrank or the terminal resized."""
    page = max(1, vs.page_rows)
    vs.cursor = max(0, min(vs.cursor, total - 1)) if total else 0
    if vs.cursor < vs.scroll:
        vs.scroll = vs.cursor
    elif vs.cursor >= vs.scroll + page:
        vs.scroll = vs.cursor - page + 1
    vs.scroll = max(0, min(vs.scroll, max(0, total - page)))
