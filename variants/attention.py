"""The attention slot (``attention``): multi-head attention on ``scaled_dot_product_attention``,
the inputs every attention layer is called with, their masks, and the KV cache.

Shapes: B batch, T query tokens, S source tokens, Tk key tokens, H heads, hd head dim
(d_model / H, or the ``head_dim`` setting), D = d_model. Boolean masks follow SDPA: ``True`` =
may attend.

References: Vaswani et al. 2017, "Attention Is All You Need", arXiv:1706.03762; Gemma Team
2024, "Gemma 2: Improving Open Language Models at a Practical Size", arXiv:2408.00118 (scores
soft-capped, scaled by a width of their own); Qwen Team 2024, "Qwen2 Technical Report",
arXiv:2407.10671 (biases on q, k, v only).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from variants.init import residual_output
from variants.positions import apply_rotary
from variants.registry import ATTENTIONS, Option


@dataclass
class AttentionInputs:
    """What one stack's attention layers are called with, computed once per forward pass.

    Self-attention gets the position scheme's signals (``rotary``; its score bias folded into
    ``mask``, or as ``score_mod`` for a FlexAttention kernel; ``score_terms``, which each layer
    calls with itself: :meth:`variants.positions.PositionScheme.score_terms`); cross-attention
    gets ``memory`` and the source padding in ``mask``, and no position signal.
    """

    positions: torch.Tensor  # (B|1, T) absolute positions of the queries
    mask: Optional[torch.Tensor]  # SDPA attn_mask (B|1, 1|H, T, Tk): bool, or float with the bias
    is_causal: bool  # SDPA's causal flag (only when ``mask`` is None)
    key_valid: Optional[torch.Tensor] = None  # (B, Tk) bool, False at padding; None = no padding
    rotary: Optional[tuple[torch.Tensor, torch.Tensor]] = None  # (cos, sin) for q and k
    score_mod: Optional[Callable] = None  # the position bias inside the kernel, instead of ``mask``
    cache: Optional["KVCache"] = None
    memory: Optional[torch.Tensor] = None  # cross-attention: encoder states (B, S, D)
    record: Optional[list] = None  # attention maps asked for: each layer appends its probabilities
    key_positions: Optional[torch.Tensor] = None  # (B|1, Tk) absolute positions of the keys (self-attention)
    score_terms: Optional[Callable] = None  # the scheme's per-layer score terms (self-attention)
    rotary_local: Optional[tuple[torch.Tensor, torch.Tensor]] = None  # of the window layers, when they differ
    in_kernel: bool = False  # a FlexAttention kernel may run: on a GPU, nothing padded, no cache, no maps, no dropout


def self_attention_inputs(position, positions: torch.Tensor, key_positions: torch.Tensor,
                          key_valid: Optional[torch.Tensor], *, causal: bool, cache: Optional["KVCache"],
                          in_kernel: bool) -> AttentionInputs:
    """The self-attention inputs of one stack under the position scheme ``position``.

    ``in_kernel``: whether a FlexAttention kernel may run (see :func:`flex_available`; no
    attention dropout). The scheme's ``score_mod`` is used when it has one and nothing else
    needs a mask (no padding, no cache: then positions are the token indices the kernel sees);
    otherwise its ``score_bias`` is built as a tensor and folded into SDPA's mask.
    """
    score_mod = position.score_mod() if in_kernel and key_valid is None and cache is None else None
    if score_mod is not None:
        mask, is_causal = None, causal
    else:
        mask, is_causal = attention_mask(positions.size(-1), key_positions.size(-1), causal=causal,
                                         key_valid=key_valid, bias=position.score_bias(positions, key_positions))
    return AttentionInputs(positions, mask, is_causal, key_valid, position.rotary(positions), score_mod, cache,
                           key_positions=key_positions, score_terms=position.score_terms,
                           rotary_local=position.rotary(positions, local=True),
                           in_kernel=in_kernel and key_valid is None and cache is None)


def cross_attention_inputs(positions: torch.Tensor, memory: torch.Tensor, memory_valid: Optional[torch.Tensor],
                           cache: Optional["KVCache"]) -> AttentionInputs:
    """Decoder queries at ``positions`` over ``memory`` (B, S, D), source padding masked."""
    mask = None
    if memory_valid is not None:
        mask, _ = attention_mask(positions.size(-1), memory.size(1), causal=False, key_valid=memory_valid)
    return AttentionInputs(positions, mask, False, memory_valid, cache=cache, memory=memory)


def attention_mask(
    tq: int,
    tk: int,
    *,
    causal: bool,
    key_valid: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
) -> tuple[Optional[torch.Tensor], bool]:
    """Combine causality, key padding and a score bias into SDPA's ``(attn_mask, is_causal)``.

    The queries are the last ``tq`` of the ``tk`` keys (self-attention, possibly after a KV
    cache). ``key_valid`` is (B, Tk) bool; ``bias`` is (B|1, H, Tq, Tk) float. A query row
    left with no key to attend to (padding attending only to padding, or an empty source)
    attends to every key instead: its output is meaningless but finite, and since such rows are
    padding themselves, nothing downstream reads them (softmax over no keys gives NaN, which
    would poison the whole batch's gradients).
    """
    if key_valid is None and bias is None:
        if not causal or tq == 1:
            return None, False
        if tq == tk:
            return None, True
    allowed = None
    device = key_valid.device if key_valid is not None else bias.device if bias is not None else None
    if causal and tq > 1:
        q_slot = torch.arange(tk - tq, tk, device=device).unsqueeze(-1)  # (Tq, 1)
        allowed = torch.arange(tk, device=device) <= q_slot  # (Tq, Tk)
    if key_valid is not None:
        valid = key_valid[:, None, None, :]  # (B, 1, 1, Tk)
        allowed = valid if allowed is None else allowed & valid  # (B, 1, Tq, Tk)
    if allowed is not None:
        allowed = allowed | ~allowed.any(dim=-1, keepdim=True)
    if bias is None:
        return allowed, False
    if allowed is None:
        return bias, False
    return bias.masked_fill(~allowed, float("-inf")), False


try:  # FlexAttention (torch >= 2.5): a position bias inside the attention kernel on GPUs
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
except ImportError:
    create_block_mask = flex_attention = None

_FLEX: dict = {}  # the compiled flex_attention kernel and causal block masks, built on first use


def flex_available(device: torch.device, head_dim: int) -> bool:
    """Whether :func:`flex_attention_with` can run on ``device``: FlexAttention exists in this
    torch, the device is a GPU (on a CPU the biased SDPA is as fast and needs no compiler) and
    the head dimension is a power of two of at least 16 (what its kernels take)."""
    return (flex_attention is not None and device.type == "cuda" and head_dim >= 16
            and not head_dim & (head_dim - 1))


def flex_attention_with(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, score_mod: Callable,
                        causal: bool, window: Optional[int] = None, scale: Optional[float] = None) -> torch.Tensor:
    """Attention of (B, H, T, hd) ``q, k, v`` with ``score_mod(score, b, h, q_idx, kv_idx)``
    applied to the scores inside the kernel (FlexAttention), and, when ``causal``, the blocks
    above the diagonal skipped: the same function as SDPA with the bias as a float mask,
    without the (H, T, T) bias tensor or the masked-out half of the work. ``scale``: the factor
    on q·k (default hd^-½)."""
    # inside a compiled model the compiler builds the kernel and the mask itself; eager calls
    # share one compiled kernel and one mask per length
    compiling = torch.compiler.is_compiling()
    block_mask = _block_mask(q.size(-2), q.device, causal, window, cached=not compiling) if causal or window else None
    if compiling:
        kernel = flex_attention
    else:
        kernel = _FLEX.get("kernel") or _FLEX.setdefault("kernel", torch.compile(flex_attention, dynamic=False))
    return kernel(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale)


def _block_mask(T: int, device: torch.device, causal: bool, window: Optional[int], cached: bool):
    """FlexAttention's block mask: causal, within ``window`` tokens, or both; the blocks with no
    visible key are skipped by the kernel."""
    key = ("mask", T, device, causal, window)
    if cached and key in _FLEX:
        return _FLEX[key]

    def visible(b, h, q_idx, kv_idx):
        near = (q_idx - kv_idx < window) & (kv_idx - q_idx < window) if window else q_idx >= 0
        return near & (kv_idx <= q_idx) if causal else near

    mask = create_block_mask(visible, None, None, T, T, device=device)
    if cached:
        _FLEX[key] = mask
    return mask


def _keys_from(inputs: AttentionInputs, start: int) -> AttentionInputs:
    """``inputs`` for the keys from ``start`` on (of a local layer's cache, which keeps no older ones)."""
    return dataclasses.replace(
        inputs, mask=None if inputs.mask is None else inputs.mask[..., start:],
        key_valid=None if inputs.key_valid is None else inputs.key_valid[..., start:],
        key_positions=inputs.key_positions[..., start:])


def with_bias(inputs: AttentionInputs, bias: torch.Tensor, tq: int, tk: int) -> torch.Tensor:
    """``inputs.mask`` (or its causality) with ``bias`` (B|1, H, Tq, Tk) added: a float SDPA mask,
    -inf where the mask forbids a key (its rows with no key already attend to every key)."""
    mask = inputs.mask
    if mask is None:
        if not inputs.is_causal:
            return bias
        mask = torch.ones(tq, tk, dtype=torch.bool, device=bias.device).tril(tk - tq)
    if mask.is_floating_point():
        return mask + bias
    return torch.where(mask, bias, float("-inf"))


def windowed_mask(inputs: AttentionInputs, window: int, tq: int, tk: int, device) -> torch.Tensor:
    """``inputs.mask`` (or its causality) with keys ``window`` or more positions from the query
    masked out as well: an SDPA mask for a sliding-window layer. Rows left with no key (padding)
    attend to every key, as in :func:`attention_mask`."""
    distance = inputs.positions.unsqueeze(-1) - inputs.key_positions.unsqueeze(-2)  # (B|1, Tq, Tk)
    near = (distance.abs() < window).unsqueeze(1)  # (B|1, 1, Tq, Tk)
    mask = inputs.mask
    if mask is None:
        if inputs.is_causal:
            mask = torch.ones(tq, tk, dtype=torch.bool, device=device).tril(tk - tq)
        else:
            mask = torch.ones(1, 1, 1, tk, dtype=torch.bool, device=device)
    if mask.is_floating_point():
        return mask.masked_fill(~near, float("-inf"))
    allowed = mask & near
    return allowed | ~allowed.any(dim=-1, keepdim=True)


class KVCache:
    """Keys and values of past tokens, for incremental decoding.

    Buffers are allocated once for ``max_len`` tokens; each model call appends its new tokens
    (``append`` per layer, then ``advance`` once). For an encoder-decoder, cross-attention keys
    and values are computed from the encoder output on the first call and kept.
    Besides keys and values the cache keeps, per row, which past tokens were padding and the
    absolute position of every past token, so decoding continues from the right position under
    left padding (RoPE rotates with absolute positions; ALiBi measures absolute distances).

    ``windows``: per layer, the sliding window of a local layer (None: it sees every past key).
    A local layer keeps only the keys and values a later query can still see: after each call,
    the past tokens from the first one that some row's next query is fewer than ``window``
    positions from (so ``window - 1`` tokens without padding), not ``max_len``.
    """

    def __init__(self, n_layers: int, batch: int, n_heads: int, head_dim: int, max_len: int,
                 device=None, dtype=None, windows: Optional[list[Optional[int]]] = None) -> None:
        self.windows = list(windows) if windows is not None else [None] * n_layers
        if len(self.windows) != n_layers:
            raise ValueError(f"{len(self.windows)} windows for {n_layers} layers")
        shape = (batch, n_heads, max_len, head_dim)
        kept = (batch, n_heads, 0, head_dim)  # a local layer's keys grow and are trimmed each call
        self.keys = [torch.zeros(shape if w is None else kept, device=device, dtype=dtype) for w in self.windows]
        self.values = [torch.zeros(shape if w is None else kept, device=device, dtype=dtype) for w in self.windows]
        self.starts = [0] * n_layers  # where each layer's stored keys start on the cache's timeline
        self.valid = torch.ones(batch, max_len, dtype=torch.bool, device=device)
        self.positions = torch.zeros(batch, max_len, dtype=torch.long, device=device)
        self.next_position = torch.zeros(batch, dtype=torch.long, device=device)
        self.cross: list[Optional[tuple[torch.Tensor, torch.Tensor]]] = [None] * n_layers
        self.padded = False  # whether any stored token is padding (until then, no key mask)
        self.length = 0
        self.max_len = max_len

    def check_room(self, new: int) -> None:
        if self.length + new > self.max_len:
            raise ValueError(
                f"KV cache holds {self.max_len} tokens; {self.length} are used and {new} more "
                f"were given (create the cache with a larger max_len)"
            )

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Store (B, H, T, hd) new keys/values of ``layer``; return its keys/values so far: every
        past one, or for a local layer those from :meth:`key_start` on."""
        if self.windows[layer] is not None:
            self.keys[layer] = torch.cat([self.keys[layer], k], dim=2)
            self.values[layer] = torch.cat([self.values[layer], v], dim=2)
            return self.keys[layer], self.values[layer]
        end = self.length + k.size(2)
        self.keys[layer][:, :, self.length:end] = k
        self.values[layer][:, :, self.length:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def key_start(self, layer: int) -> int:
        """The index, on the cache's timeline, of the first key :meth:`append` returns for ``layer``."""
        return self.starts[layer]

    def advance(self, valid: Optional[torch.Tensor], positions: torch.Tensor) -> None:
        """Record the new tokens' padding (B, T; None = none is padding) and positions (B|1, T);
        move past them, and trim the local layers to what a later query can see."""
        T = positions.size(1)
        end = self.length + T
        self.positions[:, self.length:end] = positions
        if valid is None:
            self.next_position = self.next_position + T
        else:
            self.valid[:, self.length:end] = valid
            self.padded = True
            # each real token moves the position on by one; padding does not (a row whose new
            # tokens are all padding, e.g. an empty left-padded prompt, stays where it was)
            self.next_position = self.next_position + valid.long().sum(dim=1)
        self.length = end
        for window in set(w for w in self.windows if w is not None):
            first = self._first_visible(window)
            for layer, w in enumerate(self.windows):
                if w == window and first > self.starts[layer]:
                    drop = first - self.starts[layer]
                    self.keys[layer] = self.keys[layer][:, :, drop:].clone()
                    self.values[layer] = self.values[layer][:, :, drop:].clone()
                    self.starts[layer] = first

    def _first_visible(self, window: int) -> int:
        """The first past token that a later query of some row may see through ``window``: a real
        token fewer than ``window`` positions before that row's next position."""
        L = self.length
        seen = self.valid[:, :L] & (self.positions[:, :L] > (self.next_position - window).unsqueeze(1))
        columns = seen.any(dim=0)
        return int(columns.long().argmax()) if bool(columns.any()) else L

    def reorder(self, index: torch.Tensor, cross: bool = True) -> None:
        """Select rows (beam search): row i becomes old row ``index[i]``. Only the filled part
        of the buffers is copied. ``cross=False`` keeps the cross-attention keys/values as they
        are: right when ``index`` never moves a row to another source (beams of one source
        share them)."""
        L = self.length
        for store in (self.keys, self.values):
            for layer, t in enumerate(store):
                if self.windows[layer] is not None:
                    store[layer] = t.index_select(0, index)
                else:
                    t[:, :, :L] = t[:, :, :L].index_select(0, index)
        self.valid[:, :L] = self.valid[:, :L].index_select(0, index)
        self.positions[:, :L] = self.positions[:, :L].index_select(0, index)
        self.next_position = self.next_position.index_select(0, index)
        if cross:
            self.cross = [None if kv is None else (kv[0].index_select(0, index), kv[1].index_select(0, index))
                          for kv in self.cross]


def explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, inputs: AttentionInputs, *,
                       scale: Optional[float] = None, softcap: Optional[float] = None,
                       dropout: float = 0.0) -> torch.Tensor:
    """SDPA written out: scores ``q·k * scale`` (default hd^-½), soft-capped to
    ``softcap · tanh(scores / softcap)`` when given (Gemma 2), then the mask and the softmax
    (float32). The path for what SDPA cannot compute (soft-capping) and for attention maps: when
    ``inputs.record`` is a list, the probabilities (B, H, Tq, Tk) are appended to it."""
    scores = (q.float() @ k.float().transpose(-2, -1)) * (scale or q.size(-1) ** -0.5)  # (B, H, Tq, Tk)
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)
    if inputs.is_causal:  # SDPA's flag: top-left aligned, queries and keys of equal length
        scores = scores.masked_fill(~torch.ones(scores.shape[-2:], dtype=torch.bool, device=q.device).tril(),
                                    float("-inf"))
    elif inputs.mask is not None:
        mask = inputs.mask
        scores = scores + mask.float() if mask.is_floating_point() else scores.masked_fill(~mask, float("-inf"))
    probs = scores.softmax(dim=-1)
    if inputs.record is not None:
        inputs.record.append(probs.detach())
    if dropout:
        probs = F.dropout(probs, dropout)
    return probs.to(v.dtype) @ v


