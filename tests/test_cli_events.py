"""kavach polar events list | show | replay."""

from __future__ import annotations

import contextlib
import io
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import pytest

from kavach import FrozenClock, PasswordHasher, WebhookCallbackError, create_kavach
from kavach.auth import polar
from kavach.cli import main
from kavach.polar import sign_webhook
from kavach.records import InboxEvent
from kavach.stores.sql import SqlStore
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


def add_unfinished(url: str, rows: list[tuple[str, str, str]]) -> None:
    """Record deliveries as a process that died right after recording them leaves them:
    ``(webhook_id, event_type, payload)``, status received, no outcome."""
    path = url.removeprefix("sqlite:///")
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.executemany(
            "insert into kavach_polar_events (webhook_id, event_type, received_at, payload, "
            "status, outcome, attempts) values (?, ?, ?, ?, 'received', NULL, 1)",
            [(wid, kind, f"2026-01-01 00:00:{i:02d}.000000", payload)
             for i, (wid, kind, payload) in enumerate(rows)],
        )
        db.commit()


def test_replay_skips_a_subscription_delivery_never_applied(
    inbox: tuple[str, str, str],
) -> None:
    # Applying it here would mark it done without the app's on_subscription_change.
    url, _, _ = inbox
    wid = new_id()
    add_unfinished(url, [(wid, "subscription.active", '{"type":"subscription.active"}')])
    code, out = run("polar", "events", "replay", wid, "--database", url, env=ENV)
    assert code == 1
    assert f"{wid}  skipped: it was never applied" in out and "replay_event" in out
    _, shown = run("polar", "events", "show", wid, "--no-payload", "--database", url)
    assert "status:       received" in shown


def test_replay_failed_goes_through_more_deliveries_than_one_listing_returns(
    inbox: tuple[str, str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A store answering at most 2 rows per listing stands in for any fixed cap.
    url, _, failed_id = inbox
    add_unfinished(url, [(f"order-{i}", "order.paid", '{"type":"order.paid","data":{}}')
                         for i in range(5)])
    listing = SqlStore.list_events

    def capped(self: SqlStore, *, status: str | None = None, limit: int = 100,
               offset: int = 0) -> Sequence[InboxEvent]:
        return listing(self, status=status, limit=min(limit, 2), offset=offset)

    monkeypatch.setattr(SqlStore, "list_events", capped)
    code, out = run("polar", "events", "replay", "--failed", "--database", url, env=ENV)
    assert code == 1  # the failed one still owes its callback
    assert f"{failed_id}  skipped" in out
    assert all(f"order-{i}  order.paid" in out for i in range(5)), out
    assert "replayed 5 of 6 deliveries" in out


@pytest.mark.parametrize("scheme", ["sqlite:///", "json://"])
@pytest.mark.parametrize("action", [("list",), ("show", "some-id")])
def test_reading_the_inbox_at_a_missing_file_is_an_error_and_creates_nothing(
    tmp_path: Path, scheme: str, action: tuple[str, ...],
    capsys: pytest.CaptureFixture[str],
) -> None:
    missing = tmp_path / "mistyped.db"
    code, _ = run("polar", "events", *action, "--database", f"{scheme}{missing}")
    assert code == 2
    assert f"no store at {missing}" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
