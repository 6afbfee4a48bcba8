"""Position schemes (slot ``position``).

A scheme has three hooks, each a no-op unless the scheme needs it, so one slot decides every
way position information enters the model ("learned + ALiBi by accident" cannot be built):

- ``add_to_embeddings(x, positions)``: absolute encodings added to token embeddings;
- ``rotary(positions)``: ``(cos, sin)`` that rotate queries and keys of self-attention;
- ``score_bias(q_pos, k_pos)``: an additive bias on self-attention scores.

A scheme with a score bias may also return it as a FlexAttention ``score_mod`` from
``score_mod()``, so that on a GPU the bias is added inside the attention kernel
(:func:`variants.attention.flex_attention_with`) instead of being built as an (H, T, T)
tensor. A new bias is therefore one class here: the attention layers need no edit.

Cross-attention (decoder queries over encoder keys) gets no position signal from any scheme:
queries and keys come from different sequences, so "relative distance" has no meaning there.
The encoder's and the decoder's own embeddings/self-attention carry the positions.

Shapes: B batch, T tokens (Tq queries, Tk keys), H heads, D d_model, hd head dim.
``positions`` is (B, T) or (1, T) of absolute token indices (left padding shifts them, so they
come from the padding mask, not from ``arange``; under a KV cache they continue from the cache).

References:
- Sinusoidal: Vaswani et al. 2017, arXiv:1706.03762 (laid out as [sin | cos] halves, as in
  tensor2tensor, fairseq and Marian: the same function up to a fixed permutation of features).
- Learned absolute: Gehring et al. 2017, arXiv:1705.03122; GPT-2 (Radford et al. 2019).
- RoPE: Su et al. 2021, "RoFormer", arXiv:2104.09864 (half-split "rotate_half" layout as in
  GPT-NeoX and Hugging Face LLaMA; the interleaved layout is the same function after a fixed
  permutation of q/k weights).
- ALiBi: Press et al. 2022, "Train Short, Test Long", arXiv:2108.12409.
- T5 relative position bias: Raffel et al. 2020, "Exploring the Limits of Transfer Learning with
  a Unified Text-to-Text Transformer", JMLR 21(140), section 2.1; buckets as in Mesh TensorFlow
  and Hugging Face's ``T5Attention`` (tested equal).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from variants.registry import POSITIONS


class PositionScheme(nn.Module):
    """Base class: every hook is a no-op. ``causal`` is set by the stack that owns the scheme
    (decoder and LM stacks: True; encoders: False), for schemes whose bias differs between them."""

    causal: bool = False

    def __init__(self, cfg) -> None:
        super().__init__()

    @staticmethod
    def max_length(cfg) -> Optional[int]:
        """The longest sequence a scheme built from ``cfg`` can encode; None: any length. Known
        from the config alone, so a run asking for longer sequences is refused before it starts."""
        return None

    def check_length(self, length: int) -> None:
        """Raise ``ValueError`` if sequences of ``length`` tokens cannot be encoded."""

    def add_to_embeddings(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return x

    def rotary(self, positions: torch.Tensor):
        return None

    def score_bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor):
        return None

    def score_mod(self):
        """``score_bias`` as a FlexAttention ``score_mod(score, b, h, q_idx, kv_idx)``, or None
        when the scheme has no bias or cannot express it so. It is used only when query and key
        positions are the token indices (no padding, no KV cache)."""
        return None


@POSITIONS.register("none")
class NoPosition(PositionScheme):
    """No explicit positions (a causal decoder can still infer them: Haviv et al. 2022)."""


@POSITIONS.register("sinusoidal")
class Sinusoidal(PositionScheme):
    """Fixed ``[sin(p * w_i) | cos(p * w_i)]`` with ``w_i = 10000^(-2i / D)``; any length."""

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        n_sin = (cfg.d_model + 1) // 2
        self.n_cos = cfg.d_model // 2
        inv_freq = 10000.0 ** (-2.0 * torch.arange(n_sin, dtype=torch.float64) / cfg.d_model)
        self.register_buffer("inv_freq", inv_freq.float(), persistent=False)

    def table(self, positions: torch.Tensor) -> torch.Tensor:
        """The encodings (..., T, D) of ``positions`` (..., T), before any cast to the embeddings' dtype."""
        angles = positions.unsqueeze(-1).float() * self.inv_freq  # (..., T, ceil(D/2))
        return torch.cat([angles.sin(), angles[..., : self.n_cos].cos()], dim=-1)

    def add_to_embeddings(self, x, positions):
        return x + self.table(positions).to(x.dtype)


