"""DeBERTa-v2/v3 (``DebertaV2ForMaskedLM``) through ``variants.interop``: imported models compute
Hugging Face's logits, exports compute ours, and what the composition cannot express is refused.

Tiny random models only (no downloads); every HF parameter is re-drawn (norm gains around 1), so
a mis-mapped norm, bias or projection shows. 30-token inputs run past ``max_relative_positions``
(20), so the relative table's clamped ends are compared too.
"""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from tests.variants.helpers import assert_encoder_parity  # noqa: E402
from variants import ModelConfig, build_model  # noqa: E402
from variants.interop import from_hf, to_hf  # noqa: E402

DEBERTA = transformers.DebertaV2ForMaskedLM
V = 100
PAD = 0


def randomize(hf_model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in hf_model.named_parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=gen))
            if p.dim() == 1 and name.endswith("weight"):  # a norm's gain
                p.add_(1.0)
    return hf_model.eval()


def deberta(**kw):
    """DeBERTa-v3's attention layout at width 32: 4 heads, 8 buckets each way up to 20."""
    cfg = dict(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
               max_position_embeddings=64, relative_attention=True, position_biased_input=False,
               pos_att_type=["p2c", "c2p"], position_buckets=8, max_relative_positions=20, share_att_key=True,
               norm_rel_ebd="layer_norm", type_vocab_size=0, pad_token_id=PAD, layer_norm_eps=1e-7)
    cfg.update(kw)
    return randomize(DEBERTA(transformers.DebertaV2Config(**cfg)))


def tokens(batch=3, length=30, seed=1):
    return torch.randint(PAD + 1, V, (batch, length), generator=torch.Generator().manual_seed(seed))


def close(actual, expected):
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=0)


MODELS = {  # name -> (config overrides, the position entry imported)
    "v3": ({}, "deberta(deberta_buckets=8, deberta_max_distance=20)"),
    "v3-own-head": (dict(legacy=False, tie_word_embeddings=False), "deberta(deberta_buckets=8, deberta_max_distance=20)"),
    "untied-2-types": (dict(tie_word_embeddings=False, type_vocab_size=2),
                       "deberta(deberta_buckets=8, deberta_max_distance=20)"),
    "max-from-positions": (dict(position_buckets=16, max_relative_positions=-1),
                           "deberta(deberta_buckets=16, deberta_max_distance=64)"),
    "v3-sizes": (dict(position_buckets=256, max_relative_positions=512, max_position_embeddings=512),
                 "deberta(deberta_buckets=256, deberta_max_distance=512)"),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_logits_match_with_and_without_padding(name):
    """The same logits for an unpadded batch, and at the real tokens of a right-padded one (HF
    given ``attention_mask``); the legacy head (BERT's layout) and DeBERTa's own (which always
    reads the token embeddings, so it imports tied whatever ``tie_word_embeddings`` says)."""
    overrides, position = MODELS[name]
    hf = deberta(**overrides)
    ours = from_hf(hf)
    assert ours.fingerprint() == {"norm": "layernorm", "norm_position": "post", "position": position,
                                  "ffn": "gelu", "attention": "mha", "init": "gpt2"}
    cfg = ours.cfg
    assert cfg.kind == "encoder" and cfg.head_transform and cfg.embed_norm and cfg.pad_id == PAD
    assert cfg.norm_eps == 1e-7 and cfg.tie_embeddings == (hf.config.tie_word_embeddings or not hf.config.legacy)
    assert_encoder_parity(ours, hf, tokens(), PAD, close)


def test_the_disentangled_terms_and_the_relative_norm_matter():
    """The parity above pins the position terms: the same weights with another bucketing, or the
    relative table's norm at identity, give other logits."""
    hf = deberta()
    ours = from_hf(hf)
    seq = tokens()
    with torch.no_grad():
        expected = hf(seq).logits
        for changed in (ours.cfg.replace(deberta_max_distance=40), ours.cfg.replace(deberta_buckets=6)):
            other = build_model(changed).eval()
            state = ours.state_dict()
            if changed.deberta_buckets != ours.cfg.deberta_buckets:  # a table of 12 rows: the middle of ours
                state["encoder.position.table.weight"] = state["encoder.position.table.weight"][2:14]
            other.load_state_dict(state)
            assert (other(seq) - expected).abs().max() > 1e-3
        torch.nn.init.ones_(ours.encoder.position.norm.weight)
        torch.nn.init.zeros_(ours.encoder.position.norm.bias)
        assert (ours(seq) - expected).abs().max() > 1e-3


def test_type_zero_is_folded_into_untied_token_embeddings():
    hf = deberta(tie_word_embeddings=False, type_vocab_size=2)
    ours = from_hf(hf)
    embeddings = hf.deberta.embeddings
    close(ours.embed.weight, embeddings.word_embeddings.weight + embeddings.token_type_embeddings.weight[0])
    tied = deberta(type_vocab_size=2)
    with pytest.raises(NotImplementedError, match="non-zero token-type embedding and tied"):
        from_hf(tied)
    with torch.no_grad():
        tied.deberta.embeddings.token_type_embeddings.weight.zero_()
    close(from_hf(tied)(tokens()), tied(tokens()).logits)


@pytest.mark.parametrize("name", ["v3", "v3-own-head", "untied-2-types"])
def test_round_trip_gives_the_same_logits(name):
    """``to_hf(from_hf(m))`` computes what ``m`` computes (written with the legacy head and without
    token types, whatever the source had)."""
    hf = deberta(**MODELS[name][0])
    back = to_hf(from_hf(hf))
    assert type(back).__name__ == "DebertaV2ForMaskedLM" and back.config.legacy and back.config.type_vocab_size == 0
    seq = tokens()
    seq[1, 21:] = PAD
    mask = (seq != PAD).long()
    with torch.no_grad():
        close(back(seq, attention_mask=mask).logits[mask.bool()], hf(seq, attention_mask=mask).logits[mask.bool()])


def _ours(**fields):
    torch.manual_seed(0)
    cfg = ModelConfig(**{"kind": "encoder", "vocab_size": 61, "d_model": 32, "n_heads": 4, "n_layers": 2,
                         "max_seq_len": 64, "dropout": 0.0, "pad_id": PAD, "position": "deberta",
                         "norm_position": "post", "norm": "layernorm", "ffn": "gelu", "embed_norm": True,
                         "head_transform": True, **fields})
    model = build_model(cfg).eval()
    with torch.no_grad():  # every weight away from its initial value (norm gains, biases too)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.mark.parametrize("fields", [dict(), dict(tie_embeddings=False, deberta_buckets=8, deberta_max_distance=20)],
                         ids=["defaults", "untied-8-buckets"])
