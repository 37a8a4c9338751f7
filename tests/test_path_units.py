"""Path tracer pieces without a network: Paris probes, reply matching through our parser,
own-probe marking, hop statistics, route memory, the report text and the Paths panel."""
from __future__ import annotations

import random
import socket
import statistics
import time

import pytest
from rich.console import Console
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6DestUnreach, ICMPv6EchoReply, ICMPv6TimeExceeded, IPv6

from capture.parser import LINKTYPE_RAW, parse
from dashboard.panels import paths as paths_panel
from dashboard.state import DashboardState, Header
from dashboard.view_state import ViewState
from tracking.path import PathTracer
from tracking.path_probe import DEST, HOP, UNREACH, FlowIds, ProbeTemplate, classify_reply
from tracking.path_report import format_report
from tracking.path_routes import RouteMemory
from tracking.path_socket import ProbeSockets, TracerSocketError
from tracking.path_stats import DestinationPath, HopStats, PathsSnapshot

IDS = FlowIds(icmp_id=0x4242, sport=41000, seq_hi=0x7A7A, flow_label=0x12345)
V4 = (socket.AF_INET, "192.0.2.1", "198.51.100.7", IP)
V6 = (socket.AF_INET6, "2001:db8::1", "2001:db8:ff::7", IPv6)


def _template(method: str, fam: tuple) -> ProbeTemplate:
    af, src, dst, _ = fam
    return ProbeTemplate(method, af, src, dst, 33434 if method == "udp" else 443, IDS)


def _l4_checksum_ok(cls: type, data: bytes) -> bool:
    """scapy recomputes the transport checksum from scratch; equal means the probe is valid."""
    p = cls(data)
    l4 = p.payload
    field = "cksum" if cls is IPv6 and l4.name.startswith("ICMP") else "chksum"
    sent = getattr(l4, field)
    delattr(l4, field)
    return getattr(cls(bytes(p)).payload, field) == sent


@pytest.mark.parametrize("fam", [V4, V6], ids=["v4", "v6"])
@pytest.mark.parametrize("method", ["icmp", "udp", "tcp"])
def test_probes_keep_the_flow_constant_and_carry_the_tag(method: str, fam: tuple) -> None:
    t = _template(method, fam)
    tags = [1, 2, 300, 0x8000, 0xFFFE]
    flows = set()
    for ttl, tag in zip((1, 2, 3, 9, 30), tags):
        data = t.build(ttl, tag)
        pkt = parse(data, LINKTYPE_RAW)
        assert not pkt.malformed and pkt.ttl == ttl and pkt.dst_ip == fam[2]
        assert _l4_checksum_ok(fam[3], data)
        if method == "icmp":
            assert (pkt.icmp_id, pkt.icmp_seq) == (IDS.icmp_id, tag)
            l4 = 20 if fam is V4 else 40
            flows.add(data[l4:l4 + 6])          # type, code, checksum, id: what ECMP hashes
        elif method == "udp":
            l4 = 20 if fam is V4 else 40
            assert int.from_bytes(data[l4 + 6:l4 + 8], "big") == tag  # checksum is the tag
            flows.add((pkt.sport, pkt.dport))
        else:
            assert pkt.seq == (IDS.seq_hi << 16) | tag and pkt.tcp_flags == 0x02
            flows.add((pkt.sport, pkt.dport))
        if fam is V4:
            assert pkt.ip_id == tag
        else:
            assert int.from_bytes(data[1:4], "big") & 0xFFFFF == IDS.flow_label
    assert len(flows) == 1  # Paris traceroute: one flow for every probe


def _quote(fam: tuple, probe: bytes, router: str, kind: str) -> bytes:
    """What a router (or the destination) sends back for ``probe``."""
    af, src, dst, cls = fam
    if fam is V4:
        quoted = probe[:28] if kind != "unreach" else probe  # RFC 792: header + 8 bytes
        icmp = ICMP(type=11, code=0) if kind == "te" else ICMP(type=3, code=3)
        return bytes(IP(src=router, dst=src) / icmp / quoted)
    icmp6 = ICMPv6TimeExceeded() if kind == "te" else ICMPv6DestUnreach(code=4)
    return bytes(IPv6(src=router, dst=src) / icmp6 / probe)


