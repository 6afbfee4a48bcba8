"""Import Hugging Face ``transformers`` models into this project's compositions, and export the
compositions that have an equivalent (:func:`to_hf`).

``from_hf(hf_model)`` reads ``hf_model.config`` and ``hf_model.state_dict()`` (it never imports
``transformers`` itself), picks the :class:`variants.ModelConfig` whose registry slots compute the
same function, builds it with :func:`variants.build_model` and copies the weights in. Supported:

=============  ===================  ========  =============  =========  ===============
model_type     class                position  norm_position  norm       ffn
=============  ===================  ========  =============  =========  ===============
``gpt2``       GPT2LMHeadModel      learned   pre            layernorm  gelu_tanh (*)
``llama``      LlamaForCausalLM     rope      pre            rmsnorm    swiglu (*)
``bloom``      BloomForCausalLM     alibi     pre            layernorm  gelu_tanh
``marian``     MarianMTModel        sinus.    post           layernorm  from config (*)
=============  ===================  ========  =============  =========  ===============

(*) mapped from the config's activation name (``gelu_new`` -> ``gelu_tanh``, ``swish`` -> ``silu``,
LLaMA's ``hidden_act`` -> the matching gated entry). Anything the composition cannot express
(grouped-query attention, RoPE scaling, a non-zero ``final_logits_bias``, ...) raises
``NotImplementedError`` naming the setting, rather than importing a different function. Every
tensor of the source state dict must be used (tied copies are checked equal), so a weight the
mapping does not know about fails loudly too.

Layout conversions: GPT-2's ``Conv1D`` stores weights as (in, out), so they are transposed;
LLaMA's and Marian's separate q/k/v projections are stacked into our fused ``[q; k; v]`` (and
``[k; v]`` for cross-attention); LLaMA's gate and up projections into ``gate_up = [gate; up]``;
BLOOM's fused ``query_key_value`` rows are ordered (head, q|k|v, head_dim) and are permuted to
our (q|k|v, head, head_dim). BLOOM's ``bloom_gelu_forward`` is the tanh approximation of GELU
(with sqrt(2/pi) rounded to 0.79788456), hence ``gelu_tanh``.

References:
- Wolf et al. 2020, "Transformers: State-of-the-Art Natural Language Processing", EMNLP
  (system demonstrations), arXiv:1910.03771; the layouts above were read from
  ``transformers/models/{gpt2,llama,bloom,marian}/modeling_*.py`` (transformers 5.23).
- GPT-2: Radford et al. 2019, "Language Models are Unsupervised Multitask Learners".
- LLaMA: Touvron et al. 2023, "LLaMA: Open and Efficient Foundation Language Models",
  arXiv:2302.13971.
- BLOOM: BigScience Workshop 2022, "BLOOM: A 176B-Parameter Open-Access Multilingual Language
  Model", arXiv:2211.05100.
- Marian: Junczys-Dowmunt et al. 2018, "Marian: Fast Neural Machine Translation in C++",
  arXiv:1804.00344; OPUS-MT: Tiedemann & Thottingal 2020, EAMT.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from variants.config import ModelConfig
from variants.models import TransformerBase, build_model
from variants.positions import Sinusoidal

__all__ = ["from_hf", "to_hf", "SUPPORTED"]

_FROM_CONFIG = object()  # sentinel: take pad_id from the Hugging Face config

# Hugging Face activation names -> our feed-forward entries.
_PLAIN_FFN = {"relu": "relu", "gelu": "gelu", "gelu_new": "gelu_tanh",
              "gelu_pytorch_tanh": "gelu_tanh", "silu": "silu", "swish": "silu"}
_GATED_FFN = {"silu": "swiglu", "swish": "swiglu", "gelu": "geglu", "relu": "reglu"}

# Buffers some transformers versions keep in the state dict; they are not weights.
_NOT_WEIGHTS = (".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq")

BLOOM_MAX_SEQ_LEN = 2048  # BLOOM's training context; ALiBi itself has no length limit


class _Weights:
    """A Hugging Face state dict consumed key by key, so no tensor is silently left out."""

    def __init__(self, state_dict: dict[str, torch.Tensor]) -> None:
        self.tensors = {key: t.detach() for key, t in state_dict.items()}
        self.used: set[str] = set()

    def has(self, key: str) -> bool:
        return key in self.tensors

    def take(self, key: str) -> torch.Tensor:
        if key not in self.tensors:
            raise ValueError(f"the Hugging Face state dict has no {key!r}")
        self.used.add(key)
        return self.tensors[key]

    def tied(self, key: str, to: str) -> None:
        """Consume ``key`` (if present) as a copy of ``to``: they must be equal."""
        if key in self.tensors and not torch.equal(self.take(key), self.tensors[to]):
            raise NotImplementedError(
                f"{key!r} differs from {to!r}; this project's model has one token embedding "
                f"shared by encoder, decoder and (when tied) the output head")

    def check_all_used(self) -> None:
        left = sorted(k for k in self.tensors if k not in self.used and not k.endswith(_NOT_WEIGHTS))
        if left:
            raise NotImplementedError(f"tensors with no counterpart in this project: {left}")


def _linear(src: _Weights, ours: str, *theirs: str, conv1d: bool = False) -> dict:
    """Our linear ``ours`` from one HF linear, or several stacked along the output rows.
    ``conv1d``: HF GPT-2's Conv1D, whose weight is stored (in, out)."""
    weights = [src.take(f"{name}.weight") for name in theirs]
    out = {f"{ours}.weight": torch.cat([w.t() if conv1d else w for w in weights])}
    if src.has(f"{theirs[0]}.bias"):
        out[f"{ours}.bias"] = torch.cat([src.take(f"{name}.bias") for name in theirs])
    return out


