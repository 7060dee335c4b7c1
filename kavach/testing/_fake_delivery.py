"""Webhook delivery for the fake Polar (private).

Mirrors Polar's sender (``webhook/tasks.py``): one POST per event and endpoint, headers
``user-agent``/``content-type``/``webhook-id``/``webhook-timestamp``/``webhook-signature``,
a 10 s timeout, success only on 2xx, redirects not followed, up to 10 attempts on
dramatiq's backoff (``2000 ms * 2**n * U(1, 2)``, capped at 20 min) — time-compressed by
``retry_time_scale`` — and an endpoint disabled after 10 events in a row failed for good.
The signature timestamp is taken from ``signing_clock`` at each attempt (re-signed).

Sync mode: one worker thread (the *lane*) sends batches — one action's events — one after
the other. A helper's batch is waited for; an API request's batch is handed over after
its response is written, and not waited for. Within a batch every message gets its first
attempt before any retry, so a retried event arrives after the newer events of the same
action, as Polar's may; a batch (retries included) still ends before the next one starts.
Background mode: a worker sends every message when due, retries on their own schedule.
"""

from __future__ import annotations

import heapq
import http.client
import itertools
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Literal
from urllib.parse import urlsplit

from attrs import define, field, frozen

from kavach.clock import Clock
from kavach.errors import ConfigurationError
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
#: Polar's ``WebhookEventType`` (polar-api.md §4): what an endpoint can subscribe to.
WEBHOOK_EVENT_TYPES = frozenset({
    "checkout.created", "checkout.updated", "checkout.expired",
    "customer.created", "customer.updated", "customer.deleted", "customer.state_changed",
    "customer_seat.assigned", "customer_seat.claimed", "customer_seat.revoked",
    "member.created", "member.updated", "member.deleted",
    "order.created", "order.updated", "order.paid", "order.refunded",
    "subscription.created", "subscription.updated", "subscription.active",
    "subscription.canceled", "subscription.uncanceled", "subscription.cycled",
    "subscription.revoked", "subscription.past_due", "subscription.paused",
    "subscription.resumed",
    "refund.created", "refund.updated", "product.created", "product.updated",
    "discount.created", "discount.updated", "discount.deleted",
    "benefit.created", "benefit.updated",
    "benefit_grant.created", "benefit_grant.cycled", "benefit_grant.updated",
    "benefit_grant.revoked", "organization.updated",
})


def validated_endpoint_url(url: object) -> str:
    """``url`` if the sender can POST to it (an absolute http(s) URL); else
    ``ConfigurationError``."""
    if not isinstance(url, str):
        raise ConfigurationError(
            f"webhook endpoint url must be a str, not {type(url).__name__}", field="url")
    if any(ord(char) <= 32 or ord(char) >= 127 for char in url):
        raise ConfigurationError(
            f"webhook endpoint url {url!r} has spaces, control or non-ASCII characters "
            "(percent-encode them)", field="url")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError as exc:
        raise ConfigurationError(f"webhook endpoint url {url!r} is not a valid URL: {exc}",
                                 field="url") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(
            f"webhook endpoint url {url!r} must be an absolute http:// or https:// URL",
            field="url")
    return url


def validated_event_types(events: object) -> frozenset[str] | None:
    """The endpoint's event types (``None``: all), or ``ConfigurationError``."""
    if events is None:
        return None
    if isinstance(events, str | bytes) or not isinstance(events, Iterable):
        raise ConfigurationError(
            "events must be a list of event types, e.g. ['subscription.updated'], "
            f"not {type(events).__name__} {events!r}", field="events")
    names = list(events)
    unknown = [name for name in names
               if not isinstance(name, str) or name not in WEBHOOK_EVENT_TYPES]
    if unknown:
        raise ConfigurationError(
            f"unknown webhook event type(s): {', '.join(map(repr, unknown))} "
            "(Polar's are e.g. 'subscription.updated', 'order.paid')", field="events")
    return frozenset(names)


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


_Scheduled = tuple[float, int, _Message]


def _nothing() -> None:
    """What ``submit_later`` returns when no message is to be sent."""


@define
class _Batch:
    """One action's messages for the sync lane: first attempts in order, then retries.

    ``ready`` is ``False`` while the API request that caused it is still answering: the
    batch already holds its place on the lane (batches go out in the order their actions
    happened), but the lane waits for it before sending it or anything after it."""

    first: deque[_Message]
    retries: list[_Scheduled] = field(factory=list)
    done: bool = False
    ready: bool = True


