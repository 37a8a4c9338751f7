"""Faults the database survives: SIGKILL mid-write, disk full, read-only locations, purge."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from conftest import ROOT, require, require_root, require_tool
from db.connection import ConnectionPool
from db.errors import DatabaseReadOnlyError
from db.repositories.flow_repo import FlowRepository
from db.repositories.session_repo import SessionRepository
from db.writer import DatabaseWriter

CHILD = textwrap.dedent("""
    import sys
    from db.connection import ConnectionPool
    from db.repositories.session_repo import SessionRepository
    from db.writer import DatabaseWriter

    pool = ConnectionPool(sys.argv[1])
    sid = SessionRepository(pool).start("file", "long-import.pcap")
    writer = DatabaseWriter(pool, batch_size=100, flush_ms=10).start()
    i = 0
    while True:
        for _ in range(250):
            # flow i carries bytes_sent = i; flow "counter" is updated in place every time
            writer.upsert_flow(sid, {"flow_key": f"UDP|10.0.0.1|{i}|10.0.0.2|53", "protocol": "UDP",
                                     "src_ip": "10.0.0.1", "src_port": i % 65536,
                                     "dst_ip": "10.0.0.2", "dst_port": 53, "bytes_sent": i,
                                     "first_seen": float(i), "last_seen": float(i)})
            writer.upsert_flow(sid, {"flow_key": "counter", "protocol": "UDP", "src_ip": "10.0.0.9",
                                     "dst_ip": "10.0.0.2", "packets_sent": i + 1,
                                     "first_seen": 0.0, "last_seen": float(i)})
            i += 1
        if writer.flush(30):
            print(sid, i, flush=True)
