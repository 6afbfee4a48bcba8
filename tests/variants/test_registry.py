"""The registries: lookup errors, registration rules, and what ``variants`` imports."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.variants.helpers import build, example_settings, option_examples, options_only, tiny_config
from variants import REGISTRIES, ModelConfig, Registry
from variants.registry import options_of

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


# ---------------------------------------------------------------------------------------------
# a component's own settings (variants.registry.Option)

OPTIONS = [pytest.param(slot, name, key, option, id=f"{slot}-{name}-{key}")
           for slot in sorted(REGISTRIES) for name in REGISTRIES[slot].names()
           for key, option in options_of(REGISTRIES[slot].get(name)).items()]


@pytest.mark.parametrize("slot,name,key,option", OPTIONS)
def test_every_setting_has_examples_that_name_and_fingerprint_it(slot, name, key, option):
    """Each setting: documented, tested away from its default (the registry-generated tests run
    these examples), part of the run name, the fingerprint and the labels, and kept by the
    built component under its own key (where the fingerprint reads it)."""
    assert option.doc and key == key.lower()
    examples = option_examples(option)
    assert examples, f"{slot} {name!r}: give model.{key} examples a tiny model takes"
    base = tiny_config(**{slot: name})
    for example in examples:
        settings = example_settings(key, example)
        value = settings[key]
        cfg = tiny_config(**{slot: name, **settings})
        assert cfg.options == options_only(settings) and getattr(cfg, key) == value
        assert cfg.components_name() != base.components_name()
        assert option.tag(value) in cfg.components_name().split("-")
        model = build(cfg)
        assert model.fingerprint() == cfg.labels() and f"{key}={value}" in cfg.labels()[slot]
    assert build(base).fingerprint()[slot] == name  # at its default: the bare name, as before


def test_a_setting_at_its_default_is_not_kept_and_changes_no_name():
    cfg = tiny_config(attention="gqa", n_kv_heads=1)
    assert cfg.options == {} and cfg.n_kv_heads == 1
    assert cfg.components_name() == tiny_config(attention="gqa").components_name()


def test_a_setting_belongs_to_its_component():
    with pytest.raises(ValueError, match=r"model.n_kv_heads is an option of attention 'gqa', but the config "
                                         r"has attention='mha'"):
        tiny_config(n_kv_heads=2)
    tiny_config(t5_num_buckets=32)  # at its default: a config written with every key still loads
    with pytest.raises(ValueError, match=r"model.no_such_key: not a model field"):
        tiny_config(no_such_key=1)
    with pytest.raises(AttributeError, match="n_kv_heads"):
        tiny_config().n_kv_heads  # noqa: B018 (no chosen component declares it)


@pytest.mark.parametrize("key,value,message", [
    ("n_kv_heads", 3, r"model.n_kv_heads \(3\) must divide n_heads \(4\)"),
    ("n_kv_heads", 8, r"must divide n_heads"),
    ("n_kv_heads", 0, r"model.n_kv_heads \(an option of attention 'gqa'\): must be at least 1, got 0"),
    ("n_kv_heads", "2", r"model.n_kv_heads \(an option of attention 'gqa'\): expected int, got '2'"),
    ("qk_norm", "rms", r"model.qk_norm \(an option of attention 'gqa'\): 'rms' is not one of none, head, full"),
])
def test_bad_settings_are_refused_naming_the_key(key, value, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(attention="gqa", **{key: value})


def test_replace_drops_the_settings_of_a_replaced_component():
    cfg = tiny_config(attention="gqa", n_kv_heads=2, qk_norm="head")
    assert cfg.replace(attention="mha").options == {"qk_norm": "head"}  # mha declares qk_norm too
    assert cfg.replace(n_kv_heads=4).options == {"n_kv_heads": 4, "qk_norm": "head"}
    assert ModelConfig(**cfg.to_dict()) == cfg  # the flat mapping builds it again
