"""Callbacks and the local metrics logger every run writes, W&B or not."""

from __future__ import annotations

import json
import math
import resource
import statistics
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only

from tools.system import device_peak_flops


class ThroughputMonitor(L.Callback):
    """``perf/tokens_per_s`` (non-pad target tokens per second of training step, steady state:
    the first ``warmup_steps`` excluded), ``perf/mfu`` (analytic FLOPs / device dense peak) and
    ``perf/peak_mem_mb`` (CUDA max allocated, or the process's max RSS on CPU), logged every
    ``every_n_steps`` from the steps since the last log. A step is timed from its start to its
    end: on CUDA between two events that the device records (read at logging, so no step waits
    for the device), on CPU by the host clock. Token counts come from the batch's host-side
    counts."""

    def __init__(self, warmup_steps: int = 5, every_n_steps: int = 50,
                 peak_flops: Optional[float] = None) -> None:
        self.warmup_steps, self.every_n_steps, self.peak_flops = warmup_steps, every_n_steps, peak_flops
        self.window: list[tuple[Any, int, float]] = []  # (seconds or CUDA events, tokens, flops) per step
        self.all_rates: list[float] = []
        self.all_mfu: list[float] = []
        self._start: Any = 0.0

    def on_fit_start(self, trainer, pl_module):
        if self.peak_flops is None and pl_module.device.type != "cpu":
            self.peak_flops = device_peak_flops(pl_module.device, str(trainer.precision))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if pl_module.device.type == "cuda":  # timed by the device itself: no step waits for it
            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if isinstance(self._start, torch.cuda.Event):
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            elapsed = (self._start, end)
        else:
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
        seconds = sum(_seconds(w[0]) for w in self.window)
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


def _seconds(elapsed) -> float:
    """A step's duration: seconds, or a pair of CUDA events (waited for here, at logging)."""
    if isinstance(elapsed, tuple):
        start, end = elapsed
        end.synchronize()
        return start.elapsed_time(end) / 1000
    return elapsed


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


class DivergenceGuard(L.Callback):
    """Stops a run whose training loss turns NaN/inf and records the step, the last finite loss
    and the gradient norms of the steps up to it.

    The losses are read from the device every ``check_every_n_steps`` steps in one transfer, and
    whenever :meth:`check` is called (before every checkpoint, and at the end of training): with
    more than 1, a GPU run does not wait for its device after every step. Such a run may train
    up to that many steps past a non-finite loss before it stops; the step named is the first
    non-finite one, and no state after it is ever saved."""

    def __init__(self, check_every_n_steps: int = 1) -> None:
        self.check_every = max(1, int(check_every_n_steps))
        self.last_finite: Optional[float] = None
        self.diverged_at: Optional[int] = None
        self.grad_norms: list[float] = []  # the last global gradient norms before clipping
        self._pending: list[tuple[int, torch.Tensor, Optional[torch.Tensor]]] = []  # (step, loss, norm)
        self._recent_norms: deque[float] = deque(maxlen=4)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        loss = loss.detach() if loss is not None else torch.tensor(float("nan"))
        norms = getattr(pl_module, "grad_norms", ())
        self._pending.append((trainer.global_step, loss, norms[-1] if norms else None))
        if len(self._pending) >= self.check_every:
            self.check(trainer)

    def on_train_end(self, trainer, pl_module):
        self.check(trainer)

    def check(self, trainer: Optional[L.Trainer] = None) -> bool:
        """Read the losses logged since the last check; True when the run has diverged (then
        ``trainer.should_stop`` is set)."""
        if self.diverged_at is None and self._pending:
            pending, self._pending = self._pending, []
            # one transfer for the losses and norms of every step since the last check
            values = torch.stack([torch.stack([loss.float().reshape(()),
                                               (norm if norm is not None else loss.new_tensor(math.nan)).float()
                                               .reshape(()).to(loss.device)])
                                  for _, loss, norm in pending]).cpu().tolist()
            for (step, _, norm), (loss, norm_value) in zip(pending, values):
                if norm is not None:
                    self._recent_norms.append(norm_value)
                if math.isfinite(loss):
                    self.last_finite = loss
                    continue
                self.diverged_at = step
                self.grad_norms = list(self._recent_norms)
                break
        if self.diverged_at is not None and trainer is not None:
            trainer.should_stop = True
        return self.diverged_at is not None

    @property
    def message(self) -> Optional[str]:
        if self.diverged_at is None:
            return None
        text = f"loss became non-finite at step {self.diverged_at}; last finite loss {self.last_finite}"
        if self.grad_norms:
            text += "; last gradient norms before clipping " + ", ".join(f"{n:.4g}" for n in self.grad_norms)
        return text


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
