"""FakePolar under awkward use: webhook timing of API calls, malformed HTTP, bad input and
configuration, shutdown, and the corners of sorting, redirects, expiry and checkout fields."""

from __future__ import annotations

import json
import math
import re
import socket
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from urllib.parse import urlsplit

import pytest
import requests
from polar.webhooks import _verify_signature

from kavach.cli_polar import KNOWN_EVENTS
from kavach.clock import FrozenClock
from kavach.errors import ConfigurationError
from kavach.polar.webhooks import WebhookVerifier
from kavach.testing._fake_core import Event
from kavach.testing._fake_delivery import Deliverer
from kavach.testing.fake_polar import FakePolar
from tests.test_fake_polar import Receiver, subscribe

JSON = dict[str, Any]
AUTH = {"Authorization": "Bearer polar_oat_test"}


class HoldingReceiver(Receiver):
    """A webhook receiver that holds each delivery until ``answered`` is set (5 s at most)
    and records, per delivery, whether it was set by then."""

    def __init__(self) -> None:
        self.answered = threading.Event()
        self.answered_first: list[bool] = []
        super().__init__()

    def on_post(self) -> None:
        self.answered_first.append(self.answered.wait(5))

    def close(self) -> None:
        self.answered.set()
        super().close()


@pytest.fixture
def holding() -> Iterator[HoldingReceiver]:
    r = HoldingReceiver()
    yield r
    r.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def raw_exchange(url: str, data: bytes) -> bytes:
    """Send raw bytes to the fake; the status line it answers (b"" if it answered nothing)."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=5) as sock:
        sock.sendall(data)
        answer = b""
        try:
            while b"\r\n" not in answer:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                answer += chunk
        except TimeoutError:
            pass
    return answer.split(b"\r\n", 1)[0]


POST_HEAD = (b"POST /v1/checkouts/ HTTP/1.1\r\nHost: fake\r\nAuthorization: Bearer t\r\n"
             b"Content-Type: application/json\r\n")


# --- webhooks of API calls go out after the answer ------------------------------------


def _create_checkout(fake: FakePolar) -> requests.Response:
    return requests.post(f"{fake.url}/v1/checkouts/", headers=AUTH,
                         json={"products": [fake.product_id]}, timeout=30)


def _revoke_subscription(fake: FakePolar) -> requests.Response:
    sub = next(iter(fake.subscriptions))
    return requests.delete(f"{fake.url}/v1/subscriptions/{sub}", headers=AUTH, timeout=30)


def _pay_hosted_checkout(fake: FakePolar) -> requests.Response:
    secret = next(c["client_secret"] for c in fake.checkouts.values() if c["status"] == "open")
    return requests.post(f"{fake.url}/checkout/{secret}/pay", allow_redirects=False,
                         data={"customer_email": "payer@acme.io"}, timeout=30)


@pytest.mark.parametrize("call", [_create_checkout, _revoke_subscription, _pay_hosted_checkout],
                         ids=["create checkout", "revoke subscription", "hosted pay page"])
def test_api_call_is_answered_before_its_webhooks_are_sent(
    holding: HoldingReceiver, call: Callable[[FakePolar], requests.Response]
) -> None:
    with FakePolar() as fake:
        subscribe(fake)  # no endpoint yet: these events go nowhere
        fake.create_checkout()
        fake.add_webhook_endpoint(holding.url)
        response = call(fake)
        holding.answered.set()
        assert response.status_code < 400
        fake.wait_for_deliveries(timeout=30)
        assert holding.answered_first and all(holding.answered_first)


def test_wait_for_deliveries_waits_for_webhooks_of_api_calls(holding: HoldingReceiver) -> None:
    with FakePolar() as fake:
        fake.add_webhook_endpoint(holding.url)
        assert _create_checkout(fake).status_code == 201
        with pytest.raises(TimeoutError):
            fake.wait_for_deliveries(timeout=0.2)  # the receiver still holds the delivery
        holding.answered.set()
        fake.wait_for_deliveries(timeout=30)
        assert holding.types == ["checkout.created"]


# --- malformed HTTP -------------------------------------------------------------------


@pytest.mark.parametrize("body", [
    b"zz\r\nabc\r\n0\r\n\r\n",          # not hexadecimal
    b"-1\r\n{}\r\n0\r\n\r\n",           # negative
    b"2\r\n{}}}\r\n0\r\n\r\n",          # chunk data longer than its size
    b"2\r\n{}\r\n" + b"0" * 70000,      # size line with no end
], ids=["bad hex", "negative", "overlong chunk", "endless size line"])
def test_malformed_chunked_body_answers_400(body: bytes) -> None:
    with FakePolar() as fake:
        status = raw_exchange(fake.url, POST_HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + body)
        assert status == b"HTTP/1.1 400 Bad Request"


@pytest.mark.parametrize("length", [b"abc", b"-5", b"1e3"])
def test_invalid_content_length_answers_400(length: bytes) -> None:
    with FakePolar() as fake:
        status = raw_exchange(fake.url, POST_HEAD + b"Content-Length: " + length + b"\r\n\r\n{}")
        assert status == b"HTTP/1.1 400 Bad Request"


def test_json_nested_deeper_than_the_parser_recurses_answers_422() -> None:
    with FakePolar() as fake:
        body = b"[" * 100_000 + b"]" * 100_000
        r = requests.post(f"{fake.url}/v1/checkouts/", headers=AUTH, data=body, timeout=30)
        assert r.status_code == 422
        assert r.json()["detail"][0]["type"] == "json_invalid"


# --- checkout fields ------------------------------------------------------------------


def test_trial_interval_count_over_1000_answers_422() -> None:
    with FakePolar() as fake:
        r = requests.post(f"{fake.url}/v1/checkouts/", headers=AUTH, timeout=30, json={
            "products": [fake.product_id], "trial_interval": "day",
            "trial_interval_count": 1001})
        assert r.status_code == 422
        (error,) = r.json()["detail"]
        assert (error["type"], error["loc"], error["ctx"]) == (
            "less_than_equal", ["body", "trial_interval_count"], {"le": 1000})
        assert fake.checkouts == {}


def test_checkout_whose_trial_would_end_after_year_9999_is_refused_and_not_stored() -> None:
    clock = FrozenClock(datetime(9500, 1, 1, tzinfo=UTC))
    with FakePolar(clock=clock) as fake:
        r = requests.post(f"{fake.url}/v1/checkouts/", headers=AUTH, timeout=30, json={
            "products": [fake.product_id], "trial_interval": "year",
            "trial_interval_count": 1000})
        assert r.status_code == 422
        assert r.json()["detail"][0]["loc"] == ["body", "trial_interval_count"]
        listing = requests.get(f"{fake.url}/v1/checkouts/", headers=AUTH, timeout=30)
        assert listing.status_code == 200 and listing.json()["items"] == []


@pytest.mark.parametrize("name", ["seats", "min_seats", "max_seats",
                                  "units", "min_units", "max_units"])
def test_seat_or_unit_field_on_a_fixed_price_answers_422(name: str) -> None:
    with FakePolar() as fake:
        r = requests.post(f"{fake.url}/v1/checkouts/", headers=AUTH, timeout=30,
                          json={"products": [fake.product_id], name: 5})
        assert r.status_code == 422
        assert r.json()["error"] == "PolarRequestValidationError"
        (error,) = r.json()["detail"]
        assert (error["type"], error["loc"], error["input"]) == ("value_error", ["body", name], 5)
        assert fake.checkouts == {}


def test_seats_over_10000_fail_schema_validation() -> None:
    with FakePolar() as fake:
        r = requests.post(f"{fake.url}/v1/checkouts/", headers=AUTH, timeout=30,
                          json={"products": [fake.product_id], "seats": 10001})
        assert r.status_code == 422
        assert r.json()["detail"][0]["type"] == "less_than_equal"


# --- sorting and redirects --------------------------------------------------------------


@pytest.mark.parametrize(("sorting", "expected"), [("amount", [0, 2000]),
                                                   ("-amount", [2000, 0])])
def test_sorting_subscriptions_by_amount_handles_a_zero_amount(
    sorting: str, expected: list[int]
) -> None:
    with FakePolar() as fake:
        subscribe(fake, "user_1", product_id=fake.add_product("Free", amount=0))
        subscribe(fake, "user_2")
        r = requests.get(f"{fake.url}/v1/subscriptions/", params={"sorting": sorting},
                         headers=AUTH, timeout=30)
        assert r.status_code == 200
        assert [item["amount"] for item in r.json()["items"]] == expected


@pytest.mark.parametrize("sorting", ["name", "-name"])
def test_sorting_puts_missing_values_last_in_both_directions(sorting: str) -> None:
    with FakePolar() as fake:
        for email, name in (("a@acme.io", "Ann"), ("b@acme.io", None), ("c@acme.io", "Cy")):
            requests.post(f"{fake.url}/v1/customers/", headers=AUTH, timeout=30,
                          json={"email": email, "name": name}).raise_for_status()
        r = requests.get(f"{fake.url}/v1/customers/", params={"sorting": sorting},
                         headers=AUTH, timeout=30)
        names = [item["name"] for item in r.json()["items"]]
        assert names == (["Ann", "Cy", None] if sorting == "name" else ["Cy", "Ann", None])


def test_slashless_collection_redirect_keeps_the_query() -> None:
    with FakePolar() as fake:
        r = requests.get(f"{fake.url}/v1/subscriptions?external_customer_id=u1&limit=5",
                         headers=AUTH, allow_redirects=False, timeout=30)
        assert r.status_code == 307
        assert r.headers["location"] == "/v1/subscriptions/?external_customer_id=u1&limit=5"


def test_item_path_with_a_trailing_slash_redirects_to_the_item() -> None:
    with FakePolar() as fake:
        r = requests.get(f"{fake.url}/v1/products/{fake.product_id}/?x=1", headers=AUTH,
                         allow_redirects=False, timeout=30)
        assert r.status_code == 307
        assert r.headers["location"] == f"/v1/products/{fake.product_id}?x=1"


# --- expiry ------------------------------------------------------------------------------


def test_reading_an_expired_checkout_before_advance_keeps_its_expired_event() -> None:
    clock = FrozenClock()
    with FakePolar(clock=clock) as fake:
        checkout = fake.create_checkout()
        clock.advance(timedelta(days=2))  # the test moves its own clock...
        read = requests.get(f"{fake.url}/v1/checkouts/{checkout['id']}", headers=AUTH,
                            timeout=30)
        assert read.json()["status"] == "expired"
        fake.advance()  # ...then lets the fake process what is due
        assert [e["type"] for e in fake.events].count("checkout.expired") == 1
        assert fake.checkouts[checkout["id"]]["modified_at"] is not None


# --- webhook endpoints and configuration ---------------------------------------------------


@pytest.mark.parametrize("url", [
    "http://[::1/hook", "ftp://127.0.0.1:1/x", "not a url", "http://", "/relative/hook",
    "http://127.0.0.1:99999/hook", "http://127.0.0.1/a b",
])
def test_endpoint_url_the_sender_cannot_use_is_refused(url: str) -> None:
    fake = FakePolar()
    with pytest.raises(ConfigurationError, match="webhook endpoint url"):
        fake.add_webhook_endpoint(url)
    assert fake.webhook_endpoints == []


def test_events_given_as_a_bare_string_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="list of event types"):
        FakePolar().add_webhook_endpoint("http://127.0.0.1:9/hook",
                                         events="subscription.updated")


def test_unknown_event_type_is_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"subscription\.updatd"):
        FakePolar().add_webhook_endpoint("http://127.0.0.1:9/hook",
                                         events=["subscription.updatd"])


def test_endpoint_event_types_are_polars() -> None:
    from kavach.testing._fake_delivery import WEBHOOK_EVENT_TYPES

    assert frozenset(KNOWN_EVENTS) == WEBHOOK_EVENT_TYPES


@pytest.mark.parametrize("timeout", [0, -1, math.nan, math.inf])
def test_delivery_timeout_must_be_a_finite_positive_number(timeout: float) -> None:
    with pytest.raises(ConfigurationError, match="delivery_timeout"):
        FakePolar(delivery_timeout=timeout)


@pytest.mark.parametrize("deliver", ["sync", "background"])
def test_failing_endpoint_never_stops_delivery_to_the_others(
    receiver: Receiver, deliver: Literal["sync", "background"]
) -> None:
    with FakePolar(deliver=deliver, max_attempts=1) as fake:
        fake.add_webhook_endpoint("http://a..b/hook")  # valid URL; the host cannot be encoded
        fake.add_webhook_endpoint(receiver.url)
        subscribe(fake)
        fake.wait_for_deliveries(timeout=30)
        assert len(receiver.types) == 10
        failed = [a for a in fake.deliveries if a.url == "http://a..b/hook"]
        assert len(failed) == 10 and all(a.status_code is None and a.error for a in failed)


# --- ordering -------------------------------------------------------------------------------


def test_sync_retry_arrives_after_the_rest_of_its_batch(receiver: Receiver) -> None:
    with FakePolar() as fake:
        fake.add_webhook_endpoint(receiver.url,
                                  events=["subscription.updated", "subscription.canceled"])
        sub = subscribe(fake)
        receiver.clear()
        receiver.statuses.append(503)  # the first attempt of subscription.updated fails
        fake.cancel(sub["id"])
        assert receiver.types == ["subscription.updated", "subscription.canceled",
                                  "subscription.updated"]


# --- shutdown -------------------------------------------------------------------------------


def test_close_ends_keep_alive_connections() -> None:
    with requests.Session() as session:
        with FakePolar() as fake:
            assert session.get(f"{fake.url}/v1/products/", headers=AUTH,
                               timeout=30).status_code == 200
        with pytest.raises(requests.ConnectionError):
            session.get(f"{fake.url}/v1/products/", headers=AUTH, timeout=30)


def test_close_leaves_no_fake_thread_running() -> None:
    before = set(threading.enumerate())
    with requests.Session() as session:  # its connection stays open past close()
        with FakePolar() as fake:
            session.get(f"{fake.url}/v1/products/", headers=AUTH, timeout=30)
        left = [t.name for t in set(threading.enumerate()) - before]
    assert left == []


# --- the default secret -------------------------------------------------------------------


def test_default_secret_has_polars_shape() -> None:
    assert re.fullmatch(r"whsec_[A-Za-z0-9]{43}", FakePolar().webhook_secret)


@pytest.mark.parametrize("derivation", ["standard", "legacy"])
def test_default_secret_verifies_with_either_derivation(
    receiver: Receiver, derivation: Literal["standard", "legacy"]
) -> None:
    with FakePolar(derivation=derivation) as fake:
        fake.add_webhook_endpoint(receiver.url)
        fake.create_checkout()
        ((headers, body),) = receiver.received
        assert WebhookVerifier(fake.webhook_secret).verify(body, headers) == derivation
        _verify_signature(body.decode("utf-8"), headers, fake.webhook_secret)


# --- the sync lane: order, a sender without a lane, an attempt that raises ---------------


def _events(*types: str) -> list[Event]:
    at = datetime(2026, 8, 22, tzinfo=UTC)
    return [Event(t, at, json.dumps({"type": t, "data": {}}).encode()) for t in types]


def _deliverer(receiver: Receiver, **options: Any) -> Deliverer:
    deliverer = Deliverer(secret="whsec_" + "a" * 43, derivation="standard", background=False,
                          seed=1, retry_time_scale=0.0, **options)
    deliverer.add_endpoint(receiver.url, None)
    return deliverer


def test_an_api_calls_webhooks_go_before_those_of_a_helper_called_after_it(
    receiver: Receiver,
) -> None:
    deliverer = _deliverer(receiver)
    deliverer.start()
    try:
        release = deliverer.submit_later(_events("subscription.updated"))  # still answering
        helper = threading.Thread(target=deliverer.submit, args=(_events("subscription.revoked"),))
        helper.start()
        helper.join(0.3)  # the helper's batch is queued behind the request's: it waits
        assert receiver.types == []
        release()  # the request answered
        helper.join(10)
        assert receiver.types == ["subscription.updated", "subscription.revoked"]
    finally:
        deliverer.stop()


def test_without_a_running_lane_a_helper_sends_the_batches_queued_before_its_own(
    receiver: Receiver,
) -> None:
    deliverer = _deliverer(receiver)  # never started (or stopped): the helper sends itself
    deliverer.submit_later(_events("subscription.updated"))()
    deliverer.submit(_events("subscription.revoked"))
    assert receiver.types == ["subscription.updated", "subscription.revoked"]
    deliverer.wait(1)


def test_an_attempt_that_raises_is_logged_as_failed_and_the_lane_goes_on(
    receiver: Receiver,
) -> None:
    class FlakyClock:
        failures = 1

        def now(self) -> datetime:
            if self.failures:
                self.failures -= 1
                raise RuntimeError("clock hiccup")
            return datetime.now(UTC)

    deliverer = _deliverer(receiver, signing_clock=FlakyClock())
    deliverer.start()
    try:
        deliverer.submit_later(_events("subscription.updated"))()
        deliverer.submit_later(_events("subscription.canceled"))()
        deliverer.wait(10)
        # Retried within its own batch, which ends before the next one starts.
        assert receiver.types == ["subscription.updated", "subscription.canceled"]
        failed = [a for a in deliverer.log if a.status_code is None]
        assert [a.error for a in failed] == ["RuntimeError: clock hiccup"]
    finally:
        deliverer.stop()
