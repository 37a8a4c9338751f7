"""A headless file read in two processes (sidecar.py) ends with the same results as in one.

The second process runs the packet-side trackers (packet statistics, hops, DNS, devices). Every
export section must be the same as a one-process run's: on the real captures, when the run is
interrupted, and when the second process dies on the way.
"""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

import config
import main
from capture.reader import CaptureFile
from sidecar import AUTO_MIN_BYTES, jobs_for
from tests.conftest import CAPTURE_FILES, expected_for, repeat_capture
from tmux_pane import Pane, pane  # noqa: F401 (pane: the fixture)

ROOT = Path(__file__).resolve().parent.parent
READABLE = [p for p in CAPTURE_FILES if expected_for(p)["readable"]]
PACKET_SIDE_SECTIONS = ("stats", "dns", "devices")


def export(capture: Path, tmp_path: Path, jobs: int, *extra: str) -> tuple[int, dict]:
    out = tmp_path / f"out{jobs}.json"
    rc = main.run(["-r", str(capture), "--no-ui", "--no-db", "--offline", "--jobs", str(jobs),
                   "--log-file", str(tmp_path / "log"), "--export-json", str(out), *extra])
    return rc, json.loads(out.read_text())


def test_every_capture_exports_the_same_in_two_processes(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    differ = []
    for capture in READABLE:
        rc1, one = export(capture, tmp_path, 1)
        rc2, two = export(capture, tmp_path, 2)
        assert rc1 == rc2 == 0, capture.name
        # the second run's results came from the second process, not from the fallback
        assert capsys.readouterr().out.count("processes: 2") == 1, capture.name
        if one != two:
            differ.append((capture.name, [k for k in one if one[k] != two.get(k)]))
    assert differ == []


def test_summary_names_the_second_process(tmp_path: Path) -> None:
    capture = next(p for p in READABLE if p.name.startswith("dns-dnscat"))
    # a path relative to where the user is (the second process must read the same file)
    cmd = [sys.executable, str(ROOT / "main.py"), "-r", capture.name, "--no-ui", "--no-db",
           "--offline", "--log-file", str(tmp_path / "log")]
    two = subprocess.run(cmd + ["--jobs", "2"], capture_output=True, text=True, timeout=60,
                         cwd=capture.parent)
    one = subprocess.run(cmd + ["--jobs", "1"], capture_output=True, text=True, timeout=60,
                         cwd=capture.parent)
    assert two.returncode == one.returncode == 0
    assert "processes: 2" in two.stdout
    assert "processes: 1" in one.stdout
    # everything else in the summary is the same
    strip = [ln for ln in two.stdout.splitlines() if not ln.startswith("processes:")]
    assert strip == [ln for ln in one.stdout.splitlines() if not ln.startswith("processes:")]


def test_database_gets_the_same_rows_from_two_processes(tmp_path: Path) -> None:
    """The packet side's rows (DNS queries, devices) reach the database after the merge."""
    capture = next(p for p in READABLE if p.name == "http-dns-wikipedia-browse.pcap")
    counts = []
    for jobs in (1, 2):
        db = tmp_path / f"{jobs}.db"
        rc = main.run(["-r", str(capture), "--no-ui", "--offline", "--db", str(db),
                       "--jobs", str(jobs), "--log-file", str(tmp_path / "log")])
        assert rc == 0
        with sqlite3.connect(db) as conn:
            counts.append({t: conn.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall()
                           for t in ("dns_queries", "devices", "flows")})
    one, two = counts
    assert one["dns_queries"] and one["devices"]
    # the rows' own ids and session ids are the same too: each database holds one session
    assert one == two


def _big_capture(tmp_path: Path, copies: int) -> Path:
    """A long capture from a real one (500 frames a copy)."""
    src = next(p for p in READABLE if p.name == "mobile-android-mix.pcap")
    return repeat_capture(src, copies, tmp_path / "long.pcapng")


def _packet_side(doc: dict) -> dict:
    return {k: doc.get(k) for k in PACKET_SIDE_SECTIONS}


def test_interrupted_run_matches_one_process_over_the_same_packets(tmp_path: Path) -> None:
    """Ctrl+C mid-file: both processes stop at the same frame, so the packet side equals a
    one-process run told to read exactly the packets the interrupted run counted."""
    big = _big_capture(tmp_path, 600)  # 300k packets: ~10 s of work, stopped after ~1.5
    out = tmp_path / "int.json"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "main.py"), "-r", str(big), "--no-ui", "--no-db", "--offline",
         "--jobs", "2", "--log-file", str(tmp_path / "log"), "--export-json", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    assert proc.stderr is not None
    assert "reading" in proc.stderr.readline()
    time.sleep(1.5)
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl+C: the whole process group
    proc.communicate(timeout=60)
    assert proc.returncode == 0  # the first Ctrl+C stops, flushes and exports
    two = json.loads(out.read_text())
    n = two["meta"]["packets"]
    total = sum(1 for _ in CaptureFile(big))
    assert 0 < n < total, "the run was not interrupted mid-file"
    rc, one = export(big, tmp_path, 1, "-c", str(n))
    assert rc == 0 and one["meta"]["packets"] == n
    assert _packet_side(two) == _packet_side(one)
    assert two["flows"] == one["flows"]


