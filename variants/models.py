"""Blocks, stacks and the model kinds (``model.kind``, registered in ``KINDS``): a decoder-only
LM (``lm``), an encoder-decoder (``seq2seq``) and an encoder-only model (``encoder``, BERT-style).

Shapes: B batch, T target/LM tokens, S source tokens, D d_model, V vocab_size.

Every slot is filled from its registry; nothing here branches on a component's name, so a
newly registered component works in every model kind without edits. Each kind is one class that
says what the rest of the code needs to know about it: its stacks (``stacks``: attribute name ->
causal), which stack a KV cache serves (``cached``: None when the kind does not decode), how a
batch of tokens is fed to it (``example_inputs``), and how its attention maps are laid out.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, ClassVar, Optional

import torch
import torch.nn.functional as F
from torch import nn

from variants.attention import (AttentionInputs, KVCache, cross_attention_inputs, flex_available,
                                self_attention_inputs)
from variants.config import ModelConfig
from variants.loss import linear_cross_entropy
from variants.registry import (ATTENTIONS, FFNS, INITS, KINDS, NORM_POSITIONS, NORMS, POSITIONS, REGISTRIES,
                               options_of, settings_label)


class Block(nn.Module):
    """Self-attention, optional cross-attention, feed-forward; each in a residual wrapper
    (``norm_position``) that owns its norm. ``first``: the stack's first block."""

    def __init__(self, cfg: ModelConfig, cross: bool, first: bool = False) -> None:
        super().__init__()
        residual = NORM_POSITIONS.get(cfg.norm_position)
        self.attn_res, self.attn = residual(cfg), ATTENTIONS.build(cfg.attention, cfg)
        if first:
            self.attn_res.first_of_stack()
        self.cross_res = residual(cfg) if cross else None
        self.cross_attn = ATTENTIONS.build(cfg.attention, cfg, cross=True) if cross else None
        self.ffn_res, self.ffn = residual(cfg), FFNS.build(cfg.ffn, cfg)

    def forward(self, x: torch.Tensor, attn: AttentionInputs, cross: Optional[AttentionInputs],
                layer: int) -> torch.Tensor:
        x = self.attn_res(x, self.attn, attn, layer)
        if self.cross_attn is not None:
            x = self.cross_res(x, self.cross_attn, cross, layer)
        return self.ffn_res(x, self.ffn)


