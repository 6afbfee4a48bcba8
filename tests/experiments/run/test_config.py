"""Config loading: layers, overrides, and errors that name the key before any work."""

import json
from pathlib import Path

import pytest

from experiments.cli import main
from experiments.run.config import ConfigError, load_config, run_id, to_yaml
from variants import ModelConfig

ROOT = Path(__file__).resolve().parents[3]
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
    ("model.position=xpos", "unknown position 'xpos'; choices: alibi, "),
    ("model.n_heads=3", "n_heads"),
    ("model.kind=seq2seq", "task.name='lm' needs model.kind='lm', got 'seq2seq'"),
    ("data.source=nowhere", "data.source"),
    ("logger=tensorboard", "logger"),
    ("model.norm", "dotted.key=value"),
    ("data.block_size=300", "key 'data.block_size': 300 tokens per block, but position 'learned' encodes at most 256"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config([], [override])


@pytest.mark.parametrize("task, kind", [("lm", "lm"), ("translation", "seq2seq")])
def test_the_model_kind_follows_from_the_task(task, kind):
    """Configs write the task alone; a layer that writes model.kind too is checked against it."""
    assert load_config([], [f"task.name={task}"]).model.kind == kind
    assert load_config([], [f"task.name={task}", f"model.kind={kind}"]).model.kind == kind


@pytest.mark.parametrize("seed", [-1, 2**32, 5000000000])
def test_a_seed_numpy_cannot_take_is_refused_at_load(tmp_path, capsys, seed):
    """Refused by key and range when the config is loaded, not later in Lightning's
    seed_everything: exit code 2, no run directory."""
    with pytest.raises(ConfigError, match=rf"key 'seed': {seed} is outside \[0, 2\*\*32 - 1\]"):
        load_config([], [f"seed={seed}"])
    args = [str(ROOT / "configs" / "experiments" / "lm-bible.yaml"), f"seed={seed}", f"run.root={tmp_path}/runs",
            f"data.cache_dir={tmp_path}/cache", "logger=none"]
    assert main(["train", *args]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line == f"ablate train: key 'seed': {seed} is outside [0, 2**32 - 1], the seeds NumPy and Lightning accept"
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache").exists()
    assert load_config([], [f"seed={2**32 - 1}"]).seed == 2**32 - 1


@pytest.mark.parametrize("steps", [0, -2])
def test_a_run_of_no_steps_is_refused_at_load(tmp_path, capsys, steps):
    """``trainer.max_steps=0`` ended ``completed`` with an untrained model that a report would rank;
    refused by key at load (exit code 2, no run directory). -1 leaves the length to the epochs."""
    with pytest.raises(ConfigError, match=rf"key 'trainer.max_steps': {steps}; a run trains at least 1 step"):
        load_config([], [f"trainer.max_steps={steps}"])
    args = [str(ROOT / "configs" / "experiments" / "lm-bible.yaml"), f"trainer.max_steps={steps}",
            f"run.root={tmp_path}/runs", f"data.cache_dir={tmp_path}/cache", "logger=none"]
    assert main(["train", *args]) == 2
    assert "key 'trainer.max_steps'" in capsys.readouterr().err and not (tmp_path / "runs").exists()
    assert load_config([], ["trainer.max_steps=-1", "trainer.max_epochs=1"]).trainer["max_steps"] == -1


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
    from experiments.run.config import run_id

    default = load_config([], [])
    assert run_id(default) == "126e6e2b7a"
    assert default.run_name == "layernorm-pre-learned-gelu-s0"
    assert run_id(load_config([], ["model.attention=mha"])) == "126e6e2b7a"


@pytest.mark.parametrize("override, message", [
    ("run.name=../../escape", "must be one directory name"),
    ("run.name=a/b", "must be one directory name"),
    ("run.experiment=..", "must be one directory name"),
])
def test_run_names_stay_inside_the_run_root(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config([ROOT / "configs" / "experiments" / "lm-bible.yaml"], [override])


@pytest.mark.parametrize("override, message", [
    ("trainer.max_step=5", r"not a lightning.Trainer argument; did you mean max_steps"),
    ("trainer.max_steps=abc", r"'abc' is not a <class 'int'>"),
    ("trainer.limit_val_batches=-5", "must be 0 or more"),
    ("trainer.enable_progress_bar=maybe", "'maybe' is not"),
    ("trainer.precision=17", "17 is not"),
    ("trainer.callbacks=[]", "is set by ablate itself"),
])
def test_trainer_keys_are_refused_before_any_work(tmp_path, capsys, override, message):
    """Checked against lightning.Trainer's signature before the tokenizer or the CPU peak: exit
    code 2, the key named, no data cache written; the run shows as failed (never pending)."""
    from experiments.run.config import check_trainer
    from experiments.run.rundir import read_status

    cfg = load_config([ROOT / "configs" / "experiments" / "lm-bible.yaml"], [override])
    with pytest.raises(ConfigError, match=message):
        check_trainer(cfg.trainer)
    args = [str(ROOT / "configs" / "experiments" / "lm-bible.yaml"), override, f"run.root={tmp_path}/runs",
            f"data.cache_dir={tmp_path}/cache", "logger=none"]
    assert main(["train", *args]) == 2
    err = capsys.readouterr().err
    assert f"key 'trainer.{override.split('=')[0].split('.')[1]}'" in err and "Traceback" not in err
    assert not (tmp_path / "cache").exists()
    (status,) = (tmp_path / "runs").glob("*/*/status.json")
    assert read_status(status.parent)["state"] == "failed"


def test_the_shipped_trainer_settings_pass_the_check():
    from experiments.run.config import check_trainer

    for path in sorted((ROOT / "configs" / "experiments").glob("*.yaml")):
        check_trainer(load_config([path]).trainer)


def test_an_accelerator_this_machine_lacks_is_refused_before_any_work():
    import torch

    from experiments.run.config import check_runnable_here

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    with pytest.raises(ConfigError, match="no CUDA device"):
        check_runnable_here({"accelerator": "gpu"})
    check_runnable_here({"accelerator": "cpu"})
    graphs = load_config([], ["perf.cuda_graphs=true"])
    with pytest.raises(ConfigError, match="key 'perf.cuda_graphs': CUDA graphs need a CUDA device, and this run "
                                          "is on the CPU"):
        check_runnable_here(graphs.trainer, graphs.perf)


def test_cuda_graphs_are_refused_for_translation_at_load():
    mt = ROOT / "configs" / "experiments" / "mt-bible-de-en.yaml"
    with pytest.raises(ConfigError, match="key 'perf.cuda_graphs': CUDA graphs replay fixed shapes"):
        load_config([mt], ["perf.cuda_graphs=true"])
    assert load_config([], ["perf.cuda_graphs=true"]).perf.cuda_graphs  # language modelling: accepted at load


def test_a_bad_include_fails_the_whole_sweep_up_front(tmp_path, capsys):
    sweep = tmp_path / "bad.yaml"
    sweep.write_text(f"""
name: bad
configs: [{ROOT / 'configs' / 'experiments' / 'lm-bible.yaml'}, {ROOT / 'configs' / 'debug' / 'smoke.yaml'}]
grid: {{model.ffn: [gelu]}}
include: [{{model.ffn: relu, trainer.max_step: 5}}]
""")
    assert main(["sweep", str(sweep), f"run.root={tmp_path}/runs", "logger=none"]) == 2
    err = capsys.readouterr().err
    assert "run layernorm-pre-learned-relu-max_step5-s0" in err and "did you mean max_steps" in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("text, message", [
    (b"model:\n  d_model: [1, 2\n", r"bad\.yaml:3:1: not valid YAML"),
    (b"42\n", "holds a mapping of keys at its top level, not a int"),
    (b"- a\n- b\n", "not a list"),
    (b'model: !!python/object/apply:os.system ["echo hi"]\n', r"bad\.yaml:1:8: not valid YAML: could not determine a constructor"),
    (b"model:\n  d_model: \xe9\n", r"bad\.yaml: not UTF-8 text"),
])
def test_a_bad_yaml_file_is_named_with_its_line_and_no_traceback(tmp_path, capsys, text, message):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(text)
    with pytest.raises(ConfigError, match=message):
        load_config([ROOT / "configs" / "experiments" / "lm-bible.yaml", bad])
    assert main(["train", str(bad), f"run.root={tmp_path}/runs"]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_a_data_error_is_a_message_with_exit_code_2_and_a_failed_run(tmp_path, capsys):
    from experiments.run.rundir import read_status

    for split in ("train", "val", "test"):
        (tmp_path / f"{split}.txt").write_bytes("one\ncaf\u00e9\n".encode("latin-1"))
    args = [str(ROOT / "configs" / "experiments" / "lm-bible.yaml"), "data.source=text", f"data.path={tmp_path}",
            f"run.root={tmp_path}/runs", f"data.cache_dir={tmp_path}/cache", "logger=none"]
    assert main(["train", *args]) == 2
    err = capsys.readouterr().err
    assert "train.txt:2: not UTF-8 text" in err and "Traceback" not in err
    (status,) = (tmp_path / "runs").glob("*/*/status.json")
    assert read_status(status.parent)["state"] == "failed" and "not UTF-8" in read_status(status.parent)["error"]


def test_blocks_longer_than_learned_positions_are_refused_at_load_and_others_extrapolate():
    assert load_config([], ["model.position=learned", "model.max_seq_len=64", "data.block_size=64"])
    for position in ("rope", "alibi", "sinusoidal", "none"):  # no table: any block length
        assert load_config([], [f"model.position={position}", "model.max_seq_len=64", "data.block_size=512"])


def test_translations_longer_than_learned_positions_are_refused_at_load():
    """Greedy and beam decoding place up to task.max_decode_len target tokens: a learned table
    must hold them, or the run would fail at its first validation, after training."""
    mt = ROOT / "configs" / "experiments" / "mt-bible-de-en.yaml"
    assert load_config([mt], ["model.position=learned", "model.max_seq_len=64", "task.max_decode_len=64"])
    with pytest.raises(ConfigError, match="key 'task.max_decode_len': translations of up to 65 tokens, but "
                                          "position 'learned' encodes at most 64"):
        load_config([mt], ["model.position=learned", "model.max_seq_len=64", "task.max_decode_len=65"])
    assert load_config([mt], ["model.position=rope", "model.max_seq_len=64", "task.max_decode_len=500"])


def test_an_unwritable_run_root_is_a_message_with_exit_code_2(tmp_path, capsys):
    """A run root that cannot hold directories (here a plain file, which fails as root too)."""
    root = tmp_path / "a-file"
    root.write_text("not a directory\n")
    args = [str(ROOT / "configs" / "experiments" / "lm-bible.yaml"), f"run.root={root}", "logger=none"]
    assert main(["train", *args]) == 2
    err = capsys.readouterr().err
    assert "cannot write the run directory (Not a directory)" in err and "Traceback" not in err
    assert root.read_text() == "not a directory\n"


@pytest.mark.parametrize("debug", [None, "--debug", "ABLATE_DEBUG=1"])
def test_a_refusal_shows_its_traceback_only_when_debugging(capsys, monkeypatch, debug):
    # set (not deleted) so that teardown also undoes what --debug writes to the environment
    monkeypatch.setenv("ABLATE_DEBUG", "1" if debug and debug.startswith("ABLATE_DEBUG") else "0")
    assert main([*(["--debug"] if debug == "--debug" else []), "train", "model.norm=groupnorm"]) == 2
    err = capsys.readouterr().err
    assert err.rstrip().splitlines()[-1].startswith("ablate train: ")  # the message is the last line
    assert ("Traceback" in err) == (debug is not None)


COMMITTED_RUNS = sorted((ROOT / "reports").glob("*/runs/*/config.yaml"))


def test_every_committed_runs_config_yaml_gives_its_run_id():
    """A run's recorded config.yaml reproduces its run id, for the runs of every committed report
    (written before the data's facts moved under ``derived``: their model section holds them)."""
    assert len(COMMITTED_RUNS) >= 40
    wrong = {}
    for path in COMMITTED_RUNS:
        recorded = json.loads((path.parent / "status.json").read_text())["run_id"]
        cfg = load_config([path])
        if run_id(cfg) != recorded or cfg.derived.vocab_size is None:
            wrong[str(path.relative_to(ROOT))] = (run_id(cfg), recorded)
    assert not wrong


def test_the_datas_facts_are_records_to_check_not_settings():
    from lit.data.tokenizer import train_bpe

    tok = train_bpe(["in the beginning was the word"] * 20, 300)
    cfg = load_config([], ["model.vocab_size=5000"])  # a value given is a record, kept under derived
    assert cfg.derived.vocab_size == 5000 and cfg.model.vocab_size == ModelConfig().vocab_size
    assert run_id(cfg) == run_id(load_config())
    with pytest.raises(ConfigError, match=rf"derived.vocab_size.*5000.*tokenizer gives {tok.vocab_size}"):
        cfg.model_for(tok)
    fresh = load_config()
    built = fresh.model_for(tok)
    assert (built.vocab_size, built.pad_id) == (tok.vocab_size, tok.pad_id)
    assert fresh.model.vocab_size == ModelConfig().vocab_size  # the config is left as it was
    recorded = fresh.with_derived(tok)
    assert (recorded.derived.vocab_size, recorded.derived.pad_id) == (tok.vocab_size, tok.pad_id)
    assert run_id(recorded) == run_id(fresh)
    text = to_yaml(recorded)
    assert "derived:" in text and "vocab_size: 8192" not in text

