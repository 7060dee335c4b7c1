"""The claim on a delivery whose callback is running: a concurrent copy of it waits (503,
``WebhookInProgressError``) instead of running the callback a second time; a claim that
ran out (a crashed process) is taken over; a failed callback releases it at once.

Runs on the memory, JSON-file and SQLite stores (see conftest ``harness``).
"""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

import pytest

from kavach import ConfigurationError, WebhookCallbackError, WebhookInProgressError
from kavach.auth import polar
from kavach.polar import PolarSubscription
from tests.polar_plugin.conftest import SECRET, START, PolarHarness
from tests.polar_plugin.payloads import envelope, new_id, subscription

CLAIM = 60.0  # the default webhook_claim_seconds


class Crash(BaseException):
    """Stands for the process dying inside the callback: nothing after it runs."""


def make_user(h: PolarHarness) -> str:
    return h.kavach.users.create(f"{new_id()}@acme.io", password="correct horse battery").id


def update(user: str, sub: str, seconds: float, **fields: Any) -> bytes:
    modified = START - timedelta(minutes=2) + timedelta(seconds=seconds)
    data = subscription(
        sub_id=sub, customer_id="cus_1", external_id=user, modified_at=modified, **fields
    )
    return envelope("subscription.updated", data, modified)


def crash_in_callback(h: PolarHarness, body: bytes, msg_id: str) -> None:
    """Deliver ``body`` with a callback that "kills the process": the state is committed
    and the delivery stays received + applied, claimed for ``CLAIM`` seconds."""

    def dying(user_id: str, sub: PolarSubscription) -> None:
        raise Crash

    h.plugin.on_subscription_change = dying
    with pytest.raises(Crash):
        h.deliver(body, msg_id)
    h.plugin.on_subscription_change = h.callbacks
    stored = h.kavach.store.get_event(msg_id)
    assert stored is not None
    assert (stored.status, stored.outcome) == ("received", "applied")
    assert stored.claimed_until == h.clock.now() + timedelta(seconds=CLAIM)


def test_a_copy_arriving_while_the_callback_runs_is_in_progress(harness: PolarHarness) -> None:
    user = make_user(harness)
    body, msg_id = update(user, new_id(), 1), new_id()
    calls: list[str] = []
    copies: list[BaseException] = []

    def callback(user_id: str, sub: PolarSubscription) -> None:
        calls.append(sub.id)
        try:  # the same delivery, arriving at another worker meanwhile
            harness.deliver(body, msg_id)
        except WebhookInProgressError as exc:
            copies.append(exc)

    harness.plugin.on_subscription_change = callback
    outcome = harness.deliver(body, msg_id)
    assert outcome.outcome == "applied"
    assert len(calls) == 1
    [copy] = copies
    assert isinstance(copy, WebhookInProgressError)
    assert (copy.webhook_id, copy.retry_after) == (msg_id, math.ceil(CLAIM))
    stored = harness.kavach.store.get_event(msg_id)
    assert stored is not None
    assert (stored.status, stored.attempts, stored.claimed_until) == ("processed", 1, None)
    assert harness.deliver(body, msg_id).outcome == "duplicate"
    assert len(calls) == 1


def test_a_callback_that_fails_after_a_copy_took_over_and_finished_is_not_run_again(
    harness: PolarHarness,
) -> None:
    # R1's callback outlives its claim; a copy (R2) takes the delivery over and finishes
    # it; then R1's callback raises. R1 answers 500, but the delivery stays processed:
    # Polar's retry of R1 is a duplicate, and the change was notified once, by R2.
    user = make_user(harness)
    body, msg_id = update(user, new_id(), 1), new_id()
    completed: list[str] = []

    def slow_then_failing(user_id: str, sub: PolarSubscription) -> None:
        harness.clock.advance(timedelta(seconds=CLAIM + 1))  # the claim runs out
        harness.plugin.on_subscription_change = lambda u, s: completed.append(s.id)
        assert harness.deliver(body, msg_id).outcome == "applied"  # R2 takes over
        raise RuntimeError("R1's callback fails at last")

    harness.plugin.on_subscription_change = slow_then_failing
    with pytest.raises(WebhookCallbackError):
        harness.deliver(body, msg_id)
    stored = harness.kavach.store.get_event(msg_id)
    assert stored is not None and stored.status == "processed"
    assert harness.deliver(body, msg_id).outcome == "duplicate"  # Polar's retry of R1
    assert len(completed) == 1


def test_a_copy_of_a_delivery_in_flight_changes_nothing(harness: PolarHarness) -> None:
    user = make_user(harness)
    body, msg_id = update(user, new_id(), 1), new_id()
    crash_in_callback(harness, body, msg_id)
    before = harness.kavach.store.get_event(msg_id)
    with pytest.raises(WebhookInProgressError):
        harness.deliver(body, msg_id)
    assert harness.kavach.store.get_event(msg_id) == before
    assert harness.callbacks.calls == []


