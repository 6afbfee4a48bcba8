"""Import Hugging Face ``transformers`` models into this project's compositions, and export the
compositions that have an equivalent (:func:`to_hf`).

``from_hf(hf_model)`` reads ``hf_model.config`` and ``hf_model.state_dict()`` (it never imports
``transformers`` itself), picks the :class:`variants.ModelConfig` whose registry slots compute the
same function, builds it with :func:`variants.build_model` and copies the weights in. Supported:

==============  ====================  ========  =============  =========  ===============  ============================
model_type      class                 position  norm_position  norm       ffn              attention
==============  ====================  ========  =============  =========  ===============  ============================
``gpt2``        GPT2LMHeadModel       learned   pre            layernorm  gelu_tanh (*)    mha
``llama``       LlamaForCausalLM      rope      pre            rmsnorm    swiglu (*)       mha / gqa, head_dim
``mistral``     MistralForCausalLM    rope      pre            rmsnorm    swiglu (*)       + window
``qwen2``       Qwen2ForCausalLM      rope      pre            rmsnorm    swiglu (*)       + qkv_bias, window (**)
``qwen3``       Qwen3ForCausalLM      rope      pre            rmsnorm    swiglu (*)       + qk_norm head, window (**)
``olmo2``       Olmo2ForCausalLM      rope      reordered      rmsnorm    swiglu (*)       + qk_norm full
``mixtral``     MixtralForCausalLM    rope      pre            rmsnorm    moe of swiglu    + window
``gemma2``      Gemma2ForCausalLM     rope      sandwich       rmsnorm    geglu_tanh (*)   + window (**), softcap (***)
``bloom``       BloomForCausalLM      alibi     pre            layernorm  gelu_tanh        mha
``marian``      MarianMTModel         sinus.    post           layernorm  from config (*)  mha
``bert``        BertForMaskedLM       learned   post (+emb.)   layernorm  gelu             mha, head_transform (****)
``roberta``     RobertaForMaskedLM    learned   post (+emb.)   layernorm  gelu             + position offset (****)
``deberta-v2``  DebertaV2ForMaskedLM  deberta   post (+emb.)   layernorm  gelu             mha, head_transform (****)
``modernbert``  ModernBertForMaskedLM rope      pre (+emb.)    layernorm  geglu (*)        + window (*****)
==============  ====================  ========  =============  =========  ===============  ============================

(*) mapped from the config's activation name (``gelu_new`` -> ``gelu_tanh``, ``swish`` -> ``silu``,
LLaMA's ``hidden_act`` and Gemma 2's ``hidden_activation`` -> the matching gated entry). (**) when
``use_sliding_window`` is on (Gemma 2: always), on every layer or all but every n-th
(``window_global_every``; Gemma 2 alternates). (***) ``attn_softcap``, ``attn_scale_dim``, the
model's ``logit_softcap`` and ``scale_embeddings``; Gemma 2's norm gains are stored less 1, which
the family declares (``GAIN_OFFSETS``: those tensors are moved by 1 around its converter, both
ways). The LLaMA-like families carry GQA, ``head_dim`` and RoPE scaling (linear, llama3, yarn)
alike. Anything the composition cannot express (another RoPE scaling, a non-zero
``final_logits_bias``, attention dropout in the newer families, Qwen 3's, OLMo 2's and Gemma 2's
``attention_bias``, ...) raises ``NotImplementedError`` naming the setting, rather than importing
a different function. (****) Encoders (``model.kind: encoder``) with the masked-LM prediction
head (``head_transform``) and a LayerNorm on the embeddings (``embed_norm``); token-type embeddings
are held at type 0 (BERT and RoBERTa fold it into the position table and an export writes zero
tables; DeBERTa folds it into untied token embeddings and an export writes none), RoBERTa's
position rows start after its padding id. (*****) ModernBERT: Pre-LN whose first attention reads the
normed embeddings (``skip_first_norm``), window layers on all but every n-th layer from the first
(``window_global_from: 0``) with a RoPE base of their own (``rope_local_base``), no biases. Every
tensor of the source state dict must be used (tied copies are checked equal), so a weight the
mapping does not know about fails loudly too. The logits measured against transformers on tiny random models are in the table of
``docs/components.md`` ("Faithful to the reference implementations").

One module per family (:mod:`~variants.interop.gpt2`, :mod:`~variants.interop.llama`,
:mod:`~variants.interop.mistral`, :mod:`~variants.interop.qwen2`, :mod:`~variants.interop.qwen3`,
:mod:`~variants.interop.olmo2`, :mod:`~variants.interop.mixtral`, :mod:`~variants.interop.gemma2`,
:mod:`~variants.interop.bloom`,
:mod:`~variants.interop.marian`, :mod:`~variants.interop.bert`, :mod:`~variants.interop.roberta`,
:mod:`~variants.interop.deberta_v2`, :mod:`~variants.interop.modernbert`)
holds its import converter, its export config builder and its layout conversions;
:mod:`variants.interop.common` the helpers they share (and :mod:`~variants.interop.llama` those of
the LLaMA-like families). This module dispatches on ``model_type``; an export goes to the first
family whose slots, fields and settings carry the composition.

Reference: Wolf et al. 2020, "Transformers: State-of-the-Art Natural Language Processing",
EMNLP (system demonstrations), arXiv:1910.03771; the layouts were read from
``transformers/models/{gpt2,llama,mistral,qwen2,qwen3,olmo2,mixtral,gemma2,bloom,marian,bert,roberta,``
``deberta_v2,modernbert}/modeling_*.py``
(transformers 5.25).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from variants.config import ModelConfig
from variants.interop import bert, bloom, gemma2, gpt2, llama, marian, mistral, mixtral, olmo2, qwen2, qwen3, roberta
from variants.interop import deberta_v2, modernbert
from variants.interop.common import _offset_gains, _Weights
from variants.models import TransformerBase, build_model
from variants.registry import REGISTRIES

__all__ = ["from_hf", "to_hf", "export_family", "SUPPORTED"]

_FROM_CONFIG = object()  # sentinel: take pad_id from the Hugging Face config

# model_type -> its module: HF_CLASS, KIND, EXPORT_SLOTS, EXPORT_OPTIONS (optional), GAIN_OFFSETS (optional:
# the HF keys holding norm gains less 1), EXPORT_ZERO (optional: HF keys an export leaves at zero, BERT's token
# types), EXPORT_UNREAD (optional: HF keys with elements the import never reads), convert(), hf_config()
# (in the order an export tries them: LLaMA first among the RoPE families)
_FAMILIES = {"gpt2": gpt2, "llama": llama, "mistral": mistral, "qwen2": qwen2, "qwen3": qwen3, "olmo2": olmo2,
             "mixtral": mixtral, "gemma2": gemma2, "bloom": bloom, "marian": marian, "bert": bert,
             "roberta": roberta, "deberta-v2": deberta_v2, "modernbert": modernbert}

_Converter = Callable[[object, _Weights, dict], "tuple[ModelConfig, dict]"]

SUPPORTED: dict[str, tuple[str, _Converter]] = {
    name: (family.HF_CLASS, family.convert) for name, family in _FAMILIES.items()}
"""model_type -> (the Hugging Face class imported, its converter)."""


def _ids(value) -> set:
    if value is None:
        return set()
    return set(value) if isinstance(value, (list, tuple)) else {value}


def _gain_offsets(family: str) -> tuple[str, ...]:
    """The suffixes of the HF keys whose values ``family`` stores as a norm gain less 1."""
    return getattr(_FAMILIES[family], "GAIN_OFFSETS", ())


def _default_pad_id(config) -> Optional[int]:
    """``pad_token_id``, unless there is none, it lies outside the vocabulary (no input can
    carry it), or it doubles as BOS/EOS (then real tokens carry it: no reliable marker)."""
    pad = getattr(config, "pad_token_id", None)
    specials = _ids(getattr(config, "bos_token_id", None)) | _ids(getattr(config, "eos_token_id", None))
    if pad is None or pad in specials or not 0 <= pad < config.vocab_size:
        return None
    return pad


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
    src = _Weights(_offset_gains(hf_model.state_dict(), _gain_offsets(model_type), 1.0))
    cfg, weights = convert(config, src, common)
    src.check_all_used()
    model = build_model(cfg)
    model.load_state_dict(weights, strict=True)
    return model.eval()


# ---------------------------------------------------------------------------------------------
# Export: the inverse of the converters


# family -> (model kind, the slots and fields it fixes, HF class name, config builder). The position
# scheme narrows the families; the first whose every slot, field and setting fits is chosen.
_EXPORTS = {name: (family.KIND, family.EXPORT_SLOTS, family.HF_CLASS, family.hf_config)
            for name, family in _FAMILIES.items()}
# fields the round trip must give back unchanged (the rest are sizes, set from the model)
_ROUND_TRIP = ("kind", "norm", "norm_position", "position", "ffn", "attention", "bias", "norm_eps", "embed_norm",
               "embeddings_scaled", "tie_embeddings", "rope_base", "logit_softcap", "d_model", "n_heads",
               "vocab_size", "head_transform", "options")  # the components' settings


def _misfits(family: str, cfg: ModelConfig) -> list[str]:
    """Why ``cfg`` does not export to ``family``: each slot or field outside the values it
    fixes, and each setting away from its default that it cannot carry; empty when it fits."""
    _, slots, class_name, _ = _EXPORTS[family]
    found = []
    for slot, allowed in slots.items():
        value = getattr(cfg, slot, None)  # None: a setting no chosen component declares
        if value not in allowed:
            shown = f"{slot} {value!r}" if slot in REGISTRIES else f"{slot}={value!r}"
            found.append(f"{shown} has no equivalent in {class_name} (the export for position {cfg.position!r}), "
                         f"which needs {slot} in {', '.join(map(repr, allowed))}")
    carried = getattr(_FAMILIES[family], "EXPORT_OPTIONS", None)
    if carried is not None:
        found += [f"{key}={value!r} has no equivalent in {class_name}"
                  for key, value in sorted(cfg.options.items()) if key not in carried and key not in slots]
    fixed = getattr(_FAMILIES[family], "export_misfits", None)  # sizes the family fixes (BLOOM's 4 d)
    return found + (fixed(cfg) if fixed is not None and not found else [])


def export_family(cfg: ModelConfig, family: Optional[str] = None) -> str:
    """The Hugging Face family ``cfg``'s composition exports to: the first (in ``_FAMILIES``
    order) for its position scheme whose slots, fields and settings fit, or ``family`` when
    given (a ``model_type``: RoBERTa rather than BERT). ``NotImplementedError`` naming what has
    no equivalent in the nearest (or the given) family otherwise."""
    if family is not None:
        if family not in _EXPORTS:
            raise NotImplementedError(f"no export to {family!r}; families: {', '.join(_EXPORTS)}")
        if _EXPORTS[family][0] != cfg.kind:
            raise NotImplementedError(f"{_EXPORTS[family][2]} holds a {_EXPORTS[family][0]} model, not a "
                                      f"{cfg.kind} model")
        misfits = _misfits(family, cfg)
        if misfits:
            raise NotImplementedError("; ".join(misfits))
        return family
    candidates = [family for family, (kind, slots, _, _) in _EXPORTS.items()
                  if kind == cfg.kind and cfg.position in slots["position"]]
    if not candidates:
        firsts = {}  # each position once, with the first family that exports it
        for name, (kind, slots, *_rest) in _EXPORTS.items():
            if kind == cfg.kind:
                firsts.setdefault(slots["position"][0], name)
        positions = ", ".join(f"{position} ({name})" for position, name in firsts.items())
        raise NotImplementedError(f"position {cfg.position!r} has no Hugging Face equivalent for a {cfg.kind} "
                                  f"model here; exportable positions: {positions}")
    misfits = {family: _misfits(family, cfg) for family in candidates}
    for family in candidates:
        if not misfits[family]:
            return family
    nearest = min(candidates, key=lambda family: len(misfits[family]))  # the first of the nearest
    raise NotImplementedError("; ".join(misfits[nearest]))


def _probe(hf_model, zero: tuple[str, ...] = ()) -> tuple[dict[str, torch.Tensor], dict[str, tuple[int, int]]]:
    """The HF state dict with every trainable tensor replaced by its elements' global indices
    (float64, exact), tied tensors sharing theirs; the tensors named in ``zero`` are zeros (an
    export leaves them so); other tensors (fixed sinusoid tables, buffers) keep their values.
    Returns it and key -> (first index, element count)."""
    trainable = {name: p for name, p in hf_model.named_parameters(remove_duplicate=False) if p.requires_grad}
    probe, spans, by_storage, start = {}, {}, {}, 0
    for key, tensor in hf_model.state_dict(keep_vars=True).items():
        if key in zero:
            probe[key] = torch.zeros(tensor.shape, dtype=torch.float64)
            continue
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


def to_hf(model: TransformerBase, *, bos_id: Optional[int] = None, eos_id: Optional[int] = None,
          family: Optional[str] = None):
    """A Hugging Face ``transformers`` model (fp32, CPU, eval mode) computing the same function
    as ``model``: ``GPT2LMHeadModel`` (learned positions, Pre-LN LayerNorm), ``LlamaForCausalLM``
    (RoPE, Pre-LN RMSNorm, gated feed-forward), ``MistralForCausalLM`` (the same without biases,
    with a sliding window), ``Qwen2ForCausalLM`` (``qkv_bias``), ``Qwen3ForCausalLM``
    (``qk_norm: head``), ``Olmo2ForCausalLM`` (``reordered``, ``qk_norm: full``),
    ``MixtralForCausalLM`` (``moe``), ``Gemma2ForCausalLM`` (``sandwich``, scaled embeddings, soft-capping),
    ``BloomForCausalLM`` (ALiBi with an embedding norm), ``MarianMTModel`` (sinusoids, Post-LN) or,
    for an encoder, ``BertForMaskedLM`` (learned positions, Post-LN, an embedding norm and the
    prediction head), ``DebertaV2ForMaskedLM`` (``deberta`` positions) or ``ModernBertForMaskedLM``
    (RoPE, Pre-LN with ``skip_first_norm``, a gated feed-forward), or another family named by
    ``family`` (``roberta``). Other compositions
    raise ``NotImplementedError`` naming the component without an equivalent.

    The weights are placed by running the import converter of the family backwards: each HF
    tensor is filled with its elements' indices, the converter maps them to our layout, and our
    weights are written to the indices found there. So export is exactly the inverse of the
    tested import, and a weight left unplaced, or a setting that does not survive the round trip
    (``from_hf`` of the result), fails loudly. Norm gains a family stores less 1
    (``GAIN_OFFSETS``, Gemma 2) are placed as gains, then moved back by 1."""
    import transformers

    cfg: ModelConfig = model.cfg
    family = export_family(cfg, family)
    _, _, class_name, build_config = _EXPORTS[family]
    common = {"tie_word_embeddings": cfg.tie_embeddings, "pad_token_id": cfg.pad_id,
              "bos_token_id": bos_id, "eos_token_id": eos_id}
    hf_model = getattr(transformers, class_name)(build_config(cfg, model, dict(common))).float().eval()

    zero = getattr(_FAMILIES[family], "EXPORT_ZERO", ())
    probe, spans = _probe(hf_model, zero)
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
    for key in getattr(_FAMILIES[family], "EXPORT_UNREAD", ()):  # elements the import never reads: zeros
        first, count = spans[key]
        values[first:first + count][~placed[first:first + count]] = 0.0
        placed[first:first + count] = True
    if not bool(placed.all()):
        raise NotImplementedError(f"{int((~placed).sum())} elements of {class_name} received no weight")
    state = {key: values[first:first + count].view(probe[key].shape) for key, (first, count) in spans.items()}
    state |= {key: torch.zeros(probe[key].shape) for key in zero}
    hf_model.load_state_dict(_offset_gains(state, _gain_offsets(family), -1.0), strict=False)
    settle = getattr(_FAMILIES[family], "after_export", None)  # what the built object needs to run (Mixtral)
    if settle is not None:
        settle(hf_model)
    return hf_model
