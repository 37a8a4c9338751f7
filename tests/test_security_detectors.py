"""Detectors on crafted frames: each attack raises its alert, the look-alike normal traffic
does not. Frames are built with scapy and decoded by our own parser, as in production."""
from __future__ import annotations

import base64
import random
from typing import Any, Callable

import pytest
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import ICMP, IP, TCP, UDP, UDPerror, IPerror
from scapy.layers.l2 import ARP, Ether

from capture.packet import ParsedPacket
from capture.parser import parse
from pipeline import Pipeline
from security.alerts import AlertEngine
from security.detectors import (ArpSpoofDetector, CleartextCredentialDetector, DnsDetector,
                                NewTalkerDetector, PortScanDetector, ReputationDetector,
                                SynFloodDetector)
from security.monitor import SecurityMonitor
from security.reputation import BlockList
from tracking.flow import FlowTracker
from tracking.tcp_state import TcpConnection

MAC_A, MAC_B, MAC_EVIL = "02:00:00:00:00:0a", "02:00:00:00:00:0b", "02:00:00:00:00:ee"


def frame(layer, ts: float):
    """Our ParsedPacket for an IP/ARP layer, wrapped in Ethernet."""
    if not isinstance(layer, Ether):
        layer = Ether(src=MAC_A, dst=MAC_B) / layer
    return parse(bytes(layer), 1, ts)


def rules(engine: AlertEngine) -> list[str]:
    return [a.rule_id for a in engine.alerts()]


Feed = Callable[[ParsedPacket], None]


def in_pipeline(mon: SecurityMonitor) -> Feed:
    """Feed frames through a pipeline wired as a run wires the monitor (runtime.py): attached
    to the run's flow table, IP packets through its flow stage, the rest through its stage for
    packets without a flow."""
    flows = FlowTracker(tcp_factory=TcpConnection)
    mon.attach(flows)
    pipe = Pipeline(flows, flow_stages=[mon.flow_stage], other_stages=[mon.process_other])
    return pipe.process_packet


@pytest.fixture(params=["detector", "monitor", "pipeline"])
def via(request: pytest.FixtureRequest) -> Callable[[Any], Feed]:
    """Each detection is checked three times: the detector fed every packet, the detector
    inside a SecurityMonitor, whose flow stage calls it only for the packets that can matter,
    and that monitor wired into a pipeline as a run has it."""
    def feed(det: Any) -> Feed:
        if request.param == "detector":
            return det.process
        if request.param == "monitor":
            return SecurityMonitor(det.engine, [det]).process
        return in_pipeline(SecurityMonitor(det.engine, [det]))
    return feed


# --- port scans -----------------------------------------------------------------------------
@pytest.mark.parametrize("flags,kind", [("S", "SYN/connect"), ("F", "FIN"), ("", "NULL"),
                                        ("FPU", "XMAS")])
def test_vertical_tcp_scans_are_reported_once_naming_the_scanner(
        flags: str, kind: str, via: Callable[[Any], Feed]) -> None:
    eng = AlertEngine()
    det = PortScanDetector(eng, threshold=10, scan_rate=0.5)
    feed = via(det)
    t = 1000.0
    for port in range(1, 200):
        t += 0.01
        feed(frame(IP(src="10.1.0.66", dst="10.1.0.5") / TCP(sport=40000, dport=port,
                                                                     flags=flags), t))
        # closed ports answer RST/ACK (stealth probes to open ports get nothing)
        feed(frame(IP(src="10.1.0.5", dst="10.1.0.66") / TCP(sport=port, dport=40000,
                                                                     flags="RA"), t + 0.001))
    alerts = eng.alerts()
    assert [a.rule_id for a in alerts] == ["port_scan"]
    a = alerts[0]
    assert a.src == "10.1.0.66" and a.dst == "10.1.0.5"
    assert kind in a.message and a.evidence["ports"] >= 100
    assert a.count > 1  # later reports were folded in


