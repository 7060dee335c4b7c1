"""``kavach polar trigger`` and ``kavach polar doctor``, against FakePolar, a kavach server
with the webhook route, and small hand-made receivers (all on 127.0.0.1)."""

from __future__ import annotations

import base64
import io
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import attrs
import polar.v2026_04.outputs as polar_types
import pytest
import requests
from polar.base import deserialize
from polar.webhooks import _verify_signature

from kavach import create_kavach
from kavach.cli import main
from kavach.cli_polar import (
    KNOWN_EVENTS,
    SUBSCRIPTION_EVENTS,
    Doctor,
    DoctorSettings,
    mask,
    sample_event,
)
from kavach.core import Kavach
from kavach.errors import ConfigurationError
from kavach.http.server import make_server
from kavach.passwords import PasswordHasher
from kavach.polar.plugin import PolarPlugin, polar
from kavach.polar.webhooks import WebhookVerifier, secret_keys
from kavach.testing import FakePolar
from tests.local_http import LocalServer

TOKEN = "polar_oat_" + "Q" * 39 + "r2D2"
SANDBOX_TOKEN = "polar_oat_" + "S" * 39 + "sb01"
SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode("ascii")


# -- helpers -------------------------------------------------------------------------------


@attrs.frozen
class Run:
    """One ``kavach ...`` run: exit status and standard output."""

    status: int
    out: str

    def check(self, name: str) -> tuple[str, str]:
        """``(level, message)`` of the single doctor line for the check ``name``."""
        found = [
            (ln[:4].strip(), ln[23:]) for ln in self.out.splitlines() if ln[6:22].strip() == name
        ]
        assert len(found) == 1, self.out
        return found[0]


def kavach(*argv: str, env: dict[str, str] | None = None) -> Run:
    out = io.StringIO()
    status = main(list(argv), environ=env or {}, stdout=out)
    return Run(status, out.getvalue())


Answer = tuple[int, dict[str, str], bytes]


class Receiver:
    """A webhook receiver on a free port: ``answer(headers, body)`` decides each reply
    (after ``delay`` seconds); every request is kept in ``received``."""

    def __init__(
        self, answer: Callable[[dict[str, str], bytes], Answer] | None = None, delay: float = 0
    ) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.answer = answer or (lambda _h, _b: (200, {}, b'{"ok":true}'))
        self.delay = delay
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                receiver.received.append((headers, body))
                time.sleep(receiver.delay)
                status, extra, reply = receiver.answer(headers, body)
                try:
                    self.send_response(status)
                    for name, value in extra.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(reply)))
                    self.end_headers()
                    self.wfile.write(reply)
                except OSError:  # the client gave up waiting
                    self.close_connection = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._http = LocalServer(Handler)
        self.url = f"{self._http.origin}/webhook"

    def close(self) -> None:
        self._http.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    yield rec
    rec.close()


def make_receiver(request: pytest.FixtureRequest, **options: Any) -> Receiver:
    rec = Receiver(**options)
    request.addfinalizer(rec.close)
    return rec


@attrs.frozen
class App:
    """A kavach server with the Polar plugin (pointed at a FakePolar) and its webhook URL."""

    kavach: Kavach
    plugin: PolarPlugin
    webhook_url: str


@pytest.fixture
def fake() -> Iterator[FakePolar]:
    with FakePolar(token=TOKEN, webhook_secret=SECRET) as running:
        yield running


