"""Behaviour of both model kinds on every grid point of the registries (see ``helpers.py``).

LM: ``model(tokens)``. Seq2seq: ``model(src, tgt)``, ``model.encode(src) -> (memory, valid)``,
``model.decode(tgt, memory, valid, cache=None)``. Pad id is ``helpers.PAD`` (0).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.variants.helpers import CACHED_KINDS, PAD, TINY, assert_close, build, config_of, tiny_config, tokens
from variants import REGISTRIES
from variants.registry import KINDS
from variants.attention import attention_mask
from variants.registry import NORM_POSITIONS, POSITIONS

V, D, MAX_LEN = TINY["vocab_size"], TINY["d_model"], TINY["max_seq_len"]

# Position schemes with a fixed maximum length; every other scheme must extrapolate.
LENGTH_LIMITED = {"learned"}


def right_pad(seqs: list[torch.Tensor], length: int) -> torch.Tensor:
    out = torch.full((len(seqs), length), PAD, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
    return out


def left_pad(seqs: list[torch.Tensor], length: int) -> torch.Tensor:
    out = torch.full((len(seqs), length), PAD, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, length - len(s):] = s
    return out


def seqs_of(lengths, seed: int) -> list[torch.Tensor]:
    return [tokens(1, n, seed + i)[0] for i, n in enumerate(lengths)]


def lm_cached(model, seq: torch.Tensor, schedule: list[int], max_len: int | None = None):
    """Run ``seq`` through a fresh KV cache in chunks of ``schedule`` tokens (the rest one at a
    time); return the concatenated logits."""
    B, T = seq.shape
    cache = model.new_cache(B, max_len or T)
    outs, t = [], 0
    for n in schedule + [1] * (T - sum(schedule)):
        outs.append(model(seq[:, t:t + n], cache))
        t += n
    assert cache.length == T
    return torch.cat(outs, dim=1)


def s2s_cached(model, tgt, memory, memory_valid, schedule: list[int], max_len: int | None = None):
    B, T = tgt.shape
    cache = model.new_cache(B, max_len or T)
    outs, t = [], 0
    for n in schedule + [1] * (T - sum(schedule)):
        outs.append(model.decode(tgt[:, t:t + n], memory, memory_valid, cache))
        t += n
    assert cache.length == T
    return torch.cat(outs, dim=1)


def all_grads_finite(model) -> list[str]:
    """Names of parameters whose gradient is missing or not finite (but for the experts of a
    mixture that the last pass routed no token to: they have none)."""
    idle = unrouted(model)
    return [n for n, p in model.named_parameters()
            if n not in idle and (p.grad is None or not p.grad.isfinite().all())]


def unrouted(model) -> set[str]:
    """Parameter names of the experts that the last forward pass routed no token to."""
    names = set()
    for prefix, module in model.named_modules():
        if getattr(module, "load", None) is not None:
            for e in torch.nonzero(module.load == 0).flatten().tolist():
                names |= {f"{prefix}.experts.{e}.{n}" for n, _ in module.experts[e].named_parameters()}
    return names


# ---------------------------------------------------------------------------------------------
# shapes and reporting


def test_output_shapes(point):
    model = build(config_of(point))
    B, S, T = 3, 9, 7
    if point["kind"] != "seq2seq":  # one input: logits for every position
        logits = model(*model.example_inputs(tokens(B, T, 0)))
    else:
        src, tgt = tokens(B, S, 0), tokens(B, T, 1)
        memory, valid = model.encode(src)
        assert memory.shape == (B, S, D)
        assert valid is None  # no padding in the sources: no mask
        logits = model.decode(tgt, memory, valid)
        padded = src.clone()
        padded[0, :3] = PAD
        _, valid = model.encode(padded)
        assert valid.shape == (B, S) and valid.dtype == torch.bool and not bool(valid[0, :3].any())
        assert torch.equal(model.encode(padded, padded=True)[1], valid)
        assert model.encode(src, padded=False)[1] is None
        assert_close(model(src, tgt), logits)
    assert logits.shape == (B, T, V)
    assert logits.isfinite().all()


def test_fingerprint_reports_the_configured_slots(point):
    model = build(config_of(point))
    assert model.fingerprint() == config_of(point).labels()


@pytest.mark.parametrize("norm_position", NORM_POSITIONS.names())
@pytest.mark.parametrize("kind", KINDS.names())
def test_final_norm_only_for_pre_ln(kind, norm_position):
    model = build(tiny_config(kind, norm_position=norm_position))
    stacks = [getattr(model, name) for name in model.stacks]
    expected = NORM_POSITIONS.get(norm_position).final_norm
    if norm_position == "pre":
        assert expected
    if norm_position == "post":
        assert not expected
    for stack in stacks:
        if expected:
            assert stack.final_norm is not None
            assert stack.final_norm.registry_name == model.cfg.norm
        else:
            assert stack.final_norm is None


# ---------------------------------------------------------------------------------------------
# causality


@pytest.mark.parametrize("padded_batch", [False, True], ids=["unpadded", "padded"])
def test_lm_is_causal(lm_point, padded_batch):
    """Changing tokens from position 6 on leaves logits before 6 unchanged (and changes some
    after). ``padded_batch`` adds a padded row, which switches to the explicit-mask path."""
    model = build(config_of(lm_point))
    x = tokens(2, 12, 0)
    if padded_batch:
        x = torch.cat([x, right_pad([tokens(1, 4, 5)[0]], 12)])
    y = x.clone()
    y[:2, 6:] = (x[:2, 6:] % (V - 1)) + 1  # a different non-pad token everywhere after 6
    a, b = model(x), model(y)
    assert_close(a[:, :6], b[:, :6])
    assert not torch.allclose(a[:2, 6:], b[:2, 6:], atol=1e-4)


def test_seq2seq_decoder_is_causal_encoder_is_not(s2s_point):
    model = build(config_of(s2s_point))
    src = right_pad(seqs_of([8, 5], 0), 8)
    tgt = tokens(2, 10, 3)
    other = tgt.clone()
    other[:, 4:] = (tgt[:, 4:] % (V - 1)) + 1
    a, b = model(src, tgt), model(src, other)
    assert_close(a[:, :4], b[:, :4])
    assert not torch.allclose(a[:, 4:], b[:, 4:], atol=1e-4)
    # the encoder is bidirectional: a later source token (the last, or the last in a sliding
    # window) reaches the first encoder state
    window = model.cfg.options.get("window")
    j = 7 if window is None else min(7, window - 1)
    src2 = src.clone()
    src2[0, j] = src[0, j] % (V - 1) + 1
    assert not torch.allclose(model.encode(src2)[0][0, 0], model.encode(src)[0][0, 0], atol=1e-4)


@pytest.mark.parametrize("padded_batch", [False, True], ids=["unpadded", "padded"])
def test_encoder_is_bidirectional(enc_point, padded_batch):
    """The encoder-only model's counterpart of the causality tests: a later token changes an
    earlier position's output (the first position's, or within a sliding window the nearest
    one's), and an earlier token a later one's."""
    model = build(config_of(enc_point))
    x = tokens(2, 12, 0)
    if padded_batch:
        x = torch.cat([x, right_pad([tokens(1, 4, 5)[0]], 12)])
    window = model.cfg.options.get("window")
    j = 7 if window is None else min(7, window - 1)
    later, earlier = x.clone(), x.clone()
    later[:2, j] = x[:2, j] % (V - 1) + 1
    earlier[:2, 0] = x[:2, 0] % (V - 1) + 1
    a = model(x)
    assert not torch.allclose(model(later)[:2, 0], a[:2, 0], atol=1e-4)
    assert not torch.allclose(model(earlier)[:2, j], a[:2, j], atol=1e-4)


def test_encoder_does_not_decode(enc_point):
    model = build(config_of(enc_point))
    assert model.cached is None
    with pytest.raises(ValueError, match="of kind 'encoder' does not decode incrementally: it has no KV cache"):
        model.new_cache(2, 8)


# ---------------------------------------------------------------------------------------------
# where position information goes


def test_source_order_matters_unless_position_is_none(s2s_point):
    """Swapping two source tokens changes the decoder's logits under every position scheme
    except ``none`` (a position-free encoder is permutation-equivariant and cross-attention
    pools over it)."""
    model = build(config_of(s2s_point))
    src, tgt = tokens(2, 8, 110), tokens(2, 5, 111)
    swapped = src[:, [1, 0, 2, 3, 4, 5, 6, 7]]
    a, b = model(src, tgt), model(swapped, tgt)
    if s2s_point["position"] == "none":
        assert_close(a, b)
    else:
        assert not torch.allclose(a, b, atol=1e-4)


def test_cross_attention_has_no_positions(s2s_point):
    """Permuting the encoder states (with their mask) leaves the decoder's logits unchanged."""
    model = build(config_of(s2s_point))
    src, tgt = right_pad(seqs_of([7, 4], 120), 7), tokens(2, 5, 121)
    memory, valid = model.encode(src)
    perm = torch.tensor([6, 2, 0, 5, 1, 3, 4])
    assert_close(model.decode(tgt, memory[:, perm], valid[:, perm]), model.decode(tgt, memory, valid))


