"""``kavach polar events list|show|replay``: operate the webhook inbox from a shell.

Every verified Polar delivery is recorded in the store's inbox (``kavach_polar_events``):
these commands list them, show one with its payload, and replay deliveries that did not
finish (a callback that raised, a process that died) through the same guarded path as a
live delivery. Replay needs no signature (the delivery was verified when it was recorded)
and makes no Polar API call.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, TextIO

from kavach.cli import CliError, polar_settings
from kavach.errors import StoreCorruptError
from kavach.records import INBOX_STATUSES, InboxEvent

if TYPE_CHECKING:
    from kavach.core import Kavach
    from kavach.stores.base import Store

DEFAULT_LIST_LIMIT = 50
#: Statuses a replay acts on: the delivery never finished.
UNFINISHED = ("received", "failed")
#: Deliveries ``replay --failed`` reads from the store at a time.
REPLAY_PAGE = 500


def add_events_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``kavach polar events`` and its three sub-commands."""
    events = commands.add_parser(
        "events",
        help="list, show and replay recorded webhook deliveries (the inbox)",
        description="Every verified Polar delivery is recorded in the store's inbox. "
        "List them, show one with its payload, or replay unfinished ones.",
    )
    actions = events.add_subparsers(dest="events_command", required=True, metavar="ACTION")

    listing = actions.add_parser("list", help="recorded deliveries, newest first")
    _add_database(listing)
    which = listing.add_mutually_exclusive_group()
    which.add_argument("--failed", action="store_true", help="only deliveries that failed")
    which.add_argument("--status", choices=INBOX_STATUSES, help="only this status")
    listing.add_argument("--limit", type=int, default=DEFAULT_LIST_LIMIT, help="at most N rows")
    listing.set_defaults(run=run_list)

    show = actions.add_parser("show", help="one delivery, with its payload")
    _add_database(show)
    show.add_argument("webhook_id", help="the delivery's webhook-id")
    show.add_argument("--no-payload", action="store_true", help="leave the payload out")
    show.set_defaults(run=run_show)

    replay = actions.add_parser(
        "replay",
        help="process unfinished deliveries again (needs the Polar settings, as serve does)",
    )
    _add_database(replay)
    target = replay.add_mutually_exclusive_group(required=True)
    target.add_argument("webhook_id", nargs="?", help="the delivery's webhook-id")
    target.add_argument(
        "--failed", action="store_true", help="every delivery with status failed or received"
    )
    replay.add_argument(
        "--without-callback",
        action="store_true",
        help="also finish subscription deliveries that owe the app's on_subscription_change "
        "(applied, or never applied, but not finished): the app's callback will not run "
        "for them",
    )
    replay.set_defaults(run=run_replay)


def _add_database(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database",
        metavar="URL",
        help="store URL (default: $KAVACH_DATABASE_URL, else sqlite:///kavach.db)",
    )


def _database(args: argparse.Namespace, environ: Mapping[str, str]) -> str | None:
    given: str | None = args.database or environ.get("KAVACH_DATABASE_URL") or None
    return given


def _file_of(url: str) -> str | None:
    """The file a ``sqlite://`` or ``json://`` URL names (``None`` for other stores)."""
    from kavach.stores._urls import file_path

    if url.partition("://")[0].lower() not in ("sqlite", "json"):
        return None
    path = file_path(url)
    return path if path and path != ":memory:" else None


def _open_existing(args: argparse.Namespace, environ: Mapping[str, str]) -> Store:
    """The store to read, refusing a SQLite or JSON file that does not exist: opening it
    would create an empty store at a mistyped path and report no deliveries."""
    from kavach.stores import DEFAULT_DATABASE_URL, open_store

    url = _database(args, environ) or DEFAULT_DATABASE_URL
    path = _file_of(url)
    if path is not None and not os.path.exists(path):
        raise CliError(f"no store at {path} (check --database or KAVACH_DATABASE_URL)")
    return open_store(url)


#: A listed delivery, or the error of a row the store cannot read (written by hand, or
#: handed back by a driver as another type: a BLOB payload).
Listed = InboxEvent | StoreCorruptError


