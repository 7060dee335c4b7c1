"""kavach polar events list | show | replay."""

from __future__ import annotations

import contextlib
import io
import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import pytest

from kavach import FrozenClock, PasswordHasher, WebhookCallbackError, create_kavach
from kavach.auth import polar
from kavach.cli import main
from kavach.polar import sign_webhook
from kavach.records import InboxEvent
from kavach.stores.jsonfile import JsonFileStore
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


def add_unfinished(url: str, rows: list[tuple[str, str, str | bytes]]) -> None:
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


def add_blob_payload(url: str, webhook_id: str) -> None:
    """An unfinished delivery whose payload is a BLOB (written by hand, or by a tool that
    wrote bytes): sqlite3 hands it back as ``bytes``, which the store refuses to read."""
    add_unfinished(url, [(webhook_id, "order.paid", b'{"type":"order.paid","data":{}}')])


def test_replay_failed_reports_an_unreadable_row_and_replays_the_others(
    inbox: tuple[str, str, str],
) -> None:
    url, _, _ = inbox
    add_unfinished(url, [("order-1", "order.paid", '{"type":"order.paid","data":{}}')])
    add_blob_payload(url, "blob-1")
    add_unfinished(url, [("order-2", "order.paid", '{"type":"order.paid","data":{}}')])
    code, out = run("polar", "events", "replay", "--failed", "--without-callback",
                    "--database", url, env=ENV)
    assert code == 1, out
    assert "error: unreadable row: the InboxEvent row of webhook_id 'blob-1' holds an " \
        "unreadable 'payload' value (bytes)" in out
    assert "order-1  order.paid  ignored" in out and "order-2  order.paid  ignored" in out
    assert "replayed 3 of 4 deliveries" in out  # the failed one, both orders; not the blob
    _, listing = run("polar", "events", "list", "--status", "received", "--database", url)
    assert "1 of 1 deliveries with status received, 1 unreadable" in listing


def test_replay_of_an_unreadable_row_is_an_error_for_that_delivery(
    inbox: tuple[str, str, str],
) -> None:
    url, _, _ = inbox
    add_blob_payload(url, "blob-1")
    code, out = run("polar", "events", "replay", "blob-1", "--database", url, env=ENV)
    assert code == 1
    assert "blob-1  error: unreadable row:" in out and "'payload'" in out
    assert "replayed 0 of 1 deliveries" in out


def test_list_marks_an_unreadable_row_and_lists_the_others(
    inbox: tuple[str, str, str],
) -> None:
    url, ok_id, failed_id = inbox
    add_blob_payload(url, "blob-1")
    code, out = run("polar", "events", "list", "--database", url)
    assert code == 1
    assert ok_id in out and failed_id in out
    assert "-  unreadable row: the InboxEvent row of webhook_id 'blob-1'" in out
    assert "3 of 3 deliveries, 1 unreadable" in out


def test_show_of_an_unreadable_row_is_an_error_naming_it(
    inbox: tuple[str, str, str], capsys: pytest.CaptureFixture[str],
) -> None:
    url, _, _ = inbox
    add_blob_payload(url, "blob-1")
    code, out = run("polar", "events", "show", "blob-1", "--database", url)
    assert code == 1 and out == ""
    err = capsys.readouterr().err
    assert "StoreCorruptError: the InboxEvent row of webhook_id 'blob-1'" in err
    assert "Traceback" not in err and "order.paid" not in err  # never the value


def test_a_json_store_holding_a_payload_that_is_not_text_is_an_error_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "k.json"
    store = JsonFileStore(path)
    store.record_event(InboxEvent(webhook_id="wh1", event_type="order.paid", received_at=START,
                                  payload="{}"))
    store.compact()
    store.close()
    snapshot = json.loads(path.read_text())
    snapshot["events"][0]["payload"] = [123]  # written by hand
    path.write_text(json.dumps(snapshot))
    for action in (("list",), ("show", "wh1")):
        code, _ = run("polar", "events", *action, "--database", f"json://{path}")
        assert code == 1
        err = capsys.readouterr().err
        assert "inbox event 'wh1': field 'payload' must be text, not list" in err
    code, _ = run("polar", "events", "replay", "--failed", "--database", f"json://{path}",
                  env=ENV)
    assert code == 1 and "'payload' must be text" in capsys.readouterr().err


def test_list_of_a_page_read_row_by_row_survives_a_delivery_recorded_meanwhile(
    inbox: tuple[str, str, str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A newer delivery lands at the head while the page is re-read a row at a time: every
    # later row moves down one. It listed a row twice and stopped before the last one
    # (here the unreadable row, so the listing said nothing was wrong and exited 0).
    url, ok_id, failed_id = inbox
    add_blob_payload(url, "blob-1")  # the oldest row
    reads = {"single": 0}
    list_events = SqlStore.list_events

    def list_events_while_a_delivery_arrives(self: SqlStore, **page: int) -> object:
        if page.get("limit") == 1:
            reads["single"] += 1
            if reads["single"] == 2:
                with contextlib.closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as db:
                    db.execute(
                        "insert into kavach_polar_events (webhook_id, event_type, received_at, "
                        "payload, status, outcome, attempts) values ('new-1', 'order.paid', "
                        "'2099-01-01 00:00:00.000000', '{}', 'received', NULL, 1)"
                    )
                    db.commit()
        return list_events(self, **page)

    monkeypatch.setattr(SqlStore, "list_events", list_events_while_a_delivery_arrives)
    code, out = run("polar", "events", "list", "--database", url)
    assert code == 1, out
    assert out.count(ok_id) == 1 and out.count(failed_id) == 1
    assert "unreadable row: the InboxEvent row of webhook_id 'blob-1'" in out
