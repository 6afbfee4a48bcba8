"""The ``sweep`` section: the training throughput of a whole sweep of small LMs, K runs at a time.

A sweep of ``sweep_runs`` runs (seeds) of the ``lm-bible`` LM, ``sweep_steps`` steps each (no
validation, one test batch, no logger), goes through ``ablate sweep`` exactly as a user runs it:
on a GPU with ``--runs-per-gpu K`` for each K of ``sweep_ks``, with and without
``perf.cuda_graphs``; on CPU with ``--workers K`` (the cores split between the runs). Each row is
the sweep's training tokens (runs × steps × batch × block, read back from every run's resolved
config and checked against its status) over the sweep command's wall time, launches, tokenizer
cache hits and the runs' tests included; the ratio is against one run at a time without graphs.
The tokenizer is trained once beforehand, untimed. Each setting is timed ``sweep_repeats`` times,
the settings interleaved round by round.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from benchmarks.config import BenchConfig

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = ROOT / "configs" / "experiments" / "lm-bible.yaml"


def _overrides(cfg: BenchConfig, device: torch.device) -> dict:
    """What every run of the bench sweep sets (bf16 on a GPU, as the GPU rows of the bench)."""
    base = {"logger": "none", "trainer.max_steps": cfg.sweep_steps, "trainer.limit_val_batches": 0,
            "trainer.limit_test_batches": 1, "task.extrapolation": [1], "trainer.enable_progress_bar": False,
            "checkpoint.every_n_steps": 10 * cfg.sweep_steps}
    if device.type == "cuda":
        base["trainer.precision"] = "bf16-mixed"
    return {**base, **dict(item.split("=", 1) for item in cfg.sweep_set)}


def _write_sweep(cfg: BenchConfig, device: torch.device, directory: Path, graphs: bool) -> Path:
    overrides = {**_overrides(cfg, device), "perf.cuda_graphs": graphs}
    position = str(overrides.pop("model.position", "rope"))  # the sweep's one-point grid
    path = directory / "bench-sweep.yaml"
    path.write_text(yaml.safe_dump({
        "name": "bench-sweep", "description": "ablate bench: sweep throughput",
        "configs": [str(EXPERIMENT)], "overrides": overrides, "grid": {"model.position": [position]},
        "seeds": list(range(cfg.sweep_runs))}, sort_keys=False))
    return path


def _ablate(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "experiments.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True)


def _training_tokens(runs_root: Path) -> int:
    """Training tokens of every finished run of the sweep (LM blocks hold no padding in training)."""
    total = 0
    for status_path in sorted(runs_root.glob("bench-sweep/*/status.json")):
        status = json.loads(status_path.read_text())
        if status.get("state") != "completed":
            raise RuntimeError(f"bench sweep: {status_path.parent.name} ended {status.get('state')!r}: "
                               f"{status.get('error')}")
        resolved = yaml.safe_load((status_path.parent / "config.yaml").read_text())
        block = resolved["data"].get("block_size") or resolved["model"]["max_seq_len"]
        total += int(status["step"]) * int(resolved["data"]["batch_size"]) * int(block)
    return total


def sweep_throughput(cfg: BenchConfig, device: torch.device, peak: float, log=print) -> list[dict]:
    settings = [(k, graphs) for graphs in ([False, True] if device.type == "cuda" else [False])
                for k in cfg.sweep_ks]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    if device.type == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    times: dict[tuple[int, bool], list[float]] = {s: [] for s in settings}
    tokens: dict[tuple[int, bool], int] = {}
    with tempfile.TemporaryDirectory(prefix="ablate-bench-sweep-") as tmp:
        tmp = Path(tmp)
        cache = tmp / "cache"
        # the tokenizer (and, on CPU, the matmul peak) once, untimed
        warm = _ablate(["train", str(EXPERIMENT), *[f"{k}={v}" for k, v in _overrides(cfg, device).items()],
                        "trainer.max_steps=1", f"run.root={tmp / 'warm'}", f"data.cache_dir={cache}"], env)
        if warm.returncode != 0:
            raise RuntimeError(f"bench sweep: the warm-up run failed: {warm.stderr.strip()[-500:]}")
        for repeat in range(cfg.sweep_repeats):
            for k, graphs in settings:
                log(f"sweep: {cfg.sweep_runs} runs, {k} at a time{', CUDA graphs' if graphs else ''} "
                    f"(round {repeat + 1} of {cfg.sweep_repeats})")
                where = tmp / f"k{k}-{'graphs' if graphs else 'eager'}-{repeat}"
                where.mkdir()
                path = _write_sweep(cfg, device, where, graphs)
                how = ["--runs-per-gpu", str(k)] if device.type == "cuda" else ["--workers", str(k)]
                start = time.perf_counter()
                done = _ablate(["sweep", str(path), f"run.root={where / 'runs'}", f"data.cache_dir={cache}", *how],
                               env)
                elapsed = time.perf_counter() - start
                if done.returncode != 0:
                    raise RuntimeError(f"bench sweep (K={k}): exit {done.returncode}: "
                                       f"{(done.stdout + done.stderr).strip()[-1500:]}")
                tokens[(k, graphs)] = _training_tokens(where / "runs")
                times[(k, graphs)].append(elapsed)
    reference = (cfg.sweep_ks[0], False)
    rates = {s: [tokens[s] / t for t in times[s]] for s in settings}
    ref_rate = statistics.median(rates[reference])
    model = f"{cfg.sweep_runs} × lm-bible LM, {cfg.sweep_steps} steps each"
    text = (f"`ablate sweep` of {cfg.sweep_runs} runs of configs/experiments/lm-bible.yaml, {cfg.sweep_steps} steps, "
            f"no validation, one test batch; " + ("--runs-per-gpu K on one GPU" if device.type == "cuda"
                                                   else "--workers K on the CPU") + "; tokens/s = training tokens "
            "of the whole sweep / its wall time")
    rows = []
    for k, graphs in settings:
        r = sorted(rates[(k, graphs)])
        q = statistics.quantiles(r, n=4) if len(r) >= 2 else [r[0], r[0], r[0]]
        rows.append({"section": "sweep", "model": model, "impl": _impl(k, graphs), "ours": True,
                     "tokens_per_s": statistics.median(r), "min": r[0], "max": r[-1], "q1": q[0], "q3": q[2],
                     "repeats": len(r), "mfu": None, "peak_mem_mb": None,
                     "ratio": statistics.median(r) / ref_rate, "reference": _impl(*reference),
                     "settings": text, "note": "", "profile": None})
    return rows


def _impl(k: int, graphs: bool) -> str:
    return f"K={k}" + (", CUDA graphs" if graphs else "")
