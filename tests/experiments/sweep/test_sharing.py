"""Several runs per GPU (``ablate sweep --runs-per-gpu K``): the device assignment on fake lists of
devices, the memory share, out-of-memory reporting, the MPS daemon's start and fallback, and the
choice of K for ``auto``; end to end on CPU with a fake device list (the runs train on the CPU)."""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from experiments.sweep.launchers.local import _slots
from experiments.run.gpu_memory import MEMORY_FRACTION_ENV, describe_failure, memory_fraction
from experiments.sweep.sharing import Mps, choose_runs_per_gpu, parse_runs_per_gpu, probe_result
from experiments.sweep.spec import SweepError, load_sweep
from experiments.run.rundir import read_status

ROOT = Path(__file__).resolve().parents[3]
SMOKE = ROOT / "configs" / "sweeps" / "smoke.yaml"


@pytest.mark.parametrize("visible, gpus_per_run, k, workers, expected", [
    ("0,1", 1, 1, None, ["0", "1"]),
    ("0,1", 1, 3, None, ["0", "1", "0", "1", "0", "1"]),  # round-robin: the first runs spread out
    ("0,1", 1, 3, 4, ["0", "1", "0", "1"]),
    ("0,1,2,3", 2, 2, None, ["0,1", "2,3", "0,1", "2,3"]),
    ("GPU-aa,GPU-bb", 1, 2, 1, ["GPU-aa"]),
    ("3", 1, 8, None, ["3"] * 8),
], ids=["one-each", "three-each", "workers-cap", "two-gpu-runs", "uuids", "eight-on-one"])
def test_runs_share_the_visible_gpus_round_robin(monkeypatch, visible, gpus_per_run, k, workers, expected):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    slots = _slots(workers, gpus_per_run, k)
    assert [s["CUDA_VISIBLE_DEVICES"] for s in slots] == expected
    if k == 1:
        assert all(MEMORY_FRACTION_ENV not in s for s in slots)
    else:
        assert all(float(s[MEMORY_FRACTION_ENV]) == pytest.approx(1 / k) for s in slots)


