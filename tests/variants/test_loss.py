"""The fused head + cross-entropy equals the plain one: values and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.variants.helpers import PAD, assert_close, build, tiny_config, tokens
from variants.loss import linear_cross_entropy

N, D, V = 37, 16, 29


def inputs(seed=0, ignored=(3, 4, 20)):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, D, generator=gen, dtype=torch.float64).requires_grad_()
    weight = torch.randn(V, D, generator=gen, dtype=torch.float64).requires_grad_()
    targets = torch.randint(1, V, (N,), generator=gen)
    targets[list(ignored)] = PAD
    return hidden, weight, targets


def reference(hidden, weight, targets, smoothing):
    logits = F.linear(hidden, weight)
    nll = F.cross_entropy(logits, targets, ignore_index=PAD, reduction="sum")
    objective = F.cross_entropy(logits, targets, ignore_index=PAD, reduction="sum", label_smoothing=smoothing)
    return objective, nll


@pytest.mark.parametrize("chunk_rows", [1, 5, N, None], ids=lambda c: f"chunk{c}")
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_equals_cross_entropy_of_the_logits(chunk_rows, smoothing):
    h1, w1, t = inputs()
    h2, w2, _ = inputs()
    objective, nll = linear_cross_entropy(h1, w1, t, PAD, smoothing, chunk_rows=chunk_rows)
    ref_objective, ref_nll = reference(h2, w2, t, smoothing)
    assert_close(nll, ref_nll.float())
    assert_close(objective, ref_objective.float())
    (2.5 * objective).backward()
    (2.5 * ref_objective).backward()
    assert_close(h1.grad, h2.grad)
    assert_close(w1.grad, w2.grad)


@pytest.mark.parametrize("softcap", [None, 2.0], ids=["plain", "softcap"])
def test_fp32_chunks_on_a_cpu_write_into_buffers_kept_between_calls(softcap):
    """On a CPU the fp32 chunks write their logits (and, uncapped, log-probabilities) into two
    buffers kept between calls, where fresh blocks would page-fault on their first touch: a later
    call of other sizes is right, and leaves the earlier call's results as they were."""
    from variants import loss

    calls = []
    for rows, chunk in ((N, 16), (11, 4)):  # a last chunk shorter than the others in both
        h64, w64, t = inputs(seed=rows)
        h, w = h64.detach()[:rows].float().requires_grad_(), w64.detach().float().requires_grad_()
        objective, nll = linear_cross_entropy(h, w, t[:rows], PAD, 0.1, chunk_rows=chunk, softcap=softcap)
        objective.backward()
        ref_h, ref_w = h64.detach()[:rows].requires_grad_(), w64.detach().requires_grad_()
        ref_objective, ref_nll, _ = capped_reference(ref_h, ref_w, t[:rows], 0.1, softcap, 0.0)
        ref_objective.backward()
        calls.append(((objective, nll, h.grad, w.grad), (ref_objective, ref_nll, ref_h.grad, ref_w.grad)))
        assert loss._workspace[0].numel() >= 16 * V and (softcap is not None or loss._workspace[1].numel() >= 16 * V)
    for ours, ref in calls:
        for got, want in zip(ours, ref):
            torch.testing.assert_close(got, want.float(), atol=1e-4, rtol=1e-4)


