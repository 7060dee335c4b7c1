"""The fast webhook decoder (msgspec) is an optimization, never a second meaning.

Whenever :func:`decode_subscription_event` answers, its answer must equal the generic
reading (``parse_json`` + ``SubscriptionPayload.from_dict``); when the body is anything
but a well-typed subscription event it must step aside (``None``). The plugin suite also
runs whole on the generic path (the ``memory-generic`` harness in ``conftest.py``).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kavach.polar import decoding
from kavach.polar.decoding import decode_subscription_event
from kavach.polar.plugin import SUBSCRIPTION_EVENTS
from kavach.polar.subscriptions import USER_ID_METADATA_KEY, SubscriptionPayload, parse_datetime
from kavach.polar.webhooks import parse_json
from tests.polar_plugin.payloads import envelope, new_id, subscription

pytestmark = pytest.mark.skipif(
    decoding._decoder is None, reason="msgspec (extra 'fast') is not installed"
)

MODIFIED = datetime(2026, 8, 22, 10, 0, 0, 123456, tzinfo=UTC)


def generic_reading(body: bytes) -> tuple[str, SubscriptionPayload, str] | None:
    """What the plugin's generic path reads from ``body`` (``None``: not a usable
    subscription event)."""
    envelope_value = parse_json(body)
    if not isinstance(envelope_value, dict):
        return None
    event_type = envelope_value.get("type")
    data = envelope_value.get("data")
    if event_type not in SUBSCRIPTION_EVENTS or not isinstance(data, dict):
        return None
    payload = SubscriptionPayload.from_dict(
        data, fallback_time=parse_datetime(envelope_value.get("timestamp"))
    )
    return event_type, payload, body.decode("utf-8", errors="replace")


def fast(body: bytes) -> decoding.SubscriptionEvent | None:
    return decode_subscription_event(body, event_types=SUBSCRIPTION_EVENTS)


def realistic(**fields: Any) -> dict[str, Any]:
    data = subscription(
        sub_id=new_id(),
        customer_id=new_id(),
        external_id="user-1",
        modified_at=MODIFIED,
        metadata={USER_ID_METADATA_KEY: "user-1", "plan": "pro"},
    )
    data.update(fields)
    return data


@pytest.mark.parametrize("event_type", sorted(SUBSCRIPTION_EVENTS))
def test_every_subscription_event_takes_the_fast_path_and_reads_the_same(
    event_type: str,
) -> None:
    body = envelope(event_type, realistic(), MODIFIED)
    read = fast(body)
    assert read is not None  # the fast path is really taken for Polar's own shape
    assert tuple(read) == generic_reading(body)


def test_a_payload_that_lacks_a_time_takes_the_generic_path() -> None:
    # The generic path words the error: the fast path steps aside.
    body = json.dumps(
        {"type": "subscription.updated", "data": realistic(modified_at=None, created_at=None)}
    ).encode()
    assert fast(body) is None
    reading = generic_reading(body)
    assert reading is not None and reading[1].error is not None


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"type":"subscription.updated","data":{"id":"s","status":"x"}}\xff',
                     id="invalid-utf8"),
        pytest.param(b'{"type":"subscription.updated","x":"\xff","data":{}}', id="utf8-skipped"),
        pytest.param(b'\xef\xbb\xbf{"type":"subscription.updated"}', id="bom"),
        pytest.param(b'{"type":"subscription.updated","x":NaN}', id="nan"),
        pytest.param(b'{"type":"subscription.updated","x":"\\ud800"}', id="lone-surrogate"),
        pytest.param(b'[1,2]', id="not-an-object"),
        pytest.param(b'{"type":"order.paid","data":{"id":"o","status":"paid"}}', id="other-event"),
        pytest.param(b'{"type":"subscription.updated","data":null}', id="no-data"),
        pytest.param(b'{"type":"subscription.updated","data":{"id":"","status":"a"}}',
                     id="empty-id"),
        pytest.param(b'{"type":"subscription.updated","data":{"id":"s","status":"active",'
                     b'"modified_at":"2026-08-22T10:00:00Z","amount":"20"}}', id="amount-as-text"),
        pytest.param(b'{"type":"subscription.updated","data":{"id":"s","status":"active",'
                     b'"modified_at":"2026-08-22T10:00:00Z","amount":18446744073709551616}}',
                     id="amount-beyond-64-bits"),
        pytest.param(b'{"type":"subscription.updated","data":{"id":"' + b"s" * 256 + b'",'
                     b'"status":"active","modified_at":"2026-08-22T10:00:00Z"}}',
                     id="id-over-255-characters"),
        pytest.param(b'{"type":"subscription.updated","data":{"id":"s","status":"a\\u0000",'
                     b'"modified_at":"2026-08-22T10:00:00Z"}}', id="nul-escape"),
        pytest.param(b'{"type":"subscription.updated","data":{"id":"s","status":"active",'
                     b'"modified_at":"2026-08-22T10:00:00Z","customer":"c"}}',
                     id="customer-as-text"),
        pytest.param(b'{"type":"subscription.updated","data":{"id":"s","status":"active",'
                     b'"modified_at":"2026-08-22T10:00:00Z","cancel_at_period_end":1}}',
                     id="flag-as-number"),
        pytest.param(b'{"type":"subscription.updated","data":{"id":"s","status":"active",'
                     b'"modified_at":20260822}}', id="time-as-number"),
    ],
)
def test_bodies_not_exactly_polars_shape_take_the_generic_path(body: bytes) -> None:
    assert fast(body) is None


def test_duplicate_keys_read_as_the_generic_path_reads_them() -> None:
    body = (
        b'{"type":"subscription.created","type":"subscription.updated","data":{"id":"a",'
        b'"id":"b","status":"active","modified_at":"2026-08-22T10:00:00Z",'
        b'"customer":{"external_id":"u1"},"customer":{"external_id":"u2"}}}'
    )
    read = fast(body)
    assert read is not None  # msgspec takes the last of repeated keys, as json does
    assert tuple(read) == generic_reading(body)
    assert (read.event_type, read.subscription.external_id) == ("subscription.updated", "u2")


# -- generated payloads: whatever the fast path accepts, it reads as the generic path does --
texts = st.one_of(st.none(), st.text(max_size=8), st.sampled_from(["", "usd", "user-1"]))
times = st.one_of(
    st.none(),
    st.sampled_from(
        [
            "2026-08-22T10:00:00Z",
            "2026-08-22T10:00:00.123456Z",
            "2026-08-22T10:00:00.1234567Z",
            "2026-08-22T10:00:00+02:00",
            "2026-08-22T10:00:00",
            "2026-08-22",
            "2026-08-22t10:00:00z",
            "2026-08-22T23:59:60Z",
            "0001-01-01T00:00:00+01:00",
            "not a time",
            "",
        ]
    ),
    st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat()),
)
odd_values = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def nested(value: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A customer, product or metadata object whose fields are drawn from ``value``."""
    return st.one_of(
        st.none(),
        st.fixed_dictionaries(
            {},
            optional={
                "id": value,
                "external_id": value,
                "organization_id": value,
                USER_ID_METADATA_KEY: value,
                "other": odd_values,
            },
        ),
    )


