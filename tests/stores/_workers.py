"""What the multi-process tests run in spawned child processes.

Each function opens the store from its URL (``kavach.stores.open_store`` works in any
process), waits for a common start time so the processes really race, and reports what
each call returned.
"""

from __future__ import annotations

import time

from kavach.stores import open_store

from .factories import event, state


def _wait_until(start_at: float) -> None:
    time.sleep(max(0.0, start_at - time.time()))


def apply_versions(
    url: str, user_id: str, subscription_id: str, versions: list[int], start_at: float
) -> list[tuple[int, bool]]:
    """``apply_subscription`` for each version, in order: ``[(version, applied), ...]``."""
    store = open_store(url)
    try:
        _wait_until(start_at)
        return [
            (version, store.apply_subscription(state(subscription_id, user_id, version)))
            for version in versions
        ]
    finally:
        store.close()


def record_events(url: str, webhook_ids: list[str], start_at: float) -> list[tuple[str, bool]]:
    """``record_event`` for each id: ``[(webhook_id, is_new), ...]``."""
    store = open_store(url)
    try:
        _wait_until(start_at)
        return [(wid, store.record_event(event(wid))[1]) for wid in webhook_ids]
    finally:
        store.close()


def ingest_events(
    url: str, user_id: str, webhook_ids: list[str], start_at: float
) -> list[tuple[str, bool]]:
    """``ingest_event`` for each id, the n-th carrying version n of ``sub1``:
    ``[(webhook_id, created), ...]``."""
    store = open_store(url)
    try:
        _wait_until(start_at)
        return [
            (wid, store.ingest_event(event(wid), state("sub1", user_id, n)).created)
            for n, wid in enumerate(webhook_ids, start=1)
        ]
    finally:
        store.close()


def open_and_read_version(url: str, start_at: float) -> int:
    """Open the store (running migrations if needed) and return its schema version."""
    _wait_until(start_at)
    store = open_store(url)
    try:
        return store.schema_version()
    finally:
        store.close()
