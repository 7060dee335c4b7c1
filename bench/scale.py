"""Growth: what one ``get_subscription`` and one webhook ingest cost at 1k, 10k, 100k users.

    python bench/scale.py [--quick] [--full] [--stores memory,json,sqlite,postgres,mysql]

For each store (memory, json, sqlite; postgres and mysql when ``KAVACH_TEST_POSTGRES_URL``
/ ``KAVACH_TEST_MYSQL_URL`` are set) and each size (1k, 10k, 100k users; ``--quick``: 1k
and 10k; ``--full``: SQLite also at 1M), the store is seeded with that many users, each
holding one active subscription and one processed inbox event (so every table and index
has the size), then, through the public API only:

* ``plugin.get_subscription(user_id)`` for random users;
* ``plugin.handle_webhook(body, headers)`` for pre-signed ``subscription.updated``
  deliveries (a full 2.7 KB Polar payload, a newer version of a random user's
  subscription: verify, parse, inbox, match, guarded write — the applied path).

It prints the median and p99 cost per operation and the growth ratio of the median from
the smallest size to 100k (and to 1M with ``--full``). The median, because the ingest
cost is dominated by fsync, whose outliers on a shared disk swamp a mean.
Target: SQL and JSON stores within 2x from 1k to 100k.

Seeding is not timed and goes around kavach: the JSON snapshot is written directly in
the store's documented file format; SQL rows are bulk-inserted with the driver
(``sqlite3.executemany``, ``psycopg2.extras.execute_values``, ``pymysql.executemany``)
into the tables kavach created. PostgreSQL and MySQL run in a private schema / database,
dropped afterwards. The "RAM" column is the growth of this process's resident memory
while the store was seeded and opened (meaningful for memory and json, which hold
everything in RAM; approximate).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

# Run as a script, put the repository root on sys.path (for ``kavach`` and ``tests``).
_BENCH = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _BENCH]
sys.path.insert(0, str(_BENCH.parent))

from kavach import PasswordHasher, create_kavach  # noqa: E402
from kavach.auth import polar  # noqa: E402
from kavach.polar.webhooks import sign_webhook  # noqa: E402
from kavach.records import InboxEvent, SubscriptionState, UserRecord  # noqa: E402
from kavach.stores import SCHEMA_VERSION, normalize_email, open_store  # noqa: E402
from kavach.stores._codec import to_json  # noqa: E402
from kavach.stores.jsonfile import SNAPSHOT_FORMAT  # noqa: E402
from tests.polar_plugin.payloads import envelope, subscription  # noqa: E402

SECRET = "whsec_" + "c2NhbGUtYmVuY2gtc2VjcmV0LTMyLWJ5dGVzLWxvbmc="
T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
T_SEED = T0 + timedelta(days=1)  # the seeded subscriptions' modified_at
T_NEW = T0 + timedelta(days=20)  # the measured deliveries are newer
ORDER = ("memory", "json", "sqlite", "postgres", "mysql")
SERVER_ENVS = {"postgres": "KAVACH_TEST_POSTGRES_URL", "mysql": "KAVACH_TEST_MYSQL_URL"}


def version_of(moment: datetime) -> int:
    return int((moment - datetime(1970, 1, 1, tzinfo=UTC)) / timedelta(microseconds=1))


# -- the seeded records ----------------------------------------------------------------------


def user_id(i: int) -> str:
    return f"u{i:07d}"


def records(i: int) -> tuple[UserRecord, SubscriptionState, InboxEvent]:
    """User ``i``, their active subscription (mirrored on the user row) and one event."""
    uid, sub, cus = user_id(i), f"sub_{i:07d}", f"cus_{i:07d}"
    period_end = T_SEED + timedelta(days=30)
    version = version_of(T_SEED)
    user = UserRecord(
        id=uid, email=f"user{i}@example.com", name=None, password_hash=None, created_at=T0,
        polar_customer_id=cus, polar_subscription_id=sub, polar_subscription_status="active",
        polar_product_id="prod_1", polar_current_period_end=period_end,
        polar_cancel_at_period_end=False, polar_subscription_version=version,
    )
    state = SubscriptionState(
        id=sub, user_id=uid, status="active", product_id="prod_1",
        current_period_end=period_end, cancel_at_period_end=False, version=version,
        customer_id=cus, created_at=T0,
    )
    event = InboxEvent(
        webhook_id=f"seed-{i:07d}", event_type="subscription.updated", received_at=T_SEED,
        payload="{}", status="processed", outcome="applied", processed_at=T_SEED,
        user_id=uid, subscription_id=sub,
    )
    return user, state, event


# -- seeding ------------------------------------------------------------------------------------


def seed_memory(store: Any, size: int) -> None:
    """The memory store has no file: seed it through its own API."""
    for i in range(size):
        user, state, event = records(i)
        store.create_user(user)
        store.apply_subscription(state)
        store.record_event(event)


def seed_json(path: Path, size: int) -> None:
    """Write the snapshot file (the format ``kavach.stores.jsonfile`` documents)."""
    users, states, events = [], [], []
    for i in range(size):
        user, state, event = records(i)
        users.append(json.dumps(to_json(user)))
        states.append(json.dumps(to_json(state)))
        events.append(json.dumps(to_json(event)))
    head = (f'{{\n"format": "{SNAPSHOT_FORMAT}",\n"schema_version": {SCHEMA_VERSION},\n'
            f'"generation": 1,\n"sessions": []')
    with open(path, "w", encoding="utf-8") as file:
        file.write(head)
        for name, rows in (("users", users), ("subscriptions", states), ("events", events)):
            file.write(f',\n"{name}": [\n' + ",\n".join(rows) + "\n]")
        file.write("\n}\n")


def _sql_value(value: Any, dialect: str) -> Any:
    if isinstance(value, datetime):
        naive = value.astimezone(UTC).replace(tzinfo=None)
        return naive.isoformat(sep=" ", timespec="microseconds") if dialect == "sqlite" else naive
    if isinstance(value, bool) and dialect != "postgres":
        return int(value)
    return value


def seed_sql(dialect: str, connection: Any, size: int) -> None:
    """Bulk INSERTs into the tables kavach created (column names = record field names)."""
    tables = (("kavach_users", 0), ("kavach_polar_subscriptions", 1), ("kavach_polar_events", 2))
    cursor = connection.cursor()
    columns: dict[str, list[str]] = {}
    for table, _ in tables:
        cursor.execute(f"SELECT * FROM {table} WHERE 1 = 0")
        columns[table] = [d[0] for d in cursor.description]
        cursor.fetchall()
    for start in range(0, size, 5000):
        batch = [records(i) for i in range(start, min(size, start + 5000))]
        for table, position in tables:
            names = columns[table]
            rows = []
            for record_set in batch:
                record = record_set[position]
                rows.append(tuple(
                    normalize_email(record.email) if name == "email_normalized"  # type: ignore[union-attr]
                    else _sql_value(getattr(record, name), dialect)
                    for name in names
                ))
            column_list = ", ".join(names)
            if dialect == "postgres":
                from psycopg2.extras import execute_values

                execute_values(cursor, f"INSERT INTO {table} ({column_list}) VALUES %s",
                               rows, page_size=1000)
            else:
                mark = "?" if dialect == "sqlite" else "%s"
                cursor.executemany(
                    f"INSERT INTO {table} ({column_list}) VALUES "
                    f"({', '.join([mark] * len(names))})",
                    rows,
                )
        connection.commit()
    cursor.close()


@contextmanager
def private_database(kind: str, admin_url: str) -> Iterator[tuple[str, Any]]:
    """A throwaway PostgreSQL schema / MySQL database: (kavach URL, driver connection)."""
    name = f"kavach_scale_{os.getpid()}"
    parts = urlsplit(admin_url)
    if kind == "postgres":
        import psycopg2

        admin: Any = psycopg2.connect(admin_url)
        admin.autocommit = True
        create, drop = f"CREATE SCHEMA {name}", f"DROP SCHEMA IF EXISTS {name} CASCADE"
        query = dict(parse_qsl(parts.query), options=f"-csearch_path={name}")
        url = urlunsplit(parts._replace(query=urlencode(query)))
        connect: Callable[[], Any] = lambda: psycopg2.connect(url)  # noqa: E731
    else:
        import pymysql

        options = {"host": parts.hostname or "127.0.0.1", "port": parts.port or 3306,
                   "user": parts.username or "root", "password": parts.password or ""}
        admin = pymysql.connect(autocommit=True, **options)
        create, drop = f"CREATE DATABASE {name}", f"DROP DATABASE IF EXISTS {name}"
        url = urlunsplit(parts._replace(path=f"/{name}"))
        connect = lambda: pymysql.connect(database=name, **options)  # noqa: E731
    with admin.cursor() as cursor:
        cursor.execute(drop)
        cursor.execute(create)
    try:
        open_store(url).close()  # kavach creates its tables
        connection = connect()
        try:
            yield url, connection
        finally:
            connection.close()
    finally:
        with admin.cursor() as cursor:
            cursor.execute(drop)
        admin.close()


@contextmanager
def seeded(kind: str, size: int, directory: Path) -> Iterator[Any]:
    """A ``database=`` argument for a store of ``kind`` holding ``size`` seeded users."""
    if kind == "memory":
        store = open_store("memory://")
        seed_memory(store, size)
        yield store
    elif kind == "json":
        path = directory / f"scale-{size}.json"
        seed_json(path, size)
        yield f"json://{path}"
    elif kind == "sqlite":
        path = directory / f"scale-{size}.db"
        url = f"sqlite:///{path}"
        open_store(url).close()
        connection = sqlite3.connect(path)
        try:
            seed_sql("sqlite", connection, size)
        finally:
            connection.close()
        yield url
    else:
        with private_database(kind, os.environ[SERVER_ENVS[kind]]) as (url, connection):
            seed_sql(kind, connection, size)
            yield url


# -- measuring ---------------------------------------------------------------------------------


def rss_mib() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for row in status:
            if row.startswith("VmRSS:"):
                return int(row.split()[1]) / 1024
    return 0.0


def timed(calls: Sequence[Callable[[], object]]) -> tuple[float, float]:
    """Median and p99 cost of the calls, in microseconds."""
    costs = []
    for call in calls:
        start = time.perf_counter_ns()
        call()
        costs.append((time.perf_counter_ns() - start) / 1000)
    costs.sort()
    return statistics.median(costs), costs[min(len(costs) - 1, int(len(costs) * 0.99))]


def deliveries(rng: random.Random, size: int, count: int) -> list[bytes]:
    """``count`` update bodies, each for a different random user's seeded subscription."""
    bodies = []
    for n, i in enumerate(rng.sample(range(size), count)):
        modified = T_NEW + timedelta(microseconds=n)
        data = subscription(sub_id=f"sub_{i:07d}", customer_id=f"cus_{i:07d}",
                            external_id=user_id(i), modified_at=modified,
                            cancel_at_period_end=bool(n % 2), created_at=T0)
        bodies.append(envelope("subscription.updated", data, modified))
    return bodies


