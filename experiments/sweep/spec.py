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
from typing import Any, Dict, List, Optional, Sequence

import yaml
from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from experiments.run.config import ConfigError, RunConfig, load_config, run_id
from variants import REGISTRIES


@dataclass
class SlurmSpec:
    """The ``slurm:`` section of a sweep file (submitit's executor settings)."""

    cluster: Optional[str] = None  # "local": submitit's local executor (how the path is tested)
    partition: Optional[str] = None
    time_min: int = 240
    gpus_per_node: int = 1
    cpus_per_task: Optional[int] = None
    mem_gb: Optional[float] = None
    array_parallelism: Optional[int] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    constraint: Optional[str] = None
    additional_parameters: Optional[Dict[str, Any]] = None


@dataclass
class FindingSpec:
    """A published claim the report tests: ``variant`` against ``against`` (default the
    baseline) on ``metric``, expected ``lower``, ``higher`` or ``none`` (no difference)."""

    claim: str = MISSING
    variant: Dict[str, Any] = MISSING
    metric: str = MISSING
    against: Optional[Dict[str, Any]] = None
    expect: str = "lower"


@dataclass
class SweepSpec:
    """A sweep file, validated as a structured OmegaConf config like the run configs are."""

    name: Optional[str] = None  # default: the file's stem
    description: str = ""
    configs: List[str] = field(default_factory=list)  # base experiment configs, merged left to right
    overrides: Dict[str, Any] = field(default_factory=dict)  # fixed settings of every run
    grid: Dict[str, Any] = field(default_factory=dict)  # key -> list of values
    exclude: List[Dict[str, Any]] = field(default_factory=list)
    include: List[Dict[str, Any]] = field(default_factory=list)
    seeds: List[int] = field(default_factory=lambda: [0])
    baseline: Optional[Dict[str, Any]] = None
    slurm: SlurmSpec = field(default_factory=SlurmSpec)
    findings: List[Any] = field(default_factory=list)  # FindingSpec mappings, checked one by one
    notes: Optional[str] = None


SWEEP_KEYS = tuple(f.name for f in dataclasses.fields(SweepSpec))
SLURM_KEYS = tuple(f.name for f in dataclasses.fields(SlurmSpec))
FINDING_KEYS = tuple(f.name for f in dataclasses.fields(FindingSpec))

COMPONENT_KEYS = tuple(f"model.{slot}" for slot in REGISTRIES)


class SweepError(ValueError):
    """A problem with a sweep file; the message names the file and the key."""


@dataclass
class SweepRun:
    name: str  # components [+ other grid values] + seed
    variant: str  # the name without the seed
    point: dict[str, Any]  # the grid values of this variant
    seed: int
    overrides: list[str]  # dotted key=value on top of the sweep's configs
    cfg: RunConfig
    run_id: str

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

    @property
    def variants(self) -> list[str]:
        return list(dict.fromkeys(r.variant for r in self.runs))

    @property
    def root(self) -> Path:
        return self.runs[0].cfg.run_dir.parent


def format_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return yaml.safe_dump(value, default_flow_style=True).strip()
    return str(value)


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings to dotted keys; dotted keys pass through."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        flat.update(_flatten(value, dotted) if isinstance(value, dict) else {dotted: value})
    return flat


def _slug(value: Any) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]", "_", format_value(value))


def run_name(cfg: RunConfig, point: dict[str, Any]) -> str:
    """``norm-placement-position-ffn`` (see :meth:`ModelConfig.components_name`) plus
    ``<key><value>`` for every non-component grid key."""
    parts = [cfg.model.components_name()]
    parts += [f"{key.split('.')[-1]}{_slug(value)}" for key, value in point.items() if key not in COMPONENT_KEYS]
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
    text, spec = _read_spec(path)
    name = str(spec.get("name") or path.stem)
    configs = [_resolve(str(c), path) for c in _as_list(spec.get("configs"), path, "configs")]
    if not configs:
        raise SweepError(f"{path}: configs: name at least one base experiment config")
    seeds = spec.get("seeds", [0])
    seeds = seeds if isinstance(seeds, list) else [seeds]
    if not seeds or not all(isinstance(s, int) for s in seeds):
        raise SweepError(f"{path}: seeds: give a non-empty list of integers, got {spec.get('seeds')!r}")
    slurm = SlurmSpec(**(spec.get("slurm") or {}))
    grid, points = _points(spec, path)
    fixed = [f"{k}={format_value(v)}" for k, v in _flatten(spec.get("overrides") or {}).items()]
    runs = _expand(path, name, configs, fixed, points, seeds, cli_overrides)
    baseline = None
    if spec.get("baseline") is not None:
        pattern = _flatten(spec["baseline"])
        found = variant_matching(runs, pattern)
        if len(found) != 1:
            raise SweepError(f"{path}: baseline {pattern} matches {len(found)} variants ({', '.join(found) or 'none'}); "
                             f"it must match exactly one")
        baseline = found[0]
        runs = [_as_baseline(r) if r.variant == baseline else r for r in runs]
    sweep = Sweep(path, name, str(spec.get("description") or ""), configs, grid, seeds, baseline,
                  slurm, runs, text, list(cli_overrides), notes=spec.get("notes"))
    for i, finding in enumerate(_as_list(spec.get("findings"), path, "findings")):
        _check_finding(sweep, finding, i)
        sweep.findings.append(FindingSpec(**finding))
    return sweep


