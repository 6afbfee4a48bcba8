"""Metric definitions: perplexity independent of batching, BLEU equal to the sacrebleu command,
label smoothing confined to the training objective."""

import math
import subprocess
import sys

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from lit.config import DataConfig, TaskConfig
from lit.specs import task_spec
from tools.metrics import corpus_bleu, corpus_chrf
from lit.tasks import LanguageModelTask, lr_multiplier
from variants import ModelConfig


@pytest.fixture(scope="module")
def lm_data():
    dm = task_spec("lm").datamodule(DataConfig(vocab_size=400, limit_train=400, limit_eval=60, batch_size=4),
                                    max_seq_len=32, seed=0)
    dm.setup()
    return dm


def _task(dm, model=None, **task):
    torch.manual_seed(0)
    cfg = ModelConfig(**{**dict(vocab_size=dm.tokenizer.vocab_size, d_model=32, n_heads=4, n_layers=1,
                                max_seq_len=32, dropout=0.0), **(model or {})})
    return LanguageModelTask(cfg, TaskConfig(**task), dm.block_size, dm.tokenizer.pad_id, dm.n_bytes)


def _validate(task, dm):
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, accelerator="cpu")
    return trainer.validate(task, datamodule=dm, verbose=False)[0]


def test_perplexity_is_independent_of_batch_size(lm_data):
    task = _task(lm_data)
    results = []
    for batch_size in (1, 3, 16):
        lm_data.cfg.batch_size = batch_size
        results.append(_validate(task, lm_data))
    lm_data.cfg.batch_size = 4
    for r in results[1:]:
        assert r["val/loss"] == pytest.approx(results[0]["val/loss"], rel=1e-5)
        assert r["val/ppl"] == pytest.approx(results[0]["val/ppl"], rel=1e-5)
    # and it is exp(sum NLL / tokens) computed directly
    nll, tokens = 0.0, 0
    with torch.no_grad():
        for block in lm_data.val_dataloader():
            logits = task.model(block["inputs"])
            nll += F.cross_entropy(logits.flatten(0, 1), block["targets"].flatten(), ignore_index=0,
                                   reduction="sum").item()
            tokens += int((block["targets"] != 0).sum())
    assert results[0]["val/ppl"] == pytest.approx(math.exp(nll / tokens), rel=1e-5)
    assert results[0]["val/bpb"] == pytest.approx(nll / math.log(2) / lm_data.n_bytes["val"], rel=1e-5)


def test_label_smoothing_stays_out_of_reported_loss(lm_data):
    plain, smoothed = _task(lm_data), _task(lm_data, label_smoothing=0.3)
    assert _validate(plain, lm_data)["val/loss"] == pytest.approx(_validate(smoothed, lm_data)["val/loss"])
    batch = next(iter(lm_data.train_dataloader()))
    smoothed.train()
    objective, nll, tokens, _ = smoothed.model_step(batch)
    logits = smoothed.model(batch["inputs"]).flatten(0, 1)
    expected_nll = F.cross_entropy(logits, batch["targets"].flatten(), ignore_index=0, reduction="sum")
    assert nll.item() == pytest.approx(expected_nll.item(), rel=1e-5)
    smoothed_ce = F.cross_entropy(logits, batch["targets"].flatten(), ignore_index=0, label_smoothing=0.3)
    assert objective.item() == pytest.approx(smoothed_ce.item(), rel=1e-5)
    assert abs(objective.item() - nll.item() / tokens.item()) > 1e-3  # the two really differ


def test_z_loss_and_moe_losses_join_the_objective_only(lm_data):
    """The z-loss and a mixture of experts' load-balancing and router z-losses are added to the
    training objective, each written out here, and never to the reported loss; evaluation adds
    none of the z-loss."""
    plain = _task(lm_data, model={"ffn": "moe", "n_layers": 2})
    task = _task(lm_data, model={"ffn": "moe", "n_layers": 2, "moe_z_weight": 1e-3}, z_loss=1e-2)
    assert _validate(plain, lm_data)["val/loss"] == pytest.approx(_validate(task, lm_data)["val/loss"])
    batch = next(iter(lm_data.train_dataloader()))
    task.train()
    objective, nll, tokens, terms = task.model_step(batch)
    assert set(terms) == {"z_loss", "aux_loss", "moe_balance", "router_z"}
    logits = task.model(batch["inputs"]).flatten(0, 1)
    targets = batch["targets"].flatten()
    counted = targets != 0
    ce = F.cross_entropy(logits, targets, ignore_index=0, reduction="sum")
    z = (torch.logsumexp(logits, -1).square() * counted).sum()
    moes = [block.ffn for block in task.model.decoder.blocks]
    aux = sum(0.01 * m.balance + 1e-3 * m.router_z for m in moes)
    assert nll.item() == pytest.approx(ce.item(), rel=1e-5)
    assert terms["z_loss"].item() == pytest.approx(1e-2 * z.item() / tokens.item(), rel=1e-5)
    assert terms["aux_loss"].item() == pytest.approx(aux.item(), rel=1e-5)
    assert objective.item() == pytest.approx((ce + 1e-2 * z).item() / tokens.item() + aux.item(), rel=1e-5)
    task.eval()
    assert set(task.model_step(batch)[3]) == {"aux_loss", "moe_balance", "router_z"}


