"""Users: email + password accounts, emails unique case-insensitively."""

from __future__ import annotations

import uuid
from datetime import datetime

import attrs

from kavach.clock import Clock
from kavach.errors import InvalidCredentialsError, InvalidInputError
from kavach.passwords import MAX_PASSWORD_LENGTH, MIN_PASSWORD_LENGTH, PasswordHasher
from kavach.records import UserRecord
from kavach.stores.base import Store, encodable_text, normalize_email, utf8_text

MAX_EMAIL_LENGTH = 254
MAX_NAME_LENGTH = 200


@attrs.frozen
class User:
    """A user as applications see it (no password hash)."""

    id: str
    email: str
    name: str | None
    created_at: datetime

    @classmethod
    def from_record(cls, record: UserRecord) -> User:
        return cls(id=record.id, email=record.email, name=record.name, created_at=record.created_at)


def _could_be_stored(email: object) -> bool:
    """Whether a looked-up email could be a stored one: text every store can hold
    (:func:`~kavach.stores.base.encodable_text`: no NUL, which :func:`validate_email`
    never lets in, no lone surrogate). Any other is answered as unknown without asking
    the store, so every store answers alike."""
    return isinstance(email, str) and encodable_text(email)


def validate_email(email: object) -> str:
    """The email, stripped; raises :class:`InvalidInputError` when it is not plausible."""
    if not isinstance(email, str):
        raise InvalidInputError("email must be a string", field="email")
    value = email.strip()
    local, at, domain = value.rpartition("@")
    if (
        not at
        or not local
        or not domain
        or "." not in domain.strip(".")
        or len(value) > MAX_EMAIL_LENGTH
        or any(c.isspace() or ord(c) < 32 for c in value)
        or not encodable_text(value)
        # Its key too: case folding can lengthen it ("ß" -> "ss"), past what stores keep.
        or len(normalize_email(value)) > MAX_EMAIL_LENGTH
    ):
        raise InvalidInputError("email is not a valid address", field="email")
    return value


def validate_password(password: object) -> str:
    """The password unchanged; raises :class:`InvalidInputError` when too short or too long."""
    if not isinstance(password, str):
        raise InvalidInputError("password must be a string", field="password")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidInputError(
            f"password must have at least {MIN_PASSWORD_LENGTH} characters", field="password"
        )
    if len(password) > MAX_PASSWORD_LENGTH:
        raise InvalidInputError(
            f"password must have at most {MAX_PASSWORD_LENGTH} characters", field="password"
        )
    if not utf8_text(password):
        raise InvalidInputError("password is not valid Unicode text", field="password")
    return password


def validate_name(name: object) -> str | None:
    if name is None:
        return None
    if not isinstance(name, str):
        raise InvalidInputError("name must be a string", field="name")
    value = name.strip()
    if not encodable_text(value):  # a lone surrogate, or NUL (PostgreSQL cannot store it)
        raise InvalidInputError("name is not valid Unicode text", field="name")
    if len(value) > MAX_NAME_LENGTH:
        raise InvalidInputError(
            f"name must have at most {MAX_NAME_LENGTH} characters", field="name"
        )
    return value or None


class Users:
    """``kavach.users``: create, find, update and authenticate users."""

    def __init__(self, store: Store, hasher: PasswordHasher, clock: Clock) -> None:
        self._store = store
        self._hasher = hasher
        self._clock = clock
        # Checked against when the email is unknown, so both failures cost the same;
        # made on first need (an argon2id hash is too dear to pay at every start-up).
        self._dummy_hash: str | None = None

    def __repr__(self) -> str:
        return f"Users(count={self._store.count_users()})"

    def create(self, email: str, password: str | None = None, name: str | None = None) -> User:
        """Create a user. Raises ``InvalidInputError`` or ``EmailTakenError``."""
        address = validate_email(email)
        password_hash = (
            None if password is None else self._hasher.hash(validate_password(password))
        )
        record = UserRecord(
            id=str(uuid.uuid4()),
            email=address,
            name=validate_name(name),
            password_hash=password_hash,
            created_at=self._clock.now(),
        )
        return User.from_record(self._store.create_user(record))

    def _verify_dummy(self, password: str) -> None:
        """A verify at the current parameters' cost, whose answer does not matter."""
        if self._dummy_hash is None:
            self._dummy_hash = self._hasher.hash("kavach-dummy-password")
        self._hasher.verify(self._dummy_hash, password)

    def get(self, user_id: str) -> User | None:
        """The user with this id, or ``None``."""
        record = self._store.get_user(user_id)
        return User.from_record(record) if record else None

    def get_by_email(self, email: str) -> User | None:
        """The user with this email (case-insensitive), or ``None``."""
        record = self._store.get_user_by_email(email) if _could_be_stored(email) else None
        return User.from_record(record) if record else None

    def update(
        self,
        user_id: str,
        *,
        email: str | None = None,
        name: str | None = None,
        password: str | None = None,
    ) -> User:
        """Change email, name and/or password. Raises ``UserNotFoundError``, ``EmailTakenError``."""
        record = self._store.update_user(
            user_id,
            email=validate_email(email) if email is not None else None,
            name=validate_name(name) if name is not None else None,
            password_hash=self._hasher.hash(validate_password(password))
            if password is not None
            else None,
        )
        return User.from_record(record)

    def authenticate(self, email: str, password: str) -> User:
        """The user whose email and password match; otherwise ``InvalidCredentialsError``
        (the same error, at about the same cost, for an unknown email and a wrong password)."""
        record = self._store.get_user_by_email(email) if _could_be_stored(email) else None
        if (
            not isinstance(password, str)
            or len(password) > MAX_PASSWORD_LENGTH
            or not utf8_text(password)  # never a stored password; argon2 cannot take it
        ):
            raise InvalidCredentialsError()
        if record is None or record.password_hash is None:
            self._verify_dummy(password)
            raise InvalidCredentialsError()
        if not self._hasher.verify(record.password_hash, password):
            if self._hasher.needs_rehash(record.password_hash):
                # An older, cheaper hash fails faster than an unknown email: pay the
                # current cost too, or timing would tell which accounts have one.
                self._verify_dummy(password)
            raise InvalidCredentialsError()
        if self._hasher.needs_rehash(record.password_hash):
            # Only over the hash just verified: a password changed meanwhile stays.
            self._store.update_user(
                record.id,
                password_hash=self._hasher.hash(password),
                if_password_hash=record.password_hash,
            )
        return User.from_record(record)
