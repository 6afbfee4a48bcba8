"""``variants.interop.from_hf``: imported Hugging Face models compute the same logits.

Tiny random models only (no downloads). Every HF parameter is re-drawn at random first, so
norm gains, biases and every fused layout matter to the comparison (HF initialises norms to
identity and biases to zero, which would hide a mis-mapped norm or bias).
"""

from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from tests.variants.helpers import assert_encoder_parity  # noqa: E402
from variants.interop import from_hf  # noqa: E402

# transformers imports model classes lazily (~2 s for the first); do it at collection time.
GPT2, LLAMA, BLOOM, MARIAN = (transformers.GPT2LMHeadModel, transformers.LlamaForCausalLM,
                              transformers.BloomForCausalLM, transformers.MarianMTModel)
MISTRAL, QWEN2, QWEN3, OLMO2 = (transformers.MistralForCausalLM, transformers.Qwen2ForCausalLM,
                                transformers.Qwen3ForCausalLM, transformers.Olmo2ForCausalLM)
MIXTRAL, GEMMA2 = transformers.MixtralForCausalLM, transformers.Gemma2ForCausalLM
BERT, ROBERTA = transformers.BertForMaskedLM, transformers.RobertaForMaskedLM
MODERNBERT = transformers.ModernBertForMaskedLM

ROOT = Path(__file__).resolve().parents[2]
V = 100  # vocabulary of every test model
SPECIALS = dict(bos_token_id=1, eos_token_id=2)  # inside the tiny vocabulary


