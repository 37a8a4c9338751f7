"""ConnectionPool on real SQLite files: modes, WAL concurrency, refusing bad files."""
from __future__ import annotations

import os
import sqlite3
import stat
import threading
from pathlib import Path

import pytest

from conftest import require_root
from db.connection import ConnectionPool, default_db_path
from db.errors import DatabaseCorruptError, DatabaseVersionError
from db.repositories.session_repo import SessionRepository
from db.schema import CURRENT_VERSION


def test_creates_private_folder_and_file(tmp_path: Path) -> None:
    path = tmp_path / "home" / ".packettracer" / "data.db"
    old = os.umask(0o022)  # a typical umask must not widen what we create
    try:
        pool = ConnectionPool(path)
    finally:
        os.umask(old)
    pool.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_wal_and_pragmas(tmp_path: Path) -> None:
    with ConnectionPool(tmp_path / "d.db", read_pool_size=2) as pool:
        with pool.writer() as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
            assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        with pool.reader() as conn:
            assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
            with pytest.raises(sqlite3.OperationalError):  # readers are query-only
                conn.execute("DELETE FROM sessions")


def test_default_path_is_the_invoking_users_home_under_sudo(monkeypatch: pytest.MonkeyPatch,
                                                           tmp_path: Path) -> None:
    require_root()
    import pwd
    nobody = pwd.getpwnam("nobody")
    monkeypatch.setenv("SUDO_USER", "nobody")
    assert default_db_path() == Path(nobody.pw_dir) / ".packettracer" / "data.db"
    # the folder and file created under sudo belong to that user
    monkeypatch.setenv("SUDO_UID", str(nobody.pw_uid))
    monkeypatch.setenv("SUDO_GID", str(nobody.pw_gid))
    path = tmp_path / "sudo" / "data.db"
    ConnectionPool(path).close()
    assert path.stat().st_uid == nobody.pw_uid
    assert path.parent.stat().st_uid == nobody.pw_uid


def test_reader_reads_committed_data_while_the_writer_holds_a_transaction(tmp_path: Path) -> None:
    pool = ConnectionPool(tmp_path / "d.db", read_pool_size=2)
    sessions = SessionRepository(pool)
    sessions.start("live", "eth0")
    in_txn = threading.Event()
    release = threading.Event()
    done = threading.Event()

    def long_write() -> None:
        with pool.transaction() as conn:
            conn.execute("INSERT INTO sessions (started_at, interface) VALUES (1, 'uncommitted')")
            in_txn.set()
            release.wait(10)
        done.set()

    t = threading.Thread(target=long_write)
    t.start()
    assert in_txn.wait(10)
    # the reader neither blocks on the open write transaction nor sees its rows
    seen = [s["interface"] for s in sessions.list()]
    assert seen == ["eth0"]
    assert not done.is_set()
    release.set()
    t.join(10)
    assert sorted(s["interface"] for s in sessions.list()) == ["eth0", "uncommitted"]
    pool.close()


def test_readers_are_checked_out_exclusively(tmp_path: Path) -> None:
    pool = ConnectionPool(tmp_path / "d.db", read_pool_size=2)
    with pool.reader() as a, pool.reader() as b:
        assert a is not b
        got: list[sqlite3.Connection] = []
        t = threading.Thread(target=lambda: got.append(pool.reader().__enter__()))
        t.start()
        t.join(0.2)
        assert t.is_alive() and not got  # a third reader waits for one to come back
    t.join(10)
    assert got and got[0] in (a, b)
    pool.close()


def test_second_pool_on_the_same_file(tmp_path: Path) -> None:
    path = tmp_path / "d.db"
    first = ConnectionPool(path)
    second = ConnectionPool(path)
    a = SessionRepository(first).start("live", "eth0")
    b = SessionRepository(second).start("file", "x.pcap")
    assert a != b
    assert {s["id"] for s in SessionRepository(first).list()} == {a, b}
    assert {s["id"] for s in SessionRepository(second).list()} == {a, b}
    first.close()
    second.close()


@pytest.mark.parametrize("content", [
    b"this is my shopping list, not a database\n" * 20,
    b"\x00" * 4096,
    # a real SQLite header followed by garbage pages
    b"SQLite format 3\x00" + bytes(range(256)) * 32,
])
def test_non_sqlite_or_damaged_file_is_refused_and_left_untouched(tmp_path: Path,
                                                                  content: bytes) -> None:
    path = tmp_path / "data.db"
    path.write_bytes(content)
    before = path.stat()
    with pytest.raises(DatabaseCorruptError) as info:
        ConnectionPool(path)
    assert str(path) in str(info.value)
    assert "--db" in str(info.value) and "--no-db" in str(info.value)
    assert path.read_bytes() == content
    assert path.stat().st_mtime_ns == before.st_mtime_ns
    assert not Path(str(path) + "-wal").exists()


def test_database_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "d.db"
    ConnectionPool(path).close()
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO schema_version VALUES (?, 0)", (CURRENT_VERSION + 1,))
    conn.commit()
    conn.close()
    with pytest.raises(DatabaseVersionError) as info:
        ConnectionPool(path)
    assert str(CURRENT_VERSION + 1) in str(info.value)


def test_close_checkpoints_the_wal(tmp_path: Path) -> None:
    path = tmp_path / "d.db"
    pool = ConnectionPool(path)
    SessionRepository(pool).start("live", "eth0")
    pool.close()
    wal = Path(str(path) + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0
    # the data is in the main file alone
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT interface FROM sessions").fetchall() == [("eth0",)]
    conn.close()
