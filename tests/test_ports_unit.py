"""PortTracker behaviour on hand-built packets: which port counts, connections, scans, bounds."""
from __future__ import annotations

from capture.packet import ACK, FIN, PROTO_TCP, PROTO_UDP, PSH, RST, SYN, ParsedPacket
from tracking.ports import PortTracker
from tracking.services import parse_services, port_range, service_name


def tcp(ts: float, src: str, sport: int, dst: str, dport: int, flags: int, seq: int = 1,
        size: int = 60) -> ParsedPacket:
    return ParsedPacket(ts=ts, wire_len=size, ip_version=4, src_ip=src, dst_ip=dst,
                        proto=PROTO_TCP, sport=sport, dport=dport, tcp_flags=flags, seq=seq)


def udp(ts: float, src: str, sport: int, dst: str, dport: int, size: int = 80) -> ParsedPacket:
    return ParsedPacket(ts=ts, wire_len=size, ip_version=4, src_ip=src, dst_ip=dst,
                        proto=PROTO_UDP, sport=sport, dport=dport)


def test_handshake_counts_one_connection_on_the_service_port() -> None:
    t = PortTracker()
    t.process(tcp(1.0, "10.0.0.1", 50000, "10.0.0.2", 8081, SYN, seq=100))
    t.process(tcp(1.5, "10.0.0.1", 50000, "10.0.0.2", 8081, SYN, seq=100))  # retransmitted
    t.process(tcp(1.6, "10.0.0.2", 8081, "10.0.0.1", 50000, SYN | ACK))
    t.process(tcp(1.7, "10.0.0.1", 50000, "10.0.0.2", 8081, ACK | PSH, size=500))
    rows = t.rows()
    assert [(r["port"], r["packets"], r["bytes"], r["connections"], r["hits"]) for r in rows] == \
        [(8081, 4, 680, 1, 1)]
    # the same 5-tuple reused by a new connection (new initial sequence number) counts again
    t.process(tcp(9.0, "10.0.0.1", 50000, "10.0.0.2", 8081, SYN, seq=999))
    assert t.rows()[0]["connections"] == 2


def test_mid_stream_pick_up_uses_the_known_or_lower_port() -> None:
    t = PortTracker()
    # picked up mid-connection with the server speaking first: 443 is the known port
    t.process(tcp(1.0, "1.1.1.1", 443, "10.0.0.1", 1030, ACK | PSH))
    # neither side known: the lower port is the service
    t.process(tcp(1.0, "10.0.0.1", 40001, "10.0.0.9", 7011, ACK))
    # a UDP reply seen first: its source port is the known service
    t.process(udp(1.0, "8.8.8.8", 53, "10.0.0.1", 40000))
    got = {(r["proto"], r["port"]): r["connections"] for r in t.rows()}
    assert got == {("TCP", 443): 0, ("TCP", 7011): 0, ("UDP", 53): 1}


def test_fin_null_and_xmas_probes_count_as_scan_activity() -> None:
    t = PortTracker(scan_threshold=10, scan_rate=0.5)
    for i in range(12):
        flags = (FIN, 0, FIN | PSH | 0x20)[i % 3]
        t.process(tcp(100.0 + i * 0.1, "6.6.6.6", 40000, "10.0.0.5", 1000 + i, flags))
        # the target's RST/ACK answers are not probes
        t.process(tcp(100.0 + i * 0.1, "10.0.0.5", 1000 + i, "6.6.6.6", 40000, RST | ACK))
    [s] = t.get_likely_scanners()
    assert s.src_ip == "6.6.6.6" and s.port_count == 12 and s.syn_probes == 0
    assert t.get_scan_activity("10.0.0.5") == []


def test_slow_or_small_sources_are_not_scanners() -> None:
    t = PortTracker(scan_threshold=10, scan_rate=0.5)
    for i in range(11):  # 11 ports, but one every 10 s: 0.11 ports/s
        t.process(tcp(i * 10.0, "10.0.0.7", 40000 + i, "10.0.0.8", 2000 + i, SYN))
    for i in range(10):  # fast, but only 10 ports (not more than the threshold)
        t.process(tcp(500 + i * 0.01, "10.0.0.9", 40000 + i, "10.0.0.8", 3000 + i, SYN))
    assert t.get_likely_scanners() == []
    acts = {a.src_ip: a for a in t.get_scan_activity()}
    assert acts["10.0.0.7"].port_count == 11 and acts["10.0.0.7"].rate < 0.5
    assert acts["10.0.0.9"].port_count == 10 and not acts["10.0.0.9"].likely_scanner


def test_idle_source_starts_a_fresh_activity_record() -> None:
    t = PortTracker(scan_threshold=10, scan_rate=0.5, scan_idle=300)
    for i in range(5):
        t.process(tcp(float(i), "10.0.0.7", 40000, "10.0.0.8", 100 + i, SYN))
    for i in range(20):  # a burst an hour later is judged on its own rate
        t.process(tcp(3600.0 + i * 0.1, "10.0.0.7", 40000, "10.0.0.8", 200 + i, SYN))
    [s] = t.get_likely_scanners()
    assert s.port_count == 20 and s.first_seen == 3600.0


def test_udp_scan_counts_first_packets_to_service_ports() -> None:
    t = PortTracker(scan_threshold=10)
    for i in range(15):
        t.process(udp(1.0 + i * 0.01, "10.0.0.66", 55555, "10.0.0.1", 60000 + i))
    [s] = t.get_likely_scanners()
    assert s.port_count == 15


def test_memory_is_bounded() -> None:
    t = PortTracker(max_ports=100, max_connections=500, max_sources=50, max_scan_ports=64,
                    max_sources_per_port=8)
    for i in range(3000):
        t.process(tcp(float(i) / 100, f"10.1.{i % 256}.{i // 256}", 40000, "10.0.0.1", 1 + i, SYN))
    assert len(t._ports) <= 100
    assert t._own_flows is not None and t._own_flows.active_count <= 500
    assert len(t._scans) <= 50
    assert all(a.port_count <= 64 for a in t.get_scan_activity())
    for i in range(100):
        t.process(tcp(40.0, f"10.2.0.{i}", 40000, "10.0.0.1", 80, SYN))
    assert t.port_stats(80).hits == 8


def test_services_table_and_ranges(tmp_path) -> None:
    assert service_name(443, PROTO_TCP) == "HTTPS"
    assert service_name(53, PROTO_UDP) == "DNS"
    assert service_name(5353, PROTO_UDP) == "mDNS"
    assert service_name(5353, PROTO_TCP) != "mDNS"
    parsed = parse_services("# comment\nfoo 12345/tcp bar # x\nbad line\nqux 99999/udp\n")
    assert parsed == {(PROTO_TCP << 16) | 12345: "foo"}
    assert [port_range(p) for p in (0, 1023, 1024, 49151, 49152, 65535)] == \
        ["well-known", "well-known", "registered", "registered", "dynamic", "dynamic"]
