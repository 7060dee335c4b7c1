"""Fixtures for the store tests: database servers, a pool of spawned processes.

PostgreSQL and MySQL tests run when ``KAVACH_TEST_POSTGRES_URL`` /
``KAVACH_TEST_MYSQL_URL`` are set and are skipped otherwise. Each test session works in
a private PostgreSQL schema / MySQL database (dropped at the end), so it neither sees
nor breaks anything else on the server; every test starts with empty kavach tables.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest

from kavach.stores.jsonfile import JsonFileStore

POSTGRES_ENV = "KAVACH_TEST_POSTGRES_URL"
MYSQL_ENV = "KAVACH_TEST_MYSQL_URL"
KAVACH_TABLES = (
    "kavach_polar_events",
    "kavach_polar_subscriptions",
    "kavach_sessions",
    "kavach_users",
)
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class SqlServer:
    """A private PostgreSQL schema or MySQL database for this test session."""

    def __init__(self, kind: str, admin_url: str) -> None:
        self.kind = kind
        self.name = f"kavach_store_test_{os.getpid()}"
        parts = urlsplit(admin_url)
        if kind == "postgres":
            import psycopg2

            self._conn: Any = psycopg2.connect(admin_url)
            self._conn.autocommit = True
            self._execute(f"DROP SCHEMA IF EXISTS {self.name} CASCADE")
            self._execute(f"CREATE SCHEMA {self.name}")
            query = dict(parse_qsl(parts.query))
            query["options"] = f"-csearch_path={self.name}"
            self.url = urlunsplit(parts._replace(query=urlencode(query)))
            self._scoped: Any = psycopg2.connect(self.url)
            self._scoped.autocommit = True
        else:
            import pymysql

            options: dict[str, Any] = {
                "host": parts.hostname or "127.0.0.1",
                "port": parts.port or 3306,
                "user": parts.username or "root",
                "password": parts.password or "",
                "autocommit": True,
            }
            self._conn = pymysql.connect(**options)
            self._execute(f"DROP DATABASE IF EXISTS {self.name}")
            self._execute(f"CREATE DATABASE {self.name}")
            self.url = urlunsplit(parts._replace(path=f"/{self.name}"))
            self._scoped = pymysql.connect(database=self.name, **options)

    def _execute(self, sql: str, connection: Any = None) -> list[Any]:
        with (connection or self._conn).cursor() as cursor:
            cursor.execute(sql)
            return list(cursor.fetchall()) if cursor.description else []

    def query(self, sql: str) -> list[Any]:
        """Run plain SQL in the session's schema/database; the rows it returned."""
        return self._execute(sql, self._scoped)

    def tables(self) -> set[str]:
        """The tables in the session's schema/database."""
        if self.kind == "postgres":
            sql = f"SELECT tablename FROM pg_tables WHERE schemaname = '{self.name}'"
        else:
            sql = (
                "SELECT table_name FROM information_schema.tables "
                f"WHERE table_schema = '{self.name}'"
            )
        return {row[0] for row in self._execute(sql)}

    def empty_tables(self) -> None:
        """Delete every row of the kavach tables (the schema stays)."""
        present = self.tables()
        for table in KAVACH_TABLES:
            if table in present:
                self.query(f"DELETE FROM {table}")

    def drop_tables(self) -> None:
        """Drop every kavach table, ``kavach_schema`` included."""
        for table in self.tables():
            self.query(f"DROP TABLE {table}")

    def close(self) -> None:
        """Drop the session's schema/database and disconnect."""
        self._scoped.close()
        if self.kind == "postgres":
            self._execute(f"DROP SCHEMA IF EXISTS {self.name} CASCADE")
        else:
            self._execute(f"DROP DATABASE IF EXISTS {self.name}")
        self._conn.close()


def _server(kind: str, env: str, example: str) -> Iterator[SqlServer]:
    admin_url = os.environ.get(env)
    if not admin_url:
        pytest.skip(f"{kind} store tests need {env} (e.g. {example})")
    server = SqlServer(kind, admin_url)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[SqlServer]:
    """A private schema on the PostgreSQL named by ``KAVACH_TEST_POSTGRES_URL``."""
    yield from _server("postgres", POSTGRES_ENV, "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def mysql_server() -> Iterator[SqlServer]:
    """A private database on the MySQL/MariaDB named by ``KAVACH_TEST_MYSQL_URL``."""
    yield from _server("mysql", MYSQL_ENV, "mysql://root@127.0.0.1:3306/test")


@pytest.fixture(scope="session")
def process_pool() -> Iterator[ProcessPoolExecutor]:
    """Four spawned worker processes, started once for the whole session."""
    saved = os.environ.get("PYTHONPATH")
    # Children get our sys.path from multiprocessing; PYTHONPATH makes kavach importable
    # even before that, whatever directory pytest was started from.
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, saved) if p)
    pool = ProcessPoolExecutor(max_workers=4, mp_context=multiprocessing.get_context("spawn"))
    try:
        list(pool.map(time.sleep, [0.2] * 4))  # start all four now, not inside a race
        if saved is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = saved
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# -- the JSON file store (test_jsonfile*.py) ---------------------------------------------


@pytest.fixture
def path(tmp_path: Path) -> Path:
    """Where a JSON store test keeps its store."""
    return tmp_path / "kavach.json"


@pytest.fixture
def opened() -> Iterator[list[JsonFileStore]]:
    """Stores a test opened; closed at the end."""
    stores: list[JsonFileStore] = []
    yield stores
    for store in stores:
        store.close()


@pytest.fixture
def open_json(path: Path, opened: list[JsonFileStore]) -> Callable[..., JsonFileStore]:
    """Opens a JSON store at ``path`` (options: the store's keywords), closed at the end."""
    def open_json(**options: int) -> JsonFileStore:
        store = JsonFileStore(path, **options)
        opened.append(store)
        return store

    return open_json
