"""The CLI's three former known limits, against real local sockets: ``--timeout`` is a
deadline for a whole exchange (a trickled answer cannot hold ``polar trigger`` / ``polar
doctor`` past it), an answer that is not HTTP is called so, and a failed write to standard
output (a full disk) is one line on stderr with exit status 74."""

from __future__ import annotations

import contextlib
import errno
import io
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import kavach as kavach_package
from kavach.cli import main
from tests.test_cli_polar import SECRET, TOKEN, Run, kavach

#: Where the kavach under test lives (the subprocess runs the same one).
KAVACH_ROOT = Path(kavach_package.__file__).resolve().parents[1]
TIMEOUT = 0.5
#: How long a trickling server keeps at it: long enough that the old code, which bounded
#: each read only, overran ``TIMEOUT`` several times over; short enough to end its test.
TRICKLE_BUDGET = 3.0
WEBHOOK_SECRET = "p" * 40  # a plain secret: one key, so doctor sends one event

Behaviour = Callable[[socket.socket], None]


class RawServer:
    """A TCP server on a free loopback port running ``behaviour(connection)`` for each
    connection on a daemon thread: it writes whatever bytes it likes, HTTP or not."""

    def __init__(self, behaviour: Behaviour) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.origin = f"http://127.0.0.1:{self.port}"
        self._behaviour = behaviour
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:  # closed
                return
            threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _serve(self, connection: socket.socket) -> None:
        with connection, contextlib.suppress(OSError):  # OSError: the client hung up
            self._behaviour(connection)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept (Linux)
        self._listener.close()
        self._thread.join(5)


Serve = Callable[[Behaviour], RawServer]


@pytest.fixture
def serve(request: pytest.FixtureRequest) -> Serve:
    def start(behaviour: Behaviour) -> RawServer:
        server = RawServer(behaviour)
        request.addfinalizer(server.close)
        return server

    return start


def drain(connection: socket.socket) -> None:
    """Read the request until the client pauses (so closing sends no reset)."""
    connection.settimeout(0.2)
    try:
        while connection.recv(65536):
            pass
    except TimeoutError:
        pass
    connection.settimeout(None)


def trickle(head: bytes, drip: bytes, *, first: bytes = b"") -> Behaviour:
    """Send ``first`` at once (before reading the request), then, after it, ``head``,
    then ``drip`` a byte every 50 ms, each byte well within ``TIMEOUT``, for
    ``TRICKLE_BUDGET`` seconds at most."""

    def behaviour(connection: socket.socket) -> None:
        if first:
            connection.sendall(first)
        connection.recv(65536)
        connection.sendall(head)
        stop = time.monotonic() + TRICKLE_BUDGET
        for byte in drip:
            if time.monotonic() > stop:
                return
            connection.sendall(bytes([byte]))
            time.sleep(0.05)

    return behaviour


HEADERS_TRICKLE = trickle(b"HTTP/1.1 200 OK\r\n", b"X-Slow: " + b"a" * 10_000)
BODY_TRICKLE = trickle(b"HTTP/1.1 200 OK\r\nContent-Length: 10000\r\n\r\n",
                       b'{"items":' + b" " * 10_000)


def trigger(url: str, *flags: str) -> Run:
    return kavach("polar", "trigger", "order.paid", "--to", url, "--secret", SECRET,
                  "--timeout", str(TIMEOUT), *flags)


def timed(run: Callable[[], Run]) -> tuple[Run, float]:
    start = time.monotonic()
    result = run()
    return result, time.monotonic() - start


def no_secrets(run: Run) -> None:
    assert TOKEN not in run.out and SECRET not in run.out and WEBHOOK_SECRET not in run.out


# -- --timeout bounds the whole exchange ---------------------------------------------------


def test_trigger_gives_up_on_headers_trickled_past_the_timeout(serve: Serve) -> None:
    server = serve(HEADERS_TRICKLE)
    run, took = timed(lambda: trigger(server.origin + "/webhook"))
    assert took < 3 * TIMEOUT, f"held {took:.1f} s with --timeout {TIMEOUT}"
    assert run.status == 1
    assert f"no answer within {TIMEOUT:g} s" in run.out


