"""What a comparison of a report tests, and whether it may be tested here at all.

A published finding states what it expects of ``variant - against`` (Δ):

- ``lower`` / ``higher``: the two-sided t test, its sign read against the claim.
- ``none`` (no difference): the same two-sided test; it can reject the claim, never show it.
- ``equivalent``: TOST (Schuirmann 1987), two one-sided tests that Δ lies inside ±margin
  (before adjustment: the 90% interval inside the margin); the claim is contradicted when Δ lies
  significantly outside the margin (the two-sided test of the nearer edge rejects: before
  adjustment, the 95% interval clears it).
- ``not_lower`` / ``not_higher``: the one-sided test that Δ > −margin (or Δ < margin), the
  margin 0 unless declared; contradicted when Δ lies significantly beyond it (two-sided).

A claim with a margin is a three-way decision between two disjoint alternatives ("agrees" and
"disagrees"); the row enters the family with the smaller of the two p-values and its verdict
names the alternative it came from. Only one of the two nulls can be true (except on the edge
itself), so a rejection is an error only when it is of the true one, as for lower/higher.

Before any test: a finding's ``requires`` (the runs converged, the variants were tuned) must
hold, and the arm a comparison is measured ``against`` must not have collapsed (a translation
model that ignores its source is no reference point); otherwise the row is no test and leaves
the family.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from experiments.report import adequacy, stats
from experiments.report.collect import Report
from experiments.sweep.findings import WITH_MARGIN, parse_margin
from experiments.sweep.tuning import TUNING_FILE

TWO_SIDED = ("lower", "higher", "none")  # the kinds a Δ row's own test answers


@dataclass
class ClaimTest:
    """The test of a claim with a margin, as it enters the family."""

    p: float  # the smaller of the "agrees" and "disagrees" p-values (nan: no test)
    p_sign_flip: float  # the same test by exact sign-flipping of the per-seed differences
    outcome: str  # "agrees" | "disagrees": the alternative ``p`` belongs to
    hypothesis: str  # that alternative, as the table prints it, e.g. "|Δ| < 1.41"


def margin_of(spec: Any, d: stats.Delta) -> float:
    """A declared margin in the metric's units: a relative one ("1%") of the against arm's mean."""
    if spec is None:
        return 0.0
    amount, relative = parse_margin(spec)
    return amount * abs(d.base) if relative else amount


def claim_test(expect: str, margin: float, d: stats.Delta) -> ClaimTest:
    """The two tests of an ``equivalent``, ``not_lower`` or ``not_higher`` claim on ``d``, each by
    t and by sign-flip, kept as the one with the smaller t p."""
    assert expect in WITH_MARGIN, expect
    m, x = margin, d.diffs if d.method == "paired t" else ()

    def both(shift: float, alternative: str) -> tuple[float, float]:
        flip = stats.sign_flip(x, shift, alternative) if x else math.nan
        return stats.t_p(d, shift, alternative), flip

    def two(edge_t: tuple[float, float]) -> tuple[float, float]:  # one-sided p doubled: the two-sided test
        return min(1.0, 2 * edge_t[0]), min(1.0, 2 * edge_t[1])

    edge, below = f"{m:.4g}", f"−{m:.4g}" if m else "0"
    if expect == "equivalent":
        low, high = both(-m, "greater"), both(m, "less")
        agree = (max(low[0], high[0]), max(low[1], high[1]))
        disagree = two(both(m, "greater")) if d.mean > 0 else two(both(-m, "less"))
        texts = (f"|Δ| < {edge} (TOST)", f"|Δ| > {edge}")
    elif expect == "not_lower":
        agree, disagree = both(-m, "greater"), two(both(-m, "less"))
        texts = (f"Δ > {below} (one-sided)", f"Δ < {below}")
    else:
        agree, disagree = both(m, "less"), two(both(m, "greater"))
        texts = (f"Δ < {edge} (one-sided)", f"Δ > {edge}")
    if disagree[0] < agree[0]:
        return ClaimTest(disagree[0], disagree[1], "disagrees", texts[1])
    return ClaimTest(agree[0], agree[1], "agrees", texts[0])


def unmet(rep: Report, requires: Sequence[str], arms: Sequence[str], metric: str) -> list[str]:
    """The preconditions of ``requires`` that ``arms`` do not meet here, as the verdict names them
    ("not converged", "not tuned"); unknown convergence counts as not met."""
    missing = []
    # read on the validation curve the adequacy section follows (BLEU, decoded at the end only: perplexity)
    curve = adequacy.validation_metric(rep.records, metric, arms)
    if "converged" in requires and not (curve and all(adequacy.converged(rep.records, a, curve) for a in arms)):
        missing.append("not converged")
    if "tuned" in requires and not _tuned(rep, arms):
        missing.append("not tuned")
    return missing


def _tuned(rep: Report, arms: Sequence[str]) -> bool:
    path = rep.out / TUNING_FILE
    if rep.sweep.tune is None or not path.is_file():
        return False
    chosen = json.loads(path.read_text()).get("variants") or {}
    return all((chosen.get(a) or {}).get("chosen") is not None for a in arms)


def collapsed(rep: Report, variant: str) -> bool:
    """A majority of the variant's finished seeds collapsed (:func:`adequacy.collapsed`)."""
    done = [r for r in rep.records if r.variant == variant and r.finished]
    sources = len(rep.references) if rep.references else None
    return sum(adequacy.collapsed(r, sources) is not None for r in done) * 2 > len(done) > 0


def no_test(d: Optional[stats.Delta], metric: str) -> Optional[str]:
    """Why ``d`` cannot be tested (the verdict), or None when it can."""
    if d is None:
        return f"no finished runs with {metric} to compare"
    if d.method == "no spread":
        return "no spread: no test"
    if not math.isfinite(d.p):
        return "one seed: no verdict"
    return None
