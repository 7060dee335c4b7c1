"""Framework-neutral HTTP values: :class:`Headers`, :class:`Request`, :class:`Response`.

The adapters (:mod:`kavach.http.server`, :mod:`kavach.http.wsgi`) turn their native
requests into these values and write the :class:`Response` back; the router and the
route functions only ever see these.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

JSON_CONTENT_TYPE = "application/json"
_JSON_HEADERS = (("Content-Type", JSON_CONTENT_TYPE), ("Cache-Control", "no-store"))
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
#: A ``\uD800``-``\uDFFF`` escape: the only way a lone surrogate gets into parsed JSON.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class Headers(Mapping[str, str]):
    """Read-only, case-insensitive request headers.

    Repeated headers are joined with ``", "`` (``"; "`` for ``Cookie``), as RFC 9110
    allows. Keys are stored lower-cased; iteration yields lower-case names.
    """

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        merged: dict[str, str] = {}
        for name, value in items:
            key = name.lower()
            if key in merged:
                sep = "; " if key == "cookie" else ", "
                merged[key] = merged[key] + sep + value
            else:
                merged[key] = value
        self._items = merged

    @classmethod
    def from_lowercase_dict(cls, items: dict[str, str]) -> Headers:
        """Wrap a dict whose keys are already lower-case (no copy)."""
        headers = cls.__new__(cls)
        headers._items = items
        return headers

    def __getitem__(self, name: str) -> str:
        return self._items[name.lower()]

    def get(self, name: str, default: Any = None) -> Any:  # Mapping.get, without try/except
        """The header's value, or ``default``."""
        return self._items.get(name.lower(), default)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        # Names only: values may hold tokens and cookies.
        return f"Headers({sorted(self._items)})"


class Request:
    """One HTTP request as the router sees it.

    ``path`` is the decoded path without the query string; ``query`` the raw query
    string; ``body`` the whole body (the adapter already enforced the size limit);
    ``scheme`` and ``host`` (the ``Host`` header) give the server's own origin;
    ``client`` is the peer's IP address.
    """

    __slots__ = ("body", "client", "headers", "host", "method", "path", "query", "scheme")

    def __init__(
        self,
        method: str,
        path: str,
        *,
        query: str = "",
        headers: Headers | None = None,
        body: bytes = b"",
        client: str = "",
        scheme: str = "http",
        host: str | None = None,
    ) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers if headers is not None else Headers()
        self.body = body
        self.client = client
        self.scheme = scheme
        self.host = host if host is not None else self.headers.get("host")

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.path}>"


class Response:
    """Status, header list and body bytes. Build JSON ones with :meth:`json`."""

    __slots__ = ("body", "headers", "status")

    def __init__(
        self, status: int, headers: list[tuple[str, str]] | None = None, body: bytes = b""
    ) -> None:
        self.status = status
        self.headers = headers if headers is not None else []
        self.body = body

    @classmethod
    def json(
        cls, status: int, data: Any, headers: Iterable[tuple[str, str]] = ()
    ) -> Response:
        """A JSON response (``Content-Type: application/json``, ``Cache-Control: no-store``)."""
        return cls(status, [*_JSON_HEADERS, *headers], _dumps(data).encode("utf-8"))

    @classmethod
    def error(
        cls,
        status: int,
        code: str,
        message: str,
        *,
        headers: Iterable[tuple[str, str]] = (),
        **extra: Any,
    ) -> Response:
        """An error response: ``{"error": code, "message": message, **extra}``."""
        return cls.json(status, {"error": code, "message": message, **extra}, headers)

    def header(self, name: str) -> str | None:
        """The first value of a response header, or ``None`` (case-insensitive)."""
        lowered = name.lower()
        for key, value in self.headers:
            if key.lower() == lowered:
                return value
        return None

    def __repr__(self) -> str:
        return f"<Response {self.status} {len(self.body)} bytes>"


class HttpError(Exception):
    """Raised by route code to answer with a JSON error; the router turns it into a
    :class:`Response`. ``extra`` keys are added to the JSON body (``field``...)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: Iterable[tuple[str, str]] = (),
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = tuple(headers)
        self.extra = extra

    def to_response(self) -> Response:
        """The JSON error response."""
        return Response.error(
            self.status, self.code, self.message, headers=self.headers, **self.extra
        )


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def read_json_object(request: Request) -> dict[str, Any]:
    """The body (UTF-8 JSON, RFC 8259) parsed as an object; :class:`HttpError` 400
    ``bad_json`` otherwise, also for strings holding unpaired UTF-16 surrogates."""
    try:
        text = request.body.decode("utf-8")  # strict: no encoded surrogates either
        data = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise HttpError(400, "bad_json", "request body is not valid UTF-8 JSON") from None
    if not isinstance(data, dict):
        raise HttpError(400, "bad_json", "request body must be a JSON object")
    if "\\u" in text and _SURROGATE_ESCAPE.search(text):
        # Paired escapes decode to one character; a lone one would reach the store and
        # break every later UTF-8 encoding (password hashing, the JSON answer).
        try:
            _dumps(data).encode("utf-8")
        except UnicodeEncodeError:
            raise HttpError(
                400, "bad_json", "request body contains an unpaired UTF-16 surrogate"
            ) from None
    return data
