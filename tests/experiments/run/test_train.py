"""End-to-end runs with the real Trainer, tokenizer, data and sacreBLEU (tiny sizes)."""

import json
from pathlib import Path

import pytest
import yaml

from experiments.run.config import load_config
from experiments.run.train import train

ROOT = Path(__file__).resolve().parents[3]
SMOKE = ROOT / "configs" / "debug" / "smoke.yaml"
SHARED_MULTI30K = ROOT.parent / "shared" / "data" / "multi30k"


def _run(tmp_path, experiment, *overrides):
    cfg = load_config([ROOT / "configs" / "experiments" / f"{experiment}.yaml", SMOKE],
                      [f"run.root={tmp_path}", "logger=none", f"data.cache_dir={tmp_path}/cache", *overrides])
    return cfg, train(cfg)


def _eager_and(tmp_path, overrides, name, setting):
    """An lm-bible run eager and one with ``setting``: each (result, logged training losses)."""
    runs = []
    for folder, extra in (("eager", ()), (name, (setting,))):
        cfg, result = _run(tmp_path / folder, "lm-bible", *overrides, *extra)
        lines = (cfg.run_dir / "metrics.jsonl").read_text().splitlines()
        runs.append((result, [r["train/loss"] for r in map(json.loads, lines) if "train/loss" in r]))
    return runs


def _check_run_dir(cfg, result, metric):
    run_dir = Path(result["run_dir"])
    assert run_dir == cfg.run_dir
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "completed" and status["step"] == cfg.trainer["max_steps"]
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["derived"]["vocab_size"] > 3 and saved["model"]["norm"] == cfg.model.norm
    assert "vocab_size" not in saved["model"] and "pad_id" not in saved["model"]  # facts of the data, not settings
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all("step" in r for r in records)
    keys = set().union(*records)
    assert {"train/loss", "val/loss", "val/ppl", "perf/tokens_per_s", "perf/mfu", "params/total", metric} <= keys
    assert (run_dir / "checkpoints" / f"step-{cfg.trainer['max_steps']:08d}.ckpt").is_file()
    first = next(r["train/loss"] for r in records if "train/loss" in r)
    last = [r["train/loss"] for r in records if "train/loss" in r][-1]
    assert last < first  # it learns something


@pytest.mark.slow
def test_lm_bible_smoke(tmp_path):
    import time

    start = time.time()
    cfg, result = _run(tmp_path, "lm-bible", "model.position=rope", "model.ffn=swiglu")
    metrics = json.loads((cfg.run_dir / "status.json").read_text())["metrics"]
    # the run's clock covers fitting and testing once: inside the call, and more than training alone
    assert metrics["train_s"] < metrics["wall_s"] <= time.time() - start
    _check_run_dir(cfg, result, "val/bpb")
    assert 1 < result["test/ppl"] < cfg.model.vocab_size * 10
    assert result["test/ppl_x1"] == pytest.approx(result["test/ppl"], rel=1e-4)
    assert all(f"test/ppl_x{f}{mode}" in result for f in (2, 4, 8) for mode in ("", "_sliding"))


@pytest.mark.parametrize("experiment", [
    "lm-bible",
    pytest.param("mt-bible-de-en", marks=pytest.mark.slow),
    pytest.param("mt-multi30k-de-en", marks=[pytest.mark.slow, pytest.mark.skipif(
        not SHARED_MULTI30K.is_dir(), reason="no local Multi30K copy beside the project")]),
])
def test_a_runs_own_config_yaml_reruns_that_run(tmp_path, experiment):
    """``ablate train RUN_DIR/config.yaml`` on a finished run: the same run id, the run directory
    accepted as its own, nothing trained again (before, the tokenizer's vocabulary size was written
    back into the config after hashing, and the directory was refused as another run's)."""
    from experiments.run.config import run_id
    from experiments.run.train import run_command

    overrides = ["data.path=" + str(SHARED_MULTI30K)] if experiment.startswith("mt-multi30k") else []
    cfg, _ = _run(tmp_path, experiment, "trainer.max_steps=20", "trainer.val_check_interval=20", *overrides)
    config = cfg.run_dir / "config.yaml"
    status = json.loads((cfg.run_dir / "status.json").read_text())
    assert run_id(load_config([config])) == status["run_id"] == run_id(cfg)

    def losses():
        lines = (cfg.run_dir / "metrics.jsonl").read_text().splitlines()
        return [(r["step"], r["train/loss"]) for r in map(json.loads, lines) if "train/loss" in r]

    before = losses()
    assert run_command([str(config)]) == 0
    again = json.loads((cfg.run_dir / "status.json").read_text())
    assert again["state"] == "completed" and again["run_id"] == status["run_id"] and again["step"] == 20
    assert losses() == before  # resumed from its last checkpoint: no step trained twice
    assert (cfg.run_dir / "config.yaml").read_text() == config.read_text()


