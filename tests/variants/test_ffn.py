"""Feed-forward networks: parameter parity with the ReLU baseline, and the function each name
promises, computed here from the module's own weights."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tests.variants.helpers import tiny_config
import variants.ffn as ffn_module
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


def mixture(m, x):
    """Token by token: the softmax over the router's scores, the top_k experts, their outputs
    (each by its own formula) summed with the chosen probabilities, renormalised when top_k > 1."""
    rows = []
    for token in x.reshape(-1, x.size(-1)):
        probs = torch.exp(token @ m.router.weight.T)
        probs = probs / probs.sum()
        best = sorted(range(m.n_experts), key=lambda e: -float(probs[e].detach()))[: m.top_k]
        total = sum(probs[e] for e in best) if m.top_k > 1 else 1.0  # top-1 (Switch): not renormalised
        rows.append(sum(probs[e] / total * REFERENCE[m.expert_ffn](m.experts[e], token) for e in best))
    return torch.stack(rows).reshape(x.shape)


# What each registered name means. A new feed-forward needs its formula here.
REFERENCE = {
    "moe": mixture,
    "relu": plain(relu),
    "gelu": plain(gelu),
    "gelu_tanh": plain(gelu_tanh),
    "silu": plain(silu),
    "swiglu": gated(silu),
    "geglu": gated(gelu),
    "geglu_tanh": gated(gelu_tanh),
    "reglu": gated(relu),
}


def active_params(module: nn.Module, share: float = 1.0) -> float:
    """Parameters a token passes through: a routed expert's at its ``active_share``."""
    share *= getattr(module, "active_share", 1.0)
    own = sum(p.numel() for p in module.parameters(recurse=False)) * share
    return own + sum(active_params(child, share) for child in module.children())


@pytest.mark.parametrize("name", FFNS.names())
def test_parameter_count_matches_relu_baseline(name):
    """Active parameters (all of them, but for a mixture of experts, whose experts are sized so
    that a token's active ones match: iso-FLOP)."""
    baseline = n_params(FFNS.build("relu", ffn_config("relu")))
    count = active_params(FFNS.build(name, ffn_config(name)))
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


GATED = [name for name in FFNS.names() if FFNS.get(name).gated]


@pytest.mark.parametrize("name", GATED)
def test_gated_cpu_kernel_gives_the_formula_and_its_gradients(name):
    """In fp32 on a CPU at an odd hidden width (683) a gated entry runs as one autograd function
    with aligned intermediates (``variants.ffn._GatedProduct``): its output and the gradients of
    the input and both matrices equal autograd through the written-out formula."""
    torch.manual_seed(0)
    module = FFNS.build(name, ffn_config(name, bias=False))
    x = torch.randn(2, 40, D_MODEL, requires_grad=True)
    assert ffn_module._fused_gated(module, x) and module.hidden % 16
    grad = torch.randn(2, 40, D_MODEL)
    out = module(x)
    got = torch.autograd.grad(out, (x, module.gate_up.weight, module.down.weight), grad)
    expected_out = REFERENCE[name](module, x)
    expected = torch.autograd.grad(expected_out, (x, module.gate_up.weight, module.down.weight), grad)
    torch.testing.assert_close(out, expected_out, rtol=1e-5, atol=1e-5)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_gated_cpu_kernel_is_used_only_where_it_applies():
    x = torch.randn(2, 32, D_MODEL)
    assert ffn_module._fused_gated(FFNS.build("swiglu", ffn_config("swiglu", bias=False)), x)
    assert not ffn_module._fused_gated(FFNS.build("swiglu", ffn_config("swiglu", bias=False)), x[:, :31])  # 62 rows
    assert not ffn_module._fused_gated(FFNS.build("swiglu", ffn_config("swiglu", bias=False, ffn_hidden=64)), x)
    assert not ffn_module._fused_gated(FFNS.build("swiglu", ffn_config("swiglu", bias=True)), x)
    assert not ffn_module._fused_gated(FFNS.build("swiglu", ffn_config("swiglu", bias=False)).double(), x.double())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not ffn_module._fused_gated(FFNS.build("swiglu", ffn_config("swiglu", bias=False)), x)


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


# ------------------------------------------------------------------------- mixture of experts
def moe_module(**settings):
    torch.manual_seed(0)
    module = FFNS.build("moe", tiny_config(ffn="moe", **settings)).double()
    for p in module.parameters():
        nn.init.normal_(p, 0.0, 0.5)
    return module


