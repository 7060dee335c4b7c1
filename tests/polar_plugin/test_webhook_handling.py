"""handle_webhook: verification, idempotency, ordering, events, matching, callbacks.

Runs on the memory, JSON-file and SQLite stores (see conftest ``harness``).
"""

from __future__ import annotations

import json
import random
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kavach import (
    WebhookCallbackError,
    WebhookPayloadError,
    WebhookVerificationError,
)
from kavach.polar import SUBSCRIPTION_EVENTS
from tests.polar_plugin.conftest import START, PolarHarness
from tests.polar_plugin.payloads import ORG_ID, envelope, new_id, subscription

T0 = START - timedelta(minutes=2)


def make_user(h: PolarHarness, email: str = "jane@acme.io") -> str:
    return h.kavach.users.create(email, password="correct horse battery").id


def sub_body(
    user_id: str | None,
    *,
    sub_id: str,
    customer_id: str,
    at_seconds: float,
    event: str = "subscription.updated",
    **fields: Any,
) -> bytes:
    modified = T0 + timedelta(seconds=at_seconds)
    data = subscription(
        sub_id=sub_id, customer_id=customer_id, external_id=user_id, modified_at=modified, **fields
    )
    return envelope(event, data, modified)


# -- verification ------------------------------------------------------------------


def test_valid_delivery_is_applied(harness: PolarHarness) -> None:
    user = make_user(harness)
    sub, cust = new_id(), new_id()
    outcome = harness.deliver(sub_body(user, sub_id=sub, customer_id=cust, at_seconds=1), new_id())
    assert outcome.outcome == "applied"
    assert outcome.status_code == 200
    got = harness.plugin.get_subscription(user)
    assert got is not None
    assert (got.id, got.status, got.cancel_at_period_end) == (sub, "active", False)
    assert got.current_period_end is not None
    assert got.current_period_end.utcoffset() == timedelta(0)


def test_legacy_secret_derivation_is_accepted(harness: PolarHarness) -> None:
    user = make_user(harness)
    body = sub_body(user, sub_id=new_id(), customer_id=new_id(), at_seconds=1)
    outcome = harness.deliver(body, new_id(), derivation="legacy")
    assert outcome.outcome == "applied"


def test_bad_signature_is_rejected_and_not_recorded(harness: PolarHarness) -> None:
    user = make_user(harness)
    body = sub_body(user, sub_id=new_id(), customer_id=new_id(), at_seconds=1)
    msg_id = new_id()
    headers = harness.headers(body, msg_id)
    with pytest.raises(WebhookVerificationError) as err:
        harness.plugin.handle_webhook(body + b" ", headers)
    assert err.value.reason == "no_matching_signature"
    assert harness.kavach.store.get_event(msg_id) is None
    assert harness.plugin.get_subscription(user) is None


def test_missing_headers_reason(harness: PolarHarness) -> None:
    with pytest.raises(WebhookVerificationError) as err:
        harness.plugin.handle_webhook(b"{}", {"content-type": "application/json"})
    assert err.value.reason == "missing_headers"


def test_stale_timestamp_reason(harness: PolarHarness) -> None:
    body = b'{"type":"x","data":{}}'
    headers = harness.headers(body, new_id())
    harness.clock.advance(seconds=301)
    with pytest.raises(WebhookVerificationError) as err:
        harness.plugin.handle_webhook(body, headers)
    assert err.value.reason == "stale_timestamp"


def test_signed_but_malformed_json_is_rejected(harness: PolarHarness) -> None:
    body = b'{"type": "subscription.updated", "data": '
    msg_id = new_id()
    with pytest.raises(WebhookVerificationError) as err:
        harness.deliver(body, msg_id)
    assert err.value.reason == "malformed_json"
    assert harness.kavach.store.get_event(msg_id) is None


def test_signed_json_that_is_not_an_envelope_is_rejected(harness: PolarHarness) -> None:
    with pytest.raises(WebhookPayloadError):
        harness.deliver(b"[1, 2, 3]", new_id())


def test_body_over_the_limit_is_rejected_before_verification(harness: PolarHarness) -> None:
    body = b"{" + b" " * harness.plugin.max_webhook_body + b"}"
    with pytest.raises(WebhookVerificationError) as err:
        harness.plugin.handle_webhook(body, {})
    assert err.value.reason == "body_too_large"


def test_secret_never_appears_in_errors_or_reprs(harness: PolarHarness) -> None:
    from tests.polar_plugin.conftest import SECRET

    with pytest.raises(WebhookVerificationError) as err:
        harness.plugin.handle_webhook(b"{}", {"webhook-id": "x", "webhook-timestamp": "1",
                                              "webhook-signature": "v1,AAAA"})
    for text in (str(err.value), repr(err.value), repr(harness.plugin), repr(harness.kavach)):
        assert SECRET not in text
        assert "polar_oat_test_token" not in text


