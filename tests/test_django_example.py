"""examples/django_app.py over real HTTP: Django's pages, kavach's routes through the mount,
and Polar's webhook (signed by FakePolar) both through the mount and through the Django
view that calls ``handle_webhook`` itself."""

from __future__ import annotations

import base64
import importlib.util
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import attrs
import pytest
import requests
from django.conf import settings
from django.test import Client, RequestFactory, override_settings

from kavach import Kavach, PasswordHasher, WebhookVerificationError, create_kavach
from kavach.auth import polar
from kavach.polar import PolarPlugin, PolarSubscription
from kavach.testing import FakePolar, sign_webhook

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "django_app.py"
MOUNT_WEBHOOK = "/api/kavach/auth/polar/webhook"
VIEW_WEBHOOK = "/billing/polar-webhook"
PASSWORD = "correct horse battery"
SECRET = "whsec_" + base64.b64encode(b"kavach-django-test-secret-32byte").decode()


def load_example() -> ModuleType:
    """The example as a module, once per process: its name is Django's ROOT_URLCONF."""
    name = "django_app_example"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@contextmanager
def django_for(kavach: Kavach) -> Iterator[Any]:
    """The example's WSGI app for ``kavach``. Django is configured once per process:
    after the first test, ``settings.KAVACH`` is swapped with ``override_settings``."""
    example = load_example()
    if not settings.configured:
        yield example.create_app(kavach)
        return
    with override_settings(KAVACH=kavach):
        yield example.create_app(kavach)


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@attrs.define
class Site:
    fake: FakePolar
    kavach: Kavach
    url: str
    calls: list[tuple[str, PolarSubscription]]
    failures: list[int]

    def sign_up(self, email: str = "jane@acme.io") -> requests.Session:
        browser = requests.Session()
        answer = browser.post(
            self.url + "/api/kavach/auth/sign-up/email",
            json={"email": email, "password": PASSWORD, "name": "Jane"}, timeout=10,
        )
        assert answer.status_code == 200, answer.text
        return browser

    def user_id(self, email: str = "jane@acme.io") -> str:
        user = self.kavach.users.get_by_email(email)
        assert user is not None
        return user.id

    def pay(self, browser: requests.Session) -> dict[str, Any]:
        """Checkout through kavach's route (as the page's script would), then pay it."""
        answer = browser.post(
            self.url + "/api/kavach/auth/polar/checkout",
            json={"productId": self.fake.product_id},
            headers={"Origin": self.url}, timeout=10,
        )
        assert answer.status_code == 200, answer.text
        subscription = self.fake.complete_checkout(answer.json()["id"])
        self.fake.wait_for_deliveries()
        return subscription


@pytest.fixture
def site() -> Iterator[Site]:
    """FakePolar, a kavach with the Polar plugin wired to it, and the example app served
    by wsgiref on a free port."""
    calls: list[tuple[str, PolarSubscription]] = []
    failures: list[int] = []

    def on_change(user_id: str, sub: PolarSubscription) -> None:
        if failures:
            failures.pop()
            raise RuntimeError("the app's callback failed")
        calls.append((user_id, sub))

    with FakePolar() as fake:
        plugin = polar(access_token="polar_oat_fake", webhook_secret=fake.webhook_secret,
                       base_url=fake.url, on_subscription_change=on_change)
        with (
            create_kavach("memory://", plugins=[plugin],
                          password_hasher=PasswordHasher.fast()) as kavach,
            django_for(kavach) as app,
        ):
            server = make_server("127.0.0.1", 0, app, handler_class=QuietHandler,
                                 server_class=load_example().ThreadingWSGIServer)
            thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
            thread.start()
            try:
                yield Site(fake, kavach, f"http://127.0.0.1:{server.server_port}",
                           calls, failures)
            finally:
                server.shutdown()
                thread.join(5)
                server.server_close()


def test_django_page_says_not_signed_in_without_the_kavach_cookie(site: Site) -> None:
    page = requests.get(site.url + "/", timeout=10)
    assert page.status_code == 401
    assert "<h1>Not signed in</h1>" in page.text


