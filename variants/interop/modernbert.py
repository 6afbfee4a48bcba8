"""ModernBERT (``ModernBertForMaskedLM``): an encoder with RoPE, Pre-LN LayerNorm without biases, a
gated GELU feed-forward (``Wi = [input; gate]``, our ``gate_up`` as it stands), a LayerNorm on the
embeddings that also serves the first block's attention (``skip_first_norm``), sliding-window
attention on all but every n-th layer starting with the first (``window_global_every`` with
``window_global_from: 0``; its ``global_attn_every_n_layers``, read first, since fewer layers than n
+ 1 fit several patterns), a RoPE base of its own on the window layers (``rope_local_base``) and the
masked-LM prediction head (``head_transform``, its output bias ``decoder.bias``).

Its bidirectional window lets a query see the keys at most ``local_attention / 2`` positions away
(``masking_utils.sliding_window_bidirectional_overlay``: ``|q - kv| <= sliding_window``), ours those
fewer than ``window`` away: ``window = local_attention / 2 + 1``. Refused, by name: biases on some
layers and not others (``attention_bias``, ``mlp_bias``, ``norm_bias``, ``classifier_bias`` must
agree), a prediction-head activation other than GELU, RoPE scaling, a ``layer_types`` pattern other
than window layers everywhere or all but every n-th. Reference: Warner et al. 2024, "Smarter,
Better, Faster, Longer: A Modern Bidirectional Encoder for Fast, Memory Efficient, and Long Context
Finetuning and Inference", arXiv:2412.13663; layout read from
``transformers/models/modernbert/modeling_modernbert.py``.
"""

from __future__ import annotations

from variants.config import ModelConfig
from variants.interop.common import _head, _hidden_width, _linear, _norm, _require, _Weights
from variants.models import TransformerBase

HF_CLASS = "ModernBertForMaskedLM"
KIND = "encoder"
_FFN = {"gelu": "geglu", "gelu_pytorch_tanh": "geglu_tanh", "gelu_new": "geglu_tanh", "silu": "swiglu",
        "relu": "reglu"}
_ACTIVATION = {"geglu": "gelu", "geglu_tanh": "gelu_pytorch_tanh", "swiglu": "silu", "reglu": "relu"}
EXPORT_SLOTS = {"position": ("rope",), "norm_position": ("pre",), "norm": ("layernorm",), "ffn": tuple(_ACTIVATION),
                "attention": ("mha",), "embed_norm": (True,), "head_transform": (True,), "skip_first_norm": (True,),
                "embeddings_scaled": (False,), "logit_softcap": (None,)}
EXPORT_OPTIONS = ("window", "window_global_every", "window_global_from", "rope_local_base")


def _rope_bases(config, windows: dict) -> dict:
    """``rope_base`` of the global layers and, when it differs and ``windows`` has window layers,
    ``rope_local_base`` of those (a config without one keeps a local theta no layer uses)."""
    params = config.rope_parameters
    bases = {}
    for kind, key in (("full_attention", "rope_base"), ("sliding_attention", "rope_local_base")):
        found = dict(params.get(kind) or {})
        rope_type = found.pop("rope_type", "default")
        base = found.pop("rope_theta")
        if rope_type != "default" or any(v is not None for v in found.values()):
            raise NotImplementedError(f"ModernBERT with RoPE scaling on its {kind} layers ({params[kind]}) cannot be "
                                      f"imported")
        bases[key] = float(base)
    if bases["rope_local_base"] == bases["rope_base"] or "window" not in windows:
        del bases["rope_local_base"]
    return bases


def _windows(config) -> dict:
    """The window settings of ``layer_types``: all but every n-th layer local, the first global."""
    local = [kind == "sliding_attention" for kind in config.layer_types]
    if not any(local):
        return {}
    window = config.local_attention // 2 + 1
    if all(local):
        return {"window": window}
    stated = getattr(config, "global_attn_every_n_layers", None)  # the config's own n, when its pattern fits
    if stated and stated > 1 and local == [i % stated != 0 for i in range(len(local))]:
        return {"window": window, "window_global_every": stated, "window_global_from": 0}
    for every in range(2, len(local) + 1):
        for first in range(every):
            if local == [i < first or (i - first) % every != 0 for i in range(len(local))]:
                phase = {} if first == every - 1 else {"window_global_from": first}  # every - 1: the default
                return {"window": window, "window_global_every": every, **phase}
    raise NotImplementedError(f"ModernBERT with layer_types={config.layer_types} cannot be imported (window layers "
                              f"everywhere, or all but every n-th from a layer before the n-th)")


