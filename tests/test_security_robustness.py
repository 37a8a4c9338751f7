"""Hostile input never breaks detection: mutated real frames and arbitrary payloads go through
the whole monitor without an exception, and state stays bounded under address floods."""
from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from capture.errors import CaptureFileError
from capture.packet import PROTO_TCP, PROTO_UDP, ParsedPacket
from capture.parser import parse
from capture.reader import CaptureFile
from security.alerts import AlertEngine
from security.detectors import DnsDetector, PortScanDetector
from security.monitor import SecurityMonitor
from tests.conftest import CAPTURE_FILES


def real_frames() -> list[tuple[bytes, int]]:
    out = []
    for path in CAPTURE_FILES:
        try:
            out.extend((f.data, f.linktype) for f in CaptureFile(path))
        except CaptureFileError:
            continue
    return out


def test_mutated_real_frames_never_raise() -> None:
    frames = real_frames()
    assert len(frames) > 1000
    rnd = random.Random(2024)
    mon = SecurityMonitor.from_settings({}, destinations=[])
    for i in range(20000):
        data, linktype = frames[rnd.randrange(len(frames))]
        buf = bytearray(data)
        for _ in range(rnd.randint(1, 8)):
            buf[rnd.randrange(len(buf))] = rnd.randrange(256)
        if rnd.random() < 0.2:
            del buf[rnd.randrange(len(buf)):]
        mon.process(parse(bytes(buf), linktype, 1000.0 + i * 0.001))
    assert mon.packets >= 20000
    mon.snapshot()


@settings(max_examples=300, deadline=None)
@given(payload=st.binary(max_size=600), tcp=st.booleans(), response=st.booleans())
def test_dns_detector_takes_any_payload(payload: bytes, tcp: bool, response: bool) -> None:
    det = DnsDetector(AlertEngine())
    pkt = ParsedPacket(ts=1.0, ip_version=4, src_ip="10.0.0.2", dst_ip="10.0.0.53",
                       proto=PROTO_TCP if tcp else PROTO_UDP,
                       sport=53 if response else 40000, dport=40000 if response else 53,
                       data=payload, payload_offset=0, payload_len=len(payload))
    det.process(pkt)


def test_scan_state_stays_bounded_under_a_spoofed_source_flood() -> None:
    det = PortScanDetector(AlertEngine(), max_entries=1000)
    rnd = random.Random(5)
    for i in range(50000):
        src = f"{rnd.randint(1, 223)}.{rnd.randint(0, 255)}.{rnd.randint(0, 255)}.{i % 250 + 1}"
        det.process(ParsedPacket(ts=i * 0.001, ip_version=4, src_ip=src, dst_ip="10.0.0.1",
                                 proto=PROTO_TCP, sport=1000 + i % 50000, dport=i % 1024,
                                 tcp_flags=0x02))
    st_ = det.stats()
    assert st_["vertical_entries"] <= 1000 and st_["horizontal_entries"] <= 1000
    assert st_["single_target_pairs"] <= 8000