def randomize(hf_model, seed=0):
    """Re-draw every parameter (norm gains around 1); keep Marian's fixed sinusoid table."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in hf_model.named_parameters():
            if "embed_positions" in name:
                continue
            p.copy_(0.2 * torch.randn(p.shape, generator=gen))
            if p.dim() == 1 and name.endswith("weight"):  # a norm's gain
                p.add_(1.0)
    return hf_model.eval()


def gpt2(**kw):
    cfg = dict(n_layer=2, n_embd=32, n_head=4, vocab_size=V, n_positions=64, **SPECIALS)
    cfg.update(kw)
    return randomize(GPT2(transformers.GPT2Config(**cfg)))


def llama(**kw):
    cfg = dict(hidden_size=32, num_attention_heads=4, num_hidden_layers=2, intermediate_size=48,
               vocab_size=V, max_position_embeddings=64, rope_theta=500.0, rms_norm_eps=1e-5,
               **SPECIALS)
    cfg.update(kw)
    return randomize(LLAMA(transformers.LlamaConfig(**cfg)))


def _llama_like(model_class, config_class, defaults: dict, kw: dict):
    cfg = dict(hidden_size=32, num_attention_heads=4, num_hidden_layers=2, intermediate_size=48, vocab_size=V,
               max_position_embeddings=64, rms_norm_eps=1e-5, tie_word_embeddings=False, **SPECIALS)
    cfg.update(defaults)
    cfg.update(kw)
    return randomize(model_class(config_class(**cfg)))


def mistral(**kw):  # grouped-query, a window of 5 (shorter than the 9-12 tokens of the tests)
    return _llama_like(MISTRAL, transformers.MistralConfig, dict(num_key_value_heads=2, sliding_window=5,
                                                                 rope_theta=500.0), kw)


def qwen2(**kw):
    return _llama_like(QWEN2, transformers.Qwen2Config, dict(num_key_value_heads=2), kw)


def qwen3(**kw):  # heads of 12, apart from 32 / 4
    return _llama_like(QWEN3, transformers.Qwen3Config, dict(num_key_value_heads=2, head_dim=12), kw)


def olmo2(**kw):
    return _llama_like(OLMO2, transformers.Olmo2Config, dict(num_key_value_heads=2, pad_token_id=None), kw)


def mixtral(**kw):  # 3 experts of width 24, top-2, grouped-query, a window of 5
    return _llama_like(MIXTRAL, transformers.MixtralConfig, dict(num_key_value_heads=2, sliding_window=5,
                                                                 num_local_experts=3, num_experts_per_tok=2,
                                                                 intermediate_size=24), kw)


def gemma2(**kw):
    """3 layers (sliding, global, sliding), GQA 2 of 4, heads of 12 scaled by 16^-1/2, a window of
    5, caps small enough to bite (scores 3, logits 5); norm gains (stored less 1) around 1."""
    hf = _llama_like(GEMMA2, transformers.Gemma2Config, dict(
        num_hidden_layers=3, num_key_value_heads=2, head_dim=12, query_pre_attn_scalar=16, sliding_window=5,
        attn_logit_softcapping=3.0, final_logit_softcapping=5.0, pad_token_id=None, tie_word_embeddings=True), kw)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("norm.weight"):
                p.sub_(1.0)
    return hf


def bloom(**kw):
    cfg = dict(hidden_size=32, n_head=4, n_layer=2, vocab_size=V, **SPECIALS)
    cfg.update(kw)
    return randomize(BLOOM(transformers.BloomConfig(**cfg)))


MARIAN_PAD = V - 1


def marian(**kw):
    cfg = dict(vocab_size=V, d_model=32, encoder_layers=2, decoder_layers=2,
               encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
               decoder_ffn_dim=64, max_position_embeddings=64, pad_token_id=MARIAN_PAD,
               decoder_start_token_id=MARIAN_PAD, eos_token_id=0, forced_eos_token_id=0,
               scale_embedding=True)
    cfg.update(kw)
    return randomize(MARIAN(transformers.MarianConfig(**cfg)))


def bert(**kw):
    """Token types of 2 rows (row 0 folded into the positions), [PAD] = 0 as in BERT."""
    cfg = dict(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
               max_position_embeddings=40, pad_token_id=0)
    cfg.update(kw)
    return randomize(BERT(transformers.BertConfig(**cfg)))


def roberta(**kw):
    """<pad> = 1 as in RoBERTa: positions read rows 2 onwards."""
    cfg = dict(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
               max_position_embeddings=42, pad_token_id=1, bos_token_id=0, eos_token_id=2, type_vocab_size=1)
    cfg.update(kw)
    return randomize(ROBERTA(transformers.RobertaConfig(**cfg)))


def modernbert(**kw):
    """4 layers: global, window, window, global (every 3rd from the first), a window of 2 each side
    (local_attention 4) over 12 tokens, RoPE bases 160000 (global) and 500 (window), no biases."""
    cfg = dict(vocab_size=V, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=48,
               max_position_embeddings=64, local_attention=4, pad_token_id=0, bos_token_id=1, eos_token_id=2,
               cls_token_id=1, sep_token_id=2, global_rope_theta=160000.0, local_rope_theta=500.0)
    cfg.update(kw)
    return randomize(MODERNBERT(transformers.ModernBertConfig(**cfg)))


def fingerprint(position, norm_position, norm, ffn, attention="mha"):
    return {"position": position, "norm_position": norm_position, "norm": norm, "ffn": ffn, "attention": attention,
            "init": "gpt2"}


def assert_logits_close(ours, theirs):
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def lm_tokens(batch=3, length=12, seed=1):
    return torch.randint(3, V, (batch, length), generator=torch.Generator().manual_seed(seed))


LMS = {
    "gpt2": (gpt2, {}, fingerprint("learned", "pre", "layernorm", "gelu_tanh")),
    "gpt2-untied-relu": (gpt2, dict(tie_word_embeddings=False, activation_function="relu",
                                    n_inner=48), fingerprint("learned", "pre", "layernorm", "relu")),
    "llama": (llama, {}, fingerprint("rope", "pre", "rmsnorm", "swiglu")),
    "llama-tied": (llama, dict(tie_word_embeddings=True), fingerprint("rope", "pre", "rmsnorm", "swiglu")),
    "llama-gqa": (llama, dict(num_key_value_heads=2),
                  fingerprint("rope", "pre", "rmsnorm", "swiglu", "gqa(n_kv_heads=2)")),
    "llama-mqa": (llama, dict(num_key_value_heads=1), fingerprint("rope", "pre", "rmsnorm", "swiglu", "gqa")),
    # Llama 3.1: GQA and llama3 RoPE scaling (an original context of 12, so every regime shows at 12 tokens)
    "llama3": (llama, dict(num_key_value_heads=2, rope_scaling=dict(
        rope_type="llama3", factor=4.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=12)),
        {**fingerprint("rope", "pre", "rmsnorm", "swiglu", "gqa(n_kv_heads=2)"), "position": "rope(rope_factor=4.0, "
         "rope_original_max_len=12, rope_scaling=llama3)"}),
    "llama-linear": (llama, dict(rope_scaling=dict(rope_type="linear", factor=2.0)),
                     {**fingerprint("rope", "pre", "rmsnorm", "swiglu"),
                      "position": "rope(rope_factor=2.0, rope_scaling=linear)"}),
    "llama-yarn": (llama, dict(rope_scaling=dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=12,
                                                 beta_fast=16.0, beta_slow=2.0)),
                   {**fingerprint("rope", "pre", "rmsnorm", "swiglu"), "position": "rope(rope_beta_fast=16.0, "
                    "rope_beta_slow=2.0, rope_factor=4.0, rope_original_max_len=12, rope_scaling=yarn)"}),
    "llama-head-dim": (llama, dict(head_dim=12), fingerprint("rope", "pre", "rmsnorm", "swiglu", "mha(head_dim=12)")),
    "mistral": (mistral, {}, fingerprint("rope", "pre", "rmsnorm", "swiglu", "gqa(n_kv_heads=2, window=5)")),
    "mistral-mha-head-dim-no-window": (mistral, dict(num_key_value_heads=4, head_dim=16, sliding_window=None),
                                       fingerprint("rope", "pre", "rmsnorm", "swiglu", "mha(head_dim=16)")),
    "qwen2": (qwen2, {}, fingerprint("rope", "pre", "rmsnorm", "swiglu", "gqa(n_kv_heads=2, qkv_bias=True)")),
    "qwen2-window": (qwen2, dict(use_sliding_window=True, sliding_window=4, max_window_layers=0),
                     fingerprint("rope", "pre", "rmsnorm", "swiglu", "gqa(n_kv_heads=2, qkv_bias=True, window=4)")),
    "qwen3": (qwen3, {}, fingerprint("rope", "pre", "rmsnorm", "swiglu", "gqa(head_dim=12, n_kv_heads=2, qk_norm=head)")),
    "qwen3-window-every-2nd-global": (
        qwen3, dict(use_sliding_window=True, sliding_window=3, layer_types=["sliding_attention", "full_attention"]),
        fingerprint("rope", "pre", "rmsnorm", "swiglu",
                    "gqa(head_dim=12, n_kv_heads=2, qk_norm=head, window=3, window_global_every=2)")),
    "olmo2": (olmo2, {}, fingerprint("rope", "reordered", "rmsnorm", "swiglu", "gqa(n_kv_heads=2, qk_norm=full)")),
    "olmo2-mha": (olmo2, dict(num_key_value_heads=4), fingerprint("rope", "reordered", "rmsnorm", "swiglu",
                                                                  "mha(qk_norm=full)")),
    "mixtral": (mixtral, {}, fingerprint("rope", "pre", "rmsnorm", "moe(moe_aux_weight=0.001, n_experts=3)",
                                         "gqa(n_kv_heads=2, window=5)")),
    "mixtral-4-experts-top-3-geglu": (mixtral, dict(num_local_experts=4, num_experts_per_tok=3, hidden_act="gelu",
                                                    sliding_window=None, router_aux_loss_coef=0.02),
                                      fingerprint("rope", "pre", "rmsnorm",
                                                  "moe(expert_ffn=geglu, moe_aux_weight=0.02, top_k=3)",
                                                  "gqa(n_kv_heads=2)")),
    "gemma2": (gemma2, {}, fingerprint("rope", "sandwich", "rmsnorm", "geglu_tanh",
                                       "gqa(attn_scale_dim=16, attn_softcap=3.0, head_dim=12, n_kv_heads=2, "
                                       "window=5, window_global_every=2)")),
    "gemma2-untied-every-layer-local-geglu-no-caps": (
        gemma2, dict(tie_word_embeddings=False, layer_types=["sliding_attention"] * 3, hidden_activation="gelu",
                     query_pre_attn_scalar=12, attn_logit_softcapping=None, final_logit_softcapping=None),
        fingerprint("rope", "sandwich", "rmsnorm", "geglu", "gqa(head_dim=12, n_kv_heads=2, window=5)")),
    "bloom": (bloom, {}, fingerprint("alibi", "pre", "layernorm", "gelu_tanh")),
    "bloom-6-heads": (bloom, dict(hidden_size=48, n_head=6),  # ALiBi slopes of a non-power of 2
                      fingerprint("alibi", "pre", "layernorm", "gelu_tanh")),
}


@pytest.mark.parametrize("name", sorted(LMS))
def test_lm_logits_match(name):
    make, overrides, expected = LMS[name]
    hf = make(**overrides)
    ours = from_hf(hf)
    assert ours.fingerprint() == expected
    assert ours.cfg.dropout == 0.0 and ours.cfg.pad_id is None
    assert ours.cfg.tie_embeddings == hf.config.tie_word_embeddings
    tokens = lm_tokens()
    with torch.no_grad():
        assert_logits_close(ours(tokens), hf(tokens).logits)


@pytest.mark.parametrize("make", [gpt2, llama, marian, mistral, qwen2, qwen3, olmo2, mixtral, gemma2],
                         ids=["gpt2", "llama", "marian", "mistral", "qwen2", "qwen3", "olmo2", "mixtral", "gemma2"])
def test_eager_attention_matches_too(make):
    """The tests above compare with HF's default attention (SDPA; BLOOM has only eager)."""
    hf = make(attn_implementation="eager")
    assert hf.config._attn_implementation == "eager"
    ours = from_hf(hf)
    with torch.no_grad():
        if make is marian:
            src, tgt = marian_batch()
            theirs = hf(input_ids=src, attention_mask=(src != MARIAN_PAD).long(),
                        decoder_input_ids=tgt).logits
            mine = ours(src, tgt)
        else:
            tokens = lm_tokens()
            theirs, mine = hf(tokens).logits, ours(tokens)
    assert_logits_close(mine, theirs)


