"""Database URLs in messages: what a user may see of one."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode

#: Query parameters whose value is a secret, wherever they appear in the name
#: (``password``, ``passwd``, ``sslpassword``, ``secret``...).
_SECRET_PARAMETERS = ("pass", "secret", "token")


def file_path(url: str) -> str:
    """The path a ``sqlite://`` or ``json://`` URL names, as the store opens it
    (``sqlite:///app.db`` -> ``app.db``, ``sqlite:////srv/app.db`` -> ``/srv/app.db``,
    ``json://data.json`` -> ``data.json``); ``""`` when it names none."""
    scheme, _, rest = url.partition("://")
    if scheme.lower() == "sqlite":
        return rest[1:] if rest.startswith("/") else rest
    return rest


def redacted(url: str) -> str:
    """``url`` with its password, and any secret query parameter, replaced by ``***``
    (a URL's query goes to the driver, so it may hold the password too)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    rest, qmark, query = rest.partition("?")
    credentials, at, host = rest.rpartition("@")
    if at and ":" in credentials:
        rest = f"{credentials.split(':', 1)[0]}:***@{host}"
    if qmark:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode(
            [(k, "***" if any(s in k.lower() for s in _SECRET_PARAMETERS) else v)
             for k, v in pairs],
            safe="*",
        )
    return f"{scheme}://{rest}{qmark}{query}"
