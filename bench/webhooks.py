"""Webhook ingest throughput: kavach's whole job against the usual libraries' first step.

    python bench/webhooks.py [--quick] [--events N]

In one run, on the same signed deliveries:

* kavach ``handle_webhook`` (verify, parse — with orjson when installed —, duplicate
  check, match the user, then ``ingest_event``: inbox row and guarded apply in one
  commit) on the memory and SQLite stores;
* ``standardwebhooks`` ``Webhook.verify`` (verify + ``json.loads``) — the usual first step;
* polar-sdk 1.0.2 ``validate_event`` (verify + typed parse);
* a floor: bare ``hmac`` + ``json.loads`` + a dict read;
* a raw ``sqlite3`` loop with the SQL store's pragmas (imported from
  ``kavach.stores.sql``: WAL, ``synchronous=FULL``): per delivery, insert the inbox row
  and upsert the subscription with a version guard, one commit.

Prints events/s and ratios. Targets (issue #3): memory ingest >= 1.0x standardwebhooks
verify+parse; SQLite ingest >= 0.8x the raw sqlite3 loop.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

# Run as a script, Python puts bench/ first on sys.path, where bench/http.py would shadow
# the standard library's http package: put the repository root there instead.
_BENCH_DIR = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _BENCH_DIR]
sys.path.insert(0, str(_BENCH_DIR.parent))

from kavach import FrozenClock, PasswordHasher, create_kavach  # noqa: E402
from kavach.auth import polar  # noqa: E402
from kavach.polar import webhooks  # noqa: E402
from kavach.polar.webhooks import sign_webhook  # noqa: E402
from kavach.records import UserRecord  # noqa: E402
from kavach.stores.sql import SQLITE_PRAGMAS  # noqa: E402
from tests.polar_plugin.payloads import envelope, subscription  # noqa: E402

SECRET = "whsec_" + base64.b64encode(b"bench-secret-0123456789abcdefghij").decode()
START = datetime(2026, 8, 22, 10, 0, tzinfo=UTC)
Delivery = tuple[bytes, dict[str, str]]


def make_deliveries(n: int, users: list[str]) -> list[Delivery]:
    """``n`` signed subscription events, each a newer version of one of the users' subs."""
    subs = {u: (str(uuid.uuid4()), str(uuid.uuid4())) for u in users}
    out: list[Delivery] = []
    ts = int(START.timestamp())
    for i in range(n):
        user = users[i % len(users)]
        sub_id, cust_id = subs[user]
        modified = START - timedelta(hours=1) + timedelta(milliseconds=i)
        data = subscription(sub_id=sub_id, customer_id=cust_id, external_id=user,
                            modified_at=modified, cancel_at_period_end=bool(i % 2))
        raw = json.loads(envelope("subscription.updated", data, modified))
        raw["api_version"] = "2026-04"  # polar-sdk 1.0.2 requires it; kavach ignores it
        body = json.dumps(raw, separators=(",", ":")).encode()
        out.append((body, sign_webhook(body, SECRET, timestamp=ts)))
    return out


