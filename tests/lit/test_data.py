"""Data sources, cleaning, tokenizer and batching."""

import errno
import gzip
import os
import re
from pathlib import Path

import pytest
import torch

from lit.config import DataConfig
from lit.data import bible
from lit.data.modules import TokenBudgetBatches
from lit.specs import task_spec
from lit.data.sources import DataError, load_pairs, load_text
from lit.data.tokenizer import TextTokenizer, TokenizerFileError, cached_bpe, train_bpe

SHARED_MULTI30K = Path(__file__).resolve().parents[3] / "shared" / "data" / "multi30k"


@pytest.mark.parametrize("raw,clean", [
    ("God`s Spirit [was] there.", "God's Spirit was there."),
    ("(7:26) L'Éternel dit", "L'Éternel dit"),
    ("y\u00adla\ttierra", "yla tierra"),
    ("Wonne; deines Wortes. * * *", "Wonne; deines Wortes."),
    ("E la terra\nera", "E la terra era"),
    ("(*)", ""),
])
def test_clean_verse(raw, clean):
    assert bible.clean_verse(raw) == clean


def test_bible_splits_hold_out_whole_books():
    verses = bible.read_verses("en")
    by_split = {}
    for (book, _, _), (split, text) in verses.items():
        by_split.setdefault(split, set()).add(book)
        assert text and "`" not in text and "[" not in text
    assert by_split["val"] == set(bible.SPLIT_BOOKS["val"])
    assert by_split["test"] == set(bible.SPLIT_BOOKS["test"])
    assert not by_split["train"] & (by_split["val"] | by_split["test"])
    assert not {40, 41, 42, 43} & (by_split["val"] | by_split["test"])  # no Gospel held out


@pytest.mark.parametrize("lang", ["de", "fr", "es", "it"])
def test_bible_pairs_are_aligned_and_clean(lang):
    pairs = bible.parallel(lang, "en", "val")
    assert len(pairs) > 700
    assert all(src and tgt for src, tgt in pairs)
    assert not any(re.search(r"\(\d+:\d+\)", src) for src, _ in pairs)
    assert not any("\u00ad" in src or "\t" in src for src, _ in pairs)


def test_tokenizer_round_trip_and_cache(tmp_path):
    train = bible.monolingual("en", "train")[:3000]
    tok = cached_bpe(train, 1000, tmp_path)
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    for text in bible.monolingual("en", "val")[:200] + ["ünïcödé — “quotes” 123"]:
        assert tok.decode(tok.encode(text)) == text
    assert len(list(tmp_path.glob("bpe-*.json"))) == 1
    again = cached_bpe(train, 1000, tmp_path)
    assert again.encode("In the beginning") == tok.encode("In the beginning")
    other = cached_bpe(train[:2000], 1000, tmp_path)  # different data: a new tokenizer
    assert len(list(tmp_path.glob("bpe-*.json"))) == 2 and other.vocab_size <= 1000


