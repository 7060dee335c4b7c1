"""In-memory tables shared by the memory store and the JSON file store.

Every write is split in two steps:

1. a ``plan_*`` method checks the contract's rules against the current tables and
   returns a :class:`Change` (the records to put or delete) without touching anything;
2. :meth:`Tables.apply` puts the change in place.

The memory store runs both steps under its lock. The JSON file store, between the two,
appends the change to its journal and fsyncs it: a journal line *is* a ``Change``, and
replaying the journal is calling :meth:`Tables.apply` line after line. Callers hold a
lock; nothing here is thread-safe on its own.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime
from typing import NamedTuple

import attrs

from kavach.errors import ConflictError, EmailTakenError, NotFoundError, UserNotFoundError
from kavach.records import (
    InboxEvent,
    IngestResult,
    SessionRecord,
    SubscriptionState,
    UserRecord,
)
from kavach.stores import _rules
from kavach.stores.base import legacy_email_key, normalize_email

_log = logging.getLogger("kavach.stores")


class Change(NamedTuple):
    """One committed change: records to put (insert or replace) and sessions to delete.
    (A named tuple: every write makes one.)"""

    users: tuple[UserRecord, ...] = ()
    sessions: tuple[SessionRecord, ...] = ()
    deleted_sessions: tuple[str, ...] = ()
    subscriptions: tuple[SubscriptionState, ...] = ()
    events: tuple[InboxEvent, ...] = ()


class Tables:
    """Users, sessions, subscriptions and inbox events, with the indexes lookups need."""

    def __init__(self) -> None:
        self.users: dict[str, UserRecord] = {}
        self.user_id_by_email: dict[str, str] = {}
        self.user_id_by_customer: dict[str, str] = {}
        self.sessions: dict[str, SessionRecord] = {}
        self.subscriptions: dict[str, SubscriptionState] = {}
        self.subscription_ids_by_user: dict[str, set[str]] = {}
        self.events: dict[str, InboxEvent] = {}
        # By status. A plain dict: a Counter's += costs twice as much (one per delivery).
        self.event_counts: dict[str, int] = {}
        #: Users indexed by another key than their normalized email: of two users stored
        #: under an older rule (schema < 4) that the current one takes for one address,
        #: the one that lost the key keeps the key the older rule gave it (case folding
        #: alone), as the SQL store's migration leaves it. The JSON store keeps this in
        #: its snapshot, so that the decision is made once (:meth:`_decide_email_key`).
        self.legacy_email_keys: dict[str, str] = {}
        #: Whether :meth:`_decide_email_key` decided between two users since these tables
        #: were loaded: the decision is not in the file yet.
        self.undecided_email_keys = False
        #: The users :meth:`_decide_email_key` gave a legacy key since the last
        #: :meth:`settle_email_keys`: decided midway through loading (snapshot, then
        #: journal), not on the users as they are once loaded.
        self._tentative_losers: set[str] = set()

    # -- reads ----------------------------------------------------------------------
    def user_by_email(self, email: str) -> UserRecord | None:
        """The user whose normalized email equals ``email``'s."""
        user_id = self.user_id_by_email.get(normalize_email(email))
        return None if user_id is None else self.users[user_id]

    def user_by_customer(self, customer_id: str) -> UserRecord | None:
        """The user linked to Polar customer ``customer_id``."""
        user_id = self.user_id_by_customer.get(customer_id)
        return None if user_id is None else self.users[user_id]

    def subscriptions_of(self, user_id: str) -> list[SubscriptionState]:
        """The user's subscriptions, in no particular order."""
        ids = self.subscription_ids_by_user.get(user_id, ())
        return [self.subscriptions[sub_id] for sub_id in ids]

    def list_events(self, status: str | None, limit: int, offset: int) -> list[InboxEvent]:
        """Newest first (``received_at``, then ``webhook_id``), filtered and paged."""
        _rules.check_page(limit, offset)
        events: Iterable[InboxEvent] = self.events.values()
        if status is not None:
            events = (event for event in events if event.status == status)
        ordered = sorted(events, key=lambda e: (e.received_at, e.webhook_id), reverse=True)
        return ordered[offset : offset + limit]

    def count_events(self, status: str | None) -> int:
        """How many inbox events (with ``status``, when given)."""
        return len(self.events) if status is None else self.event_counts.get(status, 0)

    # -- plans: check the rules, return what to write --------------------------------
    def plan_create_user(self, user: UserRecord) -> Change:
        """Raises ``ConflictError(field="id")``, ``EmailTakenError`` or
        ``ConflictError(field="polar_customer_id")``, in that order of checking."""
        if user.id in self.users:
            raise ConflictError(f"a user with id {user.id!r} already exists", field="id")
        if normalize_email(user.email) in self.user_id_by_email:
            raise EmailTakenError(user.email)
        if user.polar_customer_id is not None:
            self._check_customer_free(user.polar_customer_id, user.id)
        return Change(users=(user,))

    def plan_update_user(
        self,
        user_id: str,
        *,
        email: str | None,
        name: str | None,
        password_hash: str | None,
        if_password_hash: str | None = None,
    ) -> tuple[Change | None, UserRecord]:
        """The change and the updated user; raises ``UserNotFoundError``, ``EmailTakenError``."""
        user = self._user(user_id)
        if if_password_hash is not None and user.password_hash != if_password_hash:
            return None, user
        if email is not None and email != user.email:  # as SQL: the same email keeps its key
            holder = self.user_id_by_email.get(normalize_email(email))
            if holder is not None and holder != user_id:
                raise EmailTakenError(email)
        updated = attrs.evolve(
            user,
            email=user.email if email is None else email,
            name=user.name if name is None else name,
            password_hash=user.password_hash if password_hash is None else password_hash,
        )
        return (None if updated == user else Change(users=(updated,))), updated

    def plan_link_polar_customer(
        self, user_id: str, customer_id: str
    ) -> tuple[Change | None, UserRecord]:
        """The change (``None`` when already linked) and the linked user."""
        user = self._user(user_id)
        if user.polar_customer_id == customer_id:
            return None, user
        self._check_customer_free(customer_id, user_id)
        linked = attrs.evolve(user, polar_customer_id=customer_id)
        return Change(users=(linked,)), linked

    def plan_create_session(self, session: SessionRecord) -> Change:
        """Raises ``ConflictError(field="token_hash")`` on a duplicate hash."""
        if session.token_hash in self.sessions:
            raise ConflictError("a session with this token hash already exists", field="token_hash")
        return Change(sessions=(session,))

    def plan_revoke_session(self, token_hash: str, at: datetime) -> Change | None:
        """``None`` when there is no live (unrevoked) session with this hash."""
        session = self.sessions.get(token_hash)
        if session is None or session.revoked_at is not None:
            return None
        return Change(sessions=(attrs.evolve(session, revoked_at=at),))

    def plan_delete_expired_sessions(self, now: datetime) -> Change:
        """Delete the sessions whose ``expires_at`` is before ``now``."""
        expired = tuple(h for h, s in self.sessions.items() if s.expires_at < now)
        return Change(deleted_sessions=expired)

    def plan_apply_subscription(
        self, state: SubscriptionState, webhook_id: str | None
    ) -> Change | None:
        """The conditional write: ``None`` unless ``state`` is newer than the stored one."""
        users = self._mirrors_after(state)
        if users is None:
            return None
        event = self.events.get(webhook_id) if webhook_id is not None else None
        events = () if event is None else (_rules.applied_event(event, state),)
        return Change(users=users, subscriptions=(state,), events=events)

    def plan_record_event(self, event: InboxEvent) -> tuple[Change | None, InboxEvent, bool]:
        """The change, the event as stored afterwards, and whether it was new."""
        stored = self.events.get(event.webhook_id)
        if stored is None:
            return Change(events=(event,)), event, True
        again = _rules.redelivered(stored)
        if again is None:
            return None, stored, False
        return Change(events=(again,)), again, False

    def plan_ingest_event(
        self, event: InboxEvent, state: SubscriptionState | None
    ) -> tuple[Change | None, IngestResult]:
        """The change (``None`` for a processed duplicate) and the result; see
        :meth:`kavach.stores.base.Store.ingest_event`. Raises ``UserNotFoundError``."""
        if state is not None and state.user_id not in self.users:
            raise UserNotFoundError(state.user_id)
        stored = self.events.get(event.webhook_id)
        if stored is not None:  # a redelivery: a duplicate, in flight, or a retry
            if stored.status == "processed":
                return None, IngestResult(stored, created=False, applied=None, duplicate=True)
            if _rules.in_flight(stored, event.received_at):
                return None, IngestResult(stored, created=False, applied=None, in_flight=True)
        applied: bool | None = None
        users = None
        if state is not None and (stored is None or _rules.ingest_applies(stored)):
            users = self._mirrors_after(state)
            applied = users is not None
        row = _rules.ingested(event, stored, state, applied)
        if state is None or users is None:
            change = Change(events=(row,))
        else:  # positional (one per delivery): users, sessions, deleted, subscriptions, events
            change = Change(users, (), (), (state,), (row,))
        return change, IngestResult(row, stored is None, applied)  # event, created, applied

    def plan_finish_event(
        self,
        webhook_id: str,
        *,
        status: str,
        at: datetime,
        outcome: str | None,
        error: str | None,
        user_id: str | None,
        subscription_id: str | None,
    ) -> tuple[Change, InboxEvent]:
        """Raises ``NotFoundError`` for an unknown ``webhook_id``."""
        stored = self.events.get(webhook_id)
        if stored is None:
            raise NotFoundError(f"no webhook event with id {webhook_id!r}")
        done = _rules.finished(
            stored,
            status=status,
            at=at,
            outcome=outcome,
            error=error,
            user_id=user_id,
            subscription_id=subscription_id,
        )
        return Change(events=(done,)), done

    # -- apply ------------------------------------------------------------------------
    def apply(self, change: Change) -> None:
        """Put ``change`` in place (no checks: they ran when it was planned)."""
        users, sessions, deleted_sessions, subscriptions, events = change
        for user in users:
            self._put_user(user)
        for session in sessions:
            self.sessions[session.token_hash] = session
        for token_hash in deleted_sessions:
            self.sessions.pop(token_hash, None)
        for state in subscriptions:
            self._put_subscription(state)
        for event in events:
            previous = self.events.get(event.webhook_id)
            counts = self.event_counts
            if previous is not None:
                counts[previous.status] -= 1
            self.events[event.webhook_id] = event
            counts[event.status] = counts.get(event.status, 0) + 1

    # -- helpers ----------------------------------------------------------------------
    def _mirrors_after(self, state: SubscriptionState) -> tuple[UserRecord, ...] | None:
        """The conditional write's check: ``None`` unless ``state`` is newer than the stored
        state; else the users whose mirror columns the write changes, recomputed: the new
        holder and, when the subscription moved to another user, its previous holder.
        Raises ``UserNotFoundError``."""
        holder = self.users.get(state.user_id)
        if holder is None:
            raise UserNotFoundError(state.user_id)
        current = self.subscriptions.get(state.id)
        if current is not None and current.version >= state.version:
            return None
        linked = holder.polar_customer_id
        if linked is None and self._links(holder, state.customer_id):
            linked = state.customer_id
        held = self.subscription_ids_by_user.get(state.user_id, ())
        if len(held) == 1 and state.id in held:  # the usual case: only this one
            mirrored = _rules.mirror_of(holder, state, linked)
        else:
            states = [self.subscriptions[i] for i in held if i != state.id]
            states.append(state)
            mirrored = _rules.with_mirror(holder, states, linked)
        if current is None or current.user_id == state.user_id:
            return (mirrored,)
        previous = self.users[current.user_id]
        remaining = [s for s in self.subscriptions_of(previous.id) if s.id != state.id]
        return (mirrored, _rules.with_mirror(previous, remaining, previous.polar_customer_id))

    def _links(self, holder: UserRecord, customer_id: str | None) -> bool:
        """Does applying a state of Polar customer ``customer_id`` link ``holder`` to it?
        Only an unlinked holder, and only to a customer no other user holds
        (:func:`kavach.stores._rules.links_customer`)."""
        return _rules.links_customer(holder.polar_customer_id, customer_id) and (
            customer_id not in self.user_id_by_customer
        )

    def _user(self, user_id: str) -> UserRecord:
        user = self.users.get(user_id)
        if user is None:
            raise UserNotFoundError(user_id)
        return user

    def _check_customer_free(self, customer_id: str, user_id: str) -> None:
        holder = self.user_id_by_customer.get(customer_id)
        if holder is not None and holder != user_id:
            raise ConflictError(
                f"Polar customer {customer_id!r} is linked to another user",
                field="polar_customer_id",
            )

    def recompute_mirrors(self) -> None:
        """Give every user holding two or more subscriptions the mirror columns the
        current relevance rule picks (after a change of the rule: stored mirrors are
        computed when a state is written)."""
        holders: dict[str, int] = {}
        for state in self.subscriptions.values():
            holders[state.user_id] = holders.get(state.user_id, 0) + 1
        for user_id, count in holders.items():
            user = self.users.get(user_id)
            if count > 1 and user is not None:
                mirrored = _rules.with_mirror(
                    user, self.subscriptions_of(user_id), user.polar_customer_id
                )
                self._put_user(mirrored)

    def _put_user(self, user: UserRecord) -> None:
        previous = self.users.get(user.id)
        self.users[user.id] = user
        if previous is None or previous.email != user.email:
            self._index_email(previous, user)
        if previous is None or previous.polar_customer_id != user.polar_customer_id:
            if previous is not None and previous.polar_customer_id is not None:
                self.user_id_by_customer.pop(previous.polar_customer_id, None)
            if user.polar_customer_id is not None:
                self.user_id_by_customer[user.polar_customer_id] = user.id

    def _index_email(self, previous: UserRecord | None, user: UserRecord) -> None:
        """Index ``user`` (new, or ``previous`` with another email) by its email's key."""
        if previous is not None:  # a new email drops a kept legacy key, as in SQL
            old_key = self.legacy_email_keys.pop(user.id, None)
            if old_key is None:
                old_key = normalize_email(previous.email)
            if self.user_id_by_email.get(old_key) == user.id:
                del self.user_id_by_email[old_key]
        else:
            legacy = self.legacy_email_keys.get(user.id)
            if legacy is not None:  # lost the key when the store was upgraded: for good
                self.user_id_by_email.setdefault(legacy, user.id)
                return
        key = normalize_email(user.email)
        holder = self.user_id_by_email.get(key)
        if holder is None or holder == user.id:
            self.user_id_by_email[key] = user.id
        else:  # two users stored under an older rule (schema < 4): see _keeps_key
            self._decide_email_key(key, user, self.users[holder])

    def _decide_email_key(self, key: str, user: UserRecord, holder: UserRecord) -> None:
        """Give ``key`` to one of ``user`` and ``holder`` (:func:`_keeps_key`). The other
        keeps the key the older rule gave it, recorded in :attr:`legacy_email_keys`: the
        JSON store writes it to its snapshot, so later loads do not decide again. The
        decision is tentative (and not logged) until :meth:`settle_email_keys`."""
        winner, loser = (user, holder) if _keeps_key(user, holder) else (holder, user)
        self.user_id_by_email[key] = winner.id
        self._tentative_losers.add(loser.id)
        legacy = legacy_email_key(loser.email)
        if legacy != key:  # (else the two had one key under the older rule too)
            self.legacy_email_keys[loser.id] = legacy
            self.user_id_by_email.setdefault(legacy, loser.id)
            self.undecided_email_keys = True

    def settle_email_keys(self) -> None:
        """Decide again, on the users as they are now, what :meth:`_decide_email_key`
        decided while they were loaded, and log the decisions: the snapshot's users are
        indexed before the journal replays, and a decision made then must not outlive a
        winner that leaves the address later in the journal (the SQL migration decides
        on the rows as they are). Legacy keys read from the snapshot stay; nothing
        happens when nothing was decided."""
        if not self._tentative_losers:
            return
        for user_id in self._tentative_losers:
            self.legacy_email_keys.pop(user_id, None)
        self._tentative_losers.clear()
        self.user_id_by_email.clear()
        for user in self.users.values():
            self._index_email(None, user)
        for loser_id in sorted(self._tentative_losers):
            loser = self.users[loser_id]
            winner = self.user_id_by_email.get(normalize_email(loser.email))
            _log.warning(
                "users %s and %s have the same normalized email; %s keeps it",
                winner, loser_id, winner,
            )
        self._tentative_losers.clear()

    def drop_unknown_legacy_keys(self) -> None:
        """Forget legacy keys of users that do not exist: a user created later under such
        an id would otherwise never be indexed by its own email."""
        for user_id in [u for u in self.legacy_email_keys if u not in self.users]:
            del self.legacy_email_keys[user_id]

    def _put_subscription(self, state: SubscriptionState) -> None:
        previous = self.subscriptions.get(state.id)
        self.subscriptions[state.id] = state
        if previous is not None:
            if previous.user_id == state.user_id:
                return  # a newer state of a subscription already indexed under its holder
            self.subscription_ids_by_user[previous.user_id].discard(state.id)
        held = self.subscription_ids_by_user.get(state.user_id)
        if held is None:
            self.subscription_ids_by_user[state.user_id] = {state.id}
        else:
            held.add(state.id)


def _keeps_key(user: UserRecord, holder: UserRecord | None) -> bool:
    """Whether ``user`` takes a normalized email ``holder`` holds, both stored under an
    older rule (an upgraded store), decided as the SQL store's schema 4 migration does
    and whatever the order records load in: the one whose email was already in that form
    (by case folding alone) keeps it; else the older (``created_at``, then ``id``)."""
    if holder is None:
        return True
    key = normalize_email(user.email)
    user_stable = legacy_email_key(user.email) == key
    holder_stable = legacy_email_key(holder.email) == key
    if user_stable != holder_stable:
        return user_stable
    return (user.created_at, user.id) < (holder.created_at, holder.id)
