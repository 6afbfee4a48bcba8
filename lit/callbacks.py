"""Callbacks and the local metrics logger every run writes, W&B or not."""

from __future__ import annotations

import json
import math
import platform
import re
import resource
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only

# Dense (non-sparse) datasheet peak FLOP/s by exact GPU model and precision; override with
# ``perf.peak_flops`` for a device that is missing here. Each model is recognised by a pattern
# over ``torch.cuda.get_device_name()``, first match wins (the more specific names come first),
# so an L40S never gets the L4's peak nor an H100 PCIe the SXM one. A device that matches none
# has an unknown peak, and its MFU is not reported rather than guessed.
_HOPPER_SXM = {"bf16": 989e12, "fp16": 989e12, "tf32": 494e12, "fp32": 67e12}
_HOPPER_NVL = {"bf16": 835e12, "fp16": 835e12, "tf32": 418e12, "fp32": 60e12}
_A100 = {"bf16": 312e12, "fp16": 312e12, "tf32": 156e12, "fp32": 19.5e12}
GPU_PEAKS: list[tuple[str, str, dict[str, float]]] = [
    # (model, pattern over the device name, {precision: FLOP/s})
    ("H100 NVL", r"\bH100\b.*\bNVL\b", _HOPPER_NVL),
    ("H100 PCIe", r"\bH100\b.*\bPCIe\b", {"bf16": 756e12, "fp16": 756e12, "tf32": 378e12, "fp32": 51e12}),
    ("H100 SXM", r"\bH100\b", _HOPPER_SXM),  # "NVIDIA H100 80GB HBM3" is the SXM part
    ("H200 NVL", r"\bH200\b.*\bNVL\b", _HOPPER_NVL),
    ("H200 SXM", r"\bH200\b", _HOPPER_SXM),
    ("B200", r"\bB200\b", {"bf16": 2250e12, "fp16": 2250e12, "tf32": 1100e12}),
    ("A100", r"\bA100\b", _A100),  # 40 and 80 GB, SXM and PCIe: the same dense peaks
    ("L40S", r"\bL40S\b", {"bf16": 362e12, "fp16": 362e12, "tf32": 183e12, "fp32": 91.6e12}),
    ("L40", r"\bL40\b", {"bf16": 181e12, "fp16": 181e12, "tf32": 90.5e12, "fp32": 90.5e12}),
    ("L4", r"\bL4\b", {"bf16": 121e12, "fp16": 121e12, "tf32": 60e12, "fp32": 30.3e12}),
    ("A10", r"\bA10\b", {"bf16": 125e12, "fp16": 125e12, "tf32": 62.5e12, "fp32": 31.2e12}),
    ("V100", r"\bV100\b", {"fp16": 125e12, "fp32": 15.7e12}),
    ("T4", r"\bT4\b", {"fp16": 65e12, "fp32": 8.1e12}),
]


def gpu_model(name: str) -> Optional[tuple[str, dict[str, float]]]:
    """(model, peaks) of a CUDA device name, or None for a GPU not in :data:`GPU_PEAKS`."""
    for model, pattern, peaks in GPU_PEAKS:
        if re.search(pattern, name):
            return model, peaks
    return None


def measured_matmul_peak(size: int = 2048, seconds: float = 2.0, dtype=torch.float32) -> float:
    """FLOP/s of a square fp32 matmul on this CPU, best of repeated runs."""
    g = torch.Generator().manual_seed(0)  # never touches the global RNG (a run's dropout stream)
    a, b = (torch.randn(size, size, dtype=dtype, generator=g) for _ in range(2))
    a @ b  # warm-up
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        a @ b
        best = max(best, 2 * size**3 / (time.perf_counter() - start))
    return best


def cpu_peak_flops(cache_dir: Path) -> float:
    """The measured CPU matmul peak, cached in ``cache_dir/cpu_peak.json`` per processor, thread
    count and torch version: every run on a machine divides by the same peak, measured once
    while nothing else runs (a peak measured beside a starting W&B service came out far too low)."""
    key = f"{platform.machine()}|{cpu_model()}|{torch.get_num_threads()} threads|torch {torch.__version__}"
    path = Path(cache_dir) / "cpu_peak.json"
    known = json.loads(path.read_text()) if path.is_file() else {}
    if key not in known:
        known[key] = measured_matmul_peak()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(known, indent=1))
    return known[key]


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown cpu"