@pytest.mark.parametrize("fam", [V4, V6], ids=["v4", "v6"])
@pytest.mark.parametrize("method", ["icmp", "udp", "tcp"])
def test_replies_match_their_probe_by_the_quoted_header(method: str, fam: tuple) -> None:
    t = _template(method, fam)
    af, src, dst, cls = fam
    router = "203.0.113.5" if fam is V4 else "2001:db8:5::1"
    for tag in (7, 0x1234, 0xFFFE):
        probe = t.build(4, tag)
        te = parse(_quote(fam, probe, router, "te"), LINKTYPE_RAW)
        assert classify_reply(te, IDS) == (dst, tag, HOP)
        # the same quote from another tracer (other id / port) is not ours
        other = FlowIds(IDS.icmp_id + 1, IDS.sport + 1, IDS.seq_hi + 1, 0)
        assert classify_reply(te, other) is None
    probe = t.build(9, 99)
    if method == "icmp":
        reply = IP(src=dst, dst=src) / ICMP(type=0, id=IDS.icmp_id, seq=99) if fam is V4 else \
            IPv6(src=dst, dst=src) / ICMPv6EchoReply(id=IDS.icmp_id, seq=99)
        expect = (dst, 99, DEST)
    elif method == "udp":
        reply = _quote(fam, probe, dst, "unreach")
        expect = (dst, 99, DEST)
    else:
        seq = (IDS.seq_hi << 16) | 99
        reply = cls(src=dst, dst=src) / TCP(sport=443, dport=IDS.sport, flags="RA", seq=0, ack=seq + 1)
        expect = (dst, 99, DEST)
    assert classify_reply(parse(bytes(reply), LINKTYPE_RAW), IDS) == expect
    # a router saying "host unreachable" about the probe is not the destination
    if fam is V4:
        unreach = IP(src=router, dst=src) / ICMP(type=3, code=1) / probe[:28]
        assert classify_reply(parse(bytes(unreach), LINKTYPE_RAW), IDS) == (dst, 99, UNREACH)


def _no_raw_sockets(family: int, tcp_port: int | None) -> ProbeSockets:
    # what an unprivileged run gets; also guarantees this test sends nothing anywhere
    raise TracerSocketError(1, "raw sockets need root or CAP_NET_RAW")


def test_own_probe_marks_probes_and_replies_only() -> None:
    tracer = PathTracer(method="icmp", socket_factory=_no_raw_sockets)
    try:
        ids = tracer.ids
        tracer.request("198.51.100.7")
        tracer.request("2001:db8:ff::7", method="udp")
        snap = tracer.snapshot()
        assert [(d.state, d.error) for d in snap.destinations] == \
            [("error", "raw sockets need root or CAP_NET_RAW")] * 2
        assert tracer.probes_sent == 0
        t4 = ProbeTemplate("icmp", socket.AF_INET, "192.0.2.1", "198.51.100.7", 0, ids)
        t6 = ProbeTemplate("udp", socket.AF_INET6, "2001:db8::1", "2001:db8:ff::7", 33434, ids)
        p4, p6 = t4.build(3, 5), t6.build(3, 6)
        ours = [p4, p6, bytes(IP(src="203.0.113.5", dst="192.0.2.1") / ICMP(type=11) / p4[:28]),
                bytes(IP(src="198.51.100.7", dst="192.0.2.1") / ICMP(type=0, id=ids.icmp_id, seq=5)),
                bytes(IPv6(src="2001:db8:5::1", dst="2001:db8::1") / ICMPv6TimeExceeded() / p6)]
        theirs = [bytes(IP(src="192.0.2.1", dst="198.51.100.7") / ICMP(type=8, id=ids.icmp_id ^ 1)),
                  bytes(IP(src="192.0.2.1", dst="198.51.100.8") / UDP(sport=ids.sport, dport=53)),
                  bytes(IP(src="192.0.2.1", dst="198.51.100.7") / TCP(sport=50000, dport=443)),
                  bytes(IP(src="203.0.113.5", dst="192.0.2.1") / ICMP(type=11) /
                        bytes(IP(src="192.0.2.1", dst="198.51.100.9") / UDP(sport=ids.sport))[:28])]
        assert all(tracer.own_probe(parse(b, LINKTYPE_RAW)) for b in ours)
        assert not any(tracer.own_probe(parse(b, LINKTYPE_RAW)) for b in theirs)
    finally:
        tracer.stop()


