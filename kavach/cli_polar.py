"""``kavach polar ...``: Polar tools for development and support.

::

    kavach polar trigger EVENT --to URL [--secret S] [--user ID] [--subscription-id ID]
                         [--derivation standard|legacy] [--timeout 10]
    kavach polar doctor [--webhook-url URL] [--api-url URL] [--timeout 10]

``trigger`` sends one correctly signed sample event, shaped like Polar's own, to a webhook
URL and prints the answer. ``doctor`` checks the Polar configuration ``kavach serve``
reads (``POLAR_ACCESS_TOKEN``, ``POLAR_WEBHOOK_SECRET``, ``POLAR_SANDBOX``,
``POLAR_API_URL``, ``POLAR_ORGANIZATION_ID``) the way support would, one line per check.
Neither ever prints a token or a secret: at most a prefix and the last four characters.

Each command is declared by ``add_<name>_command(commands)``, which sets the parser's
``run`` default to ``run_<name>(args, environ, stdout) -> exit status``;
:func:`run_polar` calls it. New commands plug in the same way.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import math
import uuid
from collections.abc import Callable, Generator, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, TextIO
from urllib.parse import urlsplit

import attrs

from kavach.cli import CliError, _parse_bool
from kavach.errors import ConfigurationError
from kavach.polar.hosts import PRODUCTION_API_URL, SANDBOX_API_URL
from kavach.polar.webhooks import Derivation, secret_keys, sign_webhook, validate_webhook_secret

if TYPE_CHECKING:
    import requests

    from kavach.testing._fake_objects import CustomerRecord, ProductRecord, SubscriptionRecord

JSON = dict[str, Any]

__all__ = [
    "Check",
    "DeliveryResult",
    "Doctor",
    "DoctorSettings",
    "add_doctor_command",
    "add_polar_commands",
    "add_trigger_command",
    "deliver",
    "event_body",
    "mask",
    "run_doctor",
    "run_polar",
    "run_trigger",
    "sample_event",
]

PolarCommand = Callable[[argparse.Namespace, Mapping[str, str], TextIO], int]
Level = Literal["OK", "WARN", "FAIL"]

#: Polar's delivery timeout per attempt, and the answer time its docs recommend.
DELIVERY_TIMEOUT = 10.0
RECOMMENDED_ANSWER_SECONDS = 2.0
USER_AGENT = "polar.sh webhooks"
_BODY_PREVIEW = 300
_READ_LIMIT = 64 * 1024
#: The length of the part after ``whsec_`` in Polar's secrets (unpadded base64, 32 bytes).
WHSEC_TAIL_LENGTH = 43
#: The shortest ``polar_whs_`` or plain secret Polar makes or accepts.
MIN_SECRET_LENGTH = 32
SAMPLE_ORGANIZATION_ID = "0e6b1f7c-3c1a-4f0e-9a3d-6b1c2d3e4f50"
#: The event type ``doctor`` sends: unknown to Polar, so a correct receiver records it
#: and answers 2xx without side effects.
DOCTOR_EVENT_TYPE = "kavach.doctor_ping"

SUBSCRIPTION_EVENTS = (
    "subscription.created", "subscription.updated", "subscription.active",
    "subscription.canceled", "subscription.uncanceled", "subscription.cycled",
    "subscription.revoked", "subscription.past_due", "subscription.paused",
    "subscription.resumed",
)
#: Polar's ``WebhookEventType`` (polar-api.md §4).
KNOWN_EVENTS = (
    "checkout.created", "checkout.updated", "checkout.expired",
    "customer.created", "customer.updated", "customer.deleted", "customer.state_changed",
    "customer_seat.assigned", "customer_seat.claimed", "customer_seat.revoked",
    "member.created", "member.updated", "member.deleted",
    "order.created", "order.updated", "order.paid", "order.refunded",
    *SUBSCRIPTION_EVENTS,
    "refund.created", "refund.updated", "product.created", "product.updated",
    "discount.created", "discount.updated", "discount.deleted",
    "benefit.created", "benefit.updated",
    "benefit_grant.created", "benefit_grant.cycled", "benefit_grant.updated",
    "benefit_grant.revoked", "organization.updated",
)
_KNOWN_HOSTS = {
    "api.polar.sh": "production",
    "sandbox-api.polar.sh": "sandbox",
}
_FRONTEND_HOSTS = frozenset({"polar.sh", "www.polar.sh", "sandbox.polar.sh", "buy.polar.sh"})
_OUTDATED_SANDBOX_HOST = "sandbox.api.polar.sh"
_TOKEN_KINDS = {
    "polar_oat_": "organization access token",
    "polar_pat_": "personal access token",
    "polar_cst_": "customer session token",
    "polar_mst_": "member session token",
}


# -- registration -------------------------------------------------------------------------


def add_polar_commands(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    """Add ``kavach polar ...`` to the ``kavach`` parser's sub-commands; returns the
    ``polar`` group's own sub-parsers, for more commands."""
    polar = subparsers.add_parser(
        "polar",
        help="Polar tools: send a signed test event, check the configuration, the inbox",
        description="Polar tools for development and support.",
    )
    commands = polar.add_subparsers(dest="polar_command", required=True, metavar="COMMAND")
    add_trigger_command(commands)
    add_doctor_command(commands)
    from kavach.cli_events import add_events_command  # it imports kavach.cli, like this module

    add_events_command(commands)
    return commands


