"""LLaMA (``LlamaForCausalLM``): RoPE, Pre-LN RMSNorm, a gated feed-forward; and the layout its
descendants share (:mod:`~variants.interop.mistral`, :mod:`~variants.interop.qwen2`,
:mod:`~variants.interop.qwen3`, :mod:`~variants.interop.olmo2` build on the helpers here).

Its separate q/k/v projections are stacked into our fused ``[q; k; v]``, and its gate and up
projections into ``gate_up = [gate; up]``; ``hidden_act`` picks the matching gated entry.
Fewer key/value heads than query heads import as ``gqa`` (Llama 2 70B, Llama 3), a ``head_dim``
apart from ``hidden_size / num_attention_heads`` as the attention's ``head_dim``, and linear,
``llama3`` and YaRN RoPE scaling as the ``rope`` settings; partial rotary embeddings are refused.
Reference: Touvron et al. 2023, "LLaMA: Open and Efficient Foundation Language Models",
arXiv:2302.13971; layout read from ``transformers/models/llama/modeling_llama.py``.
"""

from __future__ import annotations

from typing import Optional

from variants.config import ModelConfig
from variants.interop.common import _GATED_FFN, _ffn, _head, _hidden_width, _linear, _norm, _require, _Weights
from variants.models import TransformerBase

HF_CLASS = "LlamaForCausalLM"
KIND = "lm"
GATED = ("swiglu", "geglu", "reglu")
EXPORT_SLOTS = {"position": ("rope",), "norm_position": ("pre",), "norm": ("rmsnorm",), "ffn": GATED,
                "attention": ("mha", "gqa")}
# the settings of the RoPE scaling that every LLaMA-like family carries in ``rope_parameters``
ROPE_OPTIONS = ("rope_scaling", "rope_factor", "rope_original_max_len", "rope_low_freq_factor",
                "rope_high_freq_factor", "rope_beta_fast", "rope_beta_slow")
# the settings away from their defaults that an export can carry (others pick another family)
EXPORT_OPTIONS = ("n_kv_heads", "head_dim") + ROPE_OPTIONS
_ACTIVATION = {"swiglu": "silu", "geglu": "gelu", "reglu": "relu"}  # gated entry -> hidden_act


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


def attention_settings(config) -> dict:
    """``n_heads`` and the attention entry and settings of a LLaMA-like config: ``gqa`` with
    ``n_kv_heads`` for fewer key/value heads, ``head_dim`` when it is not hidden_size / heads."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    settings = {"n_heads": heads}
    settings |= {"attention": "gqa", "n_kv_heads": kv_heads} if kv_heads != heads else {"attention": "mha"}
    head_dim = getattr(config, "head_dim", None)
    if head_dim is not None and head_dim * heads != config.hidden_size:
        settings["head_dim"] = head_dim
    return settings


def window_settings(config, family: str) -> dict:
    """The sliding window of a config with ``sliding_window`` and per-layer ``layer_types``
    (Qwen 2 and 3): every layer local, every n-th layer global (``window_global_every``), or
    none; another pattern of local layers is refused. A key may see a query fewer than
    ``sliding_window`` positions back in both (transformers' ``sliding_window_overlay``:
    ``kv_idx > q_idx - sliding_window``), so the window carries over as it is."""
    window = getattr(config, "sliding_window", None)
    types = list(getattr(config, "layer_types", None) or ["sliding_attention"] * config.num_hidden_layers)
    local = [kind == "sliding_attention" for kind in types]
    if window is None or not any(local):
        return {}
    if all(local):
        return {"window": window}
    for every in range(2, len(local) + 1):
        if local == [(i + 1) % every != 0 for i in range(len(local))]:
            return {"window": window, "window_global_every": every}
    raise NotImplementedError(f"{family} with layer_types={types} cannot be imported (sliding-window layers "
                              f"either everywhere or all but every n-th layer)")


def layer_types(cfg: ModelConfig, model: TransformerBase) -> list[str]:
    """``layer_types`` of ``model`` (export): sliding or full attention per layer."""
    return ["sliding_attention" if block.attn.local(i) else "full_attention"
            for i, block in enumerate(model.decoder.blocks)]


def mlp_weights(src: _Weights, ours: str, hf: str) -> dict:
    """One layer's gated feed-forward: ``mlp.{gate,up,down}_proj`` as our ``gate_up`` and ``down``."""
    return (_linear(src, f"{ours}.ffn.gate_up", f"{hf}.mlp.gate_proj", f"{hf}.mlp.up_proj")
            | _linear(src, f"{ours}.ffn.down", f"{hf}.mlp.down_proj"))


