"""Name → implementation registries, keyed by the name a user types in a config."""

from __future__ import annotations

from typing import Callable, Generic, Optional, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A mapping from a config name (``selection=deita``, ``scorer=ifd``) to an implementation.

    Lookups of unknown names raise a ``KeyError`` that lists what is registered, so a typo in a
    config is reported with the valid choices. With ``discover`` (a package name), the first lookup
    imports every module of that package, whose ``@register`` decorators fill the registry: adding an
    implementation is adding a module, and importing the registry itself stays cheap.
    """

    def __init__(self, kind: str, discover: Optional[str] = None):
        self.kind = kind
        self._items: dict[str, T] = {}
        self._discover = discover

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: register the decorated object under ``name``."""

        def wrap(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return wrap

    def _items_loaded(self) -> dict[str, T]:
        """The registered items, after importing the ``discover`` package's modules (once)."""
        if self._discover is not None:
            import importlib
            import pkgutil

            name, self._discover = self._discover, None  # a module that looks names up while loading sees the partial set
            try:
                package = importlib.import_module(name)
                for info in pkgutil.iter_modules(package.__path__):
                    importlib.import_module(f"{name}.{info.name}")
            except BaseException:
                self._discover = name
                raise
        return self._items

    def get(self, name: str) -> T:
        """Return the implementation registered as ``name``."""
        items = self._items_loaded()
        try:
            return items[name]
        except KeyError:
            known = ", ".join(sorted(items)) or "(none)"
            raise KeyError(f"unknown {self.kind} {name!r}; registered: {known}") from None

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted(self._items_loaded())

    def __contains__(self, name: str) -> bool:
        return name in self._items_loaded()
