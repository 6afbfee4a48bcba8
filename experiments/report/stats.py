"""Small-sample statistics for seed comparisons: Student-t intervals, Holm–Bonferroni, the
minimum detectable effect, and sacreBLEU's paired bootstrap test between two systems.

A delta over n seeds gets a Student-t 95% interval: paired by seed when both arms ran the same
seeds, Welch's otherwise. A percentile bootstrap over a handful of seeds is not used: with 3
values it returns their min and max, whose coverage of the mean is about 74%, not 95%.

A report compares many pairs at once, so its p-values are adjusted together (Holm 1979), and a
comparison without a significant difference states the smallest effect its seeds could have
detected with 80% power at the family's level (so an underpowered sweep reads as such).

Beside the t test's p, a paired comparison carries the exact sign-flip p (every assignment of
signs to its per-seed differences): it assumes only that the differences are symmetric about
the null, so a verdict that rests on the normal model alone shows (with 5 seeds the smallest
two-sided sign-flip p is 2/32). Differences with no spread at all get no test: a t statistic
over a zero standard error is not evidence, it is a division by zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
from scipy import optimize, stats

ALPHA = 0.05
POWER = 0.80
LOWER_IS_BETTER = ("ppl", "bpb", "loss")  # metric names (after the split/) where less is better


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    arr = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if len(arr) == 0:
        return math.nan, math.nan
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else math.nan


def lower_is_better(metric: str) -> bool:
    return any(metric.split("/")[-1].startswith(k) for k in LOWER_IS_BETTER)


def better(metric: str, d: float) -> bool:
    return d < 0 if lower_is_better(metric) else d > 0


@dataclass
class Delta:
    """The difference ``variant - against`` of one metric over seeds."""

    mean: float
    low: float  # 95% interval (nan with fewer than 2 values per arm)
    high: float
    p: float  # two-sided, unadjusted (nan without an interval)
    n: int  # seeds (paired) or the smaller arm (Welch)
    method: str  # "paired t" | "Welch t" | "one seed" | "no spread"
    se: float  # standard error of the mean difference (nan below 2 values)
    df: float  # degrees of freedom of the t distribution (nan below 2 values)
    base: float  # mean of the ``against`` arm (for the relative change)
    diffs: tuple[float, ...] = ()  # the per-seed differences (paired only): what sign-flipping permutes

    @property
    def relative(self) -> float:
        return self.mean / self.base if self.base else math.nan

    @property
    def sign_flip(self) -> float:
        """The exact two-sided sign-flip p of a paired comparison (nan for Welch, one seed or no spread)."""
        return sign_flip(self.diffs) if self.method == "paired t" else math.nan


def _finite(values: Sequence[Optional[float]]) -> np.ndarray:
    return np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)


def t_interval(se: float, df: float, level: float = 1 - ALPHA) -> float:
    """Half-width of a two-sided Student-t interval."""
    return float(stats.t.ppf(0.5 + level / 2, df) * se)


def _no_spread(values: np.ndarray) -> bool:
    """Every value the same (up to float rounding): no seed-to-seed spread to test against."""
    return float(np.ptp(values)) <= 1e-9 * float(np.abs(values).max())


def paired(diffs: Sequence[float], base: float = math.nan) -> Delta:
    """Paired Student-t on per-seed differences. Identical differences get no interval and no p
    (method "no spread"): their standard error is zero, and a test on it would read any constant
    offset, however small, as certain."""
    d = _finite(diffs)
    mean = float(d.mean()) if len(d) else math.nan
    if len(d) < 2:
        return Delta(mean, math.nan, math.nan, math.nan, len(d), "one seed", math.nan, math.nan, base)
    if _no_spread(d):
        return Delta(mean, math.nan, math.nan, math.nan, len(d), "no spread", 0.0, math.nan, base,
                     tuple(float(x) for x in d))
    se, df = float(d.std(ddof=1) / math.sqrt(len(d))), float(len(d) - 1)
    half = t_interval(se, df)
    p = float(2 * stats.t.sf(abs(mean) / se, df))
    return Delta(mean, mean - half, mean + half, p, len(d), "paired t", se, df, base, tuple(float(x) for x in d))


def welch(a: Sequence[float], b: Sequence[float]) -> Delta:
    """Welch's t on two independent samples (``mean(a) - mean(b)``), Welch–Satterthwaite df."""
    x, y = _finite(a), _finite(b)
    mean = float(x.mean() - y.mean()) if len(x) and len(y) else math.nan
    base = float(y.mean()) if len(y) else math.nan
    n = min(len(x), len(y))
    if n < 2:
        return Delta(mean, math.nan, math.nan, math.nan, n, "one seed", math.nan, math.nan, base)
    if _no_spread(x) and _no_spread(y):  # as in paired(): no variance, no test
        return Delta(mean, math.nan, math.nan, math.nan, n, "no spread", 0.0, math.nan, base)
    va, vb = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    se = float(math.sqrt(va + vb))
    df = float((va + vb) ** 2 / (va ** 2 / (len(x) - 1) + vb ** 2 / (len(y) - 1)))
    half = t_interval(se, df)
    p = float(2 * stats.t.sf(abs(mean) / se, df))
    return Delta(mean, mean - half, mean + half, p, n, "Welch t", se, df, base)