@pytest.fixture
def app(fake: FakePolar) -> Iterator[App]:
    plugin = polar(access_token=TOKEN, webhook_secret=SECRET, base_url=fake.url)
    kv = create_kavach("memory://", plugins=[plugin], password_hasher=PasswordHasher.fast())
    server = make_server(kv, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield App(kv, plugin, f"{server.url}{kv.config.base_path}/auth/polar/webhook")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
        kv.close()


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/webhook"


# -- sample events -------------------------------------------------------------------------

_SCHEMAS: dict[str, Any] = {
    "subscription.": polar_types.Subscription,
    "order.": polar_types.Order,
    "checkout.": polar_types.Checkout,
    "customer.": polar_types.Customer,
}
# customer.state_changed is left out: polar-sdk 1.0.2 types CustomerStateSubscription.status
# with the benefit-grant literal ("granted" | "disabled"), so no real payload fits it either.
_CHECKED_EVENTS = [
    e for e in KNOWN_EVENTS
    if e != "customer.state_changed" and any(e.startswith(p) for p in _SCHEMAS)
]


@pytest.mark.parametrize("event_type", _CHECKED_EVENTS)
def test_sample_event_data_fits_polars_own_schema(event_type: str) -> None:
    event = sample_event(event_type, user_id="user_1")
    schema = next(s for p, s in _SCHEMAS.items() if event_type.startswith(p))
    deserialize(event["data"], schema)


def test_sample_subscription_event_names_the_user_as_external_id_and_in_metadata() -> None:
    data = sample_event("subscription.active", user_id="user_42")["data"]
    assert data["customer"]["external_id"] == "user_42"
    assert data["metadata"] == {"kavach_user_id": "user_42"}


def test_samples_of_one_subscription_keep_its_customer_product_and_checkout() -> None:
    # trigger --subscription-id walks one subscription through its life: its customer,
    # product and checkout stay the same from event to event (kavach warned of a
    # customer change on every step).
    events = [sample_event(t, user_id="user_42", subscription_id="sub_1")["data"]
              for t in ("subscription.active", "subscription.canceled", "subscription.revoked")]
    for key in ("customer_id", "product_id", "checkout_id"):
        assert len({data[key] for data in events}) == 1, key
    assert len({data["customer"]["id"] for data in events}) == 1
    other = sample_event("subscription.active", user_id="user_43")["data"]
    assert other["customer_id"] != events[0]["customer_id"]
    anonymous = [sample_event("order.created")["data"] for _ in range(2)]
    assert anonymous[0] != anonymous[1]


@pytest.mark.parametrize(
    ("event_type", "status", "cancel_at_period_end"),
    [
        ("subscription.active", "active", False),
        ("subscription.canceled", "active", True),
        ("subscription.revoked", "canceled", False),
        ("subscription.past_due", "past_due", False),
        ("subscription.paused", "paused", False),
    ],
)
def test_sample_subscription_event_carries_the_state_its_type_implies(
    event_type: str, status: str, cancel_at_period_end: bool
) -> None:
    data = sample_event(event_type)["data"]
    assert (data["status"], data["cancel_at_period_end"]) == (status, cancel_at_period_end)


def test_sample_revoked_subscription_has_ended() -> None:
    data = sample_event("subscription.revoked")["data"]
    assert data["ended_at"] is not None and data["ends_at"] == data["ended_at"]


def test_sample_event_of_an_unknown_type_has_a_minimal_data_object() -> None:
    event = sample_event("kavach.ping")
    assert event["type"] == "kavach.ping" and set(event["data"]) == {
        "id", "created_at", "modified_at"
    }


def test_every_subscription_event_type_is_a_known_event_type() -> None:
    assert set(SUBSCRIPTION_EVENTS) <= set(KNOWN_EVENTS)


# -- trigger -------------------------------------------------------------------------------


def test_trigger_subscription_active_activates_the_users_plan(app: App) -> None:
    user = app.kavach.users.create("jane@acme.io", password="correct horse battery")
    run = kavach("polar", "trigger", "subscription.active", "--to", app.webhook_url,
                 "--secret", SECRET, "--user", user.id)
    assert run.status == 0, run.out
    subscription = app.plugin.get_subscription(user.id)
    assert subscription is not None and subscription.status == "active"


def test_trigger_revoked_after_active_ends_the_users_plan(app: App) -> None:
    user = app.kavach.users.create("jane@acme.io", password="correct horse battery")
    sub_id = "5b0f1c1e-8d1e-4c55-9a43-0d5d6c3f6a10"
    for event in ("subscription.active", "subscription.revoked"):
        run = kavach("polar", "trigger", event, "--to", app.webhook_url, "--secret", SECRET,
                     "--user", user.id, "--subscription-id", sub_id)
        assert run.status == 0, run.out
    assert app.plugin.get_subscription(user.id) is None


def test_trigger_prints_status_latency_and_response_body(app: App) -> None:
    run = kavach("polar", "trigger", "order.paid", "--to", app.webhook_url, "--secret", SECRET)
    assert re.search(r"^200 OK in \d+\.\d ms$", run.out, re.MULTILINE), run.out
    assert '"received":true' in run.out


def test_trigger_signature_passes_polars_own_verifier(receiver: Receiver) -> None:
    kavach("polar", "trigger", "subscription.updated", "--to", receiver.url, "--secret", SECRET)
    headers, body = receiver.received[0]
    _verify_signature(body.decode("utf-8"), headers, SECRET)


def test_trigger_signs_with_the_standard_key_of_a_whsec_secret_by_default(
    receiver: Receiver,
) -> None:
    kavach("polar", "trigger", "order.paid", "--to", receiver.url, "--secret", SECRET)
    headers, body = receiver.received[0]
    assert WebhookVerifier(SECRET).verify(body, headers) == "standard"


def test_trigger_signs_with_the_legacy_key_when_asked(receiver: Receiver) -> None:
    kavach("polar", "trigger", "order.paid", "--to", receiver.url, "--secret", SECRET,
           "--derivation", "legacy")
    headers, body = receiver.received[0]
    assert WebhookVerifier(SECRET).verify(body, headers) == "legacy"


def test_trigger_sends_polars_user_agent(receiver: Receiver) -> None:
    kavach("polar", "trigger", "order.paid", "--to", receiver.url, "--secret", SECRET)
    assert receiver.received[0][0]["user-agent"] == "polar.sh webhooks"


def test_trigger_reads_the_secret_from_the_environment(receiver: Receiver) -> None:
    run = kavach("polar", "trigger", "order.paid", "--to", receiver.url,
                 env={"POLAR_WEBHOOK_SECRET": SECRET})
    assert run.status == 0
    headers, body = receiver.received[0]
    WebhookVerifier(SECRET).verify(body, headers)


def test_trigger_without_a_secret_is_a_usage_error(
    receiver: Receiver, capsys: pytest.CaptureFixture[str]
) -> None:
    run = kavach("polar", "trigger", "order.paid", "--to", receiver.url)
    assert run.status == 2
    assert "--secret is required" in capsys.readouterr().err
    assert receiver.received == []


def test_trigger_refuses_the_standard_key_for_a_secret_without_one(receiver: Receiver) -> None:
    run = kavach("polar", "trigger", "order.paid", "--to", receiver.url,
                 "--secret", "polar_whs_" + "a" * 40, "--derivation", "standard")
    assert run.status == 2 and receiver.received == []


def test_trigger_exits_1_when_the_receiver_rejects_the_signature(app: App) -> None:
    other = "whsec_" + base64.b64encode(b"x" * 32).decode("ascii")
    run = kavach("polar", "trigger", "subscription.active", "--to", app.webhook_url,
                 "--secret", other)
    assert run.status == 1
    assert re.search(r"^400 Bad Request in", run.out, re.MULTILINE), run.out


def test_trigger_counts_a_redirect_as_a_failure(request: pytest.FixtureRequest) -> None:
    rec = make_receiver(request, answer=lambda _h, _b: (307, {"Location": "/elsewhere"}, b""))
    run = kavach("polar", "trigger", "order.paid", "--to", rec.url, "--secret", SECRET)
    assert run.status == 1
    assert "does not follow redirects" in run.out
    assert len(rec.received) == 1  # the redirect was not followed


def test_trigger_exits_1_when_nothing_listens() -> None:
    run = kavach("polar", "trigger", "order.paid", "--to", closed_port_url(), "--secret", SECRET)
    assert run.status == 1 and "connection failed" in run.out


def test_trigger_sends_an_unknown_type_with_a_note(receiver: Receiver) -> None:
    run = kavach("polar", "trigger", "kavach.ping", "--to", receiver.url, "--secret", SECRET)
    assert run.status == 0 and "not a Polar event type" in run.out
    assert b'"type":"kavach.ping"' in receiver.received[0][1]


def test_trigger_never_prints_the_secret(receiver: Receiver) -> None:
    run = kavach("polar", "trigger", "subscription.active", "--to", receiver.url,
                 "--secret", SECRET)
    assert SECRET not in run.out and SECRET[6:] not in run.out


def test_trigger_truncates_a_long_response_body(request: pytest.FixtureRequest) -> None:
    rec = make_receiver(request, answer=lambda _h, _b: (200, {}, b"x" * 5000))
    run = kavach("polar", "trigger", "order.paid", "--to", rec.url, "--secret", SECRET)
    assert "x" * 300 + "…" in run.out and "x" * 301 not in run.out


# -- doctor: configuration -------------------------------------------------------------------


def env_for(fake: FakePolar, **extra: str) -> dict[str, str]:
    return {"POLAR_ACCESS_TOKEN": TOKEN, "POLAR_WEBHOOK_SECRET": SECRET,
            "POLAR_API_URL": fake.url, **extra}


def test_doctor_passes_a_valid_configuration(fake: FakePolar) -> None:
    run = kavach("polar", "doctor", env=env_for(fake))
    assert run.status == 0, run.out
    assert run.check("token valid")[0] == "OK"
    assert "FAIL" not in run.out


def test_doctor_prints_one_aligned_line_per_check_and_a_summary(fake: FakePolar) -> None:
    lines = kavach("polar", "doctor", env=env_for(fake)).out.splitlines()
    assert lines[0] == "OK    access token     organization access token polar_oat_…r2D2"
    assert [ln[:6] for ln in lines[:-1]] == ["OK    "] * (len(lines) - 1)
    assert lines[-1] == "all checks passed"


def test_doctor_shows_only_the_token_prefix_and_last_four(fake: FakePolar) -> None:
    run = kavach("polar", "doctor", env=env_for(fake))
    assert "polar_oat_…r2D2" in run.check("access token")[1]
    assert TOKEN not in run.out and TOKEN[10:-4] not in run.out


def test_doctor_never_prints_the_webhook_secret(fake: FakePolar) -> None:
    run = kavach("polar", "doctor", env=env_for(fake))
    assert SECRET[6:-4] not in run.out


def test_doctor_fails_without_a_token() -> None:
    run = kavach("polar", "doctor", env={"POLAR_WEBHOOK_SECRET": SECRET})
    assert run.status == 1
    assert run.check("access token") == ("FAIL", "POLAR_ACCESS_TOKEN is not set")


def test_doctor_fails_a_webhook_secret_given_as_the_token() -> None:
    run = kavach("polar", "doctor", env={"POLAR_ACCESS_TOKEN": SECRET})
    assert run.check("access token")[0] == "FAIL" and "swapped" in run.out
    assert SECRET[6:] not in run.out


def test_doctor_fails_a_customer_session_token(fake: FakePolar) -> None:
    run = kavach("polar", "doctor", env=env_for(fake, POLAR_ACCESS_TOKEN="polar_cst_" + "a" * 40))
    level, message = run.check("access token")
    assert level == "FAIL" and "customer session token" in message


def test_doctor_accepts_a_personal_access_token_with_a_note(fake: FakePolar) -> None:
    token = "polar_pat_" + "p" * 40
    run = kavach("polar", "doctor", env=env_for(fake, POLAR_ACCESS_TOKEN=token))
    level, message = run.check("access token")
    assert level == "OK" and message.startswith("personal access token polar_pat_…pppp")


def test_doctor_fails_a_bad_polar_sandbox_value() -> None:
    run = kavach("polar", "doctor", env={"POLAR_SANDBOX": "maybe"})
    assert run.check("sandbox") == ("FAIL", "POLAR_SANDBOX must be 1 or 0, not 'maybe'")


def test_doctor_warns_on_the_outdated_sandbox_host() -> None:
    run = kavach("polar", "doctor", env={"POLAR_API_URL": "https://sandbox.api.polar.sh"})
    level, message = run.check("api url")
    assert level == "WARN" and "https://sandbox-api.polar.sh" in message


def test_doctor_warns_on_an_api_url_ending_in_v1() -> None:
    run = kavach("polar", "doctor", env={"POLAR_API_URL": "https://api.polar.sh/v1"})
    assert any(ln.startswith("WARN") and "/v1" in ln for ln in run.out.splitlines())


def test_doctor_warns_on_plain_http_to_a_remote_host() -> None:
    run = kavach("polar", "doctor", env={"POLAR_API_URL": "http://polar-proxy.acme.io"})
    level, message = run.check("api url")
    assert level == "WARN" and "unencrypted" in message


def test_doctor_api_url_flag_wins_over_the_environment() -> None:
    run = kavach("polar", "doctor", "--api-url", "https://sandbox.api.polar.sh",
                 env={"POLAR_API_URL": "https://api.polar.sh"})
    assert "sandbox.api.polar.sh" in run.check("api url")[1]


def test_doctor_names_the_production_host_by_default() -> None:
    run = kavach("polar", "doctor", env={})
    assert run.check("api url") == ("OK", "https://api.polar.sh (production)")


def test_doctor_names_the_sandbox_host_when_sandbox_is_on() -> None:
    run = kavach("polar", "doctor", env={"POLAR_SANDBOX": "1"})
    assert run.check("api url") == ("OK", "https://sandbox-api.polar.sh (sandbox, POLAR_SANDBOX=1)")


@pytest.mark.parametrize(
    ("secret", "level", "words"),
    [
        (SECRET, "OK", "both keys"),
        ("polar_whs_" + "w" * 40, "OK", "legacy key"),
        ("p" * 40, "OK", "legacy key"),
        ("whsec_%%%not-base64%%%", "WARN", "only the legacy key"),
        ("short-secret", "WARN", "only 12 characters"),
        (TOKEN, "FAIL", "swapped"),
    ],
)
def test_doctor_judges_the_webhook_secret_format(secret: str, level: str, words: str) -> None:
    run = kavach("polar", "doctor", env={"POLAR_WEBHOOK_SECRET": secret})
    found_level, message = run.check("webhook secret")
    assert found_level == level and words in message, message


def test_doctor_fails_without_a_webhook_secret() -> None:
    run = kavach("polar", "doctor", env={})
    assert run.check("webhook secret")[0] == "FAIL"


def test_doctor_fails_an_organization_id_that_is_not_a_uuid() -> None:
    run = kavach("polar", "doctor", env={"POLAR_ORGANIZATION_ID": "acme"})
    assert run.status == 1
    assert run.check("organization")[0] == "FAIL"


ORG = "0e6b1f7c-3c1a-4f0e-9a3d-6b1c2d3e4f50"


@pytest.mark.parametrize(
    "written", [ORG.upper(), ORG.replace("-", ""), "{" + ORG + "}", "urn:uuid:" + ORG]
)
def test_doctor_fails_an_organization_id_not_written_as_polar_writes_it(written: str) -> None:
    # The plugin compares ids as exact strings: any other spelling matches nothing.
    run = kavach("polar", "doctor", env={"POLAR_ORGANIZATION_ID": written})
    assert run.status == 1
    level, message = run.check("organization")
    assert level == "FAIL" and f"use {ORG}" in message


def test_doctor_accepts_an_organization_id_written_as_polar_writes_it() -> None:
    run = kavach("polar", "doctor", env={"POLAR_ORGANIZATION_ID": ORG})
    assert run.check("organization")[0] == "OK"


# -- doctor: the token against the API -------------------------------------------------------


def test_doctor_fails_a_token_the_configured_host_rejects(fake: FakePolar) -> None:
    run = kavach("polar", "doctor", env=env_for(fake, POLAR_ACCESS_TOKEN="polar_oat_" + "x" * 40))
    assert run.status == 1
    level, message = run.check("token valid")
    assert level == "FAIL" and "invalid_token" in message


def test_doctor_fails_when_the_api_cannot_be_reached() -> None:
    url = closed_port_url().removesuffix("/webhook")
    run = kavach("polar", "doctor", env={"POLAR_ACCESS_TOKEN": TOKEN, "POLAR_API_URL": url})
    level, message = run.check("token valid")
    assert level == "FAIL" and "cannot reach" in message


@pytest.fixture
def two_hosts() -> Iterator[tuple[FakePolar, FakePolar]]:
    """A "production" FakePolar taking TOKEN and a "sandbox" one taking SANDBOX_TOKEN."""
    with FakePolar(token=TOKEN, sandbox=False) as production, \
            FakePolar(token=SANDBOX_TOKEN) as sandbox:
        yield production, sandbox


def doctor_on(hosts: tuple[FakePolar, FakePolar], env: dict[str, str]) -> Run:
    production, sandbox = hosts
    return kavach("polar", "doctor", "--production-api-url", production.url,
                  "--sandbox-api-url", sandbox.url, env=env)


def test_doctor_says_a_sandbox_token_is_used_with_sandbox_off(
    two_hosts: tuple[FakePolar, FakePolar],
) -> None:
    run = doctor_on(two_hosts, {"POLAR_ACCESS_TOKEN": SANDBOX_TOKEN})
    assert run.status == 1
    level, message = run.check("token valid")
    assert level == "FAIL" and message.startswith("this is a sandbox token but sandbox is off")


def test_doctor_says_a_production_token_is_used_with_sandbox_on(
    two_hosts: tuple[FakePolar, FakePolar],
) -> None:
    run = doctor_on(two_hosts, {"POLAR_ACCESS_TOKEN": TOKEN, "POLAR_SANDBOX": "1"})
    level, message = run.check("token valid")
    assert level == "FAIL" and message.startswith("this is a production token but sandbox is on")


def test_doctor_accepts_a_sandbox_token_with_sandbox_on(
    two_hosts: tuple[FakePolar, FakePolar],
) -> None:
    run = doctor_on(two_hosts, {"POLAR_ACCESS_TOKEN": SANDBOX_TOKEN, "POLAR_SANDBOX": "1"})
    level, message = run.check("token valid")
    assert level == "OK" and "sandbox deployment" in message


def test_doctor_says_both_hosts_reject_an_unknown_token(
    two_hosts: tuple[FakePolar, FakePolar],
) -> None:
    run = doctor_on(two_hosts, {"POLAR_ACCESS_TOKEN": "polar_oat_" + "z" * 40})
    assert "rejected by both production and sandbox" in run.check("token valid")[1]


def test_doctor_checks_only_the_host_polar_api_url_names(
    two_hosts: tuple[FakePolar, FakePolar],
) -> None:
    production, _ = two_hosts
    run = doctor_on(two_hosts, {"POLAR_ACCESS_TOKEN": SANDBOX_TOKEN,
                                "POLAR_API_URL": production.url})
    level, message = run.check("token valid")
    assert level == "FAIL" and "sandbox" not in message


# -- doctor: the webhook endpoint --------------------------------------------------------------


def test_doctor_webhook_check_passes_against_a_kavach_server(app: App, fake: FakePolar) -> None:
    run = kavach("polar", "doctor", "--webhook-url", app.webhook_url, env=env_for(fake))
    assert run.status == 0, run.out
    assert run.check("webhook legacy")[0] == "OK"
    level, message = run.check("webhook standard")
    assert level == "OK" and re.fullmatch(r"signed test event answered 200 in \d+ ms", message)


def test_doctor_webhook_check_sends_one_event_per_key_of_the_secret(
    receiver: Receiver, fake: FakePolar
) -> None:
    kavach("polar", "doctor", "--webhook-url", receiver.url, env=env_for(fake))
    signed = [WebhookVerifier(SECRET).verify(b, h) for h, b in receiver.received]
    assert signed == [name for name, _ in secret_keys(SECRET)]


def test_doctor_webhook_check_fails_when_the_receiver_has_another_secret(
    app: App, fake: FakePolar
) -> None:
    other = "whsec_" + base64.b64encode(b"y" * 32).decode("ascii")
    run = kavach("polar", "doctor", "--webhook-url", app.webhook_url,
                 env=env_for(fake, POLAR_WEBHOOK_SECRET=other))
    assert run.status == 1
    assert run.check("webhook standard")[0] == "FAIL"
    level, message = run.check("webhook legacy")
    assert level == "FAIL" and message.startswith("answered 400")


def test_doctor_webhook_check_warns_when_only_the_standard_key_is_accepted(
    request: pytest.FixtureRequest, fake: FakePolar
) -> None:
    verifier = WebhookVerifier(SECRET)

    def answer(headers: dict[str, str], body: bytes) -> Answer:
        try:
            derivation = verifier.verify(body, headers)
        except Exception:
            return 400, {}, b"bad signature"
        return (200, {}, b"ok") if derivation == "standard" else (400, {}, b"bad signature")

    rec = make_receiver(request, answer=answer)
    run = kavach("polar", "doctor", "--webhook-url", rec.url, env=env_for(fake))
    assert run.status == 0, run.out
    level, message = run.check("webhook legacy")
    assert level == "WARN" and "only if Polar signs this secret with the standard key" in message


def test_doctor_webhook_check_counts_a_redirect_as_a_failure(
    request: pytest.FixtureRequest, fake: FakePolar
) -> None:
    rec = make_receiver(request, answer=lambda _h, _b: (301, {"Location": "https://x.io/"}, b""))
    run = kavach("polar", "doctor", "--webhook-url", rec.url, env=env_for(fake))
    assert run.status == 1
    level, message = run.check("webhook standard")
    assert level == "FAIL" and "does not follow redirects" in message


def test_doctor_webhook_check_warns_on_an_answer_slower_than_polar_recommends(
    request: pytest.FixtureRequest,
) -> None:
    rec = make_receiver(request, delay=0.2)
    settings = DoctorSettings(token=None, secret=SECRET, sandbox=None, api_url=None,
                              organization_id=None, webhook_url=rec.url)
    with requests.Session() as session:
        checks = [c for c in Doctor(settings, session=session, slow_after=0.1).checks()
                  if c.name in ("webhook standard", "webhook legacy")]
    assert [c.level for c in checks] == ["WARN", "WARN"]
    assert "within 2 s" in checks[0].message


def test_doctor_webhook_check_fails_without_an_answer_within_the_timeout(
    request: pytest.FixtureRequest, fake: FakePolar
) -> None:
    rec = make_receiver(request, delay=1.0)
    run = kavach("polar", "doctor", "--timeout", "0.3", "--webhook-url", rec.url,
                 env=env_for(fake, POLAR_WEBHOOK_SECRET="p" * 40))
    assert run.status == 1
    level, message = run.check("webhook legacy")
    assert level == "FAIL" and message.startswith("no answer within 0.3 s")


def test_doctor_webhook_check_warns_that_polar_needs_a_public_https_url(
    receiver: Receiver, fake: FakePolar
) -> None:
    run = kavach("polar", "doctor", "--webhook-url", receiver.url, env=env_for(fake))
    level, message = run.check("webhook")
    assert level == "WARN" and "public https" in message


def test_doctor_webhook_check_fails_without_a_webhook_secret(
    receiver: Receiver, fake: FakePolar
) -> None:
    env = env_for(fake)
    del env["POLAR_WEBHOOK_SECRET"]
    run = kavach("polar", "doctor", "--webhook-url", receiver.url, env=env)
    assert "cannot sign a test event" in run.out and receiver.received == []


# -- mask ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (TOKEN, "polar_oat_…r2D2"),
        ("polar_oat_short", "polar_oat_…"),
        ("x" * 20, "…xxxx"),
    ],
)
def test_mask_shows_the_prefix_and_last_four_only_of_long_values(value: str, shown: str) -> None:
    assert mask(value, ("polar_oat_",)) == shown


