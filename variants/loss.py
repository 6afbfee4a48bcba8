"""Output head and token-level cross-entropy in one pass, without the full logits tensor.

``linear_cross_entropy(hidden, weight, targets)`` equals
``F.cross_entropy(F.linear(hidden, weight).float(), targets, reduction="sum")`` (with
``ignore_index`` and ``label_smoothing`` as there), but works through the rows in chunks: each
chunk's logits are computed, turned into the loss and, when gradients are wanted, straight
into the gradient of the loss with respect to them (``softmax - target distribution``), which
is multiplied back through the head at once. The (tokens x vocabulary) logits, their softmax
and their gradient are never held whole: at vocabulary 8192 and 2048 tokens that is three
64 MiB tensors per step, allocated afresh each step (large allocations page-fault on every
first touch). The backward pass only scales the gradients kept from the forward pass.

Shapes: N rows (tokens), D features, V vocabulary.
"""

from __future__ import annotations

from typing import Optional

import torch

# logits elements per chunk: 8 MiB of fp32 logits on a CPU (below glibc's largest mmap
# threshold, so reused from the heap instead of page-faulting afresh), 128 MiB on an
# accelerator, where fewer and larger kernels are faster
_CHUNK_ELEMENTS = {"cpu": 1 << 21, "cuda": 1 << 25}


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    kind = x.device.type
    if torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return x.dtype


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, ignore_index: int, smoothing: float, chunk: int):
        N, V = hidden.size(0), weight.size(0)
        wants_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        dtype = _compute_dtype(hidden)
        with torch.autocast(hidden.device.type, enabled=False):
            h, w = hidden.to(dtype), weight.to(dtype)
            valid = targets != ignore_index
            safe = targets.masked_fill(~valid, 0).unsqueeze(1)  # (N, 1) gather index
            objective = torch.zeros((), dtype=torch.float32, device=hidden.device)
            nll = torch.zeros((), dtype=torch.float32, device=hidden.device)
            grad_h = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
            grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) \
                if ctx.needs_input_grad[1] else None
            for start in range(0, N, chunk):
                rows = slice(start, start + chunk)
                logits = torch.mm(h[rows], w.t()).float()  # (n, V)
                keep = valid[rows].unsqueeze(1).float()  # (n, 1)
                logp = torch.log_softmax(logits, dim=-1)
                del logits
                picked = -logp.gather(1, safe[rows]) * keep  # (n, 1) NLL of the targets
                nll += picked.sum()
                if smoothing > 0:
                    uniform = -logp.mean(dim=-1, keepdim=True) * keep
                    objective += ((1 - smoothing) * picked + smoothing * uniform).sum()
                if not wants_grad:
                    continue
                # d objective / d logits = softmax - (1 - eps) one_hot(target) - eps / V, per kept row
                grad = logp.exp_()
                if smoothing > 0:
                    grad.sub_(smoothing / V)
                grad.scatter_add_(1, safe[rows], torch.full_like(picked, -(1 - smoothing)))
                # ignored rows get no gradient: zeroed through the (n, D) factors of both
                # products below rather than through the (n, V) ``grad`` (V / D times less traffic)
                grad = grad.to(dtype)
                if grad_h is not None:
                    grad_h[rows] = (torch.mm(grad, w) * keep).to(grad_h.dtype)
                if grad_w is not None:
                    kept = h[rows] * keep.to(dtype)
                    if dtype == torch.float32:
                        grad_w.addmm_(grad.t(), kept)
                    else:
                        grad_w.add_(torch.mm(grad.t(), kept))
            if smoothing == 0:
                objective = nll.clone()
        ctx.mark_non_differentiable(nll)
        ctx.save_for_backward(grad_h, grad_w.to(weight.dtype) if grad_w is not None else None)
        return objective, nll

    @staticmethod
    def backward(ctx, grad_objective, _grad_nll):
        grad_h, grad_w = ctx.saved_tensors
        scale = grad_objective
        return (None if grad_h is None else grad_h * scale.to(grad_h.dtype),
                None if grad_w is None else grad_w * scale.to(grad_w.dtype),
                None, None, None, None)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         ignore_index: int = -100, label_smoothing: float = 0.0,
                         chunk_rows: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(objective, nll)``: summed over the targets that are not ``ignore_index``.

    ``hidden`` (..., D) are the states before the output head ``weight`` (V, D, no bias) and
    ``targets`` (...) the token ids. ``nll`` is the summed negative log-likelihood (no
    gradient); ``objective`` is the same sum with ``label_smoothing`` applied (PyTorch's
    definition: ``(1 - eps) * nll + eps * mean over the vocabulary of -log p``) and carries
    the gradient. Softmax and sums run in fp32 whatever the matmul precision (autocast is
    followed for the matmuls).
    """
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    h = hidden.reshape(-1, hidden.size(-1))
    t = targets.reshape(-1)
    if t.numel() != h.size(0):
        raise ValueError(f"{h.size(0)} hidden rows but {t.numel()} targets")
    if torch.compiler.is_compiling():
        # under torch.compile the plain formula is traced instead: the compiler fuses the
        # softmax, the gather and their backward into few kernels (the chunk loop above would
        # break the graph)
        return _plain_cross_entropy(h, weight, t, ignore_index, label_smoothing)
    if chunk_rows is None:
        budget = _CHUNK_ELEMENTS.get(h.device.type, _CHUNK_ELEMENTS["cuda"])
        chunk_rows = max(1, budget // weight.size(0))
    return _LinearCrossEntropy.apply(h, weight, t, ignore_index, float(label_smoothing), int(chunk_rows))


def _plain_cross_entropy(h, weight, t, ignore_index: int, smoothing: float):
    logits = torch.nn.functional.linear(h, weight).float()
    objective = torch.nn.functional.cross_entropy(logits, t, ignore_index=ignore_index, reduction="sum",
                                                  label_smoothing=smoothing)
    if smoothing == 0:
        return objective, objective.detach()
    nll = torch.nn.functional.cross_entropy(logits.detach(), t, ignore_index=ignore_index, reduction="sum")
    return objective, nll
