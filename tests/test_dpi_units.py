"""Deep inspection on handcrafted packets: fingerprints from their specs, reassembly, anomalies.

Packets are built with scapy and decoded by our real parser, so the inspector sees exactly
what it sees in the pipeline.
"""
from __future__ import annotations

import struct

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from analysis import apps
from analysis.anomaly import RULES, BeaconDetector
from analysis.inspector import EXPORT_FIELDS, FlowInspector
from analysis.quic import initial_keys
from analysis.tls import ClientHello, is_grease, parse_handshake, parse_tls_stream
from capture.packet import ParsedPacket
from capture.parser import parse
from tests.conftest import traced_growth
from tracking.flow import FlowTracker

CLIENT, SERVER = "10.0.0.2", "93.184.216.34"


def tcp(payload: bytes = b"", flags: str = "PA", seq: int = 1000, sport: int = 50000,
        dport: int = 443, reverse: bool = False, ttl: int = 64, ts: float = 0.0,
        **opts: object) -> ParsedPacket:
    src, dst = (SERVER, CLIENT) if reverse else (CLIENT, SERVER)
    if reverse:
        sport, dport = dport, sport
    frame = Ether() / IP(src=src, dst=dst, ttl=ttl) / TCP(sport=sport, dport=dport, flags=flags,
                                                          seq=seq, **opts)
    if payload:
        frame = frame / Raw(payload)
    return parse(bytes(frame), 1, ts=ts)


def udp(payload: bytes, sport: int = 50000, dport: int = 53, ts: float = 0.0) -> ParsedPacket:
    return parse(bytes(Ether() / IP(src=CLIENT, dst=SERVER) / UDP(sport=sport, dport=dport)
                       / Raw(payload)), 1, ts=ts)


# ---- a ClientHello builder (what the JA4 spec's example describes) ----------------------------
def ext(etype: int, body: bytes = b"") -> bytes:
    return struct.pack("!HH", etype, len(body)) + body


def u16s(values: list[int], width: int = 2) -> bytes:
    data = b"".join(struct.pack("!H", v) for v in values)
    return len(data).to_bytes(width, "big") + data


def client_hello(ciphers: list[int], extensions: list[bytes], version: int = 0x0303) -> bytes:
    body = struct.pack("!H", version) + bytes(32) + b"\x20" + bytes(32) + u16s(ciphers) + \
        b"\x01\x00"
    exts = b"".join(extensions)
    body += struct.pack("!H", len(exts)) + exts
    return b"\x01" + len(body).to_bytes(3, "big") + body


def records(handshake: bytes, size: int = 16384) -> bytes:
    out = b""
    for i in range(0, len(handshake), size):
        chunk = handshake[i:i + size]
        out += b"\x16\x03\x01" + struct.pack("!H", len(chunk)) + chunk
    return out


SPEC_CIPHERS = [0x1301, 0x1302, 0x1303, 0xC02B, 0xC02F, 0xC02C, 0xC030, 0xCCA9, 0xCCA8, 0xC013,
                0xC014, 0x009C, 0x009D, 0x002F, 0x0035]
SPEC_SIGALGS = [0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601]


def sni_ext(name: str) -> bytes:
    entry = b"\x00" + struct.pack("!H", len(name)) + name.encode()
    return ext(0x0000, struct.pack("!H", len(entry)) + entry)


def alpn_ext(*names: str) -> bytes:
    lst = b"".join(bytes([len(n)]) + n.encode() for n in names)
    return ext(0x0010, struct.pack("!H", len(lst)) + lst)


def spec_hello(grease: bool = False, host: str = "example.com") -> bytes:
    """The example of FoxIO's JA4.md: 15 ciphers, 16 extensions, ALPN h2, TLS 1.3."""
    order = [0x001B, 0x0000, 0x0033, 0x0010, 0x4469, 0x0017, 0x002D, 0x000D, 0x0005, 0x0023,
             0x0012, 0x002B, 0xFF01, 0x000B, 0x000A, 0x0015]
    bodies = {
        0x0000: sni_ext(host), 0x0010: alpn_ext("h2", "http/1.1"),
        0x002B: ext(0x002B, bytes([4 + 2 * grease]) + (b"\x3a\x3a" if grease else b"")
                    + b"\x03\x04\x03\x03"),
        0x000D: ext(0x000D, u16s(SPEC_SIGALGS)),
        0x000A: ext(0x000A, u16s(([0x2A2A] if grease else []) + [0x001D, 0x0017, 0x0018])),
        0x000B: ext(0x000B, b"\x01\x00"),
    }
    exts = [bodies.get(t, ext(t)) for t in order]
    ciphers = list(SPEC_CIPHERS)
    if grease:
        ciphers = [0x0A0A] + ciphers
        exts = [ext(0x1A1A)] + exts + [ext(0xFAFA, b"\x00")]
    return client_hello(ciphers, exts)


