"""create_kavach, the Kavach object and its plugin registry."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kavach import (
    ConfigurationError,
    KavachError,
    PasswordHasher,
    UnknownPluginError,
    create_kavach,
)
from kavach.auth import polar
from kavach.stores.memory import MemoryStore

SECRET = "whsec_a2F2YWNoLXRlc3Qtc2VjcmV0LTMyLWJ5dGVzLWxvbmc="


def make_polar() -> object:
    return polar(access_token="polar_oat_x", webhook_secret=SECRET, base_url="http://127.0.0.1:9")


def test_default_database_is_sqlite_file_in_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with create_kavach() as kavach:
        assert kavach.store.kind == "sqlite"
        kavach.users.create("a@b.io")
    assert (tmp_path / "kavach.db").exists()


@pytest.mark.parametrize(
    ("database", "kind"),
    [
        ("memory://", "memory"),
        ({"provider": "memory"}, "memory"),
        ({"provider": "sqlite", "url": "sqlite:///k.db"}, "sqlite"),
        ("sqlite:///k.db", "sqlite"),
        ({"provider": "json", "url": "k.json"}, "json"),
    ],
)
def test_database_accepts_url_dict_and_store(
    database: object, kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with create_kavach(database) as kavach:
        assert kavach.store.kind == kind


def test_json_url_with_absolute_path(tmp_path: Path) -> None:
    path = tmp_path / "data" / "kavach.json"
    path.parent.mkdir()
    with create_kavach(f"json://{path}") as kavach:
        kavach.users.create("a@b.io")
    assert path.exists() or Path(str(path) + ".journal").exists()


def test_store_instance_is_used_as_is() -> None:
    store = MemoryStore()
    with create_kavach(store) as kavach:
        assert kavach.store is store


@pytest.mark.parametrize(
    "database",
    ["ftp://x", "kavach.db", {"provider": "oracle"}, {"provider": "postgres"}, 42,
     {"provider": "sqlite", "url": "postgresql://x/y"}],
)
def test_bad_database_is_a_configuration_error(database: object) -> None:
    with pytest.raises(ConfigurationError):
        create_kavach(database)


def test_database_password_is_not_in_errors() -> None:
    with pytest.raises(ConfigurationError) as err:
        create_kavach("oracle://scott:tiger-secret@db/x")
    assert "tiger-secret" not in str(err.value)


def test_plugins_by_attribute_and_item() -> None:
    plugin = make_polar()
    with create_kavach("memory://", plugins=[plugin]) as kavach:  # type: ignore[list-item]
        assert kavach.plugins.polar is plugin
        assert kavach.plugins["polar"] is plugin
        assert "polar" in kavach.plugins


def test_unknown_plugin_is_kavach_error_and_lookup_error() -> None:
    with create_kavach("memory://") as kavach:
        with pytest.raises(UnknownPluginError) as err:
            kavach.plugins["stripe"]
        assert isinstance(err.value, KavachError)
        assert isinstance(err.value, LookupError)
        with pytest.raises(LookupError):
            kavach.plugins.stripe  # noqa: B018


def test_same_plugin_twice_is_refused() -> None:
    with pytest.raises(ConfigurationError):
        create_kavach("memory://", plugins=[make_polar(), make_polar()])  # type: ignore[list-item]


def test_an_unbound_polar_plugin_says_so() -> None:
    plugin = polar(access_token="polar_oat_x", webhook_secret=SECRET)
    with pytest.raises(ConfigurationError) as caught:
        plugin.get_subscription("someone")
    assert caught.value.field == "plugins"


def test_a_polar_plugin_bound_to_one_kavach_refuses_another() -> None:
    plugin = make_polar()
    with create_kavach("memory://", plugins=[plugin]) as first:  # type: ignore[list-item]
        with pytest.raises(ConfigurationError):
            create_kavach("memory://", plugins=[plugin])  # type: ignore[list-item]
        assert plugin.get_subscription("someone") is None  # type: ignore[attr-defined]
        assert first.plugins.polar is plugin


def test_non_plugin_is_refused() -> None:
    with pytest.raises(ConfigurationError):
        create_kavach("memory://", plugins=[object()])  # type: ignore[list-item]


def test_close_is_idempotent_and_context_manager_closes() -> None:
    kavach = create_kavach("memory://")
    with kavach:
        pass
    kavach.close()
    assert "closed" in repr(kavach)


def test_repr_reports_counts_not_internals() -> None:
    with create_kavach("memory://", plugins=[make_polar()],  # type: ignore[list-item]
                       password_hasher=PasswordHasher.fast()) as kavach:
        kavach.users.create("a@b.io", password="long enough pw")
        text = repr(kavach)
        assert "users=1" in text
        assert "polar" in text
        assert SECRET not in text
        assert "polar_oat_x" not in text


def test_trusted_origins_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAVACH_TRUSTED_ORIGINS", "https://App.Example.com:443, http://localhost:3000")
    with create_kavach("memory://") as kavach:
        assert kavach.config.trusted_origins == ("https://app.example.com", "http://localhost:3000")


def test_bad_trusted_origin_is_refused() -> None:
    with pytest.raises(ConfigurationError):
        create_kavach("memory://", trusted_origins=["javascript:alert(1)"])


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"access_token": "", "webhook_secret": SECRET}, "access_token"),
        ({"access_token": "polar_oat_x", "webhook_secret": ""}, "webhook_secret"),
        ({"access_token": "  ", "webhook_secret": SECRET}, "access_token"),
        ({"access_token": "polar_oat_x", "webhook_secret": SECRET, "base_url": "ftp://x"},
         "base_url"),
    ],
)
def test_polar_config_is_validated_at_once(kwargs: dict[str, str], field: str) -> None:
    with pytest.raises(ConfigurationError) as err:
        polar(**kwargs)  # type: ignore[arg-type]
    assert err.value.field == field
    assert isinstance(err.value, ValueError)


def test_polar_hosts() -> None:
    assert polar("t", SECRET).base_url == "https://api.polar.sh"
    assert polar("t", SECRET, sandbox=True).base_url == "https://sandbox-api.polar.sh"
    assert polar("t", SECRET, sandbox=True, base_url="http://127.0.0.1:1/").base_url == (
        "http://127.0.0.1:1"
    )


def test_no_module_level_state_between_instances() -> None:
    with create_kavach("memory://") as a, create_kavach("memory://") as b:
        a.users.create("x@y.io")
        assert b.users.get_by_email("x@y.io") is None
    assert os.environ.get("KAVACH_TEST_NOTHING") is None
