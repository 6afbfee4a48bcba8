"""Seed statistics: interval coverage by simulation, agreement with scipy's tests, Holm, the
minimum detectable effect, and sacreBLEU's paired bootstrap."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from experiments.report import stats

SIMULATIONS = 4000


def _coverage_paired(n: int, rng) -> float:
    true = 1.5
    diffs = rng.normal(true, 2.0, size=(SIMULATIONS, n))
    hits = 0
    for row in diffs:
        d = stats.paired(row)
        hits += d.low <= true <= d.high
    return hits / SIMULATIONS


@pytest.mark.parametrize("n", [3, 5])
def test_paired_t_interval_covers_95_percent(n):
    rng = np.random.default_rng(100 + n)
    assert _coverage_paired(n, rng) == pytest.approx(0.95, abs=0.02)


@pytest.mark.parametrize("n", [3, 5])
def test_welch_interval_covers_95_percent_with_unequal_spreads(n):
    rng = np.random.default_rng(200 + n)
    true, hits = -0.7, 0
    for _ in range(SIMULATIONS):
        d = stats.welch(rng.normal(10 + true, 1.0, n), rng.normal(10, 2.5, n + 1))
        hits += d.low <= true <= d.high
    assert hits / SIMULATIONS == pytest.approx(0.95, abs=0.02)


@pytest.mark.parametrize("n", [3, 5])
def test_percentile_bootstrap_over_seeds_falls_short_of_95_percent(n):
    """The interval the reports used before: over 3-5 seeds it is barely wider than min-max."""
    rng = np.random.default_rng(300 + n)
    true, hits, runs = 1.5, 0, 1000
    for row in rng.normal(true, 2.0, size=(runs, n)):
        low, high = stats.percentile_bootstrap(row, samples=2000)
        hits += low <= true <= high
    coverage = hits / runs
    assert coverage < 0.93, coverage  # 0.95 ± 0.02 is what the t interval reaches above
    if n == 3:
        row = [1.0, 4.0, 2.5]
        assert stats.percentile_bootstrap(row) == (1.0, 4.0)  # exactly min and max


def test_paired_and_welch_match_scipy():
    a, b = [3.1, 2.2, 5.0, 4.1], [2.0, 2.5, 3.5, 3.0]
    d = stats.paired(np.subtract(a, b))
    assert d.p == pytest.approx(sps.ttest_rel(a, b).pvalue)
    w = stats.welch(a, b[:3])
    assert w.p == pytest.approx(sps.ttest_ind(a, b[:3], equal_var=False).pvalue)
    assert w.method == "Welch t" and d.method == "paired t"


def test_the_committed_cpu_mt_norm_delta():
    """Pre-LN − Post-LN test perplexity of reports/cpu-mt-norm: the old report's percentile
    bootstrap gave [−27.88, −9.16], "better"; the t interval includes zero."""
    d = stats.paired([-10.23, -27.88, -9.16])
    assert (d.low, d.high) == (pytest.approx(-41.9, abs=0.05), pytest.approx(10.4, abs=0.05))
    assert d.p == pytest.approx(0.12, abs=0.005)


def test_compare_pairs_shared_seeds_else_welch_and_one_seed_has_no_interval():
    d = stats.compare({0: 1.0, 1: 2.0, 2: 4.0}, {0: 0.5, 1: 1.0, 2: 3.0})
    assert d.method == "paired t" and d.n == 3 and d.mean == pytest.approx(5 / 6)
    d = stats.compare({0: 1.0, 1: 2.0}, {5: 0.5, 6: 1.0, 7: 1.5})
    assert d.method == "Welch t" and d.mean == pytest.approx(0.5)
    d = stats.compare({0: 1.0}, {0: 0.5})
    assert d.method == "one seed" and math.isnan(d.low) and math.isnan(d.p)
    assert stats.compare({0: 1.0}, {}) is None


def test_holm_adjustment():
    adjusted = stats.holm([0.01, 0.04, 0.03, 0.005, math.nan])
    assert adjusted[:4] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert math.isnan(adjusted[4])
    assert stats.holm([0.5, 0.9]) == [1.0, 1.0]


@pytest.mark.parametrize("n, alpha", [(3, 0.05), (5, 0.05 / 10)])
def test_min_detectable_effect_has_80_percent_power(n, alpha):
    sd = 2.0
    se, df = sd / math.sqrt(n), n - 1
    mde = stats.min_detectable(se, df, alpha)
    assert stats.power(mde, se, df, alpha) == pytest.approx(0.8, abs=1e-6)
    rng = np.random.default_rng(7)
    # the t test on data whose true effect is the MDE rejects at about that rate
    rejected = sum(stats.paired(rng.normal(mde, sd, n)).p < alpha for _ in range(SIMULATIONS))
    assert rejected / SIMULATIONS == pytest.approx(0.8, abs=0.025)
    assert stats.min_detectable(se, df, alpha) > stats.min_detectable(se / 2, df, alpha)


def test_paired_bootstrap_bleu_tells_a_better_system_from_the_same_one():
    refs = [f"the cat number {i} sat on the mat near the door" for i in range(60)]
    good = list(refs)
    bad = [" ".join(r.split()[:4]) for r in refs]
    # two systems of equal quality that err on different sentences
    one = [r if i % 2 else " ".join(r.split()[:6]) for i, r in enumerate(refs)]
    two = [r if i % 2 == 0 else " ".join(r.split()[:6]) for i, r in enumerate(refs)]
    same = stats.paired_bootstrap_bleu(one, two, refs, samples=200)
    assert same["system"] == pytest.approx(same["baseline"], abs=1.0) and same["p"] > 0.2
    better = stats.paired_bootstrap_bleu(bad, good, refs, samples=200)
    assert better["system"] == pytest.approx(100.0) and better["p"] < 0.01
    with pytest.raises(ValueError, match="line-aligned"):
        stats.paired_bootstrap_bleu(bad, good[:-1], refs)


def test_identical_outputs_have_p_one_not_one_over_the_resamples():
    """sacreBLEU returns 1/1001 for a system against itself: every resample ties."""
    refs = [f"the cat number {i} sat on the mat near the door" for i in range(30)]
    hyps = [" ".join(r.split()[:6]) for r in refs]
    same = stats.paired_bootstrap_bleu(hyps, list(hyps), refs)
    assert same["p"] == 1 and same["identical"] and same["system"] == same["baseline"] > 0
    assert not stats.paired_bootstrap_bleu(hyps, refs, refs, samples=100)["identical"]


def test_zero_spread_is_no_test():
    d = stats.paired([0.43, 0.43])
    assert math.isnan(d.p) and d.method == "no spread" and math.isnan(d.low) and math.isnan(d.sign_flip)
    assert stats.paired([0.1 + 0.2, 0.3, 0.6 - 0.3]).method == "no spread"  # float rounding is no spread
    assert stats.paired([0.0, 0.0, 0.0]).method == "no spread"
    w = stats.welch([2.0, 2.0, 2.0], [1.0, 1.0])
    assert math.isnan(w.p) and w.method == "no spread" and w.mean == 1.0
    assert stats.welch([2.0, 2.0, 2.0], [1.0, 1.5]).method == "Welch t"  # one arm varies: a test
    d = stats.compare({0: 1.0, 1: 2.0}, {0: 0.5, 1: 1.5})
    assert d.method == "no spread" and math.isnan(stats.min_detectable(d.se, d.df))


def test_sign_flip_is_exact():
    assert stats.sign_flip([1, 2, 3, 4, 5]) == 2 / 32  # only all-plus and all-minus are as extreme
    assert stats.sign_flip([1, 2, 3, 4, 5], alternative="greater") == 1 / 32
    assert stats.sign_flip([1, 2, 3, 4, 5], alternative="less") == 1.0
    assert stats.sign_flip([1, -2, 3, 4, 5]) == 6 / 32  # flips of 1 or 2 reach |mean| 2.2 or more too
    assert stats.sign_flip([1, -2, 3, -4, 5]) > 0.5
    assert stats.sign_flip([6, 7, 8], shift=5, alternative="greater") == 1 / 8
    assert math.isnan(stats.sign_flip([1.0])) and math.isnan(stats.sign_flip(range(1, 18)))
    d = stats.paired([1.0, 2.0, 3.0, 4.0, 5.0])
    assert d.sign_flip == 2 / 32 and d.p < 0.02  # the t test's p is far below what 5 seeds can show exactly
    assert math.isnan(stats.welch([1.0, 2.0, 3.0], [0.0, 0.5]).sign_flip)


def test_one_sided_t_p_matches_scipy():
    diffs = [0.3, -0.1, 0.5, 0.2, 0.4]
    d = stats.paired(diffs)
    for alternative in ("greater", "less", "two-sided"):
        expected = sps.ttest_1samp(np.subtract(diffs, -0.2), 0.0, alternative=alternative).pvalue
        assert stats.t_p(d, -0.2, alternative) == pytest.approx(expected)
