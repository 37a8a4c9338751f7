"""TrafficClassifier: every category, real payload bytes from the captures, flow patterns."""
from __future__ import annotations

import struct
from pathlib import Path

import pytest

from capture.packet import (
    PROTO_ESP, PROTO_GRE, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, ParsedPacket,
)
from capture.parser import parse
from capture.reader import iter_parsed
from tests.conftest import CAPTURES, require
from tracking import classifier as c
from tracking.classifier import TrafficClassifier
from tracking.flow import FlowTracker

T, U = PROTO_TCP, PROTO_UDP


@pytest.mark.parametrize(("proto", "sport", "dport", "category", "encrypted"), [
    (T, 51000, 80, c.WEB, False),
    (T, 51000, 443, c.SECURE_WEB, True),
    (U, 51000, 53, c.DNS, False),
    (T, 51000, 853, c.DNS, True),
    (T, 51000, 993, c.MAIL, True),
    (T, 51000, 25, c.MAIL, False),
    (T, 51000, 21, c.FILE_TRANSFER, False),
    (T, 51000, 445, c.FILE_TRANSFER, False),
    (T, 51000, 22, c.REMOTE_ACCESS, True),
    (T, 51000, 3389, c.REMOTE_ACCESS, True),
    (T, 51000, 554, c.STREAMING, False),
    (T, 51000, 1935, c.STREAMING, False),
    (U, 51000, 5060, c.VOIP, False),
    (U, 51000, 3478, c.VOIP, False),
    (U, 51000, 27015, c.GAMING, False),
    (T, 51000, 25565, c.GAMING, False),
    (U, 51000, 51820, c.VPN, True),
    (U, 51000, 1194, c.VPN, True),
    (PROTO_ESP, 0, 0, c.VPN, True),
    (PROTO_GRE, 0, 0, c.VPN, False),
    (T, 51000, 5432, c.DATABASE, False),
    (T, 51000, 3306, c.DATABASE, False),
    (T, 51000, 5222, c.MESSAGING, False),
    (T, 51000, 8883, c.MESSAGING, True),
    (T, 51000, 6881, c.P2P, False),
    (U, 68, 67, c.NETWORK_SERVICES, False),
    (U, 51000, 123, c.NETWORK_SERVICES, False),
    (U, 51000, 161, c.NETWORK_SERVICES, False),
    (U, 5353, 5353, c.DISCOVERY, False),
    (U, 51000, 1900, c.DISCOVERY, False),
    (U, 137, 137, c.DISCOVERY, False),
    (U, 51000, 5355, c.DISCOVERY, False),
    (T, 51000, 10050, c.MANAGEMENT, False),
    (T, 51000, 5986, c.MANAGEMENT, True),
    (PROTO_ICMP, 0, 0, c.ICMP, False),
    (PROTO_ICMPV6, 0, 0, c.ICMP, False),
    (T, 51000, 40000, c.UNKNOWN, False),
    (U, 51000, 40000, c.UNKNOWN, False),
])
def test_every_category_by_port(proto: int, sport: int, dport: int, category: str,
                                encrypted: bool) -> None:
    assert TrafficClassifier.classify(proto, sport, dport) == (category, encrypted)
    # the service port is recognised whichever side it is on
    assert TrafficClassifier.classify(proto, dport, sport) == (category, encrypted)


def test_all_eighteen_categories_are_named() -> None:
    assert len(c.CATEGORIES) == 18


def _first_payload(name: str, port: int) -> ParsedPacket:
    path = CAPTURES / name
    require(path.exists(), f"{path} missing")
    return next(p for p in iter_parsed(path) if p.payload_len and port in (p.sport, p.dport))