def test_the_default_cache_is_one_per_user_whatever_the_working_directory(tmp_path, monkeypatch):
    """data.cache_dir unset: $ABLATE_CACHE_DIR, else $XDG_CACHE_HOME/ablate, else ~/.cache/ablate,
    never under the working directory (runs from two directories share tokenizers and one CPU peak)."""
    for var in ("ABLATE_CACHE_DIR", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    seen = set()
    for cwd in ("a", "b"):
        (tmp_path / cwd).mkdir()
        monkeypatch.chdir(tmp_path / cwd)
        seen.add(DataConfig().cache_path)
    assert seen == {tmp_path / "home" / ".cache" / "ablate"}
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert DataConfig().cache_path == tmp_path / "xdg" / "ablate"
    monkeypatch.setenv("ABLATE_CACHE_DIR", str(tmp_path / "mine"))
    assert DataConfig().cache_path == tmp_path / "mine"
    assert DataConfig(cache_dir=str(tmp_path / "set")).cache_path == tmp_path / "set"  # the config wins


def test_max_words_keeps_the_short_examples_of_every_split():
    full = DataConfig(src_lang="de", tgt_lang="en")
    short = DataConfig(src_lang="de", tgt_lang="en", max_words=12)
    for split in ("train", "val", "test"):
        pairs, kept = load_pairs(full, split), load_pairs(short, split)
        expected = [p for p in pairs if len(p[0].split()) <= 12 and len(p[1].split()) <= 12]
        assert kept == expected and 0 < len(kept) < len(pairs)
    texts = load_text(DataConfig(lang="en", max_words=12), "val")
    assert texts and max(len(t.split()) for t in texts) <= 12
    with pytest.raises(DataError, match=r"data.max_words=1: no example of split 'train' .* \(its shortest has 3 words\)"):
        load_pairs(DataConfig(src_lang="de", tgt_lang="en", max_words=1), "train")
    with pytest.raises(ValueError, match="data.max_words must be 1 or more"):
        DataConfig(max_words=0)


def test_two_runs_saving_the_same_cached_tokenizer_at_once_both_succeed(tmp_path, monkeypatch):
    """Runs of a sweep that start together train and save the same tokenizer: a second save that
    happens between the first's write and its rename must not take the first's file away (it did,
    with one shared temporary name: FileNotFoundError, the run lost)."""
    train = bible.monolingual("en", "train")[:500]
    first, second = train_bpe(train, 300), train_bpe(train, 300)
    path = tmp_path / "bpe-x.json"
    original, nested, real_pid = Path.replace, [], os.getpid()

    def replace_after_the_other_saves(self, target):
        if not nested:
            nested.append(self)
            with monkeypatch.context() as other_process:
                other_process.setattr(os, "getpid", lambda: real_pid + 1)
                second.save(path)  # the other process, start to end, inside this one's save
        return original(self, target)

    monkeypatch.setattr(Path, "replace", replace_after_the_other_saves)
    first.save(path)
    assert nested and TextTokenizer.load(path).encode("In the beginning") == first.encode("In the beginning")
    assert [p.name for p in tmp_path.iterdir()] == ["bpe-x.json"]


def test_a_truncated_cached_tokenizer_is_named_and_trained_again(tmp_path):
    """A cache file cut short (a full disk, a kill under older code) failed every later run with
    "EOF while parsing an object" and no file named; now a warning names it and it is rebuilt."""
    train = bible.monolingual("en", "train")[:500]
    tok = cached_bpe(train, 300, tmp_path)
    (path,) = tmp_path.glob("bpe-*.json")
    path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
    with pytest.warns(UserWarning, match=rf"{re.escape(str(path))}: not a readable tokenizer file \(EOF while parsing"):
        again = cached_bpe(train, 300, tmp_path)
    assert again.encode("In the beginning") == tok.encode("In the beginning")
    assert TextTokenizer.load(path).encode("In the beginning") == tok.encode("In the beginning")  # healed
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_an_unreadable_tokenizer_file_is_refused_by_name(tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text('{"version": "1.0", "truncation": null, "added_tokens": [')
    with pytest.raises(TokenizerFileError, match=rf"^{re.escape(str(path))}: not a readable tokenizer file"):
        TextTokenizer.load(path)


def test_a_tokenizer_save_on_a_full_disk_names_the_file_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    tok = train_bpe(bible.monolingual("en", "train")[:200], 300)
    original = Path.write_text

    def full_disk(self, text, *args, **kwargs):
        original(self, text[:100], *args, **kwargs)  # cut short where the space ran out
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full_disk)
    with pytest.raises(OSError, match="No space left on device") as err:
        tok.save(tmp_path / "bpe-x.json")
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(tmp_path / "bpe-x.json")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not SHARED_MULTI30K.is_dir(), reason="no local Multi30K copy beside the project")
def test_multi30k_from_local_directory():
    cfg = DataConfig(source="multi30k", path=str(SHARED_MULTI30K))
    assert len(load_pairs(cfg, "train")) == 29000
    val = load_pairs(cfg, "val")
    test = load_pairs(cfg, "test")
    assert (len(val), len(test)) == (1014, 1000)
    assert test[0][1].startswith("A man in an orange hat")


