"""Marian (``MarianMTModel``): an encoder-decoder with sinusoids, Post-LN LayerNorm and a plain
feed-forward taken from the config's activation name.

Its separate q/k/v projections are stacked into our fused ``[q; k; v]`` (``[k; v]`` for
cross-attention); its fixed sinusoid tables are checked against ours rather than copied, and a
non-zero ``final_logits_bias`` is refused (our output head has no bias).
References: Junczys-Dowmunt et al. 2018, "Marian: Fast Neural Machine Translation in C++",
arXiv:1804.00344; OPUS-MT: Tiedemann & Thottingal 2020, EAMT; layout read from
``transformers/models/marian/modeling_marian.py``.
"""

from __future__ import annotations

import torch

from variants.config import ModelConfig
from variants.interop.common import (_PLAIN_ACTIVATION, _PLAIN_FFN, _ffn, _head, _hidden_width, _linear, _norm,
                                    _require, _Weights)
from variants.models import TransformerBase
from variants.positions import Sinusoidal

HF_CLASS = "MarianMTModel"
KIND = "seq2seq"
EXPORT_SLOTS = {"position": ("sinusoidal",), "norm_position": ("post",), "norm": ("layernorm",),
                "ffn": ("gelu_tanh", "gelu", "relu", "silu"), "attention": ("mha",)}


def _check_sinusoid(src: _Weights, key: str, cfg: ModelConfig) -> None:
    """Marian keeps a fixed sinusoid table; ours is computed: make sure they agree."""
    if not src.has(key):
        return
    table = src.take(key)
    tolerance = max(1e-3, torch.finfo(table.dtype).eps)  # a bf16/fp16 copy is rounded
    expected = Sinusoidal(cfg).table(torch.arange(table.size(0)))
    if not torch.allclose(table.float().cpu(), expected, atol=tolerance):
        raise NotImplementedError(f"{key!r} is not the [sin | cos] sinusoid table of 'sinusoidal'")


def _block(src: _Weights, ours: str, hf: str, cross: bool) -> dict:
    """One encoder (or, with ``cross``, decoder) layer."""
    w = _linear(src, f"{ours}.attn.qkv", *(f"{hf}.self_attn.{p}_proj" for p in "qkv"))
    w |= _linear(src, f"{ours}.attn.out", f"{hf}.self_attn.out_proj")
    w |= _norm(src, f"{ours}.attn_res.norm", f"{hf}.self_attn_layer_norm")
    if cross:
        w |= _linear(src, f"{ours}.cross_attn.q", f"{hf}.encoder_attn.q_proj")
        w |= _linear(src, f"{ours}.cross_attn.kv", f"{hf}.encoder_attn.k_proj", f"{hf}.encoder_attn.v_proj")
        w |= _linear(src, f"{ours}.cross_attn.out", f"{hf}.encoder_attn.out_proj")
        w |= _norm(src, f"{ours}.cross_res.norm", f"{hf}.encoder_attn_layer_norm")
    w |= _linear(src, f"{ours}.ffn.up", f"{hf}.fc1")
    w |= _linear(src, f"{ours}.ffn.down", f"{hf}.fc2")
    return w | _norm(src, f"{ours}.ffn_res.norm", f"{hf}.final_layer_norm")


def convert(config, src: _Weights, common: dict) -> tuple[ModelConfig, dict]:
    """(HF config, state dict, common fields) -> (our config, our weights)."""
    _require(config, "Marian", " (one embedding for source and target)",
             share_encoder_decoder_embeddings=True, decoder_vocab_size=config.vocab_size)
    _require(config, "Marian", " (encoder and decoder share n_heads and ffn width)",
             decoder_attention_heads=config.encoder_attention_heads,
             decoder_ffn_dim=config.encoder_ffn_dim)
    if src.take("final_logits_bias").any():
        raise NotImplementedError("Marian with a non-zero final_logits_bias is not supported "
                                  "(our output head has no bias)")
    cfg = ModelConfig(
        kind="seq2seq", vocab_size=config.vocab_size, d_model=config.d_model,
        n_heads=config.encoder_attention_heads, n_layers=config.encoder_layers,
        n_encoder_layers=config.encoder_layers, n_decoder_layers=config.decoder_layers,
        max_seq_len=config.max_position_embeddings, position="sinusoidal", norm_position="post",
        norm="layernorm", ffn=_ffn(_PLAIN_FFN, config.activation_function, "Marian"),
        ffn_hidden=config.encoder_ffn_dim, bias=True, norm_eps=1e-5,  # nn.LayerNorm's default
        scale_embeddings=bool(config.scale_embedding), **common)
    w = {"embed.weight": src.take("model.shared.weight")}
    for stack in ("encoder", "decoder"):
        src.tied(f"model.{stack}.embed_tokens.weight", "model.shared.weight")
        _check_sinusoid(src, f"model.{stack}.embed_positions.weight", cfg)
    for i in range(cfg.encoder_layers):
        w |= _block(src, f"encoder.blocks.{i}", f"model.encoder.layers.{i}", cross=False)
    for i in range(cfg.decoder_layers):
        w |= _block(src, f"decoder.blocks.{i}", f"model.decoder.layers.{i}", cross=True)
    return cfg, w | _head(src, cfg, "lm_head.weight", "model.shared.weight")


def hf_config(cfg: ModelConfig, model: TransformerBase, common: dict):
    """The ``MarianConfig`` of ``model`` (export; ``bos_token_id`` becomes the decoder start)."""
    from transformers import MarianConfig

    width = _hidden_width(model)
    return MarianConfig(vocab_size=cfg.vocab_size, decoder_vocab_size=cfg.vocab_size, d_model=cfg.d_model,
                        encoder_layers=cfg.encoder_layers, decoder_layers=cfg.decoder_layers,
                        encoder_attention_heads=cfg.n_heads, decoder_attention_heads=cfg.n_heads,
                        encoder_ffn_dim=width, decoder_ffn_dim=width,
                        activation_function=_PLAIN_ACTIVATION[cfg.ffn], max_position_embeddings=cfg.max_seq_len,
                        scale_embedding=cfg.embeddings_scaled,
                        share_encoder_decoder_embeddings=True, dropout=cfg.dropout, attention_dropout=cfg.dropout,
                        activation_dropout=0.0, decoder_start_token_id=common.pop("bos_token_id"), **common)
