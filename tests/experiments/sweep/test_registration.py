"""Pre-registration: the baseline, findings, seeds, tuning rule and budget written into the manifest at
the sweep's first launch, never rewritten; a later change appended with its time and the number
of runs finished by then; the report says which."""

import json
from pathlib import Path

from experiments.report.page import build
from experiments.run.rundir import write_status
from experiments.sweep import registration
from experiments.sweep.launchers.base import write_manifest
from experiments.sweep.spec import load_sweep

ROOT = Path(__file__).resolve().parents[3]
SWEEP = f"""configs: [{ROOT}/configs/experiments/lm-bible.yaml, {ROOT}/configs/debug/smoke.yaml]
name: prereg
grid: {{model.ffn: [relu, gelu]}}
seeds: [0, 1]
baseline: {{model.ffn: BASE}}
findings:
  - claim: "GELU beats ReLU"
    variant: {{model.ffn: gelu}}
    metric: test/ppl
    expect: lower
"""


def _write(folder, base="relu"):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "sweep.yaml"
    path.write_text(SWEEP.replace("BASE", base))
    return path


def _launch(tmp_path, base="relu"):
    sweep = load_sweep(_write(tmp_path, base), [f"run.root={tmp_path}/runs"])
    write_manifest(sweep)
    return sweep, json.loads((sweep.root / "sweep.json").read_text())["registration"]


def test_the_first_launch_registers_and_an_unchanged_relaunch_keeps_it(tmp_path):
    sweep, first = _launch(tmp_path)
    assert first["registered"]["baseline"] == sweep.baseline and first["registered"]["finished_runs"] == 0
    assert first["registered"]["findings"][0]["claim"] == "GELU beats ReLU" and first["changes"] == []
    _, again = _launch(tmp_path)
    assert again == first  # the time of registration is the first launch's
    assert "before any run of the verdicts had finished; they have not changed since" in " ".join(registration.describe(again))


def test_a_baseline_changed_after_results_is_recorded_and_reported(tmp_path):
    sweep, first = _launch(tmp_path)
    for run in sweep.runs:
        if run.seed == 0:
            write_status(run.run_dir, "completed", step=40, run_id=run.run_id,
                         metrics={"val/ppl": 10.0, "test/ppl": 11.0 if "relu" in run.variant else 9.0})
    sweep, changed = _launch(tmp_path, base="gelu")
    assert changed["registered"] == first["registered"]
    (change,) = changed["changes"]
    assert change["finished_runs"] == 2 and change["baseline"] == sweep.baseline != first["registered"]["baseline"]
    text = build(sweep, tmp_path / "report").read_text()
    assert "## Pre-registration" in text and "They changed 1 time(s) afterwards" in text
    assert "with 2 run(s) of the verdicts finished: baseline changed" in text
    assert json.loads((tmp_path / "report" / registration.REGISTRATION_FILE).read_text()) == changed
    assert build(load_sweep(tmp_path / "report" / "sweep.yaml", [f"run.root={tmp_path}/nowhere"]),
                 tmp_path / "report").read_text().count("They changed 1 time(s)") == 1  # kept in the folder
    assert "They changed 1 time(s) afterwards" in build(sweep, tmp_path / "report").read_text()  # rebuilt: once
    assert json.loads((tmp_path / "report" / registration.REGISTRATION_FILE).read_text()) == changed


def test_a_report_of_a_sweep_launched_before_registration_says_so(tmp_path):
    assert registration.describe(None)[0].startswith("Not pre-registered")


def test_two_parts_of_a_sweep_keep_the_first_registration_and_the_others_change(tmp_path):
    """A part run elsewhere without --resume-from registers anew: the report keeps the earlier
    registration, and the later one's different terms show as a change."""
    for part in "abc":
        (tmp_path / part).mkdir()
    _, first = _launch(tmp_path / "a")
    _, same = _launch(tmp_path / "b")
    _, other = _launch(tmp_path / "c", base="gelu")
    first["registered"]["at"] = "2026-01-01 00:00:00 UTC"  # the earlier part
    assert registration.merge(first, same) == first and registration.merge(same, first) == first
    merged = registration.merge(other, first)
    assert merged["registered"] == first["registered"] and merged["changes"] == [other["registered"]]


def test_merging_a_registration_with_itself_or_its_earlier_copy_adds_nothing(tmp_path):
    """A report rebuilt from its runs merges its copy with the manifest, the same registration: its
    changes are taken once, not appended again."""
    relu, gelu = (load_sweep(_write(tmp_path / base, base), [f"run.root={tmp_path}/runs"])
                  for base in ("relu", "gelu"))
    first = registration.update(None, relu, now=1_000.0)  # launches seconds apart, as real ones are
    changed = registration.update(first, gelu, now=1_010.0)
    back = registration.update(changed, relu, now=1_020.0)
    assert [c["baseline"].rsplit("-", 1)[1] for c in back["changes"]] == ["gelu", "relu"]
    assert registration.merge(back, back) == back
    assert registration.merge(changed, back) == back and registration.merge(back, changed) == back
    assert registration.merge(first, back) == back
    assert "They changed 2 time(s)" in registration.describe(registration.merge(back, back))[0]
