"""Who talks to whom: hosts as nodes, directed flows as edges with bytes and packets.

Fan-out (distinct peers a host reaches), fan-in (distinct peers reaching it) and the rate at
which new edges appear are what a worm, a sweep or a botnet changes first; the top of the graph
is shown on screen and the whole can be exported as GraphML (Gephi, yEd, networkx) or DOT.
"""
from __future__ import annotations

import heapq
import threading
from collections import deque
from typing import Any, TextIO
from xml.sax.saxutils import quoteattr

from capture.packet import ParsedPacket


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


class ConnectionGraph:
    """Directed host graph built from IP packets.

    Args:
        max_edges: edges kept; the oldest-created edge goes first when full.
        rate_window: seconds of per-second new-edge counts remembered.
    """

    def __init__(self, max_edges: int = 100000, rate_window: int = 60) -> None:
        # One writer (the pipeline thread). Structural changes (new edges, eviction) take the
        # lock; counter updates on an existing edge do not. Readers hold the lock while they
        # copy, so they never iterate a dict that is being resized.
        self.max_edges = max_edges
        self._edges: dict[tuple[str, str], Edge] = {}
        self._fan_out: dict[str, int] = {}
        self._fan_in: dict[str, int] = {}
        #: (second, new edges in that second), newest last
        self._new: deque[list[int]] = deque(maxlen=rate_window)
        self._lock = threading.Lock()
        self.total_edges = 0
        self.evicted = 0

    def process(self, pkt: ParsedPacket) -> None:
        if not pkt.ip_version:
            return
        key = (pkt.src_ip, pkt.dst_ip)
        e = self._edges.get(key)
        if e is None:
            with self._lock:
                e = self._add(key, pkt.ts)
        e.bytes += pkt.wire_len
        e.packets += 1
        if pkt.ts > e.last:
            e.last = pkt.ts

    def _add(self, key: tuple[str, str], ts: float) -> Edge:
        src, dst = key
        e = self._edges[key] = Edge(src, dst, ts)
        self._fan_out[src] = self._fan_out.get(src, 0) + 1
        self._fan_in[dst] = self._fan_in.get(dst, 0) + 1
        self.total_edges += 1
        sec = int(ts)
        if self._new and self._new[-1][0] == sec:
            self._new[-1][1] += 1
        else:
            self._new.append([sec, 1])
        if len(self._edges) > self.max_edges:
            self._evict()
        return e

    def _evict(self) -> None:
        # A quarter at a time, rebuilding the dict: popping the front key one by one leaves
        # dummy slots that make every later next(iter()) slower.
        drop = max(1, self.max_edges // 4)
        items = list(self._edges.items())
        for _, old in items[:drop]:
            _dec(self._fan_out, old.src)
            _dec(self._fan_in, old.dst)
        self._edges = dict(items[drop:])
        self.evicted += drop

    # --- measures -------------------------------------------------------------------------
    def fan_out(self, host: str) -> int:
        return self._fan_out.get(host, 0)

    def fan_in(self, host: str) -> int:
        return self._fan_in.get(host, 0)

    def new_edge_rate(self, now: float, window: float = 10.0) -> float:
        """New edges per second over the last ``window`` seconds before ``now``."""
        with self._lock:
            n = sum(c for sec, c in self._new if now - window < sec <= now)
        return n / window if window > 0 else 0.0

    def top_edges(self, n: int = 10, by: str = "bytes") -> list[dict[str, Any]]:
        with self._lock:
            best = heapq.nlargest(n, self._edges.values(), key=lambda e: getattr(e, by))
            return [e.as_dict() for e in best]

    def top_fan_out(self, n: int = 10) -> list[tuple[str, int]]:
        with self._lock:
            return heapq.nlargest(n, self._fan_out.items(), key=lambda kv: kv[1])

    def top_fan_in(self, n: int = 10) -> list[tuple[str, int]]:
        with self._lock:
            return heapq.nlargest(n, self._fan_in.items(), key=lambda kv: kv[1])

    def snapshot(self, n: int = 10) -> dict[str, Any]:
        with self._lock:
            last = self._new[-1][0] if self._new else 0
            nodes = len(self._fan_out.keys() | self._fan_in.keys())
        return {"nodes": nodes, "edges": len(self._edges),
                "top_edges": self.top_edges(n), "top_fan_out": self.top_fan_out(n),
                "top_fan_in": self.top_fan_in(n), "new_edges_per_s": self.new_edge_rate(last)}

    # --- export ---------------------------------------------------------------------------
    def _export_edges(self, limit: int | None) -> list[Edge]:
        with self._lock:
            edges = list(self._edges.values())
        if limit is not None:
            edges = heapq.nlargest(limit, edges, key=lambda e: e.bytes)
        return edges

    def write_graphml(self, out: TextIO, limit: int | None = None) -> None:
        """GraphML with per-edge bytes/packets and per-node fan-out/fan-in."""
        edges = self._export_edges(limit)
        nodes = sorted({e.src for e in edges} | {e.dst for e in edges})
        out.write('<?xml version="1.0" encoding="UTF-8"?>\n'
                  '<graphml xmlns="http://graphml.graphdrawing.org/xmlns">\n'
                  '  <key id="fo" for="node" attr.name="fan_out" attr.type="int"/>\n'
                  '  <key id="fi" for="node" attr.name="fan_in" attr.type="int"/>\n'
                  '  <key id="b" for="edge" attr.name="bytes" attr.type="long"/>\n'
                  '  <key id="p" for="edge" attr.name="packets" attr.type="long"/>\n'
                  '  <graph id="packettracer" edgedefault="directed">\n')
        for n in nodes:
            out.write(f'    <node id={quoteattr(n)}><data key="fo">{self.fan_out(n)}</data>'
                      f'<data key="fi">{self.fan_in(n)}</data></node>\n')
        for e in edges:
            out.write(f'    <edge source={quoteattr(e.src)} target={quoteattr(e.dst)}>'
                      f'<data key="b">{e.bytes}</data><data key="p">{e.packets}</data></edge>\n')
        out.write("  </graph>\n</graphml>\n")

    def write_dot(self, out: TextIO, limit: int | None = None) -> None:
        """Graphviz DOT; edges labelled with bytes and packets."""
        edges = self._export_edges(limit)
        out.write("digraph packettracer {\n")
        for e in edges:
            out.write(f"  {_dot_id(e.src)} -> {_dot_id(e.dst)} "
                      f"[label=\"{e.bytes} B / {e.packets} pkts\", bytes={e.bytes}, "
                      f"packets={e.packets}];\n")
        out.write("}\n")


def _dot_id(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _dec(table: dict[str, int], key: str) -> None:
    n = table.get(key, 0) - 1
    if n > 0:
        table[key] = n
    else:
        table.pop(key, None)