# ---------------------------------------------------------------------------------------------
# padding


@pytest.mark.parametrize("side", ["right", "left"])
def test_lm_padding_invariance(lm_point, side):
    """A sequence alone gives the same logits as inside a padded batch (at its real tokens);
    left padding needs positions counted from the mask."""
    model = build(config_of(lm_point))
    lengths = [9, 4, 12, 1]
    seqs = seqs_of(lengths, 10)
    T = max(lengths)
    batch = (right_pad if side == "right" else left_pad)(seqs, T)
    out = model(batch)
    assert out.isfinite().all()
    for i, s in enumerate(seqs):
        alone = model(s[None])[0]
        real = out[i, : len(s)] if side == "right" else out[i, T - len(s):]
        assert_close(real, alone, msg=f"row {i} ({side} padding)")


@pytest.mark.parametrize("side", ["right", "left"])
def test_encoder_padding_invariance(enc_point, side):
    """A sequence alone gives the same outputs as inside a padded batch (at its real tokens):
    padding is masked in both directions."""
    model = build(config_of(enc_point))
    lengths = [9, 4, 12, 1]
    seqs = seqs_of(lengths, 10)
    T = max(lengths)
    out = model((right_pad if side == "right" else left_pad)(seqs, T))
    assert out.isfinite().all()
    for i, s in enumerate(seqs):
        real = out[i, : len(s)] if side == "right" else out[i, T - len(s):]
        assert_close(real, model(s[None])[0], msg=f"row {i} ({side} padding)")


