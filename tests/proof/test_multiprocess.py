"""Several processes, one database: four workers ingest the same webhook stream at once.

The scenario (built once per store, seeded): 100 users holding about 230 subscriptions in
all, each living one whole Polar lifecycle (polar-api.md §4, "Which events a subscription
change produces"): created/active/updated, then a renewal (updated + cycled), a cancel
at period end (updated + canceled), a period end (then updated + canceled + revoked), an
immediate revoke (updated + canceled + revoked) or a payment failure (updated +
past_due, then updated + revoked with status ``unpaid``). That is ~1,400 distinct
deliveries; ~600 of them are delivered a second time with the same ``webhook-id`` and
body (re-signed, as Polar re-signs every attempt): 2,000 deliveries, 30% duplicates.

Every delivery gets a random position in one shared timeline; each worker takes its
share in timeline order, and a duplicate goes to a *different* worker at almost the same
position, so the two copies are handled by two processes at about the same moment. A copy
that arrives while the other copy's callback runs is answered "in progress"
(``WebhookInProgressError``, a 503 over HTTP) and its worker sends it again a little later,
as Polar retries a 503 (see ``_workers.ingest``). All
four processes start together (a barrier) on PostgreSQL, MySQL/MariaDB, one SQLite file
and one JSON file. SQLite and JSON get the full 2,000 deliveries as well (their
fsync-bound rate is fast enough on the reference 2-core box; the floor would be 1,000).

The scenario runs once per store (a module-scoped fixture); each test checks one
guarantee on its result.
"""

from __future__ import annotations

import json
import multiprocessing
import random
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest

from kavach import Kavach, PasswordHasher, create_kavach
from kavach.auth import polar
from kavach.polar import PolarPlugin, PolarSubscription
from kavach.polar.subscriptions import state_from_payload
from kavach.records import InboxEvent, SubscriptionState, most_relevant
from tests.polar_plugin.payloads import envelope, new_id, subscription
from tests.proof import _workers
from tests.proof.conftest import SECRET, STORE_KINDS, fresh_store_url

pytestmark = pytest.mark.slow

WORKERS = 4
USERS = 100
DISTINCT_DELIVERIES = 1400
TOTAL_DELIVERIES = 2000  # so 600 duplicates: 30%
#: Hang guard for the whole four-process run (it takes a few seconds per store).
RUN_TIMEOUT = 150.0
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
LIFECYCLES = ("renewed", "cancel_scheduled", "period_end", "revoked_now", "unpaid")


@attrs.frozen
class Delivery:
    webhook_id: str
    body: bytes
    state: SubscriptionState  # what the event says about its subscription


@attrs.define
class Scenario:
    deliveries: list[Delivery]  # distinct webhook ids, each once
    subscriptions_of: dict[str, list[str]]  # user id -> subscription ids
    plan: list[list[tuple[str, bytes]]]  # per worker, in order
    duplicates: int


def lifecycle(rng: random.Random, user: str, customer: str, kind: str) -> list[Delivery]:
    """Every event Polar sends for one subscription living lifecycle ``kind``."""
    sub_id = new_id()
    created = T0 + timedelta(days=rng.randrange(60), seconds=rng.randrange(86_400))
    period_end = created + timedelta(days=31)
    mid = created + timedelta(days=rng.randrange(2, 25), seconds=rng.randrange(86_400))
    out: list[Delivery] = []

    def emit(events: tuple[str, ...], at: datetime, **fields: Any) -> None:
        data = subscription(
            sub_id=sub_id, customer_id=customer, external_id=user, modified_at=at,
            created_at=created, **fields,
        )
        state = state_from_payload(data, user, fallback_time=None)
        for event in events:
            out.append(Delivery(new_id(), envelope(f"subscription.{event}", data, at), state))

    emit(("created", "active", "updated"), created)
    scheduled = {"cancel_at_period_end": True, "canceled_at": mid, "ends_at": period_end}
    if kind == "renewed":
        emit(("updated", "cycled"), period_end, period_start=period_end)
    elif kind == "cancel_scheduled":
        emit(("updated", "canceled"), mid, **scheduled)
    elif kind == "period_end":
        emit(("updated", "canceled"), mid, **scheduled)
        emit(("updated", "canceled", "revoked"), period_end, status="canceled",
             ended_at=period_end, **scheduled)
    elif kind == "revoked_now":
        emit(("updated", "canceled", "revoked"), mid, status="canceled", canceled_at=mid,
             ends_at=mid, ended_at=mid)
    elif kind == "unpaid":
        emit(("updated", "past_due"), mid, status="past_due")
        emit(("updated", "revoked"), mid + timedelta(days=14), status="unpaid")
    else:
        raise ValueError(kind)
    return out


