"""kavach's exception tree.

Every error kavach raises is a :class:`KavachError`. Where a caller would naturally
catch a builtin, the error also inherits it (``ConfigurationError`` is a ``ValueError``,
``UnknownPluginError`` a ``LookupError``). Errors carry context as attributes, and
never a secret: no token, password or webhook secret reaches a message or a ``repr``.
"""

from __future__ import annotations

from typing import Any


class KavachError(Exception):
    """Root of every error kavach raises."""


class ConfigurationError(KavachError, ValueError):
    """A configuration value is missing or invalid; ``field`` names it."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class UnknownPluginError(KavachError, LookupError):
    """``kavach.plugins[name]`` for a plugin that is not installed."""

    def __init__(self, name: str, available: list[str]) -> None:
        shown = ", ".join(sorted(available)) or "none"
        super().__init__(f"no plugin named {name!r} (installed: {shown})")
        self.name = name
        self.available = available


# --- storage -----------------------------------------------------------------


class StoreError(KavachError):
    """The store failed to read or write."""


class ConflictError(StoreError):
    """A uniqueness rule refused a write; ``field`` names the unique field."""

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


class EmailTakenError(ConflictError):
    """Another user already has this email (emails are case-insensitive)."""

    def __init__(self, email: str) -> None:
        super().__init__(f"a user with email {email!r} already exists", field="email")
        self.email = email


class NotFoundError(KavachError, LookupError):
    """A record the caller named does not exist."""


class UserNotFoundError(NotFoundError):
    """No user with this id."""

    def __init__(self, user_id: str) -> None:
        super().__init__(f"no user with id {user_id!r}")
        self.user_id = user_id


class SubscriptionNotFoundError(NotFoundError):
    """The user has no live subscription to act on."""

    def __init__(self, user_id: str) -> None:
        super().__init__(f"user {user_id!r} has no live subscription")
        self.user_id = user_id


class CheckoutNotFoundError(NotFoundError):
    """No checkout with this id belongs to the user (missing and foreign look the same)."""

    def __init__(self, checkout_id: str) -> None:
        super().__init__(f"no checkout {checkout_id!r} for this user")
        self.checkout_id = checkout_id


class StoreCorruptError(StoreError):
    """A store file cannot be read (not a torn last line, which is skipped)."""


# --- users and sessions ------------------------------------------------------


class InvalidInputError(KavachError, ValueError):
    """User-supplied input is invalid; ``field`` names it."""

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


class InvalidCredentialsError(KavachError):
    """Email and password do not match a user (deliberately vague)."""

    def __init__(self) -> None:
        super().__init__("invalid email or password")


# --- Polar -------------------------------------------------------------------


class PolarError(KavachError):
    """Root of errors from the Polar plugin."""


class PolarAPIError(PolarError):
    """Polar answered with a non-2xx status.

    ``error`` is Polar's error code (``"ResourceNotFound"``, ``"invalid_token"``...),
    ``detail`` its message, or for validation errors the list of problems Polar sends.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        error: str | None = None,
        detail: Any = None,
        retry_after: float | None = None,
        method: str | None = None,
        path: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.error = error
        self.detail = detail
        self.retry_after = retry_after
        self.method = method
        self.path = path

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status_code={self.status_code}, error={self.error!r}, "
            f"method={self.method!r}, path={self.path!r})"
        )


class PolarAuthenticationError(PolarAPIError):
    """401: the access token is missing, invalid, expired or revoked."""


class PolarPermissionError(PolarAPIError):
    """403: the token lacks a scope or the action is not permitted."""


class PolarNotFoundError(PolarAPIError):
    """404: the object does not exist (or is not visible to this token)."""


class PolarConflictError(PolarAPIError):
    """409: e.g. ``SubscriptionLocked``."""


class PolarValidationError(PolarAPIError):
    """422: ``detail`` is Polar's list of ``{type, loc, msg, input}`` problems."""


class PolarRateLimitError(PolarAPIError):
    """429: ``retry_after`` holds Polar's ``retry-after`` seconds, when sent."""


class PolarServerError(PolarAPIError):
    """5xx from Polar."""


class PolarConnectionError(PolarError):
    """Polar could not be reached (DNS, refused connection, TLS, timeout)."""

    def __init__(self, message: str, *, method: str, path: str) -> None:
        super().__init__(message)
        self.method = method
        self.path = path


class PolarTimeoutError(PolarConnectionError):
    """Polar did not answer within the configured timeout."""


class PolarResponseError(PolarError):
    """Polar answered 2xx with a body kavach cannot read."""


class OrganizationMismatchError(PolarError):
    """A Polar object belongs to another organization than the configured one."""

    def __init__(self, *, expected: str, actual: str | None, what: str) -> None:
        super().__init__(
            f"{what} belongs to organization {actual!r}, not the configured {expected!r}"
        )
        self.expected = expected
        self.actual = actual


class WebhookError(PolarError):
    """Root of webhook delivery errors."""


class WebhookVerificationError(WebhookError):
    """The delivery is not a genuine, fresh Polar webhook.

    ``reason`` is machine-readable: ``missing_headers``, ``bad_timestamp``,
    ``stale_timestamp``, ``bad_signature``, ``no_matching_signature``,
    ``malformed_json``, ``body_too_large``.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason

    def __repr__(self) -> str:
        return f"WebhookVerificationError(reason={self.reason!r})"


class WebhookPayloadError(WebhookError):
    """A verified delivery whose JSON does not have the envelope Polar sends."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class WebhookCallbackError(WebhookError):
    """``on_subscription_change`` raised; the delivery stays unprocessed for Polar's retry."""

    def __init__(self, webhook_id: str, cause: BaseException) -> None:
        super().__init__(
            f"on_subscription_change raised {type(cause).__name__} for webhook {webhook_id!r}"
        )
        self.webhook_id = webhook_id
        self.cause = cause


class WebhookInProgressError(WebhookError):
    """Another request is processing this delivery right now (its callback is running).

    The copy is not processed: answer 503 with ``Retry-After: retry_after`` and Polar
    retries it later, when it finds the delivery processed (a duplicate) or, should the
    other request have failed, runs it then. ``retry_after`` is whole seconds until the
    other request's claim ends (at least 1).
    """

    def __init__(self, webhook_id: str, retry_after: int) -> None:
        super().__init__(
            f"webhook {webhook_id!r} is being processed by another request; "
            f"retry in {retry_after} s"
        )
        self.webhook_id = webhook_id
        self.retry_after = retry_after
