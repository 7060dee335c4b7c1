"""Record builders shared by the contract tests and the child-process workers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from kavach.records import ACTIVE_STATUSES, InboxEvent, SessionRecord, SubscriptionState, UserRecord
from kavach.stores.base import Store

#: A fixed instant with microseconds, so round trips are checked to the microsecond.
T0 = datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def user(user_id: str = "u1", email: str | None = None, **fields: Any) -> UserRecord:
    """A user; the email defaults to ``<id>@example.com``."""
    values: dict[str, Any] = {
        "id": user_id,
        "email": email or f"{user_id}@example.com",
        "name": f"User {user_id}",
        "password_hash": "$argon2id$v=19$stub",
        "created_at": T0,
    }
    values.update(fields)
    return UserRecord(**values)


def session(token_hash: str = "h1", user_id: str = "u1", **fields: Any) -> SessionRecord:
    """A session created at ``T0`` that expires 7 days later."""
    values: dict[str, Any] = {
        "token_hash": token_hash,
        "user_id": user_id,
        "created_at": T0,
        "expires_at": T0 + timedelta(days=7),
    }
    values.update(fields)
    return SessionRecord(**values)


def state(
    subscription_id: str = "sub1", user_id: str = "u1", version: int = 1, **fields: Any
) -> SubscriptionState:
    """An active subscription state; the period end moves with the version, so every
    version writes a different row."""
    values: dict[str, Any] = {
        "id": subscription_id,
        "user_id": user_id,
        "status": "active",
        "product_id": "prod_1",
        "current_period_end": T0 + timedelta(days=30, microseconds=version),
        "cancel_at_period_end": False,
        "version": version,
    }
    values.update(fields)
    return SubscriptionState(**values)


def event(webhook_id: str = "wh1", **fields: Any) -> InboxEvent:
    """A freshly received inbox event."""
    values: dict[str, Any] = {
        "webhook_id": webhook_id,
        "event_type": "subscription.updated",
        "received_at": T0,
        "payload": '{"type": "subscription.updated", "data": {}}',
    }
    values.update(fields)
    return InboxEvent(**values)


def rank_before_schema_4(s: SubscriptionState) -> tuple[int, float, int]:
    """``kavach.records.subscription_rank`` as it was up to schema 3 (an ending active
    subscription ranked with renewing ones): to write stores as that version did."""
    group = 0 if s.status in ACTIVE_STATUSES else 2
    created = s.created_at.timestamp() if s.created_at else 0.0
    return (group, -created, -s.version)


def write_by_the_schema_3_relevance_rule(store: Store) -> None:
    """Write user ``u1`` holding a renewing subscription (``renews``) and a newer one
    that ends at the period's end (``ends``), as schema 3's relevance rule did: it
    mirrored ``ends`` (schema 4 mirrors ``renews``)."""
    import pytest

    from kavach import records

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(records, "subscription_rank", rank_before_schema_4)
        store.create_user(user("u1"))
        store.apply_subscription(state("renews", created_at=T0))
        store.apply_subscription(
            state("ends", created_at=T0 + timedelta(days=5), cancel_at_period_end=True)
        )
    mirrored = store.get_user("u1")
    assert mirrored is not None and mirrored.polar_subscription_id == "ends"
