"""The background database writer: producers queue, one thread commits in batches.

Producers (the capture pipeline, resolvers, detectors) never touch SQLite: they hand rows to
this writer, which costs a lock and a dict update per call and never blocks or raises. The
writer thread commits up to ``batch_size`` operations per transaction, at the latest
``flush_ms`` after the first of them was queued; WAL checkpoints run beside it
(:mod:`db.checkpointer`), so its commits never wait for an fsync.

Flow updates are coalesced while queued: the queue holds at most one pending update per
(session, flow_key), and a newer update replaces the row in place (the flow dict carries
cumulative totals, so the newest row is the whole truth). The queue is bounded by
``queue_size``; when it is full, new operations are dropped and counted rather than blocking
capture.

When the disk fills, the file turns read-only or damaged, or the lock cannot be obtained, the
writer stops persisting: it rolls back the failed batch (what was committed stays intact), sets
``state`` to ``"stopped: <reason>"`` and from then on only counts what it drops. A single bad
operation (a row SQLite rejects, a submitted callable that raises) is isolated, counted in
``errors`` and skipped; the rest of its batch is committed.
"""
from __future__ import annotations

import sqlite3
import threading
import time
from collections import deque
from typing import Any, Callable

from config import DB_WRITE_BATCH_SIZE, DB_WRITE_FLUSH_MS, DB_WRITE_QUEUE_SIZE
from db.checkpointer import CHECKPOINT_INTERVAL_S, WAL_LIMIT_BYTES, WalCheckpointer
from db.connection import ConnectionPool
from db.errors import (
    SQLITE_BUSY, SQLITE_CANTOPEN, SQLITE_CORRUPT, SQLITE_FULL, SQLITE_IOERR, SQLITE_LOCKED,
    SQLITE_NOTADB, SQLITE_READONLY, DatabaseError, from_sqlite, result_code,
)
from db.repositories import alert_repo, dns_query_repo, flow_repo, port_repo
from utils.logger import get_logger

log = get_logger(__name__)

#: result codes after which writing cannot go on (short reason shown on the dashboard)
_FATAL: dict[int, str] = {
    SQLITE_FULL: "disk full",
    SQLITE_IOERR: "disk I/O error",
    SQLITE_READONLY: "database became read-only",
    SQLITE_CORRUPT: "database file is damaged",
    SQLITE_NOTADB: "database file is damaged",
    SQLITE_CANTOPEN: "database file cannot be opened",
}
_BUSY = (SQLITE_BUSY, SQLITE_LOCKED)
_BUSY_RETRIES = 3

WriteOp = Callable[[sqlite3.Connection], Any]
FlowKey = tuple[int, str]


