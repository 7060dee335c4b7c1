# ruff: noqa: S608  (SQL is assembled from constant table and column names only; every
# value goes through the driver's placeholders.)
"""One SQL store for SQLite, PostgreSQL and MySQL/MariaDB, built on Peewee.

Tables (created on first open by versioned, idempotent migrations, see ``MIGRATIONS``):

``kavach_users``
    ``id``, ``email`` (as given), ``email_normalized`` (UNIQUE, see
    :func:`~kavach.stores.base.normalize_email`), ``name``, ``password_hash``,
    ``created_at``, ``polar_customer_id`` (UNIQUE, nullable) and the mirror of the user's
    most relevant subscription: ``polar_subscription_id``, ``polar_subscription_status``,
    ``polar_product_id``, ``polar_current_period_end``, ``polar_cancel_at_period_end``,
    ``polar_subscription_version`` (BIGINT).
``kavach_sessions``
    ``token_hash`` (PK), ``user_id``, ``created_at``, ``expires_at``, ``revoked_at``.
``kavach_polar_subscriptions``
    every :class:`~kavach.records.SubscriptionState` field; ``id`` PK, ``user_id`` indexed,
    ``version`` BIGINT (the ordering guard's key).
``kavach_polar_events``
    the webhook inbox, every :class:`~kavach.records.InboxEvent` field; ``webhook_id`` PK,
    ``payload`` TEXT (LONGTEXT on MySQL: bodies go up to 1 MiB); ``claimed_until``
    (nullable datetime, added by migration 2) is the lease of the request running the
    delivery's callback. Indexed on ``received_at`` and, for unfinished deliveries only
    (``status <> 'processed'``, a partial index since migration 3), on ``(status,
    received_at)``; MySQL, without partial indexes, indexes ``status``.
``kavach_schema``
    one row per applied migration: ``version``, ``applied_at``.

**Datetimes** are stored as *naive UTC*, so plain SQL shows readable times:
``TIMESTAMP`` on PostgreSQL, ``DATETIME(6)`` on MySQL, and on SQLite ``DATETIME``
columns holding the text ``YYYY-MM-DD HH:MM:SS.ffffff`` (always six fraction digits, so
text order is time order). They are read back as aware UTC datetimes with microseconds.
The supported range is MySQL's: years 1000 to 9999. Booleans are ``BOOLEAN`` on
PostgreSQL and 0/1 integers on SQLite and MySQL.

**SQLite durability.** Connections use WAL mode with ``synchronous=FULL`` and a 5 s
``busy_timeout``. In WAL mode, ``FULL`` fsyncs the log at every commit, so once a write
method returns, its transaction survives a power cut. ``NORMAL`` would skip that fsync:
still never corrupt, but a power loss could roll back the last few commits — including a
webhook kavach already acknowledged to Polar, which Polar would then never redeliver. The
fsync costs throughput (see ``bench/stores.py``), and kavach pays it. Write transactions
start with ``BEGIN IMMEDIATE``, so writers queue on the busy timeout instead of failing
on a lock upgrade; other processes may use the same file.

**Hot paths** (``get_user``, ``get_session``, ``apply_subscription``, ``ingest_event``,
``record_event``, ``finish_event`` — in fact every method) run hand-written SQL on the
cursor of the Peewee database's connection (what ``database.execute_sql`` does, without
its query logging: the ``peewee`` logger does not show them): building a Peewee query
costs ~100 µs, the prepared statement ~5 µs. Peewee is used for connections,
transactions, error classes and the schema (models bound to this store's own database;
there is no global ``db``).

**The conditional write** (``apply_subscription``) is one transaction: lock the user
row (``SELECT ... FOR UPDATE``), read the stored version of the subscription with a
locking read and the user's other subscriptions (unlocked: only transactions holding the
user's lock add or remove them), insert the subscription if absent (``INSERT ... ON
CONFLICT DO NOTHING`` / MySQL ``ON DUPLICATE KEY UPDATE id = id``) or update it only when
strictly newer, then recompute the user's mirror columns from all their subscriptions and
mark the inbox event ``applied``. On SQLite, where ``BEGIN IMMEDIATE`` already serializes
writers and no row is locked, one query reads the user row and the subscriptions. The
mirror ``UPDATE`` also links the user to the state's Polar customer (``polar_customer_id``)
when the user has none and no other user holds that customer (one indexed read, run only
then); if another transaction links it first (PostgreSQL, MySQL: the unique index refuses
the ``UPDATE``), the transaction is rolled back and run again. Connections run at READ
COMMITTED (set per connection on PostgreSQL and MySQL), so reads after a lock see the
latest committed rows. It holds with several processes on one database. A transaction
that hits a deadlock or serialization failure is retried (up to 3 times).

**Webhook ingest** (``ingest_event``) runs the same steps in one transaction with the
inbox row — one commit, so one fsync on SQLite. It first takes the delivery for a new
one (the usual case) and reads no inbox row: lock the user row, do the conditional write
(shared code with ``apply_subscription``), then insert the inbox row if absent. If the
row exists (a redelivery, or another transaction inserted it meanwhile), the transaction
is rolled back and run again reading it: lock the user row, lock the inbox row (``SELECT
... FOR UPDATE``), do the conditional write if still due, then update the inbox row. A
row found (under that lock) with an unexpired ``claimed_until`` is in flight elsewhere:
nothing is written. Lock order: the user row always first; the inbox row after the
subscription rows on the first run (as ``apply_subscription`` with a ``webhook_id``),
before them on the rerun. Two transactions could only deadlock over that with two copies
of one delivery applied to different users at once; the deadlock would be retried.

Connections are per thread (Peewee's default), opened lazily. An in-memory SQLite
database (``sqlite://:memory:``) has a single connection shared by all threads, with
calls serialized by a lock. Open stores after forking worker processes.
"""

from __future__ import annotations

import functools
import logging
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from datetime import UTC, datetime
from operator import attrgetter
from typing import Any, Concatenate, Generic, Literal, NamedTuple, ParamSpec, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

import attrs
import peewee

from kavach.errors import (
    ConfigurationError,
    ConflictError,
    EmailTakenError,
    NotFoundError,
    StoreCorruptError,
    StoreError,
    UserNotFoundError,
)
from kavach.records import (
    InboxEvent,
    IngestResult,
    SessionRecord,
    SubscriptionState,
    UserRecord,
)
from kavach.stores import _rules
from kavach.stores._codec import (
    BOOL_FIELDS,
    DATETIME_FIELDS,
    FIELD_NAMES,
    KEY_FIELDS,
    PLAIN_FIELD_TYPES,
    as_utc,
    utc_record,
)
from kavach.stores._urls import file_path, redacted
from kavach.stores.base import SCHEMA_VERSION, legacy_email_key, normalize_email

Dialect = Literal["sqlite", "postgres", "mysql"]

_log = logging.getLogger("kavach.stores")
#: The ``email_normalized`` column's width (VARCHAR(255)).
_EMAIL_KEY_LENGTH = 255
USERS = "kavach_users"
SESSIONS = "kavach_sessions"
SUBSCRIPTIONS = "kavach_polar_subscriptions"
EVENTS = "kavach_polar_events"
SCHEMA = "kavach_schema"

#: SQLite pragmas run on every connection the store uses.
SQLITE_PRAGMAS = (
    ("busy_timeout", "5000"),
    ("journal_mode", "WAL"),
    ("synchronous", "FULL"),
)
#: How long (seconds) to keep trying to switch a new SQLite file to WAL.
WAL_SWITCH_TIMEOUT = 5.0
#: How often a transaction that deadlocked is tried in all.
_ATTEMPTS = 3
_PG_RETRY_CODES = frozenset({"40P01", "40001"})  # deadlock_detected, serialization_failure
_MYSQL_DEADLOCK = 1213
#: Driver packages whose exceptions are database errors (Peewee wraps most, not all).
_DRIVER_MODULES = frozenset({"sqlite3", "psycopg2", "psycopg", "pymysql", "MySQLdb"})

R = TypeVar("R", UserRecord, SessionRecord, SubscriptionState, InboxEvent)
P = ParamSpec("P")
T = TypeVar("T")


# -- values in and out of SQL ----------------------------------------------------------


_fromisoformat = datetime.fromisoformat


