"""The schema of a sweep file (:class:`SweepSpec`, validated as a structured OmegaConf config like
the run configs are) and its reading: unknown keys and values of the wrong type fail at once,
naming the file and the key."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from experiments.sweep import budget, tuning
from experiments.sweep.budget import BudgetSpec
from experiments.sweep.tuning import TuneSpec


class SweepError(ValueError):
    """A problem with a sweep file; the message names the file and the key."""



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
    tune: Optional[TuneSpec] = None
    budget: Optional[BudgetSpec] = None  # every run's max_steps from a budget of steps, tokens or FLOPs (budget.py)


SWEEP_KEYS = tuple(f.name for f in dataclasses.fields(SweepSpec))
SLURM_KEYS = tuple(f.name for f in dataclasses.fields(SlurmSpec))


def read_spec(path: Path) -> tuple[str, dict[str, Any]]:
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
    return text, validated(spec, path)


def validated(spec: dict[str, Any], path: Path) -> dict[str, Any]:
    """``spec`` checked against :class:`SweepSpec` (keys and types), as plain containers."""
    spec = dict(spec)
    if spec.get("seeds") is not None and not isinstance(spec["seeds"], list):
        spec["seeds"] = [spec["seeds"]]  # one seed may be written without brackets
    for key in ("slurm", "overrides", "grid", "baseline", "tune", "budget"):
        if spec.get(key) is None:
            spec.pop(key, None)
    for key, known in (("slurm", SLURM_KEYS), ("tune", tuning.TUNE_KEYS), ("budget", budget.BUDGET_KEYS)):
        stray = sorted(map(str, set(spec.get(key) or {}) - set(known))) if isinstance(spec.get(key), dict) else []
        if stray:
            raise SweepError(f"{path}: {key}: unknown key(s) {', '.join(stray)}; choices: {', '.join(known)}")
    select = (spec.get("tune") or {}).get("select") if isinstance(spec.get("tune"), dict) else None
    stray = sorted(map(str, set(select) - set(tuning.SELECT_KEYS))) if isinstance(select, dict) else []
    if stray:
        raise SweepError(f"{path}: tune.select: unknown key(s) {', '.join(stray)}; choices: {', '.join(tuning.SELECT_KEYS)}")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(SweepSpec), OmegaConf.create(spec))
        return OmegaConf.to_container(merged, resolve=False)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        hint = {"seeds": "give a non-empty list of integers"}.get(str(key).split("[")[0], "")
        raise SweepError(f"{path}: {key}: {hint + ': ' if hint else ''}{str(err).splitlines()[0]}") from None
