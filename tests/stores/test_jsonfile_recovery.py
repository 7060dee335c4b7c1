"""The JSON file store after a crash mid-compaction, with several processes, and with
records of the wrong type on disk.

A compaction writes the new snapshot, then empties the journal. A process killed between
the two leaves a snapshot that already holds the journal's lines. Processes that open
the store then read those (stale) lines and remember how far they read; whoever writes
next must not simply empty the journal under them, or they would take what is appended
after for the continuation of what they read: a line read from its middle (a spurious
``StoreCorruptError``), or committed lines silently skipped, their emails free to be
taken again and the lines themselves deleted when that process writes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kavach.errors import EmailTakenError, StoreCorruptError
from kavach.stores.jsonfile import JsonFileStore

from .factories import event, session, state, user

REPO_ROOT = Path(__file__).resolve().parents[2]

#: A process that creates users, one per argument ``id:name``, printing each id once the
#: call returned (acknowledged). With ``kill`` it dies (SIGKILL) the moment a compaction,
#: the new snapshot in place, is about to empty the journal.
WRITER = """
import os, signal, sys
from datetime import UTC, datetime
from kavach.records import UserRecord
from kavach.stores.jsonfile import JsonFileStore

path, compact_after, kill, *users = sys.argv[1:]
if kill == "kill":
    real_ftruncate = os.ftruncate
    def ftruncate(fd, length):
        if length == 0:  # only a compaction empties the journal
            os.kill(os.getpid(), signal.SIGKILL)
        real_ftruncate(fd, length)
    os.ftruncate = ftruncate
store = JsonFileStore(path, compact_after=int(compact_after))
for spec in users:
    user_id, name = spec.split(":")
    store.create_user(UserRecord(id=user_id, email=f"{user_id}@example.com", name=name,
                                 password_hash=None, created_at=datetime(2025, 1, 1, tzinfo=UTC)))
    print(user_id, flush=True)
store.close()
"""


def run_writer(
    path: Path,
    users: list[str],
    *,
    name: str = "User",
    kill: bool = False,
    compact_after: int = 1000,
) -> tuple[int, list[str]]:
    """Run :data:`WRITER` in a new process: (exit code, acknowledged user ids)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), *sys.path]))
    specs = [f"{user_id}:{name}" for user_id in users]
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            WRITER,
            str(path),
            str(compact_after),
            "kill" if kill else "-",
            *specs,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(done.stderr)
    return done.returncode, done.stdout.split()


CRASHED_USERS = ["u0", "u1", "u2", "u3"]


@pytest.fixture
def crashed(path: Path) -> int:
    """A store whose writer was killed mid-compaction: the new snapshot holds u0..u3,
    the journal still holds their four (stale) lines. Returns the journal's size."""
    code, acknowledged = run_writer(path, CRASHED_USERS, kill=True, compact_after=3)
    assert code == -signal.SIGKILL
    assert acknowledged == CRASHED_USERS[:3]  # the 4th call died compacting, after its commit
    assert json.loads(path.read_text())["generation"] == 2
    assert [u["id"] for u in json.loads(path.read_text())["users"]] == CRASHED_USERS
    journal = Path(f"{path}.journal").read_bytes()
    assert journal.count(b"\n") == 4 and b'"g":1,' in journal
    return len(journal)


def line_starts(path: Path) -> set[int]:
    journal = Path(f"{path}.journal").read_bytes()
    return {0} | {i + 1 for i, byte in enumerate(journal) if byte == ord("\n")}


def assert_fresh_open_has(path: Path, user_ids: list[str]) -> None:
    store = JsonFileStore(path)
    try:
        assert sorted(store._tables.users) == sorted(user_ids)
    finally:
        store.close()


# -- crash mid-compaction, then a reader and a writer in other processes -------------------


