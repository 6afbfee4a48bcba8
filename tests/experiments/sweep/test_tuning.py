"""The tuning stage: expansion of ``tune:``, each variant's own choice from its tuning runs, the
edge warning, the record that is never recomputed, tuning seeds kept out of every verdict, and a
tiny tuned sweep end to end (slow)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.report.page import build
from experiments.run.rundir import write_status
from experiments.sweep import tuning
from experiments.sweep.spec import SweepError, load_sweep

ROOT = Path(__file__).resolve().parents[3]
BASE = f"configs: [{ROOT}/configs/experiments/lm-bible.yaml, {ROOT}/configs/debug/smoke.yaml]\n"
TUNED = BASE + """
name: tuned
grid: {model.ffn: [relu, swiglu]}
tune:
  grid: {task.lr: [1.0e-4, 1.0e-3, 1.0e-2], task.warmup_steps: [5, 10]}
  seeds: [100]
  select: {metric: val/ppl, mode: min}
seeds: [0, 1]
baseline: {model.ffn: relu}
"""


def _sweep(tmp_path, text=TUNED, extra=()):
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    return load_sweep(path, [f"run.root={tmp_path}/runs", *extra])


def _finish(run, ppl, state="completed", test_ppl=None):
    metrics = {"val/ppl": ppl, "wall_s": 1.0, **({"test/ppl": test_ppl} if test_ppl is not None else {})}
    write_status(run.run_dir, state, step=40, run_id=run.run_id, metrics=metrics)
    (run.run_dir / "metrics.jsonl").write_text(json.dumps({"step": 40, "time": 1.0, "val/ppl": ppl}) + "\n")


def test_every_variant_runs_every_tuning_point_at_the_tuning_seeds_without_testing(tmp_path):
    sweep = _sweep(tmp_path)
    assert len(sweep.tune_runs) == 2 * 6 and {r.seed for r in sweep.tune_runs} == {100}
    assert all(r.stage == "tune" and not r.cfg.run.test for r in sweep.tune_runs)  # never the test set
    assert sweep.tune_runs[0].name == "layernorm-pre-learned-relu-tune-lr0.0001-warmup_steps5-s100"
    assert {r.variant for r in sweep.tune_runs} == set(sweep.variants)
    assert all(r.awaiting and r.cfg.run.test for r in sweep.runs)  # confirmation runs wait for the choice
    assert [r.name for r in sweep.stage("confirm").runs] == []
    assert sweep.stage("tune").runs == sweep.tune_runs and sweep.stage("tune").seeds == [100]


def test_each_variant_gets_its_own_optimum_and_confirms_at_it(tmp_path):
    sweep = _sweep(tmp_path)
    best = {"layernorm-pre-learned-relu": (1e-3, 10), "layernorm-pre-learned-swiglu": (1e-2, 5)}
    for run in sweep.tune_runs:
        lr, warmup = run.tuned["task.lr"], run.tuned["task.warmup_steps"]
        ppl = 50.0 if (lr, warmup) == best[run.variant] else 80.0 + 1000 * lr + warmup
        state = "diverged" if run.variant.endswith("relu") and lr == 1e-4 else "completed"
        _finish(run, 10.0 if state == "diverged" else ppl, state)  # a diverged run never wins
    data = tuning.record_sweep(sweep)
    for variant, (lr, warmup) in best.items():
        assert data["variants"][variant]["chosen"] == {"task.lr": lr, "task.warmup_steps": warmup}
    assert data["budget"] == {"runs_per_variant": 6, "points": 6, "seeds": [100], "steps_per_run": 40,
                              "steps_per_variant": 240}
    again = _sweep(tmp_path)
    by_variant = {r.variant: r for r in again.runs}
    for variant, (lr, warmup) in best.items():
        cfg = by_variant[variant].cfg
        assert (cfg.task.lr, cfg.task.warmup_steps) == (lr, warmup) and cfg.run.test
    assert [r.name for r in again.stage("confirm").runs] == [r.name for r in again.runs]


def test_a_choice_on_the_edge_of_an_axis_of_three_values_is_flagged(tmp_path):
    sweep = _sweep(tmp_path)
    for run in sweep.tune_runs:
        _finish(run, 100.0 - 1000 * run.tuned["task.lr"] - run.tuned["task.warmup_steps"])
    data = tuning.record_sweep(sweep)
    choice = data["variants"]["layernorm-pre-learned-relu"]
    assert choice["chosen"] == {"task.lr": 1e-2, "task.warmup_steps": 10}
    assert choice["edge"] == ["task.lr"]  # the two-value warm-up axis has no interior to leave
    lines = tuning.describe(data, sweep.variants)
    assert "on the edge of the grid in task.lr: extend the grid" in lines[0]
    assert tuning.edge_keys({"a": [1, 2, 3]}, {"a": 2}) == []


def test_the_choice_waits_for_every_tuning_run_and_is_never_recomputed(tmp_path):
    sweep = _sweep(tmp_path)
    relu = [r for r in sweep.tune_runs if r.variant.endswith("relu")]
    for run in relu[:-1]:
        _finish(run, 60.0)
    assert "layernorm-pre-learned-relu" not in tuning.record_sweep(sweep)["variants"]
    _finish(relu[-1], 40.0)
    first = tuning.record_sweep(sweep)["variants"]["layernorm-pre-learned-relu"]
    assert first["chosen"] == relu[-1].tuned
    _finish(relu[-1], 90.0)  # a later change of the run files does not change a recorded choice
    assert tuning.record_sweep(sweep)["variants"]["layernorm-pre-learned-relu"] == first


def test_a_recorded_choice_made_over_another_grid_is_refused(tmp_path):
    sweep = _sweep(tmp_path)
    for run in sweep.tune_runs:
        _finish(run, 50.0)
    tuning.record_sweep(sweep)
    with pytest.raises(SweepError, match=r"tuning.json: its choices were made with tune.grid"):
        _sweep(tmp_path, TUNED.replace("1.0e-2]", "3.0e-3]"))


def test_completed_tuning_runs_without_the_metric_choose_nothing_and_say_why(tmp_path):
    sweep = _sweep(tmp_path)
    for run in sweep.tune_runs:
        write_status(run.run_dir, "completed", step=40, run_id=run.run_id, metrics={"wall_s": 1.0})
    data = tuning.record_sweep(sweep)
    assert all(c["chosen"] is None and "logged no val/ppl" in c["reason"] for c in data["variants"].values())
    assert all("chose nothing" in r.awaiting for r in _sweep(tmp_path).runs)


@pytest.mark.parametrize("tune, message", [
    ("{grid: {task.lr: [1.0e-3]}, seeds: [0], select: {metric: val/ppl}}", "tune.seeds and seeds share \\[0\\]"),
    ("{grid: {task.lr: [1.0e-3]}, select: {metric: test/ppl}}", "choose on a validation metric"),
    ("{grid: {task.lr: [1.0e-3]}, select: {metric: val/ppl, mode: lowest}}", "mode must be min or max"),
    ("{grid: {model.ffn: [relu]}, select: {metric: val/ppl}}", "model.ffn is a component or its setting"),
    ("{grid: {model.norm: [rmsnorm]}, select: {metric: val/ppl}}", "model.norm is a component or its setting"),
    ("{grid: {task.lr: []}, select: {metric: val/ppl}}", "tune.grid.task.lr: give a non-empty list"),
    ("{grid: {task.lr: [1.0e-3]}, select: {metric: val/ppl}, budget: 3}", "tune: unknown key\\(s\\) budget"),
    ("{grid: {task.lr: [1.0e-3]}, select: {metric: val/ppl, at: last}}", "tune.select: unknown key\\(s\\) at"),
    ("{grid: {task.lrate: [1.0e-3]}, select: {metric: val/ppl}}", "tuning point .*task.lrate=0.001.*Key .lrate. not in"),
])
def test_bad_tuning_sections_fail_before_anything_runs(tmp_path, tune, message):
    text = BASE + f"grid: {{model.ffn: [relu, swiglu]}}\nseeds: [0, 1]\ntune: {tune}\n"
    with pytest.raises(SweepError, match=message):
        _sweep(tmp_path, text)


def test_a_setting_cannot_be_both_compared_and_tuned(tmp_path):
    text = BASE + "grid: {task.warmup_steps: [5, 10]}\ntune: {grid: {task.warmup_steps: [1]}, select: {metric: val/ppl}}\n"
    with pytest.raises(SweepError, match="tune.grid.task.warmup_steps is also a key of grid"):
        _sweep(tmp_path, text)


def test_tuning_seeds_never_enter_a_verdict(tmp_path, monkeypatch):
    """Tuning runs with wildly different values beside the confirmation runs: the report's rows
    and deltas are those of the confirmation runs alone."""
    monkeypatch.chdir(tmp_path)
    sweep = _sweep(tmp_path)
    for run in sweep.tune_runs:
        _finish(run, 1.0 if run.variant.endswith("swiglu") else 1000.0)
    tuning.record_sweep(sweep)
    sweep = _sweep(tmp_path)
    for run in sweep.runs:
        ppl = 100.0 + run.seed if run.variant.endswith("relu") else 90.0 + run.seed
        _finish(run, ppl * 0.9, test_ppl=ppl)
    text = build(sweep, tmp_path / "report").read_text()
    assert "100.50 ± 0.71" in text and "90.50 ± 0.71" in text  # test/ppl of seeds 0 and 1 only
    summary = json.loads((tmp_path / "report" / "report.json").read_text())
    assert sorted(r["name"] for r in summary["runs"]) == sorted(r.name for r in sweep.runs)  # no tuning run
    row = next(line for line in text.splitlines() if line.startswith("| **layernorm-pre-learned-relu** (baseline)"))
    chosen = json.loads((sweep.root / tuning.TUNING_FILE).read_text())["variants"]["layernorm-pre-learned-relu"]["chosen"]
    assert f"| lr {chosen['task.lr']}, warmup_steps {chosen['task.warmup_steps']} | 2/2 |" in row  # its settings beside it


@pytest.mark.slow
def test_a_tiny_tuned_sweep_end_to_end(tmp_path):
    """``ablate sweep`` runs the tuning stage, records each variant's choice, then the confirmation
    runs at it; ``ablate status`` shows both stages; running it again runs nothing."""
    text = BASE + """
