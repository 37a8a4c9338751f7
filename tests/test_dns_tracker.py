"""DNSTracker against tshark's ground truth and on crafted traffic (TCP framing, pairing,
timeouts, bounds, passive DNS)."""
from __future__ import annotations

import dataclasses
import struct
from decimal import Decimal
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from capture.parser import parse
from capture.reader import iter_parsed
from tests.conftest import CAPTURE_FILES, CAPTURES, expected_for, require
from tracking.dns_tracker import DNSTracker, DnsEvent

READABLE = [p for p in CAPTURE_FILES if expected_for(p).get("readable")]


def _run(path: Path, **kw) -> tuple[DNSTracker, list[tuple[int, DnsEvent]]]:
    seen: list[tuple[int, DnsEvent]] = []
    frame = [0]
    tracker = DNSTracker(on_message=lambda ev: seen.append((frame[0], ev)), **kw)
    for frame[0], pkt in enumerate(iter_parsed(path), 1):
        tracker.process(pkt)
    tracker.finish()
    return tracker, seen


def _top_level(entries: list[dict]) -> list[dict]:
    # The oracle lists DNS quoted inside an ICMP error that itself travels in a tunnel (GRE
    # in gre-tunnel-sample) because its -J filter hides the icmp layer; such entries have no
    # UDP/TCP layer (transport null). They are not DNS messages: we ignore quoted DNS.
    return [e for e in entries if e["transport"] is not None]


@pytest.mark.parametrize("path", READABLE, ids=lambda p: p.name)
def test_every_dns_message_tshark_sees_we_see(path: Path) -> None:
    exp = expected_for(path)
    want = [(e["frame"], e["proto"], e["transport"], e["src"], e["dst"], e["sport"], e["dport"],
             e["id"], e["is_response"], e["qname"], e["qtype"], e["rcode"], e["answers"])
            for e in _top_level(exp["dns"])]
    _, seen = _run(path)
    got = [(f, ev.proto, ev.transport, ev.src, ev.dst, ev.sport, ev.dport, ev.msg.id,
            ev.msg.is_response, ev.msg.qname, ev.msg.qtype,
            ev.msg.rcode if ev.msg.is_response else None, [rr.data for rr in ev.msg.answers])
           for f, ev in seen]
    assert got == want


def test_quoted_dns_in_icmp_is_not_a_message() -> None:
    path = CAPTURES / "gre-tunnel-sample.pcap"
    require(path.exists(), "gre-tunnel-sample.pcap missing")
    exp = expected_for(path)
    quoted = {e["frame"] for e in exp["dns"] if e["transport"] is None}
    tracker, seen = _run(path)
    assert quoted, "the capture should hold ICMP errors quoting DNS"
    assert not quoted & {f for f, _ in seen}
    # the two tunnelled queries got no answer (only ICMP port unreachable came back)
    snap = tracker.snapshot()
    assert snap.unanswered_total == 2
    assert {r.client for r in snap.unanswered} == {"66.59.111.190"}


def test_malformed_message_is_counted_not_fatal() -> None:
    path = CAPTURES / "malformed-dns-bad-label.pcap"
    require(path.exists(), "malformed-dns-bad-label.pcap missing")
    tracker, seen = _run(path)
    assert len(seen) == 1 and seen[0][1].msg.malformed
    assert tracker.malformed == 1 and tracker.messages == 1
    assert tracker.records()[0]["response_only"] is True


def _latency_ms(a: dict, b: dict) -> float:
    return float((Decimal(b["time_epoch"]) - Decimal(a["time_epoch"])) * 1000)


def test_nxdomain_pairing_latency_and_rate() -> None:
    path = CAPTURES / "dns-nxdomain.pcapng"
    require(path.exists(), "dns-nxdomain.pcapng missing")
    q, r = expected_for(path)["dns"]
    tracker, _ = _run(path)
    [rec] = tracker.records()
    assert (rec["client"], rec["server"], rec["id"], rec["qname"]) == (
        q["src"], q["dst"], q["id"], q["qname"])
    assert rec["rcode"] == 3 and rec["rcode_name"] == "NXDOMAIN"
    assert not rec["query_only"] and not rec["response_only"]
    assert rec["latency_ms"] == pytest.approx(_latency_ms(q, r), abs=0.002)
    [client] = tracker.snapshot().clients
    assert client.client == q["src"] and client.nxdomain_rate == 1.0


def test_dns_over_tcp_pairs_with_split_response() -> None:
    path = CAPTURES / "dns-over-tcp-any.pcapng"
    require(path.exists(), "dns-over-tcp-any.pcapng missing")
    entries = expected_for(path)["dns"]
    tracker, _ = _run(path)
    recs = tracker.records()
    assert [r["transport"] for r in recs] == ["udp", "tcp"]
    for rec, (q, r) in zip(recs, (entries[0:2], entries[2:4])):
        assert rec["id"] == q["id"] and rec["qtype"] == "ANY" and rec["rcode"] == 0
        assert len(rec["answers"]) == r["answer_count"]
        assert rec["latency_ms"] == pytest.approx(_latency_ms(q, r), abs=0.002)
    assert tracker.snapshot().unanswered_total == 0


