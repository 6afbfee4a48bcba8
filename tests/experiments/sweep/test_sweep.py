"""Sweep files: expansion, validation, launch planning; the local launcher end to end (slow)."""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from experiments.run.wandb_log import wandb_reachable
from experiments.sweep.launchers.base import plan
from experiments.sweep.launchers.wandb import wandb_sweep_config
from experiments.run.rundir import RunLock, read_status, write_status
from experiments.sweep.spec import SweepError, component_keys, load_sweep

ROOT = Path(__file__).resolve().parents[3]
SWEEPS = sorted((ROOT / "configs" / "sweeps").glob("*.yaml"))
SMOKE = ROOT / "configs" / "sweeps" / "smoke.yaml"


@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_every_shipped_sweep_expands(path):
    sweep = load_sweep(path, ["run.root=/nonexistent"])
    names = [r.name for r in sweep.runs]
    assert len(names) == len(set(names)) == len({r.run_id for r in sweep.runs})
    assert sweep.baseline in sweep.variants
    assert all(r.cfg.run.experiment == sweep.name and r.cfg.seed in sweep.seeds for r in sweep.runs)
    from experiments.run.config import check_trainer

    for run in sweep.runs:  # what `ablate sweep` checks before starting any run
        check_trainer(run.cfg.trainer)
    n_variants = len(sweep.variants)
    assert len(sweep.runs) == n_variants * len(sweep.seeds)


def test_smoke_sweep_names_and_ids():
    sweep = load_sweep(SMOKE, ["run.root=runs-x"])
    assert [r.name for r in sweep.runs] == ["layernorm-pre-learned-gelu-s0", "layernorm-pre-learned-swiglu-s0",
                                            "layernorm-pre-rope-gelu-s0", "layernorm-pre-rope-swiglu-s0"]
    assert sweep.baseline == "layernorm-pre-learned-gelu"
    assert all(r.run_dir == Path("runs-x") / "smoke" / r.name for r in sweep.runs)
    again = load_sweep(SMOKE, ["run.root=elsewhere", "logger=wandb"])  # where and how a run logs: same id
    assert [r.run_id for r in again.runs] == [r.run_id for r in sweep.runs]
    changed = load_sweep(SMOKE, ["model.d_model=32"])
    assert not {r.run_id for r in changed.runs} & {r.run_id for r in sweep.runs}


def _write(tmp_path, text):
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    return path


BASE = "configs: [configs/experiments/lm-bible.yaml, configs/debug/smoke.yaml]\n"


