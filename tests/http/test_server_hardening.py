"""Built-in server hardening: malformed request lines with INFO logging on, a per-request
read deadline against slow-loris clients, and the cap on concurrent connections.

Timeouts here are small (well under a second); the bounds asserted are liveness bounds
(generous), never performance measurements.
"""

from __future__ import annotations

import json
import logging
import math
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from kavach.core import Kavach
from kavach.http import KavachHTTPServer, make_server

SESSION = "/api/kavach/auth/session"
SIGN_IN = "/api/kavach/auth/sign-in/email"
#: Liveness bound: a connection the server should end within ~1 s must end within this.
BOUND = 8.0


@pytest.fixture
def start(kavach: Kavach) -> Iterator[Callable[..., KavachHTTPServer]]:
    """``start(**make_server_options)``: a running server, stopped after the test."""
    started: list[tuple[KavachHTTPServer, threading.Thread]] = []

    def start_server(**options: Any) -> KavachHTTPServer:
        options.setdefault("timeout", 5.0)
        srv = make_server(kavach, "127.0.0.1", 0, **options)
        thread = threading.Thread(target=srv.serve_forever, args=(0.02,), daemon=True)
        thread.start()
        started.append((srv, thread))
        return srv

    yield start_server
    for srv, thread in started:
        srv.shutdown()
        srv.server_close()
        thread.join(5)


@pytest.fixture
def info_logging() -> Iterator[list[logging.LogRecord]]:
    """INFO logging on ``kavach.http``, as ``kavach serve`` turns it on: the records."""
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    http_logger = logging.getLogger("kavach.http")
    handler = Collect(logging.INFO)
    previous = http_logger.level
    http_logger.addHandler(handler)
    http_logger.setLevel(logging.INFO)
    try:
        yield records
    finally:
        http_logger.removeHandler(handler)
        http_logger.setLevel(previous)


def connect(srv: KavachHTTPServer, timeout: float = BOUND) -> socket.socket:
    return socket.create_connection(srv.server_address[:2], timeout=timeout)


def read_until_closed(sock: socket.socket) -> bytes:
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


def statuses(answer: bytes) -> list[int]:
    lines = answer.split(b"\r\n")
    return [int(line.split(b" ", 2)[1]) for line in lines if line.startswith(b"HTTP/1.1 ")]


def body_of(answer: bytes) -> Any:
    return json.loads(answer.partition(b"\r\n\r\n")[2])


def log_lines(records: list[logging.LogRecord]) -> list[str]:
    # Handler threads log before writing, so every answered request has its line by now.
    return [r.getMessage() for r in records if r.name == "kavach.http"]


# -- defect 1: malformed request lines with INFO logging on ------------------------------------


@pytest.mark.parametrize(
    ("line", "status", "code"),
    [
        (b"GET / HTTP/2.0", 505, "http_version_not_supported"),
        (b"GET / HTTP/3.0", 505, "http_version_not_supported"),
        (b"BLAH", 400, "bad_request"),
        (b"GET / http/1.1", 400, "bad_request"),
        (b"GET / HTTP/1.1 extra", 400, "bad_request"),
        (b"POST /x", 400, "bad_request"),  # HTTP/0.9 allows GET only
    ],
)
def test_malformed_request_line_is_answered_with_info_logging_on(
    start: Callable[..., KavachHTTPServer],
    info_logging: list[logging.LogRecord],
    line: bytes,
    status: int,
    code: str,
) -> None:
    srv = start()
    with connect(srv) as sock:
        sock.sendall(line + b"\r\n\r\n")
        answer = read_until_closed(sock)
    assert statuses(answer) == [status]
    assert b"Connection: close" in answer
    assert body_of(answer)["error"] == code
    lines = log_lines(info_logging)
    assert len(lines) == 1
    assert lines[0].split(" ")[2] == str(status)


