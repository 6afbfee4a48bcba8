"""`ablate generate` and `ablate translate` on real (tiny) trained runs."""

import io
import json
from pathlib import Path

import pytest
import torch

from experiments.cli import main
from experiments.use import UseError, generate, load_run, translate

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
