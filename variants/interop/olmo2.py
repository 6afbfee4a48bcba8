"""OLMo 2 (``Olmo2ForCausalLM``): LLaMA's layout without biases, with each sub-layer's RMSNorm on
its output before the residual add (``norm_position: reordered``: ``post_attention_layernorm``,
``post_feedforward_layernorm``) and an RMSNorm over the whole query and key projections before
RoPE (``qk_norm: full``). ``attention_bias`` (biases on q, k, v and the output but not the
feed-forward) has no counterpart and is refused. Reference: OLMo Team 2024, "2 OLMo 2 Furious",
arXiv:2501.00656; layout read from ``transformers/models/olmo2/modeling_olmo2.py``.
"""

from __future__ import annotations

from variants.config import ModelConfig
from variants.interop.common import _require, _Weights
from variants.interop.llama import (EXPORT_OPTIONS as LLAMA_OPTIONS, EXPORT_SLOTS as LLAMA_SLOTS, config_fields,
                                    decoder_weights, model_config)
from variants.models import TransformerBase

HF_CLASS = "Olmo2ForCausalLM"
KIND = "lm"
EXPORT_SLOTS = {**LLAMA_SLOTS, "norm_position": ("reordered",), "bias": (False,), "qk_norm": ("full",)}
EXPORT_OPTIONS = LLAMA_OPTIONS + ("qk_norm",)
_NORMS = {"attn_res.norm": "post_attention_layernorm", "ffn_res.norm": "post_feedforward_layernorm"}


def convert(config, src: _Weights, common: dict) -> tuple[ModelConfig, dict]:
    """(HF config, state dict, common fields) -> (our config, our weights)."""
    _require(config, "OLMo 2", " (biases on the attention projections alone have no counterpart)",
             attention_bias=False)
    _require(config, "OLMo 2", " (imports are dropout-free)", attention_dropout=0.0)
    cfg = model_config(config, "OLMo 2", common, norm_position="reordered", bias=False, qk_norm="full")
    return cfg, decoder_weights(src, cfg, _NORMS)


def hf_config(cfg: ModelConfig, model: TransformerBase, common: dict):
    """The ``Olmo2Config`` of ``model`` (export)."""
    from transformers import Olmo2Config

    return Olmo2Config(**config_fields(cfg, model), attention_bias=False, attention_dropout=0.0, **common)
