"""``ablate report``: a sweep's runs as a page (``README.md``) with seed statistics, deltas against
the baseline with Student-t intervals and Holm-adjusted p-values, plots, and everything needed to
reproduce it, plus ``report.json``.

The page is built from :data:`experiments.report.sections.SECTIONS`, an ordered list of
functions, each turning the report's :class:`~experiments.report.sections.Page` into its lines.
Committing the report folder lets anyone rebuild it byte for byte (``ablate report <out>``),
rescore the hypotheses with the ``sacrebleu`` command, and ``ablate reproduce`` compare fresh runs
against it.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any, Optional

from experiments.report import adequacy, cost, health
from experiments.report.collect import Record, Report, collect, tune_records
from experiments.report.compare import bleu_tests, family
from experiments.report.plots import PLOTS, plot_curves, plot_extrapolation, plot_throughput, plot_tuning
from experiments.report.sections import SECTIONS, Page, health_rows, test_sources, tuning_record
from experiments.sweep.spec import Sweep, SweepError, load_sweep
from tools.metrics import corpus_chrf


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
             plot_extrapolation(rep, out / PLOTS[2]), plot_throughput(rep, out / PLOTS[3]),
             plot_tuning(rep, tuning_record(rep), tune_records(sweep, out), out / PLOTS[4])]
    for name in set(PLOTS) - set(plots):  # a plot with nothing to show: no stale picture either
        (out / name).unlink(missing_ok=True)
    args = shlex.join([sweep_file, *sweep.cli_overrides])  # as the shell must read them, to be copied
    page = Page(rep, comparisons, tests, plots, args, shlex.quote(folder))
    (out / "README.md").write_text("\n".join(line for section in SECTIONS for line in section(page)))
    summary = {"name": sweep.name, "baseline": sweep.baseline, "cli_overrides": sweep.cli_overrides,
               "sweep_file": sweep_file, "folder": folder, "metrics": rep.metrics(),
               "runs": [_run_summary(r, rep.metrics()) for r in records],
               "comparisons": [c.to_json() for c in comparisons]}
    if tests:
        summary["bleu_tests"] = tests
    summary["adequacy"] = adequacy.summary(records, comparisons, sweep.baseline, rep.spec.translates, test_sources(rep))
    summary["health"] = health.summary(*health_rows(page))
    summary["cost"] = cost.summary(rep, comparisons)
    (out / "report.json").write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    return out / "README.md"


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
