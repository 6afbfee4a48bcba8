"""Cost and equal compute: what each variant cost to train, and each Δ row read again at equal
training FLOPs.

No single cost indicator ranks models as the others do (Dehghani et al. 2021, "The Efficiency
Misnomer", arXiv:2110.12894), so all are shown side by side: parameters, training FLOPs per token,
total training FLOPs, throughput and peak memory. Without a ``budget:`` section every variant
trains the same steps, so a costlier variant also gets more compute and its Δ at the end mixes the
architecture with the budget; both arms' validation curves read at the same FLOPs (the smaller
arm's total) separate the two.

FLOPs per step come from the run's config (:func:`experiments.sweep.budget.flops_per_step`, the
convention of :mod:`variants.flops`, at the nominal batch). When they cannot be computed (no
config, a device count the counter cannot read) FLOPs per token come from the run's logged
throughput, MFU × peak FLOP/s / tokens/s, and its total and curves in FLOPs stay unknown.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any, Optional, Sequence

from experiments.report import adequacy
from experiments.report.collect import Record, Report
from experiments.sweep import budget as budgets

EQUAL = 0.01  # two arms' total FLOPs within this share of the larger: equal budgets


@dataclass
class RunCost:
    """One run's FLOPs: per step and per token, where they come from, and its last step."""

    flops_per_step: Optional[float]
    flops_per_token: Optional[float]
    source: Optional[str]  # "config" | "perf" (logged MFU and throughput) | None
    steps: Optional[int]  # optimizer steps trained (status.json)

    @property
    def flops(self) -> Optional[float]:
        return self.flops_per_step * self.steps if self.flops_per_step and self.steps else None


def run_cost(record: Record, steps: Optional[int], seq_len: Optional[int] = None) -> RunCost:
    """The run's FLOPs from its config, else its FLOPs per token from its logged throughput."""
    if record.config is not None:
        try:
            per_step = budgets.flops_per_step(record.config, seq_len, record.name)
            return RunCost(per_step, per_step / budgets.tokens_per_step(record.config, record.name), "config", steps)
        except Exception:  # noqa: BLE001 -- a config the counter cannot size: a report never fails on a cost
            pass
    m = record.metrics
    mfu, peak, rate = m.get("perf/mfu_median"), m.get("perf/peak_flops"), m.get("perf/tokens_per_s_median")
    per_token = mfu * peak / rate if mfu and peak and rate else None
    return RunCost(None, per_token, "perf" if per_token else None, steps)


def run_costs(rep: Report) -> dict[str, RunCost]:
    """Every run's :class:`RunCost`, by name (translation FLOPs at the budget's nominal length)."""
    runs = {r.name: r for r in rep.sweep.runs}
    costs = {}
    for r in rep.records:
        status = rep.out / "runs" / r.name / "status.json"
        steps = json.loads(status.read_text()).get("step") if status.is_file() else None
        costs[r.name] = run_cost(r, steps, ((runs[r.name].budget or {}) if r.name in runs else {}).get("seq_len"))
    return costs


def _mean(values: Sequence[Optional[float]]) -> Optional[float]:
    found = [v for v in values if v is not None and math.isfinite(v)]
    return sum(found) / len(found) if found else None


@dataclass
class Cost:
    """One variant's cost indicators over its finished seeds."""

    variant: str
    params: Optional[int]
    flops_per_token: Optional[float]  # mean over seeds
    source: Optional[str]  # "config", "perf" or "config+perf": where FLOPs per token come from
    flops: Optional[float]  # total training FLOPs of one run, mean over seeds
    tokens_per_s: Optional[float]  # the runs' median tokens/s, mean over seeds
    peak_mem_mb: Optional[float]  # the largest over seeds

    @property
    def known(self) -> bool:
        return any(v is not None for v in (self.params, self.flops_per_token, self.tokens_per_s, self.peak_mem_mb))


def costs(rep: Report, runs: dict[str, RunCost]) -> list[Cost]:
    """Each variant's :class:`Cost`."""
    rows = []
    for variant, records in rep.by_variant().items():
        done = [r for r in records if r.finished]
        mine = [runs[r.name] for r in done]
        memory = [m for r in done if (m := r.metrics.get("perf/peak_mem_mb_max")) is not None]
        rows.append(Cost(variant, next((r.params for r in done if r.params), None),
                         _mean([c.flops_per_token for c in mine]),
                         "+".join(sorted({c.source for c in mine if c.source})) or None,
                         _mean([c.flops for c in mine]),
                         _mean([r.metrics.get("perf/tokens_per_s_median") for r in done]),
                         max(memory) if memory else None))
    return rows


@dataclass
class EqualFlops:
    """One Δ row at the end and at equal training FLOPs."""

    variant: str
    against: str
    metric: str  # the Δ row's metric
    end: Optional[float]  # its relative Δ at the end (the Δ table's Δ %)
    validation: Optional[str]  # the validation metric read at equal FLOPs
    equal: bool  # both arms spent the same FLOPs (within EQUAL)
    smaller: Optional[str]  # the arm with the smaller total FLOPs (None: equal or unknown)
    at: Optional[float]  # the FLOPs both arms are read at, mean over seeds
    gap: Optional[float]  # (variant − against) / against there, of the means over the seeds both finished
    seeds: int = 0


