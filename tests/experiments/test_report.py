"""Reports: statistics, deltas, runs left out, byte-for-byte regeneration (synthetic run files;
the end-to-end report of a real sweep is in test_sweep.py)."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from experiments.report import bootstrap_ci, build, delta, mean_std, Record
from experiments.rundir import write_status
from experiments.sweep import load_sweep

ROOT = Path(__file__).resolve().parents[2]
BASE = f"configs: [{ROOT}/configs/experiments/lm-bible.yaml, {ROOT}/configs/debug/smoke.yaml]\n"


def test_bootstrap_interval_is_reproducible_and_brackets_the_mean():
    diffs = [1.0, 2.0, 4.0, 3.0]
    low, high = bootstrap_ci(diffs)
    assert (low, high) == bootstrap_ci(diffs)
    assert low <= np.mean(diffs) <= high and 1.0 <= low and high <= 4.0
    assert bootstrap_ci([5.0, 5.0]) == (5.0, 5.0)


def test_mean_std_ignores_missing_and_non_finite():
    assert mean_std([1.0, None, 3.0, math.nan]) == (2.0, pytest.approx(math.sqrt(2)))
    assert math.isnan(mean_std([4.0])[1])
    assert all(math.isnan(v) for v in mean_std([]))


def _records(values):
    return [Record(f"{v}-s{s}", v, s, "completed", {"test/ppl": x}) for v, xs in values.items()
            for s, x in enumerate(xs)]


def test_delta_pairs_by_seed():
    records = _records({"base": [100.0, 110.0, 120.0], "new": [95.0, 104.0, 116.0]})
    d = delta(records, "new", "base", "test/ppl")
    assert d["mean"] == pytest.approx(-5.0) and d["how"] == "paired, 3 seeds"
    assert d["high"] < 0 and not d["within_noise"]  # every seed improved: the pairing removes seed noise
    assert d["relative"] == pytest.approx(-5.0 / 110.0)


def test_delta_within_noise_and_unpaired():
    records = _records({"base": [100.0, 110.0, 120.0], "new": [104.0, 106.0, 121.0]})
    assert delta(records, "new", "base", "test/ppl")["within_noise"]
    records = [Record("a", "base", 0, "completed", {"test/ppl": 100.0}),
               Record("b", "new", 1, "completed", {"test/ppl": 90.0}),
               Record("c", "new", 2, "failed", {"test/ppl": 1.0})]  # failed runs never count
    d = delta(records, "new", "base", "test/ppl")
    assert d["mean"] == pytest.approx(-10.0) and d["how"] == "unpaired, 1 vs 1 runs"


def _fake_run(run, ppl, state="completed"):
    metrics = {"val/ppl": ppl * 0.9, "test/ppl": ppl, "test/bpb": math.log2(ppl) / 4, "wall_s": 10.0,
               "perf/tokens_per_s_median": 1000.0 + ppl, "perf/mfu_median": 0.5}
    write_status(run.run_dir, state, step=40, run_id=run.run_id, metrics=metrics, params={"total": 1234},
                 environment={"code": "abc123", "versions": {"torch": "2.13.0"}, "machine": "test machine"})
    rows = [{"step": s, "time": 1000.0 + s, "val/ppl": ppl * (2 - s / 40)} for s in (10, 20, 40)]
    (run.run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_report_lists_missing_runs_and_regenerates_byte_for_byte(tmp_path, monkeypatch):
    sweep_file = tmp_path / "s.yaml"
    sweep_file.write_text(BASE + """
name: fake
grid: {model.ffn: [relu, swiglu]}
seeds: [0, 1]
baseline: {model.ffn: relu}
findings:
  - {claim: "SwiGLU beats ReLU", variant: {model.ffn: swiglu}, metric: test/ppl, expect: lower}
""")
    monkeypatch.chdir(tmp_path.parent)
    sweep = load_sweep(sweep_file, [f"run.root={tmp_path}/runs"])
    a0, a1, b0, b1 = sweep.runs
    _fake_run(a0, 100.0)
    _fake_run(a1, 110.0)
    _fake_run(b0, 90.0)
    _fake_run(b1, 70.0, state="diverged")  # listed, never averaged
    out = tmp_path / "report"
    text = build(sweep, out).read_text()
    assert "| **layernorm-pre-learned-relu** (baseline) | 2/2 | 1,234 | 94.50 ± 6.36 | 105.00 ± 7.07 |" in text
    assert "| layernorm-pre-learned-swiglu | 1/2 |" in text
    assert f"`{b1.name}`: diverged" in text
    assert "SwiGLU beats ReLU" in text and "one seed: noise unknown" in text
    assert "`abc123`" in text and "test machine" in text
    for name in ("val_curves_steps.png", "val_curves_time.png", "throughput.png"):
        assert (out / name).stat().st_size > 1000
    first = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    import shutil

    shutil.rmtree(tmp_path / "runs")  # only the report's copies are left
    build(load_sweep(sweep_file, [f"run.root={tmp_path}/runs"]), out)
    again = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert again == first
