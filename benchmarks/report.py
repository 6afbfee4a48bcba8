"""Tables, target checks and the written report of a bench run."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional

TARGETS = {  # CPU targets of the project
    "train_vs_fastest_peer": 1.15,
    "seq2seq_vs_torch": 1.15,
    "decode_vs_hf": 1.3,
    "gpt2_mfu": 0.70,
}
GPU_TARGETS = {  # on a GPU, MFU against the device's dense bf16 peak
    "gpt2_mfu": 0.50,
    "seq2seq_mfu": 0.40,
    "alibi_vs_rope": 0.85,
    "sweep_vs_one_at_a_time": 4.0,  # the sweep section: its best K against K = 1
}


def _num(x: Optional[float], fmt: str = "{:,.0f}") -> str:
    return "–" if x is None else fmt.format(x)


def table_lines(rows: list[dict], markdown: bool) -> list[str]:
    header = ["section", "model", "implementation", "tokens/s", "min–max", "IQR", "× ref", "MFU", "peak MB"]
    body = []
    for r in rows:
        body.append([
            r["section"], r["model"], r["impl"] + (" *" if r["ours"] else ""),
            _num(r["tokens_per_s"]) if r["tokens_per_s"] is not None else r.get("note") or "–",
            f"{_num(r['min'])}–{_num(r['max'])}",
            f"{_num(r['q1'])}–{_num(r['q3'])}",
            _num(r["ratio"], "{:.2f}×"), _num(None if r["mfu"] is None else 100 * r["mfu"], "{:.1f}%"),
            _num(r["peak_mem_mb"], "{:,.0f}" if (r["peak_mem_mb"] or 0) >= 10 else "{:.2f}"),
        ])
    if markdown:
        lines = ["| " + " | ".join(header) + " |",
                 "|" + "|".join(["---"] * 3 + ["---:"] * (len(header) - 3)) + "|"]
        return lines + ["| " + " | ".join(b) + " |" for b in body]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(header)]

    def fmt(cells):
        return "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return [fmt(header), "-" * len(fmt(header))] + [fmt(b) for b in body]


def check_targets(rows: list[dict], device: str = "cpu") -> list[dict]:
    """One entry per target and row group: what was asked, what was measured, met or not."""
    if device != "cpu":
        return check_gpu_targets(rows)
    checks = []
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["section"], r["model"]), []).append(r)
    for (section, model), group in groups.items():
        ours = [r for r in group if r["ours"] and r["tokens_per_s"] is not None]
        peers = [r for r in group if not r["ours"] and r["tokens_per_s"] is not None]
        if not ours or not peers:
            continue
        ref = next((r for r in peers if r["impl"] == group[0]["reference"]), None)
        for r in ours:
            if ref is None or r["ratio"] is None:
                continue
            goal = {"train-lm": TARGETS["train_vs_fastest_peer"], "train-seq2seq": TARGETS["seq2seq_vs_torch"],
                    "decode": TARGETS["decode_vs_hf"]}.get(section)
            if goal is None:  # a section measured without a target (the head + loss alone)
                continue
            checks.append({"target": f"{section} {model}: {r['impl']} ≥ {goal:.2f}× {ref['impl']}",
                           "measured": f"{r['ratio']:.2f}×", "met": r["ratio"] >= goal})
        if section.startswith("train"):
            fastest = max(peers, key=lambda p: p["tokens_per_s"])
            for r in ours:
                if r["peak_mem_mb"] is None or fastest["peak_mem_mb"] is None:
                    continue
                checks.append({"target": f"{section} {model}: {r['impl']} peak memory ≤ fastest peer's "
                                         f"({fastest['impl']}, {fastest['peak_mem_mb']:,.0f} MB)",
                               "measured": f"{r['peak_mem_mb']:,.0f} MB",
                               "met": r["peak_mem_mb"] <= fastest["peak_mem_mb"]})
        if section == "train-lm" and model.startswith("gpt2"):
            for r in ours:
                if r["mfu"] is not None:
                    checks.append({"target": f"{section} {model}: {r['impl']} MFU ≥ {100 * TARGETS['gpt2_mfu']:.0f}% "
                                             f"of the measured matmul peak",
                                   "measured": f"{100 * r['mfu']:.1f}%", "met": r["mfu"] >= TARGETS["gpt2_mfu"]})
    return checks


def check_gpu_targets(rows: list[dict]) -> list[dict]:
    """The GPU targets: MFU of our gpt2-style LM and encoder-decoder, ALiBi against RoPE, and the
    sweep section's best K against one run at a time."""
    checks = []
    sweep = [r for r in rows if r["section"] == "sweep" and r["ratio"] is not None]
    if sweep:
        best, goal = max(sweep, key=lambda r: r["ratio"]), GPU_TARGETS["sweep_vs_one_at_a_time"]
        checks.append({"target": f"sweep {best['model']}: the best K ≥ {goal:.0f}× one run at a time "
                                 f"({best['reference']})",
                       "measured": f"{best['ratio']:.2f}× ({best['impl']})", "met": best["ratio"] >= goal})
    for r in rows:
        if not r["ours"] or r["mfu"] is None:
            continue
        goal = None
        if r["section"] == "train-lm" and r["model"].startswith("gpt2"):
            goal = GPU_TARGETS["gpt2_mfu"]
        elif r["section"] == "train-seq2seq":
            goal = GPU_TARGETS["seq2seq_mfu"]
        if goal is not None:
            checks.append({"target": f"{r['section']} {r['model']}: {r['impl']} MFU ≥ {100 * goal:.0f}% "
                                     f"of the dense bf16 peak",
                           "measured": f"{100 * r['mfu']:.1f}%", "met": r["mfu"] >= goal})
        if r["section"] == "positions" and r["impl"].endswith("alibi") and r["ratio"] is not None:
            goal = GPU_TARGETS["alibi_vs_rope"]
            checks.append({"target": f"{r['model']}: ALiBi ≥ {goal:.2f}× RoPE's tokens/s",
                           "measured": f"{r['ratio']:.2f}×", "met": r["ratio"] >= goal})
    return checks


