"""RoBERTa (``RobertaForMaskedLM``): BERT's layout (:mod:`variants.interop.bert`) under other
names, whose position ids start after the padding id: position ``p`` of a sequence reads row
``pad_token_id + 1 + p`` of the table, so ``max_position_embeddings - pad_token_id - 1`` positions
are usable. The rows before (never read for a real token) are dropped on import and written as
zeros by an export (``EXPORT_UNREAD``). An export of a learned-position encoder goes to BERT
(the first family that fits, with the same slots); RoBERTa only when asked for
(``family="roberta"``, ``ablate export --family roberta``).
Reference: Liu et al. 2019, "RoBERTa: A Robustly Optimized BERT Pretraining Approach",
arXiv:1907.11692; layout read from ``transformers/models/roberta/modeling_roberta.py``.
"""

from __future__ import annotations

from variants.config import ModelConfig
from variants.interop.bert import EXPORT_OPTIONS as BERT_OPTIONS, EXPORT_SLOTS as BERT_SLOTS, check, encoder
from variants.interop.bert import encoder_config
from variants.interop.common import _Weights
from variants.models import TransformerBase

HF_CLASS = "RobertaForMaskedLM"
KIND = "encoder"
EXPORT_SLOTS = BERT_SLOTS
EXPORT_OPTIONS = BERT_OPTIONS
EXPORT_ZERO = ("roberta.embeddings.token_type_embeddings.weight",)
# HF keys some of whose elements the import never reads: an export leaves those at zero
EXPORT_UNREAD = ("roberta.embeddings.position_embeddings.weight", "lm_head.bias")


def _offset(config) -> int:
    if config.pad_token_id is None:
        raise NotImplementedError("RoBERTa without a pad_token_id: its positions start after the padding id")
    return config.pad_token_id + 1


def convert(config, src: _Weights, common: dict) -> tuple[ModelConfig, dict]:
    """(HF config, state dict, common fields) -> (our config, our weights)."""
    check(config, "RoBERTa")
    return encoder(config, src, common, "roberta", "lm_head", offset=_offset(config))


def hf_config(cfg: ModelConfig, model: TransformerBase, common: dict):
    """The ``RobertaConfig`` of ``model`` (export): the padding id sets the position offset."""
    from transformers import RobertaConfig

    pad = common["pad_token_id"]
    if pad is None:
        raise NotImplementedError("a RoBERTa export needs the model's pad_id: its positions start after it")
    return RobertaConfig(**encoder_config(cfg, model, offset=pad + 1), type_vocab_size=1, **common)
