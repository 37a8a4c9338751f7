"""Connection graph: counts from a real capture, fan-out/fan-in, new-edge rate, exports that
standard parsers accept. The graph is derived from a real flow table fed real packets."""
from __future__ import annotations

import io
import xml.etree.ElementTree as ET
from collections import defaultdict

from capture.packet import ParsedPacket
from capture.reader import iter_parsed
from security.graph import ConnectionGraph
from tests.conftest import CAPTURES, expected_for, require
from tracking.flow import FlowTracker
from tracking.tcp_state import TcpConnection

NS = {"g": "http://graphml.graphdrawing.org/xmlns"}


def folded(g: ConnectionGraph) -> dict[frozenset[str], list[int]]:
    """Directed edges folded into undirected (packets, bytes), as tshark's conversations."""
    ours: dict[frozenset[str], list[int]] = defaultdict(lambda: [0, 0])
    for e in g.top_edges(10_000):
        k = frozenset((e["src"], e["dst"]))
        ours[k][0] += e["packets"]
        ours[k][1] += e["bytes"]
    return dict(ours)


def test_edges_match_tshark_ip_conversations_while_active_and_after_retirement() -> None:
    path = CAPTURES / "http-espn-browse.pcapng"
    require(path.exists(), f"{path} missing")
    flows = FlowTracker(tcp_factory=TcpConnection)
    g = ConnectionGraph()
    g.attach(flows)
    pkts = list(iter_parsed(path))
    half = len(pkts) // 2
    for pkt in pkts[:half]:
        flows.process(pkt)
    flows.expire(pkts[half].ts + flows.idle_timeout)  # retire every flow of the first half
    retired = len(flows.retired)
    for pkt in pkts[half:]:
        flows.process(pkt)
    exp = {frozenset((c["addr_a"], c["addr_b"])): [c["frames"], c["bytes"]]
           for c in expected_for(path)["conversations"] if c["proto"] in ("ip", "ipv6")}
    assert retired > 0 and flows.active_count > 0  # both kinds of flow are in the graph
    assert folded(g) == exp
    top = g.top_edges(1)[0]
    assert top["bytes"] == max(e["bytes"] for e in g.top_edges(10_000))
    flows.finish()  # every flow retired: the graph keeps them
    assert flows.active_count == 0 and folded(g) == exp


def pkt(src: str, dst: str, ts: float, size: int = 100, sport: int = 40000) -> ParsedPacket:
    return ParsedPacket(ts=ts, wire_len=size, ip_version=4, src_ip=src, dst_ip=dst, proto=17,
                        sport=sport, dport=53)


def test_fan_out_fan_in_and_new_edge_rate() -> None:
    flows = FlowTracker()
    g = ConnectionGraph()
    g.attach(flows)
    for i in range(50):  # a sweeper reaching 50 hosts in 5 s
        flows.process(pkt("10.0.0.66", f"10.0.1.{i}", 100.0 + i * 0.1))
    for i in range(5):   # five clients of one server, repeatedly, on new flows each time
        for k in range(3):
            flows.process(pkt(f"10.0.2.{i}", "10.0.0.80", 106.0, sport=40000 + k))
    assert g.fan_out("10.0.0.66") == 50 and g.fan_in("10.0.0.80") == 5
    assert g.top_fan_out(1) == [("10.0.0.66", 50)]
    assert g.top_fan_in(1) == [("10.0.0.80", 5)]
    # New flows on a known pair are not new edges: 55 edges in all.
    assert g.total_edges == 55
    assert g.new_edge_rate(now=104.0, window=5.0) == 50 / 5.0  # seconds 100..104
    assert g.new_edge_rate(now=102.0, window=2.0) == 20 / 2.0
    assert g.new_edge_rate(now=200.0, window=5.0) == 0.0
    snap = g.snapshot(3)
    assert snap["edges"] == 55 and snap["nodes"] == 57
    assert snap["top_edges"][0] == {"src": "10.0.2.0", "dst": "10.0.0.80", "bytes": 300,
                                    "packets": 3, "first": 106.0, "last": 106.0}
    # Answers add the reverse edges, counted from the flows' *_recv side.
    flows.process(ParsedPacket(ts=107.0, wire_len=60, ip_version=4, src_ip="10.0.1.7",
                               dst_ip="10.0.0.66", proto=17, sport=53, dport=40000))
    assert g.fan_in("10.0.0.66") == 1 and g.snapshot()["edges"] == 56


def test_bounded_finished_edges_keep_degrees_consistent() -> None:
    flows = FlowTracker(idle_timeout=0.5)
    g = ConnectionGraph(max_edges=10)
    g.attach(flows)
    for i in range(30):
        flows.process(pkt("10.0.0.1", f"10.0.1.{i}", float(i)))
        flows.expire(float(i))  # each flow retires before the next starts
    kept = g.snapshot()["edges"]
    assert flows.active_count == 1  # the last flow is still active and counted
    assert 5 <= kept <= 11 and g.fan_out("10.0.0.1") == kept
    assert g.fan_in("10.0.1.0") == 0 and g.fan_in("10.0.1.29") == 1
    assert g.evicted == 29 - (kept - 1)


def test_graphml_and_dot_exports_parse() -> None:
    flows = FlowTracker()
    g = ConnectionGraph()
    g.attach(flows)
    flows.process(pkt("10.0.0.1", "10.0.0.2", 1.0, 300))
    flows.process(pkt("10.0.0.1", "10.0.0.2", 1.5, 200))
    flows.process(pkt('fe80::1"<x>', "10.0.0.1", 2.0, 60))  # hostile text must stay well-formed
    buf = io.StringIO()
    g.write_graphml(buf)
    root = ET.fromstring(buf.getvalue())
    edges = root.findall(".//g:edge", NS)
    assert len(edges) == 2
    e = next(x for x in edges if x.get("source") == "10.0.0.1")
    data = {d.get("key"): d.text for d in e.findall("g:data", NS)}
    assert data == {"b": "500", "p": "2"}
    assert {n.get("id") for n in root.findall(".//g:node", NS)} == \
        {"10.0.0.1", "10.0.0.2", 'fe80::1"<x>'}
    node = next(n for n in root.findall(".//g:node", NS) if n.get("id") == "10.0.0.1")
    assert {d.get("key"): d.text for d in node.findall("g:data", NS)} == {"fo": "1", "fi": "1"}
    dot = io.StringIO()
    g.write_dot(dot)
    text = dot.getvalue()
    assert text.startswith("digraph packettracer {") and text.rstrip().endswith("}")
    assert '"10.0.0.1" -> "10.0.0.2" [label="500 B / 2 pkts"' in text
    assert '"fe80::1\\"<x>" -> "10.0.0.1"' in text
    limited = io.StringIO()
    g.write_dot(limited, limit=1)
    assert limited.getvalue().count("->") == 1
