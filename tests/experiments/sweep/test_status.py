"""Reading a run's metrics.jsonl: torn and undecodable lines are skipped, never an error."""

import json

import pytest

from experiments.run.rundir import metric_lines, metric_records


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
