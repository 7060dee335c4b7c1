"""kavach polar events list | show | replay."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

from kavach import FrozenClock, PasswordHasher, WebhookCallbackError, create_kavach
from kavach.auth import polar
from kavach.cli import main
from kavach.polar import sign_webhook
from tests.polar_plugin.conftest import SECRET, START
from tests.polar_plugin.payloads import new_id
from tests.polar_plugin.test_webhook_handling import sub_body

ENV = {"POLAR_ACCESS_TOKEN": "polar_oat_cli_test", "POLAR_WEBHOOK_SECRET": SECRET}


@pytest.fixture
def inbox(tmp_path: Path) -> tuple[str, str, str]:
    """A SQLite store with one processed and one failed delivery: (url, ok_id, failed_id)."""
    url = f"sqlite:///{tmp_path / 'k.db'}"
    fail = {"next": True}

    def callback(user_id: str, sub: object) -> None:
        if fail["next"]:
            fail["next"] = False
            raise RuntimeError("app is down")

    clock = FrozenClock(START)
    plugin = polar("polar_oat_x", SECRET, base_url="http://127.0.0.1:9",
                   on_subscription_change=callback)
    with create_kavach(url, plugins=[plugin], clock=clock,
                       password_hasher=PasswordHasher.fast()) as kavach:
        user = kavach.users.create("jane@acme.io").id
        failed_id, ok_id = new_id(), new_id()
        for msg_id, at in ((failed_id, 1), (ok_id, 2)):
            body = sub_body(user, sub_id=new_id(), customer_id=new_id(), at_seconds=at)
            headers = sign_webhook(body, SECRET, msg_id=msg_id, timestamp=START.timestamp())
            with contextlib.suppress(WebhookCallbackError):
                plugin.handle_webhook(body, headers)
    return url, ok_id, failed_id


def run(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), environ=env or {}, stdout=out)
    return code, out.getvalue()


def test_list_shows_every_delivery_newest_first(inbox: tuple[str, str, str]) -> None:
    url, ok_id, failed_id = inbox
    code, out = run("polar", "events", "list", "--database", url)
    assert code == 0
    assert out.index(ok_id) < out.index(failed_id) or (ok_id in out and failed_id in out)
    assert "2 of 2 deliveries" in out


def test_list_failed_only(inbox: tuple[str, str, str]) -> None:
    url, ok_id, failed_id = inbox
    code, out = run("polar", "events", "list", "--failed", "--database", url)
    assert code == 0
    assert failed_id in out and ok_id not in out
    assert "1 of 1 deliveries with status failed" in out


def test_show_prints_fields_and_payload(inbox: tuple[str, str, str]) -> None:
    url, _, failed_id = inbox
    code, out = run("polar", "events", "show", failed_id, "--database", url)
    assert code == 0
    assert "status:       failed" in out
    assert "on_subscription_change raised RuntimeError" in out
    assert '"type": "subscription.updated"' in out


def test_show_unknown_id_is_an_error(inbox: tuple[str, str, str]) -> None:
    url, _, _ = inbox
    code, _ = run("polar", "events", "show", "nope", "--database", url)
    assert code == 2


def test_replay_skips_a_delivery_that_still_owes_the_apps_callback(
    inbox: tuple[str, str, str],
) -> None:
    # Its state is applied, its callback raised: finishing it here (where the app's
    # callback does not run) would lose that callback for good.
    url, _, failed_id = inbox
    code, out = run("polar", "events", "replay", "--failed", "--database", url, env=ENV)
    assert code == 1
    assert f"{failed_id}  skipped" in out and "replay_event" in out
    assert "replayed 0 of 1 deliveries" in out
    _, listing = run("polar", "events", "list", "--failed", "--database", url)
    assert "1 of 1 deliveries" in listing


def test_replay_failed_finishes_them_without_the_callback_when_told(
    inbox: tuple[str, str, str],
) -> None:
    url, _, failed_id = inbox
    code, out = run("polar", "events", "replay", "--failed", "--without-callback",
                    "--database", url, env=ENV)
    assert code == 0, out
    assert f"{failed_id}  subscription.updated  applied" in out
    assert "replayed 1 of 1 deliveries" in out
    _, listing = run("polar", "events", "list", "--failed", "--database", url)
    assert "0 of 0 deliveries" in listing


def test_replay_needs_the_polar_settings(inbox: tuple[str, str, str]) -> None:
    url, _, failed_id = inbox
    code, _ = run("polar", "events", "replay", failed_id, "--database", url)
    assert code == 2
