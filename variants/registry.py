"""Registries of interchangeable components, one per slot of a Transformer.

A registry maps a lower-case name (the config value) to a class. Every class in a registry
is built the same way, ``cls(cfg)`` with a :class:`variants.config.ModelConfig`, and carries
``slot`` and ``registry_name`` attributes so a built model can report which entry filled
which slot (see ``fingerprint()`` on the models).

A component owns its settings: it lists them as :class:`Option` entries in an ``options`` class
attribute (key, default, check, documentation) and may check them against the rest of the
config in a ``check_config(cfg)`` class method. The model config accepts an option's key only
when a chosen component declares it, and a setting away from its default becomes part of the
component's identity (run name, run id, fingerprint, W&B keys), exactly like the entry's name.
The component keeps each option's value as an attribute of the same name, which is where the
fingerprint reads it back from the built model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Generic, Optional, TypeVar

T = TypeVar("T", bound=type)


@dataclass(frozen=True)
class Option:
    """One setting of a component: ``model.<key>`` in configs.

    ``default`` is what the component computes without it, and the value at which it stays out
    of run names and run ids (so adding an option never renames an existing run). ``kind`` is
    the value's type (default: the type of ``default``); ``choices`` restricts it; ``minimum``
    bounds a number from below (inclusive); ``short`` tags the value in run names
    (``gqa-kv2``; default: the key). ``optional``: ``None`` is also a valid value.
    ``examples``: non-default values valid in a tiny model (4 heads of 8 dimensions, 24
    tokens), which the registry-generated tests run (choices and flags need none); an example
    that needs other settings beside it is a mapping of all of them.
    """

    key: str
    default: Any
    doc: str
    short: str = ""
    kind: Optional[type] = None
    choices: tuple = ()
    minimum: Optional[float] = None
    optional: bool = False
    examples: tuple = ()

    @property
    def type(self) -> type:
        return self.kind or type(self.default)

    def parse(self, value: Any, owner: str) -> Any:
        """``value`` checked and normalised (an int where a float is declared becomes a float);
        ``ValueError`` naming the key and its owner otherwise."""
        where = f"model.{self.key} (an option of {owner})"
        if value is None:
            if self.optional or self.default is None:
                return None
            raise ValueError(f"{where}: needs a value, got None")
        kind = self.type
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise ValueError(f"{where}: expected {kind.__name__}, got {value!r}")
        if self.choices and value not in self.choices:
            raise ValueError(f"{where}: {value!r} is not one of {', '.join(map(str, self.choices))}")
        if self.minimum is not None and value < self.minimum:
            raise ValueError(f"{where}: must be at least {self.minimum}, got {value!r}")
        return value

    def tag(self, value: Any) -> str:
        """The value in a run name: ``kv2``, ``qkhead``; a true flag is its short name alone."""
        short = self.short or self.key
        if isinstance(value, bool):
            return short if value else f"no{short}"
        return f"{short}{value}"


def options_of(cls: type) -> dict[str, Option]:
    """Key -> :class:`Option` declared by a component class (inherited ones included)."""
    return {o.key: o for o in getattr(cls, "options", ())}


def settings_label(name: str, settings: dict[str, Any]) -> str:
    """``gqa(n_kv_heads=2)``: an entry's name with its settings away from their defaults, as
    the fingerprint and W&B tags show it; the bare name when all are at their defaults."""
    if not settings:
        return name
    return f"{name}({', '.join(f'{k}={v}' for k, v in sorted(settings.items()))})"


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

    def options(self) -> dict[str, list[tuple[str, Option]]]:
        """Option key -> the entries that declare it (an inherited option is declared by each)."""
        found: dict[str, list[tuple[str, Option]]] = {}
        for name in self.names():
            for key, option in options_of(self._entries[name]).items():
                found.setdefault(key, []).append((name, option))
        return found

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
# Model kinds (``model.kind``): the model classes of :mod:`variants.models`, not a component slot.
KINDS: Registry = Registry("model kind")


def option_owners() -> dict[str, list[tuple[str, str, Option]]]:
    """Option key -> ``(slot, entry, option)`` for every registered entry that declares it."""
    found: dict[str, list[tuple[str, str, Option]]] = {}
    for slot, registry in REGISTRIES.items():
        for key, owners in registry.options().items():
            found.setdefault(key, []).extend((slot, name, option) for name, option in owners)
    return found
