"""Helpers and fixtures for the proof tests: private SQL schemas, store URLs, child processes.

PostgreSQL and MySQL/MariaDB run when ``KAVACH_TEST_POSTGRES_URL`` /
``KAVACH_TEST_MYSQL_URL`` are set (CI sets both) and are skipped with the reason
otherwise. Each use gets a schema (PostgreSQL, selected through the URL's
``options=-csearch_path=...``) or a database (MySQL) of its own, created before and
dropped after, so kavach's tables start empty and nothing else on the server is touched.
"""

from __future__ import annotations

import base64
import contextlib
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest

POSTGRES_ENV = "KAVACH_TEST_POSTGRES_URL"
MYSQL_ENV = "KAVACH_TEST_MYSQL_URL"
REPO_ROOT = str(Path(__file__).resolve().parent.parent.parent)
#: The webhook secret every proof test signs with (a ``whsec_`` secret: standard key).
SECRET = "whsec_" + base64.b64encode(b"kavach-proof-secret-32-bytes-abc").decode()
#: The stores the multi-process test runs on, in order.
STORE_KINDS = ("postgres", "mysql", "sqlite", "json")
BASE_PATH = "/api/kavach"


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a child process: ours, with the repository importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, env.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


def _private_name() -> str:
    return f"kavach_proof_{uuid.uuid4().hex[:12]}"


@contextlib.contextmanager
def private_postgres() -> Iterator[str]:
    """A URL into a fresh PostgreSQL schema, dropped afterwards (skips without the env)."""
    admin_url = os.environ.get(POSTGRES_ENV)
    if not admin_url:
        pytest.skip(f"needs {POSTGRES_ENV} (e.g. postgresql://postgres@127.0.0.1:5432/test)")
    import psycopg2

    name = _private_name()
    conn: Any = psycopg2.connect(admin_url)
    conn.autocommit = True
    try:
        with conn.cursor() as cursor:
            cursor.execute(f"CREATE SCHEMA {name}")
        parts = urlsplit(admin_url)
        query = dict(parse_qsl(parts.query))
        query["options"] = f"-csearch_path={name}"
        yield urlunsplit(parts._replace(query=urlencode(query)))
    finally:
        with conn.cursor() as cursor:
            cursor.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
        conn.close()


@contextlib.contextmanager
def private_mysql() -> Iterator[str]:
    """A URL into a fresh MySQL/MariaDB database, dropped afterwards (skips without the env)."""
    admin_url = os.environ.get(MYSQL_ENV)
    if not admin_url:
        pytest.skip(f"needs {MYSQL_ENV} (e.g. mysql://root@127.0.0.1:3306/test)")
    import pymysql

    name = _private_name()
    parts = urlsplit(admin_url)
    conn: Any = pymysql.connect(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 3306,
        user=parts.username or "root",
        password=parts.password or "",
        autocommit=True,
    )
    try:
        with conn.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE {name}")
        yield urlunsplit(parts._replace(path=f"/{name}"))
    finally:
        with conn.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.close()


@contextlib.contextmanager
def fresh_store_url(kind: str, directory: Path) -> Iterator[str]:
    """The URL of a fresh, empty store of ``kind`` (one of :data:`STORE_KINDS`)."""
    if kind == "postgres":
        with private_postgres() as url:
            yield url
    elif kind == "mysql":
        with private_mysql() as url:
            yield url
    elif kind == "sqlite":
        yield f"sqlite:///{directory / 'k.db'}"
    elif kind == "json":
        yield f"json://{directory / 'k.json'}"
    else:
        raise ValueError(f"unknown store kind {kind!r}")


# -- a real server process ---------------------------------------------------------------


class ServerProcess:
    """``python -m tests.proof._workers serve`` as a child process.

    ``url`` is ``http://127.0.0.1:PORT``; ``base`` adds ``/api/kavach``. The server's log
    goes to ``log_path``.
    """

    def __init__(
        self,
        database: str,
        log_path: Path,
        *,
        timeout: float = 5.0,
        compact_after: int | None = None,
        ready_within: float = 30.0,
    ) -> None:
        command = [
            sys.executable, "-m", "tests.proof._workers", "serve",
            "--database", database, "--timeout", str(timeout),
        ]
        if compact_after is not None:
            command += ["--compact-after", str(compact_after)]
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=child_env(KAVACH_PROOF_SECRET=SECRET),
            stdout=subprocess.PIPE,
            stderr=self._log,
        )
        line: list[bytes] = []
        reader = threading.Thread(
            target=lambda: line.append(self.process.stdout.readline()),  # type: ignore[union-attr]
            daemon=True,
        )
        reader.start()
        reader.join(ready_within)
        if not line or not line[0].startswith(b"READY "):
            self.kill()
            raise RuntimeError(
                f"server did not start within {ready_within} s; log: {self.log_text()[-2000:]}"
            )
        self.url = line[0].split()[1].decode()
        self.base = self.url + BASE_PATH
        self.port = int(self.url.rsplit(":", 1)[1])

    @property
    def pid(self) -> int:
        return self.process.pid

    def rss_kib(self) -> int:
        """The server's resident set size (``VmRSS`` from ``/proc``), in KiB."""
        with open(f"/proc/{self.pid}/status", encoding="ascii") as status:
            for row in status:
                if row.startswith("VmRSS:"):
                    return int(row.split()[1])
        raise RuntimeError("no VmRSS line")

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """``kill -9`` and reap (idempotent)."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        self._close_pipes()

    def stop(self) -> None:
        """Terminate gracefully (SIGTERM), ``kill -9`` after 10 s."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._close_pipes()

    def _close_pipes(self) -> None:
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._log.close()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


def wait_for(predicate: Any, timeout: float, interval: float = 0.02) -> bool:
    """Poll ``predicate()`` until it is true or ``timeout`` seconds passed (a hang guard)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
