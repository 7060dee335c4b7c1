"""The fake Polar's records and their JSON shapes (private).

Records are plain mutable attrs classes holding Python values (aware UTC datetimes);
the ``*_json`` functions render them in the exact key sets Polar's API serializes
(see ``polar-api.md`` §2, §3, §5), legacy keys included where the server still sends them.
"""

from __future__ import annotations

import calendar
import hashlib
import json
from datetime import datetime, timedelta
from typing import Any

from attrs import define, field

JSON = dict[str, Any]

ACTIVE_STATUSES = frozenset({"trialing", "active"})
REVOKED_STATUSES = frozenset({"canceled", "unpaid"})
BILLABLE_STATUSES = ACTIVE_STATUSES | {"past_due"}


def iso(value: datetime | None) -> str | None:
    """Polar's datetime format: ISO-8601 UTC with microseconds and a ``Z`` suffix."""
    if value is None:
        return None
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON without ASCII escaping, as pydantic's ``model_dump_json``."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def add_interval(start: datetime, interval: str, count: int) -> datetime:
    """``start`` plus ``count`` intervals; months and years keep the start day (clamped)."""
    if interval == "day":
        return start + timedelta(days=count)
    if interval == "week":
        return start + timedelta(weeks=count)
    months = count * (12 if interval == "year" else 1)
    year, month0 = divmod(start.month - 1 + months, 12)
    year += start.year
    day = min(start.day, calendar.monthrange(year, month0 + 1)[1])
    return start.replace(year=year, month=month0 + 1, day=day)


@define
class ProductRecord:
    """A product with one fixed price."""

    id: str
    price_id: str
    name: str
    created_at: datetime
    amount: int
    currency: str
    recurring_interval: str | None
    recurring_interval_count: int
    trial_interval: str | None
    trial_interval_count: int | None
    organization_id: str
    description: str | None = None
    metadata: JSON = field(factory=dict)
    is_archived: bool = False


@define
class CustomerRecord:
    """An individual customer."""

    id: str
    created_at: datetime
    email: str
    organization_id: str
    name: str | None = None
    external_id: str | None = None
    metadata: JSON = field(factory=dict)
    modified_at: datetime | None = None


@define
class CheckoutRecord:
    """A checkout session; ``body`` keeps the validated optional request fields."""

    id: str
    created_at: datetime
    client_secret: str
    expires_at: datetime
    product_ids: list[str]
    product_id: str
    amount: int
    currency: str
    organization_id: str
    success_url: str | None
    return_url: str | None
    external_customer_id: str | None
    customer_id: str | None
    customer_email: str | None
    customer_name: str | None
    metadata: JSON
    customer_metadata: JSON
    allow_trial: bool
    trial_interval: str | None
    trial_interval_count: int | None
    options: JSON = field(factory=dict)
    status: str = "open"
    modified_at: datetime | None = None
    tax_amount: int | None = None


@define
class SubscriptionRecord:
    """A subscription; ``anchor`` and ``period_index`` drive anchored renewals."""

    id: str
    created_at: datetime
    customer_id: str
    product_id: str
    checkout_id: str | None
    status: str
    amount: int
    currency: str
    recurring_interval: str
    recurring_interval_count: int
    current_period_start: datetime
    current_period_end: datetime
    started_at: datetime
    anchor: datetime
    metadata: JSON
    custom_field_data: JSON = field(factory=dict)
    period_index: int = 1
    trial_start: datetime | None = None
    trial_end: datetime | None = None
    cancel_at_period_end: bool = False
    canceled_at: datetime | None = None
    ends_at: datetime | None = None
    ended_at: datetime | None = None
    past_due_at: datetime | None = None
    customer_cancellation_reason: str | None = None
    customer_cancellation_comment: str | None = None
    modified_at: datetime | None = None


@define
class OrderRecord:
    """An order (one per purchase or billing period)."""

    id: str
    created_at: datetime
    customer_id: str
    product_id: str
    subscription_id: str | None
    checkout_id: str | None
    amount: int
    currency: str
    billing_reason: str
    metadata: JSON
    invoice_number: str
    period_start: datetime | None
    period_end: datetime | None
    item_id: str
    status: str = "pending"
    modified_at: datetime | None = None