def build_scenario(rng: random.Random, users: list[str]) -> Scenario:
    """Lifecycles until there are DISTINCT_DELIVERIES deliveries, then the duplicates and
    the per-worker plan (see the module docstring)."""
    customers = {user: new_id() for user in users}
    deliveries: list[Delivery] = []
    subscriptions_of: dict[str, list[str]] = {user: [] for user in users}
    i = 0
    while len(deliveries) < DISTINCT_DELIVERIES:
        user = users[i % len(users)]
        events = lifecycle(rng, user, customers[user], LIFECYCLES[rng.randrange(5)])
        subscriptions_of[user].append(events[0].state.id)
        deliveries.extend(events)
        i += 1
    duplicates = TOTAL_DELIVERIES - len(deliveries)
    timeline: list[tuple[float, int, str, bytes]] = []  # (position, worker, id, body)
    for d in deliveries:
        timeline.append((rng.random(), rng.randrange(WORKERS), d.webhook_id, d.body))
    for position, worker, webhook_id, body in rng.sample(timeline, duplicates):
        other = (worker + rng.randrange(1, WORKERS)) % WORKERS
        timeline.append((position + rng.uniform(0.0, 0.001), other, webhook_id, body))
    timeline.sort()
    plan: list[list[tuple[str, bytes]]] = [[] for _ in range(WORKERS)]
    for _, worker, webhook_id, body in timeline:
        plan[worker].append((webhook_id, body))
    return Scenario(deliveries, subscriptions_of, plan, duplicates)


@attrs.define
class IngestRun:
    kind: str
    scenario: Scenario
    kavach: Kavach
    plugin: PolarPlugin
    results: list[dict[str, Any]]
    callbacks: list[list[Any]]  # [user_id, pid, *callback_key]
    exit_codes: list[int | None]
    seconds: float

    def newest(self) -> dict[str, SubscriptionState]:
        """Per subscription id, the state of its newest event."""
        best: dict[str, SubscriptionState] = {}
        for d in self.scenario.deliveries:
            held = best.get(d.state.id)
            if held is None or d.state.version > held.version:
                best[d.state.id] = d.state
        return best

    def version_of_key(self) -> dict[tuple[Any, ...], int]:
        """callback key -> the version that produced it."""
        return {
            tuple(_workers.callback_key(PolarSubscription.from_state(d.state))): d.state.version
            for d in self.scenario.deliveries
        }

    def inbox(self) -> list[InboxEvent]:
        events: list[InboxEvent] = []
        while True:
            page = self.kavach.store.list_events(limit=500, offset=len(events))
            events.extend(page)
            if len(page) < 500:
                return events


def _run_workers(url: str, scenario: Scenario, directory: Path) -> tuple[list[Any], ...]:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(WORKERS)
    callback_paths = [directory / f"callbacks-{w}.jsonl" for w in range(WORKERS)]
    result_paths = [directory / f"result-{w}.json" for w in range(WORKERS)]
    processes = [
        ctx.Process(
            target=_workers.ingest,
            args=(url, SECRET, scenario.plan[w], barrier, str(callback_paths[w]),
                  str(result_paths[w])),
            daemon=True,
        )
        for w in range(WORKERS)
    ]
    for process in processes:
        process.start()
    deadline = time.monotonic() + RUN_TIMEOUT
    try:
        for process in processes:
            process.join(max(0.1, deadline - time.monotonic()))
    finally:
        hung = [p for p in processes if p.is_alive()]
        for process in hung:
            process.kill()
            process.join(5)
    if hung:
        raise AssertionError(f"{len(hung)} worker(s) still running after {RUN_TIMEOUT} s")
    results = [
        json.loads(path.read_text()) if path.exists() else {"outcomes": [], "errors": ["none"]}
        for path in result_paths
    ]
    callbacks = [
        json.loads(row)
        for path in callback_paths
        if path.exists()
        for row in path.read_text().splitlines()
    ]
    return results, callbacks, [p.exitcode for p in processes]