def _norm(src: _Weights, ours: str, theirs: str) -> dict:
    out = {f"{ours}.weight": src.take(f"{theirs}.weight")}
    if src.has(f"{theirs}.bias"):
        out[f"{ours}.bias"] = src.take(f"{theirs}.bias")
    return out


def _head(src: _Weights, cfg: ModelConfig, head: str, embedding: str) -> dict:
    if cfg.tie_embeddings:
        src.tied(head, embedding)
        return {}
    return {"head.weight": src.take(head)}


def _require(config, family: str, why: str = "", **expected) -> None:
    """Refuse configs whose ``name`` differs from ``expected[name]`` (absent = as expected)."""
    for name, want in expected.items():
        value = getattr(config, name, want)
        if value != want:
            raise NotImplementedError(
                f"{family} with {name}={value!r} cannot be imported (needs {want!r}{why})")


def _ffn(table: dict[str, str], activation: str, family: str) -> str:
    if activation not in table:
        raise NotImplementedError(
            f"{family} activation {activation!r} has no feed-forward entry here; "
            f"supported: {', '.join(sorted(table))}")
    return table[activation]


def _ids(value) -> set:
    if value is None:
        return set()
    return set(value) if isinstance(value, (list, tuple)) else {value}


def _default_pad_id(config) -> Optional[int]:
    """``pad_token_id``, unless there is none, it lies outside the vocabulary (no input can
    carry it), or it doubles as BOS/EOS (then real tokens carry it: no reliable marker)."""
    pad = getattr(config, "pad_token_id", None)
    specials = _ids(getattr(config, "bos_token_id", None)) | _ids(getattr(config, "eos_token_id", None))
    if pad is None or pad in specials or not 0 <= pad < config.vocab_size:
        return None
    return pad


# ---------------------------------------------------------------------------------------------
# One converter per family: (HF config, state dict, common fields) -> (our config, our weights)


def _gpt2(config, src: _Weights, common: dict) -> tuple[ModelConfig, dict]:
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


def _llama(config, src: _Weights, common: dict) -> tuple[ModelConfig, dict]:
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


def _heads_first_to_qkv_first(weights: dict, n_heads: int) -> dict:
    """Reorder fused rows from (head, q|k|v, head_dim) (BLOOM) to (q|k|v, head, head_dim)."""
    return {k: t.unflatten(0, (n_heads, 3, -1)).transpose(0, 1).flatten(0, 2) for k, t in weights.items()}


def _bloom(config, src: _Weights, common: dict) -> tuple[ModelConfig, dict]:
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


def _check_sinusoid(src: _Weights, key: str, cfg: ModelConfig) -> None:
    """Marian keeps a fixed sinusoid table; ours is computed: make sure they agree."""
    if not src.has(key):
        return
    table = src.take(key)
    tolerance = max(1e-3, torch.finfo(table.dtype).eps)  # a bf16/fp16 copy is rounded
    positions = torch.arange(table.size(0)).unsqueeze(0)
    expected = Sinusoidal(cfg).add_to_embeddings(torch.zeros(1, *table.shape), positions)[0]
    if not torch.allclose(table.float().cpu(), expected, atol=tolerance):
        raise NotImplementedError(f"{key!r} is not the [sin | cos] sinusoid table of 'sinusoidal'")


