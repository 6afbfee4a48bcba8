"""``ablate status``: every run of a sweep with its state, step and headline metric. A run
directory that holds a run of another configuration (its run id is not the one the sweep computes
for that run: the sweep's file or overrides changed since) is shown as such, never as this run."""

from __future__ import annotations

from collections import Counter
from typing import Any, Optional

from experiments.run.rundir import last_logged, read_status
from experiments.sweep.spec import Sweep, SweepRun
from lit.checkpointing import checkpoint_step, checkpoints
from lit.specs import task_spec


OTHER = "other configuration"  # the state of a run whose directory (or copy) holds another run id


def other_configuration(run: SweepRun, found: Optional[str]) -> bool:
    """Whether a run id found in a run directory or a copy of one (its ``status.json``) is not the
    one the sweep computes for ``run``: the test by which ``ablate sweep`` refuses a directory. No
    id recorded, or a confirmation run awaiting its tuning choice (no id yet), is not a mismatch."""
    return bool(found) and run.awaiting is None and found != run.run_id


def headline_metrics(task: str) -> tuple[str, str]:
    """(validation, test) metric that summarises a run of this task."""
    return task_spec(task).headline


def run_state(run: SweepRun) -> dict[str, Any]:
    """State, step and metrics of one run, read from its directory (``awaiting``: a confirmation
    run whose variant's tuning choice is not recorded yet; ``other configuration``: its directory
    holds another run, whose step and metrics are not shown)."""
    status = {"state": "awaiting", "message": run.awaiting} if run.awaiting else read_status(run.run_dir)
    val_key, test_key = headline_metrics(run.cfg.task.name)
    if other_configuration(run, status.get("run_id")):
        return {"name": run.name, "variant": run.variant, "seed": run.seed, "state": OTHER, "step": None,
                "max_steps": run.cfg.trainer.get("max_steps"), "val": None, "test": None, "wall_s": None,
                "message": f"its directory holds run {status['run_id']}, the sweep's is {run.run_id}",
                "holder": status.get("holder"), "run_id": status["run_id"]}
    metrics = status.get("metrics") or {}
    row = {"name": run.name, "variant": run.variant, "seed": run.seed, "state": status["state"],
           "step": status.get("step", 0), "max_steps": run.cfg.trainer.get("max_steps"),
           "val": metrics.get(val_key), "test": metrics.get(test_key), "wall_s": metrics.get("wall_s"),
           "message": status.get("message") or status.get("error"), "holder": status.get("holder"),
           "run_id": status.get("run_id")}
    if status["state"] in ("running", "interrupted", "failed"):
        row["val"] = last_logged(run.run_dir, val_key)
        step = last_logged(run.run_dir, "step")
        row["step"] = max(row["step"] or 0, step or 0)
        newest = checkpoints(run.run_dir / "checkpoints")
        resume = checkpoint_step(newest[0]) if newest else 0
        row["resume"] = resume if resume != row["step"] else None  # shown only where it differs
    return row


def counts(rows: list[dict[str, Any]]) -> Counter:
    return Counter(r["state"] for r in rows)


def format_counts(c: Counter) -> str:
    done = c["completed"] + c["diverged"]
    parts = [f"{done} done" + (f" ({c['diverged']} diverged)" if c["diverged"] else ""),
             f"{c['running']} running", f"{c['failed']} failed"]
    if c["interrupted"]:
        parts.append(f"{c['interrupted']} interrupted")
    if c[OTHER]:
        parts.append(f"{c[OTHER]} of another configuration")
    parts.append(f"{c['pending'] + c['interrupted']} to go")
    return " · ".join(parts)


def status_table(sweep: Sweep) -> tuple[str, list[dict[str, Any]]]:
    """The table of ``ablate status``: with a ``tune:`` section, the tuning runs first, then the
    confirmation runs, each stage with its counts."""
    whole = sweep.tune_runs and not sweep.staged  # a launcher's view of one stage shows that stage alone
    stages = [("tuning", sweep.tune_runs), ("confirmation", sweep.runs)] if whole else [("", sweep.runs)]
    rows = [run_state(run) for _, runs in stages for run in runs]
    val_key, test_key = headline_metrics(sweep.runs[0].cfg.task.name)
    header = ["run", "state", "step", val_key, test_key, "wall"]
    body = []
    for r in rows:
        step = f"{r['step'] or 0}/{r['max_steps']}" if r["max_steps"] else str(r["step"] or 0)
        if r["state"] == OTHER:  # not this run's step
            step = "-"
        elif r.get("resume") is not None:  # where a rerun starts again
            step += f" (ckpt {r['resume']})"
        state = r["state"]
        if r["holder"]:
            state += f" (pid {r['holder'].get('pid')})"
        body.append([r["name"], state, step, _fmt(r["val"]), _fmt(r["test"]),
                     f"{r['wall_s']:.0f} s" if r["wall_s"] is not None else "-"])
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip() for row in [header, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    notes = [f"  {r['name']}: {r['message']}" for r in rows
             if r["message"] and r["state"] in ("failed", "diverged", OTHER)]
    if any(r.get("resume") is not None for r in rows):
        notes.insert(0, "(ckpt N): the newest checkpoint, where the run starts again when resumed "
                        "(the steps after it are trained again)")
    if (other := sum(r["state"] == OTHER for r in rows)):
        notes.insert(0, f"{other} run(s) of another configuration (the sweep's file or overrides changed since "
                        "they ran): ablate sweep refuses their directories; use another run.root, or delete them")
    totals = [format_counts(counts(rows))]
    if whole:
        start, totals = 2, []
        for stage, runs in stages:
            lines.insert(start, f"-- {stage} runs" + (" (never in a verdict)" if stage == "tuning" else ""))
            start += len(runs) + 1
            totals.append(f"{stage}: {format_counts(counts(rows[len(sweep.tune_runs):] if stage != 'tuning' else rows[:len(sweep.tune_runs)]))}")
        waiting = sum(r["state"] == "awaiting" for r in rows)
        if waiting:
            totals.append(f"{waiting} confirmation run(s) await their variant's tuning choice")
    text = "\n".join([f"sweep {sweep.name}: {len(rows)} runs in {sweep.root}", *lines, "", *totals, *notes])
    return text, rows


def _fmt(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.4g}"