def rate(n: int, fn: Callable[[], Any], repeat: int) -> float:
    """Best events/s over ``repeat`` runs of ``fn`` handling ``n`` events."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return n / best


def kavach_ingest(database: str, deliveries: list[Delivery], users: list[str]) -> float:
    """One fresh store per run; users created before the clock starts."""
    clock = FrozenClock(START)
    plugin = polar("polar_oat_bench", SECRET, base_url="http://127.0.0.1:9")
    with create_kavach(database, plugins=[plugin], clock=clock,
                       password_hasher=PasswordHasher.fast()) as kavach:
        for user in users:
            kavach.store.create_user(UserRecord(id=user, email=f"{user}@bench.io", name=None,
                                                password_hash=None, created_at=START))
        t0 = time.perf_counter()
        for body, headers in deliveries:
            plugin.handle_webhook(body, headers)
        elapsed = time.perf_counter() - t0
        assert kavach.store.count_events() == len(deliveries)
    return len(deliveries) / elapsed


def best_of(repeat: int, fn: Callable[[], float]) -> float:
    return max(fn() for _ in range(repeat))


def standardwebhooks_rate(deliveries: list[Delivery], repeat: int) -> float:
    import standardwebhooks

    # Standard Webhooks' own key derivation; the deliveries are signed with it.
    hook = standardwebhooks.Webhook(SECRET)
    # standardwebhooks checks the timestamp against the real clock: re-sign for "now".
    now = int(time.time())
    fresh = [(b, sign_webhook(b, SECRET, msg_id=h["webhook-id"], timestamp=now))
             for b, h in deliveries]

    def run() -> None:
        for body, headers in fresh:
            hook.verify(body, headers)

    return rate(len(fresh), run, repeat)


def polar_sdk_rate(deliveries: list[Delivery], repeat: int) -> float:
    from polar.v2026_04.webhooks import validate_event

    now = int(time.time())
    fresh = [(b, sign_webhook(b, SECRET, msg_id=h["webhook-id"], timestamp=now))
             for b, h in deliveries]

    def run() -> None:
        for body, headers in fresh:
            validate_event(body, headers, SECRET)

    return rate(len(fresh), run, repeat)


def floor_rate(deliveries: list[Delivery], repeat: int) -> float:
    key = base64.b64decode(SECRET.removeprefix("whsec_"))

    def run() -> None:
        for body, headers in deliveries:
            signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
            mac = hmac.new(key, signed, hashlib.sha256).digest()
            expected = base64.b64decode(headers["webhook-signature"][3:])
            if not hmac.compare_digest(mac, expected):
                raise AssertionError("bad signature")
            data = json.loads(body)
            _ = data["data"]["modified_at"]

    return rate(len(deliveries), run, repeat)


def raw_sqlite_rate(deliveries: list[Delivery], repeat: int) -> float:
    """Inbox insert + version-guarded upsert per delivery, one commit each, on a
    connection with the SQL store's own pragmas (WAL, ``synchronous=FULL``)."""

    def one_run() -> float:
        with tempfile.TemporaryDirectory() as tmp:
            db = sqlite3.connect(Path(tmp) / "raw.db", isolation_level=None)
            for name, value in SQLITE_PRAGMAS:
                db.execute(f"PRAGMA {name} = {value}")
            db.execute("CREATE TABLE events (webhook_id TEXT PRIMARY KEY, type TEXT, "
                       "received_at TEXT, payload TEXT, status TEXT)")
            db.execute("CREATE TABLE subs (id TEXT PRIMARY KEY, user_id TEXT, status TEXT, "
                       "product_id TEXT, period_end TEXT, cancel INTEGER, version INTEGER)")
            t0 = time.perf_counter()
            for body, headers in deliveries:
                data = json.loads(body)["data"]
                version = int(datetime.fromisoformat(data["modified_at"]).timestamp() * 1e6)
                db.execute("BEGIN IMMEDIATE")
                db.execute("INSERT INTO events VALUES (?, ?, ?, ?, 'processed')",
                           (headers["webhook-id"], "subscription.updated", "now",
                            body.decode()))
                db.execute(
                    "INSERT INTO subs VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
                    "status=excluded.status, product_id=excluded.product_id, "
                    "period_end=excluded.period_end, cancel=excluded.cancel, "
                    "version=excluded.version WHERE subs.version < excluded.version",
                    (data["id"], data["customer"]["external_id"], data["status"],
                     data["product_id"], data["current_period_end"],
                     int(data["cancel_at_period_end"]), version))
                db.execute("COMMIT")
            elapsed = time.perf_counter() - t0
            db.close()
            return len(deliveries) / elapsed

    return best_of(repeat, one_run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer events, one repeat")
    parser.add_argument("--events", type=int, default=None)
    args = parser.parse_args()
    n = args.events or (500 if args.quick else 3000)
    repeat = 1 if args.quick else 3
    users = [str(uuid.uuid4()) for _ in range(max(1, n // 10))]
    deliveries = make_deliveries(n, users)
    sdk_n = min(n, 200 if args.quick else 600)

    parser_name = "orjson" if webhooks._fast_loads is not None else "json (no orjson)"
    print(f"webhook ingest, {n} signed subscription.updated deliveries "
          f"(~{len(deliveries[0][0])} bytes each), best of {repeat}; kavach parses with "
          f"{parser_name}")
    results: dict[str, float] = {}
    results["floor: hmac + json.loads"] = floor_rate(deliveries, repeat)
    results["standardwebhooks verify+parse"] = standardwebhooks_rate(deliveries, repeat)
    results["polar-sdk 1.0.2 validate_event"] = polar_sdk_rate(deliveries[:sdk_n], repeat)
    results["raw sqlite3 inbox+upsert loop"] = raw_sqlite_rate(deliveries, repeat)
    results["kavach ingest, memory store"] = best_of(
        repeat, lambda: kavach_ingest("memory://", deliveries, users))
    with tempfile.TemporaryDirectory() as tmp:
        counter = iter(range(100))
        results["kavach ingest, sqlite store"] = best_of(
            repeat,
            lambda: kavach_ingest(f"sqlite:///{tmp}/k{next(counter)}.db", deliveries, users),
        )

    sw = results["standardwebhooks verify+parse"]
    raw = results["raw sqlite3 inbox+upsert loop"]
    width = max(len(k) for k in results)
    for name, value in results.items():
        print(f"  {name:<{width}}  {value:>10,.0f} events/s  {value / sw:5.2f}x standardwebhooks")
    mem_ratio = results["kavach ingest, memory store"] / sw
    sql_ratio = results["kavach ingest, sqlite store"] / raw
    print(f"memory ingest / standardwebhooks verify+parse = {mem_ratio:.2f}x (target >= 1.0)")
    print(f"sqlite ingest / raw sqlite3 loop              = {sql_ratio:.2f}x (target >= 0.8)")


if __name__ == "__main__":
    main()
