"""The Polar plugin's domain layer: checkouts, subscription state and webhook ingest.

Transport and protocol live in :mod:`kavach.polar.client`; signatures in
:mod:`kavach.polar.webhooks`; this module decides what a checkout carries, which user a
subscription belongs to, and when state may change (see design.md, "Webhooks").
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn
from urllib.parse import parse_qsl, urlsplit

import attrs
import requests

from kavach.errors import (
    CheckoutNotFoundError,
    ConfigurationError,
    InvalidInputError,
    NotFoundError,
    OrganizationMismatchError,
    PolarNotFoundError,
    PolarValidationError,
    StoreCorruptError,
    SubscriptionNotFoundError,
    UserNotFoundError,
    WebhookCallbackError,
    WebhookInProgressError,
    WebhookPayloadError,
    WebhookVerificationError,
)
from kavach.polar._transport import validate_access_token
from kavach.polar.access import AccessDecision, decide_access
from kavach.polar.client import PRODUCTION_API_URL, SANDBOX_API_URL, PolarClient
from kavach.polar.decoding import decode_subscription_event
from kavach.polar.models import Checkout, CustomerSession
from kavach.polar.subscriptions import (
    USER_ID_METADATA_KEY,
    PolarSubscription,
    SubscriptionPayload,
    SubscriptionPayloadError,
    organization_of,
    parse_datetime,
    state_from_payload,
)
from kavach.polar.webhooks import (
    DEFAULT_TOLERANCE_SECONDS,
    WebhookVerifier,
    parse_json,
    validate_webhook_secret,
)
from kavach.records import (
    InboxEvent,
    IngestResult,
    SubscriptionState,
    UserRecord,
    most_relevant,
)
from kavach.stores.base import storable_text

if TYPE_CHECKING:
    from kavach.clock import Clock
    from kavach.core import Kavach
    from kavach.stores.base import Store

log = logging.getLogger("kavach.polar")

#: The ``subscription.*`` events that carry a Subscription object and update state.
SUBSCRIPTION_EVENTS = frozenset(
    {
        "subscription.created",
        "subscription.updated",
        "subscription.active",
        "subscription.canceled",
        "subscription.uncanceled",
        "subscription.past_due",
        "subscription.paused",
        "subscription.resumed",
        "subscription.cycled",
        "subscription.revoked",
    }
)
#: The largest webhook body accepted (bytes); larger ones are answered 413.
DEFAULT_MAX_WEBHOOK_BODY = 1024 * 1024
#: How long (seconds) a delivery whose callback is running blocks concurrent copies of it.
DEFAULT_WEBHOOK_CLAIM_SECONDS = 60.0
#: The cancellation reasons Polar accepts (``customer_cancellation_reason``, polar-api.md
#: §6); any other is refused before a call (Polar would answer 422).
CANCELLATION_REASONS = frozenset(
    {
        "customer_service",
        "low_quality",
        "missing_features",
        "switched_service",
        "too_complex",
        "too_expensive",
        "unused",
        "other",
    }
)
#: A Polar object id as Polar writes it (a UUID in canonical form, polar-api.md §8).
_POLAR_ID = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)

SubscriptionCallback = Callable[[str, PolarSubscription], object]


class _NotBound:
    """The class attribute behind :class:`PolarPlugin`'s ``_store`` and ``_clock``
    before ``bind``: reading it raises ``ConfigurationError``. A non-data descriptor
    (no ``__set__``), so the instance attributes ``bind`` sets take precedence."""

    def __get__(self, instance: object, owner: type | None = None) -> Any:
        if instance is None:
            return self
        raise ConfigurationError(
            "the polar plugin is not bound: pass it to create_kavach(plugins=[...])",
            field="plugins",
        )


@attrs.frozen
class WebhookOutcome:
    """What :meth:`PolarPlugin.handle_webhook` did with one delivery.

    ``outcome`` is one of ``applied`` (state changed, callback ran), ``stale`` (an older
    or equal version than stored: nothing changed), ``duplicate`` (this webhook-id was
    already processed), ``unmatched`` (no kavach user for it), ``ignored`` (not a
    subscription event) or ``foreign_organization``.
    """

    webhook_id: str
    event_type: str
    outcome: str
    user_id: str | None = None
    subscription_id: str | None = None
    status_code: int = 200

    def to_json(self) -> dict[str, Any]:
        """The JSON body the webhook route answers with."""
        body: dict[str, Any] = {
            "received": True,
            "webhookId": self.webhook_id,
            "type": self.event_type,
            "outcome": self.outcome,
        }
        if self.subscription_id:
            body["subscriptionId"] = self.subscription_id
        return body


@attrs.frozen
class SyncResult:
    """What :meth:`PolarPlugin.sync` found: subscription ids seen, applied and stale."""

    user_id: str
    seen: tuple[str, ...]
    applied: tuple[str, ...]


@attrs.frozen
class SubscriptionStatus:
    """:meth:`PolarPlugin.status`: the user's current subscription and access decision."""

    subscription: PolarSubscription | None
    access: AccessDecision


