"""What every launcher shares: the options of ``ablate sweep``, the plan (which runs to start, which
to skip), the sweep's manifest, and the GPUs this machine shows.

A launcher is one class with a ``name`` and a :meth:`Launcher.run`; it is registered in
``experiments/sweep/launchers/__init__.py``. Every launcher runs each run through ``ablate train``
with the run's own overrides, so a run started by any launcher resumes from its checkpoint in any
other. Re-running a sweep skips completed (and diverged) runs, resumes interrupted ones and reruns
failed ones only with ``retry_failed``, except those that failed for lack of disk space (their status
says ``retryable``), which it reruns (resumes) by itself.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from experiments.run.rundir import FINAL_STATES, read_status
from experiments.sweep import registration
from experiments.sweep.spec import Sweep, SweepError, SweepRun


@dataclass
class LaunchOptions:
    """The ``ablate sweep`` options a launcher may read."""

    workers: Optional[int] = None  # local: runs at a time (default: one per GPU, else 1)
    retry_failed: bool = False
    gpus_per_run: int = 1
    wait: bool = False  # slurm: block until the jobs end
    runs_per_gpu: Optional[int] = 1  # local: runs sharing one GPU (None: chosen by a probe)


class Launcher:
    """Where a sweep's runs execute."""

    name: str = ""
    runs_here = False  # the runs execute on this machine: their accelerator is checked here first
    shares_gpus = False  # takes ``--runs-per-gpu``

    def check(self, options: LaunchOptions) -> None:
        """Refuse options this launcher does not take, before anything starts."""
        if options.runs_per_gpu != 1 and not self.shares_gpus:
            raise SweepError(f"--runs-per-gpu is for the local launcher, not {self.name}")

    def run(self, sweep: Sweep, options: LaunchOptions) -> int:
        """Run (or submit) the sweep's runs; the exit code of ``ablate sweep``."""
        raise NotImplementedError


def plan(sweep: Sweep, retry_failed: bool = False) -> tuple[list[SweepRun], dict[str, str]]:
    """(runs to start, seed by seed; {run: why it is skipped}). Refuses, before anything starts, a
    run directory that holds a run of a different configuration."""
    todo, skipped = [], {}
    for run in sweep.runs:
        status = read_status(run.run_dir)
        if status.get("run_id") and status["run_id"] != run.run_id:
            raise SweepError(f"{run.run_dir} holds a run of another configuration (run id {status['run_id']}, "
                             f"the sweep's is {run.run_id}); use another run.root, or delete that directory")
        state = status["state"]
        if state in FINAL_STATES:
            skipped[run.name] = state
        elif state == "failed" and not retry_failed and not status.get("retryable"):
            skipped[run.name] = "failed (rerun with --retry-failed)"
        elif state == "running":
            holder = status.get("holder") or {}
            skipped[run.name] = f"running elsewhere (pid {holder.get('pid')} on {holder.get('host')})"
        else:
            todo.append(run)
    # seed by seed (every variant's first seed, then every variant's second, ...): a sweep stopped
    # part-way still has paired seeds of every variant to compare
    todo.sort(key=lambda r: sweep.seeds.index(r.seed))
    return todo, skipped


def write_manifest(sweep: Sweep) -> Path:
    """``<root>/<sweep>/sweep.json``: the sweep file, its runs (tuning runs first) and the command
    of each (none yet for a confirmation run awaiting its variant's tuning), and its
    pre-registration (:mod:`experiments.sweep.registration`), kept from the first launch on."""
    sweep = sweep.whole or sweep
    sweep.root.mkdir(parents=True, exist_ok=True)
    manifest = {
        "name": sweep.name, "description": sweep.description, "sweep_file": str(sweep.path), "text": sweep.text,
        "cli_overrides": sweep.cli_overrides, "baseline": sweep.baseline, "variants": sweep.variants,
        "runs": [{"name": r.name, "variant": r.variant, "seed": r.seed, "stage": r.stage, "point": r.point,
                  "tuned": r.tuned, "run_id": None if r.awaiting else r.run_id,
                  **({"budget": r.budget} if r.budget else {}),
                  "command": None if r.awaiting else ["ablate", *r.command(sweep.configs)]}
                 for r in [*sweep.tune_runs, *sweep.runs]],
    }
    path = sweep.root / "sweep.json"
    previous = json.loads(path.read_text()).get("registration") if path.is_file() else None
    manifest["registration"] = registration.update(previous, sweep)
    tmp = path.with_name(f"sweep.json.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(manifest, indent=1, default=str))
    tmp.replace(path)
    return path


def visible_gpus() -> list[str]:
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g for g in env.split(",") if g.strip() and g.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - no usable CUDA: CPU workers
        return []


