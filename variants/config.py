"""The model configuration: one dataclass, validated before any tensor is made."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

from variants.registry import REGISTRIES

KINDS = ("lm", "seq2seq")


@dataclass
class ModelConfig:
    """Everything needed to build a model; the registry slots are plain strings.

    ``d_ff`` is the feed-forward width of the non-gated baseline (default ``4 * d_model``).
    Gated feed-forwards (``swiglu``, ``geglu``) default to a hidden width that keeps their
    parameter count equal to that baseline (``round(2 * d_ff / 3)``); ``ffn_hidden`` sets the
    hidden width explicitly for any feed-forward (used to import pretrained models).
    """

    kind: str = "lm"
    vocab_size: int = 8192
    d_model: int = 256
    n_heads: int = 4
    n_layers: int = 4
    d_ff: Optional[int] = None
    max_seq_len: int = 256
    dropout: float = 0.1
    # registry slots
    norm: str = "layernorm"
    norm_position: str = "pre"
    position: str = "learned"
    ffn: str = "gelu"
    attention: str = "mha"
    init: str = "gpt2"  # parameter initialisation (variants/init.py)
    # finer controls
    n_encoder_layers: Optional[int] = None  # seq2seq; default n_layers
    n_decoder_layers: Optional[int] = None  # seq2seq; default n_layers
    ffn_hidden: Optional[int] = None
    bias: bool = True  # biases in linear layers and LayerNorm
    norm_eps: float = 1e-5
    rope_base: float = 10000.0
    t5_num_buckets: int = 32  # position 't5': buckets of relative distance
    t5_max_distance: int = 128  # position 't5': distances from here on share the last bucket
    pad_id: Optional[int] = 0  # None: no token is padding
    tie_embeddings: bool = True  # output head shares the (joint) token embedding
    scale_embeddings: bool = False  # multiply token embeddings by sqrt(d_model) (init 'xavier' does so itself)
    embed_norm: bool = False  # a norm right after the embeddings (BLOOM)
    init_std: float = 0.02

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown kind {self.kind!r}; choices: {', '.join(KINDS)}")
        for slot, registry in REGISTRIES.items():
            registry.check(getattr(self, slot))
        for name in ("vocab_size", "d_model", "n_heads", "n_layers", "max_seq_len"):
            _positive(self, name)
        for name in ("d_ff", "ffn_hidden", "n_encoder_layers", "n_decoder_layers"):
            if getattr(self, name) is not None:
                _positive(self, name)
        if self.d_model % self.n_heads:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})"
            )
        if self.position == "rope" and self.head_dim % 2:
            raise ValueError(
                f"position 'rope' needs an even head dimension, but d_model / n_heads = "
                f"{self.d_model} / {self.n_heads} = {self.head_dim}"
            )
        if self.position == "t5":
            if self.t5_num_buckets < 4:
                raise ValueError(f"t5_num_buckets must be at least 4, got {self.t5_num_buckets}")
            if self.t5_max_distance <= self.t5_num_buckets // 2:
                raise ValueError(f"t5_max_distance ({self.t5_max_distance}) must exceed t5_num_buckets / 2 "
                                 f"({self.t5_num_buckets // 2}), where the log-spaced buckets begin")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.norm_eps <= 0:
            raise ValueError(f"norm_eps must be positive, got {self.norm_eps}")
        if self.pad_id is not None and not 0 <= self.pad_id < self.vocab_size:
            raise ValueError(f"pad_id ({self.pad_id}) must lie in [0, vocab_size={self.vocab_size})")
        if self.scale_embeddings and REGISTRIES["init"].get(self.init).scales_embeddings:
            raise ValueError(f"init {self.init!r} scales the token embeddings by sqrt(d_model) itself; "
                             f"leave scale_embeddings false")
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def embeddings_scaled(self) -> bool:
        """Token embeddings multiplied by sqrt(d_model): asked for, or part of the init scheme."""
        return self.scale_embeddings or REGISTRIES["init"].get(self.init).scales_embeddings

    @property
    def encoder_layers(self) -> int:
        return self.n_encoder_layers or self.n_layers

    @property
    def decoder_layers(self) -> int:
        return self.n_decoder_layers or self.n_layers

    def components(self) -> dict[str, str]:
        """Slot -> the registry entry that fills it."""
        return {slot: getattr(self, slot) for slot in REGISTRIES}

    def components_name(self) -> str:
        """``norm-placement-position-ffn``, then the attention when it is not ``mha`` and the init
        when it is not ``gpt2`` (names of runs made before those were slots stay as they were)."""
        parts = [self.norm, self.norm_position, self.position, self.ffn]
        parts += [self.attention] if self.attention != "mha" else []
        return "-".join(parts + ([self.init] if self.init != "gpt2" else []))

    def replace(self, **changes) -> "ModelConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _positive(cfg: ModelConfig, name: str) -> None:
    value = getattr(cfg, name)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