def _check_translations(cfg, result):
    """test.src/.ref/.hyp line-aligned with the test set, and the sacrebleu command on the files
    gives the run's BLEU; tokenizer.json decodes the run's vocabulary."""
    import subprocess
    import sys

    from lit.data.tokenizer import TextTokenizer

    run_dir = cfg.run_dir
    lines = {name: (run_dir / name).read_text(encoding="utf-8").split("\n") for name in ("test.src", "test.ref", "test.hyp")}
    assert all(v[-1] == "" for v in lines.values())  # newline-terminated
    assert len({len(v) for v in lines.values()}) == 1 and len(lines["test.ref"]) - 1 == result["test/bleu_sentences"]
    cli = subprocess.run([sys.executable, "-m", "sacrebleu", str(run_dir / "test.ref"), "-i", str(run_dir / "test.hyp"),
                          "-b", "-w", "6"], capture_output=True, text=True, check=True)
    assert float(cli.stdout.strip()) == pytest.approx(result["test/bleu"], abs=1e-5)
    assert 0 <= result["test/chrf"] <= 100
    saved = json.loads((run_dir / "status.json").read_text())["metrics"]  # the source check, for the report
    assert 0 <= saved["test/src_check_bleu"] <= 100 and 0 <= saved["test/src_shuffled_bleu"] <= 100
    tok = TextTokenizer.load(run_dir / "tokenizer.json")
    assert tok.vocab_size == yaml.safe_load((run_dir / "config.yaml").read_text())["derived"]["vocab_size"]


@pytest.mark.slow
def test_mt_bible_smoke(tmp_path):
    cfg, result = _run(tmp_path, "mt-bible-de-en")
    _check_run_dir(cfg, result, "val/bleu")
    assert 0 <= result["test/bleu"] <= 100
    assert "tok:13a" in json.loads((cfg.run_dir / "status.json").read_text())["signature"]
    _check_translations(cfg, result)


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_MULTI30K.is_dir(), reason="no local Multi30K copy beside the project")
def test_mt_multi30k_smoke(tmp_path):
    cfg, result = _run(tmp_path, "mt-multi30k-de-en", f"data.path={SHARED_MULTI30K}")
    _check_run_dir(cfg, result, "val/bleu")
    _check_translations(cfg, result)


@pytest.mark.slow
def test_lm_compiled_step_matches_eager(tmp_path):
    """``perf.compile`` runs the same computation through torch.compile: the same losses up to
    rounding."""
    overrides = ("trainer.max_steps=10", "trainer.val_check_interval=10", "task.extrapolation=[1]",
                 "trainer.log_every_n_steps=1", "model.dropout=0.0")  # compiled dropout draws other masks
    (eager, eager_losses), (compiled, compiled_losses) = _eager_and(tmp_path, overrides, "compiled",
                                                                    "perf.compile=true")
    assert len(compiled_losses) == len(eager_losses) == 10
    assert compiled_losses[0] == pytest.approx(eager_losses[0], rel=1e-5)  # same weights, same batch
    # then the same training up to rounding (fused kernels sum in another order)
    assert compiled["val/loss"] == pytest.approx(eager["val/loss"], rel=1e-3)
    assert compiled["test/ppl"] == pytest.approx(eager["test/ppl"], rel=3e-3)


@pytest.mark.slow
def test_a_process_of_rank_above_zero_leaves_wandb_alone(tmp_path, monkeypatch):
    """``srun ... ablate train ... trainer.num_nodes=N`` starts every rank with the default
    logger: a rank above 0 must neither start a W&B run nor write the ``wandb_id`` file (it used
    to read the id of Lightning's placeholder experiment and raise ``TypeError``)."""
    monkeypatch.setenv("SLURM_PROCID", "1")
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = load_config([ROOT / "configs" / "experiments" / "lm-bible.yaml", SMOKE],
                      [f"run.root={tmp_path}", "logger=wandb", f"data.cache_dir={tmp_path}/cache",
                       "trainer.max_steps=4"])
    result = train(cfg)
    assert result["state"] == "completed"
    assert not (cfg.run_dir / "wandb_id").exists() and not (cfg.run_dir / "wandb").exists()


