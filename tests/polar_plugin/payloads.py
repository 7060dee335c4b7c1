"""Realistic Polar webhook payloads (shapes from polar-api.md §3, §4), for tests."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

ORG_ID = "0e6b1f7c-3c1a-4f0e-9a3d-6b1c2d3e4f50"
PRODUCT_ID = "8f0c4a57-2d1e-4b63-9a4f-0e2d6c1b7a10"
PRICE_ID = "a1b2c3d4-0000-4000-8000-000000000001"


def iso(when: datetime) -> str:
    """Polar's datetime text: UTC, microseconds, ``Z``."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def price(product_id: str = PRODUCT_ID, org_id: str = ORG_ID) -> dict[str, Any]:
    return {
        "created_at": "2026-07-01T09:00:00Z",
        "modified_at": None,
        "id": PRICE_ID,
        "source": "catalog",
        "amount_type": "fixed",
        "price_currency": "usd",
        "tax_behavior": None,
        "is_archived": False,
        "product_id": product_id,
        "price_amount": 2000,
    }


def product(product_id: str = PRODUCT_ID, org_id: str = ORG_ID) -> dict[str, Any]:
    return {
        "id": product_id,
        "created_at": "2026-07-01T09:00:00Z",
        "modified_at": None,
        "trial_interval": None,
        "trial_interval_count": None,
        "name": "Pro",
        "description": None,
        "visibility": "public",
        "recurring_interval": "month",
        "recurring_interval_count": 1,
        "meter_interval": None,
        "meter_interval_count": None,
        "is_recurring": True,
        "is_archived": False,
        "organization_id": org_id,
        "metadata": {},
        "is_deletable": False,
        "prices": [price(product_id, org_id)],
        "benefits": [],
        "medias": [],
        "attached_custom_fields": [],
    }


def customer(
    customer_id: str, external_id: str | None, email: str = "jane@acme.io", org_id: str = ORG_ID
) -> dict[str, Any]:
    return {
        "id": customer_id,
        "created_at": "2026-08-22T10:17:39.120044Z",
        "modified_at": None,
        "metadata": {},
        "external_id": external_id,
        "email": email,
        "email_verified": False,
        "type": "individual",
        "name": "Jane Doe",
        "billing_name": "Jane Doe",
        "billing_address": {
            "line1": None,
            "line2": None,
            "postal_code": None,
            "city": None,
            "state": None,
            "country": "SE",
        },
        "tax_id": None,
        "locale": None,
        "organization_id": org_id,
        "default_payment_method_id": None,
        "deleted_at": None,
        "first_user_event_at": None,
        "avatar_url": "https://www.gravatar.com/avatar/xxx?d=404",
    }


def subscription(
    *,
    sub_id: str,
    customer_id: str,
    external_id: str | None,
    modified_at: datetime,
    status: str = "active",
    created_at: datetime | None = None,
    period_start: datetime | None = None,
    cancel_at_period_end: bool = False,
    canceled_at: datetime | None = None,
    ends_at: datetime | None = None,
    ended_at: datetime | None = None,
    metadata: dict[str, Any] | None = None,
    product_id: str = PRODUCT_ID,
    org_id: str = ORG_ID,
) -> dict[str, Any]:
    """A full Polar ``Subscription`` object."""
    created = created_at or datetime(2026, 8, 22, 10, 17, 41, 9812, tzinfo=UTC)
    start = period_start or created
    return {
        "created_at": iso(created),
        "modified_at": iso(modified_at),
        "id": sub_id,
        "amount": 2000,
        "currency": "usd",
        "recurring_interval": "month",
        "recurring_interval_count": 1,
        "status": status,
        "current_period_start": iso(start),
        "current_period_end": iso(start + timedelta(days=31)),
        "current_meter_period_start": None,
        "current_meter_period_end": None,
        "trial_start": None,
        "trial_end": None,
        "cancel_at_period_end": cancel_at_period_end,
        "canceled_at": iso(canceled_at) if canceled_at else None,
        "started_at": iso(created),
        "ends_at": iso(ends_at) if ends_at else None,
        "ended_at": iso(ended_at) if ended_at else None,
        "past_due_at": None,
        "pause_at_period_end": False,
        "paused_at": None,
        "resumes_at": None,
        "customer_id": customer_id,
        "product_id": product_id,
        "discount_id": None,
        "checkout_id": "5c0b0f3e-7a61-4c1e-8d0a-2b9e4f6a1c33",
        "seats": None,
        "units": None,
        "customer_cancellation_reason": None,
        "customer_cancellation_comment": None,
        "metadata": metadata if metadata is not None else {},
        "custom_field_data": {},
        "customer": customer(customer_id, external_id, org_id=org_id),
        "product": product(product_id, org_id),
        "discount": None,
        "prices": [price(product_id, org_id)],
        "meters": [],
        "pending_update": None,
    }


def envelope(event_type: str, data: dict[str, Any], timestamp: datetime) -> bytes:
    """The delivery body, serialized as Polar does (compact UTF-8 JSON)."""
    body = {"type": event_type, "timestamp": iso(timestamp), "data": data}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def new_id() -> str:
    return str(uuid.uuid4())
