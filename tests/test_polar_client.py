"""PolarClient: Polar's real answers (cassettes), retries, timeouts, errors, secrets.

Cassette tests replay ``cassettes/test_polar_client/<test name>.yaml`` with the network
blocked. The others talk to a scripted stand-in for Polar on 127.0.0.1 (a real HTTP
server in a thread), or to a ``requests.Session`` that raises what a test needs.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

import attrs
import pytest
import requests
from urllib3.exceptions import ProtocolError

from kavach.errors import (
    PolarAPIError,
    PolarAuthenticationError,
    PolarConflictError,
    PolarConnectionError,
    PolarError,
    PolarNotFoundError,
    PolarPermissionError,
    PolarRateLimitError,
    PolarResponseError,
    PolarServerError,
    PolarTimeoutError,
    PolarValidationError,
)
from kavach.polar._protocol import error_class_for_status
from kavach.polar._transport import RetryPolicy
from kavach.polar.client import SANDBOX_API_URL, PolarClient
from kavach.polar.models import Checkout, CheckoutStatus, CustomerSession, make_converter

F = TypeVar("F", bound=Callable[..., Any])

TOKEN = "polar_oat_t0pS3cretT0kenValue0123456789abcdef"
# Re-recording (README, "Recording cassettes") uses your sandbox token and objects;
# replay uses these.
SANDBOX_TOKEN = os.environ.get("POLAR_ACCESS_TOKEN", "polar_oat_replay_only")
PRODUCT_ID = os.environ.get("POLAR_SANDBOX_PRODUCT_ID", "8f0c4a57-2d1e-4b63-9a4f-0e2d6c1b7a10")
SUBSCRIPTION_ID = "b7e3f0c2-1d4a-4e5f-8a9b-0c1d2e3f4a5b"  # only in replay-only cassettes
CHECKOUT_ID = "5c0b0f3e-7a61-4c1e-8d0a-2b9e4f6a1c33"
USER_ID = os.environ.get("POLAR_SANDBOX_EXTERNAL_CUSTOMER_ID", "user_42")


def replayed(test: F) -> F:
    """A cassette test: replays (or, with ``--record-mode``, records) with the network blocked."""
    return pytest.mark.block_network(pytest.mark.vcr(test))  # type: ignore[no-any-return]


def replay_only(test: F) -> F:
    """A cassette test whose answers Polar cannot be made to give on demand (429, 5xx) or
    that would change sandbox data: always replayed, even under ``--record-mode``."""
    return pytest.mark.block_network(pytest.mark.vcr(record_mode="none")(test))  # type: ignore[no-any-return]


@pytest.fixture
def sleeps() -> list[float]:
    """What the client asked to sleep, in order (it never really sleeps)."""
    return []


@pytest.fixture
def sandbox_client(sleeps: list[float]) -> Iterator[PolarClient]:
    with PolarClient(SANDBOX_TOKEN, base_url=SANDBOX_API_URL, sleep=sleeps.append) as client:
        yield client


# --- cassettes: Polar's real shapes -------------------------------------------------


@replayed
def test_create_checkout_returns_checkout(sandbox_client: PolarClient) -> None:
    checkout = sandbox_client.create_checkout(
        {
            "products": [PRODUCT_ID],
            "external_customer_id": USER_ID,
            "success_url": "https://app.example.com/billing/success?checkout_id={CHECKOUT_ID}",
            "metadata": {"kavach_user_id": USER_ID},
        }
    )
    assert isinstance(checkout, Checkout)
    assert checkout.status == CheckoutStatus.OPEN
    assert checkout.url == f"https://sandbox.polar.sh/checkout/{checkout.client_secret}"
    assert checkout.product_id == PRODUCT_ID
    assert checkout.external_customer_id == USER_ID
    assert checkout.metadata == {"kavach_user_id": USER_ID}
    assert checkout.success_url == (
        f"https://app.example.com/billing/success?checkout_id={checkout.id}"
    )
    assert checkout.expires_at.tzinfo is UTC
    assert checkout.created_at is not None
    assert abs(checkout.expires_at - checkout.created_at - timedelta(hours=24)) < timedelta(
        seconds=1
    )


@replayed
def test_create_checkout_with_unknown_product_raises_validation_error(
    sandbox_client: PolarClient,
) -> None:
    missing = "00000000-0000-4000-8000-000000000000"
    with pytest.raises(PolarValidationError) as caught:
        sandbox_client.create_checkout(
            {
                "products": [missing],
                "external_customer_id": USER_ID,
                "success_url": "https://app.example.com/billing/success?checkout_id={CHECKOUT_ID}",
                "metadata": {"kavach_user_id": USER_ID},
            }
        )
    error = caught.value
    assert error.status_code == 422
    assert error.error in ("RequestValidationError", "PolarRequestValidationError")
    assert isinstance(error.detail, list)
    assert "products" in error.detail[0]["loc"]
    assert str(error).startswith(f"Polar POST /v1/checkouts/ failed: 422 {error.error}: ")
    assert "Product does not exist." in str(error)


@replayed
def test_invalid_token_raises_authentication_error(sleeps: list[float]) -> None:
    client = PolarClient(
        "polar_oat_not_a_real_token", base_url=SANDBOX_API_URL, sleep=sleeps.append
    )
    with pytest.raises(PolarAuthenticationError) as caught:
        client.get_checkout(CHECKOUT_ID)
    error = caught.value
    assert error.error == "invalid_token"
    assert isinstance(error.detail, str) and "expired, revoked" in error.detail
    assert sleeps == []  # a 401 is not retried


@replay_only
def test_get_subscription_retries_after_rate_limit(
    sandbox_client: PolarClient, sleeps: list[float]
) -> None:
    subscription = sandbox_client.get_subscription(SUBSCRIPTION_ID)
    assert subscription["id"] == SUBSCRIPTION_ID
    assert sleeps == [2.0]  # Polar's retry-after, not a guess


@replay_only
def test_get_subscription_retries_after_server_error(
    sandbox_client: PolarClient, sleeps: list[float]
) -> None:
    subscription = sandbox_client.get_subscription(SUBSCRIPTION_ID)
    assert subscription["status"] == "active"
    assert len(sleeps) == 1 and 0.25 <= sleeps[0] <= 0.5


@replayed
def test_list_subscriptions_follows_every_page(sandbox_client: PolarClient) -> None:
    ids = [
        s["id"] for s in sandbox_client.list_subscriptions(external_customer_id=USER_ID, limit=2)
    ]
    assert len(ids) == len(set(ids)) >= 3  # two items a page: the second page was read


@replay_only
def test_update_subscription_cancels_at_period_end(sandbox_client: PolarClient) -> None:
    subscription = sandbox_client.update_subscription(
        SUBSCRIPTION_ID,
        {"cancel_at_period_end": True, "customer_cancellation_reason": "too_expensive"},
    )
    assert subscription["cancel_at_period_end"] is True
    assert subscription["status"] == "active"
    assert subscription["ends_at"] == subscription["current_period_end"]


@replay_only
def test_revoke_subscription_returns_canceled_subscription(sandbox_client: PolarClient) -> None:
    subscription = sandbox_client.revoke_subscription(SUBSCRIPTION_ID)
    assert subscription["status"] == "canceled"
    assert subscription["ended_at"] is not None


@replayed
def test_get_customer_by_external_id_returns_customer(sandbox_client: PolarClient) -> None:
    customer = sandbox_client.get_customer_by_external_id(USER_ID)
    assert customer["external_id"] == USER_ID


@replayed
def test_get_customer_by_unknown_external_id_raises_not_found(
    sandbox_client: PolarClient,
) -> None:
    with pytest.raises(PolarNotFoundError) as caught:
        sandbox_client.get_customer_by_external_id("kavach-test-no-such-user")
    assert (caught.value.error, caught.value.detail) == ("ResourceNotFound", "Not found")


@replayed
def test_create_customer_session_returns_portal_url(sandbox_client: PolarClient) -> None:
    session = sandbox_client.create_customer_session(
        external_customer_id=USER_ID, return_url="https://app.example.com/account"
    )
    assert isinstance(session, CustomerSession)
    assert session.customer_portal_url.startswith("https://sandbox.polar.sh/")
    assert session.expires_at.tzinfo is UTC
    assert session.token not in repr(session)


@replay_only
def test_get_checkout_returns_succeeded_checkout(sandbox_client: PolarClient) -> None:
    checkout = sandbox_client.get_checkout(CHECKOUT_ID)
    assert checkout.status is CheckoutStatus.SUCCEEDED
    assert checkout.external_customer_id == "user_42"
    assert checkout.metadata["kavach_user_id"] == "user_42"


@replay_only
def test_cancel_of_an_already_canceled_subscription_is_refused(
    sandbox_client: PolarClient,
) -> None:
    with pytest.raises(PolarPermissionError) as caught:
        sandbox_client.update_subscription(SUBSCRIPTION_ID, {"cancel_at_period_end": True})
    assert (caught.value.status_code, caught.value.error) == (403, "AlreadyCanceledSubscription")


@replay_only
def test_update_of_a_locked_subscription_is_a_conflict(sandbox_client: PolarClient) -> None:
    with pytest.raises(PolarConflictError) as caught:
        sandbox_client.update_subscription(SUBSCRIPTION_ID, {"cancel_at_period_end": False})
    assert (caught.value.status_code, caught.value.error) == (409, "SubscriptionLocked")


# --- a scripted Polar on 127.0.0.1 --------------------------------------------------


@attrs.frozen
class Reply:
    """One scripted answer."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = attrs.field(factory=dict)
    delay: float = 0.0


