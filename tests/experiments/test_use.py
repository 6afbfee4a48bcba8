"""`ablate generate` and `ablate translate` on real (tiny) trained runs."""

import io
import json
from pathlib import Path

import pytest
import torch

from experiments.cli import main
from experiments.use import HF_FILES, TextStream, UseError, fill_mask, generate, load_run, read_lines, translate

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "debug" / "smoke.yaml"


def _train(tmp_path, experiment, *extra):
    args = [str(ROOT / "configs" / "experiments" / f"{experiment}.yaml"), str(SMOKE), f"run.root={tmp_path}",
            "logger=none", f"data.cache_dir={tmp_path}/cache", *extra]
    assert main(["train", *args]) == 0
    (run_dir,) = tmp_path.glob(f"{experiment}/*")
    return run_dir


def test_a_folder_that_is_not_a_run_is_refused(tmp_path, capsys):
    assert main(["generate", str(tmp_path), "--prompt", "x"]) == 2
    assert "no config.yaml" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("preset, families", [
    ("bert", ((None, "BertForMaskedLM"), ("roberta", "RobertaForMaskedLM"))),
    ("deberta", ((None, "DebertaV2ForMaskedLM"),)),
    ("modernbert", ((None, "ModernBertForMaskedLM"),)),
])
def test_export_an_encoder_run_to_hugging_face(tmp_path, capsys, preset, families):
    """A masked-LM run with an encoder preset exports to its family (BERT also, asked for, to
    RoBERTa): transformers' Auto classes load it, its logits are ours, its tokenizer knows <mask>;
    the default masked-LM composition (Pre-LN, no prediction head) is refused by name."""
    transformers = pytest.importorskip("transformers")
    run_dir = _train(tmp_path / preset, "mlm-bible", "trainer.max_steps=5",
                     str(ROOT / "configs" / "model" / f"{preset}.yaml"))
    run = load_run(run_dir, "cpu")
    ids = [run.tokenizer.eos_id] + run.tokenizer.encode("In the beginning") + [run.tokenizer.mask_id]
    for family, name in families:
        out = tmp_path / f"hf-{family}"
        assert main(["export", str(run_dir), "--hf", str(out)] + (["--family", family] if family else [])) == 0
        assert f"wrote {name}" in capsys.readouterr().out
        model = transformers.AutoModelForMaskedLM.from_pretrained(out).eval()
        tokenizer = transformers.AutoTokenizer.from_pretrained(out)
        assert type(model).__name__ == name and tokenizer.mask_token_id == run.tokenizer.mask_id
        with torch.no_grad():
            torch.testing.assert_close(model(torch.tensor([ids])).logits, run.model(torch.tensor([ids])),
                                       atol=1e-4, rtol=0)
    if preset == "bert":
        plain = _train(tmp_path / "plain", "mlm-bible", "trainer.max_steps=2")
        assert main(["export", str(plain), "--hf", str(tmp_path / "plain-hf")]) == 2
        assert "has no equivalent in BertForMaskedLM" in capsys.readouterr().err


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    """A tiny LM run (learned positions, 128 of them), trained once for this module's tests."""
    return _train(tmp_path_factory.mktemp("lm"), "lm-bible", "trainer.max_steps=5")


@pytest.fixture(scope="module")
def mlm_run(tmp_path_factory):
    """A tiny masked-LM run (an encoder), trained once for this module's tests."""
    return _train(tmp_path_factory.mktemp("mlm"), "mlm-bible", "trainer.max_steps=5")


@pytest.mark.slow
def test_fill_mask_and_attention_with_a_masked_lm_run(mlm_run, lm_run, tmp_path, capsys):
    run = load_run(mlm_run, "cpu")
    (fillers,) = fill_mask(run, "In the beginning <mask> created", top_k=3)
    probs = [p for _, p in fillers]
    assert len(fillers) == 3 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1
    assert all(piece not in ("<pad>", "<bos>", "<eos>", "<mask>") for piece, _ in fillers)
    assert len(fill_mask(run, "<mask> the beginning <mask> created", top_k=2)) == 2  # one list per <mask>
    assert main(["fill-mask", str(mlm_run), "--text", "In the beginning <mask> created", "--top-k", "3"]) == 0
    assert capsys.readouterr().out.count("\n") == 3
    assert main(["fill-mask", str(mlm_run), "--text", "no mask here"]) == 2
    assert "--text has no <mask>" in capsys.readouterr().err
    assert main(["fill-mask", str(lm_run), "--text", "a <mask>"]) == 2
    assert "is a lm run: fill-mask needs a run of task mlm; use ablate generate" in capsys.readouterr().err
    assert main(["attention", str(mlm_run), "--text", "In the beginning", "--out", str(tmp_path / "maps")]) == 0
    assert (tmp_path / "maps" / "self_attention.png").stat().st_size > 1000


