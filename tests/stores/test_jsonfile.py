"""The JSON file store: the store contract, plus its journal's crash and compaction rules."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from kavach.errors import StoreCorruptError, StoreError
from kavach.stores import SCHEMA_VERSION, open_store
from kavach.stores.jsonfile import JsonFileStore

from .contract import StoreContract
from .factories import T0, event, session, state, user


class TestJsonFileStore(StoreContract):
    @pytest.fixture
    def store(self, open_json: Callable[..., JsonFileStore]) -> JsonFileStore:
        return open_json()

    @pytest.fixture
    def reopen(self, open_json: Callable[..., JsonFileStore]) -> Callable[[], JsonFileStore]:
        return open_json

    @pytest.fixture
    def store_url(self, path: Path) -> str:
        return f"json://{path}"


def journal_lines(path: Path) -> list[bytes]:
    return Path(f"{path}.journal").read_bytes().splitlines(keepends=True)


def test_json_url_opens_a_json_store(path: Path) -> None:
    store = open_store(f"json://{path}")
    try:
        assert isinstance(store, JsonFileStore) and store.kind == "json"
    finally:
        store.close()


def test_snapshot_is_readable_json_with_schema_version(
    open_json: Callable[..., JsonFileStore], path: Path
) -> None:
    store = open_json()
    store.create_user(user("u1"))
    store.compact()
    snapshot = json.loads(path.read_text())
    assert snapshot["schema_version"] == SCHEMA_VERSION
    assert [u["id"] for u in snapshot["users"]] == ["u1"]
    assert snapshot["users"][0]["created_at"] == "2025-01-02T03:04:05.678901+00:00"


def test_each_write_appends_exactly_one_journal_line(
    open_json: Callable[..., JsonFileStore], path: Path
) -> None:
    store = open_json()
    store.create_user(user("u1"))
    store.apply_subscription(state(version=1))
    store.record_event(event("wh1"))
    assert len(journal_lines(path)) == 3
    assert all(line.endswith(b"\n") for line in journal_lines(path))


def test_ingest_event_appends_one_journal_line_and_replays_it(
    open_json: Callable[..., JsonFileStore], path: Path
) -> None:
    store = open_json()
    store.create_user(user("u1"))
    result = store.ingest_event(event("wh1"), state(version=1))
    assert len(journal_lines(path)) == 2
    again = open_json()
    assert again.get_event("wh1") == result.event
    assert again.get_subscription("sub1") == state(version=1)
    mirrored = again.get_user("u1")
    assert mirrored is not None and mirrored.polar_subscription_id == "sub1"


def test_reads_and_refused_writes_append_nothing(
    open_json: Callable[..., JsonFileStore], path: Path
) -> None:
    store = open_json()
    store.create_user(user("u1"))
    store.apply_subscription(state(version=2))
    store.get_user("u1")
    store.apply_subscription(state(version=1))
    store.link_polar_customer("u1", "cus_1")
    store.link_polar_customer("u1", "cus_1")
    assert len(journal_lines(path)) == 3


def test_torn_last_line_is_skipped_and_store_stays_writable(
    open_json: Callable[..., JsonFileStore], path: Path
) -> None:
    store = open_json()
    store.create_user(user("u1"))
    store.create_user(user("u2"))
    store.close()
    with open(f"{path}.journal", "ab") as journal:
        journal.write(b'{"g":1,"users":[{"id":"u3","ema')  # crash mid-write

    again = open_json()
    assert again.count_users() == 2
    assert again.get_user("u3") is None
    again.create_user(user("u3"))
    assert all(line.endswith(b"}\n") for line in journal_lines(path))
    assert open_json().count_users() == 3


def test_garbage_last_line_with_newline_is_skipped(
    open_json: Callable[..., JsonFileStore], path: Path
) -> None:
    store = open_json()
    store.create_user(user("u1"))
    store.close()
    with open(f"{path}.journal", "ab") as journal:
        journal.write(b"\x00\x00\x00\n")  # what some file systems leave after a crash

    again = open_json()
    assert again.count_users() == 1
    again.create_user(user("u2"))
    assert open_json().count_users() == 2


def test_corrupt_middle_line_raises_store_corrupt_with_file_and_line(
    open_json: Callable[..., JsonFileStore], path: Path
) -> None:
    store = open_json()
    for i in range(3):
        store.create_user(user(f"u{i}"))
    store.close()
    lines = journal_lines(path)
    lines[1] = b"{not json}\n"
    Path(f"{path}.journal").write_bytes(b"".join(lines))

    with pytest.raises(StoreCorruptError) as caught:
        JsonFileStore(path)
    assert f"{path}.journal" in str(caught.value)
    assert "line 2" in str(caught.value)


def test_compaction_keeps_everything_and_shrinks_the_journal(
    open_json: Callable[..., JsonFileStore], path: Path
) -> None:
    store = open_json(compact_after=10)
    store.create_user(user("u1"))
    for version in range(1, 41):
        store.apply_subscription(state(version=version))
    store.create_session(session("h1"))
    assert len(journal_lines(path)) < 20
    assert json.loads(path.read_text())["generation"] > 1

    again = open_json()
    assert again.get_subscription("sub1") == state(version=40)
    assert again.get_session("h1") == session("h1")
    mirrored = again.get_user("u1")
    assert mirrored is not None and mirrored.polar_subscription_version == 40


def test_crash_between_snapshot_and_journal_truncation_loses_and_repeats_nothing(
    open_json: Callable[..., JsonFileStore], path: Path
) -> None:
    store = open_json()
    store.create_user(user("u1"))
    store.record_event(event("wh1"))
    store.record_event(event("wh1"))  # attempts 2
    journal = Path(f"{path}.journal")
    before = journal.read_bytes()
    store.compact()
    store.close()
    journal.write_bytes(before)  # as if the crash came before the truncation

    again = open_json()
    stored = again.get_event("wh1")
    assert stored is not None and stored.attempts == 2
    again.create_user(user("u2"))
    assert len(journal_lines(path)) == 1  # the stale lines went with the next write
    assert open_json().count_users() == 2


def test_two_open_stores_on_one_file_see_each_other(
    open_json: Callable[..., JsonFileStore],
) -> None:
    first, second = open_json(), open_json()
    first.create_user(user("u1"))
    assert second.get_user("u1") == user("u1")
    second.apply_subscription(state(version=2))
    assert first.apply_subscription(state(version=1)) is False
    assert first.get_subscription("sub1") == state(version=2)


def test_store_catches_up_after_another_compacted(
    open_json: Callable[..., JsonFileStore],
) -> None:
    first, second = open_json(), open_json()
    first.create_user(user("u1"))
    assert second.count_users() == 1
    first.create_user(user("u2"))
    first.compact()
    first.create_user(user("u3"))
    assert second.count_users() == 3
    second.create_user(user("u4"))
    assert first.count_users() == 4


def test_snapshot_from_newer_kavach_is_refused(path: Path) -> None:
    JsonFileStore(path).close()
    snapshot = json.loads(path.read_text())
    snapshot["schema_version"] = SCHEMA_VERSION + 1
    path.write_text(json.dumps(snapshot))
    with pytest.raises(StoreError, match="newer"):
        JsonFileStore(path)


def test_missing_directory_raises_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="directory"):
        JsonFileStore(tmp_path / "absent" / "kavach.json")


def test_files_are_private_to_the_owner(
    open_json: Callable[..., JsonFileStore], path: Path
) -> None:
    store = open_json()
    store.create_user(user("u1"))
    store.compact()
    for name in (str(path), f"{path}.journal", f"{path}.lock"):
        assert os.stat(name).st_mode & 0o077 == 0


def test_copied_files_open_as_the_same_store(
    open_json: Callable[..., JsonFileStore], path: Path, tmp_path: Path
) -> None:
    store = open_json()
    store.create_user(user("u1"))
    store.revoke_session("none", T0)
    copy = tmp_path / "copy.json"
    shutil.copy(path, copy)
    shutil.copy(f"{path}.journal", f"{copy}.journal")
    other = JsonFileStore(copy)
    try:
        assert other.get_user("u1") == user("u1")
    finally:
        other.close()


def test_version_1_files_load_and_are_upgraded_on_open(
    open_json: Callable[..., JsonFileStore], path: Path
) -> None:
    """Version 1 wrote inbox rows without ``claimed_until``, in the snapshot and the
    journal; they read as unclaimed, and opening rewrites the snapshot as current."""
    store = open_json()
    store.record_event(event("wh_snapshot"))
    store.compact()
    store.record_event(event("wh_journal", status="failed"))
    store.close()
    snapshot = json.loads(path.read_text())
    snapshot["schema_version"] = 1
    for row in snapshot["events"]:
        del row["claimed_until"]
    path.write_text(json.dumps(snapshot))
    journal = Path(f"{path}.journal")
    entries = [json.loads(line) for line in journal.read_bytes().splitlines()]
    for entry in entries:
        for row in entry.get("events", ()):
            del row["claimed_until"]
    journal.write_text("".join(json.dumps(entry) + "\n" for entry in entries))

    upgraded = open_json()
    assert upgraded.schema_version() == SCHEMA_VERSION == 4
    assert json.loads(path.read_text())["schema_version"] == SCHEMA_VERSION
    assert upgraded.get_event("wh_snapshot") == event("wh_snapshot")
    assert upgraded.get_event("wh_journal") == event("wh_journal", status="failed")
    assert journal.read_bytes() == b""  # folded into the rewritten snapshot
