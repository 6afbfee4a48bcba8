"""Qwen 3 (``Qwen3ForCausalLM``): LLaMA's layout without biases, an RMSNorm of each query and key
head before RoPE (``qk_norm: head``, one gain of ``head_dim`` shared by the heads) and a
``head_dim`` of its own (128 at every width). The sliding window imports as in Qwen 2;
``attention_bias`` (biases on q, k, v and the output but not the feed-forward) has no
counterpart and is refused. Reference: Qwen Team 2025, "Qwen3 Technical Report",
arXiv:2505.09388; layout read from ``transformers/models/qwen3/modeling_qwen3.py``.
"""

from __future__ import annotations

from variants.config import ModelConfig
from variants.interop.common import _require, _Weights
from variants.interop.llama import (EXPORT_OPTIONS as LLAMA_OPTIONS, EXPORT_SLOTS as LLAMA_SLOTS, config_fields,
                                    decoder_weights, layer_types, model_config, window_settings)
from variants.models import TransformerBase

HF_CLASS = "Qwen3ForCausalLM"
KIND = "lm"
EXPORT_SLOTS = {**LLAMA_SLOTS, "bias": (False,), "qk_norm": ("head",)}
EXPORT_OPTIONS = LLAMA_OPTIONS + ("qk_norm", "window", "window_global_every")


def convert(config, src: _Weights, common: dict) -> tuple[ModelConfig, dict]:
    """(HF config, state dict, common fields) -> (our config, our weights)."""
    _require(config, "Qwen 3", " (biases on the attention projections alone have no counterpart)",
             attention_bias=False)
    _require(config, "Qwen 3", " (imports are dropout-free)", attention_dropout=0.0)
    cfg = model_config(config, "Qwen 3", common, norm_position="pre", bias=False, qk_norm="head",
                       **window_settings(config, "Qwen 3"))
    return cfg, decoder_weights(src, cfg)


def hf_config(cfg: ModelConfig, model: TransformerBase, common: dict):
    """The ``Qwen3Config`` of ``model`` (export)."""
    from transformers import Qwen3Config

    return Qwen3Config(**config_fields(cfg, model), attention_bias=False, use_sliding_window=cfg.window is not None,
                       sliding_window=cfg.window, layer_types=layer_types(cfg, model), attention_dropout=0.0,
                       **common)
