"""The built-in HTTP server: stdlib ``http.server`` in front of the shared router.

* ``ThreadingHTTPServer`` with daemon threads and a listen queue of 128 (the default 5
  drops connections under load);
* HTTP/1.1 keep-alive with buffered writes and one flush per response (the stock
  unbuffered handler stalls ~44 ms per keep-alive response on delayed ACK);
* a socket timeout (``timeout``, 30 s) on every read and write: an idle keep-alive
  connection is closed after it, silently;
* a read deadline per request (``request_deadline``, by default the socket timeout,
  counted from the request's first byte): the request line, headers and body must all
  arrive within it, so a client trickling bytes just inside the socket timeout cannot
  hold a thread forever. A request that misses the deadline, or stalls past the socket
  timeout once started, gets ``408 Request Timeout`` and the connection is closed;
* optionally at most ``max_connections`` connections handled at once (no cap by
  default: idle keep-alive connections count too); one more is answered ``503`` and
  closed straight away;
* one log line per request: method, path, status, duration (never headers or bodies);
  ``-`` stands for a method or path a malformed request line did not give.

``make_server(kavach, host, port)`` builds one for tests and embedding (port 0 picks a
free port; see ``server.server_address``); ``serve(kavach, host, port)`` runs one until
Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
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
#: Connections handled at once by default: no cap. A cap counts idle keep-alive
#: connections too, so a client holding that many idle sockets would lock everyone out
#: for the socket timeout; set one (``max_connections=``) behind a proxy that bounds them.
DEFAULT_MAX_CONNECTIONS: int | None = None
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
    503: "too_many_connections",
    505: "http_version_not_supported",
}


def _printable(text: str, limit: int = 200) -> str:
    """``text`` made safe for one log line (no control characters), truncated."""
    text = text[:limit]
    return text if text.isprintable() else repr(text)[1:-1]


class _ReadTimeout(TimeoutError):
    """Reading the connection timed out: the socket timeout, or the request's deadline."""


class _DeadlineReader(io.RawIOBase):
    """The connection's read side (under the handler's buffered ``rfile``).

    Each ``recv`` waits at most the socket timeout and, while ``deadline`` (a
    ``time.monotonic()`` value) is set, no later than the deadline; either way a timeout
    raises :class:`_ReadTimeout`.
    """

    def __init__(self, sock: socket.socket, timeout: float | None) -> None:
        super().__init__()
        self._sock = sock
        self._timeout = timeout
        self._applied = timeout  # the timeout the socket has now
        self.deadline: float | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        wait = self._timeout
        if self.deadline is not None:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise _ReadTimeout("request deadline passed")
            if wait is None or remaining < wait:
                wait = remaining
        if wait != self._applied:
            self._sock.settimeout(wait)
            self._applied = wait
        try:
            return self._sock.recv_into(buffer)
        except TimeoutError:
            raise _ReadTimeout("read timed out") from None

    def end_request(self) -> None:
        """The request is read: no deadline, and the plain socket timeout back (for writes)."""
        self.deadline = None
        if self._applied != self._timeout:
            self._sock.settimeout(self._timeout)
            self._applied = self._timeout


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
        self._start = time.perf_counter()
        self.request.settimeout(self.server.request_timeout)
        super().setup()
        # Reads go through the deadline-aware reader (same buffering as makefile("rb")).
        self.rfile.close()
        self._reader = _DeadlineReader(self.connection, self.server.request_timeout)
        self._buffered = io.BufferedReader(self._reader, io.DEFAULT_BUFFER_SIZE)
        self.rfile = self._buffered
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
        # Nothing of this request is known yet (and nothing of the last one may show in
        # its log line): parse_request() may fail before it sets any of these.
        self.command = self.path = self.requestline = ""
        self.request_version = self.default_request_version
        started = False
        try:
            # Wait (up to the socket timeout) for the first byte, then start the deadline:
            # idle time between keep-alive requests does not count against it.
            if not self._buffered.peek(1):
                self.close_connection = True
                return
            started = True
            self._start = time.perf_counter()
            if self.server.request_deadline is not None:
                self._reader.deadline = time.monotonic() + self.server.request_deadline
            self.raw_requestline = self.rfile.readline(_MAX_REQUEST_LINE + 1)
            if len(self.raw_requestline) > _MAX_REQUEST_LINE:
                self.send_error(414)
                return
            if not self.parse_request():
                self.wfile.flush()
                return
            self._answer()
            if self.server.closing:
                self.close_connection = True
        except _ReadTimeout:
            self.close_connection = True
            if started:  # idle keep-alive connections are closed silently
                self._request_timeout()
        except OSError:  # a write timed out, or the client went away mid-request
            self.close_connection = True

    def _request_timeout(self) -> None:
        """408 for a request not received in time, then a lingering close."""
        self._unread_body = self.server.router.max_body_bytes  # drain, so the 408 arrives
        self._log(408)
        with contextlib.suppress(OSError):
            self._write(
                Response.error(408, "request_timeout", "the request was not received in time")
            )

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
                    if len(body) < size:  # the client closed mid-body
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
        self._reader.end_request()
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
            "%s %s %d %.1fms", _printable(self.command or "-", 20), _printable(path or "-"),
            status, elapsed_ms,
        )

    def log_message(self, format: str, *args: Any) -> None:
        """Silence http.server's own stderr lines; kavach logs one line per request."""


