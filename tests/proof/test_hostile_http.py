"""Hostile HTTP: garbage over a real socket, to every route, on both adapters.

The built-in server runs as a real child process (``make_server`` with a 1.5 s socket
timeout, memory store, Polar plugin on); the WSGI app runs under wsgiref in a thread.
Requests are raw bytes (``socket``), drawn by hypothesis: random methods, targets,
versions, headers and bodies; bogus ``Content-Length`` (negative, huge, non-numeric,
mismatched, repeated); ``Transfer-Encoding: chunked``; invalid UTF-8; header floods and
over-long lines; bodies over the 1 MiB limit; a pipelined good request behind the bad
one. The client half-closes after sending, so a server waiting for more bytes sees EOF
at once; every read has a socket timeout, as a hang guard only.

Checked: no 5xx answer to bad input (505 for a request line claiming HTTP/2 or later is
what RFC 9110 prescribes, and is allowed for those alone), every answer is well-formed
HTTP, the server keeps serving a good request after each bad one, stalled clients are
disconnected after the server's timeout (built-in server; wsgiref has no timeouts), and
the server process's memory stays bounded over thousands of bad requests.
"""

from __future__ import annotations

import http.client
import json
import random
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from wsgiref.simple_server import make_server as make_wsgi_server

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kavach import PasswordHasher, create_kavach
from kavach.auth import polar
from kavach.http.wsgi import WSGIApp
from tests.http.http_support import QuietWSGIHandler, ThreadedWSGIServer
from tests.proof.conftest import BASE_PATH, SECRET, ServerProcess

SERVER_TIMEOUT = 1.5
#: Hang guard for one exchange (well above SERVER_TIMEOUT).
CLIENT_TIMEOUT = 8.0
LIMIT = 1024 * 1024
ROUTES = (
    "/auth/sign-up/email", "/auth/sign-in/email", "/auth/sign-out", "/auth/session",
    "/auth/polar/checkout", "/auth/polar/subscription", "/auth/polar/webhook", "/openapi.json",
)
#: Memory bound: growth of the server's RSS over MEMORY_REQUESTS bad requests, after warm-up.
MEMORY_REQUESTS = 3000
MEMORY_GROWTH_BOUND_KIB = 16 * 1024