""")


def _flow(i: int, pad: int = 0) -> dict[str, Any]:
    row: dict[str, Any] = {"flow_key": f"TCP|10.1.0.1|{i}|10.1.0.2|80", "protocol": "TCP",
                           "src_ip": "10.1.0.1", "src_port": i, "dst_ip": "10.1.0.2",
                           "dst_port": 80, "bytes_sent": i, "first_seen": float(i),
                           "last_seen": float(i)}
    if pad:
        row["payload_note"] = "x" * pad  # lands in the extra JSON column
    return row


def test_sigkill_during_a_long_import_keeps_everything_flushed(tmp_path: Path) -> None:
    path = tmp_path / "data.db"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, str(script), str(path)], stdout=subprocess.PIPE,
                             text=True, env=env, cwd=ROOT)
    assert child.stdout is not None
    last = (0, 0)
    try:
        for line in child.stdout:   # each line: everything before it is committed
            sid, n = map(int, line.split())
            last = (sid, n)
            if n >= 20000:
                break
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait(10)
    assert child.returncode == -signal.SIGKILL
    sid, flushed = last
    assert flushed >= 20000, "the child never reported a flush"

    pool = ConnectionPool(path)   # opens (WAL recovery) without complaint
    with pool.reader() as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("SELECT count(*) FROM flows WHERE session_id = ? AND flow_key != "
                            "'counter' AND bytes_sent < ?", (sid, flushed)).fetchone()[0] == flushed
        counter = conn.execute("SELECT packets_sent FROM flows WHERE flow_key = 'counter'").fetchone()
        assert counter[0] >= flushed
    session = SessionRepository(pool).get(sid)
    assert session is not None and session["ended_at"] is None   # killed: never closed
    pool.close()


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Any]:
    """Mount small tmpfs file systems under tmp_path; unmounted afterwards."""
    require_root()
    require_tool("mount", "umount")
    mounts: list[Path] = []

    def make(name: str, size: str) -> Path:
        where = tmp_path / name
        where.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                        str(where)], check=True)
        mounts.append(where)
        return where

    yield make
    for where in reversed(mounts):
        subprocess.run(["umount", "-l", str(where)], check=False)


def _remount(where: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(where)], check=True)


def test_disk_full_stops_persisting_without_blocking_capture(tmpfs: Any) -> None:
    where = tmpfs("small", "1m")
    path = where / "data.db"
    pool = ConnectionPool(path)
    sid = SessionRepository(pool).start("live", "eth0")
    writer = DatabaseWriter(pool, batch_size=50, flush_ms=5).start()
    for i in range(100):
        writer.upsert_flow(sid, _flow(i))
    assert writer.flush(10)
    committed = 100

    # the producer: never raises, never waits long, whatever the writer is going through
    worst = 0.0
    i = committed
    deadline = time.monotonic() + 30
    while not writer.stats()["state"].startswith("stopped") and time.monotonic() < deadline:
        t0 = time.perf_counter()
        writer.upsert_flow(sid, _flow(i, pad=800))
        worst = max(worst, time.perf_counter() - t0)
        i += 1
        if i % 500 == 0:
            writer.flush(5)
    stats = writer.stats()
    assert stats["state"] == "stopped: disk full"
    assert str(path) in stats["error"]
    assert worst < 0.05, f"a producer call took {worst * 1000:.1f} ms"
    before = writer.stats()["dropped"]
    for j in range(1000):                       # capture goes on; the writer only counts
        writer.upsert_flow(sid, _flow(i + j))
    writer.submit(lambda conn: None)
    assert writer.stats()["dropped"] == before + 1001
    assert writer.flush(1) is False
    writer.close()
    pool.close()

    # on the still-full disk the file reads back intact with what was committed
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    stored = conn.execute("SELECT count(*) FROM flows WHERE bytes_sent < ?", (committed,)).fetchone()
    assert stored[0] == committed
    conn.close()
    # with space again it opens for writing as usual
    _remount(where, "size=16m")
    pool = ConnectionPool(path)
    flows = FlowRepository(pool)
    assert flows.count(sid) >= committed
    writer = DatabaseWriter(pool).start()
    writer.upsert_flow(sid, _flow(10**6))
    assert writer.flush(10) and writer.stats()["state"] == "ok"
    writer.close()
    pool.close()


def test_read_only_location_is_a_clear_error(tmpfs: Any) -> None:
    where = tmpfs("ro", "1m")
    _remount(where, "ro")
    with pytest.raises(DatabaseReadOnlyError) as info:
        ConnectionPool(where / "sub" / "data.db")
    assert "read-only" in str(info.value) and "--db" in str(info.value)


def test_existing_database_on_a_read_only_mount_is_a_clear_error(tmpfs: Any) -> None:
    where = tmpfs("was_rw", "1m")
    path = where / "data.db"
    pool = ConnectionPool(path)
    SessionRepository(pool).start("live", "eth0")
    pool.close()
    content = path.read_bytes()
    _remount(where, "ro")
    with pytest.raises(DatabaseReadOnlyError) as info:
        ConnectionPool(path)
    assert str(path) in str(info.value)
    assert path.read_bytes() == content


def test_immutable_file_is_a_clear_error(tmp_path: Path) -> None:
    require_root()
    require_tool("chattr")
    path = tmp_path / "data.db"
    ConnectionPool(path).close()
    immutable = subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0
    require(immutable, "file system without immutable files (chattr +i)")
    try:
        with pytest.raises(DatabaseReadOnlyError):
            ConnectionPool(path)
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_retention_purges_old_sessions_with_their_rows(tmp_path: Path) -> None:
    pool = ConnectionPool(tmp_path / "d.db")
    sessions = SessionRepository(pool)
    now = time.time()
    old = sessions.start("live", "eth0", started_at=now - 40 * 86400)
    sessions.close(old, now - 40 * 86400 + 60, packets=10, bytes=1000, flows=1)
    killed = sessions.start("live", "eth0", started_at=now - 31 * 86400)   # never closed
    recent = sessions.start("file", "x.pcap", started_at=now - 2 * 86400)
    writer = DatabaseWriter(pool).start()
    for sid in (old, killed, recent):
        writer.upsert_flow(sid, _flow(1))
        writer.upsert_ports(sid, [{"port": 80, "protocol": "TCP", "packets": 1, "bytes": 60}])
        writer.add_alert(sid, {"id": 1, "ts": now, "severity": "low", "rule_id": "r",
                               "message": "m"})
    writer.close()
    assert sessions.purge_older_than(30, now=now) == 2
    assert [s["id"] for s in sessions.list()] == [recent]
    with pool.reader() as conn:
        for table in ("flows", "port_stats", "alerts"):
            left = conn.execute(f"SELECT DISTINCT session_id FROM {table}").fetchall()
            assert left == [(recent,)], table
    assert sessions.purge_older_than(0, now=now) == 0   # 0 = keep forever
    pool.close()
