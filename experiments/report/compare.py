"""A report's verdicts: each variant against the baseline on the task's primary metrics, and
each published finding of the sweep file, tested as one family (Holm–Bonferroni), each with its
minimum detectable effect and a verdict worded from the adjusted p-value; and for translation,
sacreBLEU's paired bootstrap of each variant against the baseline on the same seed. The
statistics themselves are :mod:`experiments.report.stats`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

from experiments.report import stats
from experiments.report.collect import Record, Report
from experiments.report.stats import better
from experiments.sweep.findings import FindingSpec, variant_matching
from experiments.sweep.spec import Sweep, SweepError


def delta(records: list[Record], variant: str, against: str, metric: str) -> Optional[stats.Delta]:
    """``variant - against`` of ``metric`` over finished runs: a paired Student-t interval on the
    seeds both ran, Welch's t otherwise (:func:`experiments.report.stats.compare`)."""
    def values(name: str) -> dict[int, Optional[float]]:
        return {r.seed: r.metrics.get(metric) for r in records if r.variant == name and r.finished}

    return stats.compare(values(variant), values(against))


@dataclass
class Comparison:
    """One test of a report's family: a Δ row (variant vs baseline) or a published finding."""

    kind: str  # "delta" | "finding"
    variant: str
    against: str
    metric: str
    d: Optional[stats.Delta]
    claim: Optional[str] = None
    expect: Optional[str] = None  # findings: lower | higher | none
    p_adjusted: float = math.nan
    mde: float = math.nan  # minimum detectable effect, 80% power at the family's Bonferroni level
    verdict: str = ""

    def to_json(self) -> dict[str, Any]:
        d = self.d
        row = {"kind": self.kind, "variant": self.variant, "against": self.against, "metric": self.metric,
               "n": d.n if d else 0, "mean": _num_or_none(d.mean if d else math.nan),
               "low": _num_or_none(d.low if d else math.nan), "high": _num_or_none(d.high if d else math.nan),
               "method": d.method if d else None, "p": _num_or_none(d.p if d else math.nan),
               "p_adjusted": _num_or_none(self.p_adjusted), "mde": _num_or_none(self.mde), "verdict": self.verdict}
        if self.claim is not None:
            row.update(claim=self.claim, expect=self.expect)
        return row


def _num_or_none(value: float) -> Optional[float]:
    return float(value) if value is not None and math.isfinite(value) else None


def family(rep: Report, findings: list[FindingSpec]) -> list[Comparison]:
    """Every comparison of the report (each non-baseline variant on each primary metric, then each
    published finding), tested together: p-values adjusted by Holm–Bonferroni over the family,
    the minimum detectable effect at the family's Bonferroni level (the level Holm asks of the
    smallest p), and a verdict."""
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
        rows.append(Comparison("finding", variant, against, f.metric, delta(rep.records, variant, against, f.metric),
                               claim=f.claim, expect=f.expect))
    pvalues = [c.d.p if c.d else math.nan for c in rows]
    size = sum(math.isfinite(p) for p in pvalues)
    for c, adjusted in zip(rows, stats.holm(pvalues)):
        c.p_adjusted = adjusted
        if c.d is not None and size:
            c.mde = stats.min_detectable(c.d.se, c.d.df, stats.ALPHA / size)
        c.verdict = _verdict(c)
    return rows


def _verdict(c: Comparison) -> str:
    if c.d is None:
        return f"no finished runs with {c.metric} to compare"
    if not math.isfinite(c.d.p):
        return "one seed: no verdict"
    significant = c.p_adjusted < stats.ALPHA
    if c.kind == "delta":
        if not significant:
            return "no detectable difference"
        return "better" if better(c.metric, c.d.mean) else "worse"
    if not significant:
        return "inconclusive"
    if c.expect == "none":
        return "disagrees"
    return "agrees" if (c.d.mean < 0) == (c.expect == "lower") else "disagrees"


def _variant_of(sweep: Sweep, pattern: dict[str, Any]) -> str:
    (found,) = variant_matching(sweep.runs, pattern)  # checked when the sweep file was loaded
    return found


def bleu_tests(rep: Report) -> list[dict[str, Any]]:
    """sacreBLEU's paired bootstrap resampling (1,000 resamples) of each variant against the
    baseline on the same seed's test hypotheses."""
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
                     "bleu": test["system"], "p": test["p"]})
    return rows