def _marian_block(src: _Weights, ours: str, hf: str, cross: bool) -> dict:
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


def _marian(config, src: _Weights, common: dict) -> tuple[ModelConfig, dict]:
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
        w |= _marian_block(src, f"encoder.blocks.{i}", f"model.encoder.layers.{i}", cross=False)
    for i in range(cfg.decoder_layers):
        w |= _marian_block(src, f"decoder.blocks.{i}", f"model.decoder.layers.{i}", cross=True)
    return cfg, w | _head(src, cfg, "lm_head.weight", "model.shared.weight")


_Converter = Callable[[object, _Weights, dict], "tuple[ModelConfig, dict]"]

SUPPORTED: dict[str, tuple[str, _Converter]] = {
    "gpt2": ("GPT2LMHeadModel", _gpt2),
    "llama": ("LlamaForCausalLM", _llama),
    "bloom": ("BloomForCausalLM", _bloom),
    "marian": ("MarianMTModel", _marian),
}
"""model_type -> (the Hugging Face class imported, its converter)."""


def from_hf(hf_model, *, pad_id=_FROM_CONFIG) -> TransformerBase:
    """Import a Hugging Face ``transformers`` model (the object) as a model of this project.

    Returns :func:`variants.build_model` of the matching :class:`variants.ModelConfig`, with
    dropout 0 and the weights copied (into fp32, on the CPU, whatever the source's dtype and
    device), in eval mode. Its logits equal the source's for the same inputs. Raises
    ``NotImplementedError`` for unsupported model types or settings (see the module docstring).

    ``pad_id``: our models treat every token equal to ``cfg.pad_id`` as padding (masked as a
    key, and left padding shifts positions), which is what the Hugging Face model computes when
    given ``attention_mask = input_ids != pad_token_id`` (and, for RoPE / learned positions,
    ``position_ids`` counted over real tokens, as ``generate`` does). So by default ``pad_id`` is
    the config's ``pad_token_id``, and None (no token is padding: the HF call without a mask)
    when there is none (e.g. GPT-2), when it lies outside the vocabulary, or when it equals the
    BOS or EOS id, since real tokens then carry it. Pass ``pad_id`` (an id or None) to
    override. For Marian only source tokens are masked; decoder inputs (which start with
    ``decoder_start_token_id``, usually the pad id) are never treated as padding, as in HF
    without a ``decoder_attention_mask``.
    """
    config = hf_model.config
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED:
        raise NotImplementedError(
            f"cannot import model_type {model_type!r}; supported: "
            + ", ".join(f"{name} ({cls})" for name, (cls, _) in SUPPORTED.items()))
    class_name, convert = SUPPORTED[model_type]
    if class_name not in (cls.__name__ for cls in type(hf_model).__mro__):
        raise NotImplementedError(
            f"for model_type {model_type!r} only {class_name} imports, got {type(hf_model).__name__}")
    common = {"dropout": 0.0,
              "pad_id": _default_pad_id(config) if pad_id is _FROM_CONFIG else pad_id,
              "tie_embeddings": bool(getattr(config, "tie_word_embeddings", True))}
    src = _Weights(hf_model.state_dict())
    cfg, weights = convert(config, src, common)
    src.check_all_used()
    model = build_model(cfg)
    model.load_state_dict(weights, strict=True)
    return model.eval()


# ---------------------------------------------------------------------------------------------
# Export: the inverse of the converters above


def _hidden_width(model: TransformerBase) -> int:
    """The feed-forward hidden width, as built (the down projection's input)."""
    stack = model.decoder
    return stack.blocks[0].ffn.down.weight.shape[1]


def _gpt2_config(cfg: ModelConfig, model: TransformerBase, common: dict):
    from transformers import GPT2Config

    activation = {v: k for k, v in _PLAIN_FFN.items() if k not in ("gelu_pytorch_tanh", "swish")}
    return GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.max_seq_len, n_embd=cfg.d_model,
                      n_layer=cfg.n_layers, n_head=cfg.n_heads, n_inner=_hidden_width(model),
                      activation_function=activation[cfg.ffn], layer_norm_epsilon=cfg.norm_eps,
                      resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout, **common)


