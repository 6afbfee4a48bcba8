"""The models a bench compares, built at identical dimensions.

Ours are the shipped presets (``configs/model/<preset>.yaml``) over the bench's dimensions.
Each peer is configured to compute the same function as far as its library allows:
x-transformers (``TransformerWrapper`` / ``XTransformer``), Hugging Face ``transformers``
(GPT-2, LLaMA, BLOOM, Marian, BERT) and ``torch.nn.Transformer``. Where a peer differs, the
difference is stated in :data:`PEER_NOTES` and printed with the table. The peers are optional:
a library that is not installed is reported as skipped.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
import yaml
from torch import nn

from variants import ModelConfig, build_model
from variants.positions import Sinusoidal
from variants.registry import FFNS

PRESET_DIR = Path(__file__).resolve().parents[1] / "configs" / "model"

# bench name -> preset file (the ALiBi row is the BLOOM composition)
PRESETS = {"gpt2": "gpt2", "llama": "llama", "alibi": "bloom", "vaswani": "vaswani", "bert": "bert"}
GATED = tuple(name for name in FFNS if FFNS.get(name).gated)  # the gated feed-forward entries

PEER_NOTES = {
    "x-transformers": "separate q/k/v projections without bias; tanh-GELU passed as its custom "
                      "activation; sinusoidal = its scaled sinusoidal embedding (one learned scale)",
    "transformers": "GPT-2/LLaMA with attn_implementation='sdpa'; BLOOM has only its eager attention",
    "torch.nn.Transformer": "Post-LN as in the paper, but with the final encoder/decoder norms it "
                            "always adds; embeddings, sinusoids and tied head around it",
}


def available(library: str) -> bool:
    module = {"x-transformers": "x_transformers", "transformers": "transformers"}.get(library)
    return module is None or importlib.util.find_spec(module) is not None


def preset_config(preset: str, **dims) -> ModelConfig:
    """Our ``ModelConfig`` for a bench preset: the preset file's ``model:`` diff over ``dims``."""
    diff = yaml.safe_load((PRESET_DIR / f"{PRESETS[preset]}.yaml").read_text())["model"]
    return ModelConfig(**{**dims, **diff})


def ffn_width(cfg: ModelConfig) -> int:
    """The feed-forward hidden width our model builds for ``cfg`` (gated: 2/3 of ``d_ff``)."""
    return FFNS.get(cfg.ffn).hidden_width(cfg)


# ------------------------------------------------------------------------------ x-transformers
class _Activation(nn.Module):
    """The activation of our feed-forward entry ``ffn``, as a module (x-transformers takes one)."""

    def __init__(self, ffn: str) -> None:
        super().__init__()
        self.ffn = ffn
        self.fn = FFNS.get(ffn).activation

    def forward(self, x):
        return self.fn(x)

    def extra_repr(self) -> str:
        return self.ffn


def _xt_layers(cfg: ModelConfig, prefix: str = "") -> dict:
    hidden = ffn_width(cfg)
    kw = dict(heads=cfg.n_heads, attn_dim_head=cfg.head_dim, attn_flash=True,
              attn_dropout=cfg.dropout, ff_dropout=cfg.dropout, pre_norm=cfg.norm_position == "pre",
              use_rmsnorm=cfg.norm == "rmsnorm", rotary_pos_emb=cfg.position == "rope",
              alibi_pos_bias=cfg.position == "alibi", ff_no_bias=not cfg.bias,
              ff_mult=hidden / cfg.d_model, ff_glu=cfg.ffn in GATED,
              ff_custom_activation=_Activation(cfg.ffn))
    return {prefix + k: v for k, v in kw.items()}


def _xt_embedding(cfg: ModelConfig) -> dict:
    return dict(use_abs_pos_emb=cfg.position in ("learned", "sinusoidal"),
                scaled_sinu_pos_emb=cfg.position == "sinusoidal", post_emb_norm=cfg.embed_norm)


