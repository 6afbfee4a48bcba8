"""Tiny configurations and the registry-driven parametrization shared by the variants tests.

Every parametrization is computed from ``REGISTRIES[slot].names()`` at collection time, so a
newly registered component joins every test without test edits.

The model grid: ``kind`` x every slot in ``GRID_SLOTS`` (the full product), plus every other
slot varied over its whole registry one at a time (every kind) with the remaining slots at
``BASE_SLOTS``, plus every entry at each non-default example of each of its settings
(:func:`option_examples`). Set ``ABLATE_FULL_GRID=1`` to run the full product of every slot
instead.
"""

from __future__ import annotations

import itertools
import os

import pytest
import torch

from variants import REGISTRIES, ModelConfig, build_model
from variants.registry import KINDS, Option, options_of

PAD = 0

# Model kinds that decode incrementally (a KV cache); the encoder-only kind does not.
CACHED_KINDS = tuple(k for k in KINDS.names() if KINDS.get(k).cached)

# The tiny model every test uses; slot values and anything else come as overrides.
# init_std is 10x the default: at width 32 the default 0.02 leaves attention almost uniform and
# the effect of one token on another's logits around 1e-5, too close to float32 tolerances for
# a leak (padding, future tokens) to show.
TINY = dict(vocab_size=61, d_model=32, n_heads=4, n_layers=2, d_ff=64, max_seq_len=24,
            dropout=0.0, pad_id=PAD, init_std=0.2)

# Slots crossed fully with each other and with the model kind.
GRID_SLOTS = ("position", "norm_position")
# Values of the other slots while one slot is varied (the ModelConfig defaults).
BASE_SLOTS = {slot: ModelConfig.__dataclass_fields__[slot].default for slot in REGISTRIES}

FULL_GRID = os.environ.get("ABLATE_FULL_GRID", "") not in ("", "0")


def tiny_config(kind: str = "lm", **overrides) -> ModelConfig:
    """A tiny, dropout-free config; slot values default to ``BASE_SLOTS``."""
    return ModelConfig(kind=kind, **{**TINY, **BASE_SLOTS, **overrides})


def build(cfg: ModelConfig, seed: int = 0):
    """The model for ``cfg`` with seeded weights, in eval mode."""
    torch.manual_seed(seed)
    return build_model(cfg).eval()


# Order of the slot names inside a test id, e.g. ``lm-rope-pre-layernorm-gelu``.
ID_ORDER = ("position", "norm_position", "norm", "ffn")


def config_id(kind: str, slots: dict[str, str]) -> str:
    order = [s for s in ID_ORDER if s in slots] + sorted(set(slots) - set(ID_ORDER))
    return "-".join([kind] + [slots[s] for s in order])


def option_examples(option: Option) -> list:
    """The non-default values of a setting that the tests run in the tiny config: its
    ``examples``, or its other choices, or the other truth value of a flag."""
    if option.examples:
        return list(option.examples)
    if option.choices:
        return [c for c in option.choices if c != option.default]
    if isinstance(option.default, bool):
        return [not option.default]
    return []


def example_settings(key: str, example) -> dict:
    """An example of setting ``key`` as the settings it takes: itself, or a mapping given."""
    return dict(example) if isinstance(example, dict) else {key: example}


def options_only(settings: dict) -> dict:
    """The components' settings among ``settings``, without the model fields an example sets
    beside them (``qkv_bias`` needs ``bias: false``)."""
    return {key: value for key, value in settings.items() if key not in ModelConfig.__dataclass_fields__}


