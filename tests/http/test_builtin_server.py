"""Transport behaviour of the built-in server: keep-alive, timeouts, framing, logging."""

from __future__ import annotations

import http.client
import logging
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import requests
from http_support import PASSWORD

from kavach.core import Kavach
from kavach.http import KavachHTTPServer, make_server


def running(server: KavachHTTPServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    return thread


@pytest.fixture
def server(kavach: Kavach) -> Iterator[KavachHTTPServer]:
    srv = make_server(kavach, "127.0.0.1", 0, timeout=5.0)
    thread = running(srv)
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(5)


def connect(server: KavachHTTPServer, timeout: float = 5.0) -> socket.socket:
    return socket.create_connection(server.server_address[:2], timeout=timeout)


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def test_port_zero_binds_a_free_port(server: KavachHTTPServer) -> None:
    host, port = server.server_address[:2]
    assert host == "127.0.0.1" and port > 0
    assert server.url == f"http://127.0.0.1:{port}"


def test_server_uses_daemon_threads_and_a_deep_listen_queue(server: KavachHTTPServer) -> None:
    assert server.daemon_threads is True
    assert server.request_queue_size == 128


def test_keep_alive_serves_many_requests_on_one_connection(server: KavachHTTPServer) -> None:
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=5)
    conn.request("GET", "/api/kavach/auth/session")
    conn.getresponse().read()
    first_socket = conn.sock
    for _ in range(20):
        conn.request("GET", "/api/kavach/auth/session")
        response = conn.getresponse()
        response.read()
        assert response.status == 401
    assert conn.sock is first_socket
    conn.close()


def test_keep_alive_responses_do_not_stall_on_delayed_ack(server: KavachHTTPServer) -> None:
    # The stock unbuffered handler takes ~44 ms per keep-alive response; 30 of them
    # would need > 1.3 s. Buffered writes with one flush answer in well under 0.5 s.
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=5)
    conn.request("GET", "/api/kavach/auth/session")
    conn.getresponse().read()
    started = time.perf_counter()
    for _ in range(30):
        conn.request("GET", "/api/kavach/auth/session")
        conn.getresponse().read()
    elapsed = time.perf_counter() - started
    conn.close()
    assert elapsed < 0.5


def test_idle_connection_is_closed_after_the_socket_timeout(kavach: Kavach) -> None:
    srv = make_server(kavach, "127.0.0.1", 0, timeout=0.2)
    thread = running(srv)
    try:
        with connect(srv) as sock:
            started = time.perf_counter()
            assert read_all(sock) == b""
            assert time.perf_counter() - started < 3
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(5)


def test_a_client_stalling_mid_body_is_dropped_after_the_timeout(kavach: Kavach) -> None:
    srv = make_server(kavach, "127.0.0.1", 0, timeout=0.2)
    thread = running(srv)
    try:
        with connect(srv) as sock:
            sock.sendall(
                b"POST /api/kavach/auth/sign-in/email HTTP/1.1\r\nHost: x\r\n"
                b"Content-Length: 100\r\n\r\n{"
            )
            answer = read_all(sock)  # a started request gets 408, then the close
            assert status_of(answer) == 408
            assert b"Connection: close" in answer
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(5)


def test_expect_continue_gets_100_then_the_answer(server: KavachHTTPServer) -> None:
    with connect(server) as sock:
        sock.sendall(
            b"POST /api/kavach/auth/sign-in/email HTTP/1.1\r\nHost: x\r\n"
            b"Content-Length: 2\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
        )
        interim = sock.recv(65536)
        assert interim.startswith(b"HTTP/1.1 100")
        sock.sendall(b"{}")
        answer = read_all(sock)
    assert status_of(answer) == 400


def test_expect_continue_with_an_oversized_body_gets_413_at_once(
    server: KavachHTTPServer,
) -> None:
    with connect(server) as sock:
        sock.sendall(
            b"POST /api/kavach/auth/sign-in/email HTTP/1.1\r\nHost: x\r\n"
            b"Content-Length: 99999999\r\nExpect: 100-continue\r\n\r\n"
        )
        answer = read_all(sock)
    assert status_of(answer) == 413
    assert b"Connection: close" in answer


def test_oversized_body_is_refused_without_reading_it(server: KavachHTTPServer) -> None:
    with connect(server) as sock:
        sock.sendall(
            b"POST /api/kavach/auth/sign-in/email HTTP/1.1\r\nHost: x\r\n"
            b"Content-Length: 2000000\r\n\r\n"
        )
        answer = read_all(sock)  # answered and closed before any body byte was sent
    assert status_of(answer) == 413