def test_trigger_gives_up_on_a_body_trickled_past_the_timeout(serve: Serve) -> None:
    server = serve(BODY_TRICKLE)
    run, took = timed(lambda: trigger(server.origin + "/webhook"))
    assert took < 3 * TIMEOUT, f"held {took:.1f} s with --timeout {TIMEOUT}"
    assert run.status == 1
    assert f"no complete answer within {TIMEOUT:g} s" in run.out


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key (made by the openssl tool)."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=30,
    )
    return cert, key


def test_trigger_gives_up_on_https_headers_trickled_past_the_timeout(
    serve: Serve, tls_files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Over TLS each read is bounded by the socket timeout too, and no more than that.
    cert, key = tls_files
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)

    def behaviour(connection: socket.socket) -> None:
        with context.wrap_socket(connection, server_side=True) as tls:
            HEADERS_TRICKLE(tls)

    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))  # trigger trusts this certificate
    server = serve(behaviour)
    run, took = timed(lambda: trigger(f"https://127.0.0.1:{server.port}/webhook"))
    assert took < 3 * TIMEOUT, f"held {took:.1f} s with --timeout {TIMEOUT}"
    assert run.status == 1
    assert f"no answer within {TIMEOUT:g} s" in run.out


@pytest.mark.parametrize(
    ("behaviour", "words"),
    [(HEADERS_TRICKLE, "no answer within"), (BODY_TRICKLE, "no complete answer within")],
    ids=["headers", "body"],
)
def test_doctor_token_check_gives_up_on_an_answer_trickled_past_the_timeout(
    serve: Serve, behaviour: Behaviour, words: str
) -> None:
    server = serve(behaviour)
    run, took = timed(lambda: kavach("polar", "doctor", "--timeout", str(TIMEOUT),
                                     env={"POLAR_ACCESS_TOKEN": TOKEN,
                                          "POLAR_API_URL": server.origin}))
    assert took < 3 * TIMEOUT, f"held {took:.1f} s with --timeout {TIMEOUT}"
    level, message = run.check("token valid")
    assert level == "FAIL" and message == f"{server.origin}: {words} {TIMEOUT:g} s"
    no_secrets(run)


def test_doctor_webhook_check_gives_up_on_an_answer_trickled_past_the_timeout(
    serve: Serve,
) -> None:
    server = serve(HEADERS_TRICKLE)
    run, took = timed(lambda: kavach("polar", "doctor", "--timeout", str(TIMEOUT),
                                     "--webhook-url", server.origin + "/webhook",
                                     env={"POLAR_WEBHOOK_SECRET": WEBHOOK_SECRET}))
    assert took < 3 * TIMEOUT, f"held {took:.1f} s with --timeout {TIMEOUT}"
    level, message = run.check("webhook legacy")
    assert level == "FAIL" and message.startswith(f"no answer within {TIMEOUT:g} s: Polar")
    no_secrets(run)


