"""The registries: lookup errors, registration rules, and what ``variants`` imports."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.variants.helpers import tiny_config
from variants import REGISTRIES, ModelConfig, Registry

ROOT = Path(__file__).resolve().parents[2]

ENTRIES = [pytest.param(slot, name, id=f"{slot}-{name}")
           for slot in sorted(REGISTRIES) for name in REGISTRIES[slot].names()]


@pytest.mark.parametrize("slot", sorted(REGISTRIES))
def test_unknown_name_lists_choices(slot):
    registry = REGISTRIES[slot]
    for call in (lambda: registry.get("no-such-thing"),
                 lambda: registry.build("no-such-thing", tiny_config())):
        with pytest.raises(ValueError) as err:
            call()
        message = str(err.value)
        assert slot in message and "'no-such-thing'" in message and "choices" in message
        for name in registry.names():
            assert name in message


@pytest.mark.parametrize("slot", sorted(REGISTRIES))
def test_registries_are_non_empty_and_keyed_by_slot(slot):
    registry = REGISTRIES[slot]
    assert registry.slot == slot
    assert registry.names()
    assert registry.names() == sorted(registry.names()) == list(registry)
    assert slot in ModelConfig.__dataclass_fields__  # every slot is a config field


@pytest.mark.parametrize("slot,name", ENTRIES)
def test_entries(slot, name):
    """Names are lower case; each class carries its slot and name; ``build`` makes one."""
    registry = REGISTRIES[slot]
    assert name and name == name.lower()
    assert name in registry and "no-such-thing" not in registry
    cls = registry.get(name)
    assert (cls.slot, cls.registry_name) == (slot, name)
    module = registry.build(name, tiny_config(**{slot: name}))
    assert isinstance(module, cls)
    assert (module.slot, module.registry_name) == (slot, name)


@pytest.mark.parametrize("slot,name", ENTRIES)
def test_duplicate_registration_raises_and_changes_nothing(slot, name):
    registry = REGISTRIES[slot]
    before = (registry.names(), registry.get(name))

    class Impostor:
        pass

    with pytest.raises(ValueError, match=f"{slot} '{name}' is already registered"):
        registry.register(name)(Impostor)
    assert (registry.names(), registry.get(name)) == before
    assert not hasattr(Impostor, "registry_name")


def test_fresh_registry_rules():
    registry = Registry("widget")

    @registry.register("plain")
    class Plain:
        def __init__(self, cfg, extra=None):
            self.cfg, self.extra = cfg, extra

    assert registry.names() == ["plain"] and registry.get("plain") is Plain
    built = registry.build("plain", "cfg", extra=3)
    assert (built.cfg, built.extra) == ("cfg", 3)
    assert "widget" in repr(registry) and "plain" in repr(registry)
    with pytest.raises(ValueError, match="already registered"):
        registry.register("plain")(type("Other", (), {}))
    for bad in ("Upper", "ReLU", ""):
        with pytest.raises(ValueError, match="lower case"):
            registry.register(bad)
    assert registry.names() == ["plain"]
    with pytest.raises(ValueError, match="unknown widget 'other'; choices: plain"):
        registry.check("other")
