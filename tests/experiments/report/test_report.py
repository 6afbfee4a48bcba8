"""Reports: statistics, deltas, runs left out, byte-for-byte regeneration (synthetic run files;
the end-to-end report of a real sweep is in test_sweep.py)."""

import json
import math
from pathlib import Path

import pytest

from experiments.report.collect import Record
from experiments.report.compare import delta
from experiments.report.page import build, rebuild
from experiments.report.stats import mean_std
from experiments.run.rundir import write_status
from experiments.sweep.spec import load_sweep

ROOT = Path(__file__).resolve().parents[3]
BASE = f"configs: [{ROOT}/configs/experiments/lm-bible.yaml, {ROOT}/configs/debug/smoke.yaml]\n"


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
    assert d.mean == pytest.approx(-5.0) and (d.method, d.n) == ("paired t", 3)
    assert d.high < 0 and d.p < 0.05  # every seed improved by about as much: pairing removes seed noise
    assert d.relative == pytest.approx(-5.0 / 110.0)


def test_delta_with_overlap_and_unpaired():
    records = _records({"base": [100.0, 110.0, 120.0], "new": [104.0, 106.0, 121.0]})
    d = delta(records, "new", "base", "test/ppl")
    assert d.low < 0 < d.high and d.p > 0.05
    records = [Record("a", "base", 0, "completed", {"test/ppl": 100.0}),
               Record("b", "new", 1, "completed", {"test/ppl": 90.0}),
               Record("c", "new", 2, "failed", {"test/ppl": 1.0})]  # failed runs never count
    d = delta(records, "new", "base", "test/ppl")
    assert d.mean == pytest.approx(-10.0) and d.method == "one seed" and math.isnan(d.p)


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
    assert "SwiGLU beats ReLU" in text and "one seed: no verdict" in text
    assert "`abc123`" in text and "test machine" in text
    for name in ("val_curves_steps.png", "val_curves_time.png", "throughput.png"):
        assert (out / name).stat().st_size > 1000
    first = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    import shutil

    shutil.rmtree(tmp_path / "runs")  # only the report's copies are left
    build(load_sweep(sweep_file, [f"run.root={tmp_path}/runs"]), out)
    again = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert again == first


MT_BASE = f"configs: [{ROOT}/configs/experiments/mt-bible-de-en.yaml, {ROOT}/configs/debug/smoke.yaml]\n"
REFS = [f"and the man number {i} went down to the city by the sea" for i in range(40)]


def _fake_translation_run(run, dropped: int):
    """A finished translation run whose hypotheses drop the last ``dropped`` words of each reference."""
    from lit.outputs import write_translations
    from tools.metrics import corpus_bleu

    hyps = [" ".join(r.split()[: len(r.split()) - dropped]) for r in REFS]
    run.run_dir.mkdir(parents=True)
    write_translations(run.run_dir, [f"quelle {i}" for i in range(len(REFS))], REFS, hyps)
    bleu, signature = corpus_bleu(hyps, REFS)
    write_status(run.run_dir, "completed", step=40, run_id=run.run_id, signature=signature,
                 metrics={"val/ppl": 20.0 + dropped + run.seed, "test/ppl": 21.0 + dropped + run.seed,
                          "test/bleu": bleu}, params={"total": 99})


