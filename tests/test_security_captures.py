"""Detections on the real public captures: the attacks are found, clean traffic is quiet."""
from __future__ import annotations

from pathlib import Path

import pytest

from capture.errors import CaptureFileError
from capture.reader import iter_parsed
from security.monitor import SecurityMonitor
from tests.conftest import CAPTURE_FILES, CAPTURES, expected_for, require

#: captures of real attacks and the only rule each may raise
ATTACKS = {
    "portscan-nmap-syn.pcapng": "port_scan",
    "dns-dnscat-exfil-many-queries.pcap": "dns_tunnel",
}


def run(path: Path) -> SecurityMonitor:
    mon = SecurityMonitor.from_settings({})
    try:
        for pkt in iter_parsed(path):
            mon.process(pkt)
    except CaptureFileError:
        pass  # unreadable/damaged files: whatever was read is still examined
    return mon


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
