"""Attention maps of a model: the probabilities each attention layer puts on each key.

``attention_maps(model, tokens)`` (decoder-only) or ``attention_maps(model, src, tgt)``
(encoder-decoder) runs one forward pass in evaluation mode through an explicit softmax
(:func:`variants.attention.explicit_attention`), which computes the same function as the SDPA path
and records its probabilities; nothing changes for training or for any other call.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Optional

import torch

from variants.models import Stack, TransformerBase


@contextmanager
def _recording(model: TransformerBase):
    stacks = {name or "decoder": m for name, m in model.named_children() if isinstance(m, Stack)}
    for stack in stacks.values():
        stack.recording = {"self": [], "cross": []}
    try:
        yield {name: stack.recording for name, stack in stacks.items()}
    finally:
        for stack in stacks.values():
            stack.recording = None


@torch.no_grad()
def attention_maps(model: TransformerBase, tokens: torch.Tensor,
                   tgt: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
    """Attention probabilities, each (layers, B, H, queries, keys), float32 on the model's device.

    Decoder-only: ``{"self": ...}`` for ``tokens`` (B, T). Encoder-decoder, with ``tokens`` the
    source (B, S) and ``tgt`` the decoder input (B, T): ``{"encoder": (.., S, S), "decoder":
    (.., T, T), "cross": (.., T, S)}``. Every row sums to 1 over the keys it may attend to;
    masked keys (future tokens, padding) get exactly 0.
    """
    if model.training:
        raise ValueError("attention maps are taken in evaluation mode: call model.eval() first")
    if (model.cfg.kind == "seq2seq") != (tgt is not None):
        raise ValueError("an encoder-decoder model takes (src, tgt); a decoder-only model takes tokens alone")
    with _recording(model) as recorded:
        if tgt is None:
            model(tokens)
            return {"self": torch.stack(recorded["decoder"]["self"])}
        model(tokens, tgt)
        return {"encoder": torch.stack(recorded["encoder"]["self"]),
                "decoder": torch.stack(recorded["decoder"]["self"]),
                "cross": torch.stack(recorded["decoder"]["cross"])}
