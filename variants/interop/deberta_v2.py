"""DeBERTa-v2 and v3 (``DebertaV2ForMaskedLM``, model_type ``deberta-v2``): an encoder with
disentangled attention (position ``deberta``), an embedding LayerNorm, Post-LN LayerNorm blocks, a
plain feed-forward and the masked-LM prediction head (``head_transform``).

The relative embeddings (``rel_embeddings``, 2 x ``position_buckets`` rows) and their LayerNorm
become the ``deberta`` scheme's table and norm; ``position_buckets`` and ``max_relative_positions``
(``max_position_embeddings`` when below 1) its ``deberta_buckets`` and ``deberta_max_distance``.
The layout read is DeBERTa-v3's: relative attention with both extra terms (``pos_att_type`` c2p
and p2c), projected by the layer's own query and key projections (``share_att_key``), the table
normed (``norm_rel_ebd: layer_norm``), no absolute positions, no convolution after the first
layer, embeddings as wide as the hidden states; anything else is refused by name. Token-type
embeddings, when the config has them, are held at type 0: that row is a constant added to every
embedding, folded into the token embeddings of an untied model (a tied one must have it zero,
since the output head reads the same table). Both heads import: the legacy one (BERT's layout,
``cls.predictions``, the default) and DeBERTa's own (``lm_predictions.lm_head``, always reading the
token embeddings); an export writes the legacy layout with no token types.
Reference: He et al. 2021, "DeBERTa: Decoding-enhanced BERT with Disentangled Attention",
arXiv:2006.03654; He et al. 2021, "DeBERTaV3", arXiv:2111.09543; layout read from
``transformers/models/deberta_v2/modeling_deberta_v2.py``.
"""

from __future__ import annotations

from variants.config import ModelConfig
from variants.interop.bert import encoder_layers, prediction_head
from variants.interop.common import _PLAIN_ACTIVATION, _PLAIN_FFN, _ffn, _hidden_width, _linear, _norm, _require
from variants.interop.common import _Weights
from variants.models import TransformerBase

HF_CLASS = "DebertaV2ForMaskedLM"
KIND = "encoder"
EXPORT_SLOTS = {"position": ("deberta",), "norm_position": ("post",), "norm": ("layernorm",), "ffn": ("gelu",),
                "attention": ("mha",), "embed_norm": (True,), "head_transform": (True,), "bias": (True,),
                "embeddings_scaled": (False,), "logit_softcap": (None,)}
EXPORT_OPTIONS = ("deberta_buckets", "deberta_max_distance")  # the scheme's settings carry over
# HF keys with elements the import never reads (the legacy head's own bias when it is not the decoder's)
EXPORT_UNREAD = ("cls.predictions.bias",)

_FAMILY = "DeBERTa-v2"