def test_ja4_matches_the_spec_example() -> None:
    hello = parse_handshake(spec_hello())
    assert isinstance(hello, ClientHello)
    assert hello.sni == "example.com" and hello.alpn == ("h2", "http/1.1")
    assert hello.ja4() == "t13d1516h2_8daaf6152771_e5627efa2ab1"


def test_grease_is_ignored_by_ja3_and_ja4_but_kept_in_the_offer() -> None:
    plain = parse_handshake(spec_hello())
    greased = parse_handshake(spec_hello(grease=True))
    assert isinstance(plain, ClientHello) and isinstance(greased, ClientHello)
    assert greased.ja3() == plain.ja3() and greased.ja4() == plain.ja4()
    assert greased.ja3_full() == plain.ja3_full()
    assert any(is_grease(c) for c in greased.ciphers)
    assert greased.supported_versions[0] == 0x3A3A and greased.max_version == 0x0304
    # JA3 string layout: version, ciphers, extensions, groups, point formats
    assert plain.ja3_full().split(",")[0] == "771"
    assert plain.ja3_full().split(",")[3] == "29-23-24"
    assert plain.ja3_full().split(",")[4] == "0"


def test_truncated_or_foreign_bytes_are_not_a_hello() -> None:
    whole = records(spec_hello())
    assert parse_tls_stream(whole[:40]) == "more"
    assert parse_tls_stream(b"GET / HTTP/1.1\r\n\r\n") == "no"
    assert parse_handshake(spec_hello()[:-5]) is None


def _flow(ins: FlowInspector, packets: list[tuple[ParsedPacket, bool]], key: str = "f") -> None:
    for pkt, fwd in packets:
        ins.inspect(pkt, key, fwd)


def test_client_hello_split_over_records_and_segments_out_of_order_with_retransmission() -> None:
    stream = records(spec_hello(host="split.example.org"), size=300)   # several records
    isn = 7000
    segs = [(isn + 1 + off, stream[off:off + 200]) for off in range(0, len(stream), 200)]
    # deliver: SYN, then segment 2 before 1, segment 1 twice, the rest in order
    order = [segs[1], segs[0], segs[0]] + segs[2:]
    ins = FlowInspector()
    pkts = [(tcp(flags="S", seq=isn), True)] + [(tcp(p, seq=s), True) for s, p in order]
    _flow(ins, pkts)
    f = ins.facts("f")
    assert f is not None and f.sni == "split.example.org"
    assert f.ja4 == "t13d1516h2_8daaf6152771_e5627efa2ab1"
    assert f.app_protocol == apps.TLS and not f.mismatch
    assert ins.buffered_bytes() == 0                    # payload freed once classified


def test_mid_stream_start_without_syn_still_reassembles() -> None:
    stream = records(spec_hello())
    ins = FlowInspector()
    _flow(ins, [(tcp(stream[:100], seq=5), True), (tcp(stream[100:], seq=105), True)])
    assert ins.facts("f").sni == "example.com"


def test_ssh_on_443_is_a_mismatch_with_a_reason() -> None:
    ins = FlowInspector()
    _flow(ins, [(tcp(flags="S", seq=1), True),
                (tcp(b"SSH-2.0-OpenSSH_9.2p1 Debian\r\n", seq=1, reverse=True), False)])
    f = ins.facts("f")
    assert f.app_protocol == apps.SSH and f.port_guess == apps.TLS and f.mismatch
    assert f.anomaly_score == RULES["port_mismatch"][0]
    assert any("SSH on 443" in r for r in f.anomaly_reasons)
    assert ins.hosts.get(CLIENT).score == RULES["port_mismatch"][0]


