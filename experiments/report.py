"""``ablate report``: a sweep's runs as a table with seed statistics, deltas against the baseline
with bootstrap confidence intervals, plots, and everything needed to reproduce it.

The report is built only from copies of each run's small files (``status.json``,
``metrics.jsonl``, ``config.yaml``) kept in ``<out>/runs/``, so committing ``<out>`` lets anyone
regenerate it byte for byte, and ``ablate reproduce`` compares fresh runs against it.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import yaml

from experiments.rundir import read_status
from experiments.status import metric_records
from experiments.sweep import Sweep, SweepError, load_sweep, variant_matching

COPIED = ("status.json", "metrics.jsonl", "config.yaml")
BOOTSTRAP_SAMPLES = 10_000
LOWER_IS_BETTER = ("ppl", "bpb", "loss")
PAUSE_S = 300.0  # a gap this long between two logged records is a run that was stopped and resumed


@dataclass
class Record:
    name: str
    variant: str
    seed: int
    state: str
    metrics: dict[str, Any] = field(default_factory=dict)
    params: Optional[int] = None
    signature: Optional[str] = None
    environment: dict[str, Any] = field(default_factory=dict)
    message: Optional[str] = None
    curve: list[dict[str, Any]] = field(default_factory=list)  # validation records
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.state == "completed"


# ------------------------------------------------------------------------------------ collecting

def collect(sweep: Sweep, out: Path) -> list[Record]:
    """Refresh ``<out>/runs/<run>/`` from the run directories that exist, then read every run
    from those copies."""
    runs_dir = out / "runs"
    for run in sweep.runs:
        src = run.run_dir
        if not (src / "status.json").is_file():
            continue
        dst = runs_dir / run.name
        dst.mkdir(parents=True, exist_ok=True)
        status = read_status(src)  # the state as it is now ("interrupted" when nobody holds a "running" run)
        status.pop("holder", None)
        (dst / "status.json").write_text(json.dumps(status, indent=1, sort_keys=True) + "\n")
        for name in COPIED[1:]:
            if (src / name).is_file():
                shutil.copyfile(src / name, dst / name)
    return [_read(run.name, run.variant, run.seed, runs_dir / run.name) for run in sweep.runs]


def _read(name: str, variant: str, seed: int, directory: Path) -> Record:
    status_file = directory / "status.json"
    if not status_file.is_file():
        return Record(name, variant, seed, "missing")
    status = json.loads(status_file.read_text())
    record = Record(name, variant, seed, status["state"], status.get("metrics") or {},
                    (status.get("params") or {}).get("total"), status.get("signature"),
                    status.get("environment") or {}, status.get("message") or status.get("error"))
    elapsed, last = 0.0, None
    for row in metric_records(directory):
        t = row.get("time")
        if t is not None:  # training wall-clock, pauses (an interrupted run resumed later) left out
            elapsed += (t - last) if last is not None and t - last < PAUSE_S else 0.0
            last = t
        if any(k.startswith("val/") for k in row):
            record.curve.append({**row, "minutes": elapsed / 60})
        if "perf/peak_mem_mb" in row:
            record.metrics["perf/peak_mem_mb_max"] = max(record.metrics.get("perf/peak_mem_mb_max", 0),
                                                          row["perf/peak_mem_mb"])
    if (directory / "config.yaml").is_file():
        record.config = yaml.safe_load((directory / "config.yaml").read_text()) or {}
    return record


# ----------------------------------------------------------------------------------- statistics

def mean_std(values: Sequence[float]) -> tuple[float, float]:
    arr = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if len(arr) == 0:
        return math.nan, math.nan
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else math.nan


def bootstrap_ci(diffs: Sequence[float], paired_b: Optional[Sequence[float]] = None,
                 samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the mean of ``diffs`` (paired), or of
    ``mean(diffs) - mean(paired_b)`` resampling each group (unpaired). Fixed seed: reproducible."""
    rng = np.random.default_rng(seed)
    a = np.asarray(diffs, dtype=float)
    means = a[rng.integers(0, len(a), (samples, len(a)))].mean(axis=1)
    if paired_b is not None:
        b = np.asarray(paired_b, dtype=float)
        means = means - b[rng.integers(0, len(b), (samples, len(b)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def delta(records: list[Record], variant: str, against: str, metric: str) -> Optional[dict[str, Any]]:
    """Mean difference ``variant - against`` of ``metric`` over finished runs, paired by seed when
    the two share seeds, with a bootstrap 95% CI."""
    a = {r.seed: r.metrics.get(metric) for r in records if r.variant == variant and r.finished}
    b = {r.seed: r.metrics.get(metric) for r in records if r.variant == against and r.finished}
    a = {s: v for s, v in a.items() if v is not None and math.isfinite(v)}
    b = {s: v for s, v in b.items() if v is not None and math.isfinite(v)}
    if not a or not b:
        return None
    shared = sorted(set(a) & set(b))
    if shared:
        diffs = [a[s] - b[s] for s in shared]
        low, high = bootstrap_ci(diffs)
        mean, base = float(np.mean(diffs)), float(np.mean([b[s] for s in shared]))
        how = f"paired, {len(shared)} seed{'s' if len(shared) > 1 else ''}"
    else:
        mean = float(np.mean(list(a.values())) - np.mean(list(b.values())))
        low, high = bootstrap_ci(list(a.values()), list(b.values()))
        base = float(np.mean(list(b.values())))
        how = f"unpaired, {len(a)} vs {len(b)} runs"
    noise = low <= 0 <= high
    return {"mean": mean, "low": low, "high": high, "relative": mean / base if base else math.nan,
            "how": how, "within_noise": noise, "n": len(shared) or min(len(a), len(b))}


def better(metric: str, d: float) -> bool:
    lower = any(metric.split("/")[-1].startswith(k) for k in LOWER_IS_BETTER)
    return d < 0 if lower else d > 0


# --------------------------------------------------------------------------------------- report

@dataclass
class Report:
    sweep: Sweep
    out: Path
    records: list[Record]

    @property
    def task(self) -> str:
        return self.sweep.runs[0].cfg.task.name

    def metrics(self) -> list[str]:
        if self.task == "lm":
            return ["val/ppl", "test/ppl", "test/bpb"]
        return ["val/ppl", "test/ppl", "test/bleu"]

    def primary(self) -> list[str]:
        return ["test/ppl", "test/bpb"] if self.task == "lm" else ["test/bleu", "test/ppl"]

    def by_variant(self) -> dict[str, list[Record]]:
        groups: dict[str, list[Record]] = {v: [] for v in self.sweep.variants}
        for r in self.records:
            groups[r.variant].append(r)
        return groups


def _fmt(mean: float, std: float, digits: int = 2) -> str:
    if not math.isfinite(mean):
        return "-"
    text = f"{mean:,.{digits}f}"
    return text + (f" ± {std:,.{digits}f}" if math.isfinite(std) else "")


def _digits(metric: str) -> int:
    return 3 if metric.endswith("bpb") else 2


def results_table(rep: Report) -> list[str]:
    metrics = rep.metrics()
    header = ["variant", "seeds", "params", *metrics, "tokens/s", "MFU", "peak mem (MB)", "wall (s)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---", "---:", "---:"] + ["---:"] * (len(header) - 3)) + "|"]
    for variant, runs in rep.by_variant().items():
        done = [r for r in runs if r.finished]
        name = f"**{variant}** (baseline)" if variant == rep.sweep.baseline else variant
        params = next((r.params for r in runs if r.params), None)
        cells = [name, f"{len(done)}/{len(runs)}", f"{params:,}" if params else "-"]
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


def delta_table(rep: Report) -> list[str]:
    base = rep.sweep.baseline
    lines = ["| variant | metric | Δ vs baseline | Δ % | 95% CI | seeds | |", "|---|---|---:|---:|---|---|---|"]
    for variant in rep.sweep.variants:
        if variant == base:
            continue
        for metric in rep.primary():
            d = delta(rep.records, variant, base, metric)
            if d is None:
                lines.append(f"| {variant} | {metric} | - | - | - | no finished runs to compare | |")
                continue
            mean, relative, interval = _delta_cells(d, metric)
            direction = "better" if better(metric, d["mean"]) else "worse"
            if d["n"] < 2:
                verdict = f"{direction}, one seed: noise unknown"
            else:
                verdict = "within seed noise" if d["within_noise"] else direction
            lines.append(f"| {variant} | {metric} | {mean} | {relative} | {interval} | {d['how']} | {verdict} |")
    return lines


def findings_table(rep: Report, findings: list[dict[str, Any]]) -> list[str]:
    if not findings:
        return []
    lines = ["| published finding | measured here | 95% CI | verdict |", "|---|---|---|---|"]
    for f in findings:
        variant = _variant_of(rep.sweep, f["variant"])
        against = _variant_of(rep.sweep, f["against"]) if f.get("against") else rep.sweep.baseline
        metric, expect = f["metric"], f.get("expect", "lower")
        d = delta(rep.records, variant, against, metric)
        if d is None:
            lines.append(f"| {f['claim']} | {variant} vs {against}: no finished runs | - | cannot say |")
            continue
        mean, relative, interval = _delta_cells(d, metric)
        direction = "better" if better(metric, d["mean"]) else "worse"
        if expect == "none":
            if d["n"] < 2:
                verdict = "one seed: noise unknown"
            elif d["within_noise"]:
                verdict = "agrees (no difference beyond seed noise)"
            else:
                verdict = f"disagrees ({direction}, beyond seed noise)"
        else:
            agrees = (d["mean"] < 0) == (expect == "lower")
            if d["n"] < 2:
                verdict = f"{'same' if agrees else 'opposite'} direction, one seed: noise unknown"
            elif d["within_noise"]:
                verdict = f"within seed noise (the mean points the {'same' if agrees else 'opposite'} way)"
            else:
                verdict = "agrees" if agrees else "disagrees"
        lines.append(f"| {f['claim']} | {metric} {variant} − {against}: {mean} ({relative}) | {interval} | "
                     f"{verdict} |")
    return lines


def _delta_cells(d: dict[str, Any], metric: str) -> tuple[str, str, str]:
    """A paired delta's mean, relative change and 95% interval, formatted for ``metric``."""
    digits = _digits(metric)
    return (f"{d['mean']:+.{digits}f}", f"{100 * d['relative']:+.1f}%",
            f"[{d['low']:+.{digits}f}, {d['high']:+.{digits}f}]")


def _variant_of(sweep: Sweep, pattern: dict[str, Any]) -> str:
    (found,) = variant_matching(sweep.runs, pattern)  # checked when the sweep file was loaded
    return found


def not_averaged(rep: Report) -> list[str]:
    lines = []
    for r in rep.records:
        if not r.finished:
            lines.append(f"- `{r.name}`: {r.state}" + (f" — {r.message}" if r.message else ""))
    return lines


# ----------------------------------------------------------------------------------------- plots

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
    _finish_log_plot(fig, ax, path, "training step" if x == "step" else "training wall-clock (minutes)",
                     "validation perplexity (log scale)",
                     f"{rep.sweep.name}: validation perplexity (mean over seeds, band = min-max)", 7)
    return path.name


def plot_extrapolation(rep: Report, path: Path) -> Optional[str]:
    if rep.task != "lm":
        return None
    factors = sorted({int(k[len("test/ppl_x"):]) for r in rep.records for k in r.metrics
                      if k.startswith("test/ppl_x") and not k.endswith("_sliding")})
    if len(factors) < 2:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9.0, 4.2))
    block = next((r.config.get("data", {}).get("block_size") or r.config.get("model", {}).get("max_seq_len")
                  for r in rep.records if r.config), 1)
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


