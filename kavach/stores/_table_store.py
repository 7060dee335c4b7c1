"""The Store API on top of :class:`~kavach.stores._tables.Tables`, shared by the memory and
JSON-file stores.

Both keep every record in a :class:`Tables` held in memory; they differ only in how they
guard it and make a change durable. A subclass provides two hooks:

* ``_locked(writing=...)``: a context manager that holds the store's locks (and, for the
  JSON store, brings the tables up to date with the files) and yields the tables;
* ``_commit(change)``: make ``change`` durable if the store keeps anything, then apply it to
  the tables (called with the write lock held).

Each method here plans a change on the tables (the rules live in ``Tables`` and
``_rules``), commits it, and returns the answer: one lock hold per call, so every method,
the conditional write included, is atomic.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import datetime

from kavach.records import (
    InboxEvent,
    IngestResult,
    SessionRecord,
    SubscriptionState,
    UserRecord,
)
from kavach.stores import _rules
from kavach.stores._codec import as_utc, utc_record
from kavach.stores._tables import Change, Tables


class TableStore:
    """The Store methods for stores whose records live in a :class:`Tables`."""

    def _locked(self, *, writing: bool) -> AbstractContextManager[Tables]:
        """Hold the store's locks (shared for reads, exclusive for writes); yield the tables."""
        raise NotImplementedError

    def _commit(self, change: Change) -> None:
        """Make ``change`` durable (if the store keeps anything) and apply it to the tables."""
        raise NotImplementedError

    # -- users --------------------------------------------------------------------------
    def create_user(self, user: UserRecord) -> UserRecord:
        """Insert a user; see :meth:`kavach.stores.base.Store.create_user`."""
        user = utc_record(user)
        with self._locked(writing=True) as tables:
            self._commit(tables.plan_create_user(user))
        return user

    def get_user(self, user_id: str) -> UserRecord | None:
        """The user with this id, or ``None``."""
        with self._locked(writing=False) as tables:
            return tables.users.get(user_id)

    def get_user_by_email(self, email: str) -> UserRecord | None:
        """Case-insensitive lookup by email."""
        with self._locked(writing=False) as tables:
            return tables.user_by_email(email)

    def get_user_by_polar_customer(self, customer_id: str) -> UserRecord | None:
        """The user linked to this Polar customer id, or ``None``."""
        with self._locked(writing=False) as tables:
            return tables.user_by_customer(customer_id)

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
        with self._locked(writing=True) as tables:
            change, updated = tables.plan_update_user(
                user_id, email=email, name=name, password_hash=password_hash,
                if_password_hash=if_password_hash,
            )
            if change is not None:
                self._commit(change)
            return updated

    def link_polar_customer(self, user_id: str, customer_id: str) -> UserRecord:
        """Set the user's Polar customer id; see the protocol for the rules."""
        with self._locked(writing=True) as tables:
            change, linked = tables.plan_link_polar_customer(user_id, customer_id)
            if change is not None:
                self._commit(change)
            return linked

    def count_users(self) -> int:
        """How many users there are."""
        with self._locked(writing=False) as tables:
            return len(tables.users)

    # -- sessions -----------------------------------------------------------------------
    def create_session(self, session: SessionRecord) -> None:
        """Insert a session; ``ConflictError`` on a duplicate token hash."""
        session = utc_record(session)
        with self._locked(writing=True) as tables:
            self._commit(tables.plan_create_session(session))

    def get_session(self, token_hash: str) -> SessionRecord | None:
        """The session, expired or revoked ones included."""
        with self._locked(writing=False) as tables:
            return tables.sessions.get(token_hash)

    def revoke_session(self, token_hash: str, at: datetime) -> bool:
        """Mark the session revoked; ``True`` when it was not revoked yet (expired or not)."""
        at = as_utc(at)
        with self._locked(writing=True) as tables:
            change = tables.plan_revoke_session(token_hash, at)
            if change is None:
                return False
            self._commit(change)
            return True

    def delete_expired_sessions(self, now: datetime) -> int:
        """Remove sessions that expired before ``now``; returns how many."""
        now = as_utc(now)
        with self._locked(writing=True) as tables:
            change = tables.plan_delete_expired_sessions(now)
            if change.deleted_sessions:
                self._commit(change)
            return len(change.deleted_sessions)

    # -- Polar subscriptions ------------------------------------------------------------
    def apply_subscription(
        self, state: SubscriptionState, *, webhook_id: str | None = None
    ) -> bool:
        """THE conditional write; see :meth:`kavach.stores.base.Store.apply_subscription`."""
        state = utc_record(state)
        with self._locked(writing=True) as tables:
            change = tables.plan_apply_subscription(state, webhook_id)
            if change is None:
                return False
            self._commit(change)
            return True

    def get_subscription(self, subscription_id: str) -> SubscriptionState | None:
        """The stored state of one subscription, or ``None``."""
        with self._locked(writing=False) as tables:
            return tables.subscriptions.get(subscription_id)

    def list_subscriptions(self, user_id: str) -> list[SubscriptionState]:
        """The user's subscriptions, most relevant first."""
        with self._locked(writing=False) as tables:
            return _rules.by_relevance(tables.subscriptions_of(user_id))

    # -- webhook inbox ------------------------------------------------------------------
    def record_event(self, event: InboxEvent) -> tuple[InboxEvent, bool]:
        """Record a delivery; see :meth:`kavach.stores.base.Store.record_event`."""
        event = utc_record(event)
        with self._locked(writing=True) as tables:
            change, stored, is_new = tables.plan_record_event(event)
            if change is not None:
                self._commit(change)
            return stored, is_new

    def ingest_event(
        self, event: InboxEvent, state: SubscriptionState | None = None
    ) -> IngestResult:
        """Record a delivery and apply its state in one step; see
        :meth:`kavach.stores.base.Store.ingest_event`."""
        event = utc_record(event)
        if state is not None:
            state = utc_record(state)
        with self._locked(writing=True) as tables:
            change, result = tables.plan_ingest_event(event, state)
            if change is not None:
                self._commit(change)
            return result

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
        with self._locked(writing=True) as tables:
            change, done = tables.plan_finish_event(
                webhook_id,
                status=status,
                at=at,
                outcome=outcome,
                error=error,
                user_id=user_id,
                subscription_id=subscription_id,
            )
            self._commit(change)
            return done

    def get_event(self, webhook_id: str) -> InboxEvent | None:
        """The inbox event with this webhook id, or ``None``."""
        with self._locked(writing=False) as tables:
            return tables.events.get(webhook_id)

    def list_events(
        self, *, status: str | None = None, limit: int = 100, offset: int = 0
    ) -> Sequence[InboxEvent]:
        """Newest first (by ``received_at``, then ``webhook_id``)."""
        with self._locked(writing=False) as tables:
            return tables.list_events(status, limit, offset)

    def count_events(self, *, status: str | None = None) -> int:
        """How many inbox events (with ``status``, when given)."""
        with self._locked(writing=False) as tables:
            return tables.count_events(status)
