"""The offline demo page, driven end to end in headless Chromium (Selenium + chromedriver).

The browser signs up on ``/``, picks a plan, is sent to the fake Polar's hosted checkout
page, pays there, comes back to ``/?checkout_id=...`` and waits until the page shows the
plan active. Needs Debian's ``chromium`` and ``chromium-driver`` packages; skipped
without them.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")

from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from kavach import create_kavach  # noqa: E402
from kavach.http.demo import DemoPage, PolarProducts  # noqa: E402
from kavach.http.messages import Request, Response  # noqa: E402
from kavach.http.router import Router  # noqa: E402
from kavach.http.server import make_server  # noqa: E402
from kavach.passwords import PasswordHasher  # noqa: E402
from kavach.polar.plugin import polar  # noqa: E402
from kavach.testing import FakePolar  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
DEMO_URL = re.compile(r"offline demo at (http://\S+/)")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
WAIT_SECONDS = 15
PASSWORD = "correct horse battery"

Driver = Any  # selenium.webdriver.Chrome


@pytest.fixture
def browser() -> Iterator[Driver]:
    """Headless Chromium with a throwaway profile."""
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip("chromium not installed (apt-get install chromium chromium-driver)")
    profile = tempfile.mkdtemp(prefix="kavach-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--window-size=1000,900", f"--user-data-dir={profile}",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT_SECONDS)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


class ServeProcess:
    """``python -m kavach serve --port 0 --database memory:// --fake-polar``; ``url`` is
    the demo page's URL as the server logs it."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.url = ""
        self._ready = threading.Event()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "kavach", "serve", "--port", "0",
             "--database", "memory://", "--fake-polar"],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._collect, daemon=True).start()
        if not self._ready.wait(20) or not self.url:
            self.stop()
            raise AssertionError("kavach serve did not start:\n" + "".join(self.lines))

    def _collect(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)
            match = DEMO_URL.search(line)
            if match:
                self.url = match.group(1)
                self._ready.set()
        self._ready.set()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


@pytest.fixture
def served() -> Iterator[ServeProcess]:
    process = ServeProcess()
    yield process
    process.stop()


class CheckoutLookupDown(Router):
    """The router with the return-from-checkout lookup failing as when Polar's API is
    unreachable, so only the (late) webhook can activate the plan."""

    def dispatch(self, request: Request) -> Response:
        if request.path.startswith(self.base_path + "/auth/polar/checkout/"):
            return Response.error(502, "polar_error", "Polar request failed (status 503)")
        return super().dispatch(request)


@pytest.fixture
def late_webhooks() -> Iterator[tuple[str, FakePolar]]:
    """A demo server whose fake Polar delivers webhooks 3 s after the payment, and whose
    checkout lookup fails; yields ``(demo url, fake)``."""
    with FakePolar(deliver="background") as fake:
        fake.delay = 3.0
        plugin = polar(
            access_token="polar_oat_test",
            webhook_secret=fake.webhook_secret,
            base_url=fake.url,
        )
        kavach = create_kavach(
            "memory://", plugins=[plugin], password_hasher=PasswordHasher.fast()
        )
        router = CheckoutLookupDown(
            kavach, demo=DemoPage(plans=PolarProducts(fake.url, "polar_oat_test"))
        )
        server = make_server(kavach, "127.0.0.1", 0, router=router)
        thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        fake.add_webhook_endpoint(f"{server.url}{kavach.config.base_path}/auth/polar/webhook")
        try:
            yield server.url + "/", fake
        finally:
            server.shutdown()
            server.server_close()
            thread.join(5)
            kavach.close()


# -- page steps -----------------------------------------------------------------------


def wait_until(driver: Driver, condition: Callable[[Driver], Any], what: str) -> Any:
    """``condition``'s first truthy value within WAIT_SECONDS (polling every 0.1 s)."""
    return WebDriverWait(driver, WAIT_SECONDS, poll_frequency=0.1).until(condition, what)


def text_of(driver: Driver, element_id: str) -> str:
    text: str = driver.find_element(By.ID, element_id).text
    return text


def open_demo(driver: Driver, url: str) -> None:
    driver.get(url)
    wait_until(
        driver,
        lambda d: d.find_element(By.ID, "app").get_attribute("data-ready") == "true",
        "the demo page to start",
    )


def sign_up(driver: Driver, email: str) -> None:
    driver.find_element(By.ID, "email").send_keys(email)
    driver.find_element(By.ID, "password").send_keys(PASSWORD)
    driver.find_element(By.CSS_SELECTOR, "[data-testid=sign-up]").click()
    wait_until(driver, lambda d: d.find_element(By.ID, "account").is_displayed(), "signed in")


def upgrade_and_pay(driver: Driver, fake_url_prefix: str | None = None) -> None:
    """Click Upgrade, then Pay on the fake Polar's hosted checkout page."""
    demo_origin = driver.current_url.split("/", 3)[:3]
    driver.find_element(By.CSS_SELECTOR, "[data-testid=upgrade]").click()
    wait_until(driver, lambda d: "/checkout/polar_c_" in d.current_url, "the checkout page")
    if fake_url_prefix is not None:
        assert driver.current_url.startswith(fake_url_prefix)
    assert driver.current_url.split("/", 3)[:3] != demo_origin
    driver.find_element(By.CSS_SELECTOR, "form[action$='/pay'] button[type=submit]").click()
    wait_until(
        driver,
        lambda d: d.current_url.split("/", 3)[:3] == demo_origin,
        "the redirect back to the demo page",
    )


# -- tests -------------------------------------------------------------------------------


def test_demo_page_takes_a_new_user_from_sign_up_to_an_active_plan(
    browser: Driver, served: ServeProcess, tmp_path: Path
) -> None:
    open_demo(browser, served.url)
    sign_up(browser, "jane@acme.io")
    assert text_of(browser, "account-email") == "jane@acme.io"
    assert text_of(browser, "plan") == "none"

    upgrade_and_pay(browser)

    wait_until(browser, lambda d: text_of(d, "sub-status") == "active", "the plan to be active")
    assert text_of(browser, "plan") == "Pro (active)"
    assert text_of(browser, "sub-product") == "Pro"
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", text_of(browser, "sub-period-end"))
    assert text_of(browser, "sub-cancel") == "no"
    wait_until(browser, lambda d: "checkout_id" not in d.current_url, "the URL cleaned up")
    shot = tmp_path / "demo.png"
    assert browser.save_screenshot(str(shot))
    assert shot.read_bytes().startswith(PNG_MAGIC)


def test_demo_page_polls_until_a_late_webhook_activates_the_plan(
    browser: Driver, late_webhooks: tuple[str, FakePolar]
) -> None:
    url, fake = late_webhooks
    open_demo(browser, url)
    sign_up(browser, "omar@acme.io")

    upgrade_and_pay(browser, fake.url)

    wait_until(browser, lambda d: "Waiting" in text_of(d, "message"), "the waiting notice")
    assert text_of(browser, "plan") == "none"  # paid, but no webhook yet
    wait_until(browser, lambda d: text_of(d, "sub-status") == "active", "the plan to be active")
    assert [d.ok for d in fake.deliveries if d.event_type == "subscription.active"] == [True]