@pytest.mark.parametrize("name", ["gpt2", "llama", "llama-gqa", "llama3", "llama-yarn", "bloom-6-heads", "mistral",
                                  "qwen2", "qwen2-window", "qwen3", "qwen3-window-every-2nd-global", "olmo2",
                                  "mixtral", "gemma2", "gemma2-untied-every-layer-local-geglu-no-caps"])
def test_lm_kv_cache_decoding_matches_full_sequence(name):
    make, overrides, _ = LMS[name]
    hf = make(**overrides)
    ours = from_hf(hf)
    tokens = lm_tokens(batch=2, length=10)
    with torch.no_grad():
        theirs = hf(tokens).logits
        cache = ours.new_cache(2, 10)
        steps = [ours(tokens[:, :4], cache)]  # a prompt, then one token at a time
        steps += [ours(tokens[:, t:t + 1], cache) for t in range(4, 10)]
    assert_logits_close(torch.cat(steps, dim=1), theirs)


@pytest.mark.parametrize("make", [gpt2, llama, bloom, mistral, qwen2, qwen3, olmo2, mixtral, gemma2],
                         ids=["gpt2", "llama", "bloom", "mistral", "qwen2", "qwen3", "olmo2", "mixtral", "gemma2"])
def test_lm_left_padding_matches_hf_attention_mask(make):
    """pad_token_id becomes pad_id: our implicit mask = HF with attention_mask and
    position_ids counted over real tokens (what ``generate`` passes)."""
    hf = make(pad_token_id=0)
    ours = from_hf(hf)
    assert ours.cfg.pad_id == 0
    tokens = lm_tokens(batch=3, length=9)
    tokens[1, :3] = 0
    tokens[2, :5] = 0
    mask = (tokens != 0).long()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        theirs = hf(tokens, attention_mask=mask, position_ids=positions).logits
        mine = ours(tokens)
    real = mask.bool()
    assert_logits_close(mine[real], theirs[real])


ENCODERS = {
    "bert": (bert, {}),
    "bert-untied-1-type": (bert, dict(tie_word_embeddings=False, type_vocab_size=1)),
    "roberta": (roberta, {}),
    "roberta-pad-5": (roberta, dict(pad_token_id=5, max_position_embeddings=46)),
}


