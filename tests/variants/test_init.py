"""The ``init`` slot: each scheme's distributions, the residual outputs declared by their owners,
and the embedding scale that ``xavier`` carries."""

import math

import pytest
import torch
from torch import nn

from variants import REGISTRIES, ModelConfig, build_model
from variants.init import RESIDUAL_OUTPUT

D, LAYERS = 64, 3


def _model(**overrides):
    torch.manual_seed(0)
    cfg = dict(kind="seq2seq", vocab_size=4000, d_model=D, n_heads=4, n_layers=LAYERS, position="learned")
    return build_model(ModelConfig(**{**cfg, **overrides}))


@pytest.mark.parametrize("ffn", REGISTRIES["ffn"].names())
def test_every_residual_output_is_declared_by_its_component(ffn):
    """Attention outputs and feed-forward down projections, in every block of both stacks, and
    nothing else (the role comes from the component, not from a parameter's name)."""
    model = _model(ffn=ffn)
    marked = sorted(name for name, m in model.named_modules() if getattr(m, "init_role", "") == RESIDUAL_OUTPUT)
    blocks = 2 * LAYERS
    downs = getattr(model.cfg, "n_experts", 1) if ffn == "moe" else 1  # each expert's own down projection
    assert len(marked) == blocks + LAYERS + blocks * downs  # self-attention, cross-attention, feed-forward
    assert all(name.endswith(("attn.out", "ffn.down")) or ".ffn.experts." in name and name.endswith(".down")
               for name in marked)


def test_gpt2_draws_from_init_std_and_scales_residual_outputs():
    model = _model()
    depth = 2 * LAYERS  # residual blocks over both stacks
    std = model.cfg.init_std
    assert model.embed.weight.std().item() == pytest.approx(std, rel=0.05)
    assert model.encoder.blocks[0].ffn.up.weight.std().item() == pytest.approx(std, rel=0.05)
    down = torch.cat([b.ffn.down.weight.flatten() for s in (model.encoder, model.decoder) for b in s.blocks])
    assert down.std().item() == pytest.approx(std / math.sqrt(2 * depth), rel=0.05)
    assert model.embed_scale == 1.0
    assert all((m.bias == 0).all() for m in model.modules() if isinstance(m, nn.Linear) and m.bias is not None)


def test_xavier_is_the_fairseq_recipe():
    model = _model(init="xavier")
    assert model.embed.weight.std().item() == pytest.approx(D ** -0.5, rel=0.05)
    assert model.decoder.position.table.weight.std().item() == pytest.approx(D ** -0.5, rel=0.1)
    assert model.embed_scale == pytest.approx(math.sqrt(D))  # tokens enter the stack at unit scale
    for module in model.modules():
        if isinstance(module, nn.Linear):
            fan_out, fan_in = module.weight.shape
            bound = math.sqrt(6 / (fan_in + fan_out))
            assert module.weight.abs().max().item() <= bound
            assert module.weight.abs().max().item() > 0.95 * bound  # uniform up to the bound
    ln = model.encoder.blocks[0].attn_res.norm
    assert (ln.weight == 1).all() and (ln.bias == 0).all()
    assert model.fingerprint()["init"] == "xavier"


def test_xavier_with_scale_embeddings_is_refused():
    with pytest.raises(ValueError, match="init 'xavier' scales the token embeddings.*scale_embeddings"):
        ModelConfig(init="xavier", scale_embeddings=True)
    assert ModelConfig(init="xavier").embeddings_scaled and ModelConfig(scale_embeddings=True).embeddings_scaled


def test_an_unknown_init_names_the_choices():
    with pytest.raises(ValueError, match="unknown init 'he'; choices: gpt2, xavier"):
        ModelConfig(init="he")


def test_init_is_in_the_run_name_only_when_not_the_default():
    assert ModelConfig(norm_position="post").components_name() == "layernorm-post-learned-gelu"
    assert ModelConfig(norm_position="post", init="xavier").components_name() == "layernorm-post-learned-gelu-xavier"


def test_the_init_changes_no_parameter_shapes_or_names():
    a, b = _model().state_dict(), _model(init="xavier").state_dict()
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}
