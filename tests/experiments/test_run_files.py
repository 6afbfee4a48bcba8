"""A run directory's own files, damaged: the commands that read them (generate, translate, export,
attention) refuse them in one line naming the file, exit code 2."""

from pathlib import Path

import pytest
import torch

from experiments.cli import main
from experiments.run.config import load_config, to_yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("command", [["generate", "--prompt", "In the"], ["attention", "--text", "In the"],
                                     ["export", "--hf", "OUT"]])
def test_a_truncated_tokenizer_json_is_one_line_naming_it(tmp_path, capsys, command):
    """It was the ``tokenizers`` library's "EOF while parsing an object at line 177" (no file named)."""
    cfg = load_config([ROOT / "configs" / "experiments" / "lm-bible.yaml"], [f"run.root={tmp_path}"])
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    torch.save({"state_dict": {}}, run_dir / "checkpoints" / "step-00000001.ckpt")
    (run_dir / "tokenizer.json").write_text('{\n  "version": "1.0",\n  "truncation": null,\n  "added_tokens": [\n')
    args = [str(tmp_path / "OUT") if a == "OUT" else a for a in command]
    assert main([args[0], str(run_dir), *args[1:]]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"ablate {args[0]}: {run_dir / 'tokenizer.json'}: not a readable tokenizer file (EOF while")
