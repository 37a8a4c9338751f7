"""Random and mutated bytes never make the parser raise; whatever it reads stays consistent."""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capture.parser import LINKTYPE_NAMES, parse
from capture.reader import CaptureFile
from tests.conftest import CAPTURES

LINKTYPES = sorted(LINKTYPE_NAMES) + [147, 9999]
SEEDS = [bytes(f.data) for name in ("gre-tunnel-sample.pcap", "vxlan-encapsulated-http.pcap",
                                    "tcpreplay-small-mix.pcap", "http-ipv4-and-ipv6.pcapng",
                                    "icmp-traceroute-windows.pcapng", "vlan-qinq-udp.pcap")
         for f in CaptureFile(CAPTURES / name)]


def _check(pkt) -> None:  # noqa: ANN001
    assert pkt.payload_len >= 0
    assert pkt.payload_offset + pkt.payload_len <= len(pkt.data)
    bytes(pkt.payload)
    _ = pkt.protocol_name
    inner = pkt.inner
    depth = 0
    while inner is not None:
        depth += 1
        inner = inner.inner
    assert depth <= 5


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(data=st.binary(max_size=200), linktype=st.sampled_from(LINKTYPES))
def test_random_bytes_never_raise(data: bytes, linktype: int) -> None:
    _check(parse(data, linktype))


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(idx=st.integers(0, len(SEEDS) - 1), cut=st.integers(0, 2000),
       flips=st.lists(st.tuples(st.integers(0, 1999), st.integers(0, 255)), max_size=8))
def test_mutated_real_frames_never_raise(idx: int, cut: int, flips: list[tuple[int, int]]) -> None:
    frame = bytearray(SEEDS[idx][:cut])
    for pos, val in flips:
        if pos < len(frame):
            frame[pos] = val
    _check(parse(bytes(frame), 1, wire_len=len(SEEDS[idx])))


def test_truncation_is_reported_not_hidden() -> None:
    full = SEEDS[0]
    for cut in (10, 20, 30, 40):
        pkt = parse(full[:cut], 1)  # wire length unknown: the frame itself is short
        assert pkt.malformed, cut