def _llama_config(cfg: ModelConfig, model: TransformerBase, common: dict):
    from transformers import LlamaConfig

    activation = {"swiglu": "silu", "geglu": "gelu", "reglu": "relu"}
    return LlamaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=_hidden_width(model),
                       num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
                       num_key_value_heads=cfg.n_heads, head_dim=cfg.head_dim, hidden_act=activation[cfg.ffn],
                       max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.norm_eps,
                       rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_base},
                       rope_theta=cfg.rope_base,  # where transformers < 5 reads it
                       attention_bias=cfg.bias, mlp_bias=cfg.bias, attention_dropout=cfg.dropout, **common)


def _bloom_config(cfg: ModelConfig, model: TransformerBase, common: dict):
    from transformers import BloomConfig

    return BloomConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, n_layer=cfg.n_layers,
                       n_head=cfg.n_heads, layer_norm_epsilon=cfg.norm_eps,
                       apply_residual_connection_post_layernorm=False, hidden_dropout=cfg.dropout,
                       attention_dropout=cfg.dropout, **common)


def _marian_config(cfg: ModelConfig, model: TransformerBase, common: dict):
    from transformers import MarianConfig

    activation = {v: k for k, v in _PLAIN_FFN.items() if k not in ("gelu_pytorch_tanh", "swish")}
    width = _hidden_width(model)
    return MarianConfig(vocab_size=cfg.vocab_size, decoder_vocab_size=cfg.vocab_size, d_model=cfg.d_model,
                        encoder_layers=cfg.encoder_layers, decoder_layers=cfg.decoder_layers,
                        encoder_attention_heads=cfg.n_heads, decoder_attention_heads=cfg.n_heads,
                        encoder_ffn_dim=width, decoder_ffn_dim=width, activation_function=activation[cfg.ffn],
                        max_position_embeddings=cfg.max_seq_len, scale_embedding=cfg.scale_embeddings,
                        share_encoder_decoder_embeddings=True, dropout=cfg.dropout, attention_dropout=cfg.dropout,
                        activation_dropout=0.0, decoder_start_token_id=common.pop("bos_token_id"), **common)


# family -> (model kind, the slots it fixes, HF class name, config builder). The position
# scheme picks the family; every other slot must then be the family's.
_EXPORTS = {
    "gpt2": ("lm", {"position": ("learned",), "norm_position": ("pre",), "norm": ("layernorm",),
                    "ffn": ("gelu_tanh", "gelu", "relu", "silu"), "attention": ("mha",)},
             "GPT2LMHeadModel", _gpt2_config),
    "llama": ("lm", {"position": ("rope",), "norm_position": ("pre",), "norm": ("rmsnorm",),
                     "ffn": ("swiglu", "geglu", "reglu"), "attention": ("mha",)},
              "LlamaForCausalLM", _llama_config),
    "bloom": ("lm", {"position": ("alibi",), "norm_position": ("pre",), "norm": ("layernorm",),
                     "ffn": ("gelu_tanh",), "attention": ("mha",)},
              "BloomForCausalLM", _bloom_config),
    "marian": ("seq2seq", {"position": ("sinusoidal",), "norm_position": ("post",), "norm": ("layernorm",),
                           "ffn": ("gelu_tanh", "gelu", "relu", "silu"), "attention": ("mha",)},
               "MarianMTModel", _marian_config),
}
# fields the round trip must give back unchanged (the rest are sizes, set from the model)
_ROUND_TRIP = ("kind", "norm", "norm_position", "position", "ffn", "attention", "bias", "norm_eps", "embed_norm",
               "scale_embeddings", "tie_embeddings", "rope_base", "d_model", "n_heads", "vocab_size")