def test_reader_sees_writes_ending_past_where_it_stopped_reading(
    crashed: int, open_json: Callable[..., JsonFileStore], path: Path
) -> None:
    """stale_trunc.py: the writer's lines end past the reader's position, which falls
    inside one of them. Reading from there would be reading half a line."""
    reader = open_json()
    assert reader.count_users() == 4

    writers = [f"w{i}" for i in range(6)]
    assert run_writer(path, writers, name="Writer") == (0, writers)
    assert os.path.getsize(f"{path}.journal") > crashed
    assert crashed not in line_starts(path)  # the reader's position is mid-line

    assert reader.count_users() == 10  # no StoreCorruptError
    assert all(reader.get_user(w) is not None for w in writers)
    assert reader.get_user("u0") is not None
    assert_fresh_open_has(path, CRASHED_USERS + writers)


def test_reader_sees_writes_ending_exactly_where_it_stopped_reading(
    crashed: int, open_json: Callable[..., JsonFileStore], path: Path
) -> None:
    """stale_trunc2.py: the writer's lines end exactly at the reader's position, so the
    journal looks unchanged to it. It must still see them, refuse their emails, and its
    own write must not delete them."""
    reader = open_json()
    assert reader.count_users() == 4

    writers = [f"w{i}" for i in range(4)]  # lines as long as the four stale ones
    assert run_writer(path, writers) == (0, writers)
    assert os.path.getsize(f"{path}.journal") == crashed

    assert reader.count_users() == 8
    assert all(reader.get_user(w) is not None for w in writers)
    with pytest.raises(EmailTakenError):
        reader.create_user(user("dup", email="w0@example.com"))
    reader.create_user(user("r1"))
    assert reader.count_users() == 9
    assert_fresh_open_has(path, [*CRASHED_USERS, *writers, "r1"])


def test_two_stores_that_read_the_stale_journal_keep_each_others_writes(
    crashed: int, open_json: Callable[..., JsonFileStore], path: Path
) -> None:
    first, second = open_json(), open_json()
    assert first.count_users() == second.count_users() == 4
    first.create_user(user("a1"))
    pad = crashed - 2 * os.path.getsize(f"{path}.journal")
    assert pad >= 0
    first.create_user(user("a2", name="User a2" + "x" * pad))
    assert os.path.getsize(f"{path}.journal") == crashed  # where second stopped reading

    assert second.count_users() == 6
    with pytest.raises(EmailTakenError):
        second.create_user(user("dup", email="a1@example.com"))
    second.create_user(user("b1"))
    first.create_user(user("a3"))
    assert first.count_users() == second.count_users() == 8
    assert_fresh_open_has(path, [*CRASHED_USERS, "a1", "a2", "b1", "a3"])


def test_a_crash_while_dropping_the_stale_journal_loses_nothing(
    crashed: int, open_json: Callable[..., JsonFileStore], path: Path
) -> None:
    """The write that replaces the stale journal is itself killed mid-compaction: the
    reader keeps working, nothing committed is lost, and the next writer goes on."""
    reader = open_json()
    assert reader.count_users() == 4
    code, acknowledged = run_writer(path, ["k0"], kill=True)
    assert code == -signal.SIGKILL and acknowledged == []  # died before appending k0
    assert reader.count_users() == 4
    writers = [f"w{i}" for i in range(3)]
    assert run_writer(path, writers, name="Writer") == (0, writers)
    assert reader.count_users() == 7
    assert reader.get_user("k0") is None
    assert_fresh_open_has(path, CRASHED_USERS + writers)


def test_stale_journal_built_by_hand_behaves_the_same(
    open_json: Callable[..., JsonFileStore], path: Path
) -> None:
    """The on-disk state of the crash (a new snapshot beside the old journal), made
    without killing anything; the reader's position ends exactly where the writer's
    lines do."""
    store = open_json()
    for i in range(3):
        store.create_user(user(f"u{i}"))
    journal = Path(f"{path}.journal")
    before = journal.read_bytes()
    store.compact()
    journal.write_bytes(before)

    reader, writer = open_json(), open_json()
    assert reader.count_users() == writer.count_users() == 3
    for i in range(3):
        writer.create_user(user(f"w{i}"))
    assert journal.stat().st_size == len(before)
    assert reader.count_users() == 6
    with pytest.raises(EmailTakenError):
        reader.create_user(user("dup", email="w1@example.com"))
    reader.create_user(user("r1"))
    assert writer.count_users() == 7
    assert_fresh_open_has(path, ["u0", "u1", "u2", "w0", "w1", "w2", "r1"])


