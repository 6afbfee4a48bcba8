"""The Markdown tables of a report page: results per variant, Δ against the baseline, published
findings, BLEU tests between systems, the runs left out of the averages, sample translations."""

from __future__ import annotations

import math
from typing import Any, Optional

from experiments.report.collect import Report, read_lines
from experiments.report.compare import Comparison
from experiments.report.stats import mean_std
from experiments.sweep.tuning import points as tuning_points


def _fmt(mean: float, std: float, digits: int = 2) -> str:
    if not math.isfinite(mean):
        return "-"
    text = f"{mean:,.{digits}f}"
    return text + (f" ± {std:,.{digits}f}" if math.isfinite(std) else "")


def _digits(metric: str) -> int:
    return 3 if metric.endswith("bpb") else 2


def results_table(rep: Report, chosen: Optional[dict[str, str]] = None) -> list[str]:
    """One row per variant; with ``chosen`` (a tuned sweep: variant -> its recorded settings), a
    column of the settings each variant's confirmation runs trained at."""
    metrics = rep.metrics()
    header = ["variant", "seeds", "params", *metrics, "tokens/s", "MFU", "peak mem (MB)", "wall (s)"]
    if chosen is not None:
        header.insert(1, "tuned at")
    aligns = ["---", *(["---"] if chosen is not None else []), "---:", "---:"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(aligns + ["---:"] * (len(header) - len(aligns))) + "|"]
    for variant, runs in rep.by_variant().items():
        done = [r for r in runs if r.finished]
        name = f"**{variant}** (baseline)" if variant == rep.sweep.baseline else variant
        params = next((r.params for r in runs if r.params), None)
        active = next((r.active_params for r in runs if r.active_params), None)
        counts = (f"{params:,}" + (f" ({active:,} active)" if active else "")) if params else "-"
        cells = [name, f"{len(done)}/{len(runs)}", counts]
        if chosen is not None:
            cells.insert(1, chosen.get(variant, "not chosen yet"))
        for m in metrics:
            cells.append(_fmt(*mean_std([r.metrics.get(m) for r in done]), _digits(m)))
        tok = mean_std([r.metrics.get("perf/tokens_per_s_median") for r in done])
        mfu = mean_std([100 * r.metrics["perf/mfu_median"] for r in done if r.metrics.get("perf/mfu_median")])
        mem = mean_std([r.metrics.get("perf/peak_mem_mb_max") for r in done])
        wall = mean_std([r.metrics.get("wall_s") for r in done])
        cells += [_fmt(*tok, 0), _fmt(*mfu, 1) + ("%" if math.isfinite(mfu[0]) else ""), _fmt(*mem, 0),
                  _fmt(*wall, 0)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def delta_table(comparisons: list[Comparison]) -> list[str]:
    lines = ["| variant | metric | Δ vs baseline | Δ % | 95% CI | method | p | p (sign-flip) | p (Holm) | MDE "
             "| verdict |", "|---|---|---:|---:|---|---|---:|---:|---:|---:|---|"]
    for c in comparisons:
        if c.kind == "delta":
            lines.append(f"| {c.variant} | {c.metric} | " + " | ".join(_test_cells(c)) + f" | {c.verdict} |")
    return lines


def findings_table(comparisons: list[Comparison]) -> list[str]:
    lines = ["| published finding | measured here | 95% CI | method | p | p (sign-flip) | p (Holm) | MDE | verdict |",
             "|---|---|---|---|---:|---:|---:|---:|---|"]
    for c in comparisons:
        if c.kind != "finding":
            continue
        if c.d is None:
            lines.append(f"| {c.claim} | {c.metric} {c.variant} vs {c.against}: no values | - | - | - | - | - | - | "
                         f"{c.verdict} |")
            continue
        mean, relative, interval, *rest = _test_cells(c)
        lines.append(f"| {c.claim} | {c.metric} {c.variant} − {c.against}: {mean} ({relative}) | {interval} | "
                     + " | ".join(rest) + f" | {c.verdict} |")
    return lines


def _test_cells(c: Comparison) -> list[str]:
    """Δ, Δ %, 95% interval, method (and, for a claim with a margin, what its p tests), p, its
    sign-flip counterpart, adjusted p and MDE of one comparison, formatted."""
    if c.d is None:
        return ["-"] * 8
    digits, d = _digits(c.metric), c.d
    def num(x: float, sign: str = "+") -> str:
        return f"{x:{sign}.{digits}f}" if math.isfinite(x) else "-"
    interval = f"[{num(d.low)}, {num(d.high)}]" if math.isfinite(d.low) else "-"
    method = f"{d.method}, n={d.n}" + (f"; test {c.hypothesis}".replace("|", "\\|") if c.hypothesis else "")
    return [num(d.mean), f"{100 * d.relative:+.1f}%" if math.isfinite(d.relative) else "-", interval, method,
            _p(c.p), _p(c.p_sign_flip), _p(c.p_adjusted), f"±{num(c.mde, '')}" if math.isfinite(c.mde) else "-"]


def _p(p: float) -> str:
    if not math.isfinite(p):
        return "-"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def not_averaged(rep: Report) -> list[str]:
    lines = []
    for r in rep.records:
        if not r.finished:
            lines.append(f"- `{r.name}`: {r.state}" + (f" — {r.message}" if r.message else ""))
    return lines


def bleu_tests_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| variant | seed | baseline BLEU | variant BLEU | Δ | p (paired bootstrap) |",
             "|---|---:|---:|---:|---:|---:|"]
    for t in rows:
        p = "identical outputs" if t.get("identical") else _p(t["p"])  # nothing was resampled
        lines.append(f"| {t['variant']} | {t['seed']} | {t['baseline_bleu']:.2f} | {t['bleu']:.2f} | "
                     f"{t['bleu'] - t['baseline_bleu']:+.2f} | {p} |")
    return lines


