"""One deadline for a whole HTTP exchange, for ``kavach polar trigger`` and ``doctor``.

``requests`` applies its timeout to each socket operation: the connect, then every single
read. A server that trickles its answer a few bytes at a time, each within the timeout,
can hold the caller for as long as it likes. Here the timeout is a deadline for the whole
exchange instead — connect, TLS handshake, request, status line, headers and body:

- :class:`DeadlineAdapter` (mounted by :func:`new_session`) gives each new connection at
  most the time left to connect, and hands its socket to the running :class:`Deadline`;
- the :class:`Deadline` shuts those sockets down from a timer thread when it passes, so a
  read blocked anywhere in ``http.client``, ``ssl`` or ``urllib3`` ends at once;
- :func:`read_body` reads the body one socket read at a time, each waiting at most the
  time left.

Not covered: the host name lookup (``getaddrinfo`` cannot be interrupted; it is bounded
only by the system resolver's own timeouts), and, when a name has several addresses, each
further connect attempt gets the time that was left when the first began. A session of
your own (without the adapter) has only the body bounded; SOCKS proxies likewise.
"""

from __future__ import annotations

import contextlib
import contextvars
import http.client
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import attrs
import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError

__all__ = [
    "Answer",
    "Deadline",
    "DeadlineAdapter",
    "DeadlineExceeded",
    "deadline",
    "describe_failure",
    "exchange",
    "new_session",
    "read_body",
    "without",
]

#: The running exchange's deadline, for the connections it opens (same thread).
_CURRENT: contextvars.ContextVar[Deadline | None] = contextvars.ContextVar(
    "kavach_http_deadline", default=None
)
_SHOWN_LINE = 60


class DeadlineExceeded(Exception):
    """The exchange's deadline passed while reading its answer."""


class Deadline:
    """The end of one exchange, ``seconds`` from now: :meth:`watch` registers its sockets,
    shut down when the time is up; :meth:`finish` ends the watch and says whether the
    deadline passed first."""

    def __init__(self, seconds: float) -> None:
        self._end = time.monotonic() + seconds
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._expired = False
        self._finished = False
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def left(self) -> float:
        """Seconds until the deadline, 0 once it has passed."""
        return max(0.0, self._end - time.monotonic())

    @property
    def expired(self) -> bool:
        return self._expired or self.left() <= 0

    def watch(self, sock: socket.socket) -> None:
        """Shut ``sock`` down when the deadline passes (at once if it has)."""
        try:
            # A duplicate of the descriptor: it stays valid when the original is wrapped
            # in TLS (which detaches it), and shutting it down ends the one connection.
            twin = socket.fromfd(sock.fileno(), sock.family, sock.type)
        except (OSError, ValueError):
            return
        with self._lock:
            if self._finished:
                twin.close()
                return
            self._sockets.append(twin)
            if self._expired:
                _shut(twin)

    def finish(self) -> bool:
        """Stop watching; ``True`` when the deadline passed before."""
        with self._lock:
            self._finished = True
            self._timer.cancel()
            for twin in self._sockets:
                twin.close()
            self._sockets.clear()
            return self.expired

    def _expire(self) -> None:
        with self._lock:
            if self._finished:
                return
            self._expired = True
            for twin in self._sockets:
                _shut(twin)


def _shut(sock: socket.socket) -> None:
    # Wakes a read blocked on the connection in another thread: it sees the end.
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[Deadline]:
    """Run one exchange under a :class:`Deadline` of ``seconds``; connections opened
    through a :class:`DeadlineAdapter` in this block are watched."""
    running = Deadline(seconds)
    token = _CURRENT.set(running)
    try:
        yield running
    finally:
        _CURRENT.reset(token)
        running.finish()


def watch_response(response: requests.Response, running: Deadline) -> None:
    """Watch the connection ``response`` is read from (for a session without the
    adapter, whose connect and headers were not watched)."""
    connection = getattr(response.raw, "connection", None)
    sock = getattr(connection, "sock", None)
    if isinstance(sock, socket.socket):
        running.watch(sock)


