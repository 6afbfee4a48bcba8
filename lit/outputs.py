"""What a task leaves beside its metrics once a run is tested: files in the run directory and the
rows of the W&B tables its spec (:mod:`lit.specs`) names. Plain data here (lists of rows); the
run's W&B logger turns them into tables, so this module never imports W&B.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from tools.errors import writing
from tools.metrics import one_line


def write_translations(run_dir: Path, sources: Sequence[str], references: Sequence[str],
                       hypotheses: Sequence[str]) -> None:
    """``test.src``, ``test.ref`` and ``test.hyp``: detokenized text, one test example per line in
    test-set order, the hypotheses exactly as BLEU scored them (``sacrebleu test.ref -i test.hyp``
    reproduces the run's score)."""
    if not len(sources) == len(references) == len(hypotheses):
        raise ValueError(f"{len(sources)} sources, {len(references)} references, {len(hypotheses)} hypotheses")
    for name, lines in (("test.src", sources), ("test.ref", references), ("test.hyp", hypotheses)):
        tmp = run_dir / f"{name}.tmp"
        try:
            with writing(run_dir / name):
                tmp.write_text("".join(one_line(line) + "\n" for line in lines), encoding="utf-8")
                tmp.replace(run_dir / name)
        finally:
            tmp.unlink(missing_ok=True)


def source_check(task, data) -> dict[str, float]:
    """Does the model read its source? (a report flags runs that do not: "collapsed"). A check that
    fails says so in the metrics and leaves the finished, tested run as it is."""
    try:
        return task.source_check(data.datasets["val"], data.references["val"])
    except Exception as err:  # noqa: BLE001 - the run itself is done: never lose it to a check after it
        print(f"note: the shuffled-source check failed ({type(err).__name__}: {one_line(str(err))}); "
              f"the run is kept, the report cannot check that it reads its source")
        return {"test/src_check_failed": 1.0}


Table = tuple[list[str], list[list]]  # (columns, rows)


def translation_rows(sources: Sequence[str], references: Sequence[str], hypotheses: Sequence[str],
                     rows: int) -> Table:
    """The first ``rows`` test examples: source, reference, hypothesis and sentence BLEU."""
    from sacrebleu.metrics import BLEU

    bleu = BLEU(effective_order=True)
    data = [[s, r, h, round(bleu.sentence_score(h, [r]).score, 2)]
            for s, r, h in list(zip(sources, references, hypotheses))[:rows]]
    return ["source", "reference", "hypothesis", "sentence_bleu"], data


@torch.no_grad()
def continuation_rows(model, tokenizer, stream: torch.Tensor, rows: int, prompt_tokens: int = 8,
                      new_tokens: int = 24) -> Table:
    """Greedy continuations of the first ``rows`` test examples' opening ``prompt_tokens`` tokens:
    prompt, continuation and the reference that followed."""
    from variants.decoding import greedy_generate

    columns = ["prompt", "continuation", "reference"]
    eos = tokenizer.eos_id
    examples, current = [], []
    for token in stream.tolist():
        if token == eos:
            if len(current) > prompt_tokens:
                examples.append(current)
            current = []
            if len(examples) == rows:
                break
        else:
            current.append(token)
    if not examples:
        return columns, []
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    limit = getattr(model.cfg, "max_seq_len", prompt_tokens + new_tokens)
    new_tokens = max(1, min(new_tokens, limit - prompt_tokens))
    prompts = torch.tensor([[eos] + ids[:prompt_tokens] for ids in examples], device=device)
    out = greedy_generate(model, prompts, new_tokens).tolist()
    model.train(was_training)
    data = []
    for ids, generated in zip(examples, out):
        generated = generated[:generated.index(eos)] if eos in generated else generated
        data.append([tokenizer.decode(ids[:prompt_tokens]), tokenizer.decode(generated),
                     tokenizer.decode(ids[prompt_tokens:prompt_tokens + new_tokens])])
    return columns, data


@torch.no_grad()
def fill_rows(model, tokenizer, dataset, rows: int, context: int = 8) -> Table:
    """The first ``rows`` masked positions of the evaluation blocks (``dataset``: masked once, the
    same for every run), block by block: the text around each (the position in brackets, as the
    model saw it: ``<mask>``, a random word piece or the original), the original word piece, the
    model's most likely one and its probability."""
    columns = ["context", "target", "prediction", "probability"]
    inputs, targets = dataset.masked
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    piece, data = tokenizer.tokenizer.decode, []
    for block in range(len(inputs)):
        positions = (targets[block] != tokenizer.pad_id).nonzero().flatten().tolist()[:rows - len(data)]
        if not positions:
            continue
        probs = model(inputs[block:block + 1].to(device)).float().softmax(-1)[0].cpu()
        ids = inputs[block].tolist()
        for p in positions:
            shown = (tokenizer.decode(ids[max(0, p - context):p]) + " [" + tokenizer.tokenizer.id_to_token(ids[p])
                     + "] " + tokenizer.decode(ids[p + 1:p + 1 + context]))
            best = int(probs[p].argmax())
            data.append([shown, piece([int(targets[block, p])]), piece([best]), round(float(probs[p, best]), 4)])
        if len(data) == rows:
            break
    model.train(was_training)
    return columns, data
