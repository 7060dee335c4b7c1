"""``FakePolar``: a local, faithful fake of the Polar API for tests and offline development.

It is a real HTTP server on 127.0.0.1 speaking Polar's ``/v1`` API (paths, JSON shapes,
error shapes, pagination, auth and version headers as in ``polar-api.md``), with a hosted
checkout page and customer portal, a fake clock that drives renewals and scheduled
cancellations, and a webhook sender that signs, retries and misbehaves on request
(duplicates, reordering, failures) the way Polar's does::

    with FakePolar() as fake:
        fake.add_webhook_endpoint("http://127.0.0.1:8000/api/kavach/auth/polar/webhook")
        checkout = fake.create_checkout(external_customer_id="user_1")
        sub = fake.complete_checkout(checkout["id"])     # events delivered (sync mode)
        fake.advance(days=31)                            # renewal: updated + cycled + order

Webhook ``webhook-timestamp`` headers use the real wall clock by default (like Polar's, they
are send times), while object and event times follow the fake clock; pass
``signing_clock=`` to sign with another clock, e.g. the fake's own when the receiver
verifies against that same clock.

When webhooks go out (default ``deliver="sync"``): a Python helper (``complete_checkout``,
``advance``, ``cancel``...) returns once its events are delivered, retries included. An
HTTP call to the fake (``POST /v1/checkouts/``, ``PATCH``/``DELETE`` a subscription, the
hosted pay page, the portal) is answered first; its events are sent right after, from a
worker, as Polar's are — so an app may call the fake while handling a request, even on a
single thread. Use ``wait_for_deliveries()`` before checking what such a call's webhooks
did. Batches go out one at a time, in the order they happened. Within one batch a failed
message is retried after the batch's other messages (so it arrives after newer ones, as
Polar allows), but the batch, retries included, ends before the next one starts: unlike
Polar, a retry never lets a *later action's* events overtake it. ``deliver="background"``
sends every message on its own schedule (retries interleave with later events); call
``wait_for_deliveries()`` there too. In sync mode a helper waits for earlier batches to
finish first, so do not call one from inside a webhook handler the fake is delivering to.
``close()`` keeps undelivered messages queued (a helper still waiting then sends the
batches queued up to its own, in order, and returns).
"""

from __future__ import annotations

import json
import math
import secrets
import string
import threading
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Literal, Self

from kavach.clock import Clock, FrozenClock
from kavach.errors import ConfigurationError, KavachError
from kavach.polar.webhooks import Derivation, secret_keys
from kavach.testing._fake_api import Api, Request
from kavach.testing._fake_delivery import ORDERS, Deliverer, DeliveryAttempt, Order
from kavach.testing._fake_objects import JSON, customer_json, dumps
from kavach.testing._fake_pages import Pages
from kavach.testing._fake_server import FakeHTTPServer, Gateway
from kavach.testing._fake_state import ApiError, Event, FakeState

__all__ = ["DEFAULT_ORGANIZATION_ID", "DeliveryAttempt", "FakePolar", "FakePolarError"]

DEFAULT_ORGANIZATION_ID = "0e6b1f7c-3c1a-4f0e-9a3d-6b1c2d3e4f50"
RECURRING_INTERVALS = ("day", "week", "month", "year")
MAX_TRIAL_DAYS = 1000  # Polar's trial_interval_count bound (le=1000)
_SECRET_ALPHABET = string.ascii_letters + string.digits
_SECRET_LENGTH = 43


class FakePolarError(KavachError):
    """A FakePolar helper was refused; ``status_code`` and ``body`` are what the API answers."""

    def __init__(self, status_code: int, body: JSON | None) -> None:
        detail = (body or {}).get("detail")
        if isinstance(detail, list):
            detail = "; ".join(str(d.get("msg")) for d in detail if isinstance(d, dict))
        super().__init__(f"FakePolar refused ({status_code}): {detail}")
        self.status_code = status_code
        self.body = body


def _generate_secret() -> str:
    """A secret shaped like Polar's current ones: ``whsec_`` + 43 alphanumerics.

    The tail is also valid (unpadded) base64, so both derivations can sign with it.
    """
    return "whsec_" + "".join(secrets.choice(_SECRET_ALPHABET) for _ in range(_SECRET_LENGTH))


