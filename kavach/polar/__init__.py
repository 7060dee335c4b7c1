"""The Polar (polar.sh) plugin: checkouts, subscription state, webhooks.

The names below load on first use (PEP 562): importing one of this package's modules,
``kavach.polar.webhooks`` say, does not load the plugin and its HTTP client with it
(the ``kavach`` command starts in a fraction of the time).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kavach.polar.models import Checkout
    from kavach.polar.plugin import (
        SUBSCRIPTION_EVENTS,
        PolarPlugin,
        SyncResult,
        WebhookOutcome,
        polar,
    )
    from kavach.polar.subscriptions import PolarSubscription
    from kavach.polar.webhooks import WebhookVerifier, sign_webhook

#: Each public name, and the module that defines it.
_EXPORTS = {
    "Checkout": "kavach.polar.models",
    "SUBSCRIPTION_EVENTS": "kavach.polar.plugin",
    "PolarPlugin": "kavach.polar.plugin",
    "SyncResult": "kavach.polar.plugin",
    "WebhookOutcome": "kavach.polar.plugin",
    "polar": "kavach.polar.plugin",
    "PolarSubscription": "kavach.polar.subscriptions",
    "WebhookVerifier": "kavach.polar.webhooks",
    "sign_webhook": "kavach.polar.webhooks",
}

__all__ = [
    "SUBSCRIPTION_EVENTS",
    "Checkout",
    "PolarPlugin",
    "PolarSubscription",
    "SyncResult",
    "WebhookOutcome",
    "WebhookVerifier",
    "polar",
    "sign_webhook",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
