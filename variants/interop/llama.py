"""LLaMA (``LlamaForCausalLM``): RoPE, Pre-LN RMSNorm, a gated feed-forward.

Its separate q/k/v projections are stacked into our fused ``[q; k; v]``, and its gate and up
projections into ``gate_up = [gate; up]``; ``hidden_act`` picks the matching gated entry.
Fewer key/value heads than query heads import as ``gqa`` (Llama 2 70B, Llama 3), and linear,
``llama3`` and YaRN RoPE scaling as the ``rope`` settings; partial rotary embeddings are refused.
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
                "ffn": ("swiglu", "geglu", "reglu"), "attention": ("mha", "gqa")}


_SCALING_KEYS = {"linear": {"factor": "rope_factor"},
                 "llama3": {"factor": "rope_factor", "original_max_position_embeddings": "rope_original_max_len",
                            "low_freq_factor": "rope_low_freq_factor", "high_freq_factor": "rope_high_freq_factor"},
                 "yarn": {"factor": "rope_factor", "original_max_position_embeddings": "rope_original_max_len",
                          "beta_fast": "rope_beta_fast", "beta_slow": "rope_beta_slow"}}


def _rope(config) -> dict:
    """``rope_base`` and the RoPE scaling settings of ``config``; refuse what has no counterpart
    (another rope_type, a YaRN attention factor or mscale of its own, partial rotary)."""
    params = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    kind = params.pop("rope_type", params.pop("type", "default"))
    base = params.pop("rope_theta", getattr(config, "rope_theta", 10000.0))
    partial = params.pop("partial_rotary_factor", getattr(config, "partial_rotary_factor", 1.0))
    if partial != 1.0:
        raise NotImplementedError(f"partial rotary embeddings are not supported "
                                  f"(partial_rotary_factor={partial})")
    settings = {"rope_base": float(base)}
    if kind == "default" and not params:
        return settings
    if params.get("truncate") is True:  # YaRN's default
        del params["truncate"]
    params = {k: v for k, v in params.items() if not (v is None and k in ("attention_factor", "mscale", "mscale_all_dim"))}
    names = _SCALING_KEYS.get(kind)
    unknown = {k: v for k, v in params.items() if names is None or k not in names}
    if unknown or names is None:
        raise NotImplementedError(f"RoPE scaling rope_type={kind!r} with parameters {unknown or params} is not "
                                  f"supported; linear, llama3 and yarn (without attention_factor or mscale) import")
    settings["rope_scaling"] = kind
    settings.update({ours: float(params[theirs]) if ours != "rope_original_max_len" else int(params[theirs])
                     for theirs, ours in names.items() if params.get(theirs) is not None})
    if settings.get("rope_original_max_len") == max(1, round(config.max_position_embeddings / settings["rope_factor"])):
        del settings["rope_original_max_len"]  # what the setting defaults to
    return settings


def _rope_parameters(cfg: ModelConfig) -> dict:
    """The ``rope_parameters`` of ``cfg`` (export): its base and, when scaled, the scaling."""
    params = {"rope_type": "default" if cfg.rope_scaling == "none" else cfg.rope_scaling, "rope_theta": cfg.rope_base}
    for theirs, ours in _SCALING_KEYS.get(cfg.rope_scaling, {}).items():
        value = getattr(cfg, ours)
        if ours == "rope_original_max_len" and value is None:
            value = max(1, round(cfg.max_seq_len / cfg.rope_factor))
        params[theirs] = value
    return params


def convert(config, src: _Weights, common: dict) -> tuple[ModelConfig, dict]:
    """(HF config, state dict, common fields) -> (our config, our weights)."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    attention = {"attention": "gqa", "n_kv_heads": kv_heads} if kv_heads != heads else {"attention": "mha"}
    bias = bool(getattr(config, "attention_bias", False))
    _require(config, "LLaMA", " (one bias flag for attention and MLP)", mlp_bias=bias)
    _require(config, "LLaMA", " (hidden_size / num_attention_heads)",
             head_dim=config.hidden_size // heads)
    cfg = ModelConfig(
        kind="lm", vocab_size=config.vocab_size, d_model=config.hidden_size, n_heads=heads,
        n_layers=config.num_hidden_layers, max_seq_len=config.max_position_embeddings,
        position="rope", norm_position="pre", norm="rmsnorm",
        ffn=_ffn(_GATED_FFN, config.hidden_act, "LLaMA"), ffn_hidden=config.intermediate_size,
        bias=bias, norm_eps=config.rms_norm_eps, **_rope(config), **attention, **common)
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
                       num_key_value_heads=model.decoder.blocks[0].attn.n_kv_heads, head_dim=cfg.head_dim, hidden_act=activation[cfg.ffn],
                       max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.norm_eps,
                       rope_parameters=_rope_parameters(cfg),
                       rope_theta=cfg.rope_base,  # where transformers < 5 reads it
                       attention_bias=cfg.bias, mlp_bias=cfg.bias, attention_dropout=cfg.dropout, **common)