def test_bleu_equals_sacrebleu_command(tmp_path):
    refs = ["The cat sat on the mat.", "He went home, and slept!", "It's a test of BLEU scoring."]
    hyps = ["The cat sat on a mat.", "He went home and slept.", "It is a test of BLEU scoring."]
    (tmp_path / "refs.txt").write_text("\n".join(refs) + "\n")
    (tmp_path / "hyps.txt").write_text("\n".join(hyps) + "\n")
    cli = subprocess.run([sys.executable, "-m", "sacrebleu", str(tmp_path / "refs.txt"), "-i",
                          str(tmp_path / "hyps.txt"), "-b", "-w", "6"], capture_output=True, text=True, check=True)
    score, signature = corpus_bleu(hyps, refs)
    assert score == pytest.approx(float(cli.stdout.strip()), abs=1e-6)
    assert "tok:13a" in signature and "nrefs:1" in signature
    assert corpus_bleu(refs, refs)[0] == pytest.approx(100.0)


def test_chrf_equals_sacrebleu_command(tmp_path):
    refs = ["The cat sat on the mat.", "He went home, and slept!"]
    hyps = ["The cat sat on a mat.", "He went home and slept."]
    (tmp_path / "refs.txt").write_text("\n".join(refs) + "\n")
    (tmp_path / "hyps.txt").write_text("\n".join(hyps) + "\n")
    cli = subprocess.run([sys.executable, "-m", "sacrebleu", str(tmp_path / "refs.txt"), "-i",
                          str(tmp_path / "hyps.txt"), "-m", "chrf", "-b", "-w", "6"],
                         capture_output=True, text=True, check=True)
    score, signature = corpus_chrf(hyps, refs)
    assert score == pytest.approx(float(cli.stdout.strip()), abs=1e-6) and "nc:6|nw:0" in signature


@pytest.mark.parametrize("schedule", ["inverse_sqrt", "cosine", "constant"])
def test_warmup_then_schedule(schedule):
    f = lr_multiplier(TaskConfig(schedule=schedule, warmup_steps=10, min_lr_ratio=0.1), total_steps=100)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    if schedule == "inverse_sqrt":
        assert f(39) == pytest.approx(0.5)
    elif schedule == "cosine":
        assert f(99) == pytest.approx(0.1) and 0.1 < f(50) < 1.0
    else:
        assert f(99) == 1.0


def test_weight_decay_only_on_matrices(lm_data):
    task = _task(lm_data, weight_decay=0.1)
    opt = task.configure_optimizers()["optimizer"]
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 0.1 and all(p.dim() >= 2 for p in decayed["params"])
    assert plain["weight_decay"] == 0.0 and all(p.dim() < 2 for p in plain["params"])


def test_extrapolation_protocols(lm_data):
    from lit.extrapolation import _windows, extrapolation, stream_nll

    # every target scored exactly once, each window at most `length` long
    for n, length, stride in [(100, 32, 32), (100, 32, 8), (7, 32, 8), (64, 16, 16)]:
        scored = []
        for start, end, first in _windows(n, length, stride):
            assert end - start <= length and start <= first < end
            scored += range(first, end)
        assert scored == list(range(n))
    task = _task(lm_data)
    stream = lm_data.streams["val"]
    # at factor 1 the non-overlapping protocol is the validation perplexity
    found = extrapolation(task.model, stream, 32, [1, 2], pad_id=0)
    assert found["ppl_x1"] == pytest.approx(_validate(task, lm_data)["val/ppl"], rel=1e-4)
    assert found["ppl_x2"] is None and found["ppl_x2_sliding"] is None  # learned table of 32
    # a sliding window scores the same tokens as the non-overlapping blocks
    nll_a, n_a = stream_nll(task.model, stream, 32, 32, 0)
    nll_b, n_b = stream_nll(task.model, stream, 32, 8, 0)
    assert n_a == n_b == len(stream) - 1 and nll_a != nll_b
