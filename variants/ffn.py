"""Position-wise feed-forward networks (slot ``ffn``).

References:
- ReLU FFN: Vaswani et al. 2017, "Attention Is All You Need", arXiv:1706.03762.
- GELU: Hendrycks & Gimpel 2016, arXiv:1606.08415 (``gelu_tanh`` is the tanh approximation
  used by GPT-2 and BLOOM; ``geglu_tanh`` gates with it, as Gemma and Gemma 2 do).
- SiLU / Swish: Elfwing, Uchibe, Doya 2018, arXiv:1702.03118; Ramachandran, Zoph, Le 2017,
  "Searching for Activation Functions", arXiv:1710.05941 (the activation of Marian's
  ``swish`` models).
- GLU variants (SwiGLU, GEGLU, ReGLU): Shazeer 2020, "GLU Variants Improve Transformer",
  arXiv:2002.05202.

Gated variants compute ``down(act(gate(x)) * up(x))`` with three matrices instead of two, so
by default their hidden width is ``round(2 * d_ff / 3)``: parameter count equal (within 1%) to
the two-matrix baseline at the same ``d_ff``, as in Shazeer 2020.

Each entry states its ``activation`` (a function of a tensor) and whether it is ``gated``, so
code outside the model (peers in the bench) can read them from the registry.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from variants.init import residual_output
from variants.registry import FFNS, Option, options_of


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GELU with the tanh approximation (GPT-2, BLOOM)."""
    return F.gelu(x, approximate="tanh")


class MLP(nn.Module):
    """``down(act(up(x)))``; subclasses choose ``activation`` (or override ``act``)."""

    gated = False
    activation: Callable[[torch.Tensor], torch.Tensor]

    def __init__(self, cfg) -> None:
        super().__init__()
        self.hidden = self.hidden_width(cfg)
        self.up = nn.Linear(cfg.d_model, self.hidden, bias=cfg.bias)
        self.down = residual_output(nn.Linear(self.hidden, cfg.d_model, bias=cfg.bias))

    @staticmethod
    def hidden_width(cfg) -> int:
        return cfg.ffn_hidden or cfg.d_ff

    def act(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.act(self.up(x)))


