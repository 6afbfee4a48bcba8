"""Per-variant tuning with an equal budget: the ``tune:`` section of a sweep file.

::

    tune:
      grid: {task.lr: [5.0e-4, 1.0e-3, 2.0e-3], task.warmup_steps: [150, 600]}
      seeds: [100]                          # tuning seeds: never in a verdict
      select: {metric: val/ppl, mode: min}
    seeds: [0, 1, 2, 3, 4]                  # confirmation seeds: the only ones the verdicts use

Every variant runs every point of ``tune.grid`` at every tuning seed (the same budget for all),
validating only: a tuning run never sees the test set (``run.test=false``). Once all of a
variant's tuning runs are final, its own best point on the selection metric (the mean over the
tuning seeds of the run's final validation value; a diverged run is never chosen) is recorded in
``<run.root>/<sweep>/tuning.json`` and never recomputed; the confirmation runs (the sweep's
``seeds``) then train at that point. A choice at the smallest or largest value of a grid axis of
three or more values is flagged: the optimum may lie beyond the grid ("extend the grid").

Melis et al. 2018 and Narang et al. 2021 show that a shared or unequal tuning budget changes
which architecture wins; selecting and confirming on the same seeds inflates the winner.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import MISSING

from experiments.run.rundir import FINAL_STATES, read_status

TUNING_FILE = "tuning.json"
MODES = ("min", "max")


@dataclass
class SelectSpec:
    """How a variant's tuning point is chosen: the final value of a validation metric."""

    metric: str = MISSING  # a validation metric every run logs (val/ppl, val/bleu ...)
    mode: str = "min"  # min | max


@dataclass
class TuneSpec:
    """The ``tune:`` section of a sweep file."""

    grid: Dict[str, Any] = field(default_factory=dict)  # key -> list of values, tried for every variant
    seeds: List[int] = field(default_factory=lambda: [100])
    select: SelectSpec = field(default_factory=SelectSpec)


TUNE_KEYS = ("grid", "seeds", "select")
SELECT_KEYS = ("metric", "mode")


class TuningError(ValueError):
    """A tuning section or a recorded choice that cannot be used; the message names the key."""


def check(tune: TuneSpec, where: str, grid_keys: list[str], seeds: list[int]) -> None:
    """Refuse a tuning section that could leak into a verdict or cannot choose."""
    if not tune.grid:
        raise TuningError(f"{where}: tune.grid: give at least one key with a list of values")
    for key, values in tune.grid.items():
        if not isinstance(values, list) or not values:
            raise TuningError(f"{where}: tune.grid.{key}: give a non-empty list of values, got {values!r}")
        if key in grid_keys:
            raise TuningError(f"{where}: tune.grid.{key} is also a key of grid: a variant is what is compared, "
                              f"a tuned setting is chosen per variant; it cannot be both")
    if not tune.seeds or not all(isinstance(s, int) for s in tune.seeds):
        raise TuningError(f"{where}: tune.seeds: give a non-empty list of integers, got {tune.seeds!r}")
    shared = sorted(set(tune.seeds) & set(seeds))
    if shared:
        raise TuningError(f"{where}: tune.seeds and seeds share {shared}: a seed used to choose a variant's "
                          f"settings must not be in its verdict")
    if not str(tune.select.metric).startswith("val/"):
        raise TuningError(f"{where}: tune.select.metric: choose on a validation metric (val/...), "
                          f"got {tune.select.metric!r}: tuning runs never see the test set")
    if tune.select.mode not in MODES:
        raise TuningError(f"{where}: tune.select.mode must be min or max, got {tune.select.mode!r}")


def points(grid: dict[str, list]) -> list[dict[str, Any]]:
    return [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())]


def edge_keys(grid: dict[str, list], chosen: dict[str, Any]) -> list[str]:
    """The keys of axes with three or more numeric values whose chosen value is the smallest or
    the largest: the best setting may lie beyond the grid."""
    edges = []
    for key, values in grid.items():
        numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if len(set(numbers)) >= 3 and len(numbers) == len(values) and chosen.get(key) in (min(numbers), max(numbers)):
            edges.append(key)
    return edges


def budget(tune: TuneSpec, max_steps: Optional[int]) -> dict[str, Any]:
    """What every variant spends on tuning (the same for all)."""
    runs = len(points(tune.grid)) * len(tune.seeds)
    return {"runs_per_variant": runs, "points": len(points(tune.grid)), "seeds": list(tune.seeds),
            "steps_per_run": max_steps, "steps_per_variant": runs * max_steps if max_steps else None}


def read_choices(root: Path) -> dict[str, Any]:
    """``tuning.json`` of a sweep's run directory ({} when no variant has been chosen yet)."""
    path = Path(root) / TUNING_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise TuningError(f"{path}: unreadable ({err}); it records the tuning choices: restore it, or delete it "
                          f"to choose again from the tuning runs") from None