# -- idempotency ----------------------------------------------------------------------


def test_redelivery_of_a_processed_id_changes_nothing(harness: PolarHarness) -> None:
    user = make_user(harness)
    body = sub_body(user, sub_id=new_id(), customer_id=new_id(), at_seconds=1)
    msg_id = new_id()
    assert harness.deliver(body, msg_id).outcome == "applied"
    again = harness.deliver(body, msg_id)
    assert again.outcome == "duplicate"
    assert again.status_code == 200
    assert len(harness.callbacks.calls) == 1
    assert harness.kavach.store.count_events() == 1


def test_unknown_event_type_is_recorded_and_acknowledged(harness: PolarHarness) -> None:
    msg_id = new_id()
    body = json.dumps({"type": "galaxy.exploded", "timestamp": "2026-08-22T10:17:41Z",
                       "data": {"id": "x"}}).encode()
    outcome = harness.deliver(body, msg_id)
    assert (outcome.outcome, outcome.status_code) == ("ignored", 200)
    stored = harness.kavach.store.get_event(msg_id)
    assert stored is not None
    assert (stored.status, stored.event_type) == ("processed", "galaxy.exploded")


def test_known_non_subscription_event_is_recorded_and_ignored(harness: PolarHarness) -> None:
    body = json.dumps({"type": "order.paid", "timestamp": "2026-08-22T10:17:41Z",
                       "data": {"id": new_id()}}).encode()
    assert harness.deliver(body, new_id()).outcome == "ignored"
    assert harness.callbacks.calls == []


# -- ordering -------------------------------------------------------------------------


def test_older_event_after_newer_is_stale(harness: PolarHarness) -> None:
    user = make_user(harness)
    sub, cust = new_id(), new_id()
    newer = sub_body(user, sub_id=sub, customer_id=cust, at_seconds=10, cancel_at_period_end=True)
    older = sub_body(user, sub_id=sub, customer_id=cust, at_seconds=5)
    assert harness.deliver(newer, new_id()).outcome == "applied"
    assert harness.deliver(older, new_id()).outcome == "stale"
    got = harness.plugin.get_subscription(user)
    assert got is not None
    assert got.cancel_at_period_end is True
    assert len(harness.callbacks.calls) == 1


def test_equal_version_is_stale_and_fires_no_callback(harness: PolarHarness) -> None:
    user = make_user(harness)
    sub, cust = new_id(), new_id()
    first = sub_body(user, sub_id=sub, customer_id=cust, at_seconds=3)
    same = sub_body(user, sub_id=sub, customer_id=cust, at_seconds=3, event="subscription.active")
    assert harness.deliver(first, new_id()).outcome == "applied"
    assert harness.deliver(same, new_id()).outcome == "stale"
    assert len(harness.callbacks.calls) == 1


def test_revoked_subscription_is_gone_and_cannot_come_back(harness: PolarHarness) -> None:
    user = make_user(harness)
    sub, cust = new_id(), new_id()
    revoked = sub_body(user, sub_id=sub, customer_id=cust, at_seconds=20, status="canceled",
                       event="subscription.revoked", ended_at=T0 + timedelta(seconds=20))
    late_update = sub_body(user, sub_id=sub, customer_id=cust, at_seconds=10)
    harness.deliver(revoked, new_id())
    assert harness.plugin.get_subscription(user) is None
    assert harness.deliver(late_update, new_id()).outcome == "stale"
    assert harness.plugin.get_subscription(user) is None
    listed = harness.plugin.list_subscriptions(user)
    assert [s.status for s in listed] == ["canceled"]


def test_unpaid_counts_as_revoked(harness: PolarHarness) -> None:
    user = make_user(harness)
    harness.deliver(sub_body(user, sub_id=new_id(), customer_id=new_id(), at_seconds=1,
                             status="unpaid", event="subscription.revoked"), new_id())
    assert harness.plugin.get_subscription(user) is None


def test_modified_at_null_falls_back_to_created_at(harness: PolarHarness) -> None:
    user = make_user(harness)
    sub, cust = new_id(), new_id()
    data = subscription(sub_id=sub, customer_id=cust, external_id=user,
                        modified_at=T0, created_at=T0 + timedelta(seconds=5))
    data["modified_at"] = None
    later = sub_body(user, sub_id=sub, customer_id=cust, at_seconds=4)
    harness.deliver(envelope("subscription.created", data, T0), new_id())
    # created_at (T0+5s) is newer than the later body's modified_at (T0+4s)
    assert harness.deliver(later, new_id()).outcome == "stale"


