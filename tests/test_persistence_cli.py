"""Sessions survive: stored by a run, listed, exported again; and the faults a database meets."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import CAPTURES, ROOT, require_root

MAIN = str(ROOT / "main.py")
ESPN = CAPTURES / "http-espn-browse.pcapng"


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, MAIN, *args], capture_output=True, text=True,
                          timeout=timeout)


def _unmount(path: Path) -> None:
    if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)  # busy: detach lazily


def _flows_by_key(doc: dict) -> dict:
    return {f["flow_key"]: (f["packets_sent"], f["packets_recv"], f["bytes_sent"], f["bytes_recv"])
            for f in doc["flows"]}


def test_stored_session_lists_and_exports_like_the_live_run(tmp_path: Path) -> None:
    db = tmp_path / "pt" / "data.db"
    live = tmp_path / "live.json"
    r = cli("-r", str(ESPN), "--no-ui", "--offline", "--db", str(db), "--export-json", str(live),
            "--log-file", str(tmp_path / "log"))
    assert r.returncode == 0, r.stderr
    assert oct(db.stat().st_mode & 0o777) == "0o600"
    assert oct(db.parent.stat().st_mode & 0o777) == "0o700"
    listing = cli("--db", str(db), "--sessions", "--log-file", str(tmp_path / "log"))
    assert listing.returncode == 0
    row = [l for l in listing.stdout.splitlines() if l.strip().startswith("1 ")]
    assert row and "956" in row[0] and "652181" in row[0] and ESPN.name[-20:] in row[0]
    stored = tmp_path / "stored.json"
    r = cli("--db", str(db), "--session", "1", "--export-json", str(stored),
            "--log-file", str(tmp_path / "log"))
    assert r.returncode == 0, r.stderr
    a, b = json.loads(live.read_text()), json.loads(stored.read_text())
    assert _flows_by_key(a) == _flows_by_key(b)
    assert b["meta"]["packets"] == 956 and b["meta"]["ended_at"]
    assert sorted(d["qname"] for d in a["dns"]) == sorted(d["qname"] for d in b["dns"])
    assert {(p["port"], p["proto"], p["packets"]) for p in a["ports"]} == \
        {(p["port"], p["proto"], p["packets"]) for p in b["ports"]}
    csv_out = tmp_path / "stored.csv"
    assert cli("--db", str(db), "--session", "1", "--export-csv", str(csv_out)).returncode == 0
    lines = csv_out.read_text().splitlines()
    assert lines[0].startswith("flow_key,") and len(lines) == 1 + len(a["flows"])
    missing = cli("--db", str(db), "--session", "99", "--export-json", str(stored))
    assert missing.returncode != 0 and "no session 99" in missing.stderr


def test_sigterm_flushes_and_closes_the_session(tmp_path: Path) -> None:
    db = tmp_path / "data.db"
    p = subprocess.Popen([sys.executable, MAIN, "-r", str(ESPN), "--realtime", "--no-ui", "--offline",
                          "--db", str(db), "--log-file", str(tmp_path / "log")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert "packettracer: reading" in p.stderr.readline()
    time.sleep(1.0)  # the file replays for ~2 s: stop it in the middle
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    con = sqlite3.connect(db)
    sid, ended, packets, flows = con.execute(
        "SELECT id, ended_at, packets, flows FROM sessions").fetchone()
    assert ended is not None and 0 < packets < 956
    stored = con.execute("SELECT SUM(packets_sent + packets_recv) FROM flows WHERE session_id=?",
                         (sid,)).fetchone()[0]
    assert stored == packets  # every packet counted in a flow reached the database


def test_sigkill_mid_import_leaves_a_sound_database(tmp_path: Path) -> None:
    from bench.gen_capture import generate
    cap = tmp_path / "big.pcap"
    generate(cap, 300_000, 20_000)
    db = tmp_path / "data.db"
    p = subprocess.Popen([sys.executable, MAIN, "-r", str(cap), "--no-ui", "--offline", "--db", str(db),
                          "--log-file", str(tmp_path / "log")],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    flows = 0
    while time.monotonic() < deadline and flows < 100:
        time.sleep(0.2)
        try:
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
            flows = con.execute("SELECT COUNT(*) FROM flows").fetchone()[0]
            con.close()
        except sqlite3.Error:
            continue
    p.send_signal(signal.SIGKILL)
    p.wait(10)
    assert flows >= 100, "no flows were committed before the kill"
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert con.execute("SELECT COUNT(*) FROM flows").fetchone()[0] >= flows
    # The killed session is still listed (without an end time) and the next run works.
    r = cli("--db", str(db), "--sessions")
    assert r.returncode == 0 and " 1 " in r.stdout


def test_corrupt_database_is_never_overwritten(tmp_path: Path) -> None:
    db = tmp_path / "data.db"
    db.write_bytes(b"definitely not sqlite" * 100)
    before = db.read_bytes()
    r = cli("-r", str(ESPN), "--no-ui", "--offline", "--db", str(db), "--log-file", str(tmp_path / "l"))
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert str(db) in r.stderr and "--no-db" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert db.read_bytes() == before
    assert cli("-r", str(ESPN), "--no-ui", "--offline", "--no-db").returncode == 0


def test_two_instances_share_one_database(tmp_path: Path) -> None:
    db = tmp_path / "data.db"
    args = ["-r", str(ESPN), "--realtime", "--no-ui", "--offline", "--db", str(db),
            "--log-file", str(tmp_path / "l")]
    procs = [subprocess.Popen([sys.executable, MAIN, *args], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    con = sqlite3.connect(db)
    rows = con.execute("SELECT packets, flows FROM sessions ORDER BY id").fetchall()
    assert rows == [(956, 39), (956, 39)]


def test_read_only_location_is_a_clear_error(tmp_path: Path) -> None:
    require_root()
    ro = tmp_path / "ro"
    ro.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(ro)], check=True)
    try:
        r = cli("-r", str(ESPN), "--no-ui", "--offline", "--db", str(ro / "x" / "data.db"),
                "--log-file", str(tmp_path / "l"))
        assert r.returncode != 0 and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "read-only" in r.stderr.lower()
    finally:
        _unmount(ro)


def test_disk_full_keeps_capturing_in_memory(tmp_path: Path) -> None:
    require_root()
    from bench.gen_capture import generate
    cap = tmp_path / "big.pcap"
    generate(cap, 60_000, 20_000)
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(small)], check=True)
    try:
        out = tmp_path / "o.json"
        r = cli("-r", str(cap), "--no-ui", "--offline", "--db", str(small / "data.db"),
                "--export-json", str(out), "--log-file", str(tmp_path / "l"))
        assert r.returncode == 0, r.stderr
        doc = json.loads(out.read_text())
        assert doc["meta"]["packets"] == 60_000  # capture went on in memory
        assert doc["meta"]["persistence"].startswith("db stopped") and "full" in doc["meta"]["persistence"]
        con = sqlite3.connect(small / "data.db")
        try:
            assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        finally:
            con.close()
    finally:
        _unmount(small)


def test_alerts_are_stored_with_their_repeat_count(tmp_path: Path) -> None:
    db = tmp_path / "data.db"
    live = tmp_path / "live.json"
    r = cli("-r", str(CAPTURES / "portscan-nmap-syn.pcapng"), "--no-ui", "--offline", "--db", str(db),
            "--export-json", str(live), "--log-file", str(tmp_path / "l"))
    assert r.returncode == 0, r.stderr
    stored = tmp_path / "stored.json"
    assert cli("--db", str(db), "--session", "1", "--export-json", str(stored)).returncode == 0
    a = json.loads(live.read_text())["alerts"]
    b = json.loads(stored.read_text())["alerts"]
    assert [(x["rule_id"], x["src"], x["count"]) for x in a] == \
        [(x["rule_id"], x["src"], x["count"]) for x in b]
    assert a and a[0]["rule_id"] == "port_scan" and a[0]["src"] == "172.16.0.8"