def _listing(store: Store, status: str | None, limit: int, offset: int) -> list[Listed]:
    """Deliveries ``offset`` to ``offset + limit`` of the newest-first listing.

    A row the store cannot read makes it refuse the whole listing
    (``StoreCorruptError``): the page is then read a row at a time, and each unreadable
    row takes its place as its error, so one bad row hides no other (a delivery
    recorded meanwhile moves the rows down one: a row read again is skipped). When the store
    cannot even count (a JSON file that does not open), the error is the store's and
    ends the command."""
    try:
        return list(store.list_events(status=status, limit=limit, offset=offset))
    except StoreCorruptError:
        total = store.count_events(status=status)
    listed: list[Listed] = []
    seen: set[str] = set()
    position = offset
    while len(listed) < limit and position < total:
        try:
            row = store.list_events(status=status, limit=1, offset=position)
        except StoreCorruptError as exc:
            listed.append(exc)
            position += 1
            continue
        position += 1
        if not row:
            break
        if row[0].webhook_id in seen:
            # Recorded meanwhile: a newer delivery moved the listing down one row.
            total += 1
            continue
        seen.add(row[0].webhook_id)
        listed.append(row[0])
    return listed


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment else "-"


def _line(event: InboxEvent) -> str:
    return "  ".join(
        (
            _when(event.received_at),
            event.webhook_id,
            f"{event.event_type:<24}",
            f"{event.status:<9}",
            f"{event.outcome or '-':<20}",
            str(event.attempts),
            event.user_id or "-",
        )
    )


def run_list(args: argparse.Namespace, environ: Mapping[str, str], stdout: TextIO) -> int:
    """``kavach polar events list``."""
    if args.limit <= 0:
        raise CliError("--limit must be positive")
    status = "failed" if args.failed else args.status
    store = _open_existing(args, environ)
    try:
        events = _listing(store, status, args.limit, 0)
        total = store.count_events(status=status)
    finally:
        store.close()
    print("received  webhook-id  type  status  outcome  attempts  user", file=stdout)
    unreadable = 0
    for event in events:
        if isinstance(event, StoreCorruptError):
            unreadable += 1
            print(f"-  unreadable row: {event}", file=stdout)
        else:
            print(_line(event), file=stdout)
    print(f"{len(events)} of {total} deliveries" + (f" with status {status}" if status else "")
          + (f", {unreadable} unreadable" if unreadable else ""), file=stdout)
    return 1 if unreadable else 0


def run_show(args: argparse.Namespace, environ: Mapping[str, str], stdout: TextIO) -> int:
    """``kavach polar events show WEBHOOK_ID``."""
    store = _open_existing(args, environ)
    try:
        event = store.get_event(args.webhook_id)
    finally:
        store.close()
    if event is None:
        raise CliError(f"no delivery with webhook-id {args.webhook_id!r}")
    fields = (
        ("webhook-id", event.webhook_id),
        ("type", event.event_type),
        ("status", event.status),
        ("outcome", event.outcome or "-"),
        ("attempts", str(event.attempts)),
        ("received", _when(event.received_at)),
        ("processed", _when(event.processed_at)),
        ("user", event.user_id or "-"),
        ("subscription", event.subscription_id or "-"),
        ("last error", event.last_error or "-"),
    )
    for name, value in fields:
        print(f"{name + ':':<14}{value}", file=stdout)
    if not args.no_payload:
        if not isinstance(event.payload, str):  # a Store of another make handed back bytes
            pretty = f"(not text: {type(event.payload).__name__})"
        else:
            try:
                pretty = json.dumps(json.loads(event.payload), indent=2, ensure_ascii=False)
            except ValueError:
                pretty = event.payload
        print("payload:", file=stdout)
        print(pretty, file=stdout)
    return 0


def _kavach_with_polar(args: argparse.Namespace, environ: Mapping[str, str]) -> Kavach:
    from kavach import create_kavach
    from kavach.auth import polar

    settings, warnings = polar_settings(environ)
    if settings is None:
        hint = warnings[0] if warnings else "set POLAR_ACCESS_TOKEN and POLAR_WEBHOOK_SECRET"
        raise CliError(f"replay needs the Polar settings serve uses: {hint}")
    plugin = polar(
        access_token=settings.access_token,
        webhook_secret=settings.webhook_secret,
        sandbox=settings.sandbox,
        organization_id=settings.organization_id,
        base_url=settings.base_url,
    )
    return create_kavach(_database(args, environ), plugins=[plugin])


