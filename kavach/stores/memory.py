"""The in-memory store: for tests and throwaway demos. Everything is lost on exit.

One ``RLock`` guards the tables, so every method is atomic with respect to every other;
the conditional write is atomic simply because it runs under that lock.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import datetime

from kavach.errors import StoreError
from kavach.records import (
    InboxEvent,
    IngestResult,
    SessionRecord,
    SubscriptionState,
    UserRecord,
)
from kavach.stores import _rules
from kavach.stores._codec import as_utc, utc_record
from kavach.stores._tables import Tables
from kavach.stores.base import SCHEMA_VERSION


class MemoryStore:
    """A :class:`~kavach.stores.base.Store` that keeps everything in process memory."""

    kind = "memory"

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._tables = Tables()
        self._closed = False

    def __repr__(self) -> str:
        with self._lock:
            return f"MemoryStore(users={len(self._tables.users)})"

    # -- lifecycle ----------------------------------------------------------------------
    def schema_version(self) -> int:
        """Always the current :data:`~kavach.stores.base.SCHEMA_VERSION`."""
        return SCHEMA_VERSION

    def close(self) -> None:
        """Mark the store closed; later calls raise ``StoreError``. Idempotent."""
        with self._lock:
            self._closed = True

    def _tables_open(self) -> Tables:
        if self._closed:
            raise StoreError("the memory store is closed")
        return self._tables

    # -- users --------------------------------------------------------------------------
    def create_user(self, user: UserRecord) -> UserRecord:
        """Insert a user; see :meth:`kavach.stores.base.Store.create_user`."""
        user = utc_record(user)
        with self._lock:
            tables = self._tables_open()
            tables.apply(tables.plan_create_user(user))
        return user

    def get_user(self, user_id: str) -> UserRecord | None:
        """The user with this id, or ``None``."""
        with self._lock:
            return self._tables_open().users.get(user_id)

    def get_user_by_email(self, email: str) -> UserRecord | None:
        """Case-insensitive lookup by email."""
        with self._lock:
            return self._tables_open().user_by_email(email)

    def get_user_by_polar_customer(self, customer_id: str) -> UserRecord | None:
        """The user linked to this Polar customer id, or ``None``."""
        with self._lock:
            return self._tables_open().user_by_customer(customer_id)

    def update_user(
        self,
        user_id: str,
        *,
        email: str | None = None,
        name: str | None = None,
        password_hash: str | None = None,
    ) -> UserRecord:
        """Change the given fields; see :meth:`kavach.stores.base.Store.update_user`."""
        with self._lock:
            tables = self._tables_open()
            change, updated = tables.plan_update_user(
                user_id, email=email, name=name, password_hash=password_hash
            )
            if change is not None:
                tables.apply(change)
            return updated

    def link_polar_customer(self, user_id: str, customer_id: str) -> UserRecord:
        """Set the user's Polar customer id; see the protocol for the rules."""
        with self._lock:
            tables = self._tables_open()
            change, linked = tables.plan_link_polar_customer(user_id, customer_id)
            if change is not None:
                tables.apply(change)
            return linked

    def count_users(self) -> int:
        """How many users there are."""
        with self._lock:
            return len(self._tables_open().users)

    # -- sessions -----------------------------------------------------------------------
    def create_session(self, session: SessionRecord) -> None:
        """Insert a session; ``ConflictError`` on a duplicate token hash."""
        session = utc_record(session)
        with self._lock:
            tables = self._tables_open()
            tables.apply(tables.plan_create_session(session))

    def get_session(self, token_hash: str) -> SessionRecord | None:
        """The session, expired or revoked ones included."""
        with self._lock:
            return self._tables_open().sessions.get(token_hash)

    def revoke_session(self, token_hash: str, at: datetime) -> bool:
        """Mark the session revoked; ``True`` when a live one was revoked."""
        at = as_utc(at)
        with self._lock:
            tables = self._tables_open()
            change = tables.plan_revoke_session(token_hash, at)
            if change is None:
                return False
            tables.apply(change)
            return True

    def delete_expired_sessions(self, now: datetime) -> int:
        """Remove sessions that expired before ``now``; returns how many."""
        now = as_utc(now)
        with self._lock:
            tables = self._tables_open()
            change = tables.plan_delete_expired_sessions(now)
            tables.apply(change)
            return len(change.deleted_sessions)

    # -- Polar subscriptions ------------------------------------------------------------
    def apply_subscription(
        self, state: SubscriptionState, *, webhook_id: str | None = None
    ) -> bool:
        """THE conditional write; see :meth:`kavach.stores.base.Store.apply_subscription`."""
        state = utc_record(state)
        with self._lock:
            tables = self._tables_open()
            change = tables.plan_apply_subscription(state, webhook_id)
            if change is None:
                return False
            tables.apply(change)
            return True

    def get_subscription(self, subscription_id: str) -> SubscriptionState | None:
        """The stored state of one subscription, or ``None``."""
        with self._lock:
            return self._tables_open().subscriptions.get(subscription_id)

    def list_subscriptions(self, user_id: str) -> list[SubscriptionState]:
        """The user's subscriptions, most relevant first."""
        with self._lock:
            return _rules.by_relevance(self._tables_open().subscriptions_of(user_id))

    # -- webhook inbox ------------------------------------------------------------------
    def record_event(self, event: InboxEvent) -> tuple[InboxEvent, bool]:
        """Record a delivery; see :meth:`kavach.stores.base.Store.record_event`."""
        event = utc_record(event)
        with self._lock:
            tables = self._tables_open()
            change, stored, is_new = tables.plan_record_event(event)
            if change is not None:
                tables.apply(change)
            return stored, is_new

    def ingest_event(
        self, event: InboxEvent, state: SubscriptionState | None = None
    ) -> IngestResult:
        """Record a delivery and apply its state in one step; see
        :meth:`kavach.stores.base.Store.ingest_event`."""
        event = utc_record(event)
        if state is not None:
            state = utc_record(state)
        with self._lock:
            tables = self._tables_open()
            change, result = tables.plan_ingest_event(event, state)
            if change is not None:
                tables.apply(change)
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
        with self._lock:
            tables = self._tables_open()
            change, done = tables.plan_finish_event(
                webhook_id,
                status=status,
                at=at,
                outcome=outcome,
                error=error,
                user_id=user_id,
                subscription_id=subscription_id,
            )
            tables.apply(change)
            return done

    def get_event(self, webhook_id: str) -> InboxEvent | None:
        """The inbox event with this webhook id, or ``None``."""
        with self._lock:
            return self._tables_open().events.get(webhook_id)

    def list_events(
        self, *, status: str | None = None, limit: int = 100, offset: int = 0
    ) -> Sequence[InboxEvent]:
        """Newest first (by ``received_at``, then ``webhook_id``)."""
        with self._lock:
            return self._tables_open().list_events(status, limit, offset)

    def count_events(self, *, status: str | None = None) -> int:
        """How many inbox events (with ``status``, when given)."""
        with self._lock:
            return self._tables_open().count_events(status)
