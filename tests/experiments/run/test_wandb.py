"""The W&B path with the real client in offline mode (no network): what a run sends is read back
from W&B's own transaction log (``run-<id>.wandb``) and checked against the run directory."""

import json
import shlex
from pathlib import Path

import lightning as L
import pytest

from experiments.run.config import load_config
from experiments.run.wandb_records import RecordsError, read_records, read_run, run_segments, sent_metrics
from experiments.run.wandb_log import summary
from lit.specs import best_of

ROOT = Path(__file__).resolve().parents[3]
SMOKE = ROOT / "configs" / "debug" / "smoke.yaml"


def _offline_run(tmp_path, exit_code=0):
    import wandb

    run = wandb.init(project="p", dir=str(tmp_path), mode="offline", group="g", job_type="j",
                     config={"variant": "v", "seed": 3}, name="n")
    run.define_metric("val/loss", step_metric="trainer/global_step", summary="min")
    for step, loss in ((10, 3.0), (20, 2.0), (30, 2.5)):
        run.log({"val/loss": loss, "trainer/global_step": step})
    run.log({"t": wandb.Table(columns=["a", "b"], data=[["x", 1], ["y", 2]]), "trainer/global_step": 30})
    run.summary.update({"state": "interrupted"})
    folder = Path(run.dir).parent
    run.finish(exit_code=exit_code)
    return folder


def test_the_reader_decodes_what_the_client_wrote(tmp_path):
    folder = _offline_run(tmp_path, exit_code=130)
    run = read_run(folder, wait_s=30)
    assert (run.group, run.job_type, run.name, run.exit_code) == ("g", "j", "n", 130)
    assert run.config["variant"] == "v" and run.config["seed"] == 3
    assert [r["val/loss"] for r in run.history if "val/loss" in r] == [3.0, 2.0, 2.5]
    assert run.summary["val/loss"] == {"min": 2.0} and run.summary["state"] == "interrupted"
    assert run.metrics["val/loss"] == {"step_metric": "trainer/global_step", "summary": ["min"]}
    assert run.table("t") == {"columns": ["a", "b"], "data": [["x", 1], ["y", 2]]}
    assert sent_metrics([run]) == {(10, "val/loss"), (20, "val/loss"), (30, "val/loss"), (30, "t")}

    # a segment killed mid-write: the torn end is left out, never an error
    (log,) = folder.glob("*.wandb")
    whole = log.read_bytes()
    torn = tmp_path / "torn" / "run-x.wandb"
    torn.parent.mkdir()
    torn.write_bytes(whole[: len(whole) - 40])
    assert 0 < len(list(read_records(torn))) < len(list(read_records(log)))
    assert read_run(torn).exit_code is None
    (tmp_path / "not.wandb").write_bytes(b"PK\x03\x04 a zip file")
    with pytest.raises(RecordsError, match="not a W&B transaction log"):
        read_run(tmp_path / "not.wandb")


def test_the_summary_is_the_run_directory_result(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(r) + "\n" for r in (
        {"step": 10, "val/loss": 3.0, "val/bleu": 1.0}, {"step": 20, "val/loss": 2.0, "val/bleu": 4.0},
        {"step": 30, "val/loss": 2.5, "val/bleu": 3.0})) + '{"step": 40, "val/lo')  # torn last line
    status = {"state": "completed", "run_id": "abc", "step": 30, "signature": "nrefs:1|tok:13a",
              "params": {"total": 1234}, "metrics": {"val/loss": 2.5, "val/bleu": 3.0, "test/bleu": 5.5,
                                                     "perf/tokens_per_s_median": 100.0}}
    out = summary(status, metrics)
    assert out["val/loss"] == {"min": 2.0, "last": 2.5} and out["val/bleu"] == {"max": 4.0, "last": 3.0}
    assert out["test/bleu"] == 5.5 and out["perf/tokens_per_s_median"] == 100.0
    assert (out["state"], out["run_id"], out["params"], out["bleu_signature"]) == ("completed", "abc", 1234,
                                                                                   "nrefs:1|tok:13a")


class _InterruptAt(L.Callback):
    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.step:
            raise KeyboardInterrupt


def _check_against_status(run, run_dir):
    status = json.loads((run_dir / "status.json").read_text())
    assert run.summary["state"] == status["state"] and run.summary["run_id"] == status["run_id"]
    for key, value in status["metrics"].items():
        got = run.summary[key]["last"] if key in best_of() else run.summary[key]
        assert got == pytest.approx(value), key
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for key, how in best_of().items():
        values = [r[key] for r in records if key in r]
        if values:
            assert run.summary[key][how] == pytest.approx(min(values) if how == "min" else max(values))


