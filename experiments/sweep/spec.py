"""Sweep files: a grid of variants x seeds over base experiment configs, expanded into runs.

A sweep file (``configs/sweeps/*.yaml``)::

    name: lm-components            # default: the file's stem; runs go to <run.root>/<name>/
    description: one line for the report
    configs: [configs/experiments/lm-bible.yaml]   # base layers, merged left to right
    overrides: {trainer.max_steps: 400}           # fixed settings for every run
    grid:                                          # the product of these values ...
      model.position: [learned, rope]
      model.ffn: [gelu, swiglu]
    exclude: [{model.position: learned, model.ffn: swiglu}]   # ... minus these combinations
    include: [{model.position: alibi}]             # ... plus these extra variants
    seeds: [0, 1, 2]
    baseline: {model.position: learned, model.ffn: gelu}
    slurm: {partition: gpu, time_min: 120, gpus_per_node: 1}
    findings:                                      # published claims the report checks
      - {claim: "RoPE beats learned positions", variant: {model.position: rope}, metric: test/ppl, expect: lower}
    notes: free text printed under the findings in the report
    tune:                                          # optional: each variant tuned on its own (tuning.py)
      grid: {task.lr: [5.0e-4, 1.0e-3, 2.0e-3]}
      seeds: [100]
      select: {metric: val/ppl, mode: min}
    budget: {by: flops, value: 2.0e15}             # optional: every run's max_steps from a budget (budget.py)

With ``tune:``, every variant first runs every tuning point at the tuning seeds (``tune_runs``,
named ``<variant>-tune-<values>-s<seed>``); the confirmation runs (``runs``) of a variant train
at its recorded choice, and wait (``awaiting``) until it is made.

Every run gets a stable name (its components, any other grid keys, and the seed), a directory
``<run.root>/<sweep name>/<run name>`` and a run id hashed from its resolved config. Expansion
loads every run's config before anything starts, so an unknown key, an unknown component name
or an empty grid fails at once, naming the problem.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from experiments.run.config import ConfigError, RunConfig, load_config, run_id, seed_problem
from experiments.sweep import budget as budgets
from experiments.sweep import tuning
from experiments.sweep.budget import BudgetError
from experiments.sweep.findings import FindingError, FindingSpec, check_finding, variant_matching
from experiments.sweep.findings import flatten as _flatten
from experiments.sweep.schema import SlurmSpec, SweepError, read_spec
from experiments.sweep.tuning import TuneSpec, TuningError
from variants import REGISTRIES
from variants.registry import option_owners


def component_keys() -> set[str]:
    """The config keys that name a variant's components: every slot, and every setting a
    registered component declares (``model.n_kv_heads``); read when asked, so components a
    config's ``plugins`` registered count too."""
    return {f"model.{key}" for key in (*REGISTRIES, *option_owners())}


STAGES = ("tune", "confirm")


@dataclass
class SweepRun:
    name: str  # components [+ other grid values] + seed
    variant: str  # the name without the seed
    point: dict[str, Any]  # the grid values of this variant
    seed: int
    overrides: list[str]  # dotted key=value on top of the sweep's configs
    cfg: RunConfig
    run_id: str
    stage: str = "confirm"  # "tune": a tuning run (never in a verdict)
    tuned: dict[str, Any] = field(default_factory=dict)  # the tuning point it trains at
    awaiting: Optional[str] = None  # why a confirmation run cannot start yet (its variant's tuning)
    budget: Optional[dict[str, Any]] = None  # with a sweep budget: by, value, max_steps, flops_per_step ...

    @property
    def run_dir(self) -> Path:
        return self.cfg.run_dir

    def command(self, configs: Sequence[Path]) -> list[str]:
        """The ``ablate train`` arguments that run exactly this run."""
        return ["train", *map(str, configs), *self.overrides]


