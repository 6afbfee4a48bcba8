"""Where a result came from: code version, package versions, machine."""

from __future__ import annotations

import functools
import netrc
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("torch", "lightning", "sacrebleu", "tokenizers", "omegaconf", "wandb", "numpy")
PROJECT = Path(__file__).resolve().parents[1]


@functools.lru_cache(maxsize=None)
def code_version() -> str:
    """``<commit>`` of the project's checkout, ``+dirty`` when files differ from it; ``unknown``
    outside a git checkout."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def machine(accelerator: str = "cpu") -> str:
    import os

    import torch

    if accelerator != "cpu" and torch.cuda.is_available():
        return f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"
    from lit.callbacks import cpu_model

    return f"{cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def environment(accelerator: str = "cpu") -> dict[str, Any]:
    return {"code": code_version(), "versions": versions(), "machine": machine(accelerator)}


def wandb_has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False