class GatedMLP(nn.Module):
    """``down(act(gate(x)) * up(x))`` with gate and up fused into one matrix ``[gate; up]``."""

    gated = True
    activation: Callable[[torch.Tensor], torch.Tensor]

    def __init__(self, cfg) -> None:
        super().__init__()
        self.hidden = self.hidden_width(cfg)
        self.gate_up = nn.Linear(cfg.d_model, 2 * self.hidden, bias=cfg.bias)
        self.down = residual_output(nn.Linear(self.hidden, cfg.d_model, bias=cfg.bias))

    @staticmethod
    def hidden_width(cfg) -> int:
        return cfg.ffn_hidden or max(1, round(2 * cfg.d_ff / 3))

    def act(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _fused_gated(self, x):
            out = _GatedProduct.apply(x.reshape(-1, x.size(-1)), self.gate_up.weight, self.down.weight,
                                      type(self).activation)
            return out.view(*x.shape[:-1], out.size(-1))
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(self.act(gate) * up)


def _aligned(rows: int, cols: int, like: torch.Tensor) -> torch.Tensor:
    """An uninitialised (rows, cols) matrix whose rows start 64 bytes apart (its row stride
    rounded up to 16 elements): a matrix product written into rows of an odd width (683 = 2/3 of
    1024) runs up to 1.6x faster on a CPU when each row starts aligned."""
    stride = -(-cols // 16) * 16
    return torch.empty(rows, stride, dtype=like.dtype, device=like.device)[:, :cols]


_aten = torch.ops.aten
# activation -> (its value into ``out``, its backward ``grad * act'(x)`` into ``out``)
_GATED_KERNELS = {
    F.silu: (lambda x, out: _aten.silu.out(x, out=out),
             lambda grad, x, out: _aten.silu_backward.grad_input(grad, x, grad_input=out)),
    F.gelu: (lambda x, out: _aten.gelu.out(x, out=out),
             lambda grad, x, out: _aten.gelu_backward.grad_input(grad, x, grad_input=out)),
    gelu_tanh: (lambda x, out: _aten.gelu.out(x, approximate="tanh", out=out),
                lambda grad, x, out: _aten.gelu_backward.grad_input(grad, x, approximate="tanh", grad_input=out)),
    F.relu: (lambda x, out: torch.clamp_min(x, 0, out=out),
             lambda grad, x, out: _aten.threshold_backward.grad_input(grad, x, 0, grad_input=out)),
}


_FUSED_MIN_ROWS = 64  # fewer rows (a decoding step's): the plain formula, without the function's overhead


def _fused_gated(ffn: "GatedMLP", x: torch.Tensor) -> bool:
    """Whether ``ffn`` runs as one :class:`_GatedProduct`: for 64 rows or more, on a CPU, in fp32
    without autocast, without biases, outside the compiler (which fuses the plain formula
    itself), for the activations it knows and a hidden width that is not a multiple of 16."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and ffn.gate_up.weight.dtype == torch.float32
            and x.numel() >= _FUSED_MIN_ROWS * x.size(-1)
            and ffn.hidden % 16 != 0 and ffn.gate_up.bias is None and ffn.down.bias is None
            and type(ffn).activation in _GATED_KERNELS and type(ffn).act is GatedMLP.act
            and not torch.is_autocast_enabled("cpu") and not torch.compiler.is_compiling())


class _GatedProduct(torch.autograd.Function):
    """``down(act(x @ gate.T) * (x @ up.T))`` for (M, D) rows, the same function as
    :meth:`GatedMLP.forward`, with each (M, hidden) and (M, 2 hidden) intermediate written into
    rows aligned by :func:`_aligned` (the products that write them are the slow ones at odd
    widths), the gate and up gradients written into their halves of one matrix (no
    concatenation). It keeps the activated gate for the backward pass, as autograd would, but not
    a separate copy of the gate and up halves."""

    @staticmethod
    def forward(ctx, x, gate_up, down, activation):
        value, _ = _GATED_KERNELS[activation]
        hidden = down.size(1)
        both = torch.mm(x, gate_up.t(), out=_aligned(x.size(0), 2 * hidden, x))  # [gate | up]
        gate, up = both[:, :hidden], both[:, hidden:]
        activated = value(gate, _aligned(x.size(0), hidden, x))
        product = torch.mul(activated, up, out=_aligned(x.size(0), hidden, x))
        ctx.activation = activation
        ctx.save_for_backward(x, gate_up, down, both, activated, product)
        return torch.mm(product, down.t())

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, gate_up, down, both, activated, product = ctx.saved_tensors
        derivative = _GATED_KERNELS[ctx.activation][1]
        hidden = down.size(1)
        grad = grad.contiguous()
        # (D, hidden) into aligned rows too; the gradient's copy into the parameter's layout is cheap
        grad_down = torch.mm(grad.t(), product, out=_aligned(grad.size(1), hidden, x)) \
            if ctx.needs_input_grad[2] else None
        grad_product = torch.mm(grad, down, out=_aligned(x.size(0), hidden, x))
        gate, up = both[:, :hidden], both[:, hidden:]
        grad_both = _aligned(x.size(0), 2 * hidden, x)
        torch.mul(activated, grad_product, out=grad_both[:, hidden:])  # d/d up = act(gate) * grad
        derivative(grad_product.mul_(up), gate, grad_both[:, :hidden])  # d/d gate = act'(gate) * up * grad
        grad_x = torch.mm(grad_both, gate_up) if ctx.needs_input_grad[0] else None
        grad_gate_up = torch.mm(grad_both.t(), x) if ctx.needs_input_grad[1] else None
        return grad_x, grad_gate_up, grad_down, None


@FFNS.register("relu")
class ReLUFFN(MLP):
    activation = staticmethod(F.relu)


@FFNS.register("gelu")
class GELUFFN(MLP):
    activation = staticmethod(F.gelu)


@FFNS.register("gelu_tanh")
class TanhGELUFFN(MLP):
    activation = staticmethod(gelu_tanh)


@FFNS.register("silu")
class SiLUFFN(MLP):
    activation = staticmethod(F.silu)


@FFNS.register("swiglu")
class SwiGLU(GatedMLP):
    activation = staticmethod(F.silu)


@FFNS.register("geglu")
class GEGLU(GatedMLP):
    activation = staticmethod(F.gelu)


@FFNS.register("geglu_tanh")
class TanhGEGLU(GatedMLP):
    activation = staticmethod(gelu_tanh)


@FFNS.register("reglu")
class ReGLU(GatedMLP):
    activation = staticmethod(F.relu)


@FFNS.register("moe")
class MixtureOfExperts(nn.Module):
    """Top-k routed mixture of feed-forward experts (Shazeer et al. 2017, arXiv:1701.06538; Switch
    Transformer, Fedus et al. 2021, arXiv:2101.03961; Mixtral, Jiang et al. 2024, arXiv:2401.04088).

    A linear router (no bias) scores the ``n_experts`` experts per token; the softmax over them is
    taken in fp32, each token goes to its ``top_k`` best, and their outputs are summed weighted by
    those probabilities, renormalised over the chosen ones (Mixtral); with ``top_k`` 1 the one
    output is scaled by its probability unnormalised (Switch), so that the router learns from the
    loss. Each expert is the
    ``expert_ffn`` entry. Sizing (``moe_sizing``): ``active`` gives each expert the dense entry's
    hidden width divided by ``top_k``, so that a token's active feed-forward FLOPs match the dense
    baseline's (iso-FLOP; the router adds ``d_model x n_experts``); ``total`` divides by
    ``n_experts`` instead, so that all experts together hold the dense parameter count. An
    explicit ``ffn_hidden`` is each expert's width (imported models).

    Training adds ``moe_aux_weight`` times the load-balancing loss of Switch, ``n_experts *
    sum_e f_e P_e`` (``f_e`` the share of routing assignments to expert e, ``P_e`` its mean router
    probability: 1 when balanced) and ``moe_z_weight`` times the router z-loss of ST-MoE (Zoph et
    al. 2022, arXiv:2202.08906: the mean squared log-partition of the router logits). Every token
    counts, padding included. One device holds every expert (no expert parallelism); experts run
    one after another over the tokens routed to them.
    """

    gated = False  # as a whole: its experts are the gated (or plain) entries

    options = (
        Option("n_experts", 4, "experts per layer", short="e", minimum=2, examples=(3,)),
        Option("top_k", 2, "experts each token is routed to", short="top", minimum=1, examples=(1,)),
        Option("expert_ffn", "swiglu", "the feed-forward entry each expert is", short="x",
               choices=("swiglu", "geglu", "geglu_tanh", "reglu", "relu", "gelu", "gelu_tanh", "silu")),
        Option("moe_sizing", "active", "active: experts as wide as the dense width / top_k (active FLOPs "
               "match the dense feed-forward); total: the dense width / n_experts (total parameters match)",
               short="size", choices=("active", "total")),
        Option("moe_aux_weight", 0.01, "weight of the load-balancing loss (Switch)", short="aux", minimum=0.0,
               examples=(0.0,)),
        Option("moe_z_weight", 0.0, "weight of the router z-loss (ST-MoE)", short="rz", minimum=0.0,
               examples=(1e-3,)),
    )

    @staticmethod
    def check_config(cfg) -> None:
        if cfg.top_k > cfg.n_experts:
            raise ValueError(f"model.top_k={cfg.top_k} exceeds model.n_experts={cfg.n_experts}")

    def __init__(self, cfg) -> None:
        super().__init__()
        for option in options_of(type(self)).values():
            setattr(self, option.key, getattr(cfg, option.key))
        entry = FFNS.get(self.expert_ffn)
        dense = entry.hidden_width(cfg.replace(ffn_hidden=None)) if cfg.ffn_hidden is None else None
        divisor = self.top_k if self.moe_sizing == "active" else self.n_experts
        self.hidden = cfg.ffn_hidden or max(1, round(dense / divisor))
        expert_cfg = cfg.replace(ffn=self.expert_ffn, ffn_hidden=self.hidden)
        self.router = nn.Linear(cfg.d_model, self.n_experts, bias=False)
        self.experts = nn.ModuleList(entry(expert_cfg) for _ in range(self.n_experts))
        for expert in self.experts:
            expert.active_share = self.top_k / self.n_experts  # read by the FLOP and parameter counts
        self.aux_loss: Optional[torch.Tensor] = None  # weighted, with gradient; set by each forward pass
        self.balance: Optional[torch.Tensor] = None  # the load-balancing loss (1: balanced), detached
        self.router_z: Optional[torch.Tensor] = None  # the router z-loss, detached
        self.load: Optional[torch.Tensor] = None  # (E,) tokens routed to each expert by the last pass

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(N, D) -> router logits (N, E), the chosen experts (N, k) and their weights (N, k; fp32
        at least)."""
        logits, _, chosen, weights = self._route(x)
        return logits, chosen, weights

    def _route(self, x: torch.Tensor):
        """:meth:`route`, with the router probabilities (N, E) that the auxiliary losses reuse."""
        logits = _at_least_fp32(self.router(x))
        probs = torch.softmax(logits, dim=-1)
        weights, chosen = probs.topk(self.top_k, dim=-1)
        if self.top_k > 1:  # top-1 (Switch) is scaled by its probability: renormalised, it would be 1
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return logits, probs, chosen, weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        logits, probs, chosen, weights = self._route(x)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            rows, slot = torch.nonzero(chosen == e, as_tuple=True)
            if rows.numel():
                out.index_add_(0, rows, expert(x[rows]) * weights[rows, slot].unsqueeze(-1).to(x.dtype))
        self._auxiliary(logits, probs, chosen)
        return out.reshape(shape)

    def _auxiliary(self, logits: torch.Tensor, probs: torch.Tensor, chosen: torch.Tensor) -> None:
        assigned = torch.zeros_like(probs).scatter_(1, chosen, 1.0)  # (N, E): 1 where routed
        self.load = assigned.sum(0).detach()
        share = assigned.mean(0) / self.top_k  # f_e, summing to 1
        balance = self.n_experts * (share * probs.mean(0)).sum()
        router_z = torch.logsumexp(logits, dim=-1).square().mean()
        self.aux_loss = self.moe_aux_weight * balance + self.moe_z_weight * router_z
        self.balance, self.router_z = balance.detach(), router_z.detach()


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))
