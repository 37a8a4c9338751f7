"""Deploying an agent over SSH to a real OpenSSH server in a network namespace.

The deployer runs in the server's namespace, logs in with a generated key (the host key is
checked against a known_hosts file), copies the project, reuses this venv's Python, starts the
agent with nohup; the deployer returns while the agent runs, the agent captures ping traffic made
in its namespace after that, and the server's merged flows hold that ping with its exact counts.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import ROOT, require, require_root, require_tool
from tests.test_relay_netns import PORT, _token, flows_of, start_server, star, stop_server

SSHD = "/usr/sbin/sshd"
SSH_PORT = 2222
PINGS = 5
#: one default ping on Ethernet: 14 (Ethernet) + 20 (IPv4) + 8 (ICMP) + 56 (payload)
PING_FRAME = 14 + 20 + 8 + 56


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie (the deployed agent's reaper is init)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _sshd_config(tmp: Path, listen: str) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp / "host_key")], check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp / "client_key")], check=True)
    (tmp / "authorized_keys").write_text((tmp / "client_key.pub").read_text())
    host_pub = (tmp / "host_key.pub").read_text().split()
    (tmp / "known_hosts").write_text(f"[{listen}]:{SSH_PORT} {host_pub[0]} {host_pub[1]}\n")
    cfg = tmp / "sshd_config"
    cfg.write_text(f"""Port {SSH_PORT}
ListenAddress {listen}
HostKey {tmp / 'host_key'}
PidFile {tmp / 'sshd.pid'}
AuthorizedKeysFile {tmp / 'authorized_keys'}
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PrintMotd no
Subsystem sftp internal-sftp
""")
    return cfg


def test_deploy_agent_over_ssh_and_it_reports(tmp_path):
    require_root()
    require_tool("ip", "ping", "ssh-keygen")
    require(Path(SSHD).exists(), "needs Debian's openssh-server (/usr/sbin/sshd)")
    os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege-separation directory
    token = _token(tmp_path)
    with star(1, 205) as net:
        host = net["agents"][0]
        cfg = _sshd_config(tmp_path, host["ip"])
        sshd = subprocess.Popen(["ip", "netns", "exec", host["ns"], SSHD, "-D", "-e", "-f", str(cfg)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        server = start_server(net["server"], tmp_path, token, tmp_path / "merged.json")
        ping = None
        try:
            remote = tmp_path / "remote"
            # the deployer runs in the server's namespace; sshd may need a moment to listen
            for _ in range(50):
                probe = subprocess.run(["ip", "netns", "exec", host["ns"], "ss", "-ltn",
                                        f"sport = :{SSH_PORT}"], capture_output=True, text=True)
                if f":{SSH_PORT}" in probe.stdout:
                    break
                time.sleep(0.1)
            dep = subprocess.run(
                ["ip", "netns", "exec", net["server"], sys.executable, "-m", "relay.deploy.deployer",
                 "--host", host["ip"], "--port", str(SSH_PORT), "--user", "root",
                 "--key", str(tmp_path / "client_key"), "--known-hosts", str(tmp_path / "known_hosts"),
                 "--relay", f"wss://{host['server_ip']}:{PORT}", "--token-file", str(token),
                 "--tls-cert", str(tmp_path / "relay-cert.pem"), "--agent-id", "deployed",
                 "-i", host["iface"], "--remote-dir", str(remote), "--python", sys.executable,
                 "--", "--duration", "4", "--offline", "--no-db",
                 "--export-json", str(remote / "agent.json")],
                cwd=ROOT, capture_output=True, text=True, timeout=60)
            assert dep.returncode == 0, dep.stderr + dep.stdout
            status = json.loads(dep.stdout)
            pid = int(status["pid"])
            # the deployer came back while the agent runs (it used to wait for the agent's end)
            assert status["running"] and _alive(pid), status
            assert "--agent-id deployed" in Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
            assert (remote / "main.py").exists() and (remote / "relay" / "cli.py").exists()
            assert (remote / "agent.token").stat().st_mode & 0o077 == 0
            assert token.read_text().strip() not in status["command"]
            # wait until the agent captures, then make traffic it can see
            deadline = time.monotonic() + 20
            while "capturing on" not in (remote / "agent.out").read_text():
                assert time.monotonic() < deadline, (remote / "agent.out").read_text()
                assert _alive(pid), (remote / "agent.out").read_text()
                time.sleep(0.1)
            ping = subprocess.run(["ip", "netns", "exec", host["ns"], "ping", "-q", "-c", str(PINGS),
                                   "-i", "0.2", "-s", "56", host["server_ip"]],
                                  capture_output=True, text=True, timeout=20)
            assert ping.returncode == 0, ping.stdout + ping.stderr
            assert _alive(pid), "the agent ended before the ping did: " + (remote / "agent.out").read_text()
            deadline = time.monotonic() + 30
            while _alive(pid):
                assert time.monotonic() < deadline, "deployed agent did not end"
                time.sleep(0.1)
        finally:
            summary = stop_server(server)
            sshd.terminate()
            sshd.wait(10)
    out = (remote / "agent.out").read_text()
    assert "relay:" in out and "0 dropped" in out, out
    merged = json.loads((tmp_path / "merged.json").read_text())
    assert "deployed closed" in summary
    mine = json.loads((remote / "agent.json").read_text())
    theirs = [f for f in merged["flows"] if f["agent"] == "deployed"]
    # what the agent captured is what the server holds, counters included
    assert flows_of(theirs) == flows_of(mine["flows"])
    # and it captured the ping made after deployment: every request and reply, byte for byte
    icmp = [f for f in theirs if f["protocol"] == "ICMP" and f["src_ip"] == host["ip"]
            and f["dst_ip"] == host["server_ip"]]
    assert len(icmp) == 1, theirs
    assert (icmp[0]["packets_sent"], icmp[0]["packets_recv"]) == (PINGS, PINGS), icmp
    assert (icmp[0]["bytes_sent"], icmp[0]["bytes_recv"]) == (PINGS * PING_FRAME,) * 2, icmp
    agent = [a for a in merged["meta"]["agents"] if a["agent"] == "deployed"][0]
    assert agent["packets"] == mine["meta"]["packets"] >= 2 * PINGS
    assert agent["version"] == mine["meta"]["version"]
    assert agent["source"] == host["iface"] and agent["messages"] >= 3 and agent["last_heartbeat"]
