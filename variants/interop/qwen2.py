"""Qwen 2 and 2.5 (``Qwen2ForCausalLM``): LLaMA's layout with biases on the query, key and value
projections only (``qkv_bias``, ``bias: false``). A sliding window (``use_sliding_window``, on the
layers ``layer_types`` marks, by default those from ``max_window_layers`` on) imports when it
covers every layer or all but every n-th (``window``, ``window_global_every``); another pattern
is refused. Reference: Qwen Team 2024, "Qwen2 Technical Report", arXiv:2407.10671; layout read
from ``transformers/models/qwen2/modeling_qwen2.py``.
"""

from __future__ import annotations

from variants.config import ModelConfig
from variants.interop.common import _require, _Weights
from variants.interop.llama import (EXPORT_OPTIONS as LLAMA_OPTIONS, EXPORT_SLOTS as LLAMA_SLOTS, config_fields,
                                    decoder_weights, layer_types, model_config, window_settings)
from variants.models import TransformerBase

HF_CLASS = "Qwen2ForCausalLM"
KIND = "lm"
EXPORT_SLOTS = {**LLAMA_SLOTS, "bias": (False,), "qkv_bias": (True,)}
EXPORT_OPTIONS = LLAMA_OPTIONS + ("qkv_bias", "window", "window_global_every")


def convert(config, src: _Weights, common: dict) -> tuple[ModelConfig, dict]:
    """(HF config, state dict, common fields) -> (our config, our weights)."""
    _require(config, "Qwen 2", " (imports are dropout-free)", attention_dropout=0.0)
    cfg = model_config(config, "Qwen 2", common, norm_position="pre", bias=False, qkv_bias=True,
                       **window_settings(config, "Qwen 2"))
    return cfg, decoder_weights(src, cfg)


def hf_config(cfg: ModelConfig, model: TransformerBase, common: dict):
    """The ``Qwen2Config`` of ``model`` (export)."""
    from transformers import Qwen2Config

    return Qwen2Config(**config_fields(cfg, model), use_sliding_window=cfg.window is not None,
                       sliding_window=cfg.window, layer_types=layer_types(cfg, model), attention_dropout=0.0,
                       **common)
