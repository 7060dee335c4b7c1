"""The ``Kavach`` object: one explicit value holding the store, services and plugins."""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Sequence
from datetime import timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any

import attrs

from kavach.clock import Clock, SystemClock
from kavach.errors import ConfigurationError
from kavach.passwords import PasswordHasher
from kavach.plugins import Plugin, Plugins
from kavach.sessions import DEFAULT_SESSION_TTL, Sessions
from kavach.stores import open_store
from kavach.stores.base import Store
from kavach.users import Users

if TYPE_CHECKING:
    from kavach.http.wsgi import WSGIApp

DEFAULT_BASE_PATH = "/api/kavach"
DEFAULT_COOKIE_NAME = "kavach_session"


def normalize_origin(origin: str) -> str:
    """``scheme://host[:port]`` lower-cased, default ports dropped; raises on non-origins."""
    from urllib.parse import urlsplit

    parts = urlsplit(origin.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(
            f"trusted origin {origin!r} must look like https://app.example.com",
            field="trusted_origins",
        )
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    default = 443 if parts.scheme == "https" else 80
    return f"{parts.scheme}://{host}" + (f":{port}" if port and port != default else "")


@attrs.frozen
class KavachConfig:
    """Settings of the HTTP surface, shared by the built-in server and the WSGI app."""

    base_path: str = DEFAULT_BASE_PATH
    cookie_name: str = DEFAULT_COOKIE_NAME
    trusted_origins: tuple[str, ...] = ()
    max_body_bytes: int = 1024 * 1024
    #: How many reverse proxies stand in front and append to ``X-Forwarded-For``; when
    #: above 0 the client address, scheme and host come from the ``X-Forwarded-*``
    #: headers those proxies set (see :mod:`kavach.http.forwarded`). 0: headers ignored.
    proxy_hops: int = 0


class Kavach:
    """The one object an application holds. Build it with :func:`create_kavach`.

    ``store``, ``users``, ``sessions``, ``plugins``, ``clock`` and ``config`` are plain
    attributes; nothing lives in module globals. Use it as a context manager or call
    :meth:`close`.
    """

    def __init__(
        self,
        store: Store,
        *,
        plugins: Iterable[Plugin] = (),
        clock: Clock | None = None,
        password_hasher: PasswordHasher | None = None,
        session_ttl: timedelta = DEFAULT_SESSION_TTL,
        config: KavachConfig | None = None,
    ) -> None:
        self.store = store
        self.clock: Clock = clock or SystemClock()
        self.config = config or KavachConfig()
        self.users = Users(store, password_hasher or PasswordHasher(), self.clock)
        self.sessions = Sessions(store, self.clock, session_ttl)
        self.plugins = Plugins(plugins)
        self._closed = False
        for name in self.plugins:
            self.plugins[name].bind(self)

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"users={self.store.count_users()}"
        return f"<Kavach store={self.store.kind} {state} plugins={list(self.plugins)}>"

    def close(self) -> None:
        """Close plugins and the store. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for name in self.plugins:
            self.plugins[name].close()
        self.store.close()

    def __enter__(self) -> Kavach:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @functools.cached_property
    def wsgi_app(self) -> WSGIApp:
        """A WSGI callable serving the kavach routes (mount it in Flask or Django).

        One app per ``Kavach`` (its sign-in rate limiter is shared by every request)."""
        from kavach.http.wsgi import WSGIApp

        return WSGIApp(self)

    def serve(self, host: str = "127.0.0.1", port: int = 8000, **options: Any) -> None:
        """Run the built-in HTTP server until interrupted (see :mod:`kavach.http.server`)."""
        from kavach.http.server import serve

        serve(self, host=host, port=port, **options)


def create_kavach(
    database: Any = None,
    plugins: Sequence[Plugin] = (),
    *,
    clock: Clock | None = None,
    password_hasher: PasswordHasher | None = None,
    session_ttl: timedelta = DEFAULT_SESSION_TTL,
    base_path: str = DEFAULT_BASE_PATH,
    cookie_name: str = DEFAULT_COOKIE_NAME,
    trusted_origins: Iterable[str] | None = None,
    max_body_bytes: int = 1024 * 1024,
    proxy_hops: int = 0,
) -> Kavach:
    """Build a :class:`Kavach`.

    ``database`` is a URL (``sqlite:///kavach.db``, ``postgresql://…``, ``memory://``,
    ``json:///abs/kavach.json``), a dict ``{"provider": …, "url": …}`` or a store
    instance; the default is the SQLite file ``kavach.db`` in the working directory.
    ``trusted_origins`` defaults to the ``KAVACH_TRUSTED_ORIGINS`` environment variable
    (comma-separated). ``proxy_hops`` is the number of reverse proxies in front of the
    server whose ``X-Forwarded-For`` / ``-Proto`` / ``-Host`` headers are to be trusted
    (0, the default, trusts none: never set it higher than the proxies you really run).
    """
    if trusted_origins is None:
        env = os.environ.get("KAVACH_TRUSTED_ORIGINS", "")
        trusted_origins = [o for o in (p.strip() for p in env.split(",")) if o]
    origins = tuple(dict.fromkeys(normalize_origin(o) for o in trusted_origins))
    if not base_path.startswith("/") or (base_path.endswith("/") and base_path != "/"):
        raise ConfigurationError(
            "base_path must start with '/' and not end with one", field="base_path"
        )
    if not isinstance(proxy_hops, int) or isinstance(proxy_hops, bool) or not 0 <= proxy_hops <= 10:
        raise ConfigurationError("proxy_hops must be an integer from 0 to 10", field="proxy_hops")
    if not cookie_name or not cookie_name.replace("_", "").replace("-", "").isalnum():
        raise ConfigurationError("cookie_name must be a plain token", field="cookie_name")
    config = KavachConfig(
        base_path="" if base_path == "/" else base_path,
        cookie_name=cookie_name,
        trusted_origins=origins,
        max_body_bytes=max_body_bytes,
        proxy_hops=proxy_hops,
    )
    store = open_store(database)
    try:
        return Kavach(
            store,
            plugins=plugins,
            clock=clock,
            password_hasher=password_hasher,
            session_ttl=session_ttl,
            config=config,
        )
    except BaseException:
        store.close()
        raise
