"""The session cookie: reading it from a ``Cookie`` header and writing ``Set-Cookie``."""

from __future__ import annotations


def read_cookie(header: str | None, name: str) -> str | None:
    """The value of cookie ``name`` in a ``Cookie`` request header, or ``None``.

    Parsed by hand (``http.cookies`` rejects whole headers over one odd cookie); the
    first occurrence wins, surrounding double quotes are dropped.
    """
    if not header or name not in header:
        return None
    for part in header.split(";"):
        key, sep, value = part.partition("=")
        if sep and key.strip() == name:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            return value or None
    return None


def session_cookie(name: str, token: str, *, max_age: int, secure: bool) -> str:
    """A ``Set-Cookie`` value for the session: HttpOnly, SameSite=Lax, Path=/, and
    Secure when the request came over https."""
    attrs = f"{name}={token}; Max-Age={max_age}; Path=/; HttpOnly; SameSite=Lax"
    return attrs + "; Secure" if secure else attrs


def clear_cookie(name: str, *, secure: bool) -> str:
    """A ``Set-Cookie`` value that deletes the session cookie (``Max-Age=0``)."""
    return session_cookie(name, "", max_age=0, secure=secure)