def export_family(cfg: ModelConfig) -> str:
    """The Hugging Face family ``cfg``'s composition exports to; ``NotImplementedError`` naming
    the component (slot and entry) that has no equivalent."""
    for family, (kind, slots, _, _) in _EXPORTS.items():
        if kind == cfg.kind and cfg.position in slots["position"]:
            for slot, allowed in slots.items():
                if getattr(cfg, slot) not in allowed:
                    raise NotImplementedError(
                        f"{slot} {getattr(cfg, slot)!r} has no equivalent in {_EXPORTS[family][2]} (the export "
                        f"for position {cfg.position!r}), which needs {slot} in {', '.join(map(repr, allowed))}")
            return family
    positions = ", ".join(f"{slots['position'][0]} ({name})" for name, (kind, slots, *_rest) in _EXPORTS.items()
                          if kind == cfg.kind)
    raise NotImplementedError(f"position {cfg.position!r} has no Hugging Face equivalent for a {cfg.kind} model "
                              f"here; exportable positions: {positions}")


def _probe(hf_model) -> tuple[dict[str, torch.Tensor], dict[str, tuple[int, int]]]:
    """The HF state dict with every trainable tensor replaced by its elements' global indices
    (float64, exact), tied tensors sharing theirs; other tensors (fixed sinusoid tables,
    buffers) keep their values. Returns it and key -> (first index, element count)."""
    trainable = {name: p for name, p in hf_model.named_parameters(remove_duplicate=False) if p.requires_grad}
    probe, spans, by_storage, start = {}, {}, {}, 0
    for key, tensor in hf_model.state_dict(keep_vars=True).items():
        if key not in trainable:
            probe[key] = tensor.detach()
            continue
        storage = trainable[key].data_ptr()
        if storage not in by_storage:
            by_storage[storage] = (start, tensor.numel())
            start += tensor.numel()
        first, count = by_storage[storage]
        spans[key] = (first, count)
        probe[key] = torch.arange(first, first + count, dtype=torch.float64).view(tensor.shape)
    return probe, spans


def to_hf(model: TransformerBase, *, bos_id: Optional[int] = None, eos_id: Optional[int] = None):
    """A Hugging Face ``transformers`` model (fp32, CPU, eval mode) computing the same function
    as ``model``: ``GPT2LMHeadModel`` (learned positions, Pre-LN LayerNorm), ``LlamaForCausalLM``
    (RoPE, Pre-LN RMSNorm, gated feed-forward), ``BloomForCausalLM`` (ALiBi with an embedding
    norm) or ``MarianMTModel`` (sinusoids, Post-LN). Other compositions raise
    ``NotImplementedError`` naming the component without an equivalent.

    The weights are placed by running the import converter of the family backwards: each HF
    tensor is filled with its elements' indices, the converter maps them to our layout, and our
    weights are written to the indices found there. So export is exactly the inverse of the
    tested import, and a weight left unplaced, or a setting that does not survive the round trip
    (``from_hf`` of the result), fails loudly."""
    import transformers

    cfg: ModelConfig = model.cfg
    family = export_family(cfg)
    _, _, class_name, build_config = _EXPORTS[family]
    common = {"tie_word_embeddings": cfg.tie_embeddings, "pad_token_id": cfg.pad_id,
              "bos_token_id": bos_id, "eos_token_id": eos_id}
    hf_model = getattr(transformers, class_name)(build_config(cfg, model, dict(common))).float().eval()

    probe, spans = _probe(hf_model)
    _, convert = SUPPORTED[family]
    src = _Weights(probe)
    back_cfg, indices = convert(hf_model.config, src, {"dropout": 0.0, "pad_id": cfg.pad_id,
                                                       "tie_embeddings": cfg.tie_embeddings})
    src.check_all_used()
    for field in _ROUND_TRIP:
        if getattr(back_cfg, field) != getattr(cfg, field):
            raise NotImplementedError(f"{field}={getattr(cfg, field)!r} has no equivalent in {class_name} "
                                      f"(its import gives {getattr(back_cfg, field)!r})")
    ours = model.state_dict()
    if set(indices) != set(ours):
        raise NotImplementedError(f"weights without a place in {class_name}: {sorted(set(ours) - set(indices))}")
    total = max((first + count for first, count in spans.values()), default=0)
    values, placed = torch.empty(total), torch.zeros(total, dtype=torch.bool)
    for key, where in indices.items():
        flat = where.reshape(-1).long()
        values[flat] = ours[key].detach().float().cpu().reshape(-1)
        placed[flat] = True
    if not bool(placed.all()):
        raise NotImplementedError(f"{int((~placed).sum())} elements of {class_name} received no weight")
    state = {key: values[first:first + count].view(probe[key].shape) for key, (first, count) in spans.items()}
    hf_model.load_state_dict(state, strict=False)
    return hf_model
