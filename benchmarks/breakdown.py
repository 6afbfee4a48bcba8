"""Where a training step's time goes: a per-sublayer breakdown of our models.

Every sublayer call of one real forward pass is recorded (module, inputs) by forward hooks,
then replayed alone, forward and backward, and timed (median of a few repeats; the backward
takes a fixed random output gradient, and inputs that required gradients in the real pass
require them here too). The sums per kind (embedding lookups, self- and cross-attention
including their projections, feed-forward, norms, output head with the loss, optimizer step)
are set against the median full step; ``other`` is the rest: residual additions, dropout,
masks and position tables built once per pass, autograd bookkeeping.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any, Optional

import torch
from torch import nn

from benchmarks.measure import synchronize

KINDS = ("embedding", "attention", "cross-attention", "ffn", "norms", "head + loss", "optimizer")


def kind_of(module: nn.Module) -> Optional[str]:
    slot = getattr(module, "slot", None)
    if slot == "attention":
        return "cross-attention" if module.cross else "attention"
    if slot == "ffn":
        return "ffn"
    if slot == "norm":
        return "norms"
    if isinstance(module, nn.Embedding):
        return "embedding"
    return None


def _detached(value) -> tuple[Any, list[torch.Tensor]]:
    """A recorded input cut from the graph (tensors, tuples and dataclasses such as the attention
    inputs, field by field), and the leaf tensors in it that need a gradient: replaying the
    sub-layer computes those, as its backward does inside the full step."""
    if isinstance(value, torch.Tensor):
        leaf = value.detach().requires_grad_(value.requires_grad)
        return leaf, [leaf] if value.requires_grad else []
    if isinstance(value, tuple):
        parts = [_detached(v) for v in value]
        return tuple(v for v, _ in parts), [leaf for _, leaves in parts for leaf in leaves]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        parts = {f.name: _detached(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return (dataclasses.replace(value, **{k: v for k, (v, _) in parts.items()}),
                [leaf for _, leaves in parts.values() for leaf in leaves])
    return value, []


def _timed(fn, device, repeats: int) -> float:
    times = []
    for _ in range(repeats + 1):  # the first call is not timed
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def sublayer_breakdown(model: nn.Module, inputs: tuple, loss_fn, unit, optimizer: torch.optim.Optimizer,
                       device: torch.device, repeats: int = 3) -> dict[str, float]:
    """Seconds per training step by kind (see the module docstring), plus ``step`` and ``other``.

    ``loss_fn(hidden)`` is the training objective from the final states (head + loss);
    ``unit`` one full training step with ``optimizer``."""
    calls = []

    def record(module, args, kwargs, output):
        kind = kind_of(module)
        if kind is not None:
            (args, kwargs), leaves = _detached((args, kwargs))
            calls.append((kind, module, args, kwargs, leaves, output.shape, output.dtype))

    hidden = {}

    def keep_hidden(module, args, output):
        hidden["h"] = output.detach()

    handles = [m.register_forward_hook(record, with_kwargs=True) for m in model.modules() if kind_of(m)]
    handles.append(model.decoder.register_forward_hook(keep_hidden))
    try:
        model.hidden(*inputs, padded=False)
    finally:
        for h in handles:
            h.remove()

    spent = {kind: 0.0 for kind in KINDS}
    for kind, module, args, kwargs, leaves, shape, dtype in calls:
        grad = torch.randn(shape, dtype=dtype, device=device)

        def replay(module=module, args=args, kwargs=kwargs, leaves=leaves, grad=grad):
            module(*args, **kwargs).backward(grad)
            for leaf in leaves:
                leaf.grad = None

        spent[kind] += _timed(replay, device, repeats)

    h = hidden["h"]

    def head():
        x = h.requires_grad_(True)
        loss_fn(x).backward()
        x.grad = None

    spent["head + loss"] = _timed(head, device, repeats)
    model.zero_grad(set_to_none=True)
    loss_fn(model.hidden(*inputs, padded=False)).backward()  # gradients for the optimizer to apply
    spent["optimizer"] = _timed(optimizer.step, device, repeats)
    optimizer.zero_grad(set_to_none=True)
    step = _timed(unit, device, repeats)
    return {**spent, "step": step, "other": step - sum(spent.values())}