#: (capture, service port, category, encrypted, recognisable from the bytes alone)
REAL = [
    ("tls12-sni.pcap", 443, c.SECURE_WEB, True, True),
    ("tls13-chrome-browse.pcap", 443, c.SECURE_WEB, True, True),
    ("quic-curl-http3.pcap", 443, c.SECURE_WEB, True, True),
    ("http-espn-browse.pcapng", 80, c.WEB, False, True),
    ("ssh-single-connection.pcap", 22, c.REMOTE_ACCESS, True, True),
    ("smtp-session.pcap", 25, c.MAIL, False, True),
    ("dhcp-dora.pcapng", 67, c.NETWORK_SERVICES, False, True),
    ("lan-mix-ssdp-dns-stp.pcap", 1900, c.DISCOVERY, False, True),
    ("dns-nxdomain.pcapng", 53, c.DNS, False, False),
    ("ntp-client-server.pcap", 123, c.NETWORK_SERVICES, False, False),
    ("mdns-ipv4-ipv6.pcap", 5353, c.DISCOVERY, False, False),
]


@pytest.mark.parametrize(("name", "port", "category", "encrypted", "by_bytes"), REAL,
                         ids=[r[0] for r in REAL])
def test_real_payloads(name: str, port: int, category: str, encrypted: bool,
                       by_bytes: bool) -> None:
    p = _first_payload(name, port)
    assert TrafficClassifier.classify(p.proto, p.sport, p.dport, p.payload) == (category, encrypted)
    if by_bytes:
        # the same bytes on ports that say nothing are still recognised
        assert TrafficClassifier.classify(p.proto, 40001, 40002, p.payload) == (category, encrypted)


def test_signature_beats_or_refines_the_port() -> None:
    tls = _first_payload("tls12-sni.pcap", 443).payload
    http = _first_payload("http-espn-browse.pcapng", 80).payload
    ssh = _first_payload("ssh-single-connection.pcap", 22).payload
    assert TrafficClassifier.classify(T, 51000, 993, tls) == (c.MAIL, True)       # IMAPS stays mail
    assert TrafficClassifier.classify(T, 51000, 8080, tls) == (c.SECURE_WEB, True)
    assert TrafficClassifier.classify(T, 51000, 443, http) == (c.WEB, False)     # plain HTTP
    assert TrafficClassifier.classify(T, 51000, 80, ssh) == (c.REMOTE_ACCESS, True)
    assert TrafficClassifier.classify(T, 51000, 40000, b"\x13BitTorrent protocol" + bytes(48)) \
        == (c.P2P, False)
    stun = b"\x00\x01\x00\x00\x21\x12\xa4\x42" + bytes(12)
    assert TrafficClassifier.classify(U, 51000, 40000, stun) == (c.VOIP, False)
    assert TrafficClassifier.classify(U, 1, 2, b"", app_protocol="DNS") == (c.DNS, False)


def test_flow_stage_classifies_real_flows() -> None:
    for name, category, encrypted in (("tls13-chrome-browse.pcap", c.SECURE_WEB, True),
                                      ("ssh-single-connection.pcap", c.REMOTE_ACCESS, True),
                                      ("smtp-session.pcap", c.MAIL, False)):
        path = CAPTURES / name
        require(path.exists(), f"{path} missing")
        flows, cls = FlowTracker(), TrafficClassifier()
        for p in iter_parsed(path):
            hit = flows.process(p)
            if hit is not None:
                cls.flow_stage(p, hit[0], hit[1])
        assert {(f.classification, f.encrypted) for f in flows.all_flows()} == {(category, encrypted)}


def test_classify_flow_keeps_signature_results() -> None:
    cls = TrafficClassifier(max_flows=2)
    tls = _first_payload("tls12-sni.pcap", 443).payload
    assert cls.classify_flow("a", T, 51000, 40000) == (c.UNKNOWN, False)
    assert cls.classify_flow("a", T, 51000, 40000, tls) == (c.SECURE_WEB, True)
    assert cls.classify_flow("a", T, 51000, 40000, b"nothing here") == (c.SECURE_WEB, True)
    assert cls.get_classification("a") == (c.SECURE_WEB, True)

    class F:
        flow_key = "a"
    assert cls.get_classification(F()) == (c.SECURE_WEB, True)
    cls.classify_flow("b", U, 5353, 5353)
    cls.classify_flow("c", U, 51000, 53)
    assert len(cls) == 2 and cls.get_classification("a") is None  # bounded, oldest dropped