MODERNBERTS = {
    "modernbert": ({}, fingerprint("rope(rope_local_base=500.0)", "pre(skip_first_norm=True)", "layernorm", "geglu",
                                   "mha(window=3, window_global_every=3, window_global_from=0)")),
    "modernbert-every-2nd-one-base-tanh-biases-untied": (
        dict(global_attn_every_n_layers=2, local_rope_theta=160000.0, hidden_activation="gelu_pytorch_tanh",
             attention_bias=True, mlp_bias=True, norm_bias=True, classifier_bias=True, tie_word_embeddings=False),
        fingerprint("rope", "pre(skip_first_norm=True)", "layernorm", "geglu_tanh",
                    "mha(window=3, window_global_every=2, window_global_from=0)")),
    # every layer global: no window, and the local RoPE base (160000 vs 500 here) unused
    "modernbert-all-global": (dict(global_attn_every_n_layers=1),
                              fingerprint("rope", "pre(skip_first_norm=True)", "layernorm", "geglu")),
}


@pytest.mark.parametrize("name", sorted(MODERNBERTS))
def test_modernbert_logits_match_with_and_without_padding(name):
    """ModernBERT: Pre-LN whose first attention reads the normed embeddings, GeGLU, window layers
    with a RoPE base of their own between global ones; unpadded and right-padded batches."""
    overrides, expected = MODERNBERTS[name]
    hf = modernbert(**overrides)
    ours = from_hf(hf)
    assert ours.fingerprint() == expected
    assert ours.cfg.head_transform and ours.cfg.embed_norm and ours.cfg.pad_id == 0
    assert_encoder_parity(ours, hf, lm_tokens(), 0, assert_logits_close)


@pytest.mark.parametrize("shift", [-1, 1])
def test_modernbert_window_is_not_off_by_one(shift):
    """local_attention 4 is our window of 3 (|i - j| < 3): a window one shorter or longer, or the
    global layers shifted by one, gives other logits."""
    from variants import build_model

    hf = modernbert()
    ours = from_hf(hf)
    tokens = lm_tokens()
    for changed in (ours.cfg.replace(window=ours.cfg.window + shift), ours.cfg.replace(window_global_from=1)):
        other = build_model(changed).eval()
        other.load_state_dict(ours.state_dict())
        with torch.no_grad():
            assert (other(tokens) - hf(tokens).logits).abs().max() > 1e-3


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_encoder_logits_match_with_and_without_padding(name):
    """BERT-style masked-LM models: the same logits for an unpadded batch, and at the real tokens of
    a right-padded one (HF given ``attention_mask``); every row sees its later tokens."""
    make, overrides = ENCODERS[name]
    hf = make(**overrides)
    pad = hf.config.pad_token_id
    ours = from_hf(hf)
    assert ours.fingerprint() == fingerprint("learned", "post", "layernorm", "gelu")
    assert ours.cfg.kind == "encoder" and ours.cfg.head_transform and ours.cfg.embed_norm and ours.cfg.pad_id == pad
    assert ours.cfg.max_seq_len == 40 and ours.cfg.tie_embeddings == hf.config.tie_word_embeddings
    tokens = lm_tokens()
    tokens[tokens == pad] = pad + 1
    assert_encoder_parity(ours, hf, tokens, pad, assert_logits_close)


def test_bert_type_zero_is_folded_into_the_positions():
    """The type-0 embedding is part of every position's vector; a model without it computes
    other logits (so the parity above pins the fold)."""
    hf = bert()
    ours = from_hf(hf)
    types = hf.bert.embeddings.token_type_embeddings.weight
    torch.testing.assert_close(ours.encoder.position.table.weight,
                               hf.bert.embeddings.position_embeddings.weight + types[0])
    with torch.no_grad():
        types.zero_()
        assert (ours(lm_tokens()) - hf(lm_tokens()).logits).abs().max() > 1e-3


@pytest.mark.parametrize("make, setting, message", [
    (bert, dict(hidden_act="gelu_new"), "hidden_act='gelu_new' cannot be imported.*prediction head"),
    (bert, dict(is_decoder=True), "is_decoder=True"),
    (roberta, dict(hidden_act="relu"), "RoBERTa with hidden_act='relu'"),
    (modernbert, dict(mlp_bias=True), "mlp_bias=True cannot be imported"),
    (modernbert, dict(classifier_activation="relu"), "classifier_activation='relu'"),
    (modernbert, dict(decoder_bias=False), "without decoder_bias"),
    (modernbert, dict(layer_types=["sliding_attention", "full_attention", "full_attention", "sliding_attention"]),
     "layer_types=.*cannot be imported"),
])
def test_encoder_settings_without_a_counterpart_are_refused(make, setting, message):
    with pytest.raises(NotImplementedError, match=message):
        from_hf(make(**setting))


MARIANS = {
    "gelu": {},
    "swish-unscaled-3-1-layers": dict(activation_function="swish", scale_embedding=False,
                                      encoder_layers=3, decoder_layers=1),
    "relu": dict(activation_function="relu"),
}


def marian_batch():
    gen = torch.Generator().manual_seed(2)
    src = torch.randint(3, V - 1, (3, 9), generator=gen)
    src[1, 6:] = MARIAN_PAD  # right-padded rows
    src[2, 3:] = MARIAN_PAD
    tgt = torch.randint(3, V - 1, (3, 7), generator=gen)
    tgt[:, 0] = MARIAN_PAD  # decoder_start_token_id
    return src, tgt


