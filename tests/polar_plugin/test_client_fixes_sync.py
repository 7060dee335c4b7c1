"""Plugin fixes against FakePolar: a subscription whose Polar customer was reused by
email (no external id, polar-api.md §5) is found by sync, by the return from checkout
and by the portal; another user's subscriptions are never pulled in; a checkout id that
is not a Polar id is "not found" without asking Polar."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from kavach import CheckoutNotFoundError
from kavach.polar.subscriptions import USER_ID_METADATA_KEY
from tests.polar_plugin.world import World, open_world


class CountingSession(requests.Session):
    """A real Session that records the (method, path) of every request it sends."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[str, str]] = []

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> Any:
        self.sent.append((str(method), str(url)))
        return super().request(method, url, *args, **kwargs)


@pytest.fixture
def polar_session() -> Iterator[CountingSession]:
    """The session kavach's Polar client sends through: tests read what it sent."""
    with CountingSession() as session:
        yield session


@pytest.fixture
def world(polar_session: CountingSession) -> Iterator[World]:
    with open_world(session=polar_session) as world:
        yield world


# --- defect 1: the reused customer ------------------------------------------------------


def test_sync_finds_a_subscription_whose_customer_polar_reused_by_email(world: World) -> None:
    world.existing_customer()
    user = world.user()
    _, sub_id = world.pay(user)
    assert world.fake.subscriptions[sub_id]["customer"]["external_id"] is None
    result = world.plugin.sync(user)
    assert result.seen == (sub_id,) and result.applied == (sub_id,)
    current = world.plugin.get_subscription(user)
    assert current is not None and (current.id, current.status) == (sub_id, "active")
    assert [u for u, _ in world.calls] == [user]


def test_return_from_checkout_finds_a_reused_customers_subscription(world: World) -> None:
    customer = world.existing_customer()
    user = world.user()
    checkout_id, sub_id = world.pay(user)
    done = world.plugin.get_checkout(user, checkout_id)
    assert str(done.checkout.status) == "succeeded"
    assert done.checkout.customer_id == customer["id"]
    assert done.subscription is not None and done.subscription.id == sub_id
    assert done.synced is not None and done.synced.applied == (sub_id,)
    assert world.plugin.access(user).granted
    linked = world.kavach.store.get_user(user)
    assert linked is not None and linked.polar_customer_id == customer["id"]


def test_a_subscription_found_by_several_queries_is_applied_once(world: World) -> None:
    user = world.user()
    checkout_id, sub_id = world.pay(user)  # external id, metadata and (later) customer id
    first = world.plugin.get_checkout(user, checkout_id)
    assert first.synced is not None and first.synced.seen == (sub_id,)
    again = world.plugin.sync(user)  # now linked: found by all three queries
    assert again.seen == (sub_id,) and again.applied == ()
    assert len(world.calls) == 1


def test_return_from_checkout_does_not_take_an_unlinked_customers_other_subscriptions(
    world: World,
) -> None:
    """A one-time purchase on a customer found by email: that customer's subscription,
    bought outside kavach (no external id, no kavach metadata), is not the user's."""
    customer = world.existing_customer()
    outside = world.fake.create_checkout(customer_id=customer["id"])
    older = str(world.fake.complete_checkout(outside["id"])["id"])
    one_time = world.fake.add_product("E-book", recurring_interval=None)
    user = world.user()
    checkout = world.plugin.create_checkout(user, one_time)
    world.fake.complete_checkout(checkout.id)
    done = world.plugin.get_checkout(user, checkout.id)
    assert done.checkout.customer_id == customer["id"]
    assert done.synced is not None and done.synced.seen == ()
    assert older not in world.held(user)
    record = world.kavach.store.get_user(user)
    assert record is not None and record.polar_customer_id is None


def test_return_from_checkout_takes_the_subscription_this_checkout_created(
    world: World,
) -> None:
    """A checkout made outside ``create_checkout`` (no kavach metadata) whose customer
    Polar reused by email: its subscription names no user, but this checkout made it."""
    customer = world.existing_customer()
    user = world.user()
    raw = world.fake.create_checkout(external_customer_id=user, customer_email="jane@acme.io")
    sub_id = str(world.fake.complete_checkout(raw["id"])["id"])
    assert world.fake.subscriptions[sub_id]["metadata"] == {}
    done = world.plugin.get_checkout(user, raw["id"])
    assert done.checkout.customer_id == customer["id"]
    assert done.synced is not None and done.synced.seen == (sub_id,)
    assert world.held(user) == [sub_id]


