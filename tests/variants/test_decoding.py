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