def in_flops(record: Record, cost: RunCost, metric: str) -> list[dict[str, Any]]:
    """The run's validation curve on an x axis of training FLOPs: a row logged at step ``s`` comes
    after ``s + 1`` optimizer steps (steps count from 0), so the last is at the run's total."""
    return [{"step": (row["step"] + 1) * cost.flops_per_step, metric: row.get(metric)} for row in record.curve]


def equal_flops(rep: Report, comparisons: Sequence[Any], runs: dict[str, RunCost]) -> list[EqualFlops]:
    """Every Δ row's validation metric for both arms at the smaller arm's total FLOPs, seed by seed."""
    rows = []
    for c in (c for c in comparisons if c.kind == "delta"):
        key = adequacy.validation_metric(rep.records, c.metric, (c.variant, c.against))
        arms = [{r.seed: r for r in rep.records if r.variant == v and r.finished and runs[r.name].flops}
                for v in (c.variant, c.against)]
        totals = [_mean([runs[r.name].flops for r in arm.values()]) for arm in arms]
        known = None not in totals
        equal = known and abs(totals[0] - totals[1]) <= EQUAL * max(totals)
        smaller = (c.variant, c.against)[totals[1] < totals[0]] if known and not equal else None
        at, gap, seeds = _at_equal_flops(arms, runs, key) if smaller and key else (None, None, 0)
        end = c.d.relative if c.d is not None and math.isfinite(c.d.relative) else None
        rows.append(EqualFlops(c.variant, c.against, c.metric, end, key, equal, smaller, at, gap, seeds))
    return rows


def _at_equal_flops(arms: list[dict[int, Record]], runs: dict[str, RunCost], key: str
                    ) -> tuple[Optional[float], Optional[float], int]:
    """(FLOPs read at, relative gap, seeds) over the seeds both arms finished with a value there."""
    points = []
    for seed in sorted(arms[0].keys() & arms[1].keys()):
        pair = arms[0][seed], arms[1][seed]
        at = min(runs[r.name].flops for r in pair)
        values = [adequacy.value_at(in_flops(r, runs[r.name], key), key, at) for r in pair]
        if None not in values:
            points.append((at, *values))
    if not points:
        return None, None, 0
    base, mine = _mean([p[2] for p in points]), _mean([p[1] for p in points])
    return _mean([p[0] for p in points]), (mine - base) / abs(base) if base else None, len(points)


def budget_rule(rep: Report) -> Optional[dict[str, Any]]:
    """The sweep's ``budget:`` section as its runs spent it (by, value), or None without one."""
    facts = next((r.budget for r in rep.sweep.runs if r.budget), None)
    return {"by": facts["by"], "value": facts["value"]} if facts else None


def rule_line(rule: Optional[dict[str, Any]]) -> str:
    """The sentence that says under which budget rule the sweep ran."""
    if rule is None:
        return "Budget rule: equal steps (no `budget:` section): variants of different cost got different compute."
    meaning = {"steps": "equal steps: variants of different cost got different compute",
               "tokens": "equal training tokens: variants of different cost got different compute",
               "flops": "equal training FLOPs: each variant's steps = the budget / its own FLOPs per step"}[rule["by"]]
    return f"Budget rule: `budget: {{by: {rule['by']}, value: {rule['value']:g}}}` ({meaning})."


def sci(value: Optional[float]) -> str:
    """A FLOP count as ``3.51e9`` (``-``: unknown)."""
    if value is None:
        return "-"
    mantissa, exponent = f"{value:.2e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def cost_table(rows: Sequence[Cost], baseline: Optional[str]) -> list[str]:
    lines = ["| variant | params | FLOPs/token | training FLOPs | tokens/s | peak mem (MB) |",
             "|---|---:|---:|---:|---:|---:|"]
    for c in rows:
        name = f"**{c.variant}** (baseline)" if c.variant == baseline else c.variant
        per_token = sci(c.flops_per_token) + (" (logged)" if c.source == "perf" else
                                               " (partly logged)" if c.source == "config+perf" else "")
        lines.append(f"| {name} | {f'{c.params:,}' if c.params else '-'} | {per_token} | {sci(c.flops)} | "
                     f"{'-' if c.tokens_per_s is None else f'{c.tokens_per_s:,.0f}'} | "
                     f"{'-' if c.peak_mem_mb is None else f'{c.peak_mem_mb:,.0f}'} |")
    return lines


def equal_table(rows: Sequence[EqualFlops]) -> list[str]:
    lines = ["| variant | metric | Δ % at the end | followed on | smaller budget | read at (FLOPs) "
             "| Δ % at equal FLOPs |", "|---|---|---:|---|---|---:|---:|"]
    for r in rows:
        at_equal = "equal budgets: the same as at the end" if r.equal else adequacy.pct(r.gap)
        lines.append(f"| {r.variant} | {r.metric} | {adequacy.pct(r.end)} | {r.validation or '-'} | "
                     f"{'-' if r.equal else r.smaller or '-'} | {sci(r.at)} | {at_equal} |")
    return lines


def summary(rep: Report, comparisons: Sequence[Any]) -> dict[str, Any]:
    """What ``report.json`` keeps: the budget rule, each variant's cost, each Δ row at equal FLOPs."""
    runs = run_costs(rep)
    return {"budget": budget_rule(rep), "variants": [asdict(c) for c in costs(rep, runs)],
            "equal_flops": [asdict(r) for r in equal_flops(rep, comparisons, runs)]}
