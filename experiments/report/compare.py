"""A report's verdicts: each variant against the baseline on the task's primary metrics, and
each published finding of the sweep file, tested as one family (Holm–Bonferroni), each with its
minimum detectable effect and a verdict worded from the adjusted p-value; and for translation,
sacreBLEU's paired bootstrap of each variant against the baseline on the same seed. The
statistics themselves are :mod:`experiments.report.stats`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

from experiments.report import claims, stats
from experiments.report.collect import Record, Report
from experiments.report.stats import better
from experiments.sweep.findings import WITH_MARGIN, FindingSpec, variant_matching
from experiments.sweep.spec import Sweep, SweepError


def delta(records: list[Record], variant: str, against: str, metric: str) -> Optional[stats.Delta]:
    """``variant - against`` of ``metric`` over finished runs: a paired Student-t interval on the
    seeds both ran, Welch's t otherwise (:func:`experiments.report.stats.compare`)."""
    def values(name: str) -> dict[int, Optional[float]]:
        return {r.seed: r.metrics.get(metric) for r in records if r.variant == name and r.finished}

    return stats.compare(values(variant), values(against))


@dataclass
class Comparison:
    """One row of a report's tests: a Δ row (variant vs baseline) or a published finding."""

    kind: str  # "delta" | "finding"
    variant: str
    against: str
    metric: str
    d: Optional[stats.Delta]
    claim: Optional[str] = None
    expect: Optional[str] = None  # findings: experiments.sweep.findings.EXPECTS
    margin: float = math.nan  # findings with a margin: in the metric's units
    requires: tuple[str, ...] = ()
    hypothesis: str = ""  # what ``p`` tests when it is not the two-sided test of Δ = 0
    outcome: str = ""  # claims with a margin: the verdict when ``p`` is significant (agrees | disagrees)
    p: float = math.nan  # the p this row enters the family with (nan: no test here)
    p_sign_flip: float = math.nan  # the same test by exact sign-flipping (paired only)
    counted: bool = False  # adds a test to the family (False: no test, or the same test as an earlier row)
    p_adjusted: float = math.nan
    mde: float = math.nan  # minimum detectable effect, 80% power at the family's Bonferroni level
    verdict: str = ""

    def to_json(self) -> dict[str, Any]:
        d = self.d
        row = {"kind": self.kind, "variant": self.variant, "against": self.against, "metric": self.metric,
               "n": d.n if d else 0, "mean": _num_or_none(d.mean if d else math.nan),
               "low": _num_or_none(d.low if d else math.nan), "high": _num_or_none(d.high if d else math.nan),
               "method": d.method if d else None, "p": _num_or_none(self.p),
               "p_sign_flip": _num_or_none(self.p_sign_flip),
               "p_adjusted": _num_or_none(self.p_adjusted), "mde": _num_or_none(self.mde), "verdict": self.verdict}
        if self.claim is not None:
            row.update(claim=self.claim, expect=self.expect)
        if math.isfinite(self.margin):
            row["margin"] = self.margin
        if self.hypothesis:
            row["test"] = self.hypothesis
        if self.requires:
            row["requires"] = list(self.requires)
        return row


def _num_or_none(value: float) -> Optional[float]:
    return float(value) if value is not None and math.isfinite(value) else None


def family(rep: Report, findings: list[FindingSpec]) -> list[Comparison]:
    """Every comparison of the report (each non-baseline variant on each primary metric, then each
    published finding), tested together: p-values adjusted by Holm–Bonferroni over the family's
    distinct tests, the minimum detectable effect at the family's Bonferroni level (the level Holm
    asks of the smallest p), and a verdict. A row that may not be tested here (a precondition
    unmet, the arm it is measured against collapsed) is no test and stays out of the family; a
    finding that is the same two-sided test as an earlier row shares its p and counts once."""
    rows: list[Comparison] = []
    base = rep.sweep.baseline
    if base:
        for variant in rep.sweep.variants:
            if variant != base:
                rows += [Comparison("delta", variant, base, m, delta(rep.records, variant, base, m))
                         for m in rep.primary()]
    for f in findings:
        variant = _variant_of(rep.sweep, f.variant)
        against = _variant_of(rep.sweep, f.against) if f.against else base
        d = delta(rep.records, variant, against, f.metric)
        margin = claims.margin_of(f.margin, d) if d and f.expect in WITH_MARGIN else math.nan
        rows.append(Comparison("finding", variant, against, f.metric, d, claim=f.claim, expect=f.expect,
                               margin=margin, requires=tuple(f.requires)))
    excluded = {i: why for i, c in enumerate(rows) if (why := _excluded(rep, c))}
    shared: dict[int, int] = {}  # row -> the earlier row whose test it is
    first: dict[tuple, int] = {}
    for i, c in enumerate(rows):
        if i in excluded or claims.no_test(c.d, c.metric):
            continue
        _test(c)
        if c.kind == "finding" and c.expect not in claims.TWO_SIDED:
            c.counted = True
            continue
        key = (frozenset((c.variant, c.against)), c.metric)
        shared[i] = first.setdefault(key, i)
        c.counted = shared[i] == i
    counted = [i for i, c in enumerate(rows) if c.counted]
    size = len(counted)
    for i, adjusted in zip(counted, stats.holm([rows[i].p for i in counted])):
        rows[i].p_adjusted = adjusted
    for i, c in enumerate(rows):
        if i in shared:
            c.p_adjusted = rows[shared[i]].p_adjusted
        if (c.counted or i in shared) and c.d is not None:
            c.mde = stats.min_detectable(c.d.se, c.d.df, stats.ALPHA / size)
        c.verdict = excluded.get(i) or _verdict(c) + (" (collapsed)" if claims.collapsed(rep, c.variant) else "")
    return rows


