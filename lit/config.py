"""Data and task settings (mirrored 1:1 by the ``data:`` and ``task:`` sections of the YAML
configs)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from lit.data.sources import SOURCES

SCHEDULES = ("inverse_sqrt", "cosine", "constant")


def default_cache_dir() -> Path:
    """The per-user cache of tokenizers and the measured CPU peak when ``data.cache_dir`` is not
    set: ``$ABLATE_CACHE_DIR``, else ``$XDG_CACHE_HOME/ablate``, else ``~/.cache/ablate``. One
    place, so that runs started from two directories share one tokenizer and one CPU peak (MFU
    divides by the same number)."""
    if os.environ.get("ABLATE_CACHE_DIR"):
        return Path(os.environ["ABLATE_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ablate"


@dataclass
class DataConfig:
    source: str = "bible"
    lang: str = "en"  # language modelling
    src_lang: str = "de"  # translation
    tgt_lang: str = "en"
    path: Optional[str] = None  # directory for multi30k / text / parallel / hf (saved to disk)
    hf_name: Optional[str] = None  # hf: dataset name, e.g. "wikitext", "iwslt2017"
    hf_config: Optional[str] = None  # hf: configuration, e.g. "wikitext-103-raw-v1", "iwslt2017-de-en"
    text_field: str = "text"  # hf, language modelling
    pair_field: str = "translation"  # hf, translation: a {lang: text} dict
    vocab_size: int = 8000  # BPE vocabulary (the model's vocab_size is taken from the tokenizer)
    block_size: Optional[int] = None  # LM context length; default model.max_seq_len
    batch_size: int = 16  # LM: blocks per batch
    max_tokens: int = 4096  # translation: tokens per batch (max of source/target length x rows)
    length_multiple: int = 1  # translation: pad batch lengths up to a multiple (8/16: a few shapes for compiled kernels)
    limit_train: Optional[int] = None  # use only the first N training examples (a small slice)
    limit_eval: Optional[int] = None  # use only the first N validation/test examples
    max_words: Optional[int] = None  # keep only examples (both sides of a pair) of at most N words, in every split
    num_workers: int = 0
    cache_dir: Optional[str] = None  # tokenizers and the measured CPU peak; default: default_cache_dir()

    @property
    def cache_path(self) -> Path:
        """Where this run's tokenizers and the CPU peak are cached: ``cache_dir`` when set, else
        :func:`default_cache_dir` (one place per user, whatever the working directory)."""
        return Path(self.cache_dir).expanduser() if self.cache_dir else default_cache_dir()

    def lm_block_size(self, max_seq_len: int) -> int:
        """Language modelling: tokens per training block (``block_size``, default the model's context)."""
        return self.block_size or max_seq_len

    def __post_init__(self) -> None:
        SOURCES.get(self.source).check(self)
        if self.max_words is not None and self.max_words < 1:
            raise ValueError(f"data.max_words must be 1 or more (unset: every example), got {self.max_words}")
        for name in ("vocab_size", "batch_size", "max_tokens", "length_multiple"):
            if getattr(self, name) <= 0:
                raise ValueError(f"data.{name} must be positive, got {getattr(self, name)}")


@dataclass
class TaskConfig:
    name: str = "lm"
    lr: float = 1e-3
    weight_decay: float = 0.1  # applied to weights with >= 2 dimensions only
    betas: tuple[float, float] = (0.9, 0.98)
    schedule: str = "cosine"
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # cosine floor
    label_smoothing: float = 0.0  # training loss only; never in reported loss/perplexity
    z_loss: float = 0.0  # training objective += z_loss * logsumexp(logits)^2 per token (PaLM, OLMo 2)
    # language modelling: test perplexity at these multiples of the training context
    extrapolation: List[int] = field(default_factory=lambda: [1, 2, 4, 8])
    extrapolation_stride: Optional[int] = None  # sliding-window stride; default the context
    # translation decoding
    bleu_every_n_val: int = 1  # greedy BLEU on every n-th validation (0: never)
    beam_size: int = 4  # test decoding
    length_penalty: float = 1.0
    max_decode_len: int = 128

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown task.schedule {self.schedule!r}; choices: {', '.join(SCHEDULES)}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"task.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if not self.z_loss >= 0:
            raise ValueError(f"task.z_loss must be non-negative, got {self.z_loss}")
        if self.lr <= 0 or self.warmup_steps < 0:
            raise ValueError("task.lr must be positive and task.warmup_steps non-negative")
        self.betas = tuple(self.betas)
        if any(f < 1 for f in self.extrapolation):
            raise ValueError(f"task.extrapolation factors must be >= 1, got {list(self.extrapolation)}")