def test_return_from_checkout_does_not_take_another_users_subscriptions(world: World) -> None:
    """Max pays on Jane's email: Polar reuses Jane's customer. Max's return from checkout
    gets Max's subscription, never Jane's (the customer is Jane's, linked to her)."""
    customer = world.existing_customer("jane@acme.io")
    jane = world.user("jane@acme.io")
    jane_checkout, jane_sub = world.pay(jane)
    world.plugin.get_checkout(jane, jane_checkout)
    jane_record = world.kavach.store.get_user(jane)
    assert jane_record is not None and jane_record.polar_customer_id == customer["id"]

    max_ = world.user("max@acme.io")
    raw = world.fake.create_checkout(
        external_customer_id=max_,
        customer_email="jane@acme.io",
        metadata={USER_ID_METADATA_KEY: max_},
    )
    max_sub = str(world.fake.complete_checkout(raw["id"])["id"])
    assert world.fake.subscriptions[max_sub]["customer_id"] == customer["id"]

    done = world.plugin.get_checkout(max_, raw["id"])
    assert done.checkout.customer_id == customer["id"]
    assert world.held(max_) == [max_sub]
    assert jane_sub not in world.held(max_)
    assert world.held(jane) == [jane_sub]
    assert all(sub.id != jane_sub for user_id, sub in world.calls if user_id == max_)
    max_record = world.kavach.store.get_user(max_)
    assert max_record is not None and max_record.polar_customer_id is None  # Jane holds it


def test_sync_leaves_a_subscription_whose_customer_names_another_user(world: World) -> None:
    """Matching follows the webhook rule: customer external id first, then metadata."""
    jane = world.user("jane@acme.io")
    world.pay(jane)  # Jane's customer now carries external_id=jane
    max_ = world.user("max@acme.io")
    raw = world.fake.create_checkout(
        external_customer_id=max_,
        customer_email="jane@acme.io",
        metadata={USER_ID_METADATA_KEY: max_},
    )
    world.fake.complete_checkout(raw["id"])
    assert world.plugin.sync(max_).seen == ()
    assert world.held(max_) == []


def test_fake_polar_filters_subscriptions_by_metadata(world: World) -> None:
    world.existing_customer()
    user, other = world.user(), world.user("max@acme.io")
    _, sub_id = world.pay(user)
    world.pay(other)
    client = world.plugin.client
    assert [s["id"] for s in client.list_subscriptions(metadata={"kavach_user_id": user})] == [
        sub_id
    ]
    assert list(client.list_subscriptions(metadata={"kavach_user_id": "nobody"})) == []


# --- defect 2: the portal of a linked customer -------------------------------------------


def test_portal_session_for_a_linked_customer_uses_its_customer_id(world: World) -> None:
    customer = world.existing_customer()
    user = world.user()
    checkout_id, _ = world.pay(user)
    world.plugin.get_checkout(user, checkout_id)  # links the user to the reused customer
    session = world.plugin.create_portal_session(user)
    assert session.customer_id == customer["id"]
    assert session.customer_portal_url.startswith(world.fake.url)


def test_portal_route_answers_200_for_a_reused_customer(world: World) -> None:
    world.existing_customer()
    user = world.user()
    checkout_id, _ = world.pay(user)
    world.plugin.get_checkout(user, checkout_id)
    token = world.kavach.sessions.create(user).token
    answer = requests.post(
        f"{world.server_url}/api/kavach/auth/polar/portal",
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["url"].startswith(world.fake.url)


def test_portal_session_for_an_unlinked_user_uses_the_external_id(world: World) -> None:
    user = world.user()
    world.pay(user)  # customer created with external_id=user; no webhook, no link
    record = world.kavach.store.get_user(user)
    assert record is not None and record.polar_customer_id is None
    session = world.plugin.create_portal_session(user)
    assert world.fake.customers[session.customer_id]["external_id"] == user


# --- defect 4: checkout ids that are not Polar ids ---------------------------------------


@pytest.mark.parametrize(
    "checkout_id",
    [
        ".",
        "..",
        "not-a-uuid",
        "{CHECKOUT_ID}",
        "%7BCHECKOUT_ID%7D",
        "",
        " ",
        "00000000-0000-4000-8000-00000000000",
        "00000000-0000-4000-8000-0000000000000",
        "00000000000040008000000000000000",
        "../v1/subscriptions",
    ],
)
def test_a_checkout_id_that_is_not_a_uuid_is_not_found_without_calling_polar(
    world: World, polar_session: CountingSession, checkout_id: str
) -> None:
    user = world.user()
    polar_session.sent.clear()
    with pytest.raises(CheckoutNotFoundError):
        world.plugin.get_checkout(user, checkout_id)
    assert polar_session.sent == []


@pytest.mark.parametrize("checkout_id", [".", "not-a-uuid", "%7BCHECKOUT_ID%7D"])
def test_checkout_route_answers_404_for_an_id_that_is_not_a_uuid(
    world: World, polar_session: CountingSession, checkout_id: str
) -> None:
    user = world.user()
    token = world.kavach.sessions.create(user).token
    polar_session.sent.clear()
    # http.client sends the path as written (requests would drop a "." segment itself).
    parts = urlsplit(world.server_url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)
    try:
        conn.request(
            "GET",
            f"/api/kavach/auth/polar/checkout/{checkout_id}",
            headers={"Authorization": f"Bearer {token}"},
        )
        answer = conn.getresponse()
        body = json.loads(answer.read())
    finally:
        conn.close()
    assert answer.status == 404, body
    assert body["error"] == "not_found"
    assert polar_session.sent == []


def test_an_uppercase_checkout_id_is_still_looked_up(world: World) -> None:
    user = world.user()
    checkout_id, _ = world.pay(user)
    done = world.plugin.get_checkout(user, checkout_id.upper())
    assert done.checkout.id == checkout_id
