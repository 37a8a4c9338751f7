"""The connection pool: one write connection, a few read connections, WAL mode.

WAL lets the dashboard read while the writer commits: readers see the last committed snapshot
and never wait for the writer. SQLite allows one writer at a time anyway, so a single write
connection behind a lock is the whole write side; ``synchronous=NORMAL`` in WAL mode means a
crash (even SIGKILL) loses at most the last un-checkpointed commits on power loss, never
consistency, and commits do not fsync.

Opening checks the file before SQLite writes a byte to it: a file that is not SQLite (or is
damaged) raises :class:`DatabaseCorruptError` and is left exactly as it was.
"""
from __future__ import annotations

import os
import queue
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from config import DB_BUSY_TIMEOUT_MS, DB_PATH, DB_READ_POOL_SIZE
from db.errors import (
    DatabaseCorruptError, DatabaseError, DatabaseReadOnlyError, DatabaseVersionError, from_sqlite,
)
from db.schema import CURRENT_VERSION, migrate
from utils.logger import chown_to_invoking_user, expand_user_path, get_logger

log = get_logger(__name__)

SQLITE_HEADER = b"SQLite format 3\x00"
WRITER_CACHE_KB = 64 * 1024
READER_CACHE_KB = 16 * 1024
DIR_MODE = 0o700
FILE_MODE = 0o600


def default_db_path(path: str = DB_PATH) -> Path:
    """``~/.packettracer/data.db`` of the user who ran the program, even under sudo."""
    return expand_user_path(path)


@contextmanager
def transaction(conn: sqlite3.Connection, immediate: bool = True) -> Iterator[sqlite3.Connection]:
    """BEGIN ... COMMIT on an autocommit connection; ROLLBACK if the block raises."""
    conn.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


