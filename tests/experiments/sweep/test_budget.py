"""Budgets in sweep files (``budget:``): steps, tokens or FLOPs per run decide every run's
max_steps, keep its number of validations and checkpoints, end its schedule at its own last step,
reach tuning and confirmation runs alike, and are refused when they cannot be spent; a sweep
without one is unchanged."""

import json
from pathlib import Path

import pytest
import yaml
from experiments.run.config import load_config, run_id
from experiments.run.rundir import write_status
from experiments.sweep import tuning
from experiments.sweep.budget import DECIDED
from experiments.sweep.launchers.base import write_manifest
from experiments.sweep.spec import SweepError, load_sweep
from lit.tasks import lr_multiplier
from variants import build_model
from variants.flops import FlopCounter

ROOT = Path(__file__).resolve().parents[3]
SWEEPS = sorted((ROOT / "configs" / "sweeps").glob("*.yaml"))
LM = f"configs: [{ROOT}/configs/experiments/lm-bible.yaml, {ROOT}/configs/debug/ablation-cpu.yaml]\nseeds: [0]\n"
MT = (f"configs: [{ROOT}/configs/experiments/mt-bible-de-en.yaml, {ROOT}/configs/debug/ablation-cpu.yaml]\nseeds: [0]\n"
      "overrides: {model.max_seq_len: 128}\n")
WIDTHS = "grid: {model.d_model: [128, 192]}\n"  # about 1.6x the training FLOPs per step


def _sweep(tmp_path, text, extra=()):
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    return load_sweep(path, [f"run.root={tmp_path}/runs", *extra])


def _flops(cfg):
    """Training FLOPs of one LM step, counted on the real (CPU) model."""
    model = build_model(cfg.model.replace(vocab_size=cfg.data.vocab_size))
    block = cfg.data.lm_block_size(cfg.model.max_seq_len)
    return FlopCounter(model)(tokens=cfg.data.batch_size * block, seq_len=block)


def _check_schedule(run, k=4, c=2):
    """The base (ablation-cpu: 400 steps, validation every 100, checkpoints every 200) counts kept,
    the last step validated and checkpointed, the cosine at its floor on the last step, and the
    run's command trains exactly this run."""
    trainer, steps = run.cfg.trainer, run.cfg.trainer["max_steps"]
    assert steps == run.budget["max_steps"] and steps % k == 0 and steps % c == 0
    assert trainer["val_check_interval"] * k == steps and run.cfg.checkpoint.every_n_steps * c == steps
    factor = lr_multiplier(run.cfg.task, steps)
    assert run.cfg.task.schedule == "cosine" and factor(steps - 1) == pytest.approx(run.cfg.task.min_lr_ratio)
    assert factor(steps - 2) > run.cfg.task.min_lr_ratio
    assert run_id(load_config([ROOT / "configs/experiments/lm-bible.yaml", ROOT / "configs/debug/ablation-cpu.yaml"],
                              run.overrides)) == run.run_id


def test_a_flops_budget_gives_each_variant_steps_in_inverse_ratio_to_its_flops(tmp_path):
    small = load_config([ROOT / "configs/experiments/lm-bible.yaml", ROOT / "configs/debug/ablation-cpu.yaml"])
    value = _flops(small) * 1000
    sweep = _sweep(tmp_path, LM + WIDTHS + f"budget: {{by: flops, value: {value:.6e}}}\n")
    narrow, wide = sweep.runs
    per_step = {r.name: _flops(r.cfg) for r in sweep.runs}
    assert [r.budget["flops_per_step"] for r in sweep.runs] == [per_step[r.name] for r in sweep.runs]  # meta = real
    ratio = per_step[wide.name] / per_step[narrow.name]
    assert 1.4 < ratio < 1.8
    steps = {r.name: r.cfg.trainer["max_steps"] for r in sweep.runs}
    assert steps[narrow.name] == 1000
    assert steps[narrow.name] / steps[wide.name] == pytest.approx(ratio, rel=0.01)
    for run in sweep.runs:
        assert per_step[run.name] * steps[run.name] == pytest.approx(value, rel=0.01)
        assert run.budget["flops"] == pytest.approx(value, rel=0.01) and run.budget["by"] == "flops"
        _check_schedule(run)
    assert narrow.run_id != _sweep(tmp_path, LM + WIDTHS).runs[0].run_id  # max_steps is in the run id


