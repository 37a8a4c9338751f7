"""Detections on the real public captures: the attacks are found, clean traffic is quiet.

Captures go through the production path (a real Pipeline, the monitor attached to its flow
table: a packet stage and a flow stage); the monitor on its own (its private flow table) must
raise the very same alerts."""
from __future__ import annotations

from pathlib import Path

import pytest

from capture.errors import CaptureFileError
from capture.reader import CaptureFile, iter_parsed
from pipeline import Pipeline
from security.monitor import SecurityMonitor
from tests.conftest import CAPTURE_FILES, CAPTURES, expected_for, require
from tracking.flow import FlowTracker
from tracking.tcp_state import TcpConnection

#: captures of real attacks and the only rule each may raise
ATTACKS = {
    "portscan-nmap-syn.pcapng": "port_scan",
    "dns-dnscat-exfil-many-queries.pcap": "dns_tunnel",
}


def run(path: Path) -> SecurityMonitor:
    """The monitor as a run wires it: attached to the pipeline's flow table."""
    flows = FlowTracker(tcp_factory=TcpConnection)
    mon = SecurityMonitor.from_settings({})
    mon.attach(flows)
    pipe = Pipeline(flows, other_stages=[mon.process_other], flow_stages=[mon.flow_stage])
    frames = []
    try:
        frames.extend(CaptureFile(path))
    except CaptureFileError:
        pass  # unreadable/damaged files: whatever was read is still examined
    for i in range(0, len(frames), 256):
        pipe.process_frames(frames[i:i + 256])
    pipe.finish()
    return mon


def run_alone(path: Path) -> SecurityMonitor:
    """The monitor fed packet by packet, without a flow table of the caller's."""
    mon = SecurityMonitor.from_settings({})
    try:
        for pkt in iter_parsed(path):
            mon.process(pkt)
    except CaptureFileError:
        pass
    return mon


def alert_facts(mon: SecurityMonitor) -> list[tuple[object, ...]]:
    return [(a.rule_id, a.src, a.dst, a.count, sorted(a.evidence.items()))
            for a in mon.engine.alerts()]


def test_nmap_syn_scan_raises_exactly_one_alert_naming_the_scanner() -> None:
    path = CAPTURES / "portscan-nmap-syn.pcapng"
    require(path.exists(), f"{path} missing")
    # Ground truth: the scanner is the address that sent the SYNs (tshark's syn frames).
    exp = expected_for(path)
    syn_sources = {c["addr_a"] for c in exp["conversations"] if c["proto"] == "tcp"}
    assert len(syn_sources) == 1
    scanner = syn_sources.pop()
    alerts = run(path).engine.alerts()
    assert [a.rule_id for a in alerts] == ["port_scan"]
    a = alerts[0]
    assert a.src == scanner and scanner in a.message
    targets = {c["addr_b"] for c in exp["conversations"] if c["proto"] == "tcp"}
    assert a.dst in targets
    assert a.evidence["ports"] >= 100
    assert a.count > 1  # the scan went on: repeats folded into the one alert


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attached_and_standalone_monitors_raise_the_same_alerts(name: str) -> None:
    path = CAPTURES / name
    require(path.exists(), f"{path} missing")
    attached = run(path)
    assert attached.graph is not None and attached.snapshot()["graph"]["edges"] > 0
    assert alert_facts(attached) == alert_facts(run_alone(path)) != []


def test_dnscat_capture_raises_the_dns_tunnel_alert() -> None:
    path = CAPTURES / "dns-dnscat-exfil-many-queries.pcap"
    require(path.exists(), f"{path} missing")
    exp = expected_for(path)
    clients = {d["src"] for d in exp["dns"] if not d["is_response"]}
    alerts = run(path).engine.alerts()
    assert [a.rule_id for a in alerts] == ["dns_tunnel"]
    assert alerts[0].src in clients
    assert alerts[0].evidence["longest_name"] >= 200


@pytest.mark.parametrize("path", [p for p in CAPTURE_FILES if p.name not in ATTACKS],
                         ids=lambda p: p.name)
def test_clean_captures_raise_no_alert(path: Path) -> None:
    alerts = run(path).engine.alerts()
    assert [(a.rule_id, a.message) for a in alerts] == []
