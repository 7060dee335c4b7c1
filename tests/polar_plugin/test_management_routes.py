"""Issue-7 routes end to end (real plugin, FakePolar, built-in server on a real socket):
access in the subscription answer, portal, cancel/uncancel, return from checkout, and the
ownership rules (another user's checkout is 404; nothing names another user's objects)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import attrs
import pytest
import requests

from kavach import Kavach, PasswordHasher, create_kavach
from kavach.auth import polar
from kavach.http.server import make_server
from kavach.testing import FakePolar

BASE = "/api/kavach"


@attrs.define
class App:
    fake: FakePolar
    kavach: Kavach
    url: str

    def user(self, email: str = "jane@acme.io") -> tuple[str, str]:
        user = self.kavach.users.create(email, password="correct horse battery")
        return user.id, self.kavach.sessions.create(user.id).token

    def call(self, method: str, path: str, token: str, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {token}"}
        return requests.request(method, self.url + BASE + path, headers=headers, timeout=10,
                                **kwargs)

    def checkout(self, token: str) -> str:
        answer = self.call("POST", "/auth/polar/checkout", token,
                           json={"productId": self.fake.product_id})
        assert answer.status_code == 200, answer.text
        return str(answer.json()["id"])


@pytest.fixture
def app() -> Iterator[App]:
    """No webhook endpoint is registered: state arrives only through kavach's own calls."""
    with FakePolar() as fake:
        plugin = polar(access_token="polar_oat_fake", webhook_secret=fake.webhook_secret,
                       base_url=fake.url)
        kavach = create_kavach("memory://", plugins=[plugin],
                               password_hasher=PasswordHasher.fast())
        server = make_server(kavach, "127.0.0.1", 0)
        thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        try:
            yield App(fake, kavach, server.url)
        finally:
            server.shutdown()
            server.server_close()
            kavach.close()


def subscribed(app: App) -> tuple[str, str]:
    """A user whose checkout completed and whose return-from-checkout call synced it."""
    user_id, token = app.user()
    checkout_id = app.checkout(token)
    app.fake.complete_checkout(checkout_id)
    assert app.call("GET", f"/auth/polar/checkout/{checkout_id}", token).status_code == 200
    return user_id, token


def test_return_from_checkout_syncs_the_paid_subscription_at_once(app: App) -> None:
    _, token = app.user()
    checkout_id = app.checkout(token)
    pending = app.call("GET", f"/auth/polar/checkout/{checkout_id}", token).json()
    assert pending["checkout"] == {"id": checkout_id, "status": "open"}
    assert pending["subscription"] is None
    app.fake.complete_checkout(checkout_id)
    done = app.call("GET", f"/auth/polar/checkout/{checkout_id}", token).json()
    assert done["checkout"]["status"] == "succeeded"
    assert done["subscription"]["status"] == "active"
    assert done["access"]["reason"] == "active"
    plan = app.call("GET", "/auth/polar/subscription", token).json()
    assert plan["subscription"]["id"] == done["subscription"]["id"]


def test_another_users_checkout_is_404(app: App) -> None:
    _, owner = app.user()
    _, other = app.user("max@acme.io")
    checkout_id = app.checkout(owner)
    answer = app.call("GET", f"/auth/polar/checkout/{checkout_id}", other)
    assert (answer.status_code, answer.json()["error"]) == (404, "not_found")


def test_unknown_checkout_is_404(app: App) -> None:
    _, token = app.user()
    answer = app.call("GET", "/auth/polar/checkout/00000000-0000-4000-8000-000000000000", token)
    assert answer.status_code == 404


def test_checkout_return_needs_a_session(app: App) -> None:
    answer = requests.get(app.url + BASE + "/auth/polar/checkout/x", timeout=10)
    assert answer.status_code == 401


def test_subscription_answer_carries_the_access_decision(app: App) -> None:
    _, token = subscribed(app)
    body = app.call("GET", "/auth/polar/subscription", token).json()
    assert body["access"]["granted"] is True
    assert body["access"]["reason"] == "active"
    assert body["access"]["until"] == body["subscription"]["currentPeriodEnd"]


