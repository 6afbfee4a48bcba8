"""The analytic FLOPs count written out by hand for small models."""

from variants import ModelConfig, build_model
from variants.flops import FlopCounter, forward_flops, lm_decode_flops, s2s_decode_flops


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


def test_forward_flops_by_hand():
    assert forward_flops(100, layers=2, d=8, context=3.5) == 2 * 100 + 4 * 2 * 8 * 3.5 == 424


def test_lm_decode_flops_by_hand():
    d, L, V, dff = 32, 2, 50, 64
    model = build_model(ModelConfig(vocab_size=V, d_model=d, n_heads=4, n_layers=L, d_ff=dff, ffn="relu"))
    n = L * (4 * d * d + 2 * d * dff) + d * V  # 17984: qkv, out, up, down per layer; the head
    # 3 prompts of 4 tokens (mean causal context 2.5), then 2 cached steps over 5 and 6 keys
    prefill = 3 * 4 * (2 * n + 4 * L * d * 2.5)
    steps = 3 * (2 * n + 4 * L * d * 5) + 3 * (2 * n + 4 * L * d * 6)
    assert prefill + steps == 663552
    assert lm_decode_flops(model, rows=3, prompt=4, new=3) == 663552


def test_s2s_decode_flops_by_hand():
    d, V, S, dff = 32, 50, 5, 64
    model = build_model(ModelConfig(kind="seq2seq", vocab_size=V, d_model=d, n_heads=4, n_layers=1, d_ff=dff,
                                    ffn="relu"))
    encoder = 4 * d * d + 2 * d * dff  # 8192
    decoder = 4 * d * d + 4 * d * d + 2 * d * dff + d * V  # 13888: self, cross (q, kv, out), ffn, head
    # 2 sources of 5 tokens (full context), then 2 steps for 2 x 3 hypotheses over 1 and 2 keys
    encode = 2 * S * (2 * encoder + 4 * d * S)
    steps = sum(2 * 3 * (2 * decoder + 4 * d * t + 4 * d * S) for t in (1, 2))
    assert encode + steps == 513536
    assert s2s_decode_flops(model, batch=2, beam=3, src_len=S, new=2) == 513536


def test_encoder_flops_count_the_prediction_head_by_hand():
    """An encoder with BERT's prediction head: its dense layer is one more d x d matrix per token."""
    d, L, V, T, dff = 32, 2, 50, 16, 64
    cfg = ModelConfig(kind="encoder", vocab_size=V, d_model=d, n_heads=4, n_layers=L, d_ff=dff, ffn="relu")
    per_layer = 3 * d * d + d * d + 2 * d * dff
    plain = 6 * (L * per_layer + d * V) + 12 * L * d * T
    assert FlopCounter(build_model(cfg))(tokens=10, seq_len=T) == plain * 10
    with_head = FlopCounter(build_model(cfg.replace(head_transform=True)))(tokens=10, seq_len=T)
    assert with_head == (plain + 6 * d * d) * 10


def test_deberta_counts_its_position_products_by_hand():
    """DeBERTa's c2p and p2c: each token against the 2s projected table rows, twice, in each layer."""
    d, L, V, T, dff, s = 32, 2, 50, 16, 64, 8
    cfg = ModelConfig(kind="encoder", vocab_size=V, d_model=d, n_heads=4, n_layers=L, d_ff=dff, ffn="relu",
                      position="deberta", deberta_buckets=s, deberta_max_distance=20)
    per_layer = 3 * d * d + d * d + 2 * d * dff
    expected = 6 * (L * per_layer + d * V) + 12 * L * d * T + 3 * L * (2 * (2 * 2 * s * d))
    assert FlopCounter(build_model(cfg))(tokens=10, seq_len=T) == expected * 10
