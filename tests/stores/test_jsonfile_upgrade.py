"""The JSON store across this release's rule changes (schema 4): emails keyed under NFKC
and the new relevance rule applied to a store written under the old ones, and no write
the store could not read back."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from kavach.errors import EmailTakenError, StoreCorruptError
from kavach.stores import _tables
from kavach.stores.base import SCHEMA_VERSION
from kavach.stores.jsonfile import JsonFileStore

from .factories import T0, state, user, write_by_the_schema_3_relevance_rule


def as_schema_3(path: Path, store: JsonFileStore) -> None:
    """Fold everything into the snapshot and label it schema 3."""
    store.compact()
    store.close()
    snapshot = json.loads(path.read_text())
    snapshot["schema_version"] = 3
    path.write_text(json.dumps(snapshot))


def test_two_users_the_nfkc_rule_takes_for_one_address_keep_distinct_lookups(
    path: Path, open_json: Callable[..., JsonFileStore], monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Written under case folding alone: the fullwidth address was a key of its own.
    with monkeypatch.context() as patch:
        patch.setattr(_tables, "normalize_email", lambda e: e.strip().casefold())
        old = open_json()
        old.create_user(user("real", email="jose@example.com"))
        old.create_user(user("wide", email="\uff4aose@example.com", created_at=T0))
        as_schema_3(path, old)
    with caplog.at_level("WARNING", logger="kavach.stores"):
        store = open_json()
    found = store.get_user_by_email("JOSE@example.com")
    assert found is not None and found.id == "real"  # its key did not change: it keeps it
    assert "real" in caplog.text and "wide" in caplog.text
    store.update_user("wide", email="other@example.com")  # must not drop real's entry
    found = store.get_user_by_email("jose@example.com")
    assert found is not None and found.id == "real"


@pytest.mark.parametrize("older_first", [True, False])
def test_which_of_two_colliding_users_keeps_the_key_does_not_depend_on_load_order(
    path: Path, open_json: Callable[..., JsonFileStore], monkeypatch: pytest.MonkeyPatch,
    older_first: bool,
) -> None:
    # Neither address is in normalized form (fullwidth, decomposed): the older user keeps
    # the key, as the SQL migration decides, on the first open and every later one.
    wide = user("wide", email="\uff4aos\u00e9@example.com", created_at=T0)
    nfd = user("nfd", email="jose\u0301@example.com", created_at=T0 + timedelta(days=1))
    with monkeypatch.context() as patch:
        patch.setattr(_tables, "normalize_email", lambda e: e.strip().casefold())
        old = open_json()
        for record in (wide, nfd) if older_first else (nfd, wide):
            old.create_user(record)
        as_schema_3(path, old)
    first = open_json()
    found = first.get_user_by_email("jos\u00e9@example.com")
    assert found is not None and found.id == "wide"
    first.compact()
    found = open_json().get_user_by_email("jos\u00e9@example.com")
    assert found is not None and found.id == "wide"


def two_users_nfkc_takes_for_one_address(
    path: Path, open_json: Callable[..., JsonFileStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A schema 3 store holding ``wide`` (fullwidth, older: it keeps the key) and ``nfd``
    (decomposed: it loses it). Neither address is in normalized form."""
    with monkeypatch.context() as patch:
        patch.setattr(_tables, "normalize_email", lambda e: e.strip().casefold())
        old = open_json()
        old.create_user(user("wide", email="\uff4aos\u00e9@example.com", created_at=T0))
        old.create_user(user("nfd", email="jose\u0301@example.com",
                             created_at=T0 + timedelta(days=1)))
        as_schema_3(path, old)


