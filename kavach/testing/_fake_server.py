"""The fake Polar's HTTP front: server, handler and the cross-cutting rules (private).

For ``/v1`` requests, in the order Polar's middlewares apply them: injected failures
(``fail_next``: 429 with an empty body and ``retry-after``, or a 5xx), the ``Polar-Version``
check (unsupported → 404 on every path; the version is echoed on every response), bearer
authentication (401 in Polar's two shapes), then the route. ``X-Polar-Sandbox: 1`` is added
to every response of a sandbox fake. Bodies over 10 MiB get 413 without being read; a
malformed body framing (``Content-Length``, chunk sizes) gets 400; both close the
connection. The webhook events a request causes are prepared with ``prepare_delivery``
before its response is written (so ``wait_for_deliveries`` counts them) and queued only
once it is written, so a caller never waits for its own webhooks (as with Polar, whose
worker sends them later).
"""

from __future__ import annotations

import contextlib
import hmac
import re
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from kavach.testing._fake_api import Api, Request, Response, json_response
from kavach.testing._fake_pages import Pages
from kavach.testing._fake_state import Event

MAX_BODY_BYTES = 10 * 1024 * 1024
MAX_LINE_BYTES = 64 * 1024
MAX_TRAILER_LINES = 100
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")
_DECIMAL = re.compile(r"[0-9]{1,20}")
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
    """A threading HTTP/1.1 server with a deep listen queue; it remembers its connections
    so that :meth:`close_connections` can end keep-alive ones too."""

    daemon_threads = True
    request_queue_size = 128
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        gateway: Gateway,
        prepare_delivery: Callable[[Sequence[Event]], Callable[[], None]],
    ) -> None:
        self.gateway = gateway
        self.prepare_delivery = prepare_delivery
        self._connections: dict[socket.socket, threading.Thread] = {}
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Serve the connection on its own (daemon) thread, remembered until it ends."""
        thread = threading.Thread(target=self.process_request_thread,
                                  args=(request, client_address),
                                  name="fake-polar-connection", daemon=True)
        with self._connections_lock:
            self._connections[request] = thread
        thread.start()

    def shutdown_request(self, request: Any) -> None:
        """Forget the connection, then close it."""
        with self._connections_lock:
            self._connections.pop(request, None)
        super().shutdown_request(request)

    def close_connections(self, timeout: float = 5.0) -> None:
        """End every open connection, idle keep-alive ones included, and wait up to
        ``timeout`` seconds for their threads (call after ``shutdown()``)."""
        with self._connections_lock:
            connections = list(self._connections.items())
        for connection, _ in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + timeout
        for _, thread in connections:
            thread.join(max(0.0, deadline - time.monotonic()))


class _Unreadable(Exception):
    """The request's body cannot be read: answer ``response`` and close the connection."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


def _bad_request(detail: str) -> _Unreadable:
    """A 400 for a body whose framing is malformed (what uvicorn answers, plain text)."""
    return _Unreadable(Response(400, f"Invalid HTTP request received: {detail}".encode(),
                                "text/plain; charset=utf-8"))


def _too_large() -> _Unreadable:
    return _Unreadable(json_response(
        413, {"error": "RequestEntityTooLarge", "detail": "Request body too large"}))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    wbufsize = -1  # buffered writes, flushed once per response
    timeout = 60  # seconds a stalled or idle connection may hold its thread
    server: FakeHTTPServer

    def version_string(self) -> str:
        """The ``Server`` header."""
        return "FakePolar"

    def log_message(self, format: str, *args: object) -> None:
        """Silent: request lines can carry session tokens."""

    def _handle(self) -> None:
        try:
            body = self._read_body()
        except _Unreadable as unreadable:
            self.close_connection = True
            self._write(unreadable.response)
            return
        parts = urlsplit(self.path)
        request = Request(
            method=self.command,
            path=parts.path or "/",
            query=parse_qs(parts.query, keep_blank_values=True),
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
            query_string=parts.query,
        )
        try:
            response = self.server.gateway.handle(request)
        except Exception:  # a bug in the fake must still answer, like a real server
            response = Response(500, b"Internal Server Error", "text/plain; charset=utf-8")
        send_events = self.server.prepare_delivery(response.events)
        try:
            self._write(response)
        finally:  # the change happened: its webhooks go out even if the client left
            send_events()

    # --- reading the body (every read bounded) -----------------------------------------

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length = self._content_length()
        if length > MAX_BODY_BYTES:
            raise _too_large()
        return self._read_exactly(length)

    def _content_length(self) -> int:
        raw = self.headers.get("Content-Length")
        if raw is None:
            return 0
        if not _DECIMAL.fullmatch(raw.strip()):
            raise _bad_request("invalid Content-Length")
        return int(raw)

    def _read_exactly(self, size: int) -> bytes:
        data = self.rfile.read(size) if size > 0 else b""
        if len(data) < size:
            raise _bad_request("body ended early")
        return data

    def _read_line(self) -> bytes:
        """One line of the chunked framing, without its line ending."""
        line = self.rfile.readline(MAX_LINE_BYTES + 1)
        if len(line) > MAX_LINE_BYTES or not line.endswith(b"\n"):
            raise _bad_request("chunked framing line missing or too long")
        return line.rstrip(b"\r\n")

    def _read_chunked(self) -> bytes:
        chunks: list[bytes] = []
        total = 0
        while (size := self._chunk_size()) > 0:
            total += size
            if total > MAX_BODY_BYTES:
                raise _too_large()
            chunks.append(self._read_exactly(size))
            if self._read_line():
                raise _bad_request("chunk data longer than its size")
        self._skip_trailers()
        return b"".join(chunks)

    def _chunk_size(self) -> int:
        digits = self._read_line().split(b";", 1)[0].strip()
        if not _CHUNK_SIZE.fullmatch(digits):
            raise _bad_request("invalid chunk size")
        return int(digits, 16)

    def _skip_trailers(self) -> None:
        for _ in range(MAX_TRAILER_LINES):
            if not self._read_line():
                return
        raise _bad_request("too many trailer lines")

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
