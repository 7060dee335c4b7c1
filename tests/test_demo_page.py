"""The offline demo page without a browser: routing, rendering, plans, CSP, and the
same-origin checkout it relies on (the browser flow is in test_demo_browser.py)."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import threading
from collections.abc import Iterator
from typing import Any

import attrs
import pytest
import requests

from kavach import create_kavach
from kavach.core import Kavach
from kavach.http.demo import DemoPage, Plan, PolarProducts, demo_router, price_text
from kavach.http.messages import Request
from kavach.http.router import Router
from kavach.http.server import make_server
from kavach.passwords import PasswordHasher
from kavach.polar.plugin import polar
from kavach.testing import FakePolar

TOKEN = "polar_oat_test"


@attrs.frozen
class Demo:
    """A demo server wired to a FakePolar: ``url`` is the server root."""

    url: str
    kavach: Kavach
    fake: FakePolar


@pytest.fixture
def fake() -> Iterator[FakePolar]:
    with FakePolar() as running:
        yield running


@pytest.fixture
def demo(fake: FakePolar) -> Iterator[Demo]:
    plugin = polar(access_token=TOKEN, webhook_secret=fake.webhook_secret, base_url=fake.url)
    kavach = create_kavach("memory://", plugins=[plugin], password_hasher=PasswordHasher.fast())
    server = make_server(kavach, "127.0.0.1", 0, router=demo_router(kavach, fake.url, TOKEN))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield Demo(server.url, kavach, fake)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
        kavach.close()


def config_of(html: str) -> dict[str, Any]:
    """The JSON the page hands its script."""
    match = re.search(r'<script type="application/json" id="demo-config">(.*?)</script>', html)
    assert match is not None
    loaded: dict[str, Any] = json.loads(match.group(1))
    return loaded


def test_root_is_not_found_without_the_demo() -> None:
    with create_kavach("memory://") as kavach:
        response = Router(kavach).dispatch(Request("GET", "/", headers=None))
    assert response.status == 404


def test_demo_page_is_served_at_root_as_html(demo: Demo) -> None:
    response = requests.get(demo.url + "/", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    assert 'id="upgrade"' in response.text


def test_demo_page_answers_only_get(demo: Demo) -> None:
    response = requests.post(demo.url + "/", timeout=10)
    assert response.status_code == 405 and response.headers["Allow"] == "GET"


def test_demo_page_tells_the_script_where_the_routes_are(demo: Demo) -> None:
    html = requests.get(demo.url + "/", timeout=10).text
    assert config_of(html)["basePath"] == "/api/kavach"


def test_demo_page_offers_the_fakes_recurring_products_cheapest_first(demo: Demo) -> None:
    team = demo.fake.add_product("Team", amount=5000, recurring_interval="year")
    demo.fake.add_product("Lifetime", amount=100, recurring_interval=None)
    demo.fake.add_product("Starter", amount=500, currency="eur")
    html = requests.get(demo.url + "/", timeout=10).text
    plans = config_of(html)["plans"]
    assert plans == [
        {"id": plans[0]["id"], "name": "Starter", "price": "€5.00 / month"},
        {"id": demo.fake.product_id, "name": "Pro", "price": "$20.00 / month"},
        {"id": team, "name": "Team", "price": "$50.00 / year"},
    ]


def test_demo_page_escapes_product_names_in_html_and_script_data(demo: Demo) -> None:
    demo.fake.add_product("</script><b>Evil</b>", amount=1)
    html = requests.get(demo.url + "/", timeout=10).text
    assert "<b>Evil</b>" not in html
    assert "&lt;/script&gt;&lt;b&gt;Evil&lt;/b&gt;" in html
    assert {"name": "</script><b>Evil</b>"}.items() <= config_of(html)["plans"][0].items()


def test_demo_page_allows_only_its_own_inline_script_and_style(demo: Demo) -> None:
    response = requests.get(demo.url + "/", timeout=10)
    policy = response.headers["Content-Security-Policy"]
    script = re.search(r"<script>(.*?)</script>", response.text, re.DOTALL)
    style = re.search(r"<style>(.*?)</style>", response.text, re.DOTALL)
    assert script is not None and style is not None

    def digest(text: str) -> str:
        return base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()

    assert f"script-src 'sha256-{digest(script.group(1))}';" in policy
    assert f"style-src 'sha256-{digest(style.group(1))}';" in policy
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy


def test_demo_page_makes_no_external_requests(demo: Demo) -> None:
    html = requests.get(demo.url + "/", timeout=10).text
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)


def test_demo_page_keeps_the_origin_header_on_same_origin_posts(demo: Demo) -> None:
    # "no-referrer" would make Chromium send "Origin: null" on same-origin POSTs.
    response = requests.get(demo.url + "/", timeout=10)
    assert response.headers["Referrer-Policy"] == "same-origin"


def test_demo_page_renders_without_plans_when_polar_is_unreachable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    with create_kavach("memory://") as kavach:
        router = Router(kavach, demo=DemoPage(plans=PolarProducts(dead, TOKEN, timeout=2)))
        response = router.dispatch(Request("GET", "/"))
    assert response.status == 200
    assert b'id="no-plans"' in response.body


def test_checkout_back_to_the_servers_own_origin_is_trusted(demo: Demo) -> None:
    http = requests.Session()
    origin = {"Origin": demo.url}
    signed_up = http.post(
        demo.url + "/api/kavach/auth/sign-up/email",
        json={"email": "jane@acme.io", "password": "correct horse battery"},
        headers=origin, timeout=10,
    )
    assert signed_up.status_code == 200
    response = http.post(
        demo.url + "/api/kavach/auth/polar/checkout",
        json={"productId": demo.fake.product_id, "successUrl": demo.url + "/"},
        headers=origin, timeout=10,
    )
    assert response.status_code == 200, response.text
    checkout = demo.fake.checkouts[response.json()["id"]]
    assert checkout["success_url"] == f"{demo.url}/?checkout_id={checkout['id']}"


@pytest.mark.parametrize(
    ("amount", "currency", "interval", "count", "text"),
    [
        (2000, "usd", "month", 1, "$20.00 / month"),
        (123456, "eur", "year", 1, "€1,234.56 / year"),
        (1500, "jpy", "month", 3, "¥1,500 / 3 months"),
        (999, "chf", None, 1, "9.99 CHF"),
    ],
)
def test_price_text_formats_minor_units(
    amount: int, currency: str, interval: str | None, count: int, text: str
) -> None:
    assert price_text(amount, currency, interval, count) == text


def test_plan_from_product_skips_one_time_products() -> None:
    product = {"id": "p", "name": "Once", "recurring_interval": None, "prices": []}
    assert Plan.from_product(product) is None
