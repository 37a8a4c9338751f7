"""ARP spoofing reproduced live: two network namespaces joined by veth, forged ARP replies sent
with scapy from one, captured in the other with a plain AF_PACKET socket, decoded by our parser
and fed to the security monitor."""
from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap

from capture.parser import parse
from security.monitor import SecurityMonitor
from tests.conftest import require_root, require_tool

MARKER = b"pt-arp-test-done"
GATEWAY = "10.201.0.254"

CAPTURE = textwrap.dedent("""
    import socket, sys, time
    iface, marker = sys.argv[1], sys.argv[2].encode()
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))  # ETH_P_ALL
    s.bind((iface, 0))
    s.settimeout(1.0)
    print("ready", flush=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            frame = s.recv(65535)
        except socket.timeout:
            continue
        print(f"{time.time():.6f} {frame.hex()}", flush=True)
        if marker in frame:
            break
""")

ATTACK = textwrap.dedent("""
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

_n = itertools.count()


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, check=check, timeout=30)


def test_forged_arp_replies_raise_a_spoof_alert_naming_the_attacker() -> None:
    require_root()
    require_tool("ip")
    tag = f"{os.getpid() % 10000}{next(_n)}"
    a, b, va, vb = f"ptsA{tag}", f"ptsB{tag}", f"ptsa{tag}", f"ptsb{tag}"
    capture = None
    try:
        sh("ip", "netns", "add", a)
        sh("ip", "netns", "add", b)
        sh("ip", "link", "add", va, "netns", a, "type", "veth", "peer", "name", vb, "netns", b)
        sh("ip", "netns", "exec", a, "ip", "addr", "add", "10.201.0.1/24", "dev", va)
        sh("ip", "netns", "exec", b, "ip", "addr", "add", "10.201.0.2/24", "dev", vb)
        sh("ip", "netns", "exec", b, "ip", "addr", "add", f"{GATEWAY}/24", "dev", vb)
        for ns, dev in ((a, va), (b, vb)):
            sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
            sh("ip", "netns", "exec", ns, "ip", "link", "set", dev, "up")
        capture = subprocess.Popen(["ip", "netns", "exec", b, sys.executable, "-c", CAPTURE,
                                    vb, MARKER.decode()], stdout=subprocess.PIPE, text=True)
        assert capture.stdout is not None
        assert capture.stdout.readline().strip() == "ready"
        attack = subprocess.run(["ip", "netns", "exec", a, sys.executable, "-c", ATTACK, va,
                                 GATEWAY, "10.201.0.2", MARKER.decode()],
                                capture_output=True, text=True, timeout=60)
        assert attack.returncode == 0, attack.stderr
        attacker_mac, victim_mac = attack.stdout.split()
        out, _ = capture.communicate(timeout=30)
    finally:
        if capture is not None and capture.poll() is None:
            capture.kill()
            capture.wait()
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)

    frames = [line.split() for line in out.splitlines() if line.strip()]
    assert frames and MARKER.hex() in frames[-1][1]
    mon = SecurityMonitor.from_settings({})
    arp_frames = 0
    for ts, data in frames:
        pkt = parse(bytes.fromhex(data), 1, float(ts))
        arp_frames += pkt.arp is not None
        mon.process(pkt)
    assert arp_frames >= 7  # request, the owner's reply, five forgeries
    alerts = mon.engine.alerts()
    assert [a.rule_id for a in alerts] == ["arp_spoof"], [a.message for a in alerts]
    alert = alerts[0]
    assert alert.src == attacker_mac and alert.dst == GATEWAY
    assert victim_mac in alert.message  # the genuine owner's MAC (the alias lives on B)
    assert alert.count == 5
