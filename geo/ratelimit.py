"""Client-side rate limiting that also obeys what the server says.

ip-api.com allows 45 single requests (15 batch requests) per minute per client address and
tells the client where it stands on every answer: ``X-Rl`` (requests left in the current
window) and ``X-Ttl`` (seconds until the window resets); over the limit it answers 429.
We keep our own sliding window so we normally never reach the server's limit, and pause
whenever the server says the window is used up.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from typing import Callable


class RateLimiter:
    """At most ``limit`` requests in any ``window`` seconds, plus server-imposed pauses."""

    def __init__(self, limit: int, window: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if limit <= 0:
            raise ValueError("rate limit must be positive")
        self.limit = limit
        self.window = float(window)
        self._clock = clock
        self._sent: deque[float] = deque()
        self._paused_until = 0.0
        self._lock = threading.Lock()
        self.server_pauses = 0

    def delay(self) -> float:
        """Seconds to wait before the next request may go out (0.0 = now)."""
        with self._lock:
            now = self._clock()
            while self._sent and now - self._sent[0] >= self.window:
                self._sent.popleft()
            wait = self._paused_until - now
            if len(self._sent) >= self.limit:
                wait = max(wait, self._sent[0] + self.window - now)
            return max(0.0, wait)

    def record(self) -> None:
        """A request was sent just now."""
        with self._lock:
            self._sent.append(self._clock())

    def pause(self, seconds: float) -> None:
        """The server said: nothing more for ``seconds``."""
        with self._lock:
            self.server_pauses += 1
            self._paused_until = max(self._paused_until, self._clock() + max(0.0, seconds))

    def feedback(self, remaining: str | None, ttl: str | None, status: int) -> None:
        """Apply ip-api's ``X-Rl``/``X-Ttl`` headers and a 429 status."""
        secs = _number(ttl)
        left = _number(remaining)
        if status == 429:
            self.pause(secs if secs is not None else self.window)
        elif left is not None and left <= 0:
            self.pause(secs if secs is not None else self.window)


def _number(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text.strip())
    except ValueError:
        return None
