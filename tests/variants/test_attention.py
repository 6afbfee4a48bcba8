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

from .helpers import build, tiny_config

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


# ---------------------------------------------------------------------------------------------
# grouped-query attention, QK-norm and the attention settings, against hand-written attention


def _linear(x: torch.Tensor, layer: torch.nn.Linear) -> torch.Tensor:
    return x @ layer.weight.T + (0 if layer.bias is None else layer.bias)


def _reference_attention(attn, x: torch.Tensor, memory: torch.Tensor | None = None) -> torch.Tensor:
    """Self-attention (causal) of a built layer, or its cross-attention over ``memory``, written
    out from its weights: q/k/v split by width (``head_width`` per head), each key/value head
    shared by consecutive query heads, QK-norm as its references, scores scaled by
    ``attn_scale_dim ** -0.5`` (default ``head_width ** -0.5``) and soft-capped as in Gemma 2."""
    H, Hkv, hd = attn.n_heads, attn.n_kv_heads, attn.head_width
    B, T, _ = x.shape
    if memory is None:
        q, k, v = _linear(x, attn.qkv).split([H * hd, Hkv * hd, Hkv * hd], dim=-1)
    else:
        q, (k, v) = _linear(x, attn.q), _linear(memory, attn.kv).chunk(2, dim=-1)
    Tk = k.size(1)

    def rms(t, w):
        return t / (t.pow(2).mean(-1, keepdim=True) + attn.qk_norms.eps).sqrt() * w

    if attn.qk_norm == "full":
        q, k = rms(q, attn.qk_norms.q_weight), rms(k, attn.qk_norms.k_weight)
    q = q.view(B, T, H, hd).transpose(1, 2)
    k = k.view(B, Tk, Hkv, hd).transpose(1, 2)
    v = v.view(B, Tk, Hkv, hd).transpose(1, 2)
    if attn.qk_norm == "head":
        q, k = rms(q, attn.qk_norms.q_weight), rms(k, attn.qk_norms.k_weight)
    k = torch.stack([k[:, h // (H // Hkv)] for h in range(H)], dim=1)
    v = torch.stack([v[:, h // (H // Hkv)] for h in range(H)], dim=1)
    scale = (attn.attn_scale_dim or hd) ** -0.5
    scores = q @ k.transpose(-2, -1) * scale
    if attn.attn_softcap is not None:
        scores = attn.attn_softcap * torch.tanh(scores / attn.attn_softcap)
    if memory is None:
        scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    y = scores.softmax(-1) @ v
    return _linear(y.transpose(1, 2).reshape(B, T, H * hd), attn.out)


def _randomized(model):
    """Every attention parameter away from its initial value (gains and biases away from 1 and 0,
    so a missing one shows)."""
    for block in model.decoder.blocks:
        for attn in (block.attn, block.cross_attn):
            for p in attn.parameters() if attn is not None else ():
                torch.nn.init.normal_(p, 0.0, 0.3 if p.dim() > 1 else 1.0)
    return model


SETTINGS = {
    "default": {},
    "qkv-bias": dict(qkv_bias=True, bias=False),
    "head-dim-16": dict(head_dim=16),
    "head-dim-6": dict(head_dim=6),  # 4 heads of 6: a query width (24) apart from d_model (32)
    "softcap": dict(attn_softcap=1.5),
    "scale-dim": dict(attn_scale_dim=50),
    "all": dict(qkv_bias=True, bias=False, head_dim=12, attn_softcap=2.0, attn_scale_dim=20),
}


@pytest.mark.parametrize("settings", list(SETTINGS.values()), ids=list(SETTINGS))
@pytest.mark.parametrize("qk_norm", ["none", "head", "full"])
@pytest.mark.parametrize("n_kv_heads", [1, 2, 4])
def test_attention_computes_the_written_out_attention(n_kv_heads, qk_norm, settings):
    """Self- and cross-attention of every combination of key/value heads, QK-norm and the
    settings (q/k/v biases alone, a head width of its own, soft-capped scores, another score
    scale) equal the attention written out in the test."""
    from tests.variants.helpers import build

    torch.manual_seed(0)
    model = _randomized(build(tiny_config("seq2seq", attention="gqa", n_kv_heads=n_kv_heads, qk_norm=qk_norm,
                                          position="none", **settings)))
    attn, cross = model.decoder.blocks[0].attn, model.decoder.blocks[0].cross_attn
    hd = settings.get("head_dim", 8)
    assert attn.head_width == hd and attn.cache_layout() == (n_kv_heads, hd)
    assert attn.qkv.weight.shape == ((4 + 2 * n_kv_heads) * hd, 32) and attn.out.weight.shape == (32, 4 * hd)
    assert (attn.qkv.bias is not None, attn.out.bias is not None) == (True, "bias" not in settings)
    x, memory = torch.randn(2, 7, 32), torch.randn(2, 5, 32)
    pos = torch.arange(7)[None]
    inputs = self_attention_inputs(model.decoder.position, pos, pos, None, causal=True, cache=None,
                                   in_kernel=False)
    with torch.no_grad():
        torch.testing.assert_close(attn(x, inputs), _reference_attention(attn, x), rtol=1e-4, atol=1e-5)
        got = cross(x, cross_attention_inputs(pos, memory, None, None))
        torch.testing.assert_close(got, _reference_attention(cross, x, memory), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("key,value", [("attn_softcap", 0.5), ("attn_scale_dim", 2)])
def test_softcap_and_scale_change_the_attention(key, value):
    """The written-out comparison above could pass with a setting ignored on both sides; here
    the same weights give other outputs with the setting than without it."""
    from tests.variants.helpers import build

    model = _randomized(build(tiny_config(position="none", **{key: value})))
    attn = model.decoder.blocks[0].attn
    x, pos = torch.randn(2, 7, 32), torch.arange(7)[None]
    inputs = self_attention_inputs(model.decoder.position, pos, pos, None, causal=True, cache=None,
                                   in_kernel=False)
    with torch.no_grad():
        with_setting = attn(x, inputs)
        setattr(attn, key, None)
        attn.scale = None
        assert not torch.allclose(attn(x, inputs), with_setting, atol=1e-3)


@pytest.mark.parametrize("kind", ["lm", "seq2seq"])
def test_attention_settings_together_under_the_kv_cache_left_padding_and_maps(kind):
    """Every new setting at once, with grouped-query heads, RoPE and a sliding window: cached
    decoding after a left-padded prompt gives the full pass's logits, and the recorded attention
    maps are distributions from the same function."""
    from tests.variants.helpers import build, check_cache_and_maps
    from variants.maps import attention_maps

    cfg = tiny_config(kind, attention="gqa", n_kv_heads=2, qkv_bias=True, bias=False, head_dim=12,
                      attn_softcap=3.0, attn_scale_dim=20, window=5, position="rope", qk_norm="head")
    model = _randomized(build(cfg))
    args = check_cache_and_maps(model, kind)
    for m in attention_maps(model, *args).values():
        torch.testing.assert_close(m.sum(-1), torch.ones(m.shape[:-1]))
    assert {(k.shape[0], k.shape[1], k.shape[3]) for k in model.new_cache(3, 9).keys} == {(3, 2, 12)}


@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "left-padded"])
def test_a_sliding_window_cache_keeps_only_the_window(padded):
    """Decoding far beyond the window (4 of 30 tokens): the local layers' caches hold the keys a
    later query can still see (3 without padding) instead of every past one, the global layer
    holds all, and the logits equal the full pass at every step; beam-style row reordering too."""
    torch.manual_seed(0)
    model = build(tiny_config(kind="lm", position="rope", n_layers=3, window=4, window_global_every=3,
                              dropout=0.0, max_seq_len=64))
    seq = torch.randint(1, 61, (2, 30), generator=torch.Generator().manual_seed(5))
    if padded:
        seq[1, :3] = 0
    real = seq != 0
    with torch.no_grad():
        full = model(seq)
        cache = model.new_cache(2, 31)
        assert cache.windows == [4, 4, None]
        steps = [model(seq[:, :6], cache)]
        for t in range(6, 30):
            steps.append(model(seq[:, t:t + 1], cache))
            assert cache.keys[0].size(2) == cache.keys[1].size(2) == 3  # left padding shifts positions alike
            assert cache.keys[2].size(2) == 31  # allocated for every token
        torch.testing.assert_close(torch.cat(steps, 1)[real], full[real], rtol=1e-4, atol=1e-5)
        swapped = torch.tensor([1, 0])
        cache.reorder(swapped)  # rows exchanged: continuing gives the other row's next logits
        again = model.new_cache(2, 31)
        model(seq, again)
        step = torch.randint(1, 61, (2, 1), generator=torch.Generator().manual_seed(6))
        torch.testing.assert_close(model(step, cache), model(step[swapped], again)[swapped], rtol=1e-4, atol=1e-5)


def test_attention_settings_are_checked_naming_the_keys():
    with pytest.raises(ValueError, match=r"model.qkv_bias=true with model.bias=true"):
        tiny_config(qkv_bias=True)
    with pytest.raises(ValueError, match=r"model.head_dim=8 is d_model / n_heads \(32 / 4\)"):
        tiny_config(head_dim=8)
    with pytest.raises(ValueError, match=r"model.attn_softcap must be positive"):
        tiny_config(attn_softcap=0.0)
    with pytest.raises(ValueError, match=r"model.attn_scale_dim=8 is the head width"):
        tiny_config(attn_scale_dim=8)  # one model, one run id: 8 is what the scale is without it
    with pytest.raises(ValueError, match=r"d_model \(30\) must be divisible by n_heads \(4\)"):
        tiny_config(d_model=30)
    cfg = tiny_config(d_model=30, head_dim=8, attention="gqa", n_kv_heads=2)  # 4 heads of 8 over 30
    assert cfg.head_dim == 8 and cfg.options == {"head_dim": 8, "n_kv_heads": 2}
    with pytest.raises(ValueError, match=r"rope' needs an even head dimension, but model.head_dim = 7"):
        tiny_config(head_dim=7, position="rope")
    with pytest.raises(ValueError, match=r"window_global_every=2 needs model.window"):
        tiny_config(attention="gqa", window_global_every=2)  # gqa runs the checks of every attention
    with pytest.raises(ValueError, match=r"model.window_global_from=2 needs model.window_global_every above it"):
        tiny_config(window=4, window_global_every=2, window_global_from=2)
    with pytest.raises(ValueError, match=r"model.window_global_from=1 is the default for window_global_every=2"):
        tiny_config(window=4, window_global_every=2, window_global_from=1)  # one model, one run id
    with pytest.raises(ValueError, match=r"model.rope_local_base=500.0 is the base of the sliding-window layers"):
        tiny_config(position="rope", rope_local_base=500.0)
    with pytest.raises(ValueError, match=r"model.rope_local_base=10000.0 is model.rope_base"):
        tiny_config(position="rope", rope_local_base=10000.0, window=4)
    with pytest.raises(ValueError, match=r"model.skip_first_norm=true needs model.embed_norm=true"):
        tiny_config(skip_first_norm=True)


def test_gqa_at_n_heads_computes_what_mha_computes_and_one_head_is_multi_query():
    from tests.variants.helpers import build

    x = torch.randint(1, 61, (2, 9))
    for kind in ("lm", "seq2seq"):
        mha, full = build(tiny_config(kind)), build(tiny_config(kind, attention="gqa", n_kv_heads=4))
        assert mha.num_params() == full.num_params()
        with torch.no_grad():
            args = (x,) if kind == "lm" else (x, x)
            torch.testing.assert_close(full(*args), mha(*args), rtol=0, atol=0)
        mqa = build(tiny_config(kind, attention="gqa"))
        assert mqa.decoder.blocks[0].attn.qkv.weight.shape == (32 + 2 * 8, 32)
        assert mqa.new_cache(2, 9).keys[0].shape == (2, 1, 9, 8)  # the cache holds one head


@pytest.mark.parametrize("kind", ["lm", "seq2seq"])
@pytest.mark.parametrize("every", [0, 2])
def test_a_sliding_window_hides_keys_beyond_it_in_local_layers_only(kind, every):
    """With a window of 3, the logits at position t depend on tokens t-2..t only through local
    layers; a model of one local layer sees nothing further back, and a global layer (every 2nd)
    sees all of it. In an encoder the window is two-sided."""
    from tests.variants.helpers import build

    cfg = tiny_config(kind, n_layers=2 if every else 1, window=3, window_global_every=every, position="rope")
    model = build(cfg)
    attn = model.decoder.blocks[0].attn
    assert attn.local(0) and attn.local(1) != (every == 2)
    x = torch.randint(1, 61, (1, 10))
    y = x.clone()
    y[0, 2] = x[0, 2] % 60 + 1  # position 2 changed: outside the window of position 9 (and of 5)
    with torch.no_grad():
        if kind == "lm":
            a, b = model(x)[0, 9], model(y)[0, 9]
        else:  # encoder states at position 9 (decoder cross-attention is never windowed)
            a, b = model.encode(x)[0][0, 9], model.encode(y)[0][0, 9]
    if every:
        assert not torch.allclose(a, b, atol=1e-5), "the global layer sees past the window"
    else:
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["lm", "seq2seq"])
def test_softcap_and_scale_inside_the_alibi_kernel_match_the_explicit_softmax(kind, monkeypatch):
    """On a GPU, ALiBi runs inside a FlexAttention kernel: the soft-cap joins its score_mod and
    the scale its ``scale``; the outputs equal the CPU's explicit softmax."""
    import variants.attention as attention
    from variants import ModelConfig, build_model

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    cfg = ModelConfig(kind=kind, vocab_size=97, d_model=64, n_heads=4, n_layers=2, max_seq_len=256, dropout=0.0,
                      position="alibi", attn_softcap=2.0, attn_scale_dim=8)  # heads of 16: what the kernel takes
    cpu = build_model(cfg).eval()
    gpu = build_model(cfg).eval().cuda()
    gpu.load_state_dict(cpu.state_dict())
    calls = []
    kernel = attention.flex_attention_with
    monkeypatch.setattr(attention, "flex_attention_with", lambda *a: calls.append(1) or kernel(*a))
    tokens = torch.randint(1, 97, (2, 120))
    args = (tokens,) if kind == "lm" else (tokens, tokens[:, :90])
    with torch.no_grad():
        expected, got = cpu(*args), gpu(*(a.cuda() for a in args)).cpu()
    assert calls, "the in-kernel path was not taken"
    torch.testing.assert_close(got, expected, atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize("causal, window", [(True, None), (True, 5), (False, 5)],
                         ids=["causal", "window", "both-sides"])
def test_softcap_alone_inside_the_kernel_equals_the_explicit_softmax(causal, window, monkeypatch):
    """Soft-capped scores with no position bias (RoPE: Gemma 2) inside a FlexAttention kernel, as a
    GPU runs them: the explicit softmax's output. On the CPU the kernel runs uncompiled (FlexAttention's
    reference implementation: inductor's CPU kernel intermittently gives NaN, see test_positions)."""
    import variants.attention as attention
    from variants.attention import _unbiased, attention_mask, explicit_attention, flex_attention_with, softcapped
    from variants.attention import windowed_mask

    monkeypatch.setitem(attention._FLEX, "kernel", attention.flex_attention)
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 40, 16) for _ in range(3))
    pos = torch.arange(40)[None]
    mask, is_causal = attention_mask(40, 40, causal=causal)
    inputs = AttentionInputs(pos, mask, is_causal, key_positions=pos)
    if window is not None:
        inputs = AttentionInputs(pos, windowed_mask(inputs, window, 40, 40, q.device), False, key_positions=pos)
    expected = explicit_attention(q, k, v, inputs, scale=0.3, softcap=2.0)
    got = flex_attention_with(q, k, v, softcapped(_unbiased, 2.0), causal, window, 0.3)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["lm", "encoder"])
def test_a_softcapped_model_takes_the_kernel_where_one_may_run(kind, monkeypatch):
    """With a kernel allowed (as on a GPU; forced here on the CPU, uncompiled), a soft-capped RoPE
    model with windows runs its attention inside FlexAttention and gives the explicit softmax's
    logits; a padded batch keeps the explicit path."""
    import variants.attention as attention
    import variants.models as models

    monkeypatch.setitem(attention._FLEX, "kernel", attention.flex_attention)

    cfg = tiny_config(kind, position="rope", attn_softcap=2.0, window=5, window_global_every=2, max_seq_len=64)
    model = build(cfg)
    tokens = torch.randint(1, cfg.vocab_size, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(tokens)
    calls = []
    kernel = attention.flex_attention_with
    monkeypatch.setattr(attention, "flex_attention_with", lambda *a: calls.append(1) or kernel(*a))
    monkeypatch.setattr(models, "flex_available", lambda device, head_dim: True)
    with torch.no_grad():
        got = model(tokens)
        assert len(calls) == cfg.n_layers
        padded = tokens.clone()
        padded[1, 15:] = 0
        calls.clear()
        model(padded)
    assert not calls
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
