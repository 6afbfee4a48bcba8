"""The local launcher: a queue that runs a sweep's runs on this machine, one child process per run,
one run per GPU (or ``--runs-per-gpu K`` sharing each), or ``--workers`` runs on the CPU threads."""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any, Optional

from experiments.run.rundir import EXIT_LOCKED, FINAL_STATES, read_status
from experiments.sweep.launchers.base import Launcher, LaunchOptions, plan, visible_gpus, write_manifest
from experiments.sweep.sharing import (PROBE_STEPS, Mps, choose_runs_per_gpu, device_memory_mb, probe_overrides,
                                       probe_result, share_slots)
from experiments.sweep.spec import Sweep, SweepError, SweepRun
from experiments.sweep.status import counts, format_counts, run_state, status_table


class LocalLauncher(Launcher):
    name = "local"
    runs_here = True
    shares_gpus = True

    def run(self, sweep: Sweep, options: LaunchOptions) -> int:
        return run_local(sweep, options.workers, options.retry_failed, options.gpus_per_run,
                         runs_per_gpu=options.runs_per_gpu)


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
    progress.event(f"sweep {sweep.title}: {len(sweep.runs)} runs, {len(todo)} to run, {len(skipped)} skipped; "
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
    overhead = _overhead(queue.records)
    if overhead is not None:
        print(f"runner overhead: median {overhead:.1f} s per run (process lifetime minus the run's own wall time "
              f"in that process)")
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
        self.records: list[dict[str, Any]] = []  # this invocation's lines of launches.jsonl

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
            from experiments.run.warm import start_run

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
                    + ("; the next ablate sweep reruns it" if state == "failed" and status.get("retryable") else "")
                    + f"; log: {run.run_dir / 'train.log'}")
        self.progress.event(text)
        record = {"run": run.name, "state": state, "exit": code, "process_s": elapsed,
                  "wall_s": (status.get("metrics") or {}).get("wall_s"), "segment_s": status.get("segment_s"),
                  "end": time.time()}
        self.records.append(record)
        with open(self.launches, "a") as f:
            f.write(json.dumps(record) + "\n")


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


def _overhead(records: list[dict[str, Any]]) -> Optional[float]:
    """The median runner overhead of this invocation's finished runs: process lifetime minus the
    run's wall time in that process (``segment_s``: a resumed run's ``wall_s`` also counts the
    earlier processes' time, which made the difference negative)."""
    gaps = [r["process_s"] - r["segment_s"] for r in records
            if r.get("segment_s") is not None and r["state"] in FINAL_STATES]
    return statistics.median(gaps) if gaps else None