def _sqlite_datetime_in(value: datetime) -> str:
    # An aware UTC datetime's ISO text always ends in "+00:00": drop it (naive UTC text).
    # Positional arguments: isoformat parses keywords ~0.6 µs slower (7 per webhook).
    return as_utc(value).isoformat(" ", "microseconds")[:-6]


def _sqlite_datetime_out(value: str) -> datetime:
    return _fromisoformat(value + "+00:00")  # ~4x faster than .replace(tzinfo=UTC)


def _naive_utc_in(value: datetime) -> datetime:
    return as_utc(value).replace(tzinfo=None)


def _naive_utc_out(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC)


#: Turns driver exceptions into Peewee's classes: the wrapper ``Database.execute_sql``
#: uses (Peewee's type stubs do not declare it).
_PEEWEE_ERRORS: AbstractContextManager[None] = peewee.__exception_wrapper__  # type: ignore[attr-defined]


#: How to encode some fields of a record: a getter of their values, and the
#: (position, encoder) pairs of those that need converting.
_EncodePlan = tuple[Callable[[Any], Sequence[Any]], tuple[tuple[int, Callable[[Any], Any]], ...]]


class _RowCodec(Generic[R]):
    """Record <-> row of its table's columns (same names and order as the attrs fields)."""

    def __init__(self, cls: type[R], dialect: Dialect) -> None:
        self.cls: type[R] = cls
        self.columns = FIELD_NAMES[cls]
        datetimes, bools = DATETIME_FIELDS[cls], BOOL_FIELDS[cls]
        dt_in: Callable[[datetime], Any] = (
            _sqlite_datetime_in if dialect == "sqlite" else _naive_utc_in
        )
        dt_out: Callable[[Any], datetime] = (
            _sqlite_datetime_out if dialect == "sqlite" else _naive_utc_out
        )
        self.encoders: dict[str, Callable[[Any], Any] | None] = {
            name: dt_in if name in datetimes else None for name in self.columns
        }
        self._plans: dict[tuple[str, ...] | None, _EncodePlan] = {}
        # Only the columns that need converting, as (position, converter): rows are
        # decoded on every read, so skip the columns that come back as they are.
        self._decoders: tuple[tuple[int, Callable[[Any], Any]], ...] = tuple(
            (i, dt_out if name in datetimes else bool)
            for i, name in enumerate(self.columns)
            if name in datetimes or name in bools
        )
        # The text and integer columns, which come back as they are, with their type: a
        # value of another type (a BLOB in a text column is ``bytes``) is refused.
        plain = PLAIN_FIELD_TYPES[cls]
        self._typed: tuple[tuple[int, type[Any]], ...] = tuple(
            (i, plain[name]) for i, name in enumerate(self.columns) if name in plain
        )
        self._key_field = KEY_FIELDS[cls]
        self._key_position = self.columns.index(self._key_field)

    def decode(self, row: Sequence[Any]) -> R:
        """The record a ``SELECT`` of :attr:`columns` returned.

        A value kavach cannot read back as its field's type (written by something else
        than kavach, or by hand: a BLOB payload, a time that is not one) raises
        ``StoreCorruptError`` naming the record and the column, never the value."""
        values = list(row)
        if len(values) != len(self.columns):
            raise StoreCorruptError(f"a {self.cls.__name__} row has {len(values)} columns")
        for i, expected in self._typed:
            value = values[i]
            if type(value) is not expected and value is not None:
                raise self._unreadable(values, i)
        for i, convert in self._decoders:
            if values[i] is not None:
                try:
                    values[i] = convert(values[i])
                except (ValueError, TypeError, OverflowError):
                    raise self._unreadable(values, i) from None
        record: R = self.cls(*values)
        return record

    def _unreadable(self, values: Sequence[Any], position: int) -> StoreCorruptError:
        """The error for column ``position`` of a row: its record type, the row's key
        (a session's user, not its token hash) and the column, never the value (it may be
        a hash or a token's)."""
        key = values[self._key_position]
        if position == self._key_position or type(key) is not str:
            key = None
        return self.unreadable(key, self.columns[position], values[position])

    def unreadable(self, key: str | None, column: str, value: Any) -> StoreCorruptError:
        """The error for a ``column`` holding ``value`` in the row of ``key`` (``None``:
        a row that cannot be named), read with this codec or without it."""
        name = self.cls.__name__
        row = f"a {name} row" if key is None else f"the {name} row of {self._key_field} {key!r}"
        return StoreCorruptError(
            f"{row} holds an unreadable {column!r} value ({type(value).__name__})"
        )

    def value(self, name: str, value: Any) -> Any:
        """One field's value as a query parameter."""
        encoder = self.encoders[name]
        return value if encoder is None or value is None else encoder(value)

    def encode(self, record: R, names: tuple[str, ...] | None = None) -> list[Any]:
        """Query parameters for ``names`` (default: all :attr:`columns`) of ``record``."""
        plan = self._plans.get(names)
        if plan is None:
            plan = self._plans[names] = self._plan(names or self.columns)
        get_values, encoders = plan
        values = list(get_values(record))
        for i, encode in encoders:
            if values[i] is not None:
                values[i] = encode(values[i])
        return values

    def _plan(self, names: tuple[str, ...]) -> _EncodePlan:
        """How :meth:`encode` reads ``names`` (one C call) and which positions it converts."""
        many = attrgetter(*names)
        get_values = many if len(names) > 1 else lambda record: (many(record),)
        encoders = tuple(
            (i, encoder)
            for i, name in enumerate(names)
            if (encoder := self.encoders[name]) is not None
        )
        return get_values, encoders


# -- SQL --------------------------------------------------------------------------------


@attrs.frozen
class _Statements:
    """Every statement the store runs, written once per dialect."""

    lock_suffix: str
    select_user: str
    lock_user: str
    lock_user_mirror: str
    lock_user_with_subscriptions: str
    select_user_by_email: str
    select_user_by_customer: str
    insert_user: str
    user_id_taken: str
    email_taken: str
    customer_taken: str
    update_user_profile: str
    update_user_email_key: str
    update_user_customer: str
    update_user_mirror: str
    update_user_mirror_and_customer: str
    count_users: str
    insert_session: str
    select_session: str
    revoke_session: str
    delete_expired_sessions: str
    select_subscription: str
    lock_subscription_head: str
    insert_subscription: str
    update_subscription: str
    update_subscription_same_holder: str
    select_user_subscriptions: str
    select_other_subscriptions: str
    mark_event_applied: str
    insert_event: str
    select_event: str
    lock_event: str
    update_event: str
    list_events: str
    list_events_by_status: str
    list_unfinished_events_by_status: str
    count_events: str
    count_events_by_status: str
    count_unfinished_events_by_status: str
    schema_version: str


_SUBSCRIPTION_UPDATE_COLUMNS = tuple(c for c in FIELD_NAMES[SubscriptionState] if c != "id")
#: The same without ``user_id``, for the usual update that keeps the holder: naming an
#: indexed column in ``SET`` makes SQLite rewrite its index entry even when the value is
#: unchanged (one more page to write and fsync per webhook).
_SUBSCRIPTION_SAME_HOLDER_COLUMNS = tuple(
    c for c in _SUBSCRIPTION_UPDATE_COLUMNS if c != "user_id"
)
#: The ``kavach_users`` columns a conditional write reads under the holder's lock.
_HOLDER_COLUMNS = ("polar_customer_id", *_rules.MIRROR_FIELDS)
#: Where ``version`` is in a row of the subscription columns (``FIELD_NAMES`` order).
_SUBSCRIPTION_VERSION = FIELD_NAMES[SubscriptionState].index("version")
#: The condition of the inbox's partial index (migration 3): deliveries not processed yet.
_UNFINISHED = "status <> 'processed'"
_UNFINISHED_INDEX = f"{EVENTS}_unfinished"
_EVENT_UPDATE_COLUMNS = (
    "status",
    "outcome",
    "attempts",
    "processed_at",
    "last_error",
    "user_id",
    "subscription_id",
    "claimed_until",
)


