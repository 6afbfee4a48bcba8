"""The Slurm launcher: a sweep's runs as submitit job arrays (one array per device count), each
task requeued on preemption or time-out and resumed from its checkpoint."""

from __future__ import annotations

from typing import Any

from experiments.run.rundir import FINAL_STATES
from experiments.sweep.launchers.base import Launcher, LaunchOptions, plan, write_manifest
from experiments.sweep.spec import Sweep, SweepError, SweepRun
from experiments.sweep.status import status_table


class SlurmLauncher(Launcher):
    name = "slurm"

    def run(self, sweep: Sweep, options: LaunchOptions) -> int:
        return run_slurm(sweep, options.retry_failed, options.wait)


def devices_per_run(trainer: dict[str, Any]) -> int:
    """The processes a run's ``trainer.devices`` asks for: Slurm must start one task for each
    (Lightning checks that ``--ntasks-per-node`` equals ``devices``). ``auto`` and ``-1`` count as
    one here, since the devices of a node are unknown until the job runs on it."""
    devices = trainer.get("devices", "auto")
    if isinstance(devices, (list, tuple)):
        return max(1, len(devices))
    if isinstance(devices, str):
        devices = devices.strip()
        if "," in devices:
            return len([d for d in devices.split(",") if d.strip()])
        devices = int(devices) if devices.isdigit() else 1
    return devices if isinstance(devices, int) and devices > 0 else 1


class _SlurmTask:
    """One run inside a Slurm array task; on preemption or time-out submitit calls
    :meth:`checkpoint`, which requeues the same command: the run resumes from its checkpoint."""

    def __call__(self, argv: list[str]) -> int:
        import submitit

        from experiments.run.train import run_command  # the run itself, not the command line around it

        if submitit.JobEnvironment().num_tasks > 1:  # one task per device: each task is one rank
            # RANK, LOCAL_RANK, WORLD_SIZE and the rendezvous address, the same for every launcher
            # (under Slurm, Lightning's SLURMEnvironment reads Slurm's own variables besides)
            submitit.helpers.TorchDistributedEnvironment().export(overwrite=True)
        return run_command(argv[1:])

    def checkpoint(self, argv: list[str]):
        import submitit

        return submitit.helpers.DelayedSubmission(self, argv)


def run_slurm(sweep: Sweep, retry_failed: bool = False, wait: bool = False) -> int:
    try:
        import submitit
    except ImportError:
        raise SweepError("--launcher slurm needs submitit: pip install 'ablate[slurm]'") from None
    todo, skipped = plan(sweep, retry_failed)
    write_manifest(sweep)
    if not todo:
        print(f"sweep {sweep.name}: nothing to run ({len(skipped)} runs skipped)")
        print(status_table(sweep)[0])
        return 0
    s = sweep.slurm
    executor = submitit.AutoExecutor(folder=sweep.root / ".submitit" / "%j", cluster=s.cluster)
    params = {"name": f"ablate-{sweep.name}", "timeout_min": s.time_min, "gpus_per_node": s.gpus_per_node,
              "tasks_per_node": 1, "nodes": 1, "slurm_array_parallelism": s.array_parallelism or len(todo)}
    for key in ("cpus_per_task", "mem_gb"):
        if getattr(s, key) is not None:
            params[key] = getattr(s, key)
    for key in ("partition", "account", "qos", "constraint", "additional_parameters"):
        if getattr(s, key) is not None:
            params[f"slurm_{key}"] = getattr(s, key)
    configs = [c.resolve() for c in sweep.configs]
    by_devices: dict[int, list[SweepRun]] = {}  # one job array per device count: Slurm starts one task per device
    for run in todo:
        by_devices.setdefault(devices_per_run(run.cfg.trainer), []).append(run)
    todo, jobs = [], []
    for n, runs in sorted(by_devices.items()):
        executor.update_parameters(**{**params, "tasks_per_node": n,
                                      "gpus_per_node": max(s.gpus_per_node, n) if s.gpus_per_node else 0})
        todo += runs
        jobs += executor.map_array(_SlurmTask(), [run.command(configs) for run in runs])
        print(f"sweep {sweep.name}: submitted {len(runs)} runs as job array {jobs[-1].job_id.split('_')[0]} "
              f"({executor.cluster}, {n} task(s) per run); logs in {sweep.root / '.submitit'}")
    for run, job in zip(todo, jobs):
        print(f"  {job.job_id}  {run.name}")
    print(f"follow with: ablate status {sweep.path}")
    if not wait:
        return 0
    for run, job in zip(todo, jobs):  # the table below reads each run's own status
        try:
            job.result()
        except Exception as err:  # noqa: BLE001 - reported per run
            print(f"FAILED {run.name}: {err}")
    text, rows = status_table(sweep)
    print(text)
    return 0 if all(r["state"] in FINAL_STATES for r in rows) else 1