@define
class SessionRecord:
    """A customer session (portal access)."""

    id: str
    created_at: datetime
    token: str
    expires_at: datetime
    customer_id: str
    return_url: str | None


# --- JSON shapes -----------------------------------------------------------------


def price_json(product: ProductRecord) -> JSON:
    """A ``ProductPriceFixed``."""
    return {
        "created_at": iso(product.created_at),
        "modified_at": None,
        "id": product.price_id,
        "source": "catalog",
        "amount_type": "fixed",
        "price_currency": product.currency,
        "tax_behavior": None,
        "is_archived": product.is_archived,
        "product_id": product.id,
        "price_amount": product.amount,
    }


def product_json(product: ProductRecord) -> JSON:
    """A ``Product``."""
    recurring = product.recurring_interval is not None
    return {
        "id": product.id,
        "created_at": iso(product.created_at),
        "modified_at": None,
        "trial_interval": product.trial_interval,
        "trial_interval_count": product.trial_interval_count,
        "name": product.name,
        "description": product.description,
        "visibility": "public",
        "recurring_interval": product.recurring_interval,
        "recurring_interval_count": product.recurring_interval_count if recurring else None,
        "meter_interval": None,
        "meter_interval_count": None,
        "is_recurring": recurring,
        "is_archived": product.is_archived,
        "organization_id": product.organization_id,
        "metadata": dict(product.metadata),
        "is_deletable": False,
        "prices": [price_json(product)],
        "benefits": [],
        "medias": [],
        "attached_custom_fields": [],
    }


def customer_json(customer: CustomerRecord) -> JSON:
    """A ``Customer`` (individual)."""
    digest = hashlib.sha256(customer.email.strip().lower().encode("utf-8")).hexdigest()
    return {
        "id": customer.id,
        "created_at": iso(customer.created_at),
        "modified_at": iso(customer.modified_at),
        "metadata": dict(customer.metadata),
        "external_id": customer.external_id,
        "email": customer.email,
        "email_verified": False,
        "type": "individual",
        "name": customer.name,
        "billing_name": customer.name,
        "billing_address": None,
        "tax_id": None,
        "locale": None,
        "organization_id": customer.organization_id,
        "default_payment_method_id": None,
        "deleted_at": None,
        "first_user_event_at": None,
        "avatar_url": f"https://www.gravatar.com/avatar/{digest}?d=404",
    }


def _trial(checkout: CheckoutRecord, product: ProductRecord) -> tuple[str | None, int | None]:
    if not checkout.allow_trial or product.recurring_interval is None:
        return None, None
    if checkout.trial_interval is not None:
        return checkout.trial_interval, checkout.trial_interval_count or 1
    return product.trial_interval, product.trial_interval_count


def checkout_trial_end(checkout: CheckoutRecord, product: ProductRecord, now: datetime) -> (
    datetime | None
):
    """When a trial started ``now`` through this checkout would end (``None``: no trial)."""
    interval, count = _trial(checkout, product)
    if interval is None or not count:
        return None
    return add_interval(now, interval, count)


def checkout_status(checkout: CheckoutRecord, now: datetime) -> str:
    """The status a read shows: an open checkout past ``expires_at`` reads as ``expired``
    before ``process_due`` records it (and sends ``checkout.expired``)."""
    if checkout.status == "open" and now >= checkout.expires_at:
        return "expired"
    return checkout.status