def test_cancel_and_uncancel_the_users_own_subscription(app: App) -> None:
    _, token = subscribed(app)
    canceled = app.call("POST", "/auth/polar/subscription/cancel", token,
                        json={"reason": "too_expensive"})
    assert canceled.status_code == 200
    assert canceled.json()["subscription"]["cancelAtPeriodEnd"] is True
    plan = app.call("GET", "/auth/polar/subscription", token).json()
    assert plan["access"]["reason"] == "canceled_in_grace"
    again = app.call("POST", "/auth/polar/subscription/cancel", token)
    assert (again.status_code, again.json()["error"]) == (409, "already_canceled")
    resumed = app.call("POST", "/auth/polar/subscription/uncancel", token)
    assert resumed.status_code == 200
    assert resumed.json()["subscription"]["cancelAtPeriodEnd"] is False


def test_cancel_with_a_reason_polar_does_not_know_is_400_and_changes_nothing(app: App) -> None:
    _, token = subscribed(app)
    answer = app.call("POST", "/auth/polar/subscription/cancel", token,
                      json={"reason": "because"})
    assert answer.status_code == 400
    assert (answer.json()["error"], answer.json()["field"]) == ("invalid_input", "reason")
    assert "too_expensive" in answer.json()["message"]  # the accepted values are named
    plan = app.call("GET", "/auth/polar/subscription", token).json()
    assert plan["subscription"]["cancelAtPeriodEnd"] is False


def test_checkout_of_a_product_polar_refuses_is_400_not_502(app: App) -> None:
    _, token = app.user()
    answer = app.call("POST", "/auth/polar/checkout", token,
                      json={"productId": "3f0e8d8e-0000-4000-8000-000000000000"})
    assert answer.status_code == 400
    assert (answer.json()["error"], answer.json()["field"]) == ("invalid_input", "productId")


def test_a_callback_that_raises_on_cancel_is_a_500_not_a_polar_failure(app: App) -> None:
    # Polar did cancel; the app's own callback failed: not "Polar request failed" (502).
    _, token = subscribed(app)

    def failing(user_id: str, sub: Any) -> None:
        raise RuntimeError("the app's database is down")

    app.kavach.plugins.polar.on_subscription_change = failing
    answer = app.call("POST", "/auth/polar/subscription/cancel", token)
    assert (answer.status_code, answer.json()["error"]) == (500, "callback_failed")


def test_cancel_without_a_subscription_is_404(app: App) -> None:
    _, token = app.user()
    answer = app.call("POST", "/auth/polar/subscription/cancel", token)
    assert (answer.status_code, answer.json()["error"]) == (404, "no_subscription")


def test_cancel_touches_only_the_callers_subscription(app: App) -> None:
    owner_id, _ = subscribed(app)
    _, other = app.user("max@acme.io")
    answer = app.call("POST", "/auth/polar/subscription/cancel", other)
    assert answer.status_code == 404
    [sub] = app.fake.subscriptions.values()
    assert sub["cancel_at_period_end"] is False
    assert app.kavach.plugins.polar.get_subscription(owner_id).cancel_at_period_end is False


def test_portal_link_for_the_users_own_customer(app: App) -> None:
    user_id, token = subscribed(app)
    answer = app.call("POST", "/auth/polar/portal", token,
                      json={"returnUrl": app.url + "/account"})
    assert answer.status_code == 200
    url = answer.json()["url"]
    assert url.startswith(app.fake.url)
    [customer] = app.fake.customers.values()
    assert customer["external_id"] == user_id


def test_portal_without_a_purchase_is_404(app: App) -> None:
    _, token = app.user()
    answer = app.call("POST", "/auth/polar/portal", token)
    assert (answer.status_code, answer.json()["error"]) == (404, "no_customer")


def test_portal_return_url_must_be_trusted(app: App) -> None:
    _, token = subscribed(app)
    answer = app.call("POST", "/auth/polar/portal", token,
                      json={"returnUrl": "https://evil.example/steal"})
    assert (answer.status_code, answer.json()["error"]) == (400, "untrusted_return_url")
