"""Analytic training FLOPs, for MFU.

Convention (Kaplan et al. 2020, arXiv:2001.08361; PaLM appendix B): a matrix multiply of an
(m x k) by a (k x n) matrix costs 2mkn FLOPs; training costs 3x the forward pass (forward, plus
backward for activations and weights). Counted: every linear layer including the output head
(``6 N`` per token with N the non-embedding parameters of the matrices that token passes
through), and the attention score and value products (``12 L d T`` per token for T keys) without
causal halving. Not counted: embeddings lookups, norms, softmax, activations, the optimizer.
"""

from __future__ import annotations

from torch import nn


def _matmul_params(module: nn.Module) -> int:
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Linear))


class FlopCounter:
    """Training FLOPs of a model's steps; the model's matrix sizes are read once."""

    def __init__(self, model) -> None:
        cfg = model.cfg
        self.d_model, self.seq2seq = cfg.d_model, cfg.kind == "seq2seq"
        self.decoder = _matmul_params(model.decoder) + cfg.d_model * cfg.vocab_size  # + output head
        self.decoder_layers = len(model.decoder.blocks)
        self.encoder = _matmul_params(model.encoder) if self.seq2seq else 0
        self.encoder_layers = len(model.encoder.blocks) if self.seq2seq else 0

    def __call__(self, tokens: int, seq_len: int, src_tokens: int = 0, src_len: int = 0) -> float:
        """FLOPs of one training step over ``tokens`` (non-pad) target tokens in sequences of
        ``seq_len``; for an encoder-decoder also ``src_tokens`` source tokens of ``src_len``."""
        d = self.d_model
        flops = (6 * self.decoder + 12 * self.decoder_layers * d * seq_len) * tokens
        if self.seq2seq:
            flops += (6 * self.encoder + 12 * self.encoder_layers * d * src_len) * src_tokens
            flops += 12 * self.decoder_layers * d * src_len * tokens  # cross-attention products
        return float(flops)

