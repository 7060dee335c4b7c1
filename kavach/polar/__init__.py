"""The Polar (polar.sh) plugin: checkouts, subscription state, webhooks."""

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
