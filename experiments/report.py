"""``ablate report``: a sweep's runs as a table with seed statistics, deltas against the baseline
with Student-t intervals and Holm-adjusted p-values, plots, and everything needed to reproduce it.

The report is built only from copies of each run's small files (``status.json``,
``metrics.jsonl``, ``config.yaml`` and, for translation, ``test.hyp``) kept in ``<out>/runs/``
(the test sources and references once, as ``<out>/test.src`` and ``<out>/test.ref``). Committing
``<out>`` lets anyone rebuild it byte for byte (``ablate report <out>``), rescore the hypotheses
with the ``sacrebleu`` command, and ``ablate reproduce`` compare fresh runs against it.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import yaml

from experiments import stats
from experiments.rundir import read_status
from experiments.status import metric_records
from experiments.sweep import Sweep, SweepError, load_sweep, variant_matching
from lit.metrics import corpus_chrf
from lit.specs import TaskSpec, task_spec

COPIED = ("status.json", "metrics.jsonl", "config.yaml", "test.hyp")
SHARED = ("test.src", "test.ref")  # the same for every run of a sweep: kept once, beside runs/
LOWER_IS_BETTER = ("ppl", "bpb", "loss")
PAUSE_S = 300.0  # a gap this long between two logged records is a run that was stopped and resumed
PLOTS = ("val_curves_steps.png", "val_curves_time.png", "extrapolation.png", "throughput.png")


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
    hypotheses: Optional[list[str]] = None  # translation: test.hyp, line by line
    summary_only: bool = False  # read from an earlier report.json: the run files were not kept

    @property
    def finished(self) -> bool:
        return self.state == "completed"


# ------------------------------------------------------------------------------------ collecting

def collect(sweep: Sweep, out: Path) -> list[Record]:
    """Refresh ``<out>/runs/<run>/`` from the run directories that exist, then read every run
    from those copies. A run with neither is read from the ``runs`` list of an earlier
    ``<out>/report.json`` when it has one (reports built before run files were kept)."""
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
        for name in SHARED:
            if (src / name).is_file() and not (out / name).is_file():
                shutil.copyfile(src / name, out / name)
    earlier = _earlier_runs(out)
    records = []
    for run in sweep.runs:
        record = _read(run.name, run.variant, run.seed, runs_dir / run.name)
        if record.state == "missing" and run.name in earlier:
            e = earlier[run.name]
            record = Record(run.name, run.variant, run.seed, e["state"],
                            {k: v for k, v in (e.get("metrics") or {}).items() if v is not None},
                            environment=e.get("environment") or {}, summary_only=True)
        records.append(record)
    return records


def _earlier_runs(out: Path) -> dict[str, dict[str, Any]]:
    """Runs of an earlier ``report.json`` whose run files were never copied (``summary_only``);
    runs it listed as missing (not started then) are not among them."""
    path = out / "report.json"
    if not path.is_file():
        return {}
    runs = json.loads(path.read_text()).get("runs") or []
    return {r["name"]: r for r in runs
            if r.get("state") != "missing" and not (out / "runs" / r["name"] / "status.json").is_file()}


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
    if (directory / "test.hyp").is_file():
        record.hypotheses = _lines(directory / "test.hyp")
    return record


def _lines(path: Path) -> list[str]:
    """The lines of a hypothesis, source or reference file (one example per line)."""
    return path.read_text(encoding="utf-8").split("\n")[:-1]


# ----------------------------------------------------------------------------------- statistics

def mean_std(values: Sequence[float]) -> tuple[float, float]:
    arr = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if len(arr) == 0:
        return math.nan, math.nan
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else math.nan


def delta(records: list[Record], variant: str, against: str, metric: str) -> Optional[stats.Delta]:
    """``variant - against`` of ``metric`` over finished runs: a paired Student-t interval on the
    seeds both ran, Welch's t otherwise (:func:`experiments.stats.compare`)."""
    def values(name: str) -> dict[int, Optional[float]]:
        return {r.seed: r.metrics.get(metric) for r in records if r.variant == name and r.finished}

    return stats.compare(values(variant), values(against))


def lower_is_better(metric: str) -> bool:
    return any(metric.split("/")[-1].startswith(k) for k in LOWER_IS_BETTER)


def better(metric: str, d: float) -> bool:
    return d < 0 if lower_is_better(metric) else d > 0