def measure(kind: str, size: int, directory: Path, lookups: int, ingests: int) -> dict[str, Any]:
    rng = random.Random(size)
    rss_before = rss_mib()
    started = time.monotonic()
    with seeded(kind, size, directory) as database:
        seed_seconds = time.monotonic() - started
        plugin = polar(access_token="polar_oat_bench", webhook_secret=SECRET,
                       base_url="http://127.0.0.1:9")
        with create_kavach(database, plugins=[plugin],
                           password_hasher=PasswordHasher.fast()) as kavach:
            assert kavach.store.count_users() == size
            ram = rss_mib() - rss_before
            ids = [user_id(rng.randrange(size)) for _ in range(lookups + 100)]
            for uid in ids[:100]:  # warm-up
                plugin.get_subscription(uid)
            get = timed([functools.partial(plugin.get_subscription, uid) for uid in ids[100:]])
            assert plugin.get_subscription(ids[-1]) is not None
            bodies = deliveries(rng, size, ingests + 20)
            now = int(time.time())
            signed = [(b, sign_webhook(b, SECRET, msg_id=f"bench-{i}", timestamp=now))
                      for i, b in enumerate(bodies)]
            for body, headers in signed[:20]:  # warm-up
                plugin.handle_webhook(body, headers)
            outcomes: list[str] = []

            def deliver(body: bytes, headers: dict[str, str]) -> None:
                outcomes.append(plugin.handle_webhook(body, headers).outcome)

            ingest = timed([functools.partial(deliver, b, h) for b, h in signed[20:]])
            assert set(outcomes) == {"applied"}, set(outcomes)
    return {"store": kind, "users": size, "get": get, "ingest": ingest, "ram": ram,
            "seed_s": seed_seconds}


