"""Reading a run's metrics.jsonl: torn and undecodable lines are skipped, never an error. ``ablate
status`` shows a run directory of another configuration (another run id than the sweep's) as such,
never as the sweep's run; a tiny real sweep whose overrides were edited after it ran (slow)."""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest

from experiments.cli import main
from experiments.run.rundir import metric_lines, metric_records, write_status
from experiments.sweep.launchers.base import plan
from experiments.sweep.spec import SweepError, load_sweep

ROOT = Path(__file__).resolve().parents[3]
TINY = f"""configs: [{ROOT}/configs/experiments/lm-bible.yaml, {ROOT}/configs/debug/smoke.yaml]
name: edited
overrides: {{trainer.max_steps: 6, trainer.val_check_interval: 6, checkpoint.every_n_steps: 6, logger: none,
            data.limit_train: 200, data.limit_eval: 16}}
grid: {{model.ffn: [relu, swiglu]}}
seeds: [0]
baseline: {{model.ffn: relu}}
"""


def tiny_sweep(tmp_path: Path, steps: int, root: Optional[Path] = None) -> Path:
    """The two-run sweep file ``tmp_path/edited.yaml`` at ``steps`` training steps; with ``root``,
    first run for real there (``ablate sweep``, seconds)."""
    path = tmp_path / "edited.yaml"
    path.write_text(TINY.replace("max_steps: 6", f"max_steps: {steps}"))
    if root is not None:
        result = subprocess.run([sys.executable, "-m", "experiments.cli", "sweep", str(path), f"run.root={root}",
                                 "--workers", "2"], cwd=ROOT, capture_output=True, text=True, timeout=900,
                                env={**os.environ, "WANDB_MODE": "disabled"})
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return path


def test_torn_and_undecodable_lines_are_skipped_with_a_warning(tmp_path):
    good = [{"step": 1, "train/loss": 5.0}, {"step": 2, "train/loss": 4.0}]
    (tmp_path / "metrics.jsonl").write_bytes(
        json.dumps(good[0]).encode() + b"\n" + b'{"step": 9, "x": "\xff\xfe"}\n' + json.dumps(good[1]).encode()
        + b'\n{"step": 3, "train/lo')
    with pytest.warns(UserWarning, match="1 line"):
        assert list(metric_records(tmp_path)) == good
    with pytest.warns(UserWarning):
        lines = metric_lines(tmp_path / "metrics.jsonl")
    assert [record for _, record in lines] == [good[0], good[1], None]  # the torn line is kept as None


def test_resume_trims_the_metrics_past_its_checkpoint_and_drops_undecodable_lines(tmp_path):
    from experiments.run.train import _keep_metrics_up_to

    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"step": 1}\n\xff\xff\n{"step": 5}\n{"step": 9}\n{"step": 1')
    with pytest.warns(UserWarning):
        _keep_metrics_up_to(tmp_path, 5)
    assert path.read_text() == '{"step": 1}\n{"step": 5}\n'


def test_resume_drops_a_test_record_logged_before_the_kill(tmp_path):
    """Killed after its test was logged but before its final status was written, a run resumes
    from its final checkpoint (the test's step) and tests again: the first test record goes, so
    the test appears once (found by the fault-injection sweep)."""
    from experiments.run.train import _keep_metrics_up_to

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 59, "val/ppl": 9.0}\n{"step": 60, "perf/mfu": 0.4}\n{"step": 60, "test/ppl": 9.5}\n')
    _keep_metrics_up_to(tmp_path, 60)
    assert path.read_text() == '{"step": 59, "val/ppl": 9.0}\n{"step": 60, "perf/mfu": 0.4}\n'


def test_a_run_started_afresh_drops_what_a_killed_attempt_logged(tmp_path):
    """Killed before its first checkpoint, a run starts again from step 0: the steps its first
    attempt logged are logged again, so the old lines go (found by the fault-injection sweep)."""
    from experiments.run.config import load_config
    from experiments.run.train import _resume_point

    cfg = load_config([], [f"run.root={tmp_path}", "logger=none"])
    cfg.run_dir.mkdir(parents=True)
    (cfg.run_dir / "metrics.jsonl").write_text('{"step": 4, "train/loss": 6.0}\n{"step": 9, "train/lo')
    assert _resume_point(cfg, lead=True) is None
    assert (cfg.run_dir / "metrics.jsonl").read_text() == ""


