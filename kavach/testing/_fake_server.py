"""The fake Polar's HTTP front: server, handler and the cross-cutting rules (private).

For ``/v1`` requests, in the order Polar's middlewares apply them: injected failures
(``fail_next``: 429 with an empty body and ``retry-after``, or a 5xx), the ``Polar-Version``
check (unsupported → 404 on every path; the version is echoed on every response), bearer
authentication (401 in Polar's two shapes), then the route. ``X-Polar-Sandbox: 1`` is added
to every response of a sandbox fake. Bodies over 10 MiB get 413 without being read.
"""

from __future__ import annotations

import hmac
import threading
from collections.abc import Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from kavach.testing._fake_api import Api, Request, Response, json_response
from kavach.testing._fake_pages import Pages

MAX_BODY_BYTES = 10 * 1024 * 1024
SUPPORTED_VERSIONS = ("2026-04", "2026-10")
DEFAULT_VERSION = "2026-04"
INVALID_TOKEN_DESCRIPTION = (
    "The access token provided is expired, revoked, malformed, "  # noqa: S105 - a message
    "or invalid for other reasons."
)


class Gateway:
    """Applies failures, versioning, auth and headers, then routes to the API or a page."""

    def __init__(self, api: Api, pages: Pages, *, token: str | None, sandbox: bool) -> None:
        self.api = api
        self.pages = pages
        self._token = token
        self.sandbox = sandbox
        self._failures: list[tuple[int, int]] = []
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Gateway(sandbox={self.sandbox}, pending_failures={len(self._failures)})"

    def fail_next(self, count: int, status: int, retry_after: int) -> None:
        """Answer the next ``count`` API calls with ``status`` (429: empty body, retry-after)."""
        with self._lock:
            self._failures.extend([(status, retry_after)] * count)

    def _take_failure(self) -> tuple[int, int] | None:
        with self._lock:
            return self._failures.pop(0) if self._failures else None

    def handle(self, request: Request) -> Response:
        """The full answer to one request."""
        if request.path == "/v1" or request.path.startswith("/v1/"):
            response = self._api(request)
        else:
            response = self.pages.handle(request) or json_response(404, {"detail": "Not Found"})
        if self.sandbox:
            response.headers["X-Polar-Sandbox"] = "1"
        return response

    def _api(self, request: Request) -> Response:
        failure = self._take_failure()
        if failure is not None:
            status, retry_after = failure
            if status == 429:
                return Response(429, b"", None, {"retry-after": str(retry_after)})
            try:
                phrase = HTTPStatus(status).phrase
            except ValueError:
                phrase = "Error"
            return Response(status, phrase.encode(), "text/plain; charset=utf-8")
        version = request.headers.get("polar-version")
        if version is not None and version not in SUPPORTED_VERSIONS:
            return json_response(404, {"detail": "Not Found"})
        if self.api.has_route(request.method, request.path):
            response = self._authenticate(request.headers) or self.api.handle(request)
        else:  # routing answers (404, 405, 307) come before authentication
            response = self.api.handle(request)
        response.headers["Polar-Version"] = version or DEFAULT_VERSION
        return response

    def _authenticate(self, headers: Mapping[str, str]) -> Response | None:
        scheme, _, credentials = headers.get("authorization", "").strip().partition(" ")
        if scheme.lower() != "bearer":
            return json_response(
                401, {"error": "Unauthorized", "detail": "Unauthorized"},
                {"WWW-Authenticate": 'Bearer realm="polar"'},
            )
        given = credentials.strip()
        if not given or (
            self._token is not None
            and not hmac.compare_digest(given.encode("utf-8"), self._token.encode("utf-8"))
        ):
            return json_response(
                401,
                {"error": "invalid_token", "error_description": INVALID_TOKEN_DESCRIPTION},
                {"WWW-Authenticate": 'Bearer realm="polar", error="invalid_token", '
                                     f'error_description="{INVALID_TOKEN_DESCRIPTION}"'},
            )
        return None


class FakeHTTPServer(ThreadingHTTPServer):
    """A threading HTTP/1.1 server with a deep listen queue and daemon worker threads."""

    daemon_threads = True
    request_queue_size = 128
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], gateway: Gateway) -> None:
        self.gateway = gateway
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    wbufsize = -1  # buffered writes, flushed once per response
    server: FakeHTTPServer

    def version_string(self) -> str:
        """The ``Server`` header."""
        return "FakePolar"

    def log_message(self, format: str, *args: object) -> None:
        """Silent: request lines can carry session tokens."""

    def _handle(self) -> None:
        body = self._read_body()
        if body is None:
            self.close_connection = True
            self._write(json_response(
                413, {"error": "RequestEntityTooLarge", "detail": "Request body too large"}))
            return
        parts = urlsplit(self.path)
        request = Request(
            method=self.command,
            path=parts.path or "/",
            query=parse_qs(parts.query, keep_blank_values=True),
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
        )
        try:
            response = self.server.gateway.handle(request)
        except Exception:  # a bug in the fake must still answer, like a real server
            response = Response(500, b"Internal Server Error", "text/plain; charset=utf-8")
        self._write(response)

    def _read_body(self) -> bytes | None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
        if length > MAX_BODY_BYTES:
            return None
        return self.rfile.read(length) if length > 0 else b""

    def _read_chunked(self) -> bytes | None:
        chunks: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(65537)
            size = int(line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(chunks)
            total += size
            if total > MAX_BODY_BYTES:
                return None
            chunks.append(self.rfile.read(size))
            self.rfile.readline(65537)

    def _write(self, response: Response) -> None:
        self.send_response(response.status)
        if response.content_type is not None:
            self.send_header("Content-Type", response.content_type)
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)
        self.wfile.flush()

    do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = do_HEAD = do_OPTIONS = _handle