def label(users: int) -> str:
    return f"{users // 1_000_000}M" if users >= 1_000_000 else f"{users // 1000}k"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1k and 10k users only")
    parser.add_argument("--full", action="store_true", help="SQLite also at 1M users")
    parser.add_argument("--stores", default=",".join(ORDER),
                        help="comma-separated subset of memory,json,sqlite,postgres,mysql")
    args = parser.parse_args()
    sizes = [1_000, 10_000] if args.quick else [1_000, 10_000, 100_000]
    lookups, ingests = (2000, 300) if args.quick else (5000, 800)
    wanted = [s for s in args.stores.split(",") if s]
    stores = [s for s in ORDER if s in wanted
              and (s not in SERVER_ENVS or os.environ.get(SERVER_ENVS[s]))]
    skipped = [s for s in wanted if s not in stores]
    if skipped:
        print(f"skipping {', '.join(skipped)} (set {', '.join(SERVER_ENVS.values())})",
              file=sys.stderr)
    results = []
    with tempfile.TemporaryDirectory(prefix="kavach-scale-") as tmp:
        for kind in stores:
            kind_sizes = sizes + ([1_000_000] if args.full and kind == "sqlite" else [])
            for size in kind_sizes:
                print(f"{kind} {size:,} users ...", file=sys.stderr, flush=True)
                results.append(measure(kind, size, Path(tmp), lookups, ingests))
    print("\n| store | users | get_subscription median / p99 (us) "
          "| webhook ingest median / p99 (us) | RAM (MiB) | seed (s) |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        ram = f"{r['ram']:.0f}" if r["store"] in ("memory", "json") else "-"
        print(f"| {r['store']} | {r['users']:,} | {r['get'][0]:.1f} / {r['get'][1]:.1f} "
              f"| {r['ingest'][0]:.0f} / {r['ingest'][1]:.0f} | {ram} | {r['seed_s']:.1f} |")
    print("\n| store | growth | get_subscription | webhook ingest |")
    print("|---|---|---:|---:|")
    for kind in stores:
        mine = [r for r in results if r["store"] == kind]
        first = mine[0]
        # largest vs smallest, and 1M vs 1k too when --full ran it
        for last in [r for r in mine[1:] if r is mine[-1] or r["users"] == 100_000]:
            print(f"| {kind} | {label(last['users'])} / {label(first['users'])} "
                  f"| {last['get'][0] / first['get'][0]:.2f}x "
                  f"| {last['ingest'][0] / first['ingest'][0]:.2f}x |")


if __name__ == "__main__":
    main()