def run_polar(args: argparse.Namespace, environ: Mapping[str, str], stdout: TextIO) -> int:
    """Run the parsed ``kavach polar`` command; returns the exit status."""
    command: PolarCommand = args.run
    return command(args, environ, stdout)


# -- shared: masking, sending ---------------------------------------------------------


#: The longest --timeout: a year (threading and sockets overflow a little above 2**33 s).
_MAX_SECONDS = 365 * 24 * 3600.0


def positive_seconds(text: str) -> float:
    """An ``argparse`` type: a finite number of seconds greater than 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(
            f"must be a finite number of seconds above 0, not {text!r}"
        )
    if value > _MAX_SECONDS:  # a timer or a socket cannot wait longer (OverflowError)
        raise argparse.ArgumentTypeError(f"at most {_MAX_SECONDS:g} seconds, not {text!r}")
    return value


def mask(value: str, prefixes: tuple[str, ...] = ()) -> str:
    """``value`` shown safely: its known prefix (if any) and the last four characters,
    only when at least 12 characters stay hidden; otherwise the prefix alone."""
    prefix = next((p for p in prefixes if value.startswith(p)), "")
    rest = value[len(prefix):]
    if len(rest) >= 16:
        return f"{prefix}…{rest[-4:]}"
    return f"{prefix}…"


def _preview(body: bytes) -> str:
    text = body.decode("utf-8", errors="replace").strip().replace("\r", " ").replace("\n", " ")
    if not text.isprintable():
        text = repr(text)[1:-1]
    return text if len(text) <= _BODY_PREVIEW else text[:_BODY_PREVIEW] + "…"


@attrs.frozen
class DeliveryResult:
    """One POST to a webhook URL: ``status_code`` (``None`` when no answer came; see
    ``error``), ``seconds`` until the answer was read, a body ``preview`` and the
    redirect ``location``, if any."""

    status_code: int | None
    reason: str
    seconds: float
    preview: str
    location: str | None = None
    error: str | None = None
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        """A 2xx answer: what Polar counts as a delivered event."""
        return self.status_code is not None and 200 <= self.status_code < 300


def deliver(
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    timeout: float = DELIVERY_TIMEOUT,
    session: requests.Session | None = None,
) -> DeliveryResult:
    """POST ``body`` to ``url`` as Polar does: redirects not followed, ``timeout``
    seconds for the whole exchange (connect, answer and body; see
    :mod:`kavach.cli_http`). Never raises for network failures: see ``error``."""
    from kavach.cli_http import exchange  # it loads requests: ``kavach --help`` need not

    http = session or _new_session()
    try:
        answer = exchange(
            lambda: http.post(
                url,
                data=body,
                headers={"user-agent": USER_AGENT, **headers},
                timeout=timeout,
                allow_redirects=False,
                stream=True,
            ),
            url, timeout=timeout, limit=_READ_LIMIT,
        )
    finally:
        if session is None:
            http.close()
    if answer.status_code is None:
        return DeliveryResult(None, "", answer.seconds, "", error=answer.error,
                              timed_out=answer.timed_out)
    return DeliveryResult(
        status_code=answer.status_code,
        reason=answer.reason,
        seconds=answer.seconds,
        preview=_preview(answer.content),
        location=answer.headers.get("location"),
    )


def _new_session() -> requests.Session:
    """A session whose exchanges each keep to one deadline (:mod:`kavach.cli_http`)."""
    from kavach.cli_http import new_session

    return new_session()


def _is_http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


# -- sample events ------------------------------------------------------------------------

_SUBSCRIPTION_STATUS = {
    "subscription.revoked": "canceled",
    "subscription.past_due": "past_due",
    "subscription.paused": "paused",
}
_ORDER_STATUS = {"order.paid": "paid", "order.refunded": "refunded", "order.updated": "paid"}
_CHECKOUT_STATUS = {"checkout.updated": "succeeded", "checkout.expired": "expired"}


def event_body(event: JSON) -> bytes:
    """The raw body Polar would send: compact UTF-8 JSON, no ASCII escaping."""
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _new_id() -> str:
    return str(uuid.uuid4())


#: The namespace of the ids ``trigger`` derives (uuid5): the same user or subscription
#: gets the same Polar customer, product and checkout on every call.
_SAMPLE_NAMESPACE = uuid.UUID("6f1c2a4e-9d3b-5e7a-8c21-4b0d9e6f3a15")


def _stable_id(kind: str, key: str | None) -> str:
    """A fresh id, or the same one every time for ``key`` (a user or subscription id)."""
    if key is None:
        return _new_id()
    return str(uuid.uuid5(_SAMPLE_NAMESPACE, f"{kind}:{key}"))


@attrs.frozen
class _Sample:
    """The linked records one sample event is rendered from."""

    product: ProductRecord
    customer: CustomerRecord
    subscription: SubscriptionRecord
    now: datetime


def _sample_records(
    event_type: str, user_id: str | None, subscription_id: str | None, now: datetime,
    organization_id: str,
) -> _Sample:
    from kavach.testing import _fake_objects as fo  # Polar's JSON shapes, as the fake sends

    created = now - timedelta(days=1)
    # A walk through one subscription's life (--subscription-id, --user) keeps its
    # customer, product and checkout from call to call, as Polar's events do.
    owner = user_id or subscription_id
    product = fo.ProductRecord(
        id=_stable_id("product", owner), price_id=_stable_id("price", owner), name="Pro",
        created_at=now - timedelta(days=90),
        amount=2000, currency="usd", recurring_interval="month", recurring_interval_count=1,
        trial_interval=None, trial_interval_count=None, organization_id=organization_id,
    )
    customer = fo.CustomerRecord(
        id=_stable_id("customer", owner), created_at=created, email="customer@acme.io",
        name="Sample Customer",
        organization_id=organization_id, external_id=user_id, modified_at=created,
    )
    start = now if event_type == "subscription.cycled" else created
    sub = fo.SubscriptionRecord(
        id=subscription_id or _new_id(),
        created_at=now if event_type == "subscription.created" else created,
        customer_id=customer.id, product_id=product.id,
        checkout_id=_stable_id("checkout", subscription_id),
        status=_SUBSCRIPTION_STATUS.get(event_type, "active"),
        amount=product.amount, currency=product.currency, recurring_interval="month",
        recurring_interval_count=1, current_period_start=start,
        current_period_end=fo.add_interval(start, "month", 1), started_at=created,
        anchor=created,
        metadata={"kavach_user_id": user_id} if user_id else {}, modified_at=now,
    )
    if event_type == "subscription.canceled":
        sub.cancel_at_period_end = True
        sub.canceled_at = now
        sub.ends_at = sub.current_period_end
        sub.customer_cancellation_reason = "other"
    elif event_type == "subscription.revoked":
        sub.canceled_at = sub.ends_at = sub.ended_at = now
    elif event_type == "subscription.past_due":
        sub.past_due_at = now
    return _Sample(product, customer, sub, now)


def _sample_data(event_type: str, sample: _Sample) -> JSON:
    from kavach.testing import _fake_objects as fo

    product, customer, sub, now = sample.product, sample.customer, sample.subscription, sample.now
    if event_type in SUBSCRIPTION_EVENTS:
        data = fo.subscription_json(sub, customer, product)
        if event_type == "subscription.paused":
            data["paused_at"] = fo.iso(now)
        return data
    if event_type.startswith("order."):
        order = fo.OrderRecord(
            id=_new_id(), created_at=now, customer_id=customer.id, product_id=product.id,
            subscription_id=sub.id, checkout_id=sub.checkout_id, amount=product.amount,
            currency=product.currency, billing_reason="subscription_create",
            metadata=dict(sub.metadata), invoice_number="SAMPLE-0001",
            period_start=sub.current_period_start, period_end=sub.current_period_end,
            item_id=_new_id(), status=_ORDER_STATUS.get(event_type, "pending"), modified_at=now,
        )
        return fo.order_json(order, customer, product, sub)
    if event_type.startswith("checkout."):
        checkout = fo.CheckoutRecord(
            id=sub.checkout_id or _new_id(), created_at=now,
            client_secret="polar_c_sample",  # noqa: S106 - public: it is in the checkout URL
            expires_at=now + timedelta(hours=24), product_ids=[product.id],
            product_id=product.id, amount=product.amount, currency=product.currency,
            organization_id=product.organization_id, success_url=None, return_url=None,
            external_customer_id=customer.external_id,
            customer_id=customer.id if event_type == "checkout.updated" else None,
            customer_email=customer.email, customer_name=customer.name,
            metadata=dict(sub.metadata), customer_metadata={}, allow_trial=True,
            trial_interval=None, trial_interval_count=None,
            status=_CHECKOUT_STATUS.get(event_type, "open"), modified_at=now,
        )
        return fo.checkout_json(checkout, [product], "https://sandbox.polar.sh", now)
    if event_type == "customer.state_changed":
        return fo.customer_state_json(customer, [sub])
    if event_type.startswith("customer."):
        data = fo.customer_json(customer)
        if event_type == "customer.deleted":
            data["deleted_at"] = fo.iso(now)
        return data
    return {"id": _new_id(), "created_at": fo.iso(now), "modified_at": fo.iso(now)}


def sample_event(
    event_type: str,
    *,
    user_id: str | None = None,
    subscription_id: str | None = None,
    now: datetime | None = None,
    organization_id: str = SAMPLE_ORGANIZATION_ID,
) -> JSON:
    """A Polar webhook envelope ``{type, timestamp, data}`` for ``event_type``.

    ``subscription.*``: a full Subscription (customer, product, prices embedded) whose
    ``customer.external_id`` and ``metadata.kavach_user_id`` are ``user_id``, with the
    status, dates and flags that event carries (``canceled``: cancel at period end;
    ``revoked``: status ``canceled``, ended now; ``past_due``; ``paused``); ``order.*``,
    ``checkout.*`` and ``customer.*``: the full objects of the same purchase; any other
    type: a minimal ``data`` with an ``id``. ``modified_at`` is ``now`` (default: the
    current time), so a later sample is newer than an earlier one.
    """
    from kavach.testing import _fake_objects as fo

    moment = (now or datetime.now(UTC)).astimezone(UTC)
    sample = _sample_records(event_type, user_id, subscription_id, moment, organization_id)
    data = _sample_data(event_type, sample)
    return {"type": event_type, "timestamp": fo.iso(moment), "data": data}


# -- trigger ------------------------------------------------------------------------------


def add_trigger_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Declare ``kavach polar trigger``."""
    trigger = commands.add_parser(
        "trigger",
        help="send a signed sample webhook event to a URL",
        description="Send one correctly signed sample Polar event to a webhook URL and print "
        "the answer's status, latency and body. Exit status 0 on a 2xx answer, 1 otherwise.",
    )
    trigger.add_argument(
        "event", metavar="EVENT", help="event type, e.g. subscription.active, order.paid"
    )
    trigger.add_argument("--to", required=True, metavar="URL", help="the webhook URL")
    trigger.add_argument(
        "--secret",
        metavar="S",
        help="the endpoint's webhook secret (default $POLAR_WEBHOOK_SECRET)",
    )
    trigger.add_argument(
        "--user", metavar="ID", help="the app's user id (customer.external_id and metadata)"
    )
    trigger.add_argument(
        "--subscription-id", metavar="ID", help="reuse this subscription id (default: new)"
    )
    trigger.add_argument(
        "--derivation",
        choices=("standard", "legacy"),
        help="which key of the secret signs (default: standard for a whsec_ secret "
        "with a base64 tail, else legacy)",
    )
    trigger.add_argument(
        "--timeout", type=positive_seconds, default=DELIVERY_TIMEOUT,
        help=f"seconds for the whole exchange, the answer included (default "
        f"{DELIVERY_TIMEOUT:g}, Polar's)",
    )
    trigger.set_defaults(run=run_trigger)