def test_runs_per_gpu_without_a_gpu_is_refused(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(SweepError, match=r"--runs-per-gpu 2: no GPU is visible.*--workers"):
        _slots(None, 1, 2)
    assert len(_slots(2, 1, 1)) == 2  # K = 1 on CPU: the CPU workers as before


@pytest.mark.parametrize("text, expected", [("1", 1), ("8", 8), ("auto", None)])
def test_runs_per_gpu_values(text, expected):
    assert parse_runs_per_gpu(text) == expected


@pytest.mark.parametrize("text", ["0", "9", "two", "1.5", ""])
def test_bad_runs_per_gpu_values_are_refused(text):
    with pytest.raises(SweepError, match="--runs-per-gpu"):
        parse_runs_per_gpu(text)


def test_a_bad_runs_per_gpu_fails_the_sweep_before_anything_runs(tmp_path):
    result = subprocess.run([sys.executable, "-m", "experiments.cli", "sweep", str(SMOKE), f"run.root={tmp_path}",
                             "--runs-per-gpu", "12"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "--runs-per-gpu 12: expected 1 to 8" in result.stderr
    assert "Traceback" not in result.stderr and not any(tmp_path.iterdir())


@pytest.mark.parametrize("value, expected", [("", None), ("0.25", 0.25), ("1", 1.0)])
def test_memory_fraction_from_the_environment(value, expected):
    assert memory_fraction({MEMORY_FRACTION_ENV: value}) == expected


@pytest.mark.parametrize("value", ["0", "1.5", "half", "-0.1", "nan"])
def test_a_bad_memory_fraction_names_the_variable(value):
    with pytest.raises(ValueError, match=MEMORY_FRACTION_ENV):
        memory_fraction({MEMORY_FRACTION_ENV: value})


def test_a_bad_memory_fraction_refuses_the_run_before_any_work(tmp_path):
    env = {**os.environ, "WANDB_MODE": "disabled", MEMORY_FRACTION_ENV: "half"}
    configs = [ROOT / "configs" / "experiments" / "lm-bible.yaml", ROOT / "configs" / "debug" / "smoke.yaml"]
    result = subprocess.run([sys.executable, "-m", "experiments.cli", "train", *map(str, configs),
                             f"run.root={tmp_path}", f"data.cache_dir={tmp_path}/cache"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and f"{MEMORY_FRACTION_ENV}='half'" in result.stderr
    assert not (tmp_path / "cache").exists()  # no tokenizer was trained
    (status,) = tmp_path.glob("*/*/status.json")
    assert json.loads(status.read_text())["state"] == "failed"


@pytest.mark.parametrize("fraction", [None, "0.25"])
def test_out_of_memory_is_reported_as_such(monkeypatch, fraction):
    if fraction is None:
        monkeypatch.delenv(MEMORY_FRACTION_ENV, raising=False)
    else:
        monkeypatch.setenv(MEMORY_FRACTION_ENV, fraction)
    text = describe_failure(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore"))
    assert text.startswith("out of memory: CUDA out of memory. Tried to allocate 2.00 GiB")
    assert ("--runs-per-gpu" in text) == (fraction is not None) and "more" not in text
    assert describe_failure(RuntimeError("shapes differ")) == "RuntimeError('shapes differ')"


def _fake_mps(tmp_path, code=0, stderr=""):
    """A stand-in ``nvidia-cuda-mps-control`` that records how it was called."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / Mps.EXECUTABLE
    script.write_text("#!/bin/sh\n"
                      f'echo "$@|$CUDA_MPS_PIPE_DIRECTORY|$(cat -)" >> {tmp_path}/calls\n'
                      f'echo "{stderr}" >&2\nexit {code}\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(bin_dir)


def test_mps_daemon_is_started_for_the_sweep_and_stopped(tmp_path):
    mps = Mps()
    how = mps.start({**os.environ, "PATH": _fake_mps(tmp_path)})
    assert how.startswith("CUDA MPS")
    pipe = mps.client_env()["CUDA_MPS_PIPE_DIRECTORY"]
    assert Path(pipe).is_dir() and len(pipe) < 80  # a Unix socket path must stay short
    start = (tmp_path / "calls").read_text().splitlines()
    assert start == [f"-d|{pipe}|"]
    mps.stop()
    assert (tmp_path / "calls").read_text().splitlines()[1] == f"|{pipe}|quit"
    assert not Path(pipe).exists() and mps.client_env() == {}


@pytest.mark.parametrize("case", ["absent", "fails", "disabled"])
def test_without_mps_the_runs_time_share(tmp_path, case):
    env = {**os.environ, "PATH": str(tmp_path)}
    if case == "fails":
        env["PATH"] = _fake_mps(tmp_path, code=1, stderr="cannot open /dev/nvidia0")
    if case == "disabled":
        env.update(PATH=_fake_mps(tmp_path), ABLATE_MPS="0")
    mps = Mps()
    how = mps.start(env)
    assert how.startswith("time-sharing") and mps.client_env() == {}
    expected = {"absent": "not on PATH", "fails": "did not start: cannot open /dev/nvidia0",
                "disabled": "ABLATE_MPS=0"}[case]
    assert expected in how
    mps.stop()  # nothing to stop


@pytest.mark.parametrize("peak_mb, device_mb, mfu, k", [
    (1_000, 81_559, 0.004, 8),  # a small model: memory and compute both leave room for 8
    (30_000, 81_559, 0.05, 2),  # memory allows 2
    (1_000, 81_559, 0.30, 1),  # one run already keeps the device busy
    (1_000, 81_559, 0.15, 2),
    (100_000, 81_559, None, 1),  # larger than the device: never 0
    (2_000, 24_000, None, 7),  # MFU unknown: memory alone
], ids=["small", "memory-bound", "compute-bound", "two-by-compute", "too-large", "mfu-unknown"])
def test_auto_picks_k_from_the_probe(peak_mb, device_mb, mfu, k):
    chosen, why = choose_runs_per_gpu(peak_mb, device_mb, mfu)
    assert chosen == k and why.endswith(f"{k} run(s) per GPU")


def test_a_failed_probe_says_why():
    assert probe_result({"state": "completed", "metrics": {"perf/peak_mem_mb": 900.0, "perf/mfu_median": 0.01}}) \
        == (900.0, 0.01)
    with pytest.raises(SweepError, match="probe run ended 'failed': boom; give K"):
        probe_result({"state": "failed", "error": "boom"})


@pytest.mark.slow
def test_a_sweep_with_two_runs_per_fake_gpu_runs_them_side_by_side(tmp_path):
    """One fake GPU id on a CPU machine: both workers get it, with half its memory each, and the
    runs (on the CPU) complete; MPS is absent here, so the sweep says it time-shares."""
    env = {**os.environ, "WANDB_MODE": "disabled", "CUDA_VISIBLE_DEVICES": "0", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "experiments.cli", "sweep", str(SMOKE), f"run.root={tmp_path}",
                             f"data.cache_dir={tmp_path}/cache", "--runs-per-gpu", "2"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 worker(s) (GPU 0; up to 2 runs per GPU, time-sharing" in result.stdout
    assert "(worker 0," in result.stdout and "(worker 1," in result.stdout
    sweep = load_sweep(SMOKE, [f"run.root={tmp_path}"])
    assert {read_status(r.run_dir)["state"] for r in sweep.runs} == {"completed"}


@pytest.mark.slow
def test_auto_probes_the_first_run_then_picks_k(tmp_path, monkeypatch, capsys):
    """The probe trains the first run to go for real (here on the CPU, behind a fake GPU id whose
    memory is given), in a temporary directory that it leaves behind clean."""
    from experiments.sweep.launchers import local as launchers

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setattr(launchers, "device_memory_mb", lambda gpu: 81_559.0)
    sweep = load_sweep(SMOKE, [f"run.root={tmp_path}", f"data.cache_dir={tmp_path}/cache"])
    todo, _ = launchers.plan(sweep)
    k = launchers._probe_runs_per_gpu(sweep, todo, 1, sys.executable, launchers._Progress(sweep, len(sweep.runs)))
    out = capsys.readouterr().out
    assert f"probe: {todo[0].name} for 40 steps on GPU 0" in out
    assert 1 <= k <= 8 and f"{k} run(s) per GPU" in out and "of 81,559 MiB" in out
    assert not list(tmp_path.glob("smoke/*/status.json"))  # the probe is not the run