@dataclass
class Sweep:
    path: Path
    name: str
    description: str
    configs: list[Path]
    grid: dict[str, list]
    seeds: list[int]
    baseline: Optional[str]  # variant name
    slurm: SlurmSpec
    runs: list[SweepRun]
    text: str  # the sweep file as written
    cli_overrides: list[str] = field(default_factory=list)
    findings: list[FindingSpec] = field(default_factory=list)  # published claims the report tests
    notes: Optional[str] = None  # free text the report prints under the findings
    tune: Optional[TuneSpec] = None
    tune_runs: list[SweepRun] = field(default_factory=list)  # every variant x tuning point x tuning seed
    choices: dict[str, Any] = field(default_factory=dict)  # tuning.json: variant -> its recorded choice
    staged: Optional[str] = None  # a view of one stage (see stage()): "tune" or "confirm"
    whole: Optional["Sweep"] = field(default=None, repr=False)  # the sweep a view was taken of

    def stage(self, stage: str) -> "Sweep":
        """This sweep with ``runs`` = the runs of one stage that can start: every tuning run, or
        the confirmation runs not awaiting a choice (what a launcher is handed)."""
        runs = self.tune_runs if stage == "tune" else [r for r in self.runs if r.awaiting is None]
        seeds = self.tune.seeds if stage == "tune" and self.tune else self.seeds
        return dataclasses.replace(self, runs=runs, seeds=seeds, staged=stage, whole=self)

    @property
    def title(self) -> str:
        return self.name + {"tune": " (tuning stage)", "confirm": " (confirmation stage)"}.get(self.staged or "", "")

    @property
    def variants(self) -> list[str]:
        return list(dict.fromkeys(r.variant for r in self.runs))

    @property
    def root(self) -> Path:
        return (self.whole or self).runs[0].cfg.run_dir.parent


def format_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return yaml.safe_dump(value, default_flow_style=True).strip()
    return str(value)


def _slug(value: Any) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]", "_", format_value(value))


def run_name(cfg: RunConfig, point: dict[str, Any]) -> str:
    """``norm-placement-position-ffn`` (see :meth:`ModelConfig.components_name`, which also
    names the components' settings) plus ``<key><value>`` for every other grid key."""
    components = component_keys()
    parts = [cfg.model.components_name()]
    parts += [f"{key.split('.')[-1]}{_slug(value)}" for key, value in point.items() if key not in components]
    return "-".join(parts)


def _resolve(path: str, sweep_file: Path) -> Path:
    candidate = Path(path)
    if candidate.is_file():
        return candidate
    for base in (sweep_file.parent, *sweep_file.parent.parents):
        if (base / path).is_file():
            return base / path
    raise SweepError(f"{sweep_file}: configs: {path} not found (relative to the working directory or the sweep file)")


def _matches(point: dict[str, Any], pattern: dict[str, Any]) -> bool:
    return all(key in point and point[key] == value for key, value in pattern.items())


