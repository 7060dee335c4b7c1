"""CSRF: cookie-authenticated unsafe requests must come from a trusted origin."""

from __future__ import annotations

import requests
from http_support import PASSWORD, TRUSTED_ORIGIN, VALID_SIGNATURE, Live, bearer


def cookie(token: str) -> dict[str, str]:
    return {"Cookie": f"kavach_session={token}"}


def sign_out(live: Live, headers: dict[str, str]) -> requests.Response:
    return requests.post(live.base + "/auth/sign-out", headers=headers, timeout=10)


def sign_in(live: Live, headers: dict[str, str]) -> requests.Response:
    return requests.post(
        live.base + "/auth/sign-in/email",
        json={"email": "jane@acme.io", "password": PASSWORD},
        headers=headers,
        timeout=10,
    )


def test_cookie_post_without_origin_or_referer_is_403(live: Live, token: str) -> None:
    response = sign_out(live, cookie(token))
    assert response.status_code == 403
    assert response.json()["error"] == "csrf"


def test_cookie_post_from_a_foreign_origin_is_403(live: Live, token: str) -> None:
    response = sign_out(live, {**cookie(token), "Origin": "https://evil.example"})
    assert response.status_code == 403
    assert response.json()["error"] == "csrf"


def test_cookie_post_from_origin_null_is_403(live: Live, token: str) -> None:
    assert sign_out(live, {**cookie(token), "Origin": "null"}).status_code == 403


def test_cookie_post_from_the_servers_own_origin_is_allowed(live: Live, token: str) -> None:
    assert sign_out(live, {**cookie(token), "Origin": live.url}).status_code == 204


def test_cookie_post_from_a_configured_trusted_origin_is_allowed(
    live: Live, token: str
) -> None:
    assert sign_out(live, {**cookie(token), "Origin": TRUSTED_ORIGIN}).status_code == 204


def test_cookie_post_with_a_same_origin_referer_and_no_origin_is_allowed(
    live: Live, token: str
) -> None:
    headers = {**cookie(token), "Referer": live.url + "/account?tab=billing"}
    assert sign_out(live, headers).status_code == 204


def test_cookie_post_with_a_foreign_referer_is_403(live: Live, token: str) -> None:
    headers = {**cookie(token), "Referer": "https://evil.example/page"}
    assert sign_out(live, headers).status_code == 403


def test_bearer_post_from_a_foreign_origin_is_exempt(live: Live, token: str) -> None:
    headers = {**bearer(token), "Origin": "https://evil.example"}
    assert sign_out(live, headers).status_code == 204


def test_cookie_get_needs_no_origin(live: Live, token: str) -> None:
    response = requests.get(live.base + "/auth/session", headers=cookie(token), timeout=10)
    assert response.status_code == 200


def test_cookie_checkout_from_a_foreign_origin_is_403(live: Live, token: str) -> None:
    response = requests.post(
        live.base + "/auth/polar/checkout",
        json={"productId": "prod_1"},
        headers={**cookie(token), "Origin": "https://evil.example"},
        timeout=10,
    )
    assert response.status_code == 403


def test_sign_in_from_a_foreign_origin_is_403(live: Live) -> None:
    live.sign_up()
    response = sign_in(live, {"Origin": "https://evil.example"})
    assert response.status_code == 403
    assert "Set-Cookie" not in response.headers


def test_sign_in_without_origin_is_allowed_for_curl(live: Live) -> None:
    live.sign_up()
    assert sign_in(live, {}).status_code == 200


def test_sign_in_from_a_trusted_origin_is_allowed(live: Live) -> None:
    live.sign_up()
    assert sign_in(live, {"Origin": TRUSTED_ORIGIN}).status_code == 200


def test_sign_up_from_a_foreign_origin_is_403(live: Live) -> None:
    response = requests.post(
        live.base + "/auth/sign-up/email",
        json={"email": "jane@acme.io", "password": PASSWORD},
        headers={"Origin": "https://evil.example"},
        timeout=10,
    )
    assert response.status_code == 403
    assert live.kavach.users.get_by_email("jane@acme.io") is None


def test_webhook_is_exempt_from_the_origin_check(live: Live, token: str) -> None:
    response = requests.post(
        live.base + "/auth/polar/webhook",
        data=b"{}",
        headers={
            **cookie(token),
            "Origin": "https://evil.example",
            "webhook-id": "msg_1",
            "webhook-timestamp": "1",
            "webhook-signature": VALID_SIGNATURE,
        },
        timeout=10,
    )
    assert response.status_code == 200