def json_reply(status: int, text: str, **headers: str) -> Reply:
    return Reply(status, text.encode(), {"content-type": "application/json", **headers})


@attrs.frozen
class Hit:
    """One request the stub received."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class StubPolar:
    """Answers each request with the next scripted reply; the last one repeats."""

    def __init__(self) -> None:
        self.replies: list[Reply] = [Reply(200, b"{}")]
        self.hits: list[Hit] = []
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            wbufsize = -1

            def _answer(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                reply = stub.take(Hit(self.command, self.path, dict(self.headers), body))
                if reply.delay:
                    threading.Event().wait(reply.delay)
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

            do_GET = do_POST = do_PATCH = do_DELETE = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.handle_error = lambda request, client_address: None  # type: ignore[method-assign]
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def take(self, hit: Hit) -> Reply:
        with self._lock:
            self.hits.append(hit)
            return self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]

    def script(self, *replies: Reply) -> None:
        self.replies = list(replies)


@pytest.fixture
def stub() -> Iterator[StubPolar]:
    polar = StubPolar()
    thread = threading.Thread(target=polar.server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    yield polar
    polar.server.shutdown()
    polar.server.server_close()
    thread.join()


@pytest.fixture
def client(stub: StubPolar, sleeps: list[float]) -> Iterator[PolarClient]:
    with PolarClient(TOKEN, base_url=stub.url, sleep=sleeps.append) as polar:
        yield polar


@pytest.fixture
def closed_port_url() -> str:
    """A 127.0.0.1 URL nothing listens on: connecting is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