def test_browser_and_ftp_patterns_are_not_scans(via: Callable[[Any], Feed]) -> None:
    eng = AlertEngine()
    det = PortScanDetector(eng, threshold=10, scan_rate=0.5)
    feed = via(det)
    t = 0.0
    # A browser: 40 hosts on port 443 within two seconds, all answer SYN/ACK.
    for i in range(40):
        t += 0.05
        host = f"93.184.{i}.10"
        feed(frame(IP(src="192.168.1.2", dst=host) / TCP(sport=50000 + i, dport=443,
                                                                flags="S"), t))
        feed(frame(IP(src=host, dst="192.168.1.2") / TCP(sport=443, dport=50000 + i,
                                                                flags="SA"), t + 0.02))
    # Passive FTP: 40 data connections to distinct high ports of one server, all accepted.
    for i in range(40):
        t += 0.05
        feed(frame(IP(src="192.168.1.2", dst="198.51.100.7") /
                          TCP(sport=51000 + i, dport=30000 + i, flags="S"), t))
        feed(frame(IP(src="198.51.100.7", dst="192.168.1.2") /
                          TCP(sport=30000 + i, dport=51000 + i, flags="SA"), t + 0.02))
    # DNS answers: a resolver replying to many random client ports is not a UDP scan.
    for i in range(40):
        t += 0.05
        feed(frame(IP(src="8.8.8.8", dst="192.168.1.2") / UDP(sport=53, dport=40000 + i),
                          t))
    assert eng.alerts() == []


def test_slow_probing_below_the_rate_is_not_reported(via: Callable[[Any], Feed]) -> None:
    eng = AlertEngine()
    det = PortScanDetector(eng, threshold=10, scan_rate=0.5)
    feed = via(det)
    for i, port in enumerate(range(1, 40)):
        feed(frame(IP(src="10.1.0.66", dst="10.1.0.5") / TCP(dport=port, flags="S"),
                          1000.0 + i * 5))  # one port every 5 s = 0.2 ports/s
    assert eng.alerts() == []


def test_udp_scan_needs_port_unreachable_replies(via: Callable[[Any], Feed]) -> None:
    eng = AlertEngine()
    det = PortScanDetector(eng, threshold=10, scan_rate=0.5)
    feed = via(det)
    t = 0.0
    for port in range(100, 140):
        t += 0.02
        probe = IP(src="10.1.0.66", dst="10.1.0.5") / UDP(sport=45000, dport=port)
        feed(frame(probe, t))
    assert eng.alerts() == []  # nothing said the ports were closed yet
    for port in range(140, 160):
        t += 0.02
        probe = IP(src="10.1.0.66", dst="10.1.0.5") / UDP(sport=45000, dport=port)
        feed(frame(probe, t))
        feed(frame(IP(src="10.1.0.5", dst="10.1.0.66") / ICMP(type=3, code=3) /
                          IPerror(src="10.1.0.66", dst="10.1.0.5") /
                          UDPerror(sport=45000, dport=port), t + 0.001))
    alerts = eng.alerts()
    assert [a.rule_id for a in alerts] == ["port_scan"]
    assert "UDP" in alerts[0].message and alerts[0].evidence["icmp_unreachable"] >= 1


def test_horizontal_sweep_of_one_port_across_hosts(via: Callable[[Any], Feed]) -> None:
    eng = AlertEngine()
    det = PortScanDetector(eng, threshold=10, scan_rate=0.5)
    feed = via(det)
    for i in range(1, 60):
        feed(frame(IP(src="10.2.0.99", dst=f"10.2.1.{i}") / TCP(dport=22, flags="S"),
                          500.0 + i * 0.01))
    alerts = eng.alerts()
    assert [a.rule_id for a in alerts] == ["port_sweep"]
    assert alerts[0].src == "10.2.0.99" and "22" in alerts[0].dst


def test_icmp_echo_sweep(via: Callable[[Any], Feed]) -> None:
    eng = AlertEngine()
    det = PortScanDetector(eng, threshold=10, scan_rate=0.5)
    feed = via(det)
    for i in range(1, 40):
        feed(frame(IP(src="10.2.0.99", dst=f"10.2.1.{i}") / ICMP(), 500.0 + i * 0.01))
    assert rules(eng) == ["port_sweep"]


# --- SYN flood -------------------------------------------------------------------------------
def test_syn_flood_from_spoofed_sources(via: Callable[[Any], Feed]) -> None:
    eng = AlertEngine()
    det = SynFloodDetector(eng, syn_rate=200, half_open=200)
    feed = via(det)
    rnd = random.Random(7)
    for i in range(600):
        src = f"{rnd.randint(1, 223)}.{rnd.randint(0, 255)}.{rnd.randint(0, 255)}.1"
        feed(frame(IP(src=src, dst="10.3.0.1") / TCP(sport=1024 + i, dport=80,
                                                             flags="S"), 2000.0 + i / 1000))
    alerts = eng.alerts()
    assert [a.rule_id for a in alerts] == ["syn_flood"]
    assert alerts[0].src == "10.3.0.1" and alerts[0].dst == "10.3.0.1:80"
    assert alerts[0].evidence["half_open"] >= 200


