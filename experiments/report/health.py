"""How training went, per variant, read off the run files: the global gradient norm before
clipping (``train/grad_norm`` in ``metrics.jsonl``), the share of optimizer steps that clipping
scaled down (``train/clip_fraction`` in ``status.json``), and loss spikes.

- A *loss spike* is a logged ``train/loss`` more than :data:`SPIKE_SIGMAS` σ above the median of
  the :data:`WINDOW` logged values before it, σ being the window's median absolute deviation ×
  1.4826 (the normal-consistent MAD: a spike, or the steep early descent, inflates it far less
  than a standard deviation), and at least :data:`MIN_SIGMA` of the median (a flat loss would
  otherwise make float noise a spike).
- A spike every variant shows at the same step of the same seed is left out: every variant of a
  seed sees the same batches in the same order, so such a spike is the batch's, not an
  architecture's.

Runs from before these were logged show "not logged".
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from experiments.report.collect import Record
from experiments.run.rundir import metric_records

GRAD_KEY, LOSS_KEY, CLIP_KEY = "train/grad_norm", "train/loss", "train/clip_fraction"
WINDOW = 10  # logged losses a spike is measured against
MIN_WINDOW = 5  # no spike is looked for before this many losses were logged
SPIKE_SIGMAS = 3.0
MAD_SCALE = 1.4826  # MAD × this estimates σ of normal noise
MIN_SIGMA = 1e-3  # σ is at least this share of the window's median


@dataclass
class RunTrace:
    """The training rows of one finished run that health reads."""

    record: Record
    grad_norms: list[float]
    losses: list[tuple[int, float]]  # (step, train/loss), in logged order


@dataclass
class Health:
    """One variant's training health over its finished seeds."""

    variant: str
    runs: int  # finished runs
    grad_median: Optional[float] = None  # over every logged step of every finished run (None: not logged)
    grad_max: Optional[float] = None
    clip_fraction: Optional[float] = None  # mean over the runs that recorded it (None: none did)
    losses_logged: int = 0  # runs with train/loss rows
    spikes: list[tuple[int, int]] = field(default_factory=list)  # (seed, step), common ones left out

    def to_json(self) -> dict[str, Any]:
        return {"variant": self.variant, "runs": self.runs, "grad_norm_median": self.grad_median,
                "grad_norm_max": self.grad_max, "clip_fraction": self.clip_fraction,
                "losses_logged": self.losses_logged,
                "spikes": [{"seed": seed, "step": step} for seed, step in self.spikes]}


def trace(record: Record, runs_dir: Path) -> RunTrace:
    """A run's gradient norms and losses from its copy ``<runs_dir>/<name>/metrics.jsonl``."""
    norms, losses = [], []
    for row in metric_records(runs_dir / record.name):
        if _finite(row.get(GRAD_KEY)):
            norms.append(float(row[GRAD_KEY]))
        if _finite(row.get(LOSS_KEY)) and row.get("step") is not None:
            losses.append((int(row["step"]), float(row[LOSS_KEY])))
    return RunTrace(record, norms, losses)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def spikes(losses: Sequence[tuple[int, float]]) -> list[int]:
    """The steps whose logged loss is a spike against the :data:`WINDOW` losses before it."""
    found = []
    for i in range(MIN_WINDOW, len(losses)):
        window = [v for _, v in losses[max(0, i - WINDOW):i]]
        median = statistics.median(window)
        sigma = max(MAD_SCALE * statistics.median(abs(v - median) for v in window), MIN_SIGMA * abs(median))
        if losses[i][1] > median + SPIKE_SIGMAS * sigma:
            found.append(losses[i][0])
    return found


def common_spikes(traces: Sequence[RunTrace]) -> set[tuple[int, int]]:
    """The (seed, step) pairs at which every variant that logged losses on that seed spiked
    (two variants at least)."""
    by_seed: dict[int, dict[str, set[int]]] = {}
    for t in traces:
        if t.losses:
            by_seed.setdefault(t.record.seed, {}).setdefault(t.record.variant, set()).update(spikes(t.losses))
    common = set()
    for seed, variants in by_seed.items():
        if len(variants) >= 2:
            common |= {(seed, step) for step in set.intersection(*variants.values())}
    return common


def health(records: Sequence[Record], runs_dir: Path,
           variants: Sequence[str]) -> tuple[list[Health], list[tuple[int, int]]]:
    """Each variant's :class:`Health` over its finished runs (copies in ``runs_dir``), and the
    (seed, step) spikes left out because every variant showed them."""
    traces = [trace(r, runs_dir) for r in records if r.finished]
    common = common_spikes(traces)
    rows = []
    for variant in variants:
        mine = [t for t in traces if t.record.variant == variant]
        norms = [n for t in mine for n in t.grad_norms]
        clips = [t.record.metrics[CLIP_KEY] for t in mine if _finite(t.record.metrics.get(CLIP_KEY))]
        row = Health(variant, len(mine), statistics.median(norms) if norms else None, max(norms) if norms else None,
                     sum(clips) / len(clips) if clips else None, sum(bool(t.losses) for t in mine))
        row.spikes = sorted((t.record.seed, step) for t in mine for step in spikes(t.losses)
                            if (t.record.seed, step) not in common)
        rows.append(row)
    return rows, sorted(common)


def logged(rows: Sequence[Health]) -> bool:
    """Whether any variant has anything to show (runs known only from a report.json have not)."""
    return any(h.grad_median is not None or h.clip_fraction is not None or h.losses_logged for h in rows)


def table(rows: Sequence[Health], shown: int = 8) -> list[str]:
    """The Markdown table of :func:`health`'s rows; at most ``shown`` spike steps per variant."""
    lines = ["| variant | runs | grad norm median | grad norm max | clipped steps | loss spikes | at step (seed) |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for h in rows:
        grads = [f"{h.grad_median:,.3g}", f"{h.grad_max:,.3g}"] if h.grad_median is not None else ["not logged"] * 2
        clip = f"{100 * h.clip_fraction:.1f}%" if h.clip_fraction is not None else "not logged"
        count = str(len(h.spikes)) if h.losses_logged else "not logged"
        steps = ", ".join(f"{step} ({seed})" for seed, step in h.spikes[:shown])
        steps += ", …" if len(h.spikes) > shown else ""
        lines.append(f"| {h.variant} | {h.runs} | {' | '.join(grads)} | {clip} | {count} | {steps or '-'} |")
    return lines


def summary(rows: Sequence[Health], common: Sequence[tuple[int, int]]) -> dict[str, Any]:
    """What ``report.json`` keeps of :func:`health`."""
    return {"variants": [h.to_json() for h in rows], "common_spikes": [{"seed": se, "step": st} for se, st in common]}