class ScriptedSession(requests.Session):
    """A real Session that records each call's keyword arguments; scripted exceptions are
    raised instead of sending (one per call, in order) until the script runs out."""

    def __init__(self, *raises: requests.RequestException) -> None:
        super().__init__()
        self.raises = list(raises)
        self.calls: list[dict[str, Any]] = []
        self.closed = False

    def close(self) -> None:
        self.closed = True
        super().close()

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> Any:
        self.calls.append({"method": method, "url": url, **kwargs})
        if self.raises:
            raise self.raises.pop(0)
        return super().request(method, url, *args, **kwargs)


CHECKOUT_JSON = (
    '{"id":"c1","status":"open","url":"https://sandbox.polar.sh/checkout/polar_c_x",'
    '"client_secret":"polar_c_x","expires_at":"2026-08-23T10:15:03.401122Z",'
    '"organization_id":"o1","extra_field_from_the_future":[1,2]}'
)


# --- the retry rule -----------------------------------------------------------------


def test_post_is_not_retried_on_server_error(
    client: PolarClient, stub: StubPolar, sleeps: list[float]
) -> None:
    stub.script(json_reply(503, '{"error":"ServiceUnavailable","detail":"down"}'))
    with pytest.raises(PolarServerError):
        client.create_checkout({"products": ["p1"]})
    assert len(stub.hits) == 1
    assert sleeps == []