def test_busy_server_with_completed_handshakes_is_not_a_flood(
        via: Callable[[Any], Feed]) -> None:
    eng = AlertEngine()
    det = SynFloodDetector(eng, syn_rate=200, half_open=200)
    feed = via(det)
    for i in range(600):
        src = f"172.16.{i // 250}.{i % 250 + 1}"
        t = 2000.0 + i / 1000
        feed(frame(IP(src=src, dst="10.3.0.1") / TCP(sport=2000 + i, dport=443,
                                                             flags="S"), t))
        feed(frame(IP(src=src, dst="10.3.0.1") / TCP(sport=2000 + i, dport=443,
                                                             flags="A"), t + 0.0005))
    assert eng.alerts() == []


def test_a_host_keeps_its_services_when_another_of_its_services_is_evicted(
        via: Callable[[Any], Feed]) -> None:
    """The service table evicts its oldest entries: one port of a server goes, and the
    handshakes then completed on another port of that server must still be matched."""
    eng = AlertEngine()
    det = SynFloodDetector(eng, syn_rate=30, half_open=30, max_services=64)
    feed = via(det)
    t = 2000.0

    def syn(src: str, dst: str, sport: int, dport: int) -> None:
        nonlocal t
        t += 0.0001
        feed(frame(IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags="S"), t))

    syn("172.17.0.9", "10.3.0.1", 40000, 22)          # the server's oldest service
    for i in range(9):                                  # others, dropped with it
        syn("172.17.0.9", f"10.4.0.{i + 1}", 40000, 80)
    syn("172.17.0.9", "10.3.0.1", 40001, 443)         # the service that stays
    for i in range(54):                                 # fill the table past its limit
        syn("172.17.0.9", f"10.5.0.{i + 1}", 40000, 80)
    assert det.stats()["services"] < 64                 # port 22 went, 443 stayed
    for i in range(100):                                # a busy but healthy second on 443
        src = f"172.16.0.{i + 1}"
        syn(src, "10.3.0.1", 2000 + i, 443)
        feed(frame(IP(src=src, dst="10.3.0.1") / TCP(sport=2000 + i, dport=443, flags="A"),
                   t + 0.00005))
    assert eng.alerts() == []


# --- ARP ---------------------------------------------------------------------------------------
def arp_reply(ip: str, mac: str, ts: float, eth_src: str | None = None):
    return frame(Ether(src=eth_src or mac, dst=MAC_B) /
                 ARP(op=2, psrc=ip, hwsrc=mac, pdst="10.4.0.2", hwdst=MAC_B), ts)


def test_arp_ip_moving_to_another_mac_is_spoofing(via: Callable[[Any], Feed]) -> None:
    eng = AlertEngine()
    det = ArpSpoofDetector(eng)
    feed = via(det)
    for i in range(5):
        feed(arp_reply("10.4.0.1", MAC_A, 10.0 + i))  # the real gateway, repeatedly
    assert eng.alerts() == []
    for i in range(5):
        feed(arp_reply("10.4.0.1", MAC_EVIL, 20.0 + i))
    alerts = eng.alerts()
    assert [a.rule_id for a in alerts] == ["arp_spoof"]
    assert alerts[0].src == MAC_EVIL and alerts[0].dst == "10.4.0.1"
    assert MAC_A in alerts[0].message and alerts[0].count == 5


def test_arp_reply_whose_ethernet_source_disagrees() -> None:
    eng = AlertEngine()
    ArpSpoofDetector(eng).process(arp_reply("10.4.0.1", MAC_A, 1.0, eth_src=MAC_EVIL))
    assert [(a.rule_id, a.src) for a in eng.alerts()] == [("arp_spoof", MAC_EVIL)]