def _signing_secret(given: str | None, environ: Mapping[str, str]) -> str:
    secret = (given or environ.get("POLAR_WEBHOOK_SECRET", "")).strip()
    if not secret:
        raise CliError("--secret is required (or set POLAR_WEBHOOK_SECRET)")
    try:
        return validate_webhook_secret(secret, "the webhook secret")
    except ConfigurationError as exc:
        raise CliError(str(exc)) from None


def run_trigger(args: argparse.Namespace, environ: Mapping[str, str], stdout: TextIO) -> int:
    """``kavach polar trigger``: 0 when the URL answered 2xx, 1 otherwise."""
    if not _is_http_url(args.to):
        raise CliError(f"--to must be an http(s) URL, not {args.to!r}")
    secret = _signing_secret(args.secret, environ)
    derivation: Derivation | None = args.derivation
    if derivation is not None and derivation not in dict(secret_keys(secret)):
        raise CliError(
            "--derivation standard needs a whsec_ secret with a base64 tail; "
            "this secret only has the legacy key"
        )
    event_type: str = args.event
    if event_type not in KNOWN_EVENTS:
        print(f"note: {event_type!r} is not a Polar event type; sending a minimal event",
              file=stdout)
    body = event_body(sample_event(event_type, user_id=args.user,
                              subscription_id=args.subscription_id))
    headers = sign_webhook(body, secret, derivation=derivation)
    result = deliver(args.to, body, headers, timeout=args.timeout)
    used = derivation or ("standard" if "standard" in dict(secret_keys(secret)) else "legacy")
    print(f"{event_type} ({headers['webhook-id']}, {used} signature) -> {args.to}", file=stdout)
    if result.status_code is None:
        print(f"failed after {result.seconds * 1000:.0f} ms: {result.error}", file=stdout)
        return 1
    print(f"{result.status_code} {result.reason} in {result.seconds * 1000:.1f} ms", file=stdout)
    if result.location:
        print(f"location: {result.location} (Polar does not follow redirects)", file=stdout)
    if result.preview:
        print(result.preview, file=stdout)
    return 0 if result.ok else 1