def test_export_computes_our_logits_and_imports_back(fields, tmp_path):
    ours = _ours(**fields)
    hf = to_hf(ours)
    hf.save_pretrained(tmp_path)
    loaded = DEBERTA.from_pretrained(tmp_path).eval()
    assert (loaded.config.position_buckets, loaded.config.max_relative_positions) == (
        ours.cfg.deberta_buckets, ours.cfg.deberta_max_distance)
    seq = torch.randint(3, 61, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        close(loaded(seq).logits, ours(seq))
    back = from_hf(loaded)
    assert back.cfg.options == ours.cfg.options
    for key, value in ours.state_dict().items():
        torch.testing.assert_close(back.state_dict()[key], value, atol=0, rtol=0)


@pytest.mark.parametrize("setting, message", [
    (dict(relative_attention=False), "relative_attention=False"),
    (dict(position_biased_input=True), "position_biased_input=True"),
    (dict(pos_att_type=["c2p"]), r"pos_att_type=\['c2p'\]"),
    (dict(pos_att_type=None), "pos_att_type=None"),
    (dict(share_att_key=False), "share_att_key=False"),
    (dict(norm_rel_ebd="none"), "norm_rel_ebd='none'"),
    (dict(conv_kernel_size=3), "conv_kernel_size=3"),
    (dict(embedding_size=16), "embedding_size=16"),
    (dict(attention_head_size=4), "attention_head_size=4"),
    (dict(position_buckets=-1), "position_buckets=-1"),
    (dict(hidden_act="gelu_new"), "hidden_act='gelu_new'.*prediction head"),
], ids=lambda value: value if isinstance(value, str) else "-".join(value))
def test_settings_without_an_equivalent_are_refused_by_name(setting, message):
    with pytest.raises(NotImplementedError, match=message):
        from_hf(deberta(**setting))


@pytest.mark.parametrize("fields, message", [
    (dict(kind="lm"), "position 'deberta' has no Hugging Face equivalent for a lm model"),
    (dict(attention="gqa", n_kv_heads=2), "attention 'gqa' has no equivalent in DebertaV2ForMaskedLM"),
    (dict(qk_norm="head"), "qk_norm='head' has no equivalent in DebertaV2ForMaskedLM"),
    (dict(norm="rmsnorm"), "norm 'rmsnorm' has no equivalent in DebertaV2ForMaskedLM"),
    (dict(norm_position="pre"), "norm_position 'pre' has no equivalent in DebertaV2ForMaskedLM"),
    (dict(head_transform=False), "head_transform=False has no equivalent in DebertaV2ForMaskedLM"),
], ids=["lm", "gqa", "qk-norm", "rmsnorm", "pre-ln", "no-head-transform"])
def test_compositions_without_an_equivalent_are_not_exported(fields, message):
    with pytest.raises(NotImplementedError, match=message):
        to_hf(_ours(**fields))