class ConnectionPool:
    """Thread-safe access to one SQLite file.

    ``writer()`` hands out the single write connection under a lock; ``reader()`` checks out one
    of ``read_pool_size`` read-only connections (blocking while all are in use). Connections are
    in autocommit mode: wrap writes in :func:`transaction` (or use :meth:`transaction`).

    Args:
        path: the database file; its folder is created 0700 and the file 0600 if missing, and
            both are given to the invoking user under sudo.
        read_pool_size: number of read connections.
        wal: use write-ahead logging (needed for readers alongside the writer).
        busy_timeout_ms: how long a statement waits for another process's lock.

    Raises:
        DatabaseCorruptError: the file is not SQLite or is damaged (it is not modified).
        DatabaseReadOnlyError: the file or its folder cannot be written.
        DatabaseVersionError: the file comes from a newer PacketTracer.
        DatabaseError: any other failure to open, one line for the user.
    """

    def __init__(self, path: str | Path, read_pool_size: int = DB_READ_POOL_SIZE, wal: bool = True,
                 busy_timeout_ms: int = DB_BUSY_TIMEOUT_MS) -> None:
        self.path = Path(path)
        self.wal = wal
        self.busy_timeout_ms = busy_timeout_ms
        self._write_lock = threading.Lock()
        self._readers: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._all: list[sqlite3.Connection] = []
        self._closed = False
        self._prepare_location()
        self._check_header()
        try:
            self._writer = self._connect(writer=True)
            self._open_schema()
            for _ in range(max(1, read_pool_size)):
                conn = self._connect(writer=False)
                self._readers.put(conn)
        except sqlite3.Error as exc:
            self._close_all()
            raise from_sqlite(exc, self.path) from None
        except DatabaseError:
            self._close_all()
            raise
        # SQLite creates -wal/-shm with the database's mode; under sudo give them away too
        for suffix in ("-wal", "-shm"):
            side = Path(str(self.path) + suffix)
            if side.exists():
                chown_to_invoking_user(side)

    # ---- opening ------------------------------------------------------------------------------
    def _prepare_location(self) -> None:
        folder = self.path.parent
        try:
            if not folder.exists():
                folder.mkdir(parents=True, mode=DIR_MODE)
                os.chmod(folder, DIR_MODE)  # mkdir's mode is filtered by the umask
                chown_to_invoking_user(folder)
            if not self.path.exists():
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
                os.close(fd)
                os.chmod(self.path, FILE_MODE)
                chown_to_invoking_user(self.path)
        except FileExistsError:
            pass  # another process created it between our check and open
        except PermissionError as exc:
            raise DatabaseReadOnlyError(self.path, exc.strerror or "permission denied") from None
        except OSError as exc:
            if exc.errno in (30, 13, 1):  # EROFS, EACCES, EPERM
                raise DatabaseReadOnlyError(self.path, exc.strerror or "") from None
            raise DatabaseError(f"cannot create the database {self.path}: {exc.strerror}") from None
        if self.path.is_dir():
            raise DatabaseCorruptError(self.path, "it is a folder")
        # root passes permission checks, but not a read-only mount or an immutable file
        if not os.access(self.path, os.W_OK) or not os.access(folder, os.W_OK):
            raise DatabaseReadOnlyError(self.path)

    def _check_header(self) -> None:
        """Refuse anything but an empty file or a SQLite 3 file, before SQLite touches it."""
        try:
            with open(self.path, "rb") as fh:
                head = fh.read(len(SQLITE_HEADER))
        except OSError as exc:
            raise DatabaseError(f"cannot read the database {self.path}: {exc.strerror}") from None
        if head and head != SQLITE_HEADER:
            raise DatabaseCorruptError(self.path, "not a SQLite database")

    def _connect(self, writer: bool) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout_ms / 1000.0,
                               isolation_level=None, check_same_thread=False)
        self._all.append(conn)
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
        if writer:
            # read something first: a damaged file fails here, before any pragma writes to it
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            if self.wal:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    log.warning("database %s: WAL not available here, journal mode is %s",
                                self.path, mode)
        else:
            conn.execute("PRAGMA query_only = ON")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        # the default 2 MB page cache thrashes once the flow indexes outgrow it (upserts land
        # all over them); a larger one keeps the writer CPU-bound. Pages are allocated lazily.
        conn.execute(f"PRAGMA cache_size = -{WRITER_CACHE_KB if writer else READER_CACHE_KB}")
        return conn

    def _open_schema(self) -> None:
        found, now = migrate(self._writer)
        if found > CURRENT_VERSION:
            raise DatabaseVersionError(self.path, found, CURRENT_VERSION)
        if found != now:
            log.info("database %s migrated from schema %d to %d", self.path, found, now)

    # ---- checkout -----------------------------------------------------------------------------
    @contextmanager
    def writer(self) -> Iterator[sqlite3.Connection]:
        """The write connection, held exclusively for the block."""
        with self._write_lock:
            if self._closed:
                raise DatabaseError(f"database {self.path} is closed")
            try:
                yield self._writer
            finally:
                if self._writer.in_transaction:  # a block that forgot to commit: do not leak it
                    self._writer.execute("ROLLBACK")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """The write connection inside one ``BEGIN IMMEDIATE`` ... ``COMMIT``."""
        with self.writer() as conn, transaction(conn):
            yield conn

    @contextmanager
    def reader(self) -> Iterator[sqlite3.Connection]:
        """A read connection; blocks while all of them are checked out."""
        if self._closed:
            raise DatabaseError(f"database {self.path} is closed")
        conn = self._readers.get()
        try:
            yield conn
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._readers.put(conn)

    # ---- shutdown -----------------------------------------------------------------------------
    def close(self) -> None:
        """Checkpoint the WAL into the main file and close every connection (idempotent)."""
        with self._write_lock:
            if self._closed:
                return
            self._closed = True
            try:
                if self.wal:
                    self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:  # e.g. disk full: the WAL stays and is replayed on open
                log.warning("database %s: checkpoint at close failed: %s", self.path, exc)
            self._close_all()

    def _close_all(self) -> None:
        for conn in self._all:
            try:
                conn.close()
            except sqlite3.Error as exc:
                log.warning("database %s: close failed: %s", self.path, exc)
        self._all.clear()

    def __enter__(self) -> "ConnectionPool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