def test_seq2seq_source_padding_invariance(s2s_point):
    """Each source alone gives the same encoder states (real positions) and decoder logits as
    inside a right-padded batch."""
    model = build(config_of(s2s_point))
    lengths = [7, 3, 10]
    srcs = seqs_of(lengths, 20)
    src = right_pad(srcs, max(lengths))
    tgt = tokens(3, 6, 30)
    memory, valid = model.encode(src)
    assert valid.tolist() == [[j < n for j in range(max(lengths))] for n in lengths]
    out = model(src, tgt)
    for i, s in enumerate(srcs):
        alone_memory, _ = model.encode(s[None])
        assert_close(memory[i, : len(s)], alone_memory[0], msg=f"encoder row {i}")
        assert_close(out[i], model(s[None], tgt[i:i + 1])[0], msg=f"decoder row {i}")


def test_encoder_padding_is_invisible_to_the_decoder(s2s_point):
    model = build(config_of(s2s_point))
    srcs = seqs_of([6, 3], 40)
    src = right_pad(srcs, 9)
    tgt = tokens(2, 5, 41)
    memory, valid = model.encode(src)
    reference = model.decode(tgt, memory, valid)

    g = torch.Generator().manual_seed(0)
    noisy = memory.clone()
    noisy[~valid] = 10 * torch.randn(int((~valid).sum()), D, generator=g)
    assert_close(model.decode(tgt, noisy, valid), reference)

    # ...while a real position is visible (so the check above could fail)
    poked = memory.clone()
    poked[0, 0] += 10 * torch.randn(D, generator=g)
    assert not torch.allclose(model.decode(tgt, poked, valid)[0], reference[0], atol=1e-4)

    # the same sources padded to a different length
    assert_close(model(right_pad(srcs, 14), tgt), reference)
    assert_close(model(right_pad(srcs, 6), tgt), reference)


# ---------------------------------------------------------------------------------------------
# incremental decoding with the KV cache


def test_lm_cache_matches_full_forward(lm_point):
    model = build(config_of(lm_point))
    seq = tokens(2, 11, 50)
    full = model(seq)
    assert_close(lm_cached(model, seq, [4, 2]), full)
    assert_close(lm_cached(model, seq, [], max_len=16), full)  # one token at a time, spare room


