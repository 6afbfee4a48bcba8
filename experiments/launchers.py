"""Launchers for the runs of a sweep: a local queue, Slurm job arrays, W&B agents.

All three run each run through ``ablate train`` with the run's own overrides, so a run started by
any launcher resumes from its checkpoint in any other. Re-running a sweep skips completed (and
diverged) runs, resumes interrupted ones and reruns failed ones only with ``retry_failed``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any, Optional

from experiments.rundir import EXIT_LOCKED, FINAL_STATES, LAUNCHERS, read_status
from experiments.status import counts, format_counts, run_state, status_table
from experiments.sharing import (PROBE_STEPS, Mps, choose_runs_per_gpu, device_memory_mb, probe_overrides,
                                 probe_result, share_slots)
from experiments.sweep import Sweep, SweepError, SweepRun



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
        elif state == "failed" and not retry_failed:
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
    """``<root>/<sweep>/sweep.json``: the sweep file, its runs and the command of each."""
    sweep.root.mkdir(parents=True, exist_ok=True)
    manifest = {
        "name": sweep.name, "description": sweep.description, "sweep_file": str(sweep.path), "text": sweep.text,
        "cli_overrides": sweep.cli_overrides, "baseline": sweep.baseline, "variants": sweep.variants,
        "runs": [{"name": r.name, "variant": r.variant, "seed": r.seed, "run_id": r.run_id, "point": r.point,
                  "command": ["ablate", *r.command(sweep.configs)]} for r in sweep.runs],
    }
    path = sweep.root / "sweep.json"
    tmp = path.with_name(f"sweep.json.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(manifest, indent=1, default=str))
    tmp.replace(path)
    return path


# ----------------------------------------------------------------------------------------- local

def visible_gpus() -> list[str]:
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g for g in env.split(",") if g.strip() and g.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - no usable CUDA: CPU workers
        return []


def _slots(workers: Optional[int], gpus_per_run: int, runs_per_gpu: int = 1) -> list[dict[str, str]]:
    """One environment per worker: its GPUs (``CUDA_VISIBLE_DEVICES``, shared by ``runs_per_gpu``
    workers) or its CPU threads."""
    gpus = visible_gpus()
    if gpus:
        groups = [gpus[i:i + gpus_per_run] for i in range(0, len(gpus) - gpus_per_run + 1, gpus_per_run)]
        if not groups:
            raise SweepError(f"--gpus-per-run {gpus_per_run} but only {len(gpus)} GPU(s) visible")
        slots = share_slots([{"CUDA_VISIBLE_DEVICES": ",".join(g)} for g in groups], runs_per_gpu)
        return slots[:min(workers or len(slots), len(slots))]
    if runs_per_gpu > 1:
        raise SweepError(f"--runs-per-gpu {runs_per_gpu}: no GPU is visible; on CPU, --workers sets how many "
                         f"runs share the machine")
    n = workers or 1
    threads = str(max(1, (os.cpu_count() or 1) // n))
    return [{"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", threads),
             "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS", threads),
             **{k: os.environ.get(k, v) for k, v in CPU_MALLOC.items()}} for _ in range(n)]


# glibc: keep freed blocks of up to 1 GiB in the heap instead of returning them to the system, so
# the same large activations are not page-faulted afresh at every step (+6% median tokens/s for
# the CPU ablation config of the LM on a 2-core machine; other C libraries ignore the variables)
CPU_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}


class _Progress:
    """Event lines, plus a status line redrawn in place when stdout is a terminal."""

    def __init__(self, sweep: Sweep, total: int) -> None:
        self.sweep, self.total, self.tty = sweep, total, sys.stdout.isatty()
        self.start = time.time()

    def event(self, text: str) -> None:
        if self.tty:
            sys.stdout.write("\r\x1b[K")
        print(f"[{self._clock()}] {text}", flush=True)

    def line(self, rows: list[dict[str, Any]], running: dict[str, int]) -> None:
        if not self.tty:
            return
        c = counts(rows)
        steps = ", ".join(f"{name} {step}" for name, step in list(running.items())[:3])
        sys.stdout.write(f"\r\x1b[K[{self._clock()}] {self.sweep.name}: {format_counts(c)}"
                         + (f" | {steps}" if steps else ""))
        sys.stdout.flush()

    def _clock(self) -> str:
        s = int(time.time() - self.start)
        return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def run_local(sweep: Sweep, workers: Optional[int] = None, retry_failed: bool = False, gpus_per_run: int = 1,
              python: str = sys.executable, runs_per_gpu: Optional[int] = 1) -> int:
    """Run the sweep's runs on this machine, ``workers`` at a time (``runs_per_gpu`` of them on
    each GPU; None: chosen by a probe); returns 0 when every run of the sweep has finished
    (completed or diverged), 130 when interrupted."""
    todo, skipped = plan(sweep, retry_failed)
    write_manifest(sweep)
    progress = _Progress(sweep, len(sweep.runs))
    if runs_per_gpu is None:
        runs_per_gpu = _probe_runs_per_gpu(sweep, todo, gpus_per_run, python, progress)
    slots = _slots(workers, gpus_per_run, runs_per_gpu)
    mps = Mps()
    if slots[0]["CUDA_VISIBLE_DEVICES"]:
        where = ", ".join(f"GPU {g}" for g in dict.fromkeys(s["CUDA_VISIBLE_DEVICES"] for s in slots))
        if runs_per_gpu > 1:
            how = mps.start() if todo else "nothing to run"
            where += f"; up to {runs_per_gpu} runs per GPU, {how}"
            slots = [{**slot, **mps.client_env()} for slot in slots]
    else:
        where = f"CPU, {slots[0]['OMP_NUM_THREADS']} thread(s) each"
    progress.event(f"sweep {sweep.name}: {len(sweep.runs)} runs, {len(todo)} to run, {len(skipped)} skipped; "
                   f"{len(slots)} worker(s) ({where}); runs in {sweep.root}")
    for name, why in skipped.items():
        if not why.startswith(("completed", "diverged")):
            progress.event(f"skip {name}: {why}")
    try:
        queue = _LocalQueue(sweep, slots, progress, python)
        interrupted = queue.run(todo)
    finally:
        mps.stop()

    text, rows = status_table(sweep)
    print("\n" + text)
    overhead = _overhead(queue.launches)
    if overhead:
        print(f"runner overhead: median {overhead:.1f} s per run (process lifetime minus the run's own wall time)")
    if interrupted:
        return 130
    return 0 if all(r["state"] in FINAL_STATES for r in rows) else 1


def _probe_runs_per_gpu(sweep: Sweep, todo: list[SweepRun], gpus_per_run: int, python: str,
                        progress: _Progress) -> int:
    """``--runs-per-gpu auto``: a short run of the first run to go, alone on the first GPU, then
    :func:`choose_runs_per_gpu` from its peak memory and MFU."""
    gpus = visible_gpus()
    if not gpus:
        raise SweepError("--runs-per-gpu auto: no GPU is visible; on CPU, --workers sets how many runs "
                         "share the machine")
    if not todo:
        return 1
    device_mb = device_memory_mb(gpus[0])
    if device_mb is None:
        raise SweepError(f"--runs-per-gpu auto: could not read GPU {gpus[0]}'s memory with nvidia-smi; give K")
    run = todo[0]
    with tempfile.TemporaryDirectory(prefix="ablate-probe-") as root:
        progress.event(f"probe: {run.name} for {PROBE_STEPS} steps on GPU {','.join(gpus[:gpus_per_run])}")
        argv = [python, "-m", "experiments.cli", *run.command(sweep.configs), *probe_overrides(Path(root))]
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(gpus[:gpus_per_run]), "WANDB_MODE": "disabled"}
        done = subprocess.run(argv, env=env, capture_output=True, text=True)
        found = list(Path(root).glob("*/*/status.json"))
        status = json.loads(found[0].read_text()) if found else \
            {"state": "failed", "error": (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]}
        peak_mb, mfu = probe_result(status)
    k, why = choose_runs_per_gpu(peak_mb, device_mb, mfu)
    progress.event(why)
    return k


class _LocalQueue:
    """A sweep's runs on this machine: one child process per run, at most one per worker slot
    (its environment pins the GPUs or CPU threads); each start and end is reported and appended
    to ``launches.jsonl``."""

    def __init__(self, sweep: Sweep, slots: list[dict[str, str]], progress: _Progress, python: str,
                 warm: bool = True) -> None:
        self.sweep, self.slots, self.progress, self.python = sweep, slots, progress, python
        self.warm = warm and python == sys.executable and _warm_available()
        self.free = list(range(len(slots)))
        self.active: dict[int, tuple[SweepRun, subprocess.Popen, float, Any]] = {}
        self.launches = sweep.root / "launches.jsonl"

    def run(self, todo: list[SweepRun]) -> bool:
        """Run ``todo`` to the end; True when interrupted (Ctrl-C, SIGTERM or SIGHUP to this
        process), after the running runs were stopped (they resume on the next invocation)."""
        queue = deque(todo)

        def stop(signum, frame):  # SIGTERM/SIGHUP to the launcher: stop like Ctrl-C
            raise KeyboardInterrupt

        previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
        try:
            while queue or self.active:
                while queue and self.free:
                    self.start(self.free.pop(0), queue.popleft())
                time.sleep(0.2)
                self.poll()
            return False
        except KeyboardInterrupt:
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, signal.SIG_IGN)  # finish shutting down whatever else arrives
            self.progress.event("interrupted: stopping the running runs (they resume on the next invocation)")
            for run, proc, *_rest in self.active.values():
                _terminate(proc)
            for slot, (run, proc, *_rest) in list(self.active.items()):
                self.finish(slot, proc.returncode if proc.returncode is not None else -signal.SIGTERM)
            return True
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def start(self, slot: int, run: SweepRun) -> None:
        resumed = read_status(run.run_dir)["state"] == "interrupted"  # before the child holds the lock
        run.run_dir.mkdir(parents=True, exist_ok=True)
        log = open(run.run_dir / "train.log", "ab")
        env = {**os.environ, **self.slots[slot], "PYTHONUNBUFFERED": "1"}
        command = run.command(self.sweep.configs)
        if self.warm:  # a child of the warm server: torch and Lightning already imported
            from experiments.warm import start_run

            proc = start_run(command, env, str(run.run_dir / "train.log"))
        else:
            argv = [self.python, "-m", "experiments.cli", *command]
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.active[slot] = (run, proc, time.time(), log)
        self.progress.event(f"{'resume' if resumed else 'start'} {run.name} (worker {slot}, pid {proc.pid})")

    def poll(self) -> None:
        """Finish the runs whose process ended; redraw the progress line on a terminal."""
        for slot, (run, proc, *_rest) in list(self.active.items()):
            code = proc.poll()
            if code is not None:
                self.finish(slot, code)
        if self.progress.tty:
            rows = {r.name: run_state(r) for r in self.sweep.runs}
            self.progress.line(list(rows.values()), {r.name: rows[r.name]["step"] for r, *_x in self.active.values()})

    def finish(self, slot: int, code: int) -> None:
        run, proc, started, log = self.active.pop(slot)
        log.close()
        self.free.append(slot)
        elapsed = time.time() - started
        status = read_status(run.run_dir)
        state = status["state"]
        if code == EXIT_LOCKED:
            text = f"skip {run.name}: running elsewhere"
        elif state in FINAL_STATES:
            row = run_state(run)
            text = (f"{state} {run.name} in {elapsed:.0f} s" + (f": val {row['val']:.4g}" if row["val"] else "")
                    + (f" — {status.get('message')}" if state == "diverged" else ""))
        else:
            how = f"killed by signal {-code}" if code < 0 else f"exit {code}"
            error = str(status.get("error") or "").strip().splitlines()
            text = (f"{state.upper()} {run.name} ({how})" + (f": {error[0][:300]}" if error else "")
                    + f"; log: {run.run_dir / 'train.log'}")
        self.progress.event(text)
        with open(self.launches, "a") as f:
            f.write(json.dumps({"run": run.name, "state": state, "exit": code, "process_s": elapsed,
                                "wall_s": (status.get("metrics") or {}).get("wall_s"), "end": time.time()}) + "\n")


def _warm_available() -> bool:
    import multiprocessing

    return os.environ.get("ABLATE_COLD_RUNNER", "") in ("", "0") and \
        "forkserver" in multiprocessing.get_all_start_methods()


def _terminate(proc: subprocess.Popen, grace_s: float = 30.0) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def _overhead(launches: Path) -> Optional[float]:
    if not launches.is_file():
        return None
    gaps = []
    for line in launches.read_text().splitlines():
        record = json.loads(line)
        if record.get("wall_s") is not None and record["state"] in FINAL_STATES:
            gaps.append(record["process_s"] - record["wall_s"])
    return statistics.median(gaps) if gaps else None


# ----------------------------------------------------------------------------------------- slurm

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

        from experiments.train import run_command  # the run itself, not the command line around it

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
    executor = submitit.AutoExecutor(folder=sweep.root / ".submitit" / "%j", cluster=s.get("cluster"))
    gpus_per_node = int(s.get("gpus_per_node", 1))
    params = {"name": f"ablate-{sweep.name}", "timeout_min": int(s.get("time_min", 240)),
              "gpus_per_node": gpus_per_node, "tasks_per_node": 1, "nodes": 1,
              "slurm_array_parallelism": int(s.get("array_parallelism", len(todo)))}
    for key in ("cpus_per_task", "mem_gb"):
        if s.get(key) is not None:
            params[key] = s[key]
    for key in ("partition", "account", "qos", "constraint", "additional_parameters"):
        if s.get(key) is not None:
            params[f"slurm_{key}"] = s[key]
    configs = [c.resolve() for c in sweep.configs]
    by_devices: dict[int, list[SweepRun]] = {}  # one job array per device count: Slurm starts one task per device
    for run in todo:
        by_devices.setdefault(devices_per_run(run.cfg.trainer), []).append(run)
    todo, jobs = [], []
    for n, runs in sorted(by_devices.items()):
        executor.update_parameters(**{**params, "tasks_per_node": n,
                                      "gpus_per_node": max(gpus_per_node, n) if gpus_per_node else 0})
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


# ----------------------------------------------------------------------------------------- wandb

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
    """The ``ablate train`` arguments of the run called ``name``."""
    for run in sweep.runs:
        if run.name == name:
            return run.command(sweep.configs)
    raise SweepError(f"{sweep.path}: no run named {name!r}; runs: {', '.join(r.name for r in sweep.runs)}")


def wandb_reachable(timeout_s: float = 5.0) -> Optional[str]:
    """None when W&B can be used online; otherwise why not."""
    from experiments.config import wandb_has_credentials

    if os.environ.get("WANDB_MODE") in ("offline", "disabled", "dryrun"):
        return f"WANDB_MODE={os.environ['WANDB_MODE']}"
    if not wandb_has_credentials():
        return "no W&B credentials (run `wandb login` or set WANDB_API_KEY)"
    base = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    host = base.split("://", 1)[-1].split("/", 1)[0]
    name, _, port = host.partition(":")
    try:
        socket.create_connection((name, int(port or 443)), timeout=timeout_s).close()
    except OSError as err:
        return f"{host} is unreachable ({err})"
    return None


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


def launch(sweep: Sweep, launcher: str, workers: Optional[int], retry_failed: bool, gpus_per_run: int = 1,
           wait: bool = False, runs_per_gpu: Optional[int] = 1) -> int:
    if launcher == "local":
        return run_local(sweep, workers, retry_failed, gpus_per_run, runs_per_gpu=runs_per_gpu)
    if runs_per_gpu != 1:
        raise SweepError(f"--runs-per-gpu is for the local launcher, not {launcher}")
    if launcher == "slurm":
        return run_slurm(sweep, retry_failed, wait)
    if launcher == "wandb":
        return run_wandb(sweep)
    raise SweepError(f"unknown launcher {launcher!r}; choices: {', '.join(LAUNCHERS)}")