@attrs.frozen
class Target:
    name: str
    port: int

    def good_request(self) -> int:
        """``GET <base>/openapi.json`` on a fresh connection: the status."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=CLIENT_TIMEOUT)
        try:
            conn.request("GET", BASE_PATH + "/openapi.json")
            response = conn.getresponse()
            response.read()
            return response.status
        finally:
            conn.close()


@pytest.fixture(scope="module")
def builtin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    directory = tmp_path_factory.mktemp("hostile-builtin")
    server = ServerProcess("memory://", directory / "server.log", timeout=SERVER_TIMEOUT)
    try:
        yield Target("builtin", server.port)
        assert server.alive(), server.log_text()[-3000:]
    finally:
        server.stop()


@pytest.fixture(scope="module")
def wsgi() -> Iterator[Target]:
    plugin = polar(access_token="polar_oat_x", webhook_secret=SECRET,
                   base_url="http://127.0.0.1:9")
    with create_kavach("memory://", plugins=[plugin],
                       password_hasher=PasswordHasher.fast()) as kavach:
        server = make_wsgi_server("127.0.0.1", 0, WSGIApp(kavach),
                                  server_class=ThreadedWSGIServer,
                                  handler_class=QuietWSGIHandler)
        thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        try:
            yield Target("wsgi", server.server_address[1])
        finally:
            server.shutdown()
            server.server_close()
            thread.join(5)


@pytest.fixture(params=["builtin", "wsgi"])
def target(request: pytest.FixtureRequest) -> Target:
    found: Target = request.getfixturevalue(request.param)
    return found


# -- raw exchanges ------------------------------------------------------------------------


def exchange(port: int, payload: bytes, *, timeout: float = CLIENT_TIMEOUT) -> bytes:
    """Send ``payload``, half-close, read until the server closes. Raises on a hang."""
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server may answer and close before taking everything (413, 431...)
        while True:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, BrokenPipeError):
                break
            except TimeoutError:
                raise AssertionError(f"server did not close within {timeout} s") from None
            if not chunk:
                break
            chunks.append(chunk)
            if time.monotonic() > deadline:
                raise AssertionError(f"server still sending after {timeout} s")
    return b"".join(chunks)


_STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3})[^\r\n]*\r\n")
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)


def statuses(data: bytes, methods: list[str], *, first_only: bool) -> list[int]:
    """The final status codes of the responses in ``data`` (1xx skipped). Raises when
    the bytes are not well-formed HTTP/1.x responses."""
    found: list[int] = []
    pos = 0
    while pos < len(data):
        match = _STATUS_LINE.match(data, pos)
        assert match, f"not an HTTP response at byte {pos}: {data[pos:pos + 120]!r}"
        end = data.find(b"\r\n\r\n", pos)
        assert end >= 0, f"truncated response head: {data[pos:pos + 200]!r}"
        status = int(match.group(1))
        head = data[pos:end]
        pos = end + 4
        if 100 <= status < 200:
            continue
        method = methods[len(found)] if len(found) < len(methods) else "GET"
        length = _CONTENT_LENGTH.search(head)
        if status not in (204, 304) and length:
            # A HEAD answer has no body, unless the request line was refused before its
            # method was read (then the server could not know it was HEAD).
            bodiless = method == "HEAD" and (pos == len(data) or _STATUS_LINE.match(data, pos))
            if not bodiless:
                pos += int(length.group(1))
        found.append(status)
        if first_only:
            break
    return found


# -- hostile request strategy -----------------------------------------------------------------

TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
methods = st.sampled_from(
    ["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "TRACE", "CONNECT", "PRI",
     "get", "post"]
) | st.text(TOKEN_CHARS, min_size=1, max_size=10)
targets = st.one_of(
    st.sampled_from([BASE_PATH + r for r in ROUTES]),
    st.sampled_from(["/", "*", BASE_PATH, BASE_PATH + "/", BASE_PATH + "/auth/../auth/session",
                     "http://127.0.0.1" + BASE_PATH + "/auth/session", "/%ff%fe%00%",
                     BASE_PATH + "/auth/session?" + "a" * 3000, BASE_PATH + "/auth/%73ession",
                     "//" + BASE_PATH, "/" + "x" * 70_000]),
    st.text(st.characters(min_codepoint=33, max_codepoint=0x2FF), max_size=40).map(
        lambda t: "/" + t),
)
versions = st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/0.9", "HTTP/1.2", "HTTP/2.0",
                            "HTTP/3", "HTTP/1", "http/1.1", "HTTP/1.1 x", "HTTP/x.y", ""])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                 max_size=4),
    max_leaves=10,
)
bodies = st.one_of(
    st.just(b""),
    st.binary(max_size=600),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"email": st.text(max_size=30), "password": st.text(max_size=30)},
                          optional={"name": json_values, "productId": json_values,
                                    "successUrl": st.text(max_size=40)}).map(
        lambda v: json.dumps(v, ensure_ascii=False).encode("utf-8", "surrogatepass")),
    st.sampled_from([b"\xff\xfe\xfd", b'{"email": "\xc3\x28@x.io", "password": "\xa0\xa1"}',
                     b"5\r\nhello\r\n0\r\n\r\n", b"zz\r\nnope\r\n", b"{" * 5000,
                     b"[" * 100_000, b'{"a": 1e999999}', b"x" * (LIMIT + 1)]),
)
header_values = st.one_of(
    st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=60).map(
        lambda t: t.encode("latin-1")),
    st.binary(max_size=60).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
    st.just(b"x" * 70_000),
)
header_names = st.sampled_from(
    [b"Content-Type", b"Authorization", b"Cookie", b"Origin", b"Referer", b"Host",
     b"webhook-id", b"webhook-timestamp", b"webhook-signature", b"Expect", b"Connection",
     b"Transfer-Encoding", b"Content-Length", b"X-Forwarded-For", b"Accept-Encoding"]
) | st.text(TOKEN_CHARS, min_size=1, max_size=20).map(str.encode) | st.binary(
    min_size=1, max_size=20).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))


def content_lengths(size: int) -> st.SearchStrategy[bytes]:
    return st.sampled_from([
        str(size), str(size + 1), str(size + 1000), str(max(size - 1, 0)), "0", "-1", "-0",
        "+5", f" {size}", f"{size} ", "0x10", "1e3", "abc", "", "99999999999999999999999",
        str(LIMIT + 1), f"{size}, {size}", "\uff11\uff12",
    ]).map(lambda text: text.encode("utf-8"))


@attrs.frozen
class RawRequest:
    payload: bytes
    methods: list[str]
    version: str


@st.composite
def hostile_requests(draw: st.DrawFn) -> RawRequest:
    method = draw(methods)
    target = draw(targets)
    version = draw(versions)
    line = f"{method} {target} {version}".rstrip().encode("latin-1", "replace")
    if draw(st.integers(0, 19)) == 0:
        line = draw(st.binary(max_size=80)).replace(b"\n", b"")
    body = draw(bodies)
    headers: list[tuple[bytes, bytes]] = [(b"Host", b"127.0.0.1")]
    if draw(st.booleans()):
        headers.append((b"Content-Length", draw(content_lengths(len(body)))))
    if draw(st.integers(0, 3)) == 0:
        headers.append((b"Content-Length", draw(content_lengths(len(body)))))
    if draw(st.integers(0, 4)) == 0:
        headers.append((b"Transfer-Encoding",
                        draw(st.sampled_from([b"chunked", b"gzip, chunked", b"identity",
                                              b"chunked, chunked", b"\xffchunked"]))))
    if draw(st.integers(0, 5)) == 0:
        headers.append((b"Expect", b"100-continue"))
    headers += draw(st.lists(st.tuples(header_names, header_values), max_size=6))
    if draw(st.integers(0, 15)) == 0:  # a header flood
        count = draw(st.integers(50, 300))
        headers += [(f"X-Flood-{i}".encode(), b"y" * 50) for i in range(count)]
    eol = draw(st.sampled_from([b"\r\n"] * 6 + [b"\n"]))
    head = line + eol + b"".join(name + b": " + value + eol for name, value in headers) + eol
    sent_methods = [method.upper() if method.upper() == "HEAD" else method]
    payload = head + body
    if draw(st.booleans()):  # a good request pipelined behind the bad one
        payload += f"GET {BASE_PATH}/openapi.json HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        sent_methods.append("GET")
    return RawRequest(payload, sent_methods, version)


def allowed(status: int, request: RawRequest) -> bool:
    """Any non-5xx status; 505 only for a request line claiming a version >= 2."""
    if status < 500:
        return True
    major = re.match(r"HTTP/(\d+)\.", request.version)
    return status == 505 and major is not None and int(major.group(1)) >= 2


@settings(max_examples=1000, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large, HealthCheck.large_base_example])
@given(request=hostile_requests())
def test_bad_requests_get_no_5xx_and_the_server_keeps_serving(
    target: Target, request: RawRequest
) -> None:
    data = exchange(target.port, request.payload)
    if target.name == "wsgi" and not data.startswith(b"HTTP/"):
        # wsgiref itself answered a request line it could not parse (or an HTTP/0.9 one)
        # with a bare body: no status line, and kavach's app never saw the request.
        data = b""
    found = statuses(data, request.methods, first_only=target.name == "wsgi")
    assert all(allowed(status, request) for status in found), (found, request.payload[:300])
    assert target.good_request() == 200


# -- slow clients (built-in server: wsgiref has no timeouts) -------------------------------------

STALLS = {
    "request_line": b"POST /api/kav",
    "headers": b"POST /api/kavach/auth/sign-in/email HTTP/1.1\r\nHost: x\r\nContent-Ty",
    "body": (b"POST /api/kavach/auth/sign-in/email HTTP/1.1\r\nHost: x\r\n"
             b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"email\": "),
    "webhook_body": (b"POST /api/kavach/auth/polar/webhook HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Length: 5000\r\n\r\n" + b"{" * 100),
}


def _trickle_then_stall(port: int, payload: bytes) -> tuple[float, bytes]:
    """Send ``payload`` a few bytes at a time, then nothing: how long until the server
    closed the connection, and what it sent."""
    with socket.create_connection(("127.0.0.1", port), timeout=SERVER_TIMEOUT + 6) as sock:
        for i in range(0, len(payload), max(1, len(payload) // 4)):
            sock.sendall(payload[i : i + max(1, len(payload) // 4)])
            time.sleep(0.05)
        started = time.monotonic()
        received = b""
        try:
            while chunk := sock.recv(4096):
                received += chunk
        except TimeoutError:
            raise AssertionError("the server kept a stalled connection open") from None
        except ConnectionResetError:
            pass
        return time.monotonic() - started, received


@pytest.mark.parametrize("where", sorted(STALLS))
def test_stalled_client_is_disconnected_after_the_timeout(builtin: Target, where: str) -> None:
    _, received = _trickle_then_stall(builtin.port, STALLS[where])
    found = statuses(received, ["POST"], first_only=True)
    assert all(status < 500 for status in found)
    assert builtin.good_request() == 200


def test_stalled_clients_do_not_block_good_requests(builtin: Target) -> None:
    stalled = []
    try:
        for _ in range(40):
            sock = socket.create_connection(("127.0.0.1", builtin.port), timeout=5)
            sock.sendall(STALLS["body"])
            stalled.append(sock)
        assert [builtin.good_request() for _ in range(20)] == [200] * 20
    finally:
        for sock in stalled:
            sock.close()


# -- memory --------------------------------------------------------------------------------------


def _bad_request_mix(rng: random.Random) -> Callable[[], bytes]:
    base = BASE_PATH

    def one() -> bytes:
        kind = rng.randrange(9)
        route = base + rng.choice(ROUTES)
        if kind == 0:
            return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400)))
        if kind == 1:
            length = rng.choice(["-1", "abc", "99999999999999999999", "0x10", "1e3"])
            return f"POST {route} HTTP/1.1\r\nContent-Length: {length}\r\n\r\n{{}}".encode()
        if kind == 2:
            flood = "".join(f"X-H{i}: {'v' * 40}\r\n" for i in range(rng.randrange(50, 250)))
            return f"GET {route} HTTP/1.1\r\n{flood}\r\n".encode()
        if kind == 3:
            return f"GET /{'a' * 70_000} HTTP/1.1\r\n\r\n".encode()
        if kind == 4:
            return (f"POST {route} HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                    "5\r\nhello\r\n0\r\n\r\n").encode()
        if kind == 5:
            return (f"POST {route} HTTP/1.1\r\nContent-Length: {LIMIT + 1}\r\n\r\n").encode()
        if kind == 6:
            body = b"\xff" * rng.randrange(1, 50_000)
            return f"POST {route} HTTP/1.1\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
        if kind == 7:
            body = json.dumps({"email": f"{rng.random()}@x.io", "password": "p" * 10}).encode()
            return (f"POST {base}/auth/sign-in/email HTTP/1.1\r\nContent-Length: {len(body)}"
                    "\r\n\r\n").encode() + body
        body = json.dumps({"type": "subscription.updated", "data": {"x": "y" * 5000}}).encode()
        return (f"POST {base}/auth/polar/webhook HTTP/1.1\r\nContent-Length: {len(body)}\r\n"
                f"webhook-id: {rng.random()}\r\nwebhook-timestamp: {int(time.time())}\r\n"
                "webhook-signature: v1,AAAA\r\n\r\n").encode() + body

    return one


@pytest.mark.slow
def test_server_memory_stays_bounded_under_bad_requests(tmp_path: Path) -> None:
    """RSS growth of the server process over MEMORY_REQUESTS bad requests (after 500 of
    warm-up) stays under MEMORY_GROWTH_BOUND_KIB."""
    server = ServerProcess("memory://", tmp_path / "server.log", timeout=SERVER_TIMEOUT)
    try:
        next_request = _bad_request_mix(random.Random(7))
        for _ in range(500):
            exchange(server.port, next_request())
        before = server.rss_kib()
        for _ in range(MEMORY_REQUESTS):
            exchange(server.port, next_request())
        after = server.rss_kib()
        print(f"\nserver RSS {before} KiB -> {after} KiB over {MEMORY_REQUESTS} bad requests")
        assert after - before < MEMORY_GROWTH_BOUND_KIB
        assert Target("builtin", server.port).good_request() == 200
    finally:
        server.stop()


def test_wsgi_target_is_reachable(wsgi: Target) -> None:
    """Guard for the fuzz test: the wsgiref adapter really serves kavach."""
    assert wsgi.good_request() == 200
