"""Tasks as registered specs: everything the rest of the code needs to know about a task, in
one class per task (``task.name`` is its registry name). Nothing outside a spec switches on the
task's name; a new task is one decorated class here.

A spec names the model kind its task trains, builds its data module and LightningModule, and
says which metrics summarise a run (``ablate status``), which a report tabulates, and which it
tests against the baseline. Data modules and LightningModules are imported when built, so
reading a spec (config validation, reports) never imports Lightning.
"""

from __future__ import annotations

from typing import ClassVar

from variants.registry import Registry

TASKS: Registry = Registry("task")


class TaskSpec:
    model_kind: ClassVar[str]  # the ``model.kind`` this task trains
    headline: ClassVar[tuple[str, str]]  # (validation, test) metric that summarises a run
    report_metrics: ClassVar[tuple[str, ...]]  # per-run metrics of a report, in its table
    compared: ClassVar[tuple[str, ...]]  # metrics a report tests against the baseline
    translates: ClassVar[bool] = False  # decodes test hypotheses (BLEU, samples, test.hyp)
    extrapolates: ClassVar[bool] = False  # test perplexity beyond the training length

    @staticmethod
    def datamodule(data, max_seq_len: int, seed: int):
        raise NotImplementedError

    @staticmethod
    def module(model, task, data):
        """The LightningModule for a model config, task config and a set-up data module."""
        raise NotImplementedError


@TASKS.register("lm")
class LanguageModelling(TaskSpec):
    """Next-token prediction on contiguous blocks of one token stream per split."""

    model_kind = "lm"
    headline = ("val/ppl", "test/ppl")
    report_metrics = ("val/ppl", "test/ppl", "test/bpb")
    compared = ("test/ppl", "test/bpb")
    extrapolates = True

    @staticmethod
    def datamodule(data, max_seq_len, seed):
        from lit.data.modules import LMDataModule

        return LMDataModule(data, max_seq_len, seed)

    @staticmethod
    def module(model, task, data):
        from lit.tasks import LanguageModelTask

        return LanguageModelTask(model, task, data.block_size, data.tokenizer.pad_id, data.n_bytes, data.streams)


@TASKS.register("translation")
class Translation(TaskSpec):
    """Sequence to sequence: teacher-forced training, BLEU from beam search at test."""

    model_kind = "seq2seq"
    headline = ("val/bleu", "test/bleu")
    report_metrics = ("val/ppl", "test/ppl", "test/bleu", "test/chrf")
    compared = ("test/bleu", "test/ppl")
    translates = True

    @staticmethod
    def datamodule(data, max_seq_len, seed):
        from lit.data.modules import TranslationDataModule

        return TranslationDataModule(data, max_seq_len, seed)

    @staticmethod
    def module(model, task, data):
        from lit.tasks import TranslationTask

        return TranslationTask(model, task, data.tokenizer, data.references)


def task_spec(name: str) -> type[TaskSpec]:
    """The spec of ``task.name`` (``ValueError`` listing the choices when unknown)."""
    return TASKS.get(name)
