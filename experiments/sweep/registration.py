"""Pre-registration: what a sweep will be judged by (its baseline, its published findings, its
confirmation seeds, its tuning rule and its budget), written into the sweep's manifest the first
time the sweep is launched, before any of its runs has finished, and never rewritten. Every later launch
whose sweep file says otherwise appends a change, with its time and how many runs had finished
by then, so a report can say whether its verdicts were decided before or after the results."""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Optional

from experiments.run.rundir import FINAL_STATES, read_status
from experiments.sweep.spec import Sweep

REGISTRATION_FILE = "registration.json"  # a report's copy of its sweep's registration


def registered_terms(sweep: Sweep) -> dict[str, Any]:
    """What the verdicts of ``sweep`` depend on and could be chosen after seeing results."""
    tune = sweep.tune
    budget = next((r.budget for r in sweep.runs if r.budget), None)
    return {"baseline": sweep.baseline,
            "findings": [dataclasses.asdict(f) for f in sweep.findings],
            "seeds": list(sweep.seeds),
            "tune": None if tune is None else {"grid": {k: list(v) for k, v in tune.grid.items()},
                                                "seeds": list(tune.seeds), "select": _plain(tune.select)},
            "budget": None if budget is None else {k: budget.get(k) for k in ("by", "value", "seq_len")}}


TERMS = ("baseline", "findings", "seeds", "tune", "budget")  # what a registration fixes


def _plain(value: Any) -> Any:
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else dict(value)


def finished(runs) -> int:
    """How many of ``runs`` have finished (confirmation runs: the ones the verdicts use)."""
    return sum(read_status(r.run_dir).get("state") in FINAL_STATES for r in runs)


def update(previous: Optional[dict[str, Any]], sweep: Sweep, now: Optional[float] = None) -> dict[str, Any]:
    """The registration after this launch: ``previous`` unchanged when the sweep file still says
    the same; with a change appended when it does not; a new one when there was none."""
    now = time.time() if now is None else now
    terms = registered_terms(sweep)
    entry = {"at": _iso(now), "finished_runs": finished(sweep.runs),
             "finished_tuning_runs": finished(sweep.tune_runs), **terms}
    if not previous:
        return {"registered": entry, "changes": []}
    last = (previous.get("changes") or [previous["registered"]])[-1]
    if {k: last.get(k) for k in terms} == terms:
        return previous
    return {**previous, "changes": [*(previous.get("changes") or []), entry]}


def merge(kept: Optional[dict[str, Any]], newer: dict[str, Any]) -> dict[str, Any]:
    """One registration from two records of a sweep: a report's copy and its runs' manifest (the
    same registration, whose entries are taken once), or two parts run on different machines. The
    entries of both, each once, in time order: the earliest is the registration, and every later
    one whose terms differ from the entry before it is a change."""
    if not kept:
        return newer
    entries: list[dict[str, Any]] = []
    for record in (kept, newer):
        for entry in [record["registered"], *(record.get("changes") or [])]:
            if entry not in entries:
                entries.append(entry)
    entries.sort(key=lambda entry: entry["at"])  # "YYYY-MM-DD HH:MM:SS UTC" sorts as the times do
    merged = {**kept, "registered": entries[0], "changes": []}
    for entry in entries[1:]:
        last = (merged["changes"] or [merged["registered"]])[-1]
        if {k: last.get(k) for k in TERMS} != {k: entry.get(k) for k in TERMS}:
            merged["changes"].append(entry)
    return merged


def describe(registration: Optional[dict[str, Any]]) -> list[str]:
    """A report's lines on when its terms were fixed and whether they changed."""
    if not registration:
        return ["Not pre-registered: this sweep was launched before launches recorded their baseline and findings."]
    first = registration["registered"]
    tuned = first.get("finished_tuning_runs") or 0
    when = (f"registered at {first['at']} (by the first launch that recorded them), "
            + ("before any run of the verdicts had finished" if not first["finished_runs"]
               else f"after {first['finished_runs']} run(s) of the verdicts had already finished")
            + (f" ({tuned} tuning run(s) had, which never enter a verdict)" if tuned else ""))
    changes = registration.get("changes") or []
    if not changes:
        return [f"The baseline, the findings, the confirmation seeds, the tuning rule and the budget were {when}; "
                f"they have not changed since."]
    lines = [f"The baseline, the findings, the confirmation seeds, the tuning rule and the budget were {when}. "
             f"They changed {len(changes)} time(s) afterwards:", ""]
    before = first
    for change in changes:
        what = ", ".join(k for k in TERMS if change.get(k) != before.get(k))
        lines.append(f"- {change['at']}, with {change['finished_runs']} run(s) of the verdicts finished: {what} changed"
                     + (f" (baseline {before.get('baseline')} → {change.get('baseline')})"
                        if change.get("baseline") != before.get("baseline") else ""))
        before = change
    return lines


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))