def test_retry_after_is_the_rest_of_the_claim_rounded_up(harness: PolarHarness) -> None:
    user = make_user(harness)
    body, msg_id = update(user, new_id(), 1), new_id()
    crash_in_callback(harness, body, msg_id)
    harness.clock.advance(seconds=15.5)
    with pytest.raises(WebhookInProgressError) as caught:
        harness.deliver(body, msg_id)
    assert caught.value.retry_after == 45
    harness.clock.advance(seconds=44.0)  # 0.5 s left
    with pytest.raises(WebhookInProgressError) as caught:
        harness.deliver(body, msg_id)
    assert caught.value.retry_after == 1


def test_after_a_crash_the_claim_runs_out_and_a_copy_runs_the_callback_once(
    harness: PolarHarness,
) -> None:
    user = make_user(harness)
    sub = new_id()
    body, msg_id = update(user, sub, 1), new_id()
    crash_in_callback(harness, body, msg_id)
    harness.clock.advance(seconds=CLAIM)  # deliver() re-signs at the new time
    outcome = harness.deliver(body, msg_id)
    assert (outcome.outcome, outcome.subscription_id) == ("applied", sub)
    assert [(u, s.id) for u, s in harness.callbacks.calls] == [(user, sub)]
    stored = harness.kavach.store.get_event(msg_id)
    assert stored is not None
    assert (stored.status, stored.attempts, stored.claimed_until) == ("processed", 2, None)
    assert harness.deliver(body, msg_id).outcome == "duplicate"
    assert len(harness.callbacks.calls) == 1


def test_the_take_over_claims_the_delivery_while_its_callback_runs(
    harness: PolarHarness,
) -> None:
    user = make_user(harness)
    body, msg_id = update(user, new_id(), 1), new_id()
    crash_in_callback(harness, body, msg_id)
    harness.clock.advance(seconds=CLAIM + 1)
    copies: list[WebhookInProgressError] = []

    def callback(user_id: str, sub: PolarSubscription) -> None:
        harness.callbacks(user_id, sub)
        try:
            harness.deliver(body, msg_id)
        except WebhookInProgressError as exc:
            copies.append(exc)

    harness.plugin.on_subscription_change = callback
    assert harness.deliver(body, msg_id).outcome == "applied"
    assert len(copies) == 1
    assert len(harness.callbacks.calls) == 1


def test_a_crashed_delivery_superseded_since_is_not_notified_again(
    harness: PolarHarness,
) -> None:
    user = make_user(harness)
    sub = new_id()
    old_body, old_id = update(user, sub, 1), new_id()
    crash_in_callback(harness, old_body, old_id)
    assert harness.deliver(update(user, sub, 2, status="past_due"), new_id()).outcome == (
        "applied"
    )
    harness.clock.advance(seconds=CLAIM)
    assert harness.deliver(old_body, old_id).outcome == "stale"
    assert [s.status for _, s in harness.callbacks.calls] == ["past_due"]
    stored = harness.kavach.store.get_event(old_id)
    assert stored is not None and (stored.status, stored.claimed_until) == ("processed", None)


def test_a_failing_callback_releases_the_claim_so_the_retry_runs_it_at_once(
    harness: PolarHarness,
) -> None:
    user = make_user(harness)
    body, msg_id = update(user, new_id(), 1), new_id()
    harness.callbacks.fail_next = 1
    with pytest.raises(WebhookCallbackError):
        harness.deliver(body, msg_id)
    failed = harness.kavach.store.get_event(msg_id)
    assert failed is not None
    assert (failed.status, failed.outcome, failed.claimed_until) == ("failed", "applied", None)
    assert harness.deliver(body, msg_id).outcome == "applied"  # same instant: not in flight
    assert len(harness.callbacks.calls) == 1


def test_the_claim_lasts_webhook_claim_seconds(harness: PolarHarness) -> None:
    harness.plugin.webhook_claim_seconds = 5.0
    user = make_user(harness)
    body, msg_id = update(user, new_id(), 1), new_id()
    seen: list[Any] = []

    def callback(user_id: str, sub: PolarSubscription) -> None:
        seen.append(harness.kavach.store.get_event(msg_id))

    harness.plugin.on_subscription_change = callback
    harness.deliver(body, msg_id)
    [during] = seen
    assert during.status == "received"
    assert during.claimed_until == START + timedelta(seconds=5)


def test_without_a_callback_no_claim_is_taken(harness: PolarHarness) -> None:
    harness.plugin.on_subscription_change = None
    user = make_user(harness)
    msg_id = new_id()
    harness.deliver(update(user, new_id(), 1), msg_id)
    stored = harness.kavach.store.get_event(msg_id)
    assert stored is not None and (stored.status, stored.claimed_until) == ("processed", None)


@pytest.mark.parametrize("value", [0, -1, float("nan"), float("inf"), True, "60"])
def test_webhook_claim_seconds_must_be_a_positive_number(value: Any) -> None:
    with pytest.raises(ConfigurationError) as caught:
        polar(access_token="polar_oat_x", webhook_secret=SECRET, webhook_claim_seconds=value)
    assert caught.value.field == "webhook_claim_seconds"


def test_webhook_claim_seconds_defaults_to_sixty() -> None:
    plugin = polar(access_token="polar_oat_x", webhook_secret=SECRET)
    assert plugin.webhook_claim_seconds == CLAIM
    assert polar(
        access_token="polar_oat_x", webhook_secret=SECRET, webhook_claim_seconds=2.5
    ).webhook_claim_seconds == 2.5
