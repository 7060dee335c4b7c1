"""Testing kit: a local fake Polar, Polar-style webhook signing, safe cassettes.

>>> from kavach.testing import FakePolar, polar_vcr_config, sign_webhook
"""

from kavach.polar.webhooks import sign_webhook
from kavach.testing.cassettes import (
    LOOPBACK_HOSTS,
    UnredactableBodyError,
    polar_vcr_config,
    redact_request,
    redact_response,
    redact_secrets,
)
from kavach.testing.fake_polar import DeliveryAttempt, FakePolar, FakePolarError

__all__ = [
    "LOOPBACK_HOSTS",
    "DeliveryAttempt",
    "FakePolar",
    "FakePolarError",
    "UnredactableBodyError",
    "polar_vcr_config",
    "redact_request",
    "redact_response",
    "redact_secrets",
    "sign_webhook",
]
