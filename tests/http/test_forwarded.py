"""X-Forwarded-* headers: trusted only from the configured number of proxies."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from kavach import ConfigurationError, Kavach, PasswordHasher, create_kavach
from kavach.http.forwarded import apply_forwarded
from kavach.http.messages import Headers, Request
from kavach.http.router import Router

BASE = "/api/kavach"


def request(headers: dict[str, str], *, method: str = "GET", path: str = "/", body: bytes = b"",
            client: str = "10.0.0.9") -> Request:
    items = [("host", "internal:8000"), *headers.items()]
    return Request(method, path, headers=Headers(items), body=body, client=client, scheme="http")


def test_without_hops_forwarded_headers_are_ignored() -> None:
    req = request({"x-forwarded-for": "6.6.6.6", "x-forwarded-proto": "https",
                   "x-forwarded-host": "evil.example"})
    apply_forwarded(req, 0)
    assert (req.client, req.scheme, req.host) == ("10.0.0.9", "http", "internal:8000")


def test_one_hop_takes_the_address_the_proxy_saw() -> None:
    req = request({"x-forwarded-for": "6.6.6.6, 203.0.113.7", "x-forwarded-proto": "https",
                   "x-forwarded-host": "app.acme.io"})
    apply_forwarded(req, 1)
    assert (req.client, req.scheme, req.host) == ("203.0.113.7", "https", "app.acme.io")


def test_two_hops_skip_the_inner_proxy() -> None:
    req = request({"x-forwarded-for": "6.6.6.6, 203.0.113.7, 10.0.0.2"})
    apply_forwarded(req, 2)
    assert req.client == "203.0.113.7"


@pytest.mark.parametrize(
    "headers",
    [
        {"x-forwarded-proto": "gopher"},
        {"x-forwarded-host": "evil.example/path"},
        {"x-forwarded-host": "a b"},
        {"x-forwarded-for": ""},
    ],
)
def test_malformed_forwarded_values_change_nothing(headers: dict[str, str]) -> None:
    req = request(headers)
    apply_forwarded(req, 3)
    assert (req.client, req.scheme, req.host) == ("10.0.0.9", "http", "internal:8000")


@pytest.mark.parametrize("hops", [-1, 11, True])
def test_proxy_hops_is_validated(hops: int) -> None:
    with pytest.raises(ConfigurationError):
        create_kavach("memory://", proxy_hops=hops)


@pytest.fixture
def kavach() -> Iterator[Kavach]:
    with create_kavach("memory://", password_hasher=PasswordHasher.fast(), proxy_hops=1) as k:
        k.users.create("jane@acme.io", password="correct horse battery")
        yield k


def sign_in(router: Router, forwarded_for: str, email: str) -> int:
    body = json.dumps({"email": email, "password": "wrong password"}).encode()
    req = request({"x-forwarded-for": forwarded_for, "content-type": "application/json"},
                  method="POST", path=BASE + "/auth/sign-in/email", body=body)
    return router.dispatch(req).status


def test_behind_a_proxy_the_cookie_is_secure(kavach: Kavach) -> None:
    router = Router(kavach)
    body = json.dumps({"email": "jane@acme.io", "password": "correct horse battery"}).encode()
    req = request({"x-forwarded-for": "203.0.113.7", "x-forwarded-proto": "https",
                   "content-type": "application/json"},
                  method="POST", path=BASE + "/auth/sign-in/email", body=body)
    response = router.dispatch(req)
    cookies = [v for k, v in response.headers if k.lower() == "set-cookie"]
    assert response.status == 200
    assert "Secure" in cookies[0]


def test_behind_a_proxy_each_client_has_its_own_sign_in_budget(kavach: Kavach) -> None:
    router = Router(kavach)
    spread = [sign_in(router, f"203.0.113.{i}", f"u{i}@acme.io") for i in range(15)]
    assert 429 not in spread
    one_client = [sign_in(router, "198.51.100.1", f"v{i}@acme.io") for i in range(15)]
    assert one_client[-1] == 429


def test_without_hops_a_forged_forwarded_for_does_not_escape_the_limit() -> None:
    with create_kavach("memory://", password_hasher=PasswordHasher.fast()) as kavach:
        router = Router(kavach)
        forged = [sign_in(router, f"203.0.113.{i}", f"w{i}@acme.io") for i in range(15)]
        assert forged[-1] == 429