def read_body(response: requests.Response, limit: int, running: Deadline) -> bytes:
    """At most ``limit`` bytes of the (decoded) body, each socket read waiting at most
    the time left; raises :class:`DeadlineExceeded` when the deadline passes first."""
    raw = response.raw
    read1 = getattr(raw, "read1", None)  # urllib3 >= 2.3: one socket read per call
    connection = getattr(raw, "connection", None)
    sock = getattr(connection, "sock", None)
    parts: list[bytes] = []
    size = 0
    while size < limit:
        left = running.left()
        if running.expired or left <= 0:
            raise DeadlineExceeded
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.settimeout(left)
        want = min(limit - size, 16 * 1024)
        chunk: bytes = (
            read1(want, decode_content=True) if read1 is not None
            else raw.read(want, decode_content=True)
        )
        if running.expired:  # the watch cut the connection: what came is not the end
            raise DeadlineExceeded
        if not chunk:
            missing = getattr(raw, "length_remaining", None)
            if missing:  # urllib3 1.26 (which requests allows) does not check it itself
                raise urllib3.exceptions.ProtocolError(f"the body ended {missing} bytes short")
            break
        parts.append(chunk)
        size += len(chunk)
    return b"".join(parts)[:limit]


# -- the adapter --------------------------------------------------------------------------


def _connect_within(
    connection: HTTPConnection, connect: Callable[[], socket.socket]
) -> socket.socket:
    """``connect()`` within the running deadline (if any), which then watches the socket:
    the TLS handshake, the request and the answer all go through it."""
    running = _CURRENT.get()
    if running is None:
        return connect()
    left = running.left()
    if left <= 0:
        raise ConnectTimeoutError(connection, "no time left to connect")
    timeout = connection.timeout
    if not isinstance(timeout, int | float) or timeout > left:
        connection.timeout = left
    sock = connect()
    running.watch(sock)
    return sock


class _WatchedHTTPConnection(HTTPConnection):
    def _new_conn(self) -> socket.socket:
        return _connect_within(self, super()._new_conn)


class _WatchedHTTPSConnection(HTTPSConnection):
    def _new_conn(self) -> socket.socket:
        return _connect_within(self, super()._new_conn)


def _watch_kept(connection: Any) -> Any:
    """A kept-alive connection taken from the pool for the running exchange: it was
    connected (and watched) by an earlier one, so watch its socket now, or the request
    and the headers of this exchange would be bounded by each read's timeout only."""
    running = _CURRENT.get()
    sock = getattr(connection, "sock", None)
    if running is not None and isinstance(sock, socket.socket):
        running.watch(sock)
    return connection


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection

    def _get_conn(self, timeout: float | None = None) -> Any:
        return _watch_kept(super()._get_conn(timeout))


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection

    def _get_conn(self, timeout: float | None = None) -> Any:
        return _watch_kept(super()._get_conn(timeout))


_POOLS: dict[str, type[HTTPConnectionPool]] = {
    "http": _WatchedHTTPPool,
    "https": _WatchedHTTPSPool,
}


class DeadlineAdapter(HTTPAdapter):
    """An ``HTTPAdapter`` whose connections obey the running :func:`deadline`
    (directly or through an http(s) proxy; not through a SOCKS proxy)."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(_POOLS)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):
            manager.pool_classes_by_scheme = dict(_POOLS)
        return manager


def new_session() -> requests.Session:
    """A ``requests.Session`` whose exchanges obey the running :func:`deadline`."""
    session = requests.Session()
    adapter = DeadlineAdapter()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


# -- what went wrong ----------------------------------------------------------------------


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it wraps: causes, contexts and exceptions among its arguments
    (``requests`` and ``urllib3`` keep the original there)."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        todo.extend(a for a in current.args if isinstance(a, BaseException))
        reason = getattr(current, "reason", None)
        if isinstance(reason, BaseException):
            todo.append(reason)
        for linked in (current.__cause__, current.__context__):
            if linked is not None:
                todo.append(linked)


def without(text: str, secrets: Sequence[str]) -> str:
    """``text`` with each of ``secrets`` (a token a server may echo) replaced by "…"."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "…")
    return text