def test_translation_report_tests_bleu_gives_chrf_and_rebuilds_from_its_folder(tmp_path, monkeypatch):
    sweep_file = tmp_path / "s.yaml"
    sweep_file.write_text(MT_BASE + "name: mtfake\ngrid: {model.norm_position: [post, pre]}\nseeds: [0, 1, 2]\n"
                          "baseline: {model.norm_position: post}\n")
    monkeypatch.chdir(tmp_path)
    sweep = load_sweep(sweep_file, [f"run.root={tmp_path}/runs"])
    for run in sweep.runs:
        _fake_translation_run(run, dropped=4 if run.point["model.norm_position"] == "post" else 1)
    out = tmp_path / "report"
    text = build(sweep, out).read_text()
    summary = json.loads((out / "report.json").read_text())
    assert (out / "test.ref").read_text().splitlines() == REFS
    assert all((out / "runs" / r.name / "test.hyp").is_file() for r in sweep.runs)
    # one comparison per non-baseline variant and primary metric, with every field the issue names
    (bleu_row,) = [c for c in summary["comparisons"] if c["metric"] == "test/bleu"]
    assert {"variant", "against", "metric", "n", "mean", "low", "high", "method", "p", "p_adjusted",
            "verdict"} <= set(bleu_row)
    assert bleu_row["n"] == 3 and bleu_row["mean"] > 0
    # the same BLEU difference on every seed: no spread to test against, so no verdict on it
    assert bleu_row["method"] == "no spread" and bleu_row["verdict"] == "no spread: no test"
    assert bleu_row["p"] is None
    tests = summary["bleu_tests"]
    assert [t["seed"] for t in tests] == [0, 1, 2] and all(t["p"] < 0.05 for t in tests)
    assert all(summary["runs"][i]["metrics"]["test/chrf"] > 0 for i in range(6))
    assert "BLEU between systems on the same seed" in text and "sacrebleu" in text
    # three sample translations: source, reference and each variant's hypothesis
    assert text.count("- source: quelle ") == 3 and text.count(" (seed 0): ") == 6
    first = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    import shutil

    shutil.rmtree(tmp_path / "runs")
    rebuild(out)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == first


def _report_from_an_earlier_json(tmp_path, monkeypatch, run_entry):
    """A relu-vs-swiglu sweep over seeds 0 and 1 with no run files, and a report folder whose
    report.json lists ``run_entry(run)`` for each run; returns (sweep, report folder)."""
    sweep_file = tmp_path / "s.yaml"
    sweep_file.write_text(BASE + "name: old\ngrid: {model.ffn: [relu, swiglu]}\nseeds: [0, 1]\n"
                          "baseline: {model.ffn: relu}\n")
    monkeypatch.chdir(tmp_path)
    sweep = load_sweep(sweep_file, [f"run.root={tmp_path}/runs"])
    out = tmp_path / "report"
    out.mkdir()
    runs = [{"name": r.name, "variant": r.variant, "seed": r.seed, **run_entry(r)} for r in sweep.runs]
    (out / "report.json").write_text(json.dumps({"name": "old", "cli_overrides": [], "runs": runs}))
    return sweep, out


def test_report_of_runs_known_only_from_an_earlier_report_json(tmp_path, monkeypatch):
    """Reports built before run files were kept: their per-run values are read back from
    report.json, and the page says so."""
    sweep, out = _report_from_an_earlier_json(tmp_path, monkeypatch, lambda r: {
        "state": "completed", "metrics": {"test/ppl": 100.0 - (10 + r.seed) * (r.variant.endswith("swiglu")) + r.seed,
                                          "val/ppl": 90.0, "test/bpb": 1.5}})
    text = build(sweep, out).read_text()
    assert "4 of these runs were read from an earlier `report.json` only" in text
    summary = json.loads((out / "report.json").read_text())
    (row,) = [c for c in summary["comparisons"] if c["metric"] == "test/ppl"]
    assert row["mean"] == pytest.approx(-10.5) and row["method"] == "paired t" and row["n"] == 2
    first = (out / "README.md").read_bytes(), (out / "report.json").read_bytes()
    rebuild(out)
    assert ((out / "README.md").read_bytes(), (out / "report.json").read_bytes()) == first


def test_runs_an_earlier_report_listed_as_missing_are_not_adopted(tmp_path, monkeypatch):
    """A report built while a sweep was running lists its pending runs as missing: rebuilding it
    later must not present them as runs whose files were lost."""
    sweep, out = _report_from_an_earlier_json(tmp_path, monkeypatch, lambda r: {"state": "missing", "metrics": {}})
    text = build(sweep, out).read_text()
    assert "read from an earlier" not in text
    assert {r["state"] for r in json.loads((out / "report.json").read_text())["runs"]} == {"missing"}


