"""Training health: gradient norms, clipping and loss spikes read off fabricated run files, and
a whole report page with the budget, health and banner sections in place."""

import json
from pathlib import Path

import pytest

from experiments.report import health
from experiments.report.collect import Record
from experiments.report.page import build
from experiments.report.sections import SECTIONS, budget, budget_banner, results, training_health
from experiments.run.rundir import write_status
from experiments.sweep.spec import load_sweep

ROOT = Path(__file__).resolve().parents[3]
LM_BASE = f"configs: [{ROOT}/configs/experiments/lm-bible.yaml, {ROOT}/configs/debug/smoke.yaml]\n"
TRAIN_STEPS = range(49, 1000, 50)  # a training row every 50 steps: 20 of them


def _losses(spike_at=()):
    """A slowly falling, slightly noisy loss, 3 higher at the steps ``spike_at``."""
    return {s: 4.0 - s / 1000 + 0.02 * ((s // 50) % 3) + (3.0 if s in spike_at else 0.0) for s in TRAIN_STEPS}


def _write_rows(directory: Path, losses, grad_norms=None, val=None):
    rows = []
    for i, (step, loss) in enumerate(losses.items()):
        row = {"step": step, "time": 1000.0 + step, "train/loss": loss}
        if grad_norms is not None:
            row["train/grad_norm"] = grad_norms[i]
        rows.append(row)
    rows += [{"step": s, "time": 1000.0 + s, "val/ppl": v} for s, v in (val or {}).items()]
    directory.mkdir(parents=True, exist_ok=True)
    rows.sort(key=lambda r: r["step"])
    (directory / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_spikes_are_losses_far_above_the_rolling_median():
    losses = list(_losses(spike_at=(549,)).items())
    assert health.spikes(losses) == [549]
    assert health.spikes(list(_losses().items())) == []
    assert health.spikes(losses[:5]) == []  # too few losses before any step to judge


def test_grad_norms_clipping_and_spikes_only_one_variant_shows(tmp_path):
    runs = tmp_path / "runs"
    norms = [float(n) for n in range(1, 21)]
    _write_rows(runs / "a-s0", _losses(spike_at=(549, 849)), norms)
    _write_rows(runs / "a-s1", _losses(), [n + 20 for n in norms])
    _write_rows(runs / "b-s0", _losses(spike_at=(849,)))  # an older run: no gradient norms
    _write_rows(runs / "b-s1", _losses(spike_at=(349,)))
    records = [Record("a-s0", "a", 0, "completed", {"train/clip_fraction": 0.1}),
               Record("a-s1", "a", 1, "completed", {"train/clip_fraction": 0.3}),
               Record("b-s0", "b", 0, "completed"), Record("b-s1", "b", 1, "completed"),
               Record("b-s2", "b", 2, "diverged")]
    (a, b), common = health.health(records, runs, ["a", "b"])
    assert a.grad_median == pytest.approx(20.5) and a.grad_max == 40.0  # over both seeds' 40 logged norms: 1 to 40
    assert a.clip_fraction == pytest.approx(0.2)
    assert b.grad_median is None and b.clip_fraction is None and b.runs == 2
    # step 849 of seed 0 spiked in both variants: the batch, left out; the rest are each variant's own
    assert common == [(0, 849)]
    assert a.spikes == [(0, 549)] and b.spikes == [(1, 349)]
    table = "\n".join(health.table([a, b]))
    assert "| a | 2 | 20.5 | 40 | 20.0% | 1 | 549 (0) |" in table
    assert "| b | 2 | not logged | not logged | not logged | 1 | 349 (1) |" in table
    assert health.summary([a, b], common)["common_spikes"] == [{"seed": 0, "step": 849}]


def test_runs_without_training_rows_show_nothing(tmp_path):
    rows, common = health.health([Record("x-s0", "x", 0, "completed")], tmp_path, ["x"])
    assert not health.logged(rows) and common == []


def test_a_report_page_with_budget_and_health_sections(tmp_path, monkeypatch):
    sweep_file = tmp_path / "s.yaml"
    sweep_file.write_text(LM_BASE + "name: healthy\ngrid: {model.ffn: [relu, swiglu]}\nseeds: [0, 1]\n"
                          "baseline: {model.ffn: relu}\n")
    monkeypatch.chdir(tmp_path)
    sweep = load_sweep(sweep_file, [f"run.root={tmp_path}/runs"])
    for run in sweep.runs:
        relu = run.variant == sweep.baseline
        # the baseline still falls 5% over its last quarter; the other variant's gap grows from +10% to +30%
        val = dict(zip((249, 499, 749, 999), (100.0, 50.0, 40.0, 38.0) if relu else (100.0, 55.0, 48.0, 49.4)))
        _write_rows(run.run_dir, _losses(spike_at=() if relu else (549,)), [1.0] * 20, val)
        write_status(run.run_dir, "completed", step=1000, run_id=run.run_id, params={"total": 10},
                     metrics={"val/ppl": val[999], "test/ppl": val[999] + run.seed, "test/bpb": 1.0 + run.seed,
                              "train/clip_fraction": 0.5})
    out = tmp_path / "report"
    text = build(sweep, out).read_text()
    banner = "⚠ The baseline still improved by 5.0% over the last quarter of training (val/ppl)"
    assert text.count(banner) == 2  # under the introduction and atop the budget section
    assert text.index(banner) < text.index("## Results") < text.index("## Against the baseline")
    assert text.index("## Against the baseline") < text.index("## Was the budget enough?")
    assert text.index("## Was the budget enough?") < text.index("## Training health") < text.index("## Plots")
    other = next(v for v in sweep.variants if v != sweep.baseline)
    assert f"| {other} | test/ppl | val/ppl | +0.0% | +10.0% | +20.0% | +30.0% | diverging |" in text
    assert f"| {other} | 2 | 1 | 1 | 50.0% | 2 | 549 (0), 549 (1) |" in text
    assert "## Source use" not in text  # a language model: no source to use
    summary = json.loads((out / "report.json").read_text())
    assert summary["adequacy"]["baseline_still_improving"]["improvement"] == pytest.approx(0.05)
    assert {g["trend"] for g in summary["adequacy"]["gaps"]} == {"diverging"}
    assert [v["spikes"] for v in summary["health"]["variants"]] == [[], [{"seed": 0, "step": 549},
                                                                        {"seed": 1, "step": 549}]]
    assert SECTIONS.index(budget_banner) < SECTIONS.index(results) < SECTIONS.index(budget) < SECTIONS.index(
        training_health)