def test_chunked_bodies_get_411_and_close(server: KavachHTTPServer) -> None:
    with connect(server) as sock:
        sock.sendall(
            b"POST /api/kavach/auth/sign-in/email HTTP/1.1\r\nHost: x\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
        )
        answer = read_all(sock)
    assert status_of(answer) == 411
    assert b"Connection: close" in answer


def test_duplicate_content_length_is_400(server: KavachHTTPServer) -> None:
    with connect(server) as sock:
        sock.sendall(
            b"POST /api/kavach/auth/sign-in/email HTTP/1.1\r\nHost: x\r\n"
            b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}"
        )
        answer = read_all(sock)
    assert status_of(answer) == 400


def test_malformed_request_line_gets_a_json_400(server: KavachHTTPServer) -> None:
    with connect(server) as sock:
        sock.sendall(b"GARBAGE\r\n\r\n")
        answer = read_all(sock)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert status_of(head) == 400
    assert body.startswith(b'{"error":"bad_request"')


def test_http_1_0_request_is_answered_and_closed(server: KavachHTTPServer) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /api/kavach/auth/session HTTP/1.0\r\n\r\n")
        answer = read_all(sock)
    assert status_of(answer) == 401


def test_absolute_form_request_target_is_routed(server: KavachHTTPServer) -> None:
    with connect(server) as sock:
        sock.sendall(
            b"GET http://example.com/api/kavach/auth/session HTTP/1.1\r\nHost: example.com\r\n"
            b"Connection: close\r\n\r\n"
        )
        answer = read_all(sock)
    assert status_of(answer) == 401


def test_head_gets_headers_without_a_body(server: KavachHTTPServer) -> None:
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=5)
    conn.request("HEAD", "/api/kavach/auth/session")
    response = conn.getresponse()
    assert response.status == 405
    assert response.read() == b""
    conn.close()


def test_server_close_ends_idle_keep_alive_connections(kavach: Kavach) -> None:
    srv = make_server(kavach, "127.0.0.1", 0)
    thread = running(srv)
    conn = http.client.HTTPConnection(*srv.server_address[:2], timeout=5)
    conn.request("GET", "/api/kavach/auth/session")
    conn.getresponse().read()
    srv.shutdown()
    srv.server_close()
    thread.join(5)
    assert conn.sock is not None
    conn.sock.settimeout(5)
    assert conn.sock.recv(1) == b""  # the server closed its end
    conn.close()


def test_https_scheme_marks_the_cookie_secure(kavach: Kavach) -> None:
    srv = make_server(kavach, "127.0.0.1", 0, scheme="https")
    thread = running(srv)
    try:
        response = requests.post(
            f"http://127.0.0.1:{srv.server_port}/api/kavach/auth/sign-up/email",
            json={"email": "jane@acme.io", "password": PASSWORD},
            timeout=10,
        )
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(5)
    assert "Secure" in response.headers["Set-Cookie"]


def test_one_log_line_per_request_with_method_path_status_duration(
    server: KavachHTTPServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="kavach.http"):
        requests.get(server.url + "/api/kavach/auth/session?secret=q", timeout=10)
        time.sleep(0.05)
    lines = [r.getMessage() for r in caplog.records if r.name == "kavach.http"]
    assert len(lines) == 1
    method, path, status, duration = lines[0].split(" ")
    assert (method, path, status) == ("GET", "/api/kavach/auth/session", "401")
    assert duration.endswith("ms")


def test_log_lines_never_hold_tokens_passwords_or_query_strings(
    server: KavachHTTPServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="kavach"):
        signed_up = requests.post(
            server.url + "/api/kavach/auth/sign-up/email",
            json={"email": "jane@acme.io", "password": PASSWORD},
            timeout=10,
        )
        token = signed_up.json()["session"]["token"]
        requests.get(
            server.url + f"/api/kavach/auth/session?token={token}",
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        time.sleep(0.05)
    text = caplog.text
    assert token not in text and PASSWORD not in text and "jane@acme.io" not in text


def test_control_characters_in_paths_are_escaped_in_the_log(
    server: KavachHTTPServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="kavach.http"), connect(server) as sock:
        sock.sendall(b"GET /x\x1b[31m HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        read_all(sock)
    assert "\x1b" not in caplog.text
