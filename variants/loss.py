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

Each chunk's softmax, loss and gradient run either eagerly (a pass over the fp32 block per
step: the fastest order on a CPU) or, by default on CUDA, through one compiled region that
reads the logits in the matmul dtype and writes the gradient in it (``fused``).

Shapes: N rows (tokens), D features, V vocabulary.
"""

from __future__ import annotations

import os
import warnings
from typing import Optional

import torch

# logits elements per chunk: on a CPU 8 MiB of fp32 logits per thread, for up to _CPU_BLOCKS
# threads (the head's product splits its rows between them; at vocabulary 8192 that is 256 rows a
# thread, faster than 256 rows in all at 2 threads and than 512 at 1 thread on a 2-core EPYC),
# at most 16 MiB, below glibc's largest mmap threshold (32 MiB), so reused from the heap instead
# of page-faulting afresh; 128 MiB on an accelerator, where fewer and larger kernels are faster
_CHUNK_ELEMENTS = {"cpu": 1 << 21, "cuda": 1 << 25}
_CPU_BLOCKS = 2

# On a CPU the eager chunks write their fp32 logits and log-probabilities into two buffers kept
# between calls (at most _CPU_BLOCKS chunk budgets each): blocks this large are allocated from
# fresh pages each time, and their first touch page-faults (about 18,000 faults per step at
# vocabulary 8192 and 2,048 tokens on 2 threads). CUDA's caching allocator reuses its blocks already.
_workspace: dict[int, torch.Tensor] = {}


def _block(slot: int, rows: int, columns: int) -> torch.Tensor:
    """A (rows, columns) fp32 CPU block of workspace buffer ``slot`` (0: logits, 1: log-probabilities),
    whose contents the next chunk overwrites."""
    need = rows * columns
    buffer = _workspace.get(slot)
    if buffer is None or buffer.numel() < need:
        with torch.inference_mode(False):  # a normal tensor even when made under inference mode (validation)
            buffer = _workspace[slot] = torch.empty(need, dtype=torch.float32)
    return buffer[:need].view(rows, columns)


def _uses_workspace(device: torch.device, dtype: torch.dtype, rows: int, columns: int, fused: bool) -> bool:
    """Whether chunks of ``rows`` x ``columns`` logits go through the buffers: eager fp32 chunks on a
    CPU no larger than the CPU's chunk budget (a larger ``chunk_rows`` allocates as before)."""
    return (not fused and device.type == "cpu" and dtype == torch.float32
            and rows * columns <= _CHUNK_ELEMENTS["cpu"] * _CPU_BLOCKS)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    kind = x.device.type
    if torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return x.dtype


def _eager_terms(logits, safe, keep, smoothing: float, wants_grad: bool, softcap: Optional[float] = None,
                 z_loss: float = 0.0, out: Optional[torch.Tensor] = None):
    """One chunk's share: ``(nll, objective, z, gradient wrt the logits or None)`` from its
    logits (n, V) in the matmul dtype, its gather index ``safe`` (n, 1) and ``keep`` (n, 1: 1 for
    a counted row, 0 for an ignored one). ``z`` is the summed ``logsumexp(logits) ** 2`` (0 when
    ``z_loss`` is 0); the objective adds ``z_loss * z``. With ``softcap`` the logits are first
    ``softcap * tanh(logits / softcap)``. Eager, in place where it can be: each step a pass over
    the (n, V) block, the fastest order on a CPU. ``out``: an fp32 (n, V) block to write the
    log-probabilities (and then the gradient) into."""
    dtype = logits.dtype
    capped = None
    if softcap is not None:
        capped = torch.tanh(logits.float() / softcap)  # (n, V), kept for the gradient
        logits = capped * softcap
    logits = logits.float()
    logp = torch.log_softmax(logits, dim=-1) if out is None else torch._log_softmax(logits, 1, False, out=out)
    nll, objective = _sums(logp, safe, keep, smoothing)
    z, lse = _z_terms(logits, keep, z_loss)
    del logits
    if z_loss:
        objective = objective + z_loss * z
    if not wants_grad:
        return nll, objective, z, None
    # d objective / d logits = softmax (1 + 2 z_loss lse) - (1 - eps) one_hot(target) - eps / V
    grad = logp.exp_()
    if z_loss:
        grad.mul_(1 + 2 * z_loss * lse)
    if smoothing > 0:
        grad.sub_(smoothing / grad.size(1))
    grad.scatter_add_(1, safe, torch.full_like(keep, -(1 - smoothing)))
    if capped is not None:  # through the cap: d(c tanh(x / c)) / dx = 1 - tanh(x / c) ** 2
        grad.mul_(1 - capped.square_())
    return nll, objective, z, grad.to(dtype)


