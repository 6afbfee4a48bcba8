"""Gradient health: the global norm before clipping is logged, clipping is Lightning's own (the
same weights to the bit), and the clip fraction counts the steps clipping acted on."""

import lightning as L
import pytest
import torch

from lit.config import DataConfig, TaskConfig
from lit.specs import task_spec
from lit.tasks import LanguageModelTask


class _LightningClipping(LanguageModelTask):
    """Lightning's default clipping path, to compare against."""

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        L.LightningModule.configure_gradient_clipping(self, optimizer, gradient_clip_val, gradient_clip_algorithm)


class _Norms(L.Callback):
    """The global gradient norm as torch computes it, read before anything clips."""

    def __init__(self):
        self.norms = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        self.norms.append(float(torch.nn.utils.get_total_norm(grads)))


@pytest.fixture(scope="module")
def datamodule(tmp_path_factory):
    dm = task_spec("lm").datamodule(DataConfig(vocab_size=300, limit_train=200, limit_eval=16, batch_size=4,
                                               cache_dir=str(tmp_path_factory.mktemp("cache"))), max_seq_len=16, seed=0)
    dm.setup()
    return dm


def _fit(cls, dm, clip, steps=6):
    from variants import ModelConfig

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=dm.tokenizer.vocab_size, d_model=32, n_heads=4, n_layers=1, max_seq_len=16,
                      dropout=0.0)
    task = cls(cfg, TaskConfig(lr=1e-2, warmup_steps=0), dm.block_size, 0, dm.n_bytes)
    norms = _Norms()
    trainer = L.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, limit_val_batches=0,
                        gradient_clip_val=clip, callbacks=[norms], log_every_n_steps=1)
    trainer.fit(task, datamodule=dm)
    return task, trainer, norms.norms


@pytest.mark.parametrize("clip", [None, 0.05, 1e6], ids=["no-clipping", "always-clips", "never-clips"])
def test_clipping_is_lightnings_and_the_norm_is_logged_before_it(datamodule, clip):
    ours, trainer, norms = _fit(LanguageModelTask, datamodule, clip)
    theirs, _, their_norms = _fit(_LightningClipping, datamodule, clip)
    assert norms == their_norms  # the same training
    for a, b in zip(ours.state_dict().values(), theirs.state_dict().values()):
        assert torch.equal(a, b)
    assert float(trainer.callback_metrics["train/grad_norm"]) == pytest.approx(norms[-1], rel=1e-6)
    assert [float(n) for n in ours.grad_norms] == pytest.approx(norms[-4:], rel=1e-6)
    expected = None if clip is None else sum(n + 1e-6 > clip for n in norms) / len(norms)
    assert ours.clip_fraction() == expected
    if clip is not None:
        assert float(trainer.callback_metrics["train/clip_fraction"]) == expected
        assert expected in (0.0, 1.0)  # the two settings were chosen to clip every step or none
    else:
        assert "train/clip_fraction" not in trainer.callback_metrics


def test_the_clip_count_survives_a_checkpoint(datamodule):
    task, _, norms = _fit(LanguageModelTask, datamodule, 0.05, steps=3)
    saved = {}
    task.on_save_checkpoint(saved)
    assert saved["grad_health"] == {"clip_steps": 3, "clipped": 3}
    fresh, *_ = _fit(LanguageModelTask, datamodule, None, steps=1)
    fresh.on_load_checkpoint(saved)
    assert fresh.clip_fraction() == 1.0 and fresh.clip_steps == 3


@pytest.mark.parametrize("check_every", [1, 7])
def test_a_diverged_run_names_its_last_gradient_norms(datamodule, check_every):
    """The guard reads the losses every step (CPU) or every few steps in one transfer (GPU):
    either way it names the same first non-finite step and the norms up to it."""
    from lit.callbacks import DivergenceGuard
    from variants import ModelConfig

    found = {}
    for every in (1, check_every):
        torch.manual_seed(0)
        cfg = ModelConfig(vocab_size=datamodule.tokenizer.vocab_size, d_model=32, n_heads=4, n_layers=1,
                          max_seq_len=16, dropout=0.0)
        task = LanguageModelTask(cfg, TaskConfig(lr=1e38, warmup_steps=0), datamodule.block_size, 0,
                                 datamodule.n_bytes)
        guard = DivergenceGuard(check_every_n_steps=every)
        trainer = L.Trainer(accelerator="cpu", max_steps=20, logger=False, enable_progress_bar=False,
                            enable_model_summary=False, enable_checkpointing=False, limit_val_batches=0,
                            gradient_clip_val=1.0, callbacks=[guard])
        trainer.fit(task, datamodule=datamodule)
        assert guard.diverged_at is not None and guard.diverged_at < 20
        assert guard.diverged_at <= trainer.global_step < guard.diverged_at + every  # stopped within a check
        assert 1 <= len(guard.grad_norms) <= 4
        assert "last gradient norms before clipping " in guard.message
        assert guard.message.endswith(", ".join(f"{n:.4g}" for n in guard.grad_norms))
        found[every] = guard.message
    assert found[check_every] == found[1]


@pytest.fixture(scope="module")
def translation(tmp_path_factory):
    from lit.tasks import TranslationTask
    from variants import ModelConfig

    dm = task_spec("translation").datamodule(DataConfig(vocab_size=300, limit_train=200, limit_eval=40,
                                                        max_tokens=300, cache_dir=str(tmp_path_factory.mktemp("c"))),
                                             max_seq_len=256, seed=0)
    dm.setup()
    torch.manual_seed(0)
    cfg = ModelConfig(kind="seq2seq", vocab_size=dm.tokenizer.vocab_size, d_model=32, n_heads=4, n_layers=1,
                      max_seq_len=256, dropout=0.0)
    task = TranslationTask(cfg, TaskConfig(name="translation", max_decode_len=12, lr=3e-3, warmup_steps=5),
                           dm.tokenizer, dm.references)
    L.Trainer(accelerator="cpu", max_steps=30, logger=False, enable_progress_bar=False, enable_model_summary=False,
              enable_checkpointing=False, limit_val_batches=0).fit(task, datamodule=dm)
    return task, dm


def test_a_model_whose_cross_attention_is_zeroed_scores_the_same_on_shuffled_sources(translation):
    """The source check: decoded with the true sources and with sources shuffled among the
    examples; a decoder that cannot see its source writes the same outputs either way, and the
    report calls such a run collapsed."""
    from experiments.report.adequacy import collapsed
    from experiments.report.collect import Record

    task, dm = translation
    reads = task.source_check(dm.datasets["val"], dm.references["val"], count=40)
    assert set(reads) == {"test/src_check_bleu", "test/src_shuffled_bleu"}
    assert task.source_check(dm.datasets["val"], dm.references["val"], count=40) == reads  # fixed shuffle
    saved = {k: v.clone() for k, v in task.state_dict().items()}
    with torch.no_grad():
        for block in task.model.decoder.blocks:
            block.cross_attn.out.weight.zero_()
            if block.cross_attn.out.bias is not None:
                block.cross_attn.out.bias.zero_()
    blind = task.source_check(dm.datasets["val"], dm.references["val"], count=40)
    task.load_state_dict(saved)
    assert blind["test/src_shuffled_bleu"] == blind["test/src_check_bleu"]
    assert collapsed(Record("r", "v", 0, "completed", metrics=dict(blind))) is not None
    assert task.training  # left as it was found

