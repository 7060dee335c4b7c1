"""The fast path from a verified webhook body to what kavach needs of a subscription event.

A Polar subscription event is ~3 KB of JSON, of which kavach reads ~25 values. Parsing
all of it into dicts (``json``, or ``orjson``) is most of an ingest's CPU time. With the
optional ``msgspec`` package (extra ``fast``), :func:`decode_subscription_event` decodes
the body against a typed schema of just those values: the rest is checked as JSON and
skipped without building objects.

The fast path is an optimization, never a second meaning. It returns ``None`` — and
the caller takes the generic path (:func:`kavach.polar.webhooks.parse_json`, then
:meth:`SubscriptionPayload.from_dict`) — whenever the body is not exactly what it
expects: not valid UTF-8, not JSON msgspec accepts, another event type, a value of
another JSON type than Polar's (the generic reading tolerates those), an empty id or
status. When it does answer, the answer equals the generic path's
(``tests/polar_plugin/test_decoding.py`` checks this on generated payloads). Times are
decoded as text and read by the same :func:`parse_datetime` as the generic path.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, NamedTuple

from kavach.polar.subscriptions import (
    USER_ID_METADATA_KEY,
    SubscriptionPayload,
    parse_datetime,
    version_of,
)
from kavach.stores.base import MAX_TEXT_LENGTH

try:  # the optional accelerator (extra "fast")
    import msgspec
except ImportError:  # pragma: no cover - depends on the environment
    msgspec = None  # type: ignore[assignment]


class SubscriptionEvent(NamedTuple):
    """A subscription event read by the fast path: its type, what kavach needs of its
    ``data``, and the body as text (the inbox keeps it)."""

    event_type: str
    subscription: SubscriptionPayload
    payload: str


def decode_subscription_event(
    body: bytes, *, event_types: frozenset[str]
) -> SubscriptionEvent | None:
    """The fast reading of a verified body whose ``type`` is one of ``event_types``;
    ``None`` when the generic path must decide (see the module docstring)."""
    if _decoder is None:
        return None
    # A one-byte test first: it runs at memchr speed, ~15x faster than looking for the
    # two bytes "\\u" (most bodies hold no backslash at all).
    if b"\\" in body and _UNSTORABLE_ESCAPE.search(body):
        return None  # a NUL or a surrogate somewhere: the generic path checks each value
    try:
        payload = body.decode("utf-8")
        envelope = _decoder.decode(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError, msgspec.DecodeError
        return None
    data = envelope.data
    if envelope.type not in event_types or data is None or not data.id or not data.status:
        return None
    subscription = _payload(data, envelope.timestamp)
    if subscription is None:
        return None
    return SubscriptionEvent(envelope.type, subscription, payload)


def _payload(data: Any, envelope_time: str | None) -> SubscriptionPayload | None:
    """:meth:`SubscriptionPayload.from_dict`'s reading of the typed ``data``; the
    envelope's time is only read when the subscription has none."""
    customer = data.customer
    metadata = data.metadata
    customer_id = data.customer_id
    customer_ref = customer_id
    if customer_ref is None and customer is not None:
        customer_ref = customer.id
    created_at = parse_datetime(data.created_at)
    modified_at = parse_datetime(data.modified_at)
    when = modified_at or created_at or parse_datetime(envelope_time)
    if when is None:
        return None  # the generic path words the error
    # Positional, in the named tuple's field order: half what keywords cost.
    return SubscriptionPayload(
        (  # in STATE_FIELDS order
            data.id,
            data.status,
            data.product_id or None,
            parse_datetime(data.current_period_end),
            data.cancel_at_period_end is True,
            version_of(when),
            customer_id or None,
            created_at,
            parse_datetime(data.started_at),
            parse_datetime(data.current_period_start),
            parse_datetime(data.trial_end),
            parse_datetime(data.canceled_at),
            parse_datetime(data.ends_at),
            parse_datetime(data.ended_at),
            parse_datetime(data.past_due_at),
            data.checkout_id or None,
            data.amount,
            data.currency or None,
            data.recurring_interval or None,
        ),
        (customer.external_id or None) if customer is not None else None,  # external_id
        (metadata.user_id or None) if metadata is not None else None,  # metadata_user_id
        customer_ref or None,  # customer_ref
        _organization(data, customer),  # organization_id
    )


def _organization(data: Any, customer: Any) -> str | None:
    """:func:`~kavach.polar.subscriptions.organization_of` on the typed ``data``: its
    own ``organization_id``, else its product's, else its customer's."""
    org: str | None = data.organization_id
    if org is None:
        product = data.product
        if product is not None:
            org = product.organization_id
        if org is None and customer is not None:
            org = customer.organization_id
    return org


#: A JSON escape of NUL or of a UTF-16 surrogate (lone or paired: the generic path tells).
_UNSTORABLE_ESCAPE = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])")

_decoder: Any = None

if msgspec is not None:
    # Every field optional with a None default, typed as Polar sends it: a value of
    # another type fails the decode (-> the generic path), never gets coerced.
    # Times stay text: parse_datetime reads them, exactly as on the generic path.
    # Text a store keeps is at most MAX_TEXT_LENGTH characters, and the amount fits 64
    # bits: anything longer or larger fails the decode too (the generic path drops an
    # optional value it cannot store, and refuses an id or status it cannot).
    _Text = Annotated[str, msgspec.Meta(max_length=MAX_TEXT_LENGTH)]
    _Int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]

    class _Customer(msgspec.Struct, gc=False):
        id: _Text | None = None
        external_id: _Text | None = None
        organization_id: str | None = None

    class _Product(msgspec.Struct, gc=False):
        organization_id: str | None = None

    class _Metadata(msgspec.Struct, gc=False):
        user_id: _Text | None = msgspec.field(default=None, name=USER_ID_METADATA_KEY)

    class _Subscription(msgspec.Struct, gc=False):
        id: _Text | None = None
        status: _Text | None = None
        product_id: _Text | None = None
        current_period_end: str | None = None
        cancel_at_period_end: bool | None = None
        modified_at: str | None = None
        created_at: str | None = None
        customer_id: _Text | None = None
        started_at: str | None = None
        current_period_start: str | None = None
        trial_end: str | None = None
        canceled_at: str | None = None
        ends_at: str | None = None
        ended_at: str | None = None
        past_due_at: str | None = None
        checkout_id: _Text | None = None
        amount: _Int64 | None = None
        currency: _Text | None = None
        recurring_interval: _Text | None = None
        organization_id: str | None = None
        customer: _Customer | None = None
        product: _Product | None = None
        metadata: _Metadata | None = None

    class _Envelope(msgspec.Struct, gc=False):
        type: str
        timestamp: str | None = None
        data: _Subscription | None = None

    _decoder = msgspec.json.Decoder(_Envelope)
