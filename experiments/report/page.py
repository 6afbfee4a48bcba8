"""``ablate report``: a sweep's runs as a page (``README.md``) with seed statistics, deltas against
the baseline with Student-t intervals and Holm-adjusted p-values, plots, and everything needed to
reproduce it, plus ``report.json``.

The page is built from :data:`SECTIONS`, an ordered list of functions, each turning the report's
:class:`Page` into its lines; a new section is one function and one entry there. Committing the
report folder lets anyone rebuild it byte for byte (``ablate report <out>``), rescore the
hypotheses with the ``sacrebleu`` command, and ``ablate reproduce`` compare fresh runs against it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from experiments.report.collect import Record, Report, collect, tune_records
from experiments.report.compare import Comparison, bleu_tests, family
from experiments.report.plots import PLOTS, plot_curves, plot_extrapolation, plot_throughput
from experiments.report.tables import (bleu_tests_table, delta_table, findings_table, not_averaged, results_table,
                                       samples, tuning_lines)
from experiments.sweep.spec import Sweep, SweepError, load_sweep
from experiments.sweep.tuning import TUNING_FILE
from tools.metrics import corpus_chrf

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
    task = next((r.config.task for r in rep.records if r.config), None)
    signature = next((r.signature for r in rep.records if r.signature), None)
    return (f"BLEU: sacreBLEU corpus BLEU on detokenized test text, signature `{signature}`; beam search, "
            f"beam {task and task.beam_size}, length penalty {task and task.length_penalty}, "
            f"at most {task and task.max_decode_len} tokens; last checkpoint, no averaging.")


HOW_TO_READ = (
    "Δ = variant − baseline, averaged over seeds. 95% CI: Student-t, paired by seed where both arms "
    "ran the same seeds, Welch's t otherwise. p: two-sided t test; p (Holm): adjusted by Holm–Bonferroni "
    "over the {m} comparisons of this report (every Δ row and every published-finding row). A verdict "
    "is \"better\"/\"worse\" (or, for a published finding, \"agrees\"/\"disagrees\") only when the "
    "adjusted p is below 0.05; otherwise \"no detectable difference\" (\"inconclusive\"). MDE: the "
    "smallest true difference these seeds would detect with 80% power at the family's Bonferroni level "
    "(α = 0.05/{m}), from the observed seed spread: a difference smaller than it may well exist.")


@dataclass
class Page:
    """What the sections of a report page are written from."""

    rep: Report
    comparisons: list[Comparison]
    bleu_tests: list[dict[str, Any]]
    plots: list[Optional[str]]  # the file names of the plots drawn (None: nothing to show)
    args: str  # the sweep file and overrides, as the commands on the page name them
    folder: str  # the report folder, as the page names it


def build(sweep: Sweep, out: Path, sweep_file: Optional[str] = None, folder: Optional[str] = None) -> Path:
    """Write ``<out>/README.md``, ``<out>/report.json``, the plots and the run copies.
    ``sweep_file`` and ``folder`` are the paths the page names (default: where they are now)."""
    out.mkdir(parents=True, exist_ok=True)
    records = collect(sweep, out)
    rep = Report(sweep, out, records)
    sweep_file = sweep_file or _rel(sweep.path)
    folder = folder or _rel(out)
    (out / "sweep.yaml").write_text(sweep.text)
    for r in records:  # chrF the run did not log (runs from before it did): from the hypotheses BLEU scored
        if ("test/chrf" not in r.metrics and r.hypotheses is not None and rep.references is not None
                and len(r.hypotheses) == len(rep.references)):
            r.metrics["test/chrf"] = corpus_chrf(r.hypotheses, rep.references)[0]
    comparisons = family(rep, sweep.findings)
    tests = bleu_tests(rep)
    plots = [plot_curves(rep, "step", out / PLOTS[0]), plot_curves(rep, "time", out / PLOTS[1]),
             plot_extrapolation(rep, out / PLOTS[2]), plot_throughput(rep, out / PLOTS[3])]
    for name in set(PLOTS) - set(plots):  # a plot with nothing to show: no stale picture either
        (out / name).unlink(missing_ok=True)
    overrides = " ".join(sweep.cli_overrides)
    page = Page(rep, comparisons, tests, plots, f"{sweep_file}{' ' + overrides if overrides else ''}", folder)
    (out / "README.md").write_text("\n".join(line for section in SECTIONS for line in section(page)))
    summary = {"name": sweep.name, "baseline": sweep.baseline, "cli_overrides": sweep.cli_overrides,
               "sweep_file": sweep_file, "folder": folder, "metrics": rep.metrics(),
               "runs": [_run_summary(r, rep.metrics()) for r in records],
               "comparisons": [c.to_json() for c in comparisons]}
    if tests:
        summary["bleu_tests"] = tests
    (out / "report.json").write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    return out / "README.md"


def intro(page: Page) -> list[str]:
    """Title, description, how many runs finished and how the page was made."""
    sweep, records, args, folder = page.rep.sweep, page.rep.records, page.args, page.folder
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


def tuning(page: Page) -> list[str]:
    """How each variant's settings were chosen (sweeps with a ``tune:`` section)."""
    rep = page.rep
    if rep.sweep.tune is None:
        return []
    path = rep.out / TUNING_FILE
    data = json.loads(path.read_text()) if path.is_file() else {}
    return ["## Tuning", "", *tuning_lines(rep, data, tune_records(rep.sweep, rep.out)), ""]


