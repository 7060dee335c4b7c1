"""replay_event: processing a recorded delivery again from the inbox."""

from __future__ import annotations

import pytest

from kavach import NotFoundError, StoreCorruptError, WebhookCallbackError, create_kavach
from kavach.auth import polar
from kavach.records import InboxEvent
from tests.polar_plugin.conftest import SECRET, START, PolarHarness
from tests.polar_plugin.payloads import new_id
from tests.polar_plugin.test_webhook_handling import make_user, sub_body


def test_replay_runs_a_failed_callback_once(harness: PolarHarness) -> None:
    user = make_user(harness)
    msg_id = new_id()
    harness.callbacks.fail_next = 1
    with pytest.raises(WebhookCallbackError):
        harness.deliver(sub_body(user, sub_id=new_id(), customer_id=new_id(), at_seconds=1),
                        msg_id)
    outcome = harness.plugin.replay_event(msg_id)
    assert outcome.outcome == "applied"
    assert len(harness.callbacks.calls) == 1
    stored = harness.kavach.store.get_event(msg_id)
    assert stored is not None and stored.status == "processed"


def test_replay_of_a_processed_delivery_is_a_duplicate(harness: PolarHarness) -> None:
    user = make_user(harness)
    msg_id = new_id()
    harness.deliver(sub_body(user, sub_id=new_id(), customer_id=new_id(), at_seconds=1), msg_id)
    assert harness.plugin.replay_event(msg_id).outcome == "duplicate"
    assert len(harness.callbacks.calls) == 1


def test_replay_of_an_unknown_id(harness: PolarHarness) -> None:
    with pytest.raises(NotFoundError):
        harness.plugin.replay_event("no-such-delivery")


def test_replay_of_a_payload_that_is_not_text_is_a_store_error() -> None:
    # A Store that hands back what it was given (the memory store) or a driver's bytes:
    # an error naming the delivery, not an AttributeError.
    plugin = polar("polar_oat_test_token", SECRET, base_url="http://127.0.0.1:9")
    with create_kavach("memory://", plugins=[plugin]) as kavach:
        kavach.store.record_event(InboxEvent(
            webhook_id="wh1", event_type="order.paid", received_at=START,
            payload=b'{"type": "order.paid", "data": {}}',  # type: ignore[arg-type]
        ))
        with pytest.raises(StoreCorruptError, match=r"payload of 'wh1' is not text \(bytes\)"):
            plugin.replay_event("wh1")