def check_recorded(recorded: dict[str, Any], tune: TuneSpec, path: Path) -> None:
    """A recorded choice was made over this grid, these seeds and this metric, or it is refused."""
    if not recorded:
        return
    now = _identity(tune)
    for key in now:
        if recorded.get(key) != now[key]:
            raise TuningError(f"{path / TUNING_FILE}: its choices were made with tune.{key} = {recorded.get(key)!r}, "
                              f"the sweep file now says {now[key]!r}; restore the sweep file, or delete "
                              f"{TUNING_FILE} to choose again")


def _identity(tune: TuneSpec) -> dict[str, Any]:
    return {"grid": {k: list(v) for k, v in tune.grid.items()}, "seeds": list(tune.seeds),
            "metric": tune.select.metric, "mode": tune.select.mode}


@dataclass
class Outcome:
    """One tuning run as the choice reads it."""

    name: str
    point: dict[str, Any]
    seed: int
    state: str
    value: Optional[float]


def choose(tune: TuneSpec, outcomes: list[Outcome]) -> Optional[dict[str, Any]]:
    """A variant's choice from its tuning runs, or None while any of them is not final. The mean
    over tuning seeds of each point's final validation value; diverged runs (or a non-finite
    value) never win; ties go to the earlier grid point."""
    if any(o.state not in FINAL_STATES for o in outcomes):
        return None
    sign = 1.0 if tune.select.mode == "min" else -1.0
    rows = []
    for point in points(tune.grid):
        mine = [o for o in outcomes if o.point == point]
        values = [o.value for o in mine]
        ok = all(o.state == "completed" and v is not None and math.isfinite(v) for o, v in zip(mine, values))
        mean = sum(values) / len(values) if ok and values else None
        rows.append({"point": point, "value": mean, "runs": {o.name: {"seed": o.seed, "state": o.state,
                                                                      "value": o.value} for o in mine}})
    scored = [r for r in rows if r["value"] is not None]
    best = min(scored, key=lambda r: sign * r["value"]) if scored else None
    unlogged = [o.name for o in outcomes if o.state == "completed" and o.value is None]
    reason = None if best else (
        f"{len(unlogged)} completed tuning run(s) logged no {tune.select.metric} (they must validate at least "
        f"once: trainer.val_check_interval at most trainer.max_steps), e.g. {unlogged[0]}" if unlogged
        else "every tuning point diverged")
    return {"chosen": best["point"] if best else None, "value": best["value"] if best else None,
            "edge": edge_keys(tune.grid, best["point"]) if best else [], "reason": reason, "points": rows,
            "chosen_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def record(root: Path, tune: TuneSpec, max_steps: Optional[int],
           outcomes_by_variant: dict[str, list[Outcome]]) -> dict[str, Any]:
    """Choose for every variant whose tuning runs are all final and that has no recorded choice,
    and write ``tuning.json`` (atomically). Returns the whole record."""
    root = Path(root)
    recorded = read_choices(root)
    check_recorded(recorded, tune, root)
    data = recorded or {**_identity(tune), "budget": budget(tune, max_steps), "variants": {}}
    changed = False
    for variant, outcomes in outcomes_by_variant.items():
        if variant in data["variants"]:
            continue
        choice = choose(tune, outcomes)
        if choice is not None:
            data["variants"][variant] = choice
            changed = True
    if changed:
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f"{TUNING_FILE}.tmp-{os.getpid()}"
        tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
        tmp.replace(root / TUNING_FILE)
    return data


def outcome(run_dir: Path, name: str, point: dict[str, Any], seed: int, metric: str) -> Outcome:
    status = read_status(run_dir)
    value = (status.get("metrics") or {}).get(metric)
    return Outcome(name, point, seed, status["state"], None if value is None else float(value))


def record_sweep(sweep) -> dict[str, Any]:
    """Record the choices that ``sweep``'s tuning runs (a loaded :class:`~experiments.sweep.spec.Sweep`
    with a ``tune:`` section) now allow; see :func:`record`."""
    sweep = sweep.whole or sweep
    by_variant: dict[str, list[Outcome]] = {}
    for run in sweep.tune_runs:
        by_variant.setdefault(run.variant, []).append(
            outcome(run.run_dir, run.name, run.tuned, run.seed, sweep.tune.select.metric))
    return record(sweep.root, sweep.tune, sweep.tune_runs[0].cfg.trainer.get("max_steps"), by_variant)


def describe(data: dict[str, Any], variants: list[str]) -> list[str]:
    """One line per variant: its choice (and an edge warning), or why there is none yet."""
    lines = []
    for variant in variants:
        choice = (data.get("variants") or {}).get(variant)
        if choice is None:
            lines.append(f"  {variant}: not chosen yet (its tuning runs have not all finished)")
        elif choice["chosen"] is None:
            lines.append(f"  {variant}: nothing to choose ({choice['reason']}): no confirmation runs")
        else:
            values = ", ".join(f"{k}={v}" for k, v in choice["chosen"].items())
            edge = (f"; on the edge of the grid in {', '.join(choice['edge'])}: extend the grid"
                    if choice["edge"] else "")
            lines.append(f"  {variant}: {values} ({data['metric']} {choice['value']:.4g}){edge}")
    return lines
