"""Multi-head attention on ``scaled_dot_product_attention``, its masks, and the KV cache.

Shapes: B batch, T query tokens, S source tokens, Tk key tokens, H heads, hd head dim,
D = H * hd. Boolean masks follow SDPA: ``True`` = may attend.

Reference: Vaswani et al. 2017, "Attention Is All You Need", arXiv:1706.03762.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from variants.positions import apply_rotary


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


try:  # FlexAttention (torch >= 2.5): ALiBi's bias inside the attention kernel on GPUs
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
except ImportError:
    create_block_mask = flex_attention = None

_FLEX: dict = {}  # the compiled flex_attention kernel and causal block masks, built on first use


def flex_available(device: torch.device, head_dim: int) -> bool:
    """Whether :func:`alibi_attention` can run on ``device``: FlexAttention exists in this torch,
    the device is a GPU (on a CPU the biased SDPA is as fast and needs no compiler) and the head
    dimension is a power of two of at least 16 (what its kernels take)."""
    return (flex_attention is not None and device.type == "cuda" and head_dim >= 16
            and not head_dim & (head_dim - 1))


def alibi_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slopes: torch.Tensor,
                    causal: bool) -> torch.Tensor:
    """Attention of (B, H, T, hd) ``q, k, v`` with ALiBi's ``-slope_h * |i - j|`` added to the
    scores inside the kernel (FlexAttention), and, when ``causal``, the blocks above the
    diagonal skipped. The same function as SDPA with :meth:`ALiBi.score_bias` as a float mask,
    without the (H, T, T) bias tensor or the masked-out half of the work."""

    def score_mod(score, b, h, q_idx, kv_idx):
        return score - slopes[h] * (q_idx - kv_idx).abs()

    # inside a compiled model the compiler builds the kernel and the mask itself; eager calls
    # share one compiled kernel and one mask per length
    compiling = torch.compiler.is_compiling()
    block_mask = _causal_block_mask(q.size(-2), q.device, cached=not compiling) if causal else None
    if compiling:
        kernel = flex_attention
    else:
        kernel = _FLEX.get("kernel") or _FLEX.setdefault("kernel", torch.compile(flex_attention, dynamic=False))
    return kernel(q, k, v, score_mod=score_mod, block_mask=block_mask)


def _causal_block_mask(T: int, device: torch.device, cached: bool):
    key = ("mask", T, device)
    if cached and key in _FLEX:
        return _FLEX[key]
    mask = create_block_mask(lambda b, h, q_idx, kv_idx: kv_idx <= q_idx, None, None, T, T, device=device)
    if cached:
        _FLEX[key] = mask
    return mask


class KVCache:
    """Keys and values of past tokens, for incremental decoding.

    Buffers are allocated once for ``max_len`` tokens; each model call appends its new tokens
    (``append`` per layer, then ``advance`` once). For an encoder-decoder, cross-attention keys
    and values are computed from the encoder output on the first call and kept.
    Besides keys and values the cache keeps, per row, which past tokens were padding and the
    absolute position of every past token, so decoding continues from the right position under
    left padding (RoPE rotates with absolute positions; ALiBi measures absolute distances).
    """

    def __init__(self, n_layers: int, batch: int, n_heads: int, head_dim: int, max_len: int,
                 device=None, dtype=None) -> None:
        shape = (batch, n_heads, max_len, head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
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
        """Store (B, H, T, hd) new keys/values of ``layer``; return all keys/values so far."""
        end = self.length + k.size(2)
        self.keys[layer][:, :, self.length:end] = k
        self.values[layer][:, :, self.length:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def advance(self, valid: Optional[torch.Tensor], positions: torch.Tensor) -> None:
        """Record the new tokens' padding (B, T; None = none is padding) and positions (B|1, T);
        move past them."""
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

    def reorder(self, index: torch.Tensor, cross: bool = True) -> None:
        """Select rows (beam search): row i becomes old row ``index[i]``. Only the filled part
        of the buffers is copied. ``cross=False`` keeps the cross-attention keys/values as they
        are: right when ``index`` never moves a row to another source (beams of one source
        share them)."""
        L = self.length
        for store in (self.keys, self.values):
            for t in store:
                t[:, :, :L] = t[:, :, :L].index_select(0, index)
        self.valid[:, :L] = self.valid[:, :L].index_select(0, index)
        self.positions[:, :L] = self.positions[:, :L].index_select(0, index)
        self.next_position = self.next_position.index_select(0, index)
        if cross:
            self.cross = [None if kv is None else (kv[0].index_select(0, index), kv[1].index_select(0, index))
                          for kv in self.cross]


class _Attention(nn.Module):
    def __init__(self, cfg) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.head_dim = cfg.head_dim
        self.dropout = cfg.dropout
        self.out = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)

    def attend(self, q, k, v, mask, is_causal, alibi: Optional[torch.Tensor] = None) -> torch.Tensor:
        if alibi is not None:  # ALiBi slopes: the bias is added inside a FlexAttention kernel
            y = alibi_attention(q, k, v, alibi, is_causal)
        else:
            if mask is not None and mask.is_floating_point() and mask.dtype != q.dtype:
                mask = mask.to(q.dtype)  # a float bias under autocast: SDPA wants the query's dtype
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=is_causal,
                dropout_p=self.dropout if self.training else 0.0,
            )  # (B, H, T, hd)
        B, _, T, _ = y.shape
        return self.out(y.transpose(1, 2).reshape(B, T, -1))


class SelfAttention(_Attention):
    """Self-attention with one fused ``[q; k; v]`` projection."""

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=cfg.bias)

    def forward(self, x, mask=None, is_causal=False, rotary=None,
                cache: Optional[KVCache] = None, layer: int = 0,
                alibi: Optional[torch.Tensor] = None) -> torch.Tensor:
        B, T, _ = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (3, B, H, T, hd)
        q, k, v = qkv
        if rotary is not None:  # rotate before caching: cached keys keep their own positions
            q, k = apply_rotary(qkv[:2], *rotary)  # queries and keys in one pass
        if cache is not None:
            k, v = cache.append(layer, k, v)  # (B, H, Tk, hd)
        return self.attend(q, k, v, mask, is_causal, alibi)


class CrossAttention(_Attention):
    """Decoder queries over encoder states; keys/values projected by one fused ``[k; v]``."""

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.q = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.kv = nn.Linear(cfg.d_model, 2 * cfg.d_model, bias=cfg.bias)

    def forward(self, x, memory, mask=None, cache: Optional[KVCache] = None,
                layer: int = 0) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        if cache is not None and cache.cross[layer] is not None:
            k, v = cache.cross[layer]
        else:
            S = memory.size(1)
            k, v = self.kv(memory).view(B, S, 2, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
            if cache is not None:
                cache.cross[layer] = (k, v)
        return self.attend(q, k, v, mask, False)