def load_sweep(path: str | Path, cli_overrides: Sequence[str] = ()) -> Sweep:
    """Read and expand a sweep file; ``cli_overrides`` (dotted key=value) apply to every run."""
    path = Path(path)
    text, spec = read_spec(path)
    name = str(spec.get("name") or path.stem)
    configs = [_resolve(str(c), path) for c in _as_list(spec.get("configs"), path, "configs")]
    if not configs:
        raise SweepError(f"{path}: configs: name at least one base experiment config")
    seeds = spec.get("seeds", [0])
    seeds = seeds if isinstance(seeds, list) else [seeds]
    if not seeds or not all(isinstance(s, int) for s in seeds):
        raise SweepError(f"{path}: seeds: give a non-empty list of integers, got {spec.get('seeds')!r}")
    _check_seeds(path, "seeds", seeds)
    slurm = SlurmSpec(**(spec.get("slurm") or {}))
    grid, points = _points(spec, path)
    fixed = [f"{k}={format_value(v)}" for k, v in _flatten(spec.get("overrides") or {}).items()]
    runs = _expand(path, name, configs, fixed, points, seeds, cli_overrides)
    tune, tune_runs, choices = None, [], {}
    if spec.get("tune") is not None:
        tune = _tune_spec(spec["tune"])
        _check_seeds(path, "tune.seeds", tune.seeds)
        components = sorted(set(tune.grid) & component_keys())
        if components:
            raise SweepError(f"{path}: tune.grid: {', '.join(components)} is a component or its setting: components are what "
                             f"a sweep compares (put them in grid), settings are what it tunes")
        try:
            tuning.check(tune, str(path), list(grid), seeds)
            choices = tuning.read_choices(runs[0].cfg.run_dir.parent)
            tuning.check_recorded(choices, tune, runs[0].cfg.run_dir.parent)
        except TuningError as err:
            raise SweepError(str(err)) from None
        choices = choices.get("variants", {})
        tune_runs = _expand(path, name, configs, fixed, points, tune.seeds, cli_overrides, tune=tune.grid)
        runs = [_at_choice(path, name, configs, fixed, r, cli_overrides, choices.get(r.variant)) for r in runs]
    if spec.get("budget") is not None:
        try:
            runs, tune_runs = budgets.spend(spec["budget"], str(path), points, tune and tune.grid, cli_overrides,
                                            runs, tune_runs)
        except BudgetError as err:
            raise SweepError(str(err)) from None
    baseline = None
    if spec.get("baseline") is not None:
        pattern = _flatten(spec["baseline"])
        found = variant_matching(runs, pattern)
        if len(found) != 1:
            raise SweepError(f"{path}: baseline {pattern} matches {len(found)} variants ({', '.join(found) or 'none'}); "
                             f"it must match exactly one")
        baseline = found[0]
        runs = [_as_baseline(r) if r.variant == baseline else r for r in runs]
    if baseline is not None:
        tune_runs = [_as_baseline(r) if r.variant == baseline else r for r in tune_runs]
    sweep = Sweep(path, name, str(spec.get("description") or ""), configs, grid, seeds, baseline,
                  slurm, runs, text, list(cli_overrides), notes=spec.get("notes"), tune=tune, tune_runs=tune_runs,
                  choices=choices)
    for i, finding in enumerate(_as_list(spec.get("findings"), path, "findings")):
        try:
            check_finding(sweep, finding, i)
        except FindingError as err:
            raise SweepError(str(err)) from None
        sweep.findings.append(FindingSpec(**finding))
    return sweep


def _check_seeds(path: Path, key: str, seeds: list) -> None:
    """Every seed of ``key`` one a run can take, and each given once, refused by key before any
    run is expanded (a repeated seed would name two runs alike)."""
    for i, seed in enumerate(seeds):
        problem = isinstance(seed, int) and seed_problem(seed)
        if problem:
            raise SweepError(f"{path}: {key}[{i}]: {problem}")
        if seed in seeds[:i]:
            raise SweepError(f"{path}: {key}[{i}]: seed {seed} repeats {key}[{seeds.index(seed)}]; "
                             f"give each seed once")


def _points(spec: dict[str, Any], path: Path) -> tuple[dict[str, list], list[dict[str, Any]]]:
    """The grid (flattened keys) and its points: every combination, minus ``exclude``, plus ``include``."""
    grid = _flatten(spec.get("grid") or {})
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise SweepError(f"{path}: grid.{key}: give a non-empty list of values, got {values!r}")
    exclude = [_flatten(e) for e in _as_list(spec.get("exclude"), path, "exclude")]
    for pattern in exclude:
        stray = sorted(set(pattern) - set(grid))
        if stray:
            raise SweepError(f"{path}: exclude: {', '.join(stray)} not a grid key; grid keys: {', '.join(grid)}")
    include = [_flatten(i) for i in _as_list(spec.get("include"), path, "include")]
    points = [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())] if grid else [{}]
    points = [p for p in points if not any(_matches(p, pattern) for pattern in exclude)]
    points += [{k: v for k, v in extra.items()} for extra in include]
    if not points or (not grid and not include):
        raise SweepError(f"{path}: the grid is empty (every combination excluded, or no grid and no include)")
    return grid, points


