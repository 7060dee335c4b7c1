"""How many store writes a webhook delivery costs (each one is a commit, an fsync on
SQLite): one per delivery, two when ``on_subscription_change`` must run, none for a
duplicate (its one ``ingest_event`` call finds it processed and commits nothing). Runs
on the memory, JSON-file and SQLite stores (see conftest ``harness``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from tests.polar_plugin.conftest import START, PolarHarness
from tests.polar_plugin.payloads import envelope, new_id, subscription

#: The store methods that write.
WRITES = (
    "create_user",
    "update_user",
    "link_polar_customer",
    "create_session",
    "revoke_session",
    "delete_expired_sessions",
    "apply_subscription",
    "ingest_event",
    "record_event",
    "finish_event",
)


@pytest.fixture
def writes(harness: PolarHarness, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the store's write methods called from now on, in order."""
    calls: list[str] = []
    store = harness.kavach.store

    def counting(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def write(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            return method(*args, **kwargs)

        return write

    for name in WRITES:
        monkeypatch.setattr(store, name, counting(name, getattr(store, name)))
    return calls


def linked_user(h: PolarHarness) -> tuple[str, str]:
    """A user already linked to a Polar customer (so matching writes nothing)."""
    user = h.kavach.users.create(f"{new_id()}@acme.io", password="correct horse battery").id
    customer = new_id()
    h.kavach.store.link_polar_customer(user, customer)
    return user, customer


def update(user: str, customer: str, sub: str, seconds: float) -> bytes:
    modified = START - timedelta(minutes=2) + timedelta(seconds=seconds)
    data = subscription(sub_id=sub, customer_id=customer, external_id=user, modified_at=modified)
    return envelope("subscription.updated", data, modified)


def test_applied_delivery_without_callback_is_one_write(
    harness: PolarHarness, writes: list[str]
) -> None:
    harness.plugin.on_subscription_change = None
    user, customer = linked_user(harness)
    writes.clear()
    outcome = harness.deliver(update(user, customer, new_id(), 1), new_id())
    assert outcome.outcome == "applied"
    assert writes == ["ingest_event"]


def test_applied_delivery_with_callback_is_two_writes(
    harness: PolarHarness, writes: list[str]
) -> None:
    user, customer = linked_user(harness)
    writes.clear()
    assert harness.deliver(update(user, customer, new_id(), 1), new_id()).outcome == "applied"
    assert writes == ["ingest_event", "finish_event"]
    assert len(harness.callbacks.calls) == 1


def test_stale_delivery_without_callback_is_one_write(
    harness: PolarHarness, writes: list[str]
) -> None:
    harness.plugin.on_subscription_change = None
    user, customer = linked_user(harness)
    sub = new_id()
    harness.deliver(update(user, customer, sub, 5), new_id())
    writes.clear()
    assert harness.deliver(update(user, customer, sub, 4), new_id()).outcome == "stale"
    assert writes == ["ingest_event"]


def test_ignored_event_is_one_write(harness: PolarHarness, writes: list[str]) -> None:
    body = json.dumps({"type": "order.paid", "timestamp": "2026-08-22T10:17:41Z",
                       "data": {"id": new_id()}}).encode()
    assert harness.deliver(body, new_id()).outcome == "ignored"
    assert writes == ["ingest_event"]


def test_duplicate_delivery_writes_nothing(harness: PolarHarness, writes: list[str]) -> None:
    user, customer = linked_user(harness)
    body, msg_id = update(user, customer, new_id(), 1), new_id()
    harness.deliver(body, msg_id)
    before = harness.kavach.store.get_event(msg_id)
    writes.clear()
    assert harness.deliver(body, msg_id).outcome == "duplicate"
    # The one call finds the delivery processed, under the store's lock, and leaves it.
    assert writes == ["ingest_event"]
    assert harness.kavach.store.get_event(msg_id) == before


def test_applied_delivery_is_stored_processed_in_its_one_write(harness: PolarHarness) -> None:
    harness.plugin.on_subscription_change = None
    user, customer = linked_user(harness)
    msg_id, sub = new_id(), new_id()
    harness.deliver(update(user, customer, sub, 1), msg_id)
    stored = harness.kavach.store.get_event(msg_id)
    assert stored is not None
    assert (stored.status, stored.outcome, stored.user_id, stored.subscription_id) == (
        "processed",
        "applied",
        user,
        sub,
    )
    assert stored.processed_at == harness.clock.now()
