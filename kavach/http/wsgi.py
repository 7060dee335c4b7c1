"""``WSGIApp``: the shared router as a WSGI callable, to mount in Flask, Django or any
WSGI server.

Mount it at its base path (``DispatcherMiddleware(app, {"/api/kavach": kavach.wsgi_app})``)
or at ``/`` — it matches ``SCRIPT_NAME + PATH_INFO`` against ``kavach.config.base_path``
either way, also when the whole site runs under a prefix (``SCRIPT_NAME=/shop``, as
gunicorn or a proxy set it): the prefix is left out (see :func:`_route_path`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from http import HTTPStatus
from typing import TYPE_CHECKING

from kavach.http.messages import Headers, Request, Response
from kavach.http.router import Router

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

    from kavach.core import Kavach

def _status_line(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"{status} Unknown"


def _environ_headers(environ: WSGIEnvironment) -> Headers:
    items: dict[str, str] = {}
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            items[key[5:].replace("_", "-").lower()] = value
        elif (key == "CONTENT_TYPE" or key == "CONTENT_LENGTH") and value:
            items[key.replace("_", "-").lower()] = value
    return Headers.from_lowercase_dict(items)


class WSGIApp:
    """A WSGI application serving kavach's routes. Build it once (``kavach.wsgi_app``) and
    reuse it: it holds the router and its sign-in limiter."""

    def __init__(self, kavach: Kavach, *, router: Router | None = None) -> None:
        self.kavach = kavach
        self.router = router or Router(kavach)
        self._status_lines = {
            code: _status_line(code) for code in (200, 204, 400, 401, 403, 404, 405, 409, 413)
        }

    def __repr__(self) -> str:
        return f"WSGIApp(base_path={self.router.base_path!r})"

    def __call__(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        """Answer one request (PEP 3333)."""
        response = self._respond(environ)
        status = self._status_lines.get(response.status) or _status_line(response.status)
        headers = list(response.headers)
        if response.status not in (204, 304):
            headers.append(("Content-Length", str(len(response.body))))
        start_response(status, headers)
        return [response.body]

    def _respond(self, environ: WSGIEnvironment) -> Response:
        router = self.router
        headers = _environ_headers(environ)
        length_text = environ.get("CONTENT_LENGTH") or ""
        limit = router.max_body_bytes
        stream = environ.get("wsgi.input")
        if length_text:
            if not (length_text.isascii() and length_text.isdigit()):
                return Response.error(400, "bad_request", "invalid Content-Length")
            length = int(length_text)
            if length > limit:
                return router.body_too_large()
            body = stream.read(length) if stream is not None and length else b""
        elif environ.get("wsgi.input_terminated") and stream is not None:
            body = stream.read(limit + 1)  # chunked body, decoded by the server: cap it
            if len(body) > limit:
                return router.body_too_large()
        else:
            body = b""
        path = _route_path(
            environ.get("SCRIPT_NAME", ""), environ.get("PATH_INFO", ""), router.base_path
        )
        # PEP 3333 hands PATH_INFO over as latin-1-decoded bytes; URLs are UTF-8.
        if not path.isascii():
            with contextlib.suppress(UnicodeEncodeError, UnicodeDecodeError):
                path = path.encode("latin-1").decode("utf-8")
        request = Request(
            environ["REQUEST_METHOD"],
            path,
            query=environ.get("QUERY_STRING", ""),
            headers=headers,
            body=body,
            client=environ.get("REMOTE_ADDR", ""),
            scheme=environ.get("wsgi.url_scheme", "http"),
            host=headers.get("host") or _server_host(environ),
        )
        return router.dispatch(request)


def _under(path: str, base: str) -> bool:
    return path == base or path.startswith(base + "/")


def _route_path(script_name: str, path_info: str, base: str) -> str:
    """The path to route: ``SCRIPT_NAME + PATH_INFO`` when it lies under ``base`` (the app
    mounted at its base path, or at ``/``). Deployed under an outer prefix (``/shop``:
    gunicorn's ``SCRIPT_NAME``, a proxy's prefix), the full path starts with the prefix:
    then the part from the mount point on (``base + PATH_INFO`` when mounted at ``base``,
    ``PATH_INFO`` when mounted at the prefix's ``/``)."""
    if not base:  # base_path "/": the routes are at the mount point, whatever is above
        return path_info or "/"
    full = script_name + path_info
    if _under(full, base):
        return full
    if script_name.rstrip("/").endswith(base):
        return base + path_info
    if _under(path_info, base):
        return path_info
    return full


def _server_host(environ: WSGIEnvironment) -> str | None:
    name = environ.get("SERVER_NAME")
    if not name:
        return None
    port = environ.get("SERVER_PORT", "")
    scheme = environ.get("wsgi.url_scheme", "http")
    default = "443" if scheme == "https" else "80"
    return name if not port or port == default else f"{name}:{port}"
