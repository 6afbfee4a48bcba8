"""``ablate sweep --resume-from REPORT_DIR``: a sweep run in parts across machines or sessions
gets its committed finished runs (and tuning record) back, and runs only what is left."""

import json
import shutil

from experiments.cli import main
from experiments.report.collect import restore, restore_choices
from experiments.report.page import build
from experiments.sweep import tuning
from experiments.sweep.launchers.base import plan
from tests.experiments.sweep.test_tuning import _finish, _sweep


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