def _check_positive_number(value: float, name: str, *, allow_zero: bool) -> None:
    """``ConfigurationError`` unless ``value`` is a finite real number > 0 (>= 0 if allowed)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
        or (value == 0 and not allow_zero)
    ):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigurationError(f"{name} must be a finite number {bound}, not {value!r}",
                                 field=name)


class FakePolar:
    """A local Polar: real HTTP server, fake clock, signed webhook deliveries.

    Args:
        token: the only accepted bearer token; ``None`` accepts any bearer token.
        webhook_secret: the endpoints' signing secret (default: a new one shaped like
            Polar's, ``whsec_`` + 43 alphanumerics).
        derivation: which HMAC key signs deliveries: ``"standard"`` (base64-decoded tail)
            or ``"legacy"`` (the whole secret's bytes).
        clock: the fake's clock (default: a ``FrozenClock`` at the real now).
        organization_id: the organization every object belongs to.
        sandbox: add ``X-Polar-Sandbox: 1`` to responses.
        deliver: ``"sync"`` (a helper returns once its events are delivered; an HTTP
            call's events are sent after its response) or ``"background"`` (a worker
            sends everything on its own schedule); see the module docstring.
        host, port: where to listen (port 0: a free port).
        seed: seeds ids, tokens, reordering, duplicates and backoff jitter.
        retry_time_scale: factor applied to Polar's retry backoff (0.001: 4-8 s → 4-8 ms).
        signing_clock: clock for ``webhook-timestamp`` (default: the real wall clock).
        check_email_domains: refuse special-use and null-MX email domains (``*.test``,
            ``example.com``...) as Polar's DNS-checked email fields do.
        max_attempts, delivery_timeout: Polar's 10 attempts and 10 s per attempt
            (``delivery_timeout`` in seconds, > 0).
    """

    def __init__(
        self,
        *,
        token: str | None = None,
        webhook_secret: str | None = None,
        derivation: Derivation = "standard",
        clock: Clock | None = None,
        organization_id: str = DEFAULT_ORGANIZATION_ID,
        sandbox: bool = True,
        deliver: Literal["sync", "background"] = "sync",
        host: str = "127.0.0.1",
        port: int = 0,
        seed: int | None = None,
        retry_time_scale: float = 0.001,
        signing_clock: Clock | None = None,
        check_email_domains: bool = True,
        max_attempts: int = 10,
        delivery_timeout: float = 10.0,
    ) -> None:
        if derivation not in ("standard", "legacy"):
            raise ConfigurationError("derivation must be 'standard' or 'legacy'",
                                     field="derivation")
        if deliver not in ("sync", "background"):
            raise ConfigurationError("deliver must be 'sync' or 'background'", field="deliver")
        secret = webhook_secret if webhook_secret is not None else _generate_secret()
        if not secret.strip():
            raise ConfigurationError("webhook_secret must not be empty", field="webhook_secret")
        if derivation not in dict(secret_keys(secret)):
            raise ConfigurationError(
                "derivation 'standard' needs a whsec_ secret with a base64 tail",
                field="derivation",
            )
        _check_positive_number(retry_time_scale, "retry_time_scale", allow_zero=True)
        _check_positive_number(delivery_timeout, "delivery_timeout", allow_zero=False)
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or (
            max_attempts < 1
        ):
            raise ConfigurationError("max_attempts must be an int >= 1", field="max_attempts")
        self._secret = secret
        self._clock: Clock = clock if clock is not None else FrozenClock()
        self._address = (host, port)
        self._state = FakeState(clock=self._clock, organization_id=organization_id, seed=seed)
        self._deliverer = Deliverer(
            secret=secret,
            derivation=derivation,
            background=deliver == "background",
            seed=None if seed is None else seed + 1,
            retry_time_scale=retry_time_scale,
            max_attempts=max_attempts,
            timeout=delivery_timeout,
            signing_clock=signing_clock,
        )
        self._api = Api(self._state, check_email_domains=check_email_domains)
        self._gateway = Gateway(self._api, Pages(self._state), token=token, sandbox=sandbox)
        self._server: FakeHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._url: str | None = None
        self.product_id = self.add_product("Pro", amount=2000, currency="usd",
                                           recurring_interval="month")
        """The monthly "Pro" product (2000 usd) the fake starts with."""

    def __repr__(self) -> str:
        return (
            f"FakePolar(url={self._url!r}, products={len(self._state.products)}, "
            f"subscriptions={len(self._state.subscriptions)}, "
            f"endpoints={len(self._deliverer.endpoints)})"
        )

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> Self:
        """Start serving (idempotent); returns ``self``."""
        if self._server is not None:
            return self
        server = FakeHTTPServer(self._address, self._gateway, self._deliverer.submit_later)
        host, port = server.server_address[:2]
        self._url = f"http://{host!s}:{port}"
        self._state.base_url = self._url
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05},
            name="fake-polar-http", daemon=True,
        )
        self._thread.start()
        self._deliverer.start()
        return self

    def close(self) -> None:
        """Stop the server, its connections (keep-alive ones too) and the delivery worker
        (idempotent); state is kept, undelivered messages stay queued."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
            server.close_connections()
        if thread is not None:
            thread.join(timeout=5)
        self._deliverer.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- configuration ----------------------------------------------------------------

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:54321`` (no trailing slash)."""
        if self._url is None:
            raise RuntimeError("FakePolar is not started: use `with FakePolar() as fake` "
                               "or call start()")
        return self._url

    @property
    def webhook_secret(self) -> str:
        """The secret deliveries are signed with."""
        return self._secret

    @property
    def derivation(self) -> Derivation:
        """Which key of the secret signs deliveries (``standard`` or ``legacy``)."""
        return self._deliverer.derivation

    @property
    def clock(self) -> Clock:
        """The fake's clock."""
        return self._clock

    @property
    def organization_id(self) -> str:
        """The organization every object belongs to."""
        return self._state.organization_id

    def add_product(
        self,
        name: str,
        *,
        amount: int = 2000,
        currency: str = "usd",
        recurring_interval: str | None = "month",
        recurring_interval_count: int = 1,
        trial_days: int | None = None,
        description: str | None = None,
    ) -> str:
        """Add a product with one fixed price; ``recurring_interval=None`` is a one-time one."""
        if recurring_interval is not None and recurring_interval not in RECURRING_INTERVALS:
            raise ConfigurationError(f"recurring_interval must be one of {RECURRING_INTERVALS}",
                                     field="recurring_interval")
        if amount < 0 or recurring_interval_count < 1 or (
            trial_days is not None and not 1 <= trial_days <= MAX_TRIAL_DAYS
        ):
            raise ConfigurationError("amount >= 0, recurring_interval_count >= 1 and "
                                     f"trial_days in 1..{MAX_TRIAL_DAYS} are required",
                                     field="amount")
        product, events = self._state.add_product(
            name, amount=amount, currency=currency, recurring_interval=recurring_interval,
            recurring_interval_count=recurring_interval_count,
            trial_interval="day" if trial_days else None, trial_interval_count=trial_days,
            description=description,
        )
        self._dispatch(events)
        return product.id

    def add_webhook_endpoint(self, url: str, events: Iterable[str] | None = None) -> str:
        """Register a webhook endpoint; returns its id.

        ``url`` must be an absolute ``http://`` or ``https://`` URL; ``events`` is a list of
        Polar event types to send (``None``: all of them). ``ConfigurationError`` (a
        ``ValueError``) for a URL the sender cannot use, a bare string as ``events`` or an
        unknown event type.
        """
        return self._deliverer.add_endpoint(url, events)

    @property
    def webhook_endpoints(self) -> list[JSON]:
        """The endpoints: ``id``, ``url``, ``events``, ``enabled`` (auto-disabled after 10
        events in a row failed for good)."""
        return [
            {"id": e.id, "url": e.url, "enabled": e.enabled,
             "events": None if e.events is None else sorted(e.events)}
            for e in self._deliverer.endpoint_list()
        ]

    def enable_webhook_endpoint(self, endpoint_id: str) -> None:
        """Re-enable an auto-disabled endpoint."""
        self._deliverer.enable(endpoint_id)

    # --- customer actions -------------------------------------------------------------

    def create_checkout(self, product_id: str | None = None, **fields: Any) -> JSON:
        """Create a checkout as ``POST /v1/checkouts/`` would (same validation).

        ``product_id`` defaults to :attr:`product_id`; other keyword arguments are body
        fields (``external_customer_id``, ``customer_email``, ``success_url``...).
        """
        body = {"products": [product_id or self.product_id], **fields}
        request = Request("POST", "/v1/checkouts/", {}, {}, dumps(body))
        response = self._api.handle(request)
        data: JSON = json.loads(response.body)
        if response.status != 201:
            raise FakePolarError(response.status, data)
        self._dispatch(response.events)
        return data

    def complete_checkout(
        self, checkout_id: str, *, email: str | None = None, name: str | None = None
    ) -> JSON:
        """The customer pays: returns the new subscription (the order, if one-time).

        The customer is found by the checkout's external id or email — an email match is
        reused as is, its ``external_id`` untouched (Polar's caveat) — or created. Events:
        ``customer.created`` (new customer), ``checkout.updated`` (confirmed),
        ``subscription.created``, ``.active``, ``.updated``, ``order.created``,
        ``order.paid``, ``checkout.updated`` (succeeded), ``customer.state_changed``.
        """
        return self._run(lambda: self._state.complete_checkout(checkout_id, email=email,
                                                               name=name))

    def customer_session_url(self, customer_id: str, return_url: str | None = None) -> str:
        """A portal URL for the customer (as ``POST /v1/customer-sessions/`` gives)."""
        with self._state.lock:
            try:
                customer = self._state.customer(customer_id)
            except ApiError as error:
                raise FakePolarError(error.status, error.body) from None
            url: str = self._state.create_session(customer, return_url)["customer_portal_url"]
        return url

    # --- time and subscription changes --------------------------------------------------

    def advance(
        self, days: float = 0, hours: float = 0, minutes: float = 0, seconds: float = 0,
        weeks: float = 0,
    ) -> datetime:
        """Move the clock, then expire checkouts and end or renew subscriptions due by now.

        Renewal: ``updated`` + ``cycled`` + ``order.created``/``order.paid``; scheduled
        cancellation: ``updated`` + ``canceled`` + ``revoked``; each followed by
        ``customer.state_changed``. Several passed periods are handled in order. With a
        clock that is not a ``FrozenClock``, move it yourself and call ``advance()``.
        """
        step = timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds, weeks=weeks)
        if step and not isinstance(self._clock, FrozenClock):
            raise TypeError("advance(...) can only move a FrozenClock; move your clock "
                            "yourself, then call advance()")
        if isinstance(self._clock, FrozenClock):
            self._clock.advance(step)
        self._dispatch(self._state.process_due())
        return self._clock.now()

    def cancel(
        self, subscription_id: str, *, reason: str | None = None, comment: str | None = None
    ) -> JSON:
        """Cancel at period end (``PATCH {"cancel_at_period_end": true}``)."""
        return self._run(lambda: self._state.cancel(subscription_id, reason=reason,
                                                    comment=comment))

    def uncancel(self, subscription_id: str) -> JSON:
        """Undo a scheduled cancellation (``PATCH {"cancel_at_period_end": false}``)."""
        return self._run(lambda: self._state.uncancel(subscription_id))

    def revoke(self, subscription_id: str) -> JSON:
        """End the subscription now (``DELETE /v1/subscriptions/{id}``)."""
        return self._run(lambda: self._state.revoke(subscription_id))

    def past_due(self, subscription_id: str) -> JSON:
        """A renewal payment failed: status ``past_due``."""
        return self._run(lambda: self._state.past_due(subscription_id))

    def recover(self, subscription_id: str) -> JSON:
        """The overdue payment went through: ``past_due`` → ``active``."""
        return self._run(lambda: self._state.recover(subscription_id))

    def mark_unpaid(self, subscription_id: str) -> JSON:
        """Dunning gave up: ``past_due`` → ``unpaid`` (``updated`` + ``revoked``)."""
        return self._run(lambda: self._state.mark_unpaid(subscription_id))

    def _run(self, action: Any) -> JSON:
        try:
            data, events = action()
        except ApiError as error:
            raise FakePolarError(error.status, error.body) from None
        self._dispatch(events)
        result: JSON = data
        return result

    def _dispatch(self, events: Sequence[Event]) -> None:
        """A helper's events: delivered before the helper returns (sync mode)."""
        self._deliverer.submit(events)

    # --- read-only views --------------------------------------------------------------

    @property
    def subscriptions(self) -> dict[str, JSON]:
        """Every subscription's current JSON, by id (a fresh copy)."""
        with self._state.lock:
            return {k: self._state.render_subscription(s)
                    for k, s in self._state.subscriptions.items()}

    @property
    def checkouts(self) -> dict[str, JSON]:
        """Every checkout's current JSON, by id (a fresh copy)."""
        with self._state.lock:
            return {k: self._state.render_checkout(self._state.checkout(k))
                    for k in self._state.checkouts}

    @property
    def customers(self) -> dict[str, JSON]:
        """Every customer's current JSON, by id (a fresh copy)."""
        with self._state.lock:
            return {k: customer_json(c) for k, c in self._state.customers.items()}

    @property
    def orders(self) -> dict[str, JSON]:
        """Every order's current JSON, by id (a fresh copy)."""
        with self._state.lock:
            return {k: self._state.render_order(o) for k, o in self._state.orders.items()}

    @property
    def events(self) -> list[JSON]:
        """Every webhook event produced so far (envelopes), delivered or not."""
        with self._state.lock:
            bodies = [e.body for e in self._state.events]
        return [json.loads(b) for b in bodies]

    # --- delivery -------------------------------------------------------------------

    @property
    def deliveries(self) -> list[DeliveryAttempt]:
        """Every delivery attempt so far, in the order they were made."""
        return self._deliverer.log

    def wait_for_deliveries(self, timeout: float = 10.0) -> None:
        """Block until no delivery is queued or in flight, those caused by HTTP calls to
        the fake included (``TimeoutError`` after ``timeout`` seconds)."""
        self._deliverer.wait(timeout)

    def redeliver(self, webhook_id: str) -> None:
        """Send an earlier delivery again, same ``webhook-id`` (the dashboard's redeliver)."""
        self._deliverer.redeliver(webhook_id)

    def fail_next(self, n: int = 1, status: int = 500, *, retry_after: int = 1) -> None:
        """Make the next ``n`` API calls answer ``status`` (429: empty body + retry-after)."""
        self._gateway.fail_next(n, status, retry_after)

    def fail_next_deliveries(self, n: int = 1, status: int = 500) -> None:
        """Fail the next ``n`` delivery attempts (not sent; logged with ``status``)."""
        self._deliverer.fail_next(n, status)

    def duplicate(self, n: int = 1) -> None:
        """Send each of the next ``n`` webhook messages twice (same ``webhook-id``)."""
        self._deliverer.duplicate(n)

    @property
    def duplicate_rate(self) -> float:
        """Probability (0-1) that a message is also sent a second time."""
        return self._deliverer.duplicate_rate

    @duplicate_rate.setter
    def duplicate_rate(self, value: float) -> None:
        if not 0 <= value <= 1:
            raise ConfigurationError("duplicate_rate must be within [0, 1]",
                                     field="duplicate_rate")
        self._deliverer.duplicate_rate = value

    @property
    def order(self) -> Order:
        """How each action's events are ordered: ``in_order``, ``reverse`` or ``shuffle``."""
        return self._deliverer.order

    @order.setter
    def order(self, value: Order) -> None:
        if value not in ORDERS:
            raise ConfigurationError(f"order must be one of {ORDERS}", field="order")
        self._deliverer.order = value

    @property
    def delay(self) -> float:
        """Seconds to wait before each message's first attempt."""
        return self._deliverer.delay

    @delay.setter
    def delay(self, value: float) -> None:
        _check_positive_number(value, "delay", allow_zero=True)
        self._deliverer.delay = value

    @property
    def retry_time_scale(self) -> float:
        """Factor applied to Polar's retry backoff."""
        return self._deliverer.retry_time_scale

    @retry_time_scale.setter
    def retry_time_scale(self, value: float) -> None:
        _check_positive_number(value, "retry_time_scale", allow_zero=True)
        self._deliverer.retry_time_scale = value