def _unbiased(score, b, h, q_idx, kv_idx):
    """A FlexAttention ``score_mod`` that leaves the scores as they are (soft-capping alone)."""
    return score


def softcapped(score_mod: Callable, cap: float) -> Callable:
    """``score_mod`` applied to soft-capped scores (``cap · tanh(score / cap)``), inside a
    FlexAttention kernel: the position bias is added after the cap, as a mask would be."""
    def mod(score, b, h, q_idx, kv_idx):
        return score_mod(cap * torch.tanh(score / cap), b, h, q_idx, kv_idx)

    return mod


class QKNorm(nn.Module):
    """RMSNorm of queries and keys before the scores (and before RoPE): per head, one gain of
    ``head_dim`` shared by the heads (``qk_norm: head``, Qwen 3, Gemma 3), or over each whole
    projection (``qk_norm: full``, OLMo 2: a gain of ``n_heads * head_dim`` for the queries and one
    of the key width for the keys). Computed in fp32, as the model's RMSNorm."""

    def __init__(self, mode: str, q_width: int, k_width: int, eps: float) -> None:
        super().__init__()
        self.mode, self.eps = mode, eps
        self.q_weight = nn.Parameter(torch.ones(q_width))
        self.k_weight = nn.Parameter(torch.ones(k_width))

    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x.float(), (x.size(-1),), weight.float(), self.eps).to(x.dtype)

    def queries(self, q: torch.Tensor) -> torch.Tensor:
        return self._norm(q, self.q_weight)

    def keys(self, k: torch.Tensor) -> torch.Tensor:
        return self._norm(k, self.k_weight)