@dataclass
class Comparison:
    """One test of a report's family: a Δ row (variant vs baseline) or a published finding."""

    kind: str  # "delta" | "finding"
    variant: str
    against: str
    metric: str
    d: Optional[stats.Delta]
    claim: Optional[str] = None
    expect: Optional[str] = None  # findings: lower | higher | none
    p_adjusted: float = math.nan
    mde: float = math.nan  # minimum detectable effect, 80% power at the family's Bonferroni level
    verdict: str = ""

    def to_json(self) -> dict[str, Any]:
        d = self.d
        row = {"kind": self.kind, "variant": self.variant, "against": self.against, "metric": self.metric,
               "n": d.n if d else 0, "mean": _num_or_none(d.mean if d else math.nan),
               "low": _num_or_none(d.low if d else math.nan), "high": _num_or_none(d.high if d else math.nan),
               "method": d.method if d else None, "p": _num_or_none(d.p if d else math.nan),
               "p_adjusted": _num_or_none(self.p_adjusted), "mde": _num_or_none(self.mde), "verdict": self.verdict}
        if self.claim is not None:
            row.update(claim=self.claim, expect=self.expect)
        return row


def _num_or_none(value: float) -> Optional[float]:
    return float(value) if value is not None and math.isfinite(value) else None


def family(rep: "Report", findings: list[dict[str, Any]]) -> list[Comparison]:
    """Every comparison of the report (each non-baseline variant on each primary metric, then each
    published finding), tested together: p-values adjusted by Holm–Bonferroni over the family,
    the minimum detectable effect at the family's Bonferroni level (the level Holm asks of the
    smallest p), and a verdict."""
    rows: list[Comparison] = []
    base = rep.sweep.baseline
    if base:
        for variant in rep.sweep.variants:
            if variant != base:
                rows += [Comparison("delta", variant, base, m, delta(rep.records, variant, base, m))
                         for m in rep.primary()]
    for f in findings:
        variant = _variant_of(rep.sweep, f["variant"])
        against = _variant_of(rep.sweep, f["against"]) if f.get("against") else base
        rows.append(Comparison("finding", variant, against, f["metric"],
                               delta(rep.records, variant, against, f["metric"]),
                               claim=f["claim"], expect=f.get("expect", "lower")))
    pvalues = [c.d.p if c.d else math.nan for c in rows]
    size = sum(math.isfinite(p) for p in pvalues)
    for c, adjusted in zip(rows, stats.holm(pvalues)):
        c.p_adjusted = adjusted
        if c.d is not None and size:
            c.mde = stats.min_detectable(c.d.se, c.d.df, stats.ALPHA / size)
        c.verdict = _verdict(c)
    return rows


def _verdict(c: Comparison) -> str:
    if c.d is None:
        return f"no finished runs with {c.metric} to compare"
    if not math.isfinite(c.d.p):
        return "one seed: no verdict"
    significant = c.p_adjusted < stats.ALPHA
    if c.kind == "delta":
        if not significant:
            return "no detectable difference"
        return "better" if better(c.metric, c.d.mean) else "worse"
    if not significant:
        return "inconclusive"
    if c.expect == "none":
        return "disagrees"
    return "agrees" if (c.d.mean < 0) == (c.expect == "lower") else "disagrees"


# --------------------------------------------------------------------------------------- report

@dataclass
class Report:
    sweep: Sweep
    out: Path
    records: list[Record]

    @cached_property
    def references(self) -> Optional[list[str]]:
        """The test references (``<out>/test.ref``) that the hypotheses were scored against."""
        path = self.out / "test.ref"
        return _lines(path) if path.is_file() else None

    @property
    def spec(self) -> type[TaskSpec]:
        return task_spec(self.sweep.runs[0].cfg.task.name)

    def metrics(self) -> list[str]:
        return list(self.spec.report_metrics)

    def primary(self) -> list[str]:
        return list(self.spec.compared)

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


def delta_table(comparisons: list[Comparison]) -> list[str]:
    lines = ["| variant | metric | Δ vs baseline | Δ % | 95% CI | method | p | p (Holm) | MDE | verdict |",
             "|---|---|---:|---:|---|---|---:|---:|---:|---|"]
    for c in comparisons:
        if c.kind == "delta":
            lines.append(f"| {c.variant} | {c.metric} | " + " | ".join(_test_cells(c)) + f" | {c.verdict} |")
    return lines