name: tiny
overrides: {trainer.max_steps: 6, trainer.val_check_interval: 6, checkpoint.every_n_steps: 6, logger: none,
            data.limit_train: 200, data.limit_eval: 16}
grid: {model.norm_position: [pre, post]}
tune:
  grid: {task.lr: [1.0e-4, 3.0e-3]}
  seeds: [100]
  select: {metric: val/ppl, mode: min}
seeds: [0]
baseline: {model.norm_position: pre}
"""
    path = tmp_path / "tiny.yaml"
    path.write_text(text)
    cmd = [sys.executable, "-m", "experiments.cli"]
    env_args = [str(path), f"run.root={tmp_path}/runs"]
    out = subprocess.run([*cmd, "sweep", *env_args, "--workers", "2"], cwd=ROOT, capture_output=True, text=True,
                         timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "tuning choices (val/ppl, min" in out.stdout
    data = json.loads((tmp_path / "runs" / "tiny" / "tuning.json").read_text())
    sweep = load_sweep(path, [f"run.root={tmp_path}/runs"])
    for run in sweep.runs:
        chosen = data["variants"][run.variant]["chosen"]
        saved = (run.run_dir / "config.yaml").read_text()
        assert f"lr: {chosen['task.lr']}" in saved and (run.run_dir / "status.json").is_file()
        values = [p["value"] for p in data["variants"][run.variant]["points"]]
        assert data["variants"][run.variant]["value"] == min(v for v in values if v is not None and math.isfinite(v))
    status = subprocess.run([*cmd, "status", *env_args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert "-- tuning runs (never in a verdict)" in status.stdout and "confirmation: 2 done" in status.stdout
    again = subprocess.run([*cmd, "sweep", *env_args, "--stage", "confirm"], cwd=ROOT, capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0 and "0 to run" in again.stdout


def test_the_report_has_a_tuning_section_and_rebuilds_it_from_its_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sweep = _sweep(tmp_path)
    for run in sweep.tune_runs:
        _finish(run, 50.0 + 1000 * run.tuned["task.lr"] + run.tuned["task.warmup_steps"])
    tuning.record_sweep(sweep)
    sweep = _sweep(tmp_path)
    for run in sweep.runs:
        _finish(run, 90.0, test_ppl=100.0 + run.seed)
    out = tmp_path / "report"
    text = build(sweep, out).read_text()
    assert "## Tuning" in text and "6 tuning points × 1 tuning seed(s) (100), 6 runs of 40 steps each" in text
    assert "| layernorm-pre-learned-relu | **55.10** | 60.10 |" in text  # lr 1e-4, warm-up 5 wins
    assert "task.lr = 0.0001, task.warmup_steps = 5 |" in text
    assert "chosen on the edge of the grid in task.lr" in text
    assert (out / "tuning.json").is_file() and (out / "runs" / sweep.tune_runs[0].name / "status.json").is_file()
    import shutil

    from experiments.report.page import rebuild

    shutil.rmtree(tmp_path / "runs")  # the report's folder alone
    assert rebuild(out).read_text() == text


def test_the_tuning_section_plots_each_variants_grid_with_its_choice(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sweep = _sweep(tmp_path)
    for i, run in enumerate(sweep.tune_runs):
        _finish(run, 100.0 + i)
    tuning.record_sweep(sweep)
    text = build(_sweep(tmp_path), tmp_path / "report").read_text()
    section = text[text.index("## Tuning"):text.index("## Results")]
    assert "![tuning.png](tuning.png)" in section and (tmp_path / "report" / "tuning.png").stat().st_size > 1000
    assert "tuning.png" not in text[text.index("## Plots"):]  # shown once, in its section
