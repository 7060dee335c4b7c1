"""The small pure pieces of the HTTP layer: headers, cookies, origins, the limiter."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kavach import create_kavach
from kavach.clock import FrozenClock
from kavach.http import Headers, Request, Router
from kavach.http.cookies import clear_cookie, read_cookie, session_cookie
from kavach.http.csrf import is_safe_redirect, origin_of, own_origin
from kavach.http.openapi import build_openapi
from kavach.http.ratelimit import FailureLimiter
from kavach.http.router import ROUTES
from kavach.http.routes_auth import _email_digest, iso_z
from kavach.passwords import PasswordHasher

TOKEN_CHARS = st.text(
    alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1
)


def test_headers_are_case_insensitive() -> None:
    headers = Headers([("Content-Type", "application/json")])
    assert headers["content-type"] == headers.get("CONTENT-TYPE") == "application/json"
    assert "Content-type" in headers


def test_repeated_headers_are_joined_and_cookies_with_semicolons() -> None:
    headers = Headers([("Accept", "a"), ("accept", "b"), ("Cookie", "x=1"), ("Cookie", "y=2")])
    assert headers["accept"] == "a, b"
    assert headers["cookie"] == "x=1; y=2"


def test_headers_repr_shows_names_only() -> None:
    assert "secret" not in repr(Headers([("Authorization", "Bearer secret")]))


@given(name=TOKEN_CHARS, value=TOKEN_CHARS, other=TOKEN_CHARS)
def test_session_cookie_value_reads_back_from_a_cookie_header(
    name: str, value: str, other: str
) -> None:
    header = f"other_{other}=1; " + session_cookie(name, value, max_age=60, secure=False).split(
        ";"
    )[0]
    assert read_cookie(header, name) == value


@given(st.text())
def test_read_cookie_never_raises(header: str) -> None:
    read_cookie(header, "kavach_session")


def test_read_cookie_does_not_match_a_longer_name() -> None:
    assert read_cookie("xkavach_session=1; kavach_session_old=2", "kavach_session") is None


def test_cleared_cookie_has_max_age_zero_and_keeps_its_flags() -> None:
    cleared = clear_cookie("sid", secure=True)
    assert cleared == "sid=; Max-Age=0; Path=/; HttpOnly; SameSite=Lax; Secure"


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("https://App.Example.com/path?q=1", "https://app.example.com"),
        ("http://localhost:80/", "http://localhost"),
        ("http://[::1]:8000/x", "http://[::1]:8000"),
        ("null", None),
        ("/relative", None),
        ("ftp://example.com", None),
        ("http://example.com:99999", None),
    ],
)
def test_origin_of_normalizes_or_refuses(url: str, origin: str | None) -> None:
    assert origin_of(url) == origin


@given(st.text())
def test_origin_of_never_raises(text: str) -> None:
    origin_of(text)


def test_own_origin_comes_from_scheme_and_host() -> None:
    request = Request("GET", "/", headers=Headers([("Host", "App.local:443")]), scheme="https")
    assert own_origin(request) == "https://app.local"


@given(st.text())
def test_is_safe_redirect_never_raises_and_refuses_foreign_text(url: str) -> None:
    request = Request("POST", "/", headers=Headers([("Host", "app.local")]))
    if is_safe_redirect(url, request, ()):
        assert origin_of(url) == "http://app.local"


def test_iso_z_gives_utc_with_milliseconds_and_z() -> None:
    moment = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    assert iso_z(moment) == "2030-01-02T03:04:05.678Z"


def test_limiter_blocks_after_max_failures_within_the_window() -> None:
    clock = FrozenClock(datetime(2026, 1, 1, tzinfo=UTC))
    limiter = FailureLimiter(clock, max_failures=3, window=60)
    for _ in range(3):
        assert limiter.retry_after(["k"]) is None
        limiter.fail(["k"])
    assert limiter.retry_after(["k"]) == 60
    clock.advance(timedelta(seconds=61))
    assert limiter.retry_after(["k"]) is None


def test_attempts_in_flight_count_against_the_limit() -> None:
    clock = FrozenClock(datetime(2026, 1, 1, tzinfo=UTC))
    limiter = FailureLimiter(clock, max_failures=3, window=60)
    for _ in range(3):
        assert limiter.begin(["ip:a", "email:x"]) is None  # three checks under way
    assert limiter.begin(["ip:a", "email:x"]) == 1  # a fourth waits for one to end
    limiter.end(["ip:a", "email:x"], failed=False)
    assert limiter.begin(["ip:a", "email:x"]) is None
    for _ in range(3):
        limiter.end(["ip:a", "email:x"], failed=True)
    assert limiter.begin(["email:x"]) == 60  # three failures: blocked for the window
    assert "keys=2" in repr(limiter)


def test_attempts_in_flight_count_against_each_held_key_up_to_its_cap() -> None:
    # Sign-in holds the email (cap: max_failures) and the IP (a wider cap): concurrent
    # sign-ins from one office are no failures, a parallel spray is still bounded.
    limiter = FailureLimiter(FrozenClock(), max_failures=3, window=60)

    def hold(n: int) -> dict[str, int]:
        return {f"email:{n}": 3, "ip:office": 15}

    for n in range(15):
        assert limiter.begin(["ip:office", f"email:{n}"], hold=hold(n)) is None
    assert limiter.begin(["ip:office", "email:99"], hold=hold(99)) == 1  # 15 in flight
    limiter.end(["ip:office", "email:1"], hold=hold(1), failed=False)
    assert limiter.begin(["ip:office", "email:0"], hold=hold(0)) is None  # email:0: 2 now
    assert limiter.begin(["ip:office", "email:0"], hold=hold(0)) == 1  # IP full again
    for n in (2, 3):
        limiter.end(["ip:office", f"email:{n}"], hold=hold(n), failed=False)
    assert limiter.begin(["ip:office", "email:0"], hold=hold(0)) is None  # 3rd for email:0
    assert limiter.begin(["ip:office", "email:0"], hold=hold(0)) == 1  # email:0 full


def test_the_email_key_is_a_fixed_size_digest_of_the_normalized_email() -> None:
    huge = "x" * 500_000 + "@acme.io"
    assert len(_email_digest(huge)) == 64
    assert _email_digest(" Jane@ACME.io ") == _email_digest("jane@acme.io")
    assert _email_digest("jos\u00e9@acme.io") == _email_digest("jose\u0301@acme.io")


def test_limiter_memory_is_bounded() -> None:
    limiter = FailureLimiter(FrozenClock(), max_keys=10)
    limiter.fail(f"ip:{n}" for n in range(100))
    assert "keys=10" in repr(limiter)


def test_each_router_has_its_own_limiter() -> None:
    with create_kavach("memory://", password_hasher=PasswordHasher.fast()) as kavach:
        assert Router(kavach).context.limiter is not Router(kavach).context.limiter


def test_openapi_documents_every_route_with_its_method() -> None:
    paths = build_openapi("/api/kavach")["paths"]
    for method, path, _ in ROUTES:
        assert method.lower() in paths["/api/kavach" + path]


def test_router_answers_https_requests_with_a_secure_cookie() -> None:
    with create_kavach("memory://", password_hasher=PasswordHasher.fast()) as kavach:
        response = Router(kavach).dispatch(
            Request(
                "POST",
                "/api/kavach/auth/sign-up/email",
                body=b'{"email": "a@b.io", "password": "12345678"}',
                scheme="https",
            )
        )
    assert response.status == 200
    cookie = response.header("set-cookie")
    assert cookie is not None and cookie.endswith("; Secure")
