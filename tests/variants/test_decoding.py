"""Greedy and beam-search translation with the KV cache, on every encoder-decoder grid point."""

from __future__ import annotations

import torch

from tests.variants.helpers import PAD, build, config_of, tokens
from variants.decoding import beam_translate, greedy_translate

EOS = 2


def _sources():
    src = tokens(3, 7, 120)
    src[1, 4:] = PAD  # a shorter source, right-padded
    return src


def _sharpened(model):
    """Larger output weights: random models then end some hypotheses early (EOS is likely)."""
    with torch.no_grad():
        model.embed.weight.mul_(8)
    return model


def test_beam_of_one_is_greedy(s2s_point):
    model = _sharpened(build(config_of(s2s_point))).eval()
    src = _sources()
    assert beam_translate(model, src, 1, EOS, 12, beam=1) == greedy_translate(model, src, 1, EOS, 12)


def test_beam_search_of_a_source_ignores_the_rest_of_the_batch(s2s_point):
    """Beams never move between sources (the cache reorder keeps each source's rows)."""
    model = _sharpened(build(config_of(s2s_point))).eval()
    src = _sources()
    together = beam_translate(model, src, 1, EOS, 12, beam=3, length_penalty=1.0)
    for i in range(src.size(0)):
        alone = src[i:i + 1, : int((src[i] != PAD).sum())]
        assert beam_translate(model, alone, 1, EOS, 12, beam=3, length_penalty=1.0) == [together[i]], i


def test_beam_search_finds_at_least_greedys_score():
    """With no length penalty and no early end, beam search returns a sequence at least as
    likely as greedy decoding's."""
    point = {"kind": "seq2seq", "norm": "layernorm", "norm_position": "pre", "position": "sinusoidal",
             "ffn": "gelu"}
    model = build(config_of(point)).eval()
    src = _sources()

    def logprob(out):
        tgt = torch.tensor([[1] + out[: 8]])  # bos + the first 8 tokens
        with torch.no_grad():
            logp = model(src[i:i + 1], tgt[:, :-1]).log_softmax(-1)
        return logp[0].gather(-1, tgt[0, 1:, None]).sum().item()

    greedy = greedy_translate(model, src, 1, -1, 8)
    beam = beam_translate(model, src, 1, -1, 8, beam=4, length_penalty=0.0)
    for i in range(src.size(0)):
        assert len(beam[i]) == len(greedy[i]) == 8
        assert logprob(beam[i]) >= logprob(greedy[i]) - 1e-4


# ------------------------------------------------------------------------------------ sampling

def _lm(lm_point):
    from tests.variants.test_models import left_pad, seqs_of

    model = build(config_of(lm_point)).eval()
    return model, left_pad(seqs_of([5, 3], 62), 5)


def test_top_k_of_one_and_temperature_zero_are_greedy(lm_point):
    from variants.decoding import greedy_generate, sample_generate

    model, prompt = _lm(lm_point)
    greedy = greedy_generate(model, prompt, 6)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(sample_generate(model, prompt, 6, top_k=1, generator=g), greedy)
    assert torch.equal(sample_generate(model, prompt, 6, temperature=0.0), greedy)
    # as the temperature falls, sampling concentrates on the greedy choice
    cold = sample_generate(model, prompt, 6, temperature=1e-4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(cold, greedy)


def test_a_seed_repeats_exactly_and_another_seed_differs(lm_point):
    from variants.decoding import sample_generate

    model, prompt = _lm(lm_point)

    def draw(seed):
        return sample_generate(model, prompt, 12, temperature=1.5, top_p=0.95,
                               generator=torch.Generator().manual_seed(seed))

    assert torch.equal(draw(3), draw(3))
    assert not all(torch.equal(draw(3), draw(s)) for s in range(4, 8))


def test_the_nucleus_is_the_smallest_set_reaching_p():
    from variants.decoding import filter_logits

    probs = torch.tensor([0.05, 0.4, 0.1, 0.3, 0.15])
    logits = probs.log()
    for p, kept in ((0.4, {1}), (0.41, {1, 3}), (0.7, {1, 3}), (0.71, {1, 3, 4}), (0.85, {1, 3, 4}),
                    (0.86, {1, 3, 4, 2}), (1.0, {0, 1, 2, 3, 4})):
        out = filter_logits(logits, top_p=p)
        assert set(torch.isfinite(out).nonzero().flatten().tolist()) == kept, p
        assert torch.equal(out[torch.isfinite(out)], logits[torch.isfinite(out)])
    assert set(torch.isfinite(filter_logits(logits, top_k=2)).nonzero().flatten().tolist()) == {1, 3}
    both = filter_logits(logits[None].repeat(2, 1), top_k=3, top_p=0.5)  # batched, both filters
    assert (torch.isfinite(both).sum(-1) == 2).all()


def test_bad_sampling_settings_are_refused():
    import pytest

    from variants.decoding import filter_logits

    with pytest.raises(ValueError, match="top_p"):
        filter_logits(torch.zeros(4), top_p=0.0)
    with pytest.raises(ValueError, match="top_k"):
        filter_logits(torch.zeros(4), top_k=0)
