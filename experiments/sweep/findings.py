"""The ``findings:`` of a sweep file: published claims the report tests, each naming the
variant (and the one it is compared ``against``) by the config values that pick it out."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence

from omegaconf import MISSING

from experiments.run.config import RunConfig


class FindingError(ValueError):
    """A finding that names no single variant, or has unknown keys; the message names it."""


@dataclass
class FindingSpec:
    """A published claim the report tests: ``variant`` against ``against`` (default the
    baseline) on ``metric``, expected ``lower``, ``higher`` or ``none`` (no difference)."""

    claim: str = MISSING
    variant: Dict[str, Any] = MISSING
    metric: str = MISSING
    against: Optional[Dict[str, Any]] = None
    expect: str = "lower"


FINDING_KEYS = tuple(f.name for f in dataclasses.fields(FindingSpec))


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings to dotted keys; dotted keys pass through."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        flat.update(flatten(value, dotted) if isinstance(value, dict) else {dotted: value})
    return flat


def variant_matching(runs: Sequence[SweepRun], pattern: dict[str, Any]) -> list[str]:
    """The variants whose config has the values of ``pattern`` (dotted keys); among several,
    the one whose own grid values are exactly ``pattern`` when there is one."""
    flat = flatten(pattern)
    found = list(dict.fromkeys(r.variant for r in runs if matches_cfg(r.cfg, flat)))
    exact = list(dict.fromkeys(r.variant for r in runs if r.variant in found and r.point == flat))
    return exact if len(found) > 1 and exact else found


def check_finding(sweep: Sweep, finding: Any, i: int) -> None:
    where = f"{sweep.path}: findings[{i}]"
    if not isinstance(finding, dict):
        raise FindingError(f"{where}: a mapping with keys {', '.join(FINDING_KEYS)}")
    stray = sorted(set(finding) - set(FINDING_KEYS))
    missing = [k for k in ("claim", "variant", "metric") if k not in finding]
    if stray or missing:
        raise FindingError(f"{where}: " + "; ".join(
            ([f"unknown key(s) {', '.join(stray)}"] if stray else []) + ([f"missing {', '.join(missing)}"] if missing else []))
            + f" (keys: {', '.join(FINDING_KEYS)})")
    if finding.get("expect", "lower") not in ("lower", "higher", "none"):
        raise FindingError(f"{where}: expect must be lower, higher or none, got {finding['expect']!r}")
    for key in ("variant", "against"):
        if key in finding:
            found = variant_matching(sweep.runs, finding[key])
            if len(found) != 1:
                raise FindingError(f"{where}: {key} {finding[key]} matches {len(found)} variants "
                                   f"({', '.join(found) or 'none'}); it must match exactly one")
    if "against" not in finding and sweep.baseline is None:
        raise FindingError(f"{where}: no 'against' and no baseline to compare with")


def matches_cfg(cfg: RunConfig, pattern: dict[str, Any]) -> bool:
    for key, value in pattern.items():
        node: Any = cfg
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else getattr(node, part, None)
        if node != value:
            return False
    return True