def _read_spec(path: Path) -> tuple[str, dict[str, Any]]:
    """The sweep file's text and its mapping, checked against :class:`SweepSpec`."""
    if not path.is_file():
        raise SweepError(f"{path}: sweep file not found")
    text = path.read_text()
    try:
        spec = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise SweepError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(spec, dict):
        raise SweepError(f"{path}: a sweep file is a mapping with keys {', '.join(SWEEP_KEYS)}")
    unknown = sorted(set(spec) - set(SWEEP_KEYS))
    if unknown:
        raise SweepError(f"{path}: unknown key(s) {', '.join(unknown)}; a sweep file has: {', '.join(SWEEP_KEYS)}")
    return text, _validated(spec, path)


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
            seeds: list[int], cli_overrides: Sequence[str]) -> list[SweepRun]:
    """One run per point and seed, each config loaded (and so validated) now; run names unique."""
    runs: list[SweepRun] = []
    for point in points:
        for seed in seeds:
            overrides = [*fixed, *(f"{k}={format_value(v)}" for k, v in point.items()), f"seed={seed}",
                         f"run.experiment={name}", f"wandb.sweep={name}", *cli_overrides]
            try:
                cfg = load_config(configs, overrides)
            except ConfigError as err:
                where = ", ".join(f"{k}={format_value(v)}" for k, v in point.items()) or "base"
                raise SweepError(f"{path}: variant {where}: {err}") from None
            variant = run_name(cfg, point)
            name_ = f"{variant}-s{seed}"
            overrides.append(f"run.name={name_}")
            cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, name=name_))
            runs.append(SweepRun(name_, variant, point, seed, overrides, cfg, run_id(cfg)))
    seen: dict[str, SweepRun] = {}
    for run in runs:
        if run.name in seen:
            raise SweepError(f"{path}: two variants get the run name {run.name!r} "
                             f"({seen[run.name].point} and {run.point}); make the grid values distinct")
        seen[run.name] = run
    return runs


def _as_baseline(run: SweepRun) -> SweepRun:
    """A run of the baseline variant, marked so in W&B (``wandb.*`` is not part of the run id)."""
    cfg = dataclasses.replace(run.cfg, wandb=dataclasses.replace(run.cfg.wandb, baseline=True))
    return dataclasses.replace(run, overrides=[*run.overrides, "wandb.baseline=true"], cfg=cfg)


def _validated(spec: dict[str, Any], path: Path) -> dict[str, Any]:
    """``spec`` checked against :class:`SweepSpec` (keys and types), as plain containers."""
    spec = dict(spec)
    if spec.get("seeds") is not None and not isinstance(spec["seeds"], list):
        spec["seeds"] = [spec["seeds"]]  # one seed may be written without brackets
    for key in ("slurm", "overrides", "grid", "baseline"):
        if spec.get(key) is None:
            spec.pop(key, None)
    stray = sorted(set(spec.get("slurm") or {}) - set(SLURM_KEYS)) if isinstance(spec.get("slurm"), dict) else []
    if stray:
        raise SweepError(f"{path}: slurm: unknown key(s) {', '.join(stray)}; choices: {', '.join(SLURM_KEYS)}")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(SweepSpec), OmegaConf.create(spec))
        return OmegaConf.to_container(merged, resolve=False)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        hint = {"seeds": "give a non-empty list of integers"}.get(str(key).split("[")[0], "")
        raise SweepError(f"{path}: {key}: {hint + ': ' if hint else ''}{str(err).splitlines()[0]}") from None


def variant_matching(runs: Sequence[SweepRun], pattern: dict[str, Any]) -> list[str]:
    """The variants whose config has the values of ``pattern`` (dotted keys); among several,
    the one whose own grid values are exactly ``pattern`` when there is one."""
    flat = _flatten(pattern)
    found = list(dict.fromkeys(r.variant for r in runs if _matches_cfg(r.cfg, flat)))
    exact = list(dict.fromkeys(r.variant for r in runs if r.variant in found and r.point == flat))
    return exact if len(found) > 1 and exact else found


def _check_finding(sweep: Sweep, finding: Any, i: int) -> None:
    where = f"{sweep.path}: findings[{i}]"
    if not isinstance(finding, dict):
        raise SweepError(f"{where}: a mapping with keys {', '.join(FINDING_KEYS)}")
    stray = sorted(set(finding) - set(FINDING_KEYS))
    missing = [k for k in ("claim", "variant", "metric") if k not in finding]
    if stray or missing:
        raise SweepError(f"{where}: " + "; ".join(
            ([f"unknown key(s) {', '.join(stray)}"] if stray else []) + ([f"missing {', '.join(missing)}"] if missing else []))
            + f" (keys: {', '.join(FINDING_KEYS)})")
    if finding.get("expect", "lower") not in ("lower", "higher", "none"):
        raise SweepError(f"{where}: expect must be lower, higher or none, got {finding['expect']!r}")
    for key in ("variant", "against"):
        if key in finding:
            found = variant_matching(sweep.runs, finding[key])
            if len(found) != 1:
                raise SweepError(f"{where}: {key} {finding[key]} matches {len(found)} variants "
                                 f"({', '.join(found) or 'none'}); it must match exactly one")
    if "against" not in finding and sweep.baseline is None:
        raise SweepError(f"{where}: no 'against' and no baseline to compare with")


def _matches_cfg(cfg: RunConfig, pattern: dict[str, Any]) -> bool:
    for key, value in pattern.items():
        node: Any = cfg
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else getattr(node, part, None)
        if node != value:
            return False
    return True


def _as_list(value: Any, path: Path, key: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise SweepError(f"{path}: {key}: expected a list, got {value!r}")
    return value
