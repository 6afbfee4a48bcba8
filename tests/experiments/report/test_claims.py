"""Published findings as tests: equivalence (TOST) and one-sided claims with a margin, "no
difference" that a two-sided test can never show, preconditions and collapsed arms that take a
row out of the family, one count per distinct test, and the sweep-file errors of a finding."""

import json
import math
import re
import shutil
from pathlib import Path

import pytest

from experiments.report.collect import Record, Report, collect
from experiments.report.compare import family, family_size
from experiments.report.tables import bleu_tests_table, delta_table, findings_table
from experiments.sweep.spec import SweepError, load_sweep

ROOT = Path(__file__).resolve().parents[3]
BASE = f"configs: [{ROOT}/configs/experiments/lm-bible.yaml, {ROOT}/configs/debug/smoke.yaml]\n"
RELU = [100.0, 103.0, 98.0, 101.0, 99.0]  # the baseline's test perplexity, seeds 0-4


def _sweep(tmp_path, findings: str):
    sweep_file = tmp_path / "s.yaml"
    sweep_file.write_text(BASE + "name: claims\ngrid: {model.ffn: [relu, gelu]}\nseeds: [0, 1, 2, 3, 4]\n"
                          "baseline: {model.ffn: relu}\nfindings:\n" + findings)
    return load_sweep(sweep_file, [f"run.root={tmp_path}/runs"])


def _rows(tmp_path, findings: str, gelu: list[float], curves=None, hypotheses=None):
    """The family of a relu (baseline, :data:`RELU`) vs gelu (``gelu``) sweep over 5 seeds, with
    the test perplexities given, and optionally per-variant validation curves or test outputs."""
    sweep = _sweep(tmp_path, findings)
    records = []
    for run in sweep.runs:
        ffn = run.point["model.ffn"]
        record = Record(run.name, run.variant, run.seed, "completed",
                        {"test/ppl": (RELU if ffn == "relu" else gelu)[run.seed]})
        record.curve = (curves or {}).get(ffn, [])
        record.hypotheses = (hypotheses or {}).get(ffn)
        records.append(record)
    rows = family(Report(sweep, tmp_path, records), sweep.findings)
    return [c for c in rows if c.metric == "test/ppl"], rows


def _claim(expect: str, extra: str = "") -> str:
    return f"  - {{claim: c, variant: {{model.ffn: gelu}}, metric: test/ppl, expect: {expect}{extra}}}\n"


NULL_SMALL = [r + e for r, e in zip(RELU, [0.1, -0.1, 0.05, -0.05, 0.0])]  # Δ 0, σ 0.08
NULL_LARGE = [r + e for r, e in zip(RELU, [3.0, -3.0, 2.0, -2.0, 0.0])]  # Δ 0, σ 2.5
WORSE = [r * 1.026 + e for r, e in zip(RELU, [0.1, -0.1, 0.05, -0.05, 0.0])]  # +2.6%, σ 0.1


@pytest.mark.parametrize("gelu, verdict", [(NULL_SMALL, "agrees"), (NULL_LARGE, "inconclusive"),
                                           (WORSE, "disagrees")])
def test_equivalence_is_tested_by_tost_within_its_margin(tmp_path, gelu, verdict):
    (delta_row, finding), rows = _rows(tmp_path, _claim("equivalent", ", margin: 1%"), gelu)
    assert finding.verdict == verdict
    assert finding.margin == pytest.approx(0.01 * sum(RELU) / 5)
    assert finding.counted and family_size(rows) == 2  # a TOST is a test of its own
    if verdict == "agrees":
        assert finding.hypothesis == "|Δ| < 1.002 (TOST)" and finding.p_adjusted < 0.05
        assert delta_row.verdict == "no detectable difference"
    if verdict == "disagrees":
        assert finding.hypothesis == "|Δ| > 1.002" and delta_row.verdict == "worse"
    text = "\n".join(findings_table(rows))
    assert "p (sign-flip)" in text and f"; test {finding.hypothesis.replace('|', chr(92) + '|')} |" in text


def test_an_absolute_margin_is_in_the_metrics_units(tmp_path):
    (_, finding), _ = _rows(tmp_path, _claim("equivalent", ", margin: 3.0"), WORSE)
    assert finding.margin == 3.0 and finding.verdict == "agrees"  # +2.6, σ 0.1: surely inside ±3
    (_, finding), _ = _rows(tmp_path, _claim("equivalent", ", margin: 2.6"), WORSE)
    assert finding.verdict == "inconclusive"  # on the edge: neither inside nor outside


