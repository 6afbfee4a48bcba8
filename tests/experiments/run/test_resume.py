"""Exact resume after `kill -9`: the resumed run ends with the same step count and the same final
metrics as an uninterrupted run of the same config (deterministic CPU runs, dropout on)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.slow

# Runs `ablate train`'s code path with one extra callback that SIGKILLs the process after the given
# optimizer step: a real kill -9 at a chosen point of training.
KILLER = """
import os, signal, sys
import lightning as L
from experiments.run.config import load_config
from experiments.run.train import train

class KillAfter(L.Callback):
    def on_train_batch_end(self, trainer, *args):
        if sys.argv[1].isdigit() and trainer.global_step == int(sys.argv[1]):
            os.kill(os.getpid(), signal.SIGKILL)

    def on_test_start(self, trainer, *args):
        if sys.argv[1] == "test":
            os.kill(os.getpid(), signal.SIGKILL)

    def on_test_end(self, trainer, *args):
        if sys.argv[1] == "after-test":
            os.kill(os.getpid(), signal.SIGKILL)

    def on_validation_batch_end(self, trainer, *args):
        if sys.argv[1] == f"validation-{trainer.global_step}" and not trainer.sanity_checking:
            os.kill(os.getpid(), signal.SIGKILL)

paths = [a for a in sys.argv[2:] if "=" not in a]
train(load_config(paths, [a for a in sys.argv[2:] if "=" in a]), extra_callbacks=[KillAfter()])
"""

COMMON = ["logger=none", "trainer.max_steps=60", "model.dropout=0.1", "data.limit_train=300",
          "trainer.enable_progress_bar=false", "task.bleu_every_n_val=3"]
# validation runs at steps 20, 40 and 60; translation decodes at the third only, which a resumed run
# must still count as the third


def _configs(experiment):
    return [ROOT / "configs" / "experiments" / f"{experiment}.yaml", ROOT / "configs" / "debug" / "smoke.yaml"]


CACHE = {}  # one tokenizer cache for the module


def _run(experiment, root, *overrides, kill_after=None):
    env = {**os.environ, "WANDB_MODE": "disabled"}
    args = [*map(str, _configs(experiment)), *COMMON, f"run.root={root}", f"data.cache_dir={CACHE['dir']}",
            *overrides]
    if kill_after is None:
        cmd = [sys.executable, "-m", "experiments.cli", "train", *args]
    else:
        cmd = [sys.executable, "-c", KILLER, str(kill_after), *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _status(root):
    (path,) = root.glob("*/*/status.json")
    return json.loads(path.read_text())


def _losses(root, key="train/loss"):
    (path,) = root.glob("*/*/metrics.jsonl")
    return [(r["step"], r[key]) for r in map(json.loads, path.read_text().splitlines()) if key in r]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Uninterrupted runs, one per experiment."""
    CACHE["dir"] = tmp_path_factory.mktemp("cache")
    found = {}
    for experiment in ("lm-bible", "mt-bible-de-en", "mlm-bible"):
        root = tmp_path_factory.mktemp("ref") / "runs"
        result = _run(experiment, root)
        assert result.returncode == 0, result.stderr[-2000:]
        found[experiment] = root
    return found


@pytest.mark.parametrize("experiment, every, kill_after, corrupt_newest", [
    ("lm-bible", 20, 50, False),  # resumes mid-epoch from step 40
    ("lm-bible", 9, 50, False),  # an epoch is 9 batches: resumes from the checkpoint after an epoch's last batch
    ("lm-bible", 20, 50, "truncated"),  # the newest checkpoint is cut short: falls back to step 20
    ("lm-bible", 20, 50, "overwritten"),  # 4 KiB overwritten inside it (its CRCs fail): falls back to step 20
    ("mt-bible-de-en", 20, 35, False),  # token-budget batches, resumes from step 20
    ("mlm-bible", 20, 50, False),  # masked at each step: the resumed steps mask exactly as before
    ("lm-bible", 20, "test", False),  # killed while testing: resumes from the final checkpoint, tests only
    # killed after its test was logged, before the final status: tests again, the test logged once
    ("lm-bible", 20, "after-test", False),
    # killed in a validation due at a checkpoint's step: that step is saved only after its
    # validation (Lightning would not repeat a validation due at a checkpoint's step), so the run
    # resumes from the checkpoint before and validates that step again
    ("lm-bible", 20, "validation-60", False),
    ("lm-bible", 20, "validation-40", False),
    ("mt-bible-de-en", 20, "validation-40", False),
], ids=["lm-mid-epoch", "lm-epoch-end", "lm-truncated-checkpoint", "lm-overwritten-checkpoint", "mt-mid-epoch", "mlm-mid-epoch",
        "lm-killed-in-test", "lm-killed-after-test", "lm-killed-in-last-validation", "lm-killed-in-validation", "mt-killed-in-validation"])
def test_kill9_then_rerun_equals_uninterrupted(reference, tmp_path, experiment, every, kill_after, corrupt_newest):
    root = tmp_path / "runs"
    killed = _run(experiment, root, f"checkpoint.every_n_steps={every}", kill_after=kill_after)
    assert killed.returncode == -9
    assert _status(root)["state"] == "running"  # what a killed process leaves behind
    if kill_after == "after-test":  # the case: its test is in metrics.jsonl already
        assert _losses(root, "test/ppl")
    (ckpt_dir,) = root.glob("*/*/checkpoints")
    saved = sorted(ckpt_dir.glob("step-*.ckpt"))
    if corrupt_newest == "truncated":
        data = saved[-1].read_bytes()
        saved[-1].write_bytes(data[: len(data) // 3])
    elif corrupt_newest == "overwritten":  # damage on disk: the zip listing is intact, the weights are not
        with open(saved[-1], "r+b") as f:
            f.seek(saved[-1].stat().st_size // 2)
            f.write(os.urandom(4096))
    expected_from = int((saved[-2] if corrupt_newest else saved[-1]).stem.split("-")[1])

    resumed = _run(experiment, root, f"checkpoint.every_n_steps={every}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"(step {expected_from})" in resumed.stdout
    if corrupt_newest:
        assert f"{saved[-1]}: incomplete or corrupt checkpoint" in resumed.stderr

    ref, got = _status(reference[experiment]), _status(root)
    assert got["state"] == "completed" and got["step"] == ref["step"] == 60
    assert {"val/loss", "val/ppl", "perf/tokens_per_s_median", "perf/mfu_median"} <= set(got["metrics"])
    assert got["resumed_from_step"] == expected_from
    assert got["metrics"]["val/loss"] == pytest.approx(ref["metrics"]["val/loss"], abs=1e-5)
    keys = {"lm-bible": ["test/ppl"], "mlm-bible": ["test/ppl", "test/acc"]}.get(experiment, ["test/bleu", "val/bleu"])
    for key in keys:
        assert got["metrics"][key] == pytest.approx(ref["metrics"][key], abs=1e-5), key
    # the curves too: every step and every validation logged once, with the uninterrupted run's values
    for key in ("train/loss", "val/loss"):
        ref_losses, losses = _losses(reference[experiment], key), _losses(root, key)
        assert [s for s, _ in losses] == [s for s, _ in ref_losses], key
        assert [v for _, v in losses] == pytest.approx([v for _, v in ref_losses], abs=1e-5), key
    assert len(_losses(root, keys[0])) == len(_losses(reference[experiment], keys[0])) == 1  # tested once