def test_lm_cache_with_left_padded_prompt(lm_point):
    """Left-padded prompts (one entirely padding), then one token at a time (one row gets a
    pad token midway, as a finished hypothesis might): the same logits at real tokens as the
    full forward pass and as each sequence alone, without its padding."""
    model = build(config_of(lm_point))
    P, C = 6, 5
    prompt = left_pad(seqs_of([6, 2, 0, 4], 60), P)
    cont = tokens(4, C, 61)
    cont[3, 1] = PAD
    seq = torch.cat([prompt, cont], dim=1)
    real = seq != PAD
    full = model(seq)
    cached = lm_cached(model, seq, [P])
    assert cached.isfinite().all()
    assert_close(cached[real], full[real])
    for i in range(seq.size(0)):
        alone = model(seq[i][real[i]][None])[0]
        assert_close(cached[i][real[i]], alone, msg=f"row {i}")


def test_greedy_generate_matches_argmax_of_full_forward(lm_point):
    """Cached greedy decoding (left-padded prompt included) picks, at every step, the argmax of
    the full forward pass over the prompt and the tokens generated so far."""
    from variants.decoding import greedy_generate

    model = build(config_of(lm_point))
    prompt = left_pad(seqs_of([5, 3], 62), 5)
    out = greedy_generate(model, prompt, 4)
    seq, valid = prompt, prompt != PAD
    for i in range(4):
        with torch.no_grad():  # generated tokens are real even when one is the padding id
            expected = model.logits(model.decoder(model.embed_tokens(seq), valid))[:, -1].argmax(-1)
        assert torch.equal(out[:, i], expected), f"step {i}"
        seq = torch.cat([seq, out[:, i:i + 1]], dim=1)
        valid = torch.cat([valid, torch.ones_like(valid[:, :1])], dim=1)


def test_seq2seq_cache_matches_full_forward(s2s_point):
    model = build(config_of(s2s_point))
    src = right_pad(seqs_of([8, 5], 70), 8)
    tgt = tokens(2, 9, 71)
    memory, valid = model.encode(src)
    full = model.decode(tgt, memory, valid)
    assert_close(s2s_cached(model, tgt, memory, valid, [3, 2]), full)
    assert_close(s2s_cached(model, tgt, memory, valid, [], max_len=12), full)


def test_lm_cache_reorder(lm_point):
    """Beam-search style: after a prefill and one step, rows are selected (with repeats) and
    decoding continues; the result equals decoding the selected rows from scratch."""
    model = build(config_of(lm_point))
    P, C = 6, 4
    prompt = left_pad(seqs_of([6, 3, 5], 80), P)
    first = tokens(3, 1, 81)
    cont = tokens(3, C, 82)
    index = torch.tensor([2, 0, 0])

    cache = model.new_cache(3, P + 1 + C)
    model(prompt, cache)
    model(first, cache)
    cache.reorder(index)
    steps = torch.cat([model(cont[:, t:t + 1], cache) for t in range(C)], dim=1)

    expected = model(torch.cat([prompt[index], first[index], cont], dim=1))[:, P + 1:]
    assert_close(steps, expected)


def test_seq2seq_cache_reorder(s2s_point):
    model = build(config_of(s2s_point))
    src = right_pad(seqs_of([7, 2, 5], 90), 7)
    prefix, cont = tokens(3, 3, 91), tokens(3, 4, 92)
    index = torch.tensor([1, 1, 2])
    memory, valid = model.encode(src)

    cache = model.new_cache(3, 7)
    model.decode(prefix, memory, valid, cache)
    cache.reorder(index)
    memory, valid = memory[index], valid[index]  # the caller reorders the encoder output too
    steps = torch.cat([model.decode(cont[:, t:t + 1], memory, valid, cache) for t in range(4)], 1)

    expected = model.decode(torch.cat([prefix[index], cont], dim=1), memory, valid)[:, 3:]
    assert_close(steps, expected)


@pytest.mark.parametrize("kind", CACHED_KINDS)
def test_cache_overflow_raises(kind):
    model = build(tiny_config(kind, position="rope"))
    cache = model.new_cache(2, 5)
    if kind == "lm":
        step = lambda x: model(x, cache)  # noqa: E731
    else:
        memory, valid = model.encode(tokens(2, 4, 0))
        step = lambda x: model.decode(x, memory, valid, cache)  # noqa: E731
    step(tokens(2, 3, 1))
    step(tokens(2, 2, 2))
    with pytest.raises(ValueError, match=r"KV cache holds 5 tokens.*max_len"):
        step(tokens(2, 1, 3))
    assert cache.length == 5  # the failed call left the cache as it was
    cache = model.new_cache(2, 3)  # a prompt longer than a fresh cache (``step`` sees this one)
    with pytest.raises(ValueError, match=r"KV cache holds 3 tokens; 0 are used and 4 more"):
        step(tokens(2, 4, 4))
    assert cache.length == 0