# -- doctor -------------------------------------------------------------------------------


@attrs.frozen
class Check:
    """One doctor finding: ``level`` OK / WARN / FAIL, the check's ``name``, a message."""

    level: Level
    name: str
    message: str

    def line(self) -> str:
        """The finding as one output line."""
        return f"{self.level:<4}  {self.name:<16} {self.message}"


@attrs.frozen
class DoctorSettings:
    """What ``doctor`` checks: the environment ``kavach serve`` reads, and its flags.

    ``production_url`` / ``sandbox_url`` are Polar's two hosts (injectable for tests).
    """

    token: str | None = attrs.field(repr=False)
    secret: str | None = attrs.field(repr=False)
    sandbox: str | None
    api_url: str | None
    organization_id: str | None
    webhook_url: str | None = None
    production_url: str = PRODUCTION_API_URL
    sandbox_url: str = SANDBOX_API_URL

    @classmethod
    def from_args(cls, args: argparse.Namespace, environ: Mapping[str, str]) -> DoctorSettings:
        """Flags win over the environment, as in ``kavach serve``."""

        def env(name: str) -> str | None:
            return environ.get(name, "").strip() or None

        return cls(
            token=env("POLAR_ACCESS_TOKEN"),
            secret=env("POLAR_WEBHOOK_SECRET"),
            sandbox=environ.get("POLAR_SANDBOX"),
            api_url=args.api_url or env("POLAR_API_URL"),
            organization_id=env("POLAR_ORGANIZATION_ID"),
            webhook_url=args.webhook_url,
            production_url=args.production_api_url,
            sandbox_url=args.sandbox_api_url,
        )