def _expand(path: Path, name: str, configs: list[Path], fixed: list[str], points: list[dict[str, Any]],
            seeds: list[int], cli_overrides: Sequence[str], tune: Optional[dict[str, list]] = None) -> list[SweepRun]:
    """One run per point and seed, each config loaded (and so validated) now; run names unique.
    With ``tune`` (a tuning grid): one tuning run per point, tuning point and seed instead."""
    runs: list[SweepRun] = []
    for point in points:
        for tuned in tuning.points(tune) if tune else [{}]:
            for seed in seeds:
                runs.append(_run(path, name, configs, fixed, point, seed, cli_overrides, tuned,
                                 "tune" if tune else "confirm"))
    seen: dict[str, SweepRun] = {}
    for run in runs:
        if run.name in seen:
            raise SweepError(f"{path}: two variants get the run name {run.name!r} "
                             f"({seen[run.name].point} and {run.point}); make the grid values distinct")
        seen[run.name] = run
    return runs


def _run(path: Path, name: str, configs: list[Path], fixed: list[str], point: dict[str, Any], seed: int,
         cli_overrides: Sequence[str], tuned: dict[str, Any], stage: str) -> SweepRun:
    """One run, its config loaded now. A tuning run never tests (``run.test=false``); the tuned
    values are set after the variant's own, and its name gets them between variant and seed."""
    values = [*point.items(), *tuned.items()]
    overrides = [*fixed, *(f"{k}={format_value(v)}" for k, v in values), f"seed={seed}",
                 f"run.experiment={name}", f"wandb.sweep={name}", *(["run.test=false"] if stage == "tune" else []),
                 *cli_overrides]
    try:
        cfg = load_config(configs, overrides)
    except ConfigError as err:
        where = ", ".join(f"{k}={format_value(v)}" for k, v in values) or "base"
        raise SweepError(f"{path}: {'tuning point' if stage == 'tune' else 'variant'} {where}: {err}") from None
    variant = run_name(cfg, point)
    label = "".join(f"-{key.split('.')[-1]}{_slug(value)}" for key, value in tuned.items())
    name_ = f"{variant}-tune{label}-s{seed}" if stage == "tune" else f"{variant}-s{seed}"
    overrides.append(f"run.name={name_}")
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, name=name_))
    return SweepRun(name_, variant, point, seed, overrides, cfg, run_id(cfg), stage, tuned)


def _at_choice(path: Path, name: str, configs: list[Path], fixed: list[str], run: SweepRun,
               cli_overrides: Sequence[str], choice: Optional[dict[str, Any]]) -> SweepRun:
    """A confirmation run at its variant's recorded tuning choice, or marked as awaiting it."""
    if choice is None:
        return dataclasses.replace(run, awaiting="waits for its variant's tuning")
    if choice.get("chosen") is None:
        return dataclasses.replace(run, awaiting=f"cannot start: its variant's tuning chose nothing ({choice.get('reason')})")
    chosen = _run(path, name, configs, fixed + [f"{k}={format_value(v)}" for k, v in choice["chosen"].items()],
                  run.point, run.seed, cli_overrides, {}, "confirm")
    return dataclasses.replace(chosen, tuned=dict(choice["chosen"]))


def _tune_spec(raw: dict[str, Any]) -> TuneSpec:
    select = tuning.SelectSpec(**(raw.get("select") or {}))
    return TuneSpec(grid=_flatten(raw.get("grid") or {}), seeds=list(raw.get("seeds") or []), select=select)


def _as_baseline(run: SweepRun) -> SweepRun:
    """A run of the baseline variant, marked so in W&B (``wandb.*`` is not part of the run id)."""
    cfg = dataclasses.replace(run.cfg, wandb=dataclasses.replace(run.cfg.wandb, baseline=True))
    return dataclasses.replace(run, overrides=[*run.overrides, "wandb.baseline=true"], cfg=cfg)


def _as_list(value: Any, path: Path, key: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise SweepError(f"{path}: {key}: expected a list, got {value!r}")
    return value
