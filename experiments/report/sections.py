"""The sections of a report page, in order (:data:`SECTIONS`): each turns the report's
:class:`Page` into its lines (none: left out); a new section is one function and one entry there.
:mod:`experiments.report.page` computes what they read and writes the files."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Optional

from experiments.report import adequacy, cost, health
from experiments.report.collect import Record, Report, read_lines, tune_records
from experiments.report.compare import Comparison, family_size
from experiments.report.plots import PLOTS, UNEVEN_THROUGHPUT, uneven_throughput
from experiments.report.tables import (bleu_tests_table, delta_table, findings_table, not_averaged, results_table,
                                       samples, tuning_lines)
from experiments.sweep.registration import REGISTRATION_FILE
from experiments.sweep.registration import describe as describe_registration
from experiments.sweep.tuning import TUNING_FILE


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
    if task is None:  # no run has finished yet: nothing was decoded
        return None
    return (f"BLEU: sacreBLEU corpus BLEU on detokenized test text, signature `{signature}`; beam search, "
            f"beam {task and task.beam_size}, length penalty {task and task.length_penalty}, "
            f"at most {task and task.max_decode_len} tokens; last checkpoint, no averaging.")


HOW_TO_READ = (
    "Δ = variant − baseline, averaged over seeds. 95% CI: Student-t, paired by seed where both arms "
    "ran the same seeds, Welch's t otherwise. p: two-sided t test; p (sign-flip): the same test by "
    "exact sign-flipping of the per-seed differences (paired rows only: no normal model, and over n seeds "
    "never below 2/2^n, 0.0625 for 5; 1/2^n for a one-sided claim); p (Holm): adjusted by Holm–Bonferroni over the {m} distinct tests "
    "of this report (a finding that repeats a Δ row's test shares its p and counts once). A verdict is "
    "\"better\"/\"worse\" (for a published finding \"agrees\"/\"disagrees\") only when the adjusted "
    "p is below 0.05; otherwise \"no detectable difference\" (\"inconclusive\"). A finding with a margin "
    "is tested as declared, its p that of the test its method names: `equivalent` by TOST (|Δ| < margin; "
    "it agrees when the 90% interval, not the 95% one shown, lies inside the margin), "
    "`not_lower`/`not_higher` one-sided; it \"disagrees\" when Δ lies significantly beyond the margin. "
    "A finding of no difference without a margin can be rejected, never shown: \"not rejected\". "
    "\"No spread: no test\": every seed gave the same difference. \"Not tested here\": a precondition of "
    "the finding (converged, tuned) fails; \"no verdict (baseline collapsed)\": the arm compared against "
    "ignores its source in most seeds; neither row is in the family. \"(collapsed)\": the variant does. "
    "MDE: the smallest true difference these seeds would detect with 80% power at the family's Bonferroni "
    "level (α = 0.05/{m}), from the observed seed spread: a difference smaller than it may well exist. A "
    "row can be significant below its MDE: Holm tests every p but the smallest at a larger level than "
    "Bonferroni's, and a smaller effect is still detected, less often.")


@dataclass
class Page:
    """What the sections of a report page are written from."""

    rep: Report
    comparisons: list[Comparison]
    bleu_tests: list[dict[str, Any]]
    plots: list[Optional[str]]  # the file names of the plots drawn (None: nothing to show)
    args: str  # the sweep file and overrides, as the commands on the page name them
    folder: str  # the report folder, as the page names it


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


def preregistration(page: Page) -> list[str]:
    """When the baseline and findings were fixed (the sweep's first launch) and any change since."""
    path = page.rep.out / REGISTRATION_FILE
    return ["## Pre-registration", "", *describe_registration(json.loads(path.read_text()) if path.is_file() else None),
            ""]


def tuning(page: Page) -> list[str]:
    """How each variant's settings were chosen (sweeps with a ``tune:`` section)."""
    rep = page.rep
    if rep.sweep.tune is None:
        return []
    lines = ["## Tuning", "", *tuning_lines(rep, tuning_record(rep), tune_records(rep.sweep, rep.out)), ""]
    if PLOTS[4] in page.plots:
        lines += [f"![{PLOTS[4]}]({PLOTS[4]})", ""]
    return lines


def tuning_record(rep: Report) -> dict[str, Any]:
    path = rep.out / TUNING_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def results(page: Page) -> list[str]:
    """The per-variant table and what its columns mean."""
    rep = page.rep
    chosen = None
    if rep.sweep.tune is not None:  # each variant's recorded tuning choice, beside its rows
        chosen = {v: ", ".join(f"{k.split('.')[-1]} {x}" for k, x in c["chosen"].items())
                  for v, c in (tuning_record(rep).get("variants") or {}).items() if c.get("chosen")}
    lines = ["## Results", "", "Mean ± standard deviation over the finished seeds.", "", *results_table(rep, chosen), ""]
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
    size = family_size(comparisons)
    lines = ["", f"## Against the baseline ({rep.sweep.baseline})", ""]
    if rep.sweep.baseline:
        text = HOW_TO_READ.format(m=size) if size else HOW_TO_READ.format(m=0).replace(
            "over the 0 distinct tests of this report", "over the distinct tests of this report (none can be "
            "tested yet)").replace(" (α = 0.05/0)", "")
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


def _budget(page: Page) -> Optional[str]:
    """The warning that the baseline was still learning when the budget ended (None: it was not,
    or its curves are not here)."""
    found = adequacy.baseline_warning(page.rep.records, page.comparisons, page.rep.sweep.baseline)
    return None if found is None else (
        f"⚠ The baseline still improved by {100 * found[1]:.1f}% over the last quarter of training ({found[0]}): "
        "these verdicts are about this budget, not about the architectures at convergence.")


def budget_banner(page: Page) -> list[str]:
    """The budget warning, right under the introduction, before any number."""
    return [text, ""] if (text := _budget(page)) else []


def budget(page: Page) -> list[str]:
    """Each Δ row's gap followed through training on its validation metric, and whether it was
    closing or widening when the budget ended."""
    rows = adequacy.gaps(page.rep.records, page.comparisons)
    if not any(g.validation for g in rows):
        return []
    lines = ["", "## Was the budget enough?", ""]
    if (text := _budget(page)):
        lines += [text, ""]
    lines += ["Gap = (variant − baseline) / baseline on the validation metric, of the means over the seeds both "
              "finished, at each share of training (each run's last validation step being 100%; linear between "
              "validation points). BLEU is decoded at the end only, so its rows follow validation perplexity.", "",
              *adequacy.table(rows)]
    quarter = f"{100 * (1 - adequacy.TREND):.0f}%"
    lines += ["", f"Trend: \"crossed\" when the gap changed sign from 50% to 100% (the ranking flipped); else "
              f"\"converging\" when |gap| at 100% is below {quarter} of |gap| at 50%, \"diverging\" when "
              f"above {100 * (1 + adequacy.TREND):.0f}% of it, else \"stable\" (also when both are below "
              f"{100 * adequacy.TREND_FLOOR:.1f}%). Last quarter: the variant's own "
              "improvement from 75% to 100% of training (mean over seeds); above "
              f"{100 * adequacy.STILL_IMPROVING:.0f}% it was still learning."]
    return lines


def cost_and_compute(page: Page) -> list[str]:
    """Each variant's cost indicators, and each Δ row read again at equal training FLOPs: without a
    FLOP budget a costlier variant also trained on more compute."""
    rep = page.rep
    runs = cost.run_costs(rep)
    variants, rows = cost.costs(rep, runs), cost.equal_flops(rep, page.comparisons, runs)
    if not any(c.known for c in variants) and not any(r.equal or r.gap is not None for r in rows):
        return []
    lines = ["", "## Cost and equal compute", "", cost.rule_line(cost.budget_rule(rep)), "",
             "No single cost indicator ranks models as the others do (Dehghani et al. 2021, \"The Efficiency "
             "Misnomer\"), so all of them, per variant over its finished seeds:", "",
             *cost.cost_table(variants, rep.sweep.baseline), "",
             "- params: the model's parameters, embeddings included.",
             "- FLOPs/token: training FLOPs of one optimizer step at the nominal batch (the FLOPs of the Results "
             "section, counted on the run's config) / its tokens; \"(logged)\": from the run's throughput instead, "
             "MFU × peak FLOP/s / tokens/s.",
             "- training FLOPs: FLOPs per step × the run's last step, mean over seeds.",
             "- tokens/s: the run's median tokens/s, mean over seeds.",
             "- peak mem (MB): the largest peak memory of its seeds."]
    if rows:
        lines += ["", *cost.equal_table(rows), "",
                  "- Δ % at the end: the Δ table's relative Δ, on the row's metric.",
                  "- followed on: the validation metric read at equal FLOPs (BLEU rows: validation perplexity).",
                  "- smaller budget: the arm whose runs spent fewer training FLOPs (\"-\": equal within "
                  f"{100 * cost.EQUAL:.0f}%, or unknown).",
                  "- read at: the smaller arm's total training FLOPs, mean over seeds; both arms' validation curves "
                  "are read there (a point logged at step s at (s + 1) × the run's FLOPs per step, linear between).",
                  "- Δ % at equal FLOPs: (variant − baseline) / baseline there, of the means over the seeds both "
                  "finished."]
    return lines


def test_sources(rep: Report) -> Optional[int]:
    """How many test sources the hypotheses translate (None: not known here)."""
    if (rep.out / "test.src").is_file():
        return len(read_lines(rep.out / "test.src"))
    return len(rep.references) if rep.references is not None else None


def source_use(page: Page) -> list[str]:
    """Translation: the finished runs that ignore their source ("collapsed"), per variant."""
    rep = page.rep
    done = [r for r in rep.records if r.finished and (r.hypotheses or r.metrics.get(adequacy.SHUFFLED_KEY) is not None)]
    if not rep.spec.translates or not done:
        return []
    found, unchecked = adequacy.collapses(done, test_sources(rep)), adequacy.unchecked(done)
    lines = ["", "## Source use", "",
             "A run is collapsed when it ignores its source: fewer distinct test outputs than half the test sources, "
             f"or BLEU with shuffled sources at least {100 * adequacy.SHUFFLED_CLOSE:.0f}% of BLEU with the true ones "
             f"(validation sentences), or below {adequacy.TRANSLATES:.0f} BLEU with the true ones (it does not "
             "translate). Its BLEU and perplexity then measure a language model of the targets.", "",
             "| variant | collapsed runs |", "|---|---:|"]
    names = {r.name for r in done}
    for variant, runs in rep.by_variant().items():
        mine = [r for r in runs if r.name in names]
        lines.append(f"| {variant} | {sum(r.name in found for r in mine)}/{len(mine)} |")
    lines += [""] + ([f"- `{name}`: {why}" for name, why in found.items()] or ["No run collapsed."])
    if unchecked:
        which = "any run" if len(unchecked) == len(done) else ", ".join(f"`{n}`" for n in unchecked)
        lines += ["", f"The shuffled-source check was not available for {which} ({len(unchecked)} of {len(done)}: "
                      f"no {adequacy.SHUFFLED_KEY} logged): only distinct outputs were counted there."]
    return lines


def health_rows(page: Page) -> tuple[list[health.Health], list[tuple[int, int]]]:
    rep = page.rep
    return health.health(rep.records, rep.out / "runs", rep.sweep.variants)


def training_health(page: Page) -> list[str]:
    """Gradient norms, clipping and loss spikes per variant, from the runs' logged training rows."""
    rows, common = health_rows(page)
    if not health.logged(rows):
        return []
    lines = ["", "## Training health", "",
             "Over each variant's finished seeds: the global gradient norm before clipping at every logged step "
             "(median, maximum), the share of optimizer steps clipping scaled down (mean over runs), and loss "
             f"spikes: a logged training loss more than {health.SPIKE_SIGMAS:g}σ above the median of the "
             f"{health.WINDOW} logged losses before it, σ = 1.4826 × their median absolute deviation. A spike every "
             "variant shows at the same step of the same seed comes from the batch and is left out.", "",
             *health.table(rows)]
    if common:
        shown = ", ".join(f"{step} ({seed})" for seed, step in common)
        lines += ["", f"Left out, shown by every variant: step (seed) {shown}."]
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
    drawn = [name for name in plots if name and name != PLOTS[4]]  # the tuning plot is in its own section
    if PLOTS[1] in drawn and (uneven := uneven_throughput(rep)):
        lines += [f"The wall-clock plot ({PLOTS[1]}) is not comparable between variants: the tokens/s of one "
                  f"variant's seeds differ by more than {UNEVEN_THROUGHPUT:.0%} ("
                  + ", ".join(f"{v} {100 * x:.0f}%" for v, x in uneven.items())
                  + "), so other work shared the machine; compare the step plot.", ""]
    for name in drawn:
        lines += [f"![{name}]({name})", ""]
    if drawn and (without := [r.name for r in rep.records if r.finished and not r.curve and not r.summary_only]):
        lines += [f"The curves leave out {len(without)} finished run(s) whose `metrics.jsonl` is missing or holds no "
                  "validation record: " + ", ".join(f"`{n}`" for n in without) + ".", ""]
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
SECTIONS: list[Callable[[Page], list[str]]] = [intro, budget_banner, preregistration, tuning, results, against_baseline, budget,
                                               cost_and_compute,
                                               source_use, training_health, runs_and_plots, findings, reading,
                                               reproduce]
