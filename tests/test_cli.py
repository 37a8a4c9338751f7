"""The user's mistakes, each on the real CLI in a subprocess: one line, non-zero exit, no traceback."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import CAPTURES, ROOT, require_root

MAIN = str(ROOT / "main.py")


def cli(*args: str, env: dict | None = None, user: str | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess:
    cmd = [sys.executable, MAIN, *args]
    if user:
        cmd = ["setpriv", f"--reuid={user}", f"--regid=nogroup", "--clear-groups", *cmd]
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=e)


def one_line_error(r: subprocess.CompletedProcess, *needles: str) -> None:
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_missing_file(tmp_path: Path) -> None:
    one_line_error(cli("-r", str(tmp_path / "nope.pcap"), "--no-ui", "--log-file", str(tmp_path / "l")),
                   "nope.pcap", "no such")


def test_not_a_capture_and_unsupported_version(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pcap"
    junk.write_text("hello world, not a capture\n")
    one_line_error(cli("-r", str(junk), "--no-ui", "--log-file", str(tmp_path / "l")), "junk.pcap")
    one_line_error(cli("-r", str(CAPTURES / "invalid-pcap-version.pcap"), "--no-ui",
                       "--log-file", str(tmp_path / "l")), "unsupported pcap version")


def test_unknown_link_type(tmp_path: Path) -> None:
    import struct
    f = tmp_path / "lt.pcap"
    f.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 147) +
                  struct.pack("<IIII", 0, 0, 4, 4) + b"abcd")
    one_line_error(cli("-r", str(f), "--no-ui", "--log-file", str(tmp_path / "l")), "link type 147")


def test_truncated_file_keeps_and_reports_packets(tmp_path: Path) -> None:
    src = (CAPTURES / "http-espn-browse.pcapng").read_bytes()
    cut = tmp_path / "cut.pcapng"
    cut.write_bytes(src[:200000])
    out = tmp_path / "o.json"
    r = cli("-r", str(cut), "--no-ui", "--no-db", "--offline", "--export-json", str(out),
            "--log-file", str(tmp_path / "l"))
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    n = doc["meta"]["packets"]
    assert 0 < n < 956
    assert "truncated" in r.stderr and f"after {n} packets" in r.stderr
    assert "Traceback" not in r.stderr


def test_unknown_interface(tmp_path: Path) -> None:
    require_root()
    one_line_error(cli("-i", "nosuchif0", "--no-ui", "--no-db", "--log-file", str(tmp_path / "l")),
                   "unknown interface 'nosuchif0'", "lo")


def test_bad_bpf_filter(tmp_path: Path) -> None:
    require_root()
    one_line_error(cli("-i", "lo", "-f", "tcp port notaport", "--no-ui", "--no-db",
                       "--log-file", str(tmp_path / "l")), "invalid BPF filter 'tcp port notaport'")


def test_live_capture_without_root(tmp_path: Path) -> None:
    require_root()  # to be able to drop to 'nobody'
    r = cli("-i", "lo", "--no-ui", "--no-db", "--log-file", "/tmp/pt-nobody.log", user="nobody")
    one_line_error(r, "sudo", "-r")


def test_unwritable_write_path(tmp_path: Path) -> None:
    one_line_error(cli("-r", str(CAPTURES / "dns-nxdomain.pcapng"), "--no-ui", "--no-db",
                       "-w", str(tmp_path / "missing-dir" / "x.pcapng"),
                       "--log-file", str(tmp_path / "l")), "cannot write capture file")


def test_bad_config_file(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[flows]\nflow_timeout = 'soon'\n")
    one_line_error(cli("--config", str(cfg), "--list"), "FLOW_TIMEOUT must be int")
    cfg.write_text("[flows]\nnot_a_key = 1\n")
    one_line_error(cli("--config", str(cfg), "--list"), "unknown key 'not_a_key'")


def test_headless_summary_and_write_round_trip(tmp_path: Path) -> None:
    out = tmp_path / "copy.pcapng"
    r = cli("-r", str(CAPTURES / "http-espn-browse.pcapng"), "--no-ui", "--no-db", "--offline",
            "-w", str(out), "--log-file", str(tmp_path / "l"))
    assert r.returncode == 0, r.stderr
    assert "packets:   956" in r.stdout and "protocols:" in r.stdout
    r2 = cli("-r", str(out), "--no-ui", "--no-db", "--offline", "--count", "100",
             "--log-file", str(tmp_path / "l"))
    assert r2.returncode == 0 and "packets:   100" in r2.stdout


def test_list_interfaces() -> None:
    r = cli("--list")
    assert r.returncode == 0
    assert any(line.split()[1:2] == ["lo"] or line.split()[:1] == ["lo"] for line in r.stdout.splitlines())


@pytest.mark.parametrize("sig", [2, 15])
def test_signal_stops_cleanly_and_exports(tmp_path: Path, sig: int) -> None:
    out = tmp_path / "o.json"
    p = subprocess.Popen([sys.executable, MAIN, "-r", str(CAPTURES / "http-espn-browse.pcapng"),
                          "--realtime", "--no-ui", "--no-db", "--offline", "--export-json", str(out),
                          "--log-file", str(tmp_path / "l")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    import time
    assert "packettracer: reading" in p.stderr.readline()
    time.sleep(1.0)  # the capture replays for ~2 s: stop it in the middle
    p.send_signal(sig)
    so, se = p.communicate(timeout=30)
    assert p.returncode == 0, se
    assert "Traceback" not in se
    doc = json.loads(out.read_text())
    assert 0 < doc["meta"]["packets"] < 956
