"""The SQL store on SQLite, PostgreSQL and MySQL: the store contract, plus what only SQL has
(URLs, migrations, columns readable with plain SQL)."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import peewee
import pytest

from kavach.errors import ConfigurationError, StoreError
from kavach.records import SubscriptionState
from kavach.stores import SCHEMA_VERSION, open_store
from kavach.stores import sql as sql_module
from kavach.stores.sql import SqlStore

from . import _workers
from .conftest import SqlServer
from .contract import StoreContract
from .factories import T0, event, state, user, write_by_the_schema_3_relevance_rule


class SqlContract(StoreContract):
    """The contract for a SQL backend reached by URL; subclasses supply ``store_url``."""

    @pytest.fixture
    def opened(self) -> Iterator[list[SqlStore]]:
        stores: list[SqlStore] = []
        yield stores
        for store in stores:
            store.close()

    @pytest.fixture
    def reopen(self, store_url: str, opened: list[SqlStore]) -> Callable[[], SqlStore]:
        def reopen() -> SqlStore:
            opened.append(SqlStore.from_url(store_url))
            return opened[-1]

        return reopen

    @pytest.fixture
    def store(self, reopen: Callable[[], SqlStore]) -> SqlStore:
        return reopen()


class TestSqliteStore(SqlContract):
    @pytest.fixture
    def store_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path / 'kavach.db'}"


class TestPostgresStore(SqlContract):
    @pytest.fixture
    def store_url(self, postgres_server: SqlServer) -> str:
        postgres_server.empty_tables()
        return postgres_server.url


class TestMysqlStore(SqlContract):
    @pytest.fixture
    def store_url(self, mysql_server: SqlServer) -> str:
        mysql_server.empty_tables()
        return mysql_server.url


# -- what only the SQL store has --------------------------------------------------------


class SqliteFile:
    """The SQLite counterpart of :class:`SqlServer`, for the tests below."""

    kind = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.url = f"sqlite:///{path}"

    def query(self, sql: str) -> list[Any]:
        with sqlite3.connect(self.path) as connection:
            return connection.execute(sql).fetchall()

    def tables(self) -> set[str]:
        rows = self.query("SELECT name FROM sqlite_master WHERE type = 'table'")
        return {row[0] for row in rows}

    def drop_tables(self) -> None:
        for table in self.tables():
            self.query(f"DROP TABLE {table}")


@pytest.fixture(params=["sqlite", "postgres", "mysql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> SqliteFile | SqlServer:
    """Each SQL backend, its tables dropped: every test starts before the first open."""
    server: SqliteFile | SqlServer
    if request.param == "sqlite":
        server = SqliteFile(tmp_path / "kavach.db")
    else:
        server = request.getfixturevalue(f"{request.param}_server")
    server.drop_tables()
    return server


@pytest.fixture
def sql_store(backend: SqliteFile | SqlServer) -> Iterator[SqlStore]:
    store = SqlStore.from_url(backend.url)
    yield store
    store.close()


def test_first_open_creates_tables_and_records_schema_version(
    backend: SqliteFile | SqlServer, sql_store: SqlStore
) -> None:
    assert {
        "kavach_users",
        "kavach_sessions",
        "kavach_polar_subscriptions",
        "kavach_polar_events",
        "kavach_schema",
    } <= backend.tables()
    assert sql_store.schema_version() == SCHEMA_VERSION
    versions = sorted(row[0] for row in backend.query("SELECT version FROM kavach_schema"))
    assert versions == list(range(1, SCHEMA_VERSION + 1))


def test_opening_twice_runs_migrations_once(
    backend: SqliteFile | SqlServer, sql_store: SqlStore
) -> None:
    sql_store.create_user(user("u1"))
    again = SqlStore.from_url(backend.url)
    try:
        assert again.get_user("u1") == user("u1")
        assert len(backend.query("SELECT version FROM kavach_schema")) == SCHEMA_VERSION
    finally:
        again.close()


def test_processes_opening_an_empty_database_at_once_all_succeed(
    backend: SqliteFile | SqlServer, process_pool: ProcessPoolExecutor
) -> None:
    start_at = time.time() + 0.3
    futures = [
        process_pool.submit(_workers.open_and_read_version, backend.url, start_at) for _ in range(4)
    ]
    assert [future.result(timeout=60) for future in futures] == [SCHEMA_VERSION] * 4
    assert len(backend.query("SELECT version FROM kavach_schema")) == SCHEMA_VERSION


def test_newer_schema_in_database_is_refused(
    backend: SqliteFile | SqlServer, sql_store: SqlStore
) -> None:
    backend.query(
        f"INSERT INTO kavach_schema (version, applied_at) "
        f"VALUES ({SCHEMA_VERSION + 1}, '2030-01-01 00:00:00')"
    )
    with pytest.raises(StoreError, match="newer"):
        SqlStore.from_url(backend.url)


def event_columns(backend: SqliteFile | SqlServer) -> list[str]:
    """The columns of ``kavach_polar_events``, as the database reports them."""
    if backend.kind == "sqlite":
        return [row[1] for row in backend.query("PRAGMA table_info(kavach_polar_events)")]
    schema = "current_schema()" if backend.kind == "postgres" else "DATABASE()"
    rows = backend.query(
        "SELECT column_name FROM information_schema.columns "
        f"WHERE table_name = 'kavach_polar_events' AND table_schema = {schema}"
    )
    return [row[0] for row in rows]


def open_at_version(backend: SqliteFile | SqlServer, version: int) -> SqlStore:
    """The store as the kavach of schema ``version`` opened it: its migrations only."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sql_module, "SCHEMA_VERSION", version)
        patch.setattr(sql_module, "MIGRATIONS", sql_module.MIGRATIONS[:version])
        old = SqlStore.from_url(backend.url)
    assert old.schema_version() == version
    return old