# ---------------------------------------------------------------- crafted traffic
def _name(n: str) -> bytes:
    return b"".join(bytes([len(x)]) + x.encode() for x in n.split(".") if x) + b"\x00"


def _dns(mid: int, qname: str, qtype: int = 1, response: bool = False, rcode: int = 0,
         answers: list[tuple[str, int, bytes]] | None = None) -> bytes:
    answers = answers or []
    flags = (0x8180 | rcode) if response else 0x0100
    out = struct.pack("!6H", mid, flags, 1, len(answers), 0, 0) + _name(qname)
    out += struct.pack("!HH", qtype, 1)
    for name, rtype, rdata in answers:
        out += _name(name) + struct.pack("!HHIH", rtype, 1, 60, len(rdata)) + rdata
    return out


def _udp(src: str, dst: str, sport: int, dport: int, payload: bytes, ts: float):
    ip = IPv6(src=src, dst=dst) if ":" in src else IP(src=src, dst=dst)
    return parse(bytes(Ether() / ip / UDP(sport=sport, dport=dport) / payload), 1, ts)


def _tcp(src: str, dst: str, sport: int, dport: int, seq: int, payload: bytes, ts: float,
         flags: str = "PA"):
    frame = Ether() / IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, seq=seq,
                                                 flags=flags) / payload
    return parse(bytes(frame), 1, ts)


def _a(ip: str) -> bytes:
    return bytes(int(x) for x in ip.split("."))


C, S = "10.0.0.5", "10.0.0.53"


def test_tcp_framing_several_messages_split_prefix_retransmission_and_gap() -> None:
    seen: list[DnsEvent] = []
    t = DNSTracker(on_message=seen.append)
    q1, q2, q3 = (_dns(i, f"q{i}.example.com") for i in (1, 2, 3))
    r1 = _dns(1, "q1.example.com", response=True, answers=[("q1.example.com", 1, _a("1.1.1.1"))])
    stream = b"".join(struct.pack("!H", len(m)) + m for m in (q1, q2))
    t.process(_tcp(C, S, 40000, 53, 999, b"", 0.0, flags="S"))
    t.process(_tcp(C, S, 40000, 53, 1000, stream, 0.1))              # two messages, one segment
    assert [ev.msg.id for ev in seen] == [1, 2]
    # the response arrives with its length prefix split: 1 byte, then the rest in two pieces
    framed = struct.pack("!H", len(r1)) + r1
    t.process(_tcp(S, C, 53, 40000, 5000, framed[:1], 0.2))
    t.process(_tcp(S, C, 53, 40000, 5001, framed[1:10], 0.3))
    assert len(seen) == 2
    t.process(_tcp(S, C, 53, 40000, 5001, framed[1:10], 0.35))       # retransmission: ignored
    t.process(_tcp(S, C, 53, 40000, 5010, framed[10:], 0.4))
    assert [ev.msg.id for ev in seen] == [1, 2, 1]
    assert seen[-1].msg.is_response and not seen[-1].msg.malformed
    assert seen[-1].ts == 0.4 and seen[-1].transport == "tcp"
    # a lost segment: the stream resynchronises on the next one instead of misframing forever
    t.process(_tcp(C, S, 40000, 53, 1000 + len(stream) + 500,
                   struct.pack("!H", len(q3)) + q3, 0.5))
    assert seen[-1].msg.id == 3 and not seen[-1].msg.malformed
    [rec] = [r for r in t.records() if r["id"] == 1]
    assert rec["answers"] == ["1.1.1.1"] and rec["latency_ms"] == pytest.approx(300.0)


def test_unanswered_after_timeout_and_retries() -> None:
    t = DNSTracker(query_timeout=2.0)
    q = _dns(7, "slow.example")
    t.process(_udp(C, S, 5555, 53, q, 10.0))
    t.process(_udp(C, S, 5555, 53, q, 11.0))                 # retransmitted: same transaction
    t.process(_udp(C, S, 5556, 53, _dns(8, "other.example"), 11.5))
    assert t.snapshot().unanswered_total == 0
    t.process(_udp(C, S, 5557, 53, _dns(9, "later.example"), 12.5))   # time moves on
    snap = t.snapshot()
    assert snap.unanswered_total == 1 and snap.pending == 2
    [rec] = snap.unanswered
    assert rec.qname == "slow.example" and rec.retries == 1 and rec.query_only
    t.finish()
    assert t.snapshot().unanswered_total == 3


