"""Link types the real captures don't cover (SLL2, BSD loopback, OpenBSD loop, raw IPv6), and
-w rotation: files we write ourselves with known content, read back by our reader and tshark."""
from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest

from capture.parser import parse
from capture.reader import CaptureFile, iter_parsed
from capture.writer import PcapngWriter
from tests.conftest import CAPTURES, require_tool

IPV4_UDP = bytes.fromhex(
    "4500001c000100004011f96fc0000201c0000202"  # 192.0.2.1 -> 192.0.2.2, UDP
    "303900350008 0000".replace(" ", ""))         # 12345 -> 53
IPV6_UDP = (bytes.fromhex("6000000000081140") + bytes.fromhex("20010db8000000000000000000000001")
            + bytes.fromhex("20010db8000000000000000000000002") + bytes.fromhex("303900350008 0000".replace(" ", "")))


def pcap(path: Path, linktype: int, frames: list[bytes]) -> Path:
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype)
    for i, f in enumerate(frames):
        out += struct.pack("<IIII", 1700000000 + i, 0, len(f), len(f)) + f
    path.write_bytes(out)
    return path


CASES = {
    "sll2": (276, struct.pack("!HHIHBB8s", 0x0800, 0, 2, 1, 0, 6, b"\x02" * 8) + IPV4_UDP),
    "null": (0, struct.pack("<I", 2) + IPV4_UDP),
    "loop": (108, struct.pack("!I", 2) + IPV4_UDP),
    "null6": (0, struct.pack("<I", 30) + IPV6_UDP),
    "raw6": (229, IPV6_UDP),
    "sll": (113, struct.pack("!HHH8sH", 0, 1, 6, b"\x02" * 8, 0x0800) + IPV4_UDP),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_link_types_decode_to_the_same_udp_packet(tmp_path: Path, name: str) -> None:
    linktype, frame = CASES[name]
    pkts = list(iter_parsed(pcap(tmp_path / f"{name}.pcap", linktype, [frame] * 3)))
    assert len(pkts) == 3
    p = pkts[0]
    assert not p.malformed, p.malformed
    assert (p.proto, p.sport, p.dport) == (17, 12345, 53)
    assert p.src_ip in ("192.0.2.1", "2001:db8::1") and p.wire_len == len(frame)
    require_tool("tshark")
    r = subprocess.run(["tshark", "-r", str(tmp_path / f"{name}.pcap"), "-T", "fields",
                        "-e", "udp.srcport", "-e", "udp.dstport"], capture_output=True, text=True,
                       timeout=60)
    assert r.stdout.split() == ["12345", "53"] * 3


def test_write_rotation_by_size(tmp_path: Path) -> None:
    frames = list(CaptureFile(CAPTURES / "http-espn-browse.pcapng"))
    w = PcapngWriter(tmp_path / "rot.pcapng", max_mb=1)
    for _ in range(4):  # ~2.7 MB in all
        w.write(frames)
    w.close()
    assert len(w.files) == 3 and all(f.exists() for f in w.files)
    sizes = [f.stat().st_size for f in w.files]
    assert all(s <= 1024 * 1024 + 2000 for s in sizes)
    back = sum(sum(1 for _ in CaptureFile(f)) for f in w.files)
    assert back == 4 * len(frames) == w.written


def test_unknown_link_type_in_a_frame_is_marked() -> None:
    p = parse(b"\x00" * 40, 9999)
    assert p.malformed == "unsupported link type 9999"
