"""Slow dashboard results (passes over every flow, enrichment lookups) computed off the UI thread.

The UI thread asks for a named result computed for a key (the selection, the sort and filters):
it gets the latest value at once, and a stale one is recomputed on one worker thread (stale
while revalidating), so no frame waits for a pass over 50,000 flows or for geo data to load. A
value is immutable once published; the worker replaces it, never changes it.

Recomputation is paced by its cost: a job that took C seconds runs again after at least
``C / max_duty`` seconds, and after refreshing a stale value the worker rests for
``C * (1 / max_duty - 1)`` seconds (a first result for a new key does not wait), so refreshes
take at most ``max_duty`` of the interpreter from the capture thread (Python threads share one
interpreter lock).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Hashable

from utils.logger import get_logger

log = get_logger(__name__)

#: share of the time a recurring job may keep the worker busy
MAX_DUTY = 0.1


class Pending:
    """The value of a result that is still being computed (``PENDING``)."""

    def __repr__(self) -> str:
        return "PENDING"


PENDING: Any = Pending()


class BackgroundError(Exception):
    """A background job failed; the message says how (shown as state, not a crash)."""


@dataclass(frozen=True, slots=True)
class Result:
    key: Hashable
    at: float           # clock() when it was published
    cost: float         # seconds the job took
    value: Any = None
    error: str = ""


class Background:
    """One lazily started worker thread and the latest result per name."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, max_duty: float = MAX_DUTY) -> None:
        self.clock = clock
        self.max_duty = max_duty
        self._cv = threading.Condition()
        self._results: dict[str, Result] = {}
        self._queue: dict[str, tuple[Hashable, Callable[[], Any]]] = {}
        self._thread: threading.Thread | None = None
        self._running: tuple[str, Hashable] | None = None
        #: queued jobs whose key has no result yet: run first, and without the rest
        self._urgent: set[str] = set()
        self._closed = False

    # ---- UI thread ---------------------------------------------------------------------------
    def get(self, name: str, key: Hashable, fn: Callable[[], Any], ttl: float,
            sync: bool = False, wait: float = 0.0) -> Any:
        """The latest ``fn()`` for ``key``, or PENDING while the first one is computed.

        ``sync``: compute here when missing or stale (small inputs, where a thread buys nothing).
        ``wait``: seconds to wait for a missing result before answering PENDING.
        Raises BackgroundError if the latest run for ``key`` failed.
        """
        now = self.clock()
        r = self._results.get(name)
        fresh = r is not None and r.key == key
        if fresh and now - r.at < max(ttl, r.cost / self.max_duty if not sync else 0.0):
            return self._value(r)
        if sync:
            return self._value(self._run(name, key, fn))
        self._submit(name, key, fn)
        if fresh:
            return self._value(r)
        if wait > 0:
            end = time.monotonic() + wait
            with self._cv:
                while not self._has(name, key) and (left := end - time.monotonic()) > 0:
                    self._cv.wait(left)
            r = self._results.get(name)
            if r is not None and r.key == key:
                return self._value(r)
        return PENDING

    def latest(self, name: str) -> Any:
        """The last published value of ``name`` whatever its key, or PENDING."""
        r = self._results.get(name)
        return PENDING if r is None or r.error else r.value

    def submit(self, name: str, key: Hashable, fn: Callable[[], Any]) -> None:
        """Queue ``fn`` (replacing a queued job of the same name) without asking for a value."""
        self._submit(name, key, fn)

    def put(self, name: str, key: Hashable, value: Any, cost: float = 0.0) -> None:
        """Publish a value computed elsewhere (e.g. on the UI thread after a key press)."""
        with self._cv:
            self._results[name] = Result(key, self.clock(), cost, value)
            self._cv.notify_all()

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._queue.clear()
            self._cv.notify_all()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout=2.0)

    # ---- internals ---------------------------------------------------------------------------
    @staticmethod
    def _value(r: Result) -> Any:
        if r.error:
            raise BackgroundError(r.error)
        return r.value

    def _has(self, name: str, key: Hashable) -> bool:
        r = self._results.get(name)
        return r is not None and r.key == key

    def _submit(self, name: str, key: Hashable, fn: Callable[[], Any]) -> None:
        with self._cv:
            if self._closed or self._running == (name, key):
                return  # the same job is running now: its result will do
            self._queue[name] = (key, fn)
            if not self._has(name, key):
                self._urgent.add(name)
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="dashboard-bg", daemon=True)
                self._thread.start()
            self._cv.notify_all()

    def _run(self, name: str, key: Hashable, fn: Callable[[], Any]) -> Result:
        t0 = time.perf_counter()
        try:
            value, error = fn(), ""
        except Exception as exc:  # boundary: a component's failure becomes state on screen
            log.exception("dashboard background job %s failed", name)
            value, error = None, f"{type(exc).__name__}: {exc}"
        r = Result(key, self.clock(), time.perf_counter() - t0, value, error)
        with self._cv:
            self._results[name] = r
            self._cv.notify_all()
        return r

    def _work(self) -> None:
        rest_until = 0.0
        while True:
            with self._cv:
                while not self._closed:
                    if self._urgent & self._queue.keys():
                        break
                    left = rest_until - time.monotonic()
                    if self._queue and left <= 0:
                        break
                    self._cv.wait(left if self._queue else None)
                if self._closed:
                    return
                urgent = self._urgent & self._queue.keys()
                name = next(iter(urgent)) if urgent else next(iter(self._queue))
                self._urgent.discard(name)
                key, fn = self._queue.pop(name)
                self._running = (name, key)
            try:
                r = self._run(name, key, fn)
            finally:
                with self._cv:
                    self._running = None
            if not urgent:
                rest_until = time.monotonic() + r.cost * (1.0 / self.max_duty - 1.0)
