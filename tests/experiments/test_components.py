"""``ablate components``: the tour builds every component into every model kind; its cache gap
is measured where the kind decodes (tiny models)."""

import pytest
import torch

from experiments.components import _cache_gap, _train_step_ms
from variants import ModelConfig, build_model
from variants.registry import KINDS


@pytest.mark.parametrize("kind", KINDS.names())
def test_the_tour_times_every_kind_and_measures_the_cache_where_there_is_one(kind):
    torch.manual_seed(0)
    model = build_model(ModelConfig(kind=kind, vocab_size=50, d_model=16, n_heads=2, n_layers=1, max_seq_len=16,
                                    dropout=0.0))
    tokens = torch.randint(1, 50, (2, 8))
    assert _train_step_ms(model.train(), tokens, steps=1) > 0
    gap = _cache_gap(model.eval(), tokens)
    assert gap is None if model.cached is None else gap < 1e-4
