"""pytest plugin (entry point ``pytest11: kavach``): fixtures for testing apps built on kavach.

Installed with kavach, so in any test suite::

    def test_upgrade(kavach_app, fake_polar):
        user, token = kavach_app.sign_up("jane@acme.io")
        checkout = kavach_app.polar.create_checkout(user.id, fake_polar.product_id)
        fake_polar.complete_checkout(checkout.id)          # signed webhooks hit the app
        assert kavach_app.polar.get_subscription(user.id).status == "active"

``fake_polar`` is a running :class:`~kavach.testing.FakePolar`; ``kavach_app`` is a
:class:`KavachTestApp`: a ``Kavach`` on the memory store with the Polar plugin pointed at
``fake_polar``, served by the built-in server on a free port, its webhook route registered
with the fake. ``sign_webhook`` is re-exported for hand-made deliveries.

``kavach_vcr_config`` is the redacting VCR config (:func:`~kavach.testing.polar_vcr_config`)
with ``--record-mode`` honoured. It is opt-in: pytest-recording reads a fixture named
``vcr_config``, which stays yours, so wire it in your conftest.py::

    @pytest.fixture
    def vcr_config(kavach_vcr_config):
        return kavach_vcr_config
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import attrs
import pytest
import requests

from kavach.core import Kavach, create_kavach
from kavach.errors import ConfigurationError
from kavach.passwords import PasswordHasher
from kavach.polar.plugin import PolarPlugin, polar
from kavach.polar.webhooks import sign_webhook
from kavach.testing.cassettes import polar_vcr_config
from kavach.testing.fake_polar import FakePolar
from kavach.users import User

__all__ = ["KavachTestApp", "fake_polar", "kavach_app", "kavach_vcr_config", "sign_webhook"]

TEST_PASSWORD = "correct horse battery staple"  # noqa: S105 - a test fixture's password


@attrs.define
class KavachTestApp:
    """A running kavach app for tests: ``kavach``, ``url`` (server root), ``base_url``
    (``url`` + the kavach base path), ``polar`` (the plugin), ``http`` (a ``requests``
    session) and ``webhook_url`` (registered with the fake Polar)."""

    kavach: Kavach
    url: str
    polar: PolarPlugin
    http: requests.Session
    webhook_url: str

    @property
    def base_url(self) -> str:
        return self.url + self.kavach.config.base_path

    def sign_up(
        self, email: str, password: str = TEST_PASSWORD, name: str | None = None
    ) -> tuple[User, str]:
        """Create a user and a session directly (no HTTP); returns ``(user, token)``."""
        user = self.kavach.users.create(email, password=password, name=name)
        return user, self.kavach.sessions.create(user.id).token

    def request(
        self,
        method: str,
        path: str,
        token: str | None = None,
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> requests.Response:
        """``method base_url + path`` with an optional bearer token and extra headers."""
        merged = dict(headers or {})
        if token:
            merged["Authorization"] = f"Bearer {token}"
        kwargs.setdefault("timeout", 10)
        return self.http.request(method, self.base_url + path, headers=merged, **kwargs)

    def get(self, path: str, token: str | None = None, **kwargs: Any) -> requests.Response:
        """``GET base_url + path``."""
        return self.request("GET", path, token, **kwargs)

    def post(self, path: str, token: str | None = None, **kwargs: Any) -> requests.Response:
        """``POST base_url + path``."""
        return self.request("POST", path, token, **kwargs)


@pytest.fixture
def fake_polar() -> Iterator[FakePolar]:
    """A running FakePolar (sync delivery: helpers return once their webhooks are delivered;
    an HTTP call's webhooks follow its answer), on a random port."""
    with FakePolar() as fake:
        yield fake


@pytest.fixture
def kavach_app(fake_polar: FakePolar) -> Iterator[KavachTestApp]:
    """A kavach app on the memory store, served on a free port, wired to ``fake_polar``."""
    from kavach.http.server import make_server

    plugin = polar(
        access_token="polar_oat_test",  # noqa: S106 - FakePolar accepts any token
        webhook_secret=fake_polar.webhook_secret,
        base_url=fake_polar.url,
    )
    kavach = create_kavach("memory://", plugins=[plugin], password_hasher=PasswordHasher.fast())
    server = make_server(kavach, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    webhook_url = f"{server.url}{kavach.config.base_path}/auth/polar/webhook"
    fake_polar.add_webhook_endpoint(webhook_url)
    http = requests.Session()
    try:
        yield KavachTestApp(kavach, server.url, plugin, http, webhook_url)
    finally:
        http.close()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        kavach.close()


# The keys of polar_vcr_config a ``vcr`` marker's keyword would replace (pytest-recording
# lets a marker win over ``vcr_config``), taking the redaction with them.
_REDACTING_KEYS = (
    "before_record_request",
    "before_record",
    "before_record_response",
    "filter_headers",
    "decode_compressed_response",
)


@pytest.fixture
def kavach_vcr_config(request: pytest.FixtureRequest) -> dict[str, Any]:
    """:func:`~kavach.testing.polar_vcr_config` with the ``--record-mode`` given to pytest
    (``none`` without one): tokens and webhook secrets redacted, loopback reachable.

    pytest-recording lets a ``record_mode`` in ``vcr_config`` win over its command-line
    option, hence the explicit lookup. Return it from your own ``vcr_config`` fixture.
    A ``vcr`` marker setting a hook or ``filter_headers`` would replace kavach's (the
    marker wins) and is a :class:`~kavach.errors.ConfigurationError`: pass those to
    :func:`~kavach.testing.polar_vcr_config` instead.
    """
    for marker in request.node.iter_markers("vcr"):
        for key in _REDACTING_KEYS:
            if key in marker.kwargs:
                raise ConfigurationError(
                    f"@pytest.mark.vcr({key}=...) would replace kavach's redaction "
                    "(pytest-recording lets the marker win over vcr_config) and let "
                    f"secrets into the cassette: give {key} to polar_vcr_config(...) in a "
                    "vcr_config fixture instead",
                    field=key,
                )
    mode = request.config.getoption("--record-mode", default=None) or "none"
    return polar_vcr_config(mode)
