"""Helpers for the HTTP suite: the Polar plugin test double and the live-server starters.

(A plain module, not ``conftest``: test modules import from it.)
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer
from wsgiref.simple_server import make_server as make_wsgi_server

import attrs
import requests

from kavach.core import Kavach
from kavach.errors import (
    KavachError,
    PolarConflictError,
    PolarPermissionError,
    PolarValidationError,
    WebhookVerificationError,
)
from kavach.http import make_server
from kavach.http.wsgi import WSGIApp
from kavach.polar.access import AccessDecision
from kavach.polar.plugin import CheckoutNotFoundError, SubscriptionNotFoundError

TRUSTED_ORIGIN = "https://app.example.com"
PASSWORD = "correct horse battery"
VALID_SIGNATURE = "v1,valid"


@attrs.frozen
class StubCheckout:
    id: str
    url: str


@attrs.frozen
class StubSubscription:
    id: str
    status: str
    product_id: str | None
    current_period_end: datetime | None
    cancel_at_period_end: bool


@attrs.frozen
class StubOutcome:
    webhook_id: str
    status_code: int = 200

    def to_json(self) -> dict[str, Any]:
        return {"received": True, "webhookId": self.webhook_id, "outcome": "applied"}


class StubPolarPlugin:
    """The Polar plugin's HTTP-facing interface, with programmable answers.

    Checkouts are recorded in ``checkouts``; ``checkout_error`` / ``webhook_error`` are
    raised when set. A webhook is "verified" when ``webhook-signature`` is ``v1,valid``.
    """

    name = "polar"

    def __init__(self, max_webhook_body: int = 1024 * 1024) -> None:
        self.max_webhook_body = max_webhook_body
        self.subscriptions: dict[str, StubSubscription] = {}
        self.checkouts: list[tuple[str, str, str | None]] = []
        self.webhooks: list[tuple[bytes, dict[str, str]]] = []
        self.checkout_error: Exception | None = None
        self.webhook_error: Exception | None = None
        self.webhook_status = 200

    def bind(self, kavach: Kavach) -> None:
        self.kavach = kavach

    def close(self) -> None:
        pass

    def create_checkout(
        self, user_id: str, product_id: str, *, success_url: str | None = None
    ) -> StubCheckout:
        if self.checkout_error is not None:
            raise self.checkout_error
        self.checkouts.append((user_id, product_id, success_url))
        number = len(self.checkouts)
        return StubCheckout(id=f"co_{number}", url=f"https://polar.test/checkout/co_{number}")

    def get_subscription(self, user_id: str) -> StubSubscription | None:
        return self.subscriptions.get(user_id)

    def status(self, user_id: str) -> SimpleNamespace:
        sub = self.subscriptions.get(user_id)
        if sub is None:
            return SimpleNamespace(subscription=None, access=AccessDecision(False, "none"))
        granted = sub.status in ("active", "trialing")
        access = AccessDecision(granted, sub.status if granted else "none",
                                sub.current_period_end, sub.id)
        return SimpleNamespace(subscription=sub, access=access)

    def handle_webhook(self, body: bytes, headers: Mapping[str, str]) -> StubOutcome:
        if len(body) > self.max_webhook_body:
            raise WebhookVerificationError("body_too_large", "too large")
        if not headers.get("webhook-id") or not headers.get("webhook-signature"):
            raise WebhookVerificationError("missing_headers", "missing webhook headers")
        if headers.get("webhook-signature") != VALID_SIGNATURE:
            raise WebhookVerificationError("no_matching_signature", "no signature matches")
        if self.webhook_error is not None:
            raise self.webhook_error
        self.webhooks.append((body, dict(headers)))
        return StubOutcome(webhook_id=headers["webhook-id"], status_code=self.webhook_status)

    def create_portal_session(
        self, user_id: str, *, return_url: str | None = None
    ) -> SimpleNamespace:
        if user_id not in self.subscriptions:
            raise PolarValidationError(
                "Customer does not exist.", status_code=422, error="PolarRequestValidationError"
            )
        return SimpleNamespace(customer_portal_url=f"https://polar.test/portal?u={user_id}")

    def cancel_subscription(
        self, user_id: str, *, reason: str | None = None, comment: str | None = None
    ) -> StubSubscription:
        return self._set_cancel(user_id, True)

    def uncancel_subscription(self, user_id: str) -> StubSubscription:
        return self._set_cancel(user_id, False)

    def _set_cancel(self, user_id: str, cancel: bool) -> StubSubscription:
        sub = self.subscriptions.get(user_id)
        if sub is None:
            raise SubscriptionNotFoundError(user_id)
        if sub.status == "locked":
            raise PolarConflictError("locked", status_code=409, error="SubscriptionLocked")
        if cancel and sub.cancel_at_period_end:
            raise PolarPermissionError(
                "already", status_code=403, error="AlreadyCanceledSubscription"
            )
        changed = attrs.evolve(sub, cancel_at_period_end=cancel)
        self.subscriptions[user_id] = changed
        return changed

    def get_checkout(self, user_id: str, checkout_id: str) -> SimpleNamespace:
        for number, (owner, _, _) in enumerate(self.checkouts, start=1):
            if owner == user_id and checkout_id == f"co_{number}":
                return SimpleNamespace(checkout=SimpleNamespace(id=checkout_id, status="open"))
        raise CheckoutNotFoundError(checkout_id)

    def give_subscription(self, user_id: str, **changes: Any) -> StubSubscription:
        values: dict[str, Any] = {
            "id": "sub_1",
            "status": "active",
            "product_id": "prod_1",
            "current_period_end": datetime(2030, 1, 31, 12, 0, tzinfo=UTC),
            "cancel_at_period_end": False,
        }
        values.update(changes)
        sub = StubSubscription(**values)
        self.subscriptions[user_id] = sub
        return sub


class QuietWSGIHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class ThreadedWSGIServer(WSGIServer):
    """wsgiref's server, one thread per connection (requests uses a pool)."""

    daemon_threads = True
    request_queue_size = 128  # a burst of clients connecting at once is not refused

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self._handle, args=(request, client_address), daemon=True
        )
        thread.start()

    def _handle(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)


