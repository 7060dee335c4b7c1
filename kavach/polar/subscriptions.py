"""Polar subscriptions as kavach holds them, and the fast path from Polar's JSON to them.

Webhook ingest is a hot path, so a subscription payload is read with plain dict access
and ``datetime.fromisoformat`` rather than a general converter; unknown fields are
ignored and unknown statuses kept as plain strings.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, NamedTuple

import attrs

from kavach.records import ACTIVE_STATUSES, REVOKED_STATUSES, SubscriptionState
from kavach.stores.base import MAX_TEXT_LENGTH, storable_text

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: The checkout metadata key that carries the kavach user id back in subscriptions.
USER_ID_METADATA_KEY = "kavach_user_id"
_fromisoformat = datetime.fromisoformat


@attrs.frozen
class PolarSubscription:
    """A user's Polar subscription, as kavach last applied it.

    ``current_period_end`` is an aware UTC datetime. The optional fields are filled when
    the value comes from the subscriptions table (``list_subscriptions``), and left
    ``None`` when it comes from the user's mirror columns (``get_subscription``).
    """

    id: str
    status: str
    product_id: str | None
    current_period_end: datetime | None
    cancel_at_period_end: bool
    customer_id: str | None = None
    started_at: datetime | None = None
    trial_end: datetime | None = None
    canceled_at: datetime | None = None
    ends_at: datetime | None = None
    ended_at: datetime | None = None
    amount: int | None = None
    currency: str | None = None
    recurring_interval: str | None = None

    @property
    def is_active(self) -> bool:
        """``True`` for Polar's "active" group (``active``, ``trialing``)."""
        return self.status in ACTIVE_STATUSES

    @property
    def is_revoked(self) -> bool:
        """``True`` once access ended for good (``canceled``, ``unpaid``)."""
        return self.status in REVOKED_STATUSES

    @classmethod
    def from_state(cls, state: SubscriptionState) -> PolarSubscription:
        return cls(
            id=state.id,
            status=state.status,
            product_id=state.product_id,
            current_period_end=state.current_period_end,
            cancel_at_period_end=state.cancel_at_period_end,
            customer_id=state.customer_id,
            started_at=state.started_at,
            trial_end=state.trial_end,
            canceled_at=state.canceled_at,
            ends_at=state.ends_at,
            ended_at=state.ended_at,
            amount=state.amount,
            currency=state.currency,
            recurring_interval=state.recurring_interval,
        )


class SubscriptionPayloadError(ValueError):
    """A subscription object lacks what kavach needs (``id``, ``status``)."""


def parse_datetime(value: Any) -> datetime | None:
    """An aware UTC datetime from Polar's ISO-8601 text (``Z`` suffix, with or without
    microseconds); ``None`` for null, missing or unreadable values.

    A webhook hot path (a subscription carries ten of them): no wrapper work beyond
    ``fromisoformat`` for the usual null and ``...Z`` values.
    """
    if value is None:
        return None
    try:
        parsed = _fromisoformat(value)
    except (TypeError, ValueError):  # not text, or not a time
        return None
    tz = parsed.tzinfo
    if tz is UTC:
        return parsed
    if tz is None:
        return parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00 is before datetime.min in UTC
        return None


def version_of(when: datetime) -> int:
    """The ordering-guard version of a moment: microseconds since the Unix epoch."""
    delta = when - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


#: The integers every store keeps (PostgreSQL and MySQL BIGINT, SQLite INTEGER).
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _opt_str(value: Any) -> str | None:
    """An optional text value; missing when absent, empty, not text or not storable."""
    return value if isinstance(value, str) and value and storable_text(value) else None