def test_post_is_not_retried_after_read_timeout(stub: StubPolar, sleeps: list[float]) -> None:
    stub.script(Reply(201, CHECKOUT_JSON.encode(), delay=0.5))
    client = PolarClient(TOKEN, base_url=stub.url, timeout=(1.0, 0.1), sleep=sleeps.append)
    with pytest.raises(PolarTimeoutError):
        client.create_checkout({"products": ["p1"]})
    assert len(stub.hits) == 1
    assert sleeps == []


def test_post_is_not_retried_after_connection_reset(sleeps: list[float]) -> None:
    reset = requests.ConnectionError(ProtocolError("Connection aborted.", ConnectionResetError()))
    session = ScriptedSession(reset)
    client = PolarClient(TOKEN, base_url=SANDBOX_API_URL, session=session, sleep=sleeps.append)
    with pytest.raises(PolarConnectionError):
        client.create_checkout({"products": ["p1"]})
    assert len(session.calls) == 1


def test_post_is_retried_when_the_connection_was_refused(
    closed_port_url: str, sleeps: list[float]
) -> None:
    client = PolarClient(TOKEN, base_url=closed_port_url, sleep=sleeps.append)
    with pytest.raises(PolarConnectionError):
        client.create_checkout({"products": ["p1"]})
    assert len(sleeps) == 3  # 4 attempts: none of them reached a server


def test_post_is_retried_after_connect_timeout(stub: StubPolar, sleeps: list[float]) -> None:
    stub.script(json_reply(201, CHECKOUT_JSON))
    session = ScriptedSession(requests.exceptions.ConnectTimeout("connect timed out"))
    client = PolarClient(TOKEN, base_url=stub.url, session=session, sleep=sleeps.append)
    assert client.create_checkout({"products": ["p1"]}).id == "c1"
    assert len(session.calls) == 2 and len(stub.hits) == 1


@pytest.mark.parametrize("method", ["PATCH", "DELETE"])
def test_patch_and_delete_are_never_retried(
    client: PolarClient, stub: StubPolar, sleeps: list[float], method: str
) -> None:
    stub.script(json_reply(503, '{"error":"ServiceUnavailable","detail":"down"}'))
    with pytest.raises(PolarServerError):
        client.request(method, "/v1/subscriptions/s1", json={"cancel_at_period_end": True})
    assert len(stub.hits) == 1
    assert sleeps == []


def test_patch_is_not_retried_even_when_the_connection_was_refused(
    closed_port_url: str, sleeps: list[float]
) -> None:
    client = PolarClient(TOKEN, base_url=closed_port_url, sleep=sleeps.append)
    with pytest.raises(PolarConnectionError):
        client.update_subscription("s1", {"cancel_at_period_end": True})
    assert sleeps == []


def test_get_honours_retry_after_on_rate_limit(
    client: PolarClient, stub: StubPolar, sleeps: list[float]
) -> None:
    stub.script(Reply(429, headers={"retry-after": "3"}), json_reply(200, '{"id":"s1"}'))
    assert client.get_subscription("s1") == {"id": "s1"}
    assert sleeps == [3.0]
    assert len(stub.hits) == 2


def test_get_gives_up_at_once_when_retry_after_is_longer_than_the_cap(
    client: PolarClient, stub: StubPolar, sleeps: list[float]
) -> None:
    stub.script(Reply(429, headers={"retry-after": "120"}))
    with pytest.raises(PolarRateLimitError) as caught:
        client.get_subscription("s1")
    assert caught.value.retry_after == 120.0
    assert sleeps == [] and len(stub.hits) == 1


def test_rate_limit_with_empty_body_is_read_without_json(
    stub: StubPolar, sleeps: list[float]
) -> None:
    stub.script(Reply(429, headers={"retry-after": "7"}))
    client = PolarClient(TOKEN, base_url=stub.url, max_retries=0, sleep=sleeps.append)
    with pytest.raises(PolarRateLimitError) as caught:
        client.get_subscription("s1")
    error = caught.value
    assert (error.error, error.detail, error.retry_after) == (None, None, 7.0)
    assert str(error) == (
        "Polar GET /v1/subscriptions/s1 failed: 429 Too Many Requests: retry after 7 s"
    )