def test_response_from_another_server_or_port_does_not_pair() -> None:
    t = DNSTracker()
    t.process(_udp(C, S, 5555, 53, _dns(7, "x.example"), 1.0))
    t.process(_udp("10.9.9.9", C, 53, 5555, _dns(7, "x.example", response=True), 1.1))
    t.process(_udp(S, C, 53, 5556, _dns(7, "x.example", response=True), 1.2))
    t.process(_udp(S, C, 53, 5555, _dns(7, "X.Example", response=True), 1.3))  # 0x20 case
    recs = t.records()
    assert [r["response_only"] for r in recs] == [True, True, False]
    assert recs[2]["latency_ms"] == pytest.approx(300.0)


def test_llmnr_multicast_query_pairs_with_unicast_answer() -> None:
    t = DNSTracker()
    t.process(_udp(C, "224.0.0.252", 6000, 5355, _dns(3, "printer"), 1.0))
    t.process(_udp("10.0.0.9", C, 5355, 6000,
                   _dns(3, "printer", response=True, answers=[("printer", 1, _a("10.0.0.9"))]),
                   1.01))
    [rec] = t.records()
    assert rec["proto"] == "llmnr" and rec["server"] == "10.0.0.9"
    assert rec["answers"] == ["10.0.0.9"] and rec["latency_ms"] == pytest.approx(10.0)


def test_records_are_bounded_and_drops_counted() -> None:
    t = DNSTracker(max_records=3)
    for i in range(5):
        t.process(_udp(C, S, 7000 + i, 53, _dns(i, f"n{i}.example"), float(i)))
        t.process(_udp(S, C, 53, 7000 + i, _dns(i, f"n{i}.example", response=True), i + 0.1))
    recs = t.records()
    assert [r["qname"] for r in recs] == ["n2.example", "n3.example", "n4.example"]
    snap = t.snapshot()
    assert snap.records_dropped == 2 and snap.records_total == 5
    assert snap.queries == 5 and snap.responses == 5 and snap.messages == 10


def test_passive_dns_follows_cnames_most_recent_first_bounded() -> None:
    t = DNSTracker(passive_max_ips=2, passive_names_per_ip=2)

    def answer(mid: int, qname: str, rrs: list[tuple[str, int, bytes]], ts: float) -> None:
        t.process(_udp(C, S, 8000 + mid, 53, _dns(mid, qname), ts))
        t.process(_udp(S, C, 53, 8000 + mid, _dns(mid, qname, response=True, answers=rrs),
                       ts + 0.01))

    answer(1, "www.shop.example", [("www.shop.example", 5, _name("shop.cdn.example")),
                                   ("shop.cdn.example", 5, _name("edge7.cdn.example")),
                                   ("edge7.cdn.example", 1, _a("192.0.2.7"))], 1.0)
    assert t.passive_names("192.0.2.7") == ["www.shop.example"]
    answer(2, "img.shop.example", [("img.shop.example", 1, _a("192.0.2.7"))], 2.0)
    answer(3, "www.shop.example", [("www.shop.example", 1, _a("192.0.2.7"))], 3.0)
    assert t.passive_names("192.0.2.7") == ["www.shop.example", "img.shop.example"]
    answer(4, "a.example", [("a.example", 1, _a("192.0.2.8"))], 4.0)
    answer(5, "b.example", [("b.example", 1, _a("192.0.2.9"))], 5.0)
    assert t.passive_names("192.0.2.7") == []          # least recently answered address dropped
    assert t.passive_names("192.0.2.9") == ["b.example"]
    # an NXDOMAIN or a response nobody asked for teaches nothing wrong
    answer(6, "c.example", [], 6.0)
    assert t.passive_names("192.0.2.8") == ["a.example"]


def test_snapshot_is_frozen_and_reports_top_domains_and_rate() -> None:
    t = DNSTracker()
    for i in range(30):
        t.process(_udp(C, S, 9000 + i, 53, _dns(i, "hot.example" if i % 3 else "cold.example"),
                       100.0 + i / 10))
    t.process(_udp("fe80::1", "ff02::fb", 5353, 5353, _dns(0, "_ipp._tcp.local", qtype=12),
                   103.0))
    snap = t.snapshot()
    assert snap.top_domains[:2] == (("hot.example", 20), ("cold.example", 10))
    assert snap.qps == pytest.approx(31 / 4)           # 31 queries over 4 whole seconds
    assert dict(snap.by_proto) == {"dns": 30, "mdns": 1}
    with pytest.raises(dataclasses.FrozenInstanceError):
        snap.queries = 0  # type: ignore[misc]
    t.finish()
    # an unanswered multicast mDNS query is normal, not an "unanswered query"
    assert t.snapshot().unanswered_total == 30


def test_non_dns_packets_are_ignored() -> None:
    t = DNSTracker()
    t.process(_udp(C, S, 1234, 4321, _dns(1, "x.example"), 1.0))
    t.process(_tcp(C, S, 1234, 80, 1, b"GET / HTTP/1.1\r\n\r\n", 1.0))
    assert t.messages == 0 and t.records() == []
