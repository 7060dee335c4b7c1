"""The built-in HTTP server: stdlib ``http.server`` in front of the shared router.

* ``ThreadingHTTPServer`` with daemon threads and a listen queue of 128 (the default 5
  drops connections under load);
* HTTP/1.1 keep-alive with buffered writes and one flush per response (the stock
  unbuffered handler stalls ~44 ms per keep-alive response on delayed ACK);
* a socket timeout, so a slow or idle client cannot hold a thread forever;
* one log line per request: method, path, status, duration (never headers or bodies).

``make_server(kavach, host, port)`` builds one for tests and embedding (port 0 picks a
free port; see ``server.server_address``); ``serve(kavach, host, port)`` runs one until
Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from kavach.http.messages import Headers, Request, Response
from kavach.http.router import Router

if TYPE_CHECKING:
    from kavach.core import Kavach

logger = logging.getLogger("kavach.http")

DEFAULT_TIMEOUT = 30.0
_MAX_REQUEST_LINE = 65536
#: After refusing a body, read and drop at most this much of it (for at most 1 s) before
#: closing, so the client reads the 413 instead of a connection reset.
_MAX_DRAIN_BYTES = 4 * 1024 * 1024
_NO_BODY_STATUSES = frozenset({204, 304})
_ERROR_CODES = {
    400: "bad_request",
    408: "request_timeout",
    411: "length_required",
    413: "body_too_large",
    414: "uri_too_long",
    431: "headers_too_large",
    501: "not_implemented",
    505: "http_version_not_supported",
}


def _printable(text: str, limit: int = 200) -> str:
    """``text`` made safe for one log line (no control characters), truncated."""
    text = text[:limit]
    return text if text.isprintable() else repr(text)[1:-1]


class KavachRequestHandler(BaseHTTPRequestHandler):
    """Turns each HTTP/1.1 request into a :class:`Request` for the router."""

    protocol_version = "HTTP/1.1"
    wbufsize = -1  # buffered; flushed once per response
    disable_nagle_algorithm = True
    server_version = "kavach"
    sys_version = ""
    server: KavachHTTPServer

    def setup(self) -> None:
        self._unread_body = 0
        self.request.settimeout(self.server.request_timeout)
        super().setup()
        self.server._track(self.connection, add=True)

    def finish(self) -> None:
        self.server._track(self.connection, add=False)
        with contextlib.suppress(OSError):
            super().finish()
            if self._unread_body:
                self._drain(self._unread_body)

    def _drain(self, size: int) -> None:
        """Lingering close: stop sending, then discard what the client still sends."""
        self.connection.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + 1.0
        left = min(size, _MAX_DRAIN_BYTES)
        while left > 0 and (remaining := deadline - time.monotonic()) > 0:
            self.connection.settimeout(remaining)
            chunk = self.connection.recv(min(left, 65536))
            if not chunk:
                break
            left -= len(chunk)

    # -- the request loop ------------------------------------------------------------
    def handle_one_request(self) -> None:
        """Read one request, answer it, flush once."""
        self._start = time.perf_counter()
        try:
            self.raw_requestline = self.rfile.readline(_MAX_REQUEST_LINE + 1)
            if not self.raw_requestline:
                self.close_connection = True
                return
            if len(self.raw_requestline) > _MAX_REQUEST_LINE:
                self.requestline = self.request_version = self.command = ""
                self.path = "?"
                self.send_error(414)
                return
            if not self.parse_request():
                self.wfile.flush()
                return
            self._answer()
            if self.server.closing:
                self.close_connection = True
        except OSError:  # a socket timeout, or the client went away mid-request
            self.close_connection = True

    def handle_expect_100(self) -> bool:
        """Send ``100 Continue`` only for a body the router will read; a body over the limit
        gets the 413 straight away instead."""
        length = self.headers.get("Content-Length", "")
        limit = self.server.router.max_body_bytes
        if length.isascii() and length.isdigit() and int(length) > limit:
            return True  # no 100: _answer() replies 413 before the client sends the body
        self.send_response_only(100)
        self.end_headers()
        self.wfile.flush()
        return True

    def _answer(self) -> None:
        router = self.server.router
        raw_path = self.path
        if raw_path.startswith(("http://", "https://")):  # absolute-form request target
            parts = urlsplit(raw_path)
            path, query = parts.path or "/", parts.query
        else:
            path, _, query = raw_path.partition("?")
        if "%" in path:
            path = unquote(path, errors="replace")
        headers = Headers(self.headers.items())
        response: Response | None = None
        body = b""
        if "transfer-encoding" in headers:
            response = Response.error(
                411, "length_required", "send a Content-Length (chunked bodies are not accepted)"
            )
            self._unread_body = router.max_body_bytes
        else:
            length = headers.get("content-length")
            if length is not None:
                if not (length.isascii() and length.isdigit()):
                    response = Response.error(400, "bad_request", "invalid Content-Length")
                elif int(length) > router.max_body_bytes:
                    response = router.body_too_large()
                    self._unread_body = int(length)
                elif length != "0":
                    size = int(length)
                    body = self.rfile.read(size)
                    if len(body) < size:  # the client closed or timed out mid-body
                        self.close_connection = True
                        return
        if response is not None:
            # The body (if any) was not read: the connection cannot carry another request.
            self.close_connection = True
        else:
            request = Request(
                self.command,
                path,
                query=query,
                headers=headers,
                body=body,
                client=self.client_address[0],
                scheme=self.server.scheme,
            )
            response = router.dispatch(request)
        self._log(response.status)  # first: the line exists once the client has its answer
        self._write(response)

    def _write(self, response: Response) -> None:
        status = response.status
        reason = self.responses.get(status, ("",))[0]
        parts = [
            f"HTTP/1.1 {status} {reason}\r\nServer: kavach\r\nDate: {self.date_time_string()}\r\n"
        ]
        for name, value in response.headers:
            parts.append(f"{name}: {value}\r\n")
        if status not in _NO_BODY_STATUSES:
            parts.append(f"Content-Length: {len(response.body)}\r\n")
        if self.close_connection:
            parts.append("Connection: close\r\n")
        elif self.request_version == "HTTP/1.0":
            parts.append("Connection: keep-alive\r\n")
        parts.append("\r\n")
        head = "".join(parts).encode("latin-1")
        body = b"" if status in _NO_BODY_STATUSES or self.command == "HEAD" else response.body
        self.wfile.write(head + body)
        self.wfile.flush()

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Malformed requests (bad request line, too many headers...): a JSON error, then close."""
        self.close_connection = True
        short = self.responses.get(code, ("error",))[0]
        self._log(code)
        self._write(Response.error(code, _ERROR_CODES.get(code, "bad_request"), message or short))

    # -- logging ---------------------------------------------------------------------
    def _log(self, status: int) -> None:
        if not logger.isEnabledFor(logging.INFO):
            return
        elapsed_ms = (time.perf_counter() - self._start) * 1000.0
        path = self.path.partition("?")[0]  # the query string may carry anything: drop it
        logger.info(
            "%s %s %d %.1fms", _printable(self.command or "-", 20), _printable(path), status,
            elapsed_ms,
        )

    def log_message(self, format: str, *args: Any) -> None:
        """Silence http.server's own stderr lines; kavach logs one line per request."""


