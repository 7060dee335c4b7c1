"""Testing kit: a local fake Polar and Polar-style webhook signing.

>>> from kavach.testing import FakePolar, sign_webhook
"""

from kavach.polar.webhooks import sign_webhook
from kavach.testing.fake_polar import DeliveryAttempt, FakePolar, FakePolarError

__all__ = ["DeliveryAttempt", "FakePolar", "FakePolarError", "sign_webhook"]
