"""Every real capture reads with tshark's packet count; nothing escapes on the damaged ones."""
from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest

from capture.errors import CaptureFileError
from capture.reader import CaptureFile, iter_parsed
from capture.writer import PcapngWriter
from tests.conftest import CAPTURE_FILES, expected_for


@pytest.mark.parametrize("capture", CAPTURE_FILES, ids=lambda p: p.name)
def test_packet_count_matches_tshark(capture: Path) -> None:
    exp = expected_for(capture)
    if not exp["readable"] and exp["packets"] == 0:
        with pytest.raises(CaptureFileError) as err:
            list(iter_parsed(capture))
        assert capture.name in str(err.value)
        return
    packets = list(iter_parsed(capture))
    assert len(packets) == exp["packets"]
    # Wire lengths are what tshark sums as frame.len
    total = sum(p.wire_len for p in packets)
    conv_total = sum(e["bytes"] for e in exp["ip_endpoints"] + exp["ipv6_endpoints"])
    assert total > 0 or conv_total == 0


@pytest.mark.parametrize("capture", CAPTURE_FILES, ids=lambda p: p.name)
def test_vlan_arp_icmp_fields_match_tshark(capture: Path) -> None:
    exp = expected_for(capture)
    if not exp["readable"]:
        return
    li = exp["link_icmp"]
    packets = list(iter_parsed(capture))
    vlan_frames = sum(1 for p in packets if p.vlan_ids)
    assert vlan_frames == li["vlan_frames"]
    assert sorted({v for p in packets for v in p.vlan_ids}) == sorted(li["vlan_ids"])
    arp_ops: dict[str, int] = {}
    for p in packets:
        if p.arp is not None:
            arp_ops[str(p.arp.op)] = arp_ops.get(str(p.arp.op), 0) + 1
    assert arp_ops == li["arp_opcodes"]
    icmp: dict[str, int] = {}
    icmp6: dict[str, int] = {}
    for p in packets:
        # the outermost ICMP header per frame, as tshark counts it
        q = p
        while q is not None and q.proto not in (1, 58):
            q = q.inner
        if q is None or q.icmp_type < 0:
            continue
        target = icmp if q.proto == 1 else icmp6
        key = f"{q.icmp_type}/{q.icmp_code}"
        target[key] = target.get(key, 0) + 1
    assert icmp == li["icmp_type_code"]
    assert icmp6 == li["icmpv6_type_code"]
    v4frag = sum(1 for p in packets if p.ip_version == 4 and p.is_fragment)
    assert v4frag == li["ipv4_fragment_frames"]


def test_malformed_frames_are_marked_not_raised() -> None:
    from tests.conftest import CAPTURES
    bad = list(iter_parsed(CAPTURES / "malformed-ipv4-bad-total-length.pcap"))
    assert len(bad) == 1 and "total length" in bad[0].malformed
    trunc = list(iter_parsed(CAPTURES / "truncated-ipv4-header.pcap"))
    assert len(trunc) == 1 and "truncated IPv4" in trunc[0].malformed
    # tshark flags frame 11 of tcpreplay's test capture with an Error; so do we
    mix = list(iter_parsed(CAPTURES / "tcpreplay-small-mix.pcap"))
    exp = expected_for(CAPTURES / "tcpreplay-small-mix.pcap")
    assert [i for i, p in enumerate(mix, 1) if p.malformed] == exp["expert_malformed"]["frames_error"]


def test_gzip_and_truncated_files(tmp_path: Path) -> None:
    from tests.conftest import CAPTURES
    src = CAPTURES / "http-espn-browse.pcapng"
    gz = tmp_path / "espn.pcapng.gz"
    with open(src, "rb") as fi, gzip.open(gz, "wb") as fo:
        shutil.copyfileobj(fi, fo)
    assert len(list(iter_parsed(gz))) == 956
    cut = tmp_path / "cut.pcapng"
    cut.write_bytes(src.read_bytes()[:300000])
    cap = CaptureFile(cut)
    n = sum(1 for _ in cap)
    assert 0 < n < 956
    assert "truncated" in cap.info.damage and str(n) in cap.info.damage
    junk = tmp_path / "junk.pcap"
    junk.write_bytes(b"this is not a capture file at all")
    with pytest.raises(CaptureFileError, match="not a pcap"):
        CaptureFile(junk)