class Deliverer:
    """Signs and sends events to the registered endpoints from a worker thread."""

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
        self._scheduled: list[_Scheduled] = []  # background mode: messages by due time
        self._lane: deque[_Batch] = deque()  # sync mode: batches not yet taken by the lane
        self._sequence = itertools.count()
        self._busy = 0
        self._announced = 0  # API requests' batches prepared but not queued yet
        self._forced_duplicates = 0
        self._forced_failures: list[int] = []
        self._worker: threading.Thread | None = None
        self._worker_running = False
        self._stop = threading.Event()

    def __repr__(self) -> str:
        return (
            f"Deliverer(endpoints={len(self.endpoints)}, attempts={len(self._log)}, "
            f"background={self.background})"
        )

    # --- controls -----------------------------------------------------------------

    def add_endpoint(self, url: str, events: Iterable[str] | None) -> str:
        """Register an endpoint; returns its id (``ConfigurationError`` for a bad one)."""
        checked_url = validated_endpoint_url(url)
        event_types = validated_event_types(events)
        with self._cond:
            endpoint = WebhookEndpoint(
                id=str(uuid.UUID(int=self._rng.getrandbits(128), version=4)),
                url=checked_url,
                events=event_types,
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
        """Deliver one action's events to every subscribed, enabled endpoint; in sync mode
        return once they are delivered, retries included (background mode: queue them)."""
        self._send(self._messages(events), wait=True)

    def submit_later(self, events: Sequence[Event]) -> Callable[[], None]:
        """Prepare an API request's events; the returned function (call it once, after the
        response is written) releases them. ``wait`` counts them from now on, and in sync
        mode they keep their place: a helper called after the request answered waits
        for them."""
        messages = self._messages(events)
        if not messages:
            return _nothing
        if self.background:
            with self._cond:
                self._announced += 1
            return partial(self._send, messages, wait=False, announced=True)
        batch = _Batch(deque(messages), ready=False)
        with self._cond:
            self._lane.append(batch)
        return partial(self._release, batch)

    def _release(self, batch: _Batch) -> None:
        """An API request answered: the lane may send its batch."""
        with self._cond:
            batch.ready = True
            self._cond.notify_all()

    def redeliver(self, webhook_id: str) -> None:
        """Send an earlier message again (as the dashboard's "redeliver" does)."""
        with self._cond:
            found = next((a for a in self._log if a.webhook_id == webhook_id), None)
            endpoint = self.endpoints.get(found.endpoint_id) if found else None
        if found is None or endpoint is None:
            raise KeyError(webhook_id)
        self._send([_Message(webhook_id, endpoint, found.event_type, found.body, True)],
                   wait=True)

    def _send(self, messages: list[_Message], *, wait: bool, announced: bool = False) -> None:
        """Queue ``messages`` as one batch (sync: on the lane; background: scheduled), and
        with ``wait`` (sync) block until it is delivered."""
        batch = _Batch(deque(messages))
        with self._cond:
            if announced:
                self._announced -= 1
            if messages and self.background:
                self._schedule(messages)
            elif messages:
                self._lane.append(batch)
            self._cond.notify_all()
        if wait and messages and not self.background:
            self._wait_for(batch)

    def _wait_for(self, batch: _Batch) -> None:
        """Block until the lane delivered ``batch``. If no lane runs (not started, or
        stopped meanwhile), deliver here the batches queued up to it, in order."""
        with self._cond:
            while not batch.done and self._worker_running:
                self._cond.wait()
            if batch.done:
                return
            ahead = self._lane.index(batch) + 1
            while not all(self._lane[i].ready for i in range(ahead)):
                self._cond.wait()  # an API request still answering: its batch goes first
            mine = [self._lane.popleft() for _ in range(ahead)]
            self._busy += 1
        try:
            for queued in mine:
                self._work(queued, interruptible=False)
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
        status: int | None
        error: str | None = None
        try:
            timestamp = int(
                self.signing_clock.now().timestamp() if self.signing_clock else time.time()
            )
            if forced is not None:
                status, error = forced, "simulated failure (not sent)"
            else:
                status, error = self._post(message, timestamp)
        except Exception as exc:  # a raising clock or signer: this attempt failed, not the sender
            timestamp, status, error = int(time.time()), None, f"{type(exc).__name__}: {exc}"
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
        """POST the signed message: ``(status, None)``, or ``(None, error)`` when it failed."""
        headers = sign_webhook(
            message.body,
            self._secret,
            msg_id=message.webhook_id,
            timestamp=timestamp,
            derivation=self.derivation,
        )
        headers["user-agent"] = USER_AGENT
        headers["content-type"] = "application/json"
        connection: http.client.HTTPConnection | None = None
        try:
            parts = urlsplit(message.endpoint.url)
            connection_class = (
                http.client.HTTPSConnection if parts.scheme == "https"
                else http.client.HTTPConnection
            )
            connection = connection_class(parts.hostname or "", parts.port,
                                          timeout=self.timeout)
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            connection.request("POST", path, body=message.body, headers=headers)
            response = connection.getresponse()
            response.read(_RESPONSE_READ_LIMIT)
            return response.status, None
        except Exception as exc:  # any failure is this attempt's, never the sender's
            return None, f"{type(exc).__name__}: {exc}"
        finally:
            if connection is not None:
                connection.close()

    def _backoff(self, attempts: int) -> float:
        """Seconds before the next attempt after ``attempts`` failed ones (compressed)."""
        with self._cond:
            delay_ms: float = _BACKOFF_FACTOR_MS * (2**attempts) * self._rng.uniform(1, 2)
            if delay_ms > _BACKOFF_MAX_MS:
                delay_ms = self._rng.uniform(_BACKOFF_MAX_MS / 2, _BACKOFF_MAX_MS)
        return delay_ms / 1000 * self.retry_time_scale

    def _attempt_or_reschedule(self, message: _Message, schedule: list[_Scheduled]) -> None:
        """Attempt ``message``; push its retry onto ``schedule`` if one should follow."""
        if self._attempt(message):
            due = time.monotonic() + self._backoff(message.attempts)
            heapq.heappush(schedule, (due, next(self._sequence), message))

    # --- the sync lane --------------------------------------------------------------

    def _work(self, batch: _Batch, *, interruptible: bool) -> bool:
        """Deliver ``batch``: first attempts in order, then retries when due.

        Returns ``False`` when the worker was asked to stop first (``interruptible``);
        the batch then keeps what is left.
        """
        while batch.first:
            if not self._pause(self.delay, interruptible=interruptible):
                return False
            self._attempt_or_reschedule(batch.first.popleft(), batch.retries)
        while batch.retries:
            if not self._pause(batch.retries[0][0] - time.monotonic(),
                               interruptible=interruptible):
                return False
            _, _, message = heapq.heappop(batch.retries)
            self._attempt_or_reschedule(message, batch.retries)
        with self._cond:
            batch.done = True
        return True

    def _pause(self, seconds: float, *, interruptible: bool) -> bool:
        """Wait ``seconds``; ``False`` if a stop was asked for (only when ``interruptible``)."""
        if not interruptible:
            if seconds > 0:
                time.sleep(seconds)
            return True
        return not self._stop.wait(max(seconds, 0))

    def _run_lane(self) -> None:
        try:
            while (batch := self._take_batch()) is not None:
                finished = False
                try:
                    finished = self._work(batch, interruptible=True)
                finally:
                    with self._cond:
                        if not finished:
                            self._lane.appendleft(batch)
                        self._busy -= 1
                        self._cond.notify_all()
        finally:
            self._worker_ended()

    def _worker_ended(self) -> None:
        """The worker thread is returning: waiting helpers stop waiting for it."""
        with self._cond:
            self._worker_running = False
            self._cond.notify_all()

    def _take_batch(self) -> _Batch | None:
        """The next batch, once ready (counted as busy), or ``None`` once a stop was asked
        for."""
        with self._cond:
            while not (self._lane and self._lane[0].ready) and not self._stop.is_set():
                self._cond.wait()
            if self._stop.is_set():
                return None
            self._busy += 1
            return self._lane.popleft()

    # --- background mode --------------------------------------------------------------

    def _schedule(self, messages: list[_Message]) -> None:
        """Schedule each message's first attempt (the caller holds the lock)."""
        start = time.monotonic() + self.delay
        for message in messages:
            heapq.heappush(self._scheduled, (start, next(self._sequence), message))

    def _run_background(self) -> None:
        try:
            while (message := self._take_due_message()) is not None:
                try:
                    retry: list[_Scheduled] = []
                    self._attempt_or_reschedule(message, retry)
                    with self._cond:
                        for scheduled in retry:
                            heapq.heappush(self._scheduled, scheduled)
                finally:
                    with self._cond:
                        self._busy -= 1
                        self._cond.notify_all()
        finally:
            self._worker_ended()

    def _take_due_message(self) -> _Message | None:
        """The next due message (counted as busy), or ``None`` once a stop was asked for."""
        with self._cond:
            while not self._stop.is_set() and (
                not self._scheduled or self._scheduled[0][0] > time.monotonic()
            ):
                wait = self._scheduled[0][0] - time.monotonic() if self._scheduled else None
                self._cond.wait(wait)
            if self._stop.is_set():
                return None
            _, _, message = heapq.heappop(self._scheduled)
            self._busy += 1
            return message

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker thread: the sync lane, or the background sender."""
        previous = self._worker
        if previous is not None and previous.is_alive() and not self._stop.is_set():
            return
        if previous is not None:
            previous.join()  # a worker still stopping: let it put its work back first
        self._stop.clear()
        with self._cond:
            self._worker_running = True
        self._worker = threading.Thread(
            target=self._run_background if self.background else self._run_lane,
            name="fake-polar-delivery", daemon=True,
        )
        self._worker.start()

    def stop(self) -> None:
        """Stop the worker after its current attempt; undelivered messages stay queued."""
        worker = self._worker
        if worker is None:
            return
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        worker.join(timeout=self.timeout + 5)
        if not worker.is_alive():
            self._worker = None

    def wait(self, timeout: float) -> None:
        """Block until nothing is queued or being sent; ``TimeoutError`` after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._scheduled or self._lane or self._busy or self._announced:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    queued = len(self._scheduled) + sum(len(b.first) for b in self._lane)
                    raise TimeoutError(
                        f"webhook deliveries still pending after {timeout} s ({queued} "
                        f"message(s) queued, {self._busy} being sent)"
                    )
                self._cond.wait(remaining)