def findings_table(comparisons: list[Comparison]) -> list[str]:
    lines = ["| published finding | measured here | 95% CI | method | p | p (Holm) | MDE | verdict |",
             "|---|---|---|---|---:|---:|---:|---|"]
    for c in comparisons:
        if c.kind != "finding":
            continue
        if c.d is None:
            lines.append(f"| {c.claim} | {c.metric} {c.variant} vs {c.against}: no values | - | - | - | - | - | "
                         f"{c.verdict} |")
            continue
        mean, relative, interval, *rest = _test_cells(c)
        lines.append(f"| {c.claim} | {c.metric} {c.variant} − {c.against}: {mean} ({relative}) | {interval} | "
                     + " | ".join(rest) + f" | {c.verdict} |")
    return lines


def _test_cells(c: Comparison) -> list[str]:
    """Δ, Δ %, 95% interval, method, p, adjusted p and MDE of one comparison, formatted."""
    if c.d is None:
        return ["-"] * 7
    digits, d = _digits(c.metric), c.d
    def num(x: float, sign: str = "+") -> str:
        return f"{x:{sign}.{digits}f}" if math.isfinite(x) else "-"
    interval = f"[{num(d.low)}, {num(d.high)}]" if math.isfinite(d.low) else "-"
    return [num(d.mean), f"{100 * d.relative:+.1f}%" if math.isfinite(d.relative) else "-", interval,
            f"{d.method}, n={d.n}", _p(d.p), _p(c.p_adjusted), f"±{num(c.mde, '')}" if math.isfinite(c.mde) else "-"]


def _p(p: float) -> str:
    if not math.isfinite(p):
        return "-"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


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
    if not rep.spec.extrapolates:
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
    if not rep.spec.translates:
        return None
    cfg = next((r.config for r in rep.records if r.config), {})
    task = cfg.get("task", {})
    signature = next((r.signature for r in rep.records if r.signature), None)
    return (f"BLEU: sacreBLEU corpus BLEU on detokenized test text, signature `{signature}`; beam search, "
            f"beam {task.get('beam_size')}, length penalty {task.get('length_penalty')}, "
            f"at most {task.get('max_decode_len')} tokens; last checkpoint, no averaging.")


HOW_TO_READ = (
    "Δ = variant − baseline, averaged over seeds. 95% CI: Student-t, paired by seed where both arms "
    "ran the same seeds, Welch's t otherwise. p: two-sided t test; p (Holm): adjusted by Holm–Bonferroni "
    "over the {m} comparisons of this report (every Δ row and every published-finding row). A verdict "
    "is \"better\"/\"worse\" (or, for a published finding, \"agrees\"/\"disagrees\") only when the "
    "adjusted p is below 0.05; otherwise \"no detectable difference\" (\"inconclusive\"). MDE: the "
    "smallest true difference these seeds would detect with 80% power at the family's Bonferroni level "
    "(α = 0.05/{m}), from the observed seed spread: a difference smaller than it may well exist.")


def _bleu_tests(rep: Report) -> list[dict[str, Any]]:
    """sacreBLEU's paired bootstrap resampling (1,000 resamples) of each variant against the
    baseline on the same seed's test hypotheses."""
    refs = rep.references
    if refs is None or not rep.sweep.baseline:
        return []
    base = {r.seed: r for r in rep.records if r.variant == rep.sweep.baseline and r.finished and r.hypotheses}
    rows = []
    for r in rep.records:
        b = base.get(r.seed)
        if r.variant == rep.sweep.baseline or b is None or not r.finished or not r.hypotheses:
            continue
        if not len(r.hypotheses) == len(b.hypotheses) == len(refs):
            raise SweepError(f"{rep.out}: {r.name} has {len(r.hypotheses)} test hypotheses, {b.name} "
                             f"{len(b.hypotheses)}, test.ref {len(refs)} lines: they must be line-aligned")
        test = stats.paired_bootstrap_bleu(b.hypotheses, r.hypotheses, refs)
        rows.append({"variant": r.variant, "against": b.variant, "seed": r.seed, "baseline_bleu": test["baseline"],
                     "bleu": test["system"], "p": test["p"]})
    return rows


def bleu_tests_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| variant | seed | baseline BLEU | variant BLEU | Δ | p (paired bootstrap) |",
             "|---|---:|---:|---:|---:|---:|"]
    for t in rows:
        lines.append(f"| {t['variant']} | {t['seed']} | {t['baseline_bleu']:.2f} | {t['bleu']:.2f} | "
                     f"{t['bleu'] - t['baseline_bleu']:+.2f} | {_p(t['p'])} |")
    return lines


