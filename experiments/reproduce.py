"""``ablate reproduce``: re-run a committed report's sweep (or a slice of it) and compare every
metric with the committed numbers. A committed run whose copy in ``runs/`` holds another run id
than the sweep's (made with another config) is not compared, nor counted in the seed noise."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional, Sequence

from experiments.sweep.launchers.local import run_local
from experiments.report.stats import mean_std
from experiments.run.rundir import read_status
from experiments.sweep.spec import SweepError, SweepRun, load_sweep
from experiments.sweep.status import OTHER, other_configuration


def reproduce(report_dir: Path, root: str, workers: Optional[int], variants: Sequence[str] = (),
              seeds: Sequence[int] = ()) -> int:
    """Re-run the embedded sweep (or the chosen variants/seeds) into ``root`` and compare each
    metric with the committed numbers; returns 0 when every metric agrees within seed noise."""
    report_dir = Path(report_dir)
    summary = json.loads((report_dir / "report.json").read_text())
    overrides = [o for o in summary["cli_overrides"] if not o.startswith("run.root=")] + [f"run.root={root}"]
    sweep = load_sweep(report_dir / "sweep.yaml", overrides)
    unknown = sorted(set(variants) - set(sweep.variants))
    if unknown:
        raise SweepError(f"unknown variant(s) {', '.join(unknown)}; the report has: {', '.join(sweep.variants)}")
    committed = {r["name"]: r for r in summary["runs"]}
    other = {run.name: why for run in sweep.runs if (why := _other(run, report_dir, committed.get(run.name)))}
    sweep.runs = [r for r in sweep.runs if (not variants or r.variant in variants) and (not seeds or r.seed in seeds)]
    if not sweep.runs:
        raise SweepError("no run left after --variant/--seed")
    print(estimate(sweep.runs, report_dir, workers or 1), flush=True)
    run_local(sweep, workers)
    ok = True
    print(f"\nreproduce {report_dir}: committed vs re-run")
    print(f"{'run':44} {'metric':10} {'committed':>12} {'re-run':>12}  verdict")
    for run in sweep.runs:
        status = read_status(run.run_dir)
        if run.name in other or other_configuration(run, status.get("run_id")):
            ok = False
            why = other.get(run.name) or f"the re-run is run {status['run_id']}, the sweep's is {run.run_id}"
            print(f"{run.name:44} {'-':10} {'-':>12} {'-':>12}  {OTHER}: {why}; not compared")
            continue
        metrics = status.get("metrics") or {}
        old = committed.get(run.name, {}).get("metrics", {})
        same_variant = [r for r in summary["runs"] if r["variant"] == run.variant and r["state"] == "completed"
                        and r["name"] not in other]
        for metric in summary["metrics"]:
            a, b = old.get(metric), metrics.get(metric)
            _, noise = mean_std([r["metrics"].get(metric) for r in same_variant])
            if a is None or b is None:
                verdict, ok = "missing", False
            elif abs(a - b) <= 1e-6 * max(1.0, abs(a)):
                verdict = "identical"
            elif math.isfinite(noise) and abs(a - b) <= 2 * noise:
                verdict = f"agrees within seed noise (|Δ| {abs(a - b):.3g} ≤ 2σ {2 * noise:.3g})"
            else:
                verdict, ok = f"DIFFERS (|Δ| {abs(a - b):.3g}, seed σ {noise:.3g})", False
            print(f"{run.name:44} {metric:10} {_num(a):>12} {_num(b):>12}  {verdict}")
    return 0 if ok else 1


def estimate(runs: Sequence[SweepRun], report_dir: Path, workers: int) -> str:
    """How long the re-run will take, said before it starts: the committed runs' own wall time
    (``wall_s`` of their copies in ``runs/``) over the runs still to train here, spread over
    ``workers``, and the machine that took it (another machine, or other threads per run, take
    another time)."""
    todo = [run for run in runs if read_status(run.run_dir)["state"] not in ("completed", "diverged")]
    text = f"{len(todo)} of {len(runs)} run(s) to train"
    if not todo:
        return text + ": nothing to train, only the comparison"
    copies = [read_status(report_dir / "runs" / run.name) for run in todo]
    walls = [w for c in copies if (w := (c.get("metrics") or {}).get("wall_s")) is not None]
    if not walls:
        return text + "; the committed runs recorded no wall time: no estimate"
    total = sum(walls) / len(walls) * len(todo)  # a run without a recorded time counted at the mean
    machines = sorted({m for c in copies if (m := (c.get("environment") or {}).get("machine"))})
    n = min(workers, len(todo))
    return (text + f": the committed runs took {_duration(total)} of run time (longest {_duration(max(walls))}), "
            f"about {_duration(total / n)} with {n} worker(s) on a machine like theirs"
            + (f" ({'; '.join(machines)})" if machines else ""))


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{seconds / 60:.0f} min"


def _other(run: SweepRun, report_dir: Path, entry: Optional[dict]) -> Optional[str]:
    """Why the committed numbers of ``run`` are not those of the sweep's run of that name (its copy
    in ``runs/`` holds another run id, or the report listed it so); None when they are."""
    copy = report_dir / "runs" / run.name / "status.json"
    found = json.loads(copy.read_text()).get("run_id") if copy.is_file() else None
    if other_configuration(run, found):
        return f"the committed copy is run {found}, the sweep's is {run.run_id}"
    if entry is not None and entry.get("state") == OTHER:
        return "the report lists it as another configuration"
    return None


def _num(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.4f}"
