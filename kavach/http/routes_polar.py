"""Routes under ``/auth/polar``: checkout, the user's subscription, and the webhook."""

from __future__ import annotations

import logging
from typing import Any

from kavach.errors import (
    PolarAPIError,
    PolarError,
    UserNotFoundError,
    WebhookCallbackError,
    WebhookPayloadError,
    WebhookVerificationError,
)
from kavach.http.context import HttpContext, PolarPort, authenticate, unauthorized
from kavach.http.csrf import is_safe_redirect
from kavach.http.messages import HttpError, Request, Response, read_json_object
from kavach.http.routes_auth import iso_z

logger = logging.getLogger("kavach.http")


def _plugin(ctx: HttpContext) -> PolarPort:
    if ctx.polar is None:
        raise HttpError(404, "not_found", "the Polar plugin is not configured")
    return ctx.polar


def subscription_json(subscription: Any) -> dict[str, Any] | None:
    """The public JSON form of a ``PolarSubscription`` (``None`` stays ``None``)."""
    if subscription is None:
        return None
    period_end = subscription.current_period_end
    return {
        "id": subscription.id,
        "status": subscription.status,
        "productId": subscription.product_id,
        "currentPeriodEnd": iso_z(period_end) if period_end is not None else None,
        "cancelAtPeriodEnd": bool(subscription.cancel_at_period_end),
    }


def polar_failure_message(exc: PolarError) -> str:
    """A fixed, secret-free description of a Polar failure for the 502 body."""
    if isinstance(exc, PolarAPIError):
        code = f", error {exc.error}" if isinstance(exc.error, str) and exc.error else ""
        return f"Polar request failed (status {exc.status_code}{code})"
    return f"Polar request failed ({type(exc).__name__})"


def checkout(ctx: HttpContext, request: Request) -> Response:
    """``POST /auth/polar/checkout`` ``{productId, successUrl?}``: a Polar checkout for the
    signed-in user; ``successUrl`` must be on a trusted origin."""
    plugin = _plugin(ctx)
    auth = authenticate(ctx, request)
    data = read_json_object(request)
    product_id = data.get("productId")
    if not isinstance(product_id, str) or not product_id.strip():
        raise HttpError(
            400, "invalid_input", "productId must be a non-empty string", field="productId"
        )
    success_url = data.get("successUrl")
    if success_url is not None and (
        not isinstance(success_url, str)
        or not is_safe_redirect(success_url, request, ctx.trusted_origins)
    ):
        raise HttpError(
            400,
            "untrusted_success_url",
            "successUrl must be an absolute URL on a trusted origin",
            field="successUrl",
        )
    try:
        result = plugin.create_checkout(auth.user_id, product_id, success_url=success_url)
    except UserNotFoundError:
        raise unauthorized("the session's user no longer exists") from None
    except PolarError as exc:
        logger.warning("polar checkout failed: %r", exc)
        raise HttpError(502, "polar_error", polar_failure_message(exc)) from None
    return Response.json(200, {"url": result.url, "id": result.id})


def subscription(ctx: HttpContext, request: Request) -> Response:
    """``GET /auth/polar/subscription``: the signed-in user's subscription, or ``null``."""
    plugin = _plugin(ctx)
    auth = authenticate(ctx, request)
    return Response.json(
        200, {"subscription": subscription_json(plugin.get_subscription(auth.user_id))}
    )


def webhook(ctx: HttpContext, request: Request) -> Response:
    """``POST /auth/polar/webhook``: hand the raw body and headers to the plugin, which
    verifies the signature (no session, no CSRF check: the signature is the auth)."""
    plugin = _plugin(ctx)
    try:
        outcome = plugin.handle_webhook(request.body, request.headers)
    except WebhookVerificationError as exc:
        status = 413 if exc.reason == "body_too_large" else 400
        raise HttpError(status, exc.reason, _verification_message(exc)) from None
    except WebhookPayloadError as exc:
        raise HttpError(
            400, exc.reason, "the webhook payload is not a Polar event envelope"
        ) from None
    except WebhookCallbackError as exc:
        logger.error("webhook callback failed: %s", exc, exc_info=exc.cause)
        raise HttpError(500, "callback_failed", "the subscription callback failed") from None
    return Response.json(outcome.status_code, outcome.to_json())


_VERIFICATION_MESSAGES = {
    "missing_headers": "webhook-id, webhook-timestamp and webhook-signature headers are required",
    "bad_timestamp": "webhook-timestamp is not a unix time in seconds",
    "stale_timestamp": "webhook-timestamp is outside the accepted window",
    "bad_signature": "webhook-signature is malformed",
    "no_matching_signature": "no webhook signature matches",
    "malformed_json": "the webhook body is not valid JSON",
    "body_too_large": "the webhook body is too large",
}


def _verification_message(exc: WebhookVerificationError) -> str:
    return _VERIFICATION_MESSAGES.get(exc.reason, "webhook verification failed")
