"""Data sources, one registered class each (``data.source`` is its name): each yields
monolingual text (language modelling) or sentence pairs (translation) for the splits ``train``,
``val`` and ``test``. A new source is one decorated :class:`Source` subclass.

| name | what |
|---|---|
| ``bible`` | verse-aligned public-domain Bibles (:mod:`lit.data.bible`), no download |
| ``multi30k`` | Multi30K task 1 raw ``.gz`` files from a directory (``data.path``), fetched from the
  dataset's public repository into that directory when missing and a network is reachable |
| ``text`` | ``{path}/{split}.txt``, one example per line |
| ``parallel`` | ``{path}/{split}.{src_lang}`` and ``{path}/{split}.{tgt_lang}``, line-aligned |
| ``hf`` | a Hugging Face dataset: ``datasets.load_from_disk(path)`` when ``data.path`` is set (the
  offline path: a ``DatasetDict`` saved with ``save_to_disk``), else ``load_dataset(hf_name,
  hf_config)`` (downloaded in ``prepare``). Splits ``train``/``validation``/``test``; text from
  ``text_field`` (rows that are empty or only whitespace are skipped, as wikitext has many), pairs
  from the ``pair_field`` dict (``{"de": ..., "en": ...}`` as in iwslt2017 and wmt14) |
"""

from __future__ import annotations

import gzip
import os
import urllib.request
from pathlib import Path
from typing import ClassVar

from lit.data import bible
from variants.registry import Registry

MULTI30K_URL = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw/{name}"
MULTI30K_SPLITS = {"train": "train", "val": "val", "test": "test_2016_flickr"}
HF_SPLITS = {"train": "train", "val": "validation", "test": "test"}


class DataError(ValueError):
    """Bad or missing data; the message names the file (and line)."""


