"""W&B for one run. The run directory stays the source of truth; W&B gets a copy laid out for
comparison:

- ``group`` = the variant (the run name without ``-s<seed>``), so the seeds of a variant fold
  into one line with a band; ``job_type`` = the sweep (the experiment for a single run).
- Top-level config keys ``variant``, ``sweep``, ``seed``, ``is_baseline``, ``run_id`` and one per
  component slot (``norm``, ``norm_position``, ``position``, ``ffn``, ``attention``), beside the
  whole resolved config.
- ``val/loss`` and ``val/ppl`` summarise as min, ``val/bleu`` as max, against
  ``trainer/global_step``.
- At the end, the summary gets the numbers ``status.json`` holds (with ``state``, the BLEU
  signature and the run id), then ``finish`` gets an exit code that is non-zero for failed,
  interrupted and diverged runs.
- Tables, as the task's spec builds them: 50 test translations with sentence BLEU, a few greedy
  continuations of test prompts, or 20 masked test positions with the model's fill; the final
  checkpoint as an artifact with ``wandb.log_checkpoints=true``.
- A resumed run keeps its W&B id and sends only the steps beyond those its killed segment
  already sent (read back from W&B's own files), so each step is in the W&B history once.
"""

from __future__ import annotations

import netrc
import os
import re
import shlex
import socket
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from lightning.pytorch.loggers import WandbLogger

from experiments.run.config import RunConfig, resolved
from experiments.run.rundir import metric_records
from experiments.run.wandb_records import run_segments, sent_metrics
from lit.checkpointing import saved_resume_state
from lit.specs import best_of

STEP_KEY = "trainer/global_step"
EXIT_CODES = {"completed": 0, "failed": 1, "diverged": 1, "interrupted": 130}  # SIGTERM: 143


# ------------------------------------------------------------------------------------- probes

def wandb_has_credentials() -> bool:
    """Whether W&B can log online: ``WANDB_API_KEY`` or a ``~/.netrc`` entry (else runs log offline)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def wandb_reachable(timeout_s: float = 5.0) -> Optional[str]:
    """None when W&B can be used online; otherwise why not."""
    if os.environ.get("WANDB_MODE") in ("offline", "disabled", "dryrun"):
        return f"WANDB_MODE={os.environ['WANDB_MODE']}"
    if not wandb_has_credentials():
        return "no W&B credentials (run `wandb login` or set WANDB_API_KEY)"
    base = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    host = base.split("://", 1)[-1].split("/", 1)[0]
    name, _, port = host.partition(":")
    try:
        socket.create_connection((name, int(port or 443)), timeout=timeout_s).close()
    except OSError as err:
        return f"{host} is unreachable ({err})"
    return None


def variant_name(cfg: RunConfig) -> str:
    """The run name without its ``-s<seed>`` suffix: what the seeds of one variant share."""
    return re.sub(rf"-s{cfg.seed}$", "", cfg.run_name)


def run_config(cfg: RunConfig, extra: dict[str, Any]) -> dict[str, Any]:
    """The W&B config: keys to group and filter by first, then the whole resolved config."""
    keys = {"variant": variant_name(cfg), "sweep": cfg.wandb.sweep, "seed": cfg.seed,
            "is_baseline": cfg.wandb.baseline, **cfg.model.components(), **cfg.model.option_values()}
    return {**keys, **resolved(cfg), **extra}


def run_tags(cfg: RunConfig) -> list[str]:
    """The chosen entries' names, their settings away from the defaults (``n_kv_heads=2``), then
    the config's own tags."""
    settings = [f"{key}={value}" for key, value in sorted(cfg.model.options.items())]
    return [*cfg.model.components().values(), *settings, *cfg.wandb.tags]


def saved_id(run_dir: Path) -> Optional[str]:
    id_file = run_dir / "wandb_id"
    return id_file.read_text().strip() if id_file.is_file() else None