@pytest.mark.parametrize("name", sorted(MARIANS))
def test_marian_logits_match(name):
    hf = marian(**MARIANS[name])
    ours = from_hf(hf)
    ffn = {"gelu": "gelu", "swish": "silu", "relu": "relu"}[hf.config.activation_function]
    assert ours.fingerprint() == fingerprint("sinusoidal", "post", "layernorm", ffn)
    assert ours.cfg.pad_id == MARIAN_PAD and ours.cfg.kind == "seq2seq"
    assert (ours.cfg.encoder_layers, ours.cfg.decoder_layers) == (hf.config.encoder_layers,
                                                                   hf.config.decoder_layers)
    assert_marian_logits_close(hf, ours)


def assert_marian_logits_close(hf, ours):
    src, tgt = marian_batch()
    with torch.no_grad():
        theirs = hf(input_ids=src, attention_mask=(src != MARIAN_PAD).long(),
                    decoder_input_ids=tgt).logits
        assert_logits_close(ours(src, tgt), theirs)


def test_marian_untied_head():
    """An output head of its own over one shared input embedding (how transformers 4.x builds
    ``tie_word_embeddings=False``; 5.x unties the encoder/decoder embeddings as well)."""
    hf = marian(tie_word_embeddings=False)
    hf.model.encoder.embed_tokens = hf.model.decoder.embed_tokens = hf.model.shared
    ours = from_hf(hf)
    assert not ours.cfg.tie_embeddings
    assert_marian_logits_close(hf, ours)


def test_marian_separate_input_embeddings_refused():
    hf = marian(tie_word_embeddings=False)  # 5.x: encoder, decoder and shared tables all differ
    if torch.equal(hf.model.encoder.embed_tokens.weight, hf.model.shared.weight):
        pytest.skip("this transformers version keeps the input embeddings shared")
    with pytest.raises(NotImplementedError, match="encoder.embed_tokens.*differs"):
        from_hf(hf)


def test_marian_kv_cache_decoding_matches_full_sequence():
    hf = marian()
    ours = from_hf(hf)
    src, tgt = marian_batch()
    with torch.no_grad():
        theirs = hf(input_ids=src, attention_mask=(src != MARIAN_PAD).long(),
                    decoder_input_ids=tgt).logits
        memory, memory_valid = ours.encode(src)
        cache = ours.new_cache(src.size(0), tgt.size(1))
        steps = [ours.decode(tgt[:, t:t + 1], memory, memory_valid, cache) for t in range(tgt.size(1))]
    assert_logits_close(torch.cat(steps, dim=1), theirs)


# --- what cannot be imported is refused, naming the reason ------------------------------------


def test_rope_scaling_without_a_counterpart_refused():
    hf = llama(rope_scaling={"rope_type": "dynamic", "factor": 2.0})
    with pytest.raises(NotImplementedError, match="RoPE scaling rope_type='dynamic'"):
        from_hf(hf)


def test_partial_rotary_refused():
    hf = llama()
    hf.config.partial_rotary_factor = 0.5  # config-level only: HF would need matching weights
    with pytest.raises(NotImplementedError, match="partial rotary.*0.5"):
        from_hf(hf)


def test_import_refuses_what_has_no_counterpart_naming_it():
    with pytest.raises(NotImplementedError, match=r"Qwen 3 with attention_bias=True cannot be imported"):
        from_hf(qwen3(attention_bias=True))
    with pytest.raises(NotImplementedError, match=r"OLMo 2 with attention_bias=True cannot be imported"):
        from_hf(olmo2(attention_bias=True))
    with pytest.raises(NotImplementedError, match=r"Mistral with attention_dropout=0.1 cannot be imported"):
        from_hf(mistral(attention_dropout=0.1))
    # Qwen 2's default pattern: sliding windows from max_window_layers on (here layer 1 of 2 only)
    with pytest.raises(NotImplementedError, match=r"Qwen 2 with layer_types=\['full_attention', "
                                                  r"'sliding_attention'\] cannot be imported"):
        from_hf(qwen2(use_sliding_window=True, sliding_window=4, max_window_layers=1))
    with pytest.raises(NotImplementedError, match=r"RoPE scaling rope_type='dynamic'"):
        from_hf(qwen3(rope_scaling={"rope_type": "dynamic", "factor": 2.0}))
    with pytest.raises(NotImplementedError, match=r"Mixtral with num_experts_per_tok=1 cannot be imported"):
        from_hf(mixtral(num_experts_per_tok=1))
    with pytest.raises(NotImplementedError, match=r"Mixtral with router_jitter_noise=0.1 cannot be imported"):
        from_hf(mixtral(router_jitter_noise=0.1))
    with pytest.raises(NotImplementedError, match=r"Gemma 2 with attention_bias=True cannot be imported"):
        from_hf(gemma2(attention_bias=True))
    with pytest.raises(NotImplementedError, match=r"Gemma 2 with attention_dropout=0.1 cannot be imported"):
        from_hf(gemma2(attention_dropout=0.1))
    with pytest.raises(NotImplementedError, match=r"Gemma 2 with use_bidirectional_attention=True"):
        from_hf(gemma2(use_bidirectional_attention=True))
    with pytest.raises(NotImplementedError, match=r"Gemma 2 with layer_types=\['full_attention', "
                                                  r"'sliding_attention', 'sliding_attention'\] cannot be imported"):
        from_hf(gemma2(layer_types=["full_attention", "sliding_attention", "sliding_attention"]))
    with pytest.raises(NotImplementedError, match=r"Gemma 2 activation 'gelu_fast' has no feed-forward entry"):
        from_hf(gemma2(hidden_activation="gelu_fast"))
    hf = gemma2()
    hf.config.__dict__["query_pre_attn_scalar"] = 12.5  # a float, as configs of older transformers may hold
    with pytest.raises(NotImplementedError, match=r"Gemma 2 with query_pre_attn_scalar=12.5 cannot be imported"):
        from_hf(hf)
    # a window switched off: layer_types may still say sliding, and nothing is windowed
    assert from_hf(qwen2(use_sliding_window=False, layer_types=["sliding_attention"] * 2)).cfg.options == {
        "n_kv_heads": 2, "qkv_bias": True}