@pytest.mark.parametrize("settings", [{}, {"n_experts": 3, "top_k": 1}, {"n_experts": 5, "top_k": 3,
                                                                          "expert_ffn": "gelu"}],
                         ids=["e4-top2", "e3-top1", "e5-top3-gelu"])
def test_moe_routes_each_token_alone_and_deterministically(settings):
    """Per-token routing, no capacity limit: a token's output does not depend on the other
    tokens of the batch, and the same input routes the same way every time."""
    module = moe_module(**settings)
    x = torch.randn(4, 6, 32, dtype=torch.float64)
    whole = module(x)
    torch.testing.assert_close(whole, mixture(module, x))
    torch.testing.assert_close(torch.cat([module(x[i:i + 1]) for i in range(4)]), whole)
    _, chosen, _ = module.route(x.reshape(-1, 32))
    assert torch.equal(module.route(x.reshape(-1, 32))[1], chosen)
    assert len(torch.unique(chosen)) > 1  # the test input uses several experts


def test_moe_load_balancing_and_router_z_loss():
    """The Switch load-balancing loss, written out: n_experts * sum_e f_e P_e; 1 exactly with a
    uniform router; the router z-loss is the mean squared log-partition; both weighted into
    ``aux_loss``, which carries a gradient to the router."""
    module = moe_module(moe_z_weight=1e-3)
    x = torch.randn(2, 5, 32, dtype=torch.float64)
    module(x)
    flat = x.reshape(-1, 32)
    logits = flat @ module.router.weight.T
    probs = torch.softmax(logits, -1)
    top = probs.topk(module.top_k, -1).indices
    f = torch.stack([(top == e).any(-1).double().mean() / module.top_k for e in range(module.n_experts)])
    balance = module.n_experts * (f * probs.mean(0)).sum()
    router_z = torch.logsumexp(logits, -1).square().mean()
    torch.testing.assert_close(module.balance, balance)
    torch.testing.assert_close(module.router_z, router_z)
    torch.testing.assert_close(module.aux_loss, 0.01 * balance + 1e-3 * router_z)
    module.aux_loss.backward()
    assert module.router.weight.grad.abs().sum() > 0
    nn.init.zeros_(module.router.weight)  # every expert equally likely: balanced by definition
    module(x)
    assert module.balance.item() == pytest.approx(1.0)
    assert module.router_z.item() == pytest.approx(math.log(module.n_experts) ** 2)


def test_moe_sizing_matches_active_flops_or_total_parameters():
    """``active``: a token passes through as many feed-forward weights as the dense entry's
    (experts of width dense / top_k; the router adds d_model x n_experts); ``total``: all
    experts together hold the dense entry's parameters. The model's FLOP count and ``active``
    parameter count use the active share."""
    from variants.flops import FlopCounter

    dense = build_model(ModelConfig(vocab_size=61, d_model=256, n_heads=4, n_layers=2, ffn="swiglu"))
    active = build_model(ModelConfig(vocab_size=61, d_model=256, n_heads=4, n_layers=2, ffn="moe"))
    total = build_model(ModelConfig(vocab_size=61, d_model=256, n_heads=4, n_layers=2, ffn="moe", n_experts=8,
                                    moe_sizing="total"))
    dense_ffn = n_params(dense.decoder.blocks[0].ffn)
    assert abs(active_params(active.decoder.blocks[0].ffn) - dense_ffn) / dense_ffn < 0.01
    assert abs(n_params(total.decoder.blocks[0].ffn) - dense_ffn) / dense_ffn < 0.01
    assert "active" not in dense.num_params()
    counts = active.num_params()
    assert counts["active"] == round(active_params(active)) and counts["total"] > 1.5 * counts["active"]
    flops_dense, flops_moe = FlopCounter(dense)(1000, 64), FlopCounter(active)(1000, 64)
    assert abs(flops_moe - flops_dense) / flops_dense < 0.01


def test_moe_settings_are_checked_and_named():
    with pytest.raises(ValueError, match="top_k=5 exceeds model.n_experts=4"):
        tiny_config(ffn="moe", top_k=5)
    with pytest.raises(ValueError, match="expert_ffn"):
        tiny_config(ffn="moe", expert_ffn="moe")
    with pytest.raises(ValueError, match="model.n_experts is an option of ffn 'moe'"):
        tiny_config(ffn="swiglu", n_experts=8)
    cfg = tiny_config(ffn="moe", n_experts=8, top_k=1)
    assert cfg.components_name().endswith("-moe-e8-top1") and build_model(cfg).fingerprint()["ffn"] == \
        "moe(n_experts=8, top_k=1)"