# -- doctor: answers Polar's API would not give, and settings serve would refuse -------------


Respond = Callable[[BaseHTTPRequestHandler], None]


class ApiStub:
    """A stand-in API on a free port: ``respond(handler)`` writes each answer to a GET;
    the headers of every request are kept in ``requests``."""

    def __init__(self, respond: Respond) -> None:
        self.requests: list[dict[str, str]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                stub.requests.append({k.lower(): v for k, v in self.headers.items()})
                try:
                    respond(self)
                except OSError:  # the client hung up
                    self.close_connection = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._http = LocalServer(Handler)
        self.port = self._http.port
        self.url = self._http.origin

    def close(self) -> None:
        self._http.close()


def answer(status: int, body: bytes, content_type: str = "application/json") -> Respond:
    def respond(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    return respond


def make_api(request: pytest.FixtureRequest, respond: Respond) -> ApiStub:
    stub = ApiStub(respond)
    request.addfinalizer(stub.close)
    return stub


def token_check_on(url: str, *flags: str, **env: str) -> Run:
    return kavach("polar", "doctor", *flags, env={"POLAR_ACCESS_TOKEN": TOKEN,
                                                  "POLAR_API_URL": url, **env})


def test_doctor_fails_a_token_refused_with_403_not_permitted(
    request: pytest.FixtureRequest,
) -> None:
    # Polar's 403 NotPermitted: the organization lost API access; no call will work.
    api = make_api(request, answer(403, b'{"error":"NotPermitted","detail":"Not permitted"}'))
    run = token_check_on(api.url)
    assert run.status == 1
    level, message = run.check("token valid")
    assert level == "FAIL" and "NotPermitted" in message and "lost API access" in message


def test_doctor_warns_on_a_403_for_a_missing_scope(request: pytest.FixtureRequest) -> None:
    api = make_api(request, answer(403, b'{"error":"insufficient_scope"}'))
    level, message = token_check_on(api.url).check("token valid")
    assert level == "WARN" and "subscriptions:read" in message


def test_doctor_fails_a_2xx_answer_that_is_not_a_polar_list_page(
    request: pytest.FixtureRequest,
) -> None:
    api = make_api(request, answer(200, b"<html>welcome</html>", "text/html"))
    run = token_check_on(api.url)
    assert run.status == 1
    level, message = run.check("token valid")
    assert level == "FAIL" and "not Polar's API" in message


def test_doctor_reads_only_the_start_of_a_huge_token_probe_answer(
    request: pytest.FixtureRequest,
) -> None:
    # Announces 1 GiB, sends 256 KiB and stalls: reading it all would wait for the rest.
    def huge(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(1 << 30))
        handler.end_headers()
        handler.wfile.write(b"x" * (256 * 1024))
        handler.wfile.flush()
        time.sleep(3)

    api = make_api(request, huge)
    level, message = token_check_on(api.url, "--timeout", "1").check("token valid")
    assert level == "FAIL" and "not Polar's API" in message


def test_doctor_does_not_send_the_token_over_plain_http_to_a_remote_host(
    request: pytest.FixtureRequest,
) -> None:
    # "127.1" is 127.0.0.1 to the network but not a loopback address to doctor's rule:
    # it stands in for a remote host here.
    api = make_api(request, answer(200, b'{"items":[],"pagination":{}}'))
    run = token_check_on(f"http://127.1:{api.port}")
    assert run.status == 1
    level, message = run.check("token valid")
    assert level == "FAIL" and "unencrypted" in message
    assert api.requests == []


def test_doctor_fails_a_token_with_typographic_quotes_without_sending_it(
    request: pytest.FixtureRequest,
) -> None:
    api = make_api(request, answer(200, b'{"items":[],"pagination":{}}'))
    run = token_check_on(api.url, POLAR_ACCESS_TOKEN=f"\u201c{TOKEN}\u201d")
    assert run.status == 1
    level, message = run.check("access token")
    assert level == "FAIL" and "visible ASCII" in message
    assert api.requests == [] and TOKEN[10:] not in run.out


def test_doctor_says_a_sandbox_token_is_used_with_sandbox_off_when_it_lacks_a_scope(
    request: pytest.FixtureRequest,
) -> None:
    production = make_api(request, answer(401, b'{"error":"invalid_token"}'))
    sandbox = make_api(request, answer(403, b'{"error":"insufficient_scope"}'))
    run = kavach("polar", "doctor", "--production-api-url", production.url,
                 "--sandbox-api-url", sandbox.url, env={"POLAR_ACCESS_TOKEN": SANDBOX_TOKEN})
    level, message = run.check("token valid")
    assert level == "FAIL" and message.startswith("this is a sandbox token but sandbox is off")


@pytest.mark.parametrize(
    "secret",
    ["whsec_huTZ3n66143aJy0R3tT5lTLvYe4nKAm3dAhu", "whsec_" + "A" * 42 + "==", "whsec_huTZ"],
)
def test_doctor_warns_on_a_whsec_secret_cut_short(secret: str) -> None:
    level, message = kavach("polar", "doctor", env={"POLAR_WEBHOOK_SECRET": secret}).check(
        "webhook secret"
    )
    assert level == "WARN" and "truncated" in message


def test_doctor_accepts_an_unpadded_whsec_secret_of_polars_length() -> None:
    secret = "whsec_huTZ3n66143aJy0R3tT5lTLvYe4nKAm3dAhuZXh7NS6"
    level, message = kavach("polar", "doctor", env={"POLAR_WEBHOOK_SECRET": secret}).check(
        "webhook secret"
    )
    assert level == "OK" and "both keys" in message


def test_doctor_warns_on_a_polar_whs_secret_shorter_than_32_characters() -> None:
    run = kavach("polar", "doctor", env={"POLAR_WEBHOOK_SECRET": "polar_whs_x"})
    level, message = run.check("webhook secret")
    assert level == "WARN" and "only 11 characters" in message


def test_doctor_fails_a_webhook_secret_that_is_not_utf8() -> None:
    # Invalid UTF-8 in the environment reaches Python as lone surrogates.
    run = kavach("polar", "doctor", env={"POLAR_WEBHOOK_SECRET": "whsec_abc\udcff" + "d" * 40})
    assert run.status == 1
    level, message = run.check("webhook secret")
    assert level == "FAIL" and "UTF-8" in message


def test_trigger_refuses_a_webhook_secret_that_is_not_utf8(receiver: Receiver) -> None:
    run = kavach("polar", "trigger", "order.paid", "--to", receiver.url,
                 env={"POLAR_WEBHOOK_SECRET": "p" * 40 + "\udcff"})
    assert run.status == 2 and receiver.received == []


def test_serve_refuses_a_webhook_secret_that_is_not_utf8() -> None:
    env = {"POLAR_ACCESS_TOKEN": TOKEN, "POLAR_WEBHOOK_SECRET": "p" * 40 + "\udcff"}
    run = kavach("serve", "--database", "memory://", "--port", "0", env=env)
    assert run.status == 2


def test_polar_plugin_refuses_a_webhook_secret_that_is_not_utf8() -> None:
    with pytest.raises(ConfigurationError) as raised:
        polar(access_token=TOKEN, webhook_secret="p" * 40 + "\udcff")
    assert raised.value.field == "webhook_secret" and "p" * 40 not in str(raised.value)


def test_doctor_webhook_check_fails_an_answer_slower_than_polar_waits(
    request: pytest.FixtureRequest,
) -> None:
    # Polar gives up at 10 s whatever --timeout says; here it "gives up" at 0.1 s.
    rec = make_receiver(request, delay=0.3)
    settings = DoctorSettings(token=None, secret="p" * 40, sandbox=None, api_url=None,
                              organization_id=None, webhook_url=rec.url)
    with requests.Session() as session:
        doctor = Doctor(settings, session=session, timeout=30, polar_gives_up_after=0.1)
        checks = [c for c in doctor.checks() if c.name == "webhook legacy"]
    assert [c.level for c in checks] == ["FAIL"]
    assert "Polar gives up after 0.1 s" in checks[0].message


@pytest.mark.parametrize("command", ["trigger", "doctor"])
@pytest.mark.parametrize("timeout", ["0", "-1", "nan", "inf"])
def test_timeout_must_be_a_finite_number_above_zero(command: str, timeout: str) -> None:
    argv = ["polar", command, "--timeout", timeout]
    if command == "trigger":
        argv += ["order.paid", "--to", "http://127.0.0.1:9/", "--secret", "p" * 40]
    with pytest.raises(SystemExit) as exited:
        main(argv, environ={}, stdout=io.StringIO())
    assert exited.value.code == 2


class ClosedPipe(io.StringIO):
    """Standard output whose reader went away (``kavach ... | head -1``)."""

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_main_exits_quietly_with_141_when_stdout_is_closed_early(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["polar", "doctor"], environ={}, stdout=ClosedPipe()) == 141
    assert capsys.readouterr().err == ""


def test_doctor_warns_when_polar_api_url_is_production_but_sandbox_is_on() -> None:
    run = kavach("polar", "doctor", env={"POLAR_API_URL": "https://api.polar.sh",
                                         "POLAR_SANDBOX": "1"})
    level, message = run.check("api url")
    assert level == "WARN" and "POLAR_SANDBOX=1" in message


def test_doctor_warns_when_polar_api_url_is_the_sandbox_but_sandbox_is_off() -> None:
    run = kavach("polar", "doctor", env={"POLAR_API_URL": "https://sandbox-api.polar.sh",
                                         "POLAR_SANDBOX": "0"})
    level, message = run.check("api url")
    assert level == "WARN" and "POLAR_SANDBOX is off" in message


def test_doctor_accepts_the_sandbox_api_url_with_polar_sandbox_unset() -> None:
    run = kavach("polar", "doctor", env={"POLAR_API_URL": "https://sandbox-api.polar.sh"})
    assert run.check("api url") == ("OK", "https://sandbox-api.polar.sh (sandbox)")