def test_malformed_request_line_after_a_good_one_on_keep_alive(
    start: Callable[..., KavachHTTPServer], info_logging: list[logging.LogRecord]
) -> None:
    srv = start()
    with connect(srv) as sock:
        sock.sendall(f"GET {SESSION}?q=1 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        first = b""
        while b"\r\n\r\n" not in first or not first.endswith(b"}"):
            first += sock.recv(65536)
        assert statuses(first) == [401]
        assert b"Connection: close" not in first  # still keep-alive
        sock.sendall(b"GET / HTTP/2.0\r\n\r\n")
        second = read_until_closed(sock)
    assert statuses(second) == [505]
    lines = log_lines(info_logging)
    assert len(lines) == 2
    assert lines[0].split(" ")[:3] == ["GET", SESSION, "401"]
    # The second line must not repeat the first request's method or path.
    assert lines[1].split(" ")[:3] == ["-", "-", "505"]


def test_a_good_request_after_a_bad_line_on_a_new_connection_is_served(
    start: Callable[..., KavachHTTPServer], info_logging: list[logging.LogRecord]
) -> None:
    srv = start()
    with connect(srv) as sock:
        sock.sendall(b"BLAH\r\n\r\n")
        assert statuses(read_until_closed(sock)) == [400]
    with connect(srv) as sock:
        sock.sendall(f"GET {SESSION} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        assert statuses(read_until_closed(sock)) == [401]


# -- defect 2: slow-loris -----------------------------------------------------------------------


def trickle(sock: socket.socket, data: bytes, every: float) -> tuple[bytes, float]:
    """Send ``data`` one byte every ``every`` seconds (then keep sending spaces) until the
    server answers and closes, or BOUND passes: (the answer, seconds until closed)."""
    started = time.monotonic()
    answer = b""
    payload = iter(data)
    sock.settimeout(every)
    while time.monotonic() - started < BOUND:
        try:
            sock.sendall(bytes([next(payload, 0x20)]))
        except OSError:  # the server closed its end; read what it sent
            sock.settimeout(BOUND)
            return answer + read_until_closed(sock), time.monotonic() - started
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            break
        if not chunk:
            break
        answer += chunk
    return answer, time.monotonic() - started


SLOW = {
    "request_line": b"GET /" + b"a" * 200 + b" HTTP/1.1\r\n",
    "headers": f"GET {SESSION} HTTP/1.1\r\nHost: x\r\nX-Slow: ".encode() + b"y" * 200,
    "body": f"POST {SIGN_IN} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n".encode(),
}


@pytest.mark.parametrize("where", sorted(SLOW))
def test_a_trickling_client_gets_408_once_the_request_deadline_passes(
    start: Callable[..., KavachHTTPServer], where: str
) -> None:
    # Each byte arrives well within the socket timeout; only the overall deadline ends it.
    srv = start(timeout=0.5, request_deadline=1.0)
    with connect(srv) as sock:
        data = SLOW[where]
        if where == "body":
            sock.sendall(data)  # the head at once, then the body byte by byte
            data = b"{"
        answer, elapsed = trickle(sock, data, every=0.1)
    assert elapsed < BOUND, "the server kept a trickling connection open"
    assert statuses(answer) == [408]
    assert b"Connection: close" in answer
    assert body_of(answer)["error"] == "request_timeout"


def test_by_default_the_deadline_is_the_socket_timeout(
    start: Callable[..., KavachHTTPServer],
) -> None:
    # The audit's repro: a body trickled just inside the socket timeout held the thread.
    srv = start(timeout=0.5)
    with connect(srv) as sock:
        sock.sendall(SLOW["body"])
        answer, elapsed = trickle(sock, b"{", every=0.1)
    assert elapsed < BOUND, "the server kept a trickling connection open"
    assert statuses(answer) == [408]


def test_a_client_stalling_mid_request_gets_408_after_the_socket_timeout(
    start: Callable[..., KavachHTTPServer],
) -> None:
    srv = start(timeout=0.3, request_deadline=math.inf)
    with connect(srv) as sock:
        sock.sendall(
            f"POST {SIGN_IN} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{{".encode()
        )
        started = time.monotonic()
        answer = read_until_closed(sock)
    assert time.monotonic() - started < BOUND
    assert statuses(answer) == [408]


def test_the_deadline_is_logged_as_408(
    start: Callable[..., KavachHTTPServer], info_logging: list[logging.LogRecord]
) -> None:
    srv = start(timeout=0.5, request_deadline=0.5)
    with connect(srv) as sock:
        sock.sendall(f"POST {SIGN_IN} HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n".encode())
        answer, _ = trickle(sock, b"{", every=0.1)
    assert statuses(answer) == [408]
    assert [line.split(" ")[:3] for line in log_lines(info_logging)] == [["POST", SIGN_IN, "408"]]


def test_idle_time_between_keep_alive_requests_does_not_count_against_the_deadline(
    start: Callable[..., KavachHTTPServer],
) -> None:
    srv = start(timeout=2.0, request_deadline=0.3)
    with connect(srv) as sock:
        request = f"GET {SESSION} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        for _ in range(2):
            sock.sendall(request)
            answer = b""
            while not answer.endswith(b"}"):
                answer += sock.recv(65536)
            assert statuses(answer) == [401]
            time.sleep(0.6)  # idle for longer than the deadline, less than the timeout


def test_idle_connection_still_closes_silently_after_the_socket_timeout(
    start: Callable[..., KavachHTTPServer],
) -> None:
    srv = start(timeout=0.3, request_deadline=0.2)
    with connect(srv) as sock:
        started = time.monotonic()
        assert read_until_closed(sock) == b""
        assert time.monotonic() - started < BOUND


def test_requests_within_the_deadline_are_served(start: Callable[..., KavachHTTPServer]) -> None:
    srv = start(timeout=1.0, request_deadline=1.0)
    body = b'{"email": "a@b.io", "password": "12345678"}'
    with connect(srv) as sock:
        sock.sendall(
            f"POST {SIGN_IN} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body
        )
        assert statuses(read_until_closed(sock)) == [401]


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, 30.0),  # the default socket timeout
        ({"timeout": 5.0}, 5.0),
        ({"timeout": 5.0, "request_deadline": 2.0}, 2.0),
        ({"timeout": 5.0, "request_deadline": math.inf}, None),
        ({"timeout": None}, None),
        ({"timeout": None, "request_deadline": 60.0}, 60.0),
    ],
)
def test_request_deadline_defaults_to_the_timeout_and_can_be_turned_off(
    kavach: Kavach, options: dict[str, Any], expected: float | None
) -> None:
    srv = make_server(kavach, "127.0.0.1", 0, **options)
    try:
        assert srv.request_deadline == expected
    finally:
        srv.server_close()