def _owes_callback(event: InboxEvent) -> str | None:
    """Why replaying ``event`` here would lose the app's ``on_subscription_change``, if so.

    An unfinished delivery whose state is applied still owes the callback; so does an
    unfinished ``subscription.*`` delivery never applied (the process died before): applying
    it here, where the app's callback does not exist, would mark it done without one.
    """
    if event.status not in UNFINISHED:
        return None
    if event.outcome == "applied":
        return "its state is applied, its on_subscription_change has not run to the end"
    if event.outcome is None and event.event_type.startswith("subscription."):
        return ("it was never applied, and applying it here would skip your "
                "on_subscription_change")
    return None


def _unfinished(kavach: Kavach) -> Iterator[Listed]:
    """Every unfinished delivery, a page at a time (memory stays bounded).

    ``failed`` first: a ``received`` delivery whose replay fails becomes ``failed`` and is
    not met twice. Deliveries still unfinished after their turn stay at the head of the
    listing, so the next page starts after them. A row the store cannot read comes as its
    error (see :func:`_listing`), and stays.
    """
    store = kavach.store
    for status in ("failed", "received"):
        kept = 0
        while page := _listing(store, status, REPLAY_PAGE, kept):
            for event in page:
                yield event
                if isinstance(event, StoreCorruptError):
                    kept += 1
                    continue
                try:
                    after = store.get_event(event.webhook_id)
                except StoreCorruptError:
                    after = event  # unreadable now: it stays in the listing
                if after is not None and after.status == status:
                    kept += 1


def run_replay(args: argparse.Namespace, environ: Mapping[str, str], stdout: TextIO) -> int:
    """``kavach polar events replay (WEBHOOK_ID | --failed)``.

    Your application's ``on_subscription_change`` does not run here (it lives in your
    app's process). An unfinished ``subscription.*`` delivery still owes that callback when
    its state is applied but the callback never returned (it raised, or the process died in
    it), or when it was never applied at all: it is skipped — replay it from the app with
    ``kavach.plugins.polar.replay_event(id)`` — unless ``--without-callback`` says to finish
    it anyway. ``--failed`` goes through every unfinished delivery, however many; a row
    the store cannot read is that delivery's error, and the others still replay. Exit 1
    when any was skipped or failed.
    """
    with _kavach_with_polar(args, environ) as kavach:
        if args.failed:
            events: Iterator[Listed] = _unfinished(kavach)
        else:
            try:
                event: Listed | None = kavach.store.get_event(args.webhook_id)
            except StoreCorruptError as exc:
                event = exc
            if event is None:
                raise CliError(f"no delivery with webhook-id {args.webhook_id!r}")
            events = iter([event])
        total = failures = 0
        for event in events:
            total += 1
            if isinstance(event, StoreCorruptError):
                name = "-" if args.failed else args.webhook_id
                print(f"{name}  error: unreadable row: {event}", file=stdout)
                failures += 1
            elif not _replay_one(kavach, event, args.without_callback, stdout):
                failures += 1
        print(f"replayed {total - failures} of {total} deliveries", file=stdout)
    return 1 if failures else 0


def _replay_one(kavach: Kavach, event: InboxEvent, without_callback: bool, stdout: TextIO) -> bool:
    """Replay one delivery and print its line; ``False`` when skipped or failed."""
    from kavach.errors import KavachError

    webhook_id = event.webhook_id
    owed = _owes_callback(event)
    if owed is not None and not without_callback:
        print(
            f"{webhook_id}  skipped: {owed}; replay it from your app "
            "(kavach.plugins.polar.replay_event), or pass --without-callback",
            file=stdout,
        )
        return False
    try:
        outcome = kavach.plugins.polar.replay_event(webhook_id)
    except KavachError as exc:
        print(f"{webhook_id}  error: {exc}", file=stdout)
        return False
    print(f"{webhook_id}  {outcome.event_type}  {outcome.outcome}", file=stdout)
    return True
