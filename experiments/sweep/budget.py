"""Budgets that compare like with like: the ``budget:`` section of a sweep file.

::

    budget: {by: flops, value: 2.0e15}    # or by: steps | tokens

Every run of the sweep (tuning and confirmation runs alike) gets ``trainer.max_steps`` from the
budget instead of from its config:

- ``steps``: ``value`` steps.
- ``tokens``: ``value`` / the tokens of one optimizer step. Language modelling: ``data.batch_size``
  blocks of the block size (``data.block_size``, default ``model.max_seq_len``); translation:
  ``data.max_tokens`` target tokens, an upper bound (batches are filled up to it).
- ``flops``: ``value`` / the variant's own training FLOPs of one step
  (:class:`variants.flops.FlopCounter` on the variant's model, built on the meta device: no memory,
  no time) at the nominal batch: an LM step is the batch of blocks above (attention over the block);
  a translation step is ``data.max_tokens`` target and ``data.max_tokens`` source tokens in
  sentences of ``budget.seq_len`` tokens (default ``model.max_seq_len``, which counts attention at
  its most). The vocabulary is ``data.vocab_size``. What matters is the ratio between variants.

Tokens and FLOPs count the whole optimizer step: × ``trainer.devices`` × ``trainer.num_nodes`` ×
``trainer.accumulate_grad_batches``.

Validation and checkpoints keep their count: with the run's config validating
``k = max_steps // val_check_interval`` times and checkpointing ``c = max_steps // every_n_steps``
times (each at least 1), ``max_steps`` is rounded to the nearest multiple of ``lcm(k, c)``, and
``val_check_interval = max_steps / k``, ``checkpoint.every_n_steps = max_steps / c``: the last
step is validated and checkpointed. The cosine schedule decays over ``max_steps``, so every run's
schedule ends at its own last step.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence, TypeVar

from omegaconf import MISSING

from experiments.run.config import RunConfig, run_id
from lit.specs import task_spec

Run = TypeVar("Run")  # a SweepRun (spec.py imports this module, so it is not imported here)

BY = ("steps", "tokens", "flops")
# what the budget decides: a run may not set these itself
DECIDED = ("trainer.max_steps", "trainer.val_check_interval", "checkpoint.every_n_steps")


@dataclass
class BudgetSpec:
    """The ``budget:`` section of a sweep file."""

    by: str = MISSING  # steps | tokens | flops
    value: float = MISSING  # steps, tokens or FLOPs of one run's training
    seq_len: Optional[int] = None  # translation, flops: the nominal sentence length (default model.max_seq_len)


BUDGET_KEYS = tuple(f.name for f in dataclasses.fields(BudgetSpec))


class BudgetError(ValueError):
    """A budget that cannot be spent; the message names the file and the key."""


def from_mapping(raw: dict[str, Any]) -> BudgetSpec:
    return BudgetSpec(**{k: v for k, v in raw.items() if k in BUDGET_KEYS})


def check(budget: BudgetSpec, where: str, variant_keys: Sequence[str], tune_keys: Sequence[str],
          cli_overrides: Sequence[str]) -> None:
    """Refuse a budget that is not one, or a sweep that also sets what the budget decides."""
    if budget.by not in BY:
        given = "missing" if budget.by == "???" else f"{budget.by!r} is not a budget"
        raise BudgetError(f"{where}: budget.by: {given}; choices: {', '.join(BY)}")
    value = budget.value
    if value == "???":
        raise BudgetError(f"{where}: budget.value: missing; give the {budget.by} of one run's training")
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise BudgetError(f"{where}: budget.value: give a positive number of {budget.by}, got {value!r}")
    if budget.by == "steps" and value != int(value):
        raise BudgetError(f"{where}: budget.value: a whole number of steps, got {value!r}")
    if budget.seq_len is not None and (budget.by != "flops" or budget.seq_len <= 0):
        raise BudgetError(f"{where}: budget.seq_len: a positive nominal sentence length, for by: flops only, "
                          f"got {budget.seq_len!r} with by: {budget.by}")
    cli = [o.split("=", 1)[0].lstrip("+~") for o in cli_overrides]
    for keys, section in ((variant_keys, "grid (or include)"), (tune_keys, "tune.grid"), (cli, "the command line")):
        clash = sorted(set(keys) & set(DECIDED))
        if clash:
            raise BudgetError(f"{where}: budget: {', '.join(clash)} is set in {section}, but the budget "
                              f"(by: {budget.by}) decides it; drop one of the two")


def apply(budget: BudgetSpec, run: Run, where: str) -> Run:
    """``run`` with its budget's ``max_steps``, validation and checkpoint intervals (also as
    overrides, so that its command trains exactly this run), its new run id and its budget facts."""
    cfg = run.cfg
    try:
        tokens, flops = tokens_per_step(cfg, where), flops_per_step(cfg, budget.seq_len, where)
    except BudgetError:  # no device count: a step budget needs none (its facts then have no totals)
        if budget.by != "steps":
            raise
        tokens = flops = None
    except (ValueError, TypeError) as err:  # a model the counter cannot build: name the run and the budget
        if budget.by != "steps":
            raise BudgetError(f"{where}: budget.by: {budget.by}: the FLOPs of run {run.name} cannot be "
                              f"counted ({err})") from None
        tokens = flops = None
    per_step = {"steps": 1.0, "tokens": tokens, "flops": flops}[budget.by]
    steps, val_every, ckpt_every, k, c = schedule(cfg, budget.value / per_step, where, run.name)
    trainer = {**cfg.trainer, "max_steps": steps, "val_check_interval": val_every}
    cfg = dataclasses.replace(cfg, trainer=trainer,
                              checkpoint=dataclasses.replace(cfg.checkpoint, every_n_steps=ckpt_every))
    overrides = [*run.overrides, f"trainer.max_steps={steps}", f"trainer.val_check_interval={val_every}",
                 f"checkpoint.every_n_steps={ckpt_every}"]
    facts = {"by": budget.by, "value": budget.value, "max_steps": steps, "tokens_per_step": tokens,
             "flops_per_step": flops, "tokens": tokens and tokens * steps, "flops": flops and flops * steps,
             "validations": k, "checkpoints": c, "seq_len": nominal_len(cfg, budget.seq_len)}
    return dataclasses.replace(run, cfg=cfg, overrides=overrides, run_id=run_id(cfg), budget=facts)


def schedule(cfg: RunConfig, raw: float, where: str, name: str) -> tuple[int, int, int, int, int]:
    """(max_steps, val_check_interval, checkpoint.every_n_steps, k validations, c checkpoints) for
    ``raw`` steps: the config's counts kept, max_steps the nearest multiple of lcm(k, c)."""
    base, val_every = cfg.trainer.get("max_steps"), cfg.trainer.get("val_check_interval")
    ckpt_every = cfg.checkpoint.every_n_steps
    if not all(map(_count, (base, val_every, ckpt_every))):
        raise BudgetError(f"{where}: budget: run {name} needs trainer.max_steps, trainer.val_check_interval and "
                          f"checkpoint.every_n_steps as numbers of steps (got {base!r}, {val_every!r} and "
                          f"{ckpt_every!r}): they give the numbers of validations and checkpoints the budget keeps")
    k = max(1, base // val_every)
    c = max(1, base // ckpt_every)
    unit = math.lcm(k, c)
    if raw < unit:
        raise BudgetError(f"{where}: budget.value: gives run {name} {raw:.4g} steps, fewer than the {unit} it "
                          f"needs to validate {k} and checkpoint {c} times (as its config does); raise budget.value")
    steps = unit * max(1, round(raw / unit))
    warmup = cfg.task.warmup_steps
    if steps <= warmup:
        raise BudgetError(f"{where}: budget.value: gives run {name} {steps} steps, no more than its warm-up "
                          f"(task.warmup_steps={warmup}): its schedule would never decay; raise budget.value")
    return steps, steps // k, steps // c, k, c


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def replicas(cfg: RunConfig, where: str) -> int:
    """Batches per optimizer step: devices × nodes × gradient accumulation (each rank loads its own
    ``data.batch_size`` / ``data.max_tokens`` batch)."""
    devices = cfg.trainer.get("devices", 1)
    if isinstance(devices, str) and devices.strip().isdigit():
        devices = int(devices)
    elif isinstance(devices, str) and "," in devices:
        devices = len([d for d in devices.split(",") if d.strip()])
    elif isinstance(devices, (list, tuple)):
        devices = len(devices)
    if not _count(devices):
        raise BudgetError(f"{where}: budget: a token or FLOP budget needs trainer.devices as a count of devices, "
                          f"got {devices!r}")
    nodes = cfg.trainer.get("num_nodes") or 1
    accumulate = cfg.trainer.get("accumulate_grad_batches") or 1
    return int(devices) * int(nodes) * int(accumulate)


def nominal_len(cfg: RunConfig, seq_len: Optional[int]) -> int:
    """The sequence length a step's attention is counted at: the block of a task batched in blocks
    (language modelling, masked-LM), or a translation's nominal sentence length (``budget.seq_len``,
    default ``model.max_seq_len``)."""
    if task_spec(cfg.task.name).blocks:
        return cfg.data.lm_block_size(cfg.model.max_seq_len)
    return seq_len or cfg.model.max_seq_len


def tokens_per_step(cfg: RunConfig, where: str) -> int:
    """Tokens of one optimizer step: batch_size × block for a task batched in blocks; translation
    max_tokens (a bound)."""
    blocks = task_spec(cfg.task.name).blocks
    per_batch = cfg.data.batch_size * nominal_len(cfg, None) if blocks else cfg.data.max_tokens
    return per_batch * replicas(cfg, where)


def flops_per_step(cfg: RunConfig, seq_len: Optional[int], where: str) -> float:
    """Training FLOPs of one optimizer step of ``cfg``'s model at the nominal batch."""
    length, tokens = nominal_len(cfg, seq_len), tokens_per_step(cfg, where)
    model = dataclasses.replace(cfg.model, vocab_size=cfg.data.vocab_size)
    counter = _counter(json.dumps(dataclasses.asdict(model), sort_keys=True))
    if counter.source is None:  # one stack reads the tokens
        return counter(tokens=tokens, seq_len=length)
    return counter(tokens=tokens, seq_len=length, src_tokens=tokens, src_len=length)


@functools.lru_cache(maxsize=512)
def _counter(model_json: str):
    """A :class:`~variants.flops.FlopCounter` of the model, built on the meta device (shapes only)."""
    import torch

    from variants import ModelConfig, build_model
    from variants.flops import FlopCounter

    with torch.device("meta"):
        return FlopCounter(build_model(ModelConfig(**json.loads(model_json))))


def spend(raw: dict[str, Any], where: str, points: Sequence[dict[str, Any]], tune_grid: Optional[dict[str, Any]],
          cli_overrides: Sequence[str], *stages: list[Run]) -> list[list[Run]]:
    """The runs of each stage with the sweep's budget applied, after :func:`check` (the budget is
    checked before any run's steps are computed, and every run's before anything starts)."""
    budget = from_mapping(raw)
    variant_keys = sorted({key for point in points for key in point})
    check(budget, where, variant_keys, list(tune_grid or {}), cli_overrides)
    return [[apply(budget, run, where) for run in runs] for runs in stages]