def decoder_weights(src: _Weights, cfg: ModelConfig, norms: Optional[dict] = None, ffn=mlp_weights) -> dict:
    """Our weights from a LLaMA-like state dict (``model.layers.{i}.self_attn.{q,k,v,o}_proj``,
    ``mlp.{gate,up,down}_proj``, ``model.norm``, ``lm_head``). ``norms``: our norm -> the HF norm
    of each layer (LLaMA's input and post-attention norms by default); the attention's
    ``q_norm`` / ``k_norm`` when the config has a QK-norm. ``ffn(src, ours, hf)``: one layer's
    feed-forward weights (:func:`mlp_weights`; Mixtral's experts)."""
    norms = norms or {"attn_res.norm": "input_layernorm", "ffn_res.norm": "post_attention_layernorm"}
    w = {"embed.weight": src.take("model.embed_tokens.weight")}
    for i in range(cfg.n_layers):
        hf, ours = f"model.layers.{i}", f"decoder.blocks.{i}"
        for mine, theirs in norms.items():
            w |= _norm(src, f"{ours}.{mine}", f"{hf}.{theirs}")
        w |= _linear(src, f"{ours}.attn.qkv", *(f"{hf}.self_attn.{p}_proj" for p in "qkv"))
        w |= _linear(src, f"{ours}.attn.out", f"{hf}.self_attn.o_proj")
        if cfg.qk_norm != "none":
            w[f"{ours}.attn.qk_norms.q_weight"] = src.take(f"{hf}.self_attn.q_norm.weight")
            w[f"{ours}.attn.qk_norms.k_weight"] = src.take(f"{hf}.self_attn.k_norm.weight")
        w |= ffn(src, ours, hf)
    w |= _norm(src, "decoder.final_norm", "model.norm")
    return w | _head(src, cfg, "lm_head.weight", "model.embed_tokens.weight")


def model_config(config, family: str, common: dict, ffn: Optional[str] = None, **fields) -> ModelConfig:
    """The :class:`ModelConfig` of a LLaMA-like ``config``: sizes, heads, RoPE and the gated
    feed-forward read from it (``ffn``: the entry, for a config that names its activation
    otherwise than ``hidden_act``); ``fields`` the rest (norm placement, biases, settings)."""
    return ModelConfig(
        kind="lm", vocab_size=config.vocab_size, d_model=config.hidden_size, n_layers=config.num_hidden_layers,
        max_seq_len=config.max_position_embeddings, position="rope", norm="rmsnorm",
        ffn=ffn or _ffn(_GATED_FFN, config.hidden_act, family), ffn_hidden=config.intermediate_size,
        norm_eps=config.rms_norm_eps, **_rope(config), **attention_settings(config), **fields, **common)


def config_fields(cfg: ModelConfig, model: TransformerBase, activation: Optional[str] = None) -> dict:
    """The fields every LLaMA-like Hugging Face config shares, from ``model`` (export);
    ``activation``: ``hidden_act``, for an entry LLaMA's table does not name."""
    return dict(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=_hidden_width(model),
                num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
                num_key_value_heads=model.decoder.blocks[0].attn.n_kv_heads, head_dim=cfg.head_dim,
                hidden_act=activation or _ACTIVATION[cfg.ffn], max_position_embeddings=cfg.max_seq_len,
                rms_norm_eps=cfg.norm_eps, rope_parameters=_rope_parameters(cfg))


def convert(config, src: _Weights, common: dict) -> tuple[ModelConfig, dict]:
    """(HF config, state dict, common fields) -> (our config, our weights)."""
    bias = bool(getattr(config, "attention_bias", False))
    _require(config, "LLaMA", " (one bias flag for attention and MLP)", mlp_bias=bias)
    cfg = model_config(config, "LLaMA", common, norm_position="pre", bias=bias)
    return cfg, decoder_weights(src, cfg)


def hf_config(cfg: ModelConfig, model: TransformerBase, common: dict):
    """The ``LlamaConfig`` of ``model`` (export)."""
    from transformers import LlamaConfig

    return LlamaConfig(**config_fields(cfg, model),
                       rope_theta=cfg.rope_base,  # where transformers < 5 reads it
                       attention_bias=cfg.bias, mlp_bias=cfg.bias, attention_dropout=cfg.dropout, **common)
