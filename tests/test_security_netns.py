"""Live attacks inside network namespaces made by the test (and removed after it): two
namespaces joined by veth, traffic captured in the target namespace with a plain AF_PACKET
socket, decoded by our parser and fed to the security monitor.

* ARP spoofing: forged ARP replies sent with scapy.
* nmap SYN, connect, UDP, FIN, NULL and XMAS scans: one port-scan alert naming the scanner, within 5 seconds of
  the first probe, deduplicated.
* A spoofed SYN flood sent with scapy: one syn_flood alert against the victim service.
* An nmap scan through the product: ``main.py -i VETH --no-ui --duration N --export-json OUT``.
"""
from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import textwrap
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from capture.packet import ParsedPacket
from capture.parser import parse
from security.monitor import SecurityMonitor
from tests.conftest import require_root, require_tool

MARKER = "pt-security-test-done"
GATEWAY = "10.201.0.254"

CAPTURE = textwrap.dedent("""
    import socket, sys, time
    iface, marker = sys.argv[1], sys.argv[2].encode()
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))  # ETH_P_ALL
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    s.bind((iface, 0))
    s.settimeout(1.0)
    print("ready", flush=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            frame = s.recv(65535)
        except socket.timeout:
            continue
        print(f"{time.time():.6f} {frame.hex()}", flush=True)
        if marker in frame:
            break
""")

ARP_ATTACK = textwrap.dedent("""
    import sys
    from scapy.all import ARP, Ether, IP, UDP, conf, get_if_hwaddr, sendp, srp
    conf.verb = 0
    iface, gateway, victim, marker = sys.argv[1:5]
    me = get_if_hwaddr(iface)
    # The real owner of the gateway address answers first (a legitimate binding).
    ans, _ = srp(Ether(dst="ff:ff:ff:ff:ff:ff") / ARP(pdst=gateway), iface=iface, timeout=3)
    victim_mac = ans[0][1][ARP].hwsrc
    forged = Ether(src=me, dst=victim_mac) / ARP(op=2, psrc=gateway, hwsrc=me, pdst=victim,
                                                 hwdst=victim_mac)
    sendp([forged] * 5, iface=iface)
    sendp(Ether(src=me, dst=victim_mac) / IP(src="10.201.0.1", dst=victim) /
          UDP(sport=9, dport=9) / marker.encode(), iface=iface)
    print(me, victim_mac)
""")

SEND_MARKER = ("import socket,sys; socket.socket(socket.AF_INET, socket.SOCK_DGRAM)"
               ".sendto(sys.argv[2].encode(), (sys.argv[1], 9))")

_n = itertools.count()


def sh(*args: str) -> None:
    subprocess.run(args, capture_output=True, text=True, check=True, timeout=30)


@contextmanager
def namespaces(net: str) -> Iterator[dict[str, str]]:
    """Namespaces A (.1) and B (.2) on ``net``.0/24 joined by veth; always removed."""
    tag = f"{os.getpid() % 10000}{next(_n)}"
    a, b, va, vb = f"ptsA{tag}", f"ptsB{tag}", f"ptsa{tag}", f"ptsb{tag}"
    try:
        sh("ip", "netns", "add", a)
        sh("ip", "netns", "add", b)
        sh("ip", "link", "add", va, "netns", a, "type", "veth", "peer", "name", vb, "netns", b)
        for ns, dev, host in ((a, va, 1), (b, vb, 2)):
            sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{net}.{host}/24", "dev", dev)
            sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
            sh("ip", "netns", "exec", ns, "ip", "link", "set", dev, "up")
        yield {"a": a, "b": b, "va": va, "vb": vb, "a4": f"{net}.1", "b4": f"{net}.2"}
    finally:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@contextmanager
def capture_in(ns: str, iface: str, out: list[ParsedPacket]) -> Iterator[None]:
    """Capture on ``iface`` inside ``ns`` until the marker datagram arrives; the frames are
    parsed into ``out`` when the block ends."""
    proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", CAPTURE, iface,
                             MARKER], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        yield
        text, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = [line.split() for line in text.splitlines() if line.strip()]
    assert lines and MARKER.encode().hex() in lines[-1][1], "capture did not see the marker"
    out.extend(parse(bytes.fromhex(data), 1, float(ts)) for ts, data in lines)


def test_forged_arp_replies_raise_a_spoof_alert_naming_the_attacker() -> None:
    require_root()
    require_tool("ip")
    frames: list[ParsedPacket] = []
    with namespaces("10.201.0") as n:
        sh("ip", "netns", "exec", n["b"], "ip", "addr", "add", f"{GATEWAY}/24", "dev", n["vb"])
        with capture_in(n["b"], n["vb"], frames):
            attack = subprocess.run(["ip", "netns", "exec", n["a"], sys.executable, "-c",
                                     ARP_ATTACK, n["va"], GATEWAY, n["b4"], MARKER],
                                    capture_output=True, text=True, timeout=60)
            assert attack.returncode == 0, attack.stderr
        attacker_mac, victim_mac = attack.stdout.split()
    mon = SecurityMonitor.from_settings({}, destinations=[])
    for pkt in frames:
        mon.process(pkt)
    assert sum(p.arp is not None for p in frames) >= 7  # request, owner's reply, 5 forgeries
    alerts = mon.engine.alerts()
    assert [a.rule_id for a in alerts] == ["arp_spoof"], [a.message for a in alerts]
    alert = alerts[0]
    assert alert.src == attacker_mac and alert.dst == GATEWAY
    assert victim_mac in alert.message  # the genuine owner's MAC (the alias lives on B)
    assert alert.count == 5