def event_indexes(backend: SqliteFile | SqlServer) -> set[str]:
    """The names of the inbox table's indexes, read with plain SQL (no migration runs)."""
    table = sql_module.EVENTS
    if backend.kind == "sqlite":
        sql = f"SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = '{table}'"
    elif backend.kind == "postgres":
        sql = (
            "SELECT indexname FROM pg_indexes "
            f"WHERE schemaname = current_schema() AND tablename = '{table}'"
        )
    else:
        sql = (
            "SELECT index_name FROM information_schema.statistics "
            f"WHERE table_schema = DATABASE() AND table_name = '{table}'"
        )
    return {row[0] for row in backend.query(sql)}


def make_version_1_database(backend: SqliteFile | SqlServer) -> None:
    """The database as kavach 0.x with schema version 1 left it: its migrations only,
    a user and an unfinished inbox row (written with plain SQL: v1 columns)."""
    old = open_at_version(backend, 1)
    try:
        old.create_user(user("u1"))
    finally:
        old.close()
    backend.query(
        "INSERT INTO kavach_polar_events (webhook_id, event_type, received_at, payload, "
        "status, outcome, attempts) VALUES ('wh_v1', 'subscription.updated', "
        "'2025-01-02 03:04:05.678901', '{}', 'failed', 'applied', 1)"
    )
    assert "claimed_until" not in event_columns(backend)


def test_a_version_1_database_is_upgraded_on_open(backend: SqliteFile | SqlServer) -> None:
    make_version_1_database(backend)
    store = SqlStore.from_url(backend.url)
    try:
        assert store.schema_version() == SCHEMA_VERSION == 4
        assert event_columns(backend).count("claimed_until") == 1
        versions = sorted(row[0] for row in backend.query("SELECT version FROM kavach_schema"))
        assert versions == [1, 2, 3, 4]
        assert store.get_user("u1") == user("u1")
        old = store.get_event("wh_v1")
        assert old is not None
        assert (old.status, old.outcome, old.claimed_until) == ("failed", "applied", None)
        claim = T0 + timedelta(seconds=60)
        retry = store.ingest_event(event("wh_v1", claimed_until=claim), state())
        assert (retry.in_flight, retry.event.attempts, retry.event.claimed_until) == (
            False,
            2,
            claim,
        )
    finally:
        store.close()


def make_version_2_database(backend: SqliteFile | SqlServer) -> None:
    """The database as schema version 2 left it: inbox rows of every status, and the
    inbox indexed on ``status``."""
    old = open_at_version(backend, 2)
    try:
        for i, status in enumerate(["processed", "failed", "received", "processed", "failed"]):
            old.record_event(event(f"wh{i}", received_at=T0 + timedelta(seconds=i)))
            if status != "received":
                old.finish_event(f"wh{i}", status=status, at=T0)
    finally:
        old.close()
    assert f"{sql_module.EVENTS}_status" in event_indexes(backend)


