"""The parser's fast path (plain Ethernet/IPv4/IPv6 + TCP/UDP) must decode exactly like the
general path: same record, field for field, on every real capture and on damaged variants.
Both fast paths are held to it: the Python one and the compiled one (capture/_cparse.pyx, which
run.sh builds; CI must have it)."""
from __future__ import annotations

import random
import struct
from pathlib import Path

import pytest

from capture.errors import CaptureFileError
from capture import parser
from capture.parser import parse_general, parse_python
from capture.reader import CaptureFile
from tests.conftest import CAPTURE_FILES, require


def _compiled():
    try:
        from capture import _cparse
    except ImportError:
        require(False, "the compiled parser (capture/_cparse.pyx) is not built: ./run.sh builds it")
    return _cparse.parse


@pytest.fixture(params=["python", "compiled"])
def parse(request: pytest.FixtureRequest):
    return parse_python if request.param == "python" else _compiled()


def test_the_parser_in_use_is_the_compiled_one_when_built() -> None:
    compiled = _compiled()
    assert parser.parse is compiled and parser.PARSER_BUILD == "compiled"


def _frames(path: Path) -> list:
    try:
        return list(CaptureFile(path))
    except CaptureFileError:  # damaged on purpose: the reader tests cover those
        return []


@pytest.mark.parametrize("path", CAPTURE_FILES, ids=lambda p: p.name)
def test_fast_path_equals_general_path_on_real_captures(path: Path, parse) -> None:
    frames = _frames(path)
    for i, f in enumerate(frames, 1):
        fast = parse(f.data, f.linktype, f.ts, f.wire_len, f.iface)
        slow = parse_general(f.data, f.linktype, f.ts, f.wire_len, f.iface)
        assert fast == slow, f"{path.name} frame {i}"


def _tcp4(flags: int = 0x18, payload: bytes = b"hello", tos: int = 0, frag: int = 0x4000,
          doff: int = 5, opts: bytes = b"", vlan: bool = False) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", 40000, 443, 1, 2, doff << 4 | 1, flags, 1000, 0, 0) + opts
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, tos, 20 + len(tcp) + len(payload), 7, frag, 64, 6,
                     0, bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))
    eth = b"\x02" * 6 + b"\x04" * 6
    eth += struct.pack("!HHH", 0x8100, 0x2005, 0x0800) if vlan else b"\x08\x00"
    return eth + ip + tcp + payload


def _udp6(payload: bytes = b"x" * 20, ulen: int | None = None, tclass: int = 0) -> bytes:
    udp = struct.pack("!HHHH", 5353, 5353, 8 + len(payload) if ulen is None else ulen, 0)
    ip = struct.pack("!IHBB16s16s", 6 << 28 | tclass << 20, len(udp) + len(payload), 17, 255,
                     b"\xfe\x80" + b"\x00" * 13 + b"\x01", b"\xff\x02" + b"\x00" * 13 + b"\xfb")
    return b"\x02" * 6 + b"\x04" * 6 + b"\x86\xdd" + ip + udp + payload


def _icmp(version: int, icmp_type: int, body: bytes = b"\x12\x34\x00\x07" + b"p" * 24) -> bytes:
    msg = bytes([icmp_type, 0, 0, 0]) + body
    if version == 4:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(msg), 9, 0, 64, 1, 0,
                         bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))
        return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + msg
    ip = struct.pack("!IHBB16s16s", 6 << 28, len(msg), 58, 64,
                     b"\xfe\x80" + b"\x00" * 13 + b"\x01", b"\xfe\x80" + b"\x00" * 13 + b"\x02")
    return b"\x02" * 6 + b"\x04" * 6 + b"\x86\xdd" + ip + msg


