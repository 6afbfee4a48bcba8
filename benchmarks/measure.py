"""Timing, memory and peak measurements shared by every bench section.

Implementations of one comparison are timed *interleaved* in one process: after each has run
its warm-up units (not timed), every round times one unit of each implementation, starting
from a different implementation each round, so slow drift of the machine (other processes,
frequency changes) falls on all of them alike. A unit is one training step or one decoding
call; the result of each implementation is the list of its per-unit times.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch


@dataclass
class Contender:
    """One implementation in a comparison.

    ``unit`` runs one unit of work; ``tokens`` and ``flops`` are counted per unit; ``memory``
    (optional) returns the peak bytes of one unit, measured separately from the timing.
    """

    impl: str
    unit: Callable[[], object]
    tokens: int
    flops: float
    ours: bool = False
    memory: Optional[Callable[[], Optional[float]]] = None
    note: str = ""
    warmup: int = 0  # extra warm-up units (compiled models)
    times: list[float] = field(default_factory=list)
    failed: str = ""  # why it could not be timed (out of memory): reported, not fatal


def out_of_memory(device: torch.device) -> str:
    """Free what a failed unit left behind; the note its row gets."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return "out of memory at these dimensions"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(contenders: list[Contender], device: torch.device, warmup: int, repeats: int,
                     log: Callable[[str], None] = lambda s: None) -> None:
    """Fill ``c.times`` (seconds per unit) for every contender: warm-up excluded, rounds
    interleaved with a rotating start."""
    for c in contenders:
        if c.failed:
            continue
        start = time.perf_counter()
        try:
            for _ in range(warmup + c.warmup):
                c.unit()
            synchronize(device)
        except torch.OutOfMemoryError:
            c.failed = out_of_memory(device)
        log(f"  warm-up {c.impl}: {c.failed or f'{time.perf_counter() - start:.1f} s'}")
    timed = [c for c in contenders if not c.failed]
    for r in range(repeats):
        k = r % max(len(timed), 1)
        for c in timed[k:] + timed[:k]:
            synchronize(device)
            start = time.perf_counter()
            c.unit()
            synchronize(device)
            c.times.append(time.perf_counter() - start)


def summary(times: list[float], per_unit: float) -> dict[str, float]:
    """Median rate and its spread (min, max, quartiles) of ``per_unit`` / time."""
    rates = sorted(per_unit / t for t in times)
    q = statistics.quantiles(rates, n=4, method="inclusive") if len(rates) > 1 else [rates[0]] * 3
    return {"median": statistics.median(rates), "min": rates[0], "max": rates[-1],
            "q1": q[0], "q3": q[2]}


# ------------------------------------------------------------------------------------- memory
def persistent_bytes(*objects) -> int:
    """Bytes of the parameters, buffers and optimizer state of modules/optimizers (each
    storage once)."""
    seen: dict[int, int] = {}

    def add(t):
        if isinstance(t, torch.Tensor):
            s = t.untyped_storage()
            seen[s.data_ptr()] = s.nbytes()

    for obj in objects:
        if isinstance(obj, torch.nn.Module):
            for t in list(obj.parameters()) + list(obj.buffers()):
                add(t)
        elif isinstance(obj, torch.optim.Optimizer):
            for state in obj.state.values():
                for t in state.values():
                    add(t)
    return sum(seen.values())


def peak_bytes(unit: Callable[[], object], device: torch.device, persistent: int) -> Optional[float]:
    """Peak bytes of tensors alive while ``unit`` runs: ``persistent`` (what exists between
    units: weights, optimizer state) plus the highest point of the unit's own allocations.

    CUDA: the allocator's peak counter. CPU: the profiler's allocation events, replayed in
    time order (None when this torch's profiler does not expose them)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        unit()
        torch.cuda.synchronize(device)
        return float(torch.cuda.max_memory_allocated(device) - base + persistent)
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")  # keep the profiler's start/stop lines quiet
    try:
        from torch._C._profiler import _EventType
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            unit()
        allocations = []
        stack = list(prof.profiler.kineto_results.experimental_event_tree())
        while stack:
            node = stack.pop()
            if node.tag == _EventType.Allocation:
                allocations.append((node.start_time_ns, node.extra_fields.alloc_size))
            stack.extend(node.children)
    except (ImportError, AttributeError, RuntimeError):
        return None
    live = peak = 0
    for _, size in sorted(allocations):
        live += size
        peak = max(peak, live)
    return float(persistent + peak)


# ------------------------------------------------------------------------------------ profile
MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::baddbmm", "aten::_addmm_activation",
              "aten::linear_backward")


def op_profile(unit: Callable[[], object], device: torch.device, repeats: int = 2, top: int = 6) -> dict:
    """Where one unit's time goes, by operator (torch.profiler; self time, CPU or CUDA):
    milliseconds per unit in matrix products, in attention kernels, and in everything else, and
    the ``top`` operators by self time."""
    from torch.profiler import ProfilerActivity, profile

    os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(repeats):
            unit()
        synchronize(device)
    field = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    ops = sorted(((e.key, getattr(e, field) / 1e3 / repeats) for e in prof.key_averages()
                  if getattr(e, field) > 0), key=lambda kv: -kv[1])
    total = sum(ms for _, ms in ops)
    matmul = sum(ms for op, ms in ops if op in MATMUL_OPS)
    attention = sum(ms for op, ms in ops if "scaled_dot_product" in op or "flash" in op or "attention" in op)
    return {"total_ms": total, "matmul_ms": matmul, "attention_ms": attention,
            "other_ms": total - matmul - attention, "top": [[op, ms] for op, ms in ops[:top]]}


# ------------------------------------------------------------------------------- machine load
def cpu_seconds() -> Optional[tuple[float, float, float]]:
    """(wall clock, CPU seconds every CPU of the machine spent busy since boot — stolen by the
    hypervisor included —, CPU seconds of this process and its children), from /proc/stat and
    getrusage; None where /proc/stat is missing. Two readings give the cores other work used
    between them."""
    import resource

    try:
        ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
    own = sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
              for f in ("ru_utime", "ru_stime"))
    return time.time(), busy, own


def other_work(start, end) -> Optional[float]:
    """Cores kept busy by other processes between two :func:`cpu_seconds` readings."""
    if start is None or end is None or end[0] <= start[0]:
        return None
    return max(0.0, ((end[1] - start[1]) - (end[2] - start[2])) / (end[0] - start[0]))


def load_average() -> Optional[tuple[float, float, float]]:
    try:
        return os.getloadavg()
    except OSError:
        return None
