"""Parameter initialisation (slot ``init``): a declared variable of a run, like any component.

References:
- ``gpt2``: Radford et al. 2019, "Language Models are Unsupervised Multitask Learners": every
  matrix and embedding N(0, 0.02), the projections that write into the residual stream scaled
  by 1/sqrt(2 * layers).
- ``xavier``: Vaswani et al. 2017, "Attention Is All You Need", arXiv:1706.03762, as fairseq's
  Transformer recipes implement it: Xavier-uniform matrices (Glorot & Bengio 2010), token and
  learned position embeddings N(0, d_model^-1/2), token embeddings multiplied by sqrt(d_model) in
  the forward pass (so they enter at unit scale, like the sinusoids added to them).

An entry is a parameterless module that the model holds (so the fingerprint names it), built
as ``cls(cfg)``; :meth:`Init.apply` initialises a built model. Which projections write into the
residual stream is declared by the component that owns them (:func:`residual_output`), never
read off a parameter's name.
"""

from __future__ import annotations

import math

from torch import nn

from variants.registry import INITS

RESIDUAL_OUTPUT = "residual_output"


def residual_output(linear: nn.Linear) -> nn.Linear:
    """Mark ``linear`` as a projection that writes into the residual stream (attention output,
    feed-forward down projection): an init may scale it with depth."""
    linear.init_role = RESIDUAL_OUTPUT
    return linear


def _role(module: nn.Module) -> str:
    return getattr(module, "init_role", "")


class Init(nn.Module):
    """One initialisation scheme. ``scales_embeddings``: the token embeddings are multiplied by
    sqrt(d_model) in the forward pass (the scheme's embedding std assumes it)."""

    scales_embeddings = False

    def __init__(self, cfg) -> None:
        super().__init__()
        self.std = cfg.init_std

    def apply(self, model: nn.Module, depth: int) -> None:
        """Initialise every parameter of ``model`` (``depth``: its residual blocks, all stacks)."""
        for module in model.modules():
            if isinstance(module, nn.Linear):
                self.linear(module, depth)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                self.embedding(module)
            else:  # norms and any other module's own parameters: gains 1, biases 0
                for name, p in module.named_parameters(recurse=False):
                    nn.init.zeros_(p) if name.endswith("bias") else nn.init.ones_(p)

    def linear(self, module: nn.Linear, depth: int) -> None:
        raise NotImplementedError

    def embedding(self, module: nn.Embedding) -> None:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return self.registry_name


@INITS.register("gpt2")
class GPT2Init(Init):
    """N(0, init_std) for matrices and embedding tables; residual outputs scaled by 1/sqrt(2 * depth)."""

    def linear(self, module: nn.Linear, depth: int) -> None:
        scale = 1 / math.sqrt(2 * depth) if _role(module) == RESIDUAL_OUTPUT else 1.0
        nn.init.normal_(module.weight, 0.0, self.std * scale)

    def embedding(self, module: nn.Embedding) -> None:
        nn.init.normal_(module.weight, 0.0, self.std)


@INITS.register("xavier")
class XavierInit(Init):
    """Xavier-uniform for every stored matrix (a fused [q; k; v] is one matrix: its bound is
    sqrt(6 / (4 d)), the bound fairseq reaches with gain 1/sqrt(2) on each d x d part); embedding
    tables N(0, d_model^-1/2), the token embeddings scaled by sqrt(d_model) in the forward pass."""

    scales_embeddings = True

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.d_model = cfg.d_model

    def linear(self, module: nn.Linear, depth: int) -> None:
        nn.init.xavier_uniform_(module.weight)

    def embedding(self, module: nn.Embedding) -> None:
        # tables of other widths (the T5 bias: buckets x heads) keep the init_std normal
        std = self.d_model ** -0.5 if module.embedding_dim == self.d_model else self.std
        nn.init.normal_(module.weight, 0.0, std)