@pytest.mark.parametrize("event_type", sorted(SUBSCRIPTION_EVENTS))
def test_every_subscription_event_updates_state(harness: PolarHarness, event_type: str) -> None:
    user = make_user(harness)
    status = {"subscription.revoked": "canceled", "subscription.past_due": "past_due",
              "subscription.paused": "paused"}.get(event_type, "active")
    body = sub_body(user, sub_id=new_id(), customer_id=new_id(), at_seconds=1,
                    event=event_type, status=status)
    assert harness.deliver(body, new_id()).outcome == "applied"
    assert harness.plugin.list_subscriptions(user)[0].status == status


def test_unknown_status_and_extra_fields_are_tolerated(harness: PolarHarness) -> None:
    user = make_user(harness)
    sub = new_id()
    data = subscription(sub_id=sub, customer_id=new_id(), external_id=user,
                        modified_at=T0, status="hibernating")
    data["brand_new_field"] = {"nested": [1, 2]}
    raw = json.loads(envelope("subscription.updated", data, T0))
    raw["api_version"] = "2026-10"
    body = json.dumps(raw).encode()
    assert harness.deliver(body, new_id()).outcome == "applied"
    got = harness.plugin.get_subscription(user)
    assert got is not None
    assert got.status == "hibernating"


def test_subscription_event_without_id_is_a_payload_error(harness: PolarHarness) -> None:
    msg_id = new_id()
    user = make_user(harness)
    body = json.dumps({"type": "subscription.updated", "timestamp": "2026-08-22T10:17:41Z",
                       "data": {"status": "active", "customer": {"external_id": user}}})
    with pytest.raises(WebhookPayloadError):
        harness.deliver(body.encode(), msg_id)
    stored = harness.kavach.store.get_event(msg_id)
    assert stored is not None
    assert stored.status == "failed"


# -- matching the user ----------------------------------------------------------------


def test_match_by_external_id_links_customer(harness: PolarHarness) -> None:
    user = make_user(harness)
    cust = new_id()
    harness.deliver(sub_body(user, sub_id=new_id(), customer_id=cust, at_seconds=1), new_id())
    record = harness.kavach.store.get_user(user)
    assert record is not None
    assert record.polar_customer_id == cust


def test_match_by_metadata_when_customer_was_reused_by_email(harness: PolarHarness) -> None:
    user = make_user(harness)
    body = sub_body("someone-elses-id", sub_id=new_id(), customer_id=new_id(), at_seconds=1,
                    metadata={"kavach_user_id": user})
    outcome = harness.deliver(body, new_id())
    assert (outcome.outcome, outcome.user_id) == ("applied", user)


def test_match_by_stored_customer_id(harness: PolarHarness) -> None:
    user = make_user(harness)
    cust = new_id()
    harness.deliver(sub_body(user, sub_id=new_id(), customer_id=cust, at_seconds=1), new_id())
    second = sub_body(None, sub_id=new_id(), customer_id=cust, at_seconds=2)
    outcome = harness.deliver(second, new_id())
    assert (outcome.outcome, outcome.user_id) == ("applied", user)
    assert len(harness.plugin.list_subscriptions(user)) == 2


def test_unmatched_event_is_recorded_and_acknowledged(harness: PolarHarness) -> None:
    msg_id = new_id()
    outcome = harness.deliver(
        sub_body("not-a-user", sub_id=new_id(), customer_id=new_id(), at_seconds=1), msg_id
    )
    assert (outcome.outcome, outcome.status_code) == ("unmatched", 200)
    stored = harness.kavach.store.get_event(msg_id)
    assert stored is not None
    assert (stored.status, stored.outcome) == ("processed", "unmatched")


def test_foreign_organization_is_acknowledged_and_ignored(harness: PolarHarness) -> None:
    harness.plugin.organization_id = "11111111-2222-4333-8444-555555555555"
    user = make_user(harness)
    outcome = harness.deliver(
        sub_body(user, sub_id=new_id(), customer_id=new_id(), at_seconds=1), new_id()
    )
    assert outcome.outcome == "foreign_organization"
    assert harness.plugin.get_subscription(user) is None
    harness.plugin.organization_id = ORG_ID
    assert harness.deliver(
        sub_body(user, sub_id=new_id(), customer_id=new_id(), at_seconds=2), new_id()
    ).outcome == "applied"


# -- callbacks ------------------------------------------------------------------------