def test_buffers_made_under_inference_mode_serve_training_after_it(monkeypatch):
    """Validation runs under inference mode, often before the first training step: the buffers it
    makes must still take a training step's writes (an inference tensor would refuse them)."""
    from variants import loss

    monkeypatch.setattr(loss, "_workspace", {})
    h64, w64, t = inputs()
    h, w = h64.detach().float().requires_grad_(), w64.detach().float().requires_grad_()
    with torch.inference_mode():
        first, _ = linear_cross_entropy(h, w, t, PAD)
    assert not loss._workspace[0].is_inference()
    objective, _ = linear_cross_entropy(h, w, t, PAD)
    objective.backward()
    with torch.inference_mode():
        again, _ = linear_cross_entropy(h, w, t, PAD)
    ref_h, ref_w = h64.detach().requires_grad_(), w64.detach().requires_grad_()
    ref_objective, _ = reference(ref_h, ref_w, t, 0.0)
    ref_objective.backward()
    for got in (first, objective, again):
        torch.testing.assert_close(got, ref_objective.float(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(h.grad, ref_h.grad.float(), atol=1e-4, rtol=1e-4)


def capped_reference(hidden, weight, targets, smoothing, softcap, z_loss):
    """Written plainly: capped logits, cross-entropy, and ``z_loss * logsumexp ** 2`` per counted row."""
    logits = F.linear(hidden, weight)
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    nll = F.cross_entropy(logits, targets, ignore_index=PAD, reduction="sum")
    z = (torch.logsumexp(logits, -1).square() * (targets != PAD)).sum()
    objective = F.cross_entropy(logits, targets, ignore_index=PAD, reduction="sum", label_smoothing=smoothing)
    return objective + z_loss * z, nll, z


@pytest.mark.parametrize("fused", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["eager", "fused"])
@pytest.mark.parametrize("chunk_rows", [5, None], ids=lambda c: f"chunk{c}")
@pytest.mark.parametrize("softcap,z_loss,smoothing", [(None, 1e-2, 0.0), (2.0, 0.0, 0.0), (3.0, 0.1, 0.1)],
                         ids=["z-loss", "softcap", "both-smoothed"])
def test_soft_capping_and_z_loss_equal_the_plain_formula(softcap, z_loss, smoothing, chunk_rows, fused):
    """Final-logit soft-capping (Gemma 2) and the z-loss (PaLM, OLMo 2) inside the chunked head and
    loss: values, the z term apart, and gradients equal the formula on the full logits."""
    h1, w1, t = inputs()
    h2, w2, _ = inputs()
    objective, nll, z = linear_cross_entropy(h1, w1, t, PAD, smoothing, chunk_rows=chunk_rows, fused=fused,
                                             softcap=softcap, z_loss=z_loss, with_z=True)
    ref_objective, ref_nll, ref_z = capped_reference(h2, w2, t, smoothing, softcap, z_loss)
    assert_close(nll, ref_nll.float())
    assert_close(objective, ref_objective.float())
    assert_close(z, (ref_z if z_loss else torch.zeros(())).float().detach())
    assert not nll.requires_grad and not z.requires_grad
    objective.backward()
    ref_objective.backward()
    assert_close(h1.grad, h2.grad)
    assert_close(w1.grad, w2.grad)
    with torch.no_grad():  # and without gradients
        again = linear_cross_entropy(h1, w1, t, PAD, smoothing, chunk_rows=chunk_rows, fused=fused, softcap=softcap,
                                     z_loss=z_loss)
    assert_close(again[0], objective.detach())


@pytest.mark.parametrize("mode", ["eager", pytest.param("fused", marks=pytest.mark.slow),
                                  pytest.param("compiled", marks=pytest.mark.slow)])
@pytest.mark.parametrize("chunk_rows", [5, None], ids=lambda c: f"chunk{c}")
def test_an_output_bias_equals_the_plain_formula(mode, chunk_rows):
    """The head's output bias (BERT's prediction head) in the chunked loss, with soft-capping,
    z-loss and smoothing beside it: values and the gradients of hidden states, head and bias equal
    the formula on the full logits (eager chunks, the fused region, and under torch.compile)."""
    h1, w1, t = inputs()
    h2, w2, _ = inputs()
    gen = torch.Generator().manual_seed(5)
    b1 = torch.randn(V, generator=gen, dtype=torch.float64).requires_grad_()
    b2 = b1.detach().clone().requires_grad_()

    def ours(h, w, b):
        return linear_cross_entropy(h, w, t, PAD, 0.1, chunk_rows=chunk_rows, fused=mode == "fused", softcap=3.0,
                                    z_loss=0.05, bias=b)

    objective, nll = (torch.compile(ours) if mode == "compiled" else ours)(h1, w1, b1)
    logits = 3.0 * torch.tanh(F.linear(h2, w2, b2) / 3.0)
    ref_nll = F.cross_entropy(logits, t, ignore_index=PAD, reduction="sum")
    z = (torch.logsumexp(logits, -1).square() * (t != PAD)).sum()
    ref_objective = F.cross_entropy(logits, t, ignore_index=PAD, reduction="sum", label_smoothing=0.1) + 0.05 * z
    assert_close(nll, ref_nll.float().detach())
    assert_close(objective, ref_objective.float())
    objective.backward()
    ref_objective.backward()
    for ours_grad, theirs in ((h1.grad, h2.grad), (w1.grad, w2.grad), (b1.grad, b2.grad)):
        assert_close(ours_grad, theirs)


@pytest.mark.slow
def test_soft_capping_and_z_loss_under_torch_compile():
    h1, w1, t = inputs()
    h2, w2, _ = inputs()
    compiled = torch.compile(lambda h, w: linear_cross_entropy(h, w, t, PAD, softcap=2.0, z_loss=0.05,
                                                               with_z=True))
    objective, nll, z = compiled(h1, w1)
    ref_objective, ref_nll, ref_z = capped_reference(h2, w2, t, 0.0, 2.0, 0.05)
    assert_close(objective, ref_objective.float())
    assert_close(nll, ref_nll.float())
    assert_close(z, ref_z.float().detach())


@pytest.mark.parametrize("bad", [{"softcap": 0.0}, {"softcap": -1.0}, {"z_loss": -0.1}])
def test_soft_capping_and_z_loss_refuse_bad_values(bad):
    h, w, t = inputs()
    with pytest.raises(ValueError, match=next(iter(bad))):
        linear_cross_entropy(h, w, t, PAD, **bad)


def test_no_gradient_work_without_grad():
    h, w, t = inputs()
    with torch.no_grad():
        objective, nll = linear_cross_entropy(h, w, t, PAD)
    assert not objective.requires_grad and not nll.requires_grad
    assert_close(nll, reference(h, w, t, 0.0)[1].float().detach())


def test_every_target_ignored_gives_zero():
    h, w, t = inputs(ignored=range(N))
    objective, nll = linear_cross_entropy(h, w, t, PAD)
    objective.backward()
    assert nll.item() == 0.0 and h.grad.abs().max().item() == 0.0


def test_bad_arguments():
    h, w, t = inputs()
    with pytest.raises(ValueError, match="label_smoothing"):
        linear_cross_entropy(h, w, t, PAD, 1.0)
    with pytest.raises(ValueError, match="targets"):
        linear_cross_entropy(h, w, t[:-1], PAD)


def test_autocast_bf16_close_to_fp32():
    h, w, t = inputs()
    h, w = h.float().detach().requires_grad_(), w.float().detach().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        objective, nll = linear_cross_entropy(h, w, t, PAD, chunk_rows=8)
    objective.backward()
    assert objective.dtype == torch.float32 and w.grad.dtype == torch.float32
    ref = reference(h.detach().double(), w.detach().double(), t, 0.0)[1]
    assert abs(nll.item() - ref.item()) / ref.item() < 2e-2


@pytest.mark.parametrize("kind", ["lm", "seq2seq", "encoder"])
@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("head", [False, True], ids=["plain-head", "head-transform"])
def test_model_loss_matches_logits(kind, tie, head):
    """``model.loss`` is the cross-entropy of ``model(...)``'s logits, gradients included; with
    BERT's prediction head (``head_transform``: a transform and an output bias) too."""
    cfg = tiny_config(kind, tie_embeddings=tie, head_transform=head)
    a, b = build(cfg), build(cfg)
    if head:
        with torch.no_grad():
            a.head_bias.normal_()  # zero at initialisation: a bias left out would go unseen
    b.load_state_dict(a.state_dict())
    src, tgt = tokens(3, 9, 0), tokens(3, 7, 1)
    tgt[0, -2:] = PAD
    args = (src, tgt) if kind == "seq2seq" else (tgt,)
    objective, nll = a.loss(a.hidden(*args), tgt, PAD)
    logits = b(*args)
    assert_close(a.logits(a.hidden(*args)), logits)
    ref = F.cross_entropy(logits.flatten(0, 1), tgt.flatten(), ignore_index=PAD, reduction="sum")
    assert_close(nll, ref.detach())
    objective.backward()
    ref.backward()
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert_close(p.grad, q.grad, msg=name)


@pytest.mark.slow
def test_compiled_loss_matches_chunked():
    """Under torch.compile ``model.loss`` traces the plain formula: same objective and gradients."""
    torch.manual_seed(0)
    h = torch.randn(24, 16, requires_grad=True)
    w = torch.randn(50, 16, requires_grad=True)
    t = torch.randint(0, 50, (24,))
    t[:3] = -100
    for smoothing in (0.0, 0.1):
        eager = linear_cross_entropy(h, w, t, label_smoothing=smoothing, chunk_rows=5)
        compiled = torch.compile(lambda h, w: linear_cross_entropy(h, w, t, label_smoothing=smoothing))(h, w)
        torch.testing.assert_close(compiled[0], eager[0])
        torch.testing.assert_close(compiled[1], eager[1])
        ge = torch.autograd.grad(eager[0], (h, w))
        gc = torch.autograd.grad(compiled[0], (h, w))
        for a, b in zip(ge, gc):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_fused_region_equals_the_eager_chunks(smoothing):
    """The compiled chunk region (the CUDA default) gives the eager chunks' values and
    gradients, with and without gradients, and ignored rows included."""
    results = []
    for fused in (False, True):
        h, w, t = inputs()
        objective, nll = linear_cross_entropy(h, w, t, PAD, smoothing, chunk_rows=5, fused=fused)
        objective.backward()
        with torch.no_grad():
            again = linear_cross_entropy(h, w, t, PAD, smoothing, chunk_rows=5, fused=fused)
        results.append((objective, nll, h.grad, w.grad, *again))
    for a, b in zip(*results):
        assert_close(a, b)
    assert_close(results[1][1], reference(*inputs(), smoothing)[1].float())


@pytest.mark.slow
def test_fused_region_compiles_once_for_every_row_count():
    import torch._dynamo.utils

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(V, D, generator=gen, requires_grad=True)
    for rows, chunk in [(37, 5), (37, 7), (50, 9), (23, 23)]:  # last chunks of 2, 2, 5, 23 rows
        hidden = torch.randn(rows, D, generator=gen, requires_grad=True)
        targets = torch.randint(1, V, (rows,), generator=gen)
        linear_cross_entropy(hidden, weight, targets, PAD, chunk_rows=chunk, fused=True)[0].backward()
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1


def test_fused_by_default_on_cuda_only_and_forced_by_the_environment(monkeypatch):
    from variants.loss import use_fused

    monkeypatch.delenv("ABLATE_FUSED_LOSS", raising=False)
    assert not use_fused(torch.device("cpu"))
    monkeypatch.setenv("ABLATE_FUSED_LOSS", "1")
    assert use_fused(torch.device("cpu"))
    monkeypatch.setenv("ABLATE_FUSED_LOSS", "0")
    assert not use_fused(torch.device("cuda"))
    monkeypatch.setenv("ABLATE_FUSED_LOSS", "yes")
    with pytest.raises(ValueError, match="ABLATE_FUSED_LOSS='yes': expected 0 or 1"):
        use_fused(torch.device("cpu"))


def test_a_fused_region_that_fails_to_compile_falls_back_to_the_eager_chunks(monkeypatch):
    """Chosen by default, a compilation failure warns once and the eager path takes over;
    asked for explicitly, the failure is raised."""
    import variants.loss as loss
    from torch._dynamo.exc import BackendCompilerFailed

    def broken(*args):
        raise BackendCompilerFailed(broken, RuntimeError("no working Triton"), None)

    monkeypatch.delenv("ABLATE_FUSED_LOSS", raising=False)
    monkeypatch.setattr(loss, "_compiled_terms", broken)
    monkeypatch.setattr(loss, "use_fused", lambda device: True)
    monkeypatch.setattr(loss, "_fallen_back", False)
    h, w, t = inputs()
    with pytest.warns(RuntimeWarning, match="could not be compiled .*no working Triton.*ABLATE_FUSED_LOSS=0"):
        objective, nll = linear_cross_entropy(h, w, t, PAD)
    assert_close(nll, reference(*inputs(), 0.0)[1].float())
    assert loss._fallen_back
    with pytest.raises(BackendCompilerFailed):
        linear_cross_entropy(h, w, t, PAD, fused=True)
