"""examples/django_app.py over real HTTP: Django's pages, kavach's routes through the mount,
and Polar's webhook (signed by FakePolar) both through the mount and through the Django
view that calls ``handle_webhook`` itself."""

from __future__ import annotations

import ast
import base64
import importlib.util
import json
import re
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

from kavach import (
    Kavach,
    PasswordHasher,
    StoreError,
    WebhookVerificationError,
    create_kavach,
)
from kavach.auth import polar
from kavach.polar import PolarPlugin, PolarSubscription
from kavach.testing import FakePolar, sign_webhook

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "django_app.py"
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
    #: ``on_subscription_change`` waits on the first event here (popped), after setting
    #: ``entered``: a delivery held mid-callback.
    held: list[threading.Event] = attrs.Factory(list)
    entered: threading.Event = attrs.Factory(threading.Event)

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
    held: list[threading.Event] = []
    entered = threading.Event()

    def on_change(user_id: str, sub: PolarSubscription) -> None:
        if held:
            release = held.pop()
            entered.set()
            release.wait(10)
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
                           calls, failures, held, entered)
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
    assert requests.get(site.url + "/api/kavach", timeout=10).json()["error"] == "not_found"
    for django_path in ("/no-such-page", "/api/kavachx/auth/session", "/api/kavachX"):
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


def subscription_event(user_id: str, subscription_id: str) -> bytes:
    """A signed-able ``subscription.updated`` for ``user_id`` (no API call needed)."""
    return json.dumps({
        "type": "subscription.updated", "timestamp": "2026-08-22T10:20:00Z",
        "data": {"id": subscription_id, "status": "active", "product_id": "prod_1",
                 "customer_id": "cus_1", "created_at": "2026-08-22T10:00:00Z",
                 "modified_at": "2026-08-22T10:10:00Z",
                 "current_period_end": "2026-09-22T10:00:00Z",
                 "customer": {"id": "cus_1", "external_id": user_id,
                              "email": "jane@acme.io"}},
    }).encode()


@pytest.mark.parametrize("webhook_path", [MOUNT_WEBHOOK, VIEW_WEBHOOK])
def test_polar_webhook_signed_but_not_an_event_is_400(site: Site, webhook_path: str) -> None:
    for body in (b"[]", b'{"data":{}}'):
        signed = sign_webhook(body, site.fake.webhook_secret)
        answer = requests.post(site.url + webhook_path, data=body, headers=signed, timeout=10)
        assert answer.status_code == 400
        assert answer.json()["error"] == "bad_envelope"


@pytest.mark.parametrize("webhook_path", [MOUNT_WEBHOOK, VIEW_WEBHOOK])
def test_polar_webhook_copy_arriving_mid_callback_is_503_with_retry_after(
    site: Site, webhook_path: str
) -> None:
    site.sign_up()
    body = subscription_event(site.user_id(), "sub_race")
    signed = sign_webhook(body, site.fake.webhook_secret)  # one webhook-id for both copies
    release = threading.Event()
    site.held.append(release)
    first: list[requests.Response] = []
    thread = threading.Thread(target=lambda: first.append(
        requests.post(site.url + webhook_path, data=body, headers=signed, timeout=20)))
    thread.start()
    try:
        assert site.entered.wait(10)
        copy = requests.post(site.url + webhook_path, data=body, headers=signed, timeout=10)
    finally:
        release.set()
        thread.join(20)
    assert copy.status_code == 503
    assert copy.json()["error"] == "in_progress"
    assert int(copy.headers["Retry-After"]) > 0
    assert first[0].status_code == 200
    assert first[0].json()["outcome"] == "applied"