def check(config) -> None:
    """Refuse the DeBERTa settings the composition cannot express (the settings DeBERTa reads with a
    default of its own are compared with that default when absent)."""
    _require(config, _FAMILY, " (the disentangled attention of position 'deberta')", relative_attention=True)
    _require(config, _FAMILY, " (position 'deberta' adds no absolute positions to the embeddings)",
             position_biased_input=False)
    _require(config, _FAMILY, " (the prediction head's activation is GELU here)", hidden_act="gelu")
    terms = sorted(config.pos_att_type or [])
    if terms != ["c2p", "p2c"]:
        raise NotImplementedError(f"{_FAMILY} with pos_att_type={config.pos_att_type!r} cannot be imported "
                                  f"(position 'deberta' adds both terms: needs ['p2c', 'c2p'])")
    found = {"share_att_key": getattr(config, "share_att_key", False),
             "norm_rel_ebd": getattr(config, "norm_rel_ebd", "none"),
             "conv_kernel_size": getattr(config, "conv_kernel_size", 0),
             "embedding_size": getattr(config, "embedding_size", config.hidden_size),
             "attention_head_size": getattr(config, "attention_head_size",
                                            config.hidden_size // config.num_attention_heads)}
    needed = {"share_att_key": (True, "the relative embeddings projected by the layer's own query and key"),
              "norm_rel_ebd": ("layer_norm", "the relative embeddings normed by a LayerNorm"),
              "conv_kernel_size": (0, "no convolution after the first layer"),
              "embedding_size": (config.hidden_size, "embeddings as wide as the hidden states"),
              "attention_head_size": (config.hidden_size // config.num_attention_heads, "heads of hidden / heads")}
    for name, (want, why) in needed.items():
        value = found[name]
        if (value.lower().replace(" ", "") if isinstance(value, str) else value) != want:
            raise NotImplementedError(f"{_FAMILY} with {name}={value!r} cannot be imported (needs {want!r}: {why})")
    if getattr(config, "position_buckets", -1) < 1:
        raise NotImplementedError(f"{_FAMILY} with position_buckets={getattr(config, 'position_buckets', -1)!r} "
                                  f"cannot be imported (position 'deberta' buckets distances: needs at least 1)")


def convert(config, src: _Weights, common: dict) -> tuple[ModelConfig, dict]:
    """(HF config, state dict, common fields) -> (our config, our weights)."""
    check(config)
    legacy = getattr(config, "legacy", True)
    tied = common["tie_embeddings"] or not legacy  # DeBERTa's own head always reads the token embeddings
    max_distance = config.max_relative_positions
    cfg = ModelConfig(
        kind="encoder", vocab_size=config.vocab_size, d_model=config.hidden_size,
        n_heads=config.num_attention_heads, n_layers=config.num_hidden_layers,
        max_seq_len=config.max_position_embeddings, position="deberta", deberta_buckets=config.position_buckets,
        deberta_max_distance=max_distance if max_distance >= 1 else config.max_position_embeddings,
        norm_position="post", norm="layernorm", ffn=_ffn(_PLAIN_FFN, config.hidden_act, HF_CLASS),
        ffn_hidden=config.intermediate_size, bias=True, norm_eps=config.layer_norm_eps, embed_norm=True,
        head_transform=True, **{**common, "tie_embeddings": tied})
    emb = "deberta.embeddings"
    words = src.take(f"{emb}.word_embeddings.weight")
    w = {"embed.weight": words}
    if src.has(f"{emb}.token_type_embeddings.weight"):  # type 0 at every token
        type_zero = src.take(f"{emb}.token_type_embeddings.weight")[0]
        if not tied:
            w["embed.weight"] = words + type_zero
        elif bool(type_zero.any()):
            raise NotImplementedError(f"{_FAMILY} with a non-zero token-type embedding and tied output embeddings "
                                      f"cannot be imported (type 0 cannot be folded into a table the head reads)")
    w |= _norm(src, "encoder.embed_norm", f"{emb}.LayerNorm")
    w["encoder.position.table.weight"] = src.take("deberta.encoder.rel_embeddings.weight")
    w |= _norm(src, "encoder.position.norm", "deberta.encoder.LayerNorm")
    w |= encoder_layers(src, cfg, "deberta.encoder.layer", suffix="_proj")
    if legacy:
        return cfg, w | prediction_head(src, cfg, "cls.predictions", f"{emb}.word_embeddings.weight")
    head = "lm_predictions.lm_head"
    w |= _linear(src, "head_transform.dense", f"{head}.dense")
    w |= _norm(src, "head_transform.norm", f"{head}.LayerNorm")
    w["head_bias"] = src.take(f"{head}.bias")
    return cfg, w


def hf_config(cfg: ModelConfig, model: TransformerBase, common: dict):
    """The ``DebertaV2Config`` of ``model`` (export): DeBERTa-v3's attention layout, the legacy head,
    no token types."""
    from transformers import DebertaV2Config

    return DebertaV2Config(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads, intermediate_size=_hidden_width(model), hidden_act=_PLAIN_ACTIVATION[cfg.ffn],
        max_position_embeddings=cfg.max_seq_len, type_vocab_size=0, layer_norm_eps=cfg.norm_eps,
        relative_attention=True, position_biased_input=False, pos_att_type=["p2c", "c2p"],
        position_buckets=cfg.deberta_buckets, max_relative_positions=cfg.deberta_max_distance, share_att_key=True,
        norm_rel_ebd="layer_norm", legacy=True, hidden_dropout_prob=cfg.dropout,
        attention_probs_dropout_prob=cfg.dropout, **common)

