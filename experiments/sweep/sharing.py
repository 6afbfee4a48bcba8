"""Several runs on one GPU: ``ablate sweep --runs-per-gpu K``.

A sweep of small models leaves most of a GPU idle when it runs one model per device. With K runs
per GPU:

- :func:`share_slots` repeats each GPU's worker environment K times, round-robin, so that the
  first runs spread over the GPUs before any GPU takes a second. Each shared slot carries
  ``ABLATE_GPU_MEMORY_FRACTION=1/K``: the run caps its CUDA allocator at that share of the device
  (:mod:`experiments.run.gpu_memory`), so one run cannot starve the others.
- :class:`Mps` starts a CUDA MPS control daemon private to the sweep when it can (the runs'
  kernels then execute side by side instead of taking turns), and otherwise leaves the runs to
  plain time-sharing; the sweep prints which (``ABLATE_MPS=0`` asks for time-sharing).
- ``--runs-per-gpu auto`` runs a short probe of the first run (:func:`probe_overrides`) and picks
  K with :func:`choose_runs_per_gpu` from its peak memory and MFU.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Optional

from experiments.run.gpu_memory import MEMORY_FRACTION_ENV
from experiments.sweep.spec import SweepError

MAX_RUNS_PER_GPU = 8
CONTEXT_MB = 600.0  # what a CUDA context and its kernels hold beyond the allocator, per process
MEMORY_HEADROOM = 1.25  # allocator fragmentation and the test/decoding peaks a short probe misses
TARGET_MFU = 0.40  # beyond this summed utilisation, another run only slows the others down


def parse_runs_per_gpu(text: str) -> Optional[int]:
    """``--runs-per-gpu``: a count from 1 to :data:`MAX_RUNS_PER_GPU`, or ``auto`` (None)."""
    if text == "auto":
        return None
    try:
        k = int(text)
    except ValueError:
        raise SweepError(f"--runs-per-gpu {text!r}: expected a whole number or 'auto'") from None
    if not 1 <= k <= MAX_RUNS_PER_GPU:
        raise SweepError(f"--runs-per-gpu {k}: expected 1 to {MAX_RUNS_PER_GPU} (or 'auto')")
    return k


def share_slots(slots: list[dict[str, str]], k: int) -> list[dict[str, str]]:
    """Each GPU slot ``k`` times, round-robin, each with its share of the device memory."""
    if k == 1:
        return slots
    fraction = f"{1 / k:.6g}"
    return [{**slot, MEMORY_FRACTION_ENV: fraction} for _ in range(k) for slot in slots]


class Mps:
    """A CUDA MPS control daemon for one sweep, or plain time-sharing when none can start."""

    EXECUTABLE = "nvidia-cuda-mps-control"

    def __init__(self) -> None:
        self.executable: Optional[str] = None
        self.directory: Optional[Path] = None
        self.how = "time-sharing"

    def start(self, env: Optional[dict[str, str]] = None) -> str:
        """Start the daemon; returns how the runs share each GPU, in words."""
        env = dict(os.environ if env is None else env)
        if env.get("ABLATE_MPS", "") == "0":
            self.how = "time-sharing (ABLATE_MPS=0)"
            return self.how
        executable = shutil.which(self.EXECUTABLE, path=env.get("PATH"))
        if executable is None:
            self.how = f"time-sharing (no CUDA MPS: {self.EXECUTABLE} is not on PATH)"
            return self.how
        # a short private path: the daemon's pipes are Unix sockets, whose paths are limited in length
        directory = Path(tempfile.mkdtemp(prefix="ablate-mps-"))
        (directory / "pipe").mkdir()
        (directory / "log").mkdir()
        try:
            done = subprocess.run([executable, "-d"], env={**env, **self._paths(directory)}, capture_output=True,
                                  text=True, timeout=30)
            problem = None if done.returncode == 0 else \
                (done.stderr or done.stdout).strip().splitlines()[-1:] or [f"exit {done.returncode}"]
        except (OSError, subprocess.TimeoutExpired) as err:
            problem = [str(err)]
        if problem:
            shutil.rmtree(directory, ignore_errors=True)
            self.how = f"time-sharing (the CUDA MPS daemon did not start: {problem[0]})"
            return self.how
        self.executable, self.directory = executable, directory
        self.how = f"CUDA MPS (daemon pipes in {directory / 'pipe'})"
        return self.how

    @staticmethod
    def _paths(directory: Path) -> dict[str, str]:
        return {"CUDA_MPS_PIPE_DIRECTORY": str(directory / "pipe"), "CUDA_MPS_LOG_DIRECTORY": str(directory / "log")}

    def client_env(self) -> dict[str, str]:
        """What a run's environment needs to reach this sweep's daemon ({} when time-sharing)."""
        return self._paths(self.directory) if self.directory is not None else {}

    def stop(self) -> None:
        if self.executable is None or self.directory is None:
            return
        try:
            subprocess.run([self.executable], input="quit\n", env={**os.environ, **self.client_env()},
                           capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            pass
        shutil.rmtree(self.directory, ignore_errors=True)
        self.executable = self.directory = None


# ----------------------------------------------------------------------------------------- auto

PROBE_STEPS = 40


def probe_overrides(root: Path) -> list[str]:
    """Overrides that turn a sweep run into its short probe: a few dozen steps with throughput
    logged every 10, no validation, one test batch, no checkpoint, no logger, in ``root``."""
    return [f"run.root={root}", "logger=none", f"trainer.max_steps={PROBE_STEPS}", "trainer.limit_val_batches=0",
            "trainer.limit_test_batches=1", f"checkpoint.every_n_steps={10 * PROBE_STEPS}", "perf.warmup_steps=5",
            "perf.every_n_steps=10", "trainer.enable_progress_bar=false"]


def choose_runs_per_gpu(peak_mem_mb: float, device_mem_mb: float, mfu: Optional[float]) -> tuple[int, str]:
    """K for ``--runs-per-gpu auto`` from one run's probe, and the reasoning in words.

    As many runs as the device memory holds (each its probed peak with headroom, plus a CUDA
    context), no more than bring the summed MFU to :data:`TARGET_MFU`, at most
    :data:`MAX_RUNS_PER_GPU`, at least 1."""
    if peak_mem_mb <= 0 or device_mem_mb <= 0:
        raise ValueError(f"peak_mem_mb and device_mem_mb must be positive, got {peak_mem_mb}, {device_mem_mb}")
    per_run = peak_mem_mb * MEMORY_HEADROOM + CONTEXT_MB
    by_memory = int(device_mem_mb // per_run)
    by_compute = MAX_RUNS_PER_GPU if not mfu or mfu <= 0 else math.floor(TARGET_MFU / mfu)
    k = max(1, min(MAX_RUNS_PER_GPU, by_memory, by_compute))
    mfu_text = "unknown MFU" if not mfu else f"MFU {mfu:.1%}"
    why = (f"probe: peak {peak_mem_mb:,.0f} MiB of {device_mem_mb:,.0f} MiB, {mfu_text}; memory allows "
           f"{by_memory}, utilisation {by_compute}, at most {MAX_RUNS_PER_GPU}: {k} run(s) per GPU")
    return k, why


def device_memory_mb(gpu: str) -> Optional[float]:
    """Total memory of one GPU (index or UUID as in ``CUDA_VISIBLE_DEVICES``) from ``nvidia-smi``,
    read without creating a CUDA context in this process; None when it cannot be read."""
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits",
                               f"--id={gpu}"], capture_output=True, text=True, timeout=30)
        return float(done.stdout.strip().splitlines()[0]) if done.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
        return None


def probe_result(status: dict[str, Any]) -> tuple[float, Optional[float]]:
    """Peak memory (MiB) and median MFU from a finished probe's ``status.json``."""
    metrics = status.get("metrics") or {}
    if status.get("state") != "completed" or "perf/peak_mem_mb" not in metrics:
        raise SweepError(f"--runs-per-gpu auto: the probe run ended {status.get('state')!r}"
                         + (f": {status['error']}" if status.get("error") else "") + "; give K instead")
    return float(metrics["perf/peak_mem_mb"]), metrics.get("perf/mfu_median")