def test_get_retries_stop_after_max_retries(
    client: PolarClient, stub: StubPolar, sleeps: list[float]
) -> None:
    stub.script(Reply(502, b"<html>Bad gateway</html>", {"content-type": "text/html"}))
    with pytest.raises(PolarServerError) as caught:
        client.get_subscription("s1")
    assert len(stub.hits) == 4  # the first try and max_retries=3 retries
    assert len(sleeps) == 3 and all(0 < s <= 8.0 for s in sleeps)
    assert caught.value.detail == "<html>Bad gateway</html>"


def test_zero_max_retries_sends_once(stub: StubPolar, sleeps: list[float]) -> None:
    stub.script(Reply(503))
    client = PolarClient(TOKEN, base_url=stub.url, max_retries=0, sleep=sleeps.append)
    with pytest.raises(PolarServerError):
        client.get_subscription("s1")
    assert len(stub.hits) == 1 and sleeps == []


def test_get_is_retried_after_read_timeout(stub: StubPolar, sleeps: list[float]) -> None:
    stub.script(Reply(200, b'{"id":"slow"}', delay=0.5), json_reply(200, '{"id":"s1"}'))
    client = PolarClient(TOKEN, base_url=stub.url, timeout=(1.0, 0.1), sleep=sleeps.append)
    assert client.get_subscription("s1") == {"id": "s1"}
    assert len(sleeps) == 1


