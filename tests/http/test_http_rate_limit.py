"""Sign-in failures are limited per client IP and per email."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
import requests
from http_support import PASSWORD, Live

from kavach.clock import FrozenClock


def sign_in(live: Live, email: str, password: str) -> requests.Response:
    return requests.post(
        live.base + "/auth/sign-in/email",
        json={"email": email, "password": password},
        timeout=10,
    )


def fail(live: Live, times: int, email: str = "jane@acme.io") -> None:
    for _ in range(times):
        assert sign_in(live, email, "wrong password").status_code == 401


def test_tenth_failure_is_still_401(live: Live) -> None:
    live.sign_up()
    fail(live, 9)
    assert sign_in(live, "jane@acme.io", "wrong password").status_code == 401


def test_eleventh_attempt_is_429_with_retry_after(live: Live) -> None:
    live.sign_up()
    fail(live, 10)
    response = sign_in(live, "jane@acme.io", "wrong password")
    assert response.status_code == 429
    assert response.json()["error"] == "rate_limited"
    assert response.headers["Retry-After"] == "300"


def test_a_blocked_email_is_refused_even_with_the_right_password(live: Live) -> None:
    live.sign_up()
    fail(live, 10)
    assert sign_in(live, "jane@acme.io", PASSWORD).status_code == 429


def test_the_email_key_ignores_case(live: Live) -> None:
    live.sign_up()
    fail(live, 10)
    assert sign_in(live, "JANE@ACME.IO", "wrong password").status_code == 429


def test_failures_across_emails_block_the_client_ip(live: Live) -> None:
    for n in range(10):
        fail(live, 1, email=f"user{n}@acme.io")
    assert sign_in(live, "someone-else@acme.io", "wrong password").status_code == 429


def test_the_block_lifts_when_the_window_passes(live: Live, clock: FrozenClock) -> None:
    live.sign_up()
    fail(live, 10)
    clock.advance(timedelta(minutes=5, seconds=1))
    assert sign_in(live, "jane@acme.io", PASSWORD).status_code == 200


def test_retry_after_counts_down_with_the_clock(live: Live, clock: FrozenClock) -> None:
    live.sign_up()
    fail(live, 10)
    clock.advance(timedelta(seconds=200))
    assert sign_in(live, "jane@acme.io", PASSWORD).headers["Retry-After"] == "100"


def test_a_successful_sign_in_clears_the_email_failures(live: Live) -> None:
    live.sign_up()
    fail(live, 5)
    assert sign_in(live, "jane@acme.io", PASSWORD).status_code == 200
    # The email's count starts over; the IP still carries its 5.
    fail(live, 4)
    assert sign_in(live, "jane@acme.io", PASSWORD).status_code == 200


def sign_in_at_once(
    live: Live, monkeypatch: pytest.MonkeyPatch, emails: list[str], check_seconds: float
) -> tuple[int, list[int]]:
    """Sign in as each of ``emails`` at once (wrong password), each password check taking
    ``check_seconds`` (argon2 in production): how many checks ran, and the statuses."""
    checked: list[int] = []
    real = live.kavach.users.authenticate

    def slow_authenticate(email: str, password: str) -> Any:
        checked.append(1)
        time.sleep(check_seconds)
        return real(email, password)

    monkeypatch.setattr(live.kavach.users, "authenticate", slow_authenticate)
    with ThreadPoolExecutor(max_workers=len(emails)) as pool:
        codes = list(pool.map(lambda email: sign_in(live, email, "wrong").status_code, emails))
    return len(checked), codes


def test_a_parallel_burst_gets_no_more_password_checks_than_the_limit(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every request of a burst used to pass the limiter before the first failure was
    # counted.
    live.sign_up()
    checks, codes = sign_in_at_once(live, monkeypatch, ["jane@acme.io"] * 30, 0.2)
    assert checks <= 10
    assert codes.count(401) == checks and codes.count(429) == 30 - checks


def test_a_parallel_spray_from_one_address_is_bounded_too(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Many accounts, one address, all at once: a wider allowance than for one account
    # (an office's concurrent sign-ins), but a bound — 5x the failure limit.
    emails = [f"user{n}@acme.io" for n in range(80)]
    checks, codes = sign_in_at_once(live, monkeypatch, emails, 0.3)
    assert checks <= 50
    assert codes.count(401) == checks and codes.count(429) == 80 - checks