def test_tunnelled_arp_spoofing_is_seen_by_a_run_pipeline() -> None:
    from scapy.layers.vxlan import VXLAN
    eng = AlertEngine()
    feed = in_pipeline(SecurityMonitor(eng, [ArpSpoofDetector(eng)]))
    for i, mac in enumerate([MAC_A] * 3 + [MAC_EVIL] * 4):
        inner = Ether(src=mac, dst=MAC_B) / ARP(op=2, psrc="10.4.0.1", hwsrc=mac,
                                                pdst="10.4.0.2", hwdst=MAC_B)
        feed(frame(IP(src="192.0.2.1", dst="192.0.2.2") / UDP(sport=4789, dport=4789) /
                   VXLAN(vni=7) / inner, 10.0 + i))
    alerts = eng.alerts()
    assert [(a.rule_id, a.src, a.dst) for a in alerts] == [("arp_spoof", MAC_EVIL, "10.4.0.1")]
    assert alerts[0].count == 4


def test_gratuitous_arp_storm(via: Callable[[Any], Feed]) -> None:
    eng = AlertEngine()
    det = ArpSpoofDetector(eng, storm_threshold=20, storm_window=10)
    feed = via(det)
    for i in range(30):
        feed(frame(Ether(src=MAC_A, dst="ff:ff:ff:ff:ff:ff") /
                          ARP(op=1, psrc="10.4.0.7", hwsrc=MAC_A, pdst="10.4.0.7"), 5.0 + i * 0.1))
    assert rules(eng) == ["arp_storm"]


# --- DNS ---------------------------------------------------------------------------------------
def dns_query(name: str, ts: float, client: str = "10.5.0.2"):
    return frame(IP(src=client, dst="10.5.0.53") / UDP(sport=33000, dport=53) /
                 DNS(id=1, rd=1, qd=DNSQR(qname=name)), ts)


def test_nxdomain_burst_per_client(via: Callable[[Any], Feed]) -> None:
    eng = AlertEngine()
    det = DnsDetector(eng, nxdomain_threshold=20, window=60)
    feed = via(det)
    for i in range(25):
        feed(frame(IP(src="10.5.0.53", dst="10.5.0.2") / UDP(sport=53, dport=33000) /
                          DNS(id=i, qr=1, rcode=3, qd=DNSQR(qname=f"qx{i}zk.example")), 10 + i))
    alerts = eng.alerts()
    assert [a.rule_id for a in alerts] == ["dns_nxdomain_burst"]
    assert alerts[0].src == "10.5.0.2"


def test_long_random_names_are_a_tunnel_and_normal_names_are_not(
        via: Callable[[Any], Feed]) -> None:
    eng = AlertEngine()
    det = DnsDetector(eng)
    feed = via(det)
    for i, name in enumerate(["www.wikipedia.org", "r3---sn-4g5e6nsz.googlevideo.com",
                              "semanticlocation-pa.googleapis.com",
                              "4.c.d.4.1.e.e.f.f.f.6.d.c.3.8.8.5.3.2.8.c.3.0.c.e.9.2.4.2.5.d.f."
                              "ip6.arpa"] * 5):
        feed(dns_query(name, float(i)))
    assert eng.alerts() == []
    rnd = random.Random(3)
    for i in range(6):
        data = "".join(rnd.choice("0123456789abcdef") for _ in range(120))
        feed(dns_query(f"{data[:60]}.{data[60:]}.t.exfil.example", 100.0 + i))
    alerts = eng.alerts()
    assert [a.rule_id for a in alerts] == ["dns_tunnel"]
    assert "exfil.example" in alerts[0].message
    assert data[:20] not in alerts[0].message  # the carried data is not repeated


# --- cleartext credentials ---------------------------------------------------------------------
SECRET = "hunter2-S3cret"


def tcp_data(src: str, dst: str, sport: int, dport: int, data: bytes, ts: float):
    return frame(IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags="PA") / data, ts)


