"""A report, and the W&B view, use a run only when its run directory, or its copy in the report
folder's ``runs/``, holds the run id the sweep computes for that run: a run made with another
config (the sweep's file or overrides edited since) is listed as ``other configuration``, never
copied, averaged or counted finished; a report folder's copies of another configuration are
replaced by fresh runs, or refused. Synthetic run files, then tiny real sweeps (slow)."""

import json
import shutil

import pytest

from experiments.cli import main
from experiments.report.page import build, rebuild
from experiments.run.rundir import write_status
from experiments.sweep.spec import load_sweep
from tests.experiments.report.test_report import _fake_run
from tests.experiments.sweep.test_status import tiny_sweep

OTHER = "other configuration"


def _states(out):
    return [r["state"] for r in json.loads((out / "report.json").read_text())["runs"]]


def test_a_run_directory_of_another_configuration_is_neither_copied_nor_used(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tiny_sweep(tmp_path, steps=6)
    sweep = load_sweep(path, [f"run.root={tmp_path}/runs"])
    a, b = sweep.runs
    _fake_run(a, 100.0)
    _fake_run(b, 90.0)
    status = json.loads((b.run_dir / "status.json").read_text())
    (b.run_dir / "status.json").write_text(json.dumps({**status, "run_id": "0123456789"}))
    out = tmp_path / "report"
    (out / "runs" / a.name).mkdir(parents=True)
    (out / "runs" / a.name / "test.hyp").write_text("left from an earlier copy\n")
    text = build(sweep, out).read_text()
    assert "1 of 2 runs finished" in text
    assert f"- `{b.name}`: {OTHER} — its run directory holds run 0123456789, the sweep's is {b.run_id}" in text
    assert not (out / "runs" / b.name).exists() and _states(out) == ["completed", OTHER]
    assert sorted(p.name for p in (out / "runs" / a.name).iterdir()) == ["metrics.jsonl", "status.json"]


def test_an_earlier_report_json_of_another_sweep_is_not_read_as_its_runs(tmp_path, monkeypatch):
    """Runs known only from an earlier report.json (no run files kept) are that report's sweep's:
    after the sweep file is edited they are another configuration's."""
    monkeypatch.chdir(tmp_path)
    path = tiny_sweep(tmp_path, steps=6)
    sweep = load_sweep(path, [f"run.root={tmp_path}/runs"])
    for run, ppl in zip(sweep.runs, (100.0, 90.0)):
        _fake_run(run, ppl)
    out = tmp_path / "report"
    build(sweep, out)
    shutil.rmtree(out / "runs")
    shutil.rmtree(tmp_path / "runs")
    assert "2 of these runs were read from an earlier `report.json` only" in rebuild(out).read_text()
    path = tiny_sweep(tmp_path, steps=8)
    text = build(load_sweep(path, [f"run.root={tmp_path}/runs"]), out).read_text()
    assert "0 of 2 runs finished" in text and "read from an earlier" not in text
    assert text.count(f"{OTHER} — known only from an earlier report.json of another sweep file or overrides") == 2
    assert _states(out) == [OTHER, OTHER]


def test_the_wandb_view_shows_the_sweeps_run_ids_only(tmp_path, monkeypatch, capsys):
    path = tiny_sweep(tmp_path, steps=6)
    sweep = load_sweep(path, [f"run.root={tmp_path}/runs"])
    a, b = sweep.runs
    write_status(a.run_dir, "completed", step=6, run_id=a.run_id)
    write_status(b.run_dir, "completed", step=6, run_id="0123456789")
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert main(["wandb-view", str(path), f"run.root={tmp_path}/runs"]) == 0
    assert f"left out of the view: 1 run directory of another configuration (run ids not the sweep's): {b.name}" \
        in capsys.readouterr().out
    spec = json.loads((sweep.root / "wandb-view.json").read_text())
    assert spec["run_ids"] == [a.run_id, b.run_id] and spec["filter"] == {"job_type": sweep.name}
    pytest.importorskip("wandb_workspaces")
    from experiments.report.wandb_view import to_workspace

    assert f"Config(\"run_id\") in {[a.run_id, b.run_id]}" in str(to_workspace(spec, "someone").runset_settings.filters)


@pytest.mark.slow
def test_a_report_of_an_edited_sweep_neither_uses_nor_copies_its_old_runs(tmp_path, monkeypatch):
    """The sweep ran at 6 steps, then its overrides were edited to 8: the report of the 8-step
    sweep is not made of the 6-step runs."""
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"
    path = tiny_sweep(tmp_path, steps=6, root=runs)
    old = load_sweep(path, [f"run.root={runs}"])
    path = tiny_sweep(tmp_path, steps=8)
    sweep = load_sweep(path, [f"run.root={runs}"])
    out = tmp_path / "report"
    assert main(["report", str(path), f"run.root={runs}", "--out", str(out)]) == 0
    text = (out / "README.md").read_text()
    assert "0 of 2 runs finished" in text and "max_steps: 8" in (out / "sweep.yaml").read_text()
    for before, run in zip(old.runs, sweep.runs):
        assert f"- `{run.name}`: {OTHER} — its run directory holds run {before.run_id}, the sweep's is " \
               f"{run.run_id}; not copied" in text
    assert not (out / "runs").exists() and _states(out) == [OTHER, OTHER]


@pytest.mark.slow
def test_a_report_folders_copies_of_another_configuration_are_refused_then_replaced(tmp_path, monkeypatch, capsys):
    """The default report folder (reports/<name>/) holds the copies of the 6-step runs; the sweep is
    edited to 8 steps. With an empty run.root, status and report agree that nothing is done (the
    copies are listed, not used); once the 8-step runs exist, they replace the copies."""
    monkeypatch.chdir(tmp_path)
    path = tiny_sweep(tmp_path, steps=6, root=tmp_path / "old")
    assert main(["report", str(path), f"run.root={tmp_path}/old"]) == 0
    out = tmp_path / "reports" / "edited"
    assert "2 of 2 runs finished" in (out / "README.md").read_text()
    old = load_sweep(path, [f"run.root={tmp_path}/old"])

    path = tiny_sweep(tmp_path, steps=8)
    fresh = tmp_path / "fresh"
    assert main(["status", str(path), f"run.root={fresh}"]) == 0
    assert "0 done · 0 running · 0 failed · 2 to go" in capsys.readouterr().out
    assert main(["report", str(path), f"run.root={fresh}"]) == 0
    text = (out / "README.md").read_text()
    sweep = load_sweep(path, [f"run.root={fresh}"])
    assert "0 of 2 runs finished" in text and _states(out) == [OTHER, OTHER]
    for before, run in zip(old.runs, sweep.runs):
        assert f"- `{run.name}`: {OTHER} — its copy in runs/ is run {before.run_id}, the sweep's is " \
               f"{run.run_id}; not used" in text
        assert "max_steps: 6" in (out / "runs" / run.name / "config.yaml").read_text()  # refused, kept as it was
    assert rebuild(out).read_text() == text  # the folder alone says the same

    tiny_sweep(tmp_path, steps=8, root=fresh)
    assert main(["report", str(path), f"run.root={fresh}"]) == 0
    text = (out / "README.md").read_text()
    assert "2 of 2 runs finished" in text and OTHER not in text and _states(out) == ["completed", "completed"]
    for run in sweep.runs:
        assert json.loads((out / "runs" / run.name / "status.json").read_text())["run_id"] == run.run_id
        assert "max_steps: 8" in (out / "runs" / run.name / "config.yaml").read_text()
