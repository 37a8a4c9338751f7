"""Distributed capture between real hosts: network namespaces made (and removed) by the test.

Agents run ``--agent`` in their own namespaces, each joined by a veth to a server namespace where
``--relay-server`` listens with TLS (certificate generated on first run); they capture ping and
UDP traffic generated in their namespace and relay it.

* three agents: the server's merged flows equal the union of the agents' own exports, each
  tagged with its agent, and the counters add up;
* the server is killed (SIGKILL) for a few seconds and restarted: agents reconnect, resync, and
  the restarted server ends with every flow and counter the agents exported.
"""
from __future__ import annotations

import itertools
import json
import os
import secrets
import select
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from tests.conftest import ROOT, require_root, require_tool

PORT = 8765
FLOW_FIELDS = ("flow_key", "protocol", "src_ip", "src_port", "dst_ip", "dst_port",
               "packets_sent", "packets_recv", "bytes_sent", "bytes_recv", "first_seen",
               "last_seen", "state")
UDP_SEND = ("import socket,sys,time\n"
            "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
            "for i in range(int(sys.argv[2])):\n"
            "    s.sendto(b'relay-test-%d' % i,(sys.argv[1],9999)); time.sleep(0.02)\n")
_n = itertools.count()


def sh(*args: str, ns: str | None = None) -> subprocess.CompletedProcess:
    cmd = (["ip", "netns", "exec", ns] if ns else []) + list(args)
    return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=30)


@contextmanager
def star(n_agents: int, net: int) -> Iterator[dict]:
    """A server namespace and ``n_agents`` agent namespaces, each on its own veth to the server."""
    tag = f"{os.getpid() % 10000}{next(_n)}"
    srv = f"ptrS{tag}"
    agents = [f"ptrA{tag}x{i}" for i in range(1, n_agents + 1)]
    made: list[str] = []
    try:
        for ns in (srv, *agents):
            sh("ip", "netns", "add", ns)
            made.append(ns)
            sh("ip", "link", "set", "lo", "up", ns=ns)
        hosts = []
        for i, ns in enumerate(agents, 1):
            va, vs = f"pra{tag}x{i}", f"prs{tag}x{i}"
            sh("ip", "link", "add", va, "netns", ns, "type", "veth", "peer", "name", vs, "netns", srv)
            sh("ip", "addr", "add", f"10.{net}.{i}.1/24", "dev", vs, ns=srv)
            sh("ip", "addr", "add", f"10.{net}.{i}.2/24", "dev", va, ns=ns)
            sh("ip", "link", "set", vs, "up", ns=srv)
            sh("ip", "link", "set", va, "up", ns=ns)
            hosts.append({"ns": ns, "iface": va, "ip": f"10.{net}.{i}.2", "server_ip": f"10.{net}.{i}.1",
                          "id": f"agent-{i}"})
        yield {"server": srv, "agents": hosts}
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _wait_line(proc: subprocess.Popen, needle: str, timeout: float = 30) -> str:
    """Read the process's stderr until a line contains ``needle``."""
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout
    seen = ""
    while time.monotonic() < deadline:
        r, _, _ = select.select([proc.stderr], [], [], 0.2)
        if r:
            line = proc.stderr.readline()
            if not line and proc.poll() is not None:
                break
            seen += line
            if needle in line:
                return line
        elif proc.poll() is not None:
            break
    raise AssertionError(f"no '{needle}' from {proc.args}: {seen}")


def start_server(ns: str, tmp: Path, token: Path, export: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-m", "relay.cli", "--relay-server",
         "--listen", f"0.0.0.0:{PORT}", "--token-file", str(token), "--tls-cert",
         str(tmp / "relay-cert.pem"), "--tls-key", str(tmp / "relay-key.pem"), "--no-ui",
         "--export-json", str(export), "--log-file", str(tmp / "server.log")],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_line(proc, "listening on wss://")
    return proc


def start_agents(hosts: list[dict], tmp: Path, token: Path, duration: float) -> list[subprocess.Popen]:
    """Start every agent at once, then wait until each captures (they start in parallel)."""
    procs = [_agent(h, tmp, token, duration) for h in hosts]
    for proc in procs:
        _wait_line(proc, "capturing on")
    return procs


def _agent(host: dict, tmp: Path, token: Path, duration: float) -> subprocess.Popen:
    return subprocess.Popen(
        ["ip", "netns", "exec", host["ns"], sys.executable, "-m", "relay.cli", "--agent",
         "--relay", f"wss://{host['server_ip']}:{PORT}", "--token-file", str(token),
         "--tls-cert", str(tmp / "relay-cert.pem"), "--agent-id", host["id"], "-i", host["iface"],
         "--duration", str(duration), "--no-ui", "--offline", "--no-db",
         "--export-json", str(tmp / f"{host['id']}.json"),
         "--log-file", str(tmp / f"{host['id']}.log")],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def traffic(host: dict, pings: int, interval: float, datagrams: int) -> list[subprocess.Popen]:
    ns = host["ns"]
    return [subprocess.Popen(["ip", "netns", "exec", ns, "ping", "-q", "-c", str(pings), "-i",
                              str(interval), host["server_ip"]], stdout=subprocess.DEVNULL),
            subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", UDP_SEND,
                              host["server_ip"], str(datagrams)])]