def test_pcapng_writer_round_trip_through_tshark(tmp_path: Path) -> None:
    from tests.conftest import CAPTURES, require_tool
    frames = []
    for name in ("sll-tcp-handshake-nanosec.pcap", "http-ipv4-and-ipv6.pcapng", "rawip-ipv4-dns.pcap"):
        frames.extend(CaptureFile(CAPTURES / name))
    out = tmp_path / "out.pcapng"
    w = PcapngWriter(out)
    w.write(frames)
    w.close()
    back = list(CaptureFile(out))
    assert [(f.data, f.wire_len, f.linktype) for f in back] == \
        [(bytes(f.data), f.wire_len, f.linktype) for f in frames]
    assert abs(back[0].ts - frames[0].ts) < 1e-6
    require_tool("tshark")
    import subprocess
    r = subprocess.run(["tshark", "-r", str(out), "-T", "fields", "-e", "frame.number"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.split()) == len(frames)


def _pcap_variants(tmp_path: Path) -> list[Path]:
    """Every pcap among the real captures, and damaged and big-endian copies of one."""
    import struct
    from tests.conftest import CAPTURES
    pcaps = [p for p in CAPTURE_FILES if p.read_bytes()[:4] != b"\x0a\x0d\x0d\x0a"]
    src = (CAPTURES / "smtp-session.pcap").read_bytes()
    out = list(pcaps)

    def put(name: str, data: bytes) -> None:
        out.append(tmp_path / name)
        out[-1].write_bytes(data)

    put("cut-header.pcap", src[:24 + 16 + 60 + 8])       # a record header cut short
    put("cut-data.pcap", src[:len(src) - 10])            # the last frame's data cut short
    bad = bytearray(src)
    struct.pack_into("<I", bad, 24 + 8, 0x7FFFFFFF)      # the first record's length absurd
    put("bad-length.pcap", bytes(bad))
    # the same file written big-endian (pcap allows either byte order)
    be = bytearray(struct.pack(">IHHiIII", *struct.unpack_from("<IHHiIII", src, 0)))
    off = 24
    while off + 16 <= len(src):
        rec = struct.unpack_from("<IIII", src, off)
        be += struct.pack(">IIII", *rec) + src[off + 16:off + 16 + rec[2]]
        off += 16 + rec[2]
    put("big-endian.pcap", bytes(be))
    return out


def test_compiled_pcap_loop_reads_as_the_python_loop(tmp_path: Path) -> None:
    """The compiled record loop (capture/_creader.pyx, built by run.sh; CI must have it) gives
    the same frames and the same damage report as the Python loop, damaged files included."""
    from capture import reader
    from tests.conftest import require
    require(reader._pcap_compiled is not None,
            "the compiled pcap loop (capture/_creader.pyx) is not built: ./run.sh builds it")
    compared = damaged = 0
    for path in _pcap_variants(tmp_path):
        try:
            a, b = CaptureFile(path), CaptureFile(path)
        except CaptureFileError:
            continue
        assert a.info.format.startswith("pcap")
        linktype = a.info.linktypes[0]
        scale = 1e-9 if a.info.format == "pcap-nsec" else 1e-6
        endian = ">" if b._buf[:4] in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d") else "<"
        py = list(b._pcap_python(endian, linktype, scale))
        compiled = list(a)
        assert compiled == py, path.name
        assert (a.info.packets, a.info.damage) == (b.info.packets, b.info.damage), path.name
        compared += len(py)
        damaged += bool(a.info.damage)
    assert compared > 1000 and damaged >= 3