def test_trigger_reads_a_slow_answer_that_ends_within_the_timeout(serve: Serve) -> None:
    # 10 bytes of body, 50 ms apart: 0.5 s in all, well within --timeout 3.
    server = serve(trickle(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", b"0123456789"))
    run = kavach("polar", "trigger", "order.paid", "--to", server.origin + "/webhook",
                 "--secret", SECRET, "--timeout", "3")
    assert run.status == 0, run.out
    assert run.out.splitlines()[-1] == "0123456789"


# -- an answer that is not HTTP ----------------------------------------------------------


def banner_then_close(banner: bytes, *, before_request: bool = False) -> Behaviour:
    def behaviour(connection: socket.socket) -> None:
        if before_request:
            connection.sendall(banner)
        drain(connection)
        if not before_request:
            connection.sendall(banner)

    return behaviour


@pytest.mark.parametrize(
    ("behaviour", "words"),
    [
        (banner_then_close(b"SSH-2.0-OpenSSH_9.6\r\n", before_request=True),
         "did not answer HTTP (it sent 'SSH-2.0-OpenSSH_9.6')"),
        (banner_then_close(b"220 mail.example.com ESMTP\r\n", before_request=True),
         "did not answer HTTP (it sent '220 mail.example.com ESMTP')"),
        (banner_then_close(bytes(range(1, 256))),
         "did not answer HTTP (it sent '\\x01\\x02\\x03"),
        (banner_then_close(b""), "closed the connection without answering"),
    ],
    ids=["ssh", "smtp", "random-bytes", "nothing"],
)
def test_trigger_says_when_the_server_does_not_answer_http(
    serve: Serve, behaviour: Behaviour, words: str
) -> None:
    server = serve(behaviour)
    url = server.origin + "/webhook"
    run = trigger(url)
    assert run.status == 1
    assert f"the server at {url} {words}" in run.out
    assert "connection failed" not in run.out
    no_secrets(run)


def test_trigger_says_when_an_https_url_does_not_answer_tls(serve: Serve) -> None:
    server = serve(banner_then_close(b"SSH-2.0-OpenSSH_9.6\r\n", before_request=True))
    url = f"https://127.0.0.1:{server.port}/webhook"
    run = trigger(url)
    assert run.status == 1
    assert f"the TLS handshake with {url} failed (wrong version number)" in run.out


def test_trigger_says_when_the_certificate_is_not_trusted(
    serve: Serve, tls_files: tuple[Path, Path]
) -> None:
    cert, key = tls_files
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)

    def behaviour(connection: socket.socket) -> None:
        with contextlib.suppress(ssl.SSLError), context.wrap_socket(connection, server_side=True):
            pass

    server = serve(behaviour)
    url = f"https://127.0.0.1:{server.port}/webhook"
    run = trigger(url)
    assert run.status == 1
    assert f"the server at {url} has a certificate that is not trusted (" in run.out


def test_doctor_token_check_says_the_api_did_not_answer_http(serve: Serve) -> None:
    server = serve(banner_then_close(b"SSH-2.0-OpenSSH_9.6\r\n", before_request=True))
    run = kavach("polar", "doctor", env={"POLAR_ACCESS_TOKEN": TOKEN,
                                         "POLAR_API_URL": server.origin})
    level, message = run.check("token valid")
    assert level == "FAIL"
    assert message == (f"the server at {server.origin} did not answer HTTP "
                       "(it sent 'SSH-2.0-OpenSSH_9.6')")
    no_secrets(run)


def test_doctor_never_shows_the_token_a_non_http_server_echoes(serve: Serve) -> None:
    def echo_token(connection: socket.socket) -> None:
        request = connection.recv(65536)
        token = request.split(b"Bearer ", 1)[1].split(b"\r\n", 1)[0]
        connection.sendall(b"ECHO " + token + b"\r\n")
        drain(connection)

    server = serve(echo_token)
    run = kavach("polar", "doctor", env={"POLAR_ACCESS_TOKEN": TOKEN,
                                         "POLAR_API_URL": server.origin})
    level, message = run.check("token valid")
    assert level == "FAIL" and message.endswith("did not answer HTTP (it sent 'ECHO …')")
    no_secrets(run)


def test_doctor_webhook_check_says_the_receiver_did_not_answer_http(serve: Serve) -> None:
    server = serve(banner_then_close(b"\x00\xffgarbage\r\n"))
    url = server.origin + "/webhook"
    run = kavach("polar", "doctor", "--webhook-url", url,
                 env={"POLAR_WEBHOOK_SECRET": WEBHOOK_SECRET})
    level, message = run.check("webhook legacy")
    assert level == "FAIL"
    assert message == f"the server at {url} did not answer HTTP (it sent '\\x00ÿgarbage')"
    no_secrets(run)


def test_trigger_reports_an_answer_that_breaks_off(serve: Serve) -> None:
    # A body shorter than its Content-Length, then the end: it raised out of trigger.
    def behaviour(connection: socket.socket) -> None:
        drain(connection)
        connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")

    server = serve(behaviour)
    url = server.origin + "/webhook"
    run = trigger(url)
    assert run.status == 1
    assert f"the answer from {url} broke off (ProtocolError)" in run.out


# -- writing standard output fails ---------------------------------------------------------


class FailingOutput(io.StringIO):
    def __init__(self, code: int) -> None:
        super().__init__()
        self.code = code

    def write(self, text: str) -> int:
        raise OSError(self.code, os.strerror(self.code))


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO])
def test_main_reports_a_failed_write_to_stdout_in_one_line_with_status_74(
    capsys: pytest.CaptureFixture[str], code: int
) -> None:
    status = main(["polar", "doctor"], environ={}, stdout=FailingOutput(code))
    assert status == 74
    err = capsys.readouterr().err
    assert err == f"kavach: error: cannot write standard output: {os.strerror(code)}\n"


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_kavach_writing_to_a_full_device_exits_74_without_a_traceback() -> None:
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [sys.executable, "-m", "kavach", "polar", "doctor"],
            cwd=KAVACH_ROOT,
            env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(KAVACH_ROOT)},
            stdout=full, stderr=subprocess.PIPE, text=True, timeout=30, check=False,
        )
    assert done.returncode == 74
    assert done.stderr == "kavach: error: cannot write standard output: No space left on device\n"


