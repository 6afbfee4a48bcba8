"""The W&B launcher: a W&B grid sweep over the sweep's run names, run by ``wandb agent`` processes
(one per GPU), each training one named run exactly as the other launchers would."""

from __future__ import annotations

from typing import Any

from experiments.run.wandb_log import wandb_reachable
from experiments.sweep.launchers.base import Launcher, LaunchOptions, visible_gpus
from experiments.sweep.spec import Sweep, SweepError


class WandbLauncher(Launcher):
    name = "wandb"

    def run(self, sweep: Sweep, options: LaunchOptions) -> int:
        return run_wandb(sweep)


def wandb_sweep_config(sweep: Sweep, python: str = "python") -> dict[str, Any]:
    """The W&B grid sweep over the sweep's runs: one parameter, ``sweep_run``, whose values are
    the run names (named so that it does not overwrite the config's ``run`` section in W&B); each
    agent call runs ``ablate sweep-run SWEEP.yaml sweep_run=<name>``, which trains exactly that
    run (same name, directory, overrides and run id as the other launchers)."""
    return {"name": sweep.name, "method": "grid", "program": "experiments/cli.py",
            "command": ["${env}", python, "-m", "experiments.cli", "sweep-run", str(sweep.path), *sweep.cli_overrides,
                        "${args_no_hyphens}"],
            "parameters": {"sweep_run": {"values": [r.name for r in sweep.runs]}}}


def run_named(sweep: Sweep, name: str) -> list[str]:
    """The ``ablate train`` arguments of the run called ``name`` (a tuning run, or a confirmation
    run whose variant's tuning choice is recorded)."""
    runs = [*sweep.tune_runs, *sweep.runs]
    for run in runs:
        if run.name == name:
            if run.awaiting:
                raise SweepError(f"{sweep.path}: run {name} {run.awaiting}")
            return run.command(sweep.configs)
    raise SweepError(f"{sweep.path}: no run named {name!r}; runs: {', '.join(r.name for r in runs)}")


def run_wandb(sweep: Sweep) -> int:
    problem = wandb_reachable()
    if problem:
        raise SweepError(f"--launcher wandb needs W&B online: {problem}. Use --launcher local (this machine) or "
                         f"--launcher slurm; both log to W&B offline and keep every metric in the run directories")
    import wandb

    config = wandb_sweep_config(sweep)
    project, entity = sweep.runs[0].cfg.wandb.project, sweep.runs[0].cfg.wandb.entity
    sweep_id = wandb.sweep(config, project=project, entity=entity)
    path = "/".join(p for p in (entity, project, sweep_id) if p)
    gpus = visible_gpus() or [""]
    print(f"W&B sweep {sweep_id} ({len(sweep.runs)} runs). Start one agent per GPU, from this directory:")
    for gpu in gpus:
        prefix = f"CUDA_VISIBLE_DEVICES={gpu} " if gpu else ""
        print(f"  {prefix}wandb agent {path} &")
    return 0


