"""Norms: RMSNorm against its formula, forward and backward, on the CPU path that has its own
backward pass (``variants.norms._RMSNormCPU``)."""

from __future__ import annotations

import torch

from tests.variants.helpers import tiny_config
from variants.norms import RMSNorm, _RMSNormCPU


def rms_formula(x, weight, eps):
    """x / sqrt(mean(x ** 2) + eps) * w, written out."""
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def test_rmsnorm_is_its_formula_with_its_gradients():
    torch.manual_seed(0)
    norm = RMSNorm(tiny_config(norm="rmsnorm"))
    torch.nn.init.normal_(norm.weight, 1.0, 0.3)
    x = torch.randn(2, 7, norm.weight.numel(), requires_grad=True)
    grad = torch.randn_like(x)
    out = norm(x)
    got = torch.autograd.grad(out, (x, norm.weight), grad)
    expected_out = rms_formula(x, norm.weight, norm.eps)
    expected = torch.autograd.grad(expected_out, (x, norm.weight), grad)
    torch.testing.assert_close(out, expected_out)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert out.grad_fn.name() == "_RMSNormCPUBackward"  # the CPU path was the one tested


def test_rmsnorm_cpu_backward_passes_the_numerical_check():
    x = torch.randn(3, 4, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1), requires_grad=True)
    weight = torch.randn(16, dtype=torch.float64, generator=torch.Generator().manual_seed(2), requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, w: _RMSNormCPU.apply(a, w, 1e-6), (x, weight))


def test_rmsnorm_without_gradients_uses_the_plain_kernel():
    norm = RMSNorm(tiny_config(norm="rmsnorm"))
    x = torch.randn(2, 3, norm.weight.numel())
    with torch.no_grad():
        torch.testing.assert_close(norm(x), rms_formula(x, norm.weight, norm.eps))