def test_refine_flow_patterns() -> None:
    r = TrafficClassifier.refine
    # a long, big, one-way download on HTTPS looks like streaming
    assert r(c.SECURE_WEB, 20000, 25_000_000, 300.0, 1250.0, bytes_up=400_000) == c.STREAMING
    # ... not when it is an upload
    assert r(c.SECURE_WEB, 20000, 25_000_000, 300.0, 1250.0, bytes_up=20_000_000) == c.SECURE_WEB
    # small regular UDP packets at ~50/s: VoIP
    assert r(c.UNKNOWN, 3000, 3000 * 200, 60.0, 200.0, proto=U) == c.VOIP
    # short or sparse flows stay what they were
    assert r(c.UNKNOWN, 10, 2000, 1.0, 200.0, proto=U) == c.UNKNOWN
    assert r(c.UNKNOWN, 3000, 3000 * 200, 60.0, 200.0, proto=T) == c.UNKNOWN
    # specific categories are never overridden by shape
    assert r(c.DNS, 20000, 25_000_000, 300.0, 1250.0) == c.DNS


def _segment(payload: bytes, flags: int, sport: int, dport: int, reverse: bool = False,
             seq: int = 1000) -> ParsedPacket:
    """A real IPv4/TCP frame decoded by our parser (checksums are not checked there)."""
    src, dst = bytes([10, 0, 0, 2]), bytes([192, 0, 2, 7])
    if reverse:
        src, dst, sport, dport = dst, src, dport, sport
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 0x50, flags, 65535, 0, 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0x4000, 64, T, 0, src, dst)
    return parse(b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00" + ip + tcp, 1)


def _stage_flow(port: int, client_payloads: list[bytes]) -> tuple[str, bool, bool]:
    """(classification, encrypted, class_final) of a flow fed through the flow stage: a
    handshake (named by its port), then the client's payloads."""
    flows, cls = FlowTracker(), TrafficClassifier(inspect_packets=8)
    pkts = [_segment(b"", 0x02, 51000, port), _segment(b"", 0x12, 51000, port, reverse=True)]
    pkts += [_segment(p, 0x18, 51000, port) for p in client_payloads]
    flow = None
    for p in pkts:
        hit = flows.process(p)
        assert hit is not None
        flow = hit[0]
        cls.flow_stage(p, *hit)
    assert flow is not None
    return flow.classification, flow.encrypted, flow.class_final


def test_flow_stage_lets_only_signatures_rename_a_port_named_flow() -> None:
    unknown = b"\x8f\x02\x99\x11random-binary-stuff"
    # the handshake names the flow by its port; payload the port already fits changes nothing
    assert _stage_flow(443, [unknown]) == (c.SECURE_WEB, True, False)
    # a strong signature later in the first packets renames it, for good
    assert _stage_flow(8080, [unknown, b"SSH-2.0-OpenSSH_9.2\r\n"]) == (c.REMOTE_ACCESS, True, True)
    # plain HTTP on an HTTPS port is web, unencrypted
    assert _stage_flow(443, [b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"]) == (c.WEB, False, True)
    # weak signatures (a mail banner) only name flows whose first packet had nothing better
    assert _stage_flow(40000, [b"220 mail.example ESMTP\r\n"]) == (c.UNKNOWN, False, False)
    # past the first packets the decision is final, and later signatures are not looked at
    late = [unknown] * 8 + [b"SSH-2.0-OpenSSH_9.2\r\n"]
    assert _stage_flow(8080, late) == (c.WEB, False, True)
