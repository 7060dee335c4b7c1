"""decide_access: every reason, as a pure function of state and clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kavach.polar.access import ACCESS_REASONS, decide_access
from kavach.records import SubscriptionState

NOW = datetime(2026, 9, 1, 12, 0, tzinfo=UTC)
PERIOD_END = NOW + timedelta(days=10)


def state(status: str, **fields: Any) -> SubscriptionState:
    base: dict[str, Any] = {
        "id": "sub_1", "user_id": "u1", "status": status, "product_id": "p1",
        "current_period_end": PERIOD_END, "cancel_at_period_end": False, "version": 1,
    }
    base.update(fields)
    return SubscriptionState(**base)


def test_no_subscription_is_none() -> None:
    d = decide_access(None, NOW)
    assert (d.granted, d.reason, d.until) == (False, "none", None)


def test_active_is_granted_until_period_end() -> None:
    d = decide_access(state("active"), NOW)
    assert (d.granted, d.reason, d.until, d.subscription_id) == (True, "active", PERIOD_END,
                                                                 "sub_1")


def test_trialing_is_granted_until_trial_end() -> None:
    trial_end = NOW + timedelta(days=3)
    d = decide_access(state("trialing", trial_end=trial_end), NOW)
    assert (d.granted, d.reason, d.until) == (True, "trialing", trial_end)


def test_canceled_at_period_end_is_granted_in_grace() -> None:
    d = decide_access(state("active", cancel_at_period_end=True, ends_at=PERIOD_END), NOW)
    assert (d.granted, d.reason, d.until) == (True, "canceled_in_grace", PERIOD_END)


def test_canceled_in_grace_ends_at_period_end_even_before_the_revoke_webhook() -> None:
    d = decide_access(state("active", cancel_at_period_end=True), PERIOD_END)
    assert (d.granted, d.reason) == (False, "revoked")


@pytest.mark.parametrize("status", ["canceled", "unpaid"])
def test_revoked_statuses_are_denied(status: str) -> None:
    d = decide_access(state(status), NOW)
    assert (d.granted, d.reason) == (False, "revoked")


def test_past_due_is_denied_without_grace() -> None:
    d = decide_access(state("past_due", past_due_at=NOW - timedelta(hours=1)), NOW)
    assert (d.granted, d.reason) == (False, "past_due")


def test_past_due_is_granted_within_grace() -> None:
    since = NOW - timedelta(days=1)
    d = decide_access(state("past_due", past_due_at=since), NOW, past_due_grace=timedelta(days=3))
    assert (d.granted, d.reason, d.until) == (True, "past_due", since + timedelta(days=3))


def test_past_due_grace_runs_out() -> None:
    since = NOW - timedelta(days=4)
    d = decide_access(state("past_due", past_due_at=since), NOW, past_due_grace=timedelta(days=3))
    assert (d.granted, d.reason) == (False, "past_due")


def test_paused_is_denied() -> None:
    assert decide_access(state("paused"), NOW).reason == "paused"


@pytest.mark.parametrize("status", ["incomplete", "incomplete_expired", "brand_new_status"])
def test_other_statuses_are_none(status: str) -> None:
    d = decide_access(state(status), NOW)
    assert (d.granted, d.reason) == (False, "none")


def test_reasons_are_all_documented() -> None:
    assert set(ACCESS_REASONS) == {"active", "trialing", "canceled_in_grace", "past_due",
                                   "paused", "revoked", "none"}


def test_to_json_uses_iso_z() -> None:
    assert decide_access(state("active"), NOW).to_json()["until"] == "2026-09-11T12:00:00.000Z"
