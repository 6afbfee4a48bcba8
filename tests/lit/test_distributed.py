"""Evaluation on several devices counts every example once: the same perplexity and BLEU as
on one (two CPU processes with the gloo backend)."""

import pytest
import lightning as L
import torch

from lit.config import DataConfig, TaskConfig
from lit.specs import task_spec
from lit.tasks import LanguageModelTask, TranslationTask
from variants import ModelConfig

pytestmark = pytest.mark.slow


def _validate(task, dm, devices):
    trainer = L.Trainer(accelerator="cpu", devices=devices, strategy="ddp_spawn" if devices > 1 else "auto",
                        logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, use_distributed_sampler=False)
    return trainer.validate(task, datamodule=dm, verbose=False)[0]


def test_lm_perplexity_same_on_two_processes(tmp_path):
    dm = task_spec("lm").datamodule(DataConfig(vocab_size=300, limit_train=200, limit_eval=45, batch_size=2,
                                               cache_dir=str(tmp_path)), max_seq_len=16, seed=0)
    dm.setup()
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=dm.tokenizer.vocab_size, d_model=32, n_heads=4, n_layers=1, max_seq_len=16,
                      dropout=0.0)
    task = LanguageModelTask(cfg, TaskConfig(), dm.block_size, 0, dm.n_bytes)
    one, two = _validate(task, dm, 1), _validate(task, dm, 2)
    assert two["val/ppl"] == pytest.approx(one["val/ppl"], rel=1e-5)
    assert two["val/bpb"] == pytest.approx(one["val/bpb"], rel=1e-5)


def test_translation_bleu_same_on_two_processes(tmp_path):
    dm = task_spec("translation").datamodule(DataConfig(vocab_size=300, limit_train=200, limit_eval=25,
                                                        max_tokens=300, cache_dir=str(tmp_path)),
                                             max_seq_len=256, seed=0)
    dm.setup()
    torch.manual_seed(0)
    cfg = ModelConfig(kind="seq2seq", vocab_size=dm.tokenizer.vocab_size, d_model=32, n_heads=4, n_layers=1,
                      max_seq_len=256, dropout=0.0, init_std=0.02)
    task = TranslationTask(cfg, TaskConfig(name="translation", max_decode_len=12, lr=3e-3, warmup_steps=5),
                           dm.tokenizer, dm.references)
    L.Trainer(accelerator="cpu", max_steps=40, logger=False, enable_progress_bar=False, enable_model_summary=False,
              enable_checkpointing=False, limit_val_batches=0).fit(task, datamodule=dm)  # some real words
    one, two = _validate(task, dm, 1), _validate(task, dm, 2)
    assert two["val/ppl"] == pytest.approx(one["val/ppl"], rel=1e-5)
    assert two["val/bleu"] == pytest.approx(one["val/bleu"], abs=1e-9)
    # every rank's hypotheses were gathered: the score covers each sentence once
    assert one["val/bleu_sentences"] == two["val/bleu_sentences"] == len(dm.references["val"])