# ---------------------------------------------------------------------------------------------
# fully masked rows and gradients


def test_fully_masked_rows_are_finite(point):
    """An LM row that is all padding, or a seq2seq source row that is all padding: outputs and
    the gradients of a loss over *all* logits stay finite."""
    model = build(config_of(point))
    if point["kind"] != "seq2seq":
        batch = right_pad([tokens(1, 6, 0)[0], torch.tensor([], dtype=torch.long)], 6)
        logits = model(batch)
    else:
        src = right_pad([tokens(1, 5, 0)[0], torch.tensor([], dtype=torch.long)], 5)
        memory, valid = model.encode(src)
        assert not valid[1].any()
        assert memory.isfinite().all()
        logits = model(src, tokens(2, 4, 1))
    assert logits.isfinite().all()
    logits.square().mean().backward()
    assert all_grads_finite(model) == []


def test_attention_mask_rows_without_keys_attend_everywhere():
    """The mask itself: a query with no valid key is given every key (finite, ignored later)
    rather than none (NaN in softmax, or zeros depending on the PyTorch version)."""
    key_valid = torch.tensor([[True, True, False], [False, False, False]])
    mask, is_causal = attention_mask(2, 3, causal=True, key_valid=key_valid)
    assert not is_causal
    expected = torch.tensor([
        [[True, True, False], [True, True, False]],  # causal & valid
        [[True, True, True], [True, True, True]],  # nothing valid: everything
    ]).unsqueeze(1)
    assert torch.equal(mask, expected)
    bias = torch.zeros(1, 1, 2, 3)
    biased, _ = attention_mask(2, 3, causal=True, key_valid=key_valid, bias=bias)
    assert torch.equal(biased.isfinite(), expected)
    assert torch.equal(biased[expected], torch.zeros(int(expected.sum())))


def test_attention_mask_causal_queries_after_past_keys():
    """Queries that are the last 2 of 3 keys (after a cache), with no padding and no bias."""
    mask, is_causal = attention_mask(2, 3, causal=True)
    assert not is_causal
    assert torch.equal(mask, torch.tensor([[True, True, False], [True, True, True]]))
    assert attention_mask(3, 3, causal=True) == (None, True)
    assert attention_mask(1, 3, causal=True) == (None, False)


def test_every_parameter_gets_a_gradient(point):
    """A training-mode forward/backward reaches every parameter (no unused modules)."""
    model = build(config_of(point, dropout=0.1)).train()
    if point["kind"] != "seq2seq":  # next-token targets; for the encoder any targets will do
        x = right_pad(seqs_of([10, 7], 100), 10)
        logits = model(x[:, :-1])
        target = x[:, 1:]
    else:
        src = right_pad(seqs_of([8, 5], 100), 8)
        tgt = tokens(2, 7, 102)
        logits = model(src, tgt[:, :-1])
        target = tgt[:, 1:]
    F.cross_entropy(logits.reshape(-1, V), target.reshape(-1), ignore_index=PAD).backward()
    idle = unrouted(model)
    missing = [n for n, p in model.named_parameters() if n not in idle and (p.grad is None or not p.grad.any())]
    assert missing == []
    assert len(idle) < sum(1 for n, _ in model.named_parameters() if ".experts." in n) or not idle
    assert all_grads_finite(model) == []


# ---------------------------------------------------------------------------------------------
# sequence length: learned positions are bounded, the others extrapolate


@pytest.mark.parametrize("kind", KINDS.names())
def test_learned_positions_reject_long_sequences(kind):
    model = build(tiny_config(kind, position="learned"))
    ok, long = tokens(1, MAX_LEN, 0), tokens(1, MAX_LEN + 1, 1)
    if kind != "seq2seq":
        assert model(ok).shape == (1, MAX_LEN, V)
        with pytest.raises(ValueError, match=f"max_seq_len={MAX_LEN}"):
            model(long)
    else:
        assert model(ok, ok).shape == (1, MAX_LEN, V)
        with pytest.raises(ValueError, match=f"max_seq_len={MAX_LEN}"):
            model.encode(long)
        with pytest.raises(ValueError, match=f"max_seq_len={MAX_LEN}"):
            model(ok, long)
        with pytest.raises(ValueError, match=f"max_seq_len={MAX_LEN}"):
            model(long, ok)


