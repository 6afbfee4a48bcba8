"""GPT-2 (``GPT2LMHeadModel``): learned positions, Pre-LN LayerNorm, a plain feed-forward.

Its ``Conv1D`` layers store weights as (in, out), so they are transposed on the way in.
Reference: Radford et al. 2019, "Language Models are Unsupervised Multitask Learners";
layout read from ``transformers/models/gpt2/modeling_gpt2.py``.
"""

from __future__ import annotations

from variants.config import ModelConfig
from variants.interop.common import (_PLAIN_ACTIVATION, _PLAIN_FFN, _ffn, _head, _hidden_width, _linear, _norm,
                                    _require, _Weights)
from variants.models import TransformerBase

HF_CLASS = "GPT2LMHeadModel"
KIND = "lm"
# the slots a GPT-2 export fixes (the position scheme picks the family)
EXPORT_SLOTS = {"position": ("learned",), "norm_position": ("pre",), "norm": ("layernorm",),
                "ffn": ("gelu_tanh", "gelu", "relu", "silu"), "attention": ("mha",)}


def convert(config, src: _Weights, common: dict) -> tuple[ModelConfig, dict]:
    """(HF config, state dict, common fields) -> (our config, our weights)."""
    _require(config, "GPT-2", scale_attn_weights=True, scale_attn_by_inverse_layer_idx=False,
             add_cross_attention=False)
    cfg = ModelConfig(
        kind="lm", vocab_size=config.vocab_size, d_model=config.n_embd, n_heads=config.n_head,
        n_layers=config.n_layer, max_seq_len=config.n_positions, position="learned",
        norm_position="pre", norm="layernorm", ffn=_ffn(_PLAIN_FFN, config.activation_function, "GPT-2"),
        ffn_hidden=config.n_inner or 4 * config.n_embd, bias=True,
        norm_eps=config.layer_norm_epsilon, **common)
    w = {"embed.weight": src.take("transformer.wte.weight"),
         "decoder.position.table.weight": src.take("transformer.wpe.weight")}
    for i in range(cfg.n_layers):
        hf, ours = f"transformer.h.{i}", f"decoder.blocks.{i}"
        w |= _norm(src, f"{ours}.attn_res.norm", f"{hf}.ln_1")
        w |= _linear(src, f"{ours}.attn.qkv", f"{hf}.attn.c_attn", conv1d=True)
        w |= _linear(src, f"{ours}.attn.out", f"{hf}.attn.c_proj", conv1d=True)
        w |= _norm(src, f"{ours}.ffn_res.norm", f"{hf}.ln_2")
        w |= _linear(src, f"{ours}.ffn.up", f"{hf}.mlp.c_fc", conv1d=True)
        w |= _linear(src, f"{ours}.ffn.down", f"{hf}.mlp.c_proj", conv1d=True)
    w |= _norm(src, "decoder.final_norm", "transformer.ln_f")
    return cfg, w | _head(src, cfg, "lm_head.weight", "transformer.wte.weight")


def hf_config(cfg: ModelConfig, model: TransformerBase, common: dict):
    """The ``GPT2Config`` of ``model`` (export)."""
    from transformers import GPT2Config

    return GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.max_seq_len, n_embd=cfg.d_model,
                      n_layer=cfg.n_layers, n_head=cfg.n_heads, n_inner=_hidden_width(model),
                      activation_function=_PLAIN_ACTIVATION[cfg.ffn], layer_norm_epsilon=cfg.norm_eps,
                      resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout, **common)
