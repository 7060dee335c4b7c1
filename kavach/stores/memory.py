"""The in-memory store: for tests and throwaway demos. Everything is lost on exit.

One ``RLock`` guards the tables, so every method is atomic with respect to every other;
the conditional write is atomic simply because it runs under that lock. The Store methods
themselves are :class:`~kavach.stores._table_store.TableStore`'s, shared with the JSON store.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from kavach.errors import StoreError
from kavach.stores._table_store import TableStore
from kavach.stores._tables import Change, Tables
from kavach.stores.base import SCHEMA_VERSION


class MemoryStore(TableStore):
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

    # -- TableStore hooks ---------------------------------------------------------------
    @contextmanager
    def _locked(self, *, writing: bool) -> Iterator[Tables]:
        """Hold the lock (readers and writers alike) and yield the open tables."""
        with self._lock:
            if self._closed:
                raise StoreError("the memory store is closed")
            yield self._tables

    def _commit(self, change: Change) -> None:
        """Nothing to make durable: apply the change."""
        self._tables.apply(change)