def stop_server(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    return out


def finish_agent(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, f"{proc.args}: {err}"
    return out


def flows_of(rows: list[dict]) -> set[tuple]:
    return {tuple(r.get(k) for k in FLOW_FIELDS) for r in rows}


def _token(tmp: Path) -> Path:
    f = tmp / "relay.token"
    f.write_text(secrets.token_urlsafe(24) + "\n")
    f.chmod(0o600)
    return f


def test_three_agents_merge_into_one_server(tmp_path):
    require_root()
    require_tool("ip", "ping")
    token = _token(tmp_path)
    with star(3, 203) as net:
        server = start_server(net["server"], tmp_path, token, tmp_path / "merged.json")
        try:
            agents = start_agents(net["agents"], tmp_path, token, 4.0)
            gens = [p for h in net["agents"] for p in traffic(h, 5, 0.2, 10)]
            for g in gens:
                g.wait(20)
            outs = [finish_agent(a) for a in agents]
        finally:
            summary = stop_server(server)
    merged = json.loads((tmp_path / "merged.json").read_text())
    assert "agents:    3" in summary
    union: set[tuple] = set()
    total_packets = 0
    for h, out in zip(net["agents"], outs):
        mine = json.loads((tmp_path / f"{h['id']}.json").read_text())
        assert "0 dropped" in out
        own = flows_of(mine["flows"])
        # the agent saw its ping and UDP flows to the server (and only its own link)
        assert any(f["protocol"] == "ICMP" and f["dst_ip"] == h["server_ip"] and f["packets"] >= 10
                   for f in ({**r, "packets": r["packets_sent"] + r["packets_recv"]} for r in mine["flows"]))
        assert any(f["protocol"] == "UDP" and f["dst_port"] == 9999 and f["packets_sent"] == 10
                   for f in mine["flows"])
        # and nothing of its relay link (the agent filters it out)
        assert not any(f["protocol"] == "TCP" and PORT in (f["src_port"], f["dst_port"])
                       for f in mine["flows"])
        theirs = [r for r in merged["flows"] if r["agent"] == h["id"]]
        assert flows_of(theirs) == own, h["id"]
        union |= own
        total_packets += mine["meta"]["packets"]
    assert flows_of(merged["flows"]) == union
    assert merged["meta"]["packets"] == total_packets
    states = {a["agent"]: a["state"] for a in merged["meta"]["agents"]}
    assert states == {h["id"]: "closed" for h in net["agents"]}


def test_server_restart_loses_no_flow_or_counter(tmp_path):
    require_root()
    require_tool("ip", "ping")
    token = _token(tmp_path)
    outage = 4.0
    with star(2, 204) as net:
        first = start_server(net["server"], tmp_path, token, tmp_path / "first.json")
        second = None
        try:
            agents = start_agents(net["agents"], tmp_path, token, 8.0)
            gens = [p for h in net["agents"] for p in traffic(h, 70, 0.1, 100)]
            time.sleep(1.5)  # let the agents stream to the first instance
            first.kill()
            first.wait(10)
            time.sleep(outage)  # the outage itself: traffic goes on, agents buffer
            second = start_server(net["server"], tmp_path, token, tmp_path / "second.json")
            for g in gens:
                g.wait(30)
            outs = [finish_agent(a) for a in agents]
        finally:
            if first.poll() is None:
                first.kill()
            if second is not None:
                stop_server(second)
    merged = json.loads((tmp_path / "second.json").read_text())
    by_agent = {a["agent"]: a for a in merged["meta"]["agents"]}
    for h, out in zip(net["agents"], outs):
        mine = json.loads((tmp_path / f"{h['id']}.json").read_text())
        assert "0 dropped" in out and "0 resync(s)" not in out, out
        theirs = [r for r in merged["flows"] if r["agent"] == h["id"]]
        assert flows_of(theirs) == flows_of(mine["flows"]), h["id"]
        icmp = [r for r in mine["flows"] if r["protocol"] == "ICMP" and r["dst_ip"] == h["server_ip"]]
        assert icmp and icmp[0]["packets_sent"] >= 60      # the ping ran through the outage
        assert by_agent[h["id"]]["packets"] == mine["meta"]["packets"]
        assert by_agent[h["id"]]["bytes"] == mine["meta"]["bytes"]
        assert by_agent[h["id"]]["state"] == "closed"