def test_every_run_of_a_variant_gets_its_budget_tuning_and_confirmation_alike(tmp_path):
    text = LM + WIDTHS + """budget: {by: flops, value: 7.0e12}
tune: {grid: {task.lr: [1.0e-3, 2.0e-3]}, seeds: [100], select: {metric: val/ppl}}
"""
    sweep = _sweep(tmp_path, text)
    steps = {}
    for run in [*sweep.tune_runs, *sweep.runs]:
        assert steps.setdefault(run.variant, run.cfg.trainer["max_steps"]) == run.cfg.trainer["max_steps"]
    assert len(set(steps.values())) == 2
    for run in sweep.tune_runs:
        metrics = {"val/ppl": 100.0 - 1000 * run.tuned["task.lr"], "wall_s": 1.0}
        write_status(run.run_dir, "completed", step=run.cfg.trainer["max_steps"], run_id=run.run_id, metrics=metrics)
    tuning.record_sweep(sweep)
    confirmed = _sweep(tmp_path, text)
    assert all(r.awaiting is None and r.cfg.task.lr == 2e-3 for r in confirmed.runs)
    for run in confirmed.runs:
        assert run.cfg.trainer["max_steps"] == steps[run.variant]
        _check_schedule(run)
    manifest = json.loads(write_manifest(confirmed).read_text())
    assert [r["budget"]["max_steps"] for r in manifest["runs"]] == [
        steps[r.variant] for r in [*confirmed.tune_runs, *confirmed.runs]]


def test_a_token_budget_on_the_lm_divides_by_batch_rows_times_block(tmp_path):
    sweep = _sweep(tmp_path, LM + "grid: {data.batch_size: [16, 32], model.d_model: [128, 192]}\n"
                               "budget: {by: tokens, value: 1024000}\n")  # 16 blocks of 64 tokens: 1000 steps
    for run in sweep.runs:
        per_step = run.cfg.data.batch_size * 64
        assert run.budget["tokens_per_step"] == per_step
        assert run.cfg.trainer["max_steps"] == {16: 1000, 32: 500}[run.cfg.data.batch_size]
        assert run.budget["tokens"] == 1024000
        _check_schedule(run)
    block = _sweep(tmp_path, LM + "grid: {data.block_size: [32, 64]}\nbudget: {by: tokens, value: 1024000}\n")
    assert [r.cfg.trainer["max_steps"] for r in block.runs] == [2000, 1000]
    devices = _sweep(tmp_path, LM + "grid: {model.d_model: [128]}\nbudget: {by: tokens, value: 1024000}\n",
                     ["trainer.accumulate_grad_batches=2"])
    assert devices.runs[0].cfg.trainer["max_steps"] == 500  # two batches per optimizer step


def test_a_budget_on_the_masked_lm_counts_its_blocks_through_the_encoder(tmp_path):
    """Masked-LM is batched in blocks like the LM: batch rows × block tokens per step, and FLOPs
    of the encoder (one stack, its output head) over them."""
    mlm = LM.replace("lm-bible.yaml", "mlm-bible.yaml")
    run = _sweep(tmp_path, mlm + "grid: {model.d_model: [128]}\nbudget: {by: tokens, value: 1024000}\n").runs[0]
    assert run.cfg.model.kind == "encoder" and run.budget["tokens_per_step"] == 16 * 64
    assert run.cfg.trainer["max_steps"] == 1000
    flops = _sweep(tmp_path, mlm + "grid: {model.d_model: [128]}\nbudget: {by: flops, value: 1.0e14}\n").runs[0]
    assert flops.budget["flops_per_step"] == pytest.approx(_flops(flops.cfg))


def test_a_token_budget_on_translation_divides_by_max_tokens(tmp_path):
    sweep = _sweep(tmp_path, MT + "grid: {model.norm_position: [pre, post]}\n"
                               "budget: {by: tokens, value: 2048000}\n")  # ablation-cpu: max_tokens 2048
    assert [r.cfg.trainer["max_steps"] for r in sweep.runs] == [1000, 1000]
    flops = _sweep(tmp_path, MT + "grid: {model.n_layers: [2, 3]}\nbudget: {by: flops, value: 1.0e14, seq_len: 32}\n")
    shallow, deep = flops.runs
    assert shallow.budget["seq_len"] == 32 and shallow.cfg.trainer["max_steps"] > deep.cfg.trainer["max_steps"]
    at_max = _sweep(tmp_path, MT + "grid: {model.n_layers: [2]}\nbudget: {by: flops, value: 1.0e14}\n").runs[0]
    assert at_max.budget["seq_len"] == at_max.cfg.model.max_seq_len  # default: attention counted at its most
    assert at_max.budget["flops_per_step"] > shallow.budget["flops_per_step"]


