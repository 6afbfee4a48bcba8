"""The attention slot: its inputs, how a position scheme's bias reaches it, and that a new
attention or a new bias is one registered class."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from variants.attention import AttentionInputs, KVCache, cross_attention_inputs, self_attention_inputs
from variants.positions import ALiBi, Learned

from .helpers import tiny_config

ROOT = Path(__file__).resolve().parents[2]


def _alibi():
    return ALiBi(tiny_config(d_model=32, n_heads=4, position="alibi"))


def test_the_score_mod_is_used_only_when_a_kernel_may_run_without_a_mask():
    pos = torch.arange(6)[None]
    fast = self_attention_inputs(_alibi(), pos, pos, None, causal=True, cache=None, in_kernel=True)
    assert fast.score_mod is not None and fast.mask is None and fast.is_causal

    slow = self_attention_inputs(_alibi(), pos, pos, None, causal=True, cache=None, in_kernel=False)
    assert slow.score_mod is None and not slow.is_causal
    assert slow.mask.shape == (1, 4, 6, 6) and slow.mask.is_floating_point()
    assert torch.isinf(slow.mask[0, 0, 0, 1]) and slow.mask[0, 1, 3, 1] == -2 * _alibi().slopes[1]

    valid = torch.tensor([[False, True, True, True, True, True]])
    padded = self_attention_inputs(_alibi(), pos, pos, valid, causal=True, cache=None, in_kernel=True)
    assert padded.score_mod is None and padded.mask is not None, "padding needs the mask, not the kernel"

    cache = KVCache(1, 1, 4, 8, 10)
    cached = self_attention_inputs(_alibi(), pos, pos, None, causal=True, cache=cache, in_kernel=True)
    assert cached.score_mod is None and cached.cache is cache


def test_the_score_mod_computes_the_score_bias():
    scheme = _alibi()
    mod = scheme.score_mod()
    pos = torch.arange(5)
    bias = scheme.score_bias(pos[None], pos[None])[0]  # (H, Tq, Tk)
    for h in range(4):
        got = mod(torch.zeros(5, 5), 0, h, pos[:, None], pos[None, :])
        torch.testing.assert_close(got, bias[h])


def test_schemes_without_a_bias_leave_the_mask_to_padding_and_causality():
    scheme = Learned(tiny_config())
    pos = torch.arange(4)[None]
    inputs = self_attention_inputs(scheme, pos, pos, None, causal=True, cache=None, in_kernel=True)
    assert isinstance(inputs, AttentionInputs)
    assert inputs.mask is None and inputs.is_causal and inputs.score_mod is None and inputs.rotary is None


def test_cross_attention_masks_source_padding_only():
    memory = torch.zeros(2, 3, 8)
    pos = torch.arange(4)[None]
    assert cross_attention_inputs(pos, memory, None, None).mask is None
    valid = torch.tensor([[True, True, False], [True, True, True]])
    inputs = cross_attention_inputs(pos, memory, valid, None)
    assert inputs.mask.shape == (2, 1, 1, 3) and not inputs.is_causal  # broadcast over heads and queries
    assert not inputs.mask[0, 0, :, 2].any() and inputs.mask[1].all()
    assert inputs.memory is memory and inputs.rotary is None


@pytest.mark.slow
def test_a_new_attention_and_a_new_bias_plug_in():
    """A Registry cannot unregister, so this runs in a fresh interpreter.

    - A subclass of ``MultiHeadAttention`` under a new name is accepted by ModelConfig, reported
      by ``fingerprint``, and computes what ``mha`` computes (full and cached decoding).
    - A position scheme that only defines ``score_bias`` (ALiBi's, without its ``score_mod``)
      reaches every self-attention layer with no edit elsewhere: the same outputs as ``alibi``.
    """
    script = textwrap.dedent("""
        import torch
        from variants import ModelConfig, build_model
        from variants.attention import MultiHeadAttention
        from variants.positions import PositionScheme, alibi_slopes
        from variants.registry import ATTENTIONS, POSITIONS

        @ATTENTIONS.register("test_plugin_mha")
        class PluginAttention(MultiHeadAttention):
            pass

        @POSITIONS.register("test_plugin_bias")
        class PluginBias(PositionScheme):
            def __init__(self, cfg):
                super().__init__(cfg)
                self.register_buffer("slopes", alibi_slopes(cfg.n_heads), persistent=False)

            def score_bias(self, q_pos, k_pos):
                distance = (q_pos.unsqueeze(-1) - k_pos.unsqueeze(-2)).abs().unsqueeze(1)
                return -self.slopes.view(1, -1, 1, 1) * distance

        def outputs(kind, **slots):
            torch.manual_seed(0)
            model = build_model(ModelConfig(kind=kind, vocab_size=61, d_model=32, n_heads=4, n_layers=2,
                                            dropout=0.0, **slots)).eval()
            for slot, name in slots.items():
                assert model.fingerprint()[slot] == name, model.fingerprint()
            x = torch.randint(1, 61, (2, 7))
            x[0, :2] = 0  # padding
            with torch.no_grad():
                full = model(x) if kind == "lm" else model(x, x)
                cache = model.new_cache(2, 7)
                if kind == "lm":
                    steps = [model(x[:, i:i + 1], cache) for i in range(7)]
                else:
                    memory, valid = model.encode(x)
                    steps = [model.decode(x[:, i:i + 1], memory, valid, cache) for i in range(7)]
            return full, torch.cat(steps, dim=1)

        for kind in ("lm", "seq2seq"):
            for a, b in zip(outputs(kind, attention="test_plugin_mha"), outputs(kind, attention="mha")):
                torch.testing.assert_close(a, b, rtol=0, atol=0)
            for a, b in zip(outputs(kind, position="test_plugin_bias"), outputs(kind, position="alibi")):
                torch.testing.assert_close(a, b, rtol=0, atol=0)
        print("plugins ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "plugins ok"
