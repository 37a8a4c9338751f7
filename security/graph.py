"""Who talks to whom: hosts as nodes, directed edges with bytes and packets.

Fan-out (distinct peers a host reaches), fan-in (distinct peers reaching it) and the rate at
which new edges appear are what a worm, a sweep or a botnet changes first; the top of the graph
is shown on screen and the whole can be exported as GraphML (Gephi, yEd, networkx) or DOT.

Nothing here runs per packet: the flow table already counts every packet, so the edges are
derived from the flows when someone reads the graph. A flow gives the edge src->dst from its
``*_sent`` counters and dst->src from its ``*_recv`` counters. Active flows come from a provider
(``FlowTracker.last_flows``) at read time, with those retired at the end of the run; flows
retired before are folded into a bounded table of finished edges as they retire (so the edges
of a long run outlive the tracker's history), and new (initiator, responder) host pairs are
counted as flows are created.
"""
from __future__ import annotations

import heapq
import threading
from collections import deque
from typing import Any, Callable, Iterable, TextIO
from xml.sax.saxutils import quoteattr

from utils.bounded import evict_oldest
from tracking.flow import Flow, FlowTracker

FlowsProvider = Callable[[], Iterable[Flow]]


class Edge:
    __slots__ = ("src", "dst", "bytes", "packets", "first", "last")

    def __init__(self, src: str, dst: str, ts: float) -> None:
        self.src = src
        self.dst = dst
        self.bytes = 0
        self.packets = 0
        self.first = ts
        self.last = ts

    def as_dict(self) -> dict[str, Any]:
        return {"src": self.src, "dst": self.dst, "bytes": self.bytes, "packets": self.packets,
                "first": self.first, "last": self.last}


class GraphView:
    """The graph at one moment: every edge plus the degrees of every host (read-only)."""

    __slots__ = ("edges", "fan_out", "fan_in")

    def __init__(self, edges: dict[tuple[str, str], Edge]) -> None:
        self.edges = edges
        fan_out: dict[str, int] = {}
        fan_in: dict[str, int] = {}
        for src, dst in edges:
            fan_out[src] = fan_out.get(src, 0) + 1
            fan_in[dst] = fan_in.get(dst, 0) + 1
        self.fan_out = fan_out
        self.fan_in = fan_in

    @property
    def nodes(self) -> int:
        return len(self.fan_out.keys() | self.fan_in.keys())

    def top_edges(self, n: int = 10, by: str = "bytes") -> list[dict[str, Any]]:
        best = heapq.nlargest(n, self.edges.values(), key=lambda e: getattr(e, by))
        return [e.as_dict() for e in best]


def _fold(edges: dict[tuple[str, str], Edge], src: str, dst: str, nbytes: int, packets: int,
          first: float, last: float) -> None:
    """Add one direction of one flow to ``edges`` (nothing when it carried no packet)."""
    if not packets:
        return
    key = (src, dst)
    e = edges.get(key)
    if e is None:
        e = edges[key] = Edge(src, dst, first)
    elif first < e.first:
        e.first = first
    e.bytes += nbytes
    e.packets += packets
    if last > e.last:
        e.last = last


def _sum_into(live: dict[tuple[str, str], list[Any]], key: tuple[str, str], nbytes: int,
              packets: int, first: float, last: float) -> None:
    """Like :func:`_fold`, into a plain [bytes, packets, first, last] list (the view builds
    Edge objects once per edge afterwards)."""
    if not packets:
        return
    a = live.get(key)
    if a is None:
        live[key] = [nbytes, packets, first, last]
        return
    a[0] += nbytes
    a[1] += packets
    if first < a[2]:
        a[2] = first
    if last > a[3]:
        a[3] = last


