"""The ``findings:`` of a sweep file: published claims the report tests, each naming the
variant (and the one it is compared ``against``) by the config values that pick it out, what
is expected of ``variant - against``, and what the runs must satisfy for the test to mean
anything here::

    - claim: "GELU is no better than ReLU"
      variant: {model.ffn: gelu}
      metric: test/ppl
      expect: not_lower        # lower | higher | none | equivalent | not_lower | not_higher
      margin: 1%               # equivalent (required), not_lower/not_higher: relative or in the metric's units
      requires: [converged]    # converged | tuned: otherwise the row is "not tested here"

``none`` (no difference) is tested two-sided, which can reject it but never show it; to show
that two variants are level, declare how close counts as level: ``equivalent`` with a margin.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

from omegaconf import MISSING

from experiments.run.config import RunConfig


class FindingError(ValueError):
    """A finding that names no single variant, or has unknown keys; the message names it."""


@dataclass
class FindingSpec:
    """A published claim the report tests: ``variant`` against ``against`` (default the
    baseline) on ``metric``, expected as :data:`EXPECTS` says, with a ``margin`` for the kinds
    that take one and the preconditions (:data:`REQUIRES`) the runs must meet."""

    claim: str = MISSING
    variant: Dict[str, Any] = MISSING
    metric: str = MISSING
    against: Optional[Dict[str, Any]] = None
    expect: str = "lower"
    margin: Any = None  # "1%" (of the against arm's mean) or a number in the metric's units
    requires: List[str] = dataclasses.field(default_factory=list)


FINDING_KEYS = tuple(f.name for f in dataclasses.fields(FindingSpec))
EXPECTS = {"lower": "variant − against < 0 (two-sided test)",
           "higher": "variant − against > 0 (two-sided test)",
           "none": "no difference (two-sided test: it can be rejected, never shown)",
           "equivalent": "|variant − against| < margin (TOST)",
           "not_lower": "variant − against > −margin (one-sided)",
           "not_higher": "variant − against < margin (one-sided)"}
WITH_MARGIN = ("equivalent", "not_lower", "not_higher")
REQUIRES = {"converged": "both arms converged on the metric's validation counterpart",
            "tuned": "both arms trained at a recorded tuning choice (a tune: section and tuning.json)"}


def parse_margin(margin: Any) -> tuple[float, bool]:
    """``margin`` as (amount, relative): "1%" is (0.01, True), 0.5 is (0.5, False). Raises
    ValueError for anything else, or a negative amount."""
    text = margin.strip() if isinstance(margin, str) else ""
    if text.endswith("%") and text[:-1].strip().replace(".", "", 1).isdigit():
        amount, relative = float(text[:-1]) / 100, True
    elif isinstance(margin, (int, float)) and not isinstance(margin, bool):
        amount, relative = float(margin), False
    else:
        raise ValueError(f"a margin is a percentage like \"1%\" or a number in the metric's units, got {margin!r}")
    if not (math.isfinite(amount) and amount >= 0):
        raise ValueError(f"a margin is a finite number, 0 or more, got {margin!r}")
    return amount, relative


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
    _check_test(finding, where)
    for key in ("variant", "against"):
        if key in finding:
            found = variant_matching(sweep.runs, finding[key])
            if len(found) != 1:
                raise FindingError(f"{where}: {key} {finding[key]} matches {len(found)} variants "
                                   f"({', '.join(found) or 'none'}); it must match exactly one")
    if "against" not in finding and sweep.baseline is None:
        raise FindingError(f"{where}: no 'against' and no baseline to compare with")


def _check_test(finding: dict[str, Any], where: str) -> None:
    """``expect``, ``margin`` and ``requires`` of one finding: a kind the report can test, a
    margin where (and only where) the kind takes one, and preconditions it knows."""
    expect = finding.get("expect", "lower")
    if expect not in EXPECTS:
        raise FindingError(f"{where}: expect must be lower, higher or none, or with a margin equivalent, not_lower "
                           f"or not_higher, got {expect!r}")
    if expect == "equivalent" and finding.get("margin") is None:
        raise FindingError(f"{where}: margin: expect: equivalent needs one (how close counts as level), e.g. "
                           f"margin: 1% (of the against arm's mean) or margin: 0.5 (in {finding.get('metric')}'s units)")
    if finding.get("margin") is not None:
        if expect not in WITH_MARGIN:
            raise FindingError(f"{where}: margin: only expect {', '.join(WITH_MARGIN)} take a margin, "
                               f"this finding expects {expect}")
        try:
            amount, _ = parse_margin(finding["margin"])
        except ValueError as err:
            raise FindingError(f"{where}: margin: {err}") from None
        if expect == "equivalent" and amount == 0:
            raise FindingError(f"{where}: margin: equivalence within a margin of 0 can never be shown")
    requires = finding.get("requires", [])
    if not isinstance(requires, list) or not all(isinstance(r, str) for r in requires):
        raise FindingError(f"{where}: requires: a list of names ({', '.join(REQUIRES)}), got {requires!r}")
    unknown = [r for r in requires if r not in REQUIRES]
    if unknown:
        raise FindingError(f"{where}: requires: unknown precondition(s) {', '.join(unknown)}; "
                           f"known: {', '.join(REQUIRES)}")


def matches_cfg(cfg: RunConfig, pattern: dict[str, Any]) -> bool:
    for key, value in pattern.items():
        node: Any = cfg
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else getattr(node, part, None)
        if node != value:
            return False
    return True
