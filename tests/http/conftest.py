"""Fixtures for the HTTP route suite: a live server per test, built-in or WSGI.

Every route test runs twice, on real sockets: once on kavach's built-in server and once
on the WSGI app behind ``wsgiref``'s server. The Polar plugin is replaced by
:class:`http_support.StubPolarPlugin`, a test double with the plugin's interface.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from http_support import STARTERS, TRUSTED_ORIGIN, Live, StubPolarPlugin

from kavach import create_kavach
from kavach.clock import FrozenClock
from kavach.core import Kavach
from kavach.passwords import PasswordHasher


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(datetime(2026, 1, 15, 9, 30, tzinfo=UTC))


@pytest.fixture
def kavach() -> Iterator[Kavach]:
    """A Kavach on the memory store with the Polar test double, for the server tests
    that start their own server (a module may define its own)."""
    with create_kavach(
        "memory://", plugins=[StubPolarPlugin()], password_hasher=PasswordHasher.fast()
    ) as k:
        yield k


@pytest.fixture
def polar_stub() -> StubPolarPlugin:
    return StubPolarPlugin()


@pytest.fixture(params=["builtin", "wsgi"])
def adapter(request: pytest.FixtureRequest) -> str:
    param: str = request.param
    return param


@pytest.fixture
def start(adapter: str, clock: FrozenClock) -> Iterator[Callable[..., Live]]:
    """``start(plugins=[...], **create_kavach_options) -> Live``; stopped after the test."""
    stops: list[Callable[[], None]] = []
    kavachs: list[Kavach] = []

    def start_server(plugins: list[Any] | None = None, **options: Any) -> Live:
        options.setdefault("trusted_origins", [TRUSTED_ORIGIN])
        kavach = create_kavach(
            "memory://",
            plugins=plugins or [],
            clock=clock,
            password_hasher=PasswordHasher.fast(),
            **options,
        )
        kavachs.append(kavach)
        url, stop = STARTERS[adapter](kavach)
        stops.append(stop)
        return Live(kavach=kavach, url=url, adapter=adapter)

    yield start_server
    for stop in stops:
        stop()
    for kavach in kavachs:
        kavach.close()


@pytest.fixture
def live(start: Callable[..., Live], polar_stub: StubPolarPlugin) -> Live:
    """The default app: memory store, the Polar stub, one trusted origin."""
    return start(plugins=[polar_stub])


@pytest.fixture
def token(live: Live) -> str:
    """A bearer token for jane@acme.io."""
    return live.token()