def results(page: Page) -> list[str]:
    """The per-variant table and what its columns mean."""
    rep = page.rep
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


def against_baseline(page: Page) -> list[str]:
    """The Δ table with its intervals and verdicts, then the per-seed BLEU tests."""
    rep, comparisons, tests, folder = page.rep, page.comparisons, page.bleu_tests, page.folder
    size = sum(c.d is not None and math.isfinite(c.d.p) for c in comparisons)
    lines = ["", f"## Against the baseline ({rep.sweep.baseline})", ""]
    if rep.sweep.baseline:
        text = HOW_TO_READ.format(m=size) if size else HOW_TO_READ.format(m=0).replace(
            "over the 0 comparisons of this report", "over the comparisons of this report (none has two "
            "seeds yet)").replace(" (α = 0.05/0)", "")
        lines += [text, "", *delta_table(comparisons)]
    else:
        lines += ["No baseline named in the sweep file."]
    if tests:
        lines += ["", "### BLEU between systems on the same seed", "",
                  "sacreBLEU's paired bootstrap resampling (Koehn 2004; 1,000 resamples, sacreBLEU's fixed seed) of "
                  "each variant's test hypotheses against the baseline's of the same seed: does this checkpoint "
                  "translate the test set differently beyond sentence-sampling noise? Unadjusted p; it says "
                  "nothing about seed noise, which the table above tests. Rescore any run with "
                  f"`sacrebleu {folder}/test.ref -i {folder}/runs/<run>/test.hyp -m bleu chrf`.", "",
                  *bleu_tests_table(tests)]
    return lines


def runs_and_plots(page: Page) -> list[str]:
    """Sample translations, the runs left out of the averages, and the plots."""
    rep, plots = page.rep, page.plots
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


def findings(page: Page) -> list[str]:
    """The sweep file's published findings, tested in the same family as the Δ rows."""
    if not page.rep.sweep.findings:
        return []
    return ["## Compared with published findings", "",
            "Published numbers come from far larger models and datasets; only the direction carries over. "
            "Tested in the same family as the Δ rows above.", "", *findings_table(page.comparisons), ""]


def reading(page: Page) -> list[str]:
    """The sweep file's notes: how to read these results."""
    notes = page.rep.sweep.notes
    return ["## Reading these results", "", str(notes).strip(), ""] if notes else []


def reproduce(page: Page) -> list[str]:
    """The commands that make the runs and this page, the environment, and the sweep file."""
    args, folder, sweep = page.args, page.folder, page.rep.sweep
    return ["## Reproduce", "", "```bash",
            f"ablate sweep {args}   # the runs (resumable)",
            f"ablate report {args}  # this page",
            f"ablate reproduce {folder}   # re-run from the embedded config and compare, metric by metric",
            "```", "", *_environment_lines(page.rep.records), "", "The sweep file (`sweep.yaml` here):", "",
            "```yaml", sweep.text.rstrip(), "```", ""]


# The page, section by section, in order; each turns the Page into its lines (none: left out).
SECTIONS: list[Callable[[Page], list[str]]] = [intro, tuning, results, against_baseline, runs_and_plots, findings,
                                               reading, reproduce]


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


PROJECT = Path(__file__).resolve().parents[2]


def _rel(path: Path) -> str:
    """A path as written in a report: relative to the project root when inside it."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(PROJECT))
    except ValueError:
        return str(path)


def default_out(sweep: Sweep) -> Path:
    return Path("reports") / sweep.name