# ---------------------------------------------------------------------------------------- write

def _environment_lines(records: list[Record]) -> list[str]:
    codes = sorted({r.environment.get("code", "unknown") for r in records if r.environment})
    machines = sorted({r.environment.get("machine", "unknown") for r in records if r.environment})
    versions: dict[str, set] = {}
    for r in records:
        for k, v in (r.environment.get("versions") or {}).items():
            versions.setdefault(k, set()).add(v)
    lines = [f"- code version (git commit of the runs): {', '.join(f'`{c}`' for c in codes) or 'unknown'}",
             f"- machine: {'; '.join(machines) or 'unknown'}",
             "- packages: " + (", ".join(f"{k} {'/'.join(sorted(v))}" for k, v in sorted(versions.items())) or "unknown")]
    return lines


def _decoding(rep: Report) -> Optional[str]:
    if rep.task != "translation":
        return None
    cfg = next((r.config for r in rep.records if r.config), {})
    task = cfg.get("task", {})
    signature = next((r.signature for r in rep.records if r.signature), None)
    return (f"BLEU: sacreBLEU corpus BLEU on detokenized test text, signature `{signature}`; beam search, "
            f"beam {task.get('beam_size')}, length penalty {task.get('length_penalty')}, "
            f"at most {task.get('max_decode_len')} tokens; last checkpoint, no averaging.")


