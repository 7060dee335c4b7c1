"""The plugin registry: ``kavach.plugins.polar`` and ``kavach.plugins["polar"]``."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from kavach.errors import ConfigurationError, UnknownPluginError

if TYPE_CHECKING:
    from kavach.core import Kavach


@runtime_checkable
class Plugin(Protocol):
    """What ``create_kavach(plugins=[...])`` accepts."""

    #: The registry key, e.g. ``"polar"``.
    name: str

    def bind(self, kavach: Kavach) -> None:
        """Attach to the ``Kavach`` object (store, users, clock). Called once."""
        ...

    def close(self) -> None:
        """Release resources (HTTP sessions). Called by ``Kavach.close()``."""
        ...


class Plugins:
    """A read-only mapping of plugin name to plugin, also readable as attributes."""

    __slots__ = ("_by_name",)

    def __init__(self, plugins: Iterable[Plugin]) -> None:
        by_name: dict[str, Plugin] = {}
        for plugin in plugins:
            if not isinstance(plugin, Plugin):
                raise ConfigurationError(
                    f"{plugin!r} is not a kavach plugin (needs name, bind, close)",
                    field="plugins",
                )
            if plugin.name in by_name:
                raise ConfigurationError(
                    f"plugin {plugin.name!r} is configured twice", field="plugins"
                )
            by_name[plugin.name] = plugin
        self._by_name = by_name

    def __getitem__(self, name: str) -> Any:
        try:
            return self._by_name[name]
        except KeyError:
            raise UnknownPluginError(name, list(self._by_name)) from None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        by_name = object.__getattribute__(self, "_by_name")
        try:
            return by_name[name]
        except KeyError:
            raise UnknownPluginError(name, list(by_name)) from None

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_name)

    def __len__(self) -> int:
        return len(self._by_name)

    def get(self, name: str) -> Any:
        """The plugin named ``name``, or ``None``."""
        return self._by_name.get(name)

    def __repr__(self) -> str:
        return f"Plugins({sorted(self._by_name)})"
