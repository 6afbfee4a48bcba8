"""Was the budget enough, and did the runs read their source: gaps followed through training,
the still-learning banner, collapsed translation runs (fabricated curves and run files)."""

import json
from pathlib import Path

import pytest

from experiments.report import adequacy
from experiments.report.collect import Record, Report
from experiments.report.compare import Comparison
from experiments.report.page import build
from experiments.report.sections import SECTIONS, Page, budget_banner, source_use
from experiments.run.rundir import write_status
from experiments.sweep.spec import load_sweep

ROOT = Path(__file__).resolve().parents[3]
LM_BASE = f"configs: [{ROOT}/configs/experiments/lm-bible.yaml, {ROOT}/configs/debug/smoke.yaml]\n"
MT_BASE = f"configs: [{ROOT}/configs/experiments/mt-bible-de-en.yaml, {ROOT}/configs/debug/smoke.yaml]\n"
STEPS = (249, 499, 749, 999)  # validation at each quarter of 1,000 steps
BASE_CURVE = (100.0, 50.0, 40.0, 30.0)


def _run(variant, seed, ppl, state="completed"):
    """A finished run whose validation perplexity was ``ppl`` at each quarter of training."""
    curve = [{"step": s, "val/ppl": v} for s, v in zip(STEPS, ppl)]
    return Record(f"{variant}-s{seed}", variant, seed, state, {"test/ppl": ppl[-1]}, curve=curve)


def _gap_rows(variant_curve, seeds=(0, 1)):
    records = [_run("base", s, BASE_CURVE) for s in seeds] + [_run("new", s, variant_curve) for s in seeds]
    return adequacy.gaps(records, [Comparison("delta", "new", "base", "test/ppl", None)])


def test_a_gap_that_grows_is_diverging_one_that_shrinks_converging():
    (grows,) = _gap_rows((100.0, 55.0, 48.0, 39.0))  # +10% half-way, +30% at the end
    assert grows.validation == "val/ppl"
    assert grows.gaps == pytest.approx([0.0, 0.10, 0.20, 0.30])
    assert grows.trend == "diverging"
    (shrinks,) = _gap_rows((100.0, 60.0, 44.0, 31.5))  # +20% half-way, +5% at the end
    assert shrinks.trend == "converging"
    (steady,) = _gap_rows((100.0, 55.0, 44.0, 33.0))  # +10% both
    assert steady.trend == "stable"


def test_gaps_are_read_at_shares_of_training_and_over_shared_seeds():
    records = [_run("base", 0, BASE_CURVE), _run("base", 1, BASE_CURVE), _run("new", 0, (100.0, 55.0, 48.0, 39.0)),
               _run("new", 2, (1.0, 1.0, 1.0, 1.0)), _run("new", 1, (1.0, 1.0, 1.0, 1.0), state="diverged")]
    assert adequacy.gap_at(records, "new", "base", "val/ppl", 1.0) == pytest.approx(0.30)  # seed 0 only
    run = _run("base", 0, BASE_CURVE)
    assert adequacy.value_at_fraction(run, "val/ppl", 0.625) == pytest.approx(45.0)  # step 624: between 499 and 749
    assert adequacy.trend(None, 0.1) is None
    assert adequacy.trend(0.001, 0.004) == "stable"  # tiny gaps: their ratio is noise
    assert adequacy.trend(0.004, 0.012) == "diverging"
    assert adequacy.trend(0.10, -0.10) == "crossed" and adequacy.trend(-0.30, 0.05) == "crossed"


def test_bleu_rows_follow_validation_perplexity_when_bleu_has_no_curve():
    records = [_run(v, 0, BASE_CURVE) for v in ("base", "new")]
    records[0].curve[-1]["val/bleu"] = records[1].curve[-1]["val/bleu"] = 20.0  # decoded at the end only
    assert adequacy.validation_metric(records, "test/bleu", ("new", "base")) == "val/ppl"
    assert adequacy.validation_metric(records, "test/ppl", ("new", "base")) == "val/ppl"
    assert adequacy.validation_metric([Record("a", "new", 0, "completed")], "test/ppl", ("new",)) is None


