"""Named extension points: training rules, update schemes and pruning criteria register a class here.

A :class:`Registry` is ordered (registration order is the order help texts and errors list) and
reads as the (live) tuple of its names, so it can stand as a Field's ``choices``: a scheme
registered later (a plugin, a test) is a valid config value at once. ``get(name)`` is the class.

    RULES = Registry("rule")

    @RULES.register
    class MyRule(Rule):
        name = "mine"
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from .config import suggest
from .errors import ConfigError


class Registry(Sequence):
    """Classes by their ``name`` attribute, in registration order."""

    def __init__(self, kind: str):
        self.kind = kind
        self._classes: dict[str, type] = {}

    def register(self, cls: type) -> type:
        """Class decorator: add `cls` under ``cls.name`` (a later class of the same name replaces it)."""
        name = getattr(cls, "name", "")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"a {self.kind} needs a non-empty string `name` to be registered ({cls!r})")
        self._classes[name] = cls
        return cls

    def unregister(self, name: str) -> None:
        """Remove a registered class (tests that add a toy one)."""
        self._classes.pop(name, None)

    def get(self, name: Any) -> type:
        """The class registered as `name`; else a ConfigError listing the valid names."""
        try:
            return self._classes[name]
        except (KeyError, TypeError):
            raise ConfigError(f"{self.kind} = {name!r}: expected one of {', '.join(map(repr, self))}"
                              + suggest(str(name), self)) from None

    def __getitem__(self, index):
        """The name at `index` (a registry reads as the tuple of its names; classes: get)."""
        return tuple(self._classes)[index]

    def __contains__(self, name: object) -> bool:
        return name in self._classes

    def __iter__(self) -> Iterator[str]:
        return iter(tuple(self._classes))

    def __len__(self) -> int:
        return len(self._classes)

    def names(self) -> tuple[str, ...]:
        return tuple(self._classes)

    def classes(self) -> tuple[type, ...]:
        return tuple(self._classes.values())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._classes)})"

    # Identity semantics: a registry stands in Field specs, which are compared and hashed.
    __eq__ = object.__eq__
    __hash__ = object.__hash__


class Choices(Sequence):
    """A live, read-only list of names: a registry's, then fixed extra ones (a Field's choices)."""

    def __init__(self, registry: Registry, *extra: str):
        self.registry, self.extra = registry, extra

    def __iter__(self) -> Iterator[str]:
        return iter((*self.registry, *self.extra))

    def __contains__(self, name: object) -> bool:
        return name in self.registry or name in self.extra

    def __len__(self) -> int:
        return len(self.registry) + len(self.extra)

    def __getitem__(self, index):
        return (*self.registry, *self.extra)[index]

    def __repr__(self) -> str:
        return repr(tuple(self))

    __eq__ = object.__eq__
    __hash__ = object.__hash__
