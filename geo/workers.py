"""A bounded queue served by a few daemon threads, with de-duplication and drain().

ThreadPoolExecutor's queue is unbounded; under an address sweep that would grow without
limit, so work beyond ``queue_size`` is refused and the caller retries on a later lookup.
"""
from __future__ import annotations

import queue
import threading
from typing import Callable, Hashable

from utils.logger import get_logger

log = get_logger(__name__)

_STOP = object()


class WorkQueue:
    """Runs ``handler(key)`` for each submitted key on ``workers`` threads."""

    def __init__(self, name: str, handler: Callable[[str], None], workers: int = 1,
                 queue_size: int = 1024) -> None:
        self._handler = handler
        self._queue: queue.Queue[object] = queue.Queue(maxsize=queue_size)
        self._pending: set[Hashable] = set()
        self._cond = threading.Condition()
        self._closed = False
        self.dropped = 0
        self._threads = [threading.Thread(target=self._run, name=f"{name}-{i}", daemon=True)
                         for i in range(max(1, workers))]
        for t in self._threads:
            t.start()

    def submit(self, key: str) -> bool:
        """Queue ``key`` unless it is already pending; False if the queue is full or closed."""
        with self._cond:
            if self._closed:
                return False
            if key in self._pending:
                return True
            try:
                self._queue.put_nowait(key)
            except queue.Full:
                self.dropped += 1
                return False
            self._pending.add(key)
            return True

    def is_pending(self, key: str) -> bool:
        with self._cond:
            return key in self._pending

    def _run(self) -> None:
        while True:
            key = self._queue.get()
            if key is _STOP:
                return
            try:
                self._handler(key)  # type: ignore[arg-type]
            except Exception:  # boundary: one bad answer must not kill the worker
                log.exception("background lookup failed for %r", key)
            finally:
                with self._cond:
                    self._pending.discard(key)   # type: ignore[arg-type]
                    if not self._pending:
                        self._cond.notify_all()

    def pending(self) -> int:
        with self._cond:
            return len(self._pending)

    def drain(self, timeout: float) -> bool:
        """Wait until nothing is pending; True if idle."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending, timeout)

    def close(self, timeout: float = 2.0) -> None:
        with self._cond:
            self._closed = True
        # Drop queued work: closing must not wait for (or send) lookups nobody will read.
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        for _ in self._threads:
            try:
                self._queue.put_nowait(_STOP)
            except queue.Full:
                break
        for t in self._threads:
            t.join(timeout)
        with self._cond:
            self._pending.clear()
            self._cond.notify_all()
