"""The analytic FLOPs count written out by hand for small models."""

from variants import ModelConfig, build_model
from variants.flops import FlopCounter


def test_lm_flops_by_hand():
    d, L, V, T, dff = 32, 2, 50, 16, 64
    model = build_model(ModelConfig(vocab_size=V, d_model=d, n_heads=4, n_layers=L, d_ff=dff, ffn="relu"))
    per_layer = 3 * d * d + d * d + 2 * d * dff  # qkv, out, up, down
    per_token = 6 * (L * per_layer + d * V) + 12 * L * d * T
    assert FlopCounter(model)(tokens=100, seq_len=T) == per_token * 100


def test_seq2seq_flops_by_hand():
    d, L, V, S, T, dff = 32, 1, 50, 12, 9, 64
    model = build_model(ModelConfig(kind="seq2seq", vocab_size=V, d_model=d, n_heads=4, n_layers=L, d_ff=dff,
                                    ffn="swiglu"))
    hidden = round(2 * dff / 3)
    ffn = 3 * d * hidden
    encoder = 4 * d * d + ffn
    decoder = 4 * d * d + (d * d + 2 * d * d + d * d) + ffn  # self, cross (q, kv, out), ffn
    expected = (6 * (decoder + d * V) + 12 * d * T + 12 * d * S) * 7 + (6 * encoder + 12 * d * S) * 10
    assert FlopCounter(model)(tokens=7, seq_len=T, src_tokens=10, src_len=S) == expected
