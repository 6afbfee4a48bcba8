"""Position schemes (slot ``position``).

A scheme has four hooks, each a no-op unless the scheme needs it, so one slot decides every
way position information enters the model ("learned + ALiBi by accident" cannot be built):

- ``add_to_embeddings(x, positions)``: absolute encodings added to token embeddings;
- ``rotary(positions)``: ``(cos, sin)`` that rotate queries and keys of self-attention;
- ``score_bias(q_pos, k_pos)``: an additive bias on self-attention scores, from positions alone;
- ``score_terms(attn, q, k, q_pos, k_pos, scale)``: score terms that also depend on one layer's
  queries, keys and projections (DeBERTa's content-to-position and position-to-content terms),
  with the scale the scores then take; each self-attention layer calls it with itself.

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
- DeBERTa's disentangled attention: He et al. 2021, "DeBERTa: Decoding-enhanced BERT with
  Disentangled Attention", arXiv:2006.03654, section 3.1; the layout of DeBERTa-v3 (He et al.
  2021, arXiv:2111.09543): log-spaced buckets, one normed table per stack projected by each
  layer's own query and key projections, as Hugging Face's ``DisentangledSelfAttention`` (tested
  equal).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from variants.registry import NORMS, POSITIONS, Option


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

    def rotary(self, positions: torch.Tensor, local: bool = False):
        """``local``: the rotation of the sliding-window layers, None when it is the same."""
        return None

    def score_bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor):
        return None

    def score_terms(self, attn, q: torch.Tensor, k: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor,
                    scale: float) -> Optional[tuple[torch.Tensor, float]]:
        """Score terms of one self-attention layer ``attn`` that depend on its queries ``q`` (B, H, Tq, hd)
        and keys ``k`` (B, Hkv, Tk, hd; under a KV cache, every past key too) as well as on the
        positions ``q_pos`` (B|1, Tq) and ``k_pos`` (B|1, Tk): ``(bias, scale)``, a bias (B|1, H, Tq, Tk)
        added to the scaled scores and the factor on q·k that replaces ``scale`` (the layer's own),
        or None when the scheme has none (every scheme but ``deberta``). A scheme with score terms
        has no ``score_mod``: the terms reach the kernel in the mask."""
        return None

    def score_flops(self) -> float:
        """Forward FLOPs per token and layer of the scheme's own products beside q·k and the value
        product (DeBERTa's content-to-position and position-to-content terms); 0 for the others."""
        return 0.0

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
    """Rotate (..., T, hd) queries or keys by the angles in ``cos``/``sin`` (B|1, 1, T, r).

    ``x * cos + rotate_half(x) * sin`` with ``rotate_half(x) = [-x2, x1]`` on the halves of the
    last dimension; ``sin`` comes from :meth:`Rotary.rotary` with the first half negated, so the
    rotation is a roll of ``x`` and one fused multiply-add (three kernels, not six). With partial
    rotary embeddings (r < hd) the first r features rotate and the rest pass unchanged.
    """
    rotated = cos.size(-1)
    if rotated < x.size(-1):
        return torch.cat([apply_rotary(x[..., :rotated], cos, sin), x[..., rotated:]], dim=-1)
    if (x.requires_grad and torch.is_grad_enabled() and x.device.type == "cpu"
            and x.dtype == cos.dtype == sin.dtype == torch.float32 and not torch.compiler.is_compiling()):
        return _RotaryCPU.apply(x, cos, sin)
    half = x.size(-1) // 2
    return torch.addcmul(x * cos, x.roll(half, dims=-1), sin).to(x.dtype)


def _rotate_into(out: torch.Tensor, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``out = x * cos + roll(x, half) * sin``, half by half (no rolled copy of ``x``)."""
    half = x.size(-1) // 2
    for ours, theirs in ((slice(None, half), slice(half, None)), (slice(half, None), slice(None, half))):
        torch.mul(x[..., ours], cos[..., ours], out=out[..., ours]).addcmul_(x[..., theirs], sin[..., ours])
    return out


class _RotaryCPU(torch.autograd.Function):
    """:func:`apply_rotary` in fp32 on a CPU, when training: written half by half into one new tensor, forward
    and backward (two passes each way, where autograd runs the roll, its inverse and four
    products). The gradient is the inverse rotation: ``g * cos + roll(g * sin, half)`` (a roll by
    half is its own inverse), i.e. the same formula with ``sin``'s halves swapped."""

    @staticmethod
    def forward(ctx, x, cos, sin):
        ctx.save_for_backward(cos, sin)
        shape = torch.broadcast_shapes(x.shape, cos.shape)
        return _rotate_into(torch.empty(shape, dtype=x.dtype, device=x.device), x, cos, sin)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        cos, sin = ctx.saved_tensors
        half = sin.size(-1) // 2
        inverse = torch.cat([sin[..., half:], sin[..., :half]], dim=-1)  # (B|1, 1, T, r): small
        return _rotate_into(torch.empty_like(grad), grad, cos, inverse), None, None


def rotated_dims(cfg) -> int:
    """The features of each head that RoPE rotates (all, unless ``rope_fraction`` < 1)."""
    return int(cfg.head_dim * cfg.rope_fraction)


def rope_frequencies(cfg, base: Optional[float] = None) -> tuple[torch.Tensor, float]:
    """The inverse frequencies (r/2,) of the rotated features from ``base`` (default
    ``rope_base``), and the factor on cos and sin, under ``rope_scaling``:

    - ``linear`` (position interpolation, Chen et al. 2023, arXiv:2306.15595): every frequency
      divided by ``rope_factor``;
    - ``llama3`` (Llama 3.1): wavelengths longer than ``rope_original_max_len / rope_low_freq_factor``
      divided by the factor, shorter than ``.../ rope_high_freq_factor`` kept, smoothly between;
    - ``yarn`` (Peng et al. 2023, arXiv:2309.00071): frequencies that turn fewer than
      ``rope_beta_slow`` times over the original context interpolated, more than ``rope_beta_fast``
      times kept, a linear ramp between, and cos and sin scaled by ``0.1 ln(factor) + 1``.

    Computed as Hugging Face's ``modeling_rope_utils`` does (float32), so imports match.
    """
    rotated = rotated_dims(cfg)
    base = cfg.rope_base if base is None else base
    inv_freq = 1.0 / (base ** (torch.arange(0, rotated, 2, dtype=torch.float32) / rotated))
    kind, factor = cfg.rope_scaling, cfg.rope_factor
    original = cfg.rope_original_max_len or max(1, round(cfg.max_seq_len / factor))
    if kind == "linear":
        return inv_freq / factor, 1.0
    if kind == "llama3":
        low, high = original / cfg.rope_low_freq_factor, original / cfg.rope_high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low, inv_freq / factor, inv_freq)
        smooth = (original / wavelen - cfg.rope_low_freq_factor) / (cfg.rope_high_freq_factor - cfg.rope_low_freq_factor)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high) & ~(wavelen > low)
        return torch.where(medium, smoothed, scaled), 1.0
    if kind == "yarn":
        def dim_of(rotations: float) -> float:  # the feature index whose frequency turns that often
            return rotated * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

        lo, hi = max(math.floor(dim_of(cfg.rope_beta_fast)), 0), min(math.ceil(dim_of(cfg.rope_beta_slow)), rotated - 1)
        ramp = ((torch.arange(rotated // 2, dtype=torch.float32) - lo) / ((hi - lo) or 0.001)).clamp(0, 1)
        keep = 1 - ramp  # 1: extrapolate (keep the frequency), 0: interpolate
        attention = 0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0
        return inv_freq / factor * (1 - keep) + inv_freq * keep, attention
    return inv_freq, 1.0


@POSITIONS.register("rope")
class Rotary(PositionScheme):
    """Rotate each (i, i + r/2) feature pair of q and k by ``p * base^(-2i / r)``; r = hd, or
    ``rope_fraction`` of it (partial rotary embeddings: GPT-NeoX, Phi); the frequencies scaled
    for a longer context by ``rope_scaling`` (:func:`rope_frequencies`)."""

    options = (
        Option("rope_scaling", "none", "frequency scaling for a longer context: linear (position "
               "interpolation), llama3 (Llama 3.1), yarn (Qwen, DeepSeek)", short="scale",
               choices=("none", "linear", "llama3", "yarn"),
               examples=tuple({"rope_scaling": k, "rope_factor": 4.0} for k in ("linear", "llama3", "yarn"))),
        Option("rope_factor", 1.0, "how many times longer the context than the original (rope_scaling)",
               short="x", minimum=1.0, examples=({"rope_scaling": "linear", "rope_factor": 2.0},)),
        Option("rope_original_max_len", None, "the context the frequencies were made for (default: "
               "max_seq_len / rope_factor)", short="orig", kind=int, minimum=1,
               examples=({"rope_scaling": "llama3", "rope_factor": 4.0, "rope_original_max_len": 16},)),
        Option("rope_low_freq_factor", 1.0, "llama3: wavelengths over original / this are scaled",
               short="lowf", minimum=0.0,
               examples=({"rope_scaling": "llama3", "rope_factor": 4.0, "rope_low_freq_factor": 2.0},)),
        Option("rope_high_freq_factor", 4.0, "llama3: wavelengths under original / this are kept",
               short="highf", minimum=0.0,
               examples=({"rope_scaling": "llama3", "rope_factor": 4.0, "rope_high_freq_factor": 8.0},)),
        Option("rope_beta_fast", 32.0, "yarn: frequencies turning more often over the original context are kept",
               short="bfast", minimum=0.0,
               examples=({"rope_scaling": "yarn", "rope_factor": 4.0, "rope_beta_fast": 16.0},)),
        Option("rope_beta_slow", 1.0, "yarn: frequencies turning less often are interpolated", short="bslow",
               minimum=0.0, examples=({"rope_scaling": "yarn", "rope_factor": 4.0, "rope_beta_slow": 2.0},)),
        Option("rope_fraction", 1.0, "the fraction of each head's features that rotate", short="frac",
               minimum=0.0, examples=(0.5,)),
        Option("rope_local_base", None, "the base of the sliding-window layers' rotation (ModernBERT: 10,000 "
               "beside 160,000 on its global layers); default: rope_base", short="localbase", kind=float,
               minimum=1.0, examples=({"rope_local_base": 500.0, "window": 4, "window_global_every": 2},)),
    )

    @staticmethod
    def check_config(cfg) -> None:
        if cfg.head_dim % 2:
            width = (f"model.head_dim = {cfg.head_dim}" if cfg.head_dim * cfg.n_heads != cfg.d_model
                     else f"d_model / n_heads = {cfg.d_model} / {cfg.n_heads} = {cfg.head_dim}")
            raise ValueError(f"position 'rope' needs an even head dimension, but {width}")
        rotated = rotated_dims(cfg)
        if not 0 < cfg.rope_fraction <= 1 or rotated < 2 or rotated % 2:
            raise ValueError(f"model.rope_fraction ({cfg.rope_fraction}) must rotate an even number of at least 2 "
                             f"of the {cfg.head_dim} features of a head (got {rotated})")
        if (cfg.rope_scaling == "none") != (cfg.rope_factor == 1.0):
            raise ValueError(f"model.rope_scaling={cfg.rope_scaling!r} with rope_factor={cfg.rope_factor}: a scaling "
                             f"needs a factor above 1, and a factor needs a scaling (linear, llama3 or yarn)")
        if cfg.rope_low_freq_factor >= cfg.rope_high_freq_factor:
            raise ValueError(f"model.rope_low_freq_factor ({cfg.rope_low_freq_factor}) must be below "
                             f"rope_high_freq_factor ({cfg.rope_high_freq_factor})")
        if cfg.rope_beta_slow >= cfg.rope_beta_fast:
            raise ValueError(f"model.rope_beta_slow ({cfg.rope_beta_slow}) must be below rope_beta_fast "
                             f"({cfg.rope_beta_fast})")
        if cfg.rope_local_base is not None and cfg.rope_local_base == cfg.rope_base:
            raise ValueError(f"model.rope_local_base={cfg.rope_local_base} is model.rope_base, the rotation without "
                             f"it: leave model.rope_local_base out")
        if cfg.rope_local_base is not None and getattr(cfg, "window", None) is None:
            raise ValueError(f"model.rope_local_base={cfg.rope_local_base} is the base of the sliding-window layers, "
                             f"and there are none: set model.window, or leave model.rope_local_base out")

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        for option in self.options:  # kept under their keys: the fingerprint reads them here
            setattr(self, option.key, getattr(cfg, option.key))
        inv_freq, self.attention_factor = rope_frequencies(cfg)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        local = None if self.rope_local_base is None else rope_frequencies(cfg, self.rope_local_base)[0]
        self.register_buffer("inv_freq_local", local, persistent=False)

    def rotary(self, positions, local: bool = False):
        """``(cos, sin)`` (B|1, 1, T, r) for :func:`apply_rotary`, the first half of ``sin``
        negated, both times the scaling's attention factor (1 but for YaRN); ``local``: those of
        the sliding-window layers, None when they rotate as the others do."""
        if local and self.inv_freq_local is None:
            return None
        angles = positions.unsqueeze(-1).float() * (self.inv_freq_local if local else self.inv_freq)  # (B, T, r/2)
        sin = angles.sin()
        cos = torch.cat([angles, angles], dim=-1).cos().unsqueeze(1)
        sin = torch.cat([-sin, sin], dim=-1).unsqueeze(1)
        if self.attention_factor != 1.0:
            cos, sin = cos * self.attention_factor, sin * self.attention_factor
        return cos, sin


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

    options = (
        Option("t5_num_buckets", 32, "buckets of relative distance (half per direction in an encoder)",
               short="buckets", minimum=4, examples=(8,)),
        Option("t5_max_distance", 128, "distances from here on share the last bucket", short="maxdist",
               minimum=1, examples=(64,)),
    )

    @staticmethod
    def check_config(cfg) -> None:
        if cfg.t5_max_distance <= cfg.t5_num_buckets // 2:
            raise ValueError(f"model.t5_max_distance ({cfg.t5_max_distance}) must exceed t5_num_buckets / 2 "
                             f"({cfg.t5_num_buckets // 2}), where the log-spaced buckets begin")

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.t5_num_buckets, self.t5_max_distance = cfg.t5_num_buckets, cfg.t5_max_distance
        self.num_buckets, self.max_distance = self.t5_num_buckets, self.t5_max_distance
        self.bias = nn.Embedding(self.num_buckets, cfg.n_heads)

    def score_bias(self, q_pos, k_pos):
        relative = k_pos.unsqueeze(-2) - q_pos.unsqueeze(-1)  # (B, Tq, Tk)
        buckets = relative_position_bucket(relative, not self.causal, self.num_buckets, self.max_distance)
        return self.bias(buckets).permute(0, 3, 1, 2)  # (B, H, Tq, Tk)


def log_bucket_position(relative: torch.Tensor, buckets: int, max_distance: int) -> torch.Tensor:
    """DeBERTa's bucket (a long tensor of the same shape) of each query-minus-key distance.

    Distances up to ``buckets // 2`` (m) either way are their own bucket; a longer distance d goes
    to ``m + ceil((m - 1) log(d / m) / log((max_distance - 1) / m))``, with its sign, so that
    ``max_distance - 1`` reaches bucket 2m - 1 and longer distances go on past it (the caller
    clamps them to the table). Computed in float32 as Hugging Face's ``make_log_bucket_position``
    does, so the rounding up falls the same way (tested equal).
    """
    relative = relative.long()
    mid = buckets // 2
    distance = relative.abs()
    span = torch.log(torch.tensor((max_distance - 1) / mid))  # float32, as the reference
    far = torch.ceil(torch.log(distance.clamp(min=mid) / mid) / span * (mid - 1)) + mid
    return torch.where(distance <= mid, relative, far.long() * relative.sign())


@POSITIONS.register("deberta")
class Disentangled(PositionScheme):
    """DeBERTa's disentangled attention: the score of query i for key j adds to ``q_i·k_j`` a
    content-to-position term ``q_i·K_r[δ]`` and a position-to-content term ``k_j·Q_r[δ]``, all
    three scaled by ``(3 hd)^-½``, where δ is the bucket of the distance i − j
    (:func:`log_bucket_position`: ``deberta_buckets`` buckets each way, log-spaced up to
    ``deberta_max_distance``) shifted into the table's 2 × ``deberta_buckets`` rows and clamped
    there. ``Q_r`` and ``K_r`` are the stack's one table of relative embeddings, normed by the
    model's ``norm`` (DeBERTa-v3: LayerNorm) and projected by each layer's own query and key
    projections (biases and q/k norms included), as DeBERTa-v3 shares them (``share_att_key``).

    Under a KV cache the terms use every past key and its absolute position, so cached decoding
    equals the full pass; a causal stack uses only the half of the table for keys at or before
    the query. Positions come from the padding mask, so left padding does not shift distances.
    With ``attn_scale_dim`` the scale is ``(3 attn_scale_dim)^-½``.
    """

    options = (
        Option("deberta_buckets", 32, "relative distances on each side of the query, log-spaced beyond half of "
               "them (DeBERTa-v3: 256)", short="buckets", minimum=4,
               examples=(8, {"deberta_buckets": 4, "deberta_max_distance": 6})),
        Option("deberta_max_distance", 128, "the distance the last bucket begins at; longer ones share it "
               "(DeBERTa-v3: 512)", short="maxdist", minimum=4, examples=(20,)),
    )

    @staticmethod
    def check_config(cfg) -> None:
        if cfg.deberta_max_distance <= cfg.deberta_buckets // 2 + 1:
            raise ValueError(f"model.deberta_max_distance ({cfg.deberta_max_distance}) must exceed deberta_buckets / 2 "
                             f"+ 1 ({cfg.deberta_buckets // 2 + 1}): the log-spaced buckets begin after half of them")
        if cfg.option_values().get("attn_softcap") is not None:
            raise ValueError("position 'deberta' with model.attn_softcap: a cap on the content scores alone would leave "
                             "the disentangled terms uncapped, and DeBERTa defines no cap; leave model.attn_softcap out")

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.deberta_buckets, self.deberta_max_distance = cfg.deberta_buckets, cfg.deberta_max_distance
        self.qk_width = cfg.n_heads * cfg.head_dim  # the width of the queries (and of the repeated keys)
        self.table = nn.Embedding(2 * self.deberta_buckets, cfg.d_model)  # rows: distances -buckets .. buckets - 1
        self.norm = NORMS.build(cfg.norm, cfg)
        self.dropout = nn.Dropout(cfg.dropout)

    def relative_index(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        """The table row (B|1, Tq, Tk) of each query (B|1, Tq) and key (B|1, Tk) position pair."""
        relative = q_pos.unsqueeze(-1) - k_pos.unsqueeze(-2)  # i - j
        bucket = log_bucket_position(relative, self.deberta_buckets, self.deberta_max_distance)
        return (bucket + self.deberta_buckets).clamp(0, 2 * self.deberta_buckets - 1)

    def score_flops(self) -> float:
        """Each query against the 2 × ``deberta_buckets`` projected table rows (c2p) and each key
        likewise (p2c): 2 · 2s · H · hd each. (The table's projections, once per step, are left out.)"""
        return 8.0 * self.deberta_buckets * self.qk_width

    def score_terms(self, attn, q, k, q_pos, k_pos, scale):
        B, H, Tq, _ = q.shape
        Tk, groups = k.size(2), H // k.size(1)
        rel_q, rel_k = attn.project_qk(self.dropout(self.norm(self.table.weight)).unsqueeze(0))  # (1, H|Hkv, 2s, hd)
        if groups > 1:  # each key head serves `groups` consecutive query heads (the attention's GQA layout)
            rel_k, k = rel_k.repeat_interleave(groups, dim=1), k.repeat_interleave(groups, dim=1)
        index = self.relative_index(q_pos, k_pos).unsqueeze(1)  # (B|1, 1, Tq, Tk)
        c2p = (q @ rel_k.transpose(-1, -2)).gather(-1, index.expand(B, H, Tq, Tk))  # q_i·K_r[δ(i, j)]
        p2c = (k @ rel_q.transpose(-1, -2)).gather(-1, index.transpose(-1, -2).expand(B, H, Tk, Tq))  # k_j·Q_r[δ(i, j)]
        scale = scale / math.sqrt(3)  # three terms of the same width
        return (c2p + p2c.transpose(-1, -2)) * scale, scale
