"""The server's merged view of every agent: flows, ports, DNS, alerts and metrics, by agent id.

Messages carry absolute state, so applying is an upsert. Two guards keep resends and resyncs
from moving anything backwards: a per-(agent, session) sequence number (a message at or below
the last applied one is a duplicate) and, per flow, its packet total within one agent session
(a flow's counters only grow). Compact flow updates name a flow by the id its full record
gave it in the agent's current session; an id the server does not know is counted and skipped
(the agent resyncs whenever the server may have lost records: a new server instance, or drops).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import msgspec

from relay.server.protocol import (
    AlertBatch, AlertRecord, Bye, DnsBatch, FlowBatch, FlowRecord, FlowUpdate, Hello, Metrics,
    PortBatch, PortRecord, flow_row,
)
from tracking.flow import Flow, RecordedFlow, verdict

#: the dashboard's agent states
CONNECTED, LOST, CLOSED = "connected", "lost", "closed"

_PROTO_NUM = {"TCP": 6, "UDP": 17, "ICMP": 1, "ICMPv6": 58, "SCTP": 132}


@dataclass(slots=True)
class AgentState:
    """What the server knows about one agent (one row of the Relay panel)."""

    agent: str
    session: str = ""
    hostname: str = ""
    address: str = ""
    version: str = ""
    source: str = ""
    state: str = CONNECTED
    connected_at: float = 0.0
    last_heartbeat: float = 0.0
    last_seen: float = 0.0
    connections: int = 0
    messages: int = 0
    duplicates: int = 0
    bytes_in: int = 0
    metrics: Metrics | None = None
    #: highest applied seq per agent session
    acked: dict[str, int] = field(default_factory=dict)

    def row(self, now: float) -> dict[str, Any]:
        m = self.metrics
        return {
            "agent": self.agent, "state": self.state, "address": self.address,
            "version": self.version, "hostname": self.hostname, "source": self.source,
            "last_heartbeat": self.last_heartbeat or None,
            "heartbeat_age": round(now - self.last_heartbeat, 1) if self.last_heartbeat else None,
            "connected_at": self.connected_at or None,
            "pps": m.pps if m else 0.0, "bps": m.bps if m else 0.0,
            "packets": m.packets if m else 0, "bytes": m.bytes if m else 0,
            "drops": m.drops if m else 0,
            "buffered": m.buffered if m else 0,
            "buffer_dropped": m.buffer_dropped if m else 0,
            "cpu_percent": m.cpu_percent if m else 0.0,
            "rss_bytes": m.rss_bytes if m else 0,
            "messages": self.messages, "duplicates": self.duplicates, "bytes_in": self.bytes_in,
            "connections": self.connections,
        }


class MergedStore:
    """Thread-safe: the server's loop applies, readers (dashboard, export) copy under the lock."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.lock = threading.Lock()
        self.clock = clock
        self.agents: dict[str, AgentState] = {}
        #: (agent, flow_key) -> (record, agent session)
        self.flows: dict[tuple[str, str], tuple[FlowRecord, str]] = {}
        self.ports: dict[tuple[str, int, str], PortRecord] = {}
        self.dns: dict[tuple[Any, ...], dict[str, Any]] = {}
        self.alerts: dict[tuple[str, int], AlertRecord] = {}
        #: agent -> (session, flow id -> flow_key) for FlowUpdate rows
        self.flow_ids: dict[str, tuple[str, dict[int, str]]] = {}
        self.stale_flow_updates = 0
        self.unknown_flow_updates = 0

    # ---- agent lifecycle ---------------------------------------------------------------------
    def connect(self, hello: Hello, address: str) -> int:
        """An authenticated agent connected; returns the last seq applied for its session."""
        now = self.clock()
        with self.lock:
            st = self.agents.get(hello.agent)
            if st is None:
                st = self.agents[hello.agent] = AgentState(hello.agent)
            if st.session != hello.session:
                st.metrics = None  # a new agent run: its counters start again
            st.session = hello.session
            st.hostname, st.version, st.source = hello.hostname, hello.version, hello.source
            st.address = address
            st.state = CONNECTED
            st.connected_at = now
            st.last_seen = now
            st.connections += 1
            return st.acked.get(hello.session, 0)

    def disconnect(self, agent: str, state: str) -> None:
        with self.lock:
            st = self.agents.get(agent)
            if st is not None and st.state == CONNECTED:
                st.state = state

    def heartbeat(self, agent: str) -> None:
        now = self.clock()
        with self.lock:
            st = self.agents[agent]
            st.last_heartbeat = st.last_seen = now

    # ---- data --------------------------------------------------------------------------------
    def apply(self, agent: str, msg: Any, size: int) -> bool:
        """Apply one sequenced message; False if it was a duplicate (already applied)."""
        with self.lock:
            st = self.agents[agent]
            st.last_seen = self.clock()
            st.bytes_in += size
            session = st.session
            if msg.seq <= st.acked.get(session, 0):
                st.duplicates += 1
                return False
            st.acked[session] = msg.seq
            st.messages += 1
            kind = type(msg)
            if kind is FlowBatch:
                if msg.flows:
                    self._flows(agent, session, msg.flows)
                if msg.updates:
                    self._updates(agent, session, msg.updates)
            elif kind is PortBatch:
                for r in msg.rows:
                    self.ports[(agent, r.port, r.proto)] = r
            elif kind is DnsBatch:
                for r in msg.records:
                    key = (agent, r.get("time"), r.get("client"), r.get("client_port"),
                           r.get("id"), r.get("qname"), r.get("response_only"))
                    self.dns[key] = r
            elif kind is AlertBatch:
                for a in msg.alerts:
                    self.alerts[(agent, a.id)] = a
            elif kind is Metrics:
                if st.metrics is None or msg.ts >= st.metrics.ts:
                    st.metrics = msg
            elif kind is Bye:
                st.state = CLOSED
            return True

    def _ids(self, agent: str, session: str) -> dict[int, str]:
        cur = self.flow_ids.get(agent)
        if cur is None or cur[0] != session:  # a new agent run numbers its flows afresh
            cur = self.flow_ids[agent] = (session, {})
        return cur[1]

    def _flows(self, agent: str, session: str, flows: list[FlowRecord]) -> None:
        table = self.flows
        ids = self._ids(agent, session)
        for rec in flows:
            key = (agent, rec.flow_key)
            if rec.id:
                if rec.retired:
                    ids.pop(rec.id, None)
                else:
                    ids[rec.id] = rec.flow_key
            old = table.get(key)
            if old is not None and old[1] == session and \
                    old[0].packets_sent + old[0].packets_recv > rec.packets_sent + rec.packets_recv:
                self.stale_flow_updates += 1
                continue
            table[key] = (rec, session)

    def _updates(self, agent: str, session: str, updates: list[FlowUpdate]) -> None:
        table = self.flows
        ids = self._ids(agent, session)
        replace = msgspec.structs.replace
        for u in updates:
            fkey = ids.get(u.id)
            old = table.get((agent, fkey)) if fkey is not None else None
            if old is None or old[1] != session:
                self.unknown_flow_updates += 1
                continue
            rec = old[0]
            if rec.packets_sent + rec.packets_recv > u.packets_sent + u.packets_recv:
                self.stale_flow_updates += 1
                continue
            # a new record, not an in-place change: readers copy the table without the lock
            table[(agent, fkey)] = (replace(rec, packets_sent=u.packets_sent,
                                            packets_recv=u.packets_recv, bytes_sent=u.bytes_sent,
                                            bytes_recv=u.bytes_recv, last_seen=u.last_seen,
                                            state=u.state), session)

    def acked(self, agent: str) -> int:
        with self.lock:
            st = self.agents.get(agent)
            return st.acked.get(st.session, 0) if st else 0

    # ---- readers -----------------------------------------------------------------------------
    def agent_rows(self) -> list[dict[str, Any]]:
        now = self.clock()
        with self.lock:
            return [st.row(now) for st in sorted(self.agents.values(), key=lambda s: s.agent)]

    def flow_rows(self, agent: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            items = list(self.flows.items())
        rows = [flow_row(rec, a) for (a, _), (rec, _) in items if agent is None or a == agent]
        # Agents leave null facts out of the wire: give every row the same fields again.
        keys: dict[str, None] = {}
        for r in rows:
            keys.update(dict.fromkeys(r))
        for r in rows:
            if len(r) != len(keys):
                for k in keys:
                    r.setdefault(k, None)
        return rows

    def flow_objects(self) -> list[Flow]:
        """Flows as tracking.Flow (with ``agent`` set) for views built on the flow table."""
        with self.lock:
            items = list(self.flows.items())
        out = []
        for (agent, _), (r, _) in items:
            f = RecordedFlow(_PROTO_NUM.get(r.protocol, 0), r.src_ip, r.src_port or 0, r.dst_ip,
                             r.dst_port or 0, r.first_seen, r.last_seen,
                             packets_sent=r.packets_sent, packets_recv=r.packets_recv,
                             bytes_sent=r.bytes_sent, bytes_recv=r.bytes_recv,
                             verdict=verdict(r.classification or "", r.encrypted),
                             retired=r.retired, agent=agent, _key=r.flow_key)
            out.append(f)
        return out

    def port_rows(self) -> list[dict[str, Any]]:
        import msgspec
        with self.lock:
            items = list(self.ports.items())
        rows = []
        for (agent, _, _), r in items:
            d = msgspec.structs.asdict(r)
            d["agent"] = agent
            rows.append(d)
        rows.sort(key=lambda d: (-d["bytes"], d["agent"], d["port"]))
        return rows

    def dns_rows(self) -> list[dict[str, Any]]:
        with self.lock:
            items = list(self.dns.items())
        rows = [{**r, "agent": k[0]} for k, r in items]
        rows.sort(key=lambda d: (d.get("time") or 0.0, d["agent"]))
        return rows

    def alert_rows(self) -> list[dict[str, Any]]:
        import msgspec
        with self.lock:
            items = list(self.alerts.items())
        rows = []
        for (agent, _), a in items:
            d = msgspec.structs.asdict(a)
            d["agent"] = agent
            rows.append(d)
        rows.sort(key=lambda d: (d["ts"], d["agent"], d["id"]))
        return rows

    def totals(self) -> dict[str, Any]:
        """Counters summed over agents (from their latest metrics)."""
        with self.lock:
            ms = [st.metrics for st in self.agents.values() if st.metrics is not None]
            flows = len(self.flows)
        firsts = [m.first_timestamp for m in ms if m.first_timestamp]
        lasts = [m.last_timestamp for m in ms if m.last_timestamp]
        return {
            "packets": sum(m.packets for m in ms), "bytes": sum(m.bytes for m in ms),
            "malformed": sum(m.malformed for m in ms), "dropped": sum(m.drops for m in ms),
            "flows": flows,
            "first_timestamp": min(firsts) if firsts else None,
            "last_timestamp": max(lasts) if lasts else None,
        }