def build(sweep: Sweep, out: Path) -> Path:
    """Write ``<out>/README.md``, ``<out>/report.json``, the plots and the run copies."""
    out.mkdir(parents=True, exist_ok=True)
    records = collect(sweep, out)
    rep = Report(sweep, out, records)
    (out / "sweep.yaml").write_text(sweep.text)
    findings = (yaml.safe_load(sweep.text) or {}).get("findings") or []
    plots = [plot_curves(rep, "step", out / "val_curves_steps.png"),
             plot_curves(rep, "time", out / "val_curves_time.png"),
             plot_extrapolation(rep, out / "extrapolation.png"),
             plot_throughput(rep, out / "throughput.png")]
    done = sum(r.finished for r in records)
    overrides = " ".join(sweep.cli_overrides)
    lines = [f"# {sweep.name}", ""]
    if sweep.description:
        lines += [sweep.description, ""]
    lines += [f"{done} of {len(records)} runs finished ({len(sweep.variants)} variants × {len(sweep.seeds)} seeds). "
              f"Generated by `ablate report {_rel(sweep.path)}{' ' + overrides if overrides else ''}` from the run "
              f"files copied into `runs/`.", "", "## Results", "",
              "Mean ± standard deviation over the finished seeds.", "", *results_table(rep), ""]
    lines += ["Perplexity = exp(total NLL / non-pad target tokens) over the whole split (never a mean of batch "
              "perplexities, never the label-smoothed loss); bits per byte = total NLL in bits / UTF-8 bytes. "
              "Tokens/s: non-pad tokens per second of training step, median over the run's logging windows "
              "(warm-up excluded); MFU against the measured matmul peak (CPU) or the dense bf16 peak (GPU), "
              "FLOPs = 6·(matmul parameters + output head) + 12·layers·d_model·context per token. Peak memory: "
              "process max RSS (CPU) or max allocated (CUDA). Wall: training and evaluation, summed over "
              "resumed segments."]
    if (text := _decoding(rep)):
        lines += ["", text]
    lines += ["", f"## Against the baseline ({sweep.baseline})", ""]
    if sweep.baseline:
        lines += ["Δ = variant − baseline, averaged over seeds (paired by seed where both ran it). 95% CI: "
                  f"percentile bootstrap over seeds ({BOOTSTRAP_SAMPLES:,} resamples, fixed seed). \"within seed "
                  "noise\": the interval contains 0. With 3 seeds the interval is coarse: treat it as a "
                  "screen, not a test.", "", *delta_table(rep)]
    else:
        lines += ["No baseline named in the sweep file."]
    lines += ["", "## Runs not in the averages", ""]
    missing = not_averaged(rep)
    lines += missing or [f"None: all {len(records)} runs finished."]
    lines += ["", "## Plots", ""]
    for name in plots:
        if name:
            lines += [f"![{name}]({name})", ""]
    if findings:
        lines += ["## Compared with published findings", "",
                  "Published numbers come from far larger models and datasets; only the direction carries over.",
                  "", *findings_table(rep, findings), ""]
        notes = (yaml.safe_load(sweep.text) or {}).get("notes")
        if notes:
            lines += [str(notes).strip(), ""]
    lines += ["## Reproduce", "", "```bash",
              f"ablate sweep {_rel(sweep.path)}{' ' + overrides if overrides else ''}   # the runs (resumable)",
              f"ablate report {_rel(sweep.path)}{' ' + overrides if overrides else ''}  # this page",
              f"ablate reproduce {_rel(out)}   # re-run from the embedded config and compare, metric by metric",
              "```", "", *_environment_lines(records), "", "The sweep file (`sweep.yaml` here):", "", "```yaml",
              sweep.text.rstrip(), "```", ""]
    (out / "README.md").write_text("\n".join(lines))
    summary = {"name": sweep.name, "baseline": sweep.baseline, "cli_overrides": sweep.cli_overrides,
               "metrics": rep.metrics(),
               "runs": [{"name": r.name, "variant": r.variant, "seed": r.seed, "state": r.state,
                         "metrics": {m: r.metrics.get(m) for m in rep.metrics()}} for r in records]}
    (out / "report.json").write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    return out / "README.md"


