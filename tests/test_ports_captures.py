"""PortTracker on real captures, checked against tshark's conversations (expected/*.json)."""
from __future__ import annotations

from pathlib import Path

import pytest

from capture.packet import PROTO_TCP, PROTO_UDP
from capture.reader import iter_parsed
from tests.conftest import CAPTURE_FILES, CAPTURES, expected_for, require
from tracking.ports import PortTracker

SCAN = CAPTURES / "portscan-nmap-syn.pcapng"
#: captures whose frames carry TCP/UDP only in the outer header (no tunnels)
READABLE = [p for p in CAPTURE_FILES if p.name != "invalid-pcap-version.pcap"]
UNTUNNELLED = [p for p in READABLE if not p.name.startswith(("gre-", "vxlan-"))]


def _track(path: Path, **kw: object) -> PortTracker:
    require(path.exists(), f"{path} missing")
    t = PortTracker(**kw)  # type: ignore[arg-type]
    for pkt in iter_parsed(path):
        t.process(pkt)
    return t


def test_nmap_syn_scan_source_is_a_likely_scanner() -> None:
    exp = expected_for(SCAN)
    # tshark's view: every TCP conversation the scanner opened, one per probed port
    probed = {c["port_b"] for c in exp["conversations"]
              if c["proto"] == "tcp" and c["addr_a"] == "172.16.0.8"}
    t = _track(SCAN)
    scanners = t.get_likely_scanners()
    assert [s.src_ip for s in scanners] == ["172.16.0.8"]
    s = scanners[0]
    assert s.ports == frozenset(probed)
    assert s.port_count >= 1000
    assert s.hosts == frozenset({"64.13.134.52"})
    assert s.syn_probes == exp["tcp_analysis"]["syn"]  # every half-open SYN counted
    assert s.rate > 0.5 and s.likely_scanner
    snap = t.snapshot()
    assert [a.src_ip for a in snap.scanners] == ["172.16.0.8"]
    # the scanned side is what ports count, not the scanner's two source ports
    assert snap.total_ports == len(probed)


@pytest.mark.parametrize("path", [p for p in READABLE if p != SCAN], ids=lambda p: p.name)
def test_no_likely_scanner_on_clean_captures(path: Path) -> None:
    assert _track(path).get_likely_scanners() == []


def _conversations(path: Path) -> list[dict]:
    return [c for c in expected_for(path)["conversations"] if c["proto"] in ("tcp", "udp")]


@pytest.mark.parametrize("path", UNTUNNELLED, ids=lambda p: p.name)
def test_port_totals_equal_tshark_conversations(path: Path) -> None:
    """Every TCP/UDP frame counts once, for one port: totals equal tshark's tcp+udp rows."""
    conv = _conversations(path)
    rows = _track(path).rows()
    assert sum(r["packets"] for r in rows) == sum(c["frames"] for c in conv)
    assert sum(r["bytes"] for r in rows) == sum(c["bytes"] for c in conv)


def test_http_browse_connections_and_hits_per_port() -> None:
    path = CAPTURES / "http-espn-browse.pcapng"
    conv = _conversations(path)
    rows = {(r["proto"], r["port"]): r for r in _track(path).rows()}
    web = [c for c in conv if c["proto"] == "tcp" and c["port_b"] == 80]
    dns = [c for c in conv if c["proto"] == "udp" and c["port_b"] == 53]
    assert rows[("TCP", 80)]["connections"] == len(web)
    assert rows[("TCP", 80)]["packets"] == sum(c["frames"] for c in web)
    assert rows[("TCP", 80)]["bytes"] == sum(c["bytes"] for c in web)
    assert rows[("TCP", 80)]["hits"] == len({c["addr_a"] for c in web})
    assert rows[("TCP", 80)]["service"] == "HTTP"
    assert rows[("UDP", 53)]["connections"] == len(dns)
    assert rows[("UDP", 53)]["hits"] == len({c["addr_a"] for c in dns})
    assert rows[("UDP", 53)]["service"] == "DNS"
    assert rows[("TCP", 80)]["range"] == "well-known"
    # no client ephemeral port shows up as a port of its own
    assert all(r["port"] in (53, 80) for r in rows.values())


def test_history_matches_the_files_last_minute() -> None:
    path = CAPTURES / "http-espn-browse.pcapng"
    pkts = [p for p in iter_parsed(path) if p.proto == PROTO_TCP and 80 in (p.sport, p.dport)]
    t = _track(path)
    hist = t.history(80, PROTO_TCP)
    assert len(hist) == 60
    last = int(max(p.ts for p in pkts))
    for i, (n, b) in enumerate(hist):
        sec = last - 59 + i
        in_sec = [p for p in pkts if int(p.ts) == sec]
        assert (n, b) == (len(in_sec), sum(p.wire_len for p in in_sec))


def test_snapshot_sort_modes_and_rates() -> None:
    t = _track(CAPTURES / "mobile-android-mix.pcap")
    by_bytes = t.snapshot("bytes").rows
    assert [r.bytes for r in by_bytes] == sorted((r.bytes for r in by_bytes), reverse=True)
    by_packets = t.snapshot("packets").rows
    assert [r.packets for r in by_packets] == sorted((r.packets for r in by_packets), reverse=True)
    by_conn = t.snapshot("connections").rows
    assert [r.connections for r in by_conn] == sorted((r.connections for r in by_conn), reverse=True)
    by_rate = t.snapshot("rate", limit=3).rows
    assert len(by_rate) == 3 and by_rate[0].bps >= by_rate[1].bps >= by_rate[2].bps
    https = t.port_stats(443, PROTO_TCP)
    assert https is not None and https.service == "HTTPS" and https.connections > 0
    assert t.port_stats(9, PROTO_UDP) is None
