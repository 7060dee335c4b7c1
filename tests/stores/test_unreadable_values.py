"""Values the SQL store cannot bind or read: kavach's errors, never a driver's.

* A parameter a driver refuses to bind (NUL in text on PostgreSQL, an integer beyond 64
  bits, a lone surrogate) is a ``StoreError`` naming the store, not a raw ``ValueError``
  or ``OverflowError`` (an HTTP 500 with no clue).
* A row written by something else than kavach, with a value kavach cannot read back, is
  a ``StoreCorruptError`` naming the record type, the row's key (never a token hash) and
  the column, never the value: a time that is not one, and a value of another type than
  the column's (a BLOB payload, which the driver hands back as ``bytes``/``memoryview``).
  The JSON store refuses such a record when it opens (``test_jsonfile_recovery.py``).
* ``kavach.users`` answers a lookup by an email no store could hold (NUL, a lone
  surrogate) as unknown, and refuses a name with a NUL, on every store alike.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from kavach import EmailTakenError, InvalidCredentialsError, PasswordHasher, create_kavach
from kavach.errors import InvalidInputError, StoreCorruptError, StoreError
from kavach.stores import open_store
from kavach.stores.sql import SqlStore

from .conftest import SqlServer
from .factories import event, session, state, user


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[SqlStore]:
    store = SqlStore.from_url(f"sqlite:///{tmp_path / 'k.db'}")
    yield store
    store.close()


@pytest.fixture(params=["sqlite", "postgres", "mysql"])
def sql_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'k.db'}"
    server: SqlServer = request.getfixturevalue(f"{request.param}_server")
    server.empty_tables()
    return server.url


def test_an_integer_beyond_64_bits_is_a_store_error(sqlite_store: SqlStore) -> None:
    sqlite_store.create_user(user("u1"))
    with pytest.raises(StoreError, match="sqlite store cannot keep a value"):
        sqlite_store.apply_subscription(state("s1", user_id="u1", amount=2**70))
    assert sqlite_store.get_subscription("s1") is None  # rolled back, nothing half-written


def test_a_lone_surrogate_is_a_store_error(sqlite_store: SqlStore) -> None:
    with pytest.raises(StoreError, match="cannot keep a value"):
        sqlite_store.get_user("\ud800")


def test_nul_in_text_is_a_store_error_on_postgres(postgres_server: SqlServer) -> None:
    postgres_server.empty_tables()
    store = SqlStore.from_url(postgres_server.url)
    try:
        with pytest.raises(StoreError, match="postgres store cannot keep a value"):
            store.create_user(user("u1", name="a\x00b"))
        assert store.count_users() == 0
    finally:
        store.close()


@pytest.mark.parametrize(
    ("column", "value"),
    [("created_at", "garbage"), ("created_at", 12), ("created_at", "2026-01-01 00:00:00+05:00")],
    ids=["not-a-time", "a-number", "a-time-with-offset"],
)
def test_a_row_kavach_cannot_read_is_store_corrupt(
    tmp_path: Path, column: str, value: object
) -> None:
    path = tmp_path / "k.db"
    store = SqlStore.from_url(f"sqlite:///{path}")
    store.create_user(user("u1"))
    with sqlite3.connect(path) as db:  # written by something else than kavach
        db.execute(f"UPDATE kavach_users SET {column} = ? WHERE id = 'u1'", (value,))
    with pytest.raises(StoreCorruptError, match=f"UserRecord row .*'{column}'") as caught:
        store.get_user("u1")
    assert str(value) not in str(caught.value) or str(value) == "12"
    store.close()


def test_an_unreadable_subscription_time_is_store_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "k.db"
    store = SqlStore.from_url(f"sqlite:///{path}")
    store.create_user(user("u1"))
    store.apply_subscription(state("s1", user_id="u1"))
    with sqlite3.connect(path) as db:
        db.execute("UPDATE kavach_polar_subscriptions SET current_period_end = 'soon'")
    with pytest.raises(StoreCorruptError, match="current_period_end"):
        store.list_subscriptions("u1")
    store.close()


def test_a_blob_payload_is_store_corrupt_naming_the_delivery(tmp_path: Path) -> None:
    path = tmp_path / "k.db"
    store = SqlStore.from_url(f"sqlite:///{path}")
    for webhook_id in ("wh1", "wh2"):
        store.record_event(event(webhook_id))
    with sqlite3.connect(path) as db:  # a BLOB: sqlite3 hands it back as bytes
        db.execute("UPDATE kavach_polar_events SET payload = CAST(payload AS BLOB) "
                   "WHERE webhook_id = 'wh2'")
    expected = r"InboxEvent row of webhook_id 'wh2' holds an unreadable 'payload' value \(bytes\)"
    with pytest.raises(StoreCorruptError, match=expected) as caught:
        store.get_event("wh2")
    assert "subscription.updated" not in str(caught.value)  # never the value
    with pytest.raises(StoreCorruptError, match=expected):
        store.list_events()
    readable = store.get_event("wh1")
    assert readable is not None and readable.payload == event("wh1").payload
    store.close()


@pytest.mark.parametrize(
    ("table", "column", "value", "read", "named"),
    [
        ("kavach_users", "email", b"u1@example.com", "get_user", "UserRecord row of id 'u1'"),
        ("kavach_sessions", "user_id", b"u1", "get_session",
         "a SessionRecord row holds"),  # a session is named by its user: unreadable here
        ("kavach_polar_subscriptions", "version", "seven", "get_subscription",
         "SubscriptionState row of id 'sub1'"),
        ("kavach_polar_events", "attempts", 1.5, "get_event",
         "InboxEvent row of webhook_id 'wh1'"),
    ],
    ids=["blob-email", "blob-session-user", "text-version", "real-attempts"],
)
def test_a_value_of_another_type_than_its_column_is_store_corrupt(
    tmp_path: Path, table: str, column: str, value: object, read: str, named: str
) -> None:
    path = tmp_path / "k.db"
    store = SqlStore.from_url(f"sqlite:///{path}")
    store.create_user(user("u1"))
    store.create_session(session("tokenhash1"))
    store.apply_subscription(state("sub1"))
    store.record_event(event("wh1"))
    with sqlite3.connect(path) as db:
        db.execute(f"UPDATE {table} SET {column} = ?", (value,))
    keys = {"get_user": "u1", "get_session": "tokenhash1", "get_subscription": "sub1"}
    key = keys.get(read, "wh1")
    with pytest.raises(StoreCorruptError, match=f"{named}.*'{column}'") as caught:
        getattr(store, read)(key)
    assert "tokenhash1" not in str(caught.value)  # never a token hash
    store.close()


@pytest.mark.parametrize("value", ["seven", b"\x07"], ids=["text", "blob"])
def test_a_conditional_write_over_an_unreadable_version_is_store_corrupt(
    tmp_path: Path, value: object
) -> None:
    # The conditional write reads the stored version itself (not through the codec):
    # it compared "seven" with an int and raised a bare TypeError.
    path = tmp_path / "k.db"
    store = SqlStore.from_url(f"sqlite:///{path}")
    store.create_user(user("u1"))
    store.apply_subscription(state("sub1", user_id="u1", version=1))
    with sqlite3.connect(path) as db:
        db.execute("UPDATE kavach_polar_subscriptions SET version = ?", (value,))
    with pytest.raises(StoreCorruptError, match=r"SubscriptionState row of id 'sub1'.*'version'"):
        store.apply_subscription(state("sub1", user_id="u1", version=2))
    store.close()


@pytest.mark.parametrize("kind", ["postgres", "mysql"])
def test_a_payload_the_driver_hands_back_as_bytes_is_store_corrupt(
    request: pytest.FixtureRequest, kind: str
) -> None:
    # The payload column turned binary (bytea / LONGBLOB): psycopg2 hands back a
    # memoryview, PyMySQL bytes.
    server: SqlServer = request.getfixturevalue(f"{kind}_server")
    server.empty_tables()
    store = SqlStore.from_url(server.url)
    binary, text = (
        ("TYPE bytea USING convert_to(payload, 'UTF8')",
         "TYPE text USING convert_from(payload, 'UTF8')")
        if kind == "postgres" else ("LONGBLOB NOT NULL", "LONGTEXT NOT NULL")
    )
    alter = "ALTER COLUMN payload" if kind == "postgres" else "MODIFY payload"
    try:
        store.record_event(event("wh1"))
        store.close()  # no pooled connection holds the old column type
        server.query(f"ALTER TABLE kavach_polar_events {alter} {binary}")
        store = SqlStore.from_url(server.url)
        with pytest.raises(StoreCorruptError, match=r"webhook_id 'wh1' .* 'payload'"):
            store.get_event("wh1")
    finally:
        store.close()
        server.query(f"ALTER TABLE kavach_polar_events {alter} {text}")


def test_users_answer_alike_on_every_sql_store(sql_url: str) -> None:
    with create_kavach(sql_url, password_hasher=PasswordHasher.fast()) as kavach:
        kavach.users.create("jane@acme.io", password="correct horse battery")
        for email in ("jane@acme.io\x00", "\ud800@acme.io"):
            assert kavach.users.get_by_email(email) is None
            with pytest.raises(InvalidCredentialsError):
                kavach.users.authenticate(email, "correct horse battery")
        with pytest.raises(InvalidInputError) as caught:
            kavach.users.create("joe@acme.io", password="correct horse battery", name="J\x00e")
        assert caught.value.field == "name"
        # Case folding can lengthen an address past the key column: refused first.
        with pytest.raises(InvalidInputError):
            kavach.users.create("\u00df" * 200 + "@example.com", password="correct horse battery")
        # One address however it is composed (NFKC before case folding).
        kavach.users.create("jos\u00e9@acme.io", password="correct horse battery")
        with pytest.raises(EmailTakenError):
            kavach.users.create("JOSE\u0301@acme.io", password="correct horse battery")


def test_memory_and_json_answer_the_same(tmp_path: Path) -> None:
    for url in ("memory://", f"json://{tmp_path / 'k.json'}"):
        store = open_store(url)
        with create_kavach(store, password_hasher=PasswordHasher.fast()) as kavach:
            assert kavach.users.get_by_email("a\x00@b.io") is None
            with pytest.raises(InvalidInputError):
                kavach.users.create("joe@acme.io", password="correct horse battery",
                                    name="J\x00e")