def test_a_user_who_takes_the_key_the_winner_gave_up_keeps_it_at_every_later_load(
    path: Path, open_json: Callable[..., JsonFileStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    two_users_nfkc_takes_for_one_address(path, open_json, monkeypatch)
    store = open_json()
    store.update_user("wide", email="wide@example.com")  # gives the key up
    # Signs up later, under an address not in normalized form either: were the two
    # users decided again (the older one keeps the key), nfd would take it back.
    store.create_user(user("new", email="JOSE\u0301@example.com",
                           created_at=T0 + timedelta(days=2)))
    for reader in (store, open_json()):  # a second store reads the journal
        found = reader.get_user_by_email("jos\u00e9@example.com")
        assert found is not None and found.id == "new"
    store.compact()
    found = open_json().get_user_by_email("jos\u00e9@example.com")
    assert found is not None and found.id == "new"


def test_the_user_that_lost_the_key_does_not_get_it_back_at_a_later_load(
    path: Path, open_json: Callable[..., JsonFileStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    # As on SQL, where it keeps its old key for good: it is no longer found by email,
    # and the address is free once its holder leaves it.
    two_users_nfkc_takes_for_one_address(path, open_json, monkeypatch)
    first = open_json()
    first.update_user("wide", email="wide@example.com")
    first.compact()  # the next load reads both users from the snapshot
    store = open_json()
    assert store.get_user_by_email("jose\u0301@example.com") is None
    created = store.create_user(user("new", email="jos\u00e9@example.com"))
    found = open_json().get_user_by_email("JOSE\u0301@example.com")
    assert found is not None and found.id == created.id
    # nfd changes email: it takes a key of its own (and its old one is dropped).
    store.update_user("nfd", email="nfd@example.com")
    found = open_json().get_user_by_email("NFD@example.com")
    assert found is not None and found.id == "nfd"


def test_the_upgrade_writes_the_decision_to_the_snapshot(
    path: Path, open_json: Callable[..., JsonFileStore], monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    two_users_nfkc_takes_for_one_address(path, open_json, monkeypatch)
    with caplog.at_level("WARNING", logger="kavach.stores"):
        open_json()
    assert "wide keeps it" in caplog.text
    snapshot = json.loads(path.read_text())
    assert snapshot["schema_version"] == SCHEMA_VERSION
    assert snapshot["legacy_email_keys"] == {"nfd": "jose\u0301@example.com"}
    caplog.clear()
    with caplog.at_level("WARNING", logger="kavach.stores"):
        open_json()
    assert "same normalized email" not in caplog.text  # decided once, not at each load


def test_a_current_snapshot_without_the_decision_gets_it_when_the_store_opens(
    path: Path, open_json: Callable[..., JsonFileStore], monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Upgraded by a kavach that decided at each load and kept nothing.
    two_users_nfkc_takes_for_one_address(path, open_json, monkeypatch)
    open_json().close()
    snapshot = json.loads(path.read_text())
    del snapshot["legacy_email_keys"]
    path.write_text(json.dumps(snapshot))
    store = open_json()
    assert json.loads(path.read_text())["legacy_email_keys"] == {
        "nfd": "jose\u0301@example.com"
    }
    store.update_user("wide", email="wide@example.com")
    store.create_user(user("new", email="JOSE\u0301@example.com",
                           created_at=T0 + timedelta(days=2)))
    found = open_json().get_user_by_email("jos\u00e9@example.com")
    assert found is not None and found.id == "new"


def test_a_write_after_reloading_a_snapshot_without_the_decision_keeps_it(
    path: Path, open_json: Callable[..., JsonFileStore], monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Another process, of a kavach that kept no decision, rewrote the snapshot.
    two_users_nfkc_takes_for_one_address(path, open_json, monkeypatch)
    store = open_json()
    snapshot = json.loads(path.read_text())
    del snapshot["legacy_email_keys"]
    path.write_text(json.dumps(snapshot))
    store.create_user(user("other"))  # reloads, decides, and writes the decision first
    assert json.loads(path.read_text())["legacy_email_keys"] == {
        "nfd": "jose\u0301@example.com"
    }
    assert open_json().get_user("other") is not None


@pytest.mark.parametrize("value", [["jose@example.com"], {"nfd": 5}], ids=["list", "number"])
def test_malformed_legacy_email_keys_are_store_corrupt(
    path: Path, open_json: Callable[..., JsonFileStore], value: object
) -> None:
    open_json().close()
    snapshot = json.loads(path.read_text())
    snapshot["legacy_email_keys"] = value
    path.write_text(json.dumps(snapshot))
    with pytest.raises(StoreCorruptError, match="legacy_email_keys"):
        open_json()


def test_the_upgrade_recomputes_mirrors_by_the_new_relevance_rule(
    path: Path, open_json: Callable[..., JsonFileStore]
) -> None:
    old = open_json()
    write_by_the_schema_3_relevance_rule(old)
    as_schema_3(path, old)
    mirrored = open_json().get_user("u1")
    assert mirrored is not None and mirrored.polar_subscription_id == "renews"


def test_what_a_sql_store_would_take_is_written_as_its_type(
    open_json: Callable[..., JsonFileStore],
) -> None:
    store = open_json()
    store.create_user(user("u1"))
    store.apply_subscription(state("s1", cancel_at_period_end=1, amount=10.0))  # type: ignore[arg-type]
    reopened = open_json()  # a second store reads the journal
    stored = reopened.get_subscription("s1")
    assert stored is not None
    assert (stored.cancel_at_period_end, stored.amount) == (True, 10)


def test_a_str_subclass_is_written_as_text(open_json: Callable[..., JsonFileStore]) -> None:
    import enum

    class Status(enum.StrEnum):
        ACTIVE = "active"

    store = open_json()
    store.create_user(user("u1"))
    store.apply_subscription(state("s1", status=Status.ACTIVE))
    stored = open_json().get_subscription("s1")
    assert stored is not None and stored.status == "active"


@pytest.mark.parametrize(
    "fields", [{"amount": 10.5}, {"cancel_at_period_end": 2}, {"status": 5}],
    ids=["fractional-amount", "bool-as-2", "status-as-int"],
)
def test_a_value_no_store_reads_back_as_its_type_is_refused_before_it_is_written(
    open_json: Callable[..., JsonFileStore], fields: dict[str, object]
) -> None:
    store = open_json()
    store.create_user(user("u1"))
    with pytest.raises(TypeError):
        store.apply_subscription(state("s1", **fields))
    assert open_json().get_subscription("s1") is None  # nothing written; the store opens


def test_a_winner_that_left_the_address_in_the_journal_does_not_lock_the_loser_out(
    path: Path, open_json: Callable[..., JsonFileStore], monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The schema 3 store's journal (not compacted yet) holds wide's email change: once
    # loaded, nfd is the only user under the key, as the SQL migration sees the rows.
    # Deciding on the snapshot alone, then replaying the journal, froze nfd out for good.
    two_users_nfkc_takes_for_one_address(path, open_json, monkeypatch)
    snapshot = json.loads(path.read_text())
    snapshot["schema_version"] = SCHEMA_VERSION
    path.write_text(json.dumps(snapshot))
    with monkeypatch.context() as patch:
        patch.setattr(_tables, "normalize_email", lambda e: e.strip().casefold())
        old = open_json()
        old.update_user("wide", email="wide@example.com")  # a journal line
        old.close()
    snapshot = json.loads(path.read_text())
    snapshot["schema_version"] = 3
    path.write_text(json.dumps(snapshot))
    for store in (open_json(), open_json()):  # the upgrade, then a later load
        found = store.get_user_by_email("jos\u00e9@example.com")
        assert found is not None and found.id == "nfd"
    assert "legacy_email_keys" not in json.loads(path.read_text())


def test_the_user_that_lost_the_key_can_send_its_email_unchanged(
    path: Path, open_json: Callable[..., JsonFileStore], monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As on SQL: the same email is no change of key (a profile form sends it again).
    two_users_nfkc_takes_for_one_address(path, open_json, monkeypatch)
    store = open_json()
    updated = store.update_user("nfd", email="jose\u0301@example.com", name="Jose")
    assert updated.name == "Jose"
    found = open_json().get_user_by_email("jos\u00e9@example.com")
    assert found is not None and found.id == "wide"


def test_a_legacy_key_of_a_user_that_does_not_exist_is_ignored(
    path: Path, open_json: Callable[..., JsonFileStore],
) -> None:
    open_json().close()
    snapshot = json.loads(path.read_text())
    snapshot["legacy_email_keys"] = {"ghost": "whatever@example.com"}
    path.write_text(json.dumps(snapshot))
    store = open_json()
    store.create_user(user("ghost", email="jane@example.com"))
    found = open_json().get_user_by_email("JANE@example.com")
    assert found is not None and found.id == "ghost"
    with pytest.raises(EmailTakenError):
        store.create_user(user("other", email="jane@example.com"))