def test_backoff_doubles_from_half_a_second_and_is_capped_at_eight() -> None:
    policy = RetryPolicy()
    assert [policy.backoff(n, 1.0) for n in range(7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_backoff_jitter_stays_in_the_upper_half() -> None:
    policy = RetryPolicy()
    assert policy.backoff(3, 0.0) == 2.0 and policy.backoff(3, 0.5) == 3.0


def test_connection_refused_raises_polar_connection_error(
    closed_port_url: str, sleeps: list[float]
) -> None:
    client = PolarClient(TOKEN, base_url=closed_port_url, max_retries=0, sleep=sleeps.append)
    with pytest.raises(PolarConnectionError) as caught:
        client.get_subscription("s1")
    error = caught.value
    assert not isinstance(error, PolarTimeoutError)
    assert (error.method, error.path) == ("GET", "/v1/subscriptions/s1")
    assert str(error).startswith("Polar GET /v1/subscriptions/s1 failed: could not reach Polar")


def test_get_is_retried_when_the_connection_was_refused(
    closed_port_url: str, sleeps: list[float]
) -> None:
    client = PolarClient(TOKEN, base_url=closed_port_url, max_retries=2, sleep=sleeps.append)
    with pytest.raises(PolarConnectionError):
        client.get_subscription("s1")
    assert len(sleeps) == 2


# --- what every request carries -----------------------------------------------------


def test_every_request_carries_the_default_timeout(stub: StubPolar, sleeps: list[float]) -> None:
    stub.script(Reply(503), Reply(503), json_reply(200, '{"id":"s1"}'))
    session = ScriptedSession()
    client = PolarClient(TOKEN, base_url=stub.url, session=session, sleep=sleeps.append)
    client.get_subscription("s1")
    assert [call["timeout"] for call in session.calls] == [(5.0, 15.0)] * 3


def test_a_single_number_timeout_applies_to_connect_and_read(stub: StubPolar) -> None:
    stub.script(json_reply(201, CHECKOUT_JSON))
    session = ScriptedSession()
    client = PolarClient(TOKEN, base_url=stub.url, session=session, timeout=2.5)
    client.create_checkout({"products": ["p1"]})
    assert session.calls[0]["timeout"] == (2.5, 2.5)


def test_requests_carry_bearer_token_json_headers_and_user_agent(
    client: PolarClient, stub: StubPolar
) -> None:
    stub.script(json_reply(201, CHECKOUT_JSON))
    client.create_checkout({"products": ["p1"]})
    headers = {k.lower(): v for k, v in stub.hits[0].headers.items()}
    assert headers["authorization"] == f"Bearer {TOKEN}"
    assert headers["accept"] == "application/json"
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"].startswith("kavach/")
    assert stub.hits[0].path == "/v1/checkouts/"


def test_injected_session_is_used_and_left_open(stub: StubPolar) -> None:
    session = ScriptedSession()
    with PolarClient(TOKEN, base_url=stub.url, session=session) as client:
        client.get_subscription("s1")
    assert len(session.calls) == 1
    assert not session.closed


def test_list_subscriptions_sends_filters_as_polar_reads_them(
    client: PolarClient, stub: StubPolar
) -> None:
    stub.script(json_reply(200, '{"items":[],"pagination":{"total_count":0,"max_page":0}}'))
    assert (
        list(
            client.list_subscriptions(
                customer_id="c1", status=["active", "trialing"], cancel_at_period_end=False
            )
        )
        == []
    )
    assert stub.hits[0].path == (
        "/v1/subscriptions/?limit=100&customer_id=c1&status=active&status=trialing"
        "&cancel_at_period_end=false&page=1"
    )


def test_ids_are_quoted_into_one_path_segment(client: PolarClient, stub: StubPolar) -> None:
    stub.script(json_reply(200, '{"id":"c1"}'))
    client.get_customer_by_external_id("../checkouts/x y")
    assert stub.hits[0].path == "/v1/customers/external/..%2Fcheckouts%2Fx%20y"


def test_empty_id_is_refused_before_any_request(client: PolarClient, stub: StubPolar) -> None:
    with pytest.raises(ValueError):
        client.get_subscription("")
    assert stub.hits == []


def test_customer_session_needs_exactly_one_customer_id(client: PolarClient) -> None:
    with pytest.raises(ValueError):
        client.create_customer_session(external_customer_id="u1", customer_id="c1")
    with pytest.raises(ValueError):
        client.create_customer_session()


# --- errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error_class"),
    [
        (400, PolarAPIError),
        (401, PolarAuthenticationError),
        (402, PolarAPIError),
        (403, PolarPermissionError),
        (404, PolarNotFoundError),
        (409, PolarConflictError),
        (422, PolarValidationError),
        (429, PolarRateLimitError),
        (500, PolarServerError),
        (502, PolarServerError),
        (503, PolarServerError),
    ],
)
def test_each_status_maps_to_its_error_class(
    client: PolarClient, stub: StubPolar, status: int, error_class: type[PolarAPIError]
) -> None:
    stub.script(json_reply(status, '{"error":"SomeError","detail":"what went wrong"}'))
    with pytest.raises(PolarAPIError) as caught:
        client.request("POST", "/v1/anything/", json={})
    error = caught.value
    assert type(error) is error_class is error_class_for_status(status)
    assert (error.status_code, error.error, error.detail) == (
        status,
        "SomeError",
        "what went wrong",
    )
    assert (error.method, error.path) == ("POST", "/v1/anything/")


def test_validation_error_message_lists_each_problem(client: PolarClient, stub: StubPolar) -> None:
    stub.script(
        json_reply(
            422,
            '{"error":"RequestValidationError","detail":['
            '{"type":"value_error","loc":["body","products",0],"msg":"Product does not exist.",'
            '"input":"p1"},{"type":"missing","loc":["body","amount"],"msg":"Field required"}]}',
        )
    )
    with pytest.raises(PolarValidationError) as caught:
        client.create_checkout({"products": ["p1"]})
    assert str(caught.value) == (
        "Polar POST /v1/checkouts/ failed: 422 RequestValidationError: "
        "body.products.0: Product does not exist.; body.amount: Field required"
    )
    assert [problem["loc"] for problem in caught.value.detail] == [
        ["body", "products", 0],
        ["body", "amount"],
    ]


def test_polar_error_message_names_call_status_code_and_detail(
    client: PolarClient, stub: StubPolar
) -> None:
    stub.script(
        json_reply(
            409, '{"error":"SubscriptionLocked","detail":"This subscription is pending an update."}'
        )
    )
    with pytest.raises(PolarConflictError) as caught:
        client.update_subscription("s1", {"cancel_at_period_end": True})
    assert str(caught.value) == (
        "Polar PATCH /v1/subscriptions/s1 failed: 409 SubscriptionLocked: "
        "This subscription is pending an update."
    )


def test_non_json_success_raises_response_error(client: PolarClient, stub: StubPolar) -> None:
    stub.script(Reply(200, b"<html>maintenance</html>", {"content-type": "text/html"}))
    with pytest.raises(PolarResponseError):
        client.get_subscription("s1")


def test_success_body_missing_required_fields_raises_response_error(
    client: PolarClient, stub: StubPolar
) -> None:
    stub.script(json_reply(201, '{"id":"c1","status":"open"}'))
    with pytest.raises(PolarResponseError) as caught:
        client.create_checkout({"products": ["p1"]})
    assert "Checkout" in str(caught.value)


def test_no_content_answer_reads_as_none(client: PolarClient, stub: StubPolar) -> None:
    stub.script(Reply(204))
    assert client.request("DELETE", "/v1/customers/external/u1") is None


def _every_kind_of_error(stub: StubPolar, closed_port_url: str) -> list[PolarError]:
    """One of each error the client can raise, caught from real calls."""
    stub.script(
        json_reply(401, '{"error":"invalid_token","error_description":"bad"}'),
        json_reply(422, '{"error":"RequestValidationError","detail":[{"loc":["body"],"msg":"x"}]}'),
        Reply(429, headers={"retry-after": "1"}),
        Reply(500, b"Internal Server Error"),
        Reply(200, b"not json"),
        json_reply(201, '{"id":"c1"}'),
        Reply(200, b"{}", delay=0.5),
    )
    client = PolarClient(TOKEN, base_url=stub.url, max_retries=0, timeout=(1.0, 0.1))
    refused_client = PolarClient(TOKEN, base_url=closed_port_url, max_retries=0)
    calls: list[Callable[[], object]] = [
        lambda: client.get_checkout("c1"),
        lambda: client.create_checkout({"products": ["p1"]}),
        lambda: client.get_subscription("s1"),
        lambda: client.get_subscription("s1"),
        lambda: client.get_subscription("s1"),
        lambda: client.create_checkout({"products": ["p1"]}),
        lambda: client.get_subscription("s1"),
        lambda: refused_client.get_subscription("s1"),
    ]
    errors: list[PolarError] = []
    for call in calls:
        with pytest.raises(PolarError) as caught:
            call()
        errors.append(caught.value)
    return errors


def test_token_never_appears_in_any_error(stub: StubPolar, closed_port_url: str) -> None:
    errors = _every_kind_of_error(stub, closed_port_url)
    assert {type(e) for e in errors} >= {
        PolarAuthenticationError,
        PolarValidationError,
        PolarRateLimitError,
        PolarServerError,
        PolarResponseError,
        PolarTimeoutError,
        PolarConnectionError,
    }
    for error in errors:
        text = " ".join([str(error), repr(error), repr(error.args), repr(vars(error))])
        assert TOKEN not in text
        assert "t0pS3cret" not in text


def test_token_never_appears_in_retry_logs(
    client: PolarClient, stub: StubPolar, caplog: pytest.LogCaptureFixture
) -> None:
    stub.script(Reply(503), json_reply(200, '{"id":"s1"}'))
    with caplog.at_level("DEBUG"):
        client.get_subscription("s1")
    assert "retry 1/3" in caplog.text
    assert TOKEN not in caplog.text


def test_client_repr_shows_base_url_and_not_the_token() -> None:
    client = PolarClient(TOKEN, base_url=SANDBOX_API_URL)
    assert repr(client) == "PolarClient(base_url='https://sandbox-api.polar.sh', token_set=True)"
    assert TOKEN not in repr(client._transport) and TOKEN not in str(client)


def test_empty_token_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="access_token"):
        PolarClient("  ")


