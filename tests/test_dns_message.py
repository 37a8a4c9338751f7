"""The DNS wire decoder: RFC rules, tshark's text forms on edge cases, never raising."""
from __future__ import annotations

import importlib.util
import shutil
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from scapy.utils import wrpcap

from analysis.dns_message import (
    NAME_LOOPS, NAME_TOO_LONG, ROOT_NAME, DnsMessage, decode, rcode_name, type_name,
)
from capture.reader import iter_parsed
from tests.conftest import CAPTURE_FILES, CAPTURES, expected_for, require, require_tool

ORACLE = CAPTURES.parent / "tools" / "oracle.py"


def lab(*labels: bytes) -> bytes:
    return b"".join(bytes([len(x)]) + x for x in labels) + b"\x00"


def nm(name: str) -> bytes:
    return lab(*[x.encode() for x in name.split(".") if x])


def rr(name: bytes, rtype: int, data: bytes, ttl: int = 60) -> bytes:
    return name + struct.pack("!HHIH", rtype, 1, ttl, len(data)) + data


def q(name: bytes, qtype: int) -> bytes:
    return name + struct.pack("!HH", qtype, 1)


def msg(mid: int, qs: list[bytes], ans: list[bytes], flags: int = 0x8180) -> bytes:
    return struct.pack("!6H", mid, flags, len(qs), len(ans), 0, 0) + b"".join(qs) + b"".join(ans)


ODD = lab(b"a.b", b"sp ace", b"\x01\xff", b"x\\y", b"\x7f~")
LONG_OK = lab(b"a" * 63, b"b" * 63, b"c" * 63, b"d" * 61)          # 255 octets: legal
LONG_BAD = lab(b"a" * 63, b"b" * 63, b"c" * 63, b"d" * 62)         # 256 octets

#: crafted messages covering the text forms and the failure modes; the tshark test checks
#: our reading of every one of them against tshark's
EDGE_CASES: list[bytes] = [
    msg(1, [q(nm("a.b"), 16)], [rr(nm("a.b"), 16, b"\x0bhello world\x06second")]),
    msg(2, [q(b"\x00", 2)], [rr(b"\x00", 2, nm("a.root-servers.net")), rr(b"\x00", 12, b"\x00")]),
    msg(3, [q(ODD, 1)], [rr(ODD, 5, ODD)]),
    msg(4, [q(nm("ex.com"), 255)], [
        rr(nm("ex.com"), 16, b"\x00"),
        rr(nm("ex.com"), 6, nm("ns1.ex.com") + nm("h.ex.com") + struct.pack("!5I", 1, 2, 3, 4, 5)),
        rr(nm("ex.com"), 39, nm("other.org")),
        rr(nm("ex.com"), 15, b"\x00\x0a" + nm("mx.ex.com")),
        rr(nm("_x._tcp.ex.com"), 33, struct.pack("!3H", 1, 2, 3) + nm("srv.ex.com")),
        rr(nm("ex.com"), 13, b"\x03cpu\x02os"),
        rr(nm("ex.com"), 28, bytes(10) + b"\xff\xff\x01\x02\x03\x04"),
        rr(nm("ex.com"), 28, bytes.fromhex("20010db8000000000000000000000001")),
        rr(nm("ex.com"), 257, b"\x00\x05issueca.org"),
        rr(nm("ex.com"), 16, b'\x07q"uo\x01te'),
        rr(nm("ex.com"), 1, b"\x01\x02\x03\x04\x05"),
        rr(nm("ex.com"), 65, b"\x00\x01\x00"),
        rr(nm("ex.com"), 99, b"\x02ab"),
    ]),
    msg(5, [q(nm("x.com"), 1)], [rr(b"\xc0\x0c", 5, b"\x03www\xc0\x0c")]),
    msg(6, [q(nm("x.com"), 1), q(nm("y.com"), 28)], []),
    msg(7, [], [rr(nm("x.local"), 1, b"\x05\x06\x07\x08")], flags=0x8400),
    msg(8, [q(b"\x02ab\xc0\x0c", 1)], []),                     # pointer loop
    msg(9, [q(b"\x02ab\xc0\x40", 1)], []),                     # pointer past the end
    msg(10, [q(b"\x02ab\x41", 1)], []),                        # reserved label type
    msg(11, [q(b"\x02ab\x05abc", 1)], []),                     # label cut short
    msg(12, [q(nm("d.com"), 1)], [rr(nm("d.com"), 16, b"")]),
    msg(13, [q(LONG_OK, 1)], []),
    msg(14, [q(LONG_BAD, 1)], []),
    msg(15, [q(nm("x.com"), 1)], [rr(nm("x.com"), 1, b"\x01\x02\x03")]),
    # forward compression pointer (legal in tshark, and we accept it too)
    struct.pack("!6H", 16, 0x0100, 1, 0, 0, 0) + b"\x02ab\xc0\x15" + struct.pack("!HH", 1, 1)
    + b"\x01z\x00",
]


def test_plain_response_fields() -> None:
    m = decode(EDGE_CASES[4])
    assert (m.id, m.is_response, m.rcode, m.opcode, m.qname, m.qtype) == (5, True, 0, 0,
                                                                         "x.com", 1)
    assert [(r.name, r.rtype, r.ttl, r.data) for r in m.answers] == [
        ("x.com", 5, 60, "www.x.com")]
    assert m.malformed == ""


