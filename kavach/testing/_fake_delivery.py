"""Webhook delivery for the fake Polar (private).

Mirrors Polar's sender (``webhook/tasks.py``): one POST per event and endpoint, headers
``user-agent``/``content-type``/``webhook-id``/``webhook-timestamp``/``webhook-signature``,
a 10 s timeout, success only on 2xx, redirects not followed, up to 10 attempts on
dramatiq's backoff (``2000 ms * 2**n * U(1, 2)``, capped at 20 min) — time-compressed by
``retry_time_scale`` — and an endpoint disabled after 10 events in a row failed for good.
The signature timestamp is taken from ``signing_clock`` at each attempt (re-signed).
"""

from __future__ import annotations

import heapq
import http.client
import random
import threading
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Literal
from urllib.parse import urlsplit

from attrs import define, frozen

from kavach.clock import Clock
from kavach.polar.webhooks import Derivation, sign_webhook
from kavach.testing._fake_state import Event

Order = Literal["in_order", "reverse", "shuffle"]
ORDERS: tuple[Order, ...] = ("in_order", "reverse", "shuffle")
USER_AGENT = "polar.sh webhooks"
MAX_ATTEMPTS = 10
FAILURE_THRESHOLD = 10
_BACKOFF_FACTOR_MS = 2000
_BACKOFF_MAX_MS = 20 * 60 * 1000
_RESPONSE_READ_LIMIT = 64 * 1024


@frozen
class DeliveryAttempt:
    """One delivery attempt, as the log in ``FakePolar.deliveries`` records it.

    ``status_code`` is the receiver's answer (``None`` when the request failed: see
    ``error``); ``simulated`` marks an attempt failed on purpose by
    ``fail_next_deliveries`` without sending anything; ``redelivery`` marks a duplicate.
    """

    webhook_id: str
    event_type: str
    endpoint_id: str
    url: str
    attempt: int
    timestamp: int
    at: datetime
    status_code: int | None
    error: str | None
    body: bytes
    simulated: bool = False
    redelivery: bool = False

    @property
    def ok(self) -> bool:
        """Whether the attempt succeeded (a 2xx answer)."""
        return self.status_code is not None and 200 <= self.status_code < 300


@define
class WebhookEndpoint:
    """A registered endpoint; ``events`` ``None`` means every event type."""

    id: str
    url: str
    events: frozenset[str] | None
    enabled: bool = True
    failed_in_a_row: int = 0


@define
class _Message:
    webhook_id: str
    endpoint: WebhookEndpoint
    event_type: str
    body: bytes
    redelivery: bool = False
    attempts: int = 0


