"""Crash safety: ``kill -9`` a real server process mid-ingest, restart it on the same file.

For the JSON file store (compacting every 40 journal lines, so kills also land inside a
compaction) and for SQLite, a loop of TRIALS trials (bounded in count and time):

1. two client threads hammer the running server over keep-alive connections: one
   posts signed webhook deliveries (each a newer version of one of the seeded users'
   subscriptions), one signs users up (``POST /api/kavach/auth/sign-up/email``);
2. after a random 0.15-0.8 s, the server gets SIGKILL — whether a request was in flight
   at that instant is recorded. Every other JSON trial instead kills the moment a
   compaction starts writing its new snapshot (its temp file appears), so kills land
   inside compactions too;
3. a new server process starts on the same file (it must open it), and every delivery
   whose answer the kill cut off is posted again, re-signed, as Polar's retry would.

The killed-and-restarted server of one trial is the victim of the next. After the last
trial the final server is killed too and the test process opens the file itself. The
run happens once per store (a module-scoped fixture); each test checks one guarantee.
"""

from __future__ import annotations

import http.client
import json
import random
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import attrs
import pytest

from kavach import Kavach, PasswordHasher, create_kavach
from kavach.polar.webhooks import sign_webhook
from tests.polar_plugin.payloads import envelope, new_id, subscription
from tests.proof.conftest import SECRET, ServerProcess, wait_for

pytestmark = pytest.mark.slow

TRIALS = 10
USERS = 20
#: Hang guards.
CLIENT_TIMEOUT = 10.0
MAX_REQUESTS_PER_TRIAL = 5000
T0 = datetime(2026, 5, 4, 12, 0, tzinfo=UTC)
PASSWORD = "correct horse battery staple"


@attrs.frozen
class Webhook:
    webhook_id: str
    body: bytes
    subscription_id: str
    version: int  # microseconds of modified_at, as the ordering guard computes it


@attrs.define
class TrialLog:
    """What one trial's clients saw."""

    acked_webhooks: list[Webhook] = attrs.Factory(list)
    cut_webhooks: list[Webhook] = attrs.Factory(list)  # sent, no answer: the kill cut it
    sessions: list[tuple[str, str]] = attrs.Factory(list)  # (email, token) answered 200
    statuses: list[int] = attrs.Factory(list)
    in_flight: dict[str, bool] = attrs.Factory(dict)


class Feed:
    """An endless, ordered stream of webhook deliveries for the seeded users."""

    def __init__(self, users: list[str]) -> None:
        self.users = users
        self.subs = {user: (new_id(), new_id()) for user in users}
        self.count = 0

    def next(self) -> Webhook:
        self.count += 1
        user = self.users[self.count % len(self.users)]
        sub_id, customer = self.subs[user]
        modified = T0 + timedelta(seconds=self.count)
        data = subscription(
            sub_id=sub_id, customer_id=customer, external_id=user, modified_at=modified,
            cancel_at_period_end=self.count % 3 == 0,
        )
        body = envelope("subscription.updated", data, modified)
        version = int((modified - datetime(1970, 1, 1, tzinfo=UTC)) / timedelta(microseconds=1))
        return Webhook(new_id(), body, sub_id, version)


def _post(conn: http.client.HTTPConnection, path: str, body: bytes,
          headers: dict[str, str]) -> tuple[int, bytes]:
    conn.request("POST", path, body=body, headers=headers)
    response = conn.getresponse()
    return response.status, response.read()


def _webhook_client(server: ServerProcess, feed: Feed, log: TrialLog,
                    stop: threading.Event) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=CLIENT_TIMEOUT)
    try:
        for _ in range(MAX_REQUESTS_PER_TRIAL):
            if stop.is_set():
                return
            hook = feed.next()
            headers = sign_webhook(hook.body, SECRET, msg_id=hook.webhook_id)
            log.in_flight["webhook"] = True
            try:
                status, _ = _post(conn, "/api/kavach/auth/polar/webhook", hook.body, headers)
            except (OSError, http.client.HTTPException):
                log.cut_webhooks.append(hook)
                return
            finally:
                log.in_flight["webhook"] = False
            log.statuses.append(status)
            if 200 <= status < 300:
                log.acked_webhooks.append(hook)
    finally:
        conn.close()


