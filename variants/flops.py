"""Analytic training and decoding FLOPs, for MFU.

Convention (Kaplan et al. 2020, arXiv:2001.08361; PaLM appendix B): a matrix multiply of an
(m x k) by a (k x n) matrix costs 2mkn FLOPs; training costs 3x the forward pass (forward, plus
backward for activations and weights). Counted: every linear layer including the output head
(``6 N`` per token with N the non-embedding parameters of the matrices that token passes
through: of a mixture of experts, the router and ``top_k`` of the ``n_experts`` experts), and
the attention score and value products (``12 L d T`` per token for T keys) without causal
halving, and a position scheme's own score products (DeBERTa's: ``24 L s d`` per token for s
buckets; :meth:`variants.positions.PositionScheme.score_flops`). Not counted: embeddings lookups,
norms, softmax, activations, the optimizer.

Decoding (:func:`lm_decode_flops`, :func:`s2s_decode_flops`) counts forward passes only, with
the same convention per token position: ``2 N`` plus the attention score and value products
``4 L d C`` over the ``C`` keys that position attends to (:func:`forward_flops`).
"""

from __future__ import annotations

from typing import Optional

from torch import nn


def _matmul_params(module: nn.Module, share: float = 1.0, seen: Optional[set] = None) -> float:
    """The matrix weights a token passes through, a shared module once: a routed expert
    (``active_share``, the fraction of experts each token uses) counts at that share, so MoE
    FLOPs are the active ones."""
    seen = set() if seen is None else seen
    if id(module) in seen:
        return 0
    seen.add(id(module))
    share *= getattr(module, "active_share", 1.0)
    own = module.weight.numel() * share if isinstance(module, nn.Linear) else 0
    return own + sum(_matmul_params(child, share, seen) for child in module.children())


class FlopCounter:
    """Training FLOPs of a model's steps; the model's matrix sizes are read once. Generic over the
    model kind's stacks (``model.stacks``): the last one reads the target tokens and feeds the
    output head; a first one of two reads the source tokens; a stack with cross-attention also
    attends over the source."""

    def __init__(self, model) -> None:
        cfg = model.cfg
        names = list(model.stacks)
        self.d_model, self.output = cfg.d_model, names[-1]
        self.source = names[0] if len(names) > 1 else None
        stacks = {name: getattr(model, name) for name in names}
        self.matmul = {name: _matmul_params(stack) for name, stack in stacks.items()}
        self.matmul[self.output] += cfg.d_model * cfg.vocab_size  # + output head
        if model.head_transform is not None:  # + its transform's dense layer
            self.matmul[self.output] += _matmul_params(model.head_transform)
        self.layers = {name: len(stack.blocks) for name, stack in stacks.items()}
        # a position scheme's own score products (DeBERTa's), forward FLOPs per token and layer
        self.position = {name: stack.position.score_flops() for name, stack in stacks.items()}
        self.cross = any(block.cross_attn is not None for block in stacks[self.output].blocks)

    def __call__(self, tokens: int, seq_len: int, src_tokens: int = 0, src_len: int = 0) -> float:
        """FLOPs of one training step over ``tokens`` (non-pad) target tokens in sequences of
        ``seq_len``; for an encoder-decoder also ``src_tokens`` source tokens of ``src_len``."""
        d, out = self.d_model, self.output
        flops = (6 * self.matmul[out] + self.layers[out] * (12 * d * seq_len + 3 * self.position[out])) * tokens
        if self.source is not None:
            src = self.source
            per_token = 6 * self.matmul[src] + self.layers[src] * (12 * d * src_len + 3 * self.position[src])
            flops += per_token * src_tokens
        if self.cross:
            flops += 12 * self.layers[out] * d * src_len * tokens  # cross-attention products
        return float(flops)


def forward_flops(matmul_params: int, layers: int, d: int, context: float) -> float:
    """Forward FLOPs of one token position: ``2 N`` for the ``N`` matrix weights it passes
    through, plus the attention score and value products ``4 L d context`` over ``context``
    keys in each of ``layers`` layers of width ``d``."""
    return 2 * matmul_params + 4 * layers * d * context


def lm_decode_flops(model, rows: int, prompt: int, new: int) -> float:
    """Forward FLOPs of continuing ``rows`` prompts of ``prompt`` tokens by ``new`` tokens with
    the KV cache: one causal pass over the prompts (position ``p`` attends to ``p + 1`` keys, so
    ``(prompt + 1) / 2`` on average), whose last logits give the first new token, then
    ``new - 1`` cached steps, step ``t`` attending to ``prompt + t + 1`` keys. Every position
    counts all ``N`` (the output head included, though decoding reads only the last one's)."""
    counter = FlopCounter(model)
    n, L, d = counter.matmul["decoder"], counter.layers["decoder"], counter.d_model
    own = L * counter.position["decoder"]  # a position scheme's own score products, per position
    total = rows * prompt * (forward_flops(n, L, d, (prompt + 1) / 2) + own)
    total += sum(rows * (forward_flops(n, L, d, prompt + t + 1) + own) for t in range(new - 1))
    return float(total)


def s2s_decode_flops(model, batch: int, beam: int, src_len: int, new: int) -> float:
    """Forward FLOPs of translating ``batch`` sources of ``src_len`` tokens into ``new`` tokens
    over ``beam`` hypotheses each, with the KV cache: one encoder pass per source (every
    position attends to all ``src_len`` keys), then ``new`` cached decoder steps per hypothesis,
    step ``t`` attending to ``t + 1`` keys and, by cross-attention, to ``src_len``. Each step
    counts all decoder ``N``, the cross-attention key/value projections included (the cache
    computes them once per source)."""
    counter = FlopCounter(model)
    d, Le, Ld = counter.d_model, counter.layers["encoder"], counter.layers["decoder"]
    encoder = forward_flops(counter.matmul["encoder"], Le, d, src_len) + Le * counter.position["encoder"]
    total = batch * src_len * encoder
    total += sum(batch * beam * (forward_flops(counter.matmul["decoder"], Ld, d, t + 1) + 4 * Ld * d * src_len
                                 + Ld * counter.position["decoder"]) for t in range(new))
    return float(total)
