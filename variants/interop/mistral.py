"""Mistral (``MistralForCausalLM``): LLaMA's layout without biases, with a sliding window on
every layer (``sliding_window``; None = none) and an optional ``head_dim`` of its own (Mistral
Nemo: 128 at width 5120 with 32 heads).

transformers masks key j for query i when ``j <= i - sliding_window``
(``masking_utils.sliding_window_overlay``): a query sees itself and the ``sliding_window - 1``
keys before it, which is our ``window`` (keys fewer than ``window`` positions away), so the value
carries over unchanged. Reference: Jiang et al. 2023, "Mistral 7B", arXiv:2310.06825; layout read
from ``transformers/models/mistral/modeling_mistral.py``.
"""

from __future__ import annotations

from variants.config import ModelConfig
from variants.interop.common import _require, _Weights
from variants.interop.llama import (EXPORT_OPTIONS as LLAMA_OPTIONS, EXPORT_SLOTS as LLAMA_SLOTS, config_fields,
                                    decoder_weights, model_config)
from variants.models import TransformerBase

HF_CLASS = "MistralForCausalLM"
KIND = "lm"
EXPORT_SLOTS = {**LLAMA_SLOTS, "bias": (False,)}
EXPORT_OPTIONS = LLAMA_OPTIONS + ("window",)


def convert(config, src: _Weights, common: dict) -> tuple[ModelConfig, dict]:
    """(HF config, state dict, common fields) -> (our config, our weights)."""
    _require(config, "Mistral", " (imports are dropout-free)", attention_dropout=0.0)
    window = getattr(config, "sliding_window", None)
    cfg = model_config(config, "Mistral", common, norm_position="pre", bias=False,
                       **({} if window is None else {"window": window}))
    return cfg, decoder_weights(src, cfg)


def hf_config(cfg: ModelConfig, model: TransformerBase, common: dict):
    """The ``MistralConfig`` of ``model`` (export)."""
    from transformers import MistralConfig

    return MistralConfig(**config_fields(cfg, model), sliding_window=cfg.window, attention_dropout=0.0, **common)
