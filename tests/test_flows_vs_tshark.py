"""The JSON export's flows, summed per 5-tuple / address pair, equal tshark's conversations."""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest

import main
from tests.conftest import CAPTURE_FILES, expected_for

READABLE = [p for p in CAPTURE_FILES if expected_for(p)["readable"]]


def export(capture: Path, tmp_path: Path) -> dict:
    out = tmp_path / "out.json"
    rc = main.run(["-r", str(capture), "--no-ui", "--no-db", "--offline",
                   "--log-file", str(tmp_path / "log"), "--export-json", str(out)])
    assert rc == 0
    return json.loads(out.read_text())


def _add(table: dict, key: tuple, a: tuple, b: tuple, fa: int, ba: int, fb: int, bb: int) -> None:
    v = table[key]
    if a <= b:
        v[0] += fa; v[1] += ba; v[2] += fb; v[3] += bb
    else:
        v[0] += fb; v[1] += bb; v[2] += fa; v[3] += ba


@pytest.mark.parametrize("capture", READABLE, ids=lambda p: p.name)
def test_tcp_udp_conversations_equal(capture: Path, tmp_path: Path) -> None:
    doc = export(capture, tmp_path)
    exp = expected_for(capture)
    assert doc["meta"]["packets"] == exp["packets"]
    ours: dict = defaultdict(lambda: [0, 0, 0, 0])
    for f in doc["flows"]:
        if f["protocol"] not in ("TCP", "UDP"):
            continue
        a, b = (f["src_ip"], f["src_port"]), (f["dst_ip"], f["dst_port"])
        _add(ours, (f["protocol"].lower(),) + tuple(sorted([a, b])), a, b,
             f["packets_sent"], f["bytes_sent"], f["packets_recv"], f["bytes_recv"])
    theirs: dict = defaultdict(lambda: [0, 0, 0, 0])
    for c in exp["conversations"]:
        if c["proto"] not in ("tcp", "udp"):
            continue
        a, b = (c["addr_a"], c["port_a"]), (c["addr_b"], c["port_b"])
        _add(theirs, (c["proto"],) + tuple(sorted([a, b])), a, b,
             c["frames_a_to_b"], c["bytes_a_to_b"], c["frames_b_to_a"], c["bytes_b_to_a"])
    assert {k: tuple(v) for k, v in ours.items()} == {k: tuple(v) for k, v in theirs.items()}


@pytest.mark.parametrize("capture", READABLE, ids=lambda p: p.name)
def test_ip_conversations_equal(capture: Path, tmp_path: Path) -> None:
    """All flows between an address pair add up to tshark's ip/ipv6 conversation."""
    doc = export(capture, tmp_path)
    exp = expected_for(capture)
    ours: dict = defaultdict(lambda: [0, 0, 0, 0])
    for f in doc["flows"]:
        a, b = (f["src_ip"],), (f["dst_ip"],)
        _add(ours, tuple(sorted([a, b])), a, b,
             f["packets_sent"], f["bytes_sent"], f["packets_recv"], f["bytes_recv"])
    theirs: dict = defaultdict(lambda: [0, 0, 0, 0])
    for c in exp["conversations"]:
        if c["proto"] not in ("ip", "ipv6"):
            continue
        a, b = (c["addr_a"],), (c["addr_b"],)
        _add(theirs, tuple(sorted([a, b])), a, b,
             c["frames_a_to_b"], c["bytes_a_to_b"], c["frames_b_to_a"], c["bytes_b_to_a"])
    assert {k: tuple(v) for k, v in ours.items()} == {k: tuple(v) for k, v in theirs.items()}


#: the export's ``tcp`` counters and the expected files' tcp_analysis counts they equal
TCP_TOTALS = {"retransmissions": "retransmission", "fast_retransmissions": "fast_retransmission",
              "spurious_retransmissions": "spurious_retransmission",
              "out_of_order": "out_of_order", "dup_acks": "duplicate_ack",
              "zero_windows": "zero_window", "zero_window_probes": "zero_window_probe",
              "keep_alives": "keep_alive", "window_full": "window_full",
              "lost_segments": "lost_segment", "resets": "rst", "packets": "tcp_frames"}


@pytest.mark.parametrize("capture", [p for p in READABLE if expected_for(p)["tcp_analysis"]
                                     and expected_for(p)["tcp_analysis"]["tcp_frames"]],
                         ids=lambda p: p.name)
def test_tcp_section_equals_tshark_analysis(capture: Path, tmp_path: Path) -> None:
    """The run's TCP totals count every connection once, whether its flow left the table
    during the run (closed, idle) or at its end."""
    doc = export(capture, tmp_path)
    ta = expected_for(capture)["tcp_analysis"]
    tcp = doc["tcp"]
    assert {ours: tcp[ours] for ours in TCP_TOTALS} == \
        {ours: ta[theirs] for ours, theirs in TCP_TOTALS.items()}
    assert tcp["handshake_rtt_ms"]["count"] == len(ta["initial_rtt"])
    tcp_flows = [f for f in doc["flows"] if f["protocol"] == "TCP"]
    assert tcp["connections"] == sum(tcp["states"].values()) == len(tcp_flows)
