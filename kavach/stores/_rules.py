"""The contract's rules as pure functions, so every backend applies the same ones.

The memory and JSON stores call them on records; the SQL store calls them on rows it
read under a lock and writes the result back. Keeping them here is what makes "the
behaviour is identical across stores" true by construction rather than by care.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import attrs

from kavach.records import (
    INBOX_STATUSES,
    InboxEvent,
    SubscriptionState,
    UserRecord,
    most_relevant,
    subscription_rank,
)
from kavach.stores._codec import as_utc

#: The ``kavach_users`` columns that mirror the user's most relevant subscription.
MIRROR_FIELDS = (
    "polar_subscription_id",
    "polar_subscription_status",
    "polar_product_id",
    "polar_current_period_end",
    "polar_cancel_at_period_end",
    "polar_subscription_version",
)


def mirror_values(states: list[SubscriptionState]) -> dict[str, Any]:
    """The mirror columns for a user holding ``states`` (all ``None`` when there are none)."""
    best = most_relevant(states)
    if best is None:
        return dict.fromkeys(MIRROR_FIELDS)
    return {
        "polar_subscription_id": best.id,
        "polar_subscription_status": best.status,
        "polar_product_id": best.product_id,
        "polar_current_period_end": best.current_period_end,
        "polar_cancel_at_period_end": best.cancel_at_period_end,
        "polar_subscription_version": best.version,
    }


def with_mirror(
    user: UserRecord, states: list[SubscriptionState], polar_customer_id: str | None
) -> UserRecord:
    """``user`` with its mirror columns recomputed from ``states``, and linked to
    ``polar_customer_id`` (its own link, or the customer a write links it to)."""
    return mirror_of(user, most_relevant(states), polar_customer_id)


def mirror_of(
    user: UserRecord, best: SubscriptionState | None, polar_customer_id: str | None
) -> UserRecord:
    """``user`` mirroring ``best``, its most relevant subscription (none: ``None``), and
    linked to ``polar_customer_id``."""
    # A webhook hot path: positional, in UserRecord's field order (a third of what
    # attrs.evolve costs, half of keywords).
    if best is None:
        return UserRecord(user.id, user.email, user.name, user.password_hash,
                          user.created_at, polar_customer_id)
    return UserRecord(
        user.id,
        user.email,
        user.name,
        user.password_hash,
        user.created_at,
        polar_customer_id,
        best.id,  # polar_subscription_id
        best.status,  # polar_subscription_status
        best.product_id,  # polar_product_id
        best.current_period_end,  # polar_current_period_end
        best.cancel_at_period_end,  # polar_cancel_at_period_end
        best.version,  # polar_subscription_version
    )


def links_customer(linked: str | None, customer_id: str | None) -> bool:
    """Whether applying a subscription state of Polar customer ``customer_id`` links its
    holder (whose link is ``linked``) to that customer: only an unlinked holder, and only
    to a real id. The store also checks that no other user holds the customer; an
    existing link is never replaced here (``link_polar_customer`` does that)."""
    return linked is None and isinstance(customer_id, str) and customer_id != ""


def by_relevance(states: list[SubscriptionState]) -> list[SubscriptionState]:
    """Most relevant first (``subscription_rank``), ties broken by id for a stable order."""
    return sorted(states, key=lambda state: (subscription_rank(state), state.id))


def applied_event(event: InboxEvent, state: SubscriptionState) -> InboxEvent:
    """The inbox event after the delivery applied ``state``."""
    return attrs.evolve(event, outcome="applied", user_id=state.user_id, subscription_id=state.id)


def redelivered(stored: InboxEvent) -> InboxEvent | None:
    """What a redelivery of ``stored`` turns it into; ``None`` when it stays unchanged.

    A processed delivery is a duplicate and stays as it is; a received or failed one is
    being retried: one more attempt, back to ``received``.
    """
    if stored.status == "processed":
        return None
    return attrs.evolve(stored, attempts=stored.attempts + 1, status="received")


def in_flight(stored: InboxEvent | None, at: datetime) -> bool:
    """Whether ``stored`` is claimed by another request at ``at``: unprocessed, with a
    ``claimed_until`` later than ``at``. ``ingest_event`` then changes nothing."""
    return (
        stored is not None
        and stored.status != "processed"
        and stored.claimed_until is not None
        and stored.claimed_until > at
    )


def ingest_applies(stored: InboxEvent | None) -> bool:
    """Whether ``ingest_event`` over ``stored`` runs the conditional write.

    Not for a processed duplicate (nothing changes), nor for a retry whose earlier
    attempt already applied the state (only its callback is left to run).
    """
    return stored is None or (stored.status != "processed" and stored.outcome != "applied")


def ingested(
    event: InboxEvent,
    stored: InboxEvent | None,
    state: SubscriptionState | None,
    applied: bool | None,
) -> InboxEvent:
    """The inbox row ``ingest_event`` writes for ``event`` over ``stored`` (a new delivery
    when ``None``, else an unprocessed one being retried), given what the conditional
    write did (``applied``). See :meth:`kavach.stores.base.Store.ingest_event`."""
    status = event.status
    if status not in INBOX_STATUSES:
        raise ValueError(f"inbox status must be one of {INBOX_STATUSES}, not {status!r}")
    if status == "processed" and event.processed_at is None:
        raise ValueError("an event ingested as processed needs its processed_at")
    # A processed delivery has nothing left to protect: it never keeps a claim.
    claimed_until = None if status == "processed" else event.claimed_until
    outcome: str | None
    if applied:
        outcome = "applied"
    elif applied is False:
        outcome = "stale"
    else:
        outcome = event.outcome
    user_id = event.user_id
    subscription_id = event.subscription_id
    if state is not None:
        if user_id is None:
            user_id = state.user_id
        if subscription_id is None:
            subscription_id = state.id
    if stored is None:
        if (
            outcome == event.outcome
            and user_id == event.user_id
            and subscription_id == event.subscription_id
            and claimed_until == event.claimed_until
        ):
            return event  # already the row to write (the usual webhook): no copy
        return InboxEvent(
            webhook_id=event.webhook_id,
            event_type=event.event_type,
            received_at=event.received_at,
            payload=event.payload,
            status=status,
            outcome=outcome,
            attempts=event.attempts,
            processed_at=event.processed_at,
            last_error=event.last_error,
            user_id=user_id,
            subscription_id=subscription_id,
            claimed_until=claimed_until,
        )
    return InboxEvent(
        webhook_id=stored.webhook_id,
        event_type=stored.event_type,
        received_at=stored.received_at,
        payload=stored.payload,
        status=status,
        outcome=stored.outcome if outcome is None or stored.outcome == "applied" else outcome,
        attempts=stored.attempts + 1,
        processed_at=event.processed_at if status == "processed" else stored.processed_at,
        last_error=stored.last_error if status == "received" else event.last_error,
        user_id=stored.user_id if user_id is None else user_id,
        subscription_id=stored.subscription_id if subscription_id is None else subscription_id,
        claimed_until=claimed_until,
    )


def finished(
    stored: InboxEvent,
    *,
    status: str,
    at: datetime,
    outcome: str | None,
    error: str | None,
    user_id: str | None,
    subscription_id: str | None,
) -> InboxEvent:
    """``stored`` after ``finish_event``; see :meth:`kavach.stores.base.Store.finish_event`.
    Whatever the status, the claim is released (a failed delivery is free for the retry).
    A processed delivery is final: a late report of another status (a request whose
    callback outlived its claim and then failed, while a copy finished the delivery)
    leaves it as it is — else Polar's retry would run the callback a second time."""
    if status not in INBOX_STATUSES:
        raise ValueError(f"inbox status must be one of {INBOX_STATUSES}, not {status!r}")
    if stored.status == "processed" and status != "processed":
        return stored
    keep_outcome = outcome is None or stored.outcome == "applied"
    return attrs.evolve(
        stored,
        status=status,
        processed_at=as_utc(at) if status == "processed" else stored.processed_at,
        last_error=error,
        outcome=stored.outcome if keep_outcome else outcome,
        user_id=stored.user_id if user_id is None else user_id,
        subscription_id=stored.subscription_id if subscription_id is None else subscription_id,
        claimed_until=None,
    )


def check_page(limit: int, offset: int) -> None:
    """Refuse a negative ``limit`` or ``offset`` (``ValueError``), the same in every store."""
    if limit < 0 or offset < 0:
        raise ValueError(f"limit and offset must be >= 0, got limit={limit}, offset={offset}")