@pytest.mark.slow
@pytest.mark.parametrize("signum, code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signalled_run_exits_non_zero_and_reads_interrupted(tmp_path, signum, code):
    """Lightning ends a SIGTERM-ed fit with an exit code of 0 and a Ctrl-C-ed one with 1; ablate
    exits as a process stopped by the signal does, so shells and Slurm never read success."""
    import os
    import signal
    import subprocess
    import sys
    import time

    args = [str(ROOT / "configs" / "experiments" / "lm-bible.yaml"), str(SMOKE), f"run.root={tmp_path}",
            "logger=none", f"data.cache_dir={tmp_path}/cache", "trainer.max_steps=2000", "checkpoint.every_n_steps=5",
            "trainer.val_check_interval=1000"]
    # a job started in the background (CI) inherits SIGINT ignored; the run gets the default back,
    # as a command started from a terminal has it
    proc = subprocess.Popen([sys.executable, "-m", "experiments.cli", "train", *args], cwd=ROOT,
                            env={**os.environ, "WANDB_MODE": "disabled"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    while not list(tmp_path.glob("lm-bible/*/checkpoints/step-*.ckpt")):
        assert time.time() < deadline and proc.poll() is None, "the run never checkpointed"
        time.sleep(0.1)
    proc.send_signal(getattr(signal, signum))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-2000:]
    (run_dir,) = tmp_path.glob("lm-bible/*")
    assert json.loads((run_dir / "status.json").read_text())["state"] == "interrupted"


@pytest.mark.slow
def test_a_run_refused_at_its_start_leaves_its_directory_to_the_fixed_config(tmp_path):
    from experiments.cli import main

    args = [str(ROOT / "configs" / "experiments" / "lm-bible.yaml"), str(SMOKE), f"run.root={tmp_path}",
            "logger=none", f"data.cache_dir={tmp_path}/cache"]
    assert main(["train", *args, "trainer.max_steps=abc"]) == 2
    (run_dir,) = tmp_path.glob("lm-bible/*")
    assert json.loads((run_dir / "status.json").read_text())["state"] == "failed"
    assert main(["train", *args, "trainer.max_steps=4"]) == 0  # a different run id, but nothing to lose
    assert json.loads((run_dir / "status.json").read_text())["state"] == "completed"


@pytest.mark.slow
def test_a_directory_of_another_run_is_refused_by_any_of_its_files_and_left_untouched(tmp_path, capsys):
    """status.json, the config.yaml header and the newest checkpoint each record the run id: a
    config with another id is refused (exit 2, both ids named) even with status.json deleted, and
    nothing in the directory changes."""
    import shutil

    from experiments.cli import main

    args = [str(ROOT / "configs" / "experiments" / "lm-bible.yaml"), str(SMOKE), f"run.root={tmp_path}",
            "logger=none", f"data.cache_dir={tmp_path}/cache", "trainer.max_steps=4", "checkpoint.every_n_steps=2"]
    assert main(["train", *args]) == 0
    (run_dir,) = tmp_path.glob("lm-bible/*")
    first = json.loads((run_dir / "status.json").read_text())["run_id"]
    assert (run_dir / "config.yaml").read_text().startswith(f"# run_id: {first}\n")

    def snapshot():
        return {p.relative_to(run_dir): (p.stat().st_mtime_ns, p.read_bytes()) for p in run_dir.rglob("*")
                if p.is_file()}

    (run_dir / "status.json").unlink()
    for removed in ("status.json", "checkpoints"):  # then the config.yaml header alone
        if removed == "checkpoints":
            shutil.rmtree(run_dir / "checkpoints")
        before = snapshot()
        capsys.readouterr()
        assert main(["train", *args, "task.lr=5e-4"]) == 2
        err = capsys.readouterr().err
        assert "holds a run of another configuration" in err and first in err
        assert ("checkpoints/step-00000004.ckpt has" in err) == (removed == "status.json")
        assert "config.yaml has" in err
        assert snapshot() == before


@pytest.mark.slow
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("experiment", ["lm-bible", "mt-bible-de-en"])
def test_a_gpu_run_logs_throughput_and_catches_divergence_without_per_step_syncs(tmp_path, experiment):
    """On CUDA: steps timed by events and a guard that reads the loss at logging steps only
    still give tokens/s, MFU, and a diverged run that names its first non-finite step."""
    cfg, result = _run(tmp_path / "ok", experiment, "trainer.accelerator=gpu", "trainer.devices=1",
                       "perf.every_n_steps=10", "trainer.log_every_n_steps=10")
    assert result["state"] == "completed"
    assert result["perf/tokens_per_s_median"] > 0 and 0 < result["perf/mfu_median"] < 1
    cfg, result = _run(tmp_path / "bad", experiment, "trainer.accelerator=gpu", "trainer.devices=1",
                       "task.lr=1e38", "task.warmup_steps=0", "trainer.log_every_n_steps=10")
    status = json.loads((cfg.run_dir / "status.json").read_text())
    assert status["state"] == "diverged" and "loss became non-finite at step" in status["message"]
    first_bad = int(status["message"].split("at step ")[1].split(";")[0])
    assert first_bad <= status["step"] < first_bad + 10
    assert all(int(p.stem.split("-")[1]) < first_bad for p in (cfg.run_dir / "checkpoints").glob("step-*.ckpt"))


@pytest.mark.slow
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
def test_lm_with_cuda_graphs_matches_eager(tmp_path):
    """``perf.cuda_graphs`` replays the compiled step as CUDA graphs: the losses of every logged
    step (read long after later replays) are those of the eager run, up to rounding."""
    overrides = ("trainer.accelerator=gpu", "trainer.devices=1", "trainer.max_steps=30",
                 "trainer.val_check_interval=15", "task.extrapolation=[1]", "trainer.log_every_n_steps=5",
                 "model.dropout=0.0")
    (eager, eager_losses), (graphs, graph_losses) = _eager_and(tmp_path, overrides, "graphs",
                                                               "perf.cuda_graphs=true")
    assert graphs["state"] == "completed" and len(graph_losses) == len(eager_losses) == 6
    assert graph_losses == pytest.approx(eager_losses, rel=2e-2)
    assert graphs["val/loss"] == pytest.approx(eager["val/loss"], rel=2e-2)

