"""BERT (``BertForMaskedLM``): an encoder with learned positions, an embedding LayerNorm, Post-LN
LayerNorm blocks, a plain feed-forward and the masked-LM prediction head (``head_transform``).

Token-type embeddings are held at type 0 (a model of this project has no segments): the type-0
vector is a constant added to every embedding, so it is folded into the position table on
import, and an export writes zero token-type tables (``EXPORT_ZERO``), which the import of the
export reads back as the same positions. Separate q/k/v projections are stacked into our fused
``[q; k; v]``. The layout of the encoder and the head is shared with RoBERTa
(:mod:`variants.interop.roberta`), which differs in its names and its position offset.
Reference: Devlin et al. 2019, "BERT: Pre-training of Deep Bidirectional Transformers for
Language Understanding", arXiv:1810.04805; layout read from ``transformers/models/bert/modeling_bert.py``.
"""

from __future__ import annotations

from variants.config import ModelConfig
from variants.interop.common import _PLAIN_ACTIVATION, _PLAIN_FFN, _ffn, _head, _hidden_width, _linear, _norm, _require
from variants.interop.common import _Weights
from variants.models import TransformerBase

HF_CLASS = "BertForMaskedLM"
KIND = "encoder"
EXPORT_SLOTS = {"position": ("learned",), "norm_position": ("post",), "norm": ("layernorm",), "ffn": ("gelu",),
                "attention": ("mha",), "embed_norm": (True,), "head_transform": (True,), "bias": (True,),
                "embeddings_scaled": (False,), "logit_softcap": (None,)}
EXPORT_OPTIONS = ()  # no component setting away from its default carries over
# HF keys an export leaves at zero, read as zeros when its weights are placed (the token types)
EXPORT_ZERO = ("bert.embeddings.token_type_embeddings.weight",)
# HF keys with elements the import never reads (the head's own bias when it is not the decoder's)
EXPORT_UNREAD = ("cls.predictions.bias",)


def check(config, family: str) -> None:
    """Refuse the BERT-layout settings the composition cannot express."""
    _require(config, family, is_decoder=False, add_cross_attention=False, position_embedding_type="absolute")
    _require(config, family, " (the prediction head's activation is GELU here)", hidden_act="gelu")


def encoder(config, src: _Weights, common: dict, model: str, head: str, offset: int) -> tuple[ModelConfig, dict]:
    """The BERT layout under the prefixes ``model`` (``bert``, ``roberta``) and ``head``
    (``cls.predictions``, ``lm_head``); position ``p`` is read from row ``offset + p`` of the
    position table (RoBERTa's rows start after its padding id)."""
    cfg = ModelConfig(
        kind="encoder", vocab_size=config.vocab_size, d_model=config.hidden_size,
        n_heads=config.num_attention_heads, n_layers=config.num_hidden_layers,
        max_seq_len=config.max_position_embeddings - offset, position="learned", norm_position="post",
        norm="layernorm", ffn=_ffn(_PLAIN_FFN, config.hidden_act, HF_CLASS), ffn_hidden=config.intermediate_size,
        bias=True, norm_eps=config.layer_norm_eps, embed_norm=True, head_transform=True, **common)
    emb = f"{model}.embeddings"
    types = src.take(f"{emb}.token_type_embeddings.weight")
    positions = src.take(f"{emb}.position_embeddings.weight")[offset:]
    w = {"embed.weight": src.take(f"{emb}.word_embeddings.weight"),
         "encoder.position.table.weight": positions + types[0]}  # type 0 at every position
    w |= _norm(src, "encoder.embed_norm", f"{emb}.LayerNorm")
    w |= encoder_layers(src, cfg, f"{model}.encoder.layer")
    return cfg, w | prediction_head(src, cfg, head, f"{emb}.word_embeddings.weight")


def encoder_layers(src: _Weights, cfg: ModelConfig, layers: str, suffix: str = "") -> dict:
    """The Post-LN layers of BERT's layout under ``layers`` (``bert.encoder.layer``), each with
    ``attention.self.{query,key,value}<suffix>`` (DeBERTa's end in ``_proj``), the attention's
    output dense and LayerNorm, and ``intermediate`` / ``output`` for the feed-forward."""
    w = {}
    for i in range(cfg.n_layers):
        hf, ours = f"{layers}.{i}", f"encoder.blocks.{i}"
        w |= _linear(src, f"{ours}.attn.qkv", *(f"{hf}.attention.self.{p}{suffix}" for p in ("query", "key", "value")))
        w |= _linear(src, f"{ours}.attn.out", f"{hf}.attention.output.dense")
        w |= _norm(src, f"{ours}.attn_res.norm", f"{hf}.attention.output.LayerNorm")
        w |= _linear(src, f"{ours}.ffn.up", f"{hf}.intermediate.dense")
        w |= _linear(src, f"{ours}.ffn.down", f"{hf}.output.dense")
        w |= _norm(src, f"{ours}.ffn_res.norm", f"{hf}.output.LayerNorm")
    return w


def prediction_head(src: _Weights, cfg: ModelConfig, head: str, embedding: str) -> dict:
    """The masked-LM head under ``head``: its transform (``dense``, a LayerNorm named
    ``LayerNorm`` or ``layer_norm``), the output projection ``decoder`` and its bias."""
    w = _linear(src, "head_transform.dense", f"{head}.transform.dense" if src.has(f"{head}.transform.dense.weight")
                else f"{head}.dense")
    for norm in (f"{head}.transform.LayerNorm", f"{head}.layer_norm"):
        if src.has(f"{norm}.weight"):
            w |= _norm(src, "head_transform.norm", norm)
    w["head_bias"] = src.take(f"{head}.decoder.bias")  # the bias the forward pass adds
    if src.has(f"{head}.bias"):  # the same tensor when tied; otherwise a copy the forward pass never reads
        src.take(f"{head}.bias")
    return w | _head(src, cfg, f"{head}.decoder.weight", embedding)


def convert(config, src: _Weights, common: dict) -> tuple[ModelConfig, dict]:
    """(HF config, state dict, common fields) -> (our config, our weights)."""
    check(config, "BERT")
    return encoder(config, src, common, "bert", "cls.predictions", offset=0)


def encoder_config(cfg: ModelConfig, model: TransformerBase, offset: int) -> dict:
    """The ``BertConfig`` fields of ``model`` (export), the position table ``offset`` rows longer."""
    return dict(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layers,
                num_attention_heads=cfg.n_heads, intermediate_size=_hidden_width(model),
                hidden_act=_PLAIN_ACTIVATION[cfg.ffn], max_position_embeddings=cfg.max_seq_len + offset,
                layer_norm_eps=cfg.norm_eps, hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.dropout)


def hf_config(cfg: ModelConfig, model: TransformerBase, common: dict):
    """The ``BertConfig`` of ``model`` (export)."""
    from transformers import BertConfig

    return BertConfig(**encoder_config(cfg, model, offset=0), **common)
