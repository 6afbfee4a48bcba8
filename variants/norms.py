"""Normalisation layers (slot ``norm``) and their placement (slot ``norm_position``).

References:
- LayerNorm: Ba, Kiros, Hinton 2016, "Layer Normalization", arXiv:1607.06450.
- RMSNorm: Zhang & Sennrich 2019, "Root Mean Square Layer Normalization", arXiv:1910.07467.
- Post-LN (the original Transformer) vs Pre-LN: Xiong et al. 2020, "On Layer Normalization in
  the Transformer Architecture", arXiv:2002.04745.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from variants.registry import NORM_POSITIONS, NORMS, Option


@NORMS.register("layernorm")
class LayerNorm(nn.LayerNorm):
    """Centre and scale over the feature dimension; learned gain (and bias if ``cfg.bias``)."""

    def __init__(self, cfg) -> None:
        super().__init__(cfg.d_model, eps=cfg.norm_eps, bias=cfg.bias)


@NORMS.register("rmsnorm")
class RMSNorm(nn.Module):
    """Scale by the root mean square only: no centring, no bias. Computed in fp32."""

    def __init__(self, cfg) -> None:
        super().__init__()
        self.eps = cfg.norm_eps
        self.weight = nn.Parameter(torch.ones(cfg.d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            if x.device.type == "cpu" and torch.is_grad_enabled() and not torch.compiler.is_compiling():
                return _RMSNormCPU.apply(x, self.weight, self.eps)
            return F.rms_norm(x, (x.size(-1),), self.weight, self.eps)  # the gain in the same kernel
        normed = F.rms_norm(x.float(), (x.size(-1),), eps=self.eps)
        return normed.to(x.dtype) * self.weight

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, eps={self.eps}"


class _RMSNormCPU(torch.autograd.Function):
    """fp32 RMSNorm with gradients on a CPU: the fused forward kernel (which also returns the
    reciprocal RMS) and a backward pass of six sweeps over the rows, where ``F.rms_norm`` under
    autograd on a CPU runs as a chain of a dozen element-wise kernels each way.

    With ``r = rsqrt(mean(x ** 2) + eps)`` and ``y = x r w``: ``dw = sum_rows(g x r)`` and
    ``dx = r (g w) - x r ** 3 mean(g w x)``."""

    @staticmethod
    def forward(ctx, x, weight, eps: float):
        out, rstd = torch.ops.aten._fused_rms_norm(x, [x.size(-1)], weight, eps)
        ctx.save_for_backward(x, weight, rstd)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, weight, rstd = ctx.saved_tensors
        D = x.size(-1)
        g, rows, r = grad.reshape(-1, D), x.reshape(-1, D), rstd.reshape(-1)
        gx = g * rows
        grad_weight = torch.mv(gx.t(), r) if ctx.needs_input_grad[1] else None
        grad_x = None
        if ctx.needs_input_grad[0]:
            coef = r.pow(3).mul_(torch.mv(gx, weight)).div_(D).unsqueeze(1)  # r ** 3 mean(g w x)
            grad_x = (g * weight).mul_(r.unsqueeze(1)).addcmul_(rows, coef, value=-1).view(x.shape)
        return grad_x, grad_weight, None


class Residual(nn.Module):
    """A residual connection around one sub-layer, owning that sub-layer's norm."""

    final_norm: bool = False  # whether a stack of these blocks ends with a norm

    def __init__(self, cfg) -> None:
        super().__init__()
        self.norm = NORMS.build(cfg.norm, cfg)
        self.dropout = nn.Dropout(cfg.dropout)

    def first_of_stack(self) -> None:
        """Called on the wrapper of a stack's first sub-layer (its first block's self-attention),
        once built, for an entry that treats it apart; nothing by default."""


@NORM_POSITIONS.register("pre")
class PreNorm(Residual):
    """``x + f(norm(x))``; the stack ends with a final norm (Pre-LN). With ``skip_first_norm``
    the first block's attention reads its input unnormed (ModernBERT, whose embeddings are normed
    already: ``embed_norm``)."""

    final_norm = True
    options = (Option("skip_first_norm", False, "the first block's self-attention has no norm of its own "
                      "(ModernBERT: the embedding norm serves it; needs embed_norm)", short="skipfirst",
                      examples=({"skip_first_norm": True, "embed_norm": True},)),)

    @staticmethod
    def check_config(cfg) -> None:
        if cfg.skip_first_norm and not cfg.embed_norm:
            raise ValueError("model.skip_first_norm=true needs model.embed_norm=true: the first attention would "
                             "read unnormed embeddings (ModernBERT's embedding norm is what serves it)")

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.skip_first_norm = cfg.skip_first_norm  # kept under its key: the fingerprint reads it here

    def first_of_stack(self) -> None:
        if self.skip_first_norm:
            self.norm = nn.Identity()

    def forward(self, x: torch.Tensor, sublayer, *args, **kwargs) -> torch.Tensor:
        return x + self.dropout(sublayer(self.norm(x), *args, **kwargs))


@NORM_POSITIONS.register("post")
class PostNorm(Residual):
    """``norm(x + f(x))`` as in Vaswani et al. 2017 (Post-LN); no final norm."""

    def forward(self, x: torch.Tensor, sublayer, *args, **kwargs) -> torch.Tensor:
        return self.norm(x + self.dropout(sublayer(x, *args, **kwargs)))


@NORM_POSITIONS.register("sandwich")
class SandwichNorm(Residual):
    """``x + norm_out(f(norm(x)))``: Pre-LN with a second norm on each sub-layer's output
    before the residual add (Ding et al. 2021, "CogView", arXiv:2105.13290; Gemma 2 and 3);
    the stack ends with a final norm."""

    final_norm = True

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.post_norm = NORMS.build(cfg.norm, cfg)

    def forward(self, x: torch.Tensor, sublayer, *args, **kwargs) -> torch.Tensor:
        return x + self.dropout(self.post_norm(sublayer(self.norm(x), *args, **kwargs)))


@NORM_POSITIONS.register("reordered")
class ReorderedNorm(Residual):
    """``x + norm(f(x))``: the norm moved from the sub-layer's input to its output, inside the
    residual branch (OLMo 2, "2 OLMo 2 Furious", arXiv:2501.00656; Swin v2's res-post-norm);
    the stack ends with a final norm."""

    final_norm = True

    def forward(self, x: torch.Tensor, sublayer, *args, **kwargs) -> torch.Tensor:
        return x + self.dropout(self.norm(sublayer(x, *args, **kwargs)))
