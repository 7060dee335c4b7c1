"""The fake Polar's state (private): :class:`FakeState` composes the core with its
checkout/customer and subscription-lifecycle operations."""

from __future__ import annotations

from kavach.testing._fake_billing import BillingOps
from kavach.testing._fake_checkouts import CheckoutOps
from kavach.testing._fake_core import (
    ApiError,
    Event,
    not_found,
    validation_error,
    value_error,
)

__all__ = ["ApiError", "Event", "FakeState", "not_found", "validation_error", "value_error"]


class FakeState(CheckoutOps, BillingOps):
    """All the fake's objects and the operations on them, behind one re-entrant lock."""
