"""Routes under ``/auth/polar``: checkout, the user's subscription, and the webhook."""

from __future__ import annotations

import logging
from typing import Any

from kavach.errors import (
    InvalidInputError,
    NotFoundError,
    PolarAPIError,
    PolarConflictError,
    PolarError,
    PolarPermissionError,
    PolarValidationError,
    UserNotFoundError,
    WebhookCallbackError,
    WebhookInProgressError,
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
    except PolarValidationError as exc:
        # 422: Polar refused what was asked (an unknown or archived product...): the
        # client's input, not a Polar failure.
        logger.info("polar refused a checkout: %r", exc)
        raise HttpError(
            400, "invalid_input", "Polar refused the checkout: " + _validation_summary(exc),
            field="productId",
        ) from None
    except PolarError as exc:
        logger.warning("polar checkout failed: %r", exc)
        raise HttpError(502, "polar_error", polar_failure_message(exc)) from None
    return Response.json(200, {"url": result.url, "id": result.id})


def _callback_failed(exc: WebhookCallbackError) -> HttpError:
    """500 for the app's ``on_subscription_change`` raising (logged with its traceback):
    the change is committed and the callback owed, whatever route applied it."""
    logger.error("subscription callback failed: %s", exc, exc_info=exc.cause)
    return HttpError(500, "callback_failed", "the subscription callback failed")


def _validation_summary(exc: PolarValidationError) -> str:
    """The first of Polar's 422 problems, as ``msg`` (never the input it echoes)."""
    detail = exc.detail
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):
        msg = detail[0].get("msg")
        if isinstance(msg, str) and msg:
            return msg[:200]
    return "invalid request"


def subscription(ctx: HttpContext, request: Request) -> Response:
    """``GET /auth/polar/subscription``: the signed-in user's subscription (or ``null``)
    and the access decision (``{granted, reason, until, subscriptionId}``)."""
    plugin = _plugin(ctx)
    auth = authenticate(ctx, request)
    status = plugin.status(auth.user_id)
    return Response.json(
        200,
        {
            "subscription": subscription_json(status.subscription),
            "access": status.access.to_json(),
        },
    )


def _optional_trusted_url(
    ctx: HttpContext, request: Request, data: dict[str, Any], field: str
) -> str | None:
    url = data.get(field)
    if url is None:
        return None
    if not isinstance(url, str) or not is_safe_redirect(url, request, ctx.trusted_origins):
        raise HttpError(
            400,
            f"untrusted_{_snake(field)}",
            f"{field} must be an absolute URL on a trusted origin",
            field=field,
        )
    return url


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name)


def _optional_body(request: Request) -> dict[str, Any]:
    """The JSON object body, or ``{}`` when the request has no body at all."""
    return read_json_object(request) if request.body.strip() else {}


def portal(ctx: HttpContext, request: Request) -> Response:
    """``POST /auth/polar/portal`` ``{returnUrl?}``: a Polar customer-portal link for the
    signed-in user's own customer (never one named in the request)."""
    plugin = _plugin(ctx)
    auth = authenticate(ctx, request)
    return_url = _optional_trusted_url(ctx, request, _optional_body(request), "returnUrl")
    try:
        session = plugin.create_portal_session(auth.user_id, return_url=return_url)
    except UserNotFoundError:
        raise unauthorized("the session's user no longer exists") from None
    except PolarAPIError as exc:
        if exc.status_code in (404, 422):
            raise HttpError(
                404, "no_customer", "you have no Polar customer yet (no purchase)"
            ) from None
        logger.warning("polar portal session failed: %r", exc)
        raise HttpError(502, "polar_error", polar_failure_message(exc)) from None
    except PolarError as exc:
        logger.warning("polar portal session failed: %r", exc)
        raise HttpError(502, "polar_error", polar_failure_message(exc)) from None
    return Response.json(200, {"url": session.customer_portal_url})


