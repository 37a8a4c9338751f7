"""Live capture on a veth between two namespaces, checked packet for packet against tcpdump.

Traffic (TCP, UDP, ICMP, ICMPv6/IPv6) is sent from namespace A to B while PacketTracer and
tcpdump both capture on B's end of the link; tshark's conversations over tcpdump's file are the
ground truth for our export.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, require_root, require_tool
from tests.netns import sh, veth_pair

pytestmark = [pytest.mark.requires_root, pytest.mark.integration]

PY = sys.executable

TRAFFIC = r'''
import socket, sys, time
b4, b6 = sys.argv[1], sys.argv[2]
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind(("0.0.0.0", 40000))
for i in range(20):
    u.sendto(b"x" * (50 + i), (b4, 9999))
t = socket.create_connection((b4, 8080), timeout=5)
t.sendall(b"y" * 5000)
t.shutdown(socket.SHUT_WR)
while t.recv(65536):
    pass
t.close()
u6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
for i in range(7):
    u6.sendto(b"z" * 30, (b6, 9998))
time.sleep(0.3)
'''

SERVER = r'''
import socket, threading, sys
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", 9999))
u6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); u6.bind(("::", 9998))
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8080)); s.listen()
def tcp():
    c, _ = s.accept()
    while True:
        d = c.recv(65536)
        if not d: break
        c.sendall(d[:100])
    c.close()
def drain(sock):
    while True:
        sock.recv(2048)
threading.Thread(target=tcp, daemon=True).start()
threading.Thread(target=drain, args=(u,), daemon=True).start()
threading.Thread(target=drain, args=(u6,), daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
'''


def _wait_line(proc: subprocess.Popen, text: str, deadline: float, err: bool = False) -> str:
    stream = proc.stderr if err else proc.stdout
    buf = ""
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            break
        buf += line
        if text in line:
            return buf
    raise AssertionError(f"did not see {text!r}; got {buf!r}")


def _conversations(pcap: Path) -> dict:
    out = subprocess.run([PY, str(ROOT.parent / "shared" / "tools" / "oracle.py"), str(pcap)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _key(proto: str, a: tuple, b: tuple) -> tuple:
    return (proto,) + tuple(sorted([a, b]))


@pytest.mark.parametrize("bpf", ["", "udp or icmp or icmp6"])
def test_live_capture_matches_tcpdump(tmp_path: Path, bpf: str) -> None:
    require_root()
    require_tool("ip", "tcpdump", "tshark", "ping")
    with veth_pair() as net:
        server = subprocess.Popen(["ip", "netns", "exec", net["b"], PY, "-c", SERVER],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        out = tmp_path / "live.json"
        ref = tmp_path / "ref.pcap"
        args = ["ip", "netns", "exec", net["b"], PY, str(ROOT / "main.py"), "-i", net["vb"],
                "--no-ui", "--no-db", "--offline", "--log-file", str(tmp_path / "log"),
                "--export-json", str(out)]
        if bpf:
            args += ["-f", bpf]
        ours = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        dump = subprocess.Popen(["ip", "netns", "exec", net["b"], "tcpdump", "-i", net["vb"], "-U",
                                 "-s", "0", "-w", str(ref)] + ([bpf] if bpf else []),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 30
            _wait_line(server, "ready", deadline)
            _wait_line(ours, "packettracer: capturing on", deadline, err=True)
            _wait_line(dump, "listening on", deadline, err=True)
            sh(PY, "-c", TRAFFIC, net["b4"], net["b6"], ns=net["a"])
            sh("ping", "-c", "4", "-i", "0.2", net["b4"], ns=net["a"])
            sh("ping", "-6", "-c", "3", "-i", "0.2", net["b6"], ns=net["a"])
            time.sleep(0.5)  # let the last replies reach both capturers
        finally:
            for p in (ours, dump):
                p.send_signal(2)
            ours_rc = ours.wait(30)
            dump.wait(30)
            server.stdin.close()
            server.wait(10)
        assert ours_rc == 0, ours.stderr.read()
        doc = json.loads(out.read_text())
        truth = _conversations(ref)
        assert doc["meta"]["dropped"] == 0
        # Totals can differ by neighbour-discovery packets sent while one capturer was starting
        # or stopping; every TCP/UDP conversation and every echo must match exactly.
        assert doc["meta"]["packets"] > 0 and doc["meta"]["malformed"] == 0

        flows = {}
        for f in doc["flows"]:
            if f["protocol"] in ("TCP", "UDP"):
                a, b = (f["src_ip"], f["src_port"]), (f["dst_ip"], f["dst_port"])
                flows[_key(f["protocol"].lower(), a, b)] = f
        expect = {}
        for c in truth["conversations"]:
            if c["proto"] in ("tcp", "udp"):
                a, b = (c["addr_a"], c["port_a"]), (c["addr_b"], c["port_b"])
                expect[_key(c["proto"], a, b)] = c
        assert set(flows) == set(expect)
        for k, c in expect.items():
            f = flows[k]
            assert f["packets_sent"] + f["packets_recv"] == c["frames"]
            assert f["bytes_sent"] + f["bytes_recv"] == c["bytes"]
        # The specific traffic we sent, with the right fields
        udp = flows[_key("udp", (net["a4"], 40000), (net["b4"], 9999))]
        assert udp["src_ip"] == net["a4"] and udp["packets_sent"] == 20
        v6 = [f for f in doc["flows"] if f["protocol"] == "UDP" and f["dst_ip"] == net["b6"]]
        assert len(v6) == 1 and v6[0]["packets_sent"] == 7 and v6[0]["ip_version"] == 6
        icmp = [f for f in doc["flows"] if f["protocol"] == "ICMP"]
        assert sum(f["packets_sent"] for f in icmp) == 4 and sum(f["packets_recv"] for f in icmp) == 4
        icmp6_echo = [f for f in doc["flows"] if f["protocol"] == "ICMPv6" and f.get("icmp_id")]
        assert sum(f["packets_sent"] + f["packets_recv"] for f in icmp6_echo) == 6
        tcp = [f for f in doc["flows"] if f["protocol"] == "TCP"]
        if bpf:
            assert tcp == []
        else:
            assert len(tcp) == 1
            t = tcp[0]
            assert (t["src_ip"], t["dst_port"]) == (net["a4"], 8080)
            assert t["bytes_sent"] > 5000 and t["packets_recv"] > 0