def test_sign_up_through_the_mount_signs_the_user_in_on_the_django_page(site: Site) -> None:
    browser = site.sign_up()
    assert "kavach_session" in browser.cookies
    page = browser.get(site.url + "/", timeout=10)
    assert page.status_code == 200
    assert page.text == "<h1>Hello Jane</h1><p>Plan: Free plan</p>"


def test_kavach_answers_everything_under_its_base_path_and_django_the_rest(site: Site) -> None:
    kavach_404 = requests.get(site.url + "/api/kavach/no-such-route", timeout=10)
    assert kavach_404.status_code == 404
    assert kavach_404.json()["error"] == "not_found"
    for django_path in ("/no-such-page", "/api/kavachx/auth/session"):
        django_404 = requests.get(site.url + django_path, timeout=10)
        assert django_404.status_code == 404
        assert django_404.headers["Content-Type"].startswith("text/html")


def test_subscription_route_through_the_mount_reads_the_cookie(site: Site) -> None:
    browser = site.sign_up()
    answer = browser.get(site.url + "/api/kavach/auth/polar/subscription", timeout=10)
    assert answer.status_code == 200
    assert answer.json()["subscription"] is None
    assert requests.get(site.url + "/api/kavach/auth/polar/subscription",
                        timeout=10).status_code == 401


def test_checkout_through_the_mount_returns_a_polar_checkout(site: Site) -> None:
    browser = site.sign_up()
    answer = browser.post(site.url + "/api/kavach/auth/polar/checkout",
                          json={"productId": site.fake.product_id},
                          headers={"Origin": site.url}, timeout=10)
    assert answer.status_code == 200
    checkout = site.fake.checkouts[answer.json()["id"]]
    assert answer.json()["url"].startswith(site.fake.url + "/checkout/")
    assert checkout["external_customer_id"] == site.user_id()


def test_checkout_through_the_mount_from_another_origin_is_refused(site: Site) -> None:
    browser = site.sign_up()
    answer = browser.post(site.url + "/api/kavach/auth/polar/checkout",
                          json={"productId": site.fake.product_id},
                          headers={"Origin": "https://evil.example"}, timeout=10)
    assert answer.status_code == 403
    assert answer.json()["error"] == "csrf"


def test_djangos_csrf_middleware_is_on_for_djangos_own_urls(site: Site) -> None:
    """What makes the 2xx/400 webhook answers below meaningful: Django refuses a tokenless
    POST with 403 before any view runs."""
    assert requests.post(site.url + "/", timeout=10).status_code == 403


def test_djangos_test_client_skips_the_mount(site: Site) -> None:
    """``django.test.Client`` calls Django's handler, not the WSGI app around it: under
    the base path it gets Django's 404 where a real request gets kavach's answer."""
    with override_settings(ALLOWED_HOSTS=["testserver"]):
        assert Client().get("/api/kavach/auth/session").status_code == 404
    assert requests.get(site.url + "/api/kavach/auth/session", timeout=10).status_code == 401


@pytest.mark.parametrize("webhook_path", [MOUNT_WEBHOOK, VIEW_WEBHOOK])
def test_polar_webhooks_are_applied_and_shown_on_the_django_page(
    site: Site, webhook_path: str
) -> None:
    site.fake.add_webhook_endpoint(site.url + webhook_path)
    browser = site.sign_up()
    subscription = site.pay(browser)
    deliveries = site.fake.deliveries
    assert deliveries and all(d.status_code == 200 for d in deliveries)
    assert {d.url for d in deliveries} == {site.url + webhook_path}
    assert [(u, s.id) for u, s in site.calls][-1] == (site.user_id(), subscription["id"])
    page = browser.get(site.url + "/", timeout=10)
    assert f"Plan: {site.fake.product_id} (active), renews " in page.text