#: The inbox's status indexes from version 3 on: partial on SQLite and PostgreSQL.
STATUS_INDEXES = {
    "sqlite": {"kavach_polar_events_unfinished"},
    "postgres": {"kavach_polar_events_unfinished"},
    "mysql": {"kavach_polar_events_status"},
}


def test_a_version_2_database_is_upgraded_on_open(backend: SqliteFile | SqlServer) -> None:
    make_version_2_database(backend)
    store = SqlStore.from_url(backend.url)
    try:
        assert store.schema_version() == SCHEMA_VERSION == 4
        versions = sorted(row[0] for row in backend.query("SELECT version FROM kavach_schema"))
        assert versions == [1, 2, 3, 4]
        assert {"failed", "processed", "received"} == {
            e.status for e in store.list_events()
        }
        assert [e.webhook_id for e in store.list_events(status="failed")] == ["wh4", "wh1"]
        assert [e.webhook_id for e in store.list_events(status="processed")] == ["wh3", "wh0"]
        assert [e.webhook_id for e in store.list_events(status="received")] == ["wh2"]
        counts = {s: store.count_events(status=s) for s in ("failed", "processed", "received")}
        assert counts == {"failed": 2, "processed": 2, "received": 1}
    finally:
        store.close()
    status_indexes = {name for name in event_indexes(backend) if "status" in name or "unf" in name}
    assert status_indexes == STATUS_INDEXES[backend.kind]


def test_a_version_3_database_gets_the_nfkc_email_keys(
    backend: SqliteFile | SqlServer, caplog: pytest.LogCaptureFixture
) -> None:
    # Schema 3 keyed emails by case folding alone: a decomposed "josé" and a fullwidth
    # address had keys of their own. Version 4 recomputes them; where a key would become
    # one another account holds, it stays as it was and a warning names both.
    composed, decomposed, fullwidth = "jos\u00e9@acme.io", "jose\u0301@acme.io", "\uff41nn@acme.io"
    old = open_at_version(backend, 3)
    try:
        with pytest.MonkeyPatch.context() as patch:  # the keys schema 3 wrote
            patch.setattr(sql_module, "normalize_email", lambda e: e.strip().casefold())
            old.create_user(user("u1", email=decomposed, created_at=T0))
            old.create_user(user("u2", email=fullwidth, created_at=T0 + timedelta(seconds=1)))
            old.create_user(user("u3", email=composed, created_at=T0 + timedelta(seconds=2)))
    finally:
        old.close()
    with caplog.at_level("WARNING", logger="kavach.stores"):
        store = SqlStore.from_url(backend.url)
    try:
        assert store.schema_version() == 4
        found = store.get_user_by_email("ANN@acme.io")
        assert found is not None and found.id == "u2"
        # u3's key (composed) did not change; u1's would become it: u1 keeps its old key.
        found = store.get_user_by_email(decomposed)
        assert found is not None and found.id == "u3"
        assert "u3" in caplog.text and "u1" in caplog.text
        # u1 can still change its name or password (its key is left as it is).
        assert store.update_user("u1", name="Jose One").name == "Jose One"
        assert store.update_user("u1", password_hash="$argon2id$new").password_hash
    finally:
        store.close()


