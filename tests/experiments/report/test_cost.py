"""The "Cost and equal compute" section: per-variant cost indicators and each Δ row read at equal
training FLOPs (synthetic run files of a tiny LM sweep whose variants differ in width)."""

import json
from pathlib import Path

import pytest

from experiments.report.collect import Record
from experiments.report.cost import run_cost, sci
from experiments.report.page import build
from experiments.run.config import to_yaml
from experiments.run.rundir import write_status
from experiments.sweep import budget as budgets
from experiments.sweep.spec import load_sweep

ROOT = Path(__file__).resolve().parents[3]
BASE = f"configs: [{ROOT}/configs/experiments/lm-bible.yaml, {ROOT}/configs/debug/smoke.yaml]\n"
SWEEP = BASE + "name: cost\ngrid: {model.d_model: [64, 128]}\nseeds: [0, 1]\nbaseline: {model.d_model: 64}\n"
SMALL, BIG = "layernorm-pre-learned-gelu-d_model64", "layernorm-pre-learned-gelu-d_model128"


def _fake_run(run, curve, steps, test_ppl):
    """A finished run with its config, validation ``curve`` (trained steps -> val/ppl; logged at
    step n - 1) and ``steps`` optimizer steps."""
    run.run_dir.mkdir(parents=True, exist_ok=True)
    (run.run_dir / "config.yaml").write_text(to_yaml(run.cfg))
    metrics = {"val/ppl": curve[max(curve)], "test/ppl": test_ppl, "test/bpb": 2.0, "wall_s": 10.0,
               "perf/tokens_per_s_median": 1000.0, "perf/mfu_median": 0.5, "perf/peak_flops": 1e10}
    write_status(run.run_dir, "completed", step=steps, run_id=run.run_id, metrics=metrics, params={"total": 1234})
    rows = [{"step": n - 1, "time": 1000.0 + n, "val/ppl": v} for n, v in sorted(curve.items())]
    rows.append({"step": steps, "time": 2000.0, "perf/peak_mem_mb": 500.0 + run.seed})
    (run.run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _sweep(tmp_path, monkeypatch, text=SWEEP):
    sweep_file = tmp_path / "s.yaml"
    sweep_file.write_text(text)
    monkeypatch.chdir(tmp_path)
    return load_sweep(sweep_file, [f"run.root={tmp_path}/runs"])


def test_delta_at_equal_flops_reads_the_costlier_arm_where_the_cheaper_one_ended(tmp_path, monkeypatch):
    """Both widths train 40 steps: the wide variant spends ~2.2× the FLOPs and ends 10% lower in
    validation perplexity, but at the narrow baseline's total FLOPs it is still behind."""
    sweep = _sweep(tmp_path, monkeypatch)
    for run in sweep.runs:
        offset = 2.0 * run.seed
        if run.variant == BIG:  # linear in trained steps: 130 - n
            _fake_run(run, {n: 130.0 - n + offset for n in (10, 20, 40)}, 40, 90.0 + offset)
        else:  # ends at 100
            _fake_run(run, {n: 140.0 - n + offset for n in (10, 20, 40)}, 40, 100.0 + offset)
    out = tmp_path / "report"
    text = build(sweep, out).read_text()
    small, big = (budgets.flops_per_step(sweep.runs[i].cfg, None, "test") for i in (0, 2))
    assert big > 2 * small
    k = 40 * small / big  # the wide variant's steps at the baseline's 40 steps of FLOPs
    expected = ((130.0 - k + 1.0) - (100.0 + 1.0)) / (100.0 + 1.0)  # means over seeds 0 and 1 (offsets 0, 2)
    (row,) = [r for r in json.loads((out / "report.json").read_text())["cost"]["equal_flops"]
              if r["metric"] == "test/ppl"]
    assert row["gap"] == pytest.approx(expected) and row["gap"] > 0
    assert row["end"] == pytest.approx(-10.0 / 101.0)  # the Δ table's: better at the end, worse at equal FLOPs
    assert (row["validation"], row["smaller"], row["equal"], row["seeds"]) == ("val/ppl", SMALL, False, 2)
    assert row["at"] == pytest.approx(40 * small)
    assert "## Cost and equal compute" in text
    assert text.index("## Was the budget enough?") < text.index("## Cost and equal compute")
    assert f"| {BIG} | test/ppl | -9.9% | val/ppl | {SMALL} | {sci(40 * small)} | {100 * expected:+.1f}% |" in text
    assert "equal steps (no `budget:` section): variants of different cost got different compute" in text


def test_cost_table_shows_flops_per_token_from_the_config(tmp_path, monkeypatch):
    sweep = _sweep(tmp_path, monkeypatch)
    for run in sweep.runs:
        _fake_run(run, {20: 120.0, 40: 100.0}, 40, 100.0)
    out = tmp_path / "report"
    text = build(sweep, out).read_text()
    variants = {c["variant"]: c for c in json.loads((out / "report.json").read_text())["cost"]["variants"]}
    for run in (sweep.runs[0], sweep.runs[2]):
        per_step = budgets.flops_per_step(run.cfg, None, "test")
        per_token = per_step / budgets.tokens_per_step(run.cfg, "test")
        cost = variants[run.variant]
        assert cost["flops_per_token"] == pytest.approx(per_token) and cost["source"] == "config"
        assert cost["flops"] == pytest.approx(40 * per_step) and cost["peak_mem_mb"] == 501.0
        name = f"**{run.variant}** (baseline)" if run.variant == SMALL else run.variant
        assert f"| {name} | 1,234 | {sci(per_token)} | {sci(40 * per_step)} | 1,000 | 501 |" in text


def test_flops_per_token_falls_back_to_the_logged_throughput():
    record = Record("r", "v", 0, "completed", {"perf/mfu_median": 0.5, "perf/peak_flops": 1e10,
                                                "perf/tokens_per_s_median": 1000.0})
    cost = run_cost(record, 40)
    assert (cost.flops_per_token, cost.source, cost.flops) == (pytest.approx(5e6), "perf", None)


def test_a_flop_budget_gives_equal_budgets(tmp_path, monkeypatch):
    """With ``budget: {by: flops}`` every run's steps spend the same FLOPs: the rows say so."""
    sweep = _sweep(tmp_path, monkeypatch, SWEEP + "budget: {by: flops, value: 1.0e13}\n")
    for run in sweep.runs:
        steps = run.cfg.trainer["max_steps"]
        _fake_run(run, {steps // 2: 120.0, steps: 100.0 + run.seed}, steps, 100.0 + run.seed)
    out = tmp_path / "report"
    text = build(sweep, out).read_text()
    assert "Budget rule: `budget: {by: flops, value: 1e+13}` (equal training FLOPs" in text
    assert "| equal budgets: the same as at the end |" in text
    cost = json.loads((out / "report.json").read_text())["cost"]
    assert cost["budget"] == {"by": "flops", "value": 1e13}
    assert all(r["equal"] and r["gap"] is None for r in cost["equal_flops"])


def test_no_cost_section_when_nothing_can_be_computed(tmp_path, monkeypatch):
    """Runs known only from an earlier report.json (no config, no throughput): no section, and
    report.json says nothing was known."""
    sweep = _sweep(tmp_path, monkeypatch)
    out = tmp_path / "report"
    out.mkdir()
    runs = [{"name": r.name, "variant": r.variant, "seed": r.seed, "state": "completed",
             "metrics": {"test/ppl": 100.0 + r.seed + (r.variant == BIG), "val/ppl": 90.0, "test/bpb": 1.5}}
            for r in sweep.runs]
    (out / "report.json").write_text(json.dumps({"name": "cost", "cli_overrides": [], "runs": runs}))
    text = build(sweep, out).read_text()
    assert "Cost and equal compute" not in text
    cost = json.loads((out / "report.json").read_text())["cost"]
    assert cost["budget"] is None and all(c["flops_per_token"] is None for c in cost["variants"])
    assert all(r["gap"] is None and not r["equal"] for r in cost["equal_flops"])