@POSITIONS.register("learned")
class Learned(PositionScheme):
    """A trained table of ``max_seq_len`` position vectors added to the embeddings."""

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.max_seq_len = cfg.max_seq_len
        self.table = nn.Embedding(cfg.max_seq_len, cfg.d_model)

    @staticmethod
    def max_length(cfg) -> Optional[int]:
        return cfg.max_seq_len

    def check_length(self, length):
        if length > self.max_seq_len:
            raise ValueError(
                f"sequence of {length} tokens exceeds max_seq_len={self.max_seq_len}, the size "
                f"of the learned position table (position 'learned' cannot extrapolate)"
            )

    def add_to_embeddings(self, x, positions):
        return x + self.table(positions)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (..., T, hd) queries or keys by the angles in ``cos``/``sin`` (B|1, 1, T, hd).

    ``x * cos + rotate_half(x) * sin`` with ``rotate_half(x) = [-x2, x1]`` on the halves of the
    last dimension; ``sin`` comes from :meth:`Rotary.rotary` with the first half negated, so the
    rotation is a roll of ``x`` and one fused multiply-add (three kernels, not six).
    """
    half = x.size(-1) // 2
    return torch.addcmul(x * cos, x.roll(half, dims=-1), sin).to(x.dtype)


@POSITIONS.register("rope")
class Rotary(PositionScheme):
    """Rotate each (i, i + hd/2) feature pair of q and k by ``p * base^(-2i / hd)``."""

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        hd = cfg.head_dim
        inv_freq = cfg.rope_base ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)
        self.register_buffer("inv_freq", inv_freq.float(), persistent=False)

    def rotary(self, positions):
        """``(cos, sin)`` (B|1, 1, T, hd) for :func:`apply_rotary`, the first half of ``sin``
        negated."""
        angles = positions.unsqueeze(-1).float() * self.inv_freq  # (B, T, hd/2)
        sin = angles.sin()
        return torch.cat([angles, angles], dim=-1).cos().unsqueeze(1), torch.cat([-sin, sin], dim=-1).unsqueeze(1)


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """Head slopes of Press et al.: ``2^(-8i/n)``, i = 1..n, for n a power of two; otherwise
    the slopes for the largest power of two below n, then every other slope of twice that."""

    def geometric(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    closest = 2 ** math.floor(math.log2(n_heads))
    slopes = geometric(closest)
    if closest < n_heads:
        slopes += geometric(2 * closest)[0::2][: n_heads - closest]
    return torch.tensor(slopes)


@POSITIONS.register("alibi")
class ALiBi(PositionScheme):
    """Bias scores by ``-slope_h * |q_pos - k_pos|``.

    In a causal decoder only ``k_pos <= q_pos`` survives the mask, so this is the paper's
    ``-slope * (q - k)``; in an encoder it is the symmetric distance penalty.
    """

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.register_buffer("slopes", alibi_slopes(cfg.n_heads), persistent=False)

    def score_bias(self, q_pos, k_pos):
        distance = (q_pos.unsqueeze(-1) - k_pos.unsqueeze(-2)).abs().unsqueeze(1)  # (B, 1, Tq, Tk)
        return -self.slopes.view(1, -1, 1, 1) * distance  # (B, H, Tq, Tk)

    def score_mod(self):
        slopes = self.slopes

        def distance_penalty(score, b, h, q_idx, kv_idx):
            return score - slopes[h] * (q_idx - kv_idx).abs()

        return distance_penalty


def relative_position_bucket(relative_position: torch.Tensor, bidirectional: bool = True, num_buckets: int = 32,
                             max_distance: int = 128) -> torch.Tensor:
    """T5's bucket (a long tensor of the same shape) of each key-minus-query distance.

    Bidirectional, half the buckets are for keys after the query, half for the rest; causal,
    all are for keys at or before the query (keys after it share bucket 0, and the mask hides
    them). Within a side, the first half of its buckets hold distances 0, 1, 2, ... one each;
    the rest cover the distances up to ``max_distance`` on a log scale, and every longer
    distance falls in the side's last bucket, so the bias is defined at any length.
    """
    relative_position = relative_position.long()
    side = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        side = (relative_position > 0).long() * num_buckets
        distance = relative_position.abs()
    else:
        distance = (-relative_position).clamp(min=0)
    exact = num_buckets // 2
    log_scaled = (torch.log(distance.clamp(min=1).float() / exact) / math.log(max_distance / exact)
                  * (num_buckets - exact))
    far = (exact + log_scaled.long()).clamp(max=num_buckets - 1)
    return side + torch.where(distance < exact, distance, far)


@POSITIONS.register("t5")
class T5Bias(PositionScheme):
    """A learned scalar per head for each bucket of key-minus-query distance, added to the
    self-attention scores (``t5_num_buckets`` buckets up to ``t5_max_distance``). One table per
    stack: the bias is computed once per forward pass and every layer of the stack adds it, as
    in T5. Positions are the absolute token indices, so under a KV cache they continue from the
    cache and the bias is the full pass's. It has no in-kernel form here (a learned bias needs
    gradients through the kernel's ``score_mod``): on GPUs it is folded into SDPA's mask."""

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.num_buckets, self.max_distance = cfg.t5_num_buckets, cfg.t5_max_distance
        self.bias = nn.Embedding(self.num_buckets, cfg.n_heads)

    def score_bias(self, q_pos, k_pos):
        relative = k_pos.unsqueeze(-2) - q_pos.unsqueeze(-1)  # (B, Tq, Tk)
        buckets = relative_position_bucket(relative, not self.causal, self.num_buckets, self.max_distance)
        return self.bias(buckets).permute(0, 3, 1, 2)  # (B, H, Tq, Tk)