def test_a_run_directory_of_another_configuration_is_not_the_sweeps_run(tmp_path, capsys):
    path = tiny_sweep(tmp_path, steps=6)
    a, b = load_sweep(path, [f"run.root={tmp_path}/runs"]).runs
    write_status(a.run_dir, "completed", step=6, run_id=a.run_id, metrics={"val/ppl": 9.0})
    write_status(b.run_dir, "completed", step=6, run_id="0123456789", metrics={"val/ppl": 8.0})
    assert main(["status", str(path), f"run.root={tmp_path}/runs"]) == 0
    out = capsys.readouterr().out
    assert "1 done · 0 running · 0 failed · 1 of another configuration · 0 to go" in out
    assert f"{b.name}: its directory holds run 0123456789, the sweep's is {b.run_id}" in out
    row = next(line for line in out.splitlines() if line.startswith(b.name))
    assert row.split()[1:3] == ["other", "configuration"] and "8" not in row  # neither its step nor its metric


@pytest.mark.slow
def test_status_of_an_edited_sweep_shows_its_old_runs_as_another_configuration(tmp_path, capsys):
    """The sweep ran at 6 steps, then its overrides were edited to 8: ``ablate sweep`` refuses the
    old directories, and ``ablate status`` does not show them as the sweep's runs (completed 6/8)."""
    runs = tmp_path / "runs"
    path = tiny_sweep(tmp_path, steps=6, root=runs)
    assert main(["status", str(path), f"run.root={runs}"]) == 0
    assert "2 done · 0 running · 0 failed · 0 to go" in capsys.readouterr().out
    tiny_sweep(tmp_path, steps=8)
    with pytest.raises(SweepError, match="another configuration"):
        plan(load_sweep(path, [f"run.root={runs}"]))
    assert main(["status", str(path), f"run.root={runs}"]) == 0
    out = capsys.readouterr().out
    assert "completed" not in out and "6/8" not in out
    assert "0 done · 0 running · 0 failed · 2 of another configuration · 0 to go" in out
    assert "ablate sweep refuses their directories; use another run.root, or delete them" in out
    assert main(["status", str(path), f"run.root={tmp_path}/empty"]) == 0  # the fix ablate sweep suggests
    assert "0 done · 0 running · 0 failed · 2 to go" in capsys.readouterr().out


def test_an_interrupted_run_shows_the_checkpoint_a_resume_starts_from(tmp_path, capsys):
    """The step column of an interrupted run gives its last logged step and, when they differ, the
    newest checkpoint's step: where ``ablate sweep`` starts it again."""
    from lit.checkpointing import checkpoint_name

    path = tiny_sweep(tmp_path, steps=6)
    a, b = load_sweep(path, [f"run.root={tmp_path}/runs"]).runs
    write_status(a.run_dir, "interrupted", step=5, run_id=a.run_id)
    (a.run_dir / "metrics.jsonl").write_text('{"step": 5, "train/loss": 6.0}\n')
    (a.run_dir / "checkpoints").mkdir()
    (a.run_dir / "checkpoints" / checkpoint_name(3)).write_bytes(b"")
    write_status(b.run_dir, "interrupted", step=2, run_id=b.run_id)  # killed before its first checkpoint
    assert main(["status", str(path), f"run.root={tmp_path}/runs"]) == 0
    out = capsys.readouterr().out
    row_a = next(line for line in out.splitlines() if line.startswith(a.name))
    row_b = next(line for line in out.splitlines() if line.startswith(b.name))
    assert "5/6 (ckpt 3)" in row_a and "2/6 (ckpt 0)" in row_b
    assert "(ckpt N): the newest checkpoint, where the run starts again when resumed" in out
