"""Password hashing with argon2id (memory-hard), via argon2-cffi."""

from __future__ import annotations

import threading

import argon2
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

MIN_PASSWORD_LENGTH = 8
#: Longer passwords are refused: hashing megabytes would be a cheap denial of service.
MAX_PASSWORD_LENGTH = 1024


class PasswordHasher:
    """Hashes and checks passwords with argon2id.

    The defaults are argon2-cffi's RFC 9106 "low memory" profile (64 MiB per hash).
    ``PasswordHasher.fast()`` gives a deliberately weak profile for test suites only.

    At most ``max_concurrent`` hashes run at once (others wait their turn), so a burst of
    sign-ups or sign-ins cannot take more than ``max_concurrent`` times the memory cost.
    """

    def __init__(
        self, parameters: argon2.Parameters | None = None, *, max_concurrent: int = 4
    ) -> None:
        params = parameters or argon2.profiles.RFC_9106_LOW_MEMORY
        if params.type is not argon2.Type.ID:
            raise ValueError("kavach only hashes passwords with argon2id")
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        self._hasher = argon2.PasswordHasher.from_parameters(params)
        self._slots = threading.BoundedSemaphore(max_concurrent)
        self.max_concurrent = max_concurrent

    @classmethod
    def fast(cls) -> PasswordHasher:
        """A cheap argon2id profile for tests. Never use it in production."""
        return cls(argon2.profiles.CHEAPEST)

    def hash(self, password: str) -> str:
        """The encoded argon2id hash (salt and parameters included)."""
        with self._slots:
            return self._hasher.hash(password)

    def verify(self, password_hash: str, password: str) -> bool:
        """``True`` when ``password`` matches; ``False`` on mismatch or an unreadable hash."""
        try:
            with self._slots:
                return self._hasher.verify(password_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, password_hash: str) -> bool:
        """``True`` when the hash was made with other parameters than the current ones."""
        try:
            return self._hasher.check_needs_rehash(password_hash)
        except InvalidHashError:
            return True

    def __repr__(self) -> str:
        p = self._hasher
        return f"PasswordHasher(argon2id, t={p.time_cost}, m={p.memory_cost} KiB)"
