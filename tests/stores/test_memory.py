"""The memory store against the store contract."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kavach.stores import open_store
from kavach.stores.memory import MemoryStore

from .contract import StoreContract


class TestMemoryStore(StoreContract):
    @pytest.fixture
    def store(self) -> Iterator[MemoryStore]:
        store = MemoryStore()
        yield store
        store.close()


def test_memory_url_opens_a_memory_store() -> None:
    store = open_store("memory://")
    assert isinstance(store, MemoryStore) and store.kind == "memory"


def test_repr_reports_counts() -> None:
    assert repr(MemoryStore()) == "MemoryStore(users=0)"