def _opt_int(value: Any) -> int | None:
    """An optional integer; missing when absent, not an integer or beyond 64 bits."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value if _INT64_MIN <= value <= _INT64_MAX else None
    return None


def version_from_times(
    modified_at: Any, created_at: datetime | None, fallback: datetime | None
) -> int:
    """The version of ``modified_at`` (text), else ``created_at``, else ``fallback``."""
    when = parse_datetime(modified_at) or created_at or fallback
    if when is None:
        raise SubscriptionPayloadError("subscription has no modified_at, created_at or timestamp")
    return version_of(when)


#: The :class:`SubscriptionState` fields a payload gives, in the record's order: all but
#: ``user_id`` (the second), which only matching the user decides.
STATE_FIELDS = tuple(f.name for f in attrs.fields(SubscriptionState) if f.name != "user_id")


class SubscriptionPayload(NamedTuple):
    """What kavach reads from one Polar ``Subscription`` object, before it knows the user.

    ``state_values`` are the values of :class:`SubscriptionState`'s fields but ``user_id``
    (named by :data:`STATE_FIELDS`, in that order; :meth:`state_for` adds the user); the
    other fields are what finds the user and the organization. ``error`` is set, and
    ``state_values`` empty, when the object lacks what a state needs (an ``id``, a
    ``status``, a readable time): it is raised by :meth:`state_for`, once the delivery is
    matched and recorded.

    Built from a parsed dict by :meth:`from_dict` (the reference reading, tolerant of
    any JSON), or from typed fields by the fast decoder in
    :mod:`kavach.polar.decoding`, which must give the same result. (A named tuple, and
    values rather than a dict: one is made per webhook delivery, it never leaves kavach,
    and building the state from positional values costs half what keywords do.)
    """

    state_values: tuple[Any, ...]
    external_id: str | None
    metadata_user_id: str | None
    customer_ref: str | None
    organization_id: str | None
    error: str | None = None

    @property
    def state_fields(self) -> dict[str, Any]:
        """``state_values`` by field name (for reading and debugging; not a hot path)."""
        if not self.state_values:  # a payload with an error has none
            return {}
        return dict(zip(STATE_FIELDS, self.state_values, strict=True))

    def state_for(self, user_id: str) -> SubscriptionState:
        """The state of this subscription held by ``user_id``; raises
        :class:`SubscriptionPayloadError` when the object lacks what a state needs."""
        if self.error is not None:
            raise SubscriptionPayloadError(self.error)
        values = self.state_values
        return SubscriptionState(values[0], user_id, *values[1:])

    @classmethod
    def from_dict(
        cls, data: dict[str, Any], *, fallback_time: datetime | None
    ) -> SubscriptionPayload:
        """Read a parsed ``Subscription`` object: unknown fields ignored, unreadable
        optional values taken as missing, unknown statuses kept as they are."""
        customer = data.get("customer")
        if not isinstance(customer, dict):
            customer = {}
        metadata = data.get("metadata")
        meta_id = metadata.get(USER_ID_METADATA_KEY) if isinstance(metadata, dict) else None
        customer_ref = data.get("customer_id")
        if not isinstance(customer_ref, str):
            customer_ref = customer.get("id")
        match = {
            "external_id": _opt_str(customer.get("external_id")),
            "metadata_user_id": _opt_str(meta_id),
            "customer_ref": _opt_str(customer_ref),
            "organization_id": organization_of(data),
        }
        try:
            values = _state_values(data, fallback_time)
        except SubscriptionPayloadError as exc:
            return cls((), error=str(exc), **match)
        return cls(values, **match)


def _state_values(data: dict[str, Any], fallback_time: datetime | None) -> tuple[Any, ...]:
    """The state's values (see :data:`STATE_FIELDS`) read from a ``Subscription`` dict."""
    sub_id = data.get("id")
    status = data.get("status")
    if not isinstance(sub_id, str) or not sub_id:
        raise SubscriptionPayloadError("subscription has no id")
    if not storable_text(sub_id):
        raise SubscriptionPayloadError("subscription id is not storable text (over "
                                       f"{MAX_TEXT_LENGTH} characters, NUL or not UTF-8)")
    if not isinstance(status, str) or not status:
        raise SubscriptionPayloadError(f"subscription {sub_id} has no status")
    if not storable_text(status):
        raise SubscriptionPayloadError(f"subscription {sub_id} has a status that is not "
                                       "storable text")
    get = data.get
    created_at = parse_datetime(get("created_at"))
    return (
        sub_id,  # id
        status,  # status
        _opt_str(get("product_id")),  # product_id
        parse_datetime(get("current_period_end")),  # current_period_end
        get("cancel_at_period_end") is True,  # cancel_at_period_end
        version_from_times(get("modified_at"), created_at, fallback_time),  # version
        _opt_str(get("customer_id")),  # customer_id
        created_at,  # created_at
        parse_datetime(get("started_at")),  # started_at
        parse_datetime(get("current_period_start")),  # current_period_start
        parse_datetime(get("trial_end")),  # trial_end
        parse_datetime(get("canceled_at")),  # canceled_at
        parse_datetime(get("ends_at")),  # ends_at
        parse_datetime(get("ended_at")),  # ended_at
        parse_datetime(get("past_due_at")),  # past_due_at
        _opt_str(get("checkout_id")),  # checkout_id
        _opt_int(get("amount")),  # amount
        _opt_str(get("currency")),  # currency
        _opt_str(get("recurring_interval")),  # recurring_interval
    )


def state_from_payload(
    data: dict[str, Any], user_id: str, *, fallback_time: datetime | None
) -> SubscriptionState:
    """A :class:`SubscriptionState` from a Polar ``Subscription`` JSON object."""
    values = _state_values(data, fallback_time)
    return SubscriptionState(values[0], user_id, *values[1:])


def organization_of(data: dict[str, Any]) -> str | None:
    """The organization a subscription (or checkout) belongs to, when the payload says."""
    org = data.get("organization_id")
    if isinstance(org, str):
        return org
    for key in ("product", "customer"):
        nested = data.get(key)
        if isinstance(nested, dict):
            org = nested.get("organization_id")
            if isinstance(org, str):
                return org
    return None