def test_text_forms() -> None:
    m = decode(EDGE_CASES[3])
    assert [r.data for r in m.answers] == [
        "", "ns1.ex.com", "other.org", "mx.ex.com", "srv.ex.com", "CPU cpu, OS os",
        "::ffff:1.2.3.4", "2001:db8::1", None, 'q"uo\x01te', "1.2.3.4", None, None]
    assert m.answers[8].raw == b"\x00\x05issueca.org"     # other types keep their bytes
    assert decode(EDGE_CASES[1]).qname == ROOT_NAME
    assert decode(EDGE_CASES[2]).qname == "a.b.sp ace.\\001\ufffd.x\\y.\\177~"
    assert decode(EDGE_CASES[0]).answers[0].data == "hello world"   # first string, as tshark


@pytest.mark.parametrize("index, reason, qname", [
    (7, "loop", NAME_LOOPS),
    (8, "outside", None),
    (9, "label type", None),
    (10, "cut short", None),
    (13, "255", NAME_TOO_LONG),
    (14, "shorter than 4", "x.com"),
])
def test_malformed_marked_with_what_could_be_read(index: int, reason: str,
                                                  qname: str | None) -> None:
    m = decode(EDGE_CASES[index])
    assert reason in m.malformed
    assert m.id == index + 1 and m.is_response
    assert m.qname == qname


def test_legal_long_name_and_forward_pointer() -> None:
    assert decode(EDGE_CASES[12]).qname == ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])
    assert decode(EDGE_CASES[12]).malformed == ""
    assert decode(EDGE_CASES[15]).qname == "ab.z"


def test_short_input_keeps_what_is_there() -> None:
    m = decode(b"\x12\x34\x81")
    assert m.malformed and m.id == 0x1234 and m.questions == [] and not m.answers
    assert decode(b"").malformed


def test_sections_argument_limits_work() -> None:
    data = msg(1, [q(nm("a.b"), 1)], [rr(nm("a.b"), 1, b"\x01\x02\x03\x04")])
    assert decode(data, 0).answers == [] and decode(data, 0).qname == "a.b"
    assert decode(data, 1).answers[0].data == "1.2.3.4"


def test_names() -> None:
    assert type_name(1) == "A" and type_name(65) == "HTTPS" and type_name(4000) == "TYPE4000"
    assert rcode_name(3) == "NXDOMAIN" and rcode_name(0) == "NOERROR"


def test_bad_label_capture_is_malformed_not_fatal() -> None:
    path = CAPTURES / "malformed-dns-bad-label.pcap"
    require(path.exists(), "malformed-dns-bad-label.pcap missing")
    [pkt] = list(iter_parsed(path))
    m = decode(pkt.payload)
    [e] = expected_for(path)["dns"]
    assert m.malformed
    assert (m.id, m.is_response, m.rcode, m.opcode, m.qname, m.qtype) == (
        e["id"], e["is_response"], e["rcode"], e["opcode"], e["qname"], e["qtype"])


def _oracle():
    require(ORACLE.exists(), f"{ORACLE} not found")
    require_tool("tshark")
    spec = importlib.util.spec_from_file_location("packettracer_oracle", ORACLE)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_edge_cases_read_as_tshark_reads_them(tmp_path: Path) -> None:
    oracle = _oracle()
    pcap = tmp_path / "edge.pcap"
    wrpcap(str(pcap), [Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=53, dport=1234)
                       / Raw(m) for m in EDGE_CASES])
    want = [(e["id"], e["is_response"], e["opcode"], e["rcode"], e["qname"], e["qtype"],
             e["questions"], e["answers"]) for e in oracle.dns_records(str(pcap))]
    got = []
    for data in EDGE_CASES:
        m = decode(data)
        rcode = m.rcode if m.is_response else None
        got.append((m.id, m.is_response, m.opcode, rcode, m.qname, m.qtype,
                    len(m.questions), [r.data for r in m.answers]))
    assert got == want


# ------------------------------------------------------------------ never raises
def _real_messages() -> list[bytes]:
    out = []
    for path in CAPTURE_FILES:
        if not expected_for(path).get("dns"):
            continue
        for pkt in iter_parsed(path):
            p = pkt.innermost()
            if p.proto == 17 and (p.sport in (53, 5353, 5355) or p.dport in (53, 5353, 5355)) \
                    and p.payload_len < 2000:
                out.append(bytes(p.payload))
    return out


REAL = _real_messages() if CAPTURES.is_dir() else []


def _check(m: DnsMessage) -> None:
    assert isinstance(m, DnsMessage) and isinstance(m.malformed, str)
    for rec in m.answers + m.authority + m.additional:
        assert rec.data is None or isinstance(rec.data, str)
        assert isinstance(rec.name, str)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_random_bytes_never_raise(data: bytes) -> None:
    _check(decode(data))


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_real_messages_never_raise(data: st.DataObject) -> None:
    require(bool(REAL), "no real DNS messages found in the captures")
    base = bytearray(data.draw(st.sampled_from(REAL + EDGE_CASES)))
    for _ in range(data.draw(st.integers(1, 8))):
        if not base:
            break
        pos = data.draw(st.integers(0, len(base) - 1))
        op = data.draw(st.sampled_from(("flip", "set", "cut", "insert")))
        if op == "flip":
            base[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "set":
            base[pos] = data.draw(st.sampled_from((0x00, 0x3F, 0x40, 0x80, 0xC0, 0xFF)))
        elif op == "cut":
            del base[pos:]
        else:
            base[pos:pos] = data.draw(st.binary(min_size=1, max_size=4))
    _check(decode(bytes(base)))
    _check(decode(memoryview(bytes(base))))
