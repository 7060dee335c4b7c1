"""The fake Polar's state core: records, ids, time, events, lookups (private).

Every mutation runs under one re-entrant lock and returns the webhook events it produced,
in the order Polar's server emits them; the caller delivers them after the lock is released.
Service-level failures raise :class:`ApiError` carrying the exact status and JSON body
Polar would answer with.
"""

from __future__ import annotations

import random
import string
import threading
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from attrs import frozen

from kavach.clock import Clock
from kavach.testing._fake_objects import (
    JSON,
    CheckoutRecord,
    CustomerRecord,
    OrderRecord,
    ProductRecord,
    SessionRecord,
    SubscriptionRecord,
    checkout_json,
    customer_state_json,
    dumps,
    iso,
    order_json,
    product_json,
    session_json,
    subscription_json,
)

CHECKOUT_TTL = timedelta(hours=24)
SESSION_TTL = timedelta(hours=1)
_ONE_MICROSECOND = timedelta(microseconds=1)
_TOKEN_ALPHABET = string.ascii_letters + string.digits
ALREADY_CANCELED = "This subscription is already canceled or will be at the end of the period."


class ApiError(Exception):
    """An error answer: HTTP ``status``, JSON ``body`` (``None``: empty) and extra headers."""

    def __init__(
        self, status: int, body: JSON | None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(f"{status} {body!r}")
        self.status = status
        self.body = body
        self.headers = headers or {}


def not_found() -> ApiError:
    """Polar's 404 for a missing object."""
    return ApiError(404, {"error": "ResourceNotFound", "detail": "Not found"})


def validation_error(errors: list[JSON], *, service: bool = False) -> ApiError:
    """A 422; ``service`` marks errors raised by Polar's services rather than by pydantic."""
    name = "PolarRequestValidationError" if service else "RequestValidationError"
    return ApiError(422, {"error": name, "detail": errors})


def value_error(loc: Iterable[str | int], msg: str, value: Any) -> ApiError:
    """A single service-level 422 entry, as Polar's services raise them."""
    return validation_error(
        [{"type": "value_error", "loc": list(loc), "msg": msg, "input": value}], service=True
    )


@frozen
class Event:
    """One webhook event: its type, creation time and the exact body that gets signed."""

    type: str
    timestamp: datetime
    body: bytes


class StateCore:
    """Products, customers, checkouts, subscriptions, orders and sessions of one organization."""

    def __init__(self, *, clock: Clock, organization_id: str, seed: int | None) -> None:
        self.lock = threading.RLock()
        self.clock = clock
        self.organization_id = organization_id
        self.base_url = ""
        self.products: dict[str, ProductRecord] = {}
        self.customers: dict[str, CustomerRecord] = {}
        self.checkouts: dict[str, CheckoutRecord] = {}
        self.subscriptions: dict[str, SubscriptionRecord] = {}
        self.orders: dict[str, OrderRecord] = {}
        self.sessions: dict[str, SessionRecord] = {}
        self.events: list[Event] = []
        self._rng = random.Random(seed)
        self._last = datetime.min.replace(tzinfo=UTC)
        self._invoice_seq = 0

    # --- ids, time, events --------------------------------------------------------

    def new_id(self) -> str:
        """A UUID4 string (seeded when the fake is)."""
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def new_token(self, prefix: str, length: int = 48) -> str:
        """A random token with Polar's prefix (``polar_c_``, ``polar_cst_``...)."""
        return prefix + "".join(self._rng.choice(_TOKEN_ALPHABET) for _ in range(length))

    def now(self) -> datetime:
        """The fake clock's time."""
        return self.clock.now()

    def tick(self, at: datetime | None = None) -> datetime:
        """A change time: ``at`` (default now) but strictly after every earlier one."""
        moment = max(at or self.clock.now(), self._last + _ONE_MICROSECOND)
        self._last = moment
        return moment

    def _event(self, type_: str, data: JSON, at: datetime | None = None) -> Event:
        moment = self.tick(at)
        body = dumps({"type": type_, "timestamp": iso(moment), "data": data})
        event = Event(type=type_, timestamp=moment, body=body)
        self.events.append(event)
        return event

    # --- lookups and renderings -------------------------------------------------------

    def product(self, product_id: str) -> ProductRecord:
        """The product, or a 404 :class:`ApiError`."""
        found = self.products.get(product_id)
        if found is None:
            raise not_found()
        return found

    def subscription(self, subscription_id: str) -> SubscriptionRecord:
        """The subscription, or a 404 :class:`ApiError`."""
        found = self.subscriptions.get(subscription_id)
        if found is None:
            raise not_found()
        return found

    def customer(self, customer_id: str) -> CustomerRecord:
        """The customer, or a 404 :class:`ApiError`."""
        found = self.customers.get(customer_id)
        if found is None:
            raise not_found()
        return found

    def customer_by_external_id(self, external_id: str) -> CustomerRecord | None:
        """The customer with this ``external_id``, if any."""
        return next((c for c in self.customers.values() if c.external_id == external_id), None)

    def customer_by_email(self, email: str) -> CustomerRecord | None:
        """The customer with this email (case-insensitive), if any."""
        wanted = email.strip().lower()
        return next((c for c in self.customers.values() if c.email.lower() == wanted), None)

    def checkout(self, checkout_id: str) -> CheckoutRecord:
        """The checkout, or a 404. Reading never changes it: an open checkout past its
        ``expires_at`` reads as expired, but only ``process_due`` records the expiry (and
        sends ``checkout.expired``)."""
        found = self.checkouts.get(checkout_id)
        if found is None:
            raise not_found()
        return found

    def checkout_by_secret(self, client_secret: str) -> CheckoutRecord:
        """The checkout with this client secret, or a 404."""
        for checkout in self.checkouts.values():
            if checkout.client_secret == client_secret:
                return checkout
        raise not_found()

    def render_checkout(self, checkout: CheckoutRecord) -> JSON:
        """The checkout as Polar's ``Checkout`` JSON."""
        products = [self.products[p] for p in checkout.product_ids]
        return checkout_json(checkout, products, self.base_url, self.now())

    def render_subscription(self, sub: SubscriptionRecord) -> JSON:
        """The subscription as Polar's ``Subscription`` JSON."""
        return subscription_json(
            sub, self.customers[sub.customer_id], self.products[sub.product_id]
        )

    def render_customer_state(self, customer: CustomerRecord) -> JSON:
        """The customer as Polar's ``CustomerState`` JSON."""
        subs = [s for s in self.subscriptions.values() if s.customer_id == customer.id]
        return customer_state_json(customer, subs)

    def render_order(self, order: OrderRecord) -> JSON:
        """The order as Polar's ``Order`` JSON."""
        sub = self.subscriptions.get(order.subscription_id or "")
        return order_json(
            order, self.customers[order.customer_id], self.products[order.product_id], sub
        )

    def render_session(self, session: SessionRecord) -> JSON:
        """The customer session as Polar's ``CustomerSession`` JSON."""
        return session_json(session, self.customers[session.customer_id], self.base_url)

    # --- products -------------------------------------------------------------------

    def add_product(
        self,
        name: str,
        *,
        amount: int,
        currency: str,
        recurring_interval: str | None,
        recurring_interval_count: int = 1,
        trial_interval: str | None = None,
        trial_interval_count: int | None = None,
        description: str | None = None,
    ) -> tuple[ProductRecord, list[Event]]:
        """Create a product with one fixed price."""
        with self.lock:
            product = ProductRecord(
                id=self.new_id(),
                price_id=self.new_id(),
                name=name,
                created_at=self.tick(),
                amount=amount,
                currency=currency.lower(),
                recurring_interval=recurring_interval,
                recurring_interval_count=recurring_interval_count,
                trial_interval=trial_interval,
                trial_interval_count=trial_interval_count,
                organization_id=self.organization_id,
                description=description,
            )
            self.products[product.id] = product
            return product, [self._event("product.created", product_json(product))]

    def _order(
        self,
        customer: CustomerRecord,
        product: ProductRecord,
        sub: SubscriptionRecord | None,
        checkout_id: str | None,
        amount: int,
        billing_reason: str,
        at: datetime | None = None,
    ) -> OrderRecord:
        self._invoice_seq += 1
        order = OrderRecord(
            id=self.new_id(),
            created_at=self.tick(at),
            customer_id=customer.id,
            product_id=product.id,
            subscription_id=sub.id if sub else None,
            checkout_id=checkout_id,
            amount=amount,
            currency=product.currency,
            billing_reason=billing_reason,
            metadata=dict(sub.metadata) if sub else {},
            invoice_number=f"FAKE-{self._invoice_seq:04d}",
            period_start=sub.current_period_start if sub else None,
            period_end=sub.current_period_end if sub else None,
            item_id=self.new_id(),
        )
        self.orders[order.id] = order
        return order

    def _order_events(self, order: OrderRecord, at: datetime | None = None) -> list[Event]:
        created = self._event("order.created", self.render_order(order), at)
        order.status = "paid"
        order.modified_at = self.tick(at)
        return [created, self._event("order.paid", self.render_order(order), at)]

    def _state_changed(self, sub: SubscriptionRecord, at: datetime | None = None) -> Event:
        customer = self.customers[sub.customer_id]
        return self._event("customer.state_changed", self.render_customer_state(customer), at)


def already_canceled() -> ApiError:
    """Polar's 403 for cancelling a canceled (or cancel-at-period-end) subscription."""
    return ApiError(403, {"error": "AlreadyCanceledSubscription", "detail": ALREADY_CANCELED})


def bad_request(detail: str) -> ApiError:
    """A 400 for a fake-only helper used in the wrong state."""
    return ApiError(400, {"error": "BadRequest", "detail": detail})
