"""Language-model perplexity at evaluation lengths beyond the training context.

Two protocols, at ``factor x`` the training context ``T`` (Press et al. 2022, arXiv:2108.12409):

- non-overlapping: the token stream cut into blocks of ``factor * T``; each token is predicted
  once, with the context since its block began (on average half the block);
- sliding window: windows of ``factor * T`` tokens moved by ``stride`` (default ``T``); each
  window scores only the tokens no earlier window scored, so every token after the first window
  is predicted with at least ``factor * T - stride`` tokens of context (fairseq's
  ``--context-window``). At ``factor`` 1 with stride ``T`` both protocols coincide.

Lengths a position scheme cannot encode (learned positions beyond ``max_seq_len``) give ``None``.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F


def _windows(n_targets: int, length: int, stride: int) -> list[tuple[int, int, int]]:
    """(start, end, first scored target) of each window over targets ``0..n_targets-1``."""
    out, scored_until, start = [], 0, 0
    while scored_until < n_targets:
        end = min(start + length, n_targets)
        out.append((start, end, scored_until))
        scored_until = end
        start += stride
    return out


@torch.no_grad()
def stream_nll(model, stream: torch.Tensor, length: int, stride: int, pad_id: int,
               batch_size: int = 8) -> tuple[float, int]:
    """Summed NLL and number of scored tokens of ``stream`` (1-D token ids) under the protocol."""
    device = next(model.parameters()).device
    inputs, targets = stream[:-1], stream[1:]
    total, count = 0.0, 0
    windows = _windows(len(targets), length, stride)
    for i in range(0, len(windows), batch_size):
        chunk = windows[i:i + batch_size]
        x = torch.full((len(chunk), length), pad_id, dtype=torch.long)
        y = torch.full((len(chunk), length), -100, dtype=torch.long)
        for row, (start, end, first) in enumerate(chunk):
            x[row, : end - start] = inputs[start:end]
            y[row, first - start: end - start] = targets[first:end]  # only tokens not yet scored
        logits = model(x.to(device)).float()
        total += F.cross_entropy(logits.flatten(0, 1), y.to(device).flatten(), ignore_index=-100,
                                 reduction="sum").item()
        count += int((y != -100).sum())
    return total, count


def extrapolation(model, stream: torch.Tensor, train_len: int, factors: Sequence[int], pad_id: int,
                  stride: Optional[int] = None) -> dict[str, Optional[float]]:
    """``{"ppl_x2": ..., "ppl_x2_sliding": ...}`` for each factor; ``None`` where the model's
    position scheme cannot encode the length."""
    stride = stride or train_len
    was_training = model.training
    model.eval()
    results: dict[str, Optional[float]] = {}
    for factor in factors:
        length = factor * train_len
        try:
            model.decoder.position.check_length(length)
        except ValueError:
            results[f"ppl_x{factor}"] = results[f"ppl_x{factor}_sliding"] = None
            continue
        for name, step in ((f"ppl_x{factor}", length), (f"ppl_x{factor}_sliding", stride)):
            nll, n = stream_nll(model, stream, length, min(step, length), pad_id)
            results[name] = math.exp(min(nll / n, 700.0))
    model.train(was_training)
    return results