def checkout_json(
    checkout: CheckoutRecord, products: list[ProductRecord], base_url: str, now: datetime
) -> JSON:
    """A ``Checkout`` as ``POST/GET /v1/checkouts/`` return it (plus legacy keys)."""
    product = next(p for p in products if p.id == checkout.product_id)
    trial_interval, trial_count = _trial(checkout, product)
    opts = checkout.options
    free = product.amount == 0
    recurring = product.recurring_interval is not None
    success_url = checkout.success_url or (
        f"{base_url}/checkout/{checkout.client_secret}/confirmation"
    )
    return {
        "id": checkout.id,
        "created_at": iso(checkout.created_at),
        "modified_at": iso(checkout.modified_at),
        "custom_field_data": dict(opts.get("custom_field_data") or {}),
        "payment_processor": "stripe",
        "status": checkout_status(checkout, now),
        "client_secret": checkout.client_secret,
        "url": f"{base_url}/checkout/{checkout.client_secret}",
        "expires_at": iso(checkout.expires_at),
        "success_url": success_url,
        "return_url": checkout.return_url,
        "embed_origin": opts.get("embed_origin"),
        "amount": checkout.amount,
        "seats": None,
        "min_seats": None,
        "max_seats": None,
        "units": None,
        "min_units": None,
        "max_units": None,
        "discount_amount": 0,
        "net_amount": checkout.amount,
        "tax_amount": checkout.tax_amount,
        "tax_behavior": None if checkout.tax_amount is None else "exclusive",
        "total_amount": checkout.amount + (checkout.tax_amount or 0),
        "currency": checkout.currency,
        "allow_trial": checkout.allow_trial,
        "active_trial_interval": trial_interval,
        "active_trial_interval_count": trial_count,
        "trial_end": iso(checkout_trial_end(checkout, product, now)),
        "organization_id": checkout.organization_id,
        "product_id": product.id,
        "product_price_id": product.price_id,
        "discount_id": None,
        "allow_discount_codes": bool(opts.get("allow_discount_codes", True)),
        "require_billing_address": bool(opts.get("require_billing_address", False)),
        "is_discount_applicable": not free,
        "is_free_product_price": free,
        "is_payment_required": not free,
        "is_payment_setup_required": recurring,
        "is_payment_form_required": (not free) or recurring,
        "customer_id": checkout.customer_id,
        "is_business_customer": bool(opts.get("is_business_customer", False)),
        "customer_name": checkout.customer_name,
        "customer_email": checkout.customer_email,
        "customer_ip_address": opts.get("customer_ip_address"),
        "customer_billing_name": opts.get("customer_billing_name"),
        "customer_billing_address": opts.get("customer_billing_address"),
        "customer_tax_id": opts.get("customer_tax_id"),
        "locale": opts.get("locale"),
        "payment_method_type": None,
        "payment_processor_metadata": {"publishable_key": "pk_test_fakepolar"},
        "billing_address_fields": {
            "country": "required",
            "state": "disabled",
            "line1": "disabled",
            "line2": "disabled",
            "city": "disabled",
            "postal_code": "disabled",
        },
        "trial_interval": checkout.trial_interval,
        "trial_interval_count": checkout.trial_interval_count,
        "metadata": dict(checkout.metadata),
        "external_customer_id": checkout.external_customer_id,
        "products": [product_json(p) for p in products],
        "product": product_json(product),
        "product_price": price_json(product),
        "prices": {p.id: [price_json(p)] for p in products},
        "discount": None,
        "subscription_id": None,
        "attached_custom_fields": [],
        "customer_metadata": dict(checkout.customer_metadata),
        # legacy keys the server still serializes
        "customer_external_id": checkout.external_customer_id,
        "subtotal_amount": checkout.amount,
    }


def subscription_flat_json(sub: SubscriptionRecord) -> JSON:
    """The Subscription fields without embedded objects (``OrderSubscription``)."""
    return {
        "created_at": iso(sub.created_at),
        "modified_at": iso(sub.modified_at),
        "id": sub.id,
        "amount": sub.amount,
        "currency": sub.currency,
        "recurring_interval": sub.recurring_interval,
        "recurring_interval_count": sub.recurring_interval_count,
        "status": sub.status,
        "current_period_start": iso(sub.current_period_start),
        "current_period_end": iso(sub.current_period_end),
        "current_meter_period_start": None,
        "current_meter_period_end": None,
        "trial_start": iso(sub.trial_start),
        "trial_end": iso(sub.trial_end),
        "cancel_at_period_end": sub.cancel_at_period_end,
        "canceled_at": iso(sub.canceled_at),
        "started_at": iso(sub.started_at),
        "ends_at": iso(sub.ends_at),
        "ended_at": iso(sub.ended_at),
        "past_due_at": iso(sub.past_due_at),
        "pause_at_period_end": False,
        "paused_at": None,
        "resumes_at": None,
        "customer_id": sub.customer_id,
        "product_id": sub.product_id,
        "discount_id": None,
        "checkout_id": sub.checkout_id,
        "seats": None,
        "units": None,
        "customer_cancellation_reason": sub.customer_cancellation_reason,
        "customer_cancellation_comment": sub.customer_cancellation_comment,
        "metadata": dict(sub.metadata),
    }


