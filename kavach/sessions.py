"""Sessions: opaque random bearer tokens; only their SHA-256 is stored."""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta

import attrs

from kavach.clock import Clock
from kavach.errors import UserNotFoundError
from kavach.records import SessionRecord
from kavach.stores.base import Store

DEFAULT_SESSION_TTL = timedelta(days=7)
#: 32 random bytes = 256 bits, url-safe base64 (43 characters) after the prefix.
TOKEN_BYTES = 32
TOKEN_PREFIX = "kvs_"  # noqa: S105 - a public prefix, not a secret
_MAX_TOKEN_LENGTH = 200


def hash_token(token: str) -> str:
    """The hex SHA-256 stored for a token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@attrs.frozen
class IssuedSession:
    """A new session. ``token`` is shown once; it is never stored and hidden from ``repr``."""

    token: str = attrs.field(repr=False)
    user_id: str
    expires_at: datetime


@attrs.frozen
class Session:
    """A live session, as :meth:`Sessions.resolve` finds it."""

    user_id: str
    created_at: datetime
    expires_at: datetime


class Sessions:
    """``kavach.sessions``: issue, resolve and revoke session tokens."""

    def __init__(self, store: Store, clock: Clock, ttl: timedelta = DEFAULT_SESSION_TTL) -> None:
        if ttl <= timedelta(0):
            raise ValueError("session ttl must be positive")
        self._store = store
        self._clock = clock
        self.ttl = ttl

    def __repr__(self) -> str:
        return f"Sessions(ttl={self.ttl})"

    def create(self, user_id: str) -> IssuedSession:
        """Issue a session for an existing user. Raises ``UserNotFoundError``."""
        if self._store.get_user(user_id) is None:
            raise UserNotFoundError(user_id)
        token = TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
        now = self._clock.now()
        record = SessionRecord(
            token_hash=hash_token(token),
            user_id=user_id,
            created_at=now,
            expires_at=now + self.ttl,
        )
        self._store.create_session(record)
        return IssuedSession(token=token, user_id=user_id, expires_at=record.expires_at)

    def resolve(self, token: str) -> Session | None:
        """The live session for ``token``; ``None`` when unknown, expired or revoked."""
        if not isinstance(token, str) or not token or len(token) > _MAX_TOKEN_LENGTH:
            return None
        record = self._store.get_session(hash_token(token))
        if record is None or record.revoked_at is not None:
            return None
        if record.expires_at <= self._clock.now():
            return None
        return Session(
            user_id=record.user_id, created_at=record.created_at, expires_at=record.expires_at
        )

    def revoke(self, token: str) -> bool:
        """Revoke the session; ``True`` when it existed and was not revoked yet (an
        expired one included: it is revoked too, and resolves to nothing either way)."""
        if not isinstance(token, str) or not token or len(token) > _MAX_TOKEN_LENGTH:
            return False
        return self._store.revoke_session(hash_token(token), self._clock.now())

    def purge_expired(self) -> int:
        """Delete expired sessions from the store; returns how many."""
        return self._store.delete_expired_sessions(self._clock.now())