def test_damaged_file_ends_both_processes_at_the_damage(tmp_path: Path) -> None:
    big = _big_capture(tmp_path, 60)
    cut = tmp_path / "cut.pcapng"
    cut.write_bytes(big.read_bytes()[: big.stat().st_size * 2 // 3])  # mid-block
    rc1, one = export(cut, tmp_path, 1)
    rc2, two = export(cut, tmp_path, 2)
    assert rc1 == rc2 == 0
    assert two["meta"]["file_damage"] and 0 < two["meta"]["packets"] < 30000
    assert two == one


def test_second_process_killed_midway_still_gives_every_result(tmp_path: Path) -> None:
    big = _big_capture(tmp_path, 120)
    out = tmp_path / "killed.json"
    log = tmp_path / "log"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "main.py"), "-r", str(big), "--no-ui", "--no-db", "--offline",
         "--jobs", "2", "--log-file", str(log), "--export-json", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    assert "reading" in proc.stderr.readline()
    deadline = time.monotonic() + 20
    children: list[psutil.Process] = []
    while not children and time.monotonic() < deadline:
        children = psutil.Process(proc.pid).children()
        time.sleep(0.05)
    assert children, "no second process was started"
    children[0].kill()
    stdout, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0
    assert "processes: 1 (packet-side process lost" in stdout
    rc, one = export(big, tmp_path, 1)
    assert rc == 0
    assert json.loads(out.read_text()) == one


def test_automatic_choice_needs_a_big_file_and_two_cores(tmp_path: Path) -> None:
    small = tmp_path / "small.pcap"
    small.write_bytes(b"\0" * 1000)
    big = tmp_path / "big.pcap"
    with big.open("wb") as f:
        f.truncate(AUTO_MIN_BYTES)
    assert jobs_for(str(small), 0) == 1
    assert jobs_for(str(big), 0) == (2 if (os.cpu_count() or 1) >= 2 else 1)
    assert jobs_for(str(small), 2) == 2
    assert jobs_for(str(big), 1) == 1


def test_bad_jobs_setting_is_one_line_error(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[capture]\nfile_read_jobs = 3\n")
    r = subprocess.run([sys.executable, str(ROOT / "main.py"), "--config", str(cfg), "-r",
                        str(READABLE[0]), "--no-ui", "--no-db", "--offline",
                        "--log-file", str(tmp_path / "log")], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode != 0
    assert r.stderr.strip().count("\n") == 0 and "FILE_READ_JOBS" in r.stderr
    with pytest.raises(config.ConfigError):
        config.load_settings({"FILE_READ_JOBS": 5})


def _db_rows(db: Path) -> dict[str, list[tuple]]:
    with sqlite3.connect(db) as conn:
        return {t: conn.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall()
                for t in ("dns_queries", "devices")}


def test_dashboard_reads_a_file_in_two_processes(pane: Pane, tmp_path: Path) -> None:
    """In the dashboard the packet side arrives as snapshots while the file is read, and whole
    once "capture finished" shows: the Stats view counts every packet, and the database gets
    the same DNS and device rows as a one-process headless run."""
    big = _big_capture(tmp_path, 600)  # 300k packets: several seconds, so several snapshots
    log = tmp_path / "dash.log"
    pane.keys(f"{ROOT}/run.sh -r {big} --jobs 2 --offline --db {tmp_path / 'two.db'} -v "
              f"--log-file {log}; echo DASH_EXIT=$?", "Enter")
    pane.wait_for("capture finished", timeout=90)
    pane.keys("3")  # Stats
    screen = pane.wait_for("capture packets")
    assert "capture packets  300000" in " ".join(screen.split()).replace(" 300000", "  300000")
    pane.keys("q")
    pane.wait_for("DASH_EXIT=0")
    text = log.read_text()
    taken = [ln for ln in text.splitlines() if "packet side of 300000 frames taken over" in ln]
    assert taken and "after 0 snapshots" not in taken[0], text
    rc = main.run(["-r", str(big), "--no-ui", "--offline", "--jobs", "1",
                   "--db", str(tmp_path / "one.db"), "--log-file", str(tmp_path / "log")])
    assert rc == 0
    one, two = _db_rows(tmp_path / "one.db"), _db_rows(tmp_path / "two.db")
    assert one["dns_queries"] and one["devices"]
    assert one == two