def _merge(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    merged = dict(old)
    for k, v in new.items():
        if v is not None:
            merged[k] = v
    return merged


class _Fatal(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


class DatabaseWriter:
    """Batching background writer over a :class:`ConnectionPool`.

    Args:
        pool: where to write; the writer uses its write connection once per batch.
        batch_size: operations per transaction.
        flush_ms: the longest an operation waits in the queue before its batch is written.
        queue_size: queued operations at most (coalesced flow updates take no extra slot).
        checkpoint_interval: seconds between background WAL checkpoints while writing.
        wal_limit_bytes: WAL file size past which the writer checkpoints itself.
    """

    def __init__(self, pool: ConnectionPool, batch_size: int = DB_WRITE_BATCH_SIZE,
                 flush_ms: int = DB_WRITE_FLUSH_MS, queue_size: int = DB_WRITE_QUEUE_SIZE, *,
                 checkpoint_interval: float = CHECKPOINT_INTERVAL_S,
                 wal_limit_bytes: int = WAL_LIMIT_BYTES) -> None:
        self.pool = pool
        self.batch_size = max(1, int(batch_size))
        self.flush_s = max(0.0, flush_ms / 1000.0)
        self.queue_size = max(1, int(queue_size))
        lock = threading.Lock()
        self._work = threading.Condition(lock)    # the writer thread waits here
        self._idle = threading.Condition(lock)    # flush() callers wait here
        # FIFO of operations: a FlowKey (row in _pending) or a callable taking the connection
        self._ops: deque[FlowKey | WriteOp] = deque()
        self._pending: dict[FlowKey, dict[str, Any]] = {}
        self._first_at = 0.0       # monotonic time the oldest queued op arrived
        self._accepted = 0         # ops ever queued (coalesced updates excluded)
        self._finished = 0         # ops taken off the queue and settled (written, failed, dropped)
        self._flushers = 0
        self._closing = False
        self._stopped = ""         # reason, once the writer no longer persists
        self._detail = ""
        self._thread: threading.Thread | None = None
        self._checkpointer = WalCheckpointer(pool, checkpoint_interval, wal_limit_bytes)
        # counters (read without the lock by stats(): plain ints, torn reads are harmless)
        self.written_ops = 0
        self.batches = 0
        self.dropped = 0
        self.errors = 0
        self.coalesced = 0
        self.max_queued = 0

    # ---- lifecycle ----------------------------------------------------------------------------
    def start(self) -> "DatabaseWriter":
        """Start the writer thread (idempotent). Returns self."""
        with self._work:
            if self._thread is None and not self._stopped:
                self._thread = threading.Thread(target=self._run, name="db-writer", daemon=True)
                self._thread.start()
        return self

    def flush(self, timeout: float | None = None) -> bool:
        """Block until everything queued before this call is committed (or settled).

        Returns True when it all was written or settled in time, False on timeout or when the
        writer has stopped with operations left unwritten.
        """
        with self._work:
            target = self._accepted
            if self._finished >= target:
                return not self._stopped or self._stopped == "closed"
            if self._thread is None or not self._thread.is_alive():
                return False
            self._flushers += 1
            self._work.notify()
            try:
                self._idle.wait_for(lambda: self._finished >= target or bool(self._stopped), timeout)
            finally:
                self._flushers -= 1
            return self._finished >= target and self._stopped in ("", "closed")

    def close(self, timeout: float | None = None) -> None:
        """Write everything still queued, then stop the thread (idempotent)."""
        with self._work:
            self._closing = True
            self._work.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
        with self._work:
            if not self._stopped:
                self._stop_locked("closed", "")

    # ---- producers (any thread; never block, never raise) -------------------------------------
    def upsert_flow(self, session_id: int, row: dict[str, Any]) -> None:
        """Queue the newest state of a flow. The writer keeps ``row``: do not mutate it later.

        ``row`` may carry only some columns (a counters-only update of a stored flow): only
        those are written. It needs ``flow_key`` and, in case the flow is not stored yet, the
        NOT NULL ones: ``protocol``, ``src_ip``, ``dst_ip``, ``first_seen``, ``last_seen``.
        """
        key = (session_id, row["flow_key"])
        with self._work:
            if self._stopped or self._closing:
                self.dropped += 1
                return
            pending = self._pending
            old = pending.get(key)
            if old is not None:
                # a row with fewer keys (a counters-only update) goes on top of the queued one,
                # as if both were written in turn: None does not erase, missing keys stay
                pending[key] = row if len(row) >= len(old) else _merge(old, row)
                self.coalesced += 1
                return
            ops = self._ops
            if len(ops) >= self.queue_size:
                self.dropped += 1
                return
            pending[key] = row
            self._enqueue_locked(key)

    def upsert_ports(self, session_id: int, rows: list[dict[str, Any]]) -> None:
        """Queue cumulative port statistics (see ``port_repo.upsert_ports``)."""
        self.submit(lambda conn: port_repo.upsert_ports(conn, session_id, rows))

    def add_dns(self, session_id: int, rows: list[dict[str, Any]]) -> None:
        """Queue DNS transactions (see ``dns_query_repo.add_queries``)."""
        self.submit(lambda conn: dns_query_repo.add_queries(conn, session_id, rows))

    def add_alert(self, session_id: int, row: dict[str, Any]) -> None:
        """Queue an alert (``Alert.to_dict()``); the same id again updates it."""
        self.submit(lambda conn: alert_repo.upsert_alerts(conn, session_id, [row]))

    def submit(self, op: WriteOp) -> None:
        """Queue ``op(conn)`` to run inside a batch transaction on the write connection.

        ``op`` must only execute statements (no BEGIN/COMMIT); if it raises, its own changes are
        rolled back, it is counted in ``errors``, and the rest of the batch is kept.
        """
        with self._work:
            if self._stopped or self._closing or len(self._ops) >= self.queue_size:
                self.dropped += 1
                return
            self._enqueue_locked(op)

    def _enqueue_locked(self, item: FlowKey | WriteOp) -> None:
        ops = self._ops
        ops.append(item)
        self._accepted += 1
        n = len(ops)
        if n == 1:
            self._first_at = time.monotonic()
            self._work.notify()
        elif n == self.batch_size:
            self._work.notify()
        if n > self.max_queued:
            self.max_queued = n

    # ---- state --------------------------------------------------------------------------------
    @property
    def state(self) -> str:
        """``"ok"`` while persisting, else ``"stopped: <reason>"``."""
        return f"stopped: {self._stopped}" if self._stopped else "ok"

    @property
    def backlog(self) -> int:
        """Operations queued and not yet taken by the writer thread (cheap: no lock)."""
        return len(self._ops)

    def stats(self) -> dict[str, Any]:
        """Counters for the dashboard: queued, written_ops, batches, dropped, errors, state."""
        return {
            "queued": len(self._ops),
            "written_ops": self.written_ops,
            "batches": self.batches,
            "dropped": self.dropped,
            "errors": self.errors,
            "coalesced": self.coalesced,
            "max_queued": self.max_queued,
            "checkpoints": self._checkpointer.checkpoints + self._checkpointer.forced,
            "state": self.state,
            "error": self._detail,
        }

    # ---- the writer thread --------------------------------------------------------------------
    def _run(self) -> None:
        try:
            with self.pool.writer() as conn:
                self._checkpointer.start(conn)
        except DatabaseError:
            pass  # the pool is closed: the first batch reports it
        try:
            self._loop()
        finally:
            try:
                with self.pool.writer() as conn:
                    self._checkpointer.stop(conn)
            except DatabaseError:
                self._checkpointer.stop(None)

    def _loop(self) -> None:
        while True:
            with self._work:
                while not self._ops and not self._closing:
                    self._work.wait()
                if not self._ops:
                    return  # closing and drained
                deadline = self._first_at + self.flush_s
                while (len(self._ops) < self.batch_size and not self._closing
                       and not self._flushers):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._work.wait(remaining)
                batch = self._take_locked()
            try:
                self._write(batch)
            except Exception as exc:  # boundary: the thread must end in a visible state
                if not isinstance(exc, _Fatal):
                    log.exception("database writer failed")
                    exc = _Fatal("internal error", f"{type(exc).__name__}: {exc}")
                log.error("database writer stopped: %s (%s)", exc.reason, exc.detail)
                with self._work:
                    self.dropped += len(batch)
                    self._finished += len(batch)
                    self._stop_locked(exc.reason, exc.detail)
                return
            with self._work:
                self._finished += len(batch)
                self._idle.notify_all()

    def _take_locked(self) -> list[tuple[FlowKey, dict[str, Any]] | WriteOp]:
        ops, pending = self._ops, self._pending
        batch: list[tuple[FlowKey, dict[str, Any]] | WriteOp] = []
        for _ in range(min(self.batch_size, len(ops))):
            item = ops.popleft()
            if isinstance(item, tuple):
                batch.append((item, pending.pop(item)))
            else:
                batch.append(item)
        if ops:
            self._first_at = time.monotonic()
        return batch

    def _stop_locked(self, reason: str, detail: str) -> None:
        self._stopped = reason
        self._detail = detail
        self.dropped += len(self._ops)   # empty after a normal close: the thread drained it
        self._finished += len(self._ops)
        self._ops.clear()
        self._pending.clear()
        self._idle.notify_all()

    def _write(self, batch: list[tuple[FlowKey, dict[str, Any]] | WriteOp]) -> None:
        """Commit one batch; isolate a bad op; raise _Fatal when writing cannot continue."""
        for attempt in range(_BUSY_RETRIES):
            try:
                with self.pool.writer() as conn:
                    try:
                        self._apply(conn, batch, isolate=False)
                    except Exception as exc:  # boundary: submitted ops are foreign code
                        if isinstance(exc, sqlite3.Error) and (
                                result_code(exc) in _BUSY or result_code(exc) in _FATAL):
                            raise
                        # one op is bad: redo the batch op by op, skipping the failures
                        self._apply(conn, batch, isolate=True)
                    self._checkpointer.after_commit(conn)
                self.batches += 1
                return
            except sqlite3.Error as exc:
                self._raise_if_fatal(exc)
                if result_code(exc) in _BUSY:
                    if attempt < _BUSY_RETRIES - 1:
                        continue  # each try already waited busy_timeout for the lock
                    raise _Fatal("database locked by another process",
                                 str(from_sqlite(exc, self.pool.path))) from None
                raise _Fatal("write failed", str(exc)) from None
            except DatabaseError as exc:  # the pool was closed under us
                raise _Fatal("database closed", str(exc)) from None

    def _raise_if_fatal(self, exc: sqlite3.Error) -> None:
        reason = _FATAL.get(result_code(exc))
        if reason is not None:
            raise _Fatal(reason, str(from_sqlite(exc, self.pool.path))) from None

    @staticmethod
    def _rollback(conn: sqlite3.Connection) -> None:
        if conn.in_transaction:
            conn.execute("ROLLBACK")

    def _apply(self, conn: sqlite3.Connection,
               batch: list[tuple[FlowKey, dict[str, Any]] | WriteOp], isolate: bool) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            if isolate:
                written = self._apply_each(conn, batch)
            else:
                self._apply_grouped(conn, batch)
                written = len(batch)
            conn.execute("COMMIT")
        except BaseException:
            self._rollback(conn)
            raise
        self.written_ops += written

    @staticmethod
    def _apply_grouped(conn: sqlite3.Connection,
                       batch: list[tuple[FlowKey, dict[str, Any]] | WriteOp]) -> None:
        # flow rows between two submitted ops go in one executemany per statement shape (full
        # rows, counters-only rows): a flow is queued at most once, so their order is free
        groups: dict[str, list[list[Any]]] = {}
        statement = flow_repo.flow_statement
        for item in batch:
            if isinstance(item, tuple):
                (session_id, _), row = item
                sql, params = statement(session_id, row)
                group = groups.get(sql)
                if group is None:
                    groups[sql] = [params]
                else:
                    group.append(params)
                continue
            for sql, rows in groups.items():
                conn.executemany(sql, rows)
            groups.clear()
            item(conn)
        for sql, rows in groups.items():
            conn.executemany(sql, rows)

    def _apply_each(self, conn: sqlite3.Connection,
                    batch: list[tuple[FlowKey, dict[str, Any]] | WriteOp]) -> int:
        written = 0
        for item in batch:
            conn.execute("SAVEPOINT op")
            try:
                if isinstance(item, tuple):
                    (session_id, _), row = item
                    conn.execute(*flow_repo.flow_statement(session_id, row))
                else:
                    item(conn)
            except sqlite3.Error as exc:
                self._raise_if_fatal(exc)
                self._skip(conn, exc)
                continue
            except Exception as exc:  # boundary: a submitted callable is foreign code
                self._skip(conn, exc)
                continue
            conn.execute("RELEASE op")
            written += 1
        return written

    def _skip(self, conn: sqlite3.Connection, exc: BaseException) -> None:
        conn.execute("ROLLBACK TO op")
        conn.execute("RELEASE op")
        self.errors += 1
        log.warning("database writer skipped an operation: %s: %s", type(exc).__name__, exc)