def _statements(dialect: Dialect, p: str) -> _Statements:
    """The SQL for ``dialect``; ``p`` is the driver's placeholder (``?`` or ``%s``)."""

    def cols(names: Iterable[str]) -> str:
        return ", ".join(names)

    def marks(n: int) -> str:
        return ", ".join([p] * n)

    def assign(names: Sequence[str]) -> str:
        return ", ".join(f"{name} = {p}" for name in names)

    def insert_if_absent(table: str, names: Sequence[str], key: str) -> str:
        insert = f"INSERT INTO {table} ({cols(names)}) VALUES ({marks(len(names))})"
        if dialect == "mysql":
            return f"{insert} ON DUPLICATE KEY UPDATE {key} = {key}"
        return f"{insert} ON CONFLICT ({key}) DO NOTHING"

    lock = "" if dialect == "sqlite" else " FOR UPDATE"
    # Order ids by code point everywhere (PostgreSQL's default collation is locale-aware).
    by_id = 'webhook_id COLLATE "C"' if dialect == "postgres" else "webhook_id"
    user_cols = FIELD_NAMES[UserRecord]
    session_cols = FIELD_NAMES[SessionRecord]
    sub_cols = FIELD_NAMES[SubscriptionState]
    event_cols = FIELD_NAMES[InboxEvent]
    select_users = f"SELECT {cols(user_cols)} FROM {USERS}"
    select_events = f"SELECT {cols(event_cols)} FROM {EVENTS}"
    newest_first = f"ORDER BY received_at DESC, {by_id} DESC LIMIT {p} OFFSET {p}"
    return _Statements(
        lock_suffix=lock,
        select_user=f"{select_users} WHERE id = {p}",
        lock_user=f"{select_users} WHERE id = {p}{lock}",
        lock_user_mirror=f"SELECT {cols(_HOLDER_COLUMNS)} FROM {USERS} WHERE id = {p}{lock}",
        # SQLite only (it locks no rows): the same, with the rows of a subscription and
        # of the user's subscriptions; one row with NULL subscription columns if none.
        lock_user_with_subscriptions=(
            f"SELECT {cols('u.' + c for c in _HOLDER_COLUMNS)}, "
            f"{cols('s.' + c for c in sub_cols)} FROM {USERS} u "
            f"LEFT JOIN {SUBSCRIPTIONS} s ON s.id = {p} OR s.user_id = u.id WHERE u.id = {p}"
        ),
        select_user_by_email=f"{select_users} WHERE email_normalized = {p}",
        select_user_by_customer=f"{select_users} WHERE polar_customer_id = {p}",
        insert_user=(
            f"INSERT INTO {USERS} ({cols(user_cols)}, email_normalized) "
            f"VALUES ({marks(len(user_cols) + 1)})"
        ),
        user_id_taken=f"SELECT 1 FROM {USERS} WHERE id = {p}",
        email_taken=f"SELECT 1 FROM {USERS} WHERE email_normalized = {p}",
        customer_taken=f"SELECT 1 FROM {USERS} WHERE polar_customer_id = {p}",
        update_user_profile=(
            f"UPDATE {USERS} SET {assign(('email', 'name', 'password_hash'))} WHERE id = {p}"
        ),
        update_user_email_key=f"UPDATE {USERS} SET email_normalized = {p} WHERE id = {p}",
        update_user_customer=f"UPDATE {USERS} SET polar_customer_id = {p} WHERE id = {p}",
        update_user_mirror=f"UPDATE {USERS} SET {assign(_rules.MIRROR_FIELDS)} WHERE id = {p}",
        update_user_mirror_and_customer=(
            f"UPDATE {USERS} SET {assign((*_rules.MIRROR_FIELDS, 'polar_customer_id'))} "
            f"WHERE id = {p}"
        ),
        count_users=f"SELECT COUNT(*) FROM {USERS}",
        insert_session=(
            f"INSERT INTO {SESSIONS} ({cols(session_cols)}) VALUES ({marks(len(session_cols))})"
        ),
        select_session=f"SELECT {cols(session_cols)} FROM {SESSIONS} WHERE token_hash = {p}",
        revoke_session=(
            f"UPDATE {SESSIONS} SET revoked_at = {p} WHERE token_hash = {p} AND revoked_at IS NULL"
        ),
        delete_expired_sessions=f"DELETE FROM {SESSIONS} WHERE expires_at < {p}",
        select_subscription=f"SELECT {cols(sub_cols)} FROM {SUBSCRIPTIONS} WHERE id = {p}",
        lock_subscription_head=(
            f"SELECT user_id, version FROM {SUBSCRIPTIONS} WHERE id = {p}{lock}"
        ),
        insert_subscription=insert_if_absent(SUBSCRIPTIONS, sub_cols, "id"),
        update_subscription=(
            f"UPDATE {SUBSCRIPTIONS} SET {assign(_SUBSCRIPTION_UPDATE_COLUMNS)} WHERE id = {p}"
        ),
        update_subscription_same_holder=(
            f"UPDATE {SUBSCRIPTIONS} SET {assign(_SUBSCRIPTION_SAME_HOLDER_COLUMNS)} "
            f"WHERE id = {p}"
        ),
        select_user_subscriptions=(
            f"SELECT {cols(sub_cols)} FROM {SUBSCRIPTIONS} WHERE user_id = {p}"
        ),
        select_other_subscriptions=(
            f"SELECT {cols(sub_cols)} FROM {SUBSCRIPTIONS} WHERE user_id = {p} AND id <> {p}"
        ),
        mark_event_applied=(
            f"UPDATE {EVENTS} SET outcome = {p}, user_id = {p}, subscription_id = {p} "
            f"WHERE webhook_id = {p}"
        ),
        insert_event=insert_if_absent(EVENTS, event_cols, "webhook_id"),
        select_event=f"{select_events} WHERE webhook_id = {p}",
        lock_event=f"{select_events} WHERE webhook_id = {p}{lock}",
        update_event=f"UPDATE {EVENTS} SET {assign(_EVENT_UPDATE_COLUMNS)} WHERE webhook_id = {p}",
        list_events=f"{select_events} {newest_first}",
        list_events_by_status=f"{select_events} WHERE status = {p} {newest_first}",
        # The same with the condition of the partial index on unfinished deliveries
        # (migration 3), so SQLite and PostgreSQL can use it.
        list_unfinished_events_by_status=(
            f"{select_events} WHERE status = {p} AND {_UNFINISHED} {newest_first}"
        ),
        count_events=f"SELECT COUNT(*) FROM {EVENTS}",
        count_events_by_status=f"SELECT COUNT(*) FROM {EVENTS} WHERE status = {p}",
        count_unfinished_events_by_status=(
            f"SELECT COUNT(*) FROM {EVENTS} WHERE status = {p} AND {_UNFINISHED}"
        ),
        schema_version=f"SELECT MAX(version) FROM {SCHEMA}",
    )


# -- schema -----------------------------------------------------------------------------


@attrs.frozen
class _Models:
    """The Peewee models of one store, bound to its database; used for DDL only."""

    schema: Any
    users: Any
    sessions: Any
    subscriptions: Any
    events: Any
    #: The column type of datetimes (naive UTC) in this dialect.
    timestamp_type: str


#: Datetime column types: naive UTC (SQLite: ``YYYY-MM-DD HH:MM:SS.ffffff`` text).
_TIMESTAMP_TYPES: dict[Dialect, str] = {
    "sqlite": "DATETIME",
    "postgres": "TIMESTAMP",
    "mysql": "DATETIME(6)",
}


