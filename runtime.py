"""The composition root: builds the source, trackers, pipeline, storage and outputs for a run.

main.py parses the command line; this module decides what runs. Everything a run needs is
constructed here and passed in, so the pieces below never reach for globals.
"""
from __future__ import annotations

import argparse
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from capture.errors import CaptureError
from capture.interfaces import default_interface
from capture.sniffer import FileSource, LiveSource, PacketSource
from capture.writer import PcapngWriter
from config import Settings, VERSION
from db.errors import DatabaseError
from persistence import SessionRecorder, open_pool
from export.document import build_document
from export.json_exporter import write_json
from export.csv_exporter import write_flows_csv
from pipeline import Pipeline
from sidecar import Sidecar, build_packet_side, jobs_for
from tracking.flow import FlowTracker
from utils.format import human_bytes
from utils.logger import get_logger

log = get_logger(__name__)


class RuntimeError_(Exception):
    """A run-level failure with a one-line message for the user."""


class Runtime:
    """One run of PacketTracer: a source feeding a pipeline, and what reads from it."""

    def __init__(self, settings: Settings, args: argparse.Namespace, stop: threading.Event) -> None:
        self.settings = settings
        self.args = args
        self.stop = stop
        self.started = time.time()
        self.source: PacketSource | None = None
        self.flows = FlowTracker(settings.MAX_FLOWS, settings.FLOW_TIMEOUT,
                                 settings.TCP_CLOSE_LINGER, settings.FLOW_HISTORY_LIMIT,
                                 tcp_factory=_tcp_factory())
        self.components = build_components(settings, self.flows, args)
        self.pipeline = Pipeline(self.flows, stages=self.components.stages,
                                 flow_stages=self.components.flow_stages,
                                 frame_sinks=self.components.frame_sinks,
                                 batch_stages=self.components.batch_stages,
                                 other_stages=self.components.other_stages,
                                 periodic=self.components.periodic)
        self._worker: threading.Thread | None = None
        self._finished = False
        #: a relay server embedded in the dashboard (main.py sets it with --relay-server)
        self.relay: Any = None
        self._open_source()
        if args.write:
            self.pipeline.pcap_writer = PcapngWriter(args.write, settings.WRITE_MAX_MB)
        self.pool: Any = None
        self.recorder: SessionRecorder | None = None
        if settings.DB_ENABLED:
            self._open_database()
        self._build_paths()
        if self.source_kind == "live":  # a file holds none of our probes or lookups
            self.pipeline.exclude, self.pipeline.exclude_needed = self._own_traffic_filter()
        #: the second process of a file read (main() starts it; sidecar.py)
        self.sidecar: Sidecar | None = None
        self._sidecar_joined = False
        self._sidecar_lock = threading.Lock()
        #: processes the run took, for the summary of a file read ("2", "1 (why)")
        self.processes = "1"

    def _build_paths(self) -> None:
        """The traceroute engine (Paths view, -t): database-backed when a session is stored."""
        from tracking.db_path import DBPathTracer
        from tracking.path import PathTracer
        a = self.args
        comp = self.components
        s = self.settings
        kwargs: dict[str, Any] = dict(
            method=s.TRACE_METHOD, max_hops=s.TRACE_MAX_HOPS, probes_per_hop=s.TRACE_PROBES_PER_HOP,
            timeout=s.TRACE_TIMEOUT, interval=s.TRACE_INTERVAL, rate_limit_pps=s.TRACE_RATE_PPS,
            port=getattr(a, "trace_port", None), passive_hops=comp.hops.hops,
            on_route_change=self._route_change_alert)
        if self.recorder is not None:
            comp.paths = DBPathTracer(self.pool, writer=self.recorder.writer,
                                      session_id=self.recorder.session_id, **kwargs)
        else:
            comp.paths = PathTracer(**kwargs)
        comp.on_close.insert(0, comp.paths.stop)

    def _route_change_alert(self, change: Any) -> None:
        sec = self.components.security
        if sec is None:
            return
        hops = ", ".join(str(h) for h in change.changed_hops)
        sec.engine.raise_alert("route_change", "info", "", change.target,
                               f"route to {change.target} changed at hop {hops}",
                               evidence=change.as_dict())

    def _own_traffic_filter(self) -> tuple[Callable[[Any], bool], Callable[[], bool]]:
        """Leave our own probes and resolver queries out of flows and statistics.

        Returns the per-packet test and the per-batch question whether it can match at all.
        """
        paths = self.components.paths
        enricher = self.components.enricher
        own_probe = paths.own_probe if paths is not None else None
        # The resolvers' local ports change rarely: refresh the set once a second of packet
        # time instead of asking the resolvers (three locks) for every packet.
        own: list[frozenset[int]] = [frozenset()]
        if enricher is not None:
            def refresh(_now: float) -> None:
                own[0] = frozenset(enricher.own_local_ports())
            refresh(0.0)
            self.pipeline.periodic.append(refresh)

        def exclude(pkt: Any) -> bool:
            if own_probe is not None and own_probe(pkt):
                return True
            ports = own[0]
            return bool(ports) and (pkt.sport in ports or pkt.dport in ports)

        def needed() -> bool:
            return bool(own[0]) or (paths is not None and paths.tracing)

        return exclude, needed

    def _open_database(self) -> None:
        """Open the database and start this run's session; failures are one-line errors."""
        try:
            self.pool = open_pool(self.settings)
        except DatabaseError as exc:
            raise RuntimeError_(str(exc)) from None
        comp = self.components
        try:
            self.recorder = SessionRecorder(
                self.pool, self.settings, self.source_kind, self.source.description,
                self.settings.CAPTURE_FILTER, self.flows, row_for=self.export_row,
                ports_rows=comp.port_rows if comp.ports is not None else None,
                dns=comp.dns,
                alert_changes=comp.security.engine.take_changes if comp.security is not None else None)
        except DatabaseError as exc:
            self.pool.close()
            raise RuntimeError_(str(exc)) from None
        self.pipeline.periodic.append(self.recorder.on_tick)
        self._attach_resolver_caches()
        for hook in comp.on_database:
            hook(self.recorder.writer, self.pipeline.periodic)

    def _attach_resolver_caches(self) -> None:
        """Geo (24 h) and name (1 h) answers survive restarts through the database."""
        from db.repositories.dns_repo import DnsRepository
        from db.repositories.geo_repo import GeoRepository
        enr = self.components.enricher
        if enr is None:
            return
        s = self.settings
        if enr.geo is not None:
            enr.geo.cache.attach_store(GeoRepository(self.pool), s.DB_GEO_CACHE_TTL)
        if enr.names is not None:
            enr.names.cache.attach_store(DnsRepository(self.pool), s.DB_DNS_CACHE_TTL)

    @property
    def session_id(self) -> int | None:
        return self.recorder.session_id if self.recorder is not None else None

    @property
    def persistence_state(self) -> str:
        if self.recorder is None:
            return "memory only"
        return f"db {self.recorder.state}"

    # ---- set-up ------------------------------------------------------------------------------
    def _open_source(self) -> None:
        a = self.args
        s = self.settings
        if a.read:
            self.source = FileSource(a.read, realtime=a.realtime, count=a.count,
                                     batch_size=s.CAPTURE_BATCH_SIZE, queue_size=s.CAPTURE_QUEUE_SIZE)
            self.source_kind = "file"
        else:
            iface = s.DEFAULT_INTERFACE or default_interface()
            self.source = LiveSource(iface, s.CAPTURE_FILTER, s.SNAP_LENGTH, s.PROMISCUOUS,
                                     s.CAPTURE_TIMEOUT_MS, s.CAPTURE_BUFFER_MB,
                                     s.CAPTURE_BATCH_SIZE, s.CAPTURE_QUEUE_SIZE, a.count)
            self.source_kind = "live"

    # ---- running -----------------------------------------------------------------------------
    def start_capture(self) -> None:
        assert self.source is not None
        self.start_traces()
        self._worker = threading.Thread(target=self._capture_loop, name="pipeline", daemon=True)
        self._worker.start()
        # The source's reader thread has its own stop flag; relay ours to it, whoever sets it
        # (Ctrl+C, SIGTERM, --duration, the dashboard's q).
        threading.Thread(target=self._relay_stop, name="stop-relay", daemon=True).start()
        if self.args.duration:
            t = threading.Timer(self.args.duration, self.stop.set)
            t.daemon = True
            t.start()

    def start_traces(self) -> None:
        """-t HOST: keep tracing each target while the run lasts (like mtr)."""
        from tracking.path import TraceTargetError
        paths = self.components.paths
        for target in getattr(self.args, "trace", None) or []:
            try:
                paths.request(target)
            except TraceTargetError as exc:
                raise RuntimeError_(str(exc)) from None

    def _relay_stop(self) -> None:
        self.stop.wait()
        if self.source is not None:
            self.source.stop()

    def _capture_loop(self) -> None:
        assert self.source is not None
        try:
            self.pipeline.run(self.source, self.stop)
        except CaptureError as exc:
            self.capture_error = str(exc)
            log.error("capture stopped: %s", exc)
        finally:
            # "capture finished" on the screen means the packet side is complete too
            self._join_sidecar()

    @property
    def capture_done(self) -> bool:
        return self._worker is not None and not self._worker.is_alive()

    def wait_capture(self) -> None:
        """Block until the source ends or stop is set (main.py turns Ctrl+C/SIGTERM into stop)."""
        assert self._worker is not None
        while self._worker.is_alive():
            self._worker.join(0.2)
        if self.source is not None:
            self.source.stop()

    def main(self) -> int:
        if self.args.no_ui:
            return self.run_headless()
        from dashboard.app import run_dashboard
        if self.source_kind == "file" and not self.args.realtime:
            self._start_sidecar(live_view=True)
        return run_dashboard(self)

    def run_headless(self) -> int:
        # Like tcpdump's "listening on"/"reading from file": scripts wait for this line.
        if self.source_kind == "live":
            flt = self.settings.CAPTURE_FILTER
            sys.stderr.write(f"packettracer: capturing on {self.source.description}"
                             f"{' (filter: ' + flt + ')' if flt else ''}\n")
        else:
            sys.stderr.write(f"packettracer: reading {self.source.description}\n")
        sys.stderr.flush()
        if self.source_kind == "file" and not self.args.realtime:
            self._start_sidecar()
        self.start_capture()
        self.wait_capture()
        self.shutdown()
        self.print_summary()
        if self.source is not None and self.source.error is not None:
            raise RuntimeError_(f"capture on {self.source.description} failed: {self.source.error}")
        return 0

    def _start_sidecar(self, live_view: bool = False) -> None:
        """Read the file in two processes when that pays (sidecar.py): the packet-side trackers
        leave this pipeline for the other process. ``live_view``: a dashboard shows them while
        the file is read, so the other process sends its state every second."""
        if jobs_for(self.args.read, self.settings.FILE_READ_JOBS) < 2:
            return
        side = self.components.packet_side
        s = self.settings
        self.sidecar = Sidecar(self.args.read, s, self.args.count, s.CAPTURE_BATCH_SIZE,
                               getattr(self.args, "verbose", 0),
                               on_snapshot=side.adopt if live_view else None)
        p = self.pipeline
        p.stages = [f for f in p.stages if f not in side.stages]
        p.batch_stages = [f for f in p.batch_stages if f not in side.batch_stages]
        p.batch_taps.append(self.sidecar.tap)

    def _join_sidecar(self) -> None:
        """End the other process at the frames processed here and take its results (once; the
        capture thread does it when the file ends, shutdown() when the run is stopped)."""
        with self._sidecar_lock:
            if self.sidecar is None or self._sidecar_joined:
                return
            self._sidecar_joined = True
            self.processes = self.sidecar.join_into(self.components.packet_side)

    def shutdown(self) -> None:
        """Stop capture, retire flows, write exports. Safe to call twice."""
        if self._finished:
            return
        self._finished = True
        self.stop.set()
        if self._worker is not None:
            self._worker.join(5.0)
        # before finish(): the retiring flows' rows (names from passive DNS), the chores and
        # the exports read the whole packet side
        self._join_sidecar()
        self.pipeline.finish()
        for closer in self.components.on_finish:
            closer()
        if self.recorder is not None:
            m = self.meta()
            self.recorder.close(m["packets"], m["bytes"], m["flows"], m["dropped"])
        if self.args.export_json:
            write_json(self.document(), self.args.export_json)
        if self.args.export_csv:
            write_flows_csv(self.export_flows(), self.args.export_csv)

    def close(self) -> None:
        if self.sidecar is not None:
            self.sidecar.close()
        for closer in self.components.on_close:
            closer()
        if self.pool is not None:
            self.pool.close()

    # ---- reading -----------------------------------------------------------------------------
    def export_row(self, flow: Any) -> dict[str, Any]:
        """One flow as exported and stored: counters plus DPI facts, names and places."""
        row = flow.as_dict()
        for enrich in self.components.flow_enrichers:
            row.update(enrich(flow))
        return row

    def export_flows(self) -> list[dict[str, Any]]:
        enricher = self.components.enricher
        if enricher is None:
            return [self.export_row(f) for f in self.flows.all_flows()]
        with enricher.memoized():
            return [self.export_row(f) for f in self.flows.all_flows()]

    def meta(self) -> dict[str, Any]:
        c = self.pipeline.counters
        st = self.source.refresh_stats() if self.source else None
        return {
            "version": VERSION,
            "source": self.args.read or (self.source.description if self.source else ""),
            "source_kind": getattr(self, "source_kind", ""),
            "filter": self.settings.CAPTURE_FILTER or None,
            "packets": c.packets,
            "bytes": c.bytes,
            "malformed": c.malformed,
            "malformed_reasons": dict(c.malformed_reasons),
            "first_timestamp": c.first_ts or None,
            "last_timestamp": c.last_ts or None,
            "flows": self.flows.total_flows,
            "dropped": st.dropped if st else 0,
            "kernel_dropped": st.kernel_dropped if st else 0,
            "queue_dropped": st.queue_dropped if st else 0,
            "file_damage": (st.file_damage or None) if st else None,
            "session": self.session_id,
            "persistence": self.persistence_state,
        }

    def document(self) -> dict[str, Any]:
        comp = self.components
        return build_document(self.meta(), self.export_flows(),
                              dns=comp.dns_records(), ports=comp.port_rows(),
                              tcp=comp.tcp_totals(), stats=comp.stats(), extra=comp.extra_sections())

    def print_summary(self) -> None:
        m = self.meta()
        dur = (m["last_timestamp"] or 0) - (m["first_timestamp"] or 0)
        out = sys.stdout
        out.write(f"source:    {m['source']}\n")
        out.write(f"packets:   {m['packets']}\n")
        out.write(f"bytes:     {m['bytes']} ({human_bytes(m['bytes'])})\n")
        out.write(f"malformed: {m['malformed']}\n")
        out.write(f"duration:  {dur:.3f} s\n")
        out.write(f"flows:     {m['flows']}\n")
        if m["dropped"]:
            out.write(f"dropped:   {m['dropped']}\n")
        if self.source_kind == "file":
            out.write(f"processes: {self.processes}\n")
        protos = self.components.stats().get("protocols", {})
        if protos:
            top = sorted(protos.items(), key=lambda kv: kv[1], reverse=True)[:8]
            out.write("protocols: " + ", ".join(f"{k} {v}" for k, v in top) + "\n")
        if m["file_damage"]:
            sys.stderr.write(f"packettracer: warning: {self.args.read}: {m['file_damage']} "
                             f"(those packets were kept)\n")
        if self.args.export_json:
            out.write(f"export:    {self.args.export_json}\n")


