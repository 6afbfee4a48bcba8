"""One training run: data, model, Lightning Trainer, local run directory and W&B.

The run directory ``<run.root>/<experiment>/<run-name>/`` holds ``config.yaml`` (resolved),
``metrics.jsonl`` (one JSON object per logging event), ``status.json``, ``run.lock`` and
``checkpoints/``. Running the same configuration again resumes from the newest complete
checkpoint, exactly: optimizer, scheduler, loop counters, RNG states, data position and W&B run
id all come back, so the final metrics equal those of an uninterrupted run.
"""

from __future__ import annotations

import os
import re
import time
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, TQDMProgressBar

from experiments.run import wandb_log
from experiments.run.config import RunConfig, run_id, to_yaml
from experiments.run.gpu_memory import describe_failure, is_out_of_memory, limit_gpu_memory, memory_fraction
from experiments.run.rundir import metric_lines
from experiments.run.rundir import (EXIT_LOCKED, FINAL_STATES, RunDirUnwritable, RunLock, RunLocked, overwrite_status,
                                    read_status, write_status)
from lit.callbacks import DivergenceGuard, JsonlLogger, ThroughputMonitor
from lit.data.sources import DataError
from lit.checkpointing import (AtomicCheckpointIO, PeriodicCheckpoint, ResumeState, checkpoint_step,
                               latest_checkpoint, remove_partial_writes, saved_resume_state)
from lit.specs import task_spec
from tools.errors import no_space_left, report_error, writing
from tools.metrics import one_line
from tools.system import cpu_peak_flops, environment

INTERRUPTIONS = (KeyboardInterrupt, SystemExit)  # Lightning's SIGTERMException is a SystemExit


def interrupt_code(err: BaseException) -> int:
    """The exit code of an interrupted run: 143 after SIGTERM, 130 after Ctrl-C (SIGINT)."""
    return 143 if type(err).__name__ == "SIGTERMException" else 130


def describe_interruption(err: BaseException) -> str:
    """What stopped a run, in words: Lightning raises ``SIGTERMException`` after SIGTERM (what a
    sweep sends its runs when it is stopped) and ends a Ctrl-C-ed fit with ``SystemExit(1)``, the
    ``KeyboardInterrupt`` in its context."""
    if type(err).__name__ == "SIGTERMException":
        return "terminated (SIGTERM)"
    cause = err
    while cause is not None:
        if isinstance(cause, KeyboardInterrupt):
            return "interrupted (Ctrl-C)"
        cause = cause.__cause__ or cause.__context__
    return f"stopped ({type(err).__name__}{'' if getattr(err, 'code', None) is None else f' {err.code}'})"


def failure_fields(run_dir: Path, err: BaseException, error: str) -> dict[str, Any]:
    """The error a ``failed`` status records for ``err`` (``error``: its usual description). A full
    disk anywhere in the exception's chain names the file being written (the run directory when
    the error does not) and marks the run ``retryable``: a sweep reruns it on its next invocation."""
    full = no_space_left(err)
    if full is None:
        return {"error": error}
    where = full.filename or f"a file in {run_dir}"
    return {"error": f"{where}: no space left on device; free some space and run it again (it resumes from its "
                     f"last checkpoint)", "retryable": True}


def record_state(run_dir: Path, state: str, **fields: Any) -> None:
    """A failed or interrupted status, whatever the disk: when a new ``status.json`` cannot be
    written for lack of space, the old one is rewritten in place; a status that cannot be written
    at all is a note (the traceback that follows is all there is)."""
    try:
        write_status(run_dir, state, **fields)
        return
    except OSError as err:
        problem = err
    if no_space_left(problem) is not None:
        try:
            overwrite_status(run_dir, state, **fields)
            return
        except OSError as err:
            problem = err
    print(f"note: {run_dir}: could not record the {state} status in status.json ({problem})")


def _runs_on_cpu(cfg: RunConfig) -> bool:
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    return accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())