def _write(path: Path, lines, gz=False):
    text = "\n".join(lines) + "\n"
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")


def test_parallel_files_of_different_lengths_name_both(tmp_path):
    _write(tmp_path / "train.de", ["a", "b", "c"])
    _write(tmp_path / "train.en", ["a", "b"])
    with pytest.raises(DataError, match=r"train\.de has 3 lines but .*train\.en has 2"):
        load_pairs(DataConfig(source="parallel", path=str(tmp_path)), "train")


def test_empty_line_names_file_and_line(tmp_path):
    _write(tmp_path / "val.txt", ["one", "", "three"])
    with pytest.raises(DataError, match=r"val\.txt:2: empty line"):
        load_text(DataConfig(source="text", path=str(tmp_path)), "val")


@pytest.mark.parametrize("name", ["val.txt", "val.txt.gz"])
def test_a_file_that_is_not_utf8_names_file_and_line(tmp_path, name):
    import gzip

    data = "one\ntwo\n".encode() * 3000 + "caf\u00e9\n".encode("latin-1")  # past the first read buffer
    (tmp_path / name).write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    from lit.data.sources import read_lines

    with pytest.raises(DataError, match=r"val\.txt(\.gz)?:6001: not UTF-8 text \(byte 4 of the line"):
        read_lines(tmp_path / name)


def test_missing_file_and_missing_multi30k_are_clear(tmp_path):
    with pytest.raises(DataError, match="test.txt: file not found"):
        load_text(DataConfig(source="text", path=str(tmp_path)), "test")
    with pytest.raises(DataError, match=r"train\.de\.gz: not found .*data\.path"):
        load_pairs(DataConfig(source="multi30k", path=str(tmp_path)), "train")


def test_source_for_the_wrong_task():
    with pytest.raises(DataError, match="no monolingual text"):
        load_text(DataConfig(source="multi30k", path="x"), "train")


def test_unknown_source_lists_choices():
    with pytest.raises(ValueError, match="choices: bible, hf, multi30k, parallel, text"):
        DataConfig(source="wmt99")


def test_token_budget_batches_deterministic_and_complete():
    lengths = [(i * 37) % 50 + 1 for i in range(500)]
    a = list(TokenBudgetBatches(lengths, 200, shuffle=True, seed=3))
    b = list(TokenBudgetBatches(lengths, 200, shuffle=True, seed=3))
    assert a == b
    assert sorted(i for batch in a for i in batch) == list(range(500))
    assert all(max(lengths[i] for i in batch) * len(batch) <= 200 for batch in a)
    epoch1 = TokenBudgetBatches(lengths, 200, shuffle=True, seed=3)
    epoch1.set_epoch(1)
    assert list(epoch1) != a


def test_lm_blocks_cover_the_stream_once():
    dm = task_spec("lm").datamodule(DataConfig(vocab_size=500, limit_train=300, limit_eval=40, batch_size=4),
                                    max_seq_len=32, seed=0)
    dm.setup()
    val = dm.datasets["val"]
    # targets are inputs shifted by one, across block boundaries
    assert (val.inputs[1:, 0] == val.targets[:-1, -1]).all()
    assert (val.inputs[:, 1:] == val.targets[:, :-1]).all()
    assert dm.n_bytes["val"] == sum(len(t.encode()) + 1 for t in bible.monolingual("en", "val")[:40])


def test_batches_say_whether_they_hold_padding():
    """The flag the model reads instead of looking on the device: found while collating."""
    dm = task_spec("lm").datamodule(DataConfig(vocab_size=500, limit_train=300, limit_eval=41, batch_size=4),
                                    max_seq_len=32, seed=0)
    dm.setup()
    pad = dm.tokenizer.pad_id
    batches = list(dm.val_dataloader())
    assert [b["padded"] for b in batches] == [bool((b["inputs"] == pad).any()) for b in batches]
    assert batches[-1]["padded"] and not batches[0]["padded"]  # only the last block is padded
    dm = task_spec("translation").datamodule(DataConfig(vocab_size=500, limit_train=300, limit_eval=40,
                                                        max_tokens=1000), max_seq_len=256, seed=0)
    dm.setup()
    flags = [(b["src_padded"], bool((b["src"] == dm.tokenizer.pad_id).any())) for b in dm.val_dataloader()]
    assert all(flag == found for flag, found in flags) and any(found for _, found in flags)


