"""Data sources by name: each yields monolingual text (language modelling) or sentence pairs
(translation) for the splits ``train``, ``val`` and ``test``.

| name | what |
|---|---|
| ``bible`` | verse-aligned public-domain Bibles (:mod:`lit.data.bible`), no download |
| ``multi30k`` | Multi30K task 1 raw ``.gz`` files from a directory (``data.path``), fetched from the
  dataset's public repository into that directory when missing and a network is reachable |
| ``text`` | ``{path}/{split}.txt``, one example per line |
| ``parallel`` | ``{path}/{split}.{src_lang}`` and ``{path}/{split}.{tgt_lang}``, line-aligned |
"""

from __future__ import annotations

import gzip
import urllib.request
from pathlib import Path

from lit.data import bible

MULTI30K_URL = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw/{name}"
MULTI30K_SPLITS = {"train": "train", "val": "val", "test": "test_2016_flickr"}


class DataError(ValueError):
    """Bad or missing data; the message names the file (and line)."""


def read_lines(path: Path) -> list[str]:
    """Lines of a text file (``.gz`` transparently), stripped; an empty line is an error."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        lines = [line.rstrip("\r\n").strip() for line in f]
    for number, line in enumerate(lines, 1):
        if not line:
            raise DataError(f"{path}:{number}: empty line")
    if not lines:
        raise DataError(f"{path}: no lines")
    return lines


def read_parallel(src_path: Path, tgt_path: Path) -> list[tuple[str, str]]:
    src, tgt = read_lines(src_path), read_lines(tgt_path)
    if len(src) != len(tgt):
        raise DataError(f"{src_path} has {len(src)} lines but {tgt_path} has {len(tgt)}: "
                        f"parallel files must be line-aligned")
    return list(zip(src, tgt))


def _multi30k_file(directory: Path, split: str, lang: str) -> Path:
    name = f"{MULTI30K_SPLITS[split]}.{lang}.gz"
    path = directory / name
    if not path.is_file():
        directory.mkdir(parents=True, exist_ok=True)
        url = MULTI30K_URL.format(name=name)
        try:
            with urllib.request.urlopen(url, timeout=20) as response:
                data = response.read()
        except OSError as err:
            raise DataError(f"{path}: not found, and downloading {url} failed ({err}); set "
                            f"data.path to a directory holding the Multi30K raw .gz files") from err
        tmp = path.with_suffix(".part")
        tmp.write_bytes(data)
        tmp.replace(path)
    return path


def load_pairs(data, split: str) -> list[tuple[str, str]]:
    """Sentence pairs (source, target) of one split."""
    if data.source == "bible":
        pairs = bible.parallel(data.src_lang, data.tgt_lang, split)
    elif data.source == "multi30k":
        directory = Path(data.path)
        pairs = read_parallel(_multi30k_file(directory, split, data.src_lang),
                              _multi30k_file(directory, split, data.tgt_lang))
    elif data.source == "parallel":
        directory = Path(data.path)
        pairs = read_parallel(directory / f"{split}.{data.src_lang}", directory / f"{split}.{data.tgt_lang}")
    else:
        raise DataError(f"data.source {data.source!r} has no sentence pairs; translation sources: "
                        f"bible, multi30k, parallel")
    if not pairs:
        raise DataError(f"data.source {data.source!r}: split {split!r} is empty")
    return pairs


def load_text(data, split: str) -> list[str]:
    """Monolingual examples (verses, lines) of one split."""
    if data.source == "bible":
        texts = bible.monolingual(data.lang, split)
    elif data.source == "text":
        texts = read_lines(Path(data.path) / f"{split}.txt")
    else:
        raise DataError(f"data.source {data.source!r} has no monolingual text; language-modelling "
                        f"sources: bible, text")
    if not texts:
        raise DataError(f"data.source {data.source!r}: split {split!r} is empty")
    return texts