@pytest.mark.parametrize("text, message", [
    (BASE + "gird: {model.position: [rope]}\n", "unknown key(s) gird"),
    (BASE + "grid: {model.position: [rope, rotary]}\n", "unknown position 'rotary'; choices:"),
    (BASE + "grid: {model.positio: [rope]}\n", "'model.positio'"),
    (BASE + "grid: {model.position: []}\n", "non-empty list"),
    (BASE, "the grid is empty"),
    (BASE + "grid: {model.position: [rope]}\nexclude: [{model.position: rope}]\n", "the grid is empty"),
    (BASE + "grid: {model.position: [rope]}\nexclude: [{model.ffn: gelu}]\n", "model.ffn not a grid key"),
    (BASE + "grid: {model.position: [rope, alibi]}\nbaseline: {model.position: learned}\n", "matches 0 variants"),
    (BASE + "grid: {model.position: [rope]}\nseeds: []\n", "seeds"),
    (BASE + "grid: {model.position: [rope]}\nslurm: {partition: gpu, gpu: 2}\n", "slurm: unknown key(s) gpu"),
    (BASE + "grid: {model.position: [rope]}\nseeds: [0, one]\n", "seeds[1]: give a non-empty list of integers"),
    (BASE + "grid: {model.position: [rope]}\nseeds: [5000000000]\n", "seeds[0]: 5000000000 is outside [0, 2**32 - 1]"),
    (BASE + "grid: {model.position: [rope]}\nseeds: [0, -1]\n", "seeds[1]: -1 is outside [0, 2**32 - 1]"),
    (BASE + "grid: {model.position: [rope]}\nseeds: [0, 1, 0]\n", "seeds[2]: seed 0 repeats seeds[0]; give each seed once"),
    (BASE + "grid: {model.position: [rope]}\ntune: {grid: {task.lr: [0.001]}, seeds: [7, 7]}\nseeds: [0]\n",
     "tune.seeds[1]: seed 7 repeats tune.seeds[0]"),
    (BASE + "grid: {model.position: [rope]}\ntune: {grid: {task.lr: [0.001]}, seeds: [-3]}\n",
     "tune.seeds[0]: -3 is outside [0, 2**32 - 1]"),
    (BASE + "grid: {model.position: [rope]}\nslurm: {time_min: soon}\n", "slurm.time_min: Value 'soon'"),
    ("configs: [configs/nope.yaml]\ngrid: {model.position: [rope]}\n", "configs/nope.yaml not found"),
    (BASE + "grid: {model.d_model: [30]}\n", "d_model"),
    (BASE + "grid: {model.ffn: [gelu]}\nfindings: [{claim: x, variant: {model.ffn: relu}, metric: test/ppl, against: "
            "{model.ffn: gelu}}]\n", "findings[0]: variant {'model.ffn': 'relu'} matches 0 variants"),
    (BASE + "grid: {model.ffn: [gelu, relu]}\nbaseline: {model.ffn: gelu}\nfindings: [{claim: x, variant: "
            "{model.ffn: relu}, metric: test/ppl, expect: smaller}]\n", "expect must be lower, higher or none"),
    (BASE + "grid: {model.ffn: [gelu]}\nfindings: [{claim: x, metric: test/ppl}]\n", "missing variant"),
])
def test_bad_sweep_files_fail_naming_the_problem(tmp_path, text, message):
    with pytest.raises(SweepError, match=None) as err:
        load_sweep(_write(tmp_path, text))
    assert message in str(err.value)


def test_include_and_exclude(tmp_path):
    sweep = load_sweep(_write(tmp_path, BASE + """
grid: {model.position: [learned, rope], model.ffn: [gelu, swiglu]}
exclude: [{model.position: learned, model.ffn: swiglu}]
include: [{model.position: rope, model.ffn: gelu, task.warmup_steps: 0}]
seeds: [1, 2]
baseline: {model.position: rope, model.ffn: gelu}
"""))
    assert sweep.variants == ["layernorm-pre-learned-gelu", "layernorm-pre-rope-gelu", "layernorm-pre-rope-swiglu",
                              "layernorm-pre-rope-gelu-warmup_steps0"]
    assert sweep.baseline == "layernorm-pre-rope-gelu"
    extra = [r for r in sweep.runs if r.variant.endswith("warmup_steps0")]
    assert [r.cfg.task.warmup_steps for r in extra] == [0, 0] and [r.seed for r in extra] == [1, 2]


def test_plan_starts_runs_seed_by_seed(tmp_path):
    path = _write(tmp_path, BASE + "grid: {model.ffn: [gelu, swiglu]}\nseeds: [3, 1]\n")
    todo, _ = plan(load_sweep(path, [f"run.root={tmp_path}"]))
    assert [r.name.split("-", 3)[-1] for r in todo] == ["gelu-s3", "swiglu-s3", "gelu-s1", "swiglu-s1"]


def test_plan_skips_finished_and_refuses_a_foreign_run(tmp_path):
    sweep = load_sweep(SMOKE, [f"run.root={tmp_path}"])
    a, b, c, d = sweep.runs
    write_status(a.run_dir, "completed", run_id=a.run_id)
    write_status(b.run_dir, "failed", run_id=b.run_id)
    write_status(c.run_dir, "running", run_id=c.run_id)  # no live holder: interrupted
    todo, skipped = plan(sweep)
    assert [r.name for r in todo] == [c.name, d.name]
    assert skipped[b.name].startswith("failed")
    assert [r.name for r in plan(sweep, retry_failed=True)[0]] == [b.name, c.name, d.name]
    with RunLock(d.run_dir):
        write_status(d.run_dir, "running", run_id=d.run_id)
        todo, skipped = plan(sweep)
        assert "running elsewhere" in skipped[d.name]
    write_status(d.run_dir, "completed", run_id="0123456789")
    with pytest.raises(SweepError, match="another configuration"):
        plan(sweep)


