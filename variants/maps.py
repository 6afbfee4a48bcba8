"""Attention maps of a model: the probabilities each attention layer puts on each key.

``attention_maps(model, tokens)`` (decoder-only, encoder-only) or ``attention_maps(model, src,
tgt)`` (encoder-decoder) runs one forward pass in evaluation mode through an explicit softmax
(:func:`variants.attention.explicit_attention`), which computes the same function as the SDPA path
and records its probabilities; nothing changes for training or for any other call.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Optional

import torch

from variants.models import TransformerBase


@contextmanager
def _recording(model: TransformerBase):
    stacks = {name: getattr(model, name) for name in model.stacks}
    for stack in stacks.values():
        stack.recording = {"self": [], "cross": []}
    try:
        yield {name: stack.recording for name, stack in stacks.items()}
    finally:
        for stack in stacks.values():
            stack.recording = None


@torch.no_grad()
def attention_maps(model: TransformerBase, *inputs: torch.Tensor) -> dict[str, torch.Tensor]:
    """Attention probabilities, each (layers, B, H, queries, keys), float32 on the model's device,
    named as the model kind lays them out (``model.maps``).

    Decoder-only: ``{"self": ...}`` for ``tokens`` (B, T); encoder-only the same, every position
    over every key. Encoder-decoder, with the source (B, S) and the decoder input (B, T):
    ``{"encoder": (.., S, S), "decoder": (.., T, T), "cross": (.., T, S)}``. Every row sums to 1
    over the keys it may attend to; masked keys (future tokens, padding) get exactly 0.
    """
    if model.training:
        raise ValueError("attention maps are taken in evaluation mode: call model.eval() first")
    expected = len(type(model).example_inputs(inputs[0])) if inputs else 1
    if len(inputs) != expected:
        raise ValueError(f"a model of kind {model.cfg.kind!r} takes {expected} input(s) "
                         f"({'src, tgt' if expected == 2 else 'tokens'}), got {len(inputs)}")
    with _recording(model) as recorded:
        model(*inputs)
        return {name: torch.stack(recorded[stack][which]) for name, (stack, which) in model.maps.items()}