@pytest.mark.parametrize("kind", CACHED_KINDS)
def test_learned_positions_reject_long_cached_decoding(kind):
    """Prefill + steps up to max_seq_len work; one more step raises, even though the cache
    itself has room, and leaves the cache unchanged."""
    model = build(tiny_config(kind, position="learned"))
    cache = model.new_cache(2, 2 * MAX_LEN)
    if kind == "lm":
        step = lambda x: model(x, cache)  # noqa: E731
    else:
        memory, valid = model.encode(tokens(2, 5, 0))
        step = lambda x: model.decode(x, memory, valid, cache)  # noqa: E731
    step(tokens(2, MAX_LEN - 2, 1))
    step(tokens(2, 1, 2))
    step(tokens(2, 1, 3))
    with pytest.raises(ValueError, match=f"max_seq_len={MAX_LEN}"):
        step(tokens(2, 1, 4))
    assert cache.length == MAX_LEN


@pytest.mark.parametrize("position", [p for p in POSITIONS.names() if p not in LENGTH_LIMITED])
@pytest.mark.parametrize("kind", KINDS.names())
def test_other_positions_extrapolate(kind, position):
    """Sequences beyond max_seq_len are accepted, also through the cache where the kind has one
    (which agrees with the full pass)."""
    model = build(tiny_config(kind, position=position))
    T = MAX_LEN + 9
    seq = tokens(2, T, 0)
    if kind == "encoder":
        full = model(seq)
        cached = full
    elif kind == "lm":
        full = model(seq)
        cached = lm_cached(model, seq, [MAX_LEN - 1])
    else:
        memory, valid = model.encode(tokens(2, T, 1))
        full = model.decode(seq, memory, valid)
        cached = s2s_cached(model, seq, memory, valid, [MAX_LEN - 1])
    assert full.shape == (2, T, V) and full.isfinite().all()
    assert_close(cached, full)


@pytest.mark.parametrize("norm_position,formula", [
    ("pre", lambda x, f, n, n2: x + f(n(x))),
    ("post", lambda x, f, n, n2: n(x + f(x))),
    ("sandwich", lambda x, f, n, n2: x + n2(f(n(x)))),
    ("reordered", lambda x, f, n, n2: x + n(f(x))),
])
def test_each_norm_placement_computes_its_formula(norm_position, formula):
    """The residual wrapper of each placement against its written-out formula, with gains away
    from 1 (so two norms that share nothing show it)."""
    residual = NORM_POSITIONS.get(norm_position)(tiny_config(norm_position=norm_position))
    norms = [m for m in residual.modules() if getattr(m, "slot", None) == "norm"]
    for norm in norms:
        torch.nn.init.normal_(norm.weight, 1.0, 0.5)
    sublayer = torch.nn.Linear(32, 32)
    x = torch.randn(2, 5, 32)
    second = getattr(residual, "post_norm", None)
    assert len(norms) == (2 if norm_position == "sandwich" else 1)
    with torch.no_grad():
        assert_close(residual(x, sublayer), formula(x, sublayer, residual.norm, second))


@pytest.mark.parametrize("kind", KINDS.names())
def test_skip_first_norm_leaves_only_the_first_attention_unnormed(kind):
    """``pre`` with ``skip_first_norm``: every stack's first block feeds its self-attention the
    residual stream itself (ModernBERT); every other norm stays, and the function changes."""
    cfg = tiny_config(kind, norm_position="pre", embed_norm=True)
    plain, skipped = build(cfg), build(cfg.replace(skip_first_norm=True))
    for name in plain.stacks:
        blocks = getattr(skipped, name).blocks
        assert isinstance(blocks[0].attn_res.norm, torch.nn.Identity)
        assert all(not isinstance(b.attn_res.norm, torch.nn.Identity) for b in blocks[1:])
        assert not isinstance(blocks[0].ffn_res.norm, torch.nn.Identity)
    missing = set(plain.state_dict()) - set(skipped.state_dict())
    assert missing and all(".blocks.0.attn_res.norm." in key for key in missing)
    skipped.load_state_dict({k: v for k, v in plain.state_dict().items() if k not in missing})
    inputs = plain.example_inputs(tokens(2, 7, 0))
    with torch.no_grad():
        assert not torch.allclose(plain(*inputs), skipped(*inputs))
    assert skipped.fingerprint()["norm_position"] == "pre(skip_first_norm=True)"
