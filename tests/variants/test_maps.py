"""Attention maps (variants.maps): the recorded path computes the model's own function, rows are
distributions, masked keys get nothing, and ALiBi's maps fall off with distance."""

import pytest
import torch

from tests.variants.helpers import PAD, assert_close, build, config_of, tiny_config, tokens
from variants.maps import _recording, attention_maps


def _inputs(kind):
    src = tokens(2, 9, 0)
    return (src,) if kind == "lm" else (src, tokens(2, 6, 1))


def test_recording_computes_the_same_function_and_rows_are_distributions(point):
    model = build(config_of(point))
    args = _inputs(point["kind"])
    expected = model(*args)
    with _recording(model):
        got = model(*args)
    assert_close(got, expected)
    maps = attention_maps(model, *args)
    layers, heads = model.cfg.n_layers, model.cfg.n_heads
    if point["kind"] == "lm":
        assert set(maps) == {"self"} and maps["self"].shape == (layers, 2, heads, 9, 9)
        causal = [maps["self"]]
    else:
        assert maps["encoder"].shape == (layers, 2, heads, 9, 9) and maps["cross"].shape == (layers, 2, heads, 6, 9)
        assert maps["decoder"].shape == (layers, 2, heads, 6, 6)
        causal = [maps["decoder"]]
        assert maps["encoder"].triu(1).abs().sum() > 0  # the encoder sees both ways
    for m in maps.values():
        torch.testing.assert_close(m.sum(-1), torch.ones(m.shape[:-1]))
    for m in causal:  # nothing above the diagonal: no query sees a later token
        assert torch.equal(m.triu(1), torch.zeros_like(m))
    assert model.decoder.recording is None  # recording ends with the call


@pytest.mark.parametrize("kind", ["lm", "seq2seq"])
def test_padding_keys_get_no_attention(kind):
    model = build(tiny_config(kind, position="rope"))
    src = tokens(2, 9, 0)
    src[0, :3] = PAD  # left padding in row 0
    if kind == "lm":
        m = attention_maps(model, src)["self"]
        assert torch.equal(m[:, 0, :, 3:, :3], torch.zeros_like(m[:, 0, :, 3:, :3]))
    else:
        src = tokens(2, 9, 0)
        src[0, 6:] = PAD  # right-padded source
        maps = attention_maps(model, src, tokens(2, 5, 1))
        for name in ("encoder", "cross"):
            rows = maps[name][:, 0, :, : (6 if name == "encoder" else 5), 6:]
            assert torch.equal(rows, torch.zeros_like(rows)), name


def test_alibi_attention_falls_off_with_distance():
    """With query and key projections zero, scores are ALiBi's bias alone: every head puts less
    attention on each earlier token, in proportion exp(-slope * distance)."""
    from variants.positions import alibi_slopes

    model = build(tiny_config("lm", position="alibi", n_layers=1))
    with torch.no_grad():
        qkv = model.decoder.blocks[0].attn.qkv
        qkv.weight[: 2 * model.cfg.d_model] = 0
        qkv.bias[: 2 * model.cfg.d_model] = 0
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
    with pytest.raises(ValueError, match="takes tokens alone"):
        attention_maps(model.eval(), tokens(1, 4, 0), tokens(1, 4, 0))