@pytest.mark.slow
def test_an_interrupted_then_resumed_lm_run_in_wandb(tmp_path, monkeypatch):
    """Group, job type and config keys; the summary equals status.json; the interrupted segment
    finishes with a non-zero exit code; the resumed segment keeps the W&B id and sends no step
    twice; the continuations table is there."""
    from experiments.run.train import train

    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = load_config([ROOT / "configs" / "experiments" / "lm-bible.yaml", SMOKE],
                      [f"run.root={tmp_path}", "logger=wandb", f"data.cache_dir={tmp_path}/cache",
                       "trainer.max_steps=30", "checkpoint.every_n_steps=10", "trainer.val_check_interval=10",
                       "trainer.log_every_n_steps=2", "model.ffn=swiglu", "task.extrapolation=[1]"])
    with pytest.raises((KeyboardInterrupt, SystemExit)):
        train(cfg, extra_callbacks=[_InterruptAt(15)])
    wandb_id = (cfg.run_dir / "wandb_id").read_text().strip()
    (first,) = run_segments(cfg.run_dir, wandb_id, wait_s=30)
    assert first.exit_code == 130 and first.summary["state"] == "interrupted"
    assert max(step for step, _ in sent_metrics([first])) > 10  # past the checkpoint at step 10

    result = train(cfg)
    assert result["state"] == "completed"
    first, second = run_segments(cfg.run_dir, wandb_id, wait_s=30)
    assert second.run_id == first.run_id == wandb_id and second.exit_code == 0
    before, after = sent_metrics([first]), sent_metrics([second])
    assert not before & after, f"sent to W&B twice: {sorted(before & after)}"
    assert {s for s, key in before | after if key == "train/loss"} == set(range(1, 30, 2))  # none missing
    assert {s for s, key in after if key == "train/loss"} >= set(range(15, 30, 2))

    assert second.group == "layernorm-pre-learned-swiglu" and second.job_type == "lm-bible"
    assert {k: second.config[k] for k in ("variant", "seed", "is_baseline", "norm", "norm_position", "position",
                                          "ffn", "attention")} == {
        "variant": "layernorm-pre-learned-swiglu", "seed": 0, "is_baseline": False, "norm": "layernorm",
        "norm_position": "pre", "position": "learned", "ffn": "swiglu", "attention": "mha"}
    assert second.metrics["val/ppl"]["summary"] == ["min"]
    _check_against_status(second, cfg.run_dir)
    table = second.table("test/continuations")
    assert table["columns"] == ["prompt", "continuation", "reference"] and len(table["data"]) == 4


@pytest.mark.slow
def test_a_translation_run_logs_its_test_translations(tmp_path, monkeypatch):
    from experiments.run.train import train

    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = load_config([ROOT / "configs" / "experiments" / "mt-bible-de-en.yaml", SMOKE],
                      [f"run.root={tmp_path}", "logger=wandb", f"data.cache_dir={tmp_path}/cache",
                       "trainer.max_steps=20", "wandb.table_rows=10", "wandb.sweep=mt-sweep",
                       "wandb.baseline=true", "wandb.log_checkpoints=true"])
    assert train(cfg)["state"] == "completed"
    (run,) = run_segments(cfg.run_dir, (cfg.run_dir / "wandb_id").read_text().strip(), wait_s=30)
    assert run.exit_code == 0 and run.job_type == "mt-sweep"
    assert run.config["sweep"] == "mt-sweep" and run.config["is_baseline"] is True
    _check_against_status(run, cfg.run_dir)
    assert run.summary["bleu_signature"].startswith("nrefs:1")
    table = run.table("test/translations")
    assert table["columns"] == ["source", "reference", "hypothesis", "sentence_bleu"] and len(table["data"]) == 10
    hyps = (cfg.run_dir / "test.hyp").read_text(encoding="utf-8").splitlines()
    srcs = (cfg.run_dir / "test.src").read_text(encoding="utf-8").splitlines()
    assert [row[2] for row in table["data"]] == hyps[:10] and [row[0] for row in table["data"]] == srcs[:10]
    assert all(0 <= row[3] <= 100 for row in table["data"])
    model = [a for a in run.artifacts if a["type"] == "model"]
    assert model and "final" in model[0]["aliases"]
    assert any(f.endswith(".ckpt") for f in model[0]["files"]) and "tokenizer.json" in model[0]["files"]


@pytest.mark.slow
def test_a_masked_lm_run_logs_its_fills(tmp_path, monkeypatch):
    """A masked-LM run's table (its spec's): the first masked test positions with the model's fill."""
    from experiments.run.train import train

    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = load_config([ROOT / "configs" / "experiments" / "mlm-bible.yaml", SMOKE],
                      [f"run.root={tmp_path}", "logger=wandb", f"data.cache_dir={tmp_path}/cache",
                       "trainer.max_steps=5"])
    assert train(cfg)["state"] == "completed"
    (run,) = run_segments(cfg.run_dir, (cfg.run_dir / "wandb_id").read_text().strip(), wait_s=30)
    _check_against_status(run, cfg.run_dir)
    table = run.table("test/fills")
    assert table["columns"] == ["context", "target", "prediction", "probability"] and 0 < len(table["data"]) <= 20
    assert all("[" in row[0] and 0 < row[3] <= 1 for row in table["data"])


