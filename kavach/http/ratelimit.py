"""A small in-memory failure limiter for sign-in (per client IP and per email)."""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Iterable, Mapping

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

    A sign-in takes a slot with :meth:`begin` *before* the password is checked, and
    gives it back with :meth:`end` (as a failure or not): attempts in flight count
    against the limit, so a burst of parallel guesses gets no more checks than a
    sequence (checking first and counting after the ~0.25 s password hash let every
    request of a burst through).
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
        self._pending: dict[str, int] = {}  # attempts begun and not ended, per key
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

    def begin(
        self, keys: Iterable[str], *, hold: Mapping[str, int] | None = None
    ) -> int | None:
        """Start an attempt for ``keys``: ``None`` when it may go ahead, else the seconds
        to wait. A key is blocked once it has ``max_failures`` failures in the window.
        The attempt also counts against every key of ``hold`` (default: each key, with a
        cap of ``max_failures``) until :meth:`end`: a key whose failures and attempts in
        flight reach its cap waits for one of them to end."""
        keys = tuple(keys)
        caps = dict.fromkeys(keys, self.max_failures) if hold is None else dict(hold)
        now = self._now()
        with self._lock:
            wait = 0.0
            for key in keys:
                times = self._failures.get(key)
                failures = 0
                if times is not None:
                    self._expire(times, now)
                    failures = len(times)
                if failures >= self.max_failures:
                    assert times is not None
                    wait = max(wait, times[-self.max_failures] + self.window - now)
                elif key in caps and failures + self._pending.get(key, 0) >= caps[key]:
                    wait = max(wait, 1.0)  # attempts in flight fill the budget
            if wait > 0:
                return max(1, math.ceil(wait))
            for key in caps:
                self._pending[key] = self._pending.get(key, 0) + 1
            return None

    def end(
        self, keys: Iterable[str], *, hold: Mapping[str, int] | None = None, failed: bool
    ) -> None:
        """End an attempt :meth:`begin` let through (same ``keys`` and ``hold``);
        ``failed`` records a failure against every key — in the same step that frees the
        attempt's place, so no other attempt slips in between."""
        keys = tuple(keys)
        held = keys if hold is None else tuple(hold)
        now = self._now()
        with self._lock:
            for key in held:
                left = self._pending.get(key, 0) - 1
                if left > 0:
                    self._pending[key] = left
                else:
                    self._pending.pop(key, None)
            if failed:
                self._record(keys, now)

    def fail(self, keys: Iterable[str]) -> None:
        """Record one failure against each key."""
        now = self._now()
        with self._lock:
            self._record(keys, now)

    def _record(self, keys: Iterable[str], now: float) -> None:
        """Record one failure against each key (the lock held)."""
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
