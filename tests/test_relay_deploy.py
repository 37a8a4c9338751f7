"""Deploying an agent over SSH to a real OpenSSH server in a network namespace.

The deployer runs in the server's namespace, logs in with a generated key (the host key is
checked against a known_hosts file), copies the project, reuses this venv's Python, starts the
agent with nohup; the agent captures ping traffic in its namespace and reports to the relay.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import ROOT, require, require_root, require_tool
from tests.test_relay_netns import PORT, _token, start_server, star, stop_server

SSHD = "/usr/sbin/sshd"
SSH_PORT = 2222


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
            assert status["running"] and status["pid"]
            assert (remote / "main.py").exists() and (remote / "relay" / "cli.py").exists()
            assert (remote / "agent.token").stat().st_mode & 0o077 == 0
            assert token.read_text().strip() not in status["command"]
            # wait until the agent captures, then make traffic it can see
            deadline = time.monotonic() + 20
            while "capturing on" not in (remote / "agent.out").read_text():
                assert time.monotonic() < deadline, (remote / "agent.out").read_text()
                time.sleep(0.1)
            ping = subprocess.run(["ip", "netns", "exec", host["ns"], "ping", "-q", "-c", "5", "-i",
                                   "0.2", host["server_ip"]], capture_output=True, text=True, timeout=20)
            assert ping.returncode == 0, ping.stdout + ping.stderr
            pid = int(status["pid"])
            deadline = time.monotonic() + 30
            while Path(f"/proc/{pid}").exists():
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
    assert {f["flow_key"] for f in theirs} == {f["flow_key"] for f in mine["flows"]}
    # What it captured is what it reported (packet counts are not asserted here: under an sshd
    # session our live capture currently stalls after its first packets, while tcpdump does not
    # -- reported to the capture owner; the namespace tests cover capture + relay end to end).
    agent = [a for a in merged["meta"]["agents"] if a["agent"] == "deployed"][0]
    assert agent["packets"] == mine["meta"]["packets"] and agent["version"] == mine["meta"]["version"]
    assert agent["source"] == host["iface"] and agent["messages"] >= 3 and agent["last_heartbeat"]
