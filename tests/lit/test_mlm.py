"""Masked language modelling: BERT's masking (rates, never a special token, a function of the
generator's seed), fixed evaluation masks shared by every run, and a ``<mask>`` token only in
masked-LM tokenizers."""

import torch

from lit.config import DataConfig
from lit.data.modules import EVAL_MASK_SEED, MASK_RATE, MaskedLMDataModule, bert_mask

MASK_ID, SPECIALS, VOCAB, PAD = 3, 4, 1000, 0


def _mask(tokens, seed):
    return bert_mask(tokens, torch.Generator().manual_seed(seed), MASK_ID, SPECIALS, VOCAB, PAD)


def test_bert_masking_rates_and_what_it_never_touches():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(SPECIALS, VOCAB, (400, 500), generator=g)
    tokens[:, ::10] = 2  # <eos> separators
    tokens[-1, 250:] = PAD  # padding
    inputs, targets = _mask(tokens, 1)
    chosen = targets != PAD
    pieces = tokens >= SPECIALS
    assert not chosen[~pieces].any() and torch.equal(inputs[~pieces], tokens[~pieces])  # specials untouched
    assert torch.equal(targets[chosen], tokens[chosen]) and torch.equal(inputs[~chosen], tokens[~chosen])
    share = chosen.sum() / pieces.sum()
    assert abs(share - MASK_RATE) < 0.005
    masked, kept = (inputs[chosen] == MASK_ID), (inputs[chosen] == tokens[chosen])
    n = chosen.sum()
    assert abs(masked.sum() / n - 0.8) < 0.01
    assert abs(kept.sum() / n - 0.1) < 0.01  # (a random draw equal to the token counts as kept: 1/996)
    replaced = inputs[chosen][~masked & ~kept]
    assert abs(len(replaced) / n - 0.1) < 0.01 and (replaced >= SPECIALS).all()
    again = _mask(tokens, 1)
    assert torch.equal(again[0], inputs) and torch.equal(again[1], targets)  # the seed decides it all
    assert not torch.equal(_mask(tokens, 2)[1], targets)


def test_evaluation_masks_are_the_same_for_every_run_and_the_tokenizer_has_mask(tmp_path):
    """Two runs of different seeds score the same masked validation and test tokens."""
    cfg = DataConfig(lang="en", vocab_size=600, limit_train=400, limit_eval=40, cache_dir=str(tmp_path))
    a, b = MaskedLMDataModule(cfg, 32, seed=0), MaskedLMDataModule(cfg, 32, seed=1)
    a.setup(), b.setup()
    assert a.tokenizer.mask_id == 3 and a.tokenizer.n_specials == 4
    for split in ("val", "test"):
        for x, y in zip(a.datasets[split].masked, b.datasets[split].masked):
            assert torch.equal(x, y)
        assert (a.datasets[split].masked[1] != a.tokenizer.pad_id).any()
    assert a.datasets["train"].masked is None  # masked at each training step instead
    assert a.token_bytes[:4].tolist() == [0, 0, 0, 0] and (a.token_bytes[4:] >= 1).all()
    assert EVAL_MASK_SEED  # a constant: the masks do not follow the run's seed
