"""Subscription lifecycle: cancel, uncancel, revoke, past due, renewals (private).

Every change goes through ``_change``, which bumps ``modified_at`` and emits the events
Polar's ``_after_subscription_updated`` would: ``updated`` first, then ``active``,
``cycled``, ``canceled``, ``uncanceled``, ``past_due`` and ``revoked`` as they apply.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from kavach.testing._fake_core import (
    Event,
    StateCore,
    already_canceled,
    bad_request,
)
from kavach.testing._fake_objects import (
    ACTIVE_STATUSES,
    BILLABLE_STATUSES,
    JSON,
    REVOKED_STATUSES,
    SubscriptionRecord,
    add_interval,
)


class BillingOps(StateCore):
    """Subscription changes and period processing of :class:`FakeState`."""

    def _change(
        self,
        sub: SubscriptionRecord,
        mutate: Callable[[datetime], None],
        *,
        at: datetime | None = None,
        cycled: bool = False,
    ) -> list[Event]:
        """Apply ``mutate``, bump ``modified_at`` and emit Polar's update events."""
        previous_status, previous_ends_at = sub.status, sub.ends_at
        moment = self.tick(at)
        mutate(moment)
        sub.modified_at = moment
        data = self.render_subscription(sub)
        names = ["subscription.updated"]
        if sub.status in ACTIVE_STATUSES and previous_status not in ACTIVE_STATUSES:
            names.append("subscription.active")
        if cycled:
            names.append("subscription.cycled")
        is_canceled = sub.ends_at is not None and sub.canceled_at is not None
        became_revoked = sub.status in REVOKED_STATUSES and previous_status not in (
            REVOKED_STATUSES
        )
        if is_canceled and (sub.ends_at != previous_ends_at or became_revoked):
            names.append("subscription.canceled")
        if previous_ends_at is not None and not is_canceled:
            names.append("subscription.uncanceled")
        if sub.status == "past_due" and previous_status != "past_due":
            names.append("subscription.past_due")
        if became_revoked:
            names.append("subscription.revoked")
        return [self._event(name, data, at) for name in names]

    @staticmethod
    def _can_cancel(sub: SubscriptionRecord, *, immediately: bool) -> bool:
        if sub.status not in BILLABLE_STATUSES or sub.ended_at is not None:
            return False
        return immediately or not (sub.cancel_at_period_end or sub.ends_at is not None)

    def _finish(self, sub: SubscriptionRecord, events: list[Event]) -> tuple[JSON, list[Event]]:
        events.append(self._state_changed(sub))
        return self.render_subscription(sub), events

    def cancel(
        self, subscription_id: str, *, reason: str | None = None, comment: str | None = None
    ) -> tuple[JSON, list[Event]]:
        """Cancel at period end: ``updated`` + ``canceled``; access continues until ``ends_at``."""
        with self.lock:
            sub = self.subscription(subscription_id)
            if not self._can_cancel(sub, immediately=False):
                raise already_canceled()

            def mutate(moment: datetime) -> None:
                sub.cancel_at_period_end = True
                sub.canceled_at = moment
                sub.ends_at = sub.current_period_end
                sub.customer_cancellation_reason = reason or sub.customer_cancellation_reason
                sub.customer_cancellation_comment = comment or sub.customer_cancellation_comment

            return self._finish(sub, self._change(sub, mutate))

    def uncancel(self, subscription_id: str) -> tuple[JSON, list[Event]]:
        """Undo a cancel-at-period-end: ``updated`` + ``uncanceled`` (no-op if not canceled)."""
        with self.lock:
            sub = self.subscription(subscription_id)
            if sub.ended_at is not None or sub.status in REVOKED_STATUSES:
                raise already_canceled()
            if not sub.cancel_at_period_end and sub.ends_at is None:
                return self.render_subscription(sub), []

            def mutate(_moment: datetime) -> None:
                sub.cancel_at_period_end = False
                sub.canceled_at = None
                sub.ends_at = None

            return self._finish(sub, self._change(sub, mutate))

    def revoke(
        self, subscription_id: str, *, reason: str | None = None, comment: str | None = None
    ) -> tuple[JSON, list[Event]]:
        """End now: ``updated`` + ``canceled`` + ``revoked``, status ``canceled``."""
        with self.lock:
            sub = self.subscription(subscription_id)
            if not self._can_cancel(sub, immediately=True):
                raise already_canceled()

            def mutate(moment: datetime) -> None:
                sub.status = "canceled"
                sub.canceled_at = moment
                sub.ends_at = sub.ended_at = moment
                sub.customer_cancellation_reason = reason or sub.customer_cancellation_reason
                sub.customer_cancellation_comment = comment or sub.customer_cancellation_comment

            return self._finish(sub, self._change(sub, mutate))

    def past_due(self, subscription_id: str) -> tuple[JSON, list[Event]]:
        """A renewal payment failed: ``updated`` + ``past_due``."""
        with self.lock:
            sub = self.subscription(subscription_id)
            if sub.status not in ACTIVE_STATUSES:
                raise bad_request(f"subscription is {sub.status}, not active or trialing")

            def mutate(moment: datetime) -> None:
                sub.status = "past_due"
                sub.past_due_at = moment

            return self._finish(sub, self._change(sub, mutate))

    def recover(self, subscription_id: str) -> tuple[JSON, list[Event]]:
        """The overdue payment succeeded: ``updated`` + ``active``."""
        with self.lock:
            sub = self.subscription(subscription_id)
            if sub.status != "past_due":
                raise bad_request(f"subscription is {sub.status}, not past_due")

            def mutate(_moment: datetime) -> None:
                sub.status = "active"
                sub.past_due_at = None

            return self._finish(sub, self._change(sub, mutate))

    def mark_unpaid(self, subscription_id: str) -> tuple[JSON, list[Event]]:
        """Dunning gave up: ``updated`` + ``revoked``, status ``unpaid``."""
        with self.lock:
            sub = self.subscription(subscription_id)
            if sub.status != "past_due":
                raise bad_request(f"subscription is {sub.status}, not past_due")

            def mutate(moment: datetime) -> None:
                sub.status = "unpaid"
                sub.ends_at = sub.ended_at = moment

            return self._finish(sub, self._change(sub, mutate))

    # --- time -------------------------------------------------------------------------

    def process_due(self) -> list[Event]:
        """Expire old checkouts, then end or renew every subscription whose period passed.

        Periods are handled in chronological order, each stamped with its own end time.
        """
        with self.lock:
            now = self.now()
            events: list[Event] = []
            for checkout in self.checkouts.values():
                if checkout.status == "open" and checkout.expires_at <= now:
                    checkout.status = "expired"
                    checkout.modified_at = self.tick(checkout.expires_at)
                    events.append(
                        self._event("checkout.expired", self.render_checkout(checkout),
                                    checkout.expires_at)
                    )
            while True:
                due = [s for s in self.subscriptions.values() if _is_due(s, now)]
                if not due:
                    return events
                events.extend(self._period_end(min(due, key=lambda s: s.current_period_end)))

    def _period_end(self, sub: SubscriptionRecord) -> list[Event]:
        at = sub.current_period_end
        if sub.cancel_at_period_end:

            def end(moment: datetime) -> None:
                sub.status = "canceled"
                sub.ended_at = moment

            events = self._change(sub, end, at=at)
            events.append(self._state_changed(sub, at))
            return events

        def renew(_moment: datetime) -> None:
            if sub.status == "trialing":
                sub.status = "active"
                sub.anchor = sub.current_period_end
                sub.period_index = 0
            sub.period_index += 1
            sub.current_period_start = sub.current_period_end
            sub.current_period_end = add_interval(
                sub.anchor, sub.recurring_interval, sub.recurring_interval_count * sub.period_index
            )

        events = self._change(sub, renew, at=at, cycled=True)
        customer, product = self.customers[sub.customer_id], self.products[sub.product_id]
        order = self._order(customer, product, sub, None, sub.amount, "subscription_cycle", at)
        events.extend(self._order_events(order, at))
        events.append(self._state_changed(sub, at))
        return events

def _is_due(sub: SubscriptionRecord, now: datetime) -> bool:
    if sub.ended_at is not None or sub.current_period_end > now:
        return False
    return sub.status in ACTIVE_STATUSES or (sub.status == "past_due" and sub.cancel_at_period_end)
