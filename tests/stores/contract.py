"""The store contract: one test class that every backend must pass unchanged.

A backend's test module subclasses :class:`StoreContract` and supplies fixtures:

``store``
    a fresh, empty, open store (closed after the test);
``reopen``
    a callable opening *another* store on the same data, or ``None`` when the backend
    keeps nothing (memory);
``store_url``
    a URL that ``kavach.stores.open_store`` opens in another process, or ``None``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from uuid import uuid4

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kavach.errors import (
    ConflictError,
    EmailTakenError,
    NotFoundError,
    StoreError,
    UserNotFoundError,
)
from kavach.records import SubscriptionState, most_relevant
from kavach.stores import SCHEMA_VERSION, Store, normalize_email

from . import _workers
from .factories import T0, event, session, state, user

Reopen = Callable[[], Store]

#: For property tests that use the function-scoped ``store`` fixture: every example
#: uses fresh ids, so examples do not depend on each other; and each backend's subclass
#: runs the same test method (hence "differing executors"), on a store of its own.
store_settings = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.differing_executors],
)
#: Text any backend stores: no NUL (PostgreSQL refuses it) and no lone surrogates.
storable_text = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\x00"),
    max_size=12,
)
#: Aware datetimes in any fixed offset, within the range every backend stores.
aware_datetimes = st.builds(
    lambda naive, minutes: naive.replace(tzinfo=timezone(timedelta(minutes=minutes))),
    st.datetimes(min_value=datetime(1000, 1, 2), max_value=datetime(9999, 12, 30)),
    st.integers(min_value=-23 * 60 - 59, max_value=23 * 60 + 59),
)


class StoreContract:
    """Every behaviour of :class:`kavach.stores.Store`; one behaviour per test."""

    @pytest.fixture
    def reopen(self) -> Reopen | None:
        """Overridden by backends that persist."""
        return None

    @pytest.fixture
    def store_url(self) -> str | None:
        """Overridden by backends another process can open."""
        return None

    # -- the protocol -------------------------------------------------------------------
    def test_store_satisfies_the_protocol(self, store: Store) -> None:
        assert isinstance(store, Store)
        assert store.kind in ("memory", "json", "sqlite", "postgres", "mysql")

    def test_schema_version_is_current(self, store: Store) -> None:
        assert store.schema_version() == SCHEMA_VERSION

    def test_close_is_idempotent_and_later_calls_raise_store_error(self, store: Store) -> None:
        store.close()
        store.close()
        with pytest.raises(StoreError):
            store.get_user("u1")

    # -- users --------------------------------------------------------------------------
    def test_create_user_then_get_returns_it(self, store: Store) -> None:
        created = store.create_user(user("u1"))
        assert created == user("u1")
        assert store.get_user("u1") == created

    def test_get_unknown_user_returns_none(self, store: Store) -> None:
        assert store.get_user("nobody") is None

    def test_get_user_by_email_ignores_case_and_surrounding_space(self, store: Store) -> None:
        store.create_user(user("u1", email="Jane.Doe@Acme.io"))
        found = store.get_user_by_email("  jane.doe@ACME.IO ")
        assert found is not None and found.id == "u1"
        assert found.email == "Jane.Doe@Acme.io"  # stored as given

    def test_get_user_by_unknown_email_returns_none(self, store: Store) -> None:
        assert store.get_user_by_email("ghost@example.com") is None

    def test_create_user_with_email_taken_in_other_case_raises_email_taken(
        self, store: Store
    ) -> None:
        store.create_user(user("u1", email="jane@acme.io"))
        with pytest.raises(EmailTakenError):
            store.create_user(user("u2", email="JANE@acme.io"))
        assert store.count_users() == 1

    def test_create_user_with_taken_id_raises_conflict_on_id(self, store: Store) -> None:
        store.create_user(user("u1"))
        with pytest.raises(ConflictError) as caught:
            store.create_user(user("u1", email="other@example.com"))
        assert caught.value.field == "id"
        assert not isinstance(caught.value, EmailTakenError)

    def test_create_user_with_linked_polar_customer_raises_conflict(self, store: Store) -> None:
        store.create_user(user("u1", polar_customer_id="cus_1"))
        with pytest.raises(ConflictError) as caught:
            store.create_user(user("u2", polar_customer_id="cus_1"))
        assert caught.value.field == "polar_customer_id"

    def test_ids_are_case_and_space_sensitive(self, store: Store) -> None:
        store.create_user(user("abc", email="a@example.com"))
        store.create_user(user("ABC", email="b@example.com"))
        store.create_user(user("abc ", email="c@example.com"))
        assert store.count_users() == 3
        found = store.get_user("ABC")
        assert found is not None and found.email == "b@example.com"

    def test_count_users(self, store: Store) -> None:
        assert store.count_users() == 0
        for i in range(3):
            store.create_user(user(f"u{i}"))
        assert store.count_users() == 3

    def test_update_user_changes_only_given_fields(self, store: Store) -> None:
        store.create_user(user("u1", name="Old"))
        updated = store.update_user("u1", name="New")
        assert updated == user("u1", name="New")
        assert store.get_user("u1") == updated

    def test_update_user_if_password_hash_writes_only_over_that_hash(self, store: Store) -> None:
        # A re-hash at sign-in races a password change: the change must win.
        store.create_user(user("u1", password_hash="$argon2id$old"))
        store.update_user("u1", password_hash="$argon2id$changed")
        kept = store.update_user(
            "u1", password_hash="$argon2id$rehashed", if_password_hash="$argon2id$old"
        )
        assert kept.password_hash == "$argon2id$changed"
        stored = store.get_user("u1")
        assert stored is not None and stored.password_hash == "$argon2id$changed"
        done = store.update_user(
            "u1", password_hash="$argon2id$rehashed", if_password_hash="$argon2id$changed"
        )
        assert done.password_hash == "$argon2id$rehashed"

    def test_update_user_email_moves_the_lookup(self, store: Store) -> None:
        store.create_user(user("u1", email="old@example.com"))
        store.update_user("u1", email="New@Example.com")
        assert store.get_user_by_email("old@example.com") is None
        found = store.get_user_by_email("new@example.com")
        assert found is not None and found.email == "New@Example.com"

    def test_update_user_email_to_taken_email_raises_email_taken(self, store: Store) -> None:
        store.create_user(user("u1", email="one@example.com"))
        store.create_user(user("u2", email="two@example.com"))
        with pytest.raises(EmailTakenError):
            store.update_user("u2", email="ONE@example.com")
        assert store.get_user("u2") == user("u2", email="two@example.com")

    def test_update_user_may_change_case_of_own_email(self, store: Store) -> None:
        store.create_user(user("u1", email="jane@acme.io"))
        assert store.update_user("u1", email="Jane@Acme.io").email == "Jane@Acme.io"

    def test_update_unknown_user_raises_user_not_found(self, store: Store) -> None:
        with pytest.raises(UserNotFoundError):
            store.update_user("nobody", name="X")

    def test_link_polar_customer_makes_user_findable_by_it(self, store: Store) -> None:
        store.create_user(user("u1"))
        linked = store.link_polar_customer("u1", "cus_1")
        assert linked.polar_customer_id == "cus_1"
        assert store.get_user_by_polar_customer("cus_1") == linked

    def test_link_polar_customer_twice_with_same_value_is_idempotent(self, store: Store) -> None:
        store.create_user(user("u1"))
        first = store.link_polar_customer("u1", "cus_1")
        assert store.link_polar_customer("u1", "cus_1") == first

    def test_link_polar_customer_held_by_other_user_raises_conflict(self, store: Store) -> None:
        store.create_user(user("u1"))
        store.create_user(user("u2"))
        store.link_polar_customer("u1", "cus_1")
        with pytest.raises(ConflictError) as caught:
            store.link_polar_customer("u2", "cus_1")
        assert caught.value.field == "polar_customer_id"

    def test_link_polar_customer_overwrites_previous_value(self, store: Store) -> None:
        store.create_user(user("u1"))
        store.link_polar_customer("u1", "cus_old")
        store.link_polar_customer("u1", "cus_new")
        assert store.get_user_by_polar_customer("cus_old") is None
        found = store.get_user_by_polar_customer("cus_new")
        assert found is not None and found.id == "u1"

    def test_link_polar_customer_of_unknown_user_raises_user_not_found(self, store: Store) -> None:
        with pytest.raises(UserNotFoundError):
            store.link_polar_customer("nobody", "cus_1")

    def test_get_user_by_unknown_polar_customer_returns_none(self, store: Store) -> None:
        assert store.get_user_by_polar_customer("cus_none") is None

    @store_settings
    @given(prefix=storable_text, suffix=storable_text)
    def test_email_lookup_matches_exactly_the_normalized_form(
        self, store: Store, prefix: str, suffix: str
    ) -> None:
        email = f"{prefix}{uuid4().hex}{suffix}"
        store.create_user(user(uuid4().hex, email=email))
        for variant in (email.upper(), email.lower(), email.swapcase(), f" {email}\t"):
            found = store.get_user_by_email(variant)
            if normalize_email(variant) == normalize_email(email):
                assert found is not None and found.email == email
                with pytest.raises(EmailTakenError):
                    store.create_user(user(uuid4().hex, email=variant))
            else:
                assert found is None or found.email != email

    # -- sessions -----------------------------------------------------------------------
    def test_create_session_then_get_returns_it(self, store: Store) -> None:
        store.create_session(session("h1"))
        assert store.get_session("h1") == session("h1")

    def test_get_unknown_session_returns_none(self, store: Store) -> None:
        assert store.get_session("nope") is None

    def test_create_session_with_duplicate_hash_raises_conflict(self, store: Store) -> None:
        store.create_session(session("h1"))
        with pytest.raises(ConflictError) as caught:
            store.create_session(session("h1", user_id="u2"))
        assert caught.value.field == "token_hash"

    def test_revoke_session_returns_true_once(self, store: Store) -> None:
        store.create_session(session("h1"))
        assert store.revoke_session("h1", T0 + timedelta(hours=1)) is True
        assert store.revoke_session("h1", T0 + timedelta(hours=2)) is False
        revoked = store.get_session("h1")
        assert revoked is not None and revoked.revoked_at == T0 + timedelta(hours=1)

    def test_revoke_unknown_session_returns_false(self, store: Store) -> None:
        assert store.revoke_session("nope", T0) is False

    def test_delete_expired_sessions_removes_only_those_expired_before_now(
        self, store: Store
    ) -> None:
        store.create_session(session("old", expires_at=T0 - timedelta(microseconds=1)))
        store.create_session(session("edge", expires_at=T0))
        store.create_session(session("live", expires_at=T0 + timedelta(days=1)))
        assert store.delete_expired_sessions(T0) == 1
        assert store.get_session("old") is None
        assert store.get_session("edge") is not None
        assert store.get_session("live") is not None
        assert store.delete_expired_sessions(T0) == 0

    # -- webhook inbox ------------------------------------------------------------------
    def test_record_new_event_returns_it_and_true(self, store: Store) -> None:
        assert store.record_event(event("wh1")) == (event("wh1"), True)
        assert store.get_event("wh1") == event("wh1")

    def test_record_duplicate_of_processed_event_changes_nothing(self, store: Store) -> None:
        store.record_event(event("wh1"))
        done = store.finish_event("wh1", status="processed", at=T0, outcome="applied")
        assert store.record_event(event("wh1", received_at=T0 + timedelta(1))) == (done, False)
        assert store.get_event("wh1") == done

    def test_record_redelivery_of_received_event_counts_an_attempt(self, store: Store) -> None:
        store.record_event(event("wh1"))
        again, is_new = store.record_event(event("wh1"))
        assert is_new is False
        assert again.attempts == 2 and again.status == "received"
        assert store.get_event("wh1") == again

    def test_record_redelivery_of_failed_event_sets_it_received(self, store: Store) -> None:
        store.record_event(event("wh1"))
        store.finish_event("wh1", status="failed", at=T0, error="callback raised")
        again, is_new = store.record_event(event("wh1"))
        assert is_new is False
        assert (again.status, again.attempts, again.last_error) == (
            "received",
            2,
            "callback raised",
        )

    def test_finish_event_processed_sets_fields(self, store: Store) -> None:
        store.record_event(event("wh1"))
        at = T0 + timedelta(seconds=3)
        done = store.finish_event(
            "wh1", status="processed", at=at, outcome="unmatched", user_id="u1", subscription_id="s"
        )
        assert (done.status, done.processed_at, done.outcome) == ("processed", at, "unmatched")
        assert (done.user_id, done.subscription_id, done.last_error) == ("u1", "s", None)
        assert store.get_event("wh1") == done

    def test_finish_event_failed_records_error_without_processed_at(self, store: Store) -> None:
        store.record_event(event("wh1"))
        failed = store.finish_event("wh1", status="failed", at=T0, error="boom")
        assert (failed.status, failed.last_error, failed.processed_at) == ("failed", "boom", None)

    def test_finish_event_never_overwrites_applied_outcome(self, store: Store) -> None:
        store.create_user(user("u1"))
        store.record_event(event("wh1"))
        store.apply_subscription(state(version=1), webhook_id="wh1")
        done = store.finish_event("wh1", status="processed", at=T0, outcome="stale")
        assert done.outcome == "applied"
        assert store.get_event("wh1") == done

    def test_a_processed_delivery_stays_processed(self, store: Store) -> None:
        # A request whose callback outlived its claim reports "failed" after a copy of
        # the delivery finished it: the late report changes nothing (else Polar's retry
        # of that request would run the callback a second time).
        store.record_event(event("wh1"))
        done = store.finish_event("wh1", status="processed", at=T0, outcome="applied")
        late = store.finish_event("wh1", status="failed", at=T0, error="callback raised")
        assert late == done and store.get_event("wh1") == done

    def test_finish_event_leaves_fields_given_as_none(self, store: Store) -> None:
        store.record_event(event("wh1"))
        store.finish_event("wh1", status="failed", at=T0, outcome="ignored", user_id="u1")
        done = store.finish_event("wh1", status="processed", at=T0)
        assert (done.outcome, done.user_id, done.last_error) == ("ignored", "u1", None)

    def test_finish_unknown_event_raises_not_found(self, store: Store) -> None:
        with pytest.raises(NotFoundError):
            store.finish_event("nope", status="processed", at=T0)

    def test_finish_event_with_unknown_status_raises_value_error(self, store: Store) -> None:
        store.record_event(event("wh1"))
        with pytest.raises(ValueError):
            store.finish_event("wh1", status="done", at=T0)

    def test_list_events_newest_first_then_by_webhook_id(self, store: Store) -> None:
        store.record_event(event("a", received_at=T0))
        store.record_event(event("b", received_at=T0 + timedelta(seconds=1)))
        store.record_event(event("c", received_at=T0))
        store.record_event(event("B", received_at=T0))
        assert [e.webhook_id for e in store.list_events()] == ["b", "c", "a", "B"]

    def test_list_events_filters_by_status(self, store: Store) -> None:
        for i in range(4):
            store.record_event(event(f"wh{i}", received_at=T0 + timedelta(seconds=i)))
        store.finish_event("wh1", status="processed", at=T0)
        store.finish_event("wh3", status="processed", at=T0)
        assert [e.webhook_id for e in store.list_events(status="processed")] == ["wh3", "wh1"]
        assert [e.webhook_id for e in store.list_events(status="received")] == ["wh2", "wh0"]

    def test_list_events_pages_with_limit_and_offset(self, store: Store) -> None:
        for i in range(5):
            store.record_event(event(f"wh{i}", received_at=T0 + timedelta(seconds=i)))
        assert [e.webhook_id for e in store.list_events(limit=2)] == ["wh4", "wh3"]
        assert [e.webhook_id for e in store.list_events(limit=2, offset=2)] == ["wh2", "wh1"]
        assert [e.webhook_id for e in store.list_events(limit=2, offset=4)] == ["wh0"]
        assert list(store.list_events(limit=0)) == []

    def test_list_events_with_negative_limit_raises_value_error(self, store: Store) -> None:
        with pytest.raises(ValueError):
            store.list_events(limit=-1)

    def test_count_events_in_total_and_by_status(self, store: Store) -> None:
        for i in range(3):
            store.record_event(event(f"wh{i}"))
        store.finish_event("wh0", status="processed", at=T0)
        assert store.count_events() == 3
        assert store.count_events(status="processed") == 1
        assert store.count_events(status="received") == 2
        assert store.count_events(status="failed") == 0

    def test_event_payload_of_one_mebibyte_round_trips(self, store: Store) -> None:
        payload = '{"data": "' + "é" * (1024 * 1024 // 2 - 8) + '"}'
        store.record_event(event("big", payload=payload))
        stored = store.get_event("big")
        assert stored is not None and stored.payload == payload

    # -- the conditional write ----------------------------------------------------------
    def test_first_state_is_applied(self, store: Store) -> None:
        store.create_user(user("u1"))
        assert store.apply_subscription(state(version=10)) is True
        assert store.get_subscription("sub1") == state(version=10)

    def test_older_version_is_refused(self, store: Store) -> None:
        store.create_user(user("u1"))
        store.apply_subscription(state(version=10))
        assert store.apply_subscription(state(version=9, status="canceled")) is False
        assert store.get_subscription("sub1") == state(version=10)

    def test_equal_version_is_refused(self, store: Store) -> None:
        store.create_user(user("u1"))
        store.apply_subscription(state(version=10))
        assert store.apply_subscription(state(version=10, status="past_due")) is False
        assert store.get_subscription("sub1") == state(version=10)

    def test_newer_version_is_applied(self, store: Store) -> None:
        store.create_user(user("u1"))
        store.apply_subscription(state(version=10))
        newer = state(version=11, status="canceled", cancel_at_period_end=True)
        assert store.apply_subscription(newer) is True
        assert store.get_subscription("sub1") == newer

    def test_applied_state_sets_the_mirror_columns(self, store: Store) -> None:
        store.create_user(user("u1"))
        applied = state(version=7, status="trialing", product_id="prod_9")
        store.apply_subscription(applied)
        mirrored = store.get_user("u1")
        assert mirrored is not None
        assert (
            mirrored.polar_subscription_id,
            mirrored.polar_subscription_status,
            mirrored.polar_product_id,
            mirrored.polar_current_period_end,
            mirrored.polar_cancel_at_period_end,
            mirrored.polar_subscription_version,
        ) == ("sub1", "trialing", "prod_9", applied.current_period_end, False, 7)

    def test_applied_state_marks_the_webhook_event_applied(self, store: Store) -> None:
        store.create_user(user("u1"))
        store.record_event(event("wh1"))
        store.apply_subscription(state(version=1), webhook_id="wh1")
        marked = store.get_event("wh1")
        assert marked is not None
        assert (marked.outcome, marked.user_id, marked.subscription_id) == ("applied", "u1", "sub1")
        assert marked.status == "received"  # finishing is the caller's job

    def test_refused_state_leaves_the_webhook_event_alone(self, store: Store) -> None:
        store.create_user(user("u1"))
        store.apply_subscription(state(version=5))
        store.record_event(event("wh1"))
        assert store.apply_subscription(state(version=4), webhook_id="wh1") is False
        assert store.get_event("wh1") == event("wh1")

    # -- applying a state links its holder to the subscription's Polar customer ----------
    def test_applied_state_links_an_unlinked_holder_to_its_customer(self, store: Store) -> None:
        store.create_user(user("u1"))
        store.apply_subscription(state(version=1, customer_id="cus_1"))
        linked = store.get_user_by_polar_customer("cus_1")
        assert linked is not None and linked.id == "u1"
        assert linked.polar_customer_id == "cus_1"
        assert linked.polar_subscription_version == 1  # the same write as the mirror

    def test_ingested_state_links_an_unlinked_holder_to_its_customer(self, store: Store) -> None:
        store.create_user(user("u1"))
        result = store.ingest_event(event("wh1"), state(version=1, customer_id="cus_1"))
        assert result.applied is True
        linked = store.get_user("u1")
        assert linked is not None and linked.polar_customer_id == "cus_1"
        assert store.get_user_by_polar_customer("cus_1") == linked

    def test_applied_state_keeps_the_holders_existing_customer_link(self, store: Store) -> None:
        store.create_user(user("u1"))
        store.link_polar_customer("u1", "cus_old")
        store.ingest_event(event("wh1"), state(version=1, customer_id="cus_new"))
        kept = store.get_user("u1")
        assert kept is not None and kept.polar_customer_id == "cus_old"
        assert store.get_user_by_polar_customer("cus_new") is None

    def test_applied_state_never_takes_a_customer_linked_to_another_user(
        self, store: Store
    ) -> None:
        store.create_user(user("u1"))
        store.create_user(user("u2"))
        store.link_polar_customer("u2", "cus_1")
        assert store.ingest_event(event("wh1"), state(version=1, customer_id="cus_1")).applied
        holder = store.get_user_by_polar_customer("cus_1")
        assert holder is not None and holder.id == "u2"
        unlinked = store.get_user("u1")
        assert unlinked is not None and unlinked.polar_customer_id is None
        assert unlinked.polar_subscription_version == 1  # the state itself was applied

    def test_refused_state_links_nothing(self, store: Store) -> None:
        store.create_user(user("u1"))
        store.apply_subscription(state(version=5))
        assert store.apply_subscription(state(version=4, customer_id="cus_1")) is False
        stale = store.ingest_event(event("wh1"), state(version=3, customer_id="cus_1"))
        assert stale.applied is False
        assert store.get_user_by_polar_customer("cus_1") is None

    def test_apply_for_unknown_user_raises_user_not_found(self, store: Store) -> None:
        with pytest.raises(UserNotFoundError):
            store.apply_subscription(state(user_id="nobody"))
        assert store.get_subscription("sub1") is None

    def test_mirror_shows_active_subscription_over_newer_canceled_one(self, store: Store) -> None:
        store.create_user(user("u1"))
        store.apply_subscription(state("sub_a", version=1, created_at=T0))
        store.apply_subscription(
            state("sub_c", version=2, status="canceled", created_at=T0 + timedelta(days=1))
        )
        mirrored = store.get_user("u1")
        assert mirrored is not None
        assert (mirrored.polar_subscription_id, mirrored.polar_subscription_status) == (
            "sub_a",
            "active",
        )

    def test_mirror_switches_when_the_shown_subscription_is_revoked(self, store: Store) -> None:
        store.create_user(user("u1"))
        store.apply_subscription(state("sub_a", version=1, created_at=T0 + timedelta(days=1)))
        store.apply_subscription(state("sub_b", version=1, status="past_due", created_at=T0))
        store.apply_subscription(
            state("sub_a", version=2, status="canceled", created_at=T0 + timedelta(days=1))
        )
        mirrored = store.get_user("u1")
        assert mirrored is not None
        assert (mirrored.polar_subscription_id, mirrored.polar_subscription_status) == (
            "sub_b",
            "past_due",
        )

    def test_mirror_follows_most_relevant_through_a_sequence(self, store: Store) -> None:
        store.create_user(user("u1"))
        steps = [
            state("s1", version=1, status="incomplete", created_at=T0),
            state("s2", version=2, status="active", created_at=T0 + timedelta(days=2)),
            state("s1", version=3, status="active", created_at=T0),
            state("s2", version=4, status="unpaid", created_at=T0 + timedelta(days=2)),
            state("s3", version=5, status="trialing", created_at=T0 + timedelta(days=1)),
            state("s1", version=6, status="canceled", created_at=T0),
        ]
        for step in steps:
            store.apply_subscription(step)
            best = most_relevant(store.list_subscriptions("u1"))
            mirrored = store.get_user("u1")
            assert best is not None and mirrored is not None
            assert mirrored.polar_subscription_id == best.id
            assert mirrored.polar_subscription_version == best.version

    def test_list_subscriptions_most_relevant_first(self, store: Store) -> None:
        store.create_user(user("u1"))
        store.create_user(user("u2"))
        store.apply_subscription(state("canceled", status="canceled", created_at=T0))
        store.apply_subscription(state("past_due", status="past_due", created_at=T0))
        store.apply_subscription(state("old_active", created_at=T0))
        store.apply_subscription(state("new_active", created_at=T0 + timedelta(days=1)))
        store.apply_subscription(state("elsewhere", user_id="u2"))
        ids = [s.id for s in store.list_subscriptions("u1")]
        assert ids == ["new_active", "old_active", "past_due", "canceled"]
        assert store.list_subscriptions("nobody") == []

    def test_an_ending_subscription_does_not_hide_a_renewing_one(self, store: Store) -> None:
        # The newer one ends at its period's end; the older one renews: the user keeps
        # access through the older one, so the mirror (and the list's head) show it.
        store.create_user(user("u1"))
        store.apply_subscription(state("renews", created_at=T0))
        store.apply_subscription(
            state("ends", created_at=T0 + timedelta(days=5), cancel_at_period_end=True)
        )
        assert [s.id for s in store.list_subscriptions("u1")] == ["renews", "ends"]
        mirrored = store.get_user("u1")
        assert mirrored is not None and mirrored.polar_subscription_id == "renews"
        # Once the older one is scheduled to end too, the newest of the two shows again.
        store.apply_subscription(
            state("renews", version=2, created_at=T0, cancel_at_period_end=True)
        )
        mirrored = store.get_user("u1")
        assert mirrored is not None and mirrored.polar_subscription_id == "ends"
        # An ending active one still comes before a past_due one.
        store.apply_subscription(
            state("late", status="past_due", created_at=T0 + timedelta(days=9))
        )
        assert [s.id for s in store.list_subscriptions("u1")][:2] == ["ends", "renews"]

    def test_subscription_moving_to_another_user_updates_both_mirrors(self, store: Store) -> None:
        store.create_user(user("u1"))
        store.create_user(user("u2"))
        store.apply_subscription(state("sub1", user_id="u1", version=1))
        store.apply_subscription(state("sub1", user_id="u2", version=2))
        before, after = store.get_user("u1"), store.get_user("u2")
        assert before is not None and after is not None
        assert before.polar_subscription_id is None
        assert after.polar_subscription_id == "sub1"
        assert store.list_subscriptions("u1") == []

    def test_subscription_state_round_trips_every_field(self, store: Store) -> None:
        store.create_user(user("u1"))
        full = SubscriptionState(
            id="sub_full",
            user_id="u1",
            status="past_due",
            product_id="prod_1",
            current_period_end=T0 + timedelta(days=30),
            cancel_at_period_end=True,
            version=1_736_000_000_123_456,
            customer_id="cus_1",
            created_at=T0 - timedelta(days=1),
            started_at=T0,
            current_period_start=T0 + timedelta(microseconds=1),
            trial_end=T0 + timedelta(days=7),
            canceled_at=T0 + timedelta(days=8),
            ends_at=T0 + timedelta(days=30),
            ended_at=T0 + timedelta(days=31),
            past_due_at=T0 + timedelta(days=9),
            checkout_id="chk_1",
            amount=1999,
            currency="usd",
            recurring_interval="month",
        )
        store.apply_subscription(full)
        assert store.get_subscription("sub_full") == full

    # -- webhook ingest: inbox row and conditional write in one step ---------------------
    def test_ingest_new_event_with_newer_state_creates_and_applies(self, store: Store) -> None:
        store.create_user(user("u1"))
        result = store.ingest_event(event("wh1"), state(version=3))
        assert (result.created, result.applied, result.duplicate) == (True, True, False)
        assert (result.event.status, result.event.outcome) == ("received", "applied")
        assert (result.event.user_id, result.event.subscription_id) == ("u1", "sub1")
        assert store.get_event("wh1") == result.event
        assert store.get_subscription("sub1") == state(version=3)

    def test_ingest_applied_state_sets_the_mirror_columns(self, store: Store) -> None:
        store.create_user(user("u1"))
        store.ingest_event(event("wh1"), state(version=3, status="trialing"))
        mirrored = store.get_user("u1")
        assert mirrored is not None
        assert (mirrored.polar_subscription_status, mirrored.polar_subscription_version) == (
            "trialing",
            3,
        )

    def test_ingest_as_processed_stores_status_and_processed_at(self, store: Store) -> None:
        store.create_user(user("u1"))
        at = T0 + timedelta(seconds=2)
        result = store.ingest_event(event("wh1", status="processed", processed_at=at), state())
        assert (result.event.status, result.event.processed_at) == ("processed", at)
        assert store.get_event("wh1") == result.event

    def test_ingest_as_processed_without_processed_at_raises_value_error(
        self, store: Store
    ) -> None:
        with pytest.raises(ValueError):
            store.ingest_event(event("wh1", status="processed"))
        assert store.get_event("wh1") is None

    def test_ingest_duplicate_of_processed_event_changes_nothing(self, store: Store) -> None:
        store.create_user(user("u1"))
        first = store.ingest_event(event("wh1", status="processed", processed_at=T0), state())
        again = store.ingest_event(
            event("wh1", received_at=T0 + timedelta(1), status="processed", processed_at=T0),
            state(version=2),
        )
        assert (again.event, again.created, again.applied) == (first.event, False, None)
        assert again.duplicate is True
        assert store.get_event("wh1") == first.event
        assert store.get_subscription("sub1") == state(version=1)

    def test_ingest_retry_of_failed_applied_event_does_not_apply_again(
        self, store: Store
    ) -> None:
        store.create_user(user("u1"))
        store.ingest_event(event("wh1"), state(version=1))
        store.finish_event("wh1", status="failed", at=T0, error="callback raised")
        retry = store.ingest_event(event("wh1"), state(version=2))
        assert (retry.created, retry.applied, retry.duplicate) == (False, None, False)
        assert (retry.event.attempts, retry.event.status, retry.event.outcome) == (
            2,
            "received",
            "applied",
        )
        assert store.get_subscription("sub1") == state(version=1)

    def test_ingest_retry_of_failed_unapplied_event_applies(self, store: Store) -> None:
        store.create_user(user("u1"))
        store.record_event(event("wh1"))
        store.finish_event("wh1", status="failed", at=T0, error="store down")
        retry = store.ingest_event(event("wh1"), state(version=2))
        assert (retry.created, retry.applied, retry.event.outcome) == (False, True, "applied")
        assert (retry.event.attempts, retry.event.last_error) == (2, "store down")
        assert store.get_subscription("sub1") == state(version=2)

    def test_ingest_retry_finished_as_processed_clears_the_error(self, store: Store) -> None:
        store.record_event(event("wh1"))
        store.finish_event("wh1", status="failed", at=T0, error="boom")
        at = T0 + timedelta(seconds=5)
        retry = store.ingest_event(
            event("wh1", status="processed", processed_at=at, outcome="ignored")
        )
        assert (retry.event.status, retry.event.processed_at, retry.event.last_error) == (
            "processed",
            at,
            None,
        )
        assert (retry.event.outcome, retry.event.attempts) == ("ignored", 2)

    def test_ingest_stale_state_records_outcome_stale(self, store: Store) -> None:
        store.create_user(user("u1"))
        store.apply_subscription(state(version=5))
        result = store.ingest_event(event("wh1"), state(version=5, status="canceled"))
        assert (result.created, result.applied, result.event.outcome) == (True, False, "stale")
        assert store.get_subscription("sub1") == state(version=5)

    def test_ingest_without_state_keeps_the_outcome_given(self, store: Store) -> None:
        result = store.ingest_event(
            event("wh1", status="processed", processed_at=T0, outcome="unmatched")
        )
        assert (result.created, result.applied) == (True, None)
        assert (result.event.status, result.event.outcome) == ("processed", "unmatched")
        assert store.get_event("wh1") == result.event

    def test_ingest_for_unknown_user_raises_and_writes_nothing(self, store: Store) -> None:
        with pytest.raises(UserNotFoundError):
            store.ingest_event(event("wh1"), state(user_id="nobody"))
        assert store.get_event("wh1") is None
        assert store.get_subscription("sub1") is None

    # -- webhook ingest: the claim of a delivery in flight ---------------------------------
    def test_ingest_of_a_delivery_claimed_by_another_request_changes_nothing(
        self, store: Store
    ) -> None:
        store.create_user(user("u1"))
        claim = T0 + timedelta(seconds=60)
        first = store.ingest_event(event("wh1", claimed_until=claim), state(version=1))
        assert first.event.claimed_until == claim
        copy = store.ingest_event(
            event(
                "wh1",
                received_at=T0 + timedelta(seconds=10),
                claimed_until=T0 + timedelta(seconds=70),
            ),
            state(version=2),
        )
        assert (copy.in_flight, copy.created, copy.applied) == (True, False, None)
        assert copy.event == first.event
        assert store.get_event("wh1") == first.event  # attempts still 1, claim unchanged
        assert store.get_subscription("sub1") == state(version=1)

    def test_ingest_of_a_claimed_unapplied_delivery_changes_nothing(self, store: Store) -> None:
        claim = T0 + timedelta(seconds=60)
        first = store.ingest_event(event("wh1", claimed_until=claim))
        copy = store.ingest_event(
            event("wh1", status="processed", processed_at=T0, outcome="ignored")
        )
        assert (copy.in_flight, copy.event) == (True, first.event)
        assert store.get_event("wh1") == first.event

    def test_ingest_after_the_claim_ran_out_takes_the_delivery_over(self, store: Store) -> None:
        store.create_user(user("u1"))
        store.ingest_event(event("wh1", claimed_until=T0 + timedelta(seconds=60)), state())
        later = T0 + timedelta(seconds=60)  # the claim ends at this instant: not in flight
        new_claim = later + timedelta(seconds=60)
        takeover = store.ingest_event(
            event("wh1", received_at=later, claimed_until=new_claim), state(version=1)
        )
        assert (takeover.in_flight, takeover.created, takeover.applied) == (False, False, None)
        assert (takeover.event.attempts, takeover.event.status, takeover.event.outcome) == (
            2,
            "received",
            "applied",
        )
        assert takeover.event.claimed_until == new_claim
        assert store.get_event("wh1") == takeover.event

    def test_finish_event_releases_the_claim_whatever_the_status(self, store: Store) -> None:
        claim = T0 + timedelta(seconds=60)
        for webhook_id, status in (("wh1", "processed"), ("wh2", "failed")):
            store.ingest_event(event(webhook_id, claimed_until=claim))
            done = store.finish_event(webhook_id, status=status, at=T0, error=None)
            assert done.claimed_until is None
            assert store.get_event(webhook_id) == done

    def test_a_failed_delivery_is_free_for_the_retry_before_its_claim_would_end(
        self, store: Store
    ) -> None:
        store.create_user(user("u1"))
        store.ingest_event(event("wh1", claimed_until=T0 + timedelta(seconds=60)), state())
        store.finish_event("wh1", status="failed", at=T0, error="callback raised")
        retry = store.ingest_event(
            event(
                "wh1",
                received_at=T0 + timedelta(seconds=1),
                claimed_until=T0 + timedelta(seconds=61),
            ),
            state(),
        )
        assert (retry.in_flight, retry.applied, retry.event.attempts) == (False, None, 2)
        assert retry.event.claimed_until == T0 + timedelta(seconds=61)

    def test_ingest_as_processed_holds_no_claim(self, store: Store) -> None:
        result = store.ingest_event(
            event("wh1", status="processed", processed_at=T0, claimed_until=T0)
        )
        assert result.event.claimed_until is None
        assert store.get_event("wh1") == result.event

    def test_record_event_keeps_the_claim(self, store: Store) -> None:
        claim = T0 + timedelta(seconds=60)
        store.ingest_event(event("wh1", claimed_until=claim))
        again, is_new = store.record_event(event("wh1"))
        assert (is_new, again.attempts, again.claimed_until) == (False, 2, claim)
        assert store.get_event("wh1") == again

    def test_claimed_until_round_trips_as_aware_utc(self, store: Store) -> None:
        india = timezone(timedelta(hours=5, minutes=30))
        claim = datetime(2025, 6, 1, 12, 0, 0, 123456, tzinfo=india)
        store.ingest_event(event("wh1", claimed_until=claim))
        stored = store.get_event("wh1")
        assert stored is not None and stored.claimed_until == claim
        assert stored.claimed_until.tzinfo is UTC
        assert stored.claimed_until.microsecond == 123456

    # -- datetimes ----------------------------------------------------------------------
    def test_datetimes_come_back_aware_utc_with_microseconds(self, store: Store) -> None:
        india = timezone(timedelta(hours=5, minutes=30))
        created = datetime(2025, 6, 1, 12, 0, 0, 123456, tzinfo=india)
        store.create_user(user("u1", created_at=created))
        stored = store.get_user("u1")
        assert stored is not None
        assert stored.created_at == created
        assert stored.created_at.tzinfo is UTC
        assert stored.created_at.microsecond == 123456

    def test_naive_datetime_is_refused(self, store: Store) -> None:
        with pytest.raises(ValueError):
            store.create_user(user("u1", created_at=datetime(2025, 1, 1)))
        assert store.count_users() == 0

    @store_settings
    @given(created=aware_datetimes, expires=aware_datetimes)
    def test_any_aware_datetime_round_trips_as_utc(
        self, store: Store, created: datetime, expires: datetime
    ) -> None:
        token_hash = uuid4().hex
        store.create_session(session(token_hash, created_at=created, expires_at=expires))
        stored = store.get_session(token_hash)
        assert stored is not None
        assert (stored.created_at, stored.expires_at) == (created, expires)
        assert stored.created_at.tzinfo is UTC and stored.expires_at.tzinfo is UTC

    # -- concurrency --------------------------------------------------------------------
    def test_threads_racing_the_conditional_write_end_on_the_newest(self, store: Store) -> None:
        store.create_user(user("u1"))
        versions = list(range(1, 41))
        barrier = threading.Barrier(8)

        def worker(mine: list[int]) -> list[tuple[int, bool]]:
            barrier.wait()
            return [(v, store.apply_subscription(state(version=v))) for v in mine]

        with ThreadPoolExecutor(8) as pool:
            chunks = pool.map(worker, [versions[i::8] for i in range(8)])
            results = [r for chunk in chunks for r in chunk]
        assert_race_won_by_newest(store, results, newest=40)

    def test_threads_racing_on_two_subscriptions_keep_the_mirror_consistent(
        self, store: Store
    ) -> None:
        store.create_user(user("u1"))
        statuses = ["active", "past_due", "canceled", "trialing", "unpaid"]
        barrier = threading.Barrier(8)

        def worker(n: int) -> None:
            barrier.wait()
            for version in range(n + 1, 81, 8):
                sub_id = "sub_a" if version % 2 else "sub_b"
                status = statuses[version % len(statuses)]
                store.apply_subscription(state(sub_id, version=version, status=status))

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(worker, range(8)))
        best = most_relevant(store.list_subscriptions("u1"))
        mirrored = store.get_user("u1")
        assert best is not None and mirrored is not None
        assert (mirrored.polar_subscription_id, mirrored.polar_subscription_version) == (
            best.id,
            best.version,
        )

    def test_threads_racing_record_event_have_exactly_one_winner(self, store: Store) -> None:
        barrier = threading.Barrier(8)

        def worker(_: int) -> bool:
            barrier.wait()
            return store.record_event(event("wh_race"))[1]

        with ThreadPoolExecutor(8) as pool:
            wins = list(pool.map(worker, range(8)))
        assert wins.count(True) == 1
        stored = store.get_event("wh_race")
        assert stored is not None and stored.attempts == 8

    def test_threads_racing_ingest_event_have_exactly_one_creator(self, store: Store) -> None:
        store.create_user(user("u1"))
        barrier = threading.Barrier(8)

        def worker(_: int) -> tuple[bool, bool | None]:
            barrier.wait()
            result = store.ingest_event(event("wh_race"), state(version=1))
            return result.created, result.applied

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(worker, range(8)))
        assert [created for created, _ in results].count(True) == 1
        assert (True, True) in results  # the creator applied the state; nobody else did
        assert [applied for _, applied in results].count(True) == 1
        stored = store.get_event("wh_race")
        assert stored is not None and (stored.attempts, stored.outcome) == (8, "applied")

    def test_processes_racing_the_conditional_write_end_on_the_newest(
        self, store: Store, store_url: str | None, request: pytest.FixtureRequest
    ) -> None:
        if store_url is None:
            pytest.skip(f"a {store.kind} store cannot be shared between processes")
        process_pool: ProcessPoolExecutor = request.getfixturevalue("process_pool")
        store.create_user(user("u1"))
        start_at = time.time() + 0.3
        versions = list(range(1, 41))
        futures = [
            process_pool.submit(
                _workers.apply_versions, store_url, "u1", "sub1", versions[i::4], start_at
            )
            for i in range(4)
        ]
        results = [r for future in futures for r in future.result(timeout=60)]
        assert_race_won_by_newest(store, results, newest=40)

    def test_processes_racing_record_event_have_exactly_one_winner_per_id(
        self, store: Store, store_url: str | None, request: pytest.FixtureRequest
    ) -> None:
        if store_url is None:
            pytest.skip(f"a {store.kind} store cannot be shared between processes")
        process_pool: ProcessPoolExecutor = request.getfixturevalue("process_pool")
        ids = [f"wh{i}" for i in range(10)]
        start_at = time.time() + 0.3
        futures = [
            process_pool.submit(_workers.record_events, store_url, ids, start_at) for _ in range(4)
        ]
        results = [r for future in futures for r in future.result(timeout=60)]
        for webhook_id in ids:
            assert [new for wid, new in results if wid == webhook_id].count(True) == 1
            stored = store.get_event(webhook_id)
            assert stored is not None and stored.attempts == 4

    def test_processes_racing_ingest_event_have_exactly_one_creator_per_id(
        self, store: Store, store_url: str | None, request: pytest.FixtureRequest
    ) -> None:
        if store_url is None:
            pytest.skip(f"a {store.kind} store cannot be shared between processes")
        process_pool: ProcessPoolExecutor = request.getfixturevalue("process_pool")
        store.create_user(user("u1"))
        ids = [f"wh{i}" for i in range(10)]
        start_at = time.time() + 0.3
        futures = [
            process_pool.submit(_workers.ingest_events, store_url, "u1", ids, start_at)
            for _ in range(4)
        ]
        results = [r for future in futures for r in future.result(timeout=60)]
        for webhook_id in ids:
            assert [created for wid, created in results if wid == webhook_id].count(True) == 1
            stored = store.get_event(webhook_id)
            assert stored is not None and stored.attempts == 4
        assert store.get_subscription("sub1") == state(version=len(ids))

    # -- persistence --------------------------------------------------------------------
    def test_reopen_keeps_everything(self, store: Store, reopen: Reopen | None) -> None:
        if reopen is None:
            pytest.skip(f"a {store.kind} store keeps nothing")
        store.create_user(user("u1", email="Jane@Acme.io"))
        store.link_polar_customer("u1", "cus_1")
        store.create_session(session("h1"))
        store.revoke_session("h1", T0)
        store.create_session(session("h2"))
        store.record_event(event("wh1"))
        store.apply_subscription(state(version=3), webhook_id="wh1")
        store.finish_event("wh1", status="processed", at=T0)
        store.close()

        again = reopen()
        assert again.get_user("u1") == again.get_user_by_email("jane@acme.io")
        linked = again.get_user_by_polar_customer("cus_1")
        assert linked is not None and linked.polar_subscription_version == 3
        revoked = again.get_session("h1")
        assert revoked is not None and revoked.revoked_at == T0
        assert again.get_session("h2") == session("h2")
        assert again.get_subscription("sub1") == state(version=3)
        done = again.get_event("wh1")
        assert done is not None and (done.status, done.outcome) == ("processed", "applied")
        assert again.apply_subscription(state(version=3)) is False
        assert again.schema_version() == SCHEMA_VERSION


    def test_reopen_keeps_an_ingested_delivery(self, store: Store, reopen: Reopen | None) -> None:
        if reopen is None:
            pytest.skip(f"a {store.kind} store keeps nothing")
        store.create_user(user("u1"))
        claim = T0 + timedelta(minutes=1)
        result = store.ingest_event(event("wh1", claimed_until=claim), state(version=4))
        store.close()

        again = reopen()
        assert again.get_event("wh1") == result.event
        assert result.event.claimed_until == claim
        assert again.get_subscription("sub1") == state(version=4)
        mirrored = again.get_user("u1")
        assert mirrored is not None and mirrored.polar_subscription_version == 4


def assert_race_won_by_newest(store: Store, results: list[tuple[int, bool]], newest: int) -> None:
    """After racing writers: the newest state is stored and mirrored, and the newest
    version's call is among those that reported ``True``."""
    assert len(results) == newest
    assert (newest, True) in results
    assert sum(applied for _, applied in results) >= 1
    assert store.get_subscription("sub1") == state(version=newest)
    mirrored = store.get_user("u1")
    assert mirrored is not None and mirrored.polar_subscription_version == newest
