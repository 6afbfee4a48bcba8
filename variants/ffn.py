"""Position-wise feed-forward networks (slot ``ffn``).

References:
- ReLU FFN: Vaswani et al. 2017, "Attention Is All You Need", arXiv:1706.03762.
- GELU: Hendrycks & Gimpel 2016, arXiv:1606.08415 (``gelu_tanh`` is the tanh approximation
  used by GPT-2 and BLOOM).
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

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from variants.init import residual_output
from variants.registry import FFNS


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
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(self.act(gate) * up)


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


@FFNS.register("reglu")
class ReGLU(GatedMLP):
    activation = staticmethod(F.relu)