def samples(rep: Report, count: int = 3) -> list[str]:
    """``count`` test examples spread over the test set: source, reference, and the hypothesis of
    each variant's lowest finished seed."""
    sources, refs = read_lines(rep.out / "test.src") if (rep.out / "test.src").is_file() else None, rep.references
    if not sources or not refs:
        return []
    chosen = {}
    for variant, runs in rep.by_variant().items():
        done = sorted((r for r in runs if r.finished and r.hypotheses and len(r.hypotheses) == len(refs)),
                      key=lambda r: r.seed)
        if done:
            chosen[variant] = done[0]
    if not chosen:
        return []
    lines = []
    for i in [len(refs) * (k + 1) // (count + 1) for k in range(count)]:
        lines += [f"Test example {i + 1}:", "", f"- source: {sources[i]}", f"- reference: {refs[i]}"]
        lines += [f"- {variant} (seed {r.seed}): {r.hypotheses[i]}" for variant, r in chosen.items()]
        lines.append("")
    return lines




def tuning_lines(rep: Report, data: dict[str, Any], records: list) -> list[str]:
    """The Tuning section's text and table: every variant's final validation value at every tuning
    point (the chosen one in bold), its choice, and an edge warning; ``data`` is ``tuning.json``."""
    tune = rep.sweep.tune
    points = tuning_points(tune.grid)
    metric, mode = tune.select.metric, tune.select.mode
    per_variant = {r.variant: r.cfg.trainer.get("max_steps") for r in rep.sweep.tune_runs}
    steps = next(iter(per_variant.values())) if len(set(per_variant.values())) == 1 else \
        "its own budget's (" + ", ".join(f"{v} {n}" for v, n in per_variant.items()) + ")"
    lines = [f"Every variant ran the same {len(points)} tuning points × {len(tune.seeds)} tuning seed(s) "
             f"({', '.join(map(str, tune.seeds))}), {len(points) * len(tune.seeds)} runs of {steps} steps each, "
             f"validating only (the test set is never seen). Each variant's own best point on the final {metric} "
             f"({'lowest' if mode == 'min' else 'highest'}, mean over tuning seeds; a diverged run never wins) is "
             f"recorded in `tuning.json` once all its tuning runs are final, and its confirmation seeds "
             f"({', '.join(map(str, rep.sweep.seeds))}) train there; only those enter the tables and verdicts.", ""]
    header = ["variant", *[", ".join(f"{k.split('.')[-1]} {v}" for k, v in p.items()) for p in points], "chosen"]
    lines += ["| " + " | ".join(header) + " |", "|---|" + "---:|" * len(points) + "---|"]
    warnings = []
    for variant in rep.sweep.variants:
        choice = (data.get("variants") or {}).get(variant)
        cells = []
        for point in points:
            mine = [r for r in records if r.variant == variant and _tuned(rep, r.name) == point]
            values = [r.metrics.get(metric) for r in mine if r.state == "completed"]
            states = {r.state for r in mine}
            if values and all(v is not None for v in values) and len(values) == len(mine):
                text = f"{sum(values) / len(values):,.2f}"
            else:
                text = "diverged" if "diverged" in states else next(iter(states - {"completed"}), "-")
            chosen = choice is not None and choice.get("chosen") == point
            cells.append(f"**{text}**" if chosen else text)
        if choice is None:
            final = sum(r.state in ("completed", "diverged") for r in records if r.variant == variant)
            total = len(points) * len(tune.seeds)
            verdict = (f"not chosen yet ({final}/{total} tuning runs final)" if final < total else
                       f"not recorded yet: all {total} tuning runs are final, the next `ablate sweep` records it")
        elif choice.get("chosen") is None:
            verdict = f"nothing to choose: {choice.get('reason')}"
        else:
            verdict = ", ".join(f"{k} = {v}" for k, v in choice["chosen"].items())
            if choice.get("edge"):
                warnings.append(f"- **{variant}**: chosen on the edge of the grid in {', '.join(choice['edge'])}: "
                                f"its best setting may lie beyond it (extend the grid).")
        lines.append("| " + " | ".join([variant, *cells, verdict]) + " |")
    return lines + ([""] + warnings if warnings else [])


def _tuned(rep: Report, name: str) -> dict[str, Any]:
    return next((r.tuned for r in rep.sweep.tune_runs if r.name == name), {})
