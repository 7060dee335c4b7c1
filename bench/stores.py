"""Store throughput: conditional writes and lookups per second, per backend and size.

    python bench/stores.py [--quick]

For each store (memory, json, sqlite; postgres and mysql when ``KAVACH_TEST_POSTGRES_URL``
/ ``KAVACH_TEST_MYSQL_URL`` are set) and each size (1k and 100k users; ``--quick``: 1k
and 10k) it measures, through the store API:

* writes/s: ``apply_subscription`` with a newer version and a changed row every call
  (SQLite skips byte-identical row writes, so nothing is ever written twice the same);
  the first call for a user inserts its subscription, later ones update it;
* lookups/s: ``get_user`` by a random id.

The baseline is a raw ``sqlite3`` loop on the same file with the same pragmas and the
same SQL statements the SQL store runs, without the store around them. Users are seeded
in bulk (straight into the snapshot or with multi-row INSERTs), not timed.
PostgreSQL and MySQL run in a private schema / database that is dropped afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kavach.records import SubscriptionState, UserRecord
from kavach.stores import SCHEMA_VERSION, Store, normalize_email
from kavach.stores._codec import to_json
from kavach.stores.jsonfile import SNAPSHOT_FORMAT, JsonFileStore
from kavach.stores.memory import MemoryStore
from kavach.stores.sql import SQLITE_PRAGMAS, SqlStore

T0 = datetime(2025, 1, 1, tzinfo=UTC)
STATUSES = ("active", "past_due", "trialing")
ORDER = ("raw sqlite3", "memory", "json", "sqlite", "postgres", "mysql")


def make_users(n: int) -> list[UserRecord]:
    return [
        UserRecord(
            id=f"user_{i:07d}",
            email=f"user{i}@example.com",
            name=f"User {i}",
            password_hash="$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA",
            created_at=T0,
        )
        for i in range(n)
    ]


def subscription(user_id: str, k: int) -> SubscriptionState:
    """The k-th write: always a newer version and a different row."""
    return SubscriptionState(
        id=f"sub_{user_id}",
        user_id=user_id,
        status=STATUSES[k % len(STATUSES)],
        product_id="prod_1",
        current_period_end=T0 + timedelta(days=30, microseconds=k),
        cancel_at_period_end=bool(k % 2),
        version=1_000_000 + k,
    )


def rate(operation: Callable[[int], object], seconds: float) -> float:
    """Calls per second of ``operation(k)`` for k = 0, 1, ... during ``seconds``."""
    k = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(50):
            operation(k)
            k += 1
        now = time.perf_counter()
        if now >= deadline:
            return k / (now - start)


# -- seeding ----------------------------------------------------------------------------


def seed_json(path: Path, users: list[UserRecord]) -> None:
    """Write a snapshot holding ``users`` (what the store itself writes on compaction)."""
    JsonFileStore(path).close()  # creates the files
    snapshot = {
        "format": SNAPSHOT_FORMAT,
        "schema_version": SCHEMA_VERSION,
        "generation": 1,
        "users": [to_json(u) for u in users],
        "sessions": [],
        "subscriptions": [],
        "events": [],
    }
    path.write_text(json.dumps(snapshot))


def seed_sql(store: SqlStore, users: list[UserRecord]) -> None:
    """Multi-row INSERTs of ``users``, 500 rows a statement, in one transaction."""
    database: Any = store._db
    columns = [*store._users.columns, "email_normalized"]
    row_marks = "(" + ", ".join([database.param] * len(columns)) + ")"
    with database.atomic():
        for start in range(0, len(users), 500):
            chunk = users[start : start + 500]
            params = [
                value
                for u in chunk
                for value in (*store._users.encode(u), normalize_email(u.email))
            ]
            database.execute_sql(
                f"INSERT INTO kavach_users ({', '.join(columns)}) VALUES "
                + ", ".join([row_marks] * len(chunk)),
                params,
            )


# -- the raw sqlite3 baseline ------------------------------------------------------------


def raw_sqlite_rates(
    path: Path, store: SqlStore, ids: list[str], seconds: float
) -> tuple[float, float]:
    """The SQL store's statements and pragmas, run straight on ``sqlite3``."""
    sql = store._sql
    connection = sqlite3.connect(path, isolation_level=None)
    for name, value in SQLITE_PRAGMAS:
        connection.execute(f"PRAGMA {name} = {value}")
    n = len(ids)
    offset = 10_000_000  # newer than anything the store wrote

    def write(k: int) -> None:
        user_id = ids[k % n]
        state = subscription(user_id, offset + k)
        row = store._subscriptions.encode(state)
        connection.execute("BEGIN IMMEDIATE")
        connection.execute(sql.lock_user, (user_id,)).fetchone()
        head = connection.execute(sql.lock_subscription_head, (state.id,)).fetchone()
        if head is None:
            connection.execute(sql.insert_subscription, row)
        elif head[1] < state.version:
            connection.execute(sql.update_subscription, [*row[1:], state.id])
        connection.execute(sql.select_user_subscriptions, (user_id,)).fetchall()
        mirror = (state.id, state.status, state.product_id, row[4], state.cancel_at_period_end)
        connection.execute(sql.update_user_mirror, (*mirror, state.version, user_id))
        connection.execute("COMMIT")

    lookups = [random.choice(ids) for _ in range(10_000)]

    def lookup(k: int) -> None:
        connection.execute(sql.select_user, (lookups[k % 10_000],)).fetchone()

    try:
        return rate(write, seconds), rate(lookup, seconds)
    finally:
        connection.close()


