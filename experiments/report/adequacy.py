"""Was the budget enough, and did the runs learn the task? Read off the run files alone.

- A variant is *converged* on a validation metric when, averaged over its finished seeds, the
  metric improved by less than :data:`STILL_IMPROVING` (relative) over the last quarter of its
  training; otherwise a verdict about it is a verdict about this budget.
- A translation run is *collapsed* when it ignores its source: fewer distinct test outputs than
  half the test sources, or (runs that logged it) BLEU with shuffled sources close to BLEU with the
  true ones on the same validation sentences (:data:`SHUFFLED_CLOSE`).
- A Δ row's *gap* is followed through training on its validation counterpart: at each of
  :data:`FRACTIONS` of training it is "converging" when the gap's size shrank by more than
  :data:`TREND` from half-way to the end, "diverging" when it grew by more, else "stable"; a
  verdict on a diverging gap would likely be stronger with more steps, one on a converging gap
  weaker.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from experiments.report.collect import Record

STILL_IMPROVING = 0.02  # relative improvement over the last quarter above which a run is still learning
SHUFFLED_CLOSE = 0.7  # shuffled-source BLEU at least this share of true-source BLEU: the source is ignored
TRANSLATES = 1.0  # validation BLEU with the true sources below this: the model does not translate at all
SHUFFLED_KEY, TRUE_KEY = "test/src_shuffled_bleu", "test/src_check_bleu"  # logged by translation runs
FRACTIONS = (0.25, 0.5, 0.75, 1.0)  # of each run's training, where a gap is read
TREND = 0.25  # the gap's size shrinking (growing) by more than this share from 50% to 100%: converging (diverging)
TREND_FLOOR = 0.005  # gaps under half a percent at both points are "stable" whatever their ratio


def value_at(curve: Sequence[dict], metric: str, step: float) -> Optional[float]:
    """``metric`` at ``step``, linearly interpolated between the logged validation points (None
    outside them or without any)."""
    points = sorted((row["step"], row[metric]) for row in curve
                    if row.get(metric) is not None and math.isfinite(row[metric]))
    if not points or step < points[0][0] or step > points[-1][0]:
        return None
    for (s0, v0), (s1, v1) in zip(points, points[1:]):
        if s0 <= step <= s1:
            return v0 if s1 == s0 else v0 + (v1 - v0) * (step - s0) / (s1 - s0)
    return points[-1][1]


def last_step(record: Record, metric: str) -> Optional[float]:
    steps = [row["step"] for row in record.curve if row.get(metric) is not None]
    return max(steps) if steps else None


def value_at_fraction(record: Record, metric: str, fraction: float) -> Optional[float]:
    """``metric`` at ``fraction`` of the run's training, its last validation step being the end
    (steps count from 0: a quarter of a run validated last at step 999 is step 249)."""
    end = last_step(record, metric)
    return None if end is None else value_at(record.curve, metric, fraction * (end + 1) - 1)


def improvement(record: Record, metric: str, start: float = 0.75) -> Optional[float]:
    """Relative improvement of a validation metric from ``start`` of the run's logged curve to its
    end (positive: it got better; lower-is-better metrics count a decrease as improvement)."""
    from experiments.report.stats import lower_is_better

    first, last = value_at_fraction(record, metric, start), value_at_fraction(record, metric, 1.0)
    if first is None or last is None or first == 0:
        return None
    change = (last - first) / abs(first)
    return -change if lower_is_better(metric) else change


def still_improving(records: Sequence[Record], variant: str, metric: str) -> Optional[float]:
    """The mean over a variant's finished seeds of :func:`improvement` over the last quarter
    (None: no seed logged the metric at three-quarters and at the end)."""
    values = [v for r in records if r.variant == variant and r.finished
              and (v := improvement(r, metric)) is not None]
    return sum(values) / len(values) if values else None


def converged(records: Sequence[Record], variant: str, metric: str) -> Optional[bool]:
    """True when the variant improved by less than :data:`STILL_IMPROVING` over its last quarter
    (None: not known from its curves)."""
    change = still_improving(records, variant, metric)
    return None if change is None else change < STILL_IMPROVING


def collapsed(record: Record, sources: Optional[int] = None) -> Optional[str]:
    """Why a finished translation run ignores its source, or None when nothing shows it does."""
    if record.hypotheses:
        n = sources or len(record.hypotheses)
        distinct = len(set(record.hypotheses))
        if distinct < n / 2:
            return f"{distinct} distinct output{'s' * (distinct != 1)} for {n} test sources"
    shuffled, true = record.metrics.get(SHUFFLED_KEY), record.metrics.get(TRUE_KEY)
    if true is not None and true < TRANSLATES:
        return f"BLEU {true:.1f} with its true sources: it does not translate"
    if shuffled is not None and true is not None and shuffled >= SHUFFLED_CLOSE * true:
        return f"BLEU {shuffled:.1f} with shuffled sources against {true:.1f} with the true ones"
    return None


def validation_metric(records: Sequence[Record], metric: str, variants: Sequence[str]) -> Optional[str]:
    """The validation metric a Δ row on ``metric`` is followed on: its ``val/`` counterpart when
    every one of ``variants`` has a finished run that logged it at two steps or more, else
    ``val/ppl`` (BLEU is decoded at the end of training only), else None."""
    def curve_of(variant: str, key: str) -> bool:
        return any(r.variant == variant and r.finished and sum(row.get(key) is not None for row in r.curve) >= 2
                   for r in records)

    for key in dict.fromkeys(("val/" + metric.split("/", 1)[-1], "val/ppl")):
        if all(curve_of(v, key) for v in variants):
            return key
    return None


def gap_at(records: Sequence[Record], variant: str, against: str, metric: str, fraction: float) -> Optional[float]:
    """The relative gap ``variant − against`` on a validation metric at ``fraction`` of training:
    the difference of the two means over the seeds both finished with a value there, divided by
    the size of ``against``'s mean (None: no such seed)."""
    def values(name: str) -> dict[int, float]:
        return {r.seed: v for r in records if r.variant == name and r.finished
                and (v := value_at_fraction(r, metric, fraction)) is not None}

    mine, theirs = values(variant), values(against)
    seeds = sorted(mine.keys() & theirs.keys())
    if not seeds:
        return None
    base = sum(theirs[s] for s in seeds) / len(seeds)
    return (sum(mine[s] for s in seeds) / len(seeds) - base) / abs(base) if base else None