@pytest.mark.parametrize("task, tensors", [("lm", {"n_targets": "targets"}),
                                           ("translation", {"n_targets": "tgt_out", "n_src": "src"})])
def test_batches_carry_their_token_counts_from_the_host(task, tensors):
    """Throughput counts tokens from these, so that no step waits for the device to count them."""
    cfg = DataConfig(vocab_size=500, limit_train=300, limit_eval=41, batch_size=4, max_tokens=1000)
    dm = task_spec(task).datamodule(cfg, max_seq_len=256 if task == "translation" else 64, seed=0)
    dm.setup()
    pad = dm.tokenizer.pad_id
    for batch in [*dm.val_dataloader(), *list(dm.train_dataloader())[:5]]:
        for key, tensor in tensors.items():
            assert isinstance(batch[key], int) and batch[key] == int((batch[tensor] != pad).sum()), key


def test_length_multiple_gives_few_shapes_and_the_same_loss():
    """Translation batches padded to multiples of 8 (at most max_seq_len): few shapes, the same
    tokens, and the same loss as the tightly padded batch of the same examples."""
    from lit.data.modules import collate_pairs
    from variants import ModelConfig, build_model

    cfg = DataConfig(vocab_size=500, limit_train=300, limit_eval=40, max_tokens=1000, length_multiple=8)
    dm = task_spec("translation").datamodule(cfg, max_seq_len=250, seed=0)
    dm.setup()
    batches = list(dm.train_dataloader())
    widths = {b["src"].size(1) for b in batches} | {b["tgt_in"].size(1) for b in batches}
    assert all(w % 8 == 0 or w == 250 for w in widths) and len(widths) > 1
    assert all(b["src"].numel() <= cfg.max_tokens and b["tgt_in"].numel() <= cfg.max_tokens for b in batches)
    pad = dm.tokenizer.pad_id
    assert all(b["src_padded"] == bool((b["src"] == pad).any()) for b in batches)

    torch.manual_seed(0)
    model = build_model(ModelConfig(kind="seq2seq", vocab_size=dm.tokenizer.vocab_size, d_model=32, n_heads=4,
                                    n_layers=1, max_seq_len=250, dropout=0.0)).eval()
    items = [dm.datasets["val"][i] for i in range(6)]
    losses = []
    for multiple in (1, 8):
        b = collate_pairs(items, pad, multiple, limit=250)
        assert b["n_targets"] == int((b["tgt_out"] != pad).sum())
        with torch.no_grad():
            hidden = model.hidden(b["src"], b["tgt_in"], padded=b["src_padded"])
            losses.append(model.loss(hidden, b["tgt_out"], pad, 0.0)[1])
    assert losses[1] == pytest.approx(float(losses[0]), rel=1e-5)
    capped = collate_pairs([(0, [5] * 101, [6] * 98)], pad, 16, limit=104)  # 112 would pass max_seq_len
    assert capped["src"].shape == capped["tgt_in"].shape == (1, 104) and capped["src_padded"]


def test_translation_eval_example_too_long_names_field(tmp_path):
    _write(tmp_path / "train.de", ["kurz"] * 20)
    _write(tmp_path / "train.en", ["short"] * 20)
    _write(tmp_path / "val.de", ["kurz", "sehr " * 80])
    _write(tmp_path / "val.en", ["short", "long"])
    _write(tmp_path / "test.de", ["kurz"])
    _write(tmp_path / "test.en", ["short"])
    cfg = DataConfig(source="parallel", path=str(tmp_path), vocab_size=300, cache_dir=str(tmp_path / "c"))
    dm = task_spec("translation").datamodule(cfg, max_seq_len=16, seed=0)
    with pytest.raises(DataError, match=r"val example 2 .*model\.max_seq_len=16"):
        dm.setup()


