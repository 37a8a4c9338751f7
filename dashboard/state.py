"""One frozen ``DashboardState`` per tick, built from the runtime and the user's ViewState.

The builder reads the trackers under their locks briefly (a list copy of the flows, a component's
own ``snapshot()``) and turns only the visible rows into display rows. Passes over every flow
(rate samples, the Traffic order, aggregates) and lookups that may block (enrichment) run on a
background worker for big tables (dashboard/background.py); a tick reads their latest result.
Panels render from the state alone, so a test can render them without a capture running.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from capture.packet import proto_name
from dashboard import collect, sources
from dashboard.aggregate import aggregate
from dashboard.background import PENDING, Background
from dashboard.view_state import ViewState
from tracking.flow import Destination, Flow, destinations, filter_flows, sort_flows
from utils.logger import get_logger

log = get_logger(__name__)

#: seconds between rate samples, and how many samples the Trends view keeps (10 minutes)
SAMPLE_INTERVAL = 1.0
TREND_POINTS = 600
#: seconds an aggregate over all flows is reused before it is recomputed
AGGREGATE_TTL = 1.0
#: seconds the Traffic order (filter + sort over every flow) is reused; the visible rows show
#: live counters and are re-sorted among themselves every frame
ORDER_TTL = 1.0
#: up to this many flows, passes over them run inline (cheaper than handing them to a thread)
SYNC_FLOWS = 2000
#: seconds a frame waits for the enrichment (geo, owner, DPI facts) of rows it has not shown yet;
#: past that it shows what is known (e.g. while the geo data is still loading)
ENRICH_WAIT = 0.02
#: seconds a frame waits for a result it has never had (a view switch); then "computing…"
FIRST_WAIT = 0.03


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
    #: data names still being computed in the background (their panels say "computing…")
    pending: frozenset[str] = frozenset()


class RateSampler:
    """Per-flow and total rates from successive samples, measured in packet time.

    Packet time (the capture's timestamps) makes a --realtime replay and a live capture show
    their real rates; a file read at full speed shows its average rate in one sample.

    ``sample`` runs on the dashboard's background thread; it publishes new objects (``rates``,
    ``points``) instead of changing the ones the UI thread may be reading.
    """

    def __init__(self, interval: float = SAMPLE_INTERVAL, points: int = TREND_POINTS) -> None:
        self.interval = interval
        self.rates: dict[str, float] = {}
        self.history: deque[TrendPoint] = deque(maxlen=points)
        #: the history as published for the Trends view (a new tuple per sample)
        self.points: tuple[TrendPoint, ...] = ()
        self.pps: float | None = None
        self.bps: float | None = None
        self.samples = 0
        self._prev_bytes: dict[str, int] = {}
        self._prev_ts = 0.0
        self._prev_packets = 0
        self._prev_total_bytes = 0

    def sample(self, flows: list[Flow], packets: int, nbytes: int, first_ts: float,
               last_ts: float) -> None:
        prev_ts = self._prev_ts or first_ts
        dt = last_ts - prev_ts
        cur: dict[str, int] = {}
        rates: dict[str, float] = {}
        proto_n: dict[int, float] = {}
        class_b: dict[str, float] = {}
        prev = self._prev_bytes
        get = prev.get
        # Hot for 50k flows once a second: locals, protocol names resolved after.
        for f in flows:
            k = f.flow_key
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
            self.points = tuple(self.history)
        self.samples += 1


class StateBuilder:
    """Builds a DashboardState from a Runtime each tick.

    What needs a pass over every flow (rate samples, the Traffic order, aggregates) or a lookup
    that may block (geo, names) comes from a background worker (dashboard/background.py): the
    tick reads its latest immutable result. With at most ``sync_flows`` flows these run inline,
    where they cost less than a thread hand-over.
    """

    def __init__(self, runtime: Any, clock: Callable[[], float] = time.monotonic,
                 sync_flows: int = SYNC_FLOWS) -> None:
        self.rt = runtime
        self.clock = clock
        self.sync_flows = sync_flows
        self.sampler = RateSampler()
        comps = runtime.components
        self.names = sources.Names(comps.dns)
        self.bg = Background(clock)
        #: flow_key -> joined enrichment of the rows shown lately (published by the worker)
        self._extras: dict[str, dict[str, Any]] = {}
        self._small = True
        self._detail_flow: Flow | None = None
        self._snapshot: Callable[[], list[Flow]] = runtime.flows.snapshot
        self._pending: set[str] = set()

    def close(self) -> None:
        """Stop the background worker."""
        self.bg.close()

    def _get(self, name: str, key: Any, fn: Callable[[], Any], ttl: float = AGGREGATE_TTL,
             wait: float = 0.0) -> Any:
        """A background result; None (and ``name`` marked pending) until the first one exists."""
        v = self.bg.get(name, key, fn, ttl, sync=self._small, wait=wait or FIRST_WAIT)
        if v is PENDING:
            self._pending.add(name)
            return None
        return v

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

    def _row(self, f: Flow, vs: ViewState, rates: dict[str, float]) -> FlowRow:
        key = f.flow_key
        extra = self._extras.get(key) or {}
        fqdn = sources.name_of(extra) or self.names(f.dst_ip)
        src = f"{f.src_ip}:{f.src_port}" if f.has_ports else f.src_ip
        dst = f"{f.dst_ip}:{f.dst_port}" if f.has_ports else f.dst_ip
        rate = rates.get(key, 0.0) if self.sampler.samples else None
        return FlowRow(key, src, dst, fqdn, f.protocol, f.bytes_sent, f.bytes_recv, f.packets,
                       rate, sources.location_of(extra), f.classification, f.state,
                       key in vs.selected)

    def _order(self, flows: list[Flow], vs: ViewState) -> tuple[list[Flow], list[Destination] | None]:
        """Every flow after the filters, in display order (destinations in that mode)."""
        shown = self._filtered(flows, vs)
        if vs.destinations:
            return shown, destinations(shown)
        return sort_flows(shown, vs.sort, self.sampler.rates), None

    def _enrich(self, window: list[Flow], errors: list[str]) -> None:
        """Enrichment of the shown rows: from the worker, never blocking a frame for long."""
        enrichers = list(self.rt.components.flow_enrichers)
        if not enrichers or not window:
            return
        keys = tuple(f.flow_key for f in window)
        known = self._extras

        def job() -> dict[str, dict[str, Any]]:
            # Rows read lately stay (scrolling back is instant); the rest are refreshed.
            out = {k: v for k, v in known.items() if k in keys} if len(known) > 4 * len(keys) \
                else dict(known)
            for f in window:
                out[f.flow_key] = sources.enrich(f, enrichers)
            return out

        missing = any(k not in known for k in keys)
        try:
            v = self.bg.get("enrich", keys, job, AGGREGATE_TTL, wait=ENRICH_WAIT if missing else 0.0)
        except Exception as exc:  # boundary: an enricher failing must not blank the table
            errors.append(f"enrichment: {exc}")
            return
        if v is not PENDING:
            self._extras = v

    def traffic(self, flows: Callable[[], list[Flow]], vs: ViewState,
                errors: list[str]) -> dict[str, Any]:
        page = max(1, vs.page_rows)
        key = (vs.filter_text, vs.port_filter, vs.proto_filter, vs.hide_local, vs.destinations,
               vs.sort, self.names.available)
        snapshot = self._snapshot
        # The worker gets a copy of the choices: the user may change them while it runs.
        chosen = ViewState(filter_text=vs.filter_text, port_filter=vs.port_filter,
                           proto_filter=vs.proto_filter, hide_local=vs.hide_local,
                           destinations=vs.destinations, sort=vs.sort)
        got = self.bg.get("order", key, lambda: self._order(snapshot(), chosen),
                          0.0 if self._small else ORDER_TTL, sync=self._small,
                          wait=FIRST_WAIT if self.rt.flows.active_count <= self.sync_flows else 0.0)
        if got is PENDING:
            # A new sort or filter on a big table: once, here, so the key press shows at once
            # (a full sort in C beats a partial one with Python comparisons); the worker keeps
            # it fresh from then on.
            t0 = time.perf_counter()
            got = self._order(flows(), chosen)
            self.bg.put("order", key, got, time.perf_counter() - t0)
        ordered, dests = got
        if dests is not None:
            total = len(dests)
            _clamp(vs, total)
            window_d = dests[vs.scroll:vs.scroll + page]
            rows = tuple((d, self.names(d.ip), "") for d in window_d)
            return {"flows": ordered, "total": total, "dest_rows": rows}
        total = len(ordered)
        _clamp(vs, total)
        window = ordered[vs.scroll:vs.scroll + page]
        if not self._small:
            # The order is up to ORDER_TTL old: keep the visible page in order by live counters.
            window = sort_flows(window, vs.sort, self.sampler.rates)
        self._enrich(window, errors)
        rates = self.sampler.rates
        # No flows.lock here: the pipeline holds it for a whole batch, and a row read between
        # two packets of a batch is as good as one read after it.
        rows = tuple(self._row(f, vs, rates) for f in window)
        return {"flows": ordered, "total": total, "rows": rows}

    def detail(self, flows: Callable[[], list[Flow]], key: str,
               errors: list[str]) -> dict[str, Any] | None:
        flow = self._detail_flow
        if flow is None or flow.flow_key != key or flow.retired:
            flow = next((f for f in flows() if f.flow_key == key), None)
        self._detail_flow = flow
        if flow is None:
            flow = next((f for f in reversed(self.rt.flows.retired) if f.flow_key == key), None)
        if flow is None:
            return None
        comps = self.rt.components
        d = flow.as_dict()
        out: dict[str, Any] = {"flow": d, "rate": self.sampler.rates.get(key)}
        enrichers = list(comps.flow_enrichers)
        try:
            extra = self.bg.get("detail", key, lambda: sources.enrich(flow, enrichers),
                                AGGREGATE_TTL, wait=ENRICH_WAIT * 5)
            if extra is PENDING:
                self._pending.add("detail")
                extra = {}
            out["extra"] = extra
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
    def _aggregate(self, vs: ViewState) -> Any:
        sel = frozenset(vs.selected)
        snapshot = self._snapshot

        def job() -> Any:
            flows = snapshot()
            subset = [f for f in flows if f.flow_key in sel] if sel else flows
            return aggregate(subset, want_tcp=True, want_ports=bool(sel))
        return self._get("agg", sel, job)

    def _cached(self, name: str, vs: ViewState, fn: Callable[[], Any]) -> Any:
        """``fn()`` from the worker, at most once per AGGREGATE_TTL per selection (these walk
        every flow or look addresses up); None until the first result."""
        return self._get(name, frozenset(vs.selected), fn)

    def _subset(self, selected: frozenset[str]) -> list[Flow]:
        flows = self._snapshot()
        return [f for f in flows if f.flow_key in selected] if selected else flows

    def view_data(self, vs: ViewState, errors: list[str]) -> dict[str, Any]:
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
            comp("agg", True, lambda: self._aggregate(vs))
        if view == "stats":
            comp("packet_stats", comps.packet_stats)
            agg = data["agg"]
            if agg is not None:
                try:
                    extras = self._get("stats", (frozenset(vs.selected), id(agg)),
                                       lambda: collect.stats_extras(comps, agg, self.names))
                    data.update(extras or {})
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
            sel = frozenset(vs.selected)
            comp("dpi", comps.inspector, lambda: self._cached(
                "dpi", vs, lambda: collect.dpi_facts(comps.inspector, self._subset(sel))))
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
                comp("path_endpoints", comps.enricher, lambda: self._get(
                    "path_endpoints", id(snap), lambda: collect.path_endpoints(comps.enricher, snap)))
        elif view == "relay":
            relay = getattr(self.rt, "relay", None)
            comp("relay", relay)
        if vs.selected:
            sel = frozenset(vs.selected)
            snapshot = self._snapshot
            data["selected_ips"] = self._get("selected_ips", sel, lambda: frozenset(
                ip for f in snapshot() if f.flow_key in sel for ip in (f.src_ip, f.dst_ip)))
        return data

    # ---- the tick ----------------------------------------------------------------------------
    def _sample(self) -> None:
        """A rate sample per SAMPLE_INTERVAL (on the worker for big tables)."""
        rt = self.rt
        sampler = self.sampler
        snapshot = self._snapshot

        def job() -> int:
            c = rt.pipeline.counters
            packets, nbytes, first_ts, last_ts = c.packets, c.bytes, c.first_ts, c.last_ts
            sampler.sample(snapshot(), packets, nbytes, first_ts, last_ts)
            return sampler.samples
        self.bg.get("sample", None, job, sampler.interval, sync=self._small)

    def build(self, vs: ViewState) -> DashboardState:
        errors: list[str] = []
        self._pending = set()
        rt = self.rt
        copy: list[list[Flow]] = []

        def flows() -> list[Flow]:
            if not copy:
                copy.append(rt.flows.snapshot())
            return copy[0]
        # Inline when the table is small and the capture is over: then a pass costs less than a
        # thread hand-over and the lock is free. While the capture runs, the pipeline holds
        # flows.lock for a whole batch, so copies are taken by the worker, not by a frame.
        self._small = rt.flows.active_count <= self.sync_flows and bool(rt.capture_done)
        self._snapshot: Callable[[], list[Flow]] = flows if self._small else rt.flows.snapshot
        self._sample()
        header = self.header(errors)
        kw: dict[str, Any] = {}
        if vs.view == "traffic":
            if vs.detail_key is not None:
                kw["detail"] = self.detail(flows, vs.detail_key, errors)
            else:
                t = self.traffic(flows, vs, errors)
                kw.update(flows=t["flows"], total_flows=t["total"], rows=t.get("rows", ()),
                          dest_rows=t.get("dest_rows", ()), offset=vs.scroll)
        data = self.view_data(vs, errors)
        return DashboardState(header=header, view=vs.view, selected_count=len(vs.selected),
                              data=data, trends=self.sampler.points if vs.view == "trends" else (),
                              errors=tuple(errors), names_available=self.names.available,
                              pending=frozenset(self._pending), **kw)


def _clamp(vs: ViewState, total: int) -> None:
    """Keep cursor and scroll inside the list after it shrank or the terminal resized."""
    page = max(1, vs.page_rows)
    vs.cursor = max(0, min(vs.cursor, total - 1)) if total else 0
    if vs.cursor < vs.scroll:
        vs.scroll = vs.cursor
    elif vs.cursor >= vs.scroll + page:
        vs.scroll = vs.cursor - page + 1
    vs.scroll = max(0, min(vs.scroll, max(0, total - page)))
