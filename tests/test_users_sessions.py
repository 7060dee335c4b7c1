"""kavach.users and kavach.sessions."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from kavach import (
    EmailTakenError,
    FrozenClock,
    InvalidCredentialsError,
    InvalidInputError,
    Kavach,
    PasswordHasher,
    UserNotFoundError,
    create_kavach,
)
from kavach.sessions import hash_token
from kavach.users import Users

PASSWORD = "correct horse battery"


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(datetime(2026, 11, 1, 12, 0, tzinfo=UTC))


@pytest.fixture
def kavach(clock: FrozenClock) -> Iterator[Kavach]:
    with create_kavach("memory://", clock=clock, password_hasher=PasswordHasher.fast()) as k:
        yield k


def test_create_and_get_user(kavach: Kavach, clock: FrozenClock) -> None:
    user = kavach.users.create("jane@acme.io", password=PASSWORD, name="Jane")
    assert (user.email, user.name, user.created_at) == ("jane@acme.io", "Jane", clock.now())
    assert kavach.users.get(user.id) == user


def test_email_lookup_is_case_insensitive(kavach: Kavach) -> None:
    user = kavach.users.create("jane@acme.io")
    assert kavach.users.get_by_email("JANE@acme.io") == user


def test_email_is_unique_case_insensitively(kavach: Kavach) -> None:
    kavach.users.create("jane@acme.io")
    with pytest.raises(EmailTakenError):
        kavach.users.create("Jane@ACME.io")


@pytest.mark.parametrize("email", ["", "no-at-sign", "a@b", "a b@c.io", "@c.io", 5])
def test_invalid_email_is_refused(kavach: Kavach, email: object) -> None:
    with pytest.raises(InvalidInputError) as err:
        kavach.users.create(email)  # type: ignore[arg-type]
    assert err.value.field == "email"


@pytest.mark.parametrize("password", ["short", "x" * 1025])
def test_password_length_is_enforced(kavach: Kavach, password: str) -> None:
    with pytest.raises(InvalidInputError) as err:
        kavach.users.create("jane@acme.io", password=password)
    assert err.value.field == "password"


def test_password_is_stored_as_argon2id_hash(kavach: Kavach) -> None:
    user = kavach.users.create("jane@acme.io", password=PASSWORD)
    record = kavach.store.get_user(user.id)
    assert record is not None
    assert record.password_hash is not None
    assert record.password_hash.startswith("$argon2id$")
    assert PASSWORD not in record.password_hash


def test_authenticate_accepts_the_right_password(kavach: Kavach) -> None:
    user = kavach.users.create("jane@acme.io", password=PASSWORD)
    assert kavach.users.authenticate("JANE@acme.io", PASSWORD) == user


def test_authenticate_gives_the_same_error_for_unknown_email_and_wrong_password(
    kavach: Kavach,
) -> None:
    kavach.users.create("jane@acme.io", password=PASSWORD)
    with pytest.raises(InvalidCredentialsError) as wrong:
        kavach.users.authenticate("jane@acme.io", "wrong password")
    with pytest.raises(InvalidCredentialsError) as unknown:
        kavach.users.authenticate("nobody@acme.io", PASSWORD)
    assert str(wrong.value) == str(unknown.value)


def test_user_without_password_cannot_authenticate(kavach: Kavach) -> None:
    kavach.users.create("jane@acme.io")
    with pytest.raises(InvalidCredentialsError):
        kavach.users.authenticate("jane@acme.io", PASSWORD)


def test_update_user(kavach: Kavach) -> None:
    user = kavach.users.create("jane@acme.io", password=PASSWORD)
    updated = kavach.users.update(user.id, email="jane@new.io", name="J", password="another pw!")
    assert (updated.email, updated.name) == ("jane@new.io", "J")
    assert kavach.users.authenticate("jane@new.io", "another pw!") == updated


def test_update_unknown_user(kavach: Kavach) -> None:
    with pytest.raises(UserNotFoundError):
        kavach.users.update("nope", name="x")


def test_session_token_is_long_random_and_only_its_hash_is_stored(kavach: Kavach) -> None:
    user = kavach.users.create("jane@acme.io")
    issued = kavach.sessions.create(user.id)
    assert len(issued.token) >= 43 + 4  # 256 bits of url-safe base64 plus prefix
    assert issued.token not in repr(issued)
    assert kavach.store.get_session(issued.token) is None
    assert kavach.store.get_session(hash_token(issued.token)) is not None


def test_session_resolves_until_it_expires(kavach: Kavach, clock: FrozenClock) -> None:
    user = kavach.users.create("jane@acme.io")
    issued = kavach.sessions.create(user.id)
    assert issued.expires_at == clock.now() + timedelta(days=7)
    resolved = kavach.sessions.resolve(issued.token)
    assert resolved is not None
    assert resolved.user_id == user.id
    clock.advance(days=7)
    assert kavach.sessions.resolve(issued.token) is None


def test_revoked_session_does_not_resolve(kavach: Kavach) -> None:
    user = kavach.users.create("jane@acme.io")
    issued = kavach.sessions.create(user.id)
    assert kavach.sessions.revoke(issued.token) is True
    assert kavach.sessions.resolve(issued.token) is None
    assert kavach.sessions.revoke(issued.token) is False


@pytest.mark.parametrize("token", ["", "kvs_unknown", "x" * 5000])
def test_unknown_tokens_do_not_resolve(kavach: Kavach, token: str) -> None:
    assert kavach.sessions.resolve(token) is None


def test_session_for_unknown_user_is_refused(kavach: Kavach) -> None:
    with pytest.raises(UserNotFoundError):
        kavach.sessions.create("ghost")


def test_session_ttl_is_configurable(clock: FrozenClock) -> None:
    with create_kavach("memory://", clock=clock, session_ttl=timedelta(hours=1)) as kavach:
        user = kavach.users.create("jane@acme.io")
        assert kavach.sessions.create(user.id).expires_at == clock.now() + timedelta(hours=1)


def test_purge_expired_sessions(kavach: Kavach, clock: FrozenClock) -> None:
    user = kavach.users.create("jane@acme.io")
    kavach.sessions.create(user.id)
    clock.advance(days=8)
    assert kavach.sessions.purge_expired() == 1


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"email": "ja\ud800ne@acme.io"}, "email"),
        ({"email": "jane@acme.io", "password": "long enough \udfff"}, "password"),
        ({"email": "jane@acme.io", "name": "J\ud83d"}, "name"),
    ],
)
def test_lone_surrogates_are_refused_before_anything_is_stored(
    kavach: Kavach, kwargs: dict[str, str], field: str
) -> None:
    with pytest.raises(InvalidInputError) as err:
        kavach.users.create(**kwargs)
    assert err.value.field == field
    assert kavach.store.count_users() == 0


def test_wsgi_app_is_one_object_per_kavach(kavach: Kavach) -> None:
    assert kavach.wsgi_app is kavach.wsgi_app


def test_password_hashing_runs_at_most_max_concurrent_at_once() -> None:
    import threading
    import time

    import argon2

    hasher = PasswordHasher(argon2.profiles.CHEAPEST, max_concurrent=2)
    real = hasher._hasher
    running = 0
    peak = 0
    guard = threading.Lock()

    class SlowArgon2:
        """Counts how many hashes run at the same moment."""

        def hash(self, password: str) -> str:
            nonlocal running, peak
            with guard:
                running += 1
                peak = max(peak, running)
            time.sleep(0.02)
            with guard:
                running -= 1
            return real.hash(password)

    hasher._hasher = SlowArgon2()  # type: ignore[assignment]
    threads = [threading.Thread(target=hasher.hash, args=("pw",)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak == 2


def test_max_concurrent_must_be_positive() -> None:
    with pytest.raises(ValueError):
        PasswordHasher(max_concurrent=0)


def test_a_user_records_repr_never_shows_the_password_hash(kavach: Kavach) -> None:
    user = kavach.users.create("jane@acme.io", password="correct horse battery")
    record = kavach.store.get_user(user.id)
    assert record is not None and record.password_hash
    assert record.password_hash not in repr(record)
    assert "password_hash" not in repr(record)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("jos\u00e9@acme.io", "jose\u0301@acme.io"),  # composed, decomposed
        ("ann@acme.io", "\uff41\uff4e\uff4e@acme.io"),  # fullwidth letters
        ("stra\u00dfe@acme.io", "STRASSE@acme.io"),  # case folding
    ],
    ids=["nfc-nfd", "fullwidth", "casefold"],
)
def test_emails_that_look_the_same_are_one_address(
    kavach: Kavach, first: str, second: str
) -> None:
    kavach.users.create(first, password="correct horse battery")
    with pytest.raises(EmailTakenError):
        kavach.users.create(second, password="correct horse battery")
    found = kavach.users.get_by_email(second)
    assert found is not None and found.email == first


def test_an_email_whose_key_grows_past_the_limit_is_refused(kavach: Kavach) -> None:
    # 212 characters, 412 once case-folded ("ß" -> "ss"): no store column holds that.
    with pytest.raises(InvalidInputError) as caught:
        kavach.users.create("\u00df" * 200 + "@example.com", password="correct horse battery")
    assert caught.value.field == "email"


def test_an_empty_password_is_refused_not_taken_for_none(kavach: Kavach) -> None:
    with pytest.raises(InvalidInputError) as caught:
        kavach.users.create("jane@acme.io", password="")
    assert caught.value.field == "password"
    assert kavach.users.get_by_email("jane@acme.io") is None


def test_a_password_that_is_not_unicode_text_is_invalid_credentials(kavach: Kavach) -> None:
    kavach.users.create("jane@acme.io", password="correct horse battery")
    for email in ("jane@acme.io", "nobody@acme.io"):
        with pytest.raises(InvalidCredentialsError) as caught:
            kavach.users.authenticate(email, "bad\ud800")
        assert "\ud800" not in repr(caught.value.args)


def test_a_wrong_password_for_an_older_hash_costs_what_an_unknown_email_costs() -> None:
    # A hash made with older, cheaper parameters fails faster than the dummy check of an
    # unknown email: the failure pays for a check at the current parameters too.
    import argon2

    with create_kavach("memory://", password_hasher=PasswordHasher.fast()) as old:
        old.users.create("jane@acme.io", password="correct horse battery")
        store = old.store
        current = PasswordHasher(
            argon2.Parameters(type=argon2.Type.ID, version=19, salt_len=16, hash_len=16,
                              time_cost=2, memory_cost=16, parallelism=1)
        )
        verified: list[str] = []
        real_verify = current.verify

        def counting_verify(password_hash: str, password: str) -> bool:
            verified.append(password_hash)
            return real_verify(password_hash, password)

        current.verify = counting_verify  # type: ignore[method-assign]
        users = Users(store, current, old.clock)
        with pytest.raises(InvalidCredentialsError):
            users.authenticate("nobody@acme.io", "wrong password")
        unknown = len(verified)
        verified.clear()
        with pytest.raises(InvalidCredentialsError):
            users.authenticate("jane@acme.io", "wrong password")
        assert len(verified) == unknown + 1  # its own hash, then the current-cost dummy


def test_a_rehash_at_sign_in_does_not_undo_a_password_changed_meanwhile() -> None:
    import argon2

    with create_kavach("memory://", password_hasher=PasswordHasher.fast()) as k:
        jane = k.users.create("jane@acme.io", password="old password 1")
        current = PasswordHasher(
            argon2.Parameters(type=argon2.Type.ID, version=19, salt_len=16, hash_len=16,
                              time_cost=2, memory_cost=16, parallelism=1)
        )
        users = Users(k.store, current, k.clock)
        real_verify = current.verify

        def verify_then_change(password_hash: str, password: str) -> bool:
            ok = real_verify(password_hash, password)
            k.users.update(jane.id, password="new password 2")  # the owner, meanwhile
            return ok

        current.verify = verify_then_change  # type: ignore[method-assign]
        users.authenticate("jane@acme.io", "old password 1")  # verified, then re-hashed
        current.verify = real_verify  # type: ignore[method-assign]
        assert k.users.authenticate("jane@acme.io", "new password 2").id == jane.id
        with pytest.raises(InvalidCredentialsError):
            k.users.authenticate("jane@acme.io", "old password 1")