# --- the converter ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-08-22T10:17:41.009812Z", datetime(2026, 8, 22, 10, 17, 41, 9812, tzinfo=UTC)),
        ("2026-08-22T10:17:41Z", datetime(2026, 8, 22, 10, 17, 41, tzinfo=UTC)),
        ("2026-08-22T10:17:41.5Z", datetime(2026, 8, 22, 10, 17, 41, 500000, tzinfo=UTC)),
        ("2026-08-22T12:17:41+02:00", datetime(2026, 8, 22, 10, 17, 41, tzinfo=UTC)),
        ("2026-08-22T10:17:41", datetime(2026, 8, 22, 10, 17, 41, tzinfo=UTC)),
    ],
)
def test_converter_reads_polar_datetimes_as_aware_utc(text: str, expected: datetime) -> None:
    session = make_converter().structure(
        {
            "id": "s",
            "customer_portal_url": "u",
            "expires_at": text,
            "customer_id": "c",
            "token": "t",
        },
        CustomerSession,
    )
    assert session.expires_at == expected
    assert session.expires_at.utcoffset() is not None and session.expires_at.tzinfo is UTC


def test_converter_keeps_an_unknown_status_as_a_plain_string() -> None:
    checkout = make_converter().structure(
        {
            "id": "c",
            "status": "on_hold",
            "url": "u",
            "client_secret": "s",
            "expires_at": "2026-08-23T10:15:03Z",
            "organization_id": "o",
        },
        Checkout,
    )
    assert checkout.status == "on_hold" and not isinstance(checkout.status, CheckoutStatus)