def subscription_fields(
    text: st.SearchStrategy[Any], time: st.SearchStrategy[Any], other: st.SearchStrategy[Any]
) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {},
        optional={
            "id": text,
            "status": st.one_of(text, st.just("active")),
            "modified_at": time,
            "created_at": time,
            "current_period_end": time,
            "current_period_start": time,
            "started_at": time,
            "trial_end": time,
            "canceled_at": time,
            "ends_at": time,
            "ended_at": time,
            "past_due_at": time,
            "cancel_at_period_end": st.one_of(st.none(), st.booleans(), other),
            "amount": st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1), other),
            "product_id": text,
            "customer_id": text,
            "checkout_id": text,
            "currency": text,
            "recurring_interval": text,
            "organization_id": text,
            "customer": nested(text),
            "product": nested(text),
            "metadata": nested(text),
            "unknown_field": odd_values,
        },
    )


#: Every value of the type Polar sends (texts may be empty, times unreadable): the fast
#: path takes most of these.
well_typed = subscription_fields(texts, times, st.nothing())
#: Any JSON value anywhere: the fast path must step aside, or read as the generic path.
any_typed = subscription_fields(
    st.one_of(texts, odd_values), st.one_of(times, odd_values), odd_values
)


@settings(max_examples=500, deadline=None)
@given(fields=well_typed, timestamp=times)
def test_well_typed_payloads_read_the_same_on_both_paths(
    fields: dict[str, Any], timestamp: Any
) -> None:
    body = json.dumps({"type": "subscription.updated", "timestamp": timestamp, "data": fields})
    read = fast(body.encode())
    generic = generic_reading(body.encode())
    assert generic is not None
    usable = bool(fields.get("id")) and bool(fields.get("status")) and generic[1].error is None
    # A NUL or surrogate escape anywhere (json.dumps escapes every non-ASCII character)
    # also sends the body to the generic path, which checks each value can be stored.
    usable = usable and decoding._UNSTORABLE_ESCAPE.search(body.encode()) is None
    assert (read is not None) == usable  # the fast path steps aside only when it must
    if read is not None:
        assert tuple(read) == generic