class OncePerStep(WandbLogger):
    """Leaves out the (step, metric) values an earlier segment of this run already sent to W&B
    (the resumed run computes them again, identically)."""

    def __init__(self, *args, sent: set[tuple[int, str]] = frozenset(), **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.sent = set(sent)

    def log_metrics(self, metrics, step=None):
        if step is not None and self.sent:
            metrics = {k: v for k, v in metrics.items() if (step, k) not in self.sent}
            if not metrics:
                return
        super().log_metrics(metrics, step)


def _offline_without_credentials() -> None:
    """W&B logs offline when there are no credentials: never a prompt, never a wait on the network."""
    if "WANDB_MODE" not in os.environ and not wandb_has_credentials():
        os.environ["WANDB_MODE"] = "offline"


def make_logger(cfg: RunConfig, run_dir: Path, extra: dict[str, Any], resume_from: Optional[Path]):
    """The run's Lightning W&B logger (online with credentials, else offline), its W&B run
    started and the ``wandb_id`` file written."""
    _offline_without_credentials()
    id_file = run_dir / "wandb_id"
    wandb_id = saved_id(run_dir)
    if wandb_id is None and resume_from is not None:
        wandb_id = saved_resume_state(resume_from).get("wandb_id")  # the wandb_id file was lost
        if wandb_id:
            id_file.write_text(wandb_id)
    logger = OncePerStep(
        sent=sent_metrics(run_segments(run_dir, wandb_id)) if wandb_id and resume_from is not None else set(),
        project=cfg.wandb.project, entity=cfg.wandb.entity, name=cfg.run_name,
        group=cfg.wandb.group or variant_name(cfg), job_type=cfg.wandb.job_type or cfg.wandb.sweep or cfg.run.experiment,
        tags=run_tags(cfg), save_dir=str(run_dir),
        id=wandb_id, resume="allow" if wandb_id else None, config=run_config(cfg, extra),
        mode=os.environ.get("WANDB_MODE"),  # read now: W&B's settings outlive a run in a long process
    )
    if os.environ.get("WANDB_MODE") != "disabled":
        experiment = logger.experiment  # starts the W&B run
        for key, summary in best_of().items():
            experiment.define_metric(key, step_metric=STEP_KEY, summary=summary)
        if wandb_id is None:
            id_file.write_text(experiment.id)
    return logger


def where(run) -> Optional[str]:
    """How to see the W&B run: its page when online, the sync command when offline."""
    if run is None or os.environ.get("WANDB_MODE") == "disabled":
        return None
    if run.settings.mode == "offline":
        return f"W&B offline: wandb sync {shlex.quote(str(Path(run.dir).parent))}"
    return f"W&B: {run.url}"


def summary(status: dict[str, Any], metrics_path: Path) -> dict[str, Any]:
    """The W&B summary of a run: the final numbers of ``status.json``, with ``state``, the BLEU
    signature, the run id and the parameter count; the best-of metrics as ``{min|max, last}``
    over the run's ``metrics.jsonl``."""
    final, best = dict(status.get("metrics") or {}), best_of()
    out: dict[str, Any] = {k: v for k, v in final.items() if k not in best}
    history: dict[str, list[float]] = {}
    for record in metric_records(metrics_path.parent):
        for key in best:
            if key in record:
                history.setdefault(key, []).append(record[key])
    for key, how in best.items():
        if key in final or key in history:
            values = history.get(key) or [final[key]]
            out[key] = {how: (min if how == "min" else max)(values), "last": final.get(key, values[-1])}
    params = status.get("params") or {}
    out.update({"state": status.get("state"), "run_id": status.get("run_id"), "step": status.get("step"),
                "bleu_signature": status.get("signature"), "params": params.get("total"),
                "params_active": params.get("active"), "message": status.get("message")})
    return {k: v for k, v in out.items() if v is not None}


def finish(status: dict[str, Any], metrics_path: Path, exit_code: int) -> Optional[str]:
    """Write the summary, finish the W&B run with ``exit_code``; returns where to see it."""
    import wandb

    run = wandb.run
    if run is None:
        return None
    seen = where(run)
    run.summary.update(summary(status, metrics_path))
    wandb.finish(exit_code=exit_code)
    return seen


def log_table(key: str, columns: list[str], rows: list[list], step: int) -> None:
    """``rows`` under ``columns`` as the W&B Table ``key`` at ``step`` (nothing without a W&B run
    or rows): the tables a task's spec builds (:meth:`lit.specs.TaskSpec.tables`)."""
    import wandb

    if wandb.run is None or not rows:
        return
    wandb.run.log({key: wandb.Table(columns=columns, data=rows), STEP_KEY: step})


def log_checkpoint(path: Path, cfg: RunConfig, run_id: str) -> None:
    """The final checkpoint as a W&B model artifact (``model-<run name>``, alias ``final``)."""
    import wandb

    if wandb.run is None or path is None or not path.is_file():
        return
    artifact = wandb.Artifact(f"model-{cfg.run_name}", type="model",
                              metadata={"run_id": run_id, "step": _step_of(path), **cfg.model.components(),
                                        **cfg.model.option_values()})
    artifact.add_file(str(path))
    artifact.add_file(str(cfg.run_dir / "config.yaml"))
    if (cfg.run_dir / "tokenizer.json").is_file():
        artifact.add_file(str(cfg.run_dir / "tokenizer.json"))
    wandb.run.log_artifact(artifact, aliases=["final", "latest"])


def _step_of(path: Path) -> Optional[int]:
    found = re.search(r"step-(\d+)", path.name)
    return int(found.group(1)) if found else None


def log_report(folder: Path, project: str, entity: Optional[str], save_dir: Path) -> Optional[str]:
    """A report folder as the W&B artifact ``report-<folder name>`` (type ``report``), logged
    from a run of job type ``report`` kept under ``save_dir/wandb``; returns where to see it."""
    import wandb

    _offline_without_credentials()
    save_dir.mkdir(parents=True, exist_ok=True)
    run = wandb.init(project=project, entity=entity, name=f"report-{folder.name}", job_type="report",
                     dir=str(save_dir), mode=os.environ.get("WANDB_MODE"), config={"report": folder.name})
    artifact = wandb.Artifact(f"report-{folder.name}", type="report")
    artifact.add_dir(str(folder))
    run.log_artifact(artifact, aliases=["latest"])
    seen = where(run)
    run.finish()
    return seen