PROJECT = Path(__file__).resolve().parents[1]


def _rel(path: Path) -> str:
    """A path as written in a report: relative to the project root when inside it."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(PROJECT))
    except ValueError:
        return str(path)


def default_out(sweep: Sweep) -> Path:
    return Path("reports") / sweep.name


# ------------------------------------------------------------------------------------ reproduce

def reproduce(report_dir: Path, root: str, workers: Optional[int], variants: Sequence[str] = (),
              seeds: Sequence[int] = ()) -> int:
    """Re-run the embedded sweep (or the chosen variants/seeds) into ``root`` and compare each
    metric with the committed numbers; returns 0 when every metric agrees within seed noise."""
    from experiments.launchers import run_local

    report_dir = Path(report_dir)
    summary = json.loads((report_dir / "report.json").read_text())
    overrides = [o for o in summary["cli_overrides"] if not o.startswith("run.root=")] + [f"run.root={root}"]
    sweep = load_sweep(report_dir / "sweep.yaml", overrides)
    unknown = sorted(set(variants) - set(sweep.variants))
    if unknown:
        raise SweepError(f"unknown variant(s) {', '.join(unknown)}; the report has: {', '.join(sweep.variants)}")
    sweep.runs = [r for r in sweep.runs if (not variants or r.variant in variants) and (not seeds or r.seed in seeds)]
    if not sweep.runs:
        raise SweepError("no run left after --variant/--seed")
    run_local(sweep, workers)
    committed = {r["name"]: r for r in summary["runs"]}
    ok = True
    print(f"\nreproduce {report_dir}: committed vs re-run")
    print(f"{'run':44} {'metric':10} {'committed':>12} {'re-run':>12}  verdict")
    for run in sweep.runs:
        status = read_status(run.run_dir)
        metrics = status.get("metrics") or {}
        old = committed.get(run.name, {}).get("metrics", {})
        same_variant = [r for r in summary["runs"] if r["variant"] == run.variant and r["state"] == "completed"]
        for metric in summary["metrics"]:
            a, b = old.get(metric), metrics.get(metric)
            _, noise = mean_std([r["metrics"].get(metric) for r in same_variant])
            if a is None or b is None:
                verdict, ok = "missing", False
            elif abs(a - b) <= 1e-6 * max(1.0, abs(a)):
                verdict = "identical"
            elif math.isfinite(noise) and abs(a - b) <= 2 * noise:
                verdict = f"agrees within seed noise (|Δ| {abs(a - b):.3g} ≤ 2σ {2 * noise:.3g})"
            else:
                verdict, ok = f"DIFFERS (|Δ| {abs(a - b):.3g}, seed σ {noise:.3g})", False
            print(f"{run.name:44} {metric:10} {_num(a):>12} {_num(b):>12}  {verdict}")
    return 0 if ok else 1


def _num(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.4f}"