def test_fast_path_equals_general_path_on_mutated_frames(parse) -> None:
    seeds = [_tcp4(), _tcp4(tos=0xB9, frag=0), _tcp4(doff=8, opts=b"\x01\x01\x08\x0a" + b"\x00" * 8),
             _tcp4(vlan=True), _tcp4(frag=0x8000), _tcp4(doff=15), _udp6(), _udp6(ulen=3),
             _udp6(ulen=2000, tclass=0x2E), _icmp(4, 8), _icmp(4, 0), _icmp(4, 13), _icmp(4, 9),
             _icmp(4, 11, _tcp4()[14:50]), _icmp(6, 128), _icmp(6, 129), _icmp(6, 135),
             _icmp(6, 3, _udp6()[14:70])]
    rnd = random.Random(7)
    checked = 0
    for seed in seeds:
        variants = [seed, seed[:54], seed[:60], seed + b"\x00" * 6]
        for _ in range(300):
            b = bytearray(seed)
            for _ in range(rnd.randint(1, 3)):
                b[rnd.randrange(len(b))] = rnd.randrange(256)
            variants.append(bytes(b[:rnd.randint(40, len(b))] if rnd.random() < 0.3 else b))
        for v in variants:
            for wire_len in (None, len(v) + 100):
                assert parse(v, 1, 1.5, wire_len) == parse_general(v, 1, 1.5, wire_len), v.hex()
                checked += 1
    assert checked > 1000


def test_compiled_fast_path_takes_any_buffer_and_keyword_arguments() -> None:
    """Callers pass bytearrays and keywords too (the relay, tests): the compiled parse answers
    them as the Python one does."""
    compiled = _compiled()
    frame = _tcp4(payload=b"GET / HTTP/1.1\r\n")
    for data in (frame, bytearray(frame), memoryview(frame)):
        assert compiled(data, 1, 2.5, 999, 3) == parse_python(data, 1, 2.5, 999, 3)
    assert compiled(frame, ts=2.5, wire_len=999) == parse_python(frame, 1, 2.5, 999)
    pkt = compiled(frame, wire_len=None)
    assert (pkt.src_ip, pkt.dst_ip, pkt.sport, pkt.dport, pkt.wire_len) == \
        ("10.0.0.1", "10.0.0.2", 40000, 443, len(frame))
    assert bytes(pkt.payload) == b"GET / HTTP/1.1\r\n"
    assert compiled(frame[:30]).malformed  # short frames still reach the general path


def test_fast_path_decodes_tcp_options_as_the_general_path(parse) -> None:
    """Option areas of every length, made of real options (MSS, window scale, SACK, timestamps,
    NOP, EOL), unknown kinds (one to three digits), bad and overlong lengths and plain noise:
    the layout string, values and SACK blocks must come out as the general path decodes them."""
    rnd = random.Random(11)
    real = [b"\x02\x04\x05\xb4", b"\x03\x03\x07", b"\x04\x02", b"\x01", b"\x00",
            b"\x08\x0a" + bytes(range(8)), b"\x05\x0a" + bytes(range(8)),
            b"\x05\x12" + bytes(range(16)), b"\x1e\x04\x00\x00", b"\xfe\x02", b"\x09\x02",
            b"\x02\x03\x05", b"\x08\x01", b"\x03\x09\x07"]
    layouts = set()
    for _ in range(3000):
        opts = b""
        while len(opts) < rnd.choice((4, 12, 20, 40)):
            opts += rnd.choice(real) if rnd.random() < 0.8 else bytes([rnd.randrange(256)])
        opts = opts[:40]
        opts += b"\x01" * (-len(opts) % 4)
        frame = _tcp4(doff=5 + len(opts) // 4, opts=opts, flags=rnd.choice((0x02, 0x12, 0x10)))
        fast, slow = parse(frame), parse_general(frame)
        assert fast == slow, opts.hex()
        layouts.add(fast.tcp_options.order)
    assert len(layouts) > 500 and any("?254" in o for o in layouts) and \
        any(o.endswith("?") for o in layouts) and any("K" in o for o in layouts)
