"""A report's runs: copies of each run's small files (``status.json``, ``metrics.jsonl``,
``config.yaml`` and, for translation, ``test.hyp``) refreshed into ``<out>/runs/`` from the run
directories that exist (the test sources and references once, as ``<out>/test.src`` and
``<out>/test.ref``), then read back as :class:`Record` objects; a report is built from those
copies alone. A run directory or copy that holds another run id than the sweep's run of that name
(made with another config: the sweep's file or overrides changed since) is never copied nor used:
its run reads ``other configuration``, listed on the page, never averaged nor counted finished."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Optional

from experiments.run.config import ConfigError, RunConfig, load_config
from experiments.run.rundir import metric_records, read_status
from experiments.sweep import registration
from experiments.sweep.registration import REGISTRATION_FILE
from experiments.sweep.spec import Sweep, SweepError, SweepRun
from experiments.sweep.status import OTHER, other_configuration
from experiments.sweep.tuning import TUNING_FILE
from lit.specs import TaskSpec, task_spec

COPIED = ("status.json", "metrics.jsonl", "config.yaml", "test.hyp")
SHARED = ("test.src", "test.ref")  # the same for every run of a sweep: kept once, beside runs/
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
    config: Optional[RunConfig] = None  # the run's own config.yaml
    hypotheses: Optional[list[str]] = None  # translation: test.hyp, line by line
    summary_only: bool = False  # read from an earlier report.json: the run files were not kept
    run_id: Optional[str] = None  # the id its status.json records: the config it was made with
    active_params: Optional[int] = None  # with routed experts: the parameters a token passes through

    @property
    def finished(self) -> bool:
        return self.state == "completed"


def collect(sweep: Sweep, out: Path) -> list[Record]:
    """Refresh ``<out>/runs/<run>/`` from the run directories that exist and hold the sweep's run
    (a copy of another configuration there is replaced), then read every run from those copies. A
    run with neither is read from the ``runs`` list of an earlier ``<out>/report.json`` when it has
    one (reports built before run files were kept) and that report was of the same sweep."""
    runs_dir = out / "runs"
    if (sweep.root / TUNING_FILE).is_file():  # the recorded choices, beside the runs they were made from
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sweep.root / TUNING_FILE, out / TUNING_FILE)
    manifest = sweep.root / "sweep.json"
    if manifest.is_file() and (registered := json.loads(manifest.read_text()).get("registration")):
        out.mkdir(parents=True, exist_ok=True)  # when the baseline and findings were fixed, and any change since
        kept = out / REGISTRATION_FILE  # an earlier part of the sweep, run elsewhere, may have registered first
        registered = registration.merge(json.loads(kept.read_text()) if kept.is_file() else None, registered)
        kept.write_text(json.dumps(registered, indent=1, sort_keys=True) + "\n")
    shared = set()
    for run in [*sweep.tune_runs, *sweep.runs]:
        src = run.run_dir
        if not (src / "status.json").is_file():
            continue
        status = read_status(src)  # the state as it is now ("interrupted" when nobody holds a "running" run)
        if other_configuration(run, status.get("run_id")):
            continue  # never copied: its run reads "other configuration" (see _current)
        dst = runs_dir / run.name
        dst.mkdir(parents=True, exist_ok=True)
        status.pop("holder", None)
        (dst / "status.json").write_text(json.dumps(status, indent=1, sort_keys=True) + "\n")
        for name in COPIED[1:]:  # the copy is the run directory's files, none left from an earlier copy
            if (src / name).is_file():
                shutil.copyfile(src / name, dst / name)
            else:
                (dst / name).unlink(missing_ok=True)
        for name in SHARED:  # from this sweep's runs, never left from another configuration's
            if (src / name).is_file() and name not in shared:
                shutil.copyfile(src / name, out / name)
                shared.add(name)
    earlier, same_sweep = _earlier_runs(out, sweep)
    records = []
    for run in sweep.runs:
        record = _current(run, _read(run.name, run.variant, run.seed, runs_dir / run.name))
        if record.state == "missing" and run.name in earlier and not same_sweep:
            record = Record(run.name, run.variant, run.seed, OTHER,
                            message="known only from an earlier report.json of another sweep file or overrides; "
                                    "not used (rerun it: ablate sweep)")
        elif record.state == "missing" and run.name in earlier:
            e = earlier[run.name]
            record = Record(run.name, run.variant, run.seed, e["state"],
                            {k: v for k, v in (e.get("metrics") or {}).items() if v is not None},
                            environment=e.get("environment") or {}, summary_only=True)
        records.append(record)
    return records


def restore_choices(sweep: Sweep, folder: Path) -> bool:
    """The inverse of :func:`collect` for what a sweep decides from: the report's ``tuning.json``
    and pre-registration into the sweep's root where it has none. True when the tuning record was
    restored (load the sweep again: its confirmation runs depend on it)."""
    from experiments.sweep.tuning import TuningError, check_recorded

    folder, root = Path(folder), sweep.root
    summary = json.loads((folder / "report.json").read_text()) if (folder / "report.json").is_file() else {}
    if summary.get("name", sweep.name) != sweep.name:
        raise SweepError(f"--resume-from {folder}: a report of sweep {summary['name']}, not of {sweep.name}")
    restored = False
    if (folder / TUNING_FILE).is_file() and not (root / TUNING_FILE).is_file():
        if sweep.tune is None:
            raise SweepError(f"--resume-from {folder}: it holds a {TUNING_FILE}, and {sweep.path} has no tune: section")
        try:  # choices made over another grid, seeds or metric: refused before anything is written
            check_recorded(json.loads((folder / TUNING_FILE).read_text()), sweep.tune, folder)
        except TuningError as err:
            raise SweepError(f"--resume-from: {err}") from None
        root.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(folder / TUNING_FILE, root / TUNING_FILE)
        restored = True
    root.mkdir(parents=True, exist_ok=True)
    manifest = root / "sweep.json"
    if (folder / REGISTRATION_FILE).is_file() and not manifest.is_file():
        manifest.write_text(json.dumps({"registration": json.loads((folder / REGISTRATION_FILE).read_text())}))
    return restored


def restore(sweep: Sweep, folder: Path) -> tuple[list[str], list[str]]:
    """Put the finished runs of a report folder (committed run files) back into the sweep's run
    directories that have none, so that ``ablate sweep`` skips them and runs the rest: a sweep run
    in parts, on several machines or sessions. Returns (restored run names, refusals: a copy made
    with another config than the sweep's run of that name, by run id)."""
    from experiments.run.rundir import FINAL_STATES

    folder = Path(folder)
    restored, refused = [], []
    for run in [*sweep.tune_runs, *sweep.runs]:
        src, dst = folder / "runs" / run.name, run.run_dir
        if not (src / "status.json").is_file() or (dst / "status.json").is_file() or run.awaiting:
            continue
        status = json.loads((src / "status.json").read_text())
        if status.get("state") not in FINAL_STATES:
            continue
        if status.get("run_id") != run.run_id:
            refused.append(f"{run.name}: the copy in {src} is run {status.get('run_id')}, the sweep's is {run.run_id}")
            continue
        dst.mkdir(parents=True, exist_ok=True)
        for name in COPIED:
            if (src / name).is_file():
                shutil.copyfile(src / name, dst / name)
        if (src / "test.hyp").is_file():
            for name in SHARED:
                if (folder / name).is_file():
                    shutil.copyfile(folder / name, dst / name)
        restored.append(run.name)
    return restored, refused


def tune_records(sweep: Sweep, out: Path) -> list[Record]:
    """The tuning runs, read from their copies in ``<out>/runs/`` (never part of a verdict)."""
    return [_current(run, _read(run.name, run.variant, run.seed, out / "runs" / run.name)) for run in sweep.tune_runs]


def _current(run: SweepRun, record: Record) -> Record:
    """``record``, read from the run's copy in ``runs/``, unless that copy, or with no copy the
    run's directory, holds another run id than the sweep's run of that name (another config: the
    sweep's file or overrides, a tuning choice or budget changed since, or a copy from elsewhere):
    then an ``other configuration`` record that no table averages and the page lists."""
    if record.state != "missing":
        if not other_configuration(run, record.run_id):
            return record
        why = f"its copy in runs/ is run {record.run_id}, the sweep's is {run.run_id}; not used (rerun it: ablate sweep)"
    elif other_configuration(run, (found := read_status(run.run_dir).get("run_id"))):
        why = (f"its run directory holds run {found}, the sweep's is {run.run_id}; not copied "
               "(rerun it: ablate sweep with another run.root)")
    else:
        return record
    return Record(run.name, run.variant, run.seed, OTHER, message=why, run_id=record.run_id)


def _earlier_runs(out: Path, sweep: Sweep) -> tuple[dict[str, dict[str, Any]], bool]:
    """Runs of an earlier ``report.json`` whose run files were never copied (``summary_only``);
    runs it listed as missing (not started then) or of another configuration are not among them.
    And whether that report was made from this sweep file and these overrides (its embedded
    ``sweep.yaml`` and overrides, when it has them): if not, its runs are of another configuration."""
    path = out / "report.json"
    if not path.is_file():
        return {}, True
    summary = json.loads(path.read_text())
    same = not (out / "sweep.yaml").is_file() or (
        (out / "sweep.yaml").read_text() == sweep.text
        and _id_overrides(summary.get("cli_overrides") or []) == _id_overrides(sweep.cli_overrides))
    runs = summary.get("runs") or []
    return {r["name"]: r for r in runs
            if r.get("state") not in ("missing", OTHER) and not (out / "runs" / r["name"] / "status.json").is_file()}, same


def _id_overrides(overrides: list[str]) -> list[str]:
    return [o for o in overrides if not o.startswith("run.root=")]


def _read(name: str, variant: str, seed: int, directory: Path) -> Record:
    status_file = directory / "status.json"
    if not status_file.is_file():
        return Record(name, variant, seed, "missing")
    status = json.loads(status_file.read_text())
    record = Record(name, variant, seed, status["state"], status.get("metrics") or {},
                    (status.get("params") or {}).get("total"), status.get("signature"),
                    status.get("environment") or {}, status.get("message") or status.get("error"),
                    run_id=status.get("run_id"), active_params=(status.get("params") or {}).get("active"))
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
        try:
            record.config = load_config([directory / "config.yaml"])
        except ConfigError as err:
            raise SweepError(f"run {name}: {err}") from None
    if (directory / "test.hyp").is_file():
        record.hypotheses = read_lines(directory / "test.hyp")
    return record


def read_lines(path: Path) -> list[str]:
    """The lines of a hypothesis, source or reference file (one example per line)."""
    return path.read_text(encoding="utf-8").split("\n")[:-1]


@dataclass
class Report:
    sweep: Sweep
    out: Path
    records: list[Record]

    @cached_property
    def references(self) -> Optional[list[str]]:
        """The test references (``<out>/test.ref``) that the hypotheses were scored against."""
        path = self.out / "test.ref"
        return read_lines(path) if path.is_file() else None

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