def test_unsupported_model_type_lists_supported():
    albert = transformers.AlbertForMaskedLM(transformers.AlbertConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, embedding_size=16,
        vocab_size=V))
    with pytest.raises(NotImplementedError, match="'albert'.*gpt2.*llama.*bloom.*marian.*bert.*roberta"):
        from_hf(albert)


def test_base_model_without_head_refused():
    base = transformers.GPT2Model(transformers.GPT2Config(n_layer=1, n_embd=32, n_head=4,
                                                          vocab_size=V, n_positions=16))
    with pytest.raises(NotImplementedError, match="GPT2LMHeadModel.*GPT2Model"):
        from_hf(base)
    with pytest.raises(NotImplementedError, match="BertForMaskedLM.*BertModel"):
        from_hf(transformers.BertModel(bert().config))


def test_marian_final_logits_bias_refused():
    hf = marian()
    hf.final_logits_bias[0, 5] = 1.0
    with pytest.raises(NotImplementedError, match="final_logits_bias"):
        from_hf(hf)


def test_marian_unequal_ffn_widths_refused():
    with pytest.raises(NotImplementedError, match="decoder_ffn_dim=32.*64"):
        from_hf(marian(decoder_ffn_dim=32))


def test_bloom_residual_after_layernorm_refused():
    with pytest.raises(NotImplementedError, match="apply_residual_connection_post_layernorm"):
        from_hf(bloom(apply_residual_connection_post_layernorm=True))


def test_untied_copy_of_a_tied_weight_refused():
    hf = gpt2()
    hf.config.tie_word_embeddings = True
    hf.lm_head.weight = torch.nn.Parameter(hf.lm_head.weight.detach() + 1.0)  # untie by hand
    with pytest.raises(NotImplementedError, match="lm_head.weight.*differs"):
        from_hf(hf)


# --- pad_id -------------------------------------------------------------------------------------


def test_pad_id_not_taken_when_it_is_also_eos():
    assert from_hf(llama(pad_token_id=2)).cfg.pad_id is None  # 2 is eos: real tokens carry it


def test_pad_id_outside_vocab_ignored():
    assert from_hf(gpt2(pad_token_id=50256)).cfg.pad_id is None  # no input can carry it


def test_pad_id_override():
    hf = gpt2()
    assert from_hf(hf).cfg.pad_id is None  # GPT-2 has no pad token
    assert from_hf(hf, pad_id=7).cfg.pad_id == 7
    assert from_hf(bloom(pad_token_id=3), pad_id=None).cfg.pad_id is None


# ---------------------------------------------------------------------------------------------
# Export (to_hf): the inverse of the import


EXPORTABLE = {
    "gpt2": dict(kind="lm", position="learned", norm="layernorm", norm_position="pre", ffn="gelu_tanh"),
    "gpt2-relu-untied": dict(kind="lm", position="learned", norm="layernorm", norm_position="pre", ffn="relu",
                             tie_embeddings=False),
    "llama": dict(kind="lm", position="rope", norm="rmsnorm", norm_position="pre", ffn="swiglu", bias=False,
                  rope_base=5000.0),
    "llama-geglu-bias": dict(kind="lm", position="rope", norm="rmsnorm", norm_position="pre", ffn="geglu"),
    "llama-gqa": dict(kind="lm", position="rope", norm="rmsnorm", norm_position="pre", ffn="swiglu", bias=False,
                      attention="gqa", n_kv_heads=2),
    "llama3": dict(kind="lm", position="rope", norm="rmsnorm", norm_position="pre", ffn="swiglu", bias=False,
                   attention="gqa", n_kv_heads=2, rope_scaling="llama3", rope_factor=4.0, rope_original_max_len=12),
    "llama-yarn": dict(kind="lm", position="rope", norm="rmsnorm", norm_position="pre", ffn="swiglu", bias=False,
                       rope_scaling="yarn", rope_factor=4.0),
    "llama-head-dim": dict(kind="lm", position="rope", norm="rmsnorm", norm_position="pre", ffn="swiglu",
                           head_dim=12),
    "mistral": dict(kind="lm", position="rope", norm="rmsnorm", norm_position="pre", ffn="swiglu", bias=False,
                    attention="gqa", n_kv_heads=2, window=4),
    "qwen2": dict(kind="lm", position="rope", norm="rmsnorm", norm_position="pre", ffn="swiglu", bias=False,
                  qkv_bias=True, attention="gqa", n_kv_heads=2, window=4, window_global_every=2),
    "qwen3": dict(kind="lm", position="rope", norm="rmsnorm", norm_position="pre", ffn="swiglu", bias=False,
                  qk_norm="head", head_dim=16, attention="gqa", n_kv_heads=2),
    "olmo2": dict(kind="lm", position="rope", norm="rmsnorm", norm_position="reordered", ffn="swiglu", bias=False,
                  qk_norm="full", attention="gqa", n_kv_heads=2),
    # experts of width 24: transformers' grouped matmul of the experts needs rows of 16-byte multiples
    "mixtral": dict(kind="lm", position="rope", norm="rmsnorm", norm_position="pre", ffn="moe", bias=False,
                    n_experts=3, ffn_hidden=24, attention="gqa", n_kv_heads=2, window=4),
    "gemma2": dict(kind="lm", position="rope", norm="rmsnorm", norm_position="sandwich", ffn="geglu_tanh",
                   bias=False, scale_embeddings=True, attention="gqa", n_kv_heads=2, head_dim=12, window=4,
                   window_global_every=2, attn_softcap=3.0, attn_scale_dim=16, logit_softcap=5.0),
    "gemma2-untied-geglu-no-window": dict(kind="lm", position="rope", norm="rmsnorm", norm_position="sandwich",
                                          ffn="geglu", bias=False, scale_embeddings=True, tie_embeddings=False),
    "bloom": dict(kind="lm", position="alibi", norm="layernorm", norm_position="pre", ffn="gelu_tanh",
                  embed_norm=True),
    "marian": dict(kind="seq2seq", position="sinusoidal", norm="layernorm", norm_position="post", ffn="gelu",
                   scale_embeddings=True),
    "bert": dict(kind="encoder", position="learned", norm="layernorm", norm_position="post", ffn="gelu",
                 embed_norm=True, head_transform=True),
    "bert-untied": dict(kind="encoder", position="learned", norm="layernorm", norm_position="post", ffn="gelu",
                        embed_norm=True, head_transform=True, tie_embeddings=False),
    "roberta": dict(kind="encoder", position="learned", norm="layernorm", norm_position="post", ffn="gelu",
                    embed_norm=True, head_transform=True, pad_id=1),
    "modernbert": dict(kind="encoder", position="rope", norm="layernorm", norm_position="pre", ffn="geglu",
                       bias=False, embed_norm=True, head_transform=True, skip_first_norm=True, n_layers=3, window=3,
                       window_global_every=3, window_global_from=0, rope_base=160000.0, rope_local_base=500.0),
    "modernbert-no-window-untied": dict(kind="encoder", position="rope", norm="layernorm", norm_position="pre",
                                        ffn="geglu_tanh", embed_norm=True, head_transform=True, skip_first_norm=True,
                                        tie_embeddings=False),
}
# the family an export is asked for (default: the first that fits)
EXPORT_FAMILY = {"roberta": "roberta"}