@pytest.mark.parametrize("name, val, test", [("smoke", "val/ppl", "test/ppl"), ("demo-mt", "val/bleu", "test/bleu")])
def test_the_workspace_of_a_sweep_is_built_offline(tmp_path, monkeypatch, capsys, name, val, test):
    from experiments.cli import main
    from experiments.sweep.spec import load_sweep
    from experiments.report.wandb_view import THROUGHPUT, to_workspace, view_spec

    sweep = load_sweep(ROOT / "configs" / "sweeps" / f"{name}.yaml", [f"run.root={tmp_path}"])
    spec = view_spec(sweep)
    assert spec["filter"] == {"job_type": sweep.name} and spec["group_by"] == "variant"
    assert [p.get("y") or p.get("metric") for p in spec["panels"]] == [val, test, THROUGHPUT]
    assert spec["panels"][0]["x"] == "trainer/global_step" and spec["variants"] == sweep.variants

    monkeypatch.setenv("WANDB_MODE", "offline")
    assert main(["wandb-view", str(sweep.path), f"run.root={tmp_path}"]) == 0
    assert "wandb sync" in capsys.readouterr().out
    assert json.loads((tmp_path / sweep.name / "wandb-view.json").read_text()) == json.loads(json.dumps(spec))

    pytest.importorskip("wandb_workspaces")
    workspace = to_workspace(spec, entity="someone")
    assert workspace.project == "ablate" and workspace.name == f"ablate: {sweep.name}"
    assert sweep.name in str(workspace.runset_settings.filters)
    plots = workspace.sections[0].panels
    assert plots[0].y == [val] and plots[1].metrics == [test] and plots[0].groupby_rangefunc == "minmax"


def test_publishing_a_workspace_without_its_package_says_what_to_install(monkeypatch):
    import sys

    from experiments.sweep.spec import load_sweep
    from experiments.report.wandb_view import ViewError, to_workspace, view_spec

    monkeypatch.setitem(sys.modules, "wandb_workspaces", None)
    with pytest.raises(ViewError, match=r"pip install 'ablate\[wandb\]'"):
        to_workspace(view_spec(load_sweep(ROOT / "configs" / "sweeps" / "smoke.yaml")))


@pytest.mark.slow
def test_two_processes_make_one_wandb_run(tmp_path):
    """DDP over two CPU processes: only rank 0 logs to W&B, so there is one W&B run and each
    step is in its history once."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "WANDB_MODE": "offline"}
    args = [str(ROOT / "configs" / "experiments" / "lm-bible.yaml"), str(SMOKE), f"run.root={tmp_path}",
            f"data.cache_dir={tmp_path}/cache", "trainer.max_steps=10", "trainer.accelerator=cpu",
            "trainer.devices=2", "trainer.strategy=ddp_spawn", "trainer.log_every_n_steps=2"]
    done = subprocess.run([sys.executable, "-m", "experiments.cli", "train", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    (run_dir,) = tmp_path.glob("lm-bible/*")
    (run,) = run_segments(run_dir, (run_dir / "wandb_id").read_text().strip(), wait_s=30)
    assert run.exit_code == 0 and run.summary["state"] == "completed"
    steps = [row["trainer/global_step"] for row in run.history if "train/loss" in row]
    assert steps and len(steps) == len(set(steps))


def test_a_report_folder_is_logged_as_an_artifact(tmp_path, monkeypatch):
    from experiments.run.wandb_log import log_report

    monkeypatch.setenv("WANDB_MODE", "offline")
    folder = tmp_path / "reports" / "some-sweep"
    (folder / "runs" / "a-s0").mkdir(parents=True)
    (folder / "README.md").write_text("# some-sweep\n")
    (folder / "runs" / "a-s0" / "status.json").write_text("{}")
    where = log_report(folder, "ablate", None, tmp_path / "my runs")
    assert where.startswith("W&B offline: wandb sync")
    (synced,) = shlex.split(where.split("wandb sync ", 1)[1])  # quoted: the path has a space
    assert Path(synced).parent == tmp_path / "my runs" / "wandb"
    (run,) = [read_run(f, wait_s=30) for f in (tmp_path / "my runs" / "wandb").glob("offline-run-*")]
    assert run.job_type == "report" and run.exit_code == 0
    (artifact,) = run.artifacts
    assert (artifact["name"], artifact["type"]) == ("report-some-sweep", "report")
    assert sorted(artifact["files"]) == ["README.md", "runs/a-s0/status.json"]
    assert not (folder / "wandb").exists()


@pytest.mark.slow
def test_a_diverged_run_does_not_show_as_finished(tmp_path, monkeypatch):
    from experiments.run.train import train

    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = load_config([ROOT / "configs" / "experiments" / "lm-bible.yaml", SMOKE],
                      [f"run.root={tmp_path}", "logger=wandb", f"data.cache_dir={tmp_path}/cache",
                       "trainer.max_steps=20", "task.lr=1.0e+38"])
    assert train(cfg)["state"] == "diverged"
    (run,) = run_segments(cfg.run_dir, (cfg.run_dir / "wandb_id").read_text().strip(), wait_s=30)
    assert run.exit_code == 1 and run.summary["state"] == "diverged"
    assert "non-finite" in run.summary["message"]
    assert "test/continuations" not in run.summary  # no samples from a diverged model