def trend(half: Optional[float], end: Optional[float]) -> Optional[str]:
    """"crossed" when the gap changed sign from half-way to the end (both beyond
    :data:`TREND_FLOOR`); else "converging" when its size at the end is more than :data:`TREND`
    below its size half-way, "diverging" when more than :data:`TREND` above, else "stable" (also
    when both are below :data:`TREND_FLOOR`: a ratio of two tiny gaps is noise); None when one is
    missing."""
    if half is None or end is None:
        return None
    if max(abs(half), abs(end)) < TREND_FLOOR:
        return "stable"
    if half * end < 0 and min(abs(half), abs(end)) >= TREND_FLOOR:
        return "crossed"  # the ranking flipped between half-way and the end
    if abs(end) < (1 - TREND) * abs(half):
        return "converging"
    return "diverging" if abs(end) > (1 + TREND) * abs(half) else "stable"


@dataclass
class Gap:
    """One Δ row followed through training."""

    variant: str
    against: str
    metric: str  # the Δ row's metric
    validation: Optional[str]  # the validation metric it is followed on (None: no curves)
    gaps: list[Optional[float]]  # relative, at FRACTIONS
    trend: Optional[str]
    still_improving: Optional[float]  # the variant's own improvement over its last quarter

    def to_json(self) -> dict[str, Any]:
        return {"variant": self.variant, "against": self.against, "metric": self.metric,
                "validation": self.validation, "fractions": list(FRACTIONS), "gaps": self.gaps,
                "trend": self.trend, "still_improving": self.still_improving}


