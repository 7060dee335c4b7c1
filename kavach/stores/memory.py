"""The in-memory store: for tests and throwaway demos. Everything is lost on exit.

One ``RLock`` guards the tables, so every method is atomic with respect to every other;
the conditional write is atomic simply because it runs under that lock. The Store methods
themselves are :class:`~kavach.stores._table_store.TableStore`'s, shared with the JSON store.
"""

from __future__ import annotations

import threading
from types import TracebackType

from kavach.errors import StoreError
from kavach.records import UserRecord
from kavach.stores._table_store import TableStore
from kavach.stores._tables import Change, Tables
from kavach.stores.base import SCHEMA_VERSION

_CLOSED = "the memory store is closed"


class MemoryStore(TableStore):
    """A :class:`~kavach.stores.base.Store` that keeps everything in process memory."""

    kind = "memory"

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._tables = Tables()
        self._closed = False
        self._held = _Held(self)  # stateless: one serves every call, in every thread

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

    def get_user(self, user_id: str) -> UserRecord | None:
        """The user with this id, or ``None``: :class:`TableStore`'s, with the lock taken
        directly rather than through ``_locked`` (a third less: every webhook and every
        sign-in reads a user)."""
        with self._lock:
            if self._closed:
                raise StoreError(_CLOSED)
            return self._tables.users.get(user_id)

    # -- TableStore hooks ---------------------------------------------------------------
    def _locked(self, *, writing: bool) -> _Held:
        """Hold the lock (readers and writers alike) and give the open tables."""
        return self._held

    def _commit(self, change: Change) -> None:
        """Nothing to make durable: apply the change."""
        self._tables.apply(change)


class _Held:
    """``with store._locked(...) as tables``: a plain class rather than a generator-based
    context manager, because lookups on this store take about a microsecond."""

    __slots__ = ("_store",)

    def __init__(self, store: MemoryStore) -> None:
        self._store = store

    def __enter__(self) -> Tables:
        store = self._store
        store._lock.acquire()
        if store._closed:
            store._lock.release()
            raise StoreError(_CLOSED)
        return store._tables

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._store._lock.release()
