"""Tasks as registered specs: everything the rest of the code needs to know about a task, in
one class per task (``task.name`` is its registry name). Nothing outside a spec switches on the
task's name; a new task is one decorated class here.

A spec names the model kind its task trains, builds its data module and LightningModule, and
says which metrics summarise a run (``ablate status``), which a report tabulates, and which it
tests against the baseline; what a tested run leaves in its directory (``after_test``), the W&B
tables it logs (``tables``), the notes its data prints (``notes``) and the signature of its
score (``signature``). Data modules and LightningModules are imported when built, so reading a
spec (config validation, reports) never imports Lightning.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, ClassVar, Optional

from variants.registry import Registry

TASKS: Registry = Registry("task")


class TaskSpec:
    model_kind: ClassVar[str]  # the ``model.kind`` this task trains
    headline: ClassVar[tuple[str, str]]  # (validation, test) metric that summarises a run
    report_metrics: ClassVar[tuple[str, ...]]  # per-run metrics of a report, in its table
    compared: ClassVar[tuple[str, ...]]  # metrics a report tests against the baseline
    printed: ClassVar[tuple[str, ...]]  # the metrics ``ablate train`` prints when a run ends
    best: ClassVar[dict[str, str]]  # validation metrics W&B summarises by their best ("min"|"max") and last
    translates: ClassVar[bool] = False  # decodes test hypotheses (BLEU, samples, test.hyp)
    blocks: ClassVar[bool] = True  # batches of data.batch_size blocks (else: a data.max_tokens token budget)
    command: ClassVar[str]  # the ``ablate`` command that uses a trained run of this task
    extrapolates: ClassVar[bool] = False  # test perplexity beyond the training length

    @staticmethod
    def datamodule(data, max_seq_len: int, seed: int):
        raise NotImplementedError

    @staticmethod
    def module(model, task, data):
        """The LightningModule for a model config, task config and a set-up data module."""
        raise NotImplementedError

    @staticmethod
    def notes(data) -> list[str]:
        """Lines ``ablate train`` prints once the data is set up (what the data left out)."""
        return []

    @staticmethod
    def after_test(task, data, run_dir: Path) -> dict[str, float]:
        """Once the run is tested (the lead process only): write what the task leaves in the run
        directory beside its metrics, and return metrics to add to them."""
        return {}

    @staticmethod
    def tables(task, data, rows: int) -> dict[str, Callable[[], tuple[list[str], list[list]]]]:
        """The W&B tables of a tested run: key -> a function giving (columns, rows), at most
        ``rows`` rows (each is built and logged on its own: one that fails costs only itself)."""
        return {}

    @staticmethod
    def signature(task) -> Optional[str]:
        """The signature of the test score, when it has one (sacreBLEU's), for ``status.json``."""
        return None


@TASKS.register("lm")
class LanguageModelling(TaskSpec):
    """Next-token prediction on contiguous blocks of one token stream per split."""

    model_kind = "lm"
    headline = ("val/ppl", "test/ppl")
    report_metrics = ("val/ppl", "test/ppl", "test/bpb")
    compared = ("test/ppl", "test/bpb")
    printed = ("val/loss", "val/ppl", "val/bpb", "test/ppl", "test/bpb")
    best = {"val/loss": "min", "val/ppl": "min"}
    command = "generate"
    extrapolates = True

    @staticmethod
    def datamodule(data, max_seq_len, seed):
        from lit.data.modules import LMDataModule

        return LMDataModule(data, max_seq_len, seed)

    @staticmethod
    def module(model, task, data):
        from lit.tasks import LanguageModelTask

        return LanguageModelTask(model, task, data.block_size, data.tokenizer.pad_id, data.n_bytes, data.streams)

    @staticmethod
    def tables(task, data, rows):
        from lit.outputs import continuation_rows

        return {"test/continuations": lambda: continuation_rows(task.model, data.tokenizer, data.streams["test"],
                                                                min(rows, 4))}


@TASKS.register("translation")
class Translation(TaskSpec):
    """Sequence to sequence: teacher-forced training, BLEU from beam search at test."""

    model_kind = "seq2seq"
    headline = ("val/bleu", "test/bleu")
    report_metrics = ("val/ppl", "test/ppl", "test/bleu", "test/chrf")
    compared = ("test/bleu", "test/ppl")
    blocks = False
    printed = ("val/loss", "val/ppl", "val/bleu", "test/ppl", "test/bleu")
    best = {"val/loss": "min", "val/ppl": "min", "val/bleu": "max"}
    command = "translate"
    translates = True

    @staticmethod
    def datamodule(data, max_seq_len, seed):
        from lit.data.modules import TranslationDataModule

        return TranslationDataModule(data, max_seq_len, seed)

    @staticmethod
    def module(model, task, data):
        from lit.tasks import TranslationTask

        return TranslationTask(model, task, data.tokenizer, data.references)

    @staticmethod
    def notes(data):
        dropped = data.dropped_train
        return [f"note: {dropped} training pairs longer than model.max_seq_len={data.max_seq_len} were left out"
                ] if dropped else []

    @staticmethod
    def after_test(task, data, run_dir):
        """``test.src``, ``test.ref``, ``test.hyp`` (what BLEU scored), and whether the model reads
        its source (the shuffled-source check)."""
        from lit.outputs import source_check, write_translations

        if "test" not in task.last_hypotheses:
            return {}
        write_translations(run_dir, data.sources["test"], data.references["test"], task.last_hypotheses["test"])
        return source_check(task, data)

    @staticmethod
    def tables(task, data, rows):
        from lit.outputs import translation_rows

        if "test" not in task.last_hypotheses:
            return {}
        return {"test/translations": lambda: translation_rows(data.sources["test"], data.references["test"],
                                                              task.last_hypotheses["test"], rows)}

    @staticmethod
    def signature(task):
        return task.bleu_signature


@TASKS.register("mlm")
class MaskedLanguageModelling(TaskSpec):
    """BERT's masked language modelling on blocks of one token stream per split: 15% of the word
    pieces chosen, 80% of those shown as ``<mask>``, 10% as a random word piece, 10% unchanged;
    metrics over the chosen positions."""

    model_kind = "encoder"
    headline = ("val/ppl", "test/ppl")
    report_metrics = ("val/ppl", "test/ppl", "test/acc", "test/bpb")
    compared = ("test/ppl", "test/acc")
    printed = ("val/loss", "val/ppl", "val/acc", "test/ppl", "test/acc", "test/bpb")
    best = {"val/loss": "min", "val/ppl": "min", "val/acc": "max"}
    command = "fill-mask"

    @staticmethod
    def datamodule(data, max_seq_len, seed):
        from lit.data.modules import MaskedLMDataModule

        return MaskedLMDataModule(data, max_seq_len, seed)

    @staticmethod
    def module(model, task, data):
        from lit.tasks import MaskedLanguageModelTask

        return MaskedLanguageModelTask(model, task, data.tokenizer, data.token_bytes, data.seed)

    @staticmethod
    def tables(task, data, rows):
        from lit.outputs import fill_rows

        return {"test/fills": lambda: fill_rows(task.model, data.tokenizer, data.datasets["test"], min(rows, 20))}


def best_of() -> dict[str, str]:
    """Every task's best-of metrics (metric -> ``min``|``max``): what W&B summarises by its best."""
    return {key: how for name in TASKS.names() for key, how in TASKS.get(name).best.items()}


def task_spec(name: str) -> type[TaskSpec]:
    """The spec of ``task.name`` (``ValueError`` listing the choices when unknown)."""
    return TASKS.get(name)