def test_hop_stats_match_mtr_columns() -> None:
    rnd = random.Random(3)
    h = HopStats(4)
    rtts = []
    for i in range(200):
        if rnd.random() < 0.25:
            h.lost()
            continue
        r = rnd.uniform(5, 80)
        rtts.append(r)
        h.answered("10.0.0.1" if i % 3 else "10.0.0.2", r, HOP)
    row = h.freeze(False)
    assert row.sent == 200 and row.received == len(rtts)
    assert row.loss_pct == pytest.approx(100 * (200 - len(rtts)) / 200, abs=0.05)
    assert row.avg_ms == pytest.approx(statistics.fmean(rtts))
    assert row.stddev_ms == pytest.approx(statistics.pstdev(rtts))
    assert (row.best_ms, row.worst_ms, row.last_ms) == (min(rtts), max(rtts), rtts[-1])
    assert row.addresses == ("10.0.0.1", "10.0.0.2")  # ECMP: most frequent first


def test_route_memory_tells_loss_from_change() -> None:
    m = RouteMemory("b")
    assert m.observe(("r1",), 0.5, complete=False) == (("r1",), None)   # nothing better known yet
    assert m.observe(("r1", "r2", "b"), 1.0)[1] is not None              # first complete route
    assert m.observe(("r1", None, "b"), 2.0) == (("r1", "r2", "b"), None)  # a silent hop is loss
    assert m.observe(("r1", "r2"), 2.5, complete=False) == (None, None)  # so is a lost destination
    assert m.current == ("r1", "r2", "b")
    _, c = m.observe(("r1", "r3", "b"), 3.0)
    assert c is not None and c.old == ("r1", "r2", "b") and c.new == ("r1", "r3", "b")
    assert c.changed_hops == (2,)
    _, c2 = m.observe(("r1", "r3", "x", "b"), 4.0)
    assert c2 is not None and c2.changed_hops == (3, 4)
    recs = {r.hops: r.times_seen for r in m.records()}
    assert recs == {("r1",): 1, ("r1", "r2", "b"): 2, ("r1", "r3", "b"): 1,
                    ("r1", "r3", "x", "b"): 1}


def _snapshot(fqdn: str = "r2.example.net") -> tuple[PathsSnapshot, dict]:
    a, b = HopStats(1), HopStats(2)
    a.answered("10.0.0.1", 1.5, HOP)
    b.lost()
    b.answered("10.0.0.9", 20.0, DEST)
    memory = RouteMemory("10.0.0.9")
    memory.observe(("10.0.0.1", "10.0.0.9"), time.time() - 5)  # (route, change)
    memory.observe(("10.0.0.3", "10.0.0.9"), time.time())
    d = DestinationPath("10.0.0.9", "host.example", 4, "icmp", None, "running", "", 2, True, 2,
                        (a.freeze(False), b.freeze(True)), memory.current or (), memory.records(),
                        tuple(memory.changes), passive_hops=3)
    names = {"10.0.0.1": {"fqdn": fqdn, "asn": 64500, "as_org": "Example Net", "country": "NL"}}
    return PathsSnapshot((d,), 4, 3, 0, 100.0), names


def test_report_text_is_an_mtr_table() -> None:
    snap, _ = _snapshot()
    text = format_report({"started": time.time(), "destinations": [d.as_dict() for d in snap.destinations],
                          "errors": []})
    lines = text.splitlines()
    assert "HOST: host.example (10.0.0.9)" in lines[1] and "2 hops, passive estimate 3" in lines[1]
    assert lines[3].split()[:4] == ["1.", "10.0.0.1", "0.0%", "1"]
    assert lines[4].split()[:4] == ["2.", "10.0.0.9", "50.0%", "2"]
    assert "route changed" in text and "10.0.0.1 > 10.0.0.9  ->  10.0.0.3 > 10.0.0.9" in text


def _render(data: dict) -> str:
    header = Header("eth0", "live", "", "", 1.0, None, None, 0, 0, 0, 0, 0, 0, "memory only",
                    False, False, "", None)
    state = DashboardState(header=header, view="paths", data=data)
    console = Console(record=True, width=160, color_system=None)
    console.print(paths_panel.render(state, ViewState(view="paths")))
    return console.export_text()


def test_paths_panel_shows_hops_with_owner_and_route_change() -> None:
    snap, names = _snapshot(fqdn="[bold]evil[/]\x1b[2J.example")
    out = _render({"paths": snap, "path_endpoints": names})
    assert "host.example (10.0.0.9)" in out and "passive estimate 3" in out
    row = next(line for line in out.splitlines() if "10.0.0.1" in line and "AS64500" in line)
    assert "Example Net" in row and "NL" in row
    assert "\x1b" not in out and "evil" in out            # hostile names are shown as plain text
    assert "50.0" in out and "route changed 1×" in out
    assert "no traceroute engine" in _render({"paths": None})
