"""Attention maps (variants.maps): the recorded path computes the model's own function, rows are
distributions, masked keys get nothing, and ALiBi's maps fall off with distance."""

import pytest
import torch

from tests.variants.helpers import PAD, assert_close, build, config_of, tiny_config, tokens
from variants.maps import _recording, attention_maps


def _inputs(kind):
    src = tokens(2, 9, 0)
    return (src, tokens(2, 6, 1)) if kind == "seq2seq" else (src,)


def test_recording_computes_the_same_function_and_rows_are_distributions(point):
    model = build(config_of(point))
    args = _inputs(point["kind"])
    expected = model(*args)
    with _recording(model):
        got = model(*args)
    assert_close(got, expected)
    maps = attention_maps(model, *args)
    layers, heads = model.cfg.n_layers, model.cfg.n_heads
    if point["kind"] != "seq2seq":
        assert set(maps) == {"self"} and maps["self"].shape == (layers, 2, heads, 9, 9)
        causal = [maps["self"]] if model.stacks["encoder" if "encoder" in model.stacks else "decoder"] else []
        if not causal:  # the encoder-only model sees both ways
            assert maps["self"].triu(1).abs().sum() > 0
    else:
        assert maps["encoder"].shape == (layers, 2, heads, 9, 9) and maps["cross"].shape == (layers, 2, heads, 6, 9)
        assert maps["decoder"].shape == (layers, 2, heads, 6, 6)
        causal = [maps["decoder"]]
        assert maps["encoder"].triu(1).abs().sum() > 0  # the encoder sees both ways
    for m in maps.values():
        torch.testing.assert_close(m.sum(-1), torch.ones(m.shape[:-1]))
    for m in causal:  # nothing above the diagonal: no query sees a later token
        assert torch.equal(m.triu(1), torch.zeros_like(m))
    assert all(getattr(model, name).recording is None for name in model.stacks)  # recording ends with the call


@pytest.mark.parametrize("kind", ["lm", "seq2seq", "encoder"])
def test_padding_keys_get_no_attention(kind):
    model = build(tiny_config(kind, position="rope"))
    src = tokens(2, 9, 0)
    src[0, :3] = PAD  # left padding in row 0
    if kind != "seq2seq":
        m = attention_maps(model, src)["self"]
        assert torch.equal(m[:, 0, :, 3:, :3], torch.zeros_like(m[:, 0, :, 3:, :3]))
    else:
        src = tokens(2, 9, 0)
        src[0, 6:] = PAD  # right-padded source
        maps = attention_maps(model, src, tokens(2, 5, 1))
        for name in ("encoder", "cross"):
            rows = maps[name][:, 0, :, : (6 if name == "encoder" else 5), 6:]
            assert torch.equal(rows, torch.zeros_like(rows)), name


def _bias_alone(kind):
    """A one-layer ALiBi model whose query and key projections are zero: its scores are the bias."""
    model = build(tiny_config(kind, position="alibi", n_layers=1))
    (stack,) = model.stacks
    with torch.no_grad():
        qkv = getattr(model, stack).blocks[0].attn.qkv
        qkv.weight[: 2 * model.cfg.d_model] = 0
        qkv.bias[: 2 * model.cfg.d_model] = 0
    return model


def test_alibi_attention_falls_off_with_distance():
    """With query and key projections zero, scores are ALiBi's bias alone: every head puts less
    attention on each earlier token, in proportion exp(-slope * distance)."""
    from variants.positions import alibi_slopes

    model = _bias_alone("lm")
    m = attention_maps(model, tokens(1, 12, 3))["self"][0, 0]  # (H, T, T)
    slopes = alibi_slopes(model.cfg.n_heads)
    for h in range(model.cfg.n_heads):
        for i in range(1, 12):
            row = m[h, i, : i + 1]
            assert bool((row[1:] > row[:-1]).all()), (h, i)  # nearer keys get more
            expected = torch.exp(-slopes[h] * torch.arange(i, -1, -1.0))
            torch.testing.assert_close(row, expected / expected.sum())


def test_maps_need_evaluation_mode_and_the_right_inputs():
    model = build(tiny_config("lm"))
    with pytest.raises(ValueError, match="evaluation mode"):
        attention_maps(model.train(), tokens(1, 4, 0))
    with pytest.raises(ValueError, match=r"a model of kind 'lm' takes 1 input\(s\) \(tokens\), got 2"):
        attention_maps(model.eval(), tokens(1, 4, 0), tokens(1, 4, 0))


def test_alibi_in_an_encoder_is_a_symmetric_distance_penalty():
    """Bidirectional ALiBi: with query and key projections zero, position i attends to j in
    proportion exp(-slope * |i - j|), earlier and later keys alike."""
    from variants.positions import alibi_slopes

    model = _bias_alone("encoder")
    m = attention_maps(model, tokens(1, 9, 3))["self"][0, 0]  # (H, T, T)
    distance = (torch.arange(9.0)[:, None] - torch.arange(9.0)[None]).abs()
    for h, slope in enumerate(alibi_slopes(model.cfg.n_heads)):
        expected = torch.exp(-slope * distance)
        torch.testing.assert_close(m[h], expected / expected.sum(-1, keepdim=True))