def _signup_client(server: ServerProcess, log: TrialLog, stop: threading.Event) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=CLIENT_TIMEOUT)
    try:
        for _ in range(MAX_REQUESTS_PER_TRIAL):
            if stop.is_set():
                return
            email = f"{new_id()}@crash.example"
            body = json.dumps({"email": email, "password": PASSWORD}).encode()
            log.in_flight["signup"] = True
            try:
                status, answer = _post(conn, "/api/kavach/auth/sign-up/email", body,
                                       {"Content-Type": "application/json"})
            except (OSError, http.client.HTTPException):
                return
            finally:
                log.in_flight["signup"] = False
            log.statuses.append(status)
            if status == 200:
                log.sessions.append((email, json.loads(answer)["session"]["token"]))
    finally:
        conn.close()


def _temp_signature(path: Path) -> tuple[int, int] | None:
    """Identity of the JSON store's snapshot temp file (``None`` when absent)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns)


@attrs.define
class CrashRun:
    kind: str
    kavach: Kavach  # opened by the test process after the final kill
    trials: list[TrialLog]
    retried: list[tuple[Webhook, int]]  # cut-off deliveries re-posted after the restart
    kills: int
    kills_mid_request: int
    kills_mid_compaction: int  # JSON store: a snapshot temp file was left behind
    restarts: int

    @property
    def acked(self) -> list[Webhook]:
        return [hook for trial in self.trials for hook in trial.acked_webhooks]


def _crash_loop(url: str, directory: Path, compact_after: int | None) -> CrashRun:
    rng = random.Random(f"crash-{url}")
    with create_kavach(url, password_hasher=PasswordHasher.fast()) as seed:
        users = [seed.users.create(f"seed{i}@crash.example").id for i in range(USERS)]
    feed = Feed(users)
    trials: list[TrialLog] = []
    retried: list[tuple[Webhook, int]] = []
    kills = kills_mid_request = kills_mid_compaction = restarts = 0
    snapshot_temp = Path(url.partition("://")[2] + ".tmp")
    counted_temp: tuple[int, int] | None = None

    def start() -> ServerProcess:
        return ServerProcess(url, directory / "server.log", compact_after=compact_after)

    server = start()
    try:
        for trial in range(TRIALS):
            log = TrialLog()
            stop = threading.Event()
            clients = [
                threading.Thread(target=_webhook_client, args=(server, feed, log, stop)),
                threading.Thread(target=_signup_client, args=(server, log, stop)),
            ]
            for client in clients:
                client.start()
            if url.startswith("json://") and trial % 2:
                # Aim at a compaction: kill as soon as a new snapshot temp file shows up.
                seen = counted_temp
                wait_for(lambda seen=seen: _temp_signature(snapshot_temp) not in (None, seen),
                         timeout=3.0, interval=0.001)
            else:
                time.sleep(rng.uniform(0.15, 0.8))
            mid_request = any(log.in_flight.values())
            server.kill()
            kills += 1
            kills_mid_request += mid_request
            signature = _temp_signature(snapshot_temp)
            if signature is not None and signature != counted_temp:
                counted_temp = signature  # count each left-behind temp file once
                kills_mid_compaction += 1
            stop.set()
            for client in clients:
                client.join(CLIENT_TIMEOUT + 5)
            assert not any(c.is_alive() for c in clients), "a client hung after the kill"
            server = start()  # raises unless the new process opened the file and listens
            restarts += 1
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=CLIENT_TIMEOUT)
            try:
                for hook in log.cut_webhooks:
                    headers = sign_webhook(hook.body, SECRET, msg_id=hook.webhook_id)
                    status, _ = _post(conn, "/api/kavach/auth/polar/webhook", hook.body, headers)
                    retried.append((hook, status))
            finally:
                conn.close()
            trials.append(log)
        server.kill()  # the last one dies too: the test process reopens the file cold
        kills += 1
    finally:
        server.kill()
    kavach = create_kavach(url, password_hasher=PasswordHasher.fast())
    return CrashRun(url.partition(":")[0], kavach, trials, retried, kills, kills_mid_request,
                    kills_mid_compaction, restarts)


@pytest.fixture(scope="module", params=["json", "sqlite"])
def crash(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
    CrashRun
]:
    directory = tmp_path_factory.mktemp(f"crash-{request.param}")
    if request.param == "json":
        run = _crash_loop(f"json://{directory / 'k.json'}", directory, compact_after=40)
    else:
        run = _crash_loop(f"sqlite:///{directory / 'k.db'}", directory, compact_after=None)
    print(
        f"\n[{run.kind}] kills {run.kills} (mid-request {run.kills_mid_request} of "
        f"{TRIALS} trial kills, inside a compaction {run.kills_mid_compaction}), "
        f"restarts {run.restarts}, acked webhooks {len(run.acked)}, "
        f"sessions {sum(len(t.sessions) for t in run.trials)}, "
        f"cut-off deliveries retried {len(run.retried)}"
    )
    with run.kavach:
        yield run


def test_store_reopens_after_every_kill(crash: CrashRun) -> None:
    assert crash.restarts == TRIALS
    assert crash.kills == TRIALS + 1
    assert crash.kavach.store.count_users() >= USERS


def test_kills_land_mid_request(crash: CrashRun) -> None:
    """The clients keep a request in flight nearly all the time, so the kills really
    interrupt work (the count is printed with ``-s``)."""
    assert crash.kills_mid_request >= 1


def test_acknowledged_webhooks_are_in_the_inbox_after_restart(crash: CrashRun) -> None:
    store = crash.kavach.store
    assert crash.acked, "no delivery was acknowledged: the trials tested nothing"
    missing = [
        hook.webhook_id
        for hook in crash.acked
        if (event := store.get_event(hook.webhook_id)) is None or event.status != "processed"
    ]
    assert missing == []


def test_acknowledged_webhook_state_is_applied_after_restart(crash: CrashRun) -> None:
    newest: dict[str, int] = {}
    for hook in crash.acked:
        newest[hook.subscription_id] = max(newest.get(hook.subscription_id, 0), hook.version)
    store = crash.kavach.store
    behind = []
    for sub_id, version in newest.items():
        stored = store.get_subscription(sub_id)
        if stored is None or stored.version < version:
            behind.append((sub_id, version, None if stored is None else stored.version))
    assert behind == []


def test_sessions_issued_before_kill_resolve_after_restart(crash: CrashRun) -> None:
    issued = [pair for trial in crash.trials for pair in trial.sessions]
    assert issued, "no session was issued: the trials tested nothing"
    lost = []
    for email, token in issued:
        session = crash.kavach.sessions.resolve(token)
        user = crash.kavach.users.get_by_email(email)
        if session is None or user is None or session.user_id != user.id:
            lost.append(email)
    assert lost == []


def test_deliveries_cut_off_by_the_kill_are_accepted_on_retry(crash: CrashRun) -> None:
    refused = [(hook.webhook_id, status) for hook, status in crash.retried
               if not 200 <= status < 300]
    assert refused == []
    store = crash.kavach.store
    for hook, _ in crash.retried:
        event = store.get_event(hook.webhook_id)
        assert event is not None and event.status == "processed"


def test_no_request_is_answered_5xx_around_the_kills(crash: CrashRun) -> None:
    statuses = [s for trial in crash.trials for s in trial.statuses]
    statuses += [status for _, status in crash.retried]
    assert [s for s in statuses if s >= 500] == []
