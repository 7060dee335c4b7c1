"""States kavach reads from Polar's API (sync, the return from checkout, cancel) go
through the webhook's own path under inbox rows of their own (``kavach-api-…``): stored
as every store can keep them, replayed for the user they were applied to, and a failing
callback is a 500 of its own, not a "Polar failure"."""

from __future__ import annotations

import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kavach import FrozenClock, Kavach, PasswordHasher, WebhookCallbackError, create_kavach
from kavach.auth import polar
from kavach.polar import PolarPlugin
from kavach.records import SubscriptionState
from tests.polar_plugin.conftest import SECRET, START, store_url

CHECKOUT = "11111111-2222-4333-8444-555555555555"


class StubClient:
    """Polar's API as far as these tests need it: fixed subscription lists."""

    def __init__(self, by_query: dict[str, list[dict[str, Any]]], owner: str) -> None:
        self.by_query = by_query
        self.owner = owner

    def close(self) -> None:
        pass

    def list_subscriptions(self, **query: Any) -> list[dict[str, Any]]:
        for key in ("customer_id", "external_customer_id"):
            if key in query:
                return self.by_query.get(f"{key}={query[key]}", [])
        return []

    def get_checkout(self, checkout_id: str) -> Any:
        return types.SimpleNamespace(id=checkout_id, status="succeeded", customer_id="cus_B",
                                     external_customer_id=self.owner, metadata={},
                                     organization_id=None)


def subscription(sub_id: str, customer: str, external_id: str | None, **extra: Any) -> dict:
    return {"id": sub_id, "status": "active", "modified_at": "2026-08-22T10:00:00Z",
            "customer_id": customer, "customer": {"id": customer, "external_id": external_id},
            "metadata": {}, **extra}


@pytest.fixture(params=["memory", "json", "sqlite"])
def app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Kavach, PolarPlugin]]:
    plugin = polar(access_token="polar_oat_x", webhook_secret=SECRET,
                   base_url="http://127.0.0.1:9")
    with create_kavach(store_url(request.param, tmp_path), plugins=[plugin],
                       clock=FrozenClock(START), password_hasher=PasswordHasher.fast()) as k:
        yield k, plugin


def test_a_lone_surrogate_in_polars_answer_is_stored_as_an_escape(
    app: tuple[Kavach, PolarPlugin],
) -> None:
    kavach, plugin = app
    user = kavach.users.create("jane@acme.io", password="correct horse battery").id
    data = subscription("sub_1", "cus_A", user, customer_name="Jos\udc80")
    plugin.client = StubClient({f"external_customer_id={user}": [data]}, user)  # type: ignore[assignment]
    assert plugin.sync(user).applied == ("sub_1",)
    [row] = [e for e in kavach.store.list_events() if e.webhook_id.startswith("kavach-api-")]
    assert "\\udc80" in row.payload


def test_replay_of_an_api_row_runs_the_owed_callback_for_its_user(
    app: tuple[Kavach, PolarPlugin],
) -> None:
    # The checkout's subscription matches no one by the webhook rule (its customer has no
    # external id, the user is linked to another customer): the return from checkout
    # takes it because this checkout created it. Its callback raised; replaying the row
    # must run it for that user, not find it "unmatched" and close it.
    kavach, plugin = app
    user = kavach.users.create("jane@acme.io", password="correct horse battery").id
    kavach.store.apply_subscription(SubscriptionState(
        id="sub_old", user_id=user, status="canceled", product_id=None,
        current_period_end=None, cancel_at_period_end=False, version=1, customer_id="cus_A",
    ))
    data = subscription("sub_2", "cus_B", None, checkout_id=CHECKOUT)
    plugin.client = StubClient({"customer_id=cus_B": [data]}, user)  # type: ignore[assignment]
    calls: list[str] = []
    failing = {"left": 1}

    def callback(user_id: str, changed: Any) -> None:
        if failing["left"]:
            failing["left"] -= 1
            raise RuntimeError("app database down")
        calls.append(changed.id)

    plugin.on_subscription_change = callback
    with pytest.raises(WebhookCallbackError):
        plugin.get_checkout(user, CHECKOUT)
    [row] = [e for e in kavach.store.list_events() if e.webhook_id.startswith("kavach-api-")]
    assert (row.status, row.outcome, row.user_id) == ("failed", "applied", user)
    outcome = plugin.replay_event(row.webhook_id)
    assert outcome.outcome == "applied" and outcome.user_id == user
    assert calls == ["sub_2"]
    done = kavach.store.get_event(row.webhook_id)
    assert done is not None and done.status == "processed"