def _page(tmp_path, monkeypatch, last_quarter):
    """A relu-vs-swiglu Page whose baseline improved by ``last_quarter`` over its last quarter."""
    sweep_file = tmp_path / "s.yaml"
    sweep_file.write_text(LM_BASE + "name: b\ngrid: {model.ffn: [relu, swiglu]}\nseeds: [0]\n"
                          "baseline: {model.ffn: relu}\n")
    monkeypatch.chdir(tmp_path)
    sweep = load_sweep(sweep_file, [f"run.root={tmp_path}/runs"])
    (other,) = [v for v in sweep.variants if v != sweep.baseline]
    curve = (100.0, 50.0, 40.0, 40.0 * (1 - last_quarter))
    records = [_run(sweep.baseline, 0, curve), _run(other, 0, curve)]
    comparisons = [Comparison("delta", other, sweep.baseline, "test/ppl", None)]
    return Page(Report(sweep, tmp_path / "out", records), comparisons, [], [], "s.yaml", "out")


def test_the_banner_shows_when_the_baseline_still_improved(tmp_path, monkeypatch):
    (line, blank) = budget_banner(_page(tmp_path, monkeypatch, 0.05))
    assert line.startswith("⚠ The baseline still improved by 5.0% over the last quarter of training")
    assert "not about the architectures at convergence" in line and blank == ""
    assert budget_banner(_page(tmp_path, monkeypatch, 0.01)) == []


def test_a_run_that_repeats_one_sentence_or_ignores_shuffled_sources_is_collapsed():
    same = Record("r", "v", 0, "completed", hypotheses=["a man is riding a horse ."] * 1000)
    assert adequacy.collapsed(same) == "1 distinct output for 1000 test sources"
    varied = Record("r", "v", 0, "completed", hypotheses=[f"sentence {i}" for i in range(1000)])
    assert adequacy.collapsed(varied) is None
    blind = Record("b", "v", 0, "completed", {adequacy.SHUFFLED_KEY: 9.0, adequacy.TRUE_KEY: 10.0})
    reading = Record("c", "v", 0, "completed", {adequacy.SHUFFLED_KEY: 1.0, adequacy.TRUE_KEY: 10.0})
    assert adequacy.collapses([blind, reading, varied]) == {"b": adequacy.collapsed(blind)}
    assert adequacy.unchecked([blind, reading, varied]) == ["r"]
    untrained = Record("u", "v", 0, "completed", {adequacy.SHUFFLED_KEY: 0.3, adequacy.TRUE_KEY: 0.4})
    assert adequacy.collapsed(untrained) == "BLEU 0.4 with its true sources: it does not translate"


REFS = [f"and the man number {i} went down to the city by the sea" for i in range(40)]


def test_the_translation_page_says_which_runs_collapsed(tmp_path, monkeypatch):
    from lit.outputs import write_translations

    sweep_file = tmp_path / "s.yaml"
    sweep_file.write_text(MT_BASE + "name: mtc\ngrid: {model.norm_position: [post, pre]}\nseeds: [0, 1]\n"
                          "baseline: {model.norm_position: pre}\n")
    monkeypatch.chdir(tmp_path)
    sweep = load_sweep(sweep_file, [f"run.root={tmp_path}/runs"])
    for run in sweep.runs:
        post = run.point["model.norm_position"] == "post"
        hyps = ["and the man went down"] * len(REFS) if post else REFS
        run.run_dir.mkdir(parents=True)
        write_translations(run.run_dir, [f"quelle {i}" for i in range(len(REFS))], REFS, hyps)
        checks = {adequacy.SHUFFLED_KEY: 1.0, adequacy.TRUE_KEY: 30.0} if run.seed == 1 else {}
        write_status(run.run_dir, "completed", step=40, run_id=run.run_id,
                     metrics={"val/ppl": 20.0, "test/ppl": 21.0, "test/bleu": 10.0, **checks})
        (run.run_dir / "metrics.jsonl").write_text("".join(
            json.dumps({"step": s, "val/ppl": v * (1.5 if post else 1.0)}) + "\n" for s, v in zip(STEPS, BASE_CURVE)))
    out = tmp_path / "report"
    text = build(sweep, out).read_text()
    post = [v for v in sweep.variants if "post" in v][0]
    assert "## Source use" in text and f"| {post} | 2/2 |" in text
    assert f"- `{post}-s0`: 1 distinct output for 40 test sources" in text
    assert "shuffled-source check was not available for " in text and "(2 of 4:" in text
    summary = json.loads((out / "report.json").read_text())["adequacy"]
    assert sorted(summary["collapsed"]) == [f"{post}-s0", f"{post}-s1"]
    assert len(summary["no_shuffled_check"]) == 2
    assert text.index("## Against the baseline") < text.index("## Was the budget enough?") < text.index("## Source use")
    assert source_use in SECTIONS