@pytest.fixture
def hf_saved(tmp_path):
    """Small Hugging Face datasets saved to disk: the offline path of the ``hf`` source."""
    datasets = pytest.importorskip("datasets")
    verses = {s: bible.parallel("de", "en", s)[:50] for s in ("train", "val", "test")}
    lm = datasets.DatasetDict({
        name: datasets.Dataset.from_dict({"text": [t for _, t in verses[s]] + ["", "   "]})
        for s, name in (("train", "train"), ("val", "validation"), ("test", "test"))})
    mt = datasets.DatasetDict({
        name: datasets.Dataset.from_dict({"translation": [{"de": d, "en": e} for d, e in verses[s]]})
        for s, name in (("train", "train"), ("val", "validation"), ("test", "test"))})
    lm.save_to_disk(str(tmp_path / "lm"))
    mt.save_to_disk(str(tmp_path / "mt"))
    return tmp_path, verses


def test_hf_source_offline_from_disk(hf_saved):
    root, verses = hf_saved
    lm = DataConfig(source="hf", path=str(root / "lm"))
    assert load_text(lm, "val") == [t for _, t in verses["val"]]  # blank rows skipped
    mt = DataConfig(source="hf", path=str(root / "mt"), src_lang="de", tgt_lang="en")
    assert load_pairs(mt, "test") == verses["test"]
    dm = task_spec("translation").datamodule(DataConfig(source="hf", path=str(root / "mt"), vocab_size=400,
                                                        cache_dir=str(root / "cache")), max_seq_len=256, seed=0)
    dm.prepare_data()
    dm.setup()
    assert dm.references["val"] == [e for _, e in verses["val"]]


def test_hf_source_errors_name_field_and_split(hf_saved):
    root, _ = hf_saved
    with pytest.raises(DataError, match="no field 'body'"):
        load_text(DataConfig(source="hf", path=str(root / "lm"), text_field="body"), "train")
    with pytest.raises(DataError, match="has no 'fr' text"):
        load_pairs(DataConfig(source="hf", path=str(root / "mt"), src_lang="fr"), "train")
    with pytest.raises(DataError, match="no dataset saved there"):
        load_text(DataConfig(source="hf", path=str(root / "nothing")), "train")
    with pytest.raises(ValueError, match="hf_name"):
        DataConfig(source="hf")


@pytest.mark.parametrize("world", [2, 3])
def test_token_budget_shards(world):
    lengths = [(i * 37) % 50 + 1 for i in range(500)]
    full = list(TokenBudgetBatches(lengths, 200, shuffle=False))
    shards = [list(TokenBudgetBatches(lengths, 200, shuffle=False, rank=r, world=world)) for r in range(world)]
    assert sorted(b for shard in shards for b in shard) == sorted(full)  # evaluation: each batch once
    train = [list(TokenBudgetBatches(lengths, 200, shuffle=True, seed=1, rank=r, world=world)) for r in range(world)]
    assert len({len(t) for t in train}) == 1  # training: equally many batches per rank
    seen = [i for t in train for b in t for i in b]
    assert len(seen) == len(set(seen))  # no example twice in an epoch


def test_lm_eval_shards_see_each_block_once():
    dm = task_spec("lm").datamodule(DataConfig(vocab_size=500, limit_train=300, limit_eval=40, batch_size=3),
                                    max_seq_len=16, seed=0)
    dm.setup()

    class FakeTrainer:
        def __init__(self, rank, world):
            self.global_rank, self.world_size = rank, world

    blocks = []
    for rank in range(3):
        dm.trainer = FakeTrainer(rank, 3)
        blocks += [row for batch in dm.val_dataloader() for row in batch["inputs"].tolist()]
    dm.trainer = None
    assert sorted(blocks) == sorted(dm.datasets["val"].inputs.tolist())