def read_lines(path: Path) -> list[str]:
    """Lines of a text file (``.gz`` transparently), stripped; an empty line is an error."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            lines = [line.rstrip("\r\n").strip() for line in f]
    except UnicodeDecodeError as err:
        with opener(path, "rb") as f:
            for number, raw in enumerate(f, 1):
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError as bad:
                    raise DataError(f"{path}:{number}: not UTF-8 text (byte {bad.start + 1} of the line: "
                                    f"{bad.reason}); convert the file, e.g. iconv -f latin1 -t utf-8") from None
        raise DataError(f"{path}: not UTF-8 text ({err.reason})") from None
    except PermissionError:
        raise DataError(f"{path}: not readable (permission denied)") from None
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


def _multi30k_file(directory: Path, split: str, lang: str, download: bool = False) -> Path:
    name = f"{MULTI30K_SPLITS[split]}.{lang}.gz"
    path = directory / name
    if not path.is_file() and not download:
        raise DataError(f"{path}: not found (set data.path to a directory holding the Multi30K raw "
                        f".gz files, or run with a network so that they are downloaded there)")
    if not path.is_file():
        directory.mkdir(parents=True, exist_ok=True)
        url = MULTI30K_URL.format(name=name)
        try:
            with urllib.request.urlopen(url, timeout=20) as response:
                data = response.read()
        except OSError as err:
            raise DataError(f"{path}: not found, and downloading {url} failed ({err}); set "
                            f"data.path to a directory holding the Multi30K raw .gz files") from err
        tmp = path.with_name(f"{path.name}.part-{os.getpid()}")  # concurrent runs each write their own
        tmp.write_bytes(data)
        tmp.replace(path)
    return path


def _hf_dataset(data):
    import datasets

    if data.path:
        directory = Path(data.path)
        if not directory.exists():
            raise DataError(f"{directory}: no dataset saved there (datasets.DatasetDict.save_to_disk)")
        return datasets.load_from_disk(str(directory))
    if not data.hf_name:
        raise DataError("data.source 'hf' needs data.hf_name (online) or data.path (a dataset saved to disk)")
    return datasets.load_dataset(data.hf_name, data.hf_config)


def _hf_split(data, split: str):
    dataset = _hf_dataset(data)
    name = HF_SPLITS[split]
    if name not in dataset:
        raise DataError(f"Hugging Face dataset {data.hf_name or data.path}: no split {name!r} "
                        f"(has {', '.join(dataset)})")
    return dataset[name]


def _hf_column(rows, field: str, where: str):
    if field not in rows.column_names:
        raise DataError(f"{where}: no field {field!r} (fields: {', '.join(rows.column_names)})")
    return rows[field]


# ---------------------------------------------------------------------------------------- sources

class Source:
    """One data source: monolingual text, sentence pairs, or both, for each split."""

    needs_path: ClassVar[bool] = False  # data.path is required

    @classmethod
    def check(cls, data) -> None:
        """Refuse, at config time, settings this source cannot work with."""
        if cls.needs_path and not data.path:
            raise ValueError(f"data.source {cls.registry_name!r} needs data.path")

    @classmethod
    def prepare(cls, data) -> None:
        """Downloads, where the source needs any (called once, before loading)."""

    @classmethod
    def pairs(cls, data, split: str) -> list[tuple[str, str]]:
        raise DataError(f"data.source {cls.registry_name!r} has no sentence pairs; translation sources: "
                        f"{', '.join(_offering('pairs'))}")

    @classmethod
    def texts(cls, data, split: str) -> list[str]:
        raise DataError(f"data.source {cls.registry_name!r} has no monolingual text; language-modelling "
                        f"sources: {', '.join(_offering('texts'))}")


SOURCES: Registry = Registry("data.source")


def _offering(method: str) -> list[str]:
    return [name for name in SOURCES.names() if getattr(SOURCES.get(name), method).__func__
            is not getattr(Source, method).__func__]


@SOURCES.register("bible")
class Bible(Source):
    """Verse-aligned public-domain Bibles (:mod:`lit.data.bible`), no download."""

    @classmethod
    def pairs(cls, data, split):
        return bible.parallel(data.src_lang, data.tgt_lang, split)

    @classmethod
    def texts(cls, data, split):
        return bible.monolingual(data.lang, split)


@SOURCES.register("multi30k")
class Multi30k(Source):
    """Multi30K task 1 raw ``.gz`` files in ``data.path``, downloaded there when missing."""

    needs_path = True

    @classmethod
    def prepare(cls, data):
        for split in MULTI30K_SPLITS:
            for lang in (data.src_lang, data.tgt_lang):
                _multi30k_file(Path(data.path), split, lang, download=True)

    @classmethod
    def pairs(cls, data, split):
        directory = Path(data.path)
        return read_parallel(_multi30k_file(directory, split, data.src_lang),
                             _multi30k_file(directory, split, data.tgt_lang))


@SOURCES.register("text")
class Text(Source):
    """``{path}/{split}.txt`` (``train.txt``, ``val.txt``, ``test.txt``), one example per line."""

    needs_path = True

    @classmethod
    def texts(cls, data, split):
        return read_lines(Path(data.path) / f"{split}.txt")


@SOURCES.register("parallel")
class Parallel(Source):
    """``{path}/{split}.{src_lang}`` and ``{path}/{split}.{tgt_lang}``, line-aligned."""

    needs_path = True

    @classmethod
    def pairs(cls, data, split):
        directory = Path(data.path)
        return read_parallel(directory / f"{split}.{data.src_lang}", directory / f"{split}.{data.tgt_lang}")


@SOURCES.register("hf")
class HuggingFace(Source):
    """A Hugging Face dataset: saved to disk (``data.path``) or by name (``data.hf_name``)."""

    @classmethod
    def check(cls, data):
        if not (data.path or data.hf_name):
            raise ValueError("data.source 'hf' needs data.hf_name (online) or data.path (saved to disk)")

    @classmethod
    def prepare(cls, data):
        if not data.path:
            _hf_dataset(data)

    @classmethod
    def pairs(cls, data, split):
        where = f"{data.hf_name or data.path} [{HF_SPLITS[split]}]"
        pairs = []
        for row, item in enumerate(_hf_column(_hf_split(data, split), data.pair_field, where), 1):
            missing = [lang for lang in (data.src_lang, data.tgt_lang) if not (item or {}).get(lang)]
            if missing:
                raise DataError(f"{where} row {row}: field {data.pair_field!r} has no {missing[0]!r} text")
            pairs.append((item[data.src_lang].strip(), item[data.tgt_lang].strip()))
        return pairs

    @classmethod
    def texts(cls, data, split):
        where = f"{data.hf_name or data.path} [{HF_SPLITS[split]}]"
        return [t.strip() for t in _hf_column(_hf_split(data, split), data.text_field, where) if t and t.strip()]


def prepare(data) -> None:
    """Downloads, where a source needs any (called once, before loading)."""
    SOURCES.get(data.source).prepare(data)


def load_pairs(data, split: str) -> list[tuple[str, str]]:
    """Sentence pairs (source, target) of one split (with ``data.max_words``: the pairs whose two
    sides both have at most that many words)."""
    pairs = SOURCES.get(data.source).pairs(data, split)
    if not pairs:
        raise DataError(f"data.source {data.source!r}: split {split!r} is empty")
    return _short(data, split, pairs, lambda pair: max(len(pair[0].split()), len(pair[1].split())))


def load_text(data, split: str) -> list[str]:
    """Monolingual examples (verses, lines) of one split (with ``data.max_words``: those of at
    most that many words)."""
    texts = SOURCES.get(data.source).texts(data, split)
    if not texts:
        raise DataError(f"data.source {data.source!r}: split {split!r} is empty")
    return _short(data, split, texts, lambda text: len(text.split()))


def _short(data, split: str, items: list, words) -> list:
    """The examples of at most ``data.max_words`` whitespace-separated words (all when unset)."""
    limit = getattr(data, "max_words", None)
    if limit is None:
        return items
    kept = [item for item in items if words(item) <= limit]
    if not kept:
        raise DataError(f"data.max_words={limit}: no example of split {split!r} of data.source {data.source!r} "
                        f"is that short (its shortest has {min(map(words, items))} words)")
    return kept
