"""``lit.outputs``: the files a tested run leaves and the rows of its W&B tables."""

from types import SimpleNamespace

import pytest
import torch

from lit.data.modules import MaskedBlocks
from lit.outputs import continuation_rows, fill_rows, source_check, translation_rows, write_translations
from lit.specs import TASKS
from tests.variants.helpers import tiny_config
from variants import build_model


def test_translations_are_written_one_example_per_line(tmp_path):
    write_translations(tmp_path, ["ein Satz", "zwei"], ["one sentence", "two"], ["a line\nbreak", ""])
    assert (tmp_path / "test.hyp").read_text() == "a line break\n\n"
    assert (tmp_path / "test.src").read_text() == "ein Satz\nzwei\n"
    with pytest.raises(ValueError, match="1 hypotheses"):
        write_translations(tmp_path, ["a", "b"], ["a", "b"], ["a"])


def test_a_failing_source_check_leaves_the_run_as_it_is(capsys):
    """The shuffled-source check runs after the test pass: its failure is noted in the metrics and
    printed, never turned into a failed run."""
    class Task:
        def source_check(self, dataset, references):
            raise RuntimeError("out of memory")

    data = SimpleNamespace(datasets={"val": []}, references={"val": []})
    assert source_check(Task(), data) == {"test/src_check_failed": 1.0}
    assert "the shuffled-source check failed (RuntimeError: out of memory)" in capsys.readouterr().out


def test_translation_rows_score_each_sentence():
    columns, rows = translation_rows(["a", "b", "c"], ["the cat sat", "x y"], ["the cat sat", "z"], 5)
    assert columns == ["source", "reference", "hypothesis", "sentence_bleu"]
    assert [r[:3] for r in rows] == [["a", "the cat sat", "the cat sat"], ["b", "x y", "z"]]
    assert rows[0][3] == 100.0 and rows[1][3] < 100.0


class Tokens:
    """A word-per-id tokenizer over a tiny vocabulary (the interface the tables read)."""

    pad_id, eos_id, mask_id, n_specials = 0, 2, 3, 4

    def __init__(self) -> None:
        self.tokenizer = SimpleNamespace(decode=self.decode, id_to_token=lambda i: f"w{i}")

    def decode(self, ids):
        return " ".join(f"w{i}" for i in ids)


def test_continuation_rows_continue_the_test_examples_greedily():
    model = build_model(tiny_config("lm", dropout=0.0)).train()
    stream = torch.tensor([2] + list(range(10, 22)) + [2] + list(range(30, 40)) + [2])
    columns, rows = continuation_rows(model, Tokens(), stream, rows=4, prompt_tokens=8, new_tokens=3)
    assert columns == ["prompt", "continuation", "reference"] and len(rows) == 2
    assert rows[0][0] == " ".join(f"w{i}" for i in range(10, 18)) and rows[0][2] == "w18 w19 w20"
    assert model.training  # left as it was


def test_fill_rows_show_the_fixed_evaluation_masks_and_the_models_fill():
    """The rows of the masked-LM table: the first masked positions of the evaluation blocks, block
    by block, each with its context (the position as the model saw it), target, prediction,
    probability."""
    model = build_model(tiny_config("encoder", dropout=0.0)).eval()
    blocks = MaskedBlocks(torch.arange(4, 36), 16, 0)
    inputs, targets = blocks.tokens.clone(), torch.zeros_like(blocks.tokens)
    inputs[0, [2, 5]], targets[0, [2, 5]] = 3, torch.tensor([6, 9])  # positions 2 and 5 masked
    blocks.masked = (inputs, targets)
    inputs[1, 0], targets[1, 0] = 3, 20  # and the second block's first position
    columns, rows = fill_rows(model, Tokens(), blocks, rows=5, context=2)
    assert columns == ["context", "target", "prediction", "probability"] and len(rows) == 3
    assert rows[0][0] == "w4 w5 [w3] w7 w8" and [r[1] for r in rows] == ["w6", "w9", "w20"]
    with torch.no_grad():
        probs = model(inputs[:1]).softmax(-1)[0]
    assert rows[1][2] == f"w{int(probs[5].argmax())}" and rows[1][3] == pytest.approx(float(probs[5].max()), abs=1e-4)
    assert len(fill_rows(model, Tokens(), blocks, rows=2)[1]) == 2  # stops at the rows asked for


@pytest.mark.parametrize("name", TASKS.names())
def test_every_task_names_its_tables_and_leaves_nothing_without_a_test(name):
    """Each spec answers the run's questions; a translation run without test hypotheses writes
    and logs nothing."""
    spec = TASKS.get(name)
    task = SimpleNamespace(last_hypotheses={}, bleu_signature=None, model=None)
    data = SimpleNamespace(dropped_train=0, max_seq_len=8, streams={}, datasets={}, tokenizer=None)
    assert spec.notes(data) == [] and spec.signature(task) is None
    if name == "translation":
        assert spec.tables(task, data, 5) == {} and spec.after_test(task, data, None) == {}
    else:
        assert len(spec.tables(task, data, 5)) == 1 and spec.after_test(task, data, None) == {}