def test_journal_rewritten_behind_a_readers_back_is_read_again_not_reported_corrupt(
    open_json: Callable[..., JsonFileStore], path: Path
) -> None:
    """Defence in depth: should a reader's position ever point into the middle of a line
    of a journal that was rewritten unnoticed, the files are judged from the start."""
    store = open_json()
    store.create_user(user("u1"))
    store.create_user(user("u2"))
    reader = open_json()
    assert reader.count_users() == 2
    store.close()
    journal = Path(f"{path}.journal")
    lines = journal.read_bytes().splitlines(keepends=True)
    longer = lines[0].replace(b'"name":"User u1"', b'"name":"A much longer name u1"')
    journal.write_bytes(longer + lines[1] + lines[1].replace(b"u2", b"u3"))
    assert reader.count_users() == 3
    assert reader.get_user("u1") is not None and reader.get_user("u3") is not None


# -- wrongly typed records on disk ------------------------------------------------------------

SECRET_HASH = "$argon2id$v=19$m=65536,t=3,p=4$c2VjcmV0$c2VjcmV0aGFzaA"
SECRET_TOKEN_HASH = "5ec2e7" * 10 + "abcd"

#: (section, record id, field, bad value, words the error must contain)
BAD_FIELDS: list[tuple[str, str, str, Any, tuple[str, ...]]] = [
    ("subscriptions", "sub1", "version", "5", ("subscription 'sub1'", "'version'", "integer")),
    ("subscriptions", "sub1", "version", True, ("subscription 'sub1'", "'version'", "not bool")),
    ("subscriptions", "sub1", "version", 5.0, ("subscription 'sub1'", "'version'", "not float")),
    ("subscriptions", "sub1", "cancel_at_period_end", "false", ("'cancel_at_period_end'",)),
    ("subscriptions", "sub1", "status", None, ("'status'", "not null")),
    ("subscriptions", "sub1", "current_period_end", 1735689600, ("'current_period_end'",)),
    ("subscriptions", "sub1", "amount", "1000", ("'amount'", "or null")),
    ("users", "u1", "email", 5, ("user 'u1'", "'email'", "text")),
    ("users", "u1", "created_at", None, ("user 'u1'", "'created_at'")),
    ("users", "u1", "created_at", "2025-01-02T03:04:05", ("'created_at'", "aware")),
    ("users", "u1", "created_at", "yesterday", ("'created_at'", "ISO 8601")),
    ("users", "u1", "polar_cancel_at_period_end", 0, ("'polar_cancel_at_period_end'",)),
    ("users", "u1", "polar_subscription_version", "7", ("'polar_subscription_version'",)),
    ("users", "u1", "password_hash", ["x"], ("user 'u1'", "'password_hash'")),
    ("sessions", SECRET_TOKEN_HASH, "expires_at", 12, ("session of user 'u1'", "'expires_at'")),
    ("sessions", SECRET_TOKEN_HASH, "user_id", 1, ("session of user", "'user_id'")),
    ("events", "wh1", "attempts", "2", ("inbox event 'wh1'", "'attempts'")),
    ("events", "wh1", "payload", {"a": 1}, ("inbox event 'wh1'", "'payload'", "not dict")),
]
KEYS = {"users": "id", "sessions": "token_hash", "subscriptions": "id", "events": "webhook_id"}