def _z_terms(logits, keep, z_loss: float):
    """``(z, lse)``: the summed squared log-partition of the counted rows and each row's
    log-partition (n, 1); zero and None when ``z_loss`` is 0."""
    if not z_loss:
        return torch.zeros((), dtype=torch.float32, device=logits.device), None
    lse = torch.logsumexp(logits, dim=-1, keepdim=True)
    return (lse.square() * keep).sum(), lse


def _sums(logp, safe, keep, smoothing: float):
    """``(nll, objective)`` of one chunk from its log-probabilities (n, V), fp32."""
    picked = -logp.gather(1, safe) * keep  # (n, 1) NLL of the targets
    nll = picked.sum()
    if smoothing == 0:
        return nll, nll
    uniform = -logp.mean(dim=-1, keepdim=True) * keep
    return nll, ((1 - smoothing) * picked + smoothing * uniform).sum()


def _plain_terms(logits, safe, keep, smoothing: float, wants_grad: bool, softcap: Optional[float] = None,
                 z_loss: float = 0.0):
    """:func:`_eager_terms` written for the compiler (no in-place steps, the one-hot as a
    comparison), which turns it into a few kernels that read the logits in their matmul dtype
    and write the gradient in it, instead of a pass over fp32 (n, V) blocks per step."""
    raw = logits
    capped = None
    if softcap is not None:
        capped = torch.tanh(logits.float() / softcap)
        logits = capped * softcap
    logp = torch.log_softmax(logits.float(), dim=-1)
    nll, objective = _sums(logp, safe, keep, smoothing)
    z, lse = _z_terms(logits.float(), keep, z_loss)
    if z_loss:
        objective = objective + z_loss * z
    if not wants_grad:
        return nll, objective, z, None
    columns = torch.arange(raw.size(1), device=raw.device)
    target = (columns == safe).float()
    softmax = torch.exp(logp)
    if z_loss:
        softmax = softmax * (1 + 2 * z_loss * lse)
    grad = softmax - (1 - smoothing) * target - smoothing / raw.size(1)
    if capped is not None:
        grad = grad * (1 - capped * capped)
    return nll, objective, z, grad.to(raw.dtype)


_compiled_terms = None  # the compiled :func:`_plain_terms`, made on first use


def _fused_terms():
    global _compiled_terms
    if _compiled_terms is None:
        _compiled_terms = torch.compile(_plain_terms, dynamic=None)
    return _rows_dynamic


def _rows_dynamic(logits, safe, keep, smoothing: float, wants_grad: bool, softcap: Optional[float] = None,
                  z_loss: float = 0.0):
    # the row count varies (the last chunk, translation batches): one kernel for every count,
    # not a compilation per count; the index copied out of its slice, so that no guard
    # specialises on where the slice starts
    safe = safe.clone()
    for x in (logits, safe, keep):
        torch._dynamo.maybe_mark_dynamic(x, 0)
    return _compiled_terms(logits, safe, keep, smoothing, wants_grad, softcap, z_loss)