@pytest.fixture(scope="module", params=STORE_KINDS)
def run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
    IngestRun
]:
    """The four-process run on one store, and a Kavach on that store to inspect it."""
    kind: str = request.param
    directory = tmp_path_factory.mktemp(f"multiprocess-{kind}")
    with fresh_store_url(kind, directory) as url:
        plugin = polar(access_token="polar_oat_x", webhook_secret=SECRET,
                       base_url="http://127.0.0.1:9")
        kavach = create_kavach(url, plugins=[plugin], password_hasher=PasswordHasher.fast())
        try:
            users = [kavach.users.create(f"user{i}@proof.example").id for i in range(USERS)]
            scenario = build_scenario(random.Random(f"proof-{kind}"), users)
            started = time.monotonic()
            results, callbacks, exit_codes = _run_workers(url, scenario, directory)
            seconds = time.monotonic() - started
            print(
                f"\n[{kind}] {WORKERS} processes, {TOTAL_DELIVERIES} deliveries "
                f"({len(scenario.deliveries)} distinct, {scenario.duplicates} duplicates), "
                f"{sum(len(v) for v in scenario.subscriptions_of.values())} subscriptions, "
                f"{len(callbacks)} callbacks, "
                f"{sum(r.get('in_progress', 0) for r in results)} answered in progress, "
                f"{seconds:.1f} s (ingest "
                f"{max(r.get('seconds', -1) for r in results):.1f} s)"
            )
            yield IngestRun(kind, scenario, kavach, plugin, results, callbacks, exit_codes,
                            seconds)
        finally:
            kavach.close()


def test_every_delivery_is_answered_without_error(run: IngestRun) -> None:
    errors = [e for r in run.results for e in r["errors"]]
    assert errors == []
    assert run.exit_codes == [0] * WORKERS
    answered = sum(len(r["outcomes"]) for r in run.results)
    assert answered == TOTAL_DELIVERIES


def test_every_subscription_holds_its_newest_event_state(run: IngestRun) -> None:
    store = run.kavach.store
    wrong = []
    for sub_id, expected in run.newest().items():
        stored = store.get_subscription(sub_id)
        got = None if stored is None else (
            stored.user_id, stored.status, stored.cancel_at_period_end,
            stored.current_period_end, stored.ended_at, stored.version,
        )
        want = (
            expected.user_id, expected.status, expected.cancel_at_period_end,
            expected.current_period_end, expected.ended_at, expected.version,
        )
        if got != want:
            wrong.append((sub_id, got, want))
    assert wrong == []


def test_inbox_holds_each_webhook_id_exactly_once(run: IngestRun) -> None:
    store = run.kavach.store
    distinct = {d.webhook_id for d in run.scenario.deliveries}
    assert store.count_events() == len(distinct)
    assert store.count_events(status="processed") == len(distinct)
    assert {e.webhook_id for e in run.inbox()} == distinct


def test_duplicate_deliveries_are_processed_once(run: IngestRun) -> None:
    """A webhook id delivered twice is processed by one copy (``applied`` or ``stale``);
    the other finds it ``duplicate`` — at once, or after being answered "in progress"
    while the first copy's callback ran."""
    by_id: dict[str, list[str]] = {}
    for result in run.results:
        for webhook_id, outcome in result["outcomes"]:
            by_id.setdefault(webhook_id, []).append(outcome)
    doubled = {k: v for k, v in by_id.items() if len(v) > 1}
    assert len(doubled) == run.scenario.duplicates
    applied_twice = {k: v for k, v in doubled.items() if v.count("applied") > 1}
    assert applied_twice == {}
    not_one_duplicate = {k: v for k, v in doubled.items() if v.count("duplicate") != 1}
    assert not_one_duplicate == {}


def test_no_change_is_notified_twice(run: IngestRun) -> None:
    versions = run.version_of_key()
    keys = Counter((c[2], versions[tuple(c[2:])]) for c in run.callbacks)
    twice = {key: n for key, n in keys.items() if n > 1}
    assert twice == {}


def test_every_applied_change_is_notified(run: IngestRun) -> None:
    applied = [e for e in run.inbox() if e.outcome == "applied"]
    assert len(run.callbacks) == len(applied)
    versions = run.version_of_key()
    notified = {(c[2], versions[tuple(c[2:])]) for c in run.callbacks}
    newest = {(sub_id, state.version) for sub_id, state in run.newest().items()}
    assert newest - notified == set()


def test_revoked_subscriptions_are_not_returned(run: IngestRun) -> None:
    newest = run.newest()
    wrong: list[tuple[Any, ...]] = []
    for user, sub_ids in run.scenario.subscriptions_of.items():
        expected = most_relevant([newest[s] for s in sub_ids])
        got = run.plugin.get_subscription(user)
        if expected is None or expected.revoked:
            if got is not None:
                wrong.append((user, got.id, got.status))
        elif got is None or (got.id, got.status) != (expected.id, expected.status):
            wrong.append((user, got, expected.id))
    assert wrong == []
    revoked = sum(1 for s in newest.values() if s.revoked)
    assert revoked > 0