def seed(open_json: Callable[..., JsonFileStore]) -> JsonFileStore:
    store = open_json()
    store.create_user(user("u1", password_hash=SECRET_HASH))
    store.create_session(session(SECRET_TOKEN_HASH))
    store.apply_subscription(state(version=5))
    store.record_event(event("wh1"))
    return store


def assert_reported(
    caught: pytest.ExceptionInfo[StoreCorruptError], words: tuple[str, ...]
) -> None:
    message = str(caught.value)
    for word in words:
        assert word in message
    assert SECRET_HASH not in message and SECRET_TOKEN_HASH not in message


@pytest.mark.parametrize(("section", "key", "field", "value", "words"), BAD_FIELDS)
def test_wrongly_typed_journal_field_is_corruption_at_open(
    open_json: Callable[..., JsonFileStore],
    path: Path,
    section: str,
    key: str,
    field: str,
    value: Any,
    words: tuple[str, ...],
) -> None:
    seed(open_json).close()
    journal = Path(f"{path}.journal")
    entries = [json.loads(line) for line in journal.read_bytes().splitlines()]
    spoiled = [r for e in entries for r in e.get(section, ()) if r[KEYS[section]] == key]
    for record in spoiled:
        record[field] = value
    assert spoiled
    journal.write_text("".join(json.dumps(e) + "\n" for e in entries) + '{"g":1}\n')

    with pytest.raises(StoreCorruptError) as caught:
        JsonFileStore(path)
    assert_reported(caught, (f"{path}.journal", *words))


@pytest.mark.parametrize(("section", "key", "field", "value", "words"), BAD_FIELDS)
def test_wrongly_typed_snapshot_field_is_corruption_at_open(
    open_json: Callable[..., JsonFileStore],
    path: Path,
    section: str,
    key: str,
    field: str,
    value: Any,
    words: tuple[str, ...],
) -> None:
    store = seed(open_json)
    store.compact()
    store.close()
    snapshot = json.loads(path.read_text())
    (record,) = [r for r in snapshot[section] if r[KEYS[section]] == key]
    record[field] = value
    path.write_text(json.dumps(snapshot))

    with pytest.raises(StoreCorruptError) as caught:
        JsonFileStore(path)
    assert_reported(caught, (str(path), *words))


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        ({"users": ["u9"]}, ("user record is not a JSON object",)),
        ({"users": {"id": "u9"}}, ("'users' is not a list",)),
        ({"deleted_sessions": [5]}, ("'deleted_sessions'",)),
        (
            {"subscriptions": [{"id": "s9", "user_id": "u1", "status": "active"}]},
            ("subscription 's9'", "'product_id' is missing"),
        ),
        (
            {"users": [{"id": 9, "email": 5, "created_at": "2025-01-01T00:00:00+00:00"}]},
            ("user with a malformed id", "'id'"),
        ),
    ],
)
def test_malformed_journal_records_are_corruption_at_open(
    open_json: Callable[..., JsonFileStore],
    path: Path,
    entry: dict[str, Any],
    words: tuple[str, ...],
) -> None:
    seed(open_json).close()
    with open(f"{path}.journal", "a") as journal:
        journal.write(json.dumps({"g": 1, **entry}) + "\n" + '{"g":1}\n')
    with pytest.raises(StoreCorruptError) as caught:
        JsonFileStore(path)
    assert_reported(caught, words)


def test_null_and_absent_optional_fields_still_load(
    open_json: Callable[..., JsonFileStore], path: Path
) -> None:
    seed(open_json).close()
    journal = Path(f"{path}.journal")
    entries = [json.loads(line) for line in journal.read_bytes().splitlines()]
    (sub,) = [r for e in entries for r in e.get("subscriptions", ())]
    sub["amount"] = None
    del sub["currency"]
    journal.write_text("".join(json.dumps(e) + "\n" for e in entries))
    store = open_json()
    loaded = store.get_subscription("sub1")
    assert loaded is not None and loaded.amount is None and loaded.currency is None
    assert type(loaded.version) is int and store.list_subscriptions("u1") == [loaded]