def breakdown_lines(breakdowns: dict[str, dict[str, float]], markdown: bool) -> list[str]:
    if not breakdowns:
        return []
    kinds = [k for k in next(iter(breakdowns.values())) if k not in ("step",)]
    header = ["model", "step ms"] + kinds
    body = []
    for name, b in breakdowns.items():
        step = b["step"]
        body.append([name, f"{1000 * step:.0f}"] +
                    [f"{1000 * b[k]:.0f} ({100 * b[k] / step:.0f}%)" if b.get(k) else "–" for k in kinds])
    if markdown:
        return (["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)] +
                ["| " + " | ".join(r) + " |" for r in body])
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(header)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    return [fmt(header), "-" * len(fmt(header))] + [fmt(r) for r in body]


def profile_lines(rows: list[dict]) -> list[str]:
    """The operator profiles of ours and each comparison's reference, as a markdown section."""
    profiled = [r for r in rows if r.get("profile")]
    if not profiled:
        return []
    lines = ["", "## Operator profiles (ours and each reference)", "",
             "One unit under `torch.profiler` (self time per operator, mean of 2 units): matrix products "
             "(`mm`, `addmm`, `bmm`), attention kernels (SDPA), and everything else the profiler records "
             "(other operators; named ranges such as the optimizer step or our fused loss count their "
             "Python time outside operators). Python time outside every such range is in the timed unit "
             "but in none of the three; the profiler adds its own overhead to every operator.", "",
             "| section / model | implementation | unit ms (timed median) | operators ms | matmuls | "
             "attention | other operators | largest operators (ms) |", "|---|---|---:|---:|---:|---:|---:|---|"]
    for r in profiled:
        p = r["profile"]
        top = ", ".join(f"`{op}` {ms:.1f}" for op, ms in p["top"][:4])
        lines.append(f"| {r['section']} / {r['model']} | {r['impl']}{' *' if r['ours'] else ''} | "
                     f"{p['unit_ms']:.1f} | {p['total_ms']:.1f} | {p['matmul_ms']:.1f} | "
                     f"{p['attention_ms']:.1f} | {p['other_ms']:.1f} | {top} |")
    return lines


def machine_slug(env: dict) -> str:
    name = env["device_name"] + f"-{env['threads']}threads" if env["device"] == "cpu" else env["device_name"]
    return env["device"] + "-" + re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def write_report(result: dict, out_dir: Path) -> Path:
    """``<out>/<machine>.md`` and ``.json`` for this run, and ``<out>/README.md`` listing every
    machine's report in the folder."""
    out_dir.mkdir(parents=True, exist_ok=True)
    slug = machine_slug(result["env"])
    (out_dir / f"{slug}.json").write_text(json.dumps(result, indent=1) + "\n")
    path = out_dir / f"{slug}.md"
    path.write_text("\n".join(markdown_report(result)) + "\n")
    _write_index(out_dir)
    return path


def _write_index(out_dir: Path) -> None:
    lines = ["# Performance reports", "",
             "Written by `ablate bench` (one file per machine; the JSON holds every number of the run). "
             "Reproduce with the command in each report.", "",
             "| machine | device | torch | date | report |", "|---|---|---|---|---|"]
    for js in sorted(out_dir.glob("*.json")):
        try:
            env = json.loads(js.read_text())["env"]
        except (ValueError, KeyError):
            continue
        threads = f"{env['threads']} thread" + ("s" if env["threads"] != 1 else "")
        device = f"{env['device']} ({threads})" if env["device"] == "cpu" else env["device"]
        lines.append(f"| {env['device_name']} | {device} | {env['torch']} | "
                     f"{env['date']} | [{js.stem}.md]({js.stem}.md) |")
    (out_dir / "README.md").write_text("\n".join(lines) + "\n")


def markdown_report(result: dict) -> list[str]:
    env, rows = result["env"], result["rows"]
    lines = [f"# Performance: {env['device_name']} ({env['device']})", ""]
    if env.get("parts"):
        lines += [f"Measured in {len(env['parts'])} parts on one machine (one process each; "
                  f"{env['wall_s']:.0f} s in all), combined by `ablate bench --merge`:", ""]
        lines += [f"- {p['date']}, `{p['command']}` ({p['wall_s']:.0f} s): {'; '.join(p['rows'])}"
                  for p in env["parts"]]
        lines += ["", "One process measures all of it: `ablate bench" + (" --compile" if any(
            "--compile" in p["command"] for p in env["parts"]) else "") + "`.", ""]
    else:
        lines += [f"Measured {env['date']} by `{env['command']}` in {env['wall_s']:.0f} s.", ""]
    lines += ["## Machine and software", ""]
    lines += [f"- {k}: {v}" for k, v in env["facts"].items()]
    lines += [""]
    if env["device"] == "cpu":
        lines += ["No GPU table was measured in this run (no CUDA device). On a CUDA machine the same "
                  "command measures the GPU rows (bf16-mixed autocast, GPT-2-small and Transformer-base "
                  "shapes, `--compile` to add compiled rows); the GPU reports sit beside this one "
                  "([index](README.md)).", ""]
    lines += ["## Results", "",
              "Medians over the timed rounds; min–max and the interquartile range (IQR) show the spread. "
              "`*` = this project. `× ref`: the row's median over the reference's (LM training: the "
              "fastest peer of the model; encoder-decoder training: `torch.nn.Transformer`; decoding: "
              "Hugging Face `generate` on the same weights).", ""]
    lines += table_lines(rows, markdown=True)
    lines += ["", "Settings per model:", ""]
    seen = set()
    for r in rows:
        if (r["section"], r["model"]) not in seen:
            seen.add((r["section"], r["model"]))
            lines.append(f"- {r['section']} / {r['model']}: {r['settings']}")
    checks = result["targets"]
    if checks:
        lines += ["", "## Targets", "", "| target | measured | met |", "|---|---:|---|"]
        lines += [f"| {c['target']} | {c['measured']} | {'yes' if c['met'] else '**no**'} |" for c in checks]
    if result["breakdown"]:
        lines += ["", "## Where the time goes (ours, per training step)", "",
                  "Each sublayer call of a real forward pass replayed alone, forward + backward, summed "
                  "over layers (median of repeats); `other` = full step − the parts (residual adds, "
                  "masks and position tables, autograd bookkeeping). The parts are timed alone, so "
                  "they can add up to more or less than the step.", ""]
        lines += breakdown_lines(result["breakdown"], markdown=True)
    lines += profile_lines(rows)
    lines += ["", "## How it is measured", ""]
    lines += [f"- {m}" for m in result["method"]]
    if result["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in result["notes"]]
    return lines