def gaps(records: Sequence[Record], comparisons: Sequence[Any]) -> list[Gap]:
    """Every Δ row (``kind == "delta"`` of :func:`experiments.report.compare.family`) followed
    through training on its validation metric."""
    rows = []
    for c in comparisons:
        if c.kind != "delta":
            continue
        key = validation_metric(records, c.metric, (c.variant, c.against))
        values = [gap_at(records, c.variant, c.against, key, f) if key else None for f in FRACTIONS]
        rows.append(Gap(c.variant, c.against, c.metric, key, values, trend(values[FRACTIONS.index(0.5)], values[-1]),
                        still_improving(records, c.variant, key) if key else None))
    return rows


def pct(value: Optional[float]) -> str:
    """A relative change as the report's tables print it ("-": unknown)."""
    return "-" if value is None else f"{100 * value:+.1f}%"


def table(rows: Sequence[Gap]) -> list[str]:
    """The Markdown table of :func:`gaps`' rows."""
    shares = [f"{100 * f:.0f}%" for f in FRACTIONS]
    lines = [f"| variant | metric | followed on | {' | '.join(shares)} | trend | variant's last quarter |",
             "|---|---|---|" + "---:|" * len(shares) + "---|---:|"]
    for g in rows:
        lines.append(f"| {g.variant} | {g.metric} | {g.validation or '-'} | {' | '.join(map(pct, g.gaps))} | "
                     f"{g.trend or '-'} | {pct(g.still_improving)} |")
    return lines


def budget_warning(records: Sequence[Record], baseline: str, metrics: Sequence[str]) -> Optional[tuple[str, float]]:
    """The validation metric (of ``metrics``) on which the baseline improved most over its last
    quarter, with that improvement, when it is above :data:`STILL_IMPROVING`: the budget ended
    while the baseline was still learning (None otherwise)."""
    changes = [(change, m) for m in dict.fromkeys(metrics)
               if (change := still_improving(records, baseline, m)) is not None]
    if not changes:
        return None
    change, metric = max(changes)
    return (metric, change) if change >= STILL_IMPROVING else None  # the complement of converged()


def collapses(records: Sequence[Record], sources: Optional[int] = None) -> dict[str, str]:
    """The finished runs that ignore their source, by name, with the reason (:func:`collapsed`)."""
    return {r.name: why for r in records if r.finished and (why := collapsed(r, sources)) is not None}


def unchecked(records: Sequence[Record]) -> list[str]:
    """The finished runs without the shuffled-source check (they did not log
    :data:`SHUFFLED_KEY`): only their distinct outputs can show a collapse."""
    return [r.name for r in records if r.finished and r.metrics.get(SHUFFLED_KEY) is None]


def baseline_warning(records: Sequence[Record], comparisons: Sequence[Any], baseline: Optional[str]
                     ) -> Optional[tuple[str, float]]:
    """:func:`budget_warning` on the validation metrics the Δ rows are followed on."""
    if not baseline:
        return None
    return budget_warning(records, baseline, [g.validation for g in gaps(records, comparisons) if g.validation])


def summary(records: Sequence[Record], comparisons: Sequence[Any], baseline: Optional[str], translates: bool,
            sources: Optional[int] = None) -> dict[str, Any]:
    """What ``report.json`` keeps of this module: the gaps, the budget warning and, for
    translation, the collapsed runs and those without the shuffled-source check."""
    warning = baseline_warning(records, comparisons, baseline)
    still = {"metric": warning[0], "improvement": warning[1]} if warning else None
    data: dict[str, Any] = {"gaps": [g.to_json() for g in gaps(records, comparisons)], "baseline_still_improving": still}
    if translates:
        data.update(collapsed=collapses(records, sources), no_shuffled_check=unchecked(records))
    return data
