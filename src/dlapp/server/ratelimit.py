"""Per-key limits in memory: a token bucket (a rate, with an injected clock) and slots (how
many at once). The key is a user."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class RateLimiter:
    """``rate_per_min`` tokens a minute per key, in bursts of up to ``burst`` (default: a
    minute's worth). A rate of 0 lets everything through."""

    def __init__(
        self,
        rate_per_min: float,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate_per_s = rate_per_min / 60.0
        self.burst = burst if burst is not None else max(1.0, rate_per_min)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, when)
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        """Take one token for ``key``: 0.0 when allowed, else the seconds until one is free."""
        if self.rate_per_s <= 0:
            return 0.0
        with self._lock:
            now = self._clock()
            tokens, at = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - at) * self.rate_per_s)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate_per_s


class Slots:
    """At most ``limit`` slots per key in use at once; thread-safe, no clock, no I/O."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._used: dict[str, int] = {}
        self._lock = threading.Lock()

    def take(self, key: str) -> bool:
        """Take a slot for ``key``: False when it already holds ``limit``."""
        with self._lock:
            used = self._used.get(key, 0)
            if used >= self.limit:
                return False
            self._used[key] = used + 1
            return True

    def give_back(self, key: str) -> None:
        with self._lock:
            used = self._used.get(key, 0) - 1
            if used > 0:
                self._used[key] = used
            else:
                self._used.pop(key, None)

    def in_use(self, key: str) -> int:
        with self._lock:
            return self._used.get(key, 0)
