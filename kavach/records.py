"""The records stores hold. Plain frozen attrs values, no behaviour.

These are the store contract's vocabulary (see :mod:`kavach.stores.base`). Public
values handed to applications (``User``, ``PolarSubscription``...) are built from them.

Times are aware UTC ``datetime`` values. A subscription's ``version`` is the ordering
guard's key: microseconds since the epoch of the event's ``modified_at`` (falling back
to ``created_at``, then the webhook envelope's ``timestamp``).
"""

from __future__ import annotations

from datetime import datetime

import attrs

#: Polar subscription statuses that mean access has ended for good.
REVOKED_STATUSES = frozenset({"canceled", "unpaid"})
#: Polar's "active" group.
ACTIVE_STATUSES = frozenset({"active", "trialing"})


@attrs.frozen
class UserRecord:
    id: str
    email: str  # as given; lookups are case-insensitive
    name: str | None
    password_hash: str | None = attrs.field(repr=False)  # never in logs or tracebacks
    created_at: datetime
    polar_customer_id: str | None = None
    # The mirror of the user's most relevant subscription (see subscription_rank).
    polar_subscription_id: str | None = None
    polar_subscription_status: str | None = None
    polar_product_id: str | None = None
    polar_current_period_end: datetime | None = None
    polar_cancel_at_period_end: bool | None = None
    polar_subscription_version: int | None = None


@attrs.frozen
class SessionRecord:
    token_hash: str  # hex SHA-256 of the token; the token itself is never stored
    user_id: str
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None = None


@attrs.frozen
class SubscriptionState:
    """One Polar subscription as kavach last applied it."""

    id: str
    user_id: str
    status: str
    product_id: str | None
    current_period_end: datetime | None
    cancel_at_period_end: bool
    version: int
    customer_id: str | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    current_period_start: datetime | None = None
    trial_end: datetime | None = None
    canceled_at: datetime | None = None
    ends_at: datetime | None = None
    ended_at: datetime | None = None
    past_due_at: datetime | None = None
    checkout_id: str | None = None
    amount: int | None = None
    currency: str | None = None
    recurring_interval: str | None = None

    @property
    def revoked(self) -> bool:
        return self.status in REVOKED_STATUSES


#: Inbox statuses: ``received`` (recorded, not yet finished), ``processed`` (done,
#: a redelivery is a duplicate), ``failed`` (an error happened; a redelivery retries).
#: An unprocessed row whose ``claimed_until`` lies ahead is *in flight*: a request is
#: still working on it (running the application's callback), and concurrent copies of
#: the delivery must wait rather than do the work a second time.
INBOX_STATUSES = ("received", "processed", "failed")
#: Inbox outcomes: what the delivery did once its work ran.
INBOX_OUTCOMES = ("applied", "stale", "unmatched", "ignored", "foreign_organization")


@attrs.frozen
class InboxEvent:
    """One verified webhook delivery, keyed by its ``webhook-id``."""

    webhook_id: str
    event_type: str
    received_at: datetime
    payload: str  # the raw JSON body as text
    status: str = "received"
    outcome: str | None = None
    attempts: int = 1
    processed_at: datetime | None = None
    last_error: str | None = None
    user_id: str | None = None
    subscription_id: str | None = None
    #: The claim (lease) of the request working on this delivery: until then, a copy of
    #: the same delivery is answered "in progress" instead of running its work again.
    #: ``None`` when no request holds it (always so once processed or failed).
    claimed_until: datetime | None = None


@attrs.frozen
class IngestResult:
    """What :meth:`kavach.stores.base.Store.ingest_event` did with one delivery.

    ``event`` is the inbox row as stored after the call. ``created`` is ``True`` when
    the row is new. ``applied`` tells whether the subscription state was written
    (``True``) or refused as not newer (``False``); it is ``None`` when no state was
    given or no write was attempted (a processed duplicate, or a retry of a delivery
    whose state an earlier attempt already applied).

    ``in_flight`` is ``True`` when another request holds an unexpired claim on the
    delivery (see :attr:`InboxEvent.claimed_until`): nothing was written, ``event`` is
    the stored row, ``created`` is ``False`` and ``applied`` is ``None``.

    ``duplicate`` is ``True`` when the delivery was already processed: nothing was
    written, ``event`` is the stored row, ``created`` is ``False`` and ``applied`` is
    ``None``.
    """

    event: InboxEvent
    created: bool
    applied: bool | None
    in_flight: bool = False
    duplicate: bool = False


def subscription_rank(state: SubscriptionState) -> tuple[int, float, int]:
    """Sort key: the most relevant subscription sorts first.

    Active and trialing ones that renew, then active and trialing ones that end at the
    period's end (``cancel_at_period_end``: an ending one must not hide one that goes on
    — once it ended, access would be refused while the other is paid), then past_due,
    then every other status, revoked ones last; within a group the newest (latest
    ``created_at``, then latest ``version``) first. Used by every store to pick which
    subscription the ``kavach_users`` mirror columns show. (No clock: the mirror is
    computed when a state is written.)
    """
    if state.status in ACTIVE_STATUSES:
        group = 1 if state.cancel_at_period_end else 0
    elif state.status == "past_due":
        group = 2
    elif state.status in REVOKED_STATUSES:
        group = 4
    else:
        group = 3
    created = state.created_at.timestamp() if state.created_at else 0.0
    return (group, -created, -state.version)


def most_relevant(states: list[SubscriptionState]) -> SubscriptionState | None:
    """The subscription the user's mirror columns should show, or ``None``."""
    if len(states) <= 1:
        return states[0] if states else None
    return min(states, key=subscription_rank)
