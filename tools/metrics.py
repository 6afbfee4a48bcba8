"""Metric definitions shared by the tasks and the reports."""

from __future__ import annotations

import math
from typing import Sequence

import sacrebleu


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str]) -> tuple[float, str]:
    """sacreBLEU corpus BLEU on detokenized text (13a tokenization, one reference) and its
    signature string."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    bleu = sacrebleu.metrics.BLEU(tokenize="13a")
    score = bleu.corpus_score(list(hypotheses), [list(references)])
    return score.score, str(bleu.get_signature())


def corpus_chrf(hypotheses: Sequence[str], references: Sequence[str]) -> tuple[float, str]:
    """sacreBLEU corpus chrF (character 6-grams, beta 2) on detokenized text and its signature."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    chrf = sacrebleu.metrics.CHRF()
    score = chrf.corpus_score(list(hypotheses), [list(references)])
    return score.score, str(chrf.get_signature())


def one_line(text: str) -> str:
    """A hypothesis as one line of a ``.hyp`` file: line breaks inside it become spaces (the 13a
    tokenizer treats them alike, so BLEU is unchanged)."""
    return " ".join(text.splitlines()) if ("\n" in text or "\r" in text) else text


def perplexity(nll_sum: float, tokens: float) -> float:
    """exp(sum NLL / tokens), overflow-safe."""
    return math.exp(min(nll_sum / max(tokens, 1), 700.0))


def bits_per_byte(nll_sum: float, n_bytes: int) -> float:
    return nll_sum / math.log(2) / n_bytes