class KavachHTTPServer(ThreadingHTTPServer):
    """A ``ThreadingHTTPServer`` serving one :class:`Router`.

    ``closing`` turns true in :meth:`server_close`; idle keep-alive connections are then
    shut down and busy ones close after their current response. ``timeout``,
    ``request_deadline`` and ``max_connections`` are :func:`make_server`'s;
    ``request_deadline`` holds the deadline in effect (``None``: none).
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
        request_deadline: float | None = None,
        max_connections: int | None = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        if request_deadline is None:
            request_deadline = timeout
        elif not request_deadline > 0:
            raise ValueError(f"request_deadline must be positive, not {request_deadline!r}")
        if request_deadline == math.inf:
            request_deadline = None
        if max_connections is not None and max_connections < 1:
            raise ValueError(f"max_connections must be at least 1 or None, not {max_connections!r}")
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.router = router
        self.request_timeout = timeout
        self.request_deadline: float | None = request_deadline
        self.max_connections = max_connections
        self._slots = (
            None if max_connections is None else threading.BoundedSemaphore(max_connections)
        )
        self._refused = 0
        self._refusal_logged = -math.inf
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

    def process_request(self, request: Any, client_address: Any) -> None:
        """Hand the connection to a new thread, or answer 503 when ``max_connections``
        are already being handled."""
        if self._slots is not None and not self._slots.acquire(blocking=False):
            self._refuse(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            if self._slots is not None:
                self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            if self._slots is not None:
                self._slots.release()

    def _refuse(self, request: socket.socket) -> None:
        """503 and close, from the accepting thread: never blocks (one non-blocking send).
        Logged at most once a second, with the count refused since the last line."""
        self._refused += 1
        now = time.monotonic()
        if now - self._refusal_logged >= 1.0:
            logger.warning(
                "refused %d connection(s) with 503: max_connections (%d) already open",
                self._refused, self.max_connections,
            )
            self._refused, self._refusal_logged = 0, now
        body = Response.error(
            503, "too_many_connections", "the server is handling too many connections"
        ).body
        head = (
            "HTTP/1.1 503 Service Unavailable\r\nServer: kavach\r\n"
            "Content-Type: application/json\r\nRetry-After: 1\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        with contextlib.suppress(OSError):
            request.setblocking(False)
            request.send(head.encode("latin-1") + body)
        self.shutdown_request(request)

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
    request_deadline: float | None = None,
    max_connections: int | None = DEFAULT_MAX_CONNECTIONS,
) -> KavachHTTPServer:
    """A bound, not yet serving, server for ``kavach`` (``port=0``: any free port).

    Run it with ``server.serve_forever()`` (in a thread for tests), stop it with
    ``server.shutdown()`` and ``server.server_close()``. ``timeout`` is the per-socket
    timeout in seconds (``None``: none); ``request_deadline`` the seconds a request (line,
    headers and body) has to arrive, from its first byte, else 408 (``None``: the same as
    ``timeout``; ``math.inf``: no deadline); ``max_connections`` the connections handled
    at once, one more gets 503 (``None``: no cap). ``scheme`` is ``"https"`` when a TLS
    proxy terminates in front.
    """
    return KavachHTTPServer(
        (host, port),
        router or Router(kavach),
        timeout=timeout,
        scheme=scheme,
        request_deadline=request_deadline,
        max_connections=max_connections,
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
    request_deadline: float | None = None,
    max_connections: int | None = DEFAULT_MAX_CONNECTIONS,
) -> None:
    """Serve ``kavach``'s routes on ``host:port`` until Ctrl-C (or SIGTERM), then shut
    down cleanly and return. ``router`` replaces the default ``Router(kavach)`` (e.g. one
    with the offline demo page); ``on_ready(server)`` runs once the socket listens; the
    other options are :func:`make_server`'s."""
    _ensure_console_logging()
    server = make_server(
        kavach,
        host,
        port,
        timeout=timeout,
        scheme=scheme,
        router=router,
        request_deadline=request_deadline,
        max_connections=max_connections,
    )
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