def test_not_lower_agrees_when_the_variant_is_significantly_worse(tmp_path):
    """"GELU is no better than ReLU": GELU's perplexity is not lower; higher satisfies it."""
    (delta_row, finding), _ = _rows(tmp_path, _claim("not_lower"), WORSE)
    assert delta_row.verdict == "worse"
    assert finding.verdict == "agrees" and finding.hypothesis == "Δ > 0 (one-sided)"
    (_, finding), _ = _rows(tmp_path, _claim("not_lower"), [r * 0.974 for r in RELU[:4]] + [RELU[4] * 0.975])
    assert finding.verdict == "disagrees" and finding.hypothesis == "Δ < 0"
    (_, finding), _ = _rows(tmp_path, _claim("not_higher", ", margin: 5%"), WORSE)
    assert finding.verdict == "agrees"  # +2.6% is significantly below +5%
    (_, finding), _ = _rows(tmp_path, _claim("not_lower"), NULL_LARGE)
    assert finding.verdict == "inconclusive"


def test_no_difference_without_a_margin_is_never_shown(tmp_path):
    (_, finding), rows = _rows(tmp_path, _claim("none"), NULL_SMALL)
    assert finding.verdict == "not rejected (no margin declared: use expect: equivalent)"
    (_, finding), rows = _rows(tmp_path, _claim("none"), WORSE)
    assert finding.verdict == "disagrees"


def test_a_finding_that_repeats_a_delta_rows_test_counts_once(tmp_path):
    (delta_row, finding), rows = _rows(tmp_path, _claim("lower"), WORSE)
    assert family_size(rows) == 1 and delta_row.counted and not finding.counted
    assert finding.p_adjusted == delta_row.p_adjusted == pytest.approx(delta_row.d.p)
    assert finding.verdict == "disagrees" and delta_row.verdict == "worse"


def test_the_committed_multi30k_family_counts_each_test_once(tmp_path, monkeypatch):
    """reports/cpu-mt-multi30k: 6 Δ rows, a finding that repeats one of them (reversed) and shares
    its test, and an equivalence finding whose preconditions fail: 6 distinct tests."""
    monkeypatch.chdir(ROOT)  # the sweep file names its base configs relative to the project
    folder = tmp_path / "cpu-mt-multi30k"
    shutil.copytree(ROOT / "reports" / "cpu-mt-multi30k", folder)
    summary = json.loads((folder / "report.json").read_text())
    overrides = [o for o in summary.get("cli_overrides", []) if not o.startswith("run.root=")]
    sweep = load_sweep(folder / "sweep.yaml", [*overrides, f"run.root={tmp_path}/nowhere"])
    rows = family(Report(sweep, folder, collect(sweep, folder)), sweep.findings)
    assert len(rows) == 8 and family_size(rows) == 6
    shared, equivalence = [c for c in rows if c.kind == "finding"][::-1]
    assert not shared.counted and math.isfinite(shared.p_adjusted)
    assert equivalence.verdict == "not tested here (not converged, not tuned)" and not equivalence.counted


def _curve(start: float, end: float) -> list[dict]:
    return [{"step": s, "val/ppl": start + (end - start) * s / 400} for s in (100, 200, 300, 400)]


def test_an_unmet_precondition_is_not_tested_and_leaves_the_family(tmp_path):
    claim = _claim("not_lower", ", requires: [converged]")
    curves = {"relu": _curve(101.0, 100.0), "gelu": _curve(200.0, 100.0)}  # gelu still falls fast
    (delta_row, finding), rows = _rows(tmp_path, claim, WORSE, curves=curves)
    assert finding.verdict == "not tested here (not converged)"
    assert not finding.counted and math.isnan(finding.p_adjusted) and family_size(rows) == 1
    assert delta_row.verdict == "worse"
    (_, finding), _ = _rows(tmp_path, claim, WORSE)  # no curves: convergence unknown, not met
    assert finding.verdict == "not tested here (not converged)"
    curves["gelu"] = _curve(100.5, 100.0)
    (_, finding), _ = _rows(tmp_path, claim, WORSE, curves=curves)
    assert finding.verdict == "agrees"
    (_, finding), _ = _rows(tmp_path, _claim("lower", ", requires: [tuned, converged]"), WORSE)
    assert finding.verdict == "not tested here (not converged, not tuned)"  # this sweep has no tune:


