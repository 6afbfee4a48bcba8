"""One training run: data, model, Lightning Trainer, local run directory and W&B.

The run directory ``<run.root>/<experiment>/<run-name>/`` holds ``config.yaml`` (resolved),
``metrics.jsonl`` (one JSON object per logging event), ``status.json`` and ``checkpoints/``.
"""

from __future__ import annotations

import dataclasses
import json
import netrc
import os
import time
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint

from experiments.config import RunConfig, to_yaml
from lit.callbacks import DivergenceGuard, JsonlLogger, ThroughputMonitor, cpu_peak_flops
from lit.data.modules import build_datamodule
from lit.tasks import LanguageModelTask, TranslationTask


def write_status(run_dir: Path, state: str, **extra: Any) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / "status.json.tmp"
    tmp.write_text(json.dumps({"state": state, "time": time.time(), **extra}, indent=1))
    tmp.replace(run_dir / "status.json")


def wandb_has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def _wandb_logger(cfg: RunConfig, run_dir: Path, extra: dict):
    from lightning.pytorch.loggers import WandbLogger

    if "WANDB_MODE" not in os.environ and not wandb_has_credentials():
        os.environ["WANDB_MODE"] = "offline"  # never prompt, never wait on the network
    id_file = run_dir / "wandb_id"
    run_id = id_file.read_text().strip() if id_file.is_file() else None
    m = cfg.model
    logger = WandbLogger(
        project=cfg.wandb.project, entity=cfg.wandb.entity, name=cfg.run_name, group=cfg.run.experiment,
        tags=[m.norm, m.norm_position, m.position, m.ffn, *cfg.wandb.tags], save_dir=str(run_dir),
        id=run_id, resume="allow" if run_id else None,
        config={**dataclasses.asdict(cfg), **extra},
    )
    if run_id is None and os.environ.get("WANDB_MODE") != "disabled":
        id_file.write_text(logger.experiment.id)
    return logger


def _runs_on_cpu(cfg: RunConfig) -> bool:
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    return accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())


def train(cfg: RunConfig) -> dict[str, Any]:
    """Train, validate and test one configuration; returns the final metrics."""
    L.seed_everything(cfg.seed, workers=True)
    run_dir = cfg.run_dir
    data = build_datamodule(cfg.data, cfg.task.name, cfg.model.max_seq_len, cfg.seed)
    data.prepare_data()
    data.setup()
    tok = data.tokenizer
    dropped = getattr(data, "dropped_train", 0)
    if dropped:
        print(f"note: {dropped} training pairs longer than model.max_seq_len={cfg.model.max_seq_len} "
              f"were left out")
    cfg = dataclasses.replace(cfg, model=cfg.model.replace(vocab_size=tok.vocab_size, pad_id=tok.pad_id))
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))

    if cfg.task.name == "lm":
        task = LanguageModelTask(cfg.model, cfg.task, tok.pad_id, data.n_bytes, data.streams, data.block_size)
    else:
        task = TranslationTask(cfg.model, cfg.task, tok, data.references)
    params = task.model.num_params()
    extra = {"params": params, "fingerprint": task.model.fingerprint()}

    peak = cfg.perf.peak_flops
    if peak is None and _runs_on_cpu(cfg):  # measured before W&B starts its service process
        peak = cpu_peak_flops(Path(cfg.data.cache_dir))
    loggers = [JsonlLogger(run_dir)]
    if cfg.logger == "wandb":
        loggers.append(_wandb_logger(cfg, run_dir, extra))
    loggers[0].log_metrics({f"params/{k}": v for k, v in params.items()}, step=0)
    throughput = ThroughputMonitor(cfg.perf.warmup_steps, cfg.perf.every_n_steps, peak)
    guard = DivergenceGuard()
    checkpoints = ModelCheckpoint(dirpath=run_dir / "checkpoints", every_n_train_steps=cfg.checkpoint.every_n_steps,
                                  save_last=True, save_top_k=0)
    callbacks = [throughput, guard, checkpoints, LearningRateMonitor(logging_interval="step")]
    trainer = L.Trainer(**cfg.trainer, logger=loggers, callbacks=callbacks, default_root_dir=str(run_dir),
                        use_distributed_sampler=False)  # the data modules shard themselves

    last = run_dir / "checkpoints" / "last.ckpt"
    where = None
    write_status(run_dir, "running", step=0)
    start = time.time()
    try:
        trainer.fit(task, datamodule=data, ckpt_path=str(last) if last.is_file() else None)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        if guard.message is None:
            trainer.test(task, datamodule=data, verbose=False)
            metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
    except BaseException as err:
        write_status(run_dir, "failed", step=trainer.global_step, error=repr(err))
        raise
    finally:
        if cfg.logger == "wandb":
            import wandb

            where = _wandb_where(wandb.run)
            wandb.finish()  # one W&B run per job
    metrics["wall_s"] = time.time() - start
    metrics.update(throughput.medians())
    state = "diverged" if guard.message else "completed"
    write_status(run_dir, state, step=trainer.global_step, message=guard.message, metrics=metrics,
                 signature=getattr(task, "bleu_signature", None))
    metrics.update({"state": state, "run_dir": str(run_dir), "params": params["total"]})
    _summary(cfg, metrics, guard.message, where)
    return metrics


def _wandb_where(run) -> Optional[str]:
    """How to see the W&B run: its page when online, the sync command when offline."""
    if run is None or os.environ.get("WANDB_MODE") == "disabled":
        return None
    if run.settings.mode == "offline":
        return f"W&B offline: wandb sync {Path(run.dir).parent}"
    return f"W&B: {run.url}"


def _summary(cfg: RunConfig, metrics: dict[str, Any], problem: Optional[str], where: Optional[str]) -> None:
    keys = [k for k in ("val/loss", "val/ppl", "val/bpb", "val/bleu", "test/ppl", "test/bpb", "test/bleu",
                        "perf/tokens_per_s_median", "perf/mfu_median") if k in metrics]
    keys += sorted(k for k in metrics if k.startswith("test/ppl_x"))
    print(f"\n== {cfg.run.experiment}/{cfg.run_name}: {metrics['state']}"
          f" ({metrics['wall_s']:.0f} s, {metrics['params']:,} parameters)")
    if problem:
        print(f"   {problem}")
    for k in keys:
        print(f"   {k:26} {metrics[k]:.4g}")
    print(f"   run directory: {metrics['run_dir']} (metrics.jsonl, config.yaml, checkpoints/)")
    if where:
        print(f"   {where}")