# ---- wiring -----------------------------------------------------------------------------------
@dataclass
class Components:
    """Trackers and sinks of a run, and the hooks the pipeline and exports call on them."""

    stages: list[Callable[..., None]] = field(default_factory=list)
    flow_stages: list[Callable[..., None]] = field(default_factory=list)
    frame_sinks: list[Callable[..., None]] = field(default_factory=list)
    batch_stages: list[Callable[..., None]] = field(default_factory=list)
    other_stages: list[Callable[..., None]] = field(default_factory=list)
    periodic: list[Callable[[float], None]] = field(default_factory=list)
    flow_enrichers: list[Callable[[Any], dict[str, Any]]] = field(default_factory=list)
    on_finish: list[Callable[[], None]] = field(default_factory=list)
    on_close: list[Callable[[], None]] = field(default_factory=list)
    dns: Any = None
    ports: Any = None
    packet_stats: Any = None
    hops: Any = None
    classifier: Any = None
    inspector: Any = None
    security: Any = None
    tcp_totals_fn: Callable[[], dict[str, Any]] | None = None
    enricher: Any = None
    paths: Any = None
    # export wiring (export/): device inventory, packet ring for -w of selected flows, IPFIX
    devices: Any = None
    #: packet stats, hops, DNS and devices: the trackers a second process may run (sidecar.py)
    packet_side: Any = None
    packet_ring: Any = None
    ipfix: Any = None
    devices_lock: Any = None
    #: called with (db writer, pipeline periodic list) once the run's database is open
    on_database: list[Callable[[Any, list[Callable[[float], None]]], Any]] = field(
        default_factory=list)

    def dns_records(self) -> list[dict[str, Any]]:
        return self.dns.records() if self.dns is not None else []

    def port_rows(self) -> list[dict[str, Any]]:
        return self.ports.rows() if self.ports is not None else []

    def tcp_totals(self) -> dict[str, Any]:
        return self.tcp_totals_fn() if self.tcp_totals_fn is not None else {}

    def stats(self) -> dict[str, Any]:
        return self.packet_stats.as_dict() if self.packet_stats is not None else {}

    def extra_sections(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.security is not None:
            out["alerts"] = [a.to_dict() for a in self.security.engine.alerts()]
        if self.paths is not None:
            snap = self.paths.snapshot()
            if snap.destinations:
                out["paths"] = snap.as_dict()
        if self.devices is not None:
            from export.devices import device_section
            out["devices"] = device_section(self.devices, self.devices_lock)
        return out


def _tcp_factory() -> Callable[[], Any]:
    from tracking.tcp_state import TcpConnection
    return TcpConnection


def build_components(settings: Settings, flows: FlowTracker,
                     args: argparse.Namespace | None = None) -> Components:
    """Create every tracker the settings ask for and wire it to the pipeline's hooks."""
    from analysis.inspector import FlowInspector
    from geo.enrich import build_enricher
    from security.monitor import SecurityMonitor
    from tracking.classifier import TrafficClassifier
    from tracking.ports import PortTracker
    from tracking.tcp_totals import TcpTotals

    lock = flows.lock  # one lock: the pipeline holds it per batch, readers per snapshot
    c = Components()
    c.packet_side = side = build_packet_side(settings, lock)
    c.packet_stats, c.hops, c.dns, c.devices = side.packet_stats, side.hops, side.dns, side.devices
    c.ports = PortTracker(settings.ALERTS_PORT_SCAN_THRESHOLD, settings.ALERTS_SCAN_RATE, lock=lock)
    c.classifier = TrafficClassifier(lock=lock)
    c.inspector = FlowInspector()
    c.batch_stages = list(side.batch_stages)
    c.stages = list(side.stages)
    c.security = SecurityMonitor.from_settings(settings)
    c.security.attach(flows)  # its IP detections run as a flow stage; its graph reads flows
    c.other_stages.append(c.security.process_other)
    c.on_close.append(c.security.close)

    c.flow_stages = [c.ports.flow_stage, c.classifier.flow_stage, c.security.flow_stage]
    if settings.DPI_ENABLED:
        # state on flow.dpi (no key string or lookup per packet); retired flows keep facts only
        c.inspector.all_flows = flows.all_flows
        c.flow_stages.append(c.inspector.flow_stage)
        c.flow_enrichers.append(c.inspector.as_export)
        flows.listeners.append(c.inspector.retire)
    else:
        c.inspector = None

    totals = TcpTotals()

    def on_retire_keep_facts(flow: Any) -> None:
        # Facts of retired flows are kept for the export until the run ends (a fold listener:
        # the flows of the end are read with the live ones, last_flows, if someone asks).
        if flow.tcp is not None:
            totals.add(flow.tcp)

    flows.fold_listeners.append(on_retire_keep_facts)
    c.tcp_totals_fn = lambda: totals.merged(
        f.tcp for f in flows.last_flows() if f.tcp is not None).as_dict()

    passive = c.dns.passive_names if c.dns is not None else None
    # A headless run looks places up only for its exports at the end: loading the database in
    # a thread now would take CPU from the packets (~0.4 s).
    c.enricher = build_enricher(settings, passive_lookup=passive,
                                warm=not getattr(args, "no_ui", False))
    c.flow_enrichers.append(c.enricher.flow_fields)
    c.on_close.append(c.enricher.close)
    _wire_exports(c, settings, flows, args)
    return c


def _wire_exports(c: Components, settings: Settings, flows: FlowTracker,
                  args: argparse.Namespace | None) -> None:
    """Devices (stage, db, export section), the packet ring, and IPFIX when asked for."""
    from export.devices import attach_device_persistence
    from export.packet_ring import DEFAULT_FRAMES, DEFAULT_MB, PacketRing

    c.devices_lock = flows.lock
    c.on_database.append(lambda writer, periodic: attach_device_persistence(c, writer, periodic))
    frames = settings.get("PACKET_RING_FRAMES", DEFAULT_FRAMES)
    # Only the dashboard saves a selected flow's packets: a headless run keeps no ring (on
    # bench-1m the ring cost ~3 us a packet, mostly in keeping 50k frames alive).
    if frames > 0 and not getattr(args, "no_ui", False):
        c.packet_ring = PacketRing(frames, settings.get("PACKET_RING_MB", DEFAULT_MB) * 1024 * 1024,
                                   lock=flows.lock)
        c.frame_sinks.append(c.packet_ring.add_batch)
    collector = getattr(args, "ipfix", None)
    if collector:
        from export.ipfix import attach_ipfix
        try:
            c.ipfix = attach_ipfix(c, flows, collector, settings)
        except ValueError as exc:
            raise RuntimeError_(str(exc)) from None