def test_a_collapsed_baseline_gives_no_verdict_and_a_collapsed_variant_is_marked(tmp_path):
    stock = ["a man stands in front of a building ."] * 10
    varied = [f"sentence {i}" for i in range(10)]
    (delta_row, finding), rows = _rows(tmp_path, _claim("not_lower"), WORSE, hypotheses={"relu": stock, "gelu": varied})
    assert delta_row.verdict == finding.verdict == "no verdict (baseline collapsed)" and family_size(rows) == 0
    (delta_row, _), rows = _rows(tmp_path, _claim("not_lower"), WORSE, hypotheses={"relu": varied, "gelu": stock})
    assert delta_row.verdict == "worse (collapsed)" and family_size(rows) == 2
    assert "| worse (collapsed) |" in "\n".join(delta_table(rows))


def test_zero_spread_is_no_test(tmp_path):
    (delta_row, finding), rows = _rows(tmp_path, _claim("equivalent", ", margin: 1%"), [r + 0.5 for r in RELU])
    assert delta_row.verdict == finding.verdict == "no spread: no test" and family_size(rows) == 0
    assert delta_row.d.method == "no spread" and math.isnan(delta_row.mde)


def test_identical_translations_print_as_such():
    row = {"variant": "v", "seed": 0, "baseline_bleu": 20.0, "bleu": 20.0, "p": 1.0, "identical": True}
    assert bleu_tests_table([row])[-1] == "| v | 0 | 20.00 | 20.00 | +0.00 | identical outputs |"


@pytest.mark.parametrize("finding, message", [
    (_claim("equivalent"), "findings[1]: margin: expect: equivalent needs one"),
    (_claim("lower", ", margin: 1%"), "findings[1]: margin: only expect equivalent, not_lower, not_higher"),
    (_claim("equivalent", ", margin: 1 percent"), "findings[1]: margin: a margin is a percentage"),
    (_claim("equivalent", ", margin: 0"), "findings[1]: margin: equivalence within a margin of 0"),
    (_claim("lower", ", requires: [converged, stable]"), "findings[1]: requires: unknown precondition(s) stable"),
    (_claim("lower", ", requires: converged"), "findings[1]: requires: a list of names"),
    (_claim("same"), "findings[1]: expect must be lower, higher or none, or with a margin equivalent, not_lower "
                     "or not_higher"),
])
def test_bad_finding_keys_name_the_file_and_the_finding(tmp_path, finding, message):
    with pytest.raises(SweepError, match=re.escape("s.yaml: " + message)):
        _sweep(tmp_path, _claim("lower") + finding)


@pytest.mark.parametrize("expect, true", [("equivalent", 1.0), ("equivalent", -1.0), ("not_lower", -1.0),
                                          ("not_higher", 1.0)])
def test_a_claim_agrees_falsely_at_most_at_alpha_on_its_margin(expect, true):
    """Δ exactly on the margin (the claim false, only just): "agrees" at most 5% of the time; TOST
    matches scipy's two one-sided tests."""
    import numpy as np
    from scipy import stats as sps

    from experiments.report import claims, stats

    rng = np.random.default_rng(11)
    agreed, runs = 0, 4000
    for row in rng.normal(true, 1.0, size=(runs, 5)):
        test = claims.claim_test(expect, 1.0, stats.paired(row))
        agreed += test.outcome == "agrees" and test.p < 0.05
    assert agreed / runs <= 0.05 + 0.01
    row = [0.2, -0.3, 0.1, 0.4, -0.1]
    tost = claims.claim_test("equivalent", 1.0, stats.paired(row))
    scipy_p = max(sps.ttest_1samp(row, -1.0, alternative="greater").pvalue,
                  sps.ttest_1samp(row, 1.0, alternative="less").pvalue)
    assert tost.outcome == "agrees" and tost.p == pytest.approx(scipy_p)


def test_convergence_of_a_claim_on_a_metric_without_a_curve_is_read_on_validation_perplexity(tmp_path):
    """BLEU is decoded at the last validation only: a claim on it that requires convergence is
    judged on the curve the adequacy section follows (validation perplexity), not found unknown."""
    claim = _claim("not_lower", ", requires: [converged]").replace("metric: test/ppl", "metric: test/chrf")
    flat = [{"step": s, "val/ppl": 100.0} for s in (100, 200, 300)] + [{"step": 400, "val/ppl": 100.0,
                                                                        "val/chrf": 50.0}]
    sweep = _sweep(tmp_path, claim)
    records = []
    for run in sweep.runs:
        value = (RELU if run.point["model.ffn"] == "relu" else WORSE)[run.seed]
        record = Record(run.name, run.variant, run.seed, "completed", {"test/ppl": value, "test/chrf": value})
        record.curve = flat
        records.append(record)
    (finding,) = [c for c in family(Report(sweep, tmp_path, records), sweep.findings) if c.kind == "finding"]
    assert finding.verdict == "agrees"
