"""Registries of interchangeable components, one per slot of a Transformer.

A registry maps a lower-case name (the config value) to a class. Every class in a registry
is built the same way, ``cls(cfg)`` with a :class:`variants.config.ModelConfig`, and carries
``slot`` and ``registry_name`` attributes so a built model can report which entry filled
which slot (see ``fingerprint()`` on the models).
"""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

T = TypeVar("T", bound=type)


class Registry(Generic[T]):
    """Name -> class for one slot (``norm``, ``position``, ...)."""

    def __init__(self, slot: str) -> None:
        self.slot = slot
        self._entries: dict[str, type] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Class decorator: ``@NORMS.register("rmsnorm")``."""
        if name != name.lower() or not name:
            raise ValueError(f"registry names are lower case and non-empty, got {name!r}")

        def decorate(cls: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.slot} {name!r} is already registered by {self._entries[name].__qualname__}")
            cls.slot = self.slot
            cls.registry_name = name
            self._entries[name] = cls
            return cls

        return decorate

    def names(self) -> list[str]:
        return sorted(self._entries)

    def check(self, name: str) -> None:
        """Raise ``ValueError`` listing the choices when ``name`` is not registered."""
        if name not in self._entries:
            raise ValueError(f"unknown {self.slot} {name!r}; choices: {', '.join(self.names())}")

    def get(self, name: str) -> T:
        self.check(name)
        return self._entries[name]

    def build(self, name: str, cfg, *args, **kwargs):
        return self.get(name)(cfg, *args, **kwargs)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self):
        return iter(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.slot!r}, {self.names()})"


NORMS: Registry = Registry("norm")
NORM_POSITIONS: Registry = Registry("norm_position")
POSITIONS: Registry = Registry("position")
FFNS: Registry = Registry("ffn")
ATTENTIONS: Registry = Registry("attention")
INITS: Registry = Registry("init")

REGISTRIES: dict[str, Registry] = {r.slot: r for r in (NORMS, NORM_POSITIONS, POSITIONS, FFNS, ATTENTIONS, INITS)}