def test_callback_gets_user_and_subscription_after_commit(harness: PolarHarness) -> None:
    user = make_user(harness)
    seen: list[Any] = []

    def callback(user_id: str, sub: Any) -> None:
        seen.append((user_id, sub.status, harness.plugin.get_subscription(user_id)))

    harness.plugin.on_subscription_change = callback
    harness.deliver(sub_body(user, sub_id=new_id(), customer_id=new_id(), at_seconds=1), new_id())
    assert seen[0][0] == user
    assert seen[0][2] is not None  # state was committed before the callback ran


def test_failing_callback_gives_5xx_path_and_retry_runs_it_once(harness: PolarHarness) -> None:
    user = make_user(harness)
    body = sub_body(user, sub_id=new_id(), customer_id=new_id(), at_seconds=1)
    msg_id = new_id()
    harness.callbacks.fail_next = 1
    with pytest.raises(WebhookCallbackError):
        harness.deliver(body, msg_id)
    stored = harness.kavach.store.get_event(msg_id)
    assert stored is not None
    assert (stored.status, stored.outcome) == ("failed", "applied")
    retry = harness.deliver(body, msg_id)
    assert retry.outcome == "applied"
    assert len(harness.callbacks.calls) == 1
    assert harness.deliver(body, msg_id).outcome == "duplicate"
    assert len(harness.callbacks.calls) == 1
    final = harness.kavach.store.get_event(msg_id)
    assert final is not None
    assert (final.status, final.attempts) == ("processed", 2)


# -- whole sequences, as Polar sends them (polar-api.md "Which events ...") ---------------


def lifecycle(user: str) -> list[tuple[str, bytes]]:
    """New subscription, cancel at period end, then the period-end revoke."""
    sub, cust = new_id(), new_id()
    t_cancel, t_end = 60.0, 120.0

    def ev(event: str, at: float, **fields: Any) -> tuple[str, bytes]:
        return new_id(), sub_body(user, sub_id=sub, customer_id=cust, at_seconds=at,
                                  event=event, **fields)

    canceled = {"cancel_at_period_end": True, "canceled_at": T0 + timedelta(seconds=t_cancel)}
    ended = {**canceled, "status": "canceled", "ended_at": T0 + timedelta(seconds=t_end)}
    return [
        ev("subscription.created", 1),
        ev("subscription.active", 1),
        ev("subscription.updated", 1),
        ev("subscription.updated", t_cancel, **canceled),
        ev("subscription.canceled", t_cancel, **canceled),
        ev("subscription.updated", t_end, **ended),
        ev("subscription.canceled", t_end, **ended),
        ev("subscription.revoked", t_end, **ended),
    ]


def replay(h: PolarHarness, deliveries: list[tuple[str, bytes]]) -> None:
    for msg_id, body in deliveries:
        h.deliver(body, msg_id)


def assert_final_state(h: PolarHarness, user: str, n_ids: int) -> None:
    assert h.plugin.get_subscription(user) is None
    [sub] = h.plugin.list_subscriptions(user)
    assert (sub.status, sub.cancel_at_period_end) == ("canceled", True)
    assert h.kavach.store.count_events() == n_ids
    statuses = [(s.status, s.cancel_at_period_end) for _, s in h.callbacks.calls]
    assert len(statuses) == len(set(statuses)), "a change was notified twice"
    assert statuses[-1] == ("canceled", True)


@pytest.mark.parametrize("order", ["in_order", "reversed", "shuffled", "duplicated"])
def test_lifecycle_ends_in_the_same_state_in_any_order(harness: PolarHarness, order: str) -> None:
    user = make_user(harness)
    events = lifecycle(user)
    if order == "reversed":
        events.reverse()
    elif order == "shuffled":
        random.Random(7).shuffle(events)
    elif order == "duplicated":
        events = events + events[::2] + events
    replay(harness, events)
    assert_final_state(harness, user, n_ids=8)
    if order in ("in_order", "duplicated"):
        assert len(harness.callbacks.calls) == 3  # created, cancel scheduled, revoked
    if order == "reversed":
        assert len(harness.callbacks.calls) == 1


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_permutation_with_duplicates_converges(harness: PolarHarness, data: Any) -> None:
    user = make_user(harness, email=f"{new_id()}@acme.io")
    events = lifecycle(user)
    picks = data.draw(st.lists(st.sampled_from(events), max_size=12))
    deliveries = data.draw(st.permutations(events + picks))
    before = len(harness.callbacks.calls)
    replay(harness, deliveries)
    mine = [s for u, s in harness.callbacks.calls[before:] if u == user]
    assert harness.plugin.get_subscription(user) is None
    assert mine[-1].status == "canceled"
    keys = [(s.status, s.cancel_at_period_end) for s in mine]
    assert len(keys) == len(set(keys))