@pytest.mark.parametrize("payload,proto,from_client,label", [
    (b"SSH-2.0-OpenSSH_8.9\r\n", 6, False, apps.SSH),
    (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 6, True, apps.HTTP2),
    (b"220 mail.example.com ESMTP Postfix\r\n", 6, False, apps.SMTP),
    (b"220 ProFTPD Server ready.\r\n", 6, False, apps.FTP),
    (b"+OK Dovecot ready.\r\n", 6, False, apps.POP3),
    (b"* OK [CAPABILITY IMAP4rev1] ready\r\n", 6, False, apps.IMAP),
    (b"\x00\x00\x00\x54\xfeSMB" + bytes(80), 6, True, apps.SMB),
    (b"\x03\x00\x00\x13\x0e\xe0\x00\x00\x00\x00\x00\x01\x00\x08\x00\x03\x00\x00\x00", 6, True,
     apps.RDP),
    (b"\x13BitTorrent protocol" + bytes(8), 6, True, apps.BITTORRENT),
    (b"\x00\x01\x00\x00\x21\x12\xa4\x42" + bytes(12), 17, True, apps.STUN),
    (b"\xc3\x00\x00\x00\x01\x08" + bytes(40), 17, True, apps.QUIC),
    (b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x03com\x00\x00\x01\x00\x01",
     17, True, apps.DNS),
    (b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00", 6, True, apps.TLS),
    (b"\x8f\x02\x99\x11random-binary-stuff", 6, True, apps.UNKNOWN),
])
def test_identify_from_payload(payload: bytes, proto: int, from_client: bool,
                               label: str) -> None:
    assert apps.identify(payload, proto, from_client, 40000, 12345) == label


def test_http_pipelined_requests_bodies_and_response() -> None:
    post = b"POST /upload HTTP/1.1\r\nHost: a.example\r\nContent-Length: 11\r\n\r\nhello world"
    get1 = b"GET /one HTTP/1.1\r\nHost: a.example\r\nUser-Agent: ua/1\r\nCookie: secret=1\r\n\r\n"
    get2 = b"GET /two?x=1 HTTP/1.1\r\nhost: b.example\r\n\r\n"
    stream = post + get1 + get2
    resp = b"HTTP/1.1 404 Not Found\r\nServer: nginx\r\nContent-Type: text/html\r\n\r\n<html>"
    ins = FlowInspector()
    _flow(ins, [(tcp(flags="S", seq=99, dport=80), True),
                (tcp(stream[:30], seq=100, dport=80), True),
                (tcp(stream[30:], seq=130, dport=80), True),
                (tcp(resp, seq=5000, dport=80, reverse=True), False)])
    f = ins.facts("f")
    assert [(r.method, r.host, r.path) for r in f.http_requests] == [
        ("POST", "a.example", "/upload"), ("GET", "a.example", "/one"),
        ("GET", "b.example", "/two?x=1")]
    assert f.http_requests[1].user_agent == "ua/1"
    assert (f.http_status, f.http_server, f.http_content_type) == (404, "nginx", "text/html")
    assert "secret" not in repr(f)                        # cookies are never kept


def test_unknown_payload_is_freed_at_the_budget() -> None:
    ins = FlowInspector(stream_bytes=64)
    _flow(ins, [(tcp(b"\x01" * 10, seq=1, dport=9999), True)])
    assert 0 < ins.buffered_bytes() <= 64
    _flow(ins, [(tcp(b"\x02" * 100, seq=11 + i * 100, dport=9999), True) for i in range(5)])
    assert ins.buffered_bytes() == 0
    assert ins.facts("f").app_protocol == apps.UNKNOWN


def test_classified_flow_ignores_further_payload() -> None:
    ins = FlowInspector()
    _flow(ins, [(tcp(b"SSH-2.0-x\r\n", seq=1, dport=22), True),
                (tcp(b"SSH-2.0-y\r\n", seq=1, dport=22, reverse=True), False)])
    for i in range(50):
        _flow(ins, [(tcp(b"\x00" * 500, seq=12 + i * 500, dport=22), True)])
    assert ins.buffered_bytes() == 0 and ins.facts("f").app_protocol == apps.SSH


def test_impossible_flags_and_ttl_change_are_scored_with_reasons() -> None:
    ins = FlowInspector()
    _flow(ins, [(tcp(flags="SF", seq=1, dport=80), True)], key="synfin")
    f = ins.facts("synfin")
    assert f.anomaly_score == RULES["syn_fin"][0] and "SYN and FIN" in f.anomaly_reasons[0]
    _flow(ins, [(tcp(flags="S", seq=1, dport=80, sport=1), True),
                (tcp(b"x", seq=2, dport=80, sport=1, ttl=64), True),
                (tcp(flags="R", seq=3, dport=80, sport=1, ttl=40), True)], key="ttl")
    f = ins.facts("ttl")
    assert f.anomaly_reasons and "64 -> 40" in f.anomaly_reasons[0]
    clean = FlowInspector()
    _flow(clean, [(tcp(flags="S", seq=1), True), (tcp(flags="SA", seq=9, reverse=True), False),
                  (tcp(flags="A", seq=2, ttl=63), True), (tcp(flags="FA", seq=2), True)])
    assert clean.facts("f").anomaly_score == 0 and clean.as_export("f")["anomaly_reasons"] is None


def test_tiny_fragment_is_flagged() -> None:
    frags = (Ether() / IP(src=CLIENT, dst=SERVER, flags="MF", frag=0, proto=6) /
             Raw(b"\x00" * 16))
    ins = FlowInspector()
    ins.inspect(parse(bytes(frags), 1), "frag", True)
    assert any(r.startswith("tiny IP fragment") for r in ins.facts("frag").anomaly_reasons)


def test_beacon_regular_connections_are_flagged() -> None:
    ins = FlowInspector()
    for i in range(8):
        ts = 1000.0 + 60.0 * i + (0.3 if i % 2 else 0.0)
        ins.inspect(tcp(flags="S", seq=1, sport=40000 + i, dport=8443, ts=ts), f"b{i}", True)
    assert not ins.facts("b5").anomaly_reasons          # too few connections to call it
    assert any("every 60" in r for r in ins.facts("b7").anomaly_reasons)
    irregular = BeaconDetector()
    hits = [irregular.observe("a", "b", 1, 6, t) for t in (0, 3, 50, 51, 200, 260, 900, 901)]
    assert all(h is None for h in hits)


def test_export_has_every_field_and_nulls_when_unknown() -> None:
    ins = FlowInspector()
    assert ins.as_export("nope") == dict.fromkeys(EXPORT_FIELDS)
    ins.inspect(udp(b"\x00" * 3, dport=9), "u", True)
    export = ins.as_export("u")
    assert set(export) == set(EXPORT_FIELDS) and export["sni"] is None


def test_max_flows_bounds_memory_and_forget_drops_state() -> None:
    ins = FlowInspector(max_flows=10)
    for i in range(25):
        ins.inspect(tcp(b"GET /", seq=1, sport=1000 + i, dport=80), f"k{i}", True)
    assert len(ins) <= 10 and ins.facts("k0") is None and ins.facts("k24") is not None
    n = len(ins)
    ins.forget("k24")
    assert ins.facts("k24") is None and len(ins) == n - 1


def test_quic_initial_keys_match_rfc9001_appendix_a() -> None:
    dcid = bytes.fromhex("8394c8f03e515708")
    client = initial_keys(dcid)
    assert client.key.hex() == "1f369613dd76d5467730efcbe3b1a22d"
    assert client.iv.hex() == "fa044b2f42a3fd3b46fb255c"
    assert client.hp.hex() == "9f50449e04a0e810283a1e9933adedd2"
    server = initial_keys(dcid, server=True)
    assert server.key.hex() == "cf3a5331653c364c88f0f379b6067e37"
    assert server.iv.hex() == "0ac1493ca1905853b0bba03e"
    assert server.hp.hex() == "c206b8d9b9f0f37644430b490eeaa314"


def _frame(payload: bytes, flags: int, sport: int, dport: int, reverse: bool = False,
           seq: int = 1000) -> ParsedPacket:
    """One IPv4/TCP frame decoded by our parser, built without scapy (thousands are needed)."""
    src, dst = bytes([10, 0, sport >> 8, sport & 0xFF]), bytes([192, 0, 2, 7])
    if reverse:
        src, dst, sport, dport = dst, src, dport, sport
    seg = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 0x50, flags, 65535, 0, 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(seg), 1, 0x4000, 64, 6, 0, src, dst)
    return parse(b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00" + ip + seg, 1)


def test_live_flows_cost_little_memory_and_keep_their_facts() -> None:
    """Each live flow's inspection state stays small once its directions are classified (no
    buffers, no full facts record for flows without TLS/HTTP/anomaly facts)."""
    n = 2000
    tracker = FlowTracker()
    fed = []
    for i in range(n):
        port = 1024 + i
        for pkt in (_frame(b"", 0x02, port, 22, seq=1000),
                    _frame(b"", 0x12, port, 22, reverse=True, seq=5000),
                    _frame(b"SSH-2.0-OpenSSH_9.2\r\n", 0x18, port, 22, seq=1001),
                    _frame(b"\x8f\x02\x99\x11random-binary-stuff", 0x18, port, 22,
                           reverse=True, seq=5001)):
            hit = tracker.process(pkt)
            assert hit is not None
            fed.append((pkt, *hit))
    ins = FlowInspector()
    per_flow = traced_growth(lambda: [ins.flow_stage(pkt, flow, fwd) for pkt, flow, fwd in fed]) / n
    # ~80 bytes of state plus the beacon detector's key (was ~500 with a record per flow)
    assert per_flow < 256, per_flow
    flow = fed[-1][1]
    assert (ins.facts(flow).app_protocol, ins.facts(flow).client_os) == (apps.SSH, "unknown")
    assert ins.as_export(flow)["app_protocol"] == apps.SSH
