"""Run a bench: environment, matmul peak, the sections, the breakdown, the report."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Optional

import torch

from benchmarks import models as M
from benchmarks import report, suites
from benchmarks.breakdown import sublayer_breakdown
from benchmarks.config import SECTIONS, BenchConfig, gpu_config, tiny_config
from benchmarks.measure import cpu_seconds, load_average, other_work
from benchmarks.sweep import sweep_throughput
from tools.errors import report_error
from tools.system import (code_version, cpu_flags, cpu_model, device_peak_flops, matmul_peak, physical_cores,
                        versions)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def environment(cfg: BenchConfig, device: torch.device, peak: float, load=None) -> dict:
    found = versions(extra=("x-transformers", "transformers"))
    facts = {
        "code": f"git commit {code_version()}",
        "CPU": f"{cpu_model()} ({physical_cores()} physical cores; {cpu_flags()})",
        "torch threads": str(torch.get_num_threads()),
        "python": found["python"],
        "torch": torch.__version__,
        "x-transformers": found.get("x-transformers", "not installed"),
        "transformers": found.get("transformers", "not installed"),
        "precision": "bf16-mixed (autocast), fp32 weights" if device.type == "cuda" else "fp32",
        "matmul peak": (f"{peak / 1e9:,.1f} GFLOP/s (measured: 2048² fp32 matmuls, best of 2 s)"
                        if device.type == "cpu" else
                        f"{peak / 1e12:,.0f} TFLOP/s (the device's dense bf16 datasheet peak; MFU is "
                        f"measured against it)"),
        "1-min load average at start": "unknown" if load is None else f"{load[0]:.2f}",
    }
    name = cpu_model()
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        facts = {"GPU": name, **facts}
    return {"device": device.type, "device_name": name, "threads": torch.get_num_threads(),
            "torch": torch.__version__, "facts": facts,
            "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M")}


def device_peak(device: torch.device) -> float:
    """CPU: measured fp32 matmul peak. CUDA: the dense bf16 datasheet peak when the device is
    known (``tools.system.GPU_PEAKS``), otherwise a measured bf16 matmul peak."""
    if device.type == "cuda":
        return device_peak_flops(device, "bf16-mixed") or matmul_peak(device, torch.bfloat16, size=8192)
    return matmul_peak(device, torch.float32)


METHOD = [
    "Throughput: target tokens per second of a training step (forward, token-level "
    "cross-entropy in fp32, backward, fused AdamW, zeroed gradients); decoding: new tokens per "
    "second of a whole `generate`/`translate` call (prompt or source encoding included).",
    "All implementations of one model live in one process and are timed interleaved: warm-up "
    "units are not timed, then each round times one unit of every implementation, starting "
    "from a different one each round.",
    "MFU = analytic FLOPs / peak. Training: 6·(matmul parameters a token passes through, output "
    "head included) + 12·L·d·T per token, attention without causal halving "
    "(`variants.flops.FlopCounter`), the same count for every implementation of a model. "
    "Decoding: 2·N + 4·L·d·context per processed position (beam rows counted).",
    "Peak memory: bytes of live tensors at the highest point of one unit — weights, buffers "
    "and optimizer state plus the unit's own allocations (CPU: the profiler's allocation "
    "events; CUDA: the allocator's peak counter). Python and library overheads are not counted.",
    "Our rows run the training path of `ablate train`: `model.hidden` then `model.loss`, the "
    "output head and cross-entropy fused in row chunks (`variants.loss`), so the (tokens × "
    "vocabulary) logits are never materialised. Peers compute full logits and "
    "`F.cross_entropy` (what their own training losses do), with the same fused AdamW. The "
    "batches hold no padding and our model is told so (`padded=False`), sparing the check.",
    "Every contender runs eagerly, as shipped. With `--compile`, each model gets a second table "
    "(`, torch.compile`) where every contender's whole objective goes through `torch.compile`: "
    "ours model, head and loss (under the compiler `model.loss` is the plain formula, which the "
    "compiler fuses), peers their model and `F.cross_entropy`; its ratios compare compiled with "
    "compiled.",
    "Dropout is 0 in every row (`--set dropout=0.1` to change it): the implementations place "
    "dropout differently, so with it they would not compute the same thing.",
]


def run_bench(cfg: BenchConfig, command: str = "ablate bench", log=print) -> dict:
    start = time.perf_counter()
    device = resolve_device(cfg.device)
    if device.type == "cpu":
        torch.set_num_threads(cfg.threads or physical_cores())
    else:
        torch.backends.cuda.matmul.allow_tf32 = True
    start_load, start_cpu = load_average(), cpu_seconds()
    log(f"measuring the matmul peak on {device} ...")
    peak = device_peak(device)
    env = environment(cfg, device, peak, start_load)
    if device.type == "cuda":
        measured = matmul_peak(device, torch.bfloat16, size=8192)
        env["facts"]["measured bf16 matmul"] = (f"{measured / 1e12:,.0f} TFLOP/s (8192³, random data, best "
                                                f"of 2 s) = {100 * measured / peak:.0f}% of the peak above")
        env["measured_peak"] = measured
    log(f"peak {peak / 1e9:,.1f} GFLOP/s")
    rows: list[dict] = []
    if "train-lm" in cfg.sections:
        rows += suites.train_lm(cfg, device, peak, log)
    if "train-seq2seq" in cfg.sections:
        rows += suites.train_seq2seq(cfg, device, peak, log)
    if "train-encoder" in cfg.sections:
        rows += suites.train_encoder(cfg, device, peak, log)
    if "loss" in cfg.sections:
        rows += suites.head_loss(cfg, device, peak, log)
    if "decode" in cfg.sections:
        rows += suites.decode(cfg, device, peak, log)
    if "positions" in cfg.sections:
        rows += suites.positions(cfg, device, peak, log)
    if "moe" in cfg.sections:
        rows += suites.moe(cfg, device, peak, log)
    if "sweep" in cfg.sections:
        rows += sweep_throughput(cfg, device, peak, log)
    breakdown = breakdowns(cfg, device, log) if "breakdown" in cfg.sections else {}
    load = load_average()
    env["facts"]["1-min load average at end"] = "unknown" if load is None else f"{load[0]:.2f}"
    env["command"] = command
    env["wall_s"] = time.perf_counter() - start
    notes = sorted(set(cfg.notes + suites.missing_peers(cfg.sections)))
    notes += [f"{k}: {v}" for k, v in M.PEER_NOTES.items()]
    others = other_work(start_cpu, cpu_seconds())
    env["facts"]["other processes during the run"] = (
        "unknown" if others is None else f"{others:.2f} cores busy on average (from /proc/stat, this "
                                         f"process excluded)")
    if device.type == "cpu" and others is not None and others > 0.1 * physical_cores():
        notes.insert(0, f"The machine was busy with other work during this run ({others:.2f} of its "
                        f"{physical_cores()} cores on average): absolute tokens/s, the matmul peak and MFU "
                        f"are depressed and noisier than on an idle machine; the ratios come from "
                        f"interleaved rounds, so every implementation shared the same conditions.")
    return {"env": env, "config": {k: v for k, v in vars(cfg).items() if k != "notes"}, "rows": rows,
            "targets": report.check_targets(rows, device.type),
            "breakdown": breakdown, "method": METHOD, "notes": notes}


def breakdowns(cfg: BenchConfig, device: torch.device, log=print) -> dict[str, dict[str, float]]:
    """Per-sublayer times of our training step for each LM preset and the encoder-decoder."""
    out = {}
    inputs, targets = suites.lm_batch(cfg, device)
    jobs = [(suites.PRESET_TITLES[p], M.preset_config(p, kind="lm", **cfg.dims()), (inputs,), targets)
            for p in cfg.presets]
    jobs.append(("vaswani enc-dec", M.preset_config("vaswani", kind="seq2seq", **cfg.s2s_dims()),
                 *suites.s2s_batch(cfg, device)))
    for name, mcfg, inputs, targets in jobs:
        log(f"breakdown {name}")
        torch.manual_seed(cfg.seed)
        model = M.ours(mcfg).to(device).train()
        unit, optimizer = suites.training_unit(
            model, lambda: suites.ours_loss(model, model.hidden(*inputs, padded=False), targets), device)
        for _ in range(cfg.warmup + 1):
            unit()
        with suites.autocast(device):
            out[name] = sublayer_breakdown(model, inputs, lambda h: suites.ours_loss(model, h, targets),
                                           unit, optimizer, device)
    return out


# ------------------------------------------------------------------------------------------ CLI
def config_from_args(args: argparse.Namespace) -> BenchConfig:
    base = tiny_config() if args.quick else BenchConfig()
    changes = [f"device={args.device}", f"presets={args.presets}", f"compile={args.compile}"]
    if args.sections:
        changes.append(f"sections={args.sections}")
    if args.threads:
        changes.append(f"threads={args.threads}")
    cfg = base.override(changes)
    if resolve_device(cfg.device).type == "cuda" and not args.quick:
        cfg = gpu_config(cfg)
    if args.repeats:
        cfg = cfg.override([f"repeats={args.repeats}"])
    # set directly: through a dotlist, --out '' (write no report) would read as a missing value
    return dataclasses.replace(cfg.override(args.set), out=args.out)


def merge_results(parts: list[dict], notes: tuple[str, ...] = ()) -> dict:
    """One result from bench runs made in parts (one process each, same machine): a later part's
    rows of a (section, model) replace an earlier part's, as do its breakdowns; the machine facts
    are the last part's, and every part's command, date and duration is kept."""
    groups: dict[tuple, list[dict]] = {}
    for part in parts:
        found: dict[tuple, list[dict]] = {}
        for row in part["rows"]:
            found.setdefault((row["section"], row["model"]), []).append(row)
        groups.update(found)
    order = {s: i for i, s in enumerate(SECTIONS)}
    rows = [r for key in sorted(groups, key=lambda k: order.get(k[0], len(order))) for r in groups[key]]
    env = {**parts[-1]["env"], "facts": dict(parts[-1]["env"]["facts"])}
    if len(parts) == 1:  # one run: the same report again, with the notes added
        return {**parts[0], "env": env, "notes": list(dict.fromkeys(parts[0]["notes"] + list(notes)))}
    env["parts"] = [{"command": p["env"]["command"], "date": p["env"]["date"], "wall_s": p["env"]["wall_s"],
                     "rows": sorted({f"{r['section']} / {r['model']}" for r in p["rows"]}
                                    | ({"breakdown"} if p["breakdown"] else set()))} for p in parts]
    env["wall_s"] = sum(p["env"]["wall_s"] for p in parts)
    env["date"] = max(p["env"]["date"] for p in parts)
    breakdown: dict = {}
    for part in parts:
        breakdown.update(part["breakdown"])
    all_notes = list(dict.fromkeys([n for p in parts for n in p["notes"]] + list(notes)))
    return {"env": env, "config": parts[-1]["config"], "rows": rows,
            "targets": report.check_targets(rows, env["device"]), "breakdown": breakdown,
            "method": METHOD, "notes": all_notes}


def main_from_args(args: argparse.Namespace, command: Optional[str] = None) -> int:
    if args.merge:
        try:
            parts = [json.loads(Path(p).read_text()) for p in args.merge]
        except (OSError, ValueError) as err:
            report_error("ablate bench --merge", err)
            return 2
        devices = {p["env"]["device_name"] for p in parts}
        if len(devices) > 1:
            print(f"ablate bench --merge: the parts come from different machines: {sorted(devices)}",
                  file=sys.stderr)
            return 2
        result = merge_results(parts, tuple(args.note))
        cfg = None
    else:
        try:
            cfg = config_from_args(args)
        except ValueError as err:
            report_error("ablate bench", err)
            return 2
        command = command or "ablate bench " + " ".join(shlex.quote(a) for a in sys.argv[2:])
        cfg = dataclasses.replace(cfg, notes=[*cfg.notes, *args.note])
        result = run_bench(cfg, command=command.strip())
    print()
    print("\n".join(report.table_lines(result["rows"], markdown=False)))
    if result["targets"]:
        print()
        for c in result["targets"]:
            print(f"{'met   ' if c['met'] else 'MISSED'}  {c['target']}: {c['measured']}")
    if result["breakdown"]:
        print()
        print("\n".join(report.breakdown_lines(result["breakdown"], markdown=False)))
    for note in result["notes"]:
        print(f"note: {note}")
    out = cfg.out if cfg is not None else args.out
    if out:
        path = report.write_report(result, Path(out))
        print(f"\nreport written to {path}")
    return 0