def test_an_oserror_elsewhere_is_not_called_an_output_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Only a failed write to standard output is exit 74; another OSError is not hidden
    # behind that message.
    import kavach.cli_polar

    def broken(*_args: object) -> int:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(kavach.cli_polar, "run_doctor", broken)  # bound at parser build
    with pytest.raises(PermissionError):
        main(["polar", "doctor"], environ={}, stdout=io.StringIO())


# -- review: kept-alive connections, urllib3 1.26, echoed tokens, huge timeouts -------------


def read_request(connection: socket.socket) -> None:
    """Read one request, its head and a body of Content-Length bytes."""
    data = b""
    while b"\r\n\r\n" not in data:
        more = connection.recv(65536)
        if not more:
            return
        data += more
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        body += connection.recv(65536)


def test_doctor_bounds_a_second_ping_on_a_kept_alive_connection(serve: Serve) -> None:
    # A whsec_ secret: two pings on the doctor's one session. The first answer keeps the
    # connection alive, and the second ping goes through it: its headers trickle.
    def behaviour(connection: socket.socket) -> None:
        read_request(connection)
        connection.sendall(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n")
        read_request(connection)
        connection.sendall(b"HTTP/1.1 202 Accepted\r\nX-Slow: ")
        stop = time.monotonic() + TRICKLE_BUDGET
        while time.monotonic() < stop:
            connection.sendall(b"a")
            time.sleep(0.05)

    server = serve(behaviour)
    secret = "whsec_" + "A" * 42 + "Q"  # a base64 tail: standard and legacy keys
    run, took = timed(lambda: kavach("polar", "doctor", "--timeout", str(TIMEOUT),
                                     "--webhook-url", server.origin + "/webhook",
                                     env={"POLAR_WEBHOOK_SECRET": secret}))
    assert took < 3 * TIMEOUT, f"held {took:.1f} s with --timeout {TIMEOUT}"
    assert run.check("webhook standard")[0] == "OK"
    assert f"no answer within {TIMEOUT:g} s" in run.check("webhook legacy")[1]


def test_a_body_shorter_than_its_length_is_an_error_whatever_urllib3(serve: Serve) -> None:
    # urllib3 1.26 (requests allows it) does not check Content-Length: read_body does.
    import requests

    from kavach.cli_http import exchange, new_session

    def behaviour(connection: socket.socket) -> None:
        read_request(connection)
        connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")

    server = serve(behaviour)
    with new_session() as session:
        def send() -> requests.Response:
            response = session.get(server.origin, stream=True, timeout=2)
            response.raw.enforce_content_length = False  # as urllib3 1.26 does
            return response

        answer = exchange(send, server.origin, timeout=2, limit=1000)
    assert answer.status_code is None
    assert answer.error == f"the answer from {server.origin} broke off (ProtocolError)"


@pytest.mark.parametrize(
    ("answer", "words"),
    [
        (b"HTTP/1.1 302 Found\r\nLocation: /login?t=TOKEN\r\n", "redirects to /login?t=…"),
        (b"HTTP/1.1 429 Slow down\r\nRetry-After: TOKEN\r\n", "(retry-after … s)"),
    ],
    ids=["location", "retry-after"],
)
def test_doctor_never_shows_the_token_an_http_server_echoes(
    serve: Serve, answer: bytes, words: str
) -> None:
    def behaviour(connection: socket.socket) -> None:
        request = connection.recv(65536)
        token = request.split(b"Bearer ", 1)[1].split(b"\r\n", 1)[0]
        connection.sendall(answer.replace(b"TOKEN", token) + b"Content-Length: 0\r\n\r\n")
        drain(connection)

    server = serve(behaviour)
    run = kavach("polar", "doctor", env={"POLAR_ACCESS_TOKEN": TOKEN,
                                         "POLAR_API_URL": server.origin})
    assert words in run.check("token valid")[1]
    no_secrets(run)


def test_a_timeout_too_long_for_a_timer_is_a_usage_error() -> None:
    # threading.Timer and socket.settimeout overflow above ~2**33 s: a traceback before.
    with pytest.raises(SystemExit) as exit_:
        trigger("http://127.0.0.1:9/webhook", "--timeout", "1e10")
    assert exit_.value.code == 2