def test_a_step_budget_sets_every_runs_steps(tmp_path):
    sweep = _sweep(tmp_path, LM + WIDTHS + "budget: {by: steps, value: 600}\n")
    for run in sweep.runs:
        assert run.cfg.trainer["max_steps"] == 600 and run.budget["flops"] == run.budget["flops_per_step"] * 600
        _check_schedule(run)


@pytest.mark.parametrize("budget, extra, message", [
    ("{by: time, value: 10}", "", "budget.by: 'time' is not a budget; choices: steps, tokens, flops"),
    ("{value: 10}", "", "budget.by: missing"),
    ("{by: flops}", "", "budget.value: missing"),
    ("{by: steps, value: 0}", "", "budget.value: give a positive number of steps, got 0"),
    ("{by: tokens, value: -5}", "", "budget.value: give a positive number"),
    ("{by: steps, value: 10.5}", "", "budget.value: a whole number of steps"),
    ("{by: flops, value: big}", "", "budget.value"),
    ("{by: steps, value: 3}", "", "budget.value: gives run layernorm-pre-learned-gelu-d_model128-s0 3 steps, fewer "
                                  "than the 4 it needs to validate 4 and checkpoint 2 times"),
    ("{by: steps, value: 40}", "", "no more than its warm-up (task.warmup_steps=50)"),
    ("{by: flops, value: 1.0e9}", "", "budget.value: gives run"),
    ("{by: steps, value: 600, seq_len: 32}", "", "budget.seq_len: "),
    ("{by: steps, value: 600, per: run}", "", "budget: unknown key(s) per"),
    ("{by: steps, value: 600}", "include: [{model.d_model: 256, trainer.max_steps: 100}]\n",
     "trainer.max_steps is set in grid (or include), but the budget (by: steps) decides it"),
    ("{by: flops, value: 1.0e13}", "tune: {grid: {trainer.max_steps: [100, 200]}, seeds: [9], select: {metric: val/ppl}}\n",
     "trainer.max_steps is set in tune.grid"),
])
def test_a_budget_that_cannot_be_spent_is_refused_before_anything_runs(tmp_path, budget, extra, message):
    with pytest.raises(SweepError) as err:
        _sweep(tmp_path, LM + WIDTHS + extra + f"budget: {budget}\n")
    assert str(tmp_path / "sweep.yaml") in str(err.value) and message in str(err.value)
    assert not (tmp_path / "runs").exists()


def test_the_command_line_cannot_set_what_the_budget_decides(tmp_path):
    with pytest.raises(SweepError, match="trainer.max_steps is set in the command line"):
        _sweep(tmp_path, LM + WIDTHS + "budget: {by: steps, value: 600}\n", ["trainer.max_steps=8"])


def test_a_token_or_flop_budget_needs_a_device_count(tmp_path):
    auto = ["trainer.devices=auto"]
    steps = _sweep(tmp_path, LM + WIDTHS + "budget: {by: steps, value: 600}\n", auto)
    assert [r.budget["max_steps"] for r in steps.runs] == [600, 600] and steps.runs[0].budget["flops"] is None
    with pytest.raises(SweepError, match="a token or FLOP budget needs trainer.devices as a count"):
        _sweep(tmp_path, LM + WIDTHS + "budget: {by: flops, value: 1.0e13}\n", auto)
    two = _sweep(tmp_path, LM + WIDTHS + "budget: {by: tokens, value: 1024000}\n", ["trainer.devices=[0,1]"])
    assert [r.budget["max_steps"] for r in two.runs] == [500, 500]


UNBUDGETED = [p for p in SWEEPS if "budget" not in (yaml.safe_load(p.read_text()) or {})]


@pytest.mark.parametrize("path", UNBUDGETED, ids=[p.stem for p in UNBUDGETED])
def test_without_a_budget_every_shipped_sweep_is_unchanged(path):
    """No budget: no run carries budget facts or a budget override, and every run's max_steps and
    run id are those its own configs and the sweep's overrides give."""
    sweep = load_sweep(path, ["run.root=/nonexistent"])
    fixed = path.read_text()
    for run in [*sweep.tune_runs, *sweep.runs]:
        assert run.budget is None
        set_here = [o for o in run.overrides if o.split("=")[0] in DECIDED]
        assert all(o.split("=")[0] in fixed for o in set_here)  # only the sweep file's own
        assert run_id(load_config(sweep.configs, run.overrides)) == run.run_id
        assert run.cfg.trainer.get("max_steps") == load_config(sweep.configs, run.overrides).trainer.get("max_steps")