@pytest.fixture(scope="module")
def mt_run(tmp_path_factory):
    """A tiny translation run, trained once for this module's tests."""
    return _train(tmp_path_factory.mktemp("mt"), "mt-bible-de-en", "trainer.max_steps=5", "task.max_decode_len=8")


@pytest.mark.parametrize("command, message", [
    (["generate", "--prompt", "x", "--max-new-tokens", "-5"],
     "--max-new-tokens -5: give 1 or more new tokens to generate"),
    (["generate", "--prompt", "x", "--max-new-tokens", "0"],
     "--max-new-tokens 0: give 1 or more new tokens to generate"),
    (["translate", "--beam", "0"], "--beam 0: the beam must be 1 or more (1 is greedy decoding)"),
    (["export", "--hf", "{run}/config.yaml"],
     "--hf {run}/config.yaml: exists and is not a directory; the export writes a directory"),
    (["export", "--hf", "{run}"], "--hf {run}: not an empty directory: the export would overwrite tokenizer.json; "
                                  "choose a new or empty directory, or pass --force"),
], ids=["generate-negative", "generate-zero", "translate-beam-0", "export-onto-a-file", "export-into-the-run"])
def test_bad_arguments_are_refused_in_one_line_before_the_run_is_loaded(tmp_path, capsys, monkeypatch, command,
                                                                         message):
    """The folder holds no checkpoint: each refusal comes before the run is loaded (which would
    say so), names the flag, exit code 2, and nothing is written."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("# run_id: 0123456789\n")
    (run_dir / "tokenizer.json").write_text("{}")
    monkeypatch.setattr("sys.stdin", io.StringIO("ein Satz\n"))
    assert main([command[0], str(run_dir), *(c.format(run=run_dir) for c in command[1:])]) == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [f"ablate {command[0]}: {message.format(run=run_dir)}"]
    assert captured.out == "" and sorted(p.name for p in run_dir.iterdir()) == ["config.yaml", "tokenizer.json"]


def test_an_export_into_a_folder_of_other_files_names_them(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    for name in ("a.txt", "b.txt", "c.txt", "d.txt", "e.txt", "f.txt"):
        (tmp_path / "out" / name).write_text("x")
    assert main(["export", str(tmp_path / "run"), "--hf", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == (f"ablate export: --hf {tmp_path / 'out'}: not an empty directory: it holds "
                                       f"a.txt, b.txt, c.txt, d.txt, e.txt and 1 more; choose a new or empty "
                                       f"directory, or pass --force\n")
    assert main(["export", str(tmp_path / "run"), "--hf", str(tmp_path / "out"), "--force"]) == 2
    assert "no config.yaml" in capsys.readouterr().err  # --force passes the check; this folder is no run


def test_streamed_pieces_join_to_the_decoded_text():
    """Random tokens of a byte-level BPE (many end inside a multi-byte character, some bytes are
    invalid UTF-8): the pieces written as the tokens arrive join to the decoding of them all,
    and no piece ends inside a character that later tokens complete."""
    from lit.data.tokenizer import train_bpe

    tok = train_bpe(["naïve café — 日本語のテキスト 🙂 Grüße, señor! Ελληνικά"] * 20, 300)
    text = "Grüße 🙂 日本語"
    pieces: list[str] = []
    stream = TextStream(tok, pieces.append)
    for token in tok.encode(text):
        stream.push(token)
    stream.close()
    assert "".join(pieces) == text and "\ufffd" not in "".join(pieces)
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):
        ids = torch.randint(3, tok.vocab_size, (int(torch.randint(1, 30, (1,), generator=generator)),),
                            generator=generator).tolist()
        pieces = []
        stream = TextStream(tok, pieces.append)
        for token in ids:
            stream.push(token)
        stream.close()
        assert "".join(pieces) == tok.decode(ids)


def test_input_that_is_not_utf8_is_refused_by_line():
    data = "Am Anfang\r\nschuf Gott\n".encode() + b"Himmel \xff und Erde\nfin\n"
    with pytest.raises(UseError, match=r"^stdin line 3: not UTF-8 text \(byte 8 of the line: invalid start byte\)$"):
        read_lines(io.TextIOWrapper(io.BytesIO(data)))
    good = io.TextIOWrapper(io.BytesIO("Am Anfang\r\nschuf Gott\n\nfin".encode()))
    assert read_lines(good) == ["Am Anfang\n", "schuf Gott\n", "\n", "fin"]  # newlines as in text mode


@pytest.mark.slow
def test_generate_streams_the_text_it_prints(lm_run, capsys, monkeypatch):
    """The continuation reaches stdout token by token (flushed), and what is printed in the end is
    the prompt and the continuation of all the tokens drawn, as before streaming; the length is
    capped where the positions are: the message says how many new tokens the prompt leaves."""
    from variants.decoding import sample_generate

    run = load_run(lm_run, "cpu")
    tok, prompt = run.tokenizer, "And God said"
    ids = torch.tensor([[tok.eos_id] + tok.encode(prompt)])
    drawn = sample_generate(run.model, ids, 40, 1.0, None, 0.95, torch.Generator().manual_seed(7))[0].tolist()
    assert tok.eos_id not in drawn[:2]  # a continuation of more than one piece
    pieces: list[str] = []
    assert generate(run, prompt, 40, top_p=0.95, seed=7, stream=pieces.append) == tok.decode(drawn)
    assert "".join(pieces) == tok.decode(drawn) and len(pieces) > 1

    writes: list[tuple[str, bool]] = []

    class Recording(io.StringIO):
        def flush(self):
            writes.append((self.getvalue(), True))

    out = Recording()
    monkeypatch.setattr("sys.stdout", out)
    assert main(["generate", str(lm_run), "--prompt", prompt, "--max-new-tokens", "40", "--top-p", "0.95",
                 "--seed", "7"]) == 0
    assert out.getvalue() == prompt + tok.decode(drawn) + "\n"
    assert len(writes) > 2 and writes[0][0].startswith(prompt)  # flushed piece by piece
    monkeypatch.undo()
    assert main(["generate", str(lm_run), "--prompt", prompt, "--max-new-tokens", "125"]) == 2
    n = ids.size(1)
    assert capsys.readouterr().err == (f"ablate generate: the prompt ({n} tokens) plus --max-new-tokens 125 exceeds "
                                       f"the 128 positions of this run's learned position table: at most {128 - n} "
                                       f"new tokens after this prompt\n")
    assert main(["generate", str(lm_run), "--prompt", prompt, "--max-new-tokens", str(128 - n), "--top-k", "1"]) == 0


@pytest.mark.slow
def test_translate_keeps_blank_lines_and_refuses_input_that_is_not_utf8(mt_run, capsys, monkeypatch):
    run = load_run(mt_run, "cpu")
    sources = ["Am Anfang schuf Gott Himmel und Erde.", "Und Gott sprach."]
    alone = list(translate(run, sources, beam=2))
    assert list(translate(run, ["", sources[0], "  \t", sources[1], ""], beam=2, batch_size=1)) == \
        ["", alone[0], "", alone[1], ""]

    text = "\n".join(["", sources[0], " ", sources[1]]) + "\n"
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(text.encode())))
    capsys.readouterr()
    assert main(["translate", str(mt_run), "--beam", "2"]) == 0
    assert capsys.readouterr().out.split("\n") == ["", alone[0], "", alone[1], ""]

    bad = (sources[0] + "\n").encode() + "Und Gott spr\u00e4ch.\n".encode("latin-1")
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(bad)))
    assert main(["translate", str(mt_run)]) == 2
    captured = capsys.readouterr()
    assert captured.err == ("ablate translate: stdin line 2: not UTF-8 text (byte 13 of the line: invalid "
                            "continuation byte)\n")
    assert captured.out == ""

    # an over-long line is refused before anything is translated (not after the lines before it)
    limit = run.cfg.model.max_seq_len
    long = " ".join(["Gott"] * (limit + 5))
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO("\n".join([*sources, long, sources[0]]).encode())))
    assert main(["translate", str(mt_run), "--beam", "2"]) == 2
    captured = capsys.readouterr()
    n = len(run.tokenizer.encode(long)) + 1
    assert captured.err == (f"ablate translate: 1 input line(s) longer than model.max_seq_len={limit} tokens: line 3 "
                            f"({n} tokens); split them and translate again (nothing was translated)\n")
    assert captured.out == ""


@pytest.mark.slow
def test_export_with_force_writes_beside_other_files(lm_run, tmp_path, capsys):
    """--force writes into a folder that is not empty, overwriting the files of an export only;
    an export writes no file the refusal does not know by name."""
    pytest.importorskip("transformers")
    out = tmp_path / "hf"
    out.mkdir()
    (out / "README.md").write_text("notes")
    (out / "config.json").write_text("{}")
    assert main(["export", str(lm_run), "--hf", str(out)]) == 2
    assert "would overwrite config.json;" in capsys.readouterr().err
    assert main(["export", str(lm_run), "--hf", str(out), "--force"]) == 0
    assert (out / "README.md").read_text() == "notes" and json.loads((out / "config.json").read_text())
    assert set(p.name for p in out.iterdir()) - {"README.md"} <= set(HF_FILES)


@pytest.mark.parametrize("command", [["generate", "--prompt", "x"], ["translate"], ["export", "--hf", "out"]],
                         ids=["generate", "translate", "export"])
def test_a_damaged_newest_checkpoint_is_refused_by_name(tmp_path, capsys, monkeypatch, command):
    """4 KiB overwritten in the middle of the newest checkpoint (its zip listing intact): the
    command refuses it in one line naming the file and the damaged member, exit code 2; it
    neither loads the older checkpoint in its place nor renames anything in the run."""
    from lit.checkpointing import AtomicCheckpointIO, checkpoint_name

    run_dir = tmp_path / "runs" / "lm-bible" / "some-run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.yaml").write_text("# run_id: 0123456789\n")
    (run_dir / "tokenizer.json").write_text("{}")
    for step in (20, 40):  # the project's own save path: torch.save into a zip archive
        AtomicCheckpointIO().save_checkpoint({"global_step": step, "state_dict": {"model.w": torch.randn(8192)}},
                                             run_dir / "checkpoints" / checkpoint_name(step))
    newest = run_dir / "checkpoints" / checkpoint_name(40)
    with open(newest, "r+b") as f:
        f.seek(newest.stat().st_size // 2)
        f.write(bytes(4096))
    before = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    monkeypatch.setattr("sys.stdin", io.StringIO("ein Satz\n"))
    monkeypatch.chdir(tmp_path)
    assert main([command[0], str(run_dir), *command[1:]]) == 2
    captured = capsys.readouterr()
    (line,) = captured.err.splitlines()
    assert line.startswith(f"ablate {command[0]}: {newest}: damaged checkpoint, not loaded: damaged member ")
    assert "data/0" in line and captured.out == ""
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == before
    assert not (tmp_path / "out").exists()
    with pytest.raises(UseError, match="damaged checkpoint"):
        load_run(run_dir, "cpu")


@pytest.mark.slow
def test_generate_with_an_lm_run(tmp_path, capsys):
    from variants.decoding import greedy_generate

    run_dir = _train(tmp_path, "lm-bible", "trainer.max_steps=20")
    run = load_run(run_dir, "cpu")
    tok = run.tokenizer
    prompt = "And God said"
    ids = torch.tensor([[tok.eos_id] + tok.encode(prompt)])
    assert generate(run, prompt, 8, temperature=0.0) == tok.decode(greedy_generate(run.model, ids, 8)[0].tolist())
    assert generate(run, prompt, 8, top_p=0.9, seed=5) == generate(run, prompt, 8, top_p=0.9, seed=5)

    capsys.readouterr()
    assert main(["generate", str(run_dir), "--prompt", prompt, "--max-new-tokens", "8", "--temperature", "0"]) == 0
    assert capsys.readouterr().out == prompt + generate(run, prompt, 8, temperature=0.0) + "\n"
    assert main(["generate", str(run_dir), "--prompt", prompt, "--max-new-tokens", "1000"]) == 2
    assert "learned position table" in capsys.readouterr().err
    assert main(["translate", str(run_dir)]) == 2
    assert "use ablate generate" in capsys.readouterr().err

    (newest,) = (run_dir / "checkpoints").glob("*.ckpt")
    with open(newest, "r+b") as f:  # 4 KiB overwritten in its middle: refused, by name
        f.seek(newest.stat().st_size // 2)
        f.write(bytes(4096))
    assert main(["generate", str(run_dir), "--prompt", prompt]) == 2
    assert f"{newest}: damaged checkpoint, not loaded: damaged member" in capsys.readouterr().err

    for ckpt in (run_dir / "checkpoints").glob("*.ckpt"):
        ckpt.unlink()
    with pytest.raises(UseError, match="no complete checkpoint"):
        load_run(run_dir)


@pytest.mark.slow
def test_translate_with_a_translation_run_gives_the_runs_own_test_hypotheses(tmp_path, capsys, monkeypatch):
    run_dir = _train(tmp_path, "mt-bible-de-en", "trainer.max_steps=40")
    run = load_run(run_dir, "cpu")
    sources = (run_dir / "test.src").read_text(encoding="utf-8").splitlines()[:6]
    hypotheses = (run_dir / "test.hyp").read_text(encoding="utf-8").splitlines()[:6]
    assert list(translate(run, sources, beam=run.cfg.task.beam_size, batch_size=4)) == hypotheses

    monkeypatch.setattr("sys.stdin", io.StringIO("".join(s + "\n" for s in sources)))
    capsys.readouterr()
    assert main(["translate", str(run_dir), "--beam", str(run.cfg.task.beam_size)]) == 0
    assert capsys.readouterr().out.splitlines() == hypotheses
    assert main(["generate", str(run_dir), "--prompt", "x"]) == 2
    assert "use ablate translate" in capsys.readouterr().err
    assert json.loads((run_dir / "status.json").read_text())["state"] == "completed"


@pytest.mark.slow
def test_export_an_lm_run_to_hugging_face(tmp_path, capsys):
    """`ablate export RUN --hf OUT`: transformers loads the model and tokenizer with its Auto
    classes; the logits are ours, greedy generation is `ablate generate --top-k 1`, the tokenizer
    round-trips. A composition with no equivalent is refused, naming the component."""
    transformers = pytest.importorskip("transformers")
    run_dir = _train(tmp_path / "gpt2", "lm-bible", "trainer.max_steps=20")
    out = tmp_path / "hf"
    assert main(["export", str(run_dir), "--hf", str(out)]) == 0
    assert "wrote GPT2LMHeadModel" in capsys.readouterr().out
    model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    run = load_run(run_dir, "cpu")
    text = "And God said, Let there be light: and there was light."
    ids = run.tokenizer.encode(text)
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == ids
    assert tokenizer.decode(ids) == run.tokenizer.decode(ids) == text
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    inputs = torch.tensor([[run.tokenizer.eos_id] + ids])
    with torch.no_grad():
        torch.testing.assert_close(model(inputs).logits, run.model(inputs), atol=1e-4, rtol=0)

    prompt = "And God said"
    capsys.readouterr()
    assert main(["generate", str(run_dir), "--prompt", prompt, "--max-new-tokens", "10", "--top-k", "1"]) == 0
    ours = capsys.readouterr().out
    prompt_ids = torch.tensor([[run.tokenizer.eos_id] + run.tokenizer.encode(prompt)])
    theirs = model.generate(prompt_ids, max_new_tokens=10, do_sample=False)[0, prompt_ids.size(1):]
    assert ours == prompt + tokenizer.decode(theirs, skip_special_tokens=True) + "\n"

    t5_run = _train(tmp_path / "t5", "lm-bible", "trainer.max_steps=5", "model.position=t5")
    assert main(["export", str(t5_run), "--hf", str(tmp_path / "t5-hf")]) == 2
    assert "position 't5' has no Hugging Face equivalent" in capsys.readouterr().err
    assert not (tmp_path / "t5-hf").exists()


@pytest.mark.slow
def test_attention_maps_of_an_lm_run_and_a_translation_run(tmp_path, capsys):
    """`ablate attention`: PNG heatmaps, a layer x head grid or one panel; a layer or head out
    of range is refused with the valid range."""
    from matplotlib.image import imread

    lm_dir = _train(tmp_path / "lm", "lm-bible", "trainer.max_steps=5")
    assert main(["attention", str(lm_dir), "--text", "In the beginning", "--out", str(tmp_path / "a")]) == 0
    grid = imread(tmp_path / "a" / "self_attention.png")
    assert main(["attention", str(lm_dir), "--text", "In the beginning", "--layer", "1", "--head", "0",
                 "--out", str(tmp_path / "b")]) == 0
    one = imread(tmp_path / "b" / "self_attention.png")
    assert grid.shape[1] > one.shape[1]  # two layers x four heads against one panel
    capsys.readouterr()
    assert main(["attention", str(lm_dir), "--text", "x", "--layer", "2", "--out", str(tmp_path / "c")]) == 2
    assert "--layer 2: this run has layers 0..1" in capsys.readouterr().err

    mt_dir = _train(tmp_path / "mt", "mt-bible-de-en", "trainer.max_steps=5", "task.max_decode_len=8")
    assert main(["attention", str(mt_dir), "--text", "Am Anfang schuf Gott Himmel und Erde."]) == 0
    written = sorted(p.name for p in (mt_dir / "attention").iterdir())
    assert written == ["cross_attention.png", "decoder_self_attention.png", "encoder_self_attention.png"]
    assert all(imread(mt_dir / "attention" / name).ndim == 3 for name in written)