def _repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(B, Hkv, T, hd) -> (B, Hkv * groups, T, hd): each key/value head serves ``groups``
    consecutive query heads (the layout of every grouped-query reference model)."""
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


@ATTENTIONS.register("mha")
class MultiHeadAttention(nn.Module):
    """Multi-head attention (Vaswani et al. 2017) on SDPA: self-attention with one fused
    ``[q; k; v]`` projection, or (``cross=True``) decoder queries over encoder states with a
    fused ``[k; v]``. Called with ``(x, inputs, layer)``; :class:`AttentionInputs` carries the
    rest, so a new input (a bias, a cache layout) is a field there, not a new argument here.

    Settings of all attention entries, in self- and cross-attention: ``qk_norm`` (``none``,
    ``head`` or ``full``, :class:`QKNorm`), a sliding ``window``, ``qkv_bias``, ``head_dim``
    (kept as set, None by default; the width in use is ``head_width``), ``attn_softcap`` and
    ``attn_scale_dim``. Subclasses set ``n_kv_heads`` (key/value heads shared by groups of query
    heads) through :meth:`kv_heads`."""

    options = (
        Option("qk_norm", "none", "RMSNorm of queries and keys: per head (Qwen 3, Gemma 3) or over "
               "the whole projection (OLMo 2)", short="qk", choices=("none", "head", "full")),
        Option("window", None, "sliding-window self-attention: each query sees the keys fewer than this many "
               "positions away (Mistral, Gemma 2)", short="win", kind=int, minimum=1, examples=(4,)),
        Option("window_global_every", 0, "with a window: every this-many-th layer attends globally "
               "(2: Gemma 2's alternation; 6: Gemma 3's 5 local to 1 global); 0: every layer local",
               short="glob", minimum=0, examples=({"window": 4, "window_global_every": 2},)),
        Option("window_global_from", None, "the first global layer of window_global_every (default: the "
               "n-th, layer n - 1; 0: the first, as ModernBERT)", short="globfrom", kind=int, minimum=0,
               examples=({"window": 4, "window_global_every": 2, "window_global_from": 0},)),
        Option("qkv_bias", False, "biases on the query, key and value projections only, in a model without "
               "biases (bias: false; Qwen 2)", short="qkvbias", examples=({"qkv_bias": True, "bias": False},)),
        Option("head_dim", None, "the width of each head, set apart from d_model / n_heads (Qwen 3, Gemma); "
               "the output projection maps n_heads * head_dim back to d_model", short="hd", kind=int, minimum=1,
               examples=(16,)),
        Option("attn_softcap", None, "soft-capped scores, cap * tanh(scores / cap), before the mask and softmax "
               "(Gemma 2: 50)", short="acap", kind=float, minimum=0.0, examples=(5.0,)),
        Option("attn_scale_dim", None, "scores scaled by attn_scale_dim ** -0.5 instead of head_dim ** -0.5 "
               "(Gemma 2's query_pre_attn_scalar)", short="sdim", kind=int, minimum=1, examples=(32,)),
    )

    @staticmethod
    def check_config(cfg) -> None:
        if cfg.window_global_every and cfg.window is None:
            raise ValueError(f"model.window_global_every={cfg.window_global_every} needs model.window")
        every, first = cfg.window_global_every, cfg.window_global_from
        if first is not None and not (every and first < every):
            raise ValueError(f"model.window_global_from={first} needs model.window_global_every above it "
                             f"(got {every}): the first global layer comes before the n-th")
        if first is not None and first == every - 1:
            raise ValueError(f"model.window_global_from={first} is the default for window_global_every={every}: "
                             f"leave model.window_global_from out")
        if cfg.qkv_bias and cfg.bias:
            raise ValueError("model.qkv_bias=true with model.bias=true: every linear layer has biases already; "
                             "set model.bias=false to keep biases on the query, key and value projections only")
        head_dim = cfg.options.get("head_dim")  # the setting (cfg.head_dim is the width in use)
        if head_dim is not None and head_dim * cfg.n_heads == cfg.d_model:
            raise ValueError(f"model.head_dim={head_dim} is d_model / n_heads ({cfg.d_model} / {cfg.n_heads}), "
                             f"the width without it: leave model.head_dim out")
        if cfg.attn_softcap is not None and cfg.attn_softcap <= 0:
            raise ValueError(f"model.attn_softcap must be positive, got {cfg.attn_softcap}")
        if cfg.attn_scale_dim is not None and cfg.attn_scale_dim == cfg.head_dim:
            raise ValueError(f"model.attn_scale_dim={cfg.attn_scale_dim} is the head width, the scale without it: "
                             f"leave model.attn_scale_dim out")

    def __init__(self, cfg, cross: bool = False) -> None:
        super().__init__()
        for option in self.options:  # kept under their keys: the fingerprint reads them here
            setattr(self, option.key, getattr(cfg, option.key))
        self.head_dim = cfg.options.get("head_dim")  # the setting; cfg.head_dim is the width
        self.n_heads = cfg.n_heads
        self.head_width = cfg.head_dim  # hd: the head_dim setting, or d_model / n_heads
        self.n_kv_heads = self.kv_heads(cfg)
        # the factor on q·k: None = SDPA's own hd^-1/2
        self.scale = None if self.attn_scale_dim is None else self.attn_scale_dim ** -0.5
        self.dropout = cfg.dropout
        self.cross = cross
        q_width, kv_width = self.n_heads * self.head_width, self.n_kv_heads * self.head_width
        qkv_bias = cfg.bias or self.qkv_bias
        self.out = residual_output(nn.Linear(q_width, cfg.d_model, bias=cfg.bias))
        if cross:
            self.q = nn.Linear(cfg.d_model, q_width, bias=qkv_bias)
            self.kv = nn.Linear(cfg.d_model, 2 * kv_width, bias=qkv_bias)
        else:
            self.qkv = nn.Linear(cfg.d_model, q_width + 2 * kv_width, bias=qkv_bias)
        if self.qk_norm == "head":
            self.qk_norms = QKNorm("head", self.head_width, self.head_width, cfg.norm_eps)
        elif self.qk_norm == "full":
            self.qk_norms = QKNorm("full", q_width, kv_width, cfg.norm_eps)
        else:
            self.qk_norms = None

    @staticmethod
    def kv_heads(cfg) -> int:
        """Key/value heads: one per query head."""
        return cfg.n_heads

    def cache_layout(self) -> tuple[int, int]:
        """(heads, head dim) of the keys and values this layer stores in a KV cache."""
        return self.n_kv_heads, self.head_width

    def local(self, layer: int) -> bool:
        """Whether self-attention layer ``layer`` sees only its window (sliding-window attention):
        every layer but, with ``window_global_every`` n, every n-th from ``window_global_from``."""
        if self.window is None or self.cross:
            return False
        every = self.window_global_every
        first = every - 1 if self.window_global_from is None else self.window_global_from
        return not (every and layer >= first and (layer - first) % every == 0)

    def forward(self, x: torch.Tensor, inputs: AttentionInputs, layer: int = 0) -> torch.Tensor:
        """(B, T, D) -> (B, T, D); ``layer`` indexes the KV cache (and the window pattern)."""
        q, k, v = self._cross_qkv(x, inputs, layer) if self.cross else self._self_qkv(x, inputs, layer)
        groups = self.n_heads // self.n_kv_heads
        window = self.window if self.local(layer) else None
        if not self.cross and inputs.cache is not None and inputs.cache.key_start(layer):
            inputs = _keys_from(inputs, inputs.cache.key_start(layer))  # a local layer's cache: its recent keys
        scale = self.scale
        if inputs.score_terms is not None:  # self-attention: position terms that need this layer's q and k
            terms = inputs.score_terms(self, q, k, inputs.positions, inputs.key_positions,
                                       scale or self.head_width ** -0.5)
            if terms is not None:
                bias, scale = terms
                inputs = dataclasses.replace(inputs, mask=with_bias(inputs, bias, q.size(-2), k.size(-2)),
                                             is_causal=False)
        if self.attn_softcap is not None and inputs.in_kernel and inputs.score_mod is None and inputs.mask is None:
            inputs = dataclasses.replace(inputs, score_mod=_unbiased)  # capped scores inside the kernel
        if window is not None and inputs.score_mod is None:  # the window as part of SDPA's mask
            inputs = dataclasses.replace(inputs, mask=windowed_mask(inputs, window, q.size(-2), k.size(-2), q.device),
                                         is_causal=False)
        dropout = self.dropout if self.training else 0.0
        if inputs.score_mod is not None:  # the position bias inside a FlexAttention kernel
            score_mod = inputs.score_mod
            if self.attn_softcap is not None:
                score_mod = softcapped(score_mod, self.attn_softcap)
            y = flex_attention_with(q, _repeat_kv(k, groups), _repeat_kv(v, groups), score_mod,
                                    inputs.is_causal, window, scale)
        elif inputs.record is not None or self.attn_softcap is not None:
            # attention maps asked for (variants.maps), or soft-capped scores: an explicit softmax
            y = explicit_attention(q, _repeat_kv(k, groups), _repeat_kv(v, groups), inputs, scale=scale,
                                   softcap=self.attn_softcap, dropout=dropout)
        else:
            mask = inputs.mask
            if mask is not None and mask.is_floating_point() and mask.dtype != q.dtype:
                mask = mask.to(q.dtype)  # a float bias under autocast: SDPA wants the query's dtype
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=inputs.is_causal, dropout_p=dropout,
                scale=scale, enable_gqa=groups > 1,
            )  # (B, H, T, hd)
        B, _, T, _ = y.shape
        return self.out(y.transpose(1, 2).reshape(B, T, -1))  # (B, T, H * hd) -> (B, T, D)

    def _heads(self, x: torch.Tensor, heads: int, norm=None) -> torch.Tensor:
        """(B, T, heads * hd) -> (B, heads, T, hd), normed over the whole projection or per head."""
        B, T, _ = x.shape
        if norm is not None and self.qk_norm == "full":
            x = norm(x)
        x = x.view(B, T, heads, self.head_width).transpose(1, 2)
        return norm(x) if norm is not None and self.qk_norm == "head" else x

    def project_qk(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, D) -> queries (B, H, T, hd) and keys (B, Hkv, T, hd) by this self-attention layer's own
        projections and q/k norms, unrotated: what DeBERTa projects its relative embeddings with."""
        H, Hkv, hd = self.n_heads, self.n_kv_heads, self.head_width
        width = (H + Hkv) * hd  # the [q; k] rows of the fused [q; k; v] projection
        bias = None if self.qkv.bias is None else self.qkv.bias[:width]
        q, k = F.linear(x, self.qkv.weight[:width], bias).split([H * hd, Hkv * hd], dim=-1)
        norms = self.qk_norms
        return self._heads(q, H, norms and norms.queries), self._heads(k, Hkv, norms and norms.keys)

    def _self_qkv(self, x, inputs: AttentionInputs, layer: int):
        H, Hkv, hd = self.n_heads, self.n_kv_heads, self.head_width
        rotary = inputs.rotary_local if inputs.rotary_local is not None and self.local(layer) else inputs.rotary
        if H == Hkv and self.qk_norms is None:  # one view and one permute for all three
            B, T, _ = x.shape
            qkv = self.qkv(x).view(B, T, 3, H, hd).permute(2, 0, 3, 1, 4)  # (3, B, H, T, hd)
            q, k, v = qkv
            if rotary is not None:  # rotate before caching: cached keys keep their own positions
                q, k = apply_rotary(qkv[:2], *rotary)  # queries and keys in one pass
        else:
            q, k, v = self.qkv(x).split([H * hd, Hkv * hd, Hkv * hd], dim=-1)
            norms = self.qk_norms
            q = self._heads(q, H, norms and norms.queries)
            k = self._heads(k, Hkv, norms and norms.keys)
            v = self._heads(v, Hkv)
            if rotary is not None:
                q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        if inputs.cache is not None:
            k, v = inputs.cache.append(layer, k, v)  # (B, Hkv, Tk, hd)
        return q, k, v

    def _cross_qkv(self, x, inputs: AttentionInputs, layer: int):
        norms = self.qk_norms
        q = self._heads(self.q(x), self.n_heads, norms and norms.queries)  # (B, H, T, hd)
        cache = inputs.cache
        if cache is not None and cache.cross[layer] is not None:
            k, v = cache.cross[layer]
        else:
            k, v = self.kv(inputs.memory).chunk(2, dim=-1)
            k, v = self._heads(k, self.n_kv_heads, norms and norms.keys), self._heads(v, self.n_kv_heads)
            if cache is not None:
                cache.cross[layer] = (k, v)
        return q, k, v


@ATTENTIONS.register("gqa")
class GroupedQueryAttention(MultiHeadAttention):
    """Grouped-query attention (Ainslie et al. 2023, arXiv:2305.13245): ``n_kv_heads`` key/value
    heads, each shared by ``n_heads / n_kv_heads`` consecutive query heads; 1 is multi-query
    attention (Shazeer 2019, arXiv:1911.02150), ``n_heads`` computes what ``mha`` computes. The
    KV cache stores ``n_kv_heads`` heads. Llama 2 70B / 3, Mistral, Qwen 2/3, Gemma."""

    options = MultiHeadAttention.options + (
        Option("n_kv_heads", 1, "key/value heads (1: multi-query; n_heads: multi-head)", short="kv", minimum=1,
               examples=(2, 4)),)

    @staticmethod
    def check_config(cfg) -> None:
        MultiHeadAttention.check_config(cfg)
        if cfg.n_kv_heads > cfg.n_heads or cfg.n_heads % cfg.n_kv_heads:
            raise ValueError(f"model.n_kv_heads ({cfg.n_kv_heads}) must divide n_heads ({cfg.n_heads})")

    @staticmethod
    def kv_heads(cfg) -> int:
        return cfg.n_kv_heads