def _shown(line: str, hide: Sequence[str] = ()) -> str:
    """The start of what the server sent, printable, without any of ``hide`` (a server
    may echo the request's token in what it sends back)."""
    text = without(line.strip(), hide)
    if not text.isprintable():
        text = repr(text)[1:-1]
    return text if len(text) <= _SHOWN_LINE else text[:_SHOWN_LINE] + "…"


def describe_failure(
    exc: requests.RequestException, url: str, hide: Sequence[str] = ()
) -> str:
    """One line, naming ``url``, on a request that got no answer (other than by a
    timeout): the server sent something that is not HTTP, hung up without a word, failed
    TLS, or no connection was made."""
    for cause in _causes(exc):
        if isinstance(cause, http.client.RemoteDisconnected):
            return f"the server at {url} closed the connection without answering"
        if isinstance(cause, http.client.BadStatusLine):
            line = str(cause.args[0]) if cause.args else ""
            return f"the server at {url} did not answer HTTP (it sent '{_shown(line, hide)}')"
        if isinstance(cause, http.client.HTTPException):  # too long, too many headers...
            detail = _shown(str(cause), hide)
            return f"the server at {url} did not answer valid HTTP ({detail})"
        if isinstance(cause, ssl.SSLCertVerificationError):
            why = cause.verify_message or cause.reason or "not verified"
            return f"the server at {url} has a certificate that is not trusted ({why})"
        if isinstance(cause, ssl.SSLError):  # e.g. a plain-text server on an https URL
            why = (cause.reason or "").lower().replace("_", " ") or _shown(str(cause), hide)
            return f"the TLS handshake with {url} failed ({why})"
    if isinstance(exc, requests.ConnectionError):
        return f"cannot reach {url}: connection failed (refused, unreachable or DNS)"
    return f"the request to {url} failed ({type(exc).__name__})"


# -- one exchange -------------------------------------------------------------------------


@attrs.frozen
class Answer:
    """What one exchange got: the status, reason, headers and at most ``limit`` bytes
    of the body, ``seconds`` after it began; or ``error`` (``timed_out`` when the
    deadline passed first) and no ``status_code``."""

    status_code: int | None
    seconds: float
    reason: str = ""
    headers: Mapping[str, str] = attrs.field(factory=dict)
    content: bytes = b""
    error: str | None = None
    timed_out: bool = False


def exchange(
    send: Callable[[], requests.Response],
    url: str,
    *,
    timeout: float,
    limit: int,
    hide: Sequence[str] = (),
) -> Answer:
    """Run ``send`` (a ``requests`` call with ``stream=True``) and read at most ``limit``
    bytes of its answer, all within ``timeout`` seconds. Never raises for network
    failures or bad answers: see :attr:`Answer.error` (it names ``url``, except after a
    timeout: ``no answer within 10 s``, or ``no complete answer ...`` when the body was
    still arriving). ``hide``: values (a token) never to show from what the server sent."""
    start = time.perf_counter()
    headers_in = False
    error: str | None = None
    answer: Answer | None = None
    with deadline(timeout) as running:
        try:
            with send() as response:
                # Cut while they came, the headers may look complete: they are not.
                headers_in = not running.expired
                watch_response(response, running)
                content = read_body(response, limit, running)
                answer = Answer(
                    response.status_code, time.perf_counter() - start,
                    reason=response.reason or "", headers=response.headers, content=content,
                )
        except (DeadlineExceeded, requests.Timeout, urllib3.exceptions.TimeoutError,
                TimeoutError):
            pass
        except requests.RequestException as exc:
            error = describe_failure(exc, url, hide)
        except (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError) as exc:
            error = f"the answer from {url} broke off ({type(exc).__name__})"  # the body
        seconds = time.perf_counter() - start
        expired = running.finish()
    if answer is not None:  # read in full before the deadline (read_body checks)
        return answer
    if expired or error is None:  # an error after the deadline is the watch's cut
        what = "no complete answer" if headers_in else "no answer"
        return Answer(None, seconds, error=f"{what} within {timeout:g} s", timed_out=True)
    return Answer(None, seconds, error=error)