def test_wall_clock_is_marked_not_comparable_when_a_variants_seeds_ran_at_uneven_speed(tmp_path, monkeypatch):
    """Seeds of one variant at 1,100 and 1,400 tokens/s: the machine was shared, and the page says
    the wall-clock plot compares machines as much as models; at 1,100 and 1,110 it says nothing."""
    sweep_file = tmp_path / "s.yaml"
    sweep_file.write_text(BASE + "name: speed\ngrid: {model.ffn: [relu, swiglu]}\nseeds: [0, 1]\n"
                          "baseline: {model.ffn: relu}\n")
    monkeypatch.chdir(tmp_path)
    sweep = load_sweep(sweep_file, [f"run.root={tmp_path}/runs"])
    for run, ppl in zip(sweep.runs, (100.0, 110.0, 90.0, 95.0)):
        _fake_run(run, ppl)
    assert "is not comparable between variants" not in build(sweep, tmp_path / "even").read_text()
    _fake_run(sweep.runs[1], 400.0)
    text = build(sweep, tmp_path / "uneven").read_text()
    assert "The wall-clock plot (val_curves_time.png) is not comparable between variants" in text
    assert "layernorm-pre-learned-relu 27%" in text


def test_a_variant_whose_runs_all_diverged_reads_diverged(tmp_path, monkeypatch):
    sweep_file = tmp_path / "s.yaml"
    sweep_file.write_text(BASE + """
name: fake
grid: {model.ffn: [relu, swiglu, gelu]}
seeds: [0, 1]
baseline: {model.ffn: relu}
findings:
  - {claim: "ReLU beats SwiGLU", variant: {model.ffn: relu}, against: {model.ffn: swiglu}, metric: test/ppl}
""")
    monkeypatch.chdir(tmp_path.parent)
    a0, a1, b0, b1, c0, c1 = load_sweep(sweep_file, [f"run.root={tmp_path}/runs"]).runs
    for run, ppl in ((a0, 100.0), (a1, 110.0), (c0, 99.0), (c1, 108.0)):
        _fake_run(run, ppl)
    for run in (b0, b1):
        _fake_run(run, math.nan, state="diverged")
    text = build(load_sweep(sweep_file, [f"run.root={tmp_path}/runs"]), tmp_path / "report").read_text()
    assert "no finished runs" not in text
    assert "diverged (2/2)" in text  # the swiglu rows against the baseline
    assert "no verdict (layernorm-pre-learned-swiglu diverged 2/2)" in text  # the finding against it


def test_a_finished_run_without_its_metrics_file_is_named_under_the_plots(tmp_path, monkeypatch):
    sweep_file = tmp_path / "s.yaml"
    sweep_file.write_text(BASE + "name: fake\ngrid: {model.ffn: [relu, swiglu]}\nseeds: [0, 1]\n"
                          "baseline: {model.ffn: relu}\n")
    monkeypatch.chdir(tmp_path.parent)
    runs = load_sweep(sweep_file, [f"run.root={tmp_path}/runs"]).runs
    for run, ppl in zip(runs, (100.0, 110.0, 90.0, 95.0)):
        _fake_run(run, ppl)
    (runs[3].run_dir / "metrics.jsonl").unlink()
    text = build(load_sweep(sweep_file, [f"run.root={tmp_path}/runs"]), tmp_path / "report").read_text()
    assert (f"The curves leave out 1 finished run(s) whose `metrics.jsonl` is missing or holds no validation "
            f"record: `{runs[3].name}`.") in text


def test_the_reproduce_commands_are_shell_quoted(tmp_path):
    """Paths and overrides with spaces are quoted so that the page's commands can be pasted."""
    import shlex

    folder = tmp_path / "my sweeps"
    folder.mkdir()
    sweep_file = folder / "s.yaml"
    sweep_file.write_text(BASE + "name: fake\ngrid: {model.ffn: [relu, swiglu]}\nseeds: [0]\n"
                          "baseline: {model.ffn: relu}\n")
    root = f"run.root={tmp_path}/my runs"
    sweep = load_sweep(sweep_file, [root])
    for run, ppl in zip(sweep.runs, (100.0, 90.0)):
        _fake_run(run, ppl)
    text = build(sweep, tmp_path / "the report").read_text()
    commands = {line.split()[1]: shlex.split(line.split("  #")[0]) for line in text.splitlines()
                if line.startswith("ablate ")}
    assert commands["sweep"] == ["ablate", "sweep", str(sweep_file), root]
    assert commands["report"] == ["ablate", "report", str(sweep_file), root]
    assert commands["reproduce"] == ["ablate", "reproduce", str(tmp_path / "the report")]