def convert(config, src: _Weights, common: dict) -> tuple[ModelConfig, dict]:
    """(HF config, state dict, common fields) -> (our config, our weights)."""
    bias = config.attention_bias
    _require(config, "ModernBERT", " (one bias setting for every layer here)", mlp_bias=bias, norm_bias=bias,
             classifier_bias=bias)
    _require(config, "ModernBERT", " (the prediction head's activation is GELU here)", classifier_activation="gelu")
    if config.hidden_activation not in _FFN:
        raise NotImplementedError(f"ModernBERT activation {config.hidden_activation!r} has no gated entry here; "
                                  f"supported: {', '.join(sorted(_FFN))}")
    cfg = ModelConfig(
        kind="encoder", vocab_size=config.vocab_size, d_model=config.hidden_size,
        n_heads=config.num_attention_heads, n_layers=config.num_hidden_layers,
        max_seq_len=config.max_position_embeddings, position="rope", norm_position="pre", norm="layernorm",
        ffn=_FFN[config.hidden_activation], ffn_hidden=config.intermediate_size, bias=bool(bias),
        norm_eps=config.norm_eps, embed_norm=True, head_transform=True, skip_first_norm=True,
        **_rope_bases(config, windows := _windows(config)), **windows, **common)
    w = {"embed.weight": src.take("model.embeddings.tok_embeddings.weight")}
    w |= _norm(src, "encoder.embed_norm", "model.embeddings.norm")
    for i in range(cfg.n_layers):
        hf, ours = f"model.layers.{i}", f"encoder.blocks.{i}"
        if i > 0:
            w |= _norm(src, f"{ours}.attn_res.norm", f"{hf}.attn_norm")
        w |= _linear(src, f"{ours}.attn.qkv", f"{hf}.attn.Wqkv")
        w |= _linear(src, f"{ours}.attn.out", f"{hf}.attn.Wo")
        w |= _norm(src, f"{ours}.ffn_res.norm", f"{hf}.mlp_norm")
        w |= _linear(src, f"{ours}.ffn.gate_up", f"{hf}.mlp.Wi")
        w |= _linear(src, f"{ours}.ffn.down", f"{hf}.mlp.Wo")
    w |= _norm(src, "encoder.final_norm", "model.final_norm")
    w |= _linear(src, "head_transform.dense", "head.dense")
    w |= _norm(src, "head_transform.norm", "head.norm")
    if not src.has("decoder.bias"):
        raise NotImplementedError("ModernBERT without decoder_bias cannot be imported (the prediction head has "
                                  "an output bias here)")
    w["head_bias"] = src.take("decoder.bias")
    return cfg, w | _head(src, cfg, "decoder.weight", "model.embeddings.tok_embeddings.weight")


def hf_config(cfg: ModelConfig, model: TransformerBase, common: dict):
    """The ``ModernBertConfig`` of ``model`` (export)."""
    from transformers import ModernBertConfig

    blocks = model.encoder.blocks
    types = ["sliding_attention" if block.attn.local(i) else "full_attention" for i, block in enumerate(blocks)]
    window = cfg.window if cfg.window is not None else 2
    local_base = cfg.rope_local_base if cfg.rope_local_base is not None else cfg.rope_base
    return ModernBertConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads, intermediate_size=_hidden_width(model),
        hidden_activation=_ACTIVATION[cfg.ffn], max_position_embeddings=cfg.max_seq_len, norm_eps=cfg.norm_eps,
        attention_bias=cfg.bias, mlp_bias=cfg.bias, norm_bias=cfg.bias, classifier_bias=cfg.bias,
        decoder_bias=True, layer_types=types, local_attention=2 * (window - 1),
        global_attn_every_n_layers=cfg.window_global_every or 1,  # the pattern's n, read back first on import
        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": cfg.rope_base},
                         "sliding_attention": {"rope_type": "default", "rope_theta": local_base}},
        embedding_dropout=cfg.dropout, attention_dropout=cfg.dropout, mlp_dropout=cfg.dropout,
        cls_token_id=common["bos_token_id"], sep_token_id=common["eos_token_id"], **common)