class Deliverer:
    """Signs and sends events to the registered endpoints, inline or from a worker thread."""

    def __init__(
        self,
        *,
        secret: str,
        derivation: Derivation,
        background: bool,
        seed: int | None,
        retry_time_scale: float,
        max_attempts: int = MAX_ATTEMPTS,
        timeout: float = 10.0,
        signing_clock: Clock | None = None,
    ) -> None:
        self._secret = secret
        self.derivation: Derivation = derivation
        self.background = background
        self.retry_time_scale = retry_time_scale
        self.max_attempts = max_attempts
        self.timeout = timeout
        self.signing_clock = signing_clock
        self.order: Order = "in_order"
        self.duplicate_rate = 0.0
        self.delay = 0.0
        self.endpoints: dict[str, WebhookEndpoint] = {}
        self._rng = random.Random(seed)
        self._cond = threading.Condition()
        self._log: list[DeliveryAttempt] = []
        self._queue: list[tuple[float, int, _Message]] = []
        self._seq = 0
        self._busy = 0
        self._forced_duplicates = 0
        self._forced_failures: list[int] = []
        self._worker: threading.Thread | None = None
        self._stopping = False

    def __repr__(self) -> str:
        return (
            f"Deliverer(endpoints={len(self.endpoints)}, attempts={len(self._log)}, "
            f"background={self.background})"
        )

    # --- controls -----------------------------------------------------------------

    def add_endpoint(self, url: str, events: Sequence[str] | None) -> str:
        """Register an endpoint; returns its id."""
        with self._cond:
            endpoint = WebhookEndpoint(
                id=str(uuid.UUID(int=self._rng.getrandbits(128), version=4)),
                url=url,
                events=None if events is None else frozenset(events),
            )
            self.endpoints[endpoint.id] = endpoint
            return endpoint.id

    def endpoint_list(self) -> list[WebhookEndpoint]:
        """A snapshot of the registered endpoints."""
        with self._cond:
            return list(self.endpoints.values())

    def enable(self, endpoint_id: str) -> None:
        """Re-enable an endpoint and reset its failure streak."""
        with self._cond:
            endpoint = self.endpoints[endpoint_id]
            endpoint.enabled, endpoint.failed_in_a_row = True, 0

    def duplicate(self, count: int) -> None:
        """Send each of the next ``count`` messages twice (same ``webhook-id``)."""
        with self._cond:
            self._forced_duplicates += count

    def fail_next(self, count: int, status: int) -> None:
        """Fail the next ``count`` attempts with ``status``, without sending them."""
        with self._cond:
            self._forced_failures.extend([status] * count)

    @property
    def log(self) -> list[DeliveryAttempt]:
        """A copy of the attempt log."""
        with self._cond:
            return list(self._log)

    # --- submission ---------------------------------------------------------------

    def submit(self, events: Sequence[Event]) -> None:
        """Deliver one action's events to every subscribed, enabled endpoint."""
        self._dispatch(self._messages(events))

    def redeliver(self, webhook_id: str) -> None:
        """Send an earlier message again (as the dashboard's "redeliver" does)."""
        with self._cond:
            found = next((a for a in self._log if a.webhook_id == webhook_id), None)
            endpoint = self.endpoints.get(found.endpoint_id) if found else None
        if found is None or endpoint is None:
            raise KeyError(webhook_id)
        self._dispatch([_Message(webhook_id, endpoint, found.event_type, found.body, True)])

    def _dispatch(self, messages: list[_Message]) -> None:
        if not messages:
            return
        if self.background:
            with self._cond:
                start = time.monotonic() + self.delay
                for message in messages:
                    self._push(start, message)
                self._cond.notify_all()
            return
        with self._cond:
            self._busy += 1
        try:
            for message in messages:
                if self.delay:
                    time.sleep(self.delay)
                while self._attempt(message):
                    time.sleep(self._backoff(message.attempts))
        finally:
            with self._cond:
                self._busy -= 1
                self._cond.notify_all()

    def _messages(self, events: Sequence[Event]) -> list[_Message]:
        with self._cond:
            batch: list[_Message] = []
            for endpoint in self.endpoints.values():
                if not endpoint.enabled:
                    continue
                mine = [
                    e for e in events if endpoint.events is None or e.type in endpoint.events
                ]
                if self.order == "reverse":
                    mine.reverse()
                elif self.order == "shuffle":
                    self._rng.shuffle(mine)
                for event in mine:
                    webhook_id = str(uuid.UUID(int=self._rng.getrandbits(128), version=4))
                    batch.append(_Message(webhook_id, endpoint, event.type, event.body))
                    if self._forced_duplicates or (
                        self.duplicate_rate and self._rng.random() < self.duplicate_rate
                    ):
                        self._forced_duplicates = max(0, self._forced_duplicates - 1)
                        batch.append(
                            _Message(webhook_id, endpoint, event.type, event.body, True)
                        )
            return batch

    # --- attempts -----------------------------------------------------------------

    def _attempt(self, message: _Message) -> bool:
        """Make one attempt; return whether another one should follow."""
        with self._cond:
            if not message.endpoint.enabled:
                return False
            message.attempts += 1
            forced = self._forced_failures.pop(0) if self._forced_failures else None
        timestamp = int(
            self.signing_clock.now().timestamp() if self.signing_clock else time.time()
        )
        status: int | None
        error: str | None = None
        if forced is not None:
            status, error = forced, "simulated failure (not sent)"
        else:
            status, error = self._post(message, timestamp)
        attempt = DeliveryAttempt(
            webhook_id=message.webhook_id,
            event_type=message.event_type,
            endpoint_id=message.endpoint.id,
            url=message.endpoint.url,
            attempt=message.attempts,
            timestamp=timestamp,
            at=datetime.now(UTC),
            status_code=status,
            error=error,
            body=message.body,
            simulated=forced is not None,
            redelivery=message.redelivery,
        )
        with self._cond:
            self._log.append(attempt)
            if attempt.ok:
                message.endpoint.failed_in_a_row = 0
                return False
            if message.attempts < self.max_attempts:
                return True
            message.endpoint.failed_in_a_row += 1
            if message.endpoint.failed_in_a_row >= FAILURE_THRESHOLD:
                message.endpoint.enabled = False
            return False

    def _post(self, message: _Message, timestamp: int) -> tuple[int | None, str | None]:
        headers = sign_webhook(
            message.body,
            self._secret,
            msg_id=message.webhook_id,
            timestamp=timestamp,
            derivation=self.derivation,
        )
        headers["user-agent"] = USER_AGENT
        headers["content-type"] = "application/json"
        parts = urlsplit(message.endpoint.url)
        connection_class = (
            http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        )
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        connection = connection_class(parts.netloc, timeout=self.timeout)
        try:
            connection.request("POST", path, body=message.body, headers=headers)
            response = connection.getresponse()
            response.read(_RESPONSE_READ_LIMIT)
            return response.status, None
        except (OSError, http.client.HTTPException) as exc:
            return None, f"{type(exc).__name__}: {exc}"
        finally:
            connection.close()

    def _backoff(self, attempts: int) -> float:
        """Seconds before the next attempt after ``attempts`` failed ones (compressed)."""
        with self._cond:
            delay_ms: float = _BACKOFF_FACTOR_MS * (2**attempts) * self._rng.uniform(1, 2)
            if delay_ms > _BACKOFF_MAX_MS:
                delay_ms = self._rng.uniform(_BACKOFF_MAX_MS / 2, _BACKOFF_MAX_MS)
        return delay_ms / 1000 * self.retry_time_scale

    # --- background worker ----------------------------------------------------------

    def _push(self, due: float, message: _Message) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (due, self._seq, message))

    def start(self) -> None:
        """Start the worker thread (background mode only)."""
        if not self.background or self._worker is not None:
            return
        self._stopping = False
        self._worker = threading.Thread(target=self._run, name="fake-polar-delivery", daemon=True)
        self._worker.start()

    def stop(self) -> None:
        """Stop the worker; undelivered messages stay queued."""
        worker = self._worker
        if worker is None:
            return
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        worker.join(timeout=self.timeout + 5)
        self._worker = None

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and (
                    not self._queue or self._queue[0][0] > time.monotonic()
                ):
                    wait = self._queue[0][0] - time.monotonic() if self._queue else None
                    self._cond.wait(wait)
                if self._stopping:
                    return
                _, _, message = heapq.heappop(self._queue)
                self._busy += 1
            try:
                again = self._attempt(message)
                if again:
                    due = time.monotonic() + self._backoff(message.attempts)
                    with self._cond:
                        self._push(due, message)
            finally:
                with self._cond:
                    self._busy -= 1
                    self._cond.notify_all()

    def wait(self, timeout: float) -> None:
        """Block until nothing is queued or being sent; ``TimeoutError`` after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queue or self._busy:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"{len(self._queue)} webhook message(s) still pending after {timeout} s"
                    )
                self._cond.wait(remaining)