def test_the_v4_upgrade_reads_users_page_by_page_and_misses_none(
    backend: SqliteFile | SqlServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pages of two users; created_at ties across page boundaries (keyset paging on
    # created_at, then id). Every fullwidth address gets its NFKC key.
    old = open_at_version(backend, 3)
    ids = ["u5", "u1", "u4", "u2", "u3", "u6", "u7"]
    try:
        with pytest.MonkeyPatch.context() as patch:  # the keys schema 3 wrote
            patch.setattr(sql_module, "normalize_email", lambda e: e.strip().casefold())
            for i, user_id in enumerate(ids):
                old.create_user(user(user_id, email=f"\uff41nn{user_id}@acme.io",
                                     created_at=T0 + timedelta(seconds=i // 3)))
    finally:
        old.close()
    monkeypatch.setattr(sql_module, "_MIGRATION_BATCH", 2)
    store = SqlStore.from_url(backend.url)
    try:
        for user_id in ids:
            found = store.get_user_by_email(f"ANN{user_id}@acme.io")
            assert found is not None and found.id == user_id
    finally:
        store.close()


def test_the_v4_upgrade_keeps_a_key_nfkc_would_make_too_long(
    backend: SqliteFile | SqlServer, caplog: pytest.LogCaptureFixture
) -> None:
    # U+FDFA is one character, eighteen once NFKC-normalized: 27 characters, key 282.
    email = "\ufdfa" * 15 + "@example.com"
    old = open_at_version(backend, 3)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(sql_module, "normalize_email", lambda e: e.strip().casefold())
            old.create_user(user("u1", email=email))
    finally:
        old.close()
    with caplog.at_level("WARNING", logger="kavach.stores"):
        store = SqlStore.from_url(backend.url)  # opened: the migration did not fail
    try:
        assert store.schema_version() == 4
        assert "u1" in caplog.text and "keeps its old key" in caplog.text
        found = store.get_user_by_email(email.upper())  # found by the key it kept
        assert found is not None and found.id == "u1"
    finally:
        store.close()


def test_the_v4_upgrade_recomputes_mirrors_by_the_new_relevance_rule(
    backend: SqliteFile | SqlServer,
) -> None:
    old = open_at_version(backend, 3)
    try:
        write_by_the_schema_3_relevance_rule(old)
    finally:
        old.close()
    store = SqlStore.from_url(backend.url)
    try:
        mirrored = store.get_user("u1")
        assert mirrored is not None and mirrored.polar_subscription_id == "renews"
    finally:
        store.close()


def test_a_new_database_has_the_version_3_inbox_indexes(sql_store: SqlStore) -> None:
    names = {index.name for index in sql_store._db.get_indexes(sql_module.EVENTS)}
    status_indexes = {name for name in names if "status" in name or "unf" in name}
    assert status_indexes == STATUS_INDEXES[sql_store.kind]
    assert "kavach_polar_events_received_at" in names


@pytest.mark.parametrize("make_old_database", [make_version_1_database, make_version_2_database])
def test_processes_upgrading_an_old_database_at_once_all_succeed(
    backend: SqliteFile | SqlServer,
    process_pool: ProcessPoolExecutor,
    make_old_database: Callable[[SqliteFile | SqlServer], None],
) -> None:
    make_old_database(backend)
    start_at = time.time() + 0.3
    futures = [
        process_pool.submit(_workers.open_and_read_version, backend.url, start_at) for _ in range(4)
    ]
    assert [future.result(timeout=60) for future in futures] == [SCHEMA_VERSION] * 4
    assert len(backend.query("SELECT version FROM kavach_schema")) == SCHEMA_VERSION
    assert event_columns(backend).count("claimed_until") == 1
    assert {n for n in event_indexes(backend) if "status" in n or "unf" in n} == (
        STATUS_INDEXES[backend.kind]
    )


def test_claimed_until_is_stored_as_naive_utc(
    backend: SqliteFile | SqlServer, sql_store: SqlStore
) -> None:
    sql_store.ingest_event(event("wh1", claimed_until=T0))
    (value,) = backend.query("SELECT claimed_until FROM kavach_polar_events")[0]
    if isinstance(value, str):  # SQLite
        assert value == "2025-01-02 03:04:05.678901"
    else:
        assert value == T0.replace(tzinfo=None)


def test_mirror_columns_are_readable_with_plain_sql(
    backend: SqliteFile | SqlServer, sql_store: SqlStore
) -> None:
    sql_store.create_user(user("u1"))
    sql_store.apply_subscription(state(version=5, status="past_due"))
    rows = backend.query(
        "SELECT polar_subscription_id, polar_subscription_status, polar_subscription_version "
        "FROM kavach_users WHERE id = 'u1'"
    )
    assert [tuple(row) for row in rows] == [("sub1", "past_due", 5)]


def test_datetimes_are_stored_as_naive_utc(
    backend: SqliteFile | SqlServer, sql_store: SqlStore
) -> None:
    sql_store.create_user(user("u1"))
    (value,) = backend.query("SELECT created_at FROM kavach_users")[0]
    if isinstance(value, str):  # SQLite
        assert value == "2025-01-02 03:04:05.678901"
    else:
        assert value == T0.replace(tzinfo=None)


def test_store_owns_its_database_and_binds_nothing_globally(tmp_path: Path) -> None:
    first = SqlStore(peewee.SqliteDatabase(str(tmp_path / "a.db")))
    second = SqlStore(peewee.SqliteDatabase(str(tmp_path / "b.db")))
    try:
        first.create_user(user("u1"))
        assert second.get_user("u1") is None
        assert (first.kind, second.kind) == ("sqlite", "sqlite")
    finally:
        first.close()
        second.close()


def test_sqlite_connections_use_wal_full_sync_and_a_busy_timeout(sql_store: SqlStore) -> None:
    if sql_store.kind != "sqlite":
        pytest.skip("SQLite only")
    database: Any = sql_store._db
    pragmas = [
        database.execute_sql(f"PRAGMA {name}").fetchone()[0]
        for name in ("journal_mode", "synchronous", "busy_timeout")
    ]
    assert pragmas == ["wal", 2, 5000]


@pytest.mark.parametrize("url", ["sqlite://:memory:", "sqlite:///:memory:"])
def test_in_memory_sqlite_is_one_database_for_all_threads(url: str) -> None:
    store = open_store(url)
    try:
        assert isinstance(store, SqlStore) and store.kind == "sqlite"
        store.create_user(user("u1"))
        seen: list[object] = []
        thread = threading.Thread(target=lambda: seen.append(store.get_user("u1")))
        thread.start()
        thread.join()
        assert seen == [user("u1")]
    finally:
        store.close()


def test_relative_sqlite_url_is_relative_to_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_store("sqlite:///relative.db")
    store.close()
    assert (tmp_path / "relative.db").exists()


def test_absolute_sqlite_url_has_four_slashes(tmp_path: Path) -> None:
    store = open_store(f"sqlite:////{tmp_path.relative_to('/')}/absolute.db")
    store.close()
    assert (tmp_path / "absolute.db").exists()


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://kavach:s3cr3t-pw@127.0.0.1:1/db",
        "mysql://kavach:s3cr3t-pw@127.0.0.1:1/db",
    ],
)
def test_connection_failure_message_hides_the_password(url: str) -> None:
    with pytest.raises(StoreError) as caught:
        SqlStore.from_url(url)
    assert "s3cr3t-pw" not in str(caught.value)
    assert "kavach:***@127.0.0.1:1" in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://kavach:s3cr3t-pw@host:port/db",
        "mysql://kavach:s3cr3t-pw@127.0.0.1:3306/",
        "oracle://kavach:s3cr3t-pw@host/db",
        "sqlite://",
    ],
)
def test_malformed_url_raises_configuration_error_without_password(url: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        SqlStore.from_url(url)
    assert "s3cr3t-pw" not in str(caught.value)


@pytest.mark.parametrize("kind", ["postgres", "mysql"])
def test_server_urls_pick_their_dialect(request: pytest.FixtureRequest, kind: str) -> None:
    server: SqlServer = request.getfixturevalue(f"{kind}_server")
    store = open_store(server.url)
    try:
        assert store.kind == kind
    finally:
        store.close()


def test_repr_names_kind_and_database_only(sql_store: SqlStore) -> None:
    assert repr(sql_store).startswith(f"SqlStore(kind={sql_store.kind!r}, database=")


def test_datetime_column_sorts_in_time_order(
    backend: SqliteFile | SqlServer, sql_store: SqlStore
) -> None:
    for i, when in enumerate([datetime(2025, 1, 1, 0, 0, 0, 1), datetime(2024, 12, 31, 23)]):
        sql_store.create_user(user(f"u{i}", created_at=when.replace(tzinfo=T0.tzinfo)))
    rows = backend.query("SELECT id FROM kavach_users ORDER BY created_at")
    assert [row[0] for row in rows] == ["u1", "u0"]


def test_sqlite_reads_unfinished_deliveries_through_the_partial_index(tmp_path: Path) -> None:
    store = SqlStore.from_url(f"sqlite:///{tmp_path / 'kavach.db'}")
    try:
        statements = store._sql
        for sql, params in (
            (statements.list_unfinished_events_by_status, ("failed", 10, 0)),
            (statements.count_unfinished_events_by_status, ("failed",)),
        ):
            plan = store._db.execute_sql(f"EXPLAIN QUERY PLAN {sql}", params).fetchall()
            assert "kavach_polar_events_unfinished" in " ".join(str(row[-1]) for row in plan)
    finally:
        store.close()


def test_an_unchanged_mirror_is_not_rewritten(tmp_path: Path) -> None:
    """A newer version of a subscription that is not the user's most relevant one leaves
    the mirror as it is: the user's row is not written (one page less to fsync)."""
    store = SqlStore.from_url(f"sqlite:///{tmp_path / 'kavach.db'}")
    try:
        store.create_user(user("u1"))
        assert store.apply_subscription(state("sub_active", version=1))
        assert store.apply_subscription(state("sub_old", version=1, status="canceled"))
        mirrored = store.get_user("u1")
        assert mirrored is not None and mirrored.polar_subscription_id == "sub_active"
        statements: list[str] = []
        store._db.connection().set_trace_callback(statements.append)
        try:
            result = store.ingest_event(
                event("wh1"), state("sub_old", version=2, status="canceled")
            )
        finally:
            store._db.connection().set_trace_callback(None)
        assert result.applied is True
        assert store.get_user("u1") == mirrored
        assert not [s for s in statements if s.startswith("UPDATE kavach_users")]
        assert [s for s in statements if s.startswith("UPDATE kavach_polar_subscriptions")]
        assert store.apply_subscription(state("sub_active", version=2))  # it changes: written
        updated = store.get_user("u1")
        assert updated is not None and updated.polar_subscription_version == 2
    finally:
        store.close()


def test_a_new_delivery_is_ingested_with_six_statements(tmp_path: Path) -> None:
    """SQLite, the usual webhook (a new delivery, a newer state of a known subscription,
    a changed mirror): one query reads the user and the subscriptions, no inbox read."""
    store = SqlStore.from_url(f"sqlite:///{tmp_path / 'kavach.db'}")
    try:
        store.create_user(user("u1"))
        store.link_polar_customer("u1", "cus_1")
        assert store.apply_subscription(state(version=1, customer_id="cus_1"))
        statements: list[str] = []
        store._db.connection().set_trace_callback(statements.append)
        try:
            result = store.ingest_event(event("wh1"), state(version=2, customer_id="cus_1"))
        finally:
            store._db.connection().set_trace_callback(None)
        assert result.applied is True and result.created is True
        assert [" ".join(s.split()[:2]) for s in statements] == [
            "BEGIN IMMEDIATE",
            "SELECT u.polar_customer_id,",
            "UPDATE kavach_polar_subscriptions",
            "UPDATE kavach_users",
            "INSERT INTO",
            "COMMIT",
        ]
    finally:
        store.close()


def test_a_redelivery_is_rolled_back_and_ingested_as_a_retry(sql_store: SqlStore) -> None:
    """The first run takes every delivery for a new one and writes its state; a stored
    delivery rolls that back and is run again, reading it: a processed one keeps
    nothing of it, an unprocessed one has its state applied."""
    sql_store.create_user(user("u1"))
    sql_store.ingest_event(event("wh1", status="processed", processed_at=T0))
    duplicate = sql_store.ingest_event(event("wh1"), state(version=1, customer_id="cus_1"))
    assert duplicate.created is False and duplicate.applied is None
    assert sql_store.get_subscription("sub1") is None
    untouched = sql_store.get_user("u1")
    assert untouched is not None and untouched.polar_customer_id is None
    assert untouched.polar_subscription_version is None

    sql_store.ingest_event(event("wh2"))  # received, no state yet
    retry = sql_store.ingest_event(event("wh2"), state(version=1, customer_id="cus_1"))
    assert retry.created is False and retry.applied is True
    assert retry.event.attempts == 2 and retry.event.outcome == "applied"
    applied = sql_store.get_user("u1")
    assert applied is not None and applied.polar_customer_id == "cus_1"
    assert applied.polar_subscription_version == 1
    assert sql_store.count_events() == 2


def test_a_link_refused_by_the_unique_index_is_run_again(
    sql_store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A customer linked by another transaction between the check and the ``UPDATE``:
    the unique index refuses the link, the write is rolled back and run again, and the
    state is applied without it. (Simulated: the first check misses the other link.)"""
    sql_store.create_user(user("u1"))
    sql_store.create_user(user("u2"))
    sql_store.link_polar_customer("u2", "cus_1")
    real_check = sql_store._customer_to_link
    calls: list[str] = []

    def missing_the_link_once(s: Any, holder: Any) -> str | None:
        calls.append(s.id)
        return s.customer_id if len(calls) % 2 == 1 else real_check(s, holder)

    monkeypatch.setattr(sql_store, "_customer_to_link", missing_the_link_once)
    assert sql_store.apply_subscription(state("sub1", version=1, customer_id="cus_1"))
    result = sql_store.ingest_event(event("wh1"), state("sub2", version=1, customer_id="cus_1"))
    assert result.applied is True and result.created is True
    assert calls == ["sub1", "sub1", "sub2", "sub2"]
    unlinked = sql_store.get_user("u1")
    assert unlinked is not None and unlinked.polar_customer_id is None
    assert unlinked.polar_subscription_version == 1
    holder = sql_store.get_user_by_polar_customer("cus_1")
    assert holder is not None and holder.id == "u2"
    assert sql_store.get_event("wh1") is not None


def test_a_link_made_concurrently_elsewhere_wins(
    backend: SqliteFile | SqlServer, sql_store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another transaction links the customer while a state of it is applied: the state is
    applied, the customer stays with the other user. On PostgreSQL and MySQL the apply's
    ``UPDATE`` waits on the other's uncommitted link, is refused and run again; SQLite's
    ``BEGIN IMMEDIATE`` waits for the other's commit, then sees the link."""
    sql_store.create_user(user("u1"))
    sql_store.create_user(user("u2"))
    checks: list[str | None] = []
    real_check = sql_store._customer_to_link
    checked = threading.Event()

    def spied_check(s: Any, holder: Any) -> str | None:
        checks.append(real_check(s, holder))
        checked.set()
        return checks[-1]

    monkeypatch.setattr(sql_store, "_customer_to_link", spied_check)
    other = SqlStore.from_url(backend.url)
    linking = threading.Event()

    def link_slowly() -> None:
        with other._transaction():
            other._run(other._sql.update_user_customer, ("cus_1", "u2"))
            linking.set()
            if backend.kind != "sqlite":  # SQLite: the apply waits for this commit
                assert checked.wait(5)  # the apply missed the link: let it reach its UPDATE
            time.sleep(0.2)

    thread = threading.Thread(target=link_slowly)
    thread.start()
    try:
        assert linking.wait(5)
        assert sql_store.apply_subscription(state(version=1, customer_id="cus_1"))
    finally:
        thread.join()
        other.close()
    assert checks == ([None] if backend.kind == "sqlite" else ["cus_1", None])
    holder = sql_store.get_user_by_polar_customer("cus_1")
    assert holder is not None and holder.id == "u2"
    unlinked = sql_store.get_user("u1")
    assert unlinked is not None and unlinked.polar_customer_id is None
    assert unlinked.polar_subscription_version == 1


def test_a_deadlock_is_rolled_back_and_run_again(
    sql_store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two subscriptions swap holders at once: each write locks its subscription's new
    # holder, then (after the pause) its previous one — the other's order. The server
    # kills one as a deadlock; the store must run it again, not raise StoreError.
    if sql_store.kind == "sqlite":
        pytest.skip("SQLite serializes writers (BEGIN IMMEDIATE): no deadlock")
    sql_store.create_user(user("a"))
    sql_store.create_user(user("b"))
    sql_store.apply_subscription(state("S", user_id="a", version=1))
    sql_store.apply_subscription(state("T", user_id="b", version=1))
    read = SqlStore._read_subscriptions

    def slow_read(self: SqlStore, subscription: Any) -> Any:
        result = read(self, subscription)
        time.sleep(0.5)
        return result

    retried: list[bool] = []
    retryable = sql_module._is_retryable

    def recording(exc: BaseException) -> bool:
        retried.append(retryable(exc))
        return retried[-1]

    monkeypatch.setattr(SqlStore, "_read_subscriptions", slow_read)
    monkeypatch.setattr(sql_module, "_is_retryable", recording)
    results: dict[str, object] = {}

    def move(name: str, moved: SubscriptionState) -> None:
        try:
            results[name] = sql_store.apply_subscription(moved)
        except Exception as exc:
            results[name] = exc

    threads = [
        threading.Thread(target=move, args=("S", state("S", user_id="b", version=2))),
        threading.Thread(target=move, args=("T", state("T", user_id="a", version=2))),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {"S": True, "T": True}
    assert True in retried  # a deadlock happened, and was retried
    assert [s.id for s in sql_store.list_subscriptions("a")] == ["T"]
    assert [s.id for s in sql_store.list_subscriptions("b")] == ["S"]