class XTransformersLM(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        from x_transformers import Decoder, TransformerWrapper

        self.net = TransformerWrapper(
            num_tokens=cfg.vocab_size, max_seq_len=cfg.max_seq_len, emb_dropout=cfg.dropout,
            tie_embedding=cfg.tie_embeddings, **_xt_embedding(cfg),
            attn_layers=Decoder(dim=cfg.d_model, depth=cfg.n_layers, **_xt_layers(cfg)))

    def forward(self, tokens):
        return self.net(tokens)


class XTransformersSeq2Seq(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        from x_transformers import Decoder, Encoder, TransformerWrapper

        self.encoder = TransformerWrapper(
            num_tokens=cfg.vocab_size, max_seq_len=cfg.max_seq_len, emb_dropout=cfg.dropout,
            **_xt_embedding(cfg),
            attn_layers=Encoder(dim=cfg.d_model, depth=cfg.encoder_layers, **_xt_layers(cfg)))
        self.decoder = TransformerWrapper(
            num_tokens=cfg.vocab_size, max_seq_len=cfg.max_seq_len, emb_dropout=cfg.dropout,
            tie_embedding=cfg.tie_embeddings, **_xt_embedding(cfg),
            attn_layers=Decoder(dim=cfg.d_model, depth=cfg.decoder_layers, cross_attend=True,
                                **_xt_layers(cfg)))
        if cfg.tie_embeddings:  # one joint vocabulary, as in ours
            self.decoder.token_emb = self.encoder.token_emb

    def forward(self, src, tgt):
        memory = self.encoder(src, return_embeddings=True)
        return self.decoder(tgt, context=memory)


# -------------------------------------------------------------------------------- transformers
def hf_lm(preset: str, cfg: ModelConfig) -> Optional[nn.Module]:
    """The Hugging Face model of a preset (None where transformers has no such model)."""
    import transformers

    common = dict(vocab_size=cfg.vocab_size, bos_token_id=None, eos_token_id=None, pad_token_id=None,
                  tie_word_embeddings=cfg.tie_embeddings)
    if preset == "gpt2":
        config = transformers.GPT2Config(
            n_positions=cfg.max_seq_len, n_embd=cfg.d_model, n_layer=cfg.n_layers, n_head=cfg.n_heads,
            n_inner=ffn_width(cfg), activation_function="gelu_new", layer_norm_epsilon=cfg.norm_eps,
            resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout, **common)
        return transformers.GPT2LMHeadModel._from_config(config, attn_implementation="sdpa")
    if preset == "llama":
        config = transformers.LlamaConfig(
            hidden_size=cfg.d_model, intermediate_size=ffn_width(cfg), num_hidden_layers=cfg.n_layers,
            num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_heads,
            max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.norm_eps,
            rope_theta=cfg.rope_base, attention_dropout=cfg.dropout, **common)
        return transformers.LlamaForCausalLM._from_config(config, attn_implementation="sdpa")
    if preset == "alibi":
        config = transformers.BloomConfig(
            hidden_size=cfg.d_model, n_layer=cfg.n_layers, n_head=cfg.n_heads,
            layer_norm_epsilon=cfg.norm_eps, hidden_dropout=cfg.dropout,
            attention_dropout=cfg.dropout, **common)
        return transformers.BloomForCausalLM._from_config(config)
    return None


def hf_bert(cfg: ModelConfig) -> nn.Module:
    """A random-weight ``BertForMaskedLM`` at the encoder dimensions (SDPA attention), the model
    our ``bert`` preset imports from and exports to."""
    import transformers

    config = transformers.BertConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads, intermediate_size=ffn_width(cfg), max_position_embeddings=cfg.max_seq_len,
        layer_norm_eps=cfg.norm_eps, hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.dropout,
        pad_token_id=0, tie_word_embeddings=cfg.tie_embeddings)
    return transformers.BertForMaskedLM._from_config(config, attn_implementation="sdpa")


class HFMaskedLM(nn.Module):
    """A Hugging Face masked-LM model called the way training calls it: logits of every position."""

    call: dict = {}  # further arguments of the model's call

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens):
        return self.model(input_ids=tokens, **self.call).logits


def hf_marian(cfg: ModelConfig) -> nn.Module:
    """A random-weight Marian model at the seq2seq dimensions (pad 0, eos 2, start = pad)."""
    import transformers

    act = {"relu": "relu", "gelu": "gelu", "silu": "swish"}.get(cfg.ffn, "relu")
    config = transformers.MarianConfig(
        vocab_size=cfg.vocab_size, d_model=cfg.d_model, encoder_layers=cfg.encoder_layers,
        decoder_layers=cfg.decoder_layers, encoder_attention_heads=cfg.n_heads,
        decoder_attention_heads=cfg.n_heads, encoder_ffn_dim=cfg.d_ff, decoder_ffn_dim=cfg.d_ff,
        max_position_embeddings=cfg.max_seq_len, activation_function=act, dropout=0.0,
        attention_dropout=0.0, activation_dropout=0.0, pad_token_id=0, decoder_start_token_id=0,
        eos_token_id=2, forced_eos_token_id=None, bos_token_id=None, scale_embedding=True)
    return transformers.MarianMTModel._from_config(config, attn_implementation="sdpa")


class HFCausalLM(HFMaskedLM):
    """A Hugging Face causal LM called the way training calls it: logits only, no cache."""

    call = {"use_cache": False}


# ------------------------------------------------------------------------ torch.nn.Transformer
class TorchTransformerSeq2Seq(nn.Module):
    """``torch.nn.Transformer`` with a shared embedding, sinusoids and a tied output head."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.ffn not in ("relu", "gelu"):
            raise NotImplementedError(f"torch.nn.Transformer has no {cfg.ffn!r} feed-forward")
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.scale = math.sqrt(cfg.d_model) if cfg.embeddings_scaled else 1.0
        table = Sinusoidal(cfg).table(torch.arange(cfg.max_seq_len))  # our ``sinusoidal`` scheme's
        self.register_buffer("table", table, persistent=False)
        self.core = nn.Transformer(
            cfg.d_model, cfg.n_heads, cfg.encoder_layers, cfg.decoder_layers, cfg.d_ff,
            dropout=cfg.dropout, activation=cfg.ffn, layer_norm_eps=cfg.norm_eps, batch_first=True,
            norm_first=cfg.norm_position == "pre", bias=cfg.bias)
        self.mask: Optional[torch.Tensor] = None

    def _embed(self, tokens):
        return self.embed(tokens) * self.scale + self.table[: tokens.size(1)]

    def forward(self, src, tgt):
        T = tgt.size(1)
        if self.mask is None or self.mask.size(0) != T:  # built once, as a user would
            self.mask = nn.Transformer.generate_square_subsequent_mask(T, device=tgt.device)
        h = self.core(self._embed(src), self._embed(tgt), tgt_mask=self.mask, tgt_is_causal=True)
        return F.linear(h, self.embed.weight)


# ------------------------------------------------------------------------------------- ours
def ours(cfg: ModelConfig) -> nn.Module:
    return build_model(cfg)