def test_a_run_that_failed_for_lack_of_disk_space_is_rerun_by_the_next_sweep(tmp_path):
    """Its status says ``retryable``: no --retry-failed needed (it resumes from its last checkpoint);
    other failures still wait for --retry-failed."""
    sweep = load_sweep(SMOKE, [f"run.root={tmp_path}"])
    a, b, c, d = sweep.runs
    for run in (a, b):
        write_status(run.run_dir, "completed", run_id=run.run_id)
    write_status(c.run_dir, "failed", run_id=c.run_id, error="x/step-00000010.ckpt: no space left on device",
                 retryable=True)
    write_status(d.run_dir, "failed", run_id=d.run_id, error="RuntimeError: a bug")
    todo, skipped = plan(sweep)
    assert [r.name for r in todo] == [c.name] and skipped[d.name].startswith("failed (rerun with --retry-failed)")


def test_the_runner_overhead_counts_only_the_runs_time_in_its_own_process():
    """A resumed run's wall_s counts its earlier segments too: the overhead read negative."""
    from experiments.sweep.launchers.local import _overhead

    records = [{"state": "completed", "process_s": 12.0, "wall_s": 10.0, "segment_s": 10.0},
               {"state": "completed", "process_s": 5.0, "wall_s": 100.0, "segment_s": 3.0},  # resumed
               {"state": "completed", "process_s": 9.0, "wall_s": 7.5, "segment_s": 7.5},
               {"state": "interrupted", "process_s": 2.0, "wall_s": None, "segment_s": None}]
    assert _overhead(records) == 2.0 and _overhead(records[3:]) is None


