"""Checkout, subscription and webhook routes, against the Polar plugin test double."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest
import requests
from http_support import (
    TRUSTED_ORIGIN,
    VALID_SIGNATURE,
    Live,
    StubPolarPlugin,
    bearer,
    polar_failure,
)

from kavach.errors import (
    PolarConnectionError,
    WebhookCallbackError,
    WebhookInProgressError,
    WebhookPayloadError,
    WebhookVerificationError,
)


def checkout(live: Live, token: str, body: object) -> requests.Response:
    return requests.post(
        live.base + "/auth/polar/checkout", json=body, headers=bearer(token), timeout=10
    )


def signed(webhook_id: str = "msg_1", signature: str = VALID_SIGNATURE) -> dict[str, str]:
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": "1700000000",
        "webhook-signature": signature,
        "Content-Type": "application/json",
    }


def webhook(live: Live, body: bytes, headers: dict[str, str]) -> requests.Response:
    return requests.post(live.base + "/auth/polar/webhook", data=body, headers=headers, timeout=10)


# -- checkout ---------------------------------------------------------------------------


def test_checkout_returns_the_polar_url_and_id(
    live: Live, token: str, polar_stub: StubPolarPlugin
) -> None:
    response = checkout(live, token, {"productId": "prod_1"})
    assert response.status_code == 200
    assert response.json() == {"url": "https://polar.test/checkout/co_1", "id": "co_1"}
    user = live.kavach.users.get_by_email("jane@acme.io")
    assert user is not None
    assert polar_stub.checkouts == [(user.id, "prod_1", None)]


def test_checkout_passes_a_success_url_on_a_configured_origin(
    live: Live, token: str, polar_stub: StubPolarPlugin
) -> None:
    url = TRUSTED_ORIGIN + "/welcome?plan=pro"
    response = checkout(live, token, {"productId": "prod_1", "successUrl": url})
    assert response.status_code == 200
    assert polar_stub.checkouts[0][2] == url


def test_checkout_accepts_a_success_url_on_the_servers_own_origin(
    live: Live, token: str
) -> None:
    response = checkout(live, token, {"productId": "prod_1", "successUrl": live.url + "/done"})
    assert response.status_code == 200


@pytest.mark.parametrize(
    "url",
    [
        "https://evil.example/welcome",
        "https://app.example.com@evil.example/",
        "https://evil.example\\@app.example.com/",
        "//evil.example/welcome",
        "/relative/path",
        "javascript:alert(1)",
        "https://app.example.com:8443/other-port",
    ],
)
def test_checkout_refuses_a_success_url_off_the_trusted_origins(
    live: Live, token: str, polar_stub: StubPolarPlugin, url: str
) -> None:
    response = checkout(live, token, {"productId": "prod_1", "successUrl": url})
    assert response.status_code == 400
    assert response.json()["error"] == "untrusted_success_url"
    assert polar_stub.checkouts == []


@pytest.mark.parametrize("host", ["evil.example", "evil.example:80", "app.example.com.evil.io"])
def test_a_forged_host_does_not_make_its_origin_a_trusted_redirect(
    live: Live, token: str, polar_stub: StubPolarPlugin, host: str
) -> None:
    # Any client but a browser sets Host at will: a signed-up user must not get a Polar
    # checkout link that sends whoever pays it to their own site.
    response = requests.post(
        live.base + "/auth/polar/checkout",
        json={"productId": "prod_1", "successUrl": f"http://{host}/phish"},
        headers={**bearer(token), "Host": host},
        timeout=10,
    )
    assert response.status_code == 400
    assert response.json()["error"] == "untrusted_success_url"
    assert polar_stub.checkouts == []


def test_checkout_without_product_id_is_400_naming_the_field(live: Live, token: str) -> None:
    response = checkout(live, token, {})
    assert response.status_code == 400
    assert response.json()["field"] == "productId"


def test_checkout_with_bad_json_is_400(live: Live, token: str) -> None:
    response = requests.post(
        live.base + "/auth/polar/checkout", data=b"{nope", headers=bearer(token), timeout=10
    )
    assert response.status_code == 400
    assert response.json()["error"] == "bad_json"


def test_checkout_without_a_session_is_401(live: Live) -> None:
    response = requests.post(
        live.base + "/auth/polar/checkout", json={"productId": "prod_1"}, timeout=10
    )
    assert response.status_code == 401


def test_checkout_polar_failure_is_502_without_secrets(
    live: Live, token: str, polar_stub: StubPolarPlugin
) -> None:
    polar_stub.checkout_error = polar_failure()
    response = checkout(live, token, {"productId": "prod_1"})
    assert response.status_code == 502
    body = response.json()
    assert body["error"] == "polar_error"
    assert "401" in body["message"] and "invalid_token" in body["message"]
    assert "SECRET" not in response.text and "polar_oat" not in response.text


def test_checkout_polar_unreachable_is_502(
    live: Live, token: str, polar_stub: StubPolarPlugin
) -> None:
    polar_stub.checkout_error = PolarConnectionError(
        "connect to https://x failed", method="POST", path="/v1/checkouts/"
    )
    response = checkout(live, token, {"productId": "prod_1"})
    assert response.status_code == 502
    assert response.json()["message"] == "Polar request failed (PolarConnectionError)"


# -- subscription -----------------------------------------------------------------------


def test_subscription_is_null_when_the_user_has_none(live: Live, token: str) -> None:
    response = requests.get(
        live.base + "/auth/polar/subscription", headers=bearer(token), timeout=10
    )
    assert response.status_code == 200
    assert response.json() == {
        "subscription": None,
        "access": {"granted": False, "reason": "none", "until": None, "subscriptionId": None},
    }


def test_subscription_has_the_documented_shape(
    live: Live, token: str, polar_stub: StubPolarPlugin
) -> None:
    user = live.kavach.users.get_by_email("jane@acme.io")
    assert user is not None
    polar_stub.give_subscription(
        user.id, current_period_end=datetime(2030, 1, 31, 12, 0, 5, 123456, tzinfo=UTC)
    )
    response = requests.get(
        live.base + "/auth/polar/subscription", headers=bearer(token), timeout=10
    )
    body = response.json()
    assert body["subscription"] == {
        "id": "sub_1",
        "status": "active",
        "productId": "prod_1",
        "currentPeriodEnd": "2030-01-31T12:00:05.123Z",
        "cancelAtPeriodEnd": False,
    }
    assert body["access"]["granted"] is True
    assert body["access"]["subscriptionId"] == "sub_1"


def test_subscription_without_a_session_is_401(live: Live) -> None:
    response = requests.get(live.base + "/auth/polar/subscription", timeout=10)
    assert response.status_code == 401


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/auth/polar/checkout"),
        ("GET", "/auth/polar/subscription"),
        ("POST", "/auth/polar/webhook"),
    ],
)
def test_polar_routes_are_404_without_the_plugin(
    start: Callable[..., Live], method: str, path: str
) -> None:
    live = start()
    token = live.token()
    response = requests.request(method, live.base + path, headers=bearer(token), timeout=10)
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


# -- webhook ----------------------------------------------------------------------------


def test_webhook_answers_with_the_plugins_outcome(live: Live) -> None:
    response = webhook(live, b'{"type":"subscription.created"}', signed("msg_7"))
    assert response.status_code == 200
    assert response.json() == {"received": True, "webhookId": "msg_7", "outcome": "applied"}


def test_webhook_uses_the_outcomes_status_code(live: Live, polar_stub: StubPolarPlugin) -> None:
    polar_stub.webhook_status = 202
    assert webhook(live, b"{}", signed()).status_code == 202


def test_webhook_hands_the_raw_body_and_headers_to_the_plugin(
    live: Live, polar_stub: StubPolarPlugin
) -> None:
    raw = b'{ "type" : "x",\n  "data": {} }'
    webhook(live, raw, signed("msg_raw"))
    body, headers = polar_stub.webhooks[0]
    assert body == raw
    assert headers["webhook-id"] == "msg_raw"


def test_unsigned_webhook_is_400_with_the_reason(live: Live) -> None:
    response = webhook(live, b"{}", {"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"] == "missing_headers"


def test_badly_signed_webhook_is_400(live: Live) -> None:
    response = webhook(live, b"{}", signed(signature="v1,forged"))
    assert response.status_code == 400
    assert response.json()["error"] == "no_matching_signature"


def test_webhook_over_the_plugins_limit_is_413(start: Callable[..., Live]) -> None:
    live = start(plugins=[StubPolarPlugin(max_webhook_body=10)])
    response = webhook(live, b"x" * 11, signed())
    assert response.status_code == 413
    assert response.json()["error"] == "body_too_large"


def test_webhook_payload_error_is_400(live: Live, polar_stub: StubPolarPlugin) -> None:
    polar_stub.webhook_error = WebhookPayloadError("bad_envelope", "no type")
    response = webhook(live, b"{}", signed())
    assert response.status_code == 400
    assert response.json()["error"] == "bad_envelope"


def test_webhook_malformed_json_reason_is_400(live: Live, polar_stub: StubPolarPlugin) -> None:
    polar_stub.webhook_error = WebhookVerificationError("malformed_json", "not JSON")
    response = webhook(live, b"{", signed())
    assert response.status_code == 400
    assert response.json()["error"] == "malformed_json"


def test_webhook_callback_failure_is_500_for_polar_to_retry(
    live: Live, polar_stub: StubPolarPlugin
) -> None:
    polar_stub.webhook_error = WebhookCallbackError("msg_1", RuntimeError("db password=hunter2"))
    response = webhook(live, b"{}", signed())
    assert response.status_code == 500
    assert response.json()["error"] == "callback_failed"
    assert "hunter2" not in response.text


def test_webhook_copy_of_a_delivery_in_flight_is_503_with_retry_after(
    live: Live, polar_stub: StubPolarPlugin
) -> None:
    polar_stub.webhook_error = WebhookInProgressError("msg_1", retry_after=42)
    response = webhook(live, b"{}", signed("msg_1"))
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "42"
    assert response.json()["error"] == "in_progress"


def test_webhook_unexpected_error_is_500_without_details(
    live: Live, polar_stub: StubPolarPlugin
) -> None:
    polar_stub.webhook_error = RuntimeError("whsec_SECRET in a message")
    response = webhook(live, b"{}", signed())
    assert response.status_code == 500
    assert response.json() == {"error": "internal_error", "message": "internal server error"}
