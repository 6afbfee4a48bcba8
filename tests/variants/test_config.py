"""Bad configurations fail in ModelConfig, naming the field, before any tensor work."""

import pytest

from variants import REGISTRIES, ModelConfig


@pytest.mark.parametrize("slot", sorted(REGISTRIES))
def test_unknown_component_lists_choices(slot):
    with pytest.raises(ValueError) as err:
        ModelConfig(**{slot: "no-such-thing"})
    message = str(err.value)
    assert slot in message and "no-such-thing" in message
    for name in REGISTRIES[slot].names():
        assert name in message


def test_unknown_kind():
    with pytest.raises(ValueError, match="unknown model kind 'decoder'; choices: encoder, lm, seq2seq"):
        ModelConfig(kind="decoder")


def test_heads_must_divide_d_model():
    with pytest.raises(ValueError, match=r"d_model \(100\).*n_heads \(3\)"):
        ModelConfig(d_model=100, n_heads=3)


def test_rope_needs_even_head_dim():
    with pytest.raises(ValueError, match="rope.*even head dimension"):
        ModelConfig(d_model=36, n_heads=4, position="rope")
    ModelConfig(d_model=36, n_heads=4, position="alibi")  # odd head dim is fine elsewhere


@pytest.mark.parametrize("field,value", [("d_model", 0), ("n_layers", -1), ("vocab_size", 2.5),
                                         ("d_ff", 0), ("max_seq_len", True)])
def test_sizes_must_be_positive_integers(field, value):
    with pytest.raises(ValueError, match=field):
        ModelConfig(**{field: value})


def test_pad_id_inside_vocab():
    with pytest.raises(ValueError, match="pad_id"):
        ModelConfig(vocab_size=10, pad_id=10)


def test_d_ff_defaults_to_four_d_model():
    assert ModelConfig(d_model=64, n_heads=4).d_ff == 256
