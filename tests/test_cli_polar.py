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
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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
from kavach.http.server import make_server
from kavach.passwords import PasswordHasher
from kavach.polar.plugin import PolarPlugin, polar
from kavach.polar.webhooks import WebhookVerifier, secret_keys
from kavach.testing import FakePolar

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

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/webhook"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                        daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


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


def test_doctor_warns_about_an_organization_id_that_is_not_a_uuid() -> None:
    run = kavach("polar", "doctor", env={"POLAR_ORGANIZATION_ID": "acme"})
    assert run.check("organization")[0] == "WARN"


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
