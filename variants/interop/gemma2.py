"""Gemma 2 (``Gemma2ForCausalLM``): LLaMA's projections without biases, in sandwich blocks
(``norm_position: sandwich``: ``input_layernorm`` and ``post_attention_layernorm`` around the
attention, ``pre_feedforward_layernorm`` and ``post_feedforward_layernorm`` around the
feed-forward, each output normed before the residual add), a tanh-GELU gated feed-forward
(``hidden_activation: gelu_pytorch_tanh`` -> ``geglu_tanh``), token embeddings times
√``hidden_size`` (``scale_embeddings``), soft-capped attention scores (``attn_logit_softcapping``
-> ``attn_softcap``) scaled by ``query_pre_attn_scalar``^-½ (``attn_scale_dim``, left out when it
is the head width), soft-capped final logits (``final_logit_softcapping`` -> the model's
``logit_softcap``), a ``head_dim`` of its own, grouped-query attention and sliding-window layers
alternating with global ones (``layer_types``: layers 0, 2, … slide, as ``window_global_every: 2``
makes ours; every layer local, or all but every n-th, import too).

Its RMSNorms compute ``x̂ · (1 + weight)`` in fp32: the stored weight is the gain less 1. The keys
in :data:`GAIN_OFFSETS` say so, and :mod:`variants.interop` adds 1 to those tensors before the
converter sees them (import) and takes 1 from them after the weights are placed (export), so the
converter itself maps tensors unchanged and export can still run it backwards on element
indices. A gain in [0.5, 2] survives the round trip bit for bit (``g - 1`` is exact there);
elsewhere it may move by one rounding.

Refused, by name: biases on the attention projections (``attention_bias``), attention dropout,
bidirectional attention (``use_bidirectional_attention``), a ``query_pre_attn_scalar`` that is
not a whole number, a ``layer_types`` pattern other than those above. Reference: Gemma Team
2024, "Gemma 2: Improving Open Language Models at a Practical Size", arXiv:2408.00118; layout
read from ``transformers/models/gemma2/modeling_gemma2.py``.
"""

from __future__ import annotations

from variants.config import ModelConfig
from variants.interop.common import _GATED_FFN, _ffn, _require, _Weights
from variants.interop.llama import (EXPORT_OPTIONS as LLAMA_OPTIONS, EXPORT_SLOTS as LLAMA_SLOTS, config_fields,
                                    decoder_weights, layer_types, model_config, window_settings)
from variants.models import TransformerBase

HF_CLASS = "Gemma2ForCausalLM"
KIND = "lm"
_ACTIVATION = {"geglu_tanh": "gelu_pytorch_tanh", "geglu": "gelu", "swiglu": "silu", "reglu": "relu"}
EXPORT_SLOTS = {**LLAMA_SLOTS, "norm_position": ("sandwich",), "ffn": tuple(_ACTIVATION), "bias": (False,),
                "embeddings_scaled": (True,)}
EXPORT_OPTIONS = LLAMA_OPTIONS + ("window", "window_global_every", "attn_softcap", "attn_scale_dim")
# HF keys whose values are norm gains less 1 (every RMSNorm of the model)
GAIN_OFFSETS = ("_layernorm.weight", "model.norm.weight")
_FFN = {**_GATED_FFN, "gelu_pytorch_tanh": "geglu_tanh", "gelu_new": "geglu_tanh"}
_NORMS = {"attn_res.norm": "input_layernorm", "attn_res.post_norm": "post_attention_layernorm",
          "ffn_res.norm": "pre_feedforward_layernorm", "ffn_res.post_norm": "post_feedforward_layernorm"}


def _score_settings(config) -> dict:
    """``attn_softcap`` and ``attn_scale_dim`` (when ``query_pre_attn_scalar`` is not the head width)."""
    scalar = config.query_pre_attn_scalar
    if scalar != int(scalar):
        raise NotImplementedError(f"Gemma 2 with query_pre_attn_scalar={scalar!r} cannot be imported "
                                  f"(attn_scale_dim is a whole number)")
    width = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    settings = {} if int(scalar) == width else {"attn_scale_dim": int(scalar)}
    if config.attn_logit_softcapping is not None:
        settings["attn_softcap"] = float(config.attn_logit_softcapping)
    return settings


def convert(config, src: _Weights, common: dict) -> tuple[ModelConfig, dict]:
    """(HF config, state dict with the gains restored, common fields) -> (our config, our weights)."""
    _require(config, "Gemma 2", " (biases on the attention projections alone have no counterpart)",
             attention_bias=False)
    _require(config, "Gemma 2", " (imports are dropout-free)", attention_dropout=0.0)
    if getattr(config, "use_bidirectional_attention", None):
        raise NotImplementedError("Gemma 2 with use_bidirectional_attention=True cannot be imported "
                                  "(a decoder-only LM here is causal)")
    cap = config.final_logit_softcapping
    cfg = model_config(config, "Gemma 2", common, ffn=_ffn(_FFN, config.hidden_activation, "Gemma 2"),
                       norm_position="sandwich", bias=False, scale_embeddings=True,
                       logit_softcap=None if cap is None else float(cap), **_score_settings(config),
                       **window_settings(config, "Gemma 2"))
    return cfg, decoder_weights(src, cfg, _NORMS)


def hf_config(cfg: ModelConfig, model: TransformerBase, common: dict):
    """The ``Gemma2Config`` of ``model`` (export)."""
    from transformers import Gemma2Config

    fields = config_fields(cfg, model, activation=_ACTIVATION[cfg.ffn])
    fields["hidden_activation"] = fields.pop("hidden_act")
    return Gemma2Config(**fields, query_pre_attn_scalar=cfg.attn_scale_dim or cfg.head_dim,
                        attn_logit_softcapping=cfg.attn_softcap, final_logit_softcapping=cfg.logit_softcap,
                        # transformers builds a sliding-window mask whether or not a layer uses it
                        sliding_window=cfg.window or cfg.max_seq_len, layer_types=layer_types(cfg, model),
                        attention_bias=False,
                        attention_dropout=0.0, **common)
