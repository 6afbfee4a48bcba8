"""The plots of a report page (PNG, written reproducibly: no timestamps, a fixed hash salt)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import numpy as np

from experiments.report.collect import Record, Report
from experiments.report.stats import mean_std

PLOTS = ("val_curves_steps.png", "val_curves_time.png", "extrapolation.png", "throughput.png", "tuning.png")
UNEVEN_THROUGHPUT = 0.10  # tokens/s differing more than this between a variant's seeds: wall-clock not comparable


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": 100, "font.size": 9, "svg.hashsalt": "ablate"})
    return plt


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    import matplotlib.pyplot as plt

    plt.close(fig)


def _finish_log_plot(fig, ax, path: Path, xlabel: str, ylabel: str, title: str, legend_size: int) -> None:
    """Log-scale y axis, labels, grid, the legend beside the axes; written to ``path``."""
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3, which="both")
    ax.legend(fontsize=legend_size, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _save(fig, path)


def _curve_stats(runs: list[Record], key: str, x: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    series = [{row["step"]: (row["step"] if x == "step" else row["minutes"], row[key]) for row in r.curve if key in row}
              for r in runs]
    series = [s for s in series if s]
    steps = sorted(set.intersection(*(set(s) for s in series))) if series else []
    if not steps:
        return (np.array([]),) * 4
    xs = np.array([np.mean([s[k][0] for s in series]) for k in steps])
    ys = np.array([[s[k][1] for s in series] for k in steps])
    return xs, ys.mean(axis=1), ys.min(axis=1), ys.max(axis=1)


def plot_curves(rep: Report, x: str, path: Path) -> Optional[str]:
    plt = _plt()
    key = "val/ppl"
    fig, ax = plt.subplots(figsize=(9.0, 4.2))
    drawn = False
    for variant, runs in rep.by_variant().items():
        xs, mean, low, high = _curve_stats([r for r in runs if r.curve and r.finished], key, x)
        if len(xs) == 0:
            continue
        line, = ax.plot(xs, mean, marker="o", markersize=3, label=variant, lw=2 if variant == rep.sweep.baseline else 1.3)
        ax.fill_between(xs, low, high, color=line.get_color(), alpha=0.15, lw=0)
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    title = f"{rep.sweep.name}: validation perplexity (mean over seeds, band = min-max)"
    if x == "time" and uneven_throughput(rep):
        title += f"\nNOT COMPARABLE: tokens/s differs by more than {UNEVEN_THROUGHPUT:.0%} between seeds"
    _finish_log_plot(fig, ax, path, "training step" if x == "step" else "training wall-clock (minutes)",
                     "validation perplexity (log scale)", title, 7)
    return path.name


def uneven_throughput(rep: Report) -> dict[str, float]:
    """Variants whose finished seeds' median tokens/s differ by more than
    :data:`UNEVEN_THROUGHPUT` (max / min − 1), as on a machine other work shared: their
    wall-clock curves measure the machine as much as the model."""
    uneven = {}
    for variant, runs in rep.by_variant().items():
        speeds = [v for r in runs if r.finished and (v := r.metrics.get("perf/tokens_per_s_median"))]
        if len(speeds) > 1 and max(speeds) / min(speeds) - 1 > UNEVEN_THROUGHPUT:
            uneven[variant] = max(speeds) / min(speeds) - 1
    return uneven


def plot_tuning(rep: Report, data: dict, records: list[Record], path: Path) -> Optional[str]:
    """The final validation metric of each variant over the tuning grid: the x axis is the first
    tuning key with numeric values (log scale when they span a factor of 4 or more), one line
    per variant and combination of the other keys, the chosen point starred."""
    tune = rep.sweep.tune
    if tune is None:
        return None
    metric = tune.select.metric
    keys = list(tune.grid)
    x_key = next((k for k in keys if all(isinstance(v, (int, float)) for v in tune.grid[k])), keys[0])
    others = [k for k in keys if k != x_key]
    points = {r.name: r.tuned for r in rep.sweep.tune_runs}  # each tuning run's values of the tuning keys

    def _setting(record: Record, key: str):
        return points.get(record.name, {}).get(key)

    plt = _plt()
    fig, ax = plt.subplots(figsize=(9.0, 4.2))
    drawn = False
    for variant in rep.sweep.variants:
        chosen = ((data.get("variants") or {}).get(variant) or {}).get("chosen")
        mine = [r for r in records if r.variant == variant and r.finished]
        for rest in sorted({tuple(_setting(r, k) for k in others) for r in mine}, key=_order):
            by_x: dict = {}
            for r in mine:
                if tuple(_setting(r, k) for k in others) == rest and r.metrics.get(metric) is not None:
                    by_x.setdefault(_setting(r, x_key), []).append(r.metrics[metric])
            if not by_x:
                continue
            xs = sorted(by_x)
            label = variant + "".join(f", {k.split('.')[-1]} {v}" for k, v in zip(others, rest))
            line, = ax.plot(xs, [float(np.mean(by_x[v])) for v in xs], marker="o", markersize=4, label=label)
            drawn = True
            if chosen and all(chosen.get(k) == v for k, v in zip(others, rest)) and chosen.get(x_key) in by_x:
                ax.plot([chosen[x_key]], [float(np.mean(by_x[chosen[x_key]]))], marker="*", markersize=14,
                        color=line.get_color(), markeredgecolor="black", linestyle="none")
    if not drawn:
        plt.close(fig)
        return None
    values = [v for v in tune.grid[x_key] if isinstance(v, (int, float)) and v > 0]
    if values and max(values) / min(values) >= 4:  # learning rates and the like: spaced by factors
        ax.set_xscale("log")
    ax.set_xlabel(x_key)
    ax.set_ylabel(f"final {metric} (mean over tuning seeds)")
    ax.set_title(f"{rep.sweep.name}: tuning grid per variant (★ = the recorded choice)")
    ax.grid(True, alpha=0.3, which="both")
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _save(fig, path)
    return path.name



def plot_extrapolation(rep: Report, path: Path) -> Optional[str]:
    if not rep.spec.extrapolates:
        return None
    factors = sorted({int(k[len("test/ppl_x"):]) for r in rep.records for k in r.metrics
                      if k.startswith("test/ppl_x") and not k.endswith("_sliding")})
    if len(factors) < 2:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9.0, 4.2))
    block = next((r.config.data.lm_block_size(r.config.model.max_seq_len) for r in rep.records if r.config), 1)
    for variant, runs in rep.by_variant().items():
        done = [r for r in runs if r.finished]
        color = None
        for suffix, style in (("", "-"), ("_sliding", "--")):
            xs, ys = [], []
            for f in factors:
                m, _ = mean_std([r.metrics.get(f"test/ppl_x{f}{suffix}") for r in done])
                if math.isfinite(m):
                    xs.append(f * block)
                    ys.append(m)
            if xs:
                line, = ax.plot(xs, ys, style, marker="o", markersize=3, color=color,
                                label=variant + (" (sliding window)" if suffix else ""))
                color = line.get_color()
    ax.set_xscale("log", base=2)
    ax.set_xticks([f * block for f in factors], [str(f * block) for f in factors])
    _finish_log_plot(fig, ax, path, f"evaluation length (tokens; trained at {block})", "test perplexity (log scale)",
                     f"{rep.sweep.name}: length extrapolation (mean over seeds)", 6)
    return path.name


def plot_throughput(rep: Report, path: Path) -> Optional[str]:
    plt = _plt()
    names, means, stds = [], [], []
    for variant, runs in rep.by_variant().items():
        m, s = mean_std([r.metrics.get("perf/tokens_per_s_median") for r in runs if r.finished])
        if math.isfinite(m):
            names.append(variant)
            means.append(m)
            stds.append(s if math.isfinite(s) else 0.0)
    if not names:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 0.45 * len(names) + 1.2))
    ax.barh(range(len(names)), means, xerr=stds, color="#4c72b0", alpha=0.85, capsize=3)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("training throughput (tokens/s, median of each run; mean ± std over seeds)")
    ax.set_title(f"{rep.sweep.name}: throughput")
    ax.grid(True, axis="x", alpha=0.3)
    _save(fig, path)
    return path.name


def _order(values: tuple) -> tuple:
    """Numbers in numeric order, then anything else by its text."""
    return tuple((0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v)) for v in values)
