"""Access decisions: is this user entitled right now, and why?

A pure function of the stored subscription state and the clock — no API call.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import attrs

from kavach.records import REVOKED_STATUSES, SubscriptionState

#: Every reason :func:`decide_access` can give.
ACCESS_REASONS = (
    "active",
    "trialing",
    "canceled_in_grace",
    "past_due",
    "paused",
    "revoked",
    "none",
)


@attrs.frozen
class AccessDecision:
    """``granted``: may the user use the paid product now; ``reason``: why (one of
    :data:`ACCESS_REASONS`); ``until``: when this decision runs out by itself, if known
    (the end of the paid period for a scheduled cancellation, the end of the past-due
    grace period, the end of a trial). ``subscription_id`` names the subscription decided on.
    """

    granted: bool
    reason: str
    until: datetime | None = None
    subscription_id: str | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "granted": self.granted,
            "reason": self.reason,
            "until": _iso(self.until),
            "subscriptionId": self.subscription_id,
        }


def _iso(when: datetime | None) -> str | None:
    """ISO 8601 UTC with milliseconds and ``Z`` (JavaScript's ``toISOString`` form, as the
    HTTP routes write every time)."""
    if when is None:
        return None
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def decide_access(
    state: SubscriptionState | None,
    now: datetime,
    *,
    past_due_grace: timedelta = timedelta(0),
) -> AccessDecision:
    """The access decision for a user whose most relevant subscription is ``state``.

    * no subscription → ``none``, denied;
    * ``canceled``/``unpaid`` → ``revoked``, denied;
    * ``active``/``trialing`` with ``cancel_at_period_end`` → ``canceled_in_grace``, granted
      until the period end (denied as ``revoked`` once it has passed, even if the revoke
      webhook has not arrived yet);
    * ``trialing`` → granted until the trial end; ``active`` → granted until the period end
      (renewals move it);
    * ``past_due`` → granted for ``past_due_grace`` after ``past_due_at`` (default 0: denied);
    * ``paused`` → denied; any other status (``incomplete``...) → ``none``, denied.
    """
    if state is None:
        return AccessDecision(False, "none")
    sub_id = state.id
    status = state.status
    if status in REVOKED_STATUSES:
        return AccessDecision(False, "revoked", None, sub_id)
    period_end = state.current_period_end
    if status in ("active", "trialing"):
        if state.cancel_at_period_end:
            end = state.ends_at or period_end
            if end is not None and now >= end:
                return AccessDecision(False, "revoked", end, sub_id)
            return AccessDecision(True, "canceled_in_grace", end, sub_id)
        if status == "trialing":
            return AccessDecision(True, "trialing", state.trial_end or period_end, sub_id)
        return AccessDecision(True, "active", period_end, sub_id)
    if status == "past_due":
        since = state.past_due_at or period_end
        if since is None or past_due_grace <= timedelta(0):
            return AccessDecision(False, "past_due", since, sub_id)
        until = since + past_due_grace
        return AccessDecision(now < until, "past_due", until, sub_id)
    if status == "paused":
        return AccessDecision(False, "paused", None, sub_id)
    return AccessDecision(False, "none", None, sub_id)