def _define_models(db: peewee.Database, dialect: Dialect, table_settings: list[str]) -> _Models:
    """Model classes bound to ``db``, with the column types ``dialect`` needs. They are
    the version-1 tables; later migrations alter them (see ``MIGRATIONS``)."""
    long_text_type = "LONGTEXT" if dialect == "mysql" else "TEXT"

    class UtcDateTimeField(peewee.Field):
        """Naive UTC; the store converts values itself."""

        field_type = _TIMESTAMP_TYPES[dialect]

    class LongTextField(peewee.Field):
        """Up to 1 MiB of text (MySQL's TEXT stops at 64 KiB)."""

        field_type = long_text_type

    def text_id(**kwargs: Any) -> peewee.CharField:
        return peewee.CharField(max_length=255, **kwargs)

    settings = table_settings or None

    class Base(peewee.Model):
        class Meta:
            database = db
            legacy_table_names = False
            table_settings = settings

    class SchemaVersion(Base):
        version = peewee.IntegerField(primary_key=True)
        applied_at = UtcDateTimeField()

        class Meta:
            table_name = SCHEMA

    class User(Base):
        id = text_id(primary_key=True)
        email = text_id()
        email_normalized = text_id(unique=True)
        name = peewee.TextField(null=True)
        password_hash = peewee.TextField(null=True)
        created_at = UtcDateTimeField()
        polar_customer_id = text_id(null=True, unique=True)
        polar_subscription_id = text_id(null=True)
        polar_subscription_status = text_id(null=True)
        polar_product_id = text_id(null=True)
        polar_current_period_end = UtcDateTimeField(null=True)
        polar_cancel_at_period_end = peewee.BooleanField(null=True)
        polar_subscription_version = peewee.BigIntegerField(null=True)

        class Meta:
            table_name = USERS

    class Session(Base):
        token_hash = text_id(primary_key=True)
        user_id = text_id(index=True)
        created_at = UtcDateTimeField()
        expires_at = UtcDateTimeField(index=True)
        revoked_at = UtcDateTimeField(null=True)

        class Meta:
            table_name = SESSIONS

    class Subscription(Base):
        id = text_id(primary_key=True)
        user_id = text_id(index=True)
        status = text_id()
        product_id = text_id(null=True)
        current_period_end = UtcDateTimeField(null=True)
        cancel_at_period_end = peewee.BooleanField()
        version = peewee.BigIntegerField()
        customer_id = text_id(null=True)
        created_at = UtcDateTimeField(null=True)
        started_at = UtcDateTimeField(null=True)
        current_period_start = UtcDateTimeField(null=True)
        trial_end = UtcDateTimeField(null=True)
        canceled_at = UtcDateTimeField(null=True)
        ends_at = UtcDateTimeField(null=True)
        ended_at = UtcDateTimeField(null=True)
        past_due_at = UtcDateTimeField(null=True)
        checkout_id = text_id(null=True)
        amount = peewee.BigIntegerField(null=True)
        currency = text_id(null=True)
        recurring_interval = text_id(null=True)

        class Meta:
            table_name = SUBSCRIPTIONS

    class Event(Base):
        webhook_id = text_id(primary_key=True)
        event_type = text_id()
        received_at = UtcDateTimeField(index=True)
        payload = LongTextField()
        status = text_id(index=True)  # SQLite, PostgreSQL: replaced by migration 3
        outcome = text_id(null=True)
        attempts = peewee.IntegerField()
        processed_at = UtcDateTimeField(null=True)
        last_error = LongTextField(null=True)
        user_id = text_id(null=True)
        subscription_id = text_id(null=True)
        # claimed_until: added by _migrate_to_v2.

        class Meta:
            table_name = EVENTS

    return _Models(
        schema=SchemaVersion,
        users=User,
        sessions=Session,
        subscriptions=Subscription,
        events=Event,
        timestamp_type=_TIMESTAMP_TYPES[dialect],
    )


def _ensure_tables(db: Any, models: Sequence[Any]) -> None:
    """Create the missing tables and indexes of ``models``; safe to run again after a crash
    half-way (MySQL DDL is not transactional, and it has no ``CREATE INDEX IF NOT EXISTS``)."""
    tables = set(db.get_tables())
    for model in models:
        name = model._meta.table_name
        if name not in tables:
            model._schema.create_table(safe=True)
        present = {index.name for index in db.get_indexes(name)}
        for index in model._meta.fields_to_index():
            if index._name not in present:
                db.execute(model._schema._create_index(index, safe=False))


def _migrate_to_v1(db: Any, models: _Models) -> None:
    """Version 1: users, sessions, subscriptions and the webhook inbox."""
    _ensure_tables(db, [models.users, models.sessions, models.subscriptions, models.events])