@attrs.frozen
class CheckoutReturn:
    """:meth:`PolarPlugin.get_checkout`'s answer: the checkout, the user's subscription
    after the sync (when the checkout succeeded) and what the sync did."""

    checkout: Checkout
    subscription: PolarSubscription | None
    synced: SyncResult | None


def with_checkout_id(success_url: str) -> str:
    """``success_url`` with ``checkout_id={CHECKOUT_ID}`` added unless it already carries
    the placeholder (Polar substitutes it with the checkout's id)."""
    if "{CHECKOUT_ID}" in success_url:
        return success_url
    query = urlsplit(success_url).query
    if any(k == "checkout_id" for k, _ in parse_qsl(query, keep_blank_values=True)):
        return success_url
    base, hash_sign, fragment = success_url.partition("#")
    fragment = hash_sign + fragment
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}checkout_id={{CHECKOUT_ID}}{fragment}"


def _validated_secret(value: object, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(f"{field} must be a non-empty string", field=field)
    if value != value.strip():
        raise ConfigurationError(f"{field} has leading or trailing whitespace", field=field)
    return value


class PolarPlugin:
    """Polar checkouts and subscription webhooks for a :class:`~kavach.core.Kavach`.

    Build it with :func:`polar` (which documents the options) and pass it to
    ``create_kavach(plugins=[...])``.
    """

    name = "polar"

    def __init__(
        self,
        access_token: str,
        webhook_secret: str,
        *,
        organization_id: str | None = None,
        sandbox: bool = False,
        on_subscription_change: SubscriptionCallback | None = None,
        base_url: str | None = None,
        session: requests.Session | None = None,
        timeout: float | tuple[float, float] | None = None,
        max_retries: int = 3,
        webhook_tolerance: int = DEFAULT_TOLERANCE_SECONDS,
        max_webhook_body: int = DEFAULT_MAX_WEBHOOK_BODY,
        past_due_grace: timedelta = timedelta(0),
        webhook_claim_seconds: float = DEFAULT_WEBHOOK_CLAIM_SECONDS,
    ) -> None:
        token = validate_access_token(_validated_secret(access_token, "access_token"))
        secret = validate_webhook_secret(webhook_secret)
        if organization_id is not None and (
            not isinstance(organization_id, str) or not organization_id.strip()
        ):
            raise ConfigurationError(
                "organization_id must be a non-empty string or None", field="organization_id"
            )
        if base_url is not None:
            if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
                raise ConfigurationError(
                    "base_url must be an http(s) URL such as https://sandbox-api.polar.sh",
                    field="base_url",
                )
            base_url = base_url.rstrip("/")
        if on_subscription_change is not None and not callable(on_subscription_change):
            raise ConfigurationError(
                "on_subscription_change must be callable", field="on_subscription_change"
            )
        if max_webhook_body <= 0:
            raise ConfigurationError("max_webhook_body must be positive", field="max_webhook_body")
        if (
            isinstance(webhook_claim_seconds, bool)
            or not isinstance(webhook_claim_seconds, int | float)
            or not math.isfinite(webhook_claim_seconds)
            or webhook_claim_seconds <= 0
        ):
            raise ConfigurationError(
                "webhook_claim_seconds must be a positive number of seconds",
                field="webhook_claim_seconds",
            )
        self.webhook_claim_seconds = float(webhook_claim_seconds)
        self.sandbox = bool(sandbox)
        self.base_url = base_url or (SANDBOX_API_URL if self.sandbox else PRODUCTION_API_URL)
        self.organization_id = organization_id
        self.on_subscription_change = on_subscription_change
        self.max_webhook_body = max_webhook_body
        if past_due_grace < timedelta(0):
            raise ConfigurationError("past_due_grace must not be negative", field="past_due_grace")
        self.past_due_grace = past_due_grace
        self.webhook_tolerance = webhook_tolerance
        client_options: dict[str, Any] = {"max_retries": max_retries}
        if timeout is not None:
            client_options["timeout"] = timeout
        self.client = PolarClient(token, base_url=self.base_url, session=session, **client_options)
        self._secret = secret
        self._verifier = WebhookVerifier(secret, tolerance=webhook_tolerance)
        self._kavach: Kavach | None = None

    def __repr__(self) -> str:
        org = f" organization_id={self.organization_id!r}" if self.organization_id else ""
        return f"<PolarPlugin base_url={self.base_url!r} sandbox={self.sandbox}{org}>"

    # -- plugin protocol -----------------------------------------------------------
    def bind(self, kavach: Kavach) -> None:
        """Attach to ``kavach`` (its store and clock); called by ``Kavach`` once."""
        if self._kavach is not None and self._kavach is not kavach:
            raise ConfigurationError(
                "this polar plugin is already bound to another Kavach", field="plugins"
            )
        self._kavach = kavach
        self._store = kavach.store
        self._clock = kavach.clock
        self._verifier = WebhookVerifier(
            self._secret, tolerance=self.webhook_tolerance, clock=kavach.clock
        )

    def close(self) -> None:
        """Close the HTTP session kavach opened (an injected session is left open)."""
        self.client.close()

    # The store and clock ``bind`` sets, as plain instance attributes (every webhook
    # reads them); before it, the class attribute answers, and raises.
    if TYPE_CHECKING:
        _store: Store
        _clock: Clock
    else:
        _store = _clock = _NotBound()

    # -- checkout ------------------------------------------------------------------
    def create_checkout(
        self,
        user_id: str,
        product_id: str,
        *,
        success_url: str | None = None,
        return_url: str | None = None,
        metadata: Mapping[str, str | int | float | bool] | None = None,
        allow_discount_codes: bool | None = None,
        discount_id: str | None = None,
        embed_origin: str | None = None,
    ) -> Checkout:
        """Create a Polar checkout session for a kavach user; redirect them to ``.url``.

        Sends ``POST /v1/checkouts/`` with ``products=[product_id]``,
        ``external_customer_id=user_id``, the user's email, ``success_url`` and
        ``metadata={"kavach_user_id": user_id, ...}`` (Polar copies the metadata onto the
        subscription, so the webhook finds the user even when Polar reuses an existing
        customer by email). Raises ``UserNotFoundError`` before any API call for an
        unknown user, ``PolarAPIError`` subclasses on Polar errors, and
        ``OrganizationMismatchError`` when ``organization_id`` is set and the checkout
        belongs to another organization.
        """
        if not isinstance(product_id, str) or not product_id.strip():
            raise ConfigurationError("product_id must be a non-empty string", field="product_id")
        user = self._store.get_user(user_id)
        if user is None:
            raise UserNotFoundError(user_id)
        body: dict[str, Any] = {
            "products": [product_id],
            "external_customer_id": user.id,
            "customer_email": user.email,
            "metadata": {**(metadata or {}), USER_ID_METADATA_KEY: user.id},
        }
        if user.name:
            body["customer_name"] = user.name
        optional = {
            "success_url": with_checkout_id(success_url) if success_url else None,
            "return_url": return_url,
            "allow_discount_codes": allow_discount_codes,
            "discount_id": discount_id,
            "embed_origin": embed_origin,
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        checkout = self.client.create_checkout(body)
        if self.organization_id and checkout.organization_id != self.organization_id:
            raise OrganizationMismatchError(
                expected=self.organization_id, actual=checkout.organization_id, what="checkout"
            )
        return checkout

    # -- subscription state ----------------------------------------------------------
    def get_subscription(self, user_id: str) -> PolarSubscription | None:
        """The user's most relevant subscription from the store (no API call).

        ``None`` when the user is unknown, has none, or it was revoked (status
        ``canceled`` or ``unpaid``). Relevance: active/trialing ones that renew, then
        active/trialing ones scheduled to end, then past_due, then the rest, newest first
        (:func:`kavach.records.subscription_rank`).
        """
        user = self._store.get_user(user_id)
        if user is None or user.polar_subscription_id is None:
            return None
        sub = PolarSubscription(
            id=user.polar_subscription_id,
            status=user.polar_subscription_status or "",
            product_id=user.polar_product_id,
            current_period_end=user.polar_current_period_end,
            cancel_at_period_end=bool(user.polar_cancel_at_period_end),
            customer_id=user.polar_customer_id,
        )
        return None if sub.is_revoked else sub

    def _current_state(self, user_id: str) -> SubscriptionState | None:
        """The user's most relevant subscription, read the cheap way when it is exact.

        The ``kavach_users`` mirror columns hold everything the access rules need except
        for ``trialing`` (``trial_end``) and ``past_due`` (``past_due_at``): for those, the
        full row is read. (For a scheduled cancellation Polar sets ``ends_at`` to the
        period end, which the mirror holds.)
        """
        user = self._store.get_user(user_id)
        if user is None or user.polar_subscription_id is None:
            return None
        status = user.polar_subscription_status or ""
        if status in ("trialing", "past_due"):
            return self._store.get_subscription(user.polar_subscription_id)
        return SubscriptionState(
            id=user.polar_subscription_id,
            user_id=user.id,
            status=status,
            product_id=user.polar_product_id,
            current_period_end=user.polar_current_period_end,
            cancel_at_period_end=bool(user.polar_cancel_at_period_end),
            version=user.polar_subscription_version or 0,
            customer_id=user.polar_customer_id,
        )

    def list_subscriptions(self, user_id: str) -> list[PolarSubscription]:
        """All subscriptions kavach holds for the user (revoked ones too), most relevant first."""
        return [PolarSubscription.from_state(s) for s in self._store.list_subscriptions(user_id)]

    def sync(self, user_id: str) -> SyncResult:
        """Pull the user's subscriptions from Polar and apply them through the guarded write.

        The repair path for a missed webhook and for the return from checkout: lists
        ``GET /v1/subscriptions/`` (all pages) with ``?external_customer_id=<user_id>``,
        ``?metadata[kavach_user_id]=<user_id>`` (the checkout metadata Polar copies onto
        the subscription: it finds a subscription whose Polar customer was reused by
        email, without the external id) and, when the user's Polar customer id is known,
        ``?customer_id=<id>``; a subscription found by several is applied once. One
        whose customer or metadata names another kavach user (the webhook's matching
        rule) is left to that user. Older data than what is stored never overwrites it;
        the callback runs once per applied change.
        """
        user = self._store.get_user(user_id)
        if user is None:
            raise UserNotFoundError(user_id)
        return self._sync(user)

    def _sync(
        self,
        user: UserRecord,
        *,
        checkout_customer_id: str | None = None,
        checkout_id: str | None = None,
    ) -> SyncResult:
        """:meth:`sync`, plus the subscriptions of ``checkout_customer_id`` (the customer
        of the user's succeeded checkout ``checkout_id``) that are this user's.

        Ownership is the webhook's matching rule (``_match_user``: customer external id,
        then ``metadata.kavach_user_id``, then the customer a user is linked to), read as
        each subscription is applied: one it gives to another user is skipped. One it
        gives to no one is the user's only when a query that proves it found it (the
        user's external id, metadata or linked customer), or when ``checkout_id``
        created it: the checkout's customer may have been found by email and be someone
        else's, so its other subscriptions are not taken on that ground. (Applying the
        checkout's own subscription links the user to that customer, unless another
        user holds it, exactly as its webhook would; from then on the rule gives the
        user that customer's subscriptions, as it does for webhooks.) Subscriptions that
        prove ownership are applied first, so the outcome does not depend on Polar's
        order.
        """
        trusted: list[dict[str, Any]] = [
            {"external_customer_id": user.id},
            {"metadata": {USER_ID_METADATA_KEY: user.id}},
        ]
        if user.polar_customer_id:
            trusted.append({"customer_id": user.polar_customer_id})
        checkout_query: dict[str, Any] | None = None
        if checkout_customer_id and checkout_customer_id != user.polar_customer_id:
            checkout_query = {"customer_id": checkout_customer_id}
        scope: dict[str, Any] = {}
        if self.organization_id:
            scope["organization_id"] = self.organization_id
        found: dict[str, dict[str, Any]] = {}
        proven: set[str] = set()
        for query in trusted:
            for data in self.client.list_subscriptions(**query, **scope):
                if isinstance(data, dict) and isinstance(data.get("id"), str):
                    found[data["id"]] = data
                    proven.add(data["id"])
        if checkout_query is not None:
            for data in self.client.list_subscriptions(**checkout_query, **scope):
                if isinstance(data, dict) and isinstance(data.get("id"), str):
                    found.setdefault(data["id"], data)
        applied: list[str] = []
        seen: list[str] = []
        now = self._clock.now()
        for sub_id, data in found.items():
            if self.organization_id and organization_of(data) not in (None, self.organization_id):
                continue
            owner = self._match_user(SubscriptionPayload.from_dict(data, fallback_time=now))
            if owner is not None and owner.id != user.id:
                log.info("sync of user %s: subscription %s is another user's", user.id, sub_id)
                continue
            if owner is None and sub_id not in proven and (
                checkout_id is None or data.get("checkout_id") != checkout_id
            ):
                continue
            seen.append(sub_id)
            state = state_from_payload(data, user.id, fallback_time=now)
            if self._apply_from_api(user, state, data) == "applied":
                applied.append(sub_id)
        return SyncResult(user_id=user.id, seen=tuple(seen), applied=tuple(applied))

    def _apply_from_api(
        self, user: UserRecord, state: SubscriptionState, data: Mapping[str, Any]
    ) -> str:
        """Apply a state read from Polar's API (``data``: its Subscription object) as a
        delivery of its own (:meth:`_apply_state`); the outcome: ``applied``, ``stale``,
        ``duplicate`` (this very state was applied and notified before) or ``in_progress``
        (another request is running its callback). A callback that raises propagates as
        :class:`WebhookCallbackError`; the next sync (or ``replay_event``) runs it again."""
        now = self._clock.now()
        payload = json.dumps(
            {"type": "subscription.updated", "timestamp": now.isoformat(), "data": data},
            separators=(",", ":"), default=str,  # ASCII: a lone surrogate stays an escape
        )
        delivery = _Delivery(_api_delivery_id(state), "subscription.updated", payload, now)
        try:
            return self._apply_state(delivery, user, state).outcome
        except WebhookInProgressError:
            return "in_progress"

    def status(self, user_id: str) -> SubscriptionStatus:
        """The user's most relevant subscription (``None`` when none or revoked) and the
        access decision, usually from one read of the store (the user row)."""
        current = self._current_state(user_id)
        decision = decide_access(current, self._clock.now(), past_due_grace=self.past_due_grace)
        sub = None if current is None or current.revoked else PolarSubscription.from_state(current)
        return SubscriptionStatus(subscription=sub, access=decision)

    def access(self, user_id: str, at: datetime | None = None) -> AccessDecision:
        """Is the user entitled now (or ``at``), and why? A pure function of stored state
        and the clock; see :func:`kavach.polar.access.decide_access` for the rules."""
        now = at or self._clock.now()
        return decide_access(
            self._current_state(user_id), now, past_due_grace=self.past_due_grace
        )

    # -- management: portal, cancel/uncancel, return from checkout ---------------------
    def create_portal_session(
        self, user_id: str, *, return_url: str | None = None
    ) -> CustomerSession:
        """A Polar customer-portal session for the user's own customer; send them to
        ``.customer_portal_url``. Raises ``UserNotFoundError`` before any call.

        The customer is the Polar customer the user is linked to (``customer_id``) when
        kavach knows it, else the one whose external id is the user's id: a customer
        Polar reused by email has no external id, so only the link finds it.
        """
        user = self._store.get_user(user_id)
        if user is None:
            raise UserNotFoundError(user_id)
        if user.polar_customer_id:
            return self.client.create_customer_session(
                customer_id=user.polar_customer_id, return_url=return_url
            )
        return self.client.create_customer_session(
            external_customer_id=user.id, return_url=return_url
        )

    def cancel_subscription(
        self,
        user_id: str,
        *,
        reason: str | None = None,
        comment: str | None = None,
    ) -> PolarSubscription:
        """Cancel the user's current subscription at the end of its period.

        ``PATCH /v1/subscriptions/{id}`` with ``cancel_at_period_end=true``; the answer is
        applied at once through the guarded write. Raises ``SubscriptionNotFoundError``
        when the user has no live subscription and ``InvalidInputError`` for a ``reason``
        Polar does not know (:data:`CANCELLATION_REASONS`); Polar's 403
        ``AlreadyCanceledSubscription``
        and 409 ``SubscriptionLocked`` arrive as ``PolarPermissionError`` /
        ``PolarConflictError`` with ``.error`` set.
        """
        if reason and reason not in CANCELLATION_REASONS:
            raise InvalidInputError(
                f"reason must be one of {', '.join(sorted(CANCELLATION_REASONS))}",
                field="reason",
            )
        body: dict[str, Any] = {"cancel_at_period_end": True}
        if reason:
            body["customer_cancellation_reason"] = reason
        if comment:
            body["customer_cancellation_comment"] = comment
        return self._update_own_subscription(user_id, body)

    def uncancel_subscription(self, user_id: str) -> PolarSubscription:
        """Undo a scheduled cancellation (``cancel_at_period_end=false``): of the user's
        live subscriptions, the most relevant one that is scheduled to end (else the
        current one)."""
        return self._update_own_subscription(
            user_id, {"cancel_at_period_end": False}, prefer_ending=True
        )

    def _update_own_subscription(
        self, user_id: str, body: dict[str, Any], *, prefer_ending: bool = False
    ) -> PolarSubscription:
        user = self._store.get_user(user_id)
        if user is None:
            raise UserNotFoundError(user_id)
        live = [s for s in self._store.list_subscriptions(user_id) if not s.revoked]
        ending = [s for s in live if s.cancel_at_period_end] if prefer_ending else []
        current = most_relevant(ending or live)
        if current is None:
            raise SubscriptionNotFoundError(user_id)
        data = self.client.update_subscription(current.id, body)
        state = state_from_payload(data, user.id, fallback_time=self._clock.now())
        self._apply_from_api(user, state, data)
        stored = self._store.get_subscription(state.id) or state
        return PolarSubscription.from_state(stored)

    def get_checkout(self, user_id: str, checkout_id: str) -> CheckoutReturn:
        """The return-from-checkout step: fetch the user's own checkout and, when it has
        succeeded, sync their subscriptions at once (no "paid but not upgraded" gap while
        the webhook is in flight). Another user's checkout raises ``CheckoutNotFoundError``,
        exactly like a missing one, and so does an id that is not a Polar id (a UUID),
        without asking Polar.

        The sync covers the checkout's Polar customer too (Polar may have reused a
        customer found by email, without the user's external id): of its subscriptions,
        the one this checkout created and those :meth:`sync` rules are the user's."""
        user = self._store.get_user(user_id)
        if user is None:
            raise UserNotFoundError(user_id)
        if not isinstance(checkout_id, str) or not _POLAR_ID.fullmatch(checkout_id):
            raise CheckoutNotFoundError(str(checkout_id))
        try:
            checkout = self.client.get_checkout(checkout_id)
        except (PolarNotFoundError, PolarValidationError):
            # A GET has no body: a 422 is about the id in the path (not one of Polar's).
            raise CheckoutNotFoundError(checkout_id) from None
        owner = checkout.external_customer_id or checkout.metadata.get(USER_ID_METADATA_KEY)
        if owner != user.id:
            raise CheckoutNotFoundError(checkout_id)
        if self.organization_id and checkout.organization_id != self.organization_id:
            raise CheckoutNotFoundError(checkout_id)
        synced: SyncResult | None = None
        if str(checkout.status) == "succeeded":
            synced = self._sync(
                user, checkout_customer_id=checkout.customer_id, checkout_id=checkout.id
            )
        return CheckoutReturn(checkout=checkout, subscription=self.get_subscription(user.id),
                              synced=synced)

    # -- webhooks --------------------------------------------------------------------
    def handle_webhook(self, body: bytes, headers: Mapping[str, str]) -> WebhookOutcome:
        """Verify, record and apply one Polar webhook delivery.

        Raises :class:`WebhookVerificationError` (answer 400, or 413 for reason
        ``body_too_large``) when the delivery is not genuine or not JSON,
        :class:`WebhookPayloadError` (400) when the verified JSON is not an event envelope,
        :class:`WebhookCallbackError` (answer 5xx so Polar retries) when
        ``on_subscription_change`` raised, and :class:`WebhookInProgressError` (answer 503
        with ``Retry-After``) when another request is running this delivery's callback
        right now. Store errors propagate (answer 5xx).

        One store commit per delivery (:meth:`~kavach.stores.base.Store.ingest_event`:
        inbox row and guarded write together); a second one, marking it processed, only
        when ``on_subscription_change`` is set. With a callback, the first commit also
        claims the delivery for ``webhook_claim_seconds``, and the second releases it.
        """
        if len(body) > self.max_webhook_body:
            raise WebhookVerificationError(
                "body_too_large",
                f"webhook body of {len(body)} bytes exceeds the {self.max_webhook_body} limit",
            )
        # One clock read per delivery: the time its timestamp is checked against, and
        # the time the inbox records it received.
        received_at = self._clock.now()
        self._verifier.verify(body, headers, now=received_at)
        webhook_id = _header(headers, "webhook-id")
        if not storable_text(webhook_id):  # signed, yet no store could key the inbox by it
            raise WebhookVerificationError(
                "bad_webhook_id", "webhook-id is over 255 characters or not plain text"
            )
        fast = decode_subscription_event(body, event_types=SUBSCRIPTION_EVENTS)
        if fast is not None:
            return self._ingest(
                webhook_id, fast.event_type, fast.payload, fast.subscription, received_at
            )
        envelope = parse_json(body)
        payload = body.decode("utf-8", errors="replace")
        return self._process(webhook_id, envelope, payload, received_at)

    def replay_event(self, webhook_id: str) -> WebhookOutcome:
        """Process a recorded delivery again, from the inbox (no signature, no API call).

        For deliveries that did not finish: the callback raised, or the process died. A
        processed delivery is left alone (outcome ``duplicate``). The same rules as a live
        delivery apply: the guarded write, the claim, the callback once per applied change.
        Raises ``NotFoundError`` for an unknown id, ``StoreCorruptError`` for a recorded
        row that cannot be read (a payload that is not text: written by hand).
        """
        stored = self._store.get_event(webhook_id)
        if stored is None:
            raise NotFoundError(f"no recorded webhook delivery {webhook_id!r}")
        if not isinstance(stored.payload, str):  # the kavach stores refuse such a row
            raise StoreCorruptError(
                f"the recorded payload of {webhook_id!r} is not text "
                f"({type(stored.payload).__name__})"
            )
        try:
            envelope = parse_json(stored.payload.encode("utf-8"))
        except WebhookVerificationError:
            raise WebhookPayloadError(
                "bad_envelope", f"the recorded payload of {webhook_id!r} is not JSON"
            ) from None
        if webhook_id.startswith(_API_DELIVERY_PREFIX) and stored.user_id is not None:
            # A state kavach read from the API for this user (sync, the return from a
            # checkout): its holder was decided then (a checkout's subscription may match
            # no one by the webhook rule), so it is replayed for that user.
            user = self._store.get_user(stored.user_id)
            data = envelope.get("data") if isinstance(envelope, dict) else None
            if user is not None and isinstance(data, dict):
                state = state_from_payload(data, user.id, fallback_time=stored.received_at)
                delivery = _Delivery(webhook_id, stored.event_type, stored.payload,
                                     self._clock.now())
                return self._apply_state(delivery, user, state)
        return self._process(webhook_id, envelope, stored.payload, self._clock.now())

    def _process(
        self, webhook_id: str, envelope: Any, payload: str, received_at: datetime
    ) -> WebhookOutcome:
        """The generic reading of a parsed envelope, then :meth:`_ingest`."""
        if not isinstance(envelope, dict):
            raise WebhookPayloadError("bad_envelope", "webhook body is not a JSON object")
        event_type = envelope.get("type")
        data = envelope.get("data")
        if not isinstance(event_type, str) or not event_type:
            raise WebhookPayloadError("bad_envelope", "webhook body has no 'type'")
        if not storable_text(event_type):
            raise WebhookPayloadError(
                "bad_envelope", "webhook 'type' is over 255 characters or not plain text"
            )
        subscription = None
        if event_type in SUBSCRIPTION_EVENTS and isinstance(data, dict):
            subscription = SubscriptionPayload.from_dict(
                data,
                fallback_time=parse_datetime(envelope.get("timestamp")),
            )
        return self._ingest(webhook_id, event_type, payload, subscription, received_at)

    def _ingest(
        self,
        webhook_id: str,
        event_type: str,
        payload: str,
        subscription: SubscriptionPayload | None,
        received_at: datetime,
    ) -> WebhookOutcome:
        """Everything after reading: record, match, apply, notify. ``subscription`` is
        ``None`` for other events, and for a subscription event whose ``data`` is not an
        object.

        There is no duplicate check before the work: ``ingest_event`` makes it, under the
        store's lock, and answers ``duplicate`` for an already processed delivery (a
        redelivery is rare; a read before every delivery would cost them all).
        """
        delivery = _Delivery(webhook_id, event_type, payload, received_at)
        if event_type not in SUBSCRIPTION_EVENTS:
            return self._finish(delivery, "ignored")
        if subscription is None:
            return self._fail(delivery, "subscription event without data")
        if self.organization_id:
            org = subscription.organization_id
            if org is not None and org != self.organization_id:
                return self._finish(delivery, "foreign_organization")
        user = self._match_user(subscription)
        if user is None:
            log.info(
                "webhook %s (%s) matches no kavach user", delivery.webhook_id, delivery.event_type
            )
            return self._finish(delivery, "unmatched")
        try:
            state = subscription.state_for(user.id)
        except SubscriptionPayloadError as exc:
            return self._fail(delivery, str(exc), user_id=user.id)
        return self._apply_state(delivery, user, state)

    def _apply_state(
        self, delivery: _Delivery, user: UserRecord, state: SubscriptionState
    ) -> WebhookOutcome:
        """Record ``delivery`` and apply ``state`` (held by ``user``) in one commit, then
        run the callback once per applied change, as design.md "Webhooks" says: the
        webhook path once the user is matched, and the path of every state kavach reads
        from Polar's API itself (``sync``, cancel...) under an inbox row of its own (see
        :func:`_api_delivery_id`), so a callback that raises there is owed, and run again,
        just as for a webhook."""
        if user.polar_customer_id != state.customer_id:
            self._check_customer_link(user, state.customer_id)
        callback = self.on_subscription_change
        # Without a callback the delivery is done once ingested; with one, it stays
        # "received", claimed by this request, until the callback returned: a copy of it
        # arriving meanwhile finds it in flight instead of running the callback again.
        status = "processed" if callback is None else "received"
        claimed_until = None
        if callback is not None:
            claimed_until = delivery.received_at + timedelta(seconds=self.webhook_claim_seconds)
        store = self._store
        # The outcome the store writes is "applied" or "stale", whatever is asked for;
        # asking for the likely one lets it keep this row as it is rather than copy it.
        result = store.ingest_event(
            delivery.event(
                status,
                outcome="applied",
                user_id=user.id,
                subscription_id=state.id,
                claimed_until=claimed_until,
            ),
            state,
        )
        if result.in_flight:
            _raise_in_flight(result, delivery)
        if result.duplicate:
            return _duplicate(result.event, delivery.event_type)
        applied = result.applied
        if applied is None:
            # An earlier attempt committed this state but never finished: its callback
            # failed, or its process died (its claim ran out). This request claimed the
            # delivery (ingest_event wrote the claim): run the callback again, unless a
            # newer change has been applied (and notified) since.
            stored = store.get_subscription(state.id)
            applied = stored is None or stored.version <= state.version
            if not applied:
                log.info("webhook %s: callback retry skipped, superseded", delivery.webhook_id)
        if callback is not None:
            if applied:
                try:
                    self._notify(user.id, state)
                except Exception as exc:
                    store.finish_event(
                        delivery.webhook_id,
                        status="failed",
                        at=self._clock.now(),
                        error=f"on_subscription_change raised {type(exc).__name__}",
                        user_id=user.id,
                        subscription_id=state.id,
                    )
                    raise WebhookCallbackError(delivery.webhook_id, exc) from exc
            store.finish_event(delivery.webhook_id, status="processed", at=self._clock.now())
        return WebhookOutcome(
            delivery.webhook_id,
            delivery.event_type,
            "applied" if applied else "stale",
            user.id,
            state.id,
        )

    def _match_user(self, subscription: SubscriptionPayload) -> UserRecord | None:
        """``customer.external_id``, then ``metadata.kavach_user_id``, then the stored
        Polar customer id (design.md, "Matching the user")."""
        store = self._store
        for user_id in (subscription.external_id, subscription.metadata_user_id):
            if user_id is not None:
                user = store.get_user(user_id)
                if user is not None:
                    return user
        if subscription.customer_ref is not None:
            return store.get_user_by_polar_customer(subscription.customer_ref)
        return None

    def _check_customer_link(self, user: UserRecord, customer_id: str | None) -> None:
        """Log what linking the user to the subscription's Polar customer will not do.

        The store links an unlinked user to the customer of the first state it applies
        to them, in that same write (see ``Store.apply_subscription``); it never replaces
        a link, and never takes a customer another user holds. Those two cases are
        worth a warning; a read, and only for a user not linked yet.
        """
        if not customer_id:
            return
        linked = user.polar_customer_id
        if linked is not None:
            if linked != customer_id:
                log.warning(
                    "user %s is linked to Polar customer %s; a subscription names %s",
                    user.id,
                    linked,
                    customer_id,
                )
            return
        holder = self._store.get_user_by_polar_customer(customer_id)
        if holder is not None and holder.id != user.id:
            log.warning(
                "Polar customer %s is already linked to another user; not linking %s",
                customer_id,
                user.id,
            )

    def _notify(self, user_id: str, state: SubscriptionState) -> None:
        if self.on_subscription_change is not None:
            self.on_subscription_change(user_id, PolarSubscription.from_state(state))

    def _finish(self, delivery: _Delivery, outcome: str) -> WebhookOutcome:
        """Record a delivery that changes no state as processed with ``outcome``."""
        event = delivery.event("processed", outcome=outcome)
        result = self._store.ingest_event(event)
        if result.in_flight:
            _raise_in_flight(result, delivery)
        if result.duplicate:
            return _duplicate(result.event, delivery.event_type)
        return WebhookOutcome(delivery.webhook_id, delivery.event_type, outcome)

    def _fail(
        self, delivery: _Delivery, reason: str, *, user_id: str | None = None
    ) -> WebhookOutcome:
        """A verified event kavach cannot use: recorded as failed, answered 400 (raises
        ``WebhookPayloadError``), unless the delivery turns out to be a duplicate."""
        event = delivery.event("failed", error=reason, user_id=user_id)
        result = self._store.ingest_event(event)
        if result.in_flight:
            _raise_in_flight(result, delivery)
        if result.duplicate:
            return _duplicate(result.event, delivery.event_type)
        raise WebhookPayloadError("bad_subscription", reason)


#: How the inbox ids of states read from Polar's API (not webhooks) begin.
_API_DELIVERY_PREFIX = "kavach-api-"


def _api_delivery_id(state: SubscriptionState) -> str:
    """The inbox id of a state kavach read from Polar's API (not a webhook): one per
    subscription version, so the same state read twice is one delivery (a duplicate
    once notified) and a callback it still owes is run by the next read."""
    digest = hashlib.sha256(f"{state.id}\n{state.version}".encode()).hexdigest()[:32]
    return _API_DELIVERY_PREFIX + digest


class _Delivery(NamedTuple):
    """A verified delivery on its way into the inbox (one per request: a named tuple)."""

    webhook_id: str
    event_type: str
    payload: str
    received_at: datetime

    def event(
        self,
        status: str,
        *,
        outcome: str | None = None,
        error: str | None = None,
        user_id: str | None = None,
        subscription_id: str | None = None,
        claimed_until: datetime | None = None,
    ) -> InboxEvent:
        """The inbox row to ingest for this delivery."""
        return InboxEvent(  # positional, in the record's field order: one per delivery
            self.webhook_id,
            self.event_type,
            self.received_at,
            self.payload,
            status,
            outcome,
            1,  # attempts
            self.received_at if status == "processed" else None,  # processed_at
            error,  # last_error
            user_id,
            subscription_id,
            claimed_until,
        )


def _raise_in_flight(result: IngestResult, delivery: _Delivery) -> NoReturn:
    """Raise :class:`WebhookInProgressError`: ``ingest_event`` found the delivery claimed
    by another request (``result.in_flight``), and so changed nothing."""
    claimed_until = result.event.claimed_until
    remaining = 0.0
    if claimed_until is not None:
        remaining = (claimed_until - delivery.received_at).total_seconds()
    log.info("webhook %s is in flight elsewhere; answering retry later", delivery.webhook_id)
    raise WebhookInProgressError(delivery.webhook_id, retry_after=max(1, math.ceil(remaining)))


def _duplicate(stored: InboxEvent, event_type: str) -> WebhookOutcome:
    """The answer to a redelivery of an already processed webhook id."""
    return WebhookOutcome(
        stored.webhook_id, event_type, "duplicate", stored.user_id, stored.subscription_id
    )


def _header(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name)
    if value is None:
        for key, val in headers.items():
            if key.lower() == name:
                return val
        return ""
    return value


def polar(
    access_token: str,
    webhook_secret: str,
    *,
    organization_id: str | None = None,
    sandbox: bool = False,
    on_subscription_change: SubscriptionCallback | None = None,
    base_url: str | None = None,
    session: requests.Session | None = None,
    timeout: float | tuple[float, float] | None = None,
    max_retries: int = 3,
    webhook_tolerance: int = DEFAULT_TOLERANCE_SECONDS,
    max_webhook_body: int = DEFAULT_MAX_WEBHOOK_BODY,
    past_due_grace: timedelta = timedelta(0),
    webhook_claim_seconds: float = DEFAULT_WEBHOOK_CLAIM_SECONDS,
) -> PolarPlugin:
    """The Polar plugin, configured and validated at once.

    ``sandbox=True`` talks to ``https://sandbox-api.polar.sh``; ``base_url`` overrides the
    API host (a proxy, or :class:`kavach.testing.FakePolar`). An empty ``access_token`` or
    ``webhook_secret`` raises ``ConfigurationError`` naming the field.

    ``webhook_claim_seconds`` (default 60) is how long a delivery whose
    ``on_subscription_change`` callback is running blocks concurrent copies of it (the same
    ``webhook-id`` arriving at another worker or process): they are answered 503 with
    ``Retry-After`` (:class:`~kavach.errors.WebhookInProgressError`) instead of running the
    callback a second time. Set it above the longest your callback may take; once it
    passes, the delivery is presumed crashed and a copy runs the callback again. Polar
    gives up on an attempt after 10 s and retries later, so the default leaves ample room.
    """
    return PolarPlugin(
        access_token,
        webhook_secret,
        organization_id=organization_id,
        sandbox=sandbox,
        on_subscription_change=on_subscription_change,
        base_url=base_url,
        session=session,
        timeout=timeout,
        max_retries=max_retries,
        webhook_tolerance=webhook_tolerance,
        max_webhook_body=max_webhook_body,
        past_due_grace=past_due_grace,
        webhook_claim_seconds=webhook_claim_seconds,
    )
