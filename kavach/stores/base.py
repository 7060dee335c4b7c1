"""The store contract: what every backend (memory, JSON file, SQL) must do.

All four backends pass one shared test suite (``tests/stores/contract.py``). The
central promise is :meth:`Store.apply_subscription`: "write this subscription state
only if its ``version`` is newer than the stored one" is ONE atomic step, and when it
applies, the user's mirror columns (``polar_subscription_*`` on ``kavach_users``) are
recomputed from all the user's subscriptions in the same step, using
:func:`kavach.records.most_relevant`. :meth:`Store.ingest_event` is the webhook's one
step: inbox row and conditional write in a single transaction.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from datetime import datetime
from typing import Protocol, runtime_checkable

from kavach.records import (
    InboxEvent,
    IngestResult,
    SessionRecord,
    SubscriptionState,
    UserRecord,
)

#: The schema version the current code writes. Bump it with a new migration step.
#: 2: the webhook inbox's ``claimed_until`` (the claim of a delivery in flight).
#: 3: SQL only: the inbox's index on ``status`` covers unfinished deliveries only.
#: 4: SQL only: ``email_normalized`` recomputed for :func:`normalize_email`'s NFKC step.
SCHEMA_VERSION = 4


def normalize_email(email: str) -> str:
    """The key emails are unique under: stripped, then Unicode NFKC and case folding
    (Unicode's NFKC_Casefold, as ``normalize(NFKC, casefold(normalize(NFKC, ...)))``), so
    addresses that look the same — ``josé`` composed or decomposed, its fullwidth
    letters (U+FF4A...), any case — are one address."""
    text = email.strip()
    if text.isascii():  # the common case: NFKC changes no ASCII text
        return text.lower()
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())


def legacy_email_key(email: str) -> str:
    """The key schema 3 and earlier gave an email: stripped and case-folded, without
    NFKC. An account that an upgrade found sharing its :func:`normalize_email` key with
    an older one keeps this key (every store decides alike)."""
    return email.strip().casefold()


#: The longest text a store keeps in an id or name column (the SQL stores' VARCHAR(255)).
MAX_TEXT_LENGTH = 255


def encodable_text(value: str) -> bool:
    """Whether every store can hold ``value`` at all: no NUL (PostgreSQL refuses it,
    even in a query) and valid UTF-8 (no lone surrogate, which a JSON ``\\ud800``
    escape can make). Text that fails is never given to a store: the stores would
    refuse it differently (or not at all), and a retry could not help."""
    if "\x00" in value:
        return False
    return value.isascii() or utf8_text(value)


def utf8_text(value: str) -> bool:
    """Whether ``value`` encodes as UTF-8: no lone UTF-16 surrogate (a JSON ``\\ud800``
    escape, or undecodable bytes in an environment variable, make one)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def storable_text(value: str) -> bool:
    """Whether every store keeps ``value`` as it is in an id or name column:
    :func:`encodable_text`, at most :data:`MAX_TEXT_LENGTH` characters."""
    return len(value) <= MAX_TEXT_LENGTH and encodable_text(value)


@runtime_checkable
class Store(Protocol):
    """Persistence for users, sessions, Polar subscription state and the webhook inbox.

    Methods are thread-safe. Times are aware UTC datetimes. Records are immutable
    values; updates return the new record.
    """

    #: A short name for ``repr`` and logs:
    #: ``memory``, ``json``, ``sqlite``, ``postgres`` or ``mysql``.
    kind: str

    # -- lifecycle ----------------------------------------------------------------
    def schema_version(self) -> int:
        """The schema version recorded in the store (migrations already ran on open)."""
        ...

    def close(self) -> None:
        """Release files and connections. Idempotent."""
        ...

    # -- users --------------------------------------------------------------------
    def create_user(self, user: UserRecord) -> UserRecord:
        """Insert a user. Raises ``EmailTakenError`` when the email (case-insensitive) is taken,
        ``ConflictError(field="id")`` when the id is."""
        ...

    def get_user(self, user_id: str) -> UserRecord | None: ...

    def get_user_by_email(self, email: str) -> UserRecord | None:
        """Case-insensitive lookup (see :func:`normalize_email`)."""
        ...

    def get_user_by_polar_customer(self, customer_id: str) -> UserRecord | None: ...

    def update_user(
        self,
        user_id: str,
        *,
        email: str | None = None,
        name: str | None = None,
        password_hash: str | None = None,
        if_password_hash: str | None = None,
    ) -> UserRecord:
        """Change the given fields (``None`` = leave as is). With ``if_password_hash``,
        change nothing unless the stored hash is that one (a re-hash at sign-in must not
        overwrite a password changed meanwhile); the stored user is returned either way.
        Raises ``UserNotFoundError``, ``EmailTakenError``."""
        ...

    def link_polar_customer(self, user_id: str, customer_id: str) -> UserRecord:
        """Set the user's ``polar_customer_id`` (idempotent for the same value). Raises
        ``ConflictError(field="polar_customer_id")`` when another user holds it, and
        ``UserNotFoundError``. Overwrites a different previous value of this user."""
        ...

    def count_users(self) -> int: ...

    # -- sessions -----------------------------------------------------------------
    def create_session(self, session: SessionRecord) -> None:
        """Insert a session (keyed by ``token_hash``).

        Raises ``ConflictError`` on a duplicate hash."""
        ...

    def get_session(self, token_hash: str) -> SessionRecord | None:
        """The session, expired or revoked ones included (the caller decides)."""
        ...

    def revoke_session(self, token_hash: str, at: datetime) -> bool:
        """Mark revoked; ``True`` when the session was not revoked yet (expired or not)."""
        ...

    def delete_expired_sessions(self, now: datetime) -> int:
        """Remove sessions that expired before ``now``; returns how many."""
        ...

    # -- Polar subscriptions ------------------------------------------------------
    def apply_subscription(
        self, state: SubscriptionState, *, webhook_id: str | None = None
    ) -> bool:
        """THE conditional write. Atomically: if no state is stored for ``state.id``, or the
        stored ``version`` is strictly lower, store ``state``, recompute the mirror columns
        of ``state.user_id`` and — when ``webhook_id`` is given — set that inbox event's
        ``outcome`` to ``"applied"``, ``subscription_id`` and ``user_id``; return ``True``.
        Otherwise change nothing and return ``False``. Raises ``UserNotFoundError``.

        An applied state also links its holder to the subscription's Polar customer, in
        the same write: when the holder has no ``polar_customer_id``, ``state.customer_id``
        is set, and no other user holds that customer. An existing link is kept."""
        ...

    def get_subscription(self, subscription_id: str) -> SubscriptionState | None: ...

    def list_subscriptions(self, user_id: str) -> list[SubscriptionState]:
        """All of the user's subscriptions, most relevant first (``subscription_rank``)."""
        ...

    # -- webhook inbox ------------------------------------------------------------
    def record_event(self, event: InboxEvent) -> tuple[InboxEvent, bool]:
        """Insert the delivery if its ``webhook_id`` is new and return ``(event, True)``.
        If it exists: a ``processed`` one is returned unchanged as ``(stored, False)``; a
        ``received``/``failed`` one gets ``attempts + 1`` and status ``received`` and is
        returned as ``(updated, False)`` (its ``claimed_until`` kept as it is). Atomic: of N
        concurrent calls with one id, exactly one returns ``True``."""
        ...

    def ingest_event(
        self, event: InboxEvent, state: SubscriptionState | None = None
    ) -> IngestResult:
        """Record a webhook delivery and apply its subscription state in ONE atomic step
        (one transaction, one lock hold, one journal line).

        * ``state`` given and ``state.user_id`` unknown: raise ``UserNotFoundError``,
          write nothing.
        * A ``processed`` row with ``event.webhook_id`` exists: change nothing; return
          ``IngestResult(stored, created=False, applied=None, duplicate=True)``.
        * A ``received``/``failed`` row exists whose ``claimed_until`` is later than
          ``event.received_at`` (another request holds the delivery, running its
          callback): change nothing; return
          ``IngestResult(stored, created=False, applied=None, in_flight=True)``.
        * A ``received``/``failed`` row exists (a retry, or the take-over of a claim that
          ran out): ``attempts + 1``. If its outcome is ``"applied"`` (an earlier attempt
          applied the state, then its callback failed or its process died), the state is
          not applied again: ``applied=None``. Otherwise, as below.
        * Otherwise, when ``state`` is given, the conditional write of
          :meth:`apply_subscription` runs: ``applied`` is ``True`` or ``False``.

        The row is written with status ``event.status`` (``received``, ``processed`` or
        ``failed``) and ``claimed_until=event.claimed_until`` (``None`` when processed: a
        processed row holds no claim); outcome ``"applied"`` when applied, ``"stale"``
        when refused, else ``event.outcome`` (an existing ``"applied"`` is never
        overwritten);
        ``processed_at=event.processed_at`` when processed (required then: ``ValueError``
        when missing); ``user_id``/``subscription_id`` from ``event``, else ``state``,
        else the stored row. A new row takes everything else from ``event``; a retried one
        keeps its payload, type and ``received_at``, and its ``last_error`` while it stays
        ``received`` (as :meth:`record_event` followed by :meth:`finish_event` would).
        Of N concurrent calls with one id, exactly one returns ``created=True``."""
        ...

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
        """Set status (``processed``/``failed``), ``processed_at`` (when processed),
        ``last_error`` and — when given (not ``None``) — outcome, user and subscription ids;
        release the claim (``claimed_until=None``) whatever the status, so a failed
        delivery is free for the retry.
        An ``"applied"`` outcome is never overwritten (a concurrent duplicate that found the
        state already written must not hide that this delivery applied it), and a
        processed delivery is final: finishing it again with another status returns it
        unchanged. Raises ``NotFoundError`` for an unknown id."""
        ...

    def get_event(self, webhook_id: str) -> InboxEvent | None: ...

    def list_events(
        self, *, status: str | None = None, limit: int = 100, offset: int = 0
    ) -> Sequence[InboxEvent]:
        """Newest first (by ``received_at``, then ``webhook_id``)."""
        ...

    def count_events(self, *, status: str | None = None) -> int: ...