# -- private server databases --------------------------------------------------------------


@contextmanager
def private_database(kind: str, admin_url: str) -> Iterator[str]:
    """A throwaway PostgreSQL schema / MySQL database; yields a URL into it."""
    name = f"kavach_bench_{os.getpid()}"
    parts = urlsplit(admin_url)
    if kind == "postgres":
        import psycopg2

        connection: Any = psycopg2.connect(admin_url)
        connection.autocommit = True
        create, drop = f"CREATE SCHEMA {name}", f"DROP SCHEMA IF EXISTS {name} CASCADE"
        query = dict(parse_qsl(parts.query), options=f"-csearch_path={name}")
        url = urlunsplit(parts._replace(query=urlencode(query)))
    else:
        import pymysql

        connection = pymysql.connect(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 3306,
            user=parts.username or "root",
            password=parts.password or "",
            autocommit=True,
        )
        create, drop = f"CREATE DATABASE {name}", f"DROP DATABASE IF EXISTS {name}"
        url = urlunsplit(parts._replace(path=f"/{name}"))
    with connection.cursor() as cursor:
        cursor.execute(drop)
        cursor.execute(create)
    try:
        yield url
    finally:
        with connection.cursor() as cursor:
            cursor.execute(drop)
        connection.close()


# -- the run -------------------------------------------------------------------------------


def measure(store: Store, ids: list[str], seconds: float) -> tuple[float, float]:
    n = len(ids)
    lookups = [random.choice(ids) for _ in range(10_000)]
    writes = rate(lambda k: store.apply_subscription(subscription(ids[k % n], k)), seconds)
    reads = rate(lambda k: store.get_user(lookups[k % 10_000]), seconds)
    return writes, reads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1k and 10k users, shorter runs")
    args = parser.parse_args()
    sizes = (1_000, 10_000) if args.quick else (1_000, 100_000)
    seconds = 0.5 if args.quick else 2.0
    servers = [
        (kind, os.environ[env])
        for kind, env in (
            ("postgres", "KAVACH_TEST_POSTGRES_URL"),
            ("mysql", "KAVACH_TEST_MYSQL_URL"),
        )
        if os.environ.get(env)
    ]
    random.seed(1)
    rows: list[tuple[str, int, float, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            users = make_users(size)
            ids = [u.id for u in users]
            print(f"{size} users ...", file=sys.stderr)

            memory = MemoryStore()
            for u in users:
                memory.create_user(u)
            rows.append(("memory", size, *measure(memory, ids, seconds)))

            json_path = Path(tmp, f"bench-{size}.json")
            seed_json(json_path, users)
            json_store = JsonFileStore(json_path)
            rows.append(("json", size, *measure(json_store, ids, seconds)))
            json_store.close()

            sqlite_path = Path(tmp, f"bench-{size}.db")
            sqlite_store = SqlStore.from_url(f"sqlite:///{sqlite_path}")
            seed_sql(sqlite_store, users)
            rows.append(("sqlite", size, *measure(sqlite_store, ids, seconds)))
            raw = raw_sqlite_rates(sqlite_path, sqlite_store, ids, seconds)
            rows.append(("raw sqlite3", size, *raw))
            sqlite_store.close()

            for kind, admin_url in servers:
                with private_database(kind, admin_url) as url:
                    server_store = SqlStore.from_url(url)
                    seed_sql(server_store, users)
                    rows.append((kind, size, *measure(server_store, ids, seconds)))
                    server_store.close()

    baseline = {size: (w, r) for name, size, w, r in rows if name == "raw sqlite3"}
    rows.sort(key=lambda row: (row[1], ORDER.index(row[0])))
    print(
        f"{'store':<12} {'users':>7} {'writes/s':>10} {'vs raw':>7} {'lookups/s':>10} {'vs raw':>7}"
    )
    for name, size, writes, reads in rows:
        raw_writes, raw_reads = baseline[size]
        print(
            f"{name:<12} {size:>7} {writes:>10,.0f} {writes / raw_writes:>7.2f} "
            f"{reads:>10,.0f} {reads / raw_reads:>7.2f}"
        )


if __name__ == "__main__":
    main()