def test_wandb_launcher_fails_fast_offline(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert "WANDB_MODE=offline" in wandb_reachable()
    sweep = load_sweep(SMOKE)
    from experiments.sweep.launchers.wandb import run_wandb

    with pytest.raises(SweepError, match="--launcher local"):
        run_wandb(sweep)


def test_wandb_agents_run_exactly_the_sweeps_runs():
    from experiments.sweep.launchers.wandb import run_named

    sweep = load_sweep(SMOKE, ["run.root=elsewhere"])
    config = wandb_sweep_config(sweep)
    assert config["method"] == "grid"
    assert list(config["parameters"]) == ["sweep_run"]  # not `run`: that would overwrite the config's run section
    assert config["parameters"]["sweep_run"]["values"] == [r.name for r in sweep.runs]
    assert config["command"][-3:] == [str(SMOKE), "run.root=elsewhere", "${args_no_hyphens}"]
    argv = run_named(sweep, sweep.runs[2].name)  # what `ablate sweep-run SMOKE sweep_run=<name>` trains
    assert argv == sweep.runs[2].command(sweep.configs) and f"run.name={sweep.runs[2].name}" in argv
    with pytest.raises(SweepError, match="no run named"):
        run_named(sweep, "nope")


def test_sweep_runs_name_their_sweep_and_baseline_for_wandb_and_keep_their_ids():
    from experiments.run.config import run_id

    sweep = load_sweep(SMOKE)
    assert sweep.baseline is not None
    for run in sweep.runs:
        assert run.cfg.wandb.sweep == sweep.name and run.cfg.wandb.baseline == (run.variant == sweep.baseline)
        assert ("wandb.baseline=true" in run.overrides) == (run.variant == sweep.baseline)
        plain = dataclasses.replace(run.cfg, wandb=dataclasses.replace(run.cfg.wandb, sweep=None, baseline=False))
        assert run_id(plain) == run.run_id  # W&B settings are not part of what a run computes


def test_cpu_workers_split_the_cores_and_keep_the_users_settings(monkeypatch):
    from experiments.sweep.launchers.local import CPU_MALLOC, _slots

    monkeypatch.setattr("experiments.sweep.launchers.local.visible_gpus", lambda: [])
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", *CPU_MALLOC):
        monkeypatch.delenv(key, raising=False)
    slots = _slots(2, 1)
    assert len(slots) == 2 and all(s["OMP_NUM_THREADS"] == "2" and s["CUDA_VISIBLE_DEVICES"] == "" for s in slots)
    assert all(s[k] == v for s in slots for k, v in CPU_MALLOC.items())
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")  # the user's own setting wins
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    slot = _slots(1, 1)[0]
    assert slot["MALLOC_MMAP_THRESHOLD_"] == "65536" and slot["OMP_NUM_THREADS"] == "1"


def test_component_keys_are_the_registry_slots_and_their_settings():
    from variants.registry import REGISTRIES, option_owners

    assert {k.split(".")[1] for k in component_keys()} == set(REGISTRIES) | set(option_owners())
    assert "model.t5_num_buckets" in component_keys()


# ------------------------------------------------------------------------------ end to end (slow)

def _ablate(*args, timeout=600, **kwargs):
    env = {**os.environ, "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, "-m", "experiments.cli", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout, **kwargs)


@pytest.mark.slow
def test_smoke_sweep_with_two_workers_then_rerun_skips(tmp_path):
    result = _ablate("sweep", SMOKE, f"run.root={tmp_path}", f"data.cache_dir={tmp_path}/cache", "--workers", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    sweep = load_sweep(SMOKE, [f"run.root={tmp_path}"])
    states = [read_status(r.run_dir) for r in sweep.runs]
    assert [s["state"] for s in states] == ["completed"] * 4
    assert all(s["step"] == 40 and s["run_id"] == r.run_id for s, r in zip(states, sweep.runs))
    manifest = json.loads((tmp_path / "smoke" / "sweep.json").read_text())
    assert [r["name"] for r in manifest["runs"]] == [r.name for r in sweep.runs]
    assert "4 done" in result.stdout and "runner overhead" in result.stdout

    again = _ablate("sweep", SMOKE, f"run.root={tmp_path}", f"data.cache_dir={tmp_path}/cache", "--workers", "2")
    assert again.returncode == 0 and "0 to run" in again.stdout
    assert [read_status(r.run_dir)["time"] for r in sweep.runs] == [s["time"] for s in states]
    status = _ablate("status", SMOKE, f"run.root={tmp_path}")
    assert status.returncode == 0 and status.stdout.count("completed") == 4

    # the report regenerates byte for byte from its own copies of the run files
    out = tmp_path / "report"
    assert _ablate("report", SMOKE, f"run.root={tmp_path}", "--out", out).returncode == 0
    first = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert {"README.md", "report.json", "val_curves_steps.png", "extrapolation.png"} <= {str(p) for p in first}
    assert "4 of 4 runs finished" in first[Path("README.md")].decode()
    shutil.rmtree(tmp_path / "smoke")
    assert _ablate("report", SMOKE, f"run.root={tmp_path}", "--out", out).returncode == 0
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == first


def _diverging_sweep(tmp_path):
    return _write(tmp_path, BASE + """
name: faults
overrides: {logger: none, trainer.max_steps: 300, trainer.val_check_interval: 100}
grid: {model.position: [learned, rope]}
include: [{model.position: alibi, task.lr: 1.0e+38}]
""")


@pytest.mark.slow
def test_killed_worker_resumes_and_a_diverged_run_is_marked(tmp_path):
    """A worker killed with SIGKILL mid-run leaves its run interrupted; the next invocation resumes it
    from its checkpoint. A run whose loss turns NaN ends `diverged`; the other runs go on."""
    path = _diverging_sweep(tmp_path)
    args = ["sweep", path, f"run.root={tmp_path}/runs", f"data.cache_dir={tmp_path}/cache", "--workers", "2"]
    sweep = load_sweep(path, [f"run.root={tmp_path}/runs"])
    victim = sweep.runs[0]
    proc = subprocess.Popen([sys.executable, "-m", "experiments.cli", *map(str, args)], cwd=ROOT,
                            env={**os.environ, "WANDB_MODE": "disabled"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while not list((victim.run_dir / "checkpoints").glob("step-*.ckpt")):
        assert time.time() < deadline and proc.poll() is None, "the run never checkpointed"
        time.sleep(0.05)
    holder = json.loads((victim.run_dir / "run.lock").read_text())
    os.kill(holder["pid"], signal.SIGKILL)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 1, out
    assert "killed by signal 9" in out
    assert read_status(victim.run_dir)["state"] == "interrupted"
    diverged = read_status(sweep.runs[2].run_dir)
    assert diverged["state"] == "diverged"
    assert "non-finite at step" in diverged["message"] and "last finite loss" in diverged["message"]
    assert "last gradient norms before clipping" in diverged["message"]
    assert read_status(sweep.runs[1].run_dir)["state"] == "completed"

    again = _ablate(*args)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"resume {victim.name}" in again.stdout
    assert "resuming" in (victim.run_dir / "train.log").read_text()
    final = read_status(victim.run_dir)
    assert final["state"] == "completed" and final["step"] == 300 and final["resumed_from_step"] > 0
    steps = [json.loads(line)["step"] for line in (victim.run_dir / "metrics.jsonl").read_text().splitlines()
             if "train/loss" in line]
    assert steps == sorted(set(steps))  # every logged step once, none lost


@pytest.mark.slow
def test_a_run_held_by_another_process_is_not_run_twice(tmp_path):
    sweep = load_sweep(SMOKE, [f"run.root={tmp_path}", "trainer.max_steps=20"])
    held = sweep.runs[1]
    with RunLock(held.run_dir):
        write_status(held.run_dir, "running", run_id=held.run_id)
        result = _ablate("sweep", SMOKE, f"run.root={tmp_path}", f"data.cache_dir={tmp_path}/cache",
                         "trainer.max_steps=20", "--workers", "2")
    assert result.returncode == 1
    assert f"skip {held.name}: running elsewhere (pid {os.getpid()}" in result.stdout
    assert [read_status(r.run_dir)["state"] for r in sweep.runs] == ["completed", "interrupted", "completed",
                                                                     "completed"]


@pytest.mark.slow
def test_slurm_launcher_through_submitit_local_executor(tmp_path):
    pytest.importorskip("submitit")
    path = _write(tmp_path, BASE + """
name: slurm-smoke
overrides: {logger: none, trainer.max_steps: 10, trainer.val_check_interval: 10, checkpoint.every_n_steps: 10}
grid: {model.ffn: [gelu, swiglu]}
slurm: {cluster: local, time_min: 10, gpus_per_node: 0}
""")
    result = _ablate("sweep", path, f"run.root={tmp_path}/runs", f"data.cache_dir={tmp_path}/cache",
                     "--launcher", "slurm", "--wait")
    assert result.returncode == 0, result.stdout + result.stderr
    sweep = load_sweep(path, [f"run.root={tmp_path}/runs"])
    assert [read_status(r.run_dir)["state"] for r in sweep.runs] == ["completed", "completed"]


@pytest.mark.parametrize("devices, n", [(1, 1), (2, 2), ("4", 4), ("auto", 1), (-1, 1), ([0, 1], 2), ("0,1,", 2)])
def test_slurm_starts_one_task_per_device(devices, n):
    from experiments.sweep.launchers.slurm import devices_per_run

    assert devices_per_run({"devices": devices}) == n


@pytest.mark.slow
def test_a_two_device_run_under_the_slurm_launcher_runs_as_two_ranks(tmp_path):
    """trainer.devices=2 gets tasks_per_node=2: two submitit tasks (local executor, CPU, gloo),
    each one rank of one DDP run, which completes once."""
    pytest.importorskip("submitit")
    path = _write(tmp_path, BASE + """
name: slurm-ddp
overrides: {logger: none, trainer.max_steps: 6, trainer.val_check_interval: 6, checkpoint.every_n_steps: 6,
            trainer.accelerator: cpu, trainer.devices: 2, trainer.strategy: ddp}
grid: {model.ffn: [gelu]}
slurm: {cluster: local, time_min: 10, gpus_per_node: 0}
""")
    result = _ablate("sweep", path, f"run.root={tmp_path}/runs", f"data.cache_dir={tmp_path}/cache",
                     "--launcher", "slurm", "--wait")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 runs as job array" in result.stdout and "2 task(s) per run" in result.stdout
    (run,) = load_sweep(path, [f"run.root={tmp_path}/runs"]).runs
    assert read_status(run.run_dir)["state"] == "completed"
    records = [json.loads(line) for line in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "train/loss" in r]
    assert steps == sorted(set(steps))  # one writer: each step once
    logs = "".join(p.read_text() for p in (tmp_path / "runs" / "slurm-ddp" / ".submitit").rglob("*_log.*"))
    assert "MEMBER: 1/2" in logs and "MEMBER: 2/2" in logs  # Lightning's line from each of the two ranks


def test_overrides_may_follow_the_options(tmp_path):
    from experiments.cli import main

    out = tmp_path / "report"
    assert main(["report", str(SMOKE), "--out", str(out), f"run.root={tmp_path}/runs", "logger=none"]) == 0
    text = (out / "README.md").read_text()
    assert f"run.root={tmp_path}/runs logger=none" in text and "0 of 4 runs finished" in text
    with pytest.raises(SystemExit):
        main(["report", str(SMOKE), "--bogus"])


def _chaos_sweep(tmp_path):
    """12 tiny runs: 6 variants x 2 seeds, each checkpointing every 10 of its 60 steps."""
    return _write(tmp_path, BASE + """
name: chaos
overrides: {logger: none, trainer.max_steps: 60, trainer.val_check_interval: 20, checkpoint.every_n_steps: 10,
            model.dropout: 0.1, trainer.enable_progress_bar: false}
grid: {model.position: [learned, rope, alibi], model.ffn: [gelu, relu]}
seeds: [0, 1]
""")


def _final(run):
    status = read_status(run.run_dir)
    records = [json.loads(line) for line in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [(r["step"], r["train/loss"]) for r in records if "train/loss" in r]
    tests = [r for r in records if any(k.startswith("test/") for k in r)]
    kept = {k: v for k, v in status["metrics"].items() if k.startswith(("val/", "test/", "train/loss"))}
    return status, losses, tests, kept


@pytest.mark.slow
def test_a_sweep_under_random_kill9_of_its_workers_ends_as_if_never_interrupted(tmp_path):
    """Fault injection: while a 3-worker sweep runs, a chaos loop SIGKILLs a random running run
    every few seconds (a bounded number of times); the sweep is rerun until it reports every run
    finished. Each run then completed once, logged each step once, and ends with the metrics of
    the same sweep run without interruption."""
    import random

    path = _chaos_sweep(tmp_path)
    common = [f"data.cache_dir={tmp_path}/cache", "--workers", "3"]
    reference = _ablate("sweep", path, f"run.root={tmp_path}/ref", *common, timeout=1200)
    assert reference.returncode == 0, reference.stdout + reference.stderr
    sweep = load_sweep(path, [f"run.root={tmp_path}/runs"])
    ref_runs = load_sweep(path, [f"run.root={tmp_path}/ref"]).runs
    assert len(sweep.runs) == 12

    chaos, kills, invocations = random.Random(0), [], 0
    while True:
        invocations += 1
        assert invocations <= 12, f"still not finished after {invocations - 1} invocations"
        proc = subprocess.Popen([sys.executable, "-m", "experiments.cli", "sweep", str(path),
                                 f"run.root={tmp_path}/runs", *common], cwd=ROOT,
                                env={**os.environ, "WANDB_MODE": "disabled"}, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        while proc.poll() is None:
            time.sleep(chaos.uniform(1.0, 4.0))
            if len(kills) >= 10:
                continue
            holders = []
            for run in sweep.runs:
                try:
                    holders.append((run.name, json.loads((run.run_dir / "run.lock").read_text())["pid"]))
                except (OSError, ValueError, KeyError):
                    continue  # not started, finished, or its lock half-written
            alive = [(name, pid) for name, pid in holders if _alive(pid) and pid != proc.pid]
            if alive:
                name, pid = chaos.choice(alive)
                try:
                    os.kill(pid, signal.SIGKILL)
                    kills.append(name)
                except ProcessLookupError:
                    pass
        out = proc.stdout.read()
        if proc.returncode == 0:
            break
        assert proc.returncode == 1 and "killed by signal 9" in out, out
    assert len(kills) >= 5, f"the chaos loop found too few runs to kill: {kills}"

    for run, ref in zip(sweep.runs, ref_runs):
        status, losses, tests, kept = _final(run)
        ref_status, ref_losses, ref_tests, ref_kept = _final(ref)
        assert status["state"] == "completed" and status["step"] == 60, (run.name, status)
        assert [s for s, _ in losses] == [s for s, _ in ref_losses] == sorted({s for s, _ in losses}), run.name
        assert [v for _, v in losses] == pytest.approx([v for _, v in ref_losses], abs=1e-5), run.name
        assert len(tests) == len(ref_tests) == 1, run.name  # tested once
        assert set(kept) == set(ref_kept) and kept == pytest.approx(ref_kept, abs=1e-5), run.name
    again = _ablate("sweep", path, f"run.root={tmp_path}/runs", *common)
    assert again.returncode == 0 and "12 done" in again.stdout and "start " not in again.stdout, again.stdout


def _alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


@pytest.mark.slow
def test_the_warm_runner_gives_the_results_of_fresh_interpreters(tmp_path):
    """Runs forked from the warm server (the default) end exactly as runs in fresh interpreters
    (ABLATE_COLD_RUNNER=1): the same metrics, each run its own process and log."""
    args = ["sweep", SMOKE, f"data.cache_dir={tmp_path}/cache", "trainer.max_steps=10",
            "trainer.val_check_interval=10", "--workers", "2"]
    warm = _ablate(*args, f"run.root={tmp_path}/warm")
    cold = subprocess.run([sys.executable, "-m", "experiments.cli", *map(str, args), f"run.root={tmp_path}/cold"],
                          cwd=ROOT, env={**os.environ, "WANDB_MODE": "disabled", "ABLATE_COLD_RUNNER": "1"},
                          capture_output=True, text=True, timeout=600)
    assert warm.returncode == cold.returncode == 0, warm.stdout + cold.stdout
    assert "runner overhead" in warm.stdout
    for root in ("warm", "cold"):
        for run in load_sweep(SMOKE, [f"run.root={tmp_path}/{root}"]).runs:
            assert "completed" in (run.run_dir / "train.log").read_text()
    for a, b in zip(load_sweep(SMOKE, [f"run.root={tmp_path}/warm"]).runs,
                    load_sweep(SMOKE, [f"run.root={tmp_path}/cold"]).runs):
        got, expected = read_status(a.run_dir)["metrics"], read_status(b.run_dir)["metrics"]
        for key in ("train/loss", "val/loss", "val/ppl", "test/ppl"):
            assert got[key] == pytest.approx(expected[key], abs=1e-6), (a.name, key)
    launches = [json.loads(line) for line in (tmp_path / "warm" / "smoke" / "launches.jsonl").read_text().splitlines()]
    assert len(launches) == 4 and all(r["exit"] == 0 for r in launches)
    pids = {line.split("pid ")[1].rstrip(")") for line in warm.stdout.splitlines() if "(worker" in line}
    assert len(pids) == 4 and str(os.getpid()) not in pids  # a process of its own per run
