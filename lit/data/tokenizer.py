"""Byte-level BPE tokenizers (Hugging Face ``tokenizers``), trained on the training split only
and cached by a hash of the data and settings.

Byte-level pre-tokenization with no normaliser makes ``decode(encode(text)) == text`` exactly,
so BLEU is computed on the original detokenized text. Special tokens have fixed ids:
``<pad>`` 0, ``<bos>`` 1, ``<eos>`` 2 (``ModelConfig.pad_id`` defaults to 0 to match).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable, Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
SPECIALS = (PAD, BOS, EOS)


class TextTokenizer:
    """A thin wrapper with the ids the tasks need."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.pad_id, self.bos_id, self.eos_id = (tokenizer.token_to_id(t) for t in SPECIALS)
        if (self.pad_id, self.bos_id, self.eos_id) != (0, 1, 2):
            raise ValueError(f"tokenizer special ids must be pad=0, bos=1, eos=2, got "
                             f"{self.pad_id}, {self.bos_id}, {self.eos_id}")

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids`` up to the first ``<eos>``, without special tokens."""
        out = []
        for i in ids:
            if i == self.eos_id:
                break
            if i not in (self.pad_id, self.bos_id):
                out.append(int(i))
        return self.tokenizer.decode(out, skip_special_tokens=False)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # a name of this process's own: runs of a sweep that start together may train and save the
        # same cached tokenizer at once, and must not write, move or delete each other's file
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        self.tokenizer.save(str(tmp))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> "TextTokenizer":
        return cls(Tokenizer.from_file(str(path)))


def train_bpe(texts: Sequence[str], vocab_size: int) -> TextTokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIALS), show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return TextTokenizer(tok)


def cached_bpe(texts: Sequence[str], vocab_size: int, cache_dir: Path) -> TextTokenizer:
    """Train once per (texts, settings); later calls load ``cache_dir/bpe-<hash>.json``."""
    digest = hashlib.sha256(json.dumps({"kind": "byte-bpe", "vocab_size": vocab_size}).encode())
    for text in texts:
        digest.update(text.encode())
        digest.update(b"\0")
    path = Path(cache_dir) / f"bpe-{digest.hexdigest()[:16]}.json"
    if path.is_file():
        return TextTokenizer.load(path)
    tokenizer = train_bpe(texts, vocab_size)
    tokenizer.save(path)
    return tokenizer