def compare(a: dict[int, float], b: dict[int, float]) -> Optional[Delta]:
    """``a - b`` over seeds (``{seed: value}``): paired on the shared seeds when there are at
    least two of them, else Welch on all values. None when an arm is empty."""
    a = {s: v for s, v in a.items() if v is not None and math.isfinite(v)}
    b = {s: v for s, v in b.items() if v is not None and math.isfinite(v)}
    if not a or not b:
        return None
    shared = sorted(set(a) & set(b))
    if len(shared) >= 2 or (shared and (len(a) < 2 or len(b) < 2)):
        return paired([a[s] - b[s] for s in shared], float(np.mean([b[s] for s in shared])))
    return welch(list(a.values()), list(b.values()))


def sign_flip(diffs: Sequence[float], shift: float = 0.0, alternative: str = "two-sided") -> float:
    """Exact sign-flip (permutation) p of the mean of ``diffs`` against ``shift``: the share of all
    2^n sign assignments of ``diffs - shift`` whose mean is at least as extreme as the observed one
    ("two-sided": in absolute value; "greater"/"less": in that direction). Valid when the
    differences are symmetric about ``shift`` under the null, with no normal model; nan beyond 16
    values (65,536 assignments) or below 2."""
    x = _finite(diffs) - shift
    if not 2 <= len(x) <= 16:
        return math.nan
    signs = 1 - 2 * ((np.arange(2 ** len(x))[:, None] >> np.arange(len(x))) & 1)
    means, observed = (signs * x).mean(axis=1), x.mean()
    tie = 1e-12 * max(float(np.abs(x).max()), 1e-300)  # the same mean, up to float rounding
    if alternative == "two-sided":
        hits = np.abs(means) >= abs(observed) - tie
    elif alternative == "greater":
        hits = means >= observed - tie
    elif alternative == "less":
        hits = means <= observed + tie
    else:
        raise ValueError(f"alternative must be two-sided, greater or less, got {alternative!r}")
    return float(hits.mean())


def t_p(d: Delta, shift: float = 0.0, alternative: str = "two-sided") -> float:
    """The t test's p of ``d.mean`` against ``shift`` (same alternatives as :func:`sign_flip`;
    nan without a standard error)."""
    if not (d.se > 0 and math.isfinite(d.df)):
        return math.nan
    t = (d.mean - shift) / d.se
    if alternative == "greater":
        return float(stats.t.sf(t, d.df))
    if alternative == "less":
        return float(stats.t.cdf(t, d.df))
    return float(2 * stats.t.sf(abs(t), d.df))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (nan entries are left out of the family and stay nan)."""
    idx = [i for i, p in enumerate(pvalues) if p is not None and math.isfinite(p)]
    order = sorted(idx, key=lambda i: pvalues[i])
    m = len(order)
    adjusted = [math.nan] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def power(effect: float, se: float, df: float, alpha: float = ALPHA) -> float:
    """Power of the two-sided t test at level ``alpha`` to detect a true difference ``effect``
    when the mean difference has standard error ``se`` (non-central t)."""
    if not (se > 0 and math.isfinite(df)):
        return math.nan
    crit = stats.t.ppf(1 - alpha / 2, df)
    nc = abs(effect) / se
    upper = stats.nct.sf(crit, df, nc)
    lower = stats.nct.cdf(-crit, df, nc)  # the wrong-sign rejections: tiny, and nan far in the tail
    return float(upper + (lower if math.isfinite(lower) else 0.0))


def min_detectable(se: float, df: float, alpha: float = ALPHA, target: float = POWER) -> float:
    """The smallest true difference the t test detects with probability ``target`` at level
    ``alpha``, given the observed standard error (nan when it cannot be estimated)."""
    if not (se > 0 and math.isfinite(df)):
        return math.nan
    crit = stats.t.ppf(1 - alpha / 2, df)
    hi = se * (crit + 50.0)
    return float(optimize.brentq(lambda e: power(e, se, df, alpha) - target, 0.0, hi, xtol=1e-12 * hi))


def percentile_bootstrap(diffs: Sequence[float], samples: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """The 95% percentile-bootstrap interval of a mean (kept only to show, in tests, why it is
    not used for a handful of seeds)."""
    rng = np.random.default_rng(seed)
    a = np.asarray(diffs, dtype=float)
    means = a[rng.integers(0, len(a), (samples, len(a)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


# ------------------------------------------------------------------------------ BLEU between systems

def paired_bootstrap_bleu(baseline: Sequence[str], system: Sequence[str], references: Sequence[str],
                          samples: int = 1000) -> dict[str, Any]:
    """sacreBLEU's paired bootstrap resampling test (Koehn 2004) of ``system`` against
    ``baseline`` on one test set: their BLEU, and the p-value that the difference arose by
    chance (sacreBLEU's fixed seed, so the result is reproducible). Identical outputs get p = 1
    and ``identical``: sacreBLEU would return 1/(samples + 1), as if ties were evidence."""
    from sacrebleu.metrics import BLEU
    from sacrebleu.significance import PairedTest

    if not len(baseline) == len(system) == len(references):
        raise ValueError(f"{len(baseline)} baseline, {len(system)} system hypotheses and "
                         f"{len(references)} references: they must be line-aligned")
    if list(baseline) == list(system):  # resampling identical outputs can only tie: nothing to test
        score = float(BLEU(tokenize="13a").corpus_score(list(system), [list(references)]).score)
        return {"baseline": score, "system": score, "p": 1.0, "identical": True}
    test = PairedTest([("baseline", list(baseline)), ("system", list(system))], {"BLEU": BLEU(tokenize="13a")},
                      [list(references)], test_type="bs", n_samples=samples)
    _, scores = test()
    base, sys = scores["BLEU"]
    return {"baseline": float(base.score), "system": float(sys.score), "p": float(sys.p_value), "identical": False}