@pytest.mark.parametrize("dport,lines,proto", [
    (21, [b"USER alice\r\n", f"PASS {SECRET}\r\n".encode()], "FTP"),
    (110, [b"USER alice\r\n", f"PASS {SECRET}\r\n".encode()], "POP3"),
    (143, [f"a001 LOGIN alice {SECRET}\r\n".encode()], "IMAP"),
    (8080, [b"GET /admin HTTP/1.1\r\nHost: x\r\nAuthorization: Basic " +
            base64.b64encode(f"alice:{SECRET}".encode()) + b"\r\n\r\n"], "HTTP"),
])
def test_cleartext_logins_are_reported_without_the_secret(dport: int, lines: list[bytes],
                                                           proto: str,
                                                           via: Callable[[Any], Feed]) -> None:
    eng = AlertEngine()
    det = CleartextCredentialDetector(eng)
    feed = via(det)
    for i, line in enumerate(lines * 2):
        feed(tcp_data("10.6.0.2", "10.6.0.21", 41000, dport, line, 1.0 + i))
    alerts = eng.alerts()
    assert [a.rule_id for a in alerts] == ["cleartext_credentials"]
    text = str(alerts[0].to_dict())
    assert proto in alerts[0].message and "10.6.0.21" in alerts[0].message
    assert SECRET not in text and "alice" not in text
    assert base64.b64encode(f"alice:{SECRET}".encode()).decode() not in text


def test_telnet_login_prompt_exchange(via: Callable[[Any], Feed]) -> None:
    eng = AlertEngine()
    det = CleartextCredentialDetector(eng)
    feed = via(det)
    feed(tcp_data("10.6.0.23", "10.6.0.2", 23, 41001, b"\r\nlogin: ", 1.0))
    feed(tcp_data("10.6.0.2", "10.6.0.23", 41001, 23, b"alice\r\n", 2.0))
    assert eng.alerts() == []
    feed(tcp_data("10.6.0.23", "10.6.0.2", 23, 41001, b"Password: ", 3.0))
    feed(tcp_data("10.6.0.2", "10.6.0.23", 41001, 23, SECRET.encode() + b"\r\n", 4.0))
    alerts = eng.alerts()
    assert [(a.rule_id, a.src) for a in alerts] == [("cleartext_credentials", "10.6.0.2")]
    assert SECRET not in str(alerts[0].to_dict())


def test_plain_http_without_auth_is_quiet(via: Callable[[Any], Feed]) -> None:
    eng = AlertEngine()
    det = CleartextCredentialDetector(eng)
    feed = via(det)
    feed(tcp_data("10.6.0.2", "10.6.0.80", 41000, 80,
                         b"GET / HTTP/1.1\r\nHost: a\r\nCookie: Basic x\r\n\r\n", 1.0))
    feed(tcp_data("10.6.0.2", "10.6.0.21", 41000, 21, b"USER anonymous\r\n", 2.0))
    assert eng.alerts() == []


def test_logins_deep_in_long_connections_are_found(via: Callable[[Any], Feed]) -> None:
    """Through the monitor's flow stage too: a Basic header on the 31st request of a keep-alive
    connection, and an FTP PASS after a long control session, are still seen."""
    eng = AlertEngine()
    det = CleartextCredentialDetector(eng)
    feed = via(det)
    server = "10.6.0.80"
    conns = (("10.6.0.2", 41000, 8080), ("10.6.0.3", 41001, 21), ("10.6.0.4", 41002, 443))
    t = 1.0
    for client, sport, dport in conns:
        for flags, a, b, sp, dp in (("S", client, server, sport, dport),
                                    ("SA", server, client, dport, sport),
                                    ("A", client, server, sport, dport)):
            t += 0.01
            feed(frame(IP(src=a, dst=b) / TCP(sport=sp, dport=dp, flags=flags), t))
    talk = {8080: (b"GET /p HTTP/1.1\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\n" + bytes(1000)),
            21: (b"NOOP\r\n", b"200 NOOP ok\r\n"), 443: (bytes(range(200)), bytes(1400))}
    for _ in range(30):
        for client, sport, dport in conns:
            t += 0.01
            ask, answer = talk[dport]
            feed(tcp_data(client, server, sport, dport, ask, t))
            feed(tcp_data(server, client, dport, sport, answer, t))
    assert eng.alerts() == []
    feed(tcp_data("10.6.0.2", server, 41000, 8080, b"GET /admin HTTP/1.1\r\n"
                  b"Authorization: Basic " + base64.b64encode(b"a:" + SECRET.encode()) +
                  b"\r\n\r\n", t + 1))
    feed(tcp_data("10.6.0.3", server, 41001, 21, f"PASS {SECRET}\r\n".encode(), t + 2))
    assert sorted((a.src, a.dst, a.evidence["protocol"]) for a in eng.alerts()) == [
        ("10.6.0.2", f"{server}:8080", "HTTP"), ("10.6.0.3", f"{server}:21", "FTP")]


