"""LLaMA (``LlamaForCausalLM``): RoPE, Pre-LN RMSNorm, a gated feed-forward.

Its separate q/k/v projections are stacked into our fused ``[q; k; v]``, and its gate and up
projections into ``gate_up = [gate; up]``; ``hidden_act`` picks the matching gated entry.
Grouped-query attention, RoPE scaling and partial rotary embeddings are refused.
Reference: Touvron et al. 2023, "LLaMA: Open and Efficient Foundation Language Models",
arXiv:2302.13971; layout read from ``transformers/models/llama/modeling_llama.py``.
"""

from __future__ import annotations

from variants.config import ModelConfig
from variants.interop.common import _GATED_FFN, _ffn, _head, _hidden_width, _linear, _norm, _require, _Weights
from variants.models import TransformerBase

HF_CLASS = "LlamaForCausalLM"
KIND = "lm"
EXPORT_SLOTS = {"position": ("rope",), "norm_position": ("pre",), "norm": ("rmsnorm",),
                "ffn": ("swiglu", "geglu", "reglu"), "attention": ("mha",)}


def _rope_base(config) -> float:
    """``rope_theta`` of plain RoPE; refuse scaled or partial rotary embeddings."""
    params = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    kind = params.pop("rope_type", params.pop("type", "default"))
    base = params.pop("rope_theta", getattr(config, "rope_theta", 10000.0))
    partial = params.pop("partial_rotary_factor", getattr(config, "partial_rotary_factor", 1.0))
    if kind != "default" or params:
        raise NotImplementedError(
            f"RoPE scaling is not supported (rope_type={kind!r}, parameters {params}); "
            f"only plain RoPE with rope_theta imports")
    if partial != 1.0:
        raise NotImplementedError(f"partial rotary embeddings are not supported "
                                  f"(partial_rotary_factor={partial})")
    return float(base)


def convert(config, src: _Weights, common: dict) -> tuple[ModelConfig, dict]:
    """(HF config, state dict, common fields) -> (our config, our weights)."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    if kv_heads != heads:
        raise NotImplementedError(
            f"grouped-query attention is not supported: num_key_value_heads={kv_heads} != "
            f"num_attention_heads={heads} (attention 'mha' has one key/value head per query head)")
    bias = bool(getattr(config, "attention_bias", False))
    _require(config, "LLaMA", " (one bias flag for attention and MLP)", mlp_bias=bias)
    _require(config, "LLaMA", " (hidden_size / num_attention_heads)",
             head_dim=config.hidden_size // heads)
    cfg = ModelConfig(
        kind="lm", vocab_size=config.vocab_size, d_model=config.hidden_size, n_heads=heads,
        n_layers=config.num_hidden_layers, max_seq_len=config.max_position_embeddings,
        position="rope", norm_position="pre", norm="rmsnorm",
        ffn=_ffn(_GATED_FFN, config.hidden_act, "LLaMA"), ffn_hidden=config.intermediate_size,
        bias=bias, norm_eps=config.rms_norm_eps, rope_base=_rope_base(config), **common)
    w = {"embed.weight": src.take("model.embed_tokens.weight")}
    for i in range(cfg.n_layers):
        hf, ours = f"model.layers.{i}", f"decoder.blocks.{i}"
        w |= _norm(src, f"{ours}.attn_res.norm", f"{hf}.input_layernorm")
        w |= _linear(src, f"{ours}.attn.qkv", *(f"{hf}.self_attn.{p}_proj" for p in "qkv"))
        w |= _linear(src, f"{ours}.attn.out", f"{hf}.self_attn.o_proj")
        w |= _norm(src, f"{ours}.ffn_res.norm", f"{hf}.post_attention_layernorm")
        w |= _linear(src, f"{ours}.ffn.gate_up", f"{hf}.mlp.gate_proj", f"{hf}.mlp.up_proj")
        w |= _linear(src, f"{ours}.ffn.down", f"{hf}.mlp.down_proj")
    w |= _norm(src, "decoder.final_norm", "model.norm")
    return cfg, w | _head(src, cfg, "lm_head.weight", "model.embed_tokens.weight")


def hf_config(cfg: ModelConfig, model: TransformerBase, common: dict):
    """The ``LlamaConfig`` of ``model`` (export)."""
    from transformers import LlamaConfig

    activation = {"swiglu": "silu", "geglu": "gelu", "reglu": "relu"}
    return LlamaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=_hidden_width(model),
                       num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
                       num_key_value_heads=cfg.n_heads, head_dim=cfg.head_dim, hidden_act=activation[cfg.ffn],
                       max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.norm_eps,
                       rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_base},
                       rope_theta=cfg.rope_base,  # where transformers < 5 reads it
                       attention_bias=cfg.bias, mlp_bias=cfg.bias, attention_dropout=cfg.dropout, **common)
