"""Code the proof tests run in child processes.

* :func:`ingest` — a webhook-ingesting worker for the multi-process test (spawned with
  ``multiprocessing``): its own ``Kavach`` on the shared store URL, every callback
  invocation appended to a per-process file; a delivery answered "in progress" is sent
  again a little later, as Polar retries a 503.
* ``python -m tests.proof._workers serve --database URL`` — a real kavach server process
  (``make_server``), for the crash and hostile-HTTP tests. It prints
  ``READY http://127.0.0.1:PORT`` on stdout once it listens.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections import deque
from collections.abc import Sequence
from datetime import datetime
from typing import Any

#: Environment variable the server reads its webhook secret from.
SECRET_ENV = "KAVACH_PROOF_SECRET"


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def callback_key(sub: Any) -> list[Any]:
    """What identifies one applied change of a subscription, from the callback's
    ``PolarSubscription`` (the proof scenarios make these fields differ between the
    versions of one subscription, so the key names the version)."""
    return [
        sub.id,
        sub.status,
        bool(sub.cancel_at_period_end),
        _iso(sub.current_period_end),
        _iso(sub.canceled_at),
        _iso(sub.ended_at),
    ]


#: How long a worker waits before retrying a delivery answered "in progress" (Polar waits
#: for ``Retry-After``; here the other copy's callback is a file append, so it is brief).
IN_PROGRESS_DELAY = 0.02
#: How often one delivery may be answered "in progress" before the worker gives up on it.
MAX_IN_PROGRESS = 500


def ingest(
    url: str,
    secret: str,
    deliveries: Sequence[tuple[str, bytes]],
    barrier: Any,
    callback_path: str,
    result_path: str,
) -> None:
    """Deliver ``deliveries`` (``(webhook_id, body)``, signed here, just before sending,
    as Polar re-signs every attempt) to ``plugin.handle_webhook`` in order.

    Writes one JSON line per callback invocation to ``callback_path`` and, at the end,
    ``{"outcomes": [[webhook_id, outcome], ...], "errors": [...], "in_progress": n,
    "seconds": ...}`` to ``result_path``. As Polar does: a delivery answered "in progress"
    (``WebhookInProgressError``: another process is running its callback) is sent again
    later — after :data:`IN_PROGRESS_DELAY`, while the worker goes on with the next ones —
    and counted in ``in_progress`` (an error only past :data:`MAX_IN_PROGRESS` tries); a
    delivery that raises anything else is retried at once (at most 3 attempts, as Polar
    retries a 5xx) and every such exception is reported in ``errors``.
    """
    from kavach import PasswordHasher, WebhookInProgressError, create_kavach
    from kavach.auth import polar
    from kavach.polar.webhooks import sign_webhook

    outcomes: list[list[str]] = []
    errors: list[str] = []
    in_progress = 0
    with open(callback_path, "a", encoding="utf-8") as calls:

        def on_change(user_id: str, sub: Any) -> None:
            calls.write(json.dumps([user_id, os.getpid(), *callback_key(sub)]) + "\n")
            calls.flush()

        plugin = polar(
            access_token="polar_oat_proof",
            webhook_secret=secret,
            base_url="http://127.0.0.1:9",
            on_subscription_change=on_change,
        )
        kavach = create_kavach(url, plugins=[plugin], password_hasher=PasswordHasher.fast())

        def deliver(webhook_id: str, body: bytes) -> str | None:
            """The outcome; ``None`` when the delivery is in progress elsewhere, ``""`` when
            all three attempts raised."""
            for attempt in range(3):
                try:
                    outcome = plugin.handle_webhook(
                        body, sign_webhook(body, secret, msg_id=webhook_id)
                    )
                except WebhookInProgressError:
                    return None
                except Exception as exc:
                    errors.append(
                        f"{webhook_id} attempt {attempt + 1}: {type(exc).__name__}: {exc}"
                    )
                    continue
                return str(outcome.outcome)
            return ""

        try:
            barrier.wait(timeout=120)
            started = time.monotonic()
            todo = deque(deliveries)
            later: deque[tuple[float, str, bytes, int]] = deque()  # (due, id, body, waits)
            while todo or later:
                if later and (not todo or later[0][0] <= time.monotonic()):
                    due, webhook_id, body, waits = later.popleft()
                    time.sleep(max(0.0, due - time.monotonic()))
                else:
                    webhook_id, body = todo.popleft()
                    waits = 0
                outcome = deliver(webhook_id, body)
                if outcome is not None:
                    if outcome:
                        outcomes.append([webhook_id, outcome])
                    continue
                in_progress += 1
                if waits + 1 >= MAX_IN_PROGRESS:
                    errors.append(f"{webhook_id}: still in progress after {waits + 1} tries")
                    continue
                later.append((time.monotonic() + IN_PROGRESS_DELAY, webhook_id, body, waits + 1))
            seconds = time.monotonic() - started
        except BaseException:
            errors.append(traceback.format_exc())
            seconds = -1.0
        finally:
            kavach.close()
    with open(result_path, "w", encoding="utf-8") as out:
        json.dump(
            {
                "outcomes": outcomes,
                "errors": errors,
                "in_progress": in_progress,
                "seconds": seconds,
            },
            out,
        )


# -- the server process ----------------------------------------------------------------


def _open_database(database: str, compact_after: int | None) -> Any:
    if compact_after is not None and database.startswith("json://"):
        from kavach.stores.jsonfile import JsonFileStore

        return JsonFileStore(database[len("json://") :], compact_after=compact_after)
    return database


def serve(argv: Sequence[str]) -> int:
    """Run a kavach server (Polar plugin on, fast password hashing) until killed."""
    parser = argparse.ArgumentParser(prog="tests.proof._workers serve")
    parser.add_argument("--database", required=True)
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--compact-after", type=int, default=None)
    args = parser.parse_args(argv)

    from kavach import PasswordHasher, create_kavach
    from kavach.auth import polar
    from kavach.http.server import make_server

    plugin = polar(
        access_token="polar_oat_proof",
        webhook_secret=os.environ[SECRET_ENV],
        base_url="http://127.0.0.1:9",
    )
    kavach = create_kavach(
        _open_database(args.database, args.compact_after),
        plugins=[plugin],
        password_hasher=PasswordHasher.fast(),
    )
    server = make_server(kavach, "127.0.0.1", 0, timeout=args.timeout)
    print(f"READY {server.url}", flush=True)
    try:
        server.serve_forever(poll_interval=0.05)
    finally:
        server.server_close()
        kavach.close()
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] != ["serve"]:
        sys.exit("usage: python -m tests.proof._workers serve --database URL")
    sys.exit(serve(sys.argv[2:]))
