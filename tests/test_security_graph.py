"""Connection graph: counts from a real capture, fan-out/fan-in, new-edge rate, exports that
standard parsers accept."""
from __future__ import annotations

import io
import xml.etree.ElementTree as ET
from collections import defaultdict

from capture.reader import iter_parsed
from capture.packet import ParsedPacket
from security.graph import ConnectionGraph
from tests.conftest import CAPTURES, expected_for, require

NS = {"g": "http://graphml.graphdrawing.org/xmlns"}


def test_edges_match_tshark_ip_conversations() -> None:
    path = CAPTURES / "http-espn-browse.pcapng"
    require(path.exists(), f"{path} missing")
    g = ConnectionGraph()
    for pkt in iter_parsed(path):
        g.process(pkt)
    # tshark's ip conversations are undirected: fold our directed edges the same way.
    ours: dict[frozenset[str], list[int]] = defaultdict(lambda: [0, 0])
    for e in g.top_edges(10_000):
        k = frozenset((e["src"], e["dst"]))
        ours[k][0] += e["packets"]
        ours[k][1] += e["bytes"]
    exp = {frozenset((c["addr_a"], c["addr_b"])): [c["frames"], c["bytes"]]
           for c in expected_for(path)["conversations"] if c["proto"] in ("ip", "ipv6")}
    assert dict(ours) == exp
    top = g.top_edges(1)[0]
    assert top["bytes"] == max(e["bytes"] for e in g.top_edges(10_000))


def pkt(src: str, dst: str, ts: float, size: int = 100) -> ParsedPacket:
    return ParsedPacket(ts=ts, wire_len=size, ip_version=4, src_ip=src, dst_ip=dst, proto=6)


def test_fan_out_fan_in_and_new_edge_rate() -> None:
    g = ConnectionGraph()
    for i in range(50):  # a sweeper reaching 50 hosts in 5 s
        g.process(pkt("10.0.0.66", f"10.0.1.{i}", 100.0 + i * 0.1))
    for i in range(5):   # five clients of one server, repeatedly
        for _ in range(3):
            g.process(pkt(f"10.0.2.{i}", "10.0.0.80", 106.0))
    assert g.fan_out("10.0.0.66") == 50 and g.fan_in("10.0.0.80") == 5
    assert g.top_fan_out(1) == [("10.0.0.66", 50)]
    assert g.top_fan_in(1) == [("10.0.0.80", 5)]
    assert g.new_edge_rate(now=104.0, window=5.0) == 50 / 5.0  # seconds 100..104
    assert g.new_edge_rate(now=102.0, window=2.0) == 20 / 2.0
    assert g.new_edge_rate(now=200.0, window=5.0) == 0.0
    snap = g.snapshot(3)
    assert snap["edges"] == 55 and snap["nodes"] == 57


def test_bounded_edges_keep_degrees_consistent() -> None:
    g = ConnectionGraph(max_edges=10)
    for i in range(30):
        g.process(pkt("10.0.0.1", f"10.0.1.{i}", float(i)))
    kept = g.snapshot()["edges"]
    assert 5 <= kept <= 10 and g.fan_out("10.0.0.1") == kept
    assert g.fan_in("10.0.1.0") == 0 and g.fan_in("10.0.1.29") == 1
    assert g.evicted == 30 - kept


def test_graphml_and_dot_exports_parse() -> None:
    g = ConnectionGraph()
    g.process(pkt("10.0.0.1", "10.0.0.2", 1.0, 300))
    g.process(pkt("10.0.0.1", "10.0.0.2", 1.5, 200))
    g.process(pkt('fe80::1"<x>', "10.0.0.1", 2.0, 60))  # hostile text must stay well-formed
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
    dot = io.StringIO()
    g.write_dot(dot)
    text = dot.getvalue()
    assert text.startswith("digraph packettracer {") and text.rstrip().endswith("}")
    assert '"10.0.0.1" -> "10.0.0.2" [label="500 B / 2 pkts"' in text
    assert '"fe80::1\\"<x>" -> "10.0.0.1"' in text
    limited = io.StringIO()
    g.write_dot(limited, limit=1)
    assert limited.getvalue().count("->") == 1
