"""Sign-up, sign-in, sign-out and the session route, on both adapters."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import requests
from http_support import PASSWORD, Live, bearer

from kavach.clock import FrozenClock


def set_cookie(response: requests.Response) -> str:
    value = response.headers.get("Set-Cookie")
    assert value is not None
    return value


def test_sign_up_returns_the_user_and_a_session_token(live: Live) -> None:
    body = live.sign_up(email="jane@acme.io", name="Jane").json()
    assert body["user"]["email"] == "jane@acme.io"
    assert body["user"]["name"] == "Jane"
    assert body["user"]["createdAt"] == "2026-01-15T09:30:00.000Z"
    assert body["session"]["token"].startswith("kvs_")
    assert body["session"]["expiresAt"] == "2026-01-22T09:30:00.000Z"
    assert live.kavach.users.get(body["user"]["id"]) is not None


def test_sign_up_sets_an_http_only_lax_session_cookie(live: Live) -> None:
    response = live.sign_up()
    token = response.json()["session"]["token"]
    parts = [p.strip() for p in set_cookie(response).split(";")]
    assert parts[0] == f"kavach_session={token}"
    assert {"HttpOnly", "SameSite=Lax", "Path=/", "Max-Age=604800"} <= set(parts)


def test_session_cookie_is_not_secure_over_plain_http(live: Live) -> None:
    assert "Secure" not in set_cookie(live.sign_up())


def test_sign_up_without_a_name_gives_a_null_name(live: Live) -> None:
    response = requests.post(
        live.base + "/auth/sign-up/email",
        json={"email": "nameless@acme.io", "password": PASSWORD},
        timeout=10,
    )
    assert response.status_code == 200
    assert response.json()["user"]["name"] is None


def test_sign_up_with_an_invalid_email_is_400_naming_the_field(live: Live) -> None:
    response = requests.post(
        live.base + "/auth/sign-up/email",
        json={"email": "not-an-email", "password": PASSWORD},
        timeout=10,
    )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_input"
    assert response.json()["field"] == "email"


def test_sign_up_with_a_short_password_is_400(live: Live) -> None:
    response = requests.post(
        live.base + "/auth/sign-up/email",
        json={"email": "jane@acme.io", "password": "short"},
        timeout=10,
    )
    assert response.status_code == 400
    assert response.json()["field"] == "password"


def test_sign_up_without_a_password_is_400(live: Live) -> None:
    response = requests.post(
        live.base + "/auth/sign-up/email", json={"email": "jane@acme.io"}, timeout=10
    )
    assert response.status_code == 400
    assert response.json()["field"] == "password"


def test_sign_up_with_a_non_string_name_is_400(live: Live) -> None:
    response = requests.post(
        live.base + "/auth/sign-up/email",
        json={"email": "jane@acme.io", "password": PASSWORD, "name": 7},
        timeout=10,
    )
    assert response.status_code == 400
    assert response.json()["field"] == "name"


def test_sign_up_with_a_taken_email_in_other_case_is_409(live: Live) -> None:
    live.sign_up(email="jane@acme.io")
    response = requests.post(
        live.base + "/auth/sign-up/email",
        json={"email": "JANE@acme.io", "password": PASSWORD},
        timeout=10,
    )
    assert response.status_code == 409
    assert response.json()["error"] == "email_taken"


def test_sign_up_response_never_contains_the_password(live: Live) -> None:
    assert PASSWORD not in live.sign_up().text


def test_sign_in_returns_a_new_session_and_cookie(live: Live) -> None:
    first = live.token()
    response = requests.post(
        live.base + "/auth/sign-in/email",
        json={"email": "jane@acme.io", "password": PASSWORD},
        timeout=10,
    )
    assert response.status_code == 200
    token = response.json()["session"]["token"]
    assert token != first
    assert response.json()["user"]["email"] == "jane@acme.io"
    assert set_cookie(response).startswith(f"kavach_session={token};")


def test_sign_in_answers_unknown_email_and_wrong_password_alike(live: Live) -> None:
    live.sign_up(email="jane@acme.io")
    wrong_password = requests.post(
        live.base + "/auth/sign-in/email",
        json={"email": "jane@acme.io", "password": "wrong password"},
        timeout=10,
    )
    unknown_email = requests.post(
        live.base + "/auth/sign-in/email",
        json={"email": "nobody@acme.io", "password": PASSWORD},
        timeout=10,
    )
    assert wrong_password.status_code == unknown_email.status_code == 401
    assert wrong_password.json() == unknown_email.json()
    assert "Set-Cookie" not in wrong_password.headers


def test_sign_in_without_an_email_is_400(live: Live) -> None:
    response = requests.post(
        live.base + "/auth/sign-in/email", json={"password": PASSWORD}, timeout=10
    )
    assert response.status_code == 400
    assert response.json()["field"] == "email"


def test_session_by_bearer_returns_the_user_and_expiry_without_the_token(
    live: Live, token: str
) -> None:
    response = requests.get(live.base + "/auth/session", headers=bearer(token), timeout=10)
    assert response.status_code == 200
    body = response.json()
    assert body["user"]["email"] == "jane@acme.io"
    assert body["session"] == {"expiresAt": "2026-01-22T09:30:00.000Z"}
    assert token not in response.text


def test_session_by_cookie_is_accepted(live: Live) -> None:
    with requests.Session() as browser:
        browser.post(
            live.base + "/auth/sign-up/email",
            json={"email": "jane@acme.io", "password": PASSWORD},
            timeout=10,
        )
        response = browser.get(live.base + "/auth/session", timeout=10)
    assert response.status_code == 200
    assert response.json()["user"]["email"] == "jane@acme.io"


def test_session_without_credentials_is_401_with_a_bearer_challenge(live: Live) -> None:
    response = requests.get(live.base + "/auth/session", timeout=10)
    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_session_with_an_unknown_token_is_401(live: Live) -> None:
    response = requests.get(
        live.base + "/auth/session", headers=bearer("kvs_unknown"), timeout=10
    )
    assert response.status_code == 401


def test_session_with_a_non_bearer_authorization_is_401(live: Live, token: str) -> None:
    response = requests.get(
        live.base + "/auth/session", headers={"Authorization": f"Basic {token}"}, timeout=10
    )
    assert response.status_code == 401


def test_a_bad_bearer_token_is_not_rescued_by_a_good_cookie(live: Live, token: str) -> None:
    response = requests.get(
        live.base + "/auth/session",
        headers={"Authorization": "Bearer kvs_wrong", "Cookie": f"kavach_session={token}"},
        timeout=10,
    )
    assert response.status_code == 401


def test_an_expired_session_is_401(live: Live, token: str, clock: FrozenClock) -> None:
    clock.advance(timedelta(days=7, seconds=1))
    response = requests.get(live.base + "/auth/session", headers=bearer(token), timeout=10)
    assert response.status_code == 401


def test_sign_out_revokes_the_session_and_clears_the_cookie(live: Live, token: str) -> None:
    response = requests.post(live.base + "/auth/sign-out", headers=bearer(token), timeout=10)
    assert response.status_code == 204
    assert response.content == b""
    cookie = set_cookie(response)
    assert cookie.startswith("kavach_session=;")
    assert "Max-Age=0" in cookie
    after = requests.get(live.base + "/auth/session", headers=bearer(token), timeout=10)
    assert after.status_code == 401


def test_sign_out_without_a_session_is_401(live: Live) -> None:
    response = requests.post(live.base + "/auth/sign-out", timeout=10)
    assert response.status_code == 401


def test_a_configured_cookie_name_is_set_and_read(start: Callable[..., Live]) -> None:
    live = start(cookie_name="app_sid")
    with requests.Session() as browser:
        signed_up = browser.post(
            live.base + "/auth/sign-up/email",
            json={"email": "jane@acme.io", "password": PASSWORD},
            timeout=10,
        )
        assert set_cookie(signed_up).startswith("app_sid=")
        response = browser.get(live.base + "/auth/session", timeout=10)
    assert response.status_code == 200


def test_session_max_age_follows_the_session_ttl(start: Callable[..., Live]) -> None:
    live = start(session_ttl=timedelta(hours=1))
    assert "Max-Age=3600" in set_cookie(live.sign_up())