def samples(rep: Report, count: int = 3) -> list[str]:
    """``count`` test examples spread over the test set: source, reference, and the hypothesis of
    each variant's lowest finished seed."""
    sources, refs = _lines(rep.out / "test.src") if (rep.out / "test.src").is_file() else None, rep.references
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


def build(sweep: Sweep, out: Path, sweep_file: Optional[str] = None, folder: Optional[str] = None) -> Path:
    """Write ``<out>/README.md``, ``<out>/report.json``, the plots and the run copies.
    ``sweep_file`` and ``folder`` are the paths the page names (default: where they are now)."""
    out.mkdir(parents=True, exist_ok=True)
    records = collect(sweep, out)
    rep = Report(sweep, out, records)
    sweep_file = sweep_file or _rel(sweep.path)
    folder = folder or _rel(out)
    (out / "sweep.yaml").write_text(sweep.text)
    spec = yaml.safe_load(sweep.text) or {}
    findings = spec.get("findings") or []
    for r in records:  # chrF from the hypotheses the BLEU was computed on
        if r.hypotheses is not None and rep.references is not None and len(r.hypotheses) == len(rep.references):
            r.metrics["test/chrf"] = corpus_chrf(r.hypotheses, rep.references)[0]
    comparisons = family(rep, findings)
    bleu_tests = _bleu_tests(rep)
    plots = [plot_curves(rep, "step", out / PLOTS[0]), plot_curves(rep, "time", out / PLOTS[1]),
             plot_extrapolation(rep, out / PLOTS[2]), plot_throughput(rep, out / PLOTS[3])]
    for name in set(PLOTS) - set(plots):  # a plot with nothing to show: no stale picture either
        (out / name).unlink(missing_ok=True)
    overrides = " ".join(sweep.cli_overrides)
    args = f"{sweep_file}{' ' + overrides if overrides else ''}"
    lines = [*_intro(rep, args, folder), *_results(rep), *_against_baseline(rep, comparisons, bleu_tests, folder),
             *_runs_and_plots(rep, plots)]
    if findings:
        lines += ["## Compared with published findings", "",
                  "Published numbers come from far larger models and datasets; only the direction carries over. "
                  "Tested in the same family as the Δ rows above.", "", *findings_table(comparisons), ""]
    if spec.get("notes"):
        lines += ["## Reading these results", "", str(spec["notes"]).strip(), ""]
    lines += ["## Reproduce", "", "```bash",
              f"ablate sweep {args}   # the runs (resumable)",
              f"ablate report {args}  # this page",
              f"ablate reproduce {folder}   # re-run from the embedded config and compare, metric by metric",
              "```", "", *_environment_lines(records), "", "The sweep file (`sweep.yaml` here):", "", "```yaml",
              sweep.text.rstrip(), "```", ""]
    (out / "README.md").write_text("\n".join(lines))
    summary = {"name": sweep.name, "baseline": sweep.baseline, "cli_overrides": sweep.cli_overrides,
               "sweep_file": sweep_file, "folder": folder, "metrics": rep.metrics(),
               "runs": [_run_summary(r, rep.metrics()) for r in records],
               "comparisons": [c.to_json() for c in comparisons]}
    if bleu_tests:
        summary["bleu_tests"] = bleu_tests
    (out / "report.json").write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    return out / "README.md"


def _intro(rep: Report, args: str, folder: str) -> list[str]:
    """Title, description, how many runs finished and how the page was made."""
    sweep, records = rep.sweep, rep.records
    done = sum(r.finished for r in records)
    lines = [f"# {sweep.name}", ""]
    if sweep.description:
        lines += [sweep.description, ""]
    lines += [f"{done} of {len(records)} runs finished ({len(sweep.variants)} variants × {len(sweep.seeds)} seeds). "
              f"Generated by `ablate report {args}` from the run files copied into `runs/`; "
              f"`ablate report {folder}` rebuilds it from this folder alone.", ""]
    summary_only = [r for r in records if r.summary_only]
    if summary_only:
        lines += [f"{len(summary_only)} of these runs were read from an earlier `report.json` only: their run files "
                  "were not kept when the report was first built, so their parameter counts, throughput, memory and "
                  "curves are not shown.", ""]
    return lines