def test_checkout_repr_leaves_out_the_client_secret() -> None:
    checkout = make_converter().structure(
        {
            "id": "c",
            "status": "open",
            "url": "https://sandbox.polar.sh/checkout/polar_c_x",
            "client_secret": "polar_c_x",
            "expires_at": "2026-08-23T10:15:03Z",
            "organization_id": "o",
        },
        Checkout,
    )
    assert "client_secret" not in repr(checkout)
    assert "id='c'" in repr(checkout)


def test_converter_writes_datetimes_back_in_polar_form() -> None:
    converter = make_converter()
    checkout = converter.structure(
        {
            "id": "c",
            "status": "open",
            "url": "u",
            "client_secret": "s",
            "expires_at": "2026-08-23T10:15:03.401122Z",
            "organization_id": "o",
        },
        Checkout,
    )
    data = converter.unstructure(checkout)
    assert (data["status"], data["expires_at"]) == ("open", "2026-08-23T10:15:03.401122Z")


# --- cassette hygiene ---------------------------------------------------------------


def test_recording_hooks_redact_tokens_in_bodies(vcr_config: dict[str, Any]) -> None:
    body = (
        b'{"token":"polar_cst_Xy12abc","customer_portal_url":'
        b'"https://polar.sh/a/portal?customer_session_token=polar_cst_Xy12abc&email=j",'
        b'"client_secret":"polar_c_keepme","secret":"whsec_abc+/="}'
    )
    response = vcr_config["before_record_response"]({"body": {"string": body}})
    recorded = response["body"]["string"]
    assert b"Xy12abc" not in recorded and b"whsec_abc" not in recorded
    assert recorded.count(b"polar_cst_REDACTED") == 2
    assert b"polar_c_keepme" in recorded


def test_recording_filters_the_authorization_header(vcr_config: dict[str, Any]) -> None:
    assert ("authorization", "Bearer <REDACTED>") in vcr_config["filter_headers"]
    assert vcr_config["record_mode"] in ("none", "once", "new_episodes", "all", "rewrite")


def test_post_is_retried_after_rate_limit_which_refused_it_before_any_work(
    client: PolarClient, stub: StubPolar, sleeps: list[float]
) -> None:
    stub.script(Reply(429, headers={"retry-after": "2"}), json_reply(201, CHECKOUT_JSON))
    checkout = client.create_checkout({"products": ["p1"]})
    assert checkout.id == "c1"
    assert sleeps == [2.0]
    assert len(stub.hits) == 2


def test_every_request_pins_the_polar_api_version(client: PolarClient, stub: StubPolar) -> None:
    stub.script(json_reply(200, '{"id":"s1"}'))
    client.get_subscription("s1")
    assert stub.hits[0].headers["Polar-Version"] == "2026-04"
