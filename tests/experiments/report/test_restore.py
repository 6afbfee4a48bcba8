"""``ablate sweep --resume-from REPORT_DIR``: a sweep run in parts across machines or sessions
gets its committed finished runs (and tuning record) back, and runs only what is left."""

import json
import shutil

import pytest

from experiments.cli import main
from experiments.report.collect import restore, restore_choices
from experiments.report.page import build
from experiments.sweep import tuning
from experiments.sweep.launchers.base import plan
from tests.experiments.sweep.test_tuning import TUNED, _finish, _sweep


def _half_done_report(tmp_path):
    sweep = _sweep(tmp_path)
    for i, run in enumerate(sweep.tune_runs):
        _finish(run, 100.0 + i)
    tuning.record_sweep(sweep)
    sweep = _sweep(tmp_path)
    _finish(sweep.runs[0], 90.0, test_ppl=91.0)  # one confirmation run done, three to go
    build(sweep, tmp_path / "report")
    shutil.rmtree(tmp_path / "runs")  # another machine, another session: only the report folder is left
    return sweep


def test_a_report_folder_gives_back_its_finished_runs_and_tuning_record(tmp_path):
    before = _half_done_report(tmp_path)
    sweep = _sweep(tmp_path)
    assert all(r.awaiting for r in sweep.runs)  # no tuning record here any more
    assert restore_choices(sweep, tmp_path / "report")
    sweep = _sweep(tmp_path)
    assert [r.run_id for r in sweep.runs] == [r.run_id for r in before.runs]
    restored, refused = restore(sweep, tmp_path / "report")
    assert len(restored) == len(sweep.tune_runs) + 1 and not refused
    todo, skipped = plan(sweep.stage("confirm"), False)
    assert {r.name for r in todo} == {r.name for r in sweep.runs[1:]} and list(skipped) == [sweep.runs[0].name]
    assert restore(sweep, tmp_path / "report") == ([], [])  # nothing restored twice


def test_a_copy_made_with_another_config_is_not_restored(tmp_path):
    _half_done_report(tmp_path)
    status = tmp_path / "report" / "runs" / _sweep(tmp_path).tune_runs[0].name / "status.json"
    status.write_text(json.dumps({**json.loads(status.read_text()), "run_id": "someone-else"}))
    sweep = _sweep(tmp_path)
    restored, refused = restore(sweep, tmp_path / "report")
    assert len(refused) == 1 and "someone-else" in refused[0] and sweep.tune_runs[0].name not in restored


def test_resume_from_a_folder_without_runs_is_refused(tmp_path, capsys):
    _sweep(tmp_path)
    code = main(["sweep", str(tmp_path / "sweep.yaml"), f"run.root={tmp_path}/runs", "--resume-from",
                 str(tmp_path / "nowhere")])
    assert code == 2 and "not a report folder" in capsys.readouterr().err


def test_a_report_of_another_sweep_or_grid_is_refused_before_anything_is_written(tmp_path):
    from experiments.sweep.spec import SweepError

    _half_done_report(tmp_path)
    summary = tmp_path / "report" / "report.json"
    text = summary.read_text()
    summary.write_text(json.dumps({**json.loads(text), "name": "another"}))
    with pytest.raises(SweepError, match="a report of sweep another, not of tuned"):
        restore_choices(_sweep(tmp_path), tmp_path / "report")
    summary.write_text(text)
    regridded = TUNED.replace("[1.0e-4, 1.0e-3, 1.0e-2]", "[1.0e-4, 1.0e-3]")
    with pytest.raises(SweepError, match="its choices were made with tune.grid"):
        restore_choices(_sweep(tmp_path, regridded), tmp_path / "report")
    assert not (tmp_path / "runs" / "tuned" / "tuning.json").exists() and not (tmp_path / "runs").exists()


def test_a_stale_copy_is_listed_not_averaged(tmp_path):
    """A copy in the report made with another config than the sweep's run of that name (here, a
    confirmation run copied from another tuning choice) is not read as that run."""
    _half_done_report(tmp_path)
    sweep = _sweep(tmp_path)
    restore_choices(sweep, tmp_path / "report")
    sweep = _sweep(tmp_path)
    status = tmp_path / "report" / "runs" / sweep.runs[0].name / "status.json"
    status.write_text(json.dumps({**json.loads(status.read_text()), "run_id": "made-elsewhere"}))
    text = build(sweep, tmp_path / "report").read_text()
    assert f"`{sweep.runs[0].name}`: other configuration — its copy in runs/ is run made-elsewhere" in text
