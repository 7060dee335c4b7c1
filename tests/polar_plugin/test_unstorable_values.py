"""Signed deliveries carrying values some store cannot keep: every store answers alike.

A genuine Polar body never holds a 300-character id, a NUL, a lone surrogate or an
amount beyond 64 bits, but a signed body is still input. PostgreSQL refuses NUL, SQLite
integers beyond 64 bits, SQLite and the JSON file lone surrogates, the SQL stores text
over 255 characters in their id columns; the memory store takes anything. So the plugin
decides before any store sees the value: an optional value it cannot store is taken as
missing (as one of the wrong type is), and an id or status it cannot store makes the
subscription unusable (recorded as failed, answered 400) — the same on every store, and
never a 500 that Polar would retry for nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kavach import (
    FrozenClock,
    PasswordHasher,
    WebhookPayloadError,
    WebhookVerificationError,
    create_kavach,
)
from kavach.auth import polar
from kavach.polar import decoding
from kavach.stores.base import MAX_TEXT_LENGTH, storable_text
from tests.polar_plugin.conftest import SECRET, START, CallbackRecorder, PolarHarness, store_url
from tests.polar_plugin.payloads import new_id, subscription
from tests.stores.conftest import SqlServer, mysql_server, postgres_server  # noqa: F401

KINDS = ["memory", "json", "sqlite", "memory-generic", "postgres", "mysql"]


@pytest.fixture(params=KINDS)
def any_store(request: pytest.FixtureRequest, tmp_path: Path,
              monkeypatch: pytest.MonkeyPatch) -> Iterator[PolarHarness]:
    """A harness on every store, the database servers included (skipped without them)."""
    kind = request.param
    if kind in ("postgres", "mysql"):
        server: SqlServer = request.getfixturevalue(f"{kind}_server")
        server.empty_tables()
        url = server.url
    else:
        url = store_url(kind, tmp_path)
    if kind.endswith("-generic"):
        monkeypatch.setattr(decoding, "_decoder", None)
    clock = FrozenClock(START)
    callbacks = CallbackRecorder()
    plugin = polar(access_token="polar_oat_test_token", webhook_secret=SECRET,
                   base_url="http://127.0.0.1:9", on_subscription_change=callbacks)
    with create_kavach(url, plugins=[plugin], clock=clock,
                       password_hasher=PasswordHasher.fast()) as kavach:
        yield PolarHarness(kavach, plugin, clock, callbacks)


def _body(user_id: str, **changes: Any) -> tuple[bytes, dict[str, Any]]:
    data = subscription(sub_id=new_id(), customer_id=new_id(), external_id=user_id,
                        modified_at=START)
    for path, value in changes.items():
        target = data
        *parents, leaf = path.split("__")
        for parent in parents:
            target = target[parent]
        target[leaf] = value
    # ensure_ascii: a lone surrogate travels as the JSON escape \ud800, as it must.
    body = json.dumps({"type": "subscription.updated", "timestamp": START.isoformat(),
                       "data": data}).encode()
    return body, data


LONG = "x" * (MAX_TEXT_LENGTH + 1)

#: Optional values no store could keep as they are: taken as missing.
DROPPED = {
    "amount beyond 64 bits": ("amount", 2**70, "amount"),
    "amount below -2**63": ("amount", -(2**63) - 1, "amount"),
    "product id over 255 characters": ("product_id", LONG, "product_id"),
    "currency with a NUL": ("currency", "us\x00d", "currency"),
    "checkout id with a lone surrogate": ("checkout_id", "\ud800abc", "checkout_id"),
}


@pytest.mark.parametrize("case", DROPPED, ids=list(DROPPED))
def test_an_optional_value_no_store_can_keep_is_taken_as_missing(
    any_store: PolarHarness, case: str
) -> None:
    h = any_store
    field, value, stored_as = DROPPED[case]
    user = h.kavach.users.create("jane@acme.io", password="correct horse battery").id
    body, data = _body(user, **{field: value})
    outcome = h.deliver(body, new_id())
    assert outcome.outcome == "applied"
    stored = h.kavach.store.get_subscription(data["id"])
    assert stored is not None and getattr(stored, stored_as) is None


#: Ids and statuses no store could keep: the subscription cannot be used.
REFUSED = {
    "subscription id over 255 characters": ("id", LONG),
    "subscription id with a NUL": ("id", "sub\x00x"),
    "status with a lone surrogate": ("status", "act\udc00ive"),
    "status with a NUL": ("status", "act\x00ive"),
    "status over 255 characters": ("status", LONG),
}


@pytest.mark.parametrize("case", REFUSED, ids=list(REFUSED))
def test_an_id_or_status_no_store_can_keep_fails_the_delivery_with_400(
    any_store: PolarHarness, case: str
) -> None:
    h = any_store
    field, value = REFUSED[case]
    user = h.kavach.users.create("jane@acme.io", password="correct horse battery").id
    body, _ = _body(user, **{field: value})
    msg_id = new_id()
    with pytest.raises(WebhookPayloadError) as caught:
        h.deliver(body, msg_id)
    assert caught.value.reason == "bad_subscription"
    assert "storable" in str(caught.value)
    recorded = h.kavach.store.get_event(msg_id)
    assert recorded is not None and recorded.status == "failed"
    assert h.kavach.store.list_subscriptions(user) == []
    assert h.callbacks.calls == []


@pytest.mark.parametrize("value", ["\x00" + "u", "\ud800", LONG], ids=["nul", "surrogate", "long"])
def test_a_user_id_no_store_can_keep_matches_no_one(any_store: PolarHarness, value: str) -> None:
    h = any_store
    body, _ = _body("placeholder", customer__external_id=value)
    outcome = h.deliver(body, new_id())
    assert outcome.outcome == "unmatched"


def test_an_escaped_surrogate_pair_is_ordinary_text(any_store: PolarHarness) -> None:
    # "\ud83d\ude00" is one character (an emoji): storable, kept as it is.
    h = any_store
    user = h.kavach.users.create("jane@acme.io", password="correct horse battery").id
    body, data = _body(user, status="active\U0001f600")
    assert b"\\ud83d\\ude00" in body
    h.deliver(body, new_id())
    stored = h.kavach.store.get_subscription(data["id"])
    assert stored is not None and stored.status == "active\U0001f600"


@pytest.mark.parametrize(
    ("value", "expected"),
    [("a" * MAX_TEXT_LENGTH, True), (LONG, False), ("é" * 10, True), ("a\x00", False),
     ("\ud800", False), ("\U0001f600", True), ("", True)],
)
def test_storable_text(value: str, expected: bool) -> None:
    assert storable_text(value) is expected


@pytest.mark.parametrize("msg_id", ["m" * (MAX_TEXT_LENGTH + 1), "msg\x00id"], ids=["long", "nul"])
def test_a_webhook_id_no_store_can_key_is_refused_with_400(
    any_store: PolarHarness, msg_id: str
) -> None:
    h = any_store
    body, _ = _body("placeholder")
    with pytest.raises(WebhookVerificationError) as caught:
        h.deliver(body, msg_id)
    assert caught.value.reason == "bad_webhook_id"
    assert h.kavach.store.count_events() == 0


def test_an_event_type_no_store_can_keep_is_a_bad_envelope(any_store: PolarHarness) -> None:
    h = any_store
    body = json.dumps({"type": "order." + LONG, "data": {}}).encode()
    with pytest.raises(WebhookPayloadError) as caught:
        h.deliver(body, new_id())
    assert caught.value.reason == "bad_envelope"
    assert h.kavach.store.count_events() == 0