def _is_rank_zero() -> bool:
    """True in the launching process; False in the extra processes of a multi-device run
    (started by Lightning, torchrun or ``srun``)."""
    return all(int(os.environ.get(var) or 0) == 0 for var in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


CONFIG_HEADER = re.compile(r"^# run_id: (\w+)$", re.M)


def recorded_run_ids(run_dir: Path) -> dict[str, str]:
    """The run ids a run directory records, by file: ``status.json``, the header of
    ``config.yaml`` and the newest complete checkpoint (files from before ids were recorded
    there say nothing)."""
    ids = {}
    status = read_status(run_dir)
    never_started = (status.get("state") == "failed" and not status.get("step")
                     and not any((run_dir / "checkpoints").glob("*.ckpt")))
    if status.get("run_id") and not never_started:  # a run refused at its start holds nothing
        ids["status.json"] = status["run_id"]
    config = run_dir / "config.yaml"
    if config.is_file() and (found := CONFIG_HEADER.search(config.read_text(encoding="utf-8", errors="replace"))):
        ids["config.yaml"] = found.group(1)
    newest = latest_checkpoint(run_dir / "checkpoints")
    if newest is not None and (saved := saved_resume_state(newest).get("run_id")):
        ids[f"checkpoints/{newest.name}"] = saved
    return ids


def _check_same_run(cfg: RunConfig, rid: str) -> None:
    """Refuse, before touching anything, a directory whose files record another run id."""
    other = {where: found for where, found in recorded_run_ids(cfg.run_dir).items() if found != rid}
    if other:
        names = ", ".join(f"{where} has {found}" for where, found in other.items())
        raise RunMismatch(
            f"{cfg.run_dir} holds a run of another configuration ({names}; this one is {rid}); "
            f"choose another run.root or run.name, or delete that directory")


class RunMismatch(RuntimeError):
    """The run directory belongs to a different configuration."""


def _keep_metrics_up_to(run_dir: Path, step: int) -> None:
    """Drop the records logged after the checkpoint a run resumes from, and any test record: the
    resumed run logs them again, identically, so each step appears once in ``metrics.jsonl`` and
    the test once. (A test record carries the last step, the final checkpoint's: a run killed
    after its test was logged, before its final status was written, resumes from that checkpoint
    and tests again; found by the fault-injection sweep.)"""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return
    kept = [line for line, record in metric_lines(path)  # torn or undecodable lines are dropped
            if isinstance(record, dict) and record.get("step", 0) <= step
            and not any(str(key).startswith("test/") for key in record)]
    tmp = path.with_name("metrics.jsonl.tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    tmp.replace(path)


# The data modules carry the data position themselves (their state_dict is in every checkpoint).
warnings.filterwarnings("ignore", message=r"You're resuming from a checkpoint that ended before the epoch ended")


def train(cfg: RunConfig, extra_callbacks: Sequence[L.Callback] = ()) -> dict[str, Any]:
    """Train, validate and test one configuration (resuming it if it was interrupted); returns
    the final metrics. Raises :class:`RunLocked` if another live process runs it. An exception
    that escapes leaves a status naming it (:func:`_record_failure`), never ``pending`` or
    ``running``."""
    rid = run_id(cfg)
    if not _is_rank_zero():
        return _train(cfg, rid, extra_callbacks)
    _check_same_run(cfg, rid)
    with RunLock(cfg.run_dir) as lock:
        if lock.stale:
            print(f"note: {cfg.run_dir}: taking over the lock of pid {lock.stale.get('pid')} "
                  f"on {lock.stale.get('host')}, which is no longer running")
        before = read_status(cfg.run_dir)
        try:
            return _train(cfg, rid, extra_callbacks)
        except Exception as err:
            _record_failure(cfg.run_dir, rid, err, before)
            raise


def _record_failure(run_dir: Path, rid: str, err: Exception, before: dict[str, Any]) -> None:
    """A ``failed`` status naming ``err``, an exception that escaped the run (``before``: the
    status when this attempt started), in place of ``pending``, ``running`` or an earlier
    attempt's failure or interruption. Kept as they are: the outcome this attempt recorded on
    the way out (a failure or interruption during fitting, a final status written before a later
    step failed) and a final result this attempt never touched."""
    now = read_status(run_dir)
    recorded_now = now.get("time") != before.get("time") and now.get("state") != "running"
    if recorded_now or now.get("state") in FINAL_STATES:
        return
    error = describe_failure(err) if is_out_of_memory(err) else f"{type(err).__name__}: {err}"
    record_state(run_dir, "failed", step=now.get("step") or 0, run_id=rid, **failure_fields(run_dir, err, error))


def _train(cfg: RunConfig, rid: str, extra_callbacks: Sequence[L.Callback]) -> dict[str, Any]:
    L.seed_everything(cfg.seed, workers=True)
    cfg, data = _prepare_data(cfg)
    run_dir, lead = cfg.run_dir, _is_rank_zero()  # lead: the one process that writes the run's files
    run_dir.mkdir(parents=True, exist_ok=True)
    if lead:
        with writing(run_dir / "config.yaml"):
            (run_dir / "config.yaml").write_text(f"# run_id: {rid}\n" + to_yaml(cfg))
        data.tokenizer.save(run_dir / "tokenizer.json")  # decode or rescore the run later with the same vocabulary

    task = task_spec(cfg.task.name).module(cfg.model_for(data.tokenizer), cfg.task, data)
    if cfg.perf.compile or cfg.perf.cuda_graphs:
        task.compile_losses(cuda_graphs=cfg.perf.cuda_graphs)
    params = task.model.num_params()
    extra = {"params": params, "fingerprint": task.model.fingerprint(), "run_id": rid}
    resume_from = _resume_point(cfg, lead)

    peak = cfg.perf.peak_flops
    if peak is None and _runs_on_cpu(cfg):  # measured before W&B starts its service process
        peak = cpu_peak_flops(cfg.data.cache_path)
    resume_state = ResumeState(run_id=rid)
    loggers = [JsonlLogger(run_dir)]
    use_wandb = cfg.logger == "wandb" and lead  # only the lead process touches W&B (and its wandb_id file)
    if use_wandb:
        loggers.append(wandb_log.make_logger(cfg, run_dir, extra, resume_from))
        resume_state.wandb_id = wandb_log.saved_id(run_dir)
    if resume_from is None:
        loggers[0].log_metrics({f"params/{k}": v for k, v in params.items()}, step=0)
    throughput = ThroughputMonitor(cfg.perf.warmup_steps, cfg.perf.every_n_steps, peak)
    # on a GPU, the loss is read back from the device at logging steps only (and before checkpoints)
    on_cpu, log_every = _runs_on_cpu(cfg), int(cfg.trainer.get("log_every_n_steps") or 50)
    guard = DivergenceGuard(1 if on_cpu else log_every)
    periodic = PeriodicCheckpoint(run_dir / "checkpoints", cfg.checkpoint.every_n_steps, cfg.checkpoint.keep, guard)
    callbacks = [throughput, guard, resume_state, *extra_callbacks, LearningRateMonitor(logging_interval="step"),
                 periodic]
    if not on_cpu and cfg.trainer.get("enable_progress_bar", True):  # the bar reads the loss when it redraws
        callbacks.append(TQDMProgressBar(refresh_rate=log_every))
    trainer = L.Trainer(**cfg.trainer, logger=loggers, callbacks=callbacks, default_root_dir=str(run_dir),
                        enable_checkpointing=False, plugins=[AtomicCheckpointIO()],
                        use_distributed_sampler=False)  # the data modules shard themselves

    limit_gpu_memory()  # its share of each GPU, when a sweep runs several per GPU
    status = write_status if lead else (lambda *args, **kwargs: None)
    status(run_dir, "running", step=checkpoint_step(resume_from) if resume_from else 0, run_id=rid)

    def on_error(state: str, err: BaseException) -> None:
        if lead:
            fields = ({"error": describe_interruption(err)} if state == "interrupted"
                      else failure_fields(run_dir, err, describe_failure(err)))
            record_state(run_dir, state, step=trainer.global_step, run_id=rid, **fields)
        if use_wandb:
            code = interrupt_code(err) if state == "interrupted" else wandb_log.EXIT_CODES[state]
            _finish_wandb(read_status(run_dir), run_dir / "metrics.jsonl", code)

    metrics = _fit_and_test(cfg, trainer, task, data, resume_from, lead, guard, on_error)
    # the segment clock runs from the start of fitting to now: testing is inside it, not after it
    wall_s, test_s = resume_state.elapsed, metrics.pop("test_s")
    metrics["train_s"] = wall_s - test_s
    metrics["wall_s"] = wall_s
    metrics.update(throughput.medians())
    state = "diverged" if guard.message else "completed"
    status(run_dir, state, step=trainer.global_step, run_id=rid, message=guard.message,
           metrics={**resume_state.saved_metrics, **metrics}, signature=task_spec(cfg.task.name).signature(task),
           params=params, resumed_from_step=resume_state.resumed_from_step,
           segment_s=wall_s - resume_state.elapsed_before,  # this process's share of wall_s
           environment=environment("cpu" if _runs_on_cpu(cfg) else "gpu"))
    where = None
    if use_wandb:  # after the final status: a W&B failure warns, and never costs the run its result
        if guard.message is None:
            _log_to_wandb(cfg, task, data, trainer.global_step, rid)
        # the summary is status.json's result; diverged: a non-zero exit code
        where = _finish_wandb(read_status(run_dir), run_dir / "metrics.jsonl", wandb_log.EXIT_CODES[state])
    metrics = {**resume_state.saved_metrics, **metrics,
               "state": state, "run_dir": str(run_dir), "params": params["total"], "run_id": rid}
    _summary(cfg, metrics, guard.message, where)
    return metrics


def _prepare_data(cfg: RunConfig):
    """The task's data module, set up; and the config with what the data decides (the tokenizer's
    vocabulary size and pad id) recorded under ``derived``."""
    data = task_spec(cfg.task.name).datamodule(cfg.data, cfg.model.max_seq_len, cfg.seed)
    data.prepare_data()
    data.setup()
    for line in task_spec(cfg.task.name).notes(data):
        print(line)
    return cfg.with_derived(data.tokenizer), data


def _resume_point(cfg: RunConfig, lead: bool) -> Optional[Path]:
    """The newest complete checkpoint (None: start afresh); the metrics logged after it (all of
    them when starting afresh, as after a kill before the first checkpoint) are dropped, since
    the run logs them again."""
    ckpt_dir = cfg.run_dir / "checkpoints"
    if lead:
        remove_partial_writes(ckpt_dir)
    resume_from = latest_checkpoint(ckpt_dir)
    step = -1
    if resume_from is not None:
        step = checkpoint_step(resume_from)
        print(f"resuming {cfg.run.experiment}/{cfg.run_name} from {resume_from} (step {step})")
    if lead:
        _keep_metrics_up_to(cfg.run_dir, step)
    return resume_from


def _log_to_wandb(cfg: RunConfig, task, data, step: int, rid: str) -> None:
    """What people look at beside the numbers: the task's tables (its spec's ``tables``: test
    translations, LM continuations, masked-LM fills), and the final checkpoint as an artifact when
    asked for. Called after the final status is written: each that fails (W&B cannot write its
    staging files, say) is a warning naming it, and the run keeps its result."""
    rows = cfg.wandb.table_rows
    if rows > 0 and cfg.run.test:  # the tables show test examples: a run that never tests shows none
        for key, build in task_spec(cfg.task.name).tables(task, data, rows).items():
            _soft(f"the {key.replace('/', ' ')} table", lambda key=key, build=build: wandb_log.log_table(
                key, *build(), step))
    if cfg.wandb.log_checkpoints:
        _soft("the checkpoint artifact", lambda: wandb_log.log_checkpoint(
            latest_checkpoint(cfg.run_dir / "checkpoints"), cfg, rid))


def _soft(what: str, log, *args) -> Any:
    """``log(*args)``, a W&B extra: an exception from it is a warning naming ``what`` and the
    error (the run directory holds the result either way)."""
    try:
        return log(*args)
    except Exception as err:  # noqa: BLE001 - W&B is a copy of the result: never lose the run to it
        warnings.warn(f"W&B: could not log {what} ({type(err).__name__}: {one_line(str(err))}); the run's "
                      f"result is in its directory either way", stacklevel=2)
        return None


def _finish_wandb(status: dict[str, Any], metrics_path: Path, exit_code: int) -> Optional[str]:
    """``wandb_log.finish``, failing soft: a run's status is written before, and stays."""
    return _soft("the summary and end of the W&B run", wandb_log.finish, status, metrics_path, exit_code)


def _fit_and_test(cfg: RunConfig, trainer: L.Trainer, task, data, resume_from: Optional[Path], lead: bool,
                  guard: DivergenceGuard, on_error) -> dict[str, float]:
    """Fit, then test unless the run diverged or ``run.test`` is false. Returns the final metrics (``test_s``: seconds
    spent testing); ``on_error(state, err)`` records a failed or interrupted run before the
    exception goes on."""
    test_s = 0.0
    # the training RNG stream starts from the seed, whatever ran since the model was built
    # (a CPU peak measured or read from the cache, a W&B start): runs of one config are identical
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    try:
        trainer.fit(task, datamodule=data, ckpt_path=str(resume_from) if resume_from else None,
                    weights_only=True)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        if guard.message is None and cfg.run.test:
            test_start = time.time()
            trainer.test(task, datamodule=data, verbose=False)
            metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
            if lead:
                metrics.update(task_spec(cfg.task.name).after_test(task, data, cfg.run_dir))
            test_s = time.time() - test_start
    except BaseException as err:
        interrupted = isinstance(err, INTERRUPTIONS)
        on_error("interrupted" if interrupted else "failed", err)
        if interrupted:  # exit as a process stopped by the signal does, never 0 (Lightning's SIGTERM exit)
            raise SystemExit(interrupt_code(err)) from err
        raise
    return {**metrics, "test_s": test_s}


def run_command(items: Sequence[str], prog: str = "ablate train") -> int:
    """``ablate train`` on its arguments (config files and ``key=value`` overrides): 0 when the run
    completed, 1 when it failed or diverged, 2 for a config error or a directory holding another
    run, ``EXIT_LOCKED`` when another live process runs it."""
    from experiments.run.config import ConfigError, check_runnable_here, check_trainer, load_config

    try:
        cfg = load_config([a for a in items if "=" not in a], [a for a in items if "=" in a])
    except ConfigError as err:
        report_error(prog, err)
        return 2
    try:
        check_trainer(cfg.trainer)
        check_runnable_here(cfg.trainer, cfg.perf)
        memory_fraction()
    except (ConfigError, ValueError) as err:
        return _refused_at_start(cfg, err, prog)
    try:
        result = train(cfg)
    except (DataError, ConfigError) as err:  # raised before training starts: the data, not the code
        return _refused_at_start(cfg, err, prog)
    except RunLocked as err:
        report_error(prog, err)
        return EXIT_LOCKED
    except (RunMismatch, RunDirUnwritable) as err:
        report_error(prog, err)
        return 2
    return 0 if result["state"] == "completed" else 1


def _refused_at_start(cfg: RunConfig, err: Exception, prog: str) -> int:
    """A run refused before it trained (its Trainer settings, its data): the message, exit code 2,
    and a ``failed`` status with the error, so that a sweep shows it as failed, not pending."""
    report_error(prog, err)
    previous, rid = read_status(cfg.run_dir), run_id(cfg)
    if previous["state"] == "pending" or (previous["state"] == "failed" and previous.get("run_id") == rid):
        try:
            cfg.run_dir.mkdir(parents=True, exist_ok=True)
            write_status(cfg.run_dir, "failed", step=0, run_id=rid, error=str(err))
        except OSError:  # an unwritable directory: the message above is all there is
            pass
    return 2


def _summary(cfg: RunConfig, metrics: dict[str, Any], problem: Optional[str], where: Optional[str]) -> None:
    keys = [k for k in (*task_spec(cfg.task.name).printed, "perf/tokens_per_s_median", "perf/mfu_median")
            if k in metrics]
    keys += sorted(k for k in metrics if k.startswith("test/ppl_x"))
    print(f"\n== {cfg.run.experiment}/{cfg.run_name}: {metrics['state']}"
          f" ({metrics['wall_s']:.0f} s, {metrics['params']:,} parameters)")
    if problem:
        print(f"   {problem}")
    for k in keys:
        print(f"   {k:26} {metrics[k]:.4g}")
    print(f"   run directory: {metrics['run_dir']} (metrics.jsonl, config.yaml, checkpoints/)")
    print(f"   run id: {metrics['run_id']}")
    if where:
        print(f"   {where}")