@settings(max_examples=300, deadline=None)
@given(
    event_type=st.sampled_from([*sorted(SUBSCRIPTION_EVENTS), "checkout.created", ""]),
    data=st.one_of(any_typed, odd_values, st.none()),
    timestamp=st.one_of(times, odd_values),
)
def test_any_payload_the_fast_path_takes_reads_the_same(
    event_type: str, data: Any, timestamp: Any
) -> None:
    body = json.dumps({"type": event_type, "timestamp": timestamp, "data": data}).encode()
    read = fast(body)
    if read is not None:
        assert tuple(read) == generic_reading(body)


@settings(max_examples=200, deadline=None)
@given(fields=well_typed)
def test_realistic_payloads_with_generated_fields_read_the_same(fields: dict[str, Any]) -> None:
    body = envelope("subscription.updated", realistic(**fields), MODIFIED)
    read = fast(body)
    if read is not None:
        assert tuple(read) == generic_reading(body)


def test_each_state_field_is_read_into_its_own_name_on_both_readers() -> None:
    # The readers build the state from positional values (STATE_FIELDS order): every
    # field gets a value of its own here, so a value in the wrong place shows.
    times = ("created_at", "started_at", "current_period_start", "current_period_end",
             "trial_end", "canceled_at", "ends_at", "ended_at", "past_due_at")
    when = {name: datetime(2026, 1 + i, 1 + i, i, i, i, tzinfo=UTC)
            for i, name in enumerate(times)}
    data = realistic(
        **{name: value.isoformat().replace("+00:00", "Z") for name, value in when.items()},
        id="sub-x", status="past_due", product_id="prod-x", customer_id="cust-x",
        checkout_id="co-x", amount=4321, currency="eur", recurring_interval="year",
        cancel_at_period_end=True,
    )
    expected = {
        "id": "sub-x", "user_id": "user-9", "status": "past_due", "product_id": "prod-x",
        "cancel_at_period_end": True, "version": decoding.version_of(MODIFIED),
        "customer_id": "cust-x", "checkout_id": "co-x", "amount": 4321, "currency": "eur",
        "recurring_interval": "year", **when,
    }
    body = envelope("subscription.updated", data, MODIFIED)
    read, generic = fast(body), generic_reading(body)
    assert read is not None and generic is not None
    for payload in (read.subscription, generic[1]):
        state = attrs.asdict(payload.state_for("user-9"), recurse=False)
        assert state == expected
        assert payload.state_fields == {k: v for k, v in expected.items() if k != "user_id"}


def test_a_payload_that_lacks_what_a_state_needs_has_no_state_fields() -> None:
    payload = SubscriptionPayload.from_dict({"status": "active"}, fallback_time=None)
    assert payload.error is not None
    assert payload.state_fields == {}