def use_fused(device: torch.device) -> bool:
    """Whether the chunk work goes through the compiled region (:func:`_plain_terms`) by
    default: on CUDA devices where Triton is available. ``ABLATE_FUSED_LOSS=1`` or ``0``
    forces it on (any device) or off."""
    forced = os.environ.get("ABLATE_FUSED_LOSS", "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    if forced:
        raise ValueError(f"ABLATE_FUSED_LOSS={forced!r}: expected 0 or 1")
    if device.type != "cuda":
        return False
    from torch.utils._triton import has_triton

    return has_triton()


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, ignore_index: int, smoothing: float, chunk: int, fused: bool,
                softcap: Optional[float], z_loss: float, bias: Optional[torch.Tensor]):
        N = hidden.size(0)
        wants_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1] or ctx.needs_input_grad[9]
        dtype = _compute_dtype(hidden)
        with torch.autocast(hidden.device.type, enabled=False):
            h, w = hidden.to(dtype), weight.to(dtype)
            b = None if bias is None else bias.to(dtype)
            valid = targets != ignore_index
            safe = targets.masked_fill(~valid, 0).unsqueeze(1)  # (N, 1) gather index
            objective = torch.zeros((), dtype=torch.float32, device=hidden.device)
            nll = torch.zeros((), dtype=torch.float32, device=hidden.device)
            z = torch.zeros((), dtype=torch.float32, device=hidden.device)
            grad_h = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
            wants_w = ctx.needs_input_grad[1] and wants_grad
            grad_w = None  # fp32; the first chunk's product starts it (no zeroed (V, D) pass)
            grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) \
                if bias is not None and ctx.needs_input_grad[9] else None
            terms = _fused_terms() if fused else _eager_terms
            V = w.size(0)
            workspace = _uses_workspace(h.device, dtype, min(chunk, N), V, fused)
            for start in range(0, N, chunk):
                rows = slice(start, start + chunk)
                keep = valid[rows].unsqueeze(1).float()  # (n, 1)
                n = min(chunk, N - start)
                product = _block(0, n, V) if workspace else None
                logp = {"out": _block(1, n, V)} if workspace and softcap is None else {}  # capped: a new tensor
                logits = torch.mm(h[rows], w.t(), out=product) if b is None else torch.addmm(b, h[rows], w.t(),
                                                                                              out=product)
                part_nll, part_objective, part_z, grad = terms(logits, safe[rows], keep, smoothing, wants_grad,
                                                               softcap, z_loss, **logp)
                nll += part_nll
                z += part_z
                objective += part_objective
                if grad is None:
                    continue
                # ignored rows get no gradient: zeroed through the (n, D) factors of both
                # products below rather than through the (n, V) ``grad`` (V / D times less traffic)
                if grad_h is not None:
                    grad_h[rows] = (torch.mm(grad, w) * keep).to(grad_h.dtype)
                if grad_b is not None:  # the counted rows' logit gradients, summed
                    grad_b += torch.mm(keep.t().to(grad.dtype), grad).squeeze(0).float()
                if wants_w:
                    kept = h[rows] * keep.to(dtype)
                    if grad_w is None:
                        grad_w = torch.mm(grad.t(), kept).float()
                    elif dtype == torch.float32:
                        grad_w.addmm_(grad.t(), kept)
                    else:
                        grad_w.add_(torch.mm(grad.t(), kept))
            if wants_w and grad_w is None:  # no rows at all
                grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        ctx.mark_non_differentiable(nll, z)
        ctx.save_for_backward(grad_h, grad_w.to(weight.dtype) if grad_w is not None else None,
                              grad_b.to(bias.dtype) if grad_b is not None else None)
        return objective, nll, z

    @staticmethod
    def backward(ctx, grad_objective, _grad_nll, _grad_z):
        grad_h, grad_w, grad_b = ctx.saved_tensors
        scale = grad_objective
        return (None if grad_h is None else grad_h * scale.to(grad_h.dtype),
                None if grad_w is None else grad_w * scale.to(grad_w.dtype),
                None, None, None, None, None, None, None,
                None if grad_b is None else grad_b * scale.to(grad_b.dtype))


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         ignore_index: int = -100, label_smoothing: float = 0.0,
                         chunk_rows: Optional[int] = None,
                         fused: Optional[bool] = None, softcap: Optional[float] = None,
                         z_loss: float = 0.0, with_z: bool = False, bias: Optional[torch.Tensor] = None):
    """``(objective, nll)``: summed over the targets that are not ``ignore_index``.

    ``hidden`` (..., D) are the states before the output head ``weight`` (V, D) and its optional
    ``bias`` (V,: BERT's prediction head), and ``targets`` (...) the token ids. ``nll`` is the
    summed negative log-likelihood (no gradient); ``objective`` is the same sum with
    ``label_smoothing`` applied (PyTorch's
    definition: ``(1 - eps) * nll + eps * mean over the vocabulary of -log p``) and carries
    the gradient. Softmax and sums run in fp32 whatever the matmul precision (autocast is
    followed for the matmuls).

    ``softcap``: the logits are ``softcap * tanh(logits / softcap)`` (final-logit soft-capping,
    Gemma 2), in the NLL too. ``z_loss``: the objective adds ``z_loss * logsumexp(logits) ** 2``
    per counted target (the auxiliary loss of PaLM, Chowdhery et al. 2022, and OLMo 2), which
    keeps the softmax normaliser near 1; the NLL never includes it. ``with_z``: return
    ``(objective, nll, z)``, ``z`` the summed ``logsumexp ** 2`` without gradient.

    ``fused``: each chunk's softmax, loss and gradient through one compiled region (a few
    kernels that read the logits in the matmul dtype) instead of eager passes over fp32
    blocks. Default (None): :func:`use_fused`, i.e. on CUDA with Triton; should its compilation
    fail there, a warning says so and the eager path takes over for the rest of the process.
    """
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    if softcap is not None and not softcap > 0:
        raise ValueError(f"softcap must be positive, got {softcap}")
    if not z_loss >= 0:
        raise ValueError(f"z_loss must be non-negative, got {z_loss}")
    h = hidden.reshape(-1, hidden.size(-1))
    t = targets.reshape(-1)
    if t.numel() != h.size(0):
        raise ValueError(f"{h.size(0)} hidden rows but {t.numel()} targets")
    softcap = None if softcap is None else float(softcap)
    if torch.compiler.is_compiling():
        # under torch.compile the plain formula is traced instead: the compiler fuses the
        # softmax, the gather and their backward into few kernels (the chunk loop above would
        # break the graph)
        sums = _plain_cross_entropy(h, weight, t, ignore_index, label_smoothing, softcap, float(z_loss), bias)
        return sums if with_z else sums[:2]
    if chunk_rows is None:
        budget = _CHUNK_ELEMENTS.get(h.device.type, _CHUNK_ELEMENTS["cuda"])
        if h.device.type == "cpu":  # a block per thread: the head's product is split by rows between them
            budget *= min(torch.get_num_threads(), _CPU_BLOCKS)
        chunk_rows = max(1, budget // weight.size(0))
    args = (h, weight, t, ignore_index, float(label_smoothing), int(chunk_rows))
    chosen = fused is not None or os.environ.get("ABLATE_FUSED_LOSS", "").strip() != ""
    if fused is None:
        fused = use_fused(h.device) and not _fallen_back
    try:
        sums = _LinearCrossEntropy.apply(*args, fused, softcap, float(z_loss), bias)
    except torch._dynamo.exc.BackendCompilerFailed as err:
        if chosen or not fused:
            raise
        _fall_back(err)
        sums = _LinearCrossEntropy.apply(*args, False, softcap, float(z_loss), bias)
    return sums if with_z else sums[:2]


_fallen_back = False


def _fall_back(err: Exception) -> None:
    global _fallen_back
    _fallen_back = True
    cause = getattr(err, "inner_exception", None) or err
    text = str(cause).strip()
    first = f"{type(cause).__name__}: {text.splitlines()[0]}" if text else type(cause).__name__
    warnings.warn(f"the fused cross-entropy could not be compiled ({first}); the eager chunked loss is used "
                  f"instead (ABLATE_FUSED_LOSS=0 chooses it from the start)", RuntimeWarning, stacklevel=3)


def _plain_cross_entropy(h, weight, t, ignore_index: int, smoothing: float, softcap: Optional[float] = None,
                         z_loss: float = 0.0, bias: Optional[torch.Tensor] = None):
    logits = torch.nn.functional.linear(h, weight, bias).float()
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    objective = torch.nn.functional.cross_entropy(logits, t, ignore_index=ignore_index, reduction="sum",
                                                  label_smoothing=smoothing)
    if smoothing == 0:
        nll = objective.detach()
    else:
        nll = torch.nn.functional.cross_entropy(logits.detach(), t, ignore_index=ignore_index, reduction="sum")
    z = torch.zeros((), dtype=torch.float32, device=logits.device)
    if z_loss:
        lse = torch.logsumexp(logits, dim=-1)
        z_rows = lse.square() * (t != ignore_index)
        z = z_rows.detach().sum()
        objective = objective + z_loss * z_rows.sum()
    return objective, nll, z
