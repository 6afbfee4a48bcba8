"""Feed-forward networks: parameter parity with the ReLU baseline, and the function each name
promises, computed here from the module's own weights."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tests.variants.helpers import tiny_config
from variants import ModelConfig, build_model
from variants.registry import FFNS

D_MODEL, D_FF = 256, 1024


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def ffn_config(name: str, **overrides) -> ModelConfig:
    return tiny_config(ffn=name, d_model=D_MODEL, n_heads=4, d_ff=D_FF, **overrides)


# Activations written out from their definitions (not via torch.nn.functional).
def relu(x):
    return torch.where(x > 0, x, torch.zeros_like(x))


def gelu(x):  # x * Phi(x)
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def gelu_tanh(x):
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def silu(x):  # swish with beta = 1
    return x / (1 + torch.exp(-x))


def linear(x, layer: nn.Linear):
    y = x @ layer.weight.T
    return y if layer.bias is None else y + layer.bias


def plain(act):
    """down(act(x W_up))."""
    return lambda m, x: linear(act(linear(x, m.up)), m.down)


def gated(act):
    """down(act(x W_gate) * (x W_up)), with W_gate, W_up the two halves of the fused matrix."""

    def f(m, x):
        h = m.down.in_features
        w_gate, w_up = m.gate_up.weight[:h], m.gate_up.weight[h:]
        gate, up = x @ w_gate.T, x @ w_up.T
        if m.gate_up.bias is not None:
            gate, up = gate + m.gate_up.bias[:h], up + m.gate_up.bias[h:]
        return linear(act(gate) * up, m.down)

    return f


# What each registered name means. A new feed-forward needs its formula here.
REFERENCE = {
    "relu": plain(relu),
    "gelu": plain(gelu),
    "gelu_tanh": plain(gelu_tanh),
    "silu": plain(silu),
    "swiglu": gated(silu),
    "geglu": gated(gelu),
    "reglu": gated(relu),
}


@pytest.mark.parametrize("name", FFNS.names())
def test_parameter_count_matches_relu_baseline(name):
    baseline = n_params(FFNS.build("relu", ffn_config("relu")))
    count = n_params(FFNS.build(name, ffn_config(name)))
    assert abs(count - baseline) / baseline < 0.01, (name, count, baseline)


def test_gated_ffns_shrink_their_hidden_width():
    swiglu = FFNS.build("swiglu", ffn_config("swiglu"))
    assert swiglu.down.in_features == round(2 * D_FF / 3)
    assert FFNS.build("relu", ffn_config("relu")).down.in_features == D_FF


@pytest.mark.parametrize("name", FFNS.names())
def test_ffn_hidden_overrides_the_width(name):
    default = FFNS.build(name, ffn_config(name))
    module = FFNS.build(name, ffn_config(name, ffn_hidden=100))
    widths = {layer.in_features for layer in module.modules()
              if isinstance(layer, nn.Linear) and layer.out_features == D_MODEL}
    assert widths == {100}
    assert n_params(module) < n_params(default)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("name", FFNS.names())
def test_ffn_computes_its_formula(name, bias):
    assert name in REFERENCE, f"no reference formula for ffn {name!r}: add one to REFERENCE"
    torch.manual_seed(0)
    module = FFNS.build(name, tiny_config(ffn=name, bias=bias)).double()
    for p in module.parameters():  # biases start at zero in models; make them matter here
        nn.init.normal_(p, 0.0, 0.5)
    x = torch.randn(3, 5, 32, dtype=torch.float64)
    expected = REFERENCE[name](module, x)
    torch.testing.assert_close(module(x), expected)
    # the formulas are distinguishable on this input (so a swapped activation would fail)
    for other, formula in REFERENCE.items():
        if other != name:
            try:
                alternative = formula(module, x)
            except AttributeError:  # the other kind of layout (plain vs gated)
                continue
            assert not torch.allclose(alternative, expected), other


def test_whole_model_parameter_counts_relu_vs_swiglu():
    """Swapping the ffn keeps the model's size: within 1%, non-embedding parameters included."""
    counts = {}
    for name in ("relu", "swiglu"):
        cfg = ModelConfig(kind="lm", vocab_size=61, d_model=256, n_heads=4, n_layers=2,
                          max_seq_len=32, ffn=name)
        counts[name] = build_model(cfg).num_params()
    for key in ("total", "non_embedding"):
        relu_count, swiglu_count = counts["relu"][key], counts["swiglu"][key]
        assert abs(swiglu_count - relu_count) / relu_count < 0.01, (key, counts)
    assert counts["relu"]["embedding"] == counts["swiglu"]["embedding"]