def family_size(comparisons: list[Comparison]) -> int:
    """How many distinct tests the family holds (the m of Holm and of the MDE's level α/m)."""
    return sum(c.counted for c in comparisons)


def _excluded(rep: Report, c: Comparison) -> Optional[str]:
    """The verdict of a row that is no test here: a finding's precondition unmet, an arm whose runs
    all diverged, or the arm it is measured against collapsed in most of its seeds."""
    if c.kind == "finding" and (missing := claims.unmet(rep, c.requires, (c.variant, c.against), c.metric)):
        return f"not tested here ({', '.join(missing)})"
    if c.d is None:  # an arm without a finished run: say so when every run of it diverged
        for arm in (c.variant, c.against):
            states = [r.state for r in rep.records if r.variant == arm]
            if states and all(s == "diverged" for s in states):
                share = f"{len(states)}/{len(states)}"
                return f"diverged ({share})" if arm == c.variant else f"no verdict ({arm} diverged {share})"
    if claims.collapsed(rep, c.against):
        return "no verdict (baseline collapsed)" if c.against == rep.sweep.baseline else \
            f"no verdict ({c.against} collapsed)"
    return None


def _test(c: Comparison) -> None:
    """Fill in the row's test: the two-sided t test of Δ = 0, or for a claim with a margin its
    TOST or one-sided test (:func:`experiments.report.claims.claim_test`)."""
    if c.kind == "finding" and c.expect not in claims.TWO_SIDED:
        test = claims.claim_test(c.expect, c.margin, c.d)
        c.p, c.p_sign_flip, c.hypothesis, c.outcome = test.p, test.p_sign_flip, test.hypothesis, test.outcome
    else:
        c.p, c.p_sign_flip = c.d.p, c.d.sign_flip


def _verdict(c: Comparison) -> str:
    if (why := claims.no_test(c.d, c.metric)):
        return why
    significant = c.p_adjusted < stats.ALPHA
    if c.kind == "delta":
        if not significant:
            return "no detectable difference"
        return "better" if better(c.metric, c.d.mean) else "worse"
    if c.expect == "none":
        return "disagrees" if significant else "not rejected (no margin declared: use expect: equivalent)"
    if c.expect in ("lower", "higher"):
        if not significant:
            return "inconclusive"
        return "agrees" if (c.d.mean < 0) == (c.expect == "lower") else "disagrees"
    return c.outcome if significant else "inconclusive"  # equivalent, not_lower, not_higher


def _variant_of(sweep: Sweep, pattern: dict[str, Any]) -> str:
    (found,) = variant_matching(sweep.runs, pattern)  # checked when the sweep file was loaded
    return found


def bleu_tests(rep: Report) -> list[dict[str, Any]]:
    """sacreBLEU's paired bootstrap resampling (1,000 resamples) of each variant against the
    baseline on the same seed's test hypotheses (``identical``: the same outputs line for line,
    p = 1 without resampling)."""
    refs = rep.references
    if refs is None or not rep.sweep.baseline:
        return []
    base = {r.seed: r for r in rep.records if r.variant == rep.sweep.baseline and r.finished and r.hypotheses}
    rows = []
    for r in rep.records:
        b = base.get(r.seed)
        if r.variant == rep.sweep.baseline or b is None or not r.finished or not r.hypotheses:
            continue
        if not len(r.hypotheses) == len(b.hypotheses) == len(refs):
            raise SweepError(f"{rep.out}: {r.name} has {len(r.hypotheses)} test hypotheses, {b.name} "
                             f"{len(b.hypotheses)}, test.ref {len(refs)} lines: they must be line-aligned")
        test = stats.paired_bootstrap_bleu(b.hypotheses, r.hypotheses, refs)
        rows.append({"variant": r.variant, "against": b.variant, "seed": r.seed, "baseline_bleu": test["baseline"],
                     "bleu": test["system"], "p": test["p"], **({"identical": True} if test["identical"] else {})})
    return rows


