"""Byte-level BPE tokenizers (Hugging Face ``tokenizers``), trained on the training split only
and cached by a hash of the data and settings.

Byte-level pre-tokenization with no normaliser makes ``decode(encode(text)) == text`` exactly,
so BLEU is computed on the original detokenized text. Special tokens have fixed ids:
``<pad>`` 0, ``<bos>`` 1, ``<eos>`` 2 (``ModelConfig.pad_id`` defaults to 0 to match), and in a
masked-LM tokenizer ``<mask>`` 3 (trained with ``mask=True``; the others have none, so their
vocabularies are those they always were).

Tokenizer files are written to a temporary file and renamed, so a killed write never leaves a
truncated one; a cached file that cannot be read all the same (cut short by a full disk, edited)
is reported by name and trained again.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Iterable, Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from tools.errors import writing

PAD, BOS, EOS, MASK = "<pad>", "<bos>", "<eos>", "<mask>"
SPECIALS = (PAD, BOS, EOS)


class TokenizerFileError(ValueError):
    """A tokenizer file that cannot be read (cut short, not a tokenizer); the message names it."""


class TextTokenizer:
    """A thin wrapper with the ids the tasks need."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.pad_id, self.bos_id, self.eos_id = (tokenizer.token_to_id(t) for t in SPECIALS)
        if (self.pad_id, self.bos_id, self.eos_id) != (0, 1, 2):
            raise ValueError(f"tokenizer special ids must be pad=0, bos=1, eos=2, got "
                             f"{self.pad_id}, {self.bos_id}, {self.eos_id}")
        self.mask_id = tokenizer.token_to_id(MASK)  # None: not a masked-LM tokenizer
        if self.mask_id not in (None, 3):
            raise ValueError(f"tokenizer special id of {MASK} must be 3, got {self.mask_id}")

    @property
    def n_specials(self) -> int:
        """Ids below this are special tokens (never a word piece, never masked or sampled)."""
        return len(SPECIALS) + (self.mask_id is not None)

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
        try:
            with writing(path):  # written from Python: a full disk is an OSError, named by writing()
                tmp.write_text(self.tokenizer.to_str(pretty=True), encoding="utf-8")
                tmp.replace(path)
        finally:  # a write that failed (a full disk) leaves no temporary file behind
            tmp.unlink(missing_ok=True)

    @classmethod
    def load(cls, path: Path) -> "TextTokenizer":
        """The tokenizer saved at ``path``; :class:`TokenizerFileError` naming it when it cannot be
        read (the ``tokenizers`` library's own message names no file)."""
        try:
            return cls(Tokenizer.from_file(str(path)))
        except Exception as err:  # noqa: BLE001 - tokenizers raises a bare Exception for a torn file
            problem = " ".join(str(err).split()) or type(err).__name__
            raise TokenizerFileError(f"{path}: not a readable tokenizer file ({problem})") from err


def train_bpe(texts: Sequence[str], vocab_size: int, mask: bool = False) -> TextTokenizer:
    """A byte-level BPE of ``vocab_size`` entries trained on ``texts``; ``mask``: with ``<mask>``."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[*SPECIALS, *([MASK] if mask else [])], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return TextTokenizer(tok)


def cached_bpe(texts: Sequence[str], vocab_size: int, cache_dir: Path, mask: bool = False) -> TextTokenizer:
    """Train once per (texts, settings); later calls load ``cache_dir/bpe-<hash>.json``. A cached
    file that cannot be read is reported (a warning naming it) and replaced by a new training."""
    settings = {"kind": "byte-bpe", "vocab_size": vocab_size, **({"mask": True} if mask else {})}
    digest = hashlib.sha256(json.dumps(settings).encode())
    for text in texts:
        digest.update(text.encode())
        digest.update(b"\0")
    path = Path(cache_dir) / f"bpe-{digest.hexdigest()[:16]}.json"
    if path.is_file():
        try:
            return TextTokenizer.load(path)
        except TokenizerFileError as err:
            warnings.warn(f"{err}; training the tokenizer again and replacing the cached file", stacklevel=2)
    tokenizer = train_bpe(texts, vocab_size, mask)
    tokenizer.save(path)
    return tokenizer
