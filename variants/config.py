"""The model configuration: one dataclass, validated before any tensor is made."""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from variants.registry import KINDS, REGISTRIES, Option, option_owners, options_of, settings_label


@dataclass
class ModelConfig:
    """Everything needed to build a model; the registry slots are plain strings.

    ``d_ff`` is the feed-forward width of the non-gated baseline (default ``4 * d_model``).
    Gated feed-forwards (``swiglu``, ``geglu``) default to a hidden width that keeps their
    parameter count equal to that baseline (``round(2 * d_ff / 3)``); ``ffn_hidden`` sets the
    hidden width explicitly for any feed-forward (used to import pretrained models).

    A component's own settings (:class:`variants.registry.Option`, e.g. ``n_kv_heads`` of
    ``gqa``) are given as keyword arguments like the fields (``ModelConfig(attention="gqa",
    n_kv_heads=2)``) and kept in ``options``, holding only the values away from their defaults;
    ``cfg.n_kv_heads`` reads one (its default when unset). A setting whose component is not
    chosen is refused, unless it is at its default.
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
    pad_id: Optional[int] = 0  # None: no token is padding
    tie_embeddings: bool = True  # output head shares the (joint) token embedding
    scale_embeddings: bool = False  # multiply token embeddings by sqrt(d_model) (init 'xavier' does so itself)
    embed_norm: bool = False  # a norm right after the embeddings (BLOOM, BERT)
    # BERT's masked-LM prediction head: dense (d_model -> d_model), GELU and a norm between the final
    # states and the output projection, which gets a bias (BERT, RoBERTa, DeBERTa, ModernBERT)
    head_transform: bool = False
    init_std: float = 0.02
    logit_softcap: Optional[float] = None  # final logits = c * tanh(logits / c) (Gemma 2); None: none
    options: Dict[str, Any] = field(default_factory=dict)  # the chosen components' settings

    def __post_init__(self) -> None:
        KINDS.check(self.kind)  # the model classes of variants.models
        for slot, registry in REGISTRIES.items():
            registry.check(getattr(self, slot))
        self.options = self._checked_options()
        for name in ("vocab_size", "d_model", "n_heads", "n_layers", "max_seq_len"):
            _positive(self, name)
        for name in ("d_ff", "ffn_hidden", "n_encoder_layers", "n_decoder_layers"):
            if getattr(self, name) is not None:
                _positive(self, name)
        if self.d_model % self.n_heads and self.options.get("head_dim") is None:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads}), or the attention's "
                f"head_dim set"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.logit_softcap is not None and not self.logit_softcap > 0:
            raise ValueError(f"logit_softcap must be positive (or null for none), got {self.logit_softcap}")
        if self.norm_eps <= 0:
            raise ValueError(f"norm_eps must be positive, got {self.norm_eps}")
        if self.pad_id is not None and not 0 <= self.pad_id < self.vocab_size:
            raise ValueError(f"pad_id ({self.pad_id}) must lie in [0, vocab_size={self.vocab_size})")
        if self.scale_embeddings and REGISTRIES["init"].get(self.init).scales_embeddings:
            raise ValueError(f"init {self.init!r} scales the token embeddings by sqrt(d_model) itself; "
                             f"leave scale_embeddings false")
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        for cls in self._chosen().values():  # each component checks its settings against the rest
            check = getattr(cls, "check_config", None)
            if check is not None:
                check(self)

    def _chosen(self) -> dict[str, type]:
        """Slot -> the class of the chosen entry."""
        return {slot: registry.get(object.__getattribute__(self, slot)) for slot, registry in REGISTRIES.items()}

    def _declared(self) -> dict[str, tuple[str, Option]]:
        """Option key -> (owner, option) over the chosen components; owner reads ``attention 'gqa'``."""
        found: dict[str, tuple[str, Option]] = {}
        for slot, cls in self._chosen().items():
            for key, option in options_of(cls).items():
                found.setdefault(key, (f"{slot} {cls.registry_name!r}", option))
        return found

    def _checked_options(self) -> dict[str, Any]:
        if not isinstance(self.options, dict):
            raise ValueError(f"options must be a mapping of option keys to values, got {self.options!r}")
        declared, kept = self._declared(), {}
        for key, value in self.options.items():
            if key in declared:
                owner, option = declared[key]
                value = option.parse(value, owner)
                if value != option.default:
                    kept[key] = value
                continue
            owners = option_owners().get(key)
            if not owners:
                raise ValueError(f"model.{key}: not a model field, and no registered component declares it as "
                                 f"an option")
            if all(value == option.default for _, _, option in owners):
                continue  # a setting at its default changes nothing (a config written with every key)
            slots = sorted({slot for slot, _, _ in owners})
            entries = ", ".join(sorted({repr(name) for _, name, _ in owners}))
            chosen = ", ".join(f"{slot}={getattr(self, slot)!r}" for slot in slots)
            raise ValueError(f"model.{key} is an option of {' / '.join(slots)} {entries}, but the config has "
                             f"{chosen}: choose that component or leave model.{key} out")
        return kept

    def __getattr__(self, name: str) -> Any:
        """A chosen component's setting: its value, or its default when unset."""
        if name.startswith("_") or name == "options":
            raise AttributeError(name)
        try:
            declared = self._declared()
        except AttributeError:  # fields not set yet (copying, unpickling)
            raise AttributeError(name) from None
        if name not in declared:
            raise AttributeError(f"{type(self).__name__} has no field {name!r}, and no chosen component "
                                 f"declares it as an option")
        return self.options.get(name, declared[name][1].default)

    def settings(self, slot: str) -> dict[str, Any]:
        """The settings of the entry in ``slot`` that are away from their defaults."""
        keys = options_of(self._chosen()[slot])
        return {key: value for key, value in self.options.items() if key in keys}

    def option_values(self) -> dict[str, Any]:
        """Every option of the chosen components, at its value (the default when unset)."""
        return {key: self.options.get(key, option.default) for key, (_, option) in self._declared().items()}

    def labels(self) -> dict[str, str]:
        """Slot -> the chosen entry with its settings, as :meth:`fingerprint` reports it."""
        return {slot: settings_label(getattr(self, slot), self.settings(slot)) for slot in REGISTRIES}

    @property
    def head_dim(self) -> int:
        """The width of one attention head: the attention's ``head_dim`` setting, else d_model / n_heads."""
        return self.options.get("head_dim") or self.d_model // self.n_heads

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
        when it is not ``gpt2`` (names of runs made before those were slots stay as they were).
        Each entry is followed by its settings away from their defaults (``gqa-kv2``)."""
        parts = []
        for slot, cls in self._chosen().items():
            if not (slot, cls.registry_name) in _LEFT_OUT_OF_NAMES:
                parts.append(cls.registry_name)
            declared = options_of(cls)
            parts += [declared[key].tag(value) for key, value in self.settings(slot).items()]
        return "-".join(parts)

    def replace(self, **changes) -> "ModelConfig":
        """A copy with some fields (or options) changed, validated again. Settings of a component
        that a change replaces are dropped, unless given again."""
        kept = dict(self.options)
        if any(slot in changes for slot in REGISTRIES):
            new = {slot: changes.get(slot, getattr(self, slot)) for slot in REGISTRIES}
            owned = {key for slot, name in new.items() if name in REGISTRIES[slot]
                     for key in options_of(REGISTRIES[slot].get(name))}
            kept = {key: value for key, value in kept.items() if key in owned}
        return dataclasses.replace(self, **{"options": {**kept, **changes.pop("options", {})}, **changes})

    def to_dict(self) -> dict:
        """The fields and the chosen components' settings in one flat mapping (``ModelConfig(**d)``
        builds it again)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "options"}
        return {**fields, **self.option_values()}


# slot entries that run names leave out: defaults of slots added after runs were named
_LEFT_OUT_OF_NAMES = {("attention", "mha"), ("init", "gpt2")}
_FIELDS = {f.name for f in dataclasses.fields(ModelConfig)}
_generated_init = ModelConfig.__init__


@functools.wraps(_generated_init)
def _init(self, *args, **kwargs) -> None:
    """The dataclass's ``__init__``, taking the components' settings as keywords too."""
    options = dict(kwargs.pop("options", None) or {})
    for key in [k for k in kwargs if k not in _FIELDS]:
        options[key] = kwargs.pop(key)
    _generated_init(self, *args, options=options, **kwargs)


ModelConfig.__init__ = _init


def _positive(cfg: ModelConfig, name: str) -> None:
    value = getattr(cfg, name)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
