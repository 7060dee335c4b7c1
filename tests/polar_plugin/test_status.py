"""plugin.status / access read the user's mirror row; they must decide exactly as the rules
do on the full subscription row, for every status."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from kavach.polar.access import decide_access
from kavach.records import most_relevant
from tests.polar_plugin.conftest import PolarHarness
from tests.polar_plugin.payloads import envelope, new_id, subscription
from tests.polar_plugin.test_webhook_handling import T0, make_user

CASES: dict[str, dict[str, Any]] = {
    "active": {"status": "active"},
    "trialing": {"status": "trialing", "trial_end": T0 + timedelta(days=5)},
    "canceled_in_grace": {"status": "active", "cancel_at_period_end": True},
    "past_due": {"status": "past_due", "past_due_at": T0},
    "paused": {"status": "paused"},
    "revoked": {"status": "canceled"},
    "incomplete": {"status": "incomplete"},
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_status_matches_the_rules_on_the_full_row(harness: PolarHarness, case: str) -> None:
    harness.plugin.past_due_grace = timedelta(days=3)
    user = make_user(harness)
    fields = dict(CASES[case])
    data = subscription(sub_id=new_id(), customer_id=new_id(), external_id=user,
                        modified_at=T0, status=fields.pop("status"),
                        cancel_at_period_end=fields.pop("cancel_at_period_end", False))
    for key, value in fields.items():
        data[key] = value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if data["cancel_at_period_end"]:
        data["ends_at"] = data["current_period_end"]
    harness.deliver(envelope("subscription.updated", data, T0), new_id())
    full = most_relevant(harness.kavach.store.list_subscriptions(user))
    expected = decide_access(full, harness.clock.now(), past_due_grace=timedelta(days=3))
    status = harness.plugin.status(user)
    assert status.access == expected
    assert harness.plugin.access(user) == expected
    if expected.reason == "revoked":
        assert status.subscription is None
    else:
        assert status.subscription is not None
        assert status.subscription.id == data["id"]


def test_an_ending_subscription_does_not_deny_a_user_whose_other_one_renews(
    harness: PolarHarness,
) -> None:
    # A renews; the newer B was canceled at period end. After B's end, with its revoke
    # webhook late, the user still pays for A: access is granted, through A.
    user = make_user(harness)
    renewing, ending = new_id(), new_id()
    older = subscription(sub_id=renewing, customer_id=new_id(), external_id=user,
                         modified_at=T0, created_at=T0 - timedelta(days=40))
    older["current_period_end"] = (T0 + timedelta(days=20)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    newer = subscription(sub_id=ending, customer_id=older["customer_id"], external_id=user,
                         modified_at=T0, created_at=T0 - timedelta(days=1),
                         cancel_at_period_end=True)
    newer["ends_at"] = newer["current_period_end"] = (T0 + timedelta(days=2)).strftime(
        "%Y-%m-%dT%H:%M:%S.%fZ"
    )
    harness.deliver(envelope("subscription.updated", older, T0), new_id())
    harness.deliver(envelope("subscription.canceled", newer, T0), new_id())
    harness.clock.advance(timedelta(days=3))  # past B's end; no revoke webhook yet
    decision = harness.plugin.access(user)
    assert decision.granted and decision.subscription_id == renewing
    status = harness.plugin.status(user)
    assert status.subscription is not None and status.subscription.id == renewing
    current = harness.plugin.get_subscription(user)
    assert current is not None and not current.cancel_at_period_end
