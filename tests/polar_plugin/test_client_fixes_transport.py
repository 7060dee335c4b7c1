"""PolarClient / transport fixes: the access token never leaks into an exception chain,
ids cannot be dot segments, and a failure after a request may have reached Polar is
reported as such (a read timeout is a timeout; a POST is still never retried)."""

from __future__ import annotations

import http.client
import io
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from urllib3.exceptions import ProtocolError, ReadTimeoutError

from kavach.auth import polar
from kavach.errors import (
    ConfigurationError,
    InvalidInputError,
    PolarConnectionError,
    PolarTimeoutError,
)
from kavach.polar.client import PolarClient

TOKEN = "polar_oat_TOPSECRETt0kenValue0123456789abcdef"
SECRET_PART = "TOPSECRET"
WEBHOOK_SECRET = "whsec_" + "a" * 40
BASE_URL = "http://127.0.0.1:9"  # never reached: the sessions below do not send


class RaisingSession(requests.Session):
    """A Session that records each call and raises what ``make`` builds, never sending."""

    def __init__(self, make: Callable[[dict[str, Any]], BaseException]) -> None:
        super().__init__()
        self.make = make
        self.calls: list[dict[str, Any]] = []

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> Any:
        call = {"method": method, "url": url, **kwargs}
        self.calls.append(call)
        raise self.make(call)


def client_with(session: requests.Session, sleeps: list[float] | None = None) -> PolarClient:
    return PolarClient(
        TOKEN,
        base_url=BASE_URL,
        session=session,
        sleep=(sleeps if sleeps is not None else []).append,
    )


def logged_exception(exc: BaseException) -> str:
    """What ``logger.exception`` writes for ``exc`` (traceback and chain included)."""
    buffer = io.StringIO()
    logger = logging.getLogger("kavach.tests.client_fixes")
    handler = logging.StreamHandler(buffer)
    logger.addHandler(handler)
    try:
        try:
            raise exc
        except type(exc):
            logger.exception("polar call failed")
    finally:
        logger.removeHandler(handler)
    return buffer.getvalue()


# --- defect 3: the access token ------------------------------------------------------

BAD_TOKENS = [
    pytest.param(f"polar_oat_{SECRET_PART}123\nX", id="inner-lf"),
    pytest.param(f"polar_oat_{SECRET_PART}123\r\nX", id="inner-crlf"),
    pytest.param(f"polar_oat_{SECRET_PART}123\rX", id="inner-cr"),
    pytest.param(f"polar_oat_{SECRET_PART}123\tX", id="inner-tab"),
    pytest.param(f"polar_oat_{SECRET_PART}123\x00X", id="inner-nul"),
    pytest.param(f"polar_oat_{SECRET_PART} 123", id="inner-space"),
    pytest.param(f"polar_oat_{SECRET_PART}\u2019", id="typographic-quote"),
    pytest.param(f"polar_oat_{SECRET_PART}é", id="latin-1"),
    pytest.param(f"polar_oat_{SECRET_PART}\u00a0", id="nbsp"),
]