class KavachHTTPServer(ThreadingHTTPServer):
    """A ``ThreadingHTTPServer`` serving one :class:`Router`.

    ``closing`` turns true in :meth:`server_close`; idle keep-alive connections are then
    shut down and busy ones close after their current response.
    """

    daemon_threads = True
    request_queue_size = 128
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        router: Router,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        scheme: str = "http",
    ) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.router = router
        self.request_timeout = timeout
        self.scheme = scheme
        self.closing = False
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, KavachRequestHandler)

    def __repr__(self) -> str:
        return f"<KavachHTTPServer {self.url}>"

    def server_bind(self) -> None:
        """Bind without ``HTTPServer``'s reverse-DNS lookup of the host (``getfqdn``)."""
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    @property
    def url(self) -> str:
        """``http://host:port`` as bound (the real port when 0 was asked for)."""
        host = self.server_name
        if ":" in host:
            host = f"[{host}]"
        return f"{self.scheme}://{host}:{self.server_port}"

    def _track(self, connection: socket.socket, *, add: bool) -> None:
        with self._connections_lock:
            if add:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    def server_close(self) -> None:
        """Stop listening and end open keep-alive connections."""
        self.closing = True
        super().server_close()
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RD)


def make_server(
    kavach: Kavach,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    timeout: float | None = DEFAULT_TIMEOUT,
    scheme: str = "http",
    router: Router | None = None,
) -> KavachHTTPServer:
    """A bound, not yet serving, server for ``kavach`` (``port=0``: any free port).

    Run it with ``server.serve_forever()`` (in a thread for tests), stop it with
    ``server.shutdown()`` and ``server.server_close()``. ``timeout`` is the per-socket
    timeout in seconds; ``scheme`` is ``"https"`` when a TLS proxy terminates in front.
    """
    return KavachHTTPServer(
        (host, port), router or Router(kavach), timeout=timeout, scheme=scheme
    )


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _ensure_console_logging() -> None:
    """Show kavach's INFO lines on stderr when the application configured no logging."""
    kavach_logger = logging.getLogger("kavach")
    if logging.getLogger().handlers or kavach_logger.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
    kavach_logger.addHandler(handler)
    kavach_logger.setLevel(logging.INFO)


def serve(
    kavach: Kavach,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    timeout: float | None = DEFAULT_TIMEOUT,
    scheme: str = "http",
    router: Router | None = None,
    on_ready: Callable[[KavachHTTPServer], object] | None = None,
) -> None:
    """Serve ``kavach``'s routes on ``host:port`` until Ctrl-C (or SIGTERM), then shut
    down cleanly and return. ``router`` replaces the default ``Router(kavach)`` (e.g. one
    with the offline demo page); ``on_ready(server)`` runs once the socket listens."""
    _ensure_console_logging()
    server = make_server(kavach, host, port, timeout=timeout, scheme=scheme, router=router)
    try:
        with _sigterm_as_interrupt():
            try:
                logger.info("kavach listening on %s%s", server.url, kavach.config.base_path)
                if on_ready is not None:
                    on_ready(server)
                server.serve_forever()
            except KeyboardInterrupt:
                logger.info("kavach shutting down")
    finally:
        server.server_close()
