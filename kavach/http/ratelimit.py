"""A small in-memory failure limiter for sign-in (per client IP and per email)."""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Iterable

from kavach.clock import Clock

DEFAULT_MAX_FAILURES = 10
DEFAULT_WINDOW_SECONDS = 300.0
#: Keys kept at most; the oldest are dropped first, so memory stays bounded under a flood.
DEFAULT_MAX_KEYS = 100_000


class FailureLimiter:
    """Counts failures per key in a sliding window, using the injected clock.

    After ``max_failures`` failures within ``window`` seconds a key is blocked until the
    oldest of them leaves the window. Thread-safe; lives on the router object (one per
    app), never in a module global.
    """

    def __init__(
        self,
        clock: Clock,
        *,
        max_failures: int = DEFAULT_MAX_FAILURES,
        window: float = DEFAULT_WINDOW_SECONDS,
        max_keys: int = DEFAULT_MAX_KEYS,
    ) -> None:
        if max_failures < 1 or window <= 0 or max_keys < 1:
            raise ValueError("max_failures, window and max_keys must be positive")
        self._clock = clock
        self.max_failures = max_failures
        self.window = window
        self._max_keys = max_keys
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"FailureLimiter(max_failures={self.max_failures}, window={self.window}, "
            f"keys={len(self._failures)})"
        )

    def _now(self) -> float:
        return self._clock.now().timestamp()

    def retry_after(self, keys: Iterable[str]) -> int | None:
        """Seconds until every one of ``keys`` may try again, or ``None`` when none is blocked."""
        now = self._now()
        wait = 0.0
        with self._lock:
            for key in keys:
                times = self._failures.get(key)
                if times is None:
                    continue
                self._expire(times, now)
                if len(times) >= self.max_failures:
                    wait = max(wait, times[-self.max_failures] + self.window - now)
        return max(1, math.ceil(wait)) if wait > 0 else None

    def fail(self, keys: Iterable[str]) -> None:
        """Record one failure against each key."""
        now = self._now()
        with self._lock:
            for key in keys:
                times = self._failures.pop(key, None)  # re-insert: dict order = recency
                if times is None:
                    times = deque(maxlen=self.max_failures)
                self._expire(times, now)
                times.append(now)
                self._failures[key] = times
            while len(self._failures) > self._max_keys:
                del self._failures[next(iter(self._failures))]

    def reset(self, key: str) -> None:
        """Forget the failures of one key (after a successful sign-in)."""
        with self._lock:
            self._failures.pop(key, None)

    def _expire(self, times: deque[float], now: float) -> None:
        cutoff = now - self.window
        while times and times[0] <= cutoff:
            times.popleft()