@pytest.mark.parametrize("scan,kind", [("-sS", "SYN/connect"), ("-sT", "SYN/connect"),
                                       ("-sU", "UDP"), ("-sF", "FIN"), ("-sN", "NULL"),
                                       ("-sX", "XMAS")])
def test_nmap_scan_is_reported_once_within_five_seconds(scan: str, kind: str) -> None:
    require_root()
    require_tool("ip", "nmap")
    frames: list[ParsedPacket] = []
    ports = "1-300" if scan != "-sU" else "1-100"
    with namespaces("10.202.0") as n:
        with capture_in(n["b"], n["vb"], frames):
            run = subprocess.run(["ip", "netns", "exec", n["a"], "nmap", scan, "-Pn", "-n",
                                  "-T4", "--max-retries", "0", "-p", ports, n["b4"]],
                                 capture_output=True, text=True, timeout=120)
            assert run.returncode == 0, run.stderr
            subprocess.run(["ip", "netns", "exec", n["a"], sys.executable, "-c", SEND_MARKER,
                            n["b4"], MARKER], check=True, timeout=30)
        scanner = n["a4"]
    mon = SecurityMonitor.from_settings({}, destinations=[])
    for pkt in frames:
        mon.process(pkt)
    probes = [p for p in frames if p.src_ip == scanner and p.dst_ip == n["b4"]
              and p.proto in (6, 17)]
    assert len(probes) >= 100
    alerts = mon.engine.alerts()
    assert [(a.rule_id, a.src) for a in alerts] == [("port_scan", scanner)], \
        [a.message for a in alerts]
    alert = alerts[0]
    assert alert.dst == n["b4"]
    assert alert.ts - probes[0].ts <= 5.0
    assert alert.count >= 2  # the scan went on and was folded into the same alert
    assert f"({kind} probes" in alert.message


def test_cli_live_capture_reports_an_nmap_scan(tmp_path: Path) -> None:
    """The whole product: main.py capturing live on the target's veth while nmap scans it."""
    require_root()
    require_tool("ip", "nmap")
    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "export.json"
    with namespaces("10.203.0") as n:
        cli = subprocess.Popen(
            ["ip", "netns", "exec", n["b"], sys.executable, str(root / "main.py"), "-i", n["vb"],
             "--no-ui", "--no-db", "--offline", "--no-rdns", "--duration", "8",
             "--export-json", str(out), "--log-file", str(tmp_path / "pt.log")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            # Capture is running once a packet socket is open in B's namespace.
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and cli.poll() is None:
                sockets = subprocess.run(["ip", "netns", "exec", n["b"], "cat",
                                          "/proc/net/packet"], capture_output=True, text=True)
                if len(sockets.stdout.strip().splitlines()) > 1:
                    break
                time.sleep(0.05)
            assert cli.poll() is None, cli.stderr.read() if cli.stderr else ""
            started = time.time()
            scan = subprocess.run(["ip", "netns", "exec", n["a"], "nmap", "-sS", "-Pn", "-n",
                                   "-T4", "--max-retries", "0", "-p", "1-300", n["b4"]],
                                  capture_output=True, text=True, timeout=60)
            assert scan.returncode == 0, scan.stderr
            _, err = cli.communicate(timeout=60)
        finally:
            if cli.poll() is None:
                cli.kill()
                cli.wait()
        assert cli.returncode == 0, err
    alerts = json.loads(out.read_text()).get("alerts", [])
    assert [(a["rule_id"], a["src"], a["dst"]) for a in alerts] == \
        [("port_scan", n["a4"], n["b4"])]
    assert alerts[0]["ts"] - started <= 5.0


SYN_FLOOD = textwrap.dedent("""
    import random, sys
    from scapy.all import IP, TCP, UDP, Ether, conf, get_if_hwaddr, sendp
    conf.verb = 0
    iface, victim, victim_mac, marker = sys.argv[1:5]
    me = get_if_hwaddr(iface)
    rnd = random.Random(11)
    frames = [Ether(src=me, dst=victim_mac) /
              IP(src=f"198.18.{rnd.randint(0, 255)}.{rnd.randint(1, 254)}", dst=victim) /
              TCP(sport=rnd.randint(1024, 65535), dport=80, flags="S", seq=rnd.getrandbits(32))
              for _ in range(1500)]
    sendp(frames, iface=iface)
    sendp(Ether(src=me, dst=victim_mac) / IP(dst=victim) / UDP(sport=9, dport=9) /
          marker.encode(), iface=iface)
""")


def test_spoofed_syn_flood_is_reported_against_the_victim() -> None:
    require_root()
    require_tool("ip")
    frames: list[ParsedPacket] = []
    with namespaces("10.204.0") as n:
        mac = subprocess.run(["ip", "netns", "exec", n["b"], "cat",
                              f"/sys/class/net/{n['vb']}/address"],
                             capture_output=True, text=True, check=True).stdout.strip()
        with capture_in(n["b"], n["vb"], frames):
            flood = subprocess.run(["ip", "netns", "exec", n["a"], sys.executable, "-c",
                                    SYN_FLOOD, n["va"], n["b4"], mac, MARKER],
                                   capture_output=True, text=True, timeout=120)
            assert flood.returncode == 0, flood.stderr
    mon = SecurityMonitor.from_settings({}, destinations=[])
    for pkt in frames:
        mon.process(pkt)
    syns = sum(1 for p in frames if p.proto == 6 and p.tcp_flags == 0x02 and p.dport == 80)
    assert syns == 1500
    alerts = mon.engine.alerts()
    assert [(a.rule_id, a.src, a.dst) for a in alerts] == \
        [("syn_flood", n["b4"], f"{n['b4']}:80")], [a.message for a in alerts]
    assert alerts[0].evidence["half_open"] >= 200 and alerts[0].evidence["sources"] >= 200