def slot_grid(kinds=tuple(KINDS.names())) -> list[dict[str, str]]:
    """One dict ``{"kind": ..., <slot>: <name>, ...}`` per grid point, without duplicates."""
    slots = sorted(REGISTRIES)
    points: list[dict[str, str]] = []
    if FULL_GRID:
        crossed = slots
    else:
        crossed = [s for s in GRID_SLOTS if s in REGISTRIES]
    for kind in kinds:
        for values in itertools.product(*(REGISTRIES[s].names() for s in crossed)):
            points.append({"kind": kind, **BASE_SLOTS, **dict(zip(crossed, values))})
        for slot in slots:
            if slot in crossed:
                continue
            for name in REGISTRIES[slot].names():
                points.append({"kind": kind, **BASE_SLOTS, slot: name})
        for slot in slots:  # each setting of each entry away from its default, one at a time
            for name in REGISTRIES[slot].names():
                for key, option in options_of(REGISTRIES[slot].get(name)).items():
                    points += [{"kind": kind, **BASE_SLOTS, slot: name, **example_settings(key, value)}
                               for value in option_examples(option)]
    unique = {point_id(p): p for p in points}
    return [unique[k] for k in sorted(unique)]


def point_id(point: dict) -> str:
    """``lm-rope-pre-layernorm-gelu-gpt2-gqa`` plus ``-n_kv_heads2`` for each setting."""
    slots = {s: point[s] for s in REGISTRIES}
    settings = [f"{k}{v}" for k, v in sorted(point.items()) if k != "kind" and k not in REGISTRIES]
    return "-".join([config_id(point["kind"], slots), *settings])


def grid_params(kinds=tuple(KINDS.names()), where=None) -> list:
    """``pytest.param(point, id=...)`` for the grid points (optionally filtered by ``where``)."""
    params = []
    for point in slot_grid(kinds):
        if where is not None and not where(point):
            continue
        params.append(pytest.param(point, id=point_id(point)))
    return params


def config_of(point: dict[str, str], **overrides) -> ModelConfig:
    return tiny_config(**{**point, **overrides})


def tokens(batch: int, length: int, seed: int, vocab: int = TINY["vocab_size"]) -> torch.Tensor:
    """Random non-pad token ids (B, T)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, vocab, (batch, length), generator=g)


def assert_close(actual, expected, msg=""):
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5, msg=msg or None)


def check_cache_and_maps(model, kind: str) -> tuple:
    """On a left-padded batch (source padding in seq2seq): cached decoding gives the full pass's
    logits, and the recording path (explicit softmax, for attention maps) the same outputs as
    SDPA. Returns the model's arguments."""
    from variants.maps import _recording

    seq = torch.randint(1, 61, (3, 9), generator=torch.Generator().manual_seed(3))
    seq[1, :5] = seq[2, :2] = 0
    real = seq != 0
    with torch.no_grad():
        if kind == "lm":
            full = model(seq)
            cache = model.new_cache(3, 9)
            steps = [model(seq[:, :5], cache)] + [model(seq[:, t:t + 1], cache) for t in range(5, 9)]
            torch.testing.assert_close(torch.cat(steps, 1)[real], full[real], rtol=1e-4, atol=1e-5)
            args = (seq,)
        else:
            memory, valid = model.encode(seq)
            tgt = torch.randint(1, 61, (3, 6), generator=torch.Generator().manual_seed(4))
            full = model.decode(tgt, memory, valid)
            cache = model.new_cache(3, 6)
            steps = [model.decode(tgt[:, t:t + 1], memory, valid, cache) for t in range(6)]
            torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-4, atol=1e-5)
            args = (seq, tgt)
        expected = model(*args)
        with _recording(model):
            torch.testing.assert_close(model(*args), expected, rtol=1e-4, atol=1e-5)
    return args


def assert_encoder_parity(ours, hf, tokens: torch.Tensor, pad: int, close) -> None:
    """An imported encoder's logits equal ``hf``'s on ``tokens`` (no padding), and at the real
    tokens once rows 1 and 2 are right-padded with ``pad`` (HF given ``attention_mask``)."""
    tokens = tokens.clone()
    with torch.no_grad():
        close(ours(tokens), hf(tokens).logits)
        tokens[1, 2 * tokens.size(1) // 3:] = pad
        tokens[2, tokens.size(1) // 3:] = pad
        mask = (tokens != pad).long()
        theirs, mine = hf(tokens, attention_mask=mask).logits, ours(tokens)
    real = mask.bool()
    close(mine[real], theirs[real])