class Stack(nn.Module):
    """Position scheme, blocks and (for Pre-LN) the final norm, over token embeddings."""

    def __init__(self, cfg: ModelConfig, n_layers: int, causal: bool, cross: bool) -> None:
        super().__init__()
        self.causal = causal
        self.head_dim = cfg.head_dim
        self.recording: Optional[dict[str, list]] = None  # set by variants.maps.attention_maps only
        self.position = POSITIONS.build(cfg.position, cfg)
        self.position.causal = causal
        self.embed_norm = NORMS.build(cfg.norm, cfg) if cfg.embed_norm else None
        self.dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, cross, first=i == 0) for i in range(n_layers))
        final = NORM_POSITIONS.get(cfg.norm_position).final_norm
        self.final_norm = NORMS.build(cfg.norm, cfg) if final else None

    def check_length(self, length: int, cache: Optional[KVCache]) -> None:
        past = cache.length if cache is not None else 0
        if cache is not None:
            cache.check_room(length)
        self.position.check_length(past + length)

    def forward(self, x: torch.Tensor, valid: Optional[torch.Tensor], cache: Optional[KVCache] = None,
                memory: Optional[torch.Tensor] = None, memory_valid: Optional[torch.Tensor] = None):
        """``x``: (B, T, D) token embeddings; ``valid``: (B, T) bool, False at padding, or None
        when nothing is padding. Returns (B, T, D)."""
        B, T, _ = x.shape
        start = cache.next_position.unsqueeze(-1) if cache is not None else 0  # (B, 1)
        if valid is None:
            positions = torch.arange(T, device=x.device).unsqueeze(0) + start  # (1|B, T)
        else:  # left padding shifts positions: count real tokens only
            positions = (valid.long().cumsum(-1) - 1).clamp(min=0) + start  # (B, T)
        k_pos, k_valid = positions, valid
        if cache is not None:
            if valid is not None or cache.padded:  # else no key is padding: no mask
                new_valid = valid if valid is not None else torch.ones(B, T, dtype=torch.bool, device=x.device)
                k_valid = torch.cat([cache.valid[:, : cache.length], new_valid], dim=1)  # (B, Tk)
            k_pos = torch.cat([cache.positions[:, : cache.length], positions.expand(B, T)], dim=1)
        in_kernel = (flex_available(x.device, self.head_dim) and self.recording is None
                     and not (self.training and self.dropout.p > 0))  # the kernel has no dropout
        attn = self_attention_inputs(self.position, positions, k_pos, k_valid, causal=self.causal, cache=cache,
                                     in_kernel=in_kernel)
        cross = None if memory is None else cross_attention_inputs(positions, memory, memory_valid, cache)
        if self.recording is not None:
            attn = dataclasses.replace(attn, record=self.recording["self"])
            if cross is not None:
                cross = dataclasses.replace(cross, record=self.recording["cross"])

        x = self.position.add_to_embeddings(x, positions)
        if self.embed_norm is not None:
            x = self.embed_norm(x)
        x = self.dropout(x)
        for i, block in enumerate(self.blocks):
            x = block(x, attn, cross, i)
        if cache is not None:
            cache.advance(valid, positions)
        return x if self.final_norm is None else self.final_norm(x)


