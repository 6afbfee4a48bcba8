"""``ablate reproduce`` compares a re-run only with committed numbers of the same run: a committed
copy made with another config (another run id than the sweep's) is not compared, nor counted in
the seed noise (synthetic run files; the re-runs are written, not trained)."""

import json

import experiments.reproduce
from experiments.report.page import build
from experiments.reproduce import reproduce
from experiments.sweep.spec import load_sweep
from tests.experiments.report.test_report import BASE, _fake_run

PPL = {0: 100.0, 1: 110.0}


def _report(tmp_path, monkeypatch):
    (tmp_path / "s.yaml").write_text(BASE + "name: again\ngrid: {model.ffn: [relu, swiglu]}\nseeds: [0, 1]\n"
                                            "baseline: {model.ffn: relu}\n")
    monkeypatch.chdir(tmp_path)
    sweep = load_sweep(tmp_path / "s.yaml", [f"run.root={tmp_path}/runs"])
    for run in sweep.runs:
        _fake_run(run, PPL[run.seed])
    build(sweep, tmp_path / "report")
    monkeypatch.setattr(experiments.reproduce, "run_local",
                        lambda sweep, workers: [_fake_run(run, PPL[run.seed]) for run in sweep.runs])
    return sweep, tmp_path / "report"


def test_every_run_of_the_same_configuration_is_compared(tmp_path, monkeypatch, capsys):
    _, folder = _report(tmp_path, monkeypatch)
    assert reproduce(folder, str(tmp_path / "again"), None) == 0
    out = capsys.readouterr().out
    assert out.count("identical") == 4 * len(json.loads((folder / "report.json").read_text())["metrics"])


def test_a_committed_copy_of_another_configuration_is_not_compared(tmp_path, monkeypatch, capsys):
    sweep, folder = _report(tmp_path, monkeypatch)
    stale = folder / "runs" / sweep.runs[1].name / "status.json"
    stale.write_text(json.dumps({**json.loads(stale.read_text()), "run_id": "0123456789"}))
    assert reproduce(folder, str(tmp_path / "again"), None) == 1
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(sweep.runs[1].name))
    assert line.endswith(f"other configuration: the committed copy is run 0123456789, the sweep's is "
                         f"{sweep.runs[1].run_id}; not compared")


def test_the_time_it_will_take_is_said_before_the_runs_start(tmp_path, monkeypatch, capsys):
    """From the committed copies' wall_s (10 s each here) and machine, for the runs still to train."""
    sweep, folder = _report(tmp_path, monkeypatch)
    printed = []
    monkeypatch.setattr(experiments.reproduce, "run_local",
                        lambda sweep, workers: printed.append(capsys.readouterr().out))
    reproduce(folder, str(tmp_path / "again"), 2)
    assert printed == ["4 of 4 run(s) to train: the committed runs took 40 s of run time (longest 10 s), about "
                       "20 s with 2 worker(s) on a machine like theirs (test machine)\n"]
    _fake_run(load_sweep(folder / "sweep.yaml", [f"run.root={tmp_path}/again"]).runs[0], 100.0)
    reproduce(folder, str(tmp_path / "again"), 2)
    assert printed[1].splitlines()[-1].startswith("3 of 4 run(s) to train: the committed runs took 30 s")
