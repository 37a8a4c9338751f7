"""What changed on this host since the last send: flows, ports, DNS records, alerts, metrics.

Reads the run's trackers (a runtime.Runtime or anything with the same attributes) under the
flow table's lock, which the pipeline holds once per batch, so a collection sees a consistent
table. Flows are sent when their packet total changed, and once more when they retire.

A flow goes out as a full record (with a new id) the first time, and as a compact update
(id + counters) afterwards -- unless its facts changed. Facts (DPI, geo, classification, TTLs)
settle in a flow's first packets, so they are rebuilt and compared only while a flow is young
(``watch_packets``) and then every ``recheck_interval`` seconds; the full record it retires
with carries the final facts in any case.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from relay.server import protocol as p
from tracking.flow import Flow


#: rebuild and compare a flow's facts while it has at most this many packets
WATCH_PACKETS = 32
#: and then at most this often (seconds), for late facts such as a reverse DNS name
RECHECK_INTERVAL = 10.0


@dataclass(slots=True)
class _Sent:
    """What the server holds of one active flow."""

    id: int
    total: int              # packets_sent + packets_recv last sent
    facts: p.FlowRecord     # p.flow_facts() of the last full record
    checked: float          # clock() when the facts were last compared
    tcp: tuple[int, ...] | None  # the TCP analysis counters then (they are facts too)


def _tcp_sig(flow: Flow) -> tuple[int, ...] | None:
    """The TCP counters the export shows (retransmissions...): cheap to read, rarely changing."""
    t = flow.tcp
    if t is None:
        return None
    return (t.retransmissions, t.fast_retransmissions, t.out_of_order, t.dup_acks,
            t.zero_windows, t.resets)


@dataclass(slots=True)
class Changes:
    flows: list[p.FlowRecord] = field(default_factory=list)
    updates: list[p.FlowUpdate] = field(default_factory=list)
    ports: list[p.PortRecord] = field(default_factory=list)
    dns: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[p.AlertRecord] = field(default_factory=list)


class StateCollector:
    """Diffs the trackers against what was last collected (the caller sends it)."""

    def __init__(self, rt: Any, clock: Callable[[], float] = time.monotonic,
                 watch_packets: int = WATCH_PACKETS,
                 recheck_interval: float = RECHECK_INTERVAL) -> None:
        self.rt = rt
        self.clock = clock
        self.watch_packets = watch_packets
        self.recheck_interval = recheck_interval
        self._retired: list[Flow] = []
        self._sent_flows: dict[str, _Sent] = {}
        self._next_id = 1
        self._sent_ports: dict[tuple[int, str], tuple[int, int]] = {}
        self._sent_dns: set[tuple[Any, ...]] = set()
        self._sent_alerts: dict[int, tuple[int, float, bool]] = {}
        self._last_rate: tuple[float, int, int] | None = None
        self._proc: Any = None
        # DPI and geo facts the local export would add (sni, ja3, app_protocol, country...)
        self._enrichers = list(getattr(getattr(rt, "components", None), "flow_enrichers", []) or [])
        rt.flows.listeners.append(self._on_retire)

    def _record(self, flow: Flow, flow_id: int = 0) -> p.FlowRecord:
        row = flow.as_dict()
        for enrich in self._enrichers:
            for k, v in enrich(flow).items():
                row[k] = v if v is None or isinstance(v, (str, int, float)) else _plain(v)
        return p.flow_record(row, flow.retired, flow_id)

    def _full(self, flow: Flow, total: int, now: float, ch: Changes) -> None:
        """A full record under a new id (ids are never reused within the agent session)."""
        fid = self._next_id
        self._next_id += 1
        rec = self._record(flow, fid)
        self._sent_flows[flow.flow_key] = _Sent(fid, total, p.flow_facts(rec), now, _tcp_sig(flow))
        ch.flows.append(rec)

    def _changed(self, flow: Flow, sent: _Sent, total: int, now: float, ch: Changes) -> None:
        sent.total = total
        tcp = _tcp_sig(flow)
        if total <= self.watch_packets or now - sent.checked >= self.recheck_interval \
                or tcp != sent.tcp:
            rec = self._record(flow, sent.id)
            facts = p.flow_facts(rec)
            sent.checked = now
            sent.tcp = tcp
            if facts != sent.facts:
                sent.facts = facts
                ch.flows.append(rec)
            else:
                ch.updates.append(p.flow_update(rec))
            return
        ch.updates.append(p.FlowUpdate(sent.id, flow.packets_sent, flow.packets_recv,
                                       flow.bytes_sent, flow.bytes_recv, flow.last_seen,
                                       flow.state))

    def _on_retire(self, flow: Flow) -> None:
        # Runs on the pipeline thread under the flow lock: only an append.
        self._retired.append(flow)

    def reset(self) -> None:
        """Forget what was sent: the next collect(full=True) sends everything."""
        self._sent_flows.clear()
        self._sent_ports.clear()
        self._sent_dns.clear()
        self._sent_alerts.clear()

    def collect(self, full: bool = False) -> Changes:
        ch = Changes()
        flows = self.rt.flows
        now = self.clock()
        with flows.lock:
            retired, self._retired = self._retired, []
            sent = self._sent_flows
            if full:
                every = flows.all_flows()
                known = {id(f) for f in every}
                # retired past the tracker's history bound are only in our queue
                every.extend(f for f in retired if id(f) not in known)
                for f in every:
                    if f.retired:
                        ch.flows.append(self._record(f))
                    else:
                        self._full(f, f.packets_sent + f.packets_recv, now, ch)
            else:
                for f in retired:
                    # its last word: final counters and facts, as a full record
                    was = sent.pop(f.flow_key, None)
                    ch.flows.append(self._record(f, was.id if was is not None else 0))
                for f in flows.snapshot():
                    total = f.packets_sent + f.packets_recv
                    was = sent.get(f.flow_key)
                    if was is None:
                        self._full(f, total, now, ch)
                    elif was.total != total:
                        self._changed(f, was, total, now, ch)
        comps = self.rt.components
        self._ports(comps, ch)
        self._dns(comps, ch)
        self._alerts(comps, ch)
        return ch

    def _ports(self, comps: Any, ch: Changes) -> None:
        if comps.ports is None:
            return
        sent = self._sent_ports
        for r in comps.ports.rows():
            key = (r["port"], r["proto"])
            sig = (r["packets"], r["bytes"])
            if sent.get(key) != sig:
                sent[key] = sig
                ch.ports.append(p.PortRecord(**r))

    def _dns(self, comps: Any, ch: Changes) -> None:
        if comps.dns is None:
            return
        sent = self._sent_dns
        if len(sent) > 1_000_000:  # bounded; a few records may be sent twice (the server dedups)
            sent.clear()
        for r in comps.dns.records():
            key = (r.get("time"), r.get("client"), r.get("client_port"), r.get("id"),
                   r.get("qname"), r.get("response_only"), r.get("query_only"))
            if key not in sent:
                sent.add(key)
                ch.dns.append(r)

    def _alerts(self, comps: Any, ch: Changes) -> None:
        sec = comps.security
        if sec is None:
            return
        sent = self._sent_alerts
        for a in sec.engine.alerts():
            sig = (a.count, a.last_ts, a.acknowledged)
            if sent.get(a.id) != sig:
                sent[a.id] = sig
                d = a.to_dict()
                d["evidence"] = _plain(d.get("evidence") or {})
                ch.alerts.append(p.AlertRecord(**d))

    def metrics(self, seq: int, buffered: int, buffered_bytes: int, dropped: int,
                dropped_rows: int) -> p.Metrics:
        rt = self.rt
        c = rt.pipeline.counters
        now = self.clock()
        pps = bps = 0.0
        if self._last_rate is not None:
            t0, pk0, by0 = self._last_rate
            dt = now - t0
            if dt > 0:
                pps, bps = (c.packets - pk0) / dt, (c.bytes - by0) / dt
        self._last_rate = (now, c.packets, c.bytes)
        drops = 0
        src = getattr(rt, "source", None)
        if src is not None:
            drops = src.refresh_stats().dropped
        cpu = 0.0
        rss = 0
        try:
            import psutil
            if self._proc is None:
                self._proc = psutil.Process()
                self._proc.cpu_percent(None)  # the first call starts the measurement
            cpu = self._proc.cpu_percent(None)
            rss = self._proc.memory_info().rss
        except (ImportError, OSError):
            pass
        return p.Metrics(seq=seq, ts=time.time(), packets=c.packets, bytes=c.bytes,
                         pps=round(pps, 1), bps=round(bps, 1), malformed=c.malformed, drops=drops,
                         flows_active=rt.flows.active_count, flows_total=rt.flows.total_flows,
                         cpu_percent=cpu, rss_bytes=rss, buffered=buffered,
                         buffered_bytes=buffered_bytes, buffer_dropped=dropped,
                         buffer_dropped_flows=dropped_rows,
                         first_timestamp=c.first_ts, last_timestamp=c.last_ts,
                         source=str(getattr(src, "description", "") or "")[:256],
                         capture_done=bool(getattr(rt, "capture_done", False)))


def _plain(value: Any) -> Any:
    """Evidence values as msgpack-friendly types (sets and tuples become lists)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [_plain(v) for v in value]
        return sorted(items, key=str) if isinstance(value, (set, frozenset)) else items
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