class HeadTransform(nn.Module):
    """BERT's masked-LM prediction head before the output projection (``head_transform``):
    ``norm(gelu(dense(x)))``, the norm the model's ``norm`` entry. Devlin et al. 2019, "BERT:
    Pre-training of Deep Bidirectional Transformers for Language Understanding", arXiv:1810.04805
    (the layout of ``BertPredictionHeadTransform``, kept by RoBERTa, DeBERTa and ModernBERT)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.norm = NORMS.build(cfg.norm, cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(F.gelu(self.dense(x)))


class TransformerBase(nn.Module):
    """Token embedding, output head, initialisation and reporting shared by every kind.

    A kind declares ``stacks`` (its :class:`Stack` attributes, in the order tokens pass through
    them, each with whether it is causal), ``cached`` (the stack an incremental-decoding KV cache
    serves, None for a kind that does not decode) and ``maps`` (attention-map name -> (stack,
    ``self``|``cross``))."""

    stacks: ClassVar[dict[str, bool]] = {}
    cached: ClassVar[Optional[str]] = None
    maps: ClassVar[dict[str, tuple[str, str]]] = {}

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.head = None if cfg.tie_embeddings else nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.head_transform = HeadTransform(cfg) if cfg.head_transform else None
        self.head_bias = nn.Parameter(torch.zeros(cfg.vocab_size)) if cfg.head_transform else None
        self.embed_scale = math.sqrt(cfg.d_model) if cfg.embeddings_scaled else 1.0
        self.initializer = INITS.build(cfg.init, cfg)  # parameterless: names the scheme in the fingerprint
        self._with_auxiliary: Optional[list[nn.Module]] = None  # modules that may leave an aux_loss

    def init_weights(self) -> None:
        """Every parameter by the run's ``init`` scheme (:mod:`variants.init`)."""
        depth = sum(len(m.blocks) for m in self.modules() if isinstance(m, Stack))
        self.initializer.apply(self, depth)

    def padding(self, tokens: torch.Tensor) -> Optional[torch.Tensor]:
        """(B, T) bool, False at ``pad_id``; None when the config has no pad id."""
        return None if self.cfg.pad_id is None else tokens != self.cfg.pad_id

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        return x * self.embed_scale if self.embed_scale != 1.0 else x

    def head_weight(self) -> torch.Tensor:
        """The output head's (V, D) matrix: the token embedding when tied."""
        return self.embed.weight if self.head is None else self.head.weight

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(..., D) final states -> (..., V) logits: the prediction head's transform when the model
        has one, the output projection (and its bias), soft-capped when the config says so."""
        if self.head_transform is not None:
            x = self.head_transform(x)
        logits = F.linear(x, self.head_weight(), self.head_bias)
        cap = self.cfg.logit_softcap
        return logits if cap is None else cap * torch.tanh(logits / cap)

    def loss(self, hidden: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100,
             label_smoothing: float = 0.0, z_loss: float = 0.0, with_z: bool = False):
        """Head and cross-entropy of ``hidden`` (B, T, D) against ``targets`` (B, T), without
        materialising the (B, T, V) logits: ``(objective, nll)`` summed over the targets that
        are not ``ignore_index``, the logits soft-capped when the config says so; ``z_loss``
        and ``with_z`` as in :func:`variants.loss.linear_cross_entropy`. A prediction head's
        transform is applied first, and its output bias added to each chunk's logits."""
        if self.head_transform is not None:
            hidden = self.head_transform(hidden)
        return linear_cross_entropy(hidden, self.head_weight(), targets, ignore_index, label_smoothing,
                                    softcap=self.cfg.logit_softcap, z_loss=z_loss, with_z=with_z, bias=self.head_bias)

    def fingerprint(self) -> dict[str, str]:
        """Which registry entry fills each slot, with its settings away from their defaults
        (``gqa(n_kv_heads=2)``), read from the modules actually built."""
        found: dict[str, set[str]] = {slot: set() for slot in REGISTRIES}
        inside: list[tuple[str, str]] = []  # (module name, slot): the parts a component holds in its own
        for name, module in self.named_modules():  # slot (an MoE's experts) are its own
            slot = getattr(module, "slot", None)
            if slot in found and not any(name.startswith(f"{outer}.") and slot == kind for outer, kind in inside):
                inside.append((name, slot))
                settings = {key: getattr(module, key) for key, option in options_of(type(module)).items()
                            if getattr(module, key) != option.default}
                found[slot].add(settings_label(module.registry_name, settings))
        for slot, names in found.items():
            if len(names) != 1:
                raise RuntimeError(f"slot {slot!r} is filled by {sorted(names) or 'nothing'}")
        return {slot: names.pop() for slot, names in found.items()}

    def num_params(self) -> dict[str, int]:
        """Parameter counts; shared (tied) tensors count once. ``embedding`` is the token
        table plus any learned position tables; the rest (untied head included) is
        ``non_embedding``. With routed experts also ``active``: the total less the experts a
        token does not pass through (``top_k`` of ``n_experts`` used)."""
        total = sum(p.numel() for p in self.parameters())
        embedding = sum(p.numel() for m in self.modules() if isinstance(m, nn.Embedding)
                        for p in m.parameters())
        counts = {"total": total, "embedding": embedding, "non_embedding": total - embedding}
        idle = sum(p.numel() * (1 - m.active_share) for m in self.modules() if hasattr(m, "active_share")
                   for p in m.parameters())
        if idle:  # routed experts: the parameters a token passes through, in expectation
            counts["active"] = round(total - idle)
        return counts

    def auxiliary(self) -> dict[str, torch.Tensor]:
        """What the last forward pass's components left beside the output: ``loss``, the sum of
        their weighted auxiliary losses (with gradient: the MoE load balancing and router z-loss),
        and each loss's mean over the layers (detached, for logging: ``moe_balance``,
        ``router_z``). Empty for a model without such components."""
        if self._with_auxiliary is None:  # found once: this runs every training step
            self._with_auxiliary = [m for m in self.modules() if hasattr(m, "aux_loss")]
        parts = [m for m in self._with_auxiliary if m.aux_loss is not None]
        if not parts:
            return {}
        found = {"loss": sum(m.aux_loss for m in parts)}
        for attribute, key in (("balance", "moe_balance"), ("router_z", "router_z")):
            values = [getattr(m, attribute) for m in parts if getattr(m, attribute, None) is not None]
            if values:
                found[key] = torch.stack(values).mean()
        return found

    @staticmethod
    def example_inputs(tokens: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The positional arguments of ``model(...)`` for a batch of ``tokens`` (B, T): the same
        tokens in every input of the kind (tests, benchmarks, the component tour)."""
        return (tokens,)

    def stepper(self, tokens: torch.Tensor) -> Callable[[torch.Tensor, KVCache], torch.Tensor]:
        """``step(new_tokens, cache) -> logits`` of incremental decoding, conditioned as
        :meth:`example_inputs` conditions ``model(...)`` on ``tokens`` (an encoder-decoder encodes
        them once as the source); a kind without a cache refuses."""
        raise ValueError(f"a model of kind {self.cfg.kind!r} does not decode incrementally: it has no KV cache")

    def new_cache(self, batch_size: int, max_len: int) -> KVCache:
        """An empty KV cache for incremental decoding of up to ``max_len`` tokens, laid out as the
        cached stack's self-attention says (:meth:`cache_layout` of the attention class); a
        sliding-window layer keeps only its window."""
        if self.cached is None:
            raise ValueError(f"a model of kind {self.cfg.kind!r} does not decode incrementally: it has no KV cache")
        p = self.embed.weight
        blocks = getattr(self, self.cached).blocks
        heads, head_dim = blocks[0].attn.cache_layout()
        windows = [block.attn.window if block.attn.local(i) else None for i, block in enumerate(blocks)]
        return KVCache(len(blocks), batch_size, heads, head_dim, max_len, device=p.device, dtype=p.dtype,
                       windows=windows)


@KINDS.register("lm")
class DecoderLM(TransformerBase):
    """Decoder-only language model: ``model(tokens)`` (B, T) -> logits (B, T, V)."""

    stacks = {"decoder": True}
    cached = "decoder"
    maps = {"self": ("decoder", "self")}

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.decoder = Stack(cfg, cfg.n_layers, causal=True, cross=False)
        self.init_weights()

    def forward(self, tokens: torch.Tensor, cache: Optional[KVCache] = None,
                padded: Optional[bool] = None) -> torch.Tensor:
        return self.logits(self.hidden(tokens, cache, padded))

    def stepper(self, tokens: torch.Tensor) -> Callable[[torch.Tensor, KVCache], torch.Tensor]:
        return lambda new, cache: self(new, cache)

    def hidden(self, tokens: torch.Tensor, cache: Optional[KVCache] = None,
               padded: Optional[bool] = None) -> torch.Tensor:
        """(B, T) tokens -> the final states (B, T, D) the output head reads.

        ``padded``: whether ``tokens`` hold padding, when the caller knows (a batch collated on
        the CPU); None = look, which on a GPU waits for the device (a host-device sync)."""
        self.decoder.check_length(tokens.size(1), cache)
        valid = None if padded is False else self.padding(tokens)
        if padded is None:
            valid = _unless_all(valid)  # no padding: keep the fast causal path
        return self.decoder(self.embed_tokens(tokens), valid, cache)


@KINDS.register("seq2seq")
class EncoderDecoder(TransformerBase):
    """Encoder-decoder: ``model(src, tgt)`` (B, S), (B, T) -> logits (B, T, V).

    One joint vocabulary: encoder, decoder (and, with ``tie_embeddings``, the output head)
    share the token embedding. Source padding is masked in encoder self-attention and in
    cross-attention. Decoder inputs are right-padded, so causality alone keeps their padding
    out of view of real positions.
    """

    stacks = {"encoder": False, "decoder": True}
    cached = "decoder"
    maps = {"encoder": ("encoder", "self"), "decoder": ("decoder", "self"), "cross": ("decoder", "cross")}

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.encoder = Stack(cfg, cfg.encoder_layers, causal=False, cross=False)
        self.decoder = Stack(cfg, cfg.decoder_layers, causal=True, cross=True)
        self.init_weights()

    @staticmethod
    def example_inputs(tokens: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tokens, tokens

    def stepper(self, tokens: torch.Tensor) -> Callable[[torch.Tensor, KVCache], torch.Tensor]:
        memory, valid = self.encode(tokens)
        return lambda new, cache: self.decode(new, memory, valid, cache)

    def encode(self, src: torch.Tensor, padded: Optional[bool] = None) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(B, S) -> encoder states (B, S, D) and the source validity mask (B, S), None when
        nothing is padding. ``padded`` as in :meth:`DecoderLM.hidden`."""
        self.encoder.check_length(src.size(1), None)
        valid = None if padded is False else self.padding(src)
        if padded is None:
            valid = _unless_all(valid)
        return self.encoder(self.embed_tokens(src), valid), valid

    def decode(self, tgt: torch.Tensor, memory: torch.Tensor, memory_valid: Optional[torch.Tensor],
               cache: Optional[KVCache] = None) -> torch.Tensor:
        """(B, T) decoder inputs over encoder states -> logits (B, T, V)."""
        return self.logits(self.decode_hidden(tgt, memory, memory_valid, cache))

    def decode_hidden(self, tgt: torch.Tensor, memory: torch.Tensor, memory_valid: Optional[torch.Tensor],
                      cache: Optional[KVCache] = None) -> torch.Tensor:
        """(B, T) decoder inputs over encoder states -> the final states (B, T, D).
        ``memory_valid``: from :meth:`encode` (None = no source padding)."""
        self.decoder.check_length(tgt.size(1), cache)
        return self.decoder(self.embed_tokens(tgt), None, cache, memory, memory_valid)

    def forward(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        return self.logits(self.hidden(src, tgt))

    def hidden(self, src: torch.Tensor, tgt: torch.Tensor, padded: Optional[bool] = None) -> torch.Tensor:
        """(B, S) sources, (B, T) decoder inputs -> the final decoder states (B, T, D).
        ``padded``: whether the sources hold padding, as in :meth:`DecoderLM.hidden`."""
        memory, memory_valid = self.encode(src, padded)
        return self.decode_hidden(tgt, memory, memory_valid)


@KINDS.register("encoder")
class EncoderLM(TransformerBase):
    """Encoder-only model (BERT-style): ``model(tokens)`` (B, T) -> logits (B, T, V) for every
    position, each position attending to every non-padding token of its row, earlier or later.
    Trained as a masked language model; it does not decode (no KV cache)."""

    stacks = {"encoder": False}
    maps = {"self": ("encoder", "self")}

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.encoder = Stack(cfg, cfg.n_layers, causal=False, cross=False)
        self.init_weights()

    def forward(self, tokens: torch.Tensor, padded: Optional[bool] = None) -> torch.Tensor:
        return self.logits(self.hidden(tokens, padded))

    def hidden(self, tokens: torch.Tensor, padded: Optional[bool] = None) -> torch.Tensor:
        """(B, T) tokens -> the final states (B, T, D); ``padded`` as in :meth:`DecoderLM.hidden`."""
        self.encoder.check_length(tokens.size(1), None)
        valid = None if padded is False else self.padding(tokens)
        if padded is None:
            valid = _unless_all(valid)
        return self.encoder(self.embed_tokens(tokens), valid)


def _unless_all(valid: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """The padding mask, or None when nothing is padding (attention then needs no mask)."""
    return None if valid is None or bool(valid.all()) else valid


def build_model(cfg: ModelConfig) -> TransformerBase:
    """A plain ``nn.Module`` for ``cfg``: the class registered for ``cfg.kind``."""
    return KINDS.build(cfg.kind, cfg)
