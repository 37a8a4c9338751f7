"""WAL checkpoints on their own thread and connection, so the writer thread only writes.

SQLite's automatic checkpoint runs inside the COMMIT that takes the WAL past
``wal_autocheckpoint`` pages, on the committing connection: the writer thread then copies pages
into the database file and fsyncs twice, which was about half of its time under sustained load.
While a :class:`~db.writer.DatabaseWriter` runs, it switches that off on the write connection and
pokes a :class:`WalCheckpointer` after each commit; this one runs ``PASSIVE`` checkpoints (they
never wait for, nor block, the writer or the readers) on a connection of its own, at most every
``interval`` seconds. SQLite releases the GIL while it checkpoints, so the capture thread keeps
running meanwhile.

A passive checkpoint copies only frames no reader still needs, and the WAL restarts from its
beginning only when a checkpoint caught up before the next write. Under a writer that never
pauses it might not catch up; should the WAL file outgrow ``wal_limit_bytes`` anyway, the writer
runs one ``RESTART`` checkpoint itself (:meth:`after_commit`), which waits for the readers and
lets the next commit rewind the WAL (and truncate it to ``JOURNAL_SIZE_LIMIT``).
"""
from __future__ import annotations

import os
import sqlite3
import threading

from db.connection import ConnectionPool
from utils.logger import get_logger

log = get_logger(__name__)

#: seconds between two background checkpoints while commits keep coming
CHECKPOINT_INTERVAL_S = 0.25
#: WAL file size past which the writer checkpoints itself (the background ones fell behind)
WAL_LIMIT_BYTES = 64 * 1024 * 1024
#: a rewound WAL file is cut back to this size (SQLite's journal_size_limit)
JOURNAL_SIZE_LIMIT = 16 * 1024 * 1024
#: SQLite's default wal_autocheckpoint, restored when the writer stops
_DEFAULT_AUTOCHECKPOINT = 1000


class WalCheckpointer:
    """Background ``PASSIVE`` checkpoints for one database while its writer runs.

    Args:
        pool: the database; a separate connection to its file is opened for checkpoints.
        interval: seconds between checkpoints while the writer keeps committing.
        wal_limit_bytes: WAL file size at which :meth:`after_commit` checkpoints synchronously.
    """

    def __init__(self, pool: ConnectionPool, interval: float = CHECKPOINT_INTERVAL_S,
                 wal_limit_bytes: int = WAL_LIMIT_BYTES) -> None:
        self.pool = pool
        self.interval = max(0.0, interval)
        self.wal_limit_bytes = wal_limit_bytes
        self._wal_path = str(pool.path) + "-wal"
        self._poke = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = None
        #: background checkpoints run, synchronous ones forced by the size limit, failures
        self.checkpoints = 0
        self.forced = 0
        self.errors = 0

    def start(self, writer_conn: sqlite3.Connection) -> None:
        """Take over checkpointing from ``writer_conn`` (call on the thread that owns it)."""
        if not self.pool.wal or self._thread is not None:
            return
        try:
            self._conn = sqlite3.connect(self.pool.path, isolation_level=None,
                                         check_same_thread=False,
                                         timeout=self.pool.busy_timeout_ms / 1000.0)
            writer_conn.execute("PRAGMA wal_autocheckpoint = 0")
            writer_conn.execute(f"PRAGMA journal_size_limit = {int(JOURNAL_SIZE_LIMIT)}")
        except sqlite3.Error as exc:  # keep SQLite's own checkpoints then
            log.warning("database %s: background checkpoints unavailable: %s", self.pool.path, exc)
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            return
        self._thread = threading.Thread(target=self._run, name="db-checkpoint", daemon=True)
        self._thread.start()

    def poke(self) -> None:
        """A commit happened: checkpoint soon (cheap; called after every batch)."""
        self._poke.set()

    def after_commit(self, writer_conn: sqlite3.Connection) -> None:
        """On the writer thread: checkpoint synchronously if the WAL outgrew its limit."""
        if self._thread is None:
            return
        self._poke.set()
        try:
            size = os.stat(self._wal_path).st_size
        except OSError:
            return
        if size <= self.wal_limit_bytes:
            return
        try:
            writer_conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
            self.forced += 1
        except sqlite3.Error as exc:  # the next commit reports a lasting problem itself
            self.errors += 1
            log.warning("database %s: checkpoint failed: %s", self.pool.path, exc)

    def stop(self, writer_conn: sqlite3.Connection | None) -> None:
        """End the thread, close its connection and give checkpoints back to SQLite."""
        thread = self._thread
        if thread is None:
            return
        self._stop.set()
        self._poke.set()
        thread.join()
        self._thread = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if writer_conn is not None:
            try:
                writer_conn.execute(f"PRAGMA wal_autocheckpoint = {_DEFAULT_AUTOCHECKPOINT}")
            except sqlite3.Error as exc:
                log.warning("database %s: %s", self.pool.path, exc)

    def _run(self) -> None:
        conn = self._conn
        assert conn is not None
        warned = False
        while True:
            self._poke.wait()
            if self._stop.is_set():
                return
            self._poke.clear()
            try:
                busy, frames, done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                self.checkpoints += 1
                if frames > done:  # a reader held frames back: come again even without commits
                    self._poke.set()
            except sqlite3.Error as exc:  # e.g. disk full: the writer reports that itself
                self.errors += 1
                if not warned:
                    warned = True
                    log.warning("database %s: background checkpoint failed: %s",
                                self.pool.path, exc)
            if self._stop.wait(self.interval):
                return
