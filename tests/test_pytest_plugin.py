"""The pytest plugin users get with kavach: fixtures fake_polar and kavach_app."""

from __future__ import annotations

from importlib import metadata

import pytest

USER_TEST = '''
from kavach.testing import sign_webhook


def test_paid_checkout_upgrades_the_user(kavach_app, fake_polar):
    user, token = kavach_app.sign_up("jane@acme.io")
    checkout = kavach_app.polar.create_checkout(user.id, fake_polar.product_id)
    fake_polar.complete_checkout(checkout.id)
    answer = kavach_app.get("/auth/polar/subscription", token=token)
    assert answer.status_code == 200
    assert answer.json()["subscription"]["status"] == "active"


def test_hand_signed_delivery_is_verified(kavach_app, fake_polar):
    body = b'{"type": "order.paid", "timestamp": "2026-08-22T10:17:41Z", "data": {}}'
    headers = sign_webhook(body, fake_polar.webhook_secret)
    answer = kavach_app.post("/auth/polar/webhook", data=body, headers=headers)
    assert answer.status_code == 200
    assert answer.json()["outcome"] == "ignored"
'''


def test_fixtures_work_in_a_users_test_suite(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(test_user_app=USER_TEST)
    # Load the plugin explicitly (autoload off) so the run is the same installed or not.
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    result = pytester.runpytest_subprocess("-p", "kavach.testing.pytest_plugin", "-q")
    result.assert_outcomes(passed=2)


def test_plugin_is_registered_as_a_pytest11_entry_point() -> None:
    try:
        dist = metadata.distribution("kavach")
    except metadata.PackageNotFoundError:
        pytest.skip("kavach is not installed (pip install -e .) in this environment")
    points = [ep for ep in dist.entry_points if ep.group == "pytest11"]
    assert [(ep.name, ep.value) for ep in points] == [("kavach", "kavach.testing.pytest_plugin")]