def _add_column(db: Any, table: str, column: str, definition: str) -> None:
    """``ALTER TABLE table ADD COLUMN column definition`` unless the column exists (MySQL
    DDL is not transactional: a step that crashed half-way is run again)."""
    if any(existing.name == column for existing in db.get_columns(table)):
        return
    db.execute_sql(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")


def _migrate_to_v2(db: Any, models: _Models) -> None:
    """Version 2: ``kavach_polar_events.claimed_until``, the in-flight claim (lease) of a
    delivery whose callback is running (NULL: unclaimed)."""
    _add_column(db, EVENTS, "claimed_until", f"{models.timestamp_type} NULL")


def _migrate_to_v3(db: Any, models: _Models) -> None:
    """Version 3: on SQLite and PostgreSQL, a partial index on ``kavach_polar_events
    (status, received_at)`` covering only unfinished deliveries (``status <>
    'processed'``) replaces the index on ``status``, which every delivery paid for (one
    more page to write per webhook on SQLite) and only the inbox commands read. Listing or
    counting *processed* deliveries scans the inbox (in ``received_at`` order) instead.
    MySQL has no partial indexes: it keeps the index on ``status``."""
    if _dialect_of(db) == "mysql":
        return
    db.execute_sql(
        f"CREATE INDEX IF NOT EXISTS {_UNFINISHED_INDEX} ON {EVENTS} (status, received_at) "
        f"WHERE {_UNFINISHED}"
    )
    db.execute_sql(f"DROP INDEX IF EXISTS {EVENTS}_status")


def _migrate_to_v4(db: Any, models: _Models) -> None:
    """Version 4: ``email_normalized`` as :func:`normalize_email` now computes it (NFKC
    before case folding). A user whose key changes gets the new one, unless another user
    already holds it — two accounts the new rule takes for one address: the one whose key
    would change keeps its old key (it can no longer be found by email) and a warning
    names both."""
    param = db.param
    for user_id, email, stored in _users_oldest_first(db):
        key = normalize_email(email)
        if key == stored:
            continue
        if len(key) > _EMAIL_KEY_LENGTH:  # NFKC can lengthen it past the column
            _log.warning(
                "schema v4: user %s's normalized email would exceed %d characters; it keeps "
                "its old key", user_id, _EMAIL_KEY_LENGTH,
            )
            continue
        holder = db.execute_sql(
            f"SELECT id FROM {USERS} WHERE email_normalized = {param}", (key,)
        ).fetchone()
        if holder is not None:
            _log.warning(
                "schema v4: user %s has the same normalized email as user %s; it keeps its "
                "old key", user_id, holder[0],
            )
            continue
        db.execute_sql(
            f"UPDATE {USERS} SET email_normalized = {param} WHERE id = {param}", (key, user_id)
        )


def _lookup_key(email: str) -> str:
    """The ``email_normalized`` to look ``email`` up by: :func:`normalize_email`, unless
    that is longer than the column. No address made since schema 4 has such a key
    (``validate_email`` refuses it); a user from before it kept the key schema 3 gave
    (case folding alone: see :func:`_migrate_to_v4`), and is found by that one."""
    key = normalize_email(email)
    if len(key) > _EMAIL_KEY_LENGTH:
        return legacy_email_key(email)
    return key


#: How many users a migration reads per query (its memory stays bounded on big tables).
_MIGRATION_BATCH = 5000


def _users_oldest_first(db: Any) -> Iterator[tuple[str, str, str]]:
    """Every user's ``id``, ``email`` and ``email_normalized``, by ``created_at`` then
    ``id``, read :data:`_MIGRATION_BATCH` rows at a time (keyset paging: each page starts
    after the last row of the one before, so rows updated meanwhile are neither skipped
    nor read twice)."""
    param = db.param
    columns = f"SELECT id, email, email_normalized, created_at FROM {USERS}"
    order = f"ORDER BY created_at, id LIMIT {_MIGRATION_BATCH}"
    rows = db.execute_sql(f"{columns} {order}").fetchall()
    while rows:
        for user_id, email, stored, _ in rows:
            yield user_id, email, stored
        if len(rows) < _MIGRATION_BATCH:
            return
        last_id, _, _, last_created = rows[-1]
        rows = db.execute_sql(
            f"{columns} WHERE created_at > {param} OR (created_at = {param} AND id > {param}) "
            f"{order}",
            (last_created, last_created, last_id),
        ).fetchall()


#: Schema migrations, in order: (version it brings the schema to, step). Each step is
#: idempotent. Add a step (and bump ``SCHEMA_VERSION``) for every schema change.
MIGRATIONS: tuple[tuple[int, Callable[[Any, _Models], None]], ...] = (
    (1, _migrate_to_v1),
    (2, _migrate_to_v2),
    (3, _migrate_to_v3),
    (4, _migrate_to_v4),
)


# -- the store --------------------------------------------------------------------------


_Method = Callable[Concatenate["SqlStore", P], T]


def _guarded(method: _Method[P, T]) -> _Method[P, T]:
    """Run a store method on a ready connection; retry deadlocks; database errors ->
    ``StoreError`` (kavach's own errors pass through)."""

    def guarded(self: SqlStore, /, *args: P.args, **kwargs: P.kwargs) -> T:
        with self._serial:
            for attempt in range(1, _ATTEMPTS + 1):
                try:
                    self._ready()
                    return method(self, *args, **kwargs)
                except Exception as exc:
                    if not _is_database_error(exc):
                        raise
                    self._recover()
                    if attempt < _ATTEMPTS and _is_retryable(exc) and not self._db.in_transaction():
                        continue
                    raise StoreError(f"{self.kind} store: {_driver_error(exc)}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    functools.update_wrapper(guarded, method)
    return guarded


def _driver_error(exc: BaseException) -> BaseException:
    """The driver's exception inside a Peewee one: its ``orig`` (Peewee 3.17+ moves the
    driver's exception there), else its first argument (older Peewee), else the
    exception it was raised while handling."""
    if not isinstance(exc, peewee.PeeweeException):
        return exc
    orig = getattr(exc, "orig", None)
    if isinstance(orig, Exception):
        return orig
    if exc.args and isinstance(exc.args[0], Exception):
        return exc.args[0]
    if isinstance(exc.__context__, Exception):
        return exc.__context__
    return exc


def _is_database_error(exc: BaseException) -> bool:
    if isinstance(exc, peewee.PeeweeException):
        return True
    return type(exc).__module__.partition(".")[0] in _DRIVER_MODULES


def _is_retryable(exc: BaseException) -> bool:
    """A deadlock or serialization failure: the transaction was rolled back, run it again."""
    error = _driver_error(exc)
    if getattr(error, "pgcode", None) in _PG_RETRY_CODES:
        return True
    args = getattr(error, "args", ())
    return type(error).__module__.startswith(("pymysql", "MySQLdb")) and bool(
        args and args[0] == _MYSQL_DEADLOCK
    )


class _Raced(Exception):
    """A write met a row another transaction wrote after this one read: the transaction
    is rolled back and run again (after reading that row)."""


class _EventRaced(_Raced):
    """The inbox row ``ingest_event`` took for absent exists."""


class _LinkRaced(_Raced):
    """Another transaction linked the Polar customer a conditional write was linking."""


class _Holder(NamedTuple):
    """What a conditional write read as it locked the holder's (``state.user_id``'s) row."""

    #: The row's ``_HOLDER_COLUMNS`` (``polar_customer_id``, then the mirror columns).
    row: Sequence[Any]
    #: SQLite only: the subscription columns of the state's subscription and of the
    #: user's subscriptions (``None``: not read yet).
    subscriptions: list[Sequence[Any]] | None


class _WeakrefableSqliteConnection(sqlite3.Connection):
    """A ``sqlite3.Connection`` the store can keep a weak reference to (to close it)."""


class SqlStore:
    """A :class:`~kavach.stores.base.Store` on SQLite, PostgreSQL or MySQL/MariaDB.

    ``SqlStore(database)`` takes a Peewee database (``SqliteDatabase``,
    ``PostgresqlDatabase``, ``MySQLDatabase`` or a subclass) and owns it from then on:
    the store sets its connections up (pragmas, isolation level), runs migrations on
    open and closes the connections in :meth:`close`. :meth:`from_url` builds one from
    a URL. ``kind`` is ``"sqlite"``, ``"postgres"`` or ``"mysql"``.
    """

    def __init__(self, database: peewee.Database) -> None:
        self._dialect = _dialect_of(database)
        self.kind: str = self._dialect
        self._db: Any = database  # Peewee's stubs leave most methods untyped.
        self._sql = _statements(self._dialect, database.param)
        self._users = _RowCodec(UserRecord, self._dialect)
        self._sessions = _RowCodec(SessionRecord, self._dialect)
        self._subscriptions = _RowCodec(SubscriptionState, self._dialect)
        self._events = _RowCodec(InboxEvent, self._dialect)
        self._begin = {"lock_type": "IMMEDIATE"} if self._dialect == "sqlite" else {}
        # One connection shared by all threads (in-memory SQLite): serialize the calls.
        self._serial: AbstractContextManager[Any] = (
            nullcontext() if database.thread_safe else threading.RLock()
        )
        self._local = threading.local()  # the connection this thread last set up
        self._connections: weakref.WeakSet[Any] = weakref.WeakSet()  # to close them all
        self._connections_lock = threading.Lock()
        self._closed = False
        self._migrate()

    @classmethod
    def from_url(cls, url: str) -> SqlStore:
        """Open ``sqlite:///relative.db``, ``sqlite:////abs.db``, ``sqlite://:memory:``,
        ``postgresql://user:pw@host:5432/db`` (or ``postgres://``) or
        ``mysql://user:pw@host:3306/db``. Query parameters are passed to the driver
        (``?sslmode=require``, ``?options=-csearch_path%3Dapp``). Error messages never
        show the password."""
        database = _database_from_url(url)
        try:
            return cls(database)
        except StoreError as exc:
            raise StoreError(f"cannot open {redacted(url)}: {exc}") from exc

    def __repr__(self) -> str:
        return f"SqlStore(kind={self.kind!r}, database={self._db.database!r})"

    # -- connections and transactions ----------------------------------------------------
    def _ready(self) -> None:
        """Make sure this thread has an open, set-up connection."""
        if self._closed:
            raise StoreError(f"the {self.kind} store is closed")
        connection = self._db.connection()
        if getattr(self._local, "connection", None) is not connection:
            self._set_up(connection)
            self._local.connection = connection

    def _set_up(self, connection: Any) -> None:
        """Per-connection settings, run once on each new connection."""
        if self.kind == "sqlite":
            for name, value in SQLITE_PRAGMAS:
                if name == "journal_mode":
                    self._enable_wal()
                else:
                    self._db.execute_sql(f"PRAGMA {name} = {value}")
        elif self.kind == "postgres":
            self._db.execute_sql(
                "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ COMMITTED"
            )
        else:
            self._db.execute_sql("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
        with self._connections_lock, suppress(TypeError):  # plain sqlite3.Connection: no weakref
            self._connections.add(connection)

    def _enable_wal(self) -> None:
        """Switch a SQLite database to WAL. Switching needs an exclusive lock, and SQLite
        answers "database is locked" at once, without waiting on the busy timeout, while
        another process has the file open in the middle of its own first open; so retry
        for up to the busy timeout."""
        deadline = time.monotonic() + WAL_SWITCH_TIMEOUT
        while True:
            try:
                self._db.execute_sql("PRAGMA journal_mode = WAL")
                return
            except peewee.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def _recover(self) -> None:
        """After a database error: drop this thread's connection if it is broken."""
        with suppress(Exception):
            if not self._db.in_transaction() and not self._db.is_connection_usable():
                self._db.close()

    def _transaction(self) -> Any:
        """A write transaction (``BEGIN IMMEDIATE`` on SQLite)."""
        return self._db.atomic(**self._begin)

    def _run(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Run one statement on this thread's connection and return its cursor: what
        ``database.execute_sql`` does, minus its query logging and hooks (~1 µs less per
        statement; a webhook runs 6). Driver errors are raised as Peewee's classes
        (``peewee.IntegrityError``...) by Peewee's own wrapper, as ``execute_sql`` does."""
        try:
            with _PEEWEE_ERRORS:
                cursor = self._db.connection().cursor()
                cursor.execute(sql, params)
        except (ValueError, OverflowError) as exc:
            # A parameter the driver cannot bind: NUL in text on PostgreSQL, an integer
            # beyond 64 bits, a lone surrogate (UnicodeEncodeError). Peewee's and the
            # drivers' database errors are not ValueErrors: they pass as they are.
            raise StoreError(f"{self.kind} store cannot keep a value: {exc}") from exc
        return cursor

    def _one(self, sql: str, params: Sequence[Any]) -> Sequence[Any] | None:
        row: Sequence[Any] | None = self._run(sql, params).fetchone()
        return row

    def _count(self, sql: str, params: Sequence[Any] = ()) -> int:
        row = self._one(sql, params)
        return int(row[0]) if row is not None and row[0] is not None else 0

    # -- lifecycle ----------------------------------------------------------------------
    def _migrate(self) -> None:
        """Bring the schema to ``SCHEMA_VERSION``; concurrent openers wait for each other."""
        with self._serial:
            try:
                self._ready()
                if self._stored_version() != SCHEMA_VERSION:
                    with self._migration_lock():
                        self._run_migrations()
            except Exception as exc:
                if not _is_database_error(exc):
                    raise
                raise StoreError(f"{self.kind} store: {_driver_error(exc)}") from exc

    def _stored_version(self) -> int:
        """The version in ``kavach_schema`` (0 when the table does not exist)."""
        if SCHEMA not in self._db.get_tables():
            return 0
        version = self._count(self._sql.schema_version)
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"the database has schema version {version}, newer than this kavach "
                f"supports ({SCHEMA_VERSION}); upgrade kavach"
            )
        return version

    @contextmanager
    def _migration_lock(self) -> Iterator[None]:
        """Serialize migrations across processes."""
        if self.kind == "mysql":  # DDL commits implicitly: use a named server lock
            name = "kavach_migrate"
            acquired = self._one("SELECT GET_LOCK(CONCAT(%s, DATABASE()), 60)", (name,))
            if not acquired or acquired[0] != 1:
                raise StoreError("timed out waiting for another process's migration")
            try:
                yield
            finally:
                self._run("SELECT RELEASE_LOCK(CONCAT(%s, DATABASE()))", (name,))
        else:
            with self._transaction():
                if self.kind == "postgres":  # DDL is transactional; SQLite's BEGIN IMMEDIATE locks
                    self._run("SELECT pg_advisory_xact_lock(%s)", (0x6B61766163680001,))
                yield

    def _run_migrations(self) -> None:
        models = _define_models(self._db, self._dialect, self._table_settings())
        _ensure_tables(self._db, [models.schema])
        current = self._stored_version()
        for version, step in MIGRATIONS:
            if version > current:
                step(self._db, models)
                if version == 4 and current > 0:
                    self._recompute_mirrors()
                self._run(
                    f"INSERT INTO {SCHEMA} (version, applied_at) VALUES ({self._db.param}, "
                    f"{self._db.param})",
                    (version, self._users.value("created_at", datetime.now(UTC))),
                )

    def _recompute_mirrors(self) -> None:
        """Schema 4 changed the relevance rule (an ending subscription no longer hides a
        renewing one): every user holding two or more subscriptions gets the mirror
        columns it now picks. (Part of the v4 migration, under its lock; it needs the
        store's codecs, so it is a method.)"""
        held = self._run(
            f"SELECT user_id FROM {SUBSCRIPTIONS} GROUP BY user_id HAVING COUNT(*) > 1"
        ).fetchall()
        for (user_id,) in held:
            with self._transaction():
                holder = self._one(self._sql.lock_user_mirror, (user_id,))
                if holder is not None:
                    self._write_mirror(user_id, holder)

    def _table_settings(self) -> list[str]:
        """MySQL: utf8mb4 with a binary, no-pad collation, so ids compare exactly as in
        Python (the server default is case-insensitive and ignores trailing spaces)."""
        if self.kind != "mysql":
            return []
        row = self._one("SELECT VERSION()", ())
        version = str(row[0]).lower() if row else ""
        if "mariadb" in version:
            collation = "utf8mb4_nopad_bin"
        elif version[:1].isdigit() and int(version.split(".")[0]) >= 8:
            collation = "utf8mb4_0900_bin"
        else:
            collation = "utf8mb4_bin"
        return ["ENGINE=InnoDB", "DEFAULT CHARSET=utf8mb4", f"COLLATE={collation}"]

    @_guarded
    def schema_version(self) -> int:
        """The schema version recorded in ``kavach_schema``."""
        return self._count(self._sql.schema_version)

    def close(self) -> None:
        """Close every connection the store opened (all threads). Idempotent."""
        with self._serial:
            if self._closed:
                return
            self._closed = True
            with self._connections_lock:
                connections = list(self._connections)
            for connection in connections:
                with suppress(Exception):
                    connection.close()
            with suppress(Exception):
                self._db.close()

    # -- users --------------------------------------------------------------------------
    @_guarded
    def create_user(self, user: UserRecord) -> UserRecord:
        """Insert a user; see :meth:`kavach.stores.base.Store.create_user`."""
        user = utc_record(user)
        try:
            self._run(
                self._sql.insert_user, [*self._users.encode(user), normalize_email(user.email)]
            )
        except peewee.IntegrityError as exc:
            raise self._user_conflict(user) from exc
        return user

    def _user_conflict(self, user: UserRecord) -> Exception:
        """Which unique rule refused ``user`` (checked in the memory store's order)."""
        if self._one(self._sql.user_id_taken, (user.id,)):
            return ConflictError(f"a user with id {user.id!r} already exists", field="id")
        if self._one(self._sql.email_taken, (normalize_email(user.email),)):
            return EmailTakenError(user.email)
        if user.polar_customer_id is not None and self._one(
            self._sql.customer_taken, (user.polar_customer_id,)
        ):
            return ConflictError(
                f"Polar customer {user.polar_customer_id!r} is linked to another user",
                field="polar_customer_id",
            )
        return StoreError(f"could not insert user {user.id!r}")

    @_guarded
    def get_user(self, user_id: str) -> UserRecord | None:
        """The user with this id, or ``None``."""
        row = self._one(self._sql.select_user, (user_id,))
        return None if row is None else self._users.decode(row)

    @_guarded
    def get_user_by_email(self, email: str) -> UserRecord | None:
        """Case-insensitive lookup by email."""
        row = self._one(self._sql.select_user_by_email, (_lookup_key(email),))
        return None if row is None else self._users.decode(row)

    @_guarded
    def get_user_by_polar_customer(self, customer_id: str) -> UserRecord | None:
        """The user linked to this Polar customer id, or ``None``."""
        row = self._one(self._sql.select_user_by_customer, (customer_id,))
        return None if row is None else self._users.decode(row)

    @_guarded
    def update_user(
        self,
        user_id: str,
        *,
        email: str | None = None,
        name: str | None = None,
        password_hash: str | None = None,
        if_password_hash: str | None = None,
    ) -> UserRecord:
        """Change the given fields; see :meth:`kavach.stores.base.Store.update_user`."""
        try:
            with self._transaction():
                row = self._one(self._sql.lock_user, (user_id,))
                if row is None:
                    raise UserNotFoundError(user_id)
                user = self._users.decode(row)
                if if_password_hash is not None and user.password_hash != if_password_hash:
                    return user  # changed meanwhile: leave it (see the protocol)
                updated = attrs.evolve(
                    user,
                    email=user.email if email is None else email,
                    name=user.name if name is None else name,
                    password_hash=user.password_hash if password_hash is None else password_hash,
                )
                if updated != user:
                    self._run(
                        self._sql.update_user_profile,
                        (updated.email, updated.name, updated.password_hash, user_id),
                    )
                if updated.email != user.email:  # else the stored key stays as it is
                    self._run(
                        self._sql.update_user_email_key, (normalize_email(updated.email), user_id)
                    )
        except peewee.IntegrityError as exc:
            raise EmailTakenError(email or "") from exc
        return updated

    @_guarded
    def link_polar_customer(self, user_id: str, customer_id: str) -> UserRecord:
        """Set the user's Polar customer id; see the protocol for the rules."""
        try:
            with self._transaction():
                row = self._one(self._sql.lock_user, (user_id,))
                if row is None:
                    raise UserNotFoundError(user_id)
                user = self._users.decode(row)
                if user.polar_customer_id == customer_id:
                    return user
                self._run(self._sql.update_user_customer, (customer_id, user_id))
        except peewee.IntegrityError as exc:
            raise ConflictError(
                f"Polar customer {customer_id!r} is linked to another user",
                field="polar_customer_id",
            ) from exc
        return attrs.evolve(user, polar_customer_id=customer_id)

    @_guarded
    def count_users(self) -> int:
        """How many users there are."""
        return self._count(self._sql.count_users)

    # -- sessions -----------------------------------------------------------------------
    @_guarded
    def create_session(self, session: SessionRecord) -> None:
        """Insert a session; ``ConflictError`` on a duplicate token hash."""
        try:
            self._run(self._sql.insert_session, self._sessions.encode(utc_record(session)))
        except peewee.IntegrityError as exc:
            raise ConflictError(
                "a session with this token hash already exists", field="token_hash"
            ) from exc

    @_guarded
    def get_session(self, token_hash: str) -> SessionRecord | None:
        """The session, expired or revoked ones included."""
        row = self._one(self._sql.select_session, (token_hash,))
        return None if row is None else self._sessions.decode(row)

    @_guarded
    def revoke_session(self, token_hash: str, at: datetime) -> bool:
        """Mark the session revoked; ``True`` when it was not revoked yet (expired or not)."""
        revoked_at = self._sessions.value("revoked_at", as_utc(at))
        cursor = self._run(self._sql.revoke_session, (revoked_at, token_hash))
        return bool(cursor.rowcount == 1)

    @_guarded
    def delete_expired_sessions(self, now: datetime) -> int:
        """Remove sessions that expired before ``now``; returns how many."""
        cutoff = self._sessions.value("expires_at", as_utc(now))
        return int(self._run(self._sql.delete_expired_sessions, (cutoff,)).rowcount)

    # -- Polar subscriptions ------------------------------------------------------------
    @_guarded
    def apply_subscription(
        self, state: SubscriptionState, *, webhook_id: str | None = None
    ) -> bool:
        """THE conditional write; see :meth:`kavach.stores.base.Store.apply_subscription`
        and the module docstring for how it locks."""
        state = utc_record(state)
        for _ in range(_ATTEMPTS):
            try:
                with self._transaction():
                    return self._apply(state, webhook_id)
            except _LinkRaced:  # rolled back; the customer is linked now: run it again
                continue
        raise StoreError(f"subscription {state.id!r}: its customer kept changing mid-write")

    def _apply(self, state: SubscriptionState, webhook_id: str | None) -> bool:
        """The inside of :meth:`apply_subscription`'s transaction."""
        holder = self._lock_holder(state)
        if not self._write_state(state, holder):
            return False
        if webhook_id is not None:
            self._run(
                self._sql.mark_event_applied, ("applied", state.user_id, state.id, webhook_id)
            )
        return True

    def _lock_user(self, user_id: str) -> Sequence[Any]:
        """Lock the user's row for this transaction; ``UserNotFoundError`` if there is none.
        Returns the row's ``_HOLDER_COLUMNS``: ``polar_customer_id``, then the stored
        mirror columns (as :meth:`_write_mirror` writes them)."""
        row = self._one(self._sql.lock_user_mirror, (user_id,))
        if row is None:
            raise UserNotFoundError(user_id)
        return row

    def _lock_holder(self, state: SubscriptionState) -> _Holder:
        """Lock ``state.user_id``'s row, as :meth:`_lock_user`, before a conditional write
        of ``state``. SQLite, which locks no rows (``BEGIN IMMEDIATE`` serializes
        writers), reads the subscription rows :meth:`_write_state` needs in the same
        query (one statement less per webhook); PostgreSQL and MySQL read them in
        :meth:`_write_state`, locking the subscription's row."""
        if self._dialect != "sqlite":
            return _Holder(self._lock_user(state.user_id), None)
        rows = self._run(
            self._sql.lock_user_with_subscriptions, (state.id, state.user_id)
        ).fetchall()
        if not rows:
            raise UserNotFoundError(state.user_id)
        width = len(_HOLDER_COLUMNS)
        # A user without subscriptions comes back as one row of NULL subscription columns.
        subscriptions = [row[width:] for row in rows if row[width] is not None]
        return _Holder(rows[0][:width], subscriptions)

    def _write_state(self, state: SubscriptionState, holder: _Holder) -> bool:
        """The conditional write, inside a transaction that holds ``state.user_id``'s lock
        (``holder``: what :meth:`_lock_holder` read): store ``state`` and recompute the
        mirrors if it is newer than the stored version, linking the holder to the state's
        customer when it has none (see :meth:`_customer_to_link`)."""
        sql = self._sql
        if holder.subscriptions is None:
            head, others = self._read_subscriptions(state)
        else:
            head, others = self._split_subscriptions(state, holder.subscriptions)
        if head is None:
            inserted = self._run(sql.insert_subscription, self._subscriptions.encode(state))
            if inserted.rowcount != 1:  # another transaction inserted it just now
                head = self._one(sql.lock_subscription_head, (state.id,))
                if head is None:
                    raise StoreError(f"subscription {state.id!r} vanished mid-write")
        previous_user = previous_holder = None
        if head is not None:
            previous_user, stored_version = head
            # Read without the codec: checked as it checks.
            if type(previous_user) is not str:
                raise self._subscriptions.unreadable(state.id, "user_id", previous_user)
            if type(stored_version) is not int:
                raise self._subscriptions.unreadable(state.id, "version", stored_version)
            if stored_version >= state.version:
                return False
            if previous_user != state.user_id:  # it moved: lock its previous holder too
                previous_holder = self._one(sql.lock_user_mirror, (previous_user,))
                params = self._subscriptions.encode(state, _SUBSCRIPTION_UPDATE_COLUMNS)
                self._run(sql.update_subscription, [*params, state.id])
            else:
                params = self._subscriptions.encode(state, _SUBSCRIPTION_SAME_HOLDER_COLUMNS)
                self._run(sql.update_subscription_same_holder, [*params, state.id])
        others.append(state)
        link = self._customer_to_link(state, holder.row)
        self._write_mirror(state.user_id, holder.row, others, link=link)
        if previous_user is not None and previous_user != state.user_id:
            self._write_mirror(previous_user, previous_holder)
        return True

    def _read_subscriptions(
        self, state: SubscriptionState
    ) -> tuple[Sequence[Any] | None, list[SubscriptionState]]:
        """For :meth:`_write_state` on PostgreSQL and MySQL: the stored ``(user_id,
        version)`` of ``state``'s subscription (``None`` if absent), read with a locking
        read, and the other subscriptions of ``state.user_id`` (stable while its row is
        locked: every transaction that adds or removes one holds that lock). Only the
        subscription's own row is locked: ``FOR UPDATE`` on the user's others could
        deadlock with a transaction moving one of them away, which locks that row before
        this user's."""
        head = self._one(self._sql.lock_subscription_head, (state.id,))
        rows = self._run(self._sql.select_other_subscriptions, (state.user_id, state.id))
        return head, [self._subscriptions.decode(row) for row in rows]

    def _split_subscriptions(
        self, state: SubscriptionState, rows: list[Sequence[Any]]
    ) -> tuple[Sequence[Any] | None, list[SubscriptionState]]:
        """What :meth:`_read_subscriptions` returns, from the subscription rows SQLite read
        with the holder's row (``state``'s subscription, the user's others)."""
        head = None
        others = []
        for row in rows:
            if row[0] == state.id:  # columns: id, user_id, ..., version (FIELD_NAMES order)
                head = (row[1], row[_SUBSCRIPTION_VERSION])
            else:
                others.append(self._subscriptions.decode(row))
        return head, others

    def _customer_to_link(self, state: SubscriptionState, holder: Sequence[Any]) -> str | None:
        """The Polar customer to link ``state``'s holder to as ``state`` is applied: its
        ``customer_id`` when the holder (``holder``: its locked row, customer first) may
        take it (:func:`~kavach.stores._rules.links_customer`) and no other user holds
        it; else ``None`` (an existing link is kept). The "held by another user" read
        only runs when a link is about to be made."""
        customer = state.customer_id
        if not _rules.links_customer(holder[0], customer):
            return None
        if self._one(self._sql.customer_taken, (customer,)) is not None:
            return None
        return customer

    def _write_mirror(
        self,
        user_id: str,
        holder: Sequence[Any] | None,
        states: list[SubscriptionState] | None = None,
        *,
        link: str | None = None,
    ) -> None:
        """Recompute ``user_id``'s mirror columns (inside the write transaction) from
        ``states``, all its subscriptions (read when not given), and write them unless
        they equal the stored ones (``holder``: the row's :meth:`_lock_user` columns, read
        under its lock): an unchanged row is not rewritten. ``link``, when given, is
        written as the row's ``polar_customer_id`` in the same statement."""
        if states is None:
            rows = self._run(self._sql.select_user_subscriptions, (user_id,)).fetchall()
            states = [self._subscriptions.decode(row) for row in rows]
        mirror = _rules.mirror_values(states)
        params = [self._users.value(name, mirror[name]) for name in _rules.MIRROR_FIELDS]
        if link is not None:
            try:
                self._run(self._sql.update_user_mirror_and_customer, [*params, link, user_id])
            except peewee.IntegrityError as exc:
                # Another transaction linked this customer since _customer_to_link read it
                # (PostgreSQL, MySQL). Not handled here (PostgreSQL has aborted the
                # transaction): the caller rolls back and runs the write again.
                raise _LinkRaced from exc
            return
        if holder is not None and list(holder[1:]) == params:
            return
        self._run(self._sql.update_user_mirror, [*params, user_id])

    @_guarded
    def get_subscription(self, subscription_id: str) -> SubscriptionState | None:
        """The stored state of one subscription, or ``None``."""
        row = self._one(self._sql.select_subscription, (subscription_id,))
        return None if row is None else self._subscriptions.decode(row)

    @_guarded
    def list_subscriptions(self, user_id: str) -> list[SubscriptionState]:
        """The user's subscriptions, most relevant first."""
        rows = self._run(self._sql.select_user_subscriptions, (user_id,)).fetchall()
        return _rules.by_relevance([self._subscriptions.decode(row) for row in rows])

    # -- webhook inbox ------------------------------------------------------------------
    @_guarded
    def record_event(self, event: InboxEvent) -> tuple[InboxEvent, bool]:
        """Record a delivery; see :meth:`kavach.stores.base.Store.record_event`."""
        event = utc_record(event)
        with self._transaction():
            if self._run(self._sql.insert_event, self._events.encode(event)).rowcount == 1:
                return event, True
            row = self._one(self._sql.lock_event, (event.webhook_id,))
            if row is None:
                raise StoreError(f"webhook event {event.webhook_id!r} vanished mid-write")
            stored = self._events.decode(row)
            again = _rules.redelivered(stored)
            if again is None:
                return stored, False
            self._write_event(again)
            return again, False

    @_guarded
    def ingest_event(
        self, event: InboxEvent, state: SubscriptionState | None = None
    ) -> IngestResult:
        """Record a delivery and apply its state in one transaction; see
        :meth:`kavach.stores.base.Store.ingest_event` and the module docstring for how it
        locks. The first attempt takes the delivery for a new one (the usual case) and
        reads no inbox row; if the row exists, it rolls back and runs again, reading it."""
        event = utc_record(event)
        if state is not None:
            state = utc_record(state)
        for attempt in range(_ATTEMPTS):
            try:
                with self._transaction():
                    return self._ingest(event, state, read_event=attempt > 0)
            except _Raced:  # rolled back; run it again, now reading the inbox row first
                continue
        raise StoreError(f"webhook event {event.webhook_id!r} kept changing mid-write")

    def _ingest(
        self, event: InboxEvent, state: SubscriptionState | None, *, read_event: bool
    ) -> IngestResult:
        """The inside of :meth:`ingest_event`'s transaction. Without ``read_event``, the
        delivery is taken for a new one, inserted last if absent: ``_EventRaced`` when its
        row is there after all."""
        sql = self._sql
        holder = None
        if state is not None:
            holder = self._lock_holder(state)
        stored = None
        if read_event:
            row = self._one(sql.lock_event, (event.webhook_id,))
            stored = None if row is None else self._events.decode(row)
            if stored is not None and stored.status == "processed":
                return IngestResult(stored, created=False, applied=None, duplicate=True)
            if _rules.in_flight(stored, event.received_at):  # read under the row lock
                assert stored is not None
                return IngestResult(stored, created=False, applied=None, in_flight=True)
        applied: bool | None = None
        if state is not None and _rules.ingest_applies(stored):
            assert holder is not None
            applied = self._write_state(state, holder)
        written = _rules.ingested(event, stored, state, applied)
        if stored is not None:
            self._write_event(written)
        elif self._run(sql.insert_event, self._events.encode(written)).rowcount != 1:
            raise _EventRaced  # the row exists (inserted since the read, if there was one)
        return IngestResult(written, created=stored is None, applied=applied)

    def _write_event(self, event: InboxEvent) -> None:
        params = self._events.encode(event, _EVENT_UPDATE_COLUMNS)
        self._run(self._sql.update_event, [*params, event.webhook_id])

    @_guarded
    def finish_event(
        self,
        webhook_id: str,
        *,
        status: str,
        at: datetime,
        outcome: str | None = None,
        error: str | None = None,
        user_id: str | None = None,
        subscription_id: str | None = None,
    ) -> InboxEvent:
        """Finish a delivery; see :meth:`kavach.stores.base.Store.finish_event`."""
        with self._transaction():
            row = self._one(self._sql.lock_event, (webhook_id,))
            if row is None:
                raise NotFoundError(f"no webhook event with id {webhook_id!r}")
            done = _rules.finished(
                self._events.decode(row),
                status=status,
                at=at,
                outcome=outcome,
                error=error,
                user_id=user_id,
                subscription_id=subscription_id,
            )
            self._write_event(done)
        return done

    @_guarded
    def get_event(self, webhook_id: str) -> InboxEvent | None:
        """The inbox event with this webhook id, or ``None``."""
        row = self._one(self._sql.select_event, (webhook_id,))
        return None if row is None else self._events.decode(row)

    @_guarded
    def list_events(
        self, *, status: str | None = None, limit: int = 100, offset: int = 0
    ) -> Sequence[InboxEvent]:
        """Newest first (by ``received_at``, then ``webhook_id``)."""
        _rules.check_page(limit, offset)
        if status is None:
            cursor = self._run(self._sql.list_events, (limit, offset))
        elif status == "processed":
            cursor = self._run(self._sql.list_events_by_status, (status, limit, offset))
        else:  # the partial index's rows
            cursor = self._run(self._sql.list_unfinished_events_by_status, (status, limit, offset))
        return [self._events.decode(row) for row in cursor.fetchall()]

    @_guarded
    def count_events(self, *, status: str | None = None) -> int:
        """How many inbox events (with ``status``, when given)."""
        if status is None:
            return self._count(self._sql.count_events)
        if status == "processed":
            return self._count(self._sql.count_events_by_status, (status,))
        return self._count(self._sql.count_unfinished_events_by_status, (status,))


# -- opening by URL ---------------------------------------------------------------------


def _dialect_of(database: peewee.Database) -> Dialect:
    if isinstance(database, peewee.SqliteDatabase):
        return "sqlite"
    if isinstance(database, peewee.PostgresqlDatabase):
        return "postgres"
    if isinstance(database, peewee.MySQLDatabase):
        return "mysql"
    raise ConfigurationError(
        f"SqlStore supports SQLite, PostgreSQL and MySQL databases, not {type(database).__name__}",
        field="database",
    )


def _driver_options(query: str) -> dict[str, Any]:
    """URL query parameters as driver keyword arguments (digits become ints)."""
    return {k: int(v) if v.isdigit() else v for k, v in parse_qsl(query, keep_blank_values=True)}


def _database_from_url(url: str) -> peewee.Database:
    scheme, sep, _ = url.partition("://")
    scheme = scheme.lower()
    if not sep:
        raise ConfigurationError(f"not a database URL: {redacted(url)!r}", field="database")
    if scheme == "sqlite":
        path = file_path(url)
        if not path:
            raise ConfigurationError("sqlite:// URL needs a file path", field="database")
        if path == ":memory:":  # one connection, shared by all threads
            return peewee.SqliteDatabase(path, thread_safe=False, check_same_thread=False)
        return peewee.SqliteDatabase(
            path, factory=_WeakrefableSqliteConnection, check_same_thread=False
        )
    if scheme not in ("postgres", "postgresql", "mysql", "mariadb", "mysql+pymysql"):
        raise ConfigurationError(
            f"unknown SQL URL scheme {scheme!r} in {redacted(url)!r}", field="database"
        )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigurationError(
            f"malformed database URL {redacted(url)!r}: bad port", field="database"
        ) from exc
    name = unquote(parts.path.lstrip("/"))
    if not name:
        raise ConfigurationError(
            f"database URL {redacted(url)!r} names no database", field="database"
        )
    options: dict[str, Any] = {"connect_timeout": 10}
    if parts.hostname:
        options["host"] = unquote(parts.hostname)
    if port is not None:
        options["port"] = port
    if parts.username:
        options["user"] = unquote(parts.username)
    if parts.password is not None:
        options["password"] = unquote(parts.password)
    options.update(_driver_options(parts.query))
    if scheme in ("postgres", "postgresql"):
        return peewee.PostgresqlDatabase(name, **options)
    return peewee.MySQLDatabase(name, **options)