@attrs.define
class Live:
    """A running server: ``url`` is ``http://127.0.0.1:PORT``, ``base`` adds the base path."""

    kavach: Kavach
    url: str
    adapter: str

    @property
    def base(self) -> str:
        return self.url + self.kavach.config.base_path

    def sign_up(
        self, email: str = "jane@acme.io", password: str = PASSWORD, name: str | None = "Jane"
    ) -> requests.Response:
        response = requests.post(
            self.base + "/auth/sign-up/email",
            json={"email": email, "password": password, "name": name},
            timeout=10,
        )
        assert response.status_code == 200, response.text
        return response

    def token(self, email: str = "jane@acme.io") -> str:
        token: str = self.sign_up(email=email).json()["session"]["token"]
        return token


def _start_builtin(kavach: Kavach) -> tuple[str, Callable[[], None]]:
    server = make_server(kavach, "127.0.0.1", 0, timeout=5.0)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(5)

    return server.url, stop


def _start_wsgi(kavach: Kavach) -> tuple[str, Callable[[], None]]:
    server = make_wsgi_server(
        "127.0.0.1", 0, WSGIApp(kavach), server_class=ThreadedWSGIServer,
        handler_class=QuietWSGIHandler,
    )
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(5)

    return f"http://127.0.0.1:{server.server_address[1]}", stop


STARTERS = {"builtin": _start_builtin, "wsgi": _start_wsgi}




def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def polar_failure() -> KavachError:
    """A Polar API failure whose message would leak a secret if it were echoed."""
    from kavach.errors import PolarAuthenticationError

    return PolarAuthenticationError(
        "token polar_oat_SECRET rejected", status_code=401, error="invalid_token"
    )
