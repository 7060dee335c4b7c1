"""Store backends and the ``open_store`` URL registry.

``open_store`` accepts what ``create_kavach(database=...)`` accepts:

* a store instance (returned as is),
* a URL string: ``memory://``, ``json:///abs/path/kavach.json`` (``json://relative.json``),
  ``sqlite:///relative.db``, ``sqlite:////abs.db``, ``sqlite://:memory:``,
  ``postgresql://user:pw@host:5432/db`` (also ``postgres://``), ``mysql://user:pw@host/db``,
* a dict ``{"provider": "memory" | "json" | "sqlite" | "postgres" | "mysql", "url": ...}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kavach.errors import ConfigurationError
from kavach.stores._urls import file_path, redacted
from kavach.stores.base import SCHEMA_VERSION, Store, normalize_email

__all__ = ["SCHEMA_VERSION", "Store", "normalize_email", "open_store"]

DEFAULT_DATABASE_URL = "sqlite:///kavach.db"

_PROVIDER_SCHEMES = {
    "memory": "memory",
    "json": "json",
    "sqlite": "sqlite",
    "postgres": "postgresql",
    "postgresql": "postgresql",
    "mysql": "mysql",
    "mariadb": "mysql",
}


def open_store(database: Any = None) -> Store:
    """Turn a ``database=`` argument into an open store (tables created on first use)."""
    if database is None:
        database = DEFAULT_DATABASE_URL
    if isinstance(database, Mapping):
        provider = database.get("provider")
        if provider not in _PROVIDER_SCHEMES:
            raise ConfigurationError(
                f"database provider must be one of memory, json, sqlite, postgres, mysql; "
                f"got {provider!r}",
                field="database.provider",
            )
        url = database.get("url")
        if url is None:
            if provider == "memory":
                url = "memory://"
            elif provider == "sqlite":
                url = DEFAULT_DATABASE_URL
            else:
                raise ConfigurationError(
                    f"database provider {provider!r} needs a url", field="database.url"
                )
        if not isinstance(url, str):
            raise ConfigurationError("database url must be a string", field="database.url")
        if "://" not in url and provider in ("json", "sqlite"):
            url = f"{provider}:///{url}" if provider == "sqlite" else f"json://{url}"
        scheme = url.partition("://")[0].lower()
        if _PROVIDER_SCHEMES.get(scheme, scheme) != _PROVIDER_SCHEMES[provider]:
            raise ConfigurationError(
                f"database provider {provider!r} does not match url scheme {scheme!r}",
                field="database.url",
            )
        return open_store(url)
    if isinstance(database, str):
        return _open_url(database)
    if isinstance(database, Store):
        return database
    raise ConfigurationError(
        f"database must be a URL, a dict or a store, not {type(database).__name__}",
        field="database",
    )


def _open_url(url: str) -> Store:
    scheme, sep, _ = url.partition("://")
    scheme = scheme.lower()
    if not sep:
        raise ConfigurationError(
            f"database URL {redacted(url)!r} has no scheme (try sqlite:///{url})", field="database"
        )
    if scheme == "memory":
        from kavach.stores.memory import MemoryStore

        return MemoryStore()
    if scheme == "json":
        from kavach.stores.jsonfile import JsonFileStore

        path = file_path(url)
        if not path:
            raise ConfigurationError("json:// URL needs a file path", field="database")
        return JsonFileStore(path)
    if scheme in ("sqlite", "postgres", "postgresql", "mysql", "mariadb", "mysql+pymysql"):
        from kavach.stores.sql import SqlStore

        return SqlStore.from_url(url)
    raise ConfigurationError(
        f"unknown database URL scheme {scheme!r} in {redacted(url)!r}; "
        "use memory://, json://, sqlite://, postgresql:// or mysql://",
        field="database",
    )