def _change_subscription(ctx: HttpContext, request: Request, *, cancel: bool) -> Response:
    plugin = _plugin(ctx)
    auth = authenticate(ctx, request)
    data = _optional_body(request)
    try:
        if cancel:
            reason = data.get("reason")
            comment = data.get("comment")
            if reason is not None and not isinstance(reason, str):
                raise HttpError(400, "invalid_input", "reason must be a string", field="reason")
            if comment is not None and not isinstance(comment, str):
                raise HttpError(400, "invalid_input", "comment must be a string", field="comment")
            sub = plugin.cancel_subscription(auth.user_id, reason=reason, comment=comment)
        else:
            sub = plugin.uncancel_subscription(auth.user_id)
    except UserNotFoundError:
        raise unauthorized("the session's user no longer exists") from None
    except InvalidInputError as exc:
        raise HttpError(400, "invalid_input", str(exc), field=exc.field) from None
    except NotFoundError:
        raise HttpError(404, "no_subscription", "you have no live subscription") from None
    except PolarPermissionError as exc:
        if exc.error == "AlreadyCanceledSubscription":
            raise HttpError(
                409, "already_canceled", "the subscription is already canceled"
            ) from None
        raise HttpError(
            409, "not_permitted", "Polar refused this change to the subscription"
        ) from None
    except PolarConflictError:
        raise HttpError(
            409, "subscription_locked", "the subscription has a pending update; try again later"
        ) from None
    except WebhookCallbackError as exc:
        raise _callback_failed(exc) from None
    except PolarError as exc:
        logger.warning("polar subscription update failed: %r", exc)
        raise HttpError(502, "polar_error", polar_failure_message(exc)) from None
    return Response.json(200, {"subscription": subscription_json(sub)})


def cancel_subscription(ctx: HttpContext, request: Request) -> Response:
    """``POST /auth/polar/subscription/cancel`` ``{reason?, comment?}``: cancel the user's
    own subscription at the end of its period."""
    return _change_subscription(ctx, request, cancel=True)


def uncancel_subscription(ctx: HttpContext, request: Request) -> Response:
    """``POST /auth/polar/subscription/uncancel``: undo a scheduled cancellation."""
    return _change_subscription(ctx, request, cancel=False)


def checkout_status(ctx: HttpContext, request: Request, checkout_id: str) -> Response:
    """``GET /auth/polar/checkout/{id}``: the return from checkout. The user's own checkout
    only (another's is 404, like a missing one); a succeeded one syncs the subscription."""
    plugin = _plugin(ctx)
    auth = authenticate(ctx, request)
    try:
        result = plugin.get_checkout(auth.user_id, checkout_id)
    except UserNotFoundError:
        raise unauthorized("the session's user no longer exists") from None
    except NotFoundError:
        raise HttpError(404, "not_found", "no such checkout") from None
    except WebhookCallbackError as exc:
        raise _callback_failed(exc) from None
    except PolarError as exc:
        logger.warning("polar checkout lookup failed: %r", exc)
        raise HttpError(502, "polar_error", polar_failure_message(exc)) from None
    status = plugin.status(auth.user_id)
    return Response.json(
        200,
        {
            "checkout": {"id": result.checkout.id, "status": str(result.checkout.status)},
            "subscription": subscription_json(status.subscription),
            "access": status.access.to_json(),
        },
    )


def webhook(ctx: HttpContext, request: Request) -> Response:
    """``POST /auth/polar/webhook``: hand the raw body and headers to the plugin, which
    verifies the signature (no session, no CSRF check: the signature is the auth). A copy
    of a delivery another request is still processing gets 503 with ``Retry-After``."""
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
        raise _callback_failed(exc) from None
    except WebhookInProgressError as exc:
        raise HttpError(
            503,
            "in_progress",
            "this delivery is being processed by another request; retry later",
            headers=[("Retry-After", str(exc.retry_after))],
        ) from None
    return Response.json(outcome.status_code, outcome.to_json())


_VERIFICATION_MESSAGES = {
    "missing_headers": "webhook-id, webhook-timestamp and webhook-signature headers are required",
    "bad_timestamp": "webhook-timestamp is not a unix time in seconds",
    "stale_timestamp": "webhook-timestamp is outside the accepted window",
    "bad_signature": "webhook-signature is malformed",
    "no_matching_signature": "no webhook signature matches",
    "malformed_json": "the webhook body is not valid JSON",
    "body_too_large": "the webhook body is too large",
    "bad_webhook_id": "webhook-id is not a usable delivery id",
}


def _verification_message(exc: WebhookVerificationError) -> str:
    return _VERIFICATION_MESSAGES.get(exc.reason, "webhook verification failed")