@pytest.mark.parametrize("bad", [0, -1.0, math.nan])
def test_request_deadline_must_be_positive(kavach: Kavach, bad: float) -> None:
    with pytest.raises(ValueError, match="request_deadline"):
        make_server(kavach, "127.0.0.1", 0, request_deadline=bad)


# -- the connection cap ---------------------------------------------------------------------------


def test_connections_over_the_cap_get_503_and_a_freed_slot_is_reused(
    start: Callable[..., KavachHTTPServer],
) -> None:
    srv = start(timeout=5.0, max_connections=2)
    held = [connect(srv), connect(srv)]
    try:
        for sock in held:  # prove both are being handled (each holds a handler thread)
            sock.sendall(f"GET {SESSION} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            answer = b""
            while not answer.endswith(b"}"):
                answer += sock.recv(65536)
            assert statuses(answer) == [401]
        with connect(srv) as extra:
            answer = read_until_closed(extra)
        assert statuses(answer) == [503]
        assert b"Connection: close" in answer
        assert body_of(answer)["error"] == "too_many_connections"
    finally:
        held.pop().close()
    try:
        deadline = time.monotonic() + BOUND
        while True:  # the freed slot comes back once its handler thread sees the close
            with connect(srv) as sock:
                sock.sendall(
                    f"GET {SESSION} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
                )
                found = statuses(read_until_closed(sock))
            if found == [401] or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert found == [401]
    finally:
        for sock in held:
            sock.close()


def test_max_connections_defaults_and_can_be_disabled(kavach: Kavach) -> None:
    from kavach.http.server import DEFAULT_MAX_CONNECTIONS

    for options, expected in (({}, DEFAULT_MAX_CONNECTIONS), ({"max_connections": None}, None)):
        srv = make_server(kavach, "127.0.0.1", 0, **options)
        try:
            assert srv.max_connections == expected
        finally:
            srv.server_close()
    with pytest.raises(ValueError, match="max_connections"):
        make_server(kavach, "127.0.0.1", 0, max_connections=0)
