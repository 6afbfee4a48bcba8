"""A run's share of its GPUs: when a sweep runs several runs on one GPU (``ablate sweep
--runs-per-gpu K``), each run's environment carries ``ABLATE_GPU_MEMORY_FRACTION=1/K``, and the run
caps its CUDA allocator at that share of the device (:func:`limit_gpu_memory`), so that one run
cannot starve the others; a run that outgrows its share fails as *out of memory*
(:func:`describe_failure`), which a sweep never retries by itself."""

from __future__ import annotations

import math
import os
from typing import Optional

MEMORY_FRACTION_ENV = "ABLATE_GPU_MEMORY_FRACTION"


def memory_fraction(env: Optional[dict[str, str]] = None) -> Optional[float]:
    """The share of each GPU's memory this process may allocate (from the sweep), or None."""
    value = (os.environ if env is None else env).get(MEMORY_FRACTION_ENV, "").strip()
    if not value:
        return None
    try:
        fraction = float(value)
    except ValueError:
        fraction = math.nan
    if not 0 < fraction <= 1:
        raise ValueError(f"{MEMORY_FRACTION_ENV}={value!r}: expected a number in (0, 1]")
    return fraction


def limit_gpu_memory() -> Optional[float]:
    """Cap this process's CUDA allocator at its share of every visible GPU; returns the share."""
    fraction = memory_fraction()
    if fraction is None:
        return None
    import torch

    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            torch.cuda.set_per_process_memory_fraction(fraction, index)
    return fraction


def is_out_of_memory(err: BaseException) -> bool:
    import torch

    return isinstance(err, torch.OutOfMemoryError) or (isinstance(err, RuntimeError) and "out of memory" in str(err))


def describe_failure(err: BaseException) -> str:
    """What a failed run's status records: out-of-memory failures say so, and what to change."""
    if not is_out_of_memory(err):
        return repr(err)
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    fraction = memory_fraction()
    limit = (f"; this run's limit was {fraction:.3g} of the GPU's memory ({MEMORY_FRACTION_ENV}, from "
             f"--runs-per-gpu): run fewer per GPU, or a smaller batch") if fraction else \
        "; use a smaller batch (data.batch_size or data.max_tokens) or a smaller model"
    return f"out of memory: {first}{limit}"