@attrs.frozen
class _Probe:
    """The answer to the token probe on one host."""

    status_code: int | None
    seconds: float
    error: str | None = None
    error_code: str | None = None
    sandbox_header: bool = False
    location: str | None = None
    retry_after: str | None = None
    #: The body was a JSON object with ``items`` and ``pagination``: Polar's list page.
    list_page: bool = False
    #: No complete answer within the timeout (``error`` says so).
    timed_out: bool = False


def _has_wrapping(value: str) -> bool:
    return value[:1] in "\"'" or value[-1:] in "\"'" or any(c.isspace() for c in value)


def _is_plain_http_to_remote(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme == "http" and not _is_local_host((parts.hostname or "").lower())


def _is_local_host(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_private or address.is_link_local


@attrs.define
class Doctor:
    """Runs the checks for one :class:`DoctorSettings`; :meth:`checks` yields findings.

    ``timeout`` bounds each exchange as a whole, connect to the last byte read (Polar's
    10 s by default; see :mod:`kavach.cli_http`); ``slow_after`` is the
    answer time above which a webhook answer is a warning (Polar recommends 2 s).
    """

    settings: DoctorSettings
    session: requests.Session = attrs.field(factory=_new_session)
    timeout: float = DELIVERY_TIMEOUT
    slow_after: float = RECOMMENDED_ANSWER_SECONDS
    #: Polar's own delivery timeout: an answer slower than this fails whatever ``timeout``.
    polar_gives_up_after: float = DELIVERY_TIMEOUT

    def checks(self) -> Iterator[Check]:
        """Every finding, in the order support would look at them."""
        sandbox = yield from self._sandbox_flag()
        token_ok = yield from self._token_format()
        api_url = yield from self._api_url(sandbox)
        if token_ok and api_url is not None and sandbox is not None:
            if _is_plain_http_to_remote(api_url):
                yield Check("FAIL", "token valid",
                            f"not checked: {api_url} is plain http to a remote host, so the "
                            "token would travel unencrypted (kavach serve would send it the "
                            "same way); use https")
            else:
                yield self._token_valid(api_url, sandbox)
        yield from self._organization()
        secret_ok = yield from self._secret_format()
        if self.settings.webhook_url is not None:
            yield from self._webhook(self.settings.webhook_url, secret_ok)

    # -- configuration values -------------------------------------------------------
    def _sandbox_flag(self) -> Generator[Check, None, bool | None]:
        raw = self.settings.sandbox
        try:
            sandbox = _parse_bool(raw, "POLAR_SANDBOX")
        except CliError as exc:
            yield Check("FAIL", "sandbox", str(exc))
            return None
        return sandbox

    def _token_format(self) -> Generator[Check, None, bool]:
        token = self.settings.token
        if token is None:
            yield Check("FAIL", "access token", "POLAR_ACCESS_TOKEN is not set")
            return False
        if token.startswith(("whsec_", "polar_whs_")):
            yield Check("FAIL", "access token",
                        "POLAR_ACCESS_TOKEN holds a webhook secret: are the two values swapped?")
            return False
        from kavach.polar._transport import validate_access_token  # it loads requests

        shown = mask(token, tuple(_TOKEN_KINDS))
        try:
            validate_access_token(token)
        except ConfigurationError as exc:  # what kavach serve would refuse
            prefix = next((p for p in _TOKEN_KINDS if token.startswith(p)), "")
            yield Check("FAIL", "access token", f"{prefix or 'POLAR_ACCESS_TOKEN'}…: {exc}")
            return False
        kind = next((k for p, k in _TOKEN_KINDS.items() if token.startswith(p)), None)
        if _has_wrapping(token):
            yield Check("WARN", "access token",
                        f"{shown} contains quotes or whitespace: copied with them?")
        if kind is None:
            yield Check("WARN", "access token",
                        f"{shown}: not a Polar token format (they start with polar_oat_ "
                        "or polar_pat_)")
            return True
        if token.startswith(("polar_cst_", "polar_mst_")):
            yield Check("FAIL", "access token",
                        f"{shown} is a {kind}, not an API token: create an organization "
                        "access token (polar_oat_) in the Polar dashboard")
            return False
        note = "" if token.startswith("polar_oat_") else (
            " (works; an organization access token, polar_oat_, is the usual choice "
            "for a server)"
        )
        yield Check("OK", "access token", f"{kind} {shown}{note}")
        return True

    def _sandbox_set(self) -> bool:
        """``POLAR_SANDBOX`` was given a value (``0``, ``false``...), not left unset."""
        return bool((self.settings.sandbox or "").strip())

    def _api_url(self, sandbox: bool | None) -> Generator[Check, None, str | None]:
        override = self.settings.api_url
        if override is None:
            if sandbox is None:
                return None
            url = self.settings.sandbox_url if sandbox else self.settings.production_url
            which = "sandbox, POLAR_SANDBOX=1" if sandbox else "production"
            yield Check("OK", "api url", f"{url} ({which})")
            return url
        url = override.rstrip("/")
        try:
            parts = urlsplit(url)
            host = (parts.hostname or "").lower()
        except ValueError:
            parts, host = None, ""
        if parts is None or parts.scheme not in ("http", "https") or not host:
            yield Check("FAIL", "api url", f"POLAR_API_URL {override!r} is not an http(s) URL")
            return None
        note = " (POLAR_API_URL overrides POLAR_SANDBOX)" if sandbox else ""
        if host == _OUTDATED_SANDBOX_HOST:
            yield Check("WARN", "api url",
                        f"{url}: outdated sandbox host; the sandbox API is {SANDBOX_API_URL}")
        elif host in _FRONTEND_HOSTS:
            yield Check("WARN", "api url",
                        f"{url} is Polar's web site, not its API ({PRODUCTION_API_URL} or "
                        f"{SANDBOX_API_URL})")
        elif parts.scheme == "http" and _is_local_host(host):
            yield Check("OK", "api url", f"{url}: a local API (FakePolar or a proxy){note}")
        elif parts.scheme == "http":
            yield Check("WARN", "api url",
                        f"{url}: plain http sends the token unencrypted; use https{note}")
        elif _KNOWN_HOSTS.get(host) == "production" and sandbox:
            yield Check("WARN", "api url",
                        f"{url} is production but POLAR_SANDBOX=1: POLAR_API_URL wins, so "
                        "production is used; unset one of them")
        elif _KNOWN_HOSTS.get(host) == "sandbox" and sandbox is False and self._sandbox_set():
            yield Check("WARN", "api url",
                        f"{url} is the sandbox but POLAR_SANDBOX is off: POLAR_API_URL wins, "
                        "so the sandbox is used; set POLAR_SANDBOX=1 or drop POLAR_API_URL")
        elif host in _KNOWN_HOSTS:
            yield Check("OK", "api url", f"{url} ({_KNOWN_HOSTS[host]}){note}")
        else:
            yield Check("WARN", "api url", f"{url}: not a Polar API host (a proxy?){note}")
        if parts.path.rstrip("/").endswith("/v1"):
            yield Check("WARN", "api url",
                        "POLAR_API_URL ends in /v1: kavach adds /v1 to every path, drop it")
        return url

    # -- the token against the API --------------------------------------------------
    def _probe(self, base_url: str) -> _Probe:
        from kavach.cli_http import exchange, without

        token = self.settings.token or ""
        url = base_url.rstrip("/") + "/v1/subscriptions/"
        answer = exchange(
            lambda: self.session.get(
                url,
                params={"limit": "1"},
                headers={"Authorization": f"Bearer {token}", "Accept": "application/json",
                         "User-Agent": "kavach-doctor"},
                timeout=self.timeout,
                allow_redirects=False,
                stream=True,
            ),
            base_url,
            timeout=self.timeout,
            limit=_READ_LIMIT,  # a Polar list page of one item is a few KiB
            hide=(token, token.strip()),
        )
        if answer.status_code is None:
            return _Probe(None, answer.seconds, error=answer.error, timed_out=answer.timed_out)
        code: str | None = None
        list_page = False
        try:
            body = json.loads(answer.content)
        except ValueError:
            body = None
        if isinstance(body, dict):
            if isinstance(body.get("error"), str):
                code = body["error"]
            list_page = "items" in body and "pagination" in body

        def shown(value: str | None) -> str | None:  # the server may echo the token
            return None if value is None else without(value, (token, token.strip()))

        return _Probe(
            answer.status_code, answer.seconds, error_code=shown(code),
            sandbox_header=answer.headers.get("x-polar-sandbox") == "1",
            location=shown(answer.headers.get("location")),
            retry_after=shown(answer.headers.get("retry-after")),
            list_page=list_page,
        )

    def _token_valid(self, url: str, sandbox: bool) -> Check:
        probe = self._probe(url)
        took = f"{probe.seconds * 1000:.0f} ms"
        if probe.status_code is None:
            where = f"{url}: " if probe.timed_out else ""  # the other errors name it
            return Check("FAIL", "token valid", f"{where}{probe.error or 'no answer'}")
        status = probe.status_code
        if 200 <= status < 300:
            if not probe.list_page:
                return Check("FAIL", "token valid",
                             f"{url} answered {status} to GET /v1/subscriptions/ without a "
                             "JSON list page: not Polar's API (a web page or a proxy?)")
            where = " (a sandbox deployment)" if probe.sandbox_header else ""
            return Check("OK", "token valid", f"accepted by {url}{where} in {took}")
        if status == 401:
            return self._rejected(url, sandbox, probe)
        if status == 403 and probe.error_code != "insufficient_scope":
            return Check("FAIL", "token valid",
                         f"{url} refuses the token (403 {probe.error_code or 'Forbidden'})"
                         + (": the organization has lost API access, see the Polar dashboard"
                            if probe.error_code == "NotPermitted" else ""))
        if status == 403:
            return Check("WARN", "token valid",
                         f"{url} accepts the token but refused GET /v1/subscriptions/ "
                         f"({probe.error_code or 403}): kavach needs the scopes "
                         "checkouts:write, subscriptions:read and subscriptions:write, "
                         "customers:read and customers:write, customer_sessions:write")
        if status == 429:
            wait = f" (retry-after {probe.retry_after} s)" if probe.retry_after else ""
            return Check("WARN", "token valid", f"{url} rate-limited the check{wait}; "
                         "try again in a minute")
        if 300 <= status < 400:
            return Check("FAIL", "token valid",
                         f"{url} redirects to {probe.location}: not a Polar API base URL?")
        if status == 404:
            return Check("FAIL", "token valid",
                         f"{url} has no /v1/subscriptions/ (404): not a Polar API base URL?")
        return Check("WARN", "token valid", f"{url} answered {status}: could not check the "
                     "token, try again later")

    def _rejected(self, url: str, sandbox: bool, probe: _Probe) -> Check:
        why = f"401 {probe.error_code}" if probe.error_code else "401"
        if self.settings.api_url is not None:  # an explicit host: check only that one
            return Check("FAIL", "token valid",
                         f"{url} rejected the token ({why}): expired, revoked or mistyped?")
        other_url = self.settings.production_url if sandbox else self.settings.sandbox_url
        other = self._probe(other_url)
        # A 2xx, or a 403 for a missing scope: the other deployment knows the token.
        if other.status_code is not None and (
            200 <= other.status_code < 300
            or (other.status_code == 403 and other.error_code == "insufficient_scope")
        ):
            if sandbox:
                return Check("FAIL", "token valid",
                             "this is a production token but sandbox is on: unset "
                             "POLAR_SANDBOX (sandbox and production have separate tokens)")
            return Check("FAIL", "token valid",
                         "this is a sandbox token but sandbox is off: set POLAR_SANDBOX=1 "
                         "(sandbox and production have separate tokens)")
        if other.status_code == 401:
            return Check("FAIL", "token valid",
                         "rejected by both production and sandbox: expired, revoked or "
                         "mistyped?")
        return Check("FAIL", "token valid",
                     f"{url} rejected the token ({why}): expired, revoked or mistyped?")

    def _organization(self) -> Iterator[Check]:
        org = self.settings.organization_id
        if org is None:
            return
        try:
            canonical = str(uuid.UUID(org))
        except ValueError:
            yield Check("FAIL", "organization",
                        f"POLAR_ORGANIZATION_ID {org!r} is not a UUID: checkouts will fail "
                        "and events will not match it")
            return
        if org != canonical:
            # The plugin compares ids as exact strings, as Polar writes them.
            yield Check("FAIL", "organization",
                        f"POLAR_ORGANIZATION_ID {org!r} is not written as Polar writes ids: "
                        f"use {canonical} (lower case, hyphenated), or checkouts will fail "
                        "and events will not match it")
            return
        yield Check("OK", "organization", f"{org}: events about other organizations are ignored")

    # -- the webhook secret and endpoint --------------------------------------------
    def _secret_format(self) -> Generator[Check, None, bool]:
        secret = self.settings.secret
        if secret is None:
            yield Check("FAIL", "webhook secret", "POLAR_WEBHOOK_SECRET is not set")
            return False
        if secret.startswith(tuple(_TOKEN_KINDS)):
            yield Check("FAIL", "webhook secret",
                        "POLAR_WEBHOOK_SECRET holds an access token: are the two values "
                        "swapped?")
            return False
        try:
            validate_webhook_secret(secret, "POLAR_WEBHOOK_SECRET")
        except ConfigurationError as exc:  # what kavach serve would refuse
            yield Check("FAIL", "webhook secret", str(exc))
            return False
        if _has_wrapping(secret):
            yield Check("WARN", "webhook secret",
                        "contains quotes or whitespace: copied with them?")
        if secret.startswith("whsec_"):
            tail = len(secret[len("whsec_"):].rstrip("="))
            if tail != WHSEC_TAIL_LENGTH:
                keys = "" if "standard" in dict(secret_keys(secret)) else (
                    "; the tail is not base64, so only the legacy key applies"
                )
                yield Check("WARN", "webhook secret",
                            f"{mask(secret, ('whsec_',))}: {tail} characters after whsec_, "
                            f"Polar's have {WHSEC_TAIL_LENGTH}: truncated or mistyped?{keys}")
            elif "standard" in dict(secret_keys(secret)):
                yield Check("OK", "webhook secret",
                            f"{mask(secret, ('whsec_',))}: kavach verifies both keys — "
                            "standard (base64-decoded tail; secrets made since 2026-09-08) "
                            "and legacy (the whole string)")
            else:
                yield Check("WARN", "webhook secret",
                            f"{mask(secret, ('whsec_',))}: the tail is not base64, so only "
                            "the legacy key applies: mistyped or truncated?")
            return True
        if len(secret) < MIN_SECRET_LENGTH:
            yield Check("WARN", "webhook secret",
                        f"only {len(secret)} characters: Polar secrets are whsec_ + "
                        f"{WHSEC_TAIL_LENGTH}, or polar_whs_... or plain ones of "
                        f"{MIN_SECRET_LENGTH}+ characters; mistyped or truncated?")
            return True
        if secret.startswith("polar_whs_"):
            yield Check("OK", "webhook secret",
                        f"{mask(secret, ('polar_whs_',))}: an older Polar secret, legacy key")
            return True
        yield Check("OK", "webhook secret", f"a plain {len(secret)}-character secret: legacy key")
        return True

    def _webhook(self, url: str, secret_ok: bool) -> Iterator[Check]:
        if not _is_http_url(url):
            yield Check("FAIL", "webhook", f"--webhook-url {url!r} is not an http(s) URL")
            return
        parts = urlsplit(url)
        if parts.scheme != "https" or _is_local_host((parts.hostname or "").lower()):
            yield Check("WARN", "webhook",
                        f"{url}: Polar delivers only to public https URLs; locally, use "
                        "`polar listen` or a tunnel")
        secret = self.settings.secret
        if not secret_ok or secret is None:
            yield Check("FAIL", "webhook", "cannot sign a test event without a usable "
                        "POLAR_WEBHOOK_SECRET")
            return
        derivations = [name for name, _ in secret_keys(secret)]
        results = {name: self._ping(url, secret, name) for name in derivations}
        accepted = [name for name, check in results.items() if check.level != "FAIL"]
        for check in results.values():
            if check.level == "FAIL" and accepted and len(derivations) > 1:
                # Polar signs a given secret with one of the keys only.
                check = Check("WARN", check.name,
                              check.message + f" — fine only if Polar signs this secret with "
                              f"the {accepted[0]} key")
            yield check

    def _ping(self, url: str, secret: str, derivation: Derivation) -> Check:
        name = f"webhook {derivation}"
        body = event_body(sample_event(DOCTOR_EVENT_TYPE))
        headers = sign_webhook(body, secret, derivation=derivation)
        result = deliver(url, body, headers, timeout=self.timeout, session=self.session)
        took = f"{result.seconds * 1000:.0f} ms"
        if result.timed_out:
            return Check("FAIL", name, f"{result.error}: Polar gives up "
                         f"after {DELIVERY_TIMEOUT:g} s and retries (answer within "
                         f"{RECOMMENDED_ANSWER_SECONDS:g} s)")
        if result.status_code is None:  # the error names the URL
            return Check("FAIL", name, result.error or "no answer")
        status = result.status_code
        if 300 <= status < 400:
            return Check("FAIL", name, f"answered {status} -> {result.location}: Polar does "
                         "not follow redirects, so this counts as a failure; use the final URL")
        if not result.ok:
            detail = f": {result.preview}" if result.preview else ""
            return Check("FAIL", name, f"answered {status} in {took}{detail}")
        if result.seconds > self.polar_gives_up_after:
            return Check("FAIL", name, f"answered {status} in {took}: Polar gives up after "
                         f"{self.polar_gives_up_after:g} s and counts that as a failed delivery "
                         f"(answer within {RECOMMENDED_ANSWER_SECONDS:g} s)")
        if result.seconds > self.slow_after:
            return Check("WARN", name, f"answered {status} in {took}: Polar recommends "
                         f"answering within {RECOMMENDED_ANSWER_SECONDS:g} s (timeout "
                         f"{DELIVERY_TIMEOUT:g} s)")
        return Check("OK", name, f"signed test event answered {status} in {took}")


def add_doctor_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Declare ``kavach polar doctor``."""
    doctor = commands.add_parser(
        "doctor",
        help="check the Polar configuration (token, host, webhook secret, endpoint)",
        description="Check the Polar settings kavach serve reads (POLAR_ACCESS_TOKEN, "
        "POLAR_WEBHOOK_SECRET, POLAR_SANDBOX, POLAR_API_URL, POLAR_ORGANIZATION_ID): one "
        "line per check, OK / WARN / FAIL. Exit status 0 when nothing FAILs.",
    )
    doctor.add_argument(
        "--webhook-url", metavar="URL",
        help="also send a signed test event to this webhook URL and time the answer",
    )
    doctor.add_argument(
        "--api-url", metavar="URL", help="the Polar API base URL (default $POLAR_API_URL)"
    )
    doctor.add_argument(
        "--timeout", type=positive_seconds, default=DELIVERY_TIMEOUT,
        help=f"seconds for each request, its answer included (default {DELIVERY_TIMEOUT:g}, "
        "Polar's delivery timeout)",
    )
    # Polar's two hosts, replaceable for tests (two FakePolar instances).
    doctor.add_argument("--production-api-url", default=PRODUCTION_API_URL,
                        help=argparse.SUPPRESS)
    doctor.add_argument("--sandbox-api-url", default=SANDBOX_API_URL, help=argparse.SUPPRESS)
    doctor.set_defaults(run=run_doctor)


def run_doctor(args: argparse.Namespace, environ: Mapping[str, str], stdout: TextIO) -> int:
    """``kavach polar doctor``: 0 when no check FAILs, 1 otherwise."""
    settings = DoctorSettings.from_args(args, environ)
    with _new_session() as session:
        doctor = Doctor(settings, session=session, timeout=args.timeout)
        checks = []
        for check in doctor.checks():
            checks.append(check)
            print(check.line(), file=stdout, flush=True)
    failures = sum(c.level == "FAIL" for c in checks)
    warnings = sum(c.level == "WARN" for c in checks)
    if failures or warnings:
        print(f"{failures} failure(s), {warnings} warning(s)", file=stdout)
    else:
        print("all checks passed", file=stdout)
    return 1 if failures else 0