@pytest.mark.parametrize("webhook_path", [MOUNT_WEBHOOK, VIEW_WEBHOOK])
def test_polar_webhook_redelivered_is_a_duplicate_answered_200(
    site: Site, webhook_path: str
) -> None:
    site.fake.add_webhook_endpoint(site.url + webhook_path)
    site.pay(site.sign_up())
    first = site.fake.deliveries[0]
    site.fake.redeliver(first.webhook_id)
    site.fake.wait_for_deliveries()
    again = site.fake.deliveries[-1]
    assert (again.webhook_id, again.status_code) == (first.webhook_id, 200)


@pytest.mark.parametrize("webhook_path", [MOUNT_WEBHOOK, VIEW_WEBHOOK])
def test_polar_webhook_with_a_bad_signature_is_400_not_a_csrf_403(
    site: Site, webhook_path: str
) -> None:
    body = b'{"type":"checkout.created","timestamp":"2026-08-22T10:20:00Z","data":{}}'
    forged = sign_webhook(body, "whsec_" + "A" * 43)
    answer = requests.post(site.url + webhook_path, data=body, headers=forged, timeout=10)
    assert answer.status_code == 400
    assert answer.json()["error"] == "no_matching_signature"


@pytest.mark.parametrize("webhook_path", [MOUNT_WEBHOOK, VIEW_WEBHOOK])
def test_polar_webhook_without_signature_headers_is_400(site: Site, webhook_path: str) -> None:
    answer = requests.post(site.url + webhook_path, data=b"{}", timeout=10)
    assert answer.status_code == 400
    assert answer.json()["error"] == "missing_headers"


@pytest.mark.parametrize("webhook_path", [MOUNT_WEBHOOK, VIEW_WEBHOOK])
def test_polar_webhook_over_one_mib_is_413(site: Site, webhook_path: str) -> None:
    """kavach's 1 MiB limit, not Django's 2.5 MB DATA_UPLOAD_MAX_MEMORY_SIZE, answers."""
    body = b"x" * (1024 * 1024 + 1)
    signed = sign_webhook(body, site.fake.webhook_secret)
    answer = requests.post(site.url + webhook_path, data=body, headers=signed, timeout=10)
    assert answer.status_code == 413


def test_django_view_answers_500_when_the_callback_raises_and_polars_retry_applies_it(
    site: Site,
) -> None:
    site.fake.add_webhook_endpoint(site.url + VIEW_WEBHOOK)
    site.failures.append(1)
    subscription = site.pay(site.sign_up())
    statuses = [d.status_code for d in site.fake.deliveries]
    assert 500 in statuses
    assert statuses[-1] == 200
    assert site.calls and site.calls[0][1].id == subscription["id"]


# --- handle_webhook with Django's request.headers (HttpHeaders), no server ---------------


@pytest.fixture
def plain_plugin() -> Iterator[PolarPlugin]:
    """The Polar plugin (no API call is made: webhooks only), Django configured."""
    plugin = polar(access_token="polar_oat_fake", webhook_secret=SECRET)
    with create_kavach("memory://", plugins=[plugin]) as kavach, django_for(kavach):
        yield plugin


def _signed_django_request() -> Any:
    body = b'{"type":"checkout.created","timestamp":"2026-08-22T10:20:00Z","data":{}}'
    return RequestFactory().post(VIEW_WEBHOOK, data=body, content_type="application/json",
                                 headers=sign_webhook(body, SECRET))


def test_handle_webhook_accepts_djangos_request_headers(plain_plugin: PolarPlugin) -> None:
    request = _signed_django_request()
    assert "Webhook-Id" in list(request.headers)  # Django's spelling; kavach looks up any case
    outcome = plain_plugin.handle_webhook(request.body, request.headers)
    assert (outcome.status_code, outcome.outcome) == (200, "ignored")
    assert outcome.webhook_id == request.headers["webhook-id"]


def test_handle_webhook_given_request_meta_finds_no_signature(plain_plugin: PolarPlugin) -> None:
    """``request.META`` spells the headers ``HTTP_WEBHOOK_ID``: pass ``request.headers``."""
    request = _signed_django_request()
    with pytest.raises(WebhookVerificationError) as err:
        plain_plugin.handle_webhook(request.body, request.META)
    assert err.value.reason == "missing_headers"