def _ours(**fields):
    from variants import ModelConfig, build_model

    torch.manual_seed(0)
    cfg = ModelConfig(**{"vocab_size": 61, "d_model": 32, "n_heads": 4, "n_layers": 2, "max_seq_len": 64,
                         "dropout": 0.0, "pad_id": 0, **fields})
    model = build_model(cfg).eval()
    with torch.no_grad():  # every weight away from its initial value (norm gains, biases too)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


# the family each LLaMA-like composition exports to (the first whose fields and settings fit)
EXPORTED_AS = {"bert": "BertForMaskedLM", "roberta": "RobertaForMaskedLM", "modernbert": "ModernBertForMaskedLM",
               "llama-head-dim": "LlamaForCausalLM",
               "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM", "olmo2": "Olmo2ForCausalLM", "mixtral": "MixtralForCausalLM",
               "gemma2": "Gemma2ForCausalLM", "gemma2-untied-geglu-no-window": "Gemma2ForCausalLM"}


@pytest.mark.parametrize("name", list(EXPORTABLE))
def test_export_computes_the_same_logits(name, tmp_path):
    from variants.interop import to_hf

    ours = _ours(**EXPORTABLE[name])
    hf = to_hf(ours, bos_id=1 if ours.cfg.pad_id != 1 else 0, eos_id=2, family=EXPORT_FAMILY.get(name))
    hf.save_pretrained(tmp_path)
    loaded = getattr(transformers, type(hf).__name__).from_pretrained(tmp_path).eval()
    src = torch.randint(3, 61, (2, 11), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        if ours.cfg.kind != "seq2seq":
            expected, got = ours(src), loaded(input_ids=src).logits
        else:
            tgt = torch.randint(3, 61, (2, 7), generator=torch.Generator().manual_seed(2))
            expected, got = ours(src, tgt), loaded(input_ids=src, decoder_input_ids=tgt).logits
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    assert type(hf).__name__ == EXPORTED_AS.get(name, type(hf).__name__)
    back = from_hf(loaded)  # and the import gives our weights back
    assert back.cfg.options == ours.cfg.options
    for key, value in ours.state_dict().items():
        torch.testing.assert_close(back.state_dict()[key], value, atol=0, rtol=0)


@pytest.mark.parametrize("name", ["gpt2", "llama", "llama-gqa", "llama3", "bloom", "mistral", "qwen2", "qwen3",
                                  "olmo2", "mixtral", "gemma2", "gemma2-untied-geglu-no-window"])
def test_exported_greedy_generation_is_ours(name):
    from variants.decoding import greedy_generate
    from variants.interop import to_hf

    ours = _ours(**EXPORTABLE[name])
    hf = to_hf(ours, bos_id=1, eos_id=2)
    prompt = torch.tensor([[2, 17, 33, 5, 40]])
    expected = greedy_generate(ours, prompt, 12)[0].tolist()
    hf.generation_config.eos_token_id = None  # all 12 tokens, an end-of-sequence id among them or not
    got = hf.generate(prompt, max_new_tokens=12, do_sample=False, pad_token_id=0)[0, 5:].tolist()
    assert got == expected and len(expected) == 12


@pytest.mark.parametrize("fields, message", [
    (dict(kind="lm", position="t5"), "position 't5' has no Hugging Face equivalent for a lm model"),
    (dict(kind="lm", position="learned", norm="rmsnorm"), "norm 'rmsnorm' has no equivalent in GPT2LMHeadModel"),
    (dict(kind="lm", position="rope", norm="rmsnorm", ffn="gelu"), "ffn 'gelu' has no equivalent in LlamaForCausalLM"),
    (dict(kind="lm", position="learned", norm_position="post"), "norm_position 'post'"),
    (dict(kind="lm", position="learned", bias=False), "bias=False has no equivalent in GPT2LMHeadModel"),
    (dict(kind="lm", position="alibi", ffn="gelu_tanh"), "embed_norm=False has no equivalent in BloomForCausalLM"),
    (dict(kind="lm", position="alibi", ffn="gelu_tanh", embed_norm=True, d_ff=96),
     "a feed-forward 96 wide (model.d_ff / model.ffn_hidden) has no equivalent in BloomForCausalLM"),
    (dict(kind="seq2seq", position="rope"), "position 'rope' has no Hugging Face equivalent for a seq2seq model"),
    (dict(kind="lm", position="rope", norm="rmsnorm", ffn="swiglu", qk_norm="head"),  # Qwen 3 has no biases
     r"qk_norm='head' has no equivalent in LlamaForCausalLM"),
    (dict(kind="lm", position="rope", norm="rmsnorm", ffn="swiglu", bias=False, window=4, window_global_every=2),
     r"window_global_every=2 has no equivalent in MistralForCausalLM"),
    (dict(kind="lm", position="rope", norm="rmsnorm", ffn="swiglu", qkv_bias=True, bias=False, qk_norm="head"),
     r"qk_norm='head' has no equivalent in Qwen2ForCausalLM"),
    (dict(kind="lm", position="rope", norm="rmsnorm", norm_position="reordered", ffn="swiglu", bias=False),
     r"norm_position 'reordered' has no equivalent in LlamaForCausalLM"),  # OLMo 2 needs qk_norm full too
    (dict(kind="lm", position="rope", norm="rmsnorm", norm_position="sandwich", ffn="geglu_tanh", bias=False),
     r"embeddings_scaled=False has no equivalent in Gemma2ForCausalLM"),
    (dict(kind="lm", position="rope", norm="rmsnorm", ffn="swiglu", bias=False, attn_softcap=3.0),
     r"attn_softcap=3.0 has no equivalent in LlamaForCausalLM"),
    (dict(kind="lm", position="rope", norm="rmsnorm", ffn="swiglu", bias=False, logit_softcap=5.0),
     r"logit_softcap=5.0 has no equivalent in LlamaForCausalLM"),
    (dict(kind="lm", position="learned", logit_softcap=5.0), r"logit_softcap=5.0 has no equivalent in GPT2LMHeadModel"),
], ids=["t5", "gpt2-rmsnorm", "llama-gelu", "gpt2-post-ln", "gpt2-no-bias", "bloom-no-embed-norm", "bloom-ffn-width",
        "s2s-rope",
        "llama-qk-norm", "mistral-global-layers", "qkv-bias-and-qk-norm", "olmo2-without-qk-norm",
        "gemma2-unscaled-embeddings", "llama-attn-softcap", "llama-logit-softcap", "gpt2-logit-softcap"])
def test_compositions_without_an_equivalent_are_refused_by_name(fields, message):
    from variants.interop import to_hf

    with pytest.raises(NotImplementedError, match=message.replace("(", r"\(").replace(")", r"\)")):
        to_hf(_ours(**fields))


@pytest.mark.parametrize("shift", [-1, 1])
def test_mistral_window_is_not_off_by_one(shift):
    """transformers' sliding_window of 5 is our window of 5: the same weights with a window one
    shorter or longer give other logits (so the parity above pins the off-by-one)."""
    from variants import build_model

    hf = mistral()
    ours = from_hf(hf)
    other = build_model(ours.cfg.replace(window=ours.cfg.window + shift)).eval()
    other.load_state_dict(ours.state_dict())
    tokens = lm_tokens()
    with torch.no_grad():
        assert_logits_close(ours(tokens), hf(tokens).logits)
        assert (other(tokens) - hf(tokens).logits).abs().max() > 1e-3


DECODER_PRESETS = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "llama3": "LlamaForCausalLM",
                   "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
                   "olmo2": "Olmo2ForCausalLM", "mixtral": "MixtralForCausalLM", "gemma2": "Gemma2ForCausalLM",
                   "bloom": "BloomForCausalLM"}


@pytest.mark.parametrize("preset, class_name", DECODER_PRESETS.items(), ids=list(DECODER_PRESETS))
def test_each_decoder_preset_exports_to_its_family_with_equal_logits(preset, class_name):
    """``configs/model/<preset>.yaml`` is the composition of the family it names: a small random
    model built from it exports to that family's class, which computes its logits."""
    import yaml

    from variants import ModelConfig
    from variants.interop import to_hf
    from variants.models import build_model

    diff = yaml.safe_load((ROOT / "configs" / "model" / f"{preset}.yaml").read_text())["model"]
    cfg = ModelConfig(**{"kind": "lm", "vocab_size": V, "d_model": 32, "n_heads": 4, "n_layers": 2,  # experts 42 wide
                         "max_seq_len": 128, "dropout": 0.0, **diff})
    torch.manual_seed(0)
    ours = build_model(cfg).eval()
    with torch.no_grad():  # no gain left at 1 nor bias at 0, which would hide a mis-mapped one
        for parameter in ours.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    theirs = to_hf(ours)
    assert type(theirs).__name__ == class_name
    tokens = lm_tokens(length=12)
    with torch.no_grad():
        assert_logits_close(ours(tokens), theirs(tokens).logits)
