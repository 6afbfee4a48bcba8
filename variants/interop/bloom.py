"""BLOOM (``BloomForCausalLM``): ALiBi with an embedding norm, Pre-LN LayerNorm, tanh-GELU.

Its fused ``query_key_value`` rows are ordered (head, q|k|v, head_dim) and are permuted to our
(q|k|v, head, head_dim). Its ``bloom_gelu_forward`` is the tanh approximation of GELU (with
sqrt(2/pi) rounded to 0.79788456), hence ``gelu_tanh``.
Reference: BigScience Workshop 2022, "BLOOM: A 176B-Parameter Open-Access Multilingual
Language Model", arXiv:2211.05100; layout read from
``transformers/models/bloom/modeling_bloom.py``.
"""

from __future__ import annotations

from variants.config import ModelConfig
from variants.interop.common import _head, _linear, _norm, _require, _Weights
from variants.models import TransformerBase

HF_CLASS = "BloomForCausalLM"
KIND = "lm"
EXPORT_SLOTS = {"position": ("alibi",), "norm_position": ("pre",), "norm": ("layernorm",),
                "ffn": ("gelu_tanh",), "attention": ("mha",)}

BLOOM_MAX_SEQ_LEN = 2048  # BLOOM's training context; ALiBi itself has no length limit


def _heads_first_to_qkv_first(weights: dict, n_heads: int) -> dict:
    """Reorder fused rows from (head, q|k|v, head_dim) (BLOOM) to (q|k|v, head, head_dim)."""
    return {k: t.unflatten(0, (n_heads, 3, -1)).transpose(0, 1).flatten(0, 2) for k, t in weights.items()}


def convert(config, src: _Weights, common: dict) -> tuple[ModelConfig, dict]:
    """(HF config, state dict, common fields) -> (our config, our weights)."""
    _require(config, "BLOOM", apply_residual_connection_post_layernorm=False)
    d, heads = config.hidden_size, config.n_head
    cfg = ModelConfig(
        kind="lm", vocab_size=config.vocab_size, d_model=d, n_heads=heads, n_layers=config.n_layer,
        max_seq_len=BLOOM_MAX_SEQ_LEN, position="alibi", norm_position="pre", norm="layernorm",
        ffn="gelu_tanh", ffn_hidden=4 * d, bias=True, norm_eps=config.layer_norm_epsilon,
        embed_norm=True, **common)
    w = {"embed.weight": src.take("transformer.word_embeddings.weight")}
    w |= _norm(src, "decoder.embed_norm", "transformer.word_embeddings_layernorm")
    for i in range(cfg.n_layers):
        hf, ours = f"transformer.h.{i}", f"decoder.blocks.{i}"
        w |= _norm(src, f"{ours}.attn_res.norm", f"{hf}.input_layernorm")
        qkv = _linear(src, f"{ours}.attn.qkv", f"{hf}.self_attention.query_key_value")
        w |= _heads_first_to_qkv_first(qkv, heads)
        w |= _linear(src, f"{ours}.attn.out", f"{hf}.self_attention.dense")
        w |= _norm(src, f"{ours}.ffn_res.norm", f"{hf}.post_attention_layernorm")
        w |= _linear(src, f"{ours}.ffn.up", f"{hf}.mlp.dense_h_to_4h")
        w |= _linear(src, f"{ours}.ffn.down", f"{hf}.mlp.dense_4h_to_h")
    w |= _norm(src, "decoder.final_norm", "transformer.ln_f")
    return cfg, w | _head(src, cfg, "lm_head.weight", "transformer.word_embeddings.weight")


def export_misfits(cfg: ModelConfig) -> list[str]:
    """Why a composition of BLOOM's slots still does not export: its feed-forward width."""
    width = cfg.ffn_hidden or cfg.d_ff  # gelu_tanh: not gated, so its hidden width
    if width != 4 * cfg.d_model:
        return [f"a feed-forward {width} wide (model.d_ff / model.ffn_hidden) has no equivalent in {HF_CLASS}, "
                f"whose feed-forward is always 4 * d_model = {4 * cfg.d_model} wide"]
    return []


def hf_config(cfg: ModelConfig, model: TransformerBase, common: dict):
    """The ``BloomConfig`` of ``model`` (export; its feed-forward is always 4 d wide)."""
    from transformers import BloomConfig

    return BloomConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, n_layer=cfg.n_layers,
                       n_head=cfg.n_heads, layer_norm_epsilon=cfg.norm_eps,
                       apply_residual_connection_post_layernorm=False, hidden_dropout=cfg.dropout,
                       attention_dropout=cfg.dropout, **common)