@pytest.mark.parametrize("token", BAD_TOKENS)
def test_plugin_refuses_a_token_that_is_not_visible_ascii(token: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        polar(access_token=token, webhook_secret=WEBHOOK_SECRET, base_url=BASE_URL)
    error = caught.value
    assert error.field == "access_token"
    for text in (str(error), repr(error), logged_exception(error)):
        assert SECRET_PART not in text


@pytest.mark.parametrize("token", BAD_TOKENS)
def test_client_refuses_a_token_that_is_not_visible_ascii(token: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        PolarClient(token, base_url=BASE_URL)
    assert caught.value.field == "access_token"
    assert SECRET_PART not in str(caught.value)
    assert SECRET_PART not in repr(caught.value)


def test_a_normal_token_is_accepted() -> None:
    plugin = polar(access_token=TOKEN, webhook_secret=WEBHOOK_SECRET, base_url=BASE_URL)
    plugin.close()


@pytest.mark.parametrize(
    "exc_type",
    [
        requests.exceptions.InvalidHeader,
        requests.exceptions.InvalidURL,
        requests.exceptions.InvalidJSONError,
    ],
)
def test_a_request_error_quoting_the_headers_is_not_chained(
    exc_type: type[requests.RequestException],
) -> None:
    def make(call: dict[str, Any]) -> BaseException:
        header = call["headers"]["Authorization"]
        return exc_type(f"Invalid return character or leading space in header: {header!r}")

    session = RaisingSession(make)
    client = client_with(session)
    with pytest.raises(PolarConnectionError) as caught:
        client.get_subscription("00000000-0000-4000-8000-000000000000")
    error = caught.value
    assert len(session.calls) == 1  # not retried: it would fail the same way
    assert exc_type.__name__ in str(error)  # the kind of failure is kept, its text is not
    assert error.__cause__ is None and error.__context__ is None
    for text in (str(error), repr(error), str(error.__cause__), logged_exception(error)):
        assert SECRET_PART not in text


def test_a_network_error_keeps_its_cause() -> None:
    session = RaisingSession(lambda call: requests.exceptions.ConnectionError("reset"))
    with pytest.raises(PolarConnectionError) as caught:
        client_with(session).create_checkout({"products": ["p1"]})
    assert isinstance(caught.value.__cause__, requests.exceptions.ConnectionError)


# --- defect 4: path segments ----------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "value"),
    [
        ("get_checkout", "."),
        ("get_checkout", ".."),
        ("get_subscription", "."),
        ("get_subscription", ".."),
        ("update_subscription", ".."),
        ("revoke_subscription", "."),
        ("get_customer_by_external_id", ".."),
    ],
)
def test_dot_segments_are_refused_before_any_request(method: str, value: str) -> None:
    session = RaisingSession(lambda call: AssertionError(f"sent {call['url']}"))
    client = client_with(session)
    args: tuple[Any, ...] = (
        (value, {"cancel_at_period_end": True}) if method == "update_subscription" else (value,)
    )
    with pytest.raises(InvalidInputError):
        getattr(client, method)(*args)
    assert session.calls == []


@pytest.mark.parametrize(
    ("value", "segment"),
    [("a.b", "a.b"), ("...", "..."), ("..x", "..x"), ("./x", ".%2Fx"), ("../..", "..%2F..")],
)
def test_dots_inside_an_id_stay_in_one_segment(value: str, segment: str) -> None:
    session = RaisingSession(lambda call: requests.exceptions.ConnectTimeout("stop"))
    with pytest.raises(PolarTimeoutError):
        PolarClient(TOKEN, base_url=BASE_URL, session=session, max_retries=0).get_checkout(value)
    assert session.calls[0]["url"] == f"{BASE_URL}/v1/checkouts/{segment}"


# --- defect 5: failures after the request may have been sent ---------------------------


def read_timeout_mid_body() -> requests.exceptions.ConnectionError:
    """What ``requests`` raises when the body stalls after the headers arrived."""
    return requests.exceptions.ConnectionError(
        ReadTimeoutError(None, "/v1/checkouts/", "Read timed out.")  # type: ignore[arg-type]
    )


def reset_after_sending() -> requests.exceptions.ConnectionError:
    return requests.exceptions.ConnectionError(
        ProtocolError("Connection aborted.", http.client.RemoteDisconnected("closed"))
    )


def test_post_read_timeout_mid_body_is_a_timeout_and_not_retried() -> None:
    sleeps: list[float] = []
    session = RaisingSession(lambda call: read_timeout_mid_body())
    with pytest.raises(PolarTimeoutError) as caught:
        client_with(session, sleeps).create_checkout({"products": ["p1"]})
    assert len(session.calls) == 1 and sleeps == []
    message = str(caught.value)
    assert "may have reached Polar" in message and "not retried" in message
    assert "could not reach Polar" not in message


def test_post_read_timeout_is_a_timeout_and_not_retried() -> None:
    sleeps: list[float] = []
    session = RaisingSession(lambda call: requests.exceptions.ReadTimeout("read timed out"))
    with pytest.raises(PolarTimeoutError) as caught:
        client_with(session, sleeps).create_checkout({"products": ["p1"]})
    assert len(session.calls) == 1 and sleeps == []
    assert "may have reached Polar" in str(caught.value)


def test_post_reset_after_sending_says_it_may_have_reached_polar() -> None:
    sleeps: list[float] = []
    session = RaisingSession(lambda call: reset_after_sending())
    with pytest.raises(PolarConnectionError) as caught:
        client_with(session, sleeps).create_checkout({"products": ["p1"]})
    error = caught.value
    assert not isinstance(error, PolarTimeoutError)
    assert len(session.calls) == 1 and sleeps == []
    assert "could not reach Polar" not in str(error)
    assert "may have reached Polar" in str(error) and "not retried" in str(error)
    assert (error.method, error.path) == ("POST", "/v1/checkouts/")


@pytest.mark.parametrize("method", ["PATCH", "DELETE"])
def test_patch_and_delete_failing_after_sending_say_so(method: str) -> None:
    session = RaisingSession(lambda call: reset_after_sending())
    with pytest.raises(PolarConnectionError) as caught:
        client_with(session).request(method, "/v1/subscriptions/s1")
    assert len(session.calls) == 1
    assert "may have reached Polar" in str(caught.value)


def test_get_read_timeout_mid_body_is_retried_then_a_timeout() -> None:
    sleeps: list[float] = []
    session = RaisingSession(lambda call: read_timeout_mid_body())
    with pytest.raises(PolarTimeoutError) as caught:
        client_with(session, sleeps).get_subscription("s1")
    assert len(session.calls) == 4 and len(sleeps) == 3
    assert "not retried" not in str(caught.value)


def test_connect_timeout_still_could_not_reach_polar() -> None:
    session = RaisingSession(lambda call: requests.exceptions.ConnectTimeout("slow"))
    client = PolarClient(TOKEN, base_url=BASE_URL, session=session, max_retries=0)
    with pytest.raises(PolarTimeoutError) as caught:
        client.create_checkout({"products": ["p1"]})
    assert "could not reach Polar" in str(caught.value)


@pytest.fixture
def stalling_server() -> Iterator[tuple[str, list[bytes]]]:
    """A server that answers ``201`` headers and part of the body, then stalls."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(5)
    seen: list[bytes] = []
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                seen.append(data.split(b"\r\n")[0])
                conn.sendall(
                    b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"
                    b'Content-Length: 500\r\n\r\n{"id":'
                )
                stop.wait(2.0)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}", seen
    finally:
        stop.set()
        server.close()
        thread.join(3)


def test_real_post_whose_body_stalls_is_a_timeout_sent_once(
    stalling_server: tuple[str, list[bytes]],
) -> None:
    url, seen = stalling_server
    client = PolarClient(TOKEN, base_url=url, timeout=(2.0, 0.3), sleep=lambda _: None)
    started = time.monotonic()
    with pytest.raises(PolarTimeoutError) as caught:
        client.create_checkout({"products": ["8f0c4a57-2d1e-4b63-9a4f-0e2d6c1b7a10"]})
    assert time.monotonic() - started < 1.9
    assert seen == [b"POST /v1/checkouts/ HTTP/1.1"]
    assert "may have reached Polar" in str(caught.value)
    client.close()


# --- the metadata filter ---------------------------------------------------------------


def test_list_subscriptions_sends_the_metadata_filter() -> None:
    session = RaisingSession(lambda call: requests.exceptions.ConnectTimeout("stop"))
    client = PolarClient(TOKEN, base_url=BASE_URL, session=session, max_retries=0)
    with pytest.raises(PolarTimeoutError):
        list(client.list_subscriptions(metadata={"kavach_user_id": "u1"}, status="active"))
    assert ("metadata[kavach_user_id]", "u1") in session.calls[0]["params"]
    assert ("status", "active") in session.calls[0]["params"]
