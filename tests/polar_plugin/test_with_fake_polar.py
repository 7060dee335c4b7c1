"""The Polar plugin against FakePolar: checkout → signed webhooks → state, and the repair,
cancel, portal and return-from-checkout paths. Real HTTP both ways."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from kavach import (
    CheckoutNotFoundError,
    OrganizationMismatchError,
    PolarPermissionError,
    PolarValidationError,
    SubscriptionNotFoundError,
    UserNotFoundError,
    WebhookCallbackError,
)
from kavach.polar import PolarSubscription
from tests.polar_plugin.world import World, open_world


@pytest.fixture
def world() -> Iterator[World]:
    with open_world() as world:
        yield world


def test_checkout_carries_user_email_external_id_and_metadata(world: World) -> None:
    user = world.user()
    checkout = world.plugin.create_checkout(user, world.fake.product_id,
                                            success_url="https://app.acme.io/billing")
    assert checkout.url.startswith(world.fake.url + "/checkout/polar_c_")
    raw = world.fake.checkouts[checkout.id]
    assert raw["external_customer_id"] == user
    assert raw["customer_email"] == "jane@acme.io"
    assert raw["metadata"]["kavach_user_id"] == user
    assert raw["products"][0]["id"] == world.fake.product_id
    query = parse_qs(urlsplit(raw["success_url"]).query)
    assert query["checkout_id"] == [checkout.id]


def test_checkout_for_unknown_user_makes_no_api_call(world: World) -> None:
    with pytest.raises(UserNotFoundError):
        world.plugin.create_checkout("ghost", world.fake.product_id)
    assert world.fake.checkouts == {}


def test_checkout_of_unknown_product_is_a_validation_error(world: World) -> None:
    user = world.user()
    with pytest.raises(PolarValidationError) as err:
        world.plugin.create_checkout(user, "00000000-0000-4000-8000-000000000000")
    assert isinstance(err.value.detail, list)


def test_checkout_from_another_organization_is_refused(world: World) -> None:
    world.plugin.organization_id = "11111111-2222-4333-8444-555555555555"
    with pytest.raises(OrganizationMismatchError):
        world.plugin.create_checkout(world.user(), world.fake.product_id)


def test_paid_checkout_reaches_the_app_through_signed_webhooks(world: World) -> None:
    world.connect_webhooks()
    user = world.user()
    sub_id = world.subscribe(user)
    sub = world.plugin.get_subscription(user)
    assert sub is not None
    assert (sub.id, sub.status, sub.product_id) == (sub_id, "active", world.fake.product_id)
    assert world.plugin.access(user).reason == "active"
    assert [u for u, _ in world.calls] == [user]  # created/active/updated: one change
    assert all(a.status_code == 200 for a in world.fake.deliveries)


def test_cancel_at_period_end_then_period_end_revokes(world: World) -> None:
    world.connect_webhooks()
    user = world.user()
    sub_id = world.subscribe(user)
    world.fake.cancel(sub_id)
    decision = world.plugin.access(user)
    assert (decision.granted, decision.reason) == (True, "canceled_in_grace")
    world.fake.advance(days=32)
    assert world.plugin.get_subscription(user) is None
    assert world.plugin.access(user).reason == "revoked"


def test_renewal_moves_the_period_end(world: World) -> None:
    world.connect_webhooks()
    user = world.user()
    world.subscribe(user)
    before = world.plugin.get_subscription(user)
    world.fake.advance(days=32)
    after = world.plugin.get_subscription(user)
    assert before is not None and after is not None
    assert before.current_period_end is not None and after.current_period_end is not None
    assert after.current_period_end > before.current_period_end


def test_shuffled_and_duplicated_deliveries_end_in_polars_state(world: World) -> None:
    world.connect_webhooks()
    world.fake.order = "shuffle"
    world.fake.duplicate_rate = 0.5
    user = world.user()
    sub_id = world.subscribe(user)
    world.fake.cancel(sub_id)
    world.fake.revoke(sub_id)
    assert world.plugin.get_subscription(user) is None
    [held] = world.plugin.list_subscriptions(user)
    assert held.status == world.fake.subscriptions[sub_id]["status"] == "canceled"


def test_sync_repairs_a_missed_webhook(world: World) -> None:
    user = world.user()
    sub_id = world.subscribe(user)  # no endpoint registered: nothing delivered
    assert world.plugin.get_subscription(user) is None
    result = world.plugin.sync(user)
    assert result.applied == (sub_id,)
    assert world.plugin.get_subscription(user) is not None
    assert world.plugin.sync(user).applied == ()
    assert len(world.calls) == 1


def test_sync_pages_through_many_subscriptions(world: World) -> None:
    user = world.user()
    for _ in range(3):
        world.subscribe(user)
    result = world.plugin.sync(user)
    assert len(result.seen) == 3


def test_cancel_and_uncancel_update_local_state_at_once(world: World) -> None:
    user = world.user()
    world.subscribe(user)
    world.plugin.sync(user)
    canceled = world.plugin.cancel_subscription(user, reason="too_expensive")
    assert canceled.cancel_at_period_end is True
    local = world.plugin.get_subscription(user)
    assert local is not None and local.cancel_at_period_end is True
    with pytest.raises(PolarPermissionError) as err:
        world.plugin.cancel_subscription(user)
    assert err.value.error == "AlreadyCanceledSubscription"
    resumed = world.plugin.uncancel_subscription(user)
    assert resumed.cancel_at_period_end is False


def test_with_two_subscriptions_cancel_and_uncancel_pick_the_right_one(world: World) -> None:
    # One renews, one is scheduled to end: cancel targets the renewing one (the current
    # one), uncancel the ending one — not the same one twice (Polar would answer 403).
    user = world.user()
    first = world.subscribe(user)
    second = world.subscribe(user)
    world.plugin.sync(user)
    canceled = world.plugin.cancel_subscription(user)
    assert canceled.id == second  # the newest of two renewing ones is the current one
    current = world.plugin.get_subscription(user)
    assert current is not None and current.id == first  # the one that renews shows
    canceled_too = world.plugin.cancel_subscription(user)
    assert canceled_too.id == first
    resumed = world.plugin.uncancel_subscription(user)
    assert resumed.cancel_at_period_end is False
    assert resumed.id == second  # the newer of the two ending ones
    current = world.plugin.get_subscription(user)
    assert current is not None and (current.id, current.cancel_at_period_end) == (second, False)


def test_a_callback_that_raises_during_sync_is_run_again_by_the_next_sync(
    world: World,
) -> None:
    # The state is committed before the callback runs: a callback that raises used to be
    # lost (the next sync and the webhook of that state found nothing new to apply).
    user = world.user()
    sub = world.subscribe(user)
    failing = {"left": 1}

    def flaky(user_id: str, changed: PolarSubscription) -> None:
        if failing["left"]:
            failing["left"] -= 1
            raise RuntimeError("the app's database is down")
        world.calls.append((user_id, changed))

    world.plugin.on_subscription_change = flaky
    with pytest.raises(WebhookCallbackError):
        world.plugin.sync(user)
    assert world.calls == []
    assert world.plugin.get_subscription(user) is not None  # the state itself is applied
    again = world.plugin.sync(user)
    assert [changed.id for _, changed in world.calls] == [sub]
    assert again.applied == (sub,)
    assert world.plugin.sync(user).applied == ()  # notified: nothing owed any more
    assert len(world.calls) == 1


def test_cancel_without_a_subscription(world: World) -> None:
    with pytest.raises(SubscriptionNotFoundError):
        world.plugin.cancel_subscription(world.user())


def test_return_from_checkout_syncs_at_once(world: World) -> None:
    user = world.user()
    checkout = world.plugin.create_checkout(user, world.fake.product_id)
    pending = world.plugin.get_checkout(user, checkout.id)
    assert (str(pending.checkout.status), pending.subscription) == ("open", None)
    world.fake.complete_checkout(checkout.id)
    done = world.plugin.get_checkout(user, checkout.id)
    assert str(done.checkout.status) == "succeeded"
    assert done.subscription is not None
    assert done.subscription.status == "active"


def test_another_users_checkout_is_not_found(world: World) -> None:
    owner, other = world.user(), world.user("max@acme.io")
    checkout = world.plugin.create_checkout(owner, world.fake.product_id)
    with pytest.raises(CheckoutNotFoundError):
        world.plugin.get_checkout(other, checkout.id)
    with pytest.raises(CheckoutNotFoundError):
        world.plugin.get_checkout(owner, "00000000-0000-4000-8000-000000000000")


def test_portal_session_for_the_users_own_customer(world: World) -> None:
    user = world.user()
    world.subscribe(user)
    session = world.plugin.create_portal_session(user, return_url="https://app.acme.io/account")
    assert session.customer_portal_url.startswith(world.fake.url)
    assert session.token not in repr(session)


def test_portal_session_without_a_polar_customer(world: World) -> None:
    with pytest.raises(PolarValidationError):
        world.plugin.create_portal_session(world.user())


def test_customer_reused_by_email_is_still_matched_by_metadata(world: World) -> None:
    world.connect_webhooks()
    existing: dict[str, Any] = world.plugin.client.request(
        "POST", "/v1/customers/", json={"email": "jane@acme.io", "name": "Jane"}
    )
    assert existing["external_id"] is None
    user = world.user()
    sub_id = world.subscribe(user)
    assert world.fake.subscriptions[sub_id]["customer"]["external_id"] is None
    sub = world.plugin.get_subscription(user)
    assert sub is not None and sub.id == sub_id
