"""Config loading: layers, overrides, and errors that name the key before any work."""

from pathlib import Path

import pytest

from experiments.cli import main
from experiments.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENTS = sorted((ROOT / "configs" / "experiments").glob("*.yaml"))
PRESETS = sorted((ROOT / "configs" / "model").glob("*.yaml"))


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_shipped_experiments_load(path):
    cfg = load_config([path, ROOT / "configs" / "debug" / "smoke.yaml"])
    assert cfg.trainer["max_steps"] <= 50 and cfg.run.experiment == path.stem


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_presets_are_diffs_over_any_experiment(preset):
    base = load_config([EXPERIMENTS[0]])
    cfg = load_config([EXPERIMENTS[0], preset])
    assert cfg.model.d_model == base.model.d_model  # only component fields change


def test_layers_merge_left_to_right_then_overrides(tmp_path):
    (tmp_path / "a.yaml").write_text("model:\n  d_model: 64\n  n_heads: 2\n")
    (tmp_path / "b.yaml").write_text("model:\n  d_model: 96\n")
    cfg = load_config([tmp_path / "a.yaml", tmp_path / "b.yaml"], ["model.norm=rmsnorm", "seed=3"])
    assert (cfg.model.d_model, cfg.model.n_heads, cfg.model.norm, cfg.seed) == (96, 2, "rmsnorm", 3)
    assert cfg.run_name == "rmsnorm-pre-learned-gelu-s3"


@pytest.mark.parametrize("override,message", [
    ("model.nrom=rmsnorm", "model.nrom"),
    ("model.d_model=wide", "model.d_model"),
    ("model.position=xpos", "alibi, learned, none, rope, sinusoidal"),
    ("model.n_heads=3", "n_heads"),
    ("task.name=translation", "model.kind"),
    ("data.source=nowhere", "data.source"),
    ("logger=tensorboard", "logger"),
    ("model.norm", "dotted.key=value"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config([], [override])


def test_unknown_key_in_file_names_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  max_steps: 5\nmodle:\n  d_model: 8\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*modle"):
        load_config([bad])


def test_cli_exits_2_on_bad_config(capsys):
    assert main(["train", "model.norm=groupnorm"]) == 2
    assert "layernorm, rmsnorm" in capsys.readouterr().err


def test_run_ids_and_names_survive_keys_added_with_the_old_behaviour():
    """``model.attention`` became a slot after runs were made: at its default ``mha`` it leaves
    the run id and the run name as they were (the id below was computed before the key
    existed), so those runs still resume."""
    from experiments.config import run_id

    default = load_config([], [])
    assert run_id(default) == "126e6e2b7a"
    assert default.run_name == "layernorm-pre-learned-gelu-s0"
    assert run_id(load_config([], ["model.attention=mha"])) == "126e6e2b7a"
