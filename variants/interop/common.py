"""What the family converters of :mod:`variants.interop` share: the state dict consumed key by
key, the weight mappings (linear, norm, output head), refusals of unsupported settings, and the
Hugging Face activation names of our feed-forward entries."""

from __future__ import annotations

import torch

from variants.config import ModelConfig
from variants.models import TransformerBase

# Hugging Face activation names -> our feed-forward entries.
_PLAIN_FFN = {"relu": "relu", "gelu": "gelu", "gelu_new": "gelu_tanh",
             "gelu_pytorch_tanh": "gelu_tanh", "silu": "silu", "swish": "silu"}
_GATED_FFN = {"silu": "swiglu", "swish": "swiglu", "gelu": "geglu", "relu": "reglu"}
# ... and back: one Hugging Face name per plain entry (GPT-2 and Marian export)
_PLAIN_ACTIVATION = {ours: theirs for theirs, ours in _PLAIN_FFN.items()
                    if theirs not in ("gelu_pytorch_tanh", "swish")}

# Buffers some transformers versions keep in the state dict; they are not weights.
_NOT_WEIGHTS = (".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq")


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


def _offset_gains(state: dict[str, torch.Tensor], suffixes: tuple[str, ...], by: float) -> dict[str, torch.Tensor]:
    """``state`` with ``by`` added (in fp32) to each tensor whose key ends with one of ``suffixes``:
    the norm gains a family stores as an offset from 1 (Gemma 2's ``x * (1 + weight)``), moved to
    the gain (``by`` 1, import) or back to the offset (-1, export). Placed outside the converters,
    so that export can still probe them with element indices."""
    if not suffixes:
        return state
    return {key: t.float() + by if key.endswith(suffixes) else t for key, t in state.items()}


def _linear(src: _Weights, ours: str, *theirs: str, conv1d: bool = False) -> dict:
    """Our linear ``ours`` from one HF linear, or several stacked along the output rows.
    ``conv1d``: HF GPT-2's Conv1D, whose weight is stored (in, out)."""
    weights = [src.take(f"{name}.weight") for name in theirs]
    out = {f"{ours}.weight": torch.cat([w.t() if conv1d else w for w in weights])}
    if src.has(f"{theirs[0]}.bias"):
        out[f"{ours}.bias"] = torch.cat([src.take(f"{name}.bias") for name in theirs])
    return out


def _norm(src: _Weights, ours: str, theirs: str) -> dict:
    """Our norm ``ours`` from the HF norm ``theirs`` (weight, and bias where it has one)."""
    out = {f"{ours}.weight": src.take(f"{theirs}.weight")}
    if src.has(f"{theirs}.bias"):
        out[f"{ours}.bias"] = src.take(f"{theirs}.bias")
    return out


def _head(src: _Weights, cfg: ModelConfig, head: str, embedding: str) -> dict:
    """The output head: checked equal to the embedding when tied, else copied."""
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
    """Our feed-forward entry for the HF ``activation`` name, looked up in ``table``."""
    if activation not in table:
        raise NotImplementedError(
            f"{family} activation {activation!r} has no feed-forward entry here; "
            f"supported: {', '.join(sorted(table))}")
    return table[activation]


def _hidden_width(model: TransformerBase) -> int:
    """The feed-forward hidden width, as built (the down projection's input; an expert's, for a
    mixture of experts)."""
    ffn = getattr(model, next(iter(model.stacks))).blocks[0].ffn  # every stack has the same width
    return ffn.experts[0].down.weight.shape[1] if hasattr(ffn, "experts") else ffn.down.weight.shape[1]