def device_peak_flops(device: torch.device, precision: str) -> Optional[float]:
    """Dense peak FLOP/s of a CUDA device at the run's precision, from the table above (None,
    with a warning, for a GPU or precision it does not know)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        key = "bf16" if "bf16" in precision else "fp16" if "16" in precision else \
            ("tf32" if torch.backends.cuda.matmul.allow_tf32 else "fp32")
        found = gpu_model(name)
        if found is None or key not in found[1]:
            warnings.warn(f"no {key} peak known for {name!r}: MFU is not reported (set perf.peak_flops)")
            return None
        return found[1][key]
    return None


class ThroughputMonitor(L.Callback):
    """``perf/tokens_per_s`` (non-pad target tokens per second of training step, steady state:
    the first ``warmup_steps`` excluded), ``perf/mfu`` (analytic FLOPs / device dense peak) and
    ``perf/peak_mem_mb`` (CUDA max allocated, or the process's max RSS on CPU), logged every
    ``every_n_steps`` from the steps since the last log."""

    def __init__(self, warmup_steps: int = 5, every_n_steps: int = 50,
                 peak_flops: Optional[float] = None) -> None:
        self.warmup_steps, self.every_n_steps, self.peak_flops = warmup_steps, every_n_steps, peak_flops
        self.window: list[tuple[float, int, float]] = []  # (seconds, tokens, flops) per step
        self.all_rates: list[float] = []
        self.all_mfu: list[float] = []
        self._start = 0.0

    def on_fit_start(self, trainer, pl_module):
        if self.peak_flops is None and pl_module.device.type != "cpu":
            self.peak_flops = device_peak_flops(pl_module.device, str(trainer.precision))

    def _sync(self, pl_module):
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._sync(pl_module)
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._sync(pl_module)
        elapsed = time.perf_counter() - self._start
        if trainer.global_step <= self.warmup_steps:
            return
        self.window.append((elapsed, pl_module.tokens_in(batch), pl_module.flops_of(batch)))
        if len(self.window) >= self.every_n_steps:
            self._flush(trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module):
        self._flush(trainer, pl_module)

    def _flush(self, trainer, pl_module):
        if not self.window:
            return
        seconds = sum(w[0] for w in self.window)
        rate = sum(w[1] for w in self.window) / seconds * trainer.world_size
        self.all_rates.append(rate)
        metrics = {"perf/tokens_per_s": rate, "perf/peak_mem_mb": peak_memory_mb(pl_module.device)}
        if self.peak_flops:
            metrics["perf/mfu"] = sum(w[2] for w in self.window) / seconds / self.peak_flops
            metrics["perf/peak_flops"] = self.peak_flops
            self.all_mfu.append(metrics["perf/mfu"])
        self.window = []
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        trainer.callback_metrics.update({k: torch.tensor(v) for k, v in metrics.items()})

    def state_dict(self) -> dict[str, Any]:  # the windows of earlier segments of a resumed run
        return {"all_rates": list(self.all_rates), "all_mfu": list(self.all_mfu)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.all_rates = list(state.get("all_rates", []))
        self.all_mfu = list(state.get("all_mfu", []))

    def medians(self) -> dict[str, float]:
        """Medians over the logging windows of the run (steady state)."""
        out = {}
        if self.all_rates:
            out["perf/tokens_per_s_median"] = statistics.median(self.all_rates)
        if self.all_mfu:
            out["perf/mfu_median"] = statistics.median(self.all_mfu)
        return out


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


class DivergenceGuard(L.Callback):
    """Stops a run whose training loss turns NaN/inf and records the step and last finite loss."""

    def __init__(self) -> None:
        self.last_finite: Optional[float] = None
        self.diverged_at: Optional[int] = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        value = float(loss.detach()) if loss is not None else float("nan")
        if math.isfinite(value):
            self.last_finite = value
            return
        self.diverged_at = trainer.global_step
        trainer.should_stop = True

    @property
    def message(self) -> Optional[str]:
        if self.diverged_at is None:
            return None
        return f"loss became non-finite at step {self.diverged_at}; last finite loss {self.last_finite}"


class JsonlLogger(Logger):
    """Appends one JSON object per logging event (with ``step``) to ``metrics.jsonl``."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__()
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "metrics.jsonl"

    @property
    def name(self) -> str:
        return "jsonl"

    @property
    def version(self) -> str:
        return self.run_dir.name

    @property
    def save_dir(self) -> str:
        return str(self.run_dir)

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args, **kwargs) -> None:
        pass  # the resolved config is written to config.yaml by the run

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: Optional[int] = None) -> None:
        record = {"step": step, "time": time.time()}
        record.update({k: float(v) for k, v in metrics.items() if k != "epoch"})
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