@pytest.mark.parametrize("webhook_path", [MOUNT_WEBHOOK, VIEW_WEBHOOK])
def test_polar_webhook_store_failure_is_a_json_500_without_the_payload_even_with_debug(
    site: Site, webhook_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kavach's route answers 500 ``internal_error``; Django's own 500 page would be HTML
    and, with DEBUG, a traceback showing the delivery (the customer's email)."""
    def store_down(*_args: Any, **_kwargs: Any) -> Any:
        raise StoreError("database is locked")

    monkeypatch.setattr(site.kavach.store, "ingest_event", store_down)
    site.sign_up()
    body = subscription_event(site.user_id(), "sub_store_down")
    signed = sign_webhook(body, site.fake.webhook_secret)
    with override_settings(DEBUG=True):
        answer = requests.post(site.url + webhook_path, data=body, headers=signed, timeout=10)
    assert "jane@acme.io" not in answer.text
    assert answer.status_code == 500
    assert answer.json()["error"] == "internal_error"


def test_django_view_over_djangos_upload_limit_is_413_like_the_mount(site: Site) -> None:
    """Over DATA_UPLOAD_MAX_MEMORY_SIZE (2.5 MB), reading ``request.body`` raises: the view
    answers 413 as kavach's route does, not Django's 400 page."""
    body = b"x" * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1)
    signed = sign_webhook(body, site.fake.webhook_secret)
    for webhook_path in (MOUNT_WEBHOOK, VIEW_WEBHOOK):
        answer = requests.post(site.url + webhook_path, data=body, headers=signed, timeout=10)
        assert answer.status_code == 413, webhook_path
        assert answer.json()["error"] == "body_too_large"


def test_mount_under_a_script_name_prefix() -> None:
    """The site under /shop (waitress's url_prefix sets SCRIPT_NAME as gunicorn's
    SCRIPT_NAME does): the mount routes on PATH_INFO, kavach's routes are at
    /shop/api/kavach/..., and its cookie reaches the Django page at /shop/."""
    waitress = pytest.importorskip("waitress")
    with (
        create_kavach("memory://", password_hasher=PasswordHasher.fast()) as kavach,
        django_for(kavach) as app,
    ):
        server = waitress.create_server(app, host="127.0.0.1", port=0, url_prefix="/shop")
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{server.effective_port}/shop"
        try:
            browser = requests.Session()
            signed_up = browser.post(url + "/api/kavach/auth/sign-up/email", timeout=10,
                                     json={"email": "jane@acme.io", "password": PASSWORD,
                                           "name": "Jane"})
            assert signed_up.status_code == 200, signed_up.text
            assert browser.get(url + "/api/kavach/auth/session", timeout=10).status_code == 200
            page = browser.get(url + "/", timeout=10)
            assert page.text == "<h1>Hello Jane</h1><p>Plan: Free plan</p>"
            assert browser.get(url + "/api/kavach", timeout=10).json()["error"] == "not_found"
            django_404 = browser.get(url + "/api/kavachX", timeout=10)
            assert django_404.status_code == 404
            assert django_404.headers["Content-Type"].startswith("text/html")
        finally:
            server.close()
            thread.join(5)


def test_mount_refuses_base_path_slash() -> None:
    """base_path "/" is "" in the config: every path would start with the prefix, and no
    request would ever reach Django."""
    example = load_example()
    with create_kavach("memory://", base_path="/") as kavach, pytest.raises(ValueError):
        example.KavachMount(lambda environ, start_response: [], kavach)


# --- the README's Django snippets are the example's code ----------------------------------


def readme_django_snippets() -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start = readme.index("#### Django")
    section = readme[start:readme.index("\n### ", start)]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def _handled(source: str, function: str) -> list[str]:
    """The exception names a function's ``except`` clauses catch, in order."""
    tree = ast.parse(source)
    node = next(n for n in ast.walk(tree)
                if isinstance(n, ast.FunctionDef) and n.name == function)
    return [ast.unparse(h.type) for h in ast.walk(node)
            if isinstance(h, ast.ExceptHandler) and h.type is not None]


def test_readme_webhook_view_handles_what_the_example_handles() -> None:
    snippets = readme_django_snippets()
    assert len(snippets) == 3
    readme_view = next(s for s in snippets if "def polar_webhook" in s)
    example = EXAMPLE.read_text(encoding="utf-8")
    assert _handled(readme_view, "polar_webhook") == _handled(example, "polar_webhook")
    for status in ("413", "400", "500", "503", "outcome.status_code"):
        assert f"status={status}" in readme_view


def test_readme_kavach_mount_routes_like_the_example() -> None:
    wsgi = next(s for s in readme_django_snippets() if "class KavachMount" in s)
    namespace: dict[str, Any] = {}
    exec(wsgi[wsgi.index("class KavachMount"):wsgi.index("application = KavachMount")],
         namespace)

    def app(name: str) -> Any:
        return lambda environ, start_response: [name.encode()]

    with create_kavach("memory://") as kavach:
        mounts = [cls(app("django"), kavach)
                  for cls in (namespace["KavachMount"], load_example().KavachMount)]
        for mount in mounts:
            mount.kavach_app = app("kavach")
        for path_info, expected in [("/api/kavach", b"kavach"), ("/api/kavach/", b"kavach"),
                                    ("/api/kavach/auth/session", b"kavach"),
                                    ("/api/kavachX", b"django"), ("/", b"django"),
                                    ("/shop/api/kavach/auth/session", b"django")]:
            for mount in mounts:
                assert mount({"PATH_INFO": path_info, "SCRIPT_NAME": "/shop"},
                             None) == [expected], path_info
    with create_kavach("memory://", base_path="/") as kavach, pytest.raises(ValueError):
        namespace["KavachMount"](app("django"), kavach)


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
