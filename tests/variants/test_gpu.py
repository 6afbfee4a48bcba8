"""The CUDA paths: same function as on CPU, finite under bf16 autocast, cache parity on device."""

import pytest
import torch

from variants import REGISTRIES, ModelConfig, build_model

pytestmark = pytest.mark.gpu


def _pair(kind, position):
    torch.manual_seed(0)
    cfg = ModelConfig(kind=kind, vocab_size=97, d_model=64, n_heads=4, n_layers=2, max_seq_len=64,
                      dropout=0.0, position=position, norm="rmsnorm", ffn="swiglu")
    cpu = build_model(cfg).eval()
    gpu = build_model(cfg).eval().cuda()
    gpu.load_state_dict(cpu.state_dict())
    return cpu, gpu


@pytest.mark.parametrize("kind", ["lm", "seq2seq"])
@pytest.mark.parametrize("position", REGISTRIES["position"].names())
def test_cuda_matches_cpu_and_bf16_is_finite(kind, position):
    cpu, gpu = _pair(kind, position)
    tokens = torch.randint(1, 97, (3, 40))
    tokens[1, :5] = 0  # padding
    args = (tokens,) if kind == "lm" else (tokens, tokens[:, :30].clamp(min=1))
    torch.backends.cuda.matmul.allow_tf32 = False
    with torch.no_grad():
        expected = cpu(*args)
        actual = gpu(*(a.cuda() for a in args)).cpu()
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)
    gpu.train()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = gpu(*(a.cuda() for a in args))
    logits.float().logsumexp(-1).mean().backward()
    assert torch.isfinite(logits.float()).all()
    assert all(torch.isfinite(p.grad).all() for p in gpu.parameters() if p.grad is not None)


@pytest.mark.parametrize("position", REGISTRIES["position"].names())
def test_cuda_cached_decoding_matches_full(position):
    _, gpu = _pair("lm", position)
    tokens = torch.randint(1, 97, (2, 24), device="cuda")
    with torch.no_grad():
        full = gpu(tokens)
        cache = gpu.new_cache(2, 24)
        steps = [gpu(tokens[:, :8], cache)] + [gpu(tokens[:, i:i + 1], cache) for i in range(8, 24)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", ["lm", "seq2seq"])
def test_alibi_in_kernel_matches_biased_sdpa(kind, monkeypatch):
    """On a GPU, ALiBi without padding or cache adds its bias inside a FlexAttention kernel:
    the same outputs and gradients as SDPA with the bias tensor."""
    import variants.attention as attention
    import variants.models as models

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    cfg = ModelConfig(kind=kind, vocab_size=97, d_model=64, n_heads=4, n_layers=2, max_seq_len=256,
                      dropout=0.0, position="alibi")  # head_dim 16: the smallest the kernel takes
    model = build_model(cfg).cuda()
    tokens = torch.randint(1, 97, (2, 200), device="cuda")
    args = (tokens,) if kind == "lm" else (tokens, tokens[:, :150])
    calls = []
    kernel = attention.flex_attention_with
    monkeypatch.setattr(attention, "flex_attention_with", lambda *a: calls.append(1) or kernel(*a))

    def run():
        model.zero_grad(set_to_none=True)
        out = model(*args)
        out.float().square().mean().backward()
        return out.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    fused, fused_grads = run()
    assert calls, "the in-kernel path was not taken"
    monkeypatch.setattr(models, "flex_available", lambda device, head_dim: False)
    calls.clear()
    plain, plain_grads = run()
    assert not calls
    torch.testing.assert_close(fused, plain, atol=2e-4, rtol=2e-4)
    for a, b in zip(fused_grads, plain_grads):
        torch.testing.assert_close(a, b, atol=2e-4, rtol=2e-3)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cuda_fused_loss_matches_the_eager_chunks(smoothing, monkeypatch):
    """The CUDA default, each chunk's softmax, loss and gradient in one compiled region, under
    bf16 autocast: the eager chunks' values and gradients to bf16 precision."""
    from torch.utils._triton import has_triton

    from variants.loss import linear_cross_entropy, use_fused

    monkeypatch.delenv("ABLATE_FUSED_LOSS", raising=False)
    assert use_fused(torch.device("cuda")) == has_triton()
    torch.manual_seed(0)
    hidden = torch.randn(1000, 64, device="cuda")
    weight = 0.1 * torch.randn(5000, 64, device="cuda")
    targets = torch.randint(1, 5000, (1000,), device="cuda")
    targets[::7] = -100
    results = []
    for fused in (False, True):
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            objective, nll = linear_cross_entropy(h, w, targets, label_smoothing=smoothing, chunk_rows=300,
                                                  fused=fused)
        objective.backward()
        results.append((objective, nll, h.grad, w.grad))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=2e-2, rtol=2e-2)
