"""What a result ran on: the CPU or GPU model, its peak FLOP/s, the code version and package
versions. One module, used by training (MFU), reports (each run's environment) and the bench
(its machine facts and matmul peak)."""

from __future__ import annotations

import functools
import json
import os
import platform
import re
import subprocess
import time
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

import torch

PROJECT = Path(__file__).resolve().parents[1]
PACKAGES = ("torch", "lightning", "sacrebleu", "tokenizers", "omegaconf", "wandb", "numpy")

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


# ----------------------------------------------------------------------------------- the CPU
@functools.lru_cache(maxsize=None)
def _cpuinfo() -> tuple[dict[str, str], ...]:
    """/proc/cpuinfo as one ``{key: value}`` per logical processor; empty where it is missing."""
    try:
        return parse_cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError:
        return ()


def parse_cpuinfo(text: str) -> tuple[dict[str, str], ...]:
    """The blocks of a /proc/cpuinfo text, one ``{key: value}`` per logical processor."""
    processors = []
    for block in text.split("\n\n"):
        fields = dict(line.split(":", 1) for line in block.splitlines() if ":" in line)
        if fields:
            processors.append({k.strip(): v.strip() for k, v in fields.items()})
    return tuple(processors)


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux)."""
    for proc in _cpuinfo():
        if "model name" in proc:
            return proc["model name"]
    return platform.processor() or "unknown cpu"


def physical_cores(processors: Optional[tuple[dict[str, str], ...]] = None) -> int:
    """Physical cores of this machine (hyper-threads not counted)."""
    processors = _cpuinfo() if processors is None else processors
    cores = {(p.get("physical id"), p.get("core id", p.get("processor"))) for p in processors}
    return len(cores) or os.cpu_count() or 1


def cpu_flags() -> str:
    """The widest vector extensions the CPU reports (what fp32 matmul speed depends on)."""
    for proc in _cpuinfo():
        if "flags" in proc:
            flags = set(proc["flags"].split())
            found = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile") if f in flags]
            return ", ".join(found) or "no AVX2"
    return "unknown"


# --------------------------------------------------------------------------------- the peaks
def gpu_model(name: str) -> Optional[tuple[str, dict[str, float]]]:
    """(model, peaks) of a CUDA device name, or None for a GPU not in :data:`GPU_PEAKS`."""
    for model, pattern, peaks in GPU_PEAKS:
        if re.search(pattern, name):
            return model, peaks
    return None


def device_peak_flops(device: torch.device, precision: str) -> Optional[float]:
    """Dense peak FLOP/s of a CUDA device at a Lightning ``precision``, from :data:`GPU_PEAKS`
    (None, with a warning, for a GPU or precision it does not know; None on a CPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    key = "bf16" if "bf16" in precision else "fp16" if "16" in precision else \
        ("tf32" if torch.backends.cuda.matmul.allow_tf32 else "fp32")
    found = gpu_model(name)
    if found is None or key not in found[1]:
        warnings.warn(f"no {key} peak known for {name!r}: MFU is not reported (set perf.peak_flops)")
        return None
    return found[1][key]


def matmul_peak(device: torch.device = torch.device("cpu"), dtype: torch.dtype = torch.float32,
                size: int = 2048, seconds: float = 2.0) -> float:
    """FLOP/s of square ``size`` matmuls on ``device``: the best of repeated runs over
    ``seconds``. Its random operands come from a private generator: the global RNG (a run's
    dropout stream) is never touched."""
    g = torch.Generator(device=device).manual_seed(0)
    a, b = (torch.randn(size, size, device=device, dtype=dtype, generator=g) for _ in range(2))
    n = 8 if device.type == "cuda" else 1  # a GPU matmul is too short to time one at a time
    a @ b  # warm-up
    _synchronize(device)
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        for _ in range(n):
            a @ b
        _synchronize(device)
        best = max(best, n * 2 * size**3 / (time.perf_counter() - start))
    return best


def cpu_peak_flops(cache_dir: Path) -> float:
    """The measured CPU fp32 matmul peak, cached in ``cache_dir/cpu_peak.json`` per processor,
    thread count and torch version: every run on a machine divides by the same peak, measured
    once while nothing else runs (a peak measured beside a starting W&B service came out far
    too low)."""
    key = f"{platform.machine()}|{cpu_model()}|{torch.get_num_threads()} threads|torch {torch.__version__}"
    path = Path(cache_dir) / "cpu_peak.json"
    known = json.loads(path.read_text()) if path.is_file() else {}
    if key not in known:
        known[key] = matmul_peak()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(known, indent=1))
    return known[key]


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------ code, packages, machine
@functools.lru_cache(maxsize=None)
def code_version() -> str:
    """``<commit>`` of the project's checkout, ``+dirty`` when tracked files differ from it;
    ``unknown`` outside a git checkout."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def versions(extra: tuple[str, ...] = ()) -> dict[str, str]:
    """Python and the installed versions of :data:`PACKAGES` (and ``extra``), missing ones left out."""
    found = {"python": platform.python_version()}
    for name in (*PACKAGES, *extra):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def machine(accelerator: str = "cpu") -> str:
    """``<n>x <GPU>`` when a GPU runs the work, else the CPU model, cores and torch threads."""
    if accelerator != "cpu" and torch.cuda.is_available():
        return f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"
    return f"{cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def environment(accelerator: str = "cpu") -> dict[str, Any]:
    """``code`` (git commit), ``versions`` and ``machine``: what every run and bench records."""
    return {"code": code_version(), "versions": versions(), "machine": machine(accelerator)}