class ConnectionGraph:
    """Directed host graph derived from flows.

    Args:
        flows: returns the active flows (and those retired at the end of the run) when the
            graph is read (``FlowTracker.last_flows``); None until :meth:`attach` gives one.
        max_edges: finished edges (of retired flows) kept; the oldest-created eighth goes
            when full. Active flows always count.
        rate_window: seconds of per-second new-edge counts remembered.
    """

    def __init__(self, flows: FlowsProvider | None = None, max_edges: int = 100000,
                 rate_window: int = 60) -> None:
        # Writers: the pipeline thread, through the flow table's listeners (once per new or
        # retired flow, never per packet). Readers copy under the lock.
        self.flows = flows
        self.max_edges = max_edges
        #: edges of retired flows, oldest-created first
        self._done: dict[tuple[str, str], Edge] = {}
        #: initiator -> its responder, or the set of them once there are several: the host
        #: pairs seen, to tell a new edge from a new flow on an old one. Keyed by the address
        #: alone (the flow's own strings, no tuple per pair): most initiators reach one host.
        self._pairs: dict[str, str | set[str]] = {}
        self._npairs = 0
        #: (second, new edges in that second), newest last
        self._new: deque[list[int]] = deque(maxlen=rate_window)
        self._lock = threading.Lock()
        self.total_edges = 0
        self.evicted = 0

    # --- wiring (called once per flow, from the flow table's listeners) -------------------
    def attach(self, tracker: FlowTracker) -> None:
        """Read active flows from ``tracker`` and listen to its new and retired flows."""
        self.flows = tracker.last_flows
        tracker.new_flow_listeners.append(self.on_new_flow)
        tracker.fold_listeners.append(self.on_retire)

    def detach(self, tracker: FlowTracker) -> None:
        for table, fn in ((tracker.new_flow_listeners, self.on_new_flow),
                          (tracker.fold_listeners, self.on_retire)):
            if fn in table:
                table.remove(fn)

    def on_new_flow(self, flow: Flow) -> None:
        """Count a new edge when a flow joins two hosts that had none (initiator -> responder)."""
        _, src, _, dst, _ = flow.key
        pairs = self._pairs
        known = pairs.get(src)
        if known is None:
            pairs[src] = dst
        elif type(known) is str:
            if known == dst:
                return
            pairs[src] = {known, dst}
        elif dst in known:
            return
        else:
            known.add(dst)
        self._npairs += 1
        if self._npairs > 2 * self.max_edges:
            self._forget_pairs(2 * self.max_edges)
        sec = int(flow.first_seen)
        with self._lock:
            self.total_edges += 1
            new = self._new
            if new and new[-1][0] == sec:
                new[-1][1] += 1
            else:
                new.append([sec, 1])

    def _forget_pairs(self, limit: int) -> None:
        """Forget the initiators seen first until at most ``limit - limit // 8`` pairs remain
        (a batch at once, as evict_oldest does for the other tables)."""
        keep = limit - limit // 8
        n = self._npairs
        gone = []
        for src, known in self._pairs.items():
            if n <= keep:
                break
            n -= 1 if type(known) is str else len(known)
            gone.append(src)
        for src in gone:
            del self._pairs[src]
        self._npairs = n

    def on_retire(self, flow: Flow) -> None:
        """Fold a finished flow into the table of finished edges (a fold listener: the flows of
        the run's end stay with the flow table, :meth:`view` reads them like active flows)."""
        first, last = flow.first_seen, flow.last_seen
        with self._lock:
            done = self._done
            _fold(done, flow.src_ip, flow.dst_ip, flow.bytes_sent, flow.packets_sent, first, last)
            _fold(done, flow.dst_ip, flow.src_ip, flow.bytes_recv, flow.packets_recv, first, last)
            if len(done) > self.max_edges:
                before = len(done)
                evict_oldest(done, self.max_edges)
                self.evicted += before - len(done)

    # --- reading --------------------------------------------------------------------------
    def view(self) -> GraphView:
        """Every edge now: finished ones plus the active flows' (O(edges + active flows)).

        Finished edges are shared with the table, not copied (they may still grow while the
        view is read); an edge that active flows add to is a new object."""
        active = list(self.flows()) if self.flows is not None else []
        with self._lock:
            done = dict(self._done)
        # Sum the active flows per direction into plain lists first (one dict probe per
        # direction and flow); Edge objects are made once per edge afterwards.
        live: dict[tuple[str, str], list[Any]] = {}
        for f in active:
            first, last = f.first_seen, f.last_seen
            _sum_into(live, (f.src_ip, f.dst_ip), f.bytes_sent, f.packets_sent, first, last)
            _sum_into(live, (f.dst_ip, f.src_ip), f.bytes_recv, f.packets_recv, first, last)
        for key, (nbytes, packets, first, last) in live.items():
            e = Edge(key[0], key[1], first)
            old = done.get(key)
            if old is not None:
                nbytes += old.bytes
                packets += old.packets
                e.first = min(old.first, first)
                last = max(old.last, last)
            e.bytes = nbytes
            e.packets = packets
            e.last = last
            done[key] = e
        return GraphView(done)

    def fan_out(self, host: str) -> int:
        return self.view().fan_out.get(host, 0)

    def fan_in(self, host: str) -> int:
        return self.view().fan_in.get(host, 0)

    def new_edge_rate(self, now: float, window: float = 10.0) -> float:
        """New edges (host pairs) per second over the last ``window`` seconds before ``now``."""
        with self._lock:
            n = sum(c for sec, c in self._new if now - window < sec <= now)
        return n / window if window > 0 else 0.0

    def top_edges(self, n: int = 10, by: str = "bytes") -> list[dict[str, Any]]:
        return self.view().top_edges(n, by)

    def top_fan_out(self, n: int = 10) -> list[tuple[str, int]]:
        return heapq.nlargest(n, self.view().fan_out.items(), key=lambda kv: kv[1])

    def top_fan_in(self, n: int = 10) -> list[tuple[str, int]]:
        return heapq.nlargest(n, self.view().fan_in.items(), key=lambda kv: kv[1])

    def snapshot(self, n: int = 10) -> dict[str, Any]:
        v = self.view()
        with self._lock:
            last = self._new[-1][0] if self._new else 0
        return {"nodes": v.nodes, "edges": len(v.edges), "top_edges": v.top_edges(n),
                "top_fan_out": heapq.nlargest(n, v.fan_out.items(), key=lambda kv: kv[1]),
                "top_fan_in": heapq.nlargest(n, v.fan_in.items(), key=lambda kv: kv[1]),
                "new_edges_per_s": self.new_edge_rate(last)}

    # --- export ---------------------------------------------------------------------------
    def _export(self, limit: int | None) -> tuple[GraphView, list[Edge]]:
        v = self.view()
        edges = list(v.edges.values())
        if limit is not None:
            edges = heapq.nlargest(limit, edges, key=lambda e: e.bytes)
        return v, edges

    def write_graphml(self, out: TextIO, limit: int | None = None) -> None:
        """GraphML with per-edge bytes/packets and per-node fan-out/fan-in."""
        v, edges = self._export(limit)
        nodes = sorted({e.src for e in edges} | {e.dst for e in edges})
        out.write('<?xml version="1.0" encoding="UTF-8"?>\n'
                  '<graphml xmlns="http://graphml.graphdrawing.org/xmlns">\n'
                  '  <key id="fo" for="node" attr.name="fan_out" attr.type="int"/>\n'
                  '  <key id="fi" for="node" attr.name="fan_in" attr.type="int"/>\n'
                  '  <key id="b" for="edge" attr.name="bytes" attr.type="long"/>\n'
                  '  <key id="p" for="edge" attr.name="packets" attr.type="long"/>\n'
                  '  <graph id="packettracer" edgedefault="directed">\n')
        for n in nodes:
            out.write(f'    <node id={quoteattr(n)}><data key="fo">{v.fan_out.get(n, 0)}</data>'
                      f'<data key="fi">{v.fan_in.get(n, 0)}</data></node>\n')
        for e in edges:
            out.write(f'    <edge source={quoteattr(e.src)} target={quoteattr(e.dst)}>'
                      f'<data key="b">{e.bytes}</data><data key="p">{e.packets}</data></edge>\n')
        out.write("  </graph>\n</graphml>\n")

    def write_dot(self, out: TextIO, limit: int | None = None) -> None:
        """Graphviz DOT; edges labelled with bytes and packets."""
        _, edges = self._export(limit)
        out.write("digraph packettracer {\n")
        for e in edges:
            out.write(f"  {_dot_id(e.src)} -> {_dot_id(e.dst)} "
                      f"[label=\"{e.bytes} B / {e.packets} pkts\", bytes={e.bytes}, "
                      f"packets={e.packets}];\n")
        out.write("}\n")


def _dot_id(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'