def _results(rep: Report) -> list[str]:
    """The per-variant table and what its columns mean."""
    lines = ["## Results", "", "Mean ± standard deviation over the finished seeds.", "", *results_table(rep), ""]
    lines += ["Perplexity = exp(total NLL / non-pad target tokens) over the whole split (never a mean of batch "
              "perplexities, never the label-smoothed loss); bits per byte = total NLL in bits / UTF-8 bytes. "
              "Tokens/s: non-pad tokens per second of training step, median over the run's logging windows "
              "(warm-up excluded); MFU against the measured matmul peak (CPU) or the dense bf16 peak (GPU), "
              "FLOPs = 6·(matmul parameters + output head) + 12·layers·d_model·context per token. Peak memory: "
              "process max RSS (CPU) or max allocated (CUDA). Wall: training and evaluation, summed over "
              "resumed segments."]
    if (text := _decoding(rep)):
        lines += ["", text]
    return lines


def _against_baseline(rep: Report, comparisons: list[Comparison], bleu_tests: list[dict], folder: str) -> list[str]:
    """The Δ table with its intervals and verdicts, then the per-seed BLEU tests."""
    size = sum(c.d is not None and math.isfinite(c.d.p) for c in comparisons)
    lines = ["", f"## Against the baseline ({rep.sweep.baseline})", ""]
    if rep.sweep.baseline:
        text = HOW_TO_READ.format(m=size) if size else HOW_TO_READ.format(m=0).replace(
            "over the 0 comparisons of this report", "over the comparisons of this report (none has two "
            "seeds yet)").replace(" (α = 0.05/0)", "")
        lines += [text, "", *delta_table(comparisons)]
    else:
        lines += ["No baseline named in the sweep file."]
    if bleu_tests:
        lines += ["", "### BLEU between systems on the same seed", "",
                  "sacreBLEU's paired bootstrap resampling (Koehn 2004; 1,000 resamples, sacreBLEU's fixed seed) of "
                  "each variant's test hypotheses against the baseline's of the same seed: does this checkpoint "
                  "translate the test set differently beyond sentence-sampling noise? Unadjusted p; it says "
                  "nothing about seed noise, which the table above tests. Rescore any run with "
                  f"`sacrebleu {folder}/test.ref -i {folder}/runs/<run>/test.hyp -m bleu chrf`.", "",
                  *bleu_tests_table(bleu_tests)]
    return lines


def _runs_and_plots(rep: Report, plots: list[Optional[str]]) -> list[str]:
    """Sample translations, the runs left out of the averages, and the plots."""
    lines = []
    if (shown := samples(rep)):
        lines += ["", "## Sample translations", "", *shown[:-1]]
    lines += ["", "## Runs not in the averages", ""]
    missing = not_averaged(rep)
    lines += missing or [f"None: all {len(rep.records)} runs finished."]
    lines += ["", "## Plots", ""]
    drawn = [name for name in plots if name]
    for name in drawn:
        lines += [f"![{name}]({name})", ""]
    if not drawn:
        lines += ["None: no run has its logged curves or throughput here.", ""]
    return lines


def _run_summary(r: Record, metrics: list[str]) -> dict[str, Any]:
    row = {"name": r.name, "variant": r.variant, "seed": r.seed, "state": r.state,
           "metrics": {m: r.metrics.get(m) for m in metrics}}
    if r.summary_only and r.environment:  # no status.json of its own to keep it
        row["environment"] = r.environment
    return row


def rebuild(folder: Path) -> Path:
    """Build a committed report again from its own folder: its ``sweep.yaml``, the overrides
    recorded in its ``report.json`` and the run copies in ``runs/`` (no run directory is read)."""
    folder = Path(folder)
    if not (folder / "report.json").is_file() or not (folder / "sweep.yaml").is_file():
        raise SweepError(f"{folder}: not a report folder (it needs report.json and sweep.yaml)")
    summary = json.loads((folder / "report.json").read_text())
    nowhere = folder / "runs" / ".no-run-directories"  # nothing is refreshed from run directories
    overrides = [o for o in summary.get("cli_overrides", []) if not o.startswith("run.root=")]
    sweep = load_sweep(folder / "sweep.yaml", [*overrides, f"run.root={nowhere}"])
    sweep.cli_overrides = summary.get("cli_overrides", [])
    name = summary.get("name", sweep.name)
    return build(sweep, folder, summary.get("sweep_file") or f"configs/sweeps/{name}.yaml",
                 summary.get("folder") or f"reports/{name}")


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