def subscription_json(
    sub: SubscriptionRecord, customer: CustomerRecord, product: ProductRecord
) -> JSON:
    """A full ``Subscription`` (customer, product and prices embedded; legacy keys kept)."""
    data = subscription_flat_json(sub)
    data.update(
        {
            "custom_field_data": dict(sub.custom_field_data),
            "customer": customer_json(customer),
            "product": product_json(product),
            "discount": None,
            "prices": [price_json(product)],
            "meters": [],
            "pending_update": None,
            # legacy keys the server still serializes
            "price_id": product.price_id,
            "price": price_json(product),
            "user_id": customer.id,
        }
    )
    return data


def order_json(
    order: OrderRecord,
    customer: CustomerRecord,
    product: ProductRecord,
    sub: SubscriptionRecord | None,
) -> JSON:
    """An ``Order``."""
    paid = order.status == "paid"
    return {
        "id": order.id,
        "created_at": iso(order.created_at),
        "modified_at": iso(order.modified_at),
        "status": order.status,
        "paid": paid,
        "subtotal_amount": order.amount,
        "discount_amount": 0,
        "net_amount": order.amount,
        "tax_amount": 0,
        "total_amount": order.amount,
        "applied_balance_amount": 0,
        "due_amount": 0 if paid else order.amount,
        "refunded_amount": 0,
        "refunded_tax_amount": 0,
        "currency": order.currency,
        "billing_reason": order.billing_reason,
        "billing_name": customer.name,
        "billing_address": None,
        "invoice_number": order.invoice_number,
        "is_invoice_generated": False,
        "receipt_number": None,
        "seats": None,
        "units": None,
        "customer_id": order.customer_id,
        "product_id": order.product_id,
        "discount_id": None,
        "subscription_id": order.subscription_id,
        "checkout_id": order.checkout_id,
        "next_payment_attempt_at": None,
        "metadata": dict(order.metadata),
        "custom_field_data": {},
        "platform_fee_amount": 0,
        "platform_fee_currency": None,
        "customer": customer_json(customer),
        "product": product_json(product),
        "discount": None,
        "subscription": None if sub is None else subscription_flat_json(sub),
        "items": [
            {
                "created_at": iso(order.created_at),
                "modified_at": None,
                "id": order.item_id,
                "label": product.name,
                "amount": order.amount,
                "tax_amount": 0,
                "proration": False,
                "product_price_id": product.price_id,
                "start_timestamp": iso(order.period_start),
                "end_timestamp": iso(order.period_end),
            }
        ],
        "description": product.name,
        "refundable_amount": order.amount if paid else 0,
        "refundable_tax_amount": 0,
    }


def customer_state_json(customer: CustomerRecord, subs: list[SubscriptionRecord]) -> JSON:
    """A ``CustomerState``: the customer plus its active/trialing subscriptions."""
    data = customer_json(customer)
    data["active_subscriptions"] = [
        {
            "id": s.id,
            "created_at": iso(s.created_at),
            "modified_at": iso(s.modified_at),
            "custom_field_data": dict(s.custom_field_data),
            "metadata": dict(s.metadata),
            "status": s.status,
            "amount": s.amount,
            "currency": s.currency,
            "recurring_interval": s.recurring_interval,
            "current_period_start": iso(s.current_period_start),
            "current_period_end": iso(s.current_period_end),
            "trial_start": iso(s.trial_start),
            "trial_end": iso(s.trial_end),
            "cancel_at_period_end": s.cancel_at_period_end,
            "canceled_at": iso(s.canceled_at),
            "started_at": iso(s.started_at),
            "ends_at": iso(s.ends_at),
            "product_id": s.product_id,
            "discount_id": None,
            "seats": None,
            "units": None,
            "meters": [],
        }
        for s in subs
        if s.status in ACTIVE_STATUSES
    ]
    data["granted_benefits"] = []
    data["active_meters"] = []
    return data


def session_json(session: SessionRecord, customer: CustomerRecord, base_url: str) -> JSON:
    """A ``CustomerSession``."""
    return {
        "created_at": iso(session.created_at),
        "modified_at": None,
        "id": session.id,
        "token": session.token,
        "expires_at": iso(session.expires_at),
        "return_url": session.return_url,
        "customer_portal_url": f"{base_url}/portal?customer_session_token={session.token}",
        "customer_id": customer.id,
        "customer": customer_json(customer),
    }
