"""kavach: a sync-first, embeddable Python auth SDK with pluggable stores and a Polar plugin.

>>> from kavach import create_kavach
>>> kavach = create_kavach("memory://")
"""

from kavach._version import __version__
from kavach.clock import Clock, FrozenClock, SystemClock
from kavach.core import Kavach, KavachConfig, create_kavach
from kavach.errors import (
    ConfigurationError,
    ConflictError,
    EmailTakenError,
    InvalidCredentialsError,
    InvalidInputError,
    KavachError,
    NotFoundError,
    OrganizationMismatchError,
    PolarAPIError,
    PolarAuthenticationError,
    PolarConflictError,
    PolarConnectionError,
    PolarError,
    PolarNotFoundError,
    PolarPermissionError,
    PolarRateLimitError,
    PolarResponseError,
    PolarServerError,
    PolarTimeoutError,
    PolarValidationError,
    StoreCorruptError,
    StoreError,
    UnknownPluginError,
    UserNotFoundError,
    WebhookCallbackError,
    WebhookError,
    WebhookInProgressError,
    WebhookPayloadError,
    WebhookVerificationError,
)
from kavach.passwords import PasswordHasher
from kavach.sessions import IssuedSession, Session
from kavach.users import User

__all__ = [
    "Clock",
    "ConfigurationError",
    "ConflictError",
    "EmailTakenError",
    "FrozenClock",
    "InvalidCredentialsError",
    "InvalidInputError",
    "IssuedSession",
    "Kavach",
    "KavachConfig",
    "KavachError",
    "NotFoundError",
    "OrganizationMismatchError",
    "PasswordHasher",
    "PolarAPIError",
    "PolarAuthenticationError",
    "PolarConflictError",
    "PolarConnectionError",
    "PolarError",
    "PolarNotFoundError",
    "PolarPermissionError",
    "PolarRateLimitError",
    "PolarResponseError",
    "PolarServerError",
    "PolarTimeoutError",
    "PolarValidationError",
    "Session",
    "StoreCorruptError",
    "StoreError",
    "SystemClock",
    "UnknownPluginError",
    "User",
    "UserNotFoundError",
    "WebhookCallbackError",
    "WebhookError",
    "WebhookInProgressError",
    "WebhookPayloadError",
    "WebhookVerificationError",
    "__version__",
    "create_kavach",
]
