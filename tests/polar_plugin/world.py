"""One FakePolar and one kavach wired together over real HTTP, for the tests that drive
the Polar plugin end to end: kavach's client talks to FakePolar, and kavach's own HTTP
server is up so FakePolar can deliver webhooks and tests can call the routes."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import attrs
import requests

from kavach import Kavach, PasswordHasher, create_kavach
from kavach.auth import polar
from kavach.http.server import make_server
from kavach.polar import PolarPlugin, PolarSubscription
from kavach.testing import FakePolar


@attrs.define
class World:
    fake: FakePolar
    kavach: Kavach
    plugin: PolarPlugin
    #: Every ``on_subscription_change`` call, in order.
    calls: list[tuple[str, PolarSubscription]]
    #: The origin of kavach's HTTP server, e.g. ``http://127.0.0.1:PORT``.
    server_url: str

    @property
    def webhook_url(self) -> str:
        return f"{self.server_url}/api/kavach/auth/polar/webhook"

    def user(self, email: str = "jane@acme.io") -> str:
        return self.kavach.users.create(email, password="correct horse battery").id

    def connect_webhooks(self) -> None:
        """Register kavach's webhook route with FakePolar: from now on it delivers."""
        self.fake.add_webhook_endpoint(self.webhook_url)

    def existing_customer(self, email: str = "jane@acme.io") -> dict[str, Any]:
        """A Polar customer made before kavach knew the user: no external id."""
        customer: dict[str, Any] = self.plugin.client.request(
            "POST", "/v1/customers/", json={"email": email, "name": "Jane"}
        )
        assert customer["external_id"] is None
        return customer

    def pay(self, user_id: str) -> tuple[str, str]:
        """Checkout through kavach and pay it: (checkout, subscription) ids. A webhook is
        delivered only if :meth:`connect_webhooks` was called."""
        checkout = self.plugin.create_checkout(user_id, self.fake.product_id)
        sub = self.fake.complete_checkout(checkout.id)
        return checkout.id, str(sub["id"])

    def subscribe(self, user_id: str) -> str:
        """:meth:`pay`, keeping only the subscription id."""
        return self.pay(user_id)[1]

    def held(self, user_id: str) -> list[str]:
        return [s.id for s in self.plugin.list_subscriptions(user_id)]


@contextmanager
def open_world(session: requests.Session | None = None) -> Iterator[World]:
    """Start FakePolar, a memory-store kavach with the Polar plugin and kavach's HTTP
    server; stop them all on exit.

    ``session`` is handed to the plugin's client as is (kavach leaves an injected session
    open: the caller closes it); with None the client makes and closes its own.
    """
    calls: list[tuple[str, PolarSubscription]] = []
    with FakePolar() as fake:
        plugin = polar(
            access_token="polar_oat_fake",
            webhook_secret=fake.webhook_secret,
            base_url=fake.url,
            session=session,
            on_subscription_change=lambda u, s: calls.append((u, s)),
        )
        kavach = create_kavach("memory://", plugins=[plugin], password_hasher=PasswordHasher.fast())
        server = make_server(kavach, "127.0.0.1", 0)
        thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        try:
            yield World(fake, kavach, plugin, calls, server.url)
        finally:
            server.shutdown()
            server.server_close()
            kavach.close()
