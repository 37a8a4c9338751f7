"""Deploy a relay agent to a host over SSH (paramiko): copy the project, make or reuse a venv,
start the agent with nohup (or systemd-run), and report its status.

The token goes to a 0600 file on the host and the agent reads it with --token-file, so it never
appears in a process list. Host keys are checked against a known_hosts file unless the caller
explicitly accepts a new host's key.

    python -m relay.deploy.deployer --host H [--port P] [--user U] [--key KEY]
        [--known-hosts F | --accept-new-host-key] --relay wss://SERVER:PORT --token-file T
        [--tls-cert C] [--agent-id NAME] [-i IFACE] [--remote-dir DIR] [--python PY]
        [--systemd] [-- extra agent args]
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shlex
import subprocess
import sys
import tarfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import paramiko

from relay.errors import RelayError
from utils.logger import get_logger

log = get_logger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
_SKIP_DIRS = {".git", ".venv", "__pycache__", ".pytest_cache", ".hypothesis", "data", "out"}


class DeployError(RelayError):
    """A deployment step failed; the message names the step."""


@dataclass
class AgentSpec:
    """What the deployed agent runs: ``--agent --relay URL --token-file ... [args]``."""

    relay_url: str
    token: str
    agent_id: str
    interface: str | None = None
    tls_cert: str | None = None         # local file: the server certificate the agent trusts
    extra_args: list[str] = field(default_factory=list)


@dataclass
class DeployStatus:
    host: str
    remote_dir: str
    pid: int | None
    running: bool
    command: str
    log_tail: str


def project_files(root: Path = PROJECT_ROOT) -> list[str]:
    """Tracked and untracked-but-not-ignored files (git), or a walk without venvs and caches."""
    try:
        out = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others",
                              "--exclude-standard"], capture_output=True, check=True, timeout=30).stdout
        return sorted(f for f in out.decode().split("\0") if f and (root / f).is_file())
    except (OSError, subprocess.SubprocessError):
        files = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS]
            for name in filenames:
                if not name.endswith(".pyc"):
                    files.append(os.path.relpath(os.path.join(dirpath, name), root))
        return sorted(files)


def project_archive(root: Path = PROJECT_ROOT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for rel in project_files(root):
            tar.add(str(root / rel), arcname=rel, recursive=False)
    return buf.getvalue()


#: "yes" if the process lives (a zombie waiting for its reaper does not count)
_ALIVE = ("if kill -0 {pid} 2>/dev/null && [ \"$(cut -d')' -f2 /proc/{pid}/stat 2>/dev/null "
          "| cut -c2)\" != Z ]; then echo yes; else echo no; fi")


def detached_command(remote_dir: str, line: str) -> str:
    """The shell command that starts ``line`` in the background, detached from the SSH session.

    Every descriptor of the agent points away from the SSH channel (stdin /dev/null, output to
    agent.out): sshd ends the exec request, and our read of its output returns, only when no
    process holds the channel any more. (A background ``cd DIR && nohup ...`` list runs in a
    subshell that keeps the channel open until the agent exits, so the deployer used to return
    only after the agent had finished -- and traffic made after "deploy" was never seen.)
    setsid gives the agent its own session, so nothing aimed at the login session's process
    group reaches it; the agent writes its own pid (``exec`` keeps it), so agent.pid is the
    agent itself, not a shell around it.
    """
    d = shlex.quote(remote_dir)
    pidfile = shlex.quote(f"{remote_dir}/agent.pid")
    inner = shlex.quote(f"echo $$ > {pidfile} && exec {line}")
    return (f"cd {d} && rm -f {pidfile} && "
            f"{{ nohup setsid sh -c {inner} > {d}/agent.out 2>&1 < /dev/null & }} && "
            # wait for the pid file (the agent writes it first thing), up to 10 s
            f"i=0; while [ ! -s {pidfile} ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; "
            f"cat {pidfile}")


class Deployer:
    """One SSH connection to one host.

    Args:
        host, port, user: where to log in.
        key_filename: private key for public-key login.
        known_hosts: known_hosts file to check the host key against (default ~/.ssh/known_hosts).
        accept_new_host_key: trust an unknown host key (logs its fingerprint) instead of failing.
        remote_dir: absolute directory on the host for the project, venv, token and log.
        python: an existing Python on the host to run the agent with (skips making a venv).
        use_systemd: start with systemd-run (a transient unit) instead of nohup.
    """

    def __init__(self, host: str, port: int = 22, user: str = "root", *,
                 key_filename: str | None = None, known_hosts: str | None = None,
                 accept_new_host_key: bool = False, remote_dir: str = "/opt/packettracer-agent",
                 python: str | None = None, use_systemd: bool = False,
                 connect_timeout: float = 15.0) -> None:
        self.host, self.port, self.user = host, port, user
        self.key_filename = key_filename
        self.known_hosts = known_hosts
        self.accept_new_host_key = accept_new_host_key
        self.remote_dir = remote_dir.rstrip("/")
        self.python = python
        self.use_systemd = use_systemd
        self.connect_timeout = connect_timeout
        self.client: paramiko.SSHClient | None = None

    # ---- ssh -----------------------------------------------------------------------------------
    def connect(self) -> None:
        c = paramiko.SSHClient()
        try:
            if self.known_hosts:
                c.load_host_keys(self.known_hosts)
            else:
                c.load_system_host_keys()
        except OSError as exc:
            raise DeployError(f"cannot read known_hosts {self.known_hosts}: {exc.strerror}") from None
        c.set_missing_host_key_policy(paramiko.AutoAddPolicy() if self.accept_new_host_key
                                      else paramiko.RejectPolicy())
        try:
            c.connect(self.host, self.port, self.user, key_filename=self.key_filename,
                      timeout=self.connect_timeout, banner_timeout=self.connect_timeout,
                      auth_timeout=self.connect_timeout, allow_agent=False,
                      look_for_keys=self.key_filename is None)
        except paramiko.SSHException as exc:
            raise DeployError(f"ssh {self.user}@{self.host}:{self.port}: {exc}") from None
        except OSError as exc:
            raise DeployError(f"ssh {self.host}:{self.port}: {exc.strerror or exc}") from None
        key = c.get_transport().get_remote_server_key()  # type: ignore[union-attr]
        log.info("deploy: connected to %s:%d (host key %s %s)", self.host, self.port,
                 key.get_name(), key.fingerprint)
        self.client = c

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    def __enter__(self) -> "Deployer":
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, command: str, step: str, timeout: float = 600.0) -> str:
        """Run a remote shell command; DeployError with its stderr if it fails."""
        if self.client is None:
            raise DeployError("not connected")
        _, out, err = self.client.exec_command(command, timeout=timeout)
        text = out.read().decode(errors="replace")
        rc = out.channel.recv_exit_status()
        if rc != 0:
            msg = err.read().decode(errors="replace").strip().splitlines()
            raise DeployError(f"{step} on {self.host} failed (exit {rc}): {msg[-1] if msg else ''}")
        return text

    def put(self, data: bytes, remote: str, mode: int = 0o644) -> None:
        assert self.client is not None
        if mode & 0o077 == 0:  # secret: create it empty under umask 077 before writing
            self.run(f"umask 077 && : > {shlex.quote(remote)}", "create " + remote)
        sftp = self.client.open_sftp()
        try:
            # Created with the final mode before any byte is written (the token is secret).
            with sftp.open(remote, "wb") as fh:
                fh.chmod(mode)
                fh.write(data)
        except OSError as exc:
            raise DeployError(f"upload {remote} to {self.host}: {exc}") from None
        finally:
            sftp.close()

    # ---- steps ---------------------------------------------------------------------------------
    def upload_project(self, root: Path = PROJECT_ROOT) -> int:
        data = project_archive(root)
        d = shlex.quote(self.remote_dir)
        self.run(f"mkdir -p {d} && chmod 700 {d}", "mkdir")
        self.put(data, f"{self.remote_dir}/.project.tgz", 0o600)
        self.run(f"tar -xzf {d}/.project.tgz -C {d} && rm -f {d}/.project.tgz", "unpack")
        log.info("deploy: copied %d bytes of project to %s:%s", len(data), self.host, self.remote_dir)
        return len(data)

    def ensure_venv(self) -> str:
        """The Python the agent runs with: the given one, or a venv made from requirements.txt."""
        if self.python:
            self.run(f"{shlex.quote(self.python)} -c 'import websockets, msgspec'", "check python")
            return self.python
        d = shlex.quote(self.remote_dir)
        self.run(f"test -x {d}/.venv/bin/python || python3 -m venv {d}/.venv", "create venv")
        self.run(f"{d}/.venv/bin/pip install --quiet -r {d}/requirements.txt", "pip install", 1800)
        return f"{self.remote_dir}/.venv/bin/python"

    def agent_command(self, python: str, spec: AgentSpec) -> list[str]:
        # main.py gains --agent when the relay CLI is wired in; until then the relay's driver.
        help_text = self.run(f"cd {shlex.quote(self.remote_dir)} && {shlex.quote(python)} main.py --help",
                             "main.py --help")
        entry = ["main.py"] if "--relay-server" in help_text else ["-m", "relay.cli"]
        cmd = [python, *entry, "--agent", "--relay", spec.relay_url,
               "--token-file", f"{self.remote_dir}/agent.token", "--agent-id", spec.agent_id,
               "--no-ui", "--log-file", f"{self.remote_dir}/packettracer.log"]
        if spec.interface:
            cmd += ["-i", spec.interface]
        if spec.tls_cert:
            cmd += ["--tls-cert", f"{self.remote_dir}/relay-cert.pem"]
        return cmd + list(spec.extra_args)

    def start(self, spec: AgentSpec, python: str) -> DeployStatus:
        self.put((spec.token.strip() + "\n").encode(), f"{self.remote_dir}/agent.token", 0o600)
        if spec.tls_cert:
            self.put(Path(spec.tls_cert).read_bytes(), f"{self.remote_dir}/relay-cert.pem")
        cmd = self.agent_command(python, spec)
        line = " ".join(shlex.quote(c) for c in cmd)
        d = shlex.quote(self.remote_dir)
        if self.use_systemd:
            unit = f"packettracer-agent-{spec.agent_id}"
            self.run(f"systemd-run --unit={shlex.quote(unit)} --collect --working-directory={d} "
                     f"--property=Restart=on-failure {line}", "systemd-run")
            pid_text = self.run(f"systemctl show -p MainPID --value {shlex.quote(unit)}", "systemctl")
        else:
            pid_text = self.run(detached_command(self.remote_dir, line), "start agent")
        log.info("deploy: started agent %s on %s: %s", spec.agent_id, self.host, line)
        return self.status(command=line, pid=int(pid_text.strip() or 0) or None)

    def status(self, command: str = "", pid: int | None = None) -> DeployStatus:
        d = shlex.quote(self.remote_dir)
        if pid is None:
            text = self.run(f"cat {d}/agent.pid 2>/dev/null || true", "read pid").strip()
            pid = int(text) if text.isdigit() else None
        running = False
        if pid:
            running = self.run(_ALIVE.format(pid=int(pid)), "status").strip() == "yes"
        tail = self.run(f"tail -n 20 {d}/agent.out 2>/dev/null || true", "read log")
        return DeployStatus(self.host, self.remote_dir, pid, running, command, tail)

    def stop_agent(self) -> bool:
        st = self.status()
        if st.pid and st.running:
            self.run(f"kill {st.pid}", "stop agent")
            return True
        return False

    def deploy(self, spec: AgentSpec) -> DeployStatus:
        """Copy the project, make (or reuse) the venv, start the agent; its status."""
        self.upload_project()
        python = self.ensure_venv()
        return self.start(spec, python)


def main(argv: list[str] | None = None) -> int:
    from relay.tokens import agent_token
    ap = argparse.ArgumentParser(prog="relay.deploy.deployer", description="deploy a relay agent over SSH")
    ap.add_argument("--host", required=True)
    ap.add_argument("--port", type=int, default=22)
    ap.add_argument("--user", default="root")
    ap.add_argument("--key")
    ap.add_argument("--known-hosts")
    ap.add_argument("--accept-new-host-key", action="store_true")
    ap.add_argument("--relay", required=True)
    ap.add_argument("--token-file", required=True)
    ap.add_argument("--tls-cert")
    ap.add_argument("--agent-id", required=True)
    ap.add_argument("-i", "--interface")
    ap.add_argument("--remote-dir", default="/opt/packettracer-agent")
    ap.add_argument("--python", help="existing Python on the host (skip making a venv)")
    ap.add_argument("--systemd", action="store_true")
    ap.add_argument("extra", nargs="*", help="more agent arguments (after --)")
    a = ap.parse_args(argv)
    try:
        spec = AgentSpec(a.relay, agent_token(a.agent_id, a.token_file), a.agent_id, a.interface,
                         a.tls_cert, a.extra)
        with Deployer(a.host, a.port, a.user, key_filename=a.key, known_hosts=a.known_hosts,
                      accept_new_host_key=a.accept_new_host_key, remote_dir=a.remote_dir,
                      python=a.python, use_systemd=a.systemd) as dep:
            st = dep.deploy(spec)
    except RelayError as exc:
        print(f"deploy: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(asdict(st)))
    return 0 if st.running else 1


if __name__ == "__main__":
    sys.exit(main())
