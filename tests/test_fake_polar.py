"""FakePolar: Polar's API shapes (checked with polar-sdk 1.0.2 as the oracle), its errors,
pagination, hosted pages, and webhook delivery (signatures, sequences, retries, controls)."""

from __future__ import annotations

import http.client
import json
import threading
from collections import deque
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler
from typing import Any, Literal
from urllib.parse import urlsplit

import pytest
import requests
from polar.base import deserialize
from polar.v2026_04 import outputs as o
from polar.webhooks import _verify_signature

from kavach.clock import FrozenClock
from kavach.polar.webhooks import WebhookVerifier
from kavach.testing.fake_polar import FakePolar, FakePolarError
from tests.local_http import LocalServer

JSON = dict[str, Any]

# --- a tiny webhook receiver -----------------------------------------------------------


class Receiver:
    """Collects webhook POSTs; answers the queued statuses first, then 200."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.statuses: deque[int] = deque()
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.on_post()
                with receiver.lock:
                    receiver.received.append(({k.lower(): v for k, v in self.headers.items()},
                                              body))
                    status = receiver.statuses.popleft() if receiver.statuses else 200
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", "/elsewhere")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._http = LocalServer(Handler)

    @property
    def url(self) -> str:
        return f"{self._http.origin}/hook"

    def on_post(self) -> None:
        """Runs for each delivery before it is recorded and answered (a hook: nothing)."""

    @property
    def bodies(self) -> list[JSON]:
        with self.lock:
            return [json.loads(body) for _, body in self.received]

    @property
    def types(self) -> list[str]:
        return [b["type"] for b in self.bodies]

    def clear(self) -> None:
        with self.lock:
            self.received.clear()

    def close(self) -> None:
        self._http.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def fake(receiver: Receiver) -> Iterator[FakePolar]:
    with FakePolar(seed=7) as f:
        f.add_webhook_endpoint(receiver.url)
        yield f


@pytest.fixture
def api(fake: FakePolar) -> Iterator[requests.Session]:
    with requests.Session() as s:
        s.headers["Authorization"] = "Bearer polar_oat_test"
        yield s


def subscribe(fake: FakePolar, user: str = "user_1", email: str | None = None,
              **fields: Any) -> JSON:
    checkout = fake.create_checkout(external_customer_id=user,
                                    customer_email=email or f"{user}@acme.io", **fields)
    sub: JSON = fake.complete_checkout(checkout["id"])
    return sub


# --- shapes, validated with polar-sdk ----------------------------------------------------


def test_create_checkout_answers_201_with_polars_checkout_shape(
    fake: FakePolar, api: requests.Session
) -> None:
    body = {
        "products": [fake.product_id],
        "customer_external_id": "user_42",  # the accepted alias
        "customer_email": "jane@acme.io",
        "success_url": "https://app.acme.io/ok?checkout_id={CHECKOUT_ID}",
        "return_url": "https://app.acme.io/pricing",
        "metadata": {"kavach_user_id": "user_42", "n": 3},
        "customer_metadata": {"app_user_id": "user_42"},
        "organization_id": "ignored",  # unknown fields are ignored
    }
    body["customer_billing_address"] = {"country": "se"}
    r = api.post(f"{fake.url}/v1/checkouts/", json=body)
    assert r.status_code == 201
    assert r.headers["Polar-Version"] == "2026-04"
    assert r.headers["X-Polar-Sandbox"] == "1"
    checkout = r.json()
    deserialize(checkout, o.Checkout)
    assert checkout["status"] == "open"
    assert checkout["client_secret"].startswith("polar_c_")
    assert checkout["url"] == f"{fake.url}/checkout/{checkout['client_secret']}"
    assert checkout["success_url"] == f"https://app.acme.io/ok?checkout_id={checkout['id']}"
    assert checkout["external_customer_id"] == "user_42"
    assert checkout["metadata"] == {"kavach_user_id": "user_42", "n": 3}
    assert checkout["amount"] == checkout["total_amount"] == 2000
    assert checkout["customer_billing_address"]["country"] == "SE"
    created = datetime.fromisoformat(checkout["created_at"])
    assert datetime.fromisoformat(checkout["expires_at"]) - created == timedelta(hours=24)
    again = api.get(f"{fake.url}/v1/checkouts/{checkout['id']}")
    assert again.status_code == 200
    deserialize(again.json(), o.Checkout)


def test_checkout_list_pages_validate_as_polar_list(fake: FakePolar,
                                                    api: requests.Session) -> None:
    for i in range(3):
        fake.create_checkout(external_customer_id=f"u{i}")
    page = api.get(f"{fake.url}/v1/checkouts/", params={"limit": 2}).json()
    deserialize(page, o.ListResourceCheckout)
    assert page["pagination"] == {"total_count": 3, "max_page": 2}
    only = api.get(f"{fake.url}/v1/checkouts/", params={"external_customer_id": "u1"}).json()
    assert [c["external_customer_id"] for c in only["items"]] == ["u1"]


def test_subscription_customer_and_session_shapes(fake: FakePolar,
                                                  api: requests.Session) -> None:
    sub = subscribe(fake, "user_1")
    deserialize(sub, o.Subscription)
    got = api.get(f"{fake.url}/v1/subscriptions/{sub['id']}").json()
    deserialize(got, o.Subscription)
    assert got["customer"]["external_id"] == "user_1"
    assert got["status"] == "active" and got["checkout_id"]
    customer = api.get(f"{fake.url}/v1/customers/external/user_1")
    assert customer.status_code == 200
    deserialize(customer.json(), o.Customer)
    state = api.get(f"{fake.url}/v1/customers/external/user_1/state").json()
    assert [s["id"] for s in state["active_subscriptions"]] == [sub["id"]]
    session = api.post(f"{fake.url}/v1/customer-sessions/",
                       json={"customer_external_id": "user_1",
                             "return_url": "https://app.acme.io/account"})
    assert session.status_code == 201
    data = session.json()
    deserialize(data, o.CustomerSession)
    assert data["token"].startswith("polar_cst_")
    assert data["customer_portal_url"] == (
        f"{fake.url}/portal?customer_session_token={data['token']}"
    )
    lifetime = (datetime.fromisoformat(data["expires_at"])
                - datetime.fromisoformat(data["created_at"]))
    assert lifetime == timedelta(hours=1)


def test_subscription_period_is_anchored_on_the_start_day(receiver: Receiver) -> None:
    clock = FrozenClock(datetime(2027, 1, 31, 12, 0, tzinfo=UTC))
    with FakePolar(clock=clock, seed=1) as fake:
        sub = subscribe(fake)
        assert sub["current_period_end"].startswith("2027-02-28T12:00:00")
        fake.advance(days=29)  # past Feb 28 → renewed once
        renewed = fake.subscriptions[sub["id"]]
        assert renewed["current_period_start"].startswith("2027-02-28T12:00:00")
        assert renewed["current_period_end"].startswith("2027-03-31T12:00:00")
        fake.advance(days=62)  # past Mar 31 and Apr 30 → two more cycles
        assert fake.subscriptions[sub["id"]]["current_period_end"].startswith("2027-05-31")


# --- errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "loc", "error"),
    [
        ({}, ["body", "products"], "RequestValidationError"),
        ({"products": []}, ["body", "products"], "RequestValidationError"),
        ({"products": ["not-a-uuid"]}, ["body", "products", 0], "RequestValidationError"),
        ({"products": ["8f0c4a57-2d1e-4b63-9a4f-0e2d6c1b7a10"]}, ["body", "products", 0],
         "PolarRequestValidationError"),
        ({"products": ["P"], "customer_email": "jane@example.com"}, ["body", "customer_email"],
         "RequestValidationError"),
    ],
)
def test_invalid_checkout_answers_422_with_a_detail_list(
    fake: FakePolar, api: requests.Session, body: JSON, loc: list[Any], error: str
) -> None:
    if body.get("products") == ["P"]:
        body["products"] = [fake.product_id]
    r = api.post(f"{fake.url}/v1/checkouts/", json=body)
    assert r.status_code == 422
    data = r.json()
    deserialize(data, o.HTTPValidationError)
    assert data["error"] == error
    assert data["detail"][0]["loc"] == loc
    assert {"type", "loc", "msg", "input"} <= data["detail"][0].keys()


def test_email_domain_check_can_be_turned_off() -> None:
    with FakePolar(check_email_domains=False) as fake:
        assert fake.create_checkout(customer_email="jane@example.com")["customer_email"]


def test_missing_token_answers_401_unauthorized(fake: FakePolar) -> None:
    r = requests.get(f"{fake.url}/v1/subscriptions/")
    assert r.status_code == 401
    assert r.json() == {"error": "Unauthorized", "detail": "Unauthorized"}
    assert r.headers["WWW-Authenticate"] == 'Bearer realm="polar"'


def test_wrong_token_answers_401_invalid_token_in_oauth_shape() -> None:
    with FakePolar(token="polar_oat_right") as fake:
        wrong = requests.get(f"{fake.url}/v1/subscriptions/",
                             headers={"Authorization": "Bearer polar_oat_wrong"})
        assert wrong.status_code == 401
        assert wrong.json() == {
            "error": "invalid_token",
            "error_description": "The access token provided is expired, revoked, malformed, "
                                 "or invalid for other reasons.",
        }
        assert wrong.headers["WWW-Authenticate"].startswith(
            'Bearer realm="polar", error="invalid_token"')
        right = requests.get(f"{fake.url}/v1/subscriptions/",
                             headers={"Authorization": "Bearer polar_oat_right"})
        assert right.status_code == 200


def test_not_found_shapes(fake: FakePolar, api: requests.Session) -> None:
    missing = api.get(f"{fake.url}/v1/subscriptions/8f0c4a57-2d1e-4b63-9a4f-0e2d6c1b7a10")
    assert missing.status_code == 404
    deserialize(missing.json(), o.ResourceNotFound)
    assert missing.json() == {"error": "ResourceNotFound", "detail": "Not found"}
    assert api.get(f"{fake.url}/v1/customers/external/nobody").status_code == 404
    unknown = requests.get(f"{fake.url}/v1/nothing-here")  # routing comes before auth
    assert (unknown.status_code, unknown.json()) == (404, {"detail": "Not Found"})
    version = api.get(f"{fake.url}/v1/subscriptions/", headers={"Polar-Version": "2020-01"})
    assert (version.status_code, version.json()) == (404, {"detail": "Not Found"})
    assert api.put(f"{fake.url}/v1/subscriptions/", json={}).status_code == 405
    slashless = api.get(f"{fake.url}/v1/subscriptions", allow_redirects=False)
    assert (slashless.status_code, slashless.headers["location"]) == (307, "/v1/subscriptions/")


def test_cancelling_twice_answers_403_already_canceled(fake: FakePolar,
                                                       api: requests.Session) -> None:
    sub = subscribe(fake)
    url = f"{fake.url}/v1/subscriptions/{sub['id']}"
    first = api.patch(url, json={"cancel_at_period_end": True,
                                 "customer_cancellation_reason": "too_expensive"})
    assert first.status_code == 200
    deserialize(first.json(), o.Subscription)
    assert first.json()["customer_cancellation_reason"] == "too_expensive"
    second = api.patch(url, json={"cancel_at_period_end": True})
    assert second.status_code == 403
    deserialize(second.json(), o.AlreadyCanceledSubscription)
    assert second.json()["detail"] == (
        "This subscription is already canceled or will be at the end of the period."
    )


def test_subscription_update_forbids_extra_keys(fake: FakePolar, api: requests.Session) -> None:
    sub = subscribe(fake)
    r = api.patch(f"{fake.url}/v1/subscriptions/{sub['id']}",
                  json={"cancel_at_period_end": True, "reason": "x"})
    assert r.status_code == 422
    assert r.json()["detail"][0]["type"] == "extra_forbidden"
    assert r.json()["detail"][0]["loc"] == ["body", "reason"]


def test_delete_revokes_then_answers_403(fake: FakePolar, api: requests.Session) -> None:
    sub = subscribe(fake)
    url = f"{fake.url}/v1/subscriptions/{sub['id']}"
    revoked = api.delete(url)
    assert revoked.status_code == 200
    deserialize(revoked.json(), o.Subscription)
    assert revoked.json()["status"] == "canceled"
    assert revoked.json()["ends_at"] == revoked.json()["ended_at"] is not None
    assert api.delete(url).status_code == 403
    assert api.patch(url, json={"cancel_at_period_end": False}).status_code == 403


def test_fail_next_429_has_empty_body_and_retry_after(fake: FakePolar,
                                                      api: requests.Session) -> None:
    fake.fail_next(1, status=429, retry_after=7)
    limited = api.get(f"{fake.url}/v1/subscriptions/")
    assert limited.status_code == 429
    assert limited.content == b""
    assert limited.headers["retry-after"] == "7"
    fake.fail_next(1, status=503)
    assert api.get(f"{fake.url}/v1/subscriptions/").status_code == 503
    assert api.get(f"{fake.url}/v1/subscriptions/").status_code == 200


def test_unknown_customer_session_answers_422(fake: FakePolar, api: requests.Session) -> None:
    r = api.post(f"{fake.url}/v1/customer-sessions/", json={"external_customer_id": "ghost"})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "external_customer_id"]
    assert r.json()["detail"][0]["msg"] == "Customer does not exist."


def test_body_over_10_mib_answers_413(fake: FakePolar) -> None:
    parts = urlsplit(fake.url)
    conn = http.client.HTTPConnection(parts.netloc, timeout=5)
    conn.putrequest("POST", "/v1/checkouts/")
    conn.putheader("Content-Length", str(10 * 1024 * 1024 + 1))
    conn.putheader("Authorization", "Bearer x")
    conn.endheaders()
    assert conn.getresponse().status == 413
    conn.close()


# --- pagination -------------------------------------------------------------------------


def test_subscription_list_paginates_and_clamps_limit(fake: FakePolar,
                                                      api: requests.Session) -> None:
    ids = {subscribe(fake, f"user_{i}")["id"] for i in range(5)}
    seen: list[str] = []
    for page in (1, 2, 3):
        data = api.get(f"{fake.url}/v1/subscriptions/", params={"limit": 2, "page": page}).json()
        deserialize(data, o.ListResourceSubscription)
        assert data["pagination"] == {"total_count": 5, "max_page": 3}
        seen += [item["id"] for item in data["items"]]
    assert len(seen) == 5 and set(seen) == ids
    clamped = api.get(f"{fake.url}/v1/subscriptions/", params={"limit": 500}).json()
    assert clamped["pagination"] == {"total_count": 5, "max_page": 1}
    empty = api.get(f"{fake.url}/v1/subscriptions/",
                    params={"external_customer_id": "nobody"}).json()
    assert empty == {"items": [], "pagination": {"total_count": 0, "max_page": 0}}
    bad = api.get(f"{fake.url}/v1/subscriptions/", params={"page": 0})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "page"]


def test_subscription_filters_are_repeatable(fake: FakePolar, api: requests.Session) -> None:
    a, b, c = (subscribe(fake, u, metadata={"kavach_user_id": u}) for u in ("ua", "ub", "uc"))
    fake.revoke(c["id"])
    two = api.get(f"{fake.url}/v1/subscriptions/",
                  params=[("external_customer_id", "ua"), ("external_customer_id", "ub")]).json()
    assert {s["id"] for s in two["items"]} == {a["id"], b["id"]}
    canceled = api.get(f"{fake.url}/v1/subscriptions/", params={"status": "canceled"}).json()
    assert [s["id"] for s in canceled["items"]] == [c["id"]]
    by_meta = api.get(f"{fake.url}/v1/subscriptions/",
                      params={"metadata[kavach_user_id]": "ub"}).json()
    assert [s["id"] for s in by_meta["items"]] == [b["id"]]


# --- webhook delivery ---------------------------------------------------------------------


@pytest.mark.parametrize("derivation", ["standard", "legacy"])
def test_every_delivery_verifies_with_kavach_and_polar_sdk(
    receiver: Receiver, derivation: Literal["standard", "legacy"]
) -> None:
    with FakePolar(derivation=derivation, seed=3) as fake:
        fake.add_webhook_endpoint(receiver.url)
        sub = subscribe(fake, metadata={"kavach_user_id": "user_1"})
        fake.cancel(sub["id"])
        verifier = WebhookVerifier(fake.webhook_secret)
        models: dict[str, Any] = {"checkout": o.Checkout, "subscription": o.Subscription,
                                  "order": o.Order, "customer": o.Customer}
        assert receiver.received
        for headers, body in receiver.received:
            assert verifier.verify(body, headers) == derivation
            _verify_signature(body.decode("utf-8"), headers, fake.webhook_secret)
            assert headers["user-agent"] == "polar.sh webhooks"
            assert headers["content-type"] == "application/json"
            envelope = json.loads(body)
            assert set(envelope) == {"type", "timestamp", "data"}
            assert body == json.dumps(envelope, separators=(",", ":"),
                                      ensure_ascii=False).encode()
            kind = envelope["type"].split(".")[0]
            if envelope["type"] == "customer.state_changed":
                # polar-sdk 1.0.2 types CustomerStateSubscription.status wrongly
                deserialize({**envelope["data"], "active_subscriptions": []}, o.CustomerState)
            else:
                deserialize(envelope["data"], models[kind])


def test_complete_checkout_sends_polars_event_sequence(fake: FakePolar,
                                                       receiver: Receiver) -> None:
    subscribe(fake)
    assert receiver.types == [
        "checkout.created", "customer.created", "checkout.updated", "subscription.created",
        "subscription.active", "subscription.updated", "order.created", "order.paid",
        "checkout.updated", "customer.state_changed",
    ]
    statuses = [b["data"]["status"] for b in receiver.bodies if b["type"] == "checkout.updated"]
    assert statuses == ["confirmed", "succeeded"]


def test_cancel_then_period_end_sends_canceled_twice_then_revoked(
    fake: FakePolar, receiver: Receiver
) -> None:
    sub = subscribe(fake)
    receiver.clear()
    fake.cancel(sub["id"])
    assert receiver.types == ["subscription.updated", "subscription.canceled",
                              "customer.state_changed"]
    canceled = receiver.bodies[1]["data"]
    assert canceled["status"] == "active" and canceled["cancel_at_period_end"] is True
    assert canceled["ends_at"] == canceled["current_period_end"] and canceled["canceled_at"]
    receiver.clear()
    fake.advance(days=32)
    assert receiver.types == ["subscription.updated", "subscription.canceled",
                              "subscription.revoked", "customer.state_changed"]
    ended = receiver.bodies[2]["data"]
    assert ended["status"] == "canceled" and ended["ended_at"] == ended["ends_at"]
    assert receiver.bodies[3]["data"]["active_subscriptions"] == []


def test_revoke_sends_updated_canceled_revoked(fake: FakePolar, receiver: Receiver) -> None:
    sub = subscribe(fake)
    receiver.clear()
    fake.revoke(sub["id"])
    assert receiver.types == ["subscription.updated", "subscription.canceled",
                              "subscription.revoked", "customer.state_changed"]


def test_past_due_then_recover(fake: FakePolar, receiver: Receiver) -> None:
    sub = subscribe(fake)
    receiver.clear()
    assert fake.past_due(sub["id"])["status"] == "past_due"
    assert fake.recover(sub["id"])["status"] == "active"
    assert receiver.types == [
        "subscription.updated", "subscription.past_due", "customer.state_changed",
        "subscription.updated", "subscription.active", "customer.state_changed",
    ]
    with pytest.raises(FakePolarError):
        fake.recover(sub["id"])


def test_uncancel_sends_uncanceled(fake: FakePolar, receiver: Receiver) -> None:
    sub = subscribe(fake)
    fake.cancel(sub["id"])
    receiver.clear()
    assert fake.uncancel(sub["id"])["cancel_at_period_end"] is False
    assert receiver.types[:2] == ["subscription.updated", "subscription.uncanceled"]


def test_renewal_sends_updated_cycled_and_a_paid_order(fake: FakePolar,
                                                       receiver: Receiver) -> None:
    sub = subscribe(fake)
    receiver.clear()
    fake.advance(days=31)
    assert receiver.types == ["subscription.updated", "subscription.cycled", "order.created",
                              "order.paid", "customer.state_changed"]
    order = receiver.bodies[3]["data"]
    assert order["billing_reason"] == "subscription_cycle" and order["paid"] is True
    cycled = receiver.bodies[1]["data"]
    assert cycled["current_period_start"] == sub["current_period_end"]


def test_modified_at_strictly_increases_across_events(fake: FakePolar,
                                                      receiver: Receiver) -> None:
    sub = subscribe(fake)
    fake.cancel(sub["id"])
    fake.uncancel(sub["id"])
    fake.advance(days=31)
    fake.revoke(sub["id"])
    stamps = [b["data"]["modified_at"] for b in receiver.bodies if b["type"] ==
              "subscription.updated"]
    assert len(stamps) == 5
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)


def test_trial_product_starts_trialing_then_becomes_active(receiver: Receiver) -> None:
    with FakePolar(seed=2) as fake:
        product = fake.add_product("Team", amount=5000, recurring_interval="year", trial_days=14)
        checkout = fake.create_checkout(product, customer_email="t@acme.io")
        sub = fake.complete_checkout(checkout["id"])
        assert sub["status"] == "trialing" and sub["trial_end"] == sub["current_period_end"]
        fake.advance(days=15)
        renewed = fake.subscriptions[sub["id"]]
        assert renewed["status"] == "active"
        assert renewed["current_period_end"].startswith(str(int(sub["trial_end"][:4]) + 1))


def test_one_time_product_creates_an_order_only() -> None:
    with FakePolar() as fake:
        product = fake.add_product("Lifetime", amount=9900, recurring_interval=None)
        order = fake.complete_checkout(fake.create_checkout(product)["id"])
        deserialize(order, o.Order)
        assert order["billing_reason"] == "purchase" and fake.subscriptions == {}


def test_failed_delivery_is_retried_with_the_same_id_and_body(
    fake: FakePolar, receiver: Receiver
) -> None:
    receiver.statuses.extend([500, 500])
    checkout = fake.create_checkout()  # checkout.created: 500, 500, then 200
    assert [a.status_code for a in fake.deliveries] == [500, 500, 200]
    assert [a.attempt for a in fake.deliveries] == [1, 2, 3]
    ids = {h["webhook-id"] for h, _ in receiver.received}
    assert len(ids) == 1 and ids == {fake.deliveries[0].webhook_id}
    assert len({body for _, body in receiver.received}) == 1  # the same bytes every time
    assert json.loads(receiver.received[0][1])["data"]["id"] == checkout["id"]


def test_each_attempt_is_resigned_with_its_own_timestamp(receiver: Receiver) -> None:
    class Ticking:
        def __init__(self) -> None:
            self.t = datetime.now(UTC)

        def now(self) -> datetime:
            self.t += timedelta(seconds=1)
            return self.t

    with FakePolar(signing_clock=Ticking()) as fake:
        fake.add_webhook_endpoint(receiver.url)
        receiver.statuses.extend([500, 500])
        fake.create_checkout()
    stamps = [int(h["webhook-timestamp"]) for h, _ in receiver.received]
    assert len(stamps) == 3 and stamps == sorted(set(stamps))
    for headers, body in receiver.received:
        at = datetime.fromtimestamp(int(headers["webhook-timestamp"]), UTC)
        WebhookVerifier(fake.webhook_secret, clock=FrozenClock(at)).verify(body, headers)


def test_redirect_is_a_failure_and_not_followed(fake: FakePolar, receiver: Receiver) -> None:
    receiver.statuses.append(302)
    fake.create_checkout()
    assert [a.status_code for a in fake.deliveries] == [302, 200]
    assert not fake.deliveries[0].ok and fake.deliveries[1].ok
    assert len(receiver.received) == 2  # /elsewhere was never requested


def test_delivery_gives_up_after_max_attempts_and_disables_endpoint(receiver: Receiver) -> None:
    with FakePolar(max_attempts=2, retry_time_scale=0) as fake:
        endpoint = fake.add_webhook_endpoint(receiver.url)
        receiver.statuses.extend([500] * 40)
        for _ in range(10):
            fake.create_checkout()
        assert len(fake.deliveries) == 20
        assert fake.webhook_endpoints[0] == {"id": endpoint, "url": receiver.url,
                                             "enabled": False, "events": None}
        fake.create_checkout()
        assert len(fake.deliveries) == 20
        fake.enable_webhook_endpoint(endpoint)
        receiver.statuses.clear()
        fake.create_checkout()
        assert fake.deliveries[-1].ok and fake.webhook_endpoints[0]["enabled"]


def test_fail_next_deliveries_fails_without_sending(fake: FakePolar,
                                                    receiver: Receiver) -> None:
    fake.fail_next_deliveries(1, status=503)
    fake.create_checkout()
    first, second = fake.deliveries
    assert first.simulated and first.status_code == 503 and first.attempt == 1
    assert second.ok and second.attempt == 2 and second.webhook_id == first.webhook_id
    assert len(receiver.received) == 1


def test_reverse_and_shuffle_reorder_each_batch(receiver: Receiver) -> None:
    with FakePolar(seed=11) as fake:
        fake.add_webhook_endpoint(receiver.url, events=[
            "subscription.updated", "subscription.canceled", "subscription.revoked"])
        sub = subscribe(fake)
        receiver.clear()
        fake.order = "reverse"
        fake.revoke(sub["id"])
        assert receiver.types == ["subscription.revoked", "subscription.canceled",
                                  "subscription.updated"]

    def shuffled(seed: int) -> list[str]:
        r = Receiver()
        try:
            with FakePolar(seed=seed) as f:
                f.add_webhook_endpoint(r.url)
                f.order = "shuffle"
                subscribe(f)
                return r.types
        finally:
            r.close()

    first = shuffled(5)
    assert first == shuffled(5)
    assert sorted(first) == sorted(receiver_types_in_order := [
        "checkout.created", "customer.created", "checkout.updated", "subscription.created",
        "subscription.active", "subscription.updated", "order.created", "order.paid",
        "checkout.updated", "customer.state_changed"])
    assert first != receiver_types_in_order


def test_duplicates_share_the_webhook_id(fake: FakePolar, receiver: Receiver) -> None:
    fake.duplicate(1)
    fake.create_checkout()
    fake.create_checkout()
    ids = [h["webhook-id"] for h, _ in receiver.received]
    assert len(ids) == 3 and ids[0] == ids[1] != ids[2]
    assert fake.deliveries[1].redelivery
    receiver.clear()
    fake.duplicate_rate = 1.0
    fake.create_checkout()
    assert len(receiver.received) == 2
    fake.redeliver(fake.deliveries[0].webhook_id)
    assert receiver.received[-1][0]["webhook-id"] == fake.deliveries[0].webhook_id


def test_endpoint_receives_only_its_event_types(receiver: Receiver) -> None:
    with FakePolar() as fake:
        fake.add_webhook_endpoint(receiver.url, events=["subscription.revoked"])
        fake.revoke(subscribe(fake)["id"])
        assert receiver.types == ["subscription.revoked"]


def test_background_mode_delivers_from_a_worker(receiver: Receiver) -> None:
    with FakePolar(deliver="background") as fake:
        fake.add_webhook_endpoint(receiver.url)
        receiver.statuses.append(500)
        subscribe(fake)
        fake.wait_for_deliveries(timeout=10)
        assert len(receiver.types) == 11  # 10 events, the first one retried once
        assert set(receiver.types) >= {"subscription.created", "order.paid"}


# --- customers ------------------------------------------------------------------------


def test_customer_found_by_email_keeps_its_external_id(fake: FakePolar) -> None:
    first = subscribe(fake, "user_1", email="shared@acme.io")
    second = subscribe(fake, "user_2", email="Shared@acme.io",
                       metadata={"kavach_user_id": "user_2"})
    assert second["customer_id"] == first["customer_id"]
    assert second["customer"]["external_id"] == "user_1"  # Polar's caveat, kept faithfully
    assert second["metadata"] == {"kavach_user_id": "user_2"}
    assert len(fake.customers) == 1


def test_checkout_links_existing_customer_by_external_id(fake: FakePolar) -> None:
    sub = subscribe(fake, "user_1")
    checkout = fake.create_checkout(external_customer_id="user_1")
    assert checkout["customer_id"] == sub["customer_id"]
    assert checkout["customer_email"] == "user_1@acme.io"


def test_customer_external_id_is_set_once(fake: FakePolar, api: requests.Session) -> None:
    created = api.post(f"{fake.url}/v1/customers/", json={"email": "c@acme.io"})
    assert created.status_code == 201
    url = f"{fake.url}/v1/customers/{created.json()['id']}"
    assert api.patch(url, json={"external_id": "u9"}).json()["external_id"] == "u9"
    assert api.patch(url, json={"external_id": "u10"}).status_code == 422


# --- hosted pages ------------------------------------------------------------------------


def test_hosted_checkout_page_pays_and_redirects(fake: FakePolar) -> None:
    checkout = fake.create_checkout(external_customer_id="user_7",
                                    success_url="http://app.test.local/ok?c={CHECKOUT_ID}")
    page = requests.get(checkout["url"])
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert "Pro" in page.text and "$20.00 / month" in page.text
    pay_action = f"/checkout/{checkout['client_secret']}/pay"
    assert f'action="{pay_action}"' in page.text
    paid = requests.post(fake.url + pay_action, data={"customer_email": "seven@acme.io"},
                         allow_redirects=False)
    assert paid.status_code == 303
    assert paid.headers["Location"] == f"http://app.test.local/ok?c={checkout['id']}"
    (sub,) = fake.subscriptions.values()
    assert sub["customer"]["external_id"] == "user_7"
    assert sub["customer"]["email"] == "seven@acme.io"
    assert "Already paid" in requests.get(checkout["url"]).text


def test_hosted_checkout_without_success_url_shows_confirmation(fake: FakePolar) -> None:
    checkout = fake.create_checkout()
    paid = requests.post(f"{fake.url}/checkout/{checkout['client_secret']}/pay")
    assert paid.status_code == 200 and "Payment succeeded" in paid.text


def test_portal_page_cancels_and_resumes(fake: FakePolar) -> None:
    sub = subscribe(fake)
    portal = fake.customer_session_url(sub["customer_id"])
    page = requests.get(portal)
    assert "Pro" in page.text and "Cancel" in page.text
    token = portal.split("=", 1)[1]
    action = f"{fake.url}/portal/subscriptions/{sub['id']}/cancel"
    assert requests.post(action, data={"customer_session_token": token}).status_code == 200
    assert fake.subscriptions[sub["id"]]["cancel_at_period_end"] is True
    assert "Resume" in requests.get(portal).text
    assert requests.post(action, data={"customer_session_token": "nope"}).status_code == 403


# --- misc -------------------------------------------------------------------------------


def test_advance_expires_open_checkouts(fake: FakePolar, receiver: Receiver) -> None:
    checkout = fake.create_checkout()
    fake.advance(hours=25)
    assert fake.checkouts[checkout["id"]]["status"] == "expired"
    assert receiver.types[-1] == "checkout.expired"
    with pytest.raises(FakePolarError) as info:
        fake.complete_checkout(checkout["id"])
    assert info.value.status_code == 403


def test_concurrent_requests_are_served(fake: FakePolar) -> None:
    subscribe(fake)
    results: list[int] = []

    def call() -> None:
        with requests.Session() as s:
            for _ in range(10):
                r = s.get(f"{fake.url}/v1/subscriptions/", headers={"Authorization": "Bearer t"})
                results.append(r.status_code)

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * 80


def test_repr_and_errors_never_show_the_secret(fake: FakePolar) -> None:
    assert fake.webhook_secret.startswith("whsec_")
    assert fake.webhook_secret not in repr(fake)
    assert fake.webhook_secret not in repr(fake.deliveries)


def test_url_needs_a_started_fake() -> None:
    fake = FakePolar()
    with pytest.raises(RuntimeError):
        _ = fake.url
    fake.start()
    try:
        assert fake.url.startswith("http://127.0.0.1:") and not fake.url.endswith("/")
    finally:
        fake.close()
