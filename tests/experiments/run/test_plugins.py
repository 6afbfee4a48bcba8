"""A researcher's own component, registered from their own module through ``plugins``: a run
trains with it, names it and its setting like a built-in one, and its config.yaml reproduces it."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from experiments.cli import main

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.slow
def test_a_component_from_a_plugin_module_trains_and_is_named_like_a_built_in_one(tmp_path):
    # a fresh interpreter: a registry cannot unregister, and the plugin must arrive through the config
    script = textwrap.dedent(f"""
        import json, sys
        from pathlib import Path
        from experiments.cli import main
        from experiments.run.config import load_config, run_id
        from variants import build_model

        root = Path({str(tmp_path)!r}) / "runs"
        args = ["train", "configs/experiments/lm-bible.yaml", "configs/debug/smoke.yaml", f"run.root={{root}}",
                "logger=none", "data.cache_dir={tmp_path}/cache", "trainer.max_steps=4", "trainer.val_check_interval=4",
                "checkpoint.every_n_steps=4", "data.limit_train=300", "data.limit_eval=16", "perf.peak_flops=1e11",
                "plugins=[tests.plugins.lab_components]", "model.ffn=scaled_gelu", "model.ffn_scale=0.5"]
        assert main(args) == 0
        (run_dir,) = (root / "lm-bible").iterdir()
        status = json.loads((run_dir / "status.json").read_text())
        cfg = load_config([run_dir / "config.yaml"])  # the run's own record, plugin included
        model = build_model(cfg.model.replace(vocab_size=cfg.derived.vocab_size, pad_id=cfg.derived.pad_id))
        print(json.dumps({{"name": run_dir.name, "state": status["state"], "same_id": run_id(cfg) == status["run_id"],
                          "fingerprint": model.fingerprint()["ffn"], "tags": cfg.model.components_name()}}))
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env={**__import__("os").environ, "WANDB_MODE": "disabled"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found == {"name": "layernorm-pre-learned-scaled_gelu-scale0.5-s0", "state": "completed", "same_id": True,
                     "fingerprint": "scaled_gelu(ffn_scale=0.5)", "tags": "layernorm-pre-learned-scaled_gelu-scale0.5"}


def test_a_plugin_that_cannot_be_imported_is_refused_by_key(capsys):
    assert main(["train", "plugins=[no_such_lab.components]"]) == 2
    err = capsys.readouterr().err
    assert "key 'plugins': cannot import 'no_such_lab.components'" in err


def test_a_setting_of_an_unchosen_component_is_refused_before_any_work(capsys):
    assert main(["train", "model.n_kv_heads=2"]) == 2
    assert "model.n_kv_heads is an option of attention 'gqa'" in capsys.readouterr().err