# --- reputation / new talker -------------------------------------------------------------------
def test_blocklisted_addresses_in_either_direction(via: Callable[[Any], Feed]) -> None:
    bl = BlockList()
    bl.load_lines(["# test list", "203.0.113.0/24 ; SBL1", "2001:db8:bad::/48"], "drop")
    eng = AlertEngine()
    det = ReputationDetector(eng, blocklist=bl)
    feed = via(det)
    feed(frame(IP(src="10.7.0.2", dst="198.51.100.1") / TCP(dport=443), 1.0))
    assert eng.alerts() == []
    feed(frame(IP(src="203.0.113.77", dst="10.7.0.2") / TCP(dport=22), 2.0))
    feed(frame(IP(src="10.7.0.2", dst="203.0.113.77") / TCP(sport=22), 2.1))
    for i in range(100):  # a busy flow: the engine hears about it about once a second
        feed(frame(IP(src="203.0.113.77", dst="10.7.0.2") / TCP(dport=22), 2.2 + i / 20))
    alerts = eng.alerts()
    assert [(a.rule_id, a.src, a.dst) for a in alerts] == [
        ("blocklisted_address", "203.0.113.77", "10.7.0.2")]
    assert "drop" in alerts[0].message
    assert 4 <= alerts[0].count <= 7 and alerts[0].evidence["packets"] >= 95


def test_new_talker_after_learning_period(via: Callable[[Any], Feed]) -> None:
    table = {"198.51.100.1": ("US", 64500), "198.51.100.2": ("US", 64500),
             "203.0.113.9": ("NL", 64501)}
    eng = AlertEngine()
    det = NewTalkerDetector(eng, lambda ip: table.get(ip, (None, None)), learn_seconds=10)
    feed = via(det)
    feed(frame(IP(src="10.8.0.2", dst="198.51.100.1") / TCP(flags="S"), 0.0))
    feed(frame(IP(src="10.8.0.2", dst="198.51.100.2") / TCP(flags="S"), 20.0))
    assert eng.alerts() == []  # US/AS64500 learnt while learning
    feed(frame(IP(src="10.8.0.2", dst="203.0.113.9") / TCP(flags="S"), 30.0))
    assert sorted(rules(eng)) == ["new_asn", "new_country"]


# --- the facade --------------------------------------------------------------------------------
def test_monitor_routes_and_sees_tunnelled_packets() -> None:
    mon = SecurityMonitor.from_settings({"ALERTS_PORT_SCAN_THRESHOLD": 10})
    from scapy.layers.vxlan import VXLAN
    for port in range(1, 50):
        inner = Ether() / IP(src="10.9.0.66", dst="10.9.0.5") / TCP(dport=port, flags="S")
        outer = IP(src="192.0.2.1", dst="192.0.2.2") / UDP(sport=4789, dport=4789) / \
            VXLAN(vni=7) / inner
        mon.process(frame(outer, 100.0 + port * 0.01))
    snap = mon.snapshot()
    assert [a["rule_id"] for a in snap["alerts"]] == ["port_scan"]
    assert snap["alerts"][0]["src"] == "10.9.0.66"
    assert snap["counters"]["port_scan"]["raised"] == 1
    assert snap["graph"]["edges"] >= 2
    mon.close()


def test_icmpv6_echo_sweep_and_udp6_scan(via: Callable[[Any], Feed]) -> None:
    from scapy.layers.inet6 import ICMPv6DestUnreach, ICMPv6EchoRequest, IPv6, IPerror6
    eng = AlertEngine()
    det = PortScanDetector(eng, threshold=10, scan_rate=0.5)
    feed = via(det)
    for i in range(1, 30):
        feed(frame(IPv6(src="fd00::66", dst=f"fd00::1:{i:x}") / ICMPv6EchoRequest(),
                          10.0 + i * 0.01))
    for port in range(100, 130):
        feed(frame(IPv6(src="fd00::66", dst="fd00::5") / UDP(sport=45000, dport=port),
                          20.0 + port * 0.01))
        feed(frame(IPv6(src="fd00::5", dst="fd00::66") / ICMPv6DestUnreach(code=4) /
                          IPerror6(src="fd00::66", dst="fd00::5") /
                          UDPerror(sport=45000, dport=port), 20.0 + port * 0.01))
    assert sorted((a.rule_id, a.src) for a in eng.alerts()) == [
        ("port_scan", "fd00::66"), ("port_sweep", "fd00::66")]
