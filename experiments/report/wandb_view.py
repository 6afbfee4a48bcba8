"""``ablate wandb-view SWEEP.yaml``: a saved W&B workspace for a sweep.

The view is first written as a plain spec (JSON: what is filtered, grouped and plotted), then,
online, turned into a ``wandb_workspaces`` Workspace and saved. Panels:

- the headline validation metric against ``trainer/global_step``, one line per variant (the
  mean of its seeds) with the seeds' min-max band;
- the headline test metric per variant as bars (mean, ± standard deviation over seeds);
- throughput per variant (median tokens/s of each run, mean ± standard deviation);
- the runs table, filtered to the sweep (job type = the sweep's name) and to the run ids the sweep
  computes (a run of another configuration logged under the same job type, before the sweep's
  file or overrides changed, is left out), grouped by variant.

Offline (no credentials, no network or ``WANDB_MODE=offline``) only the spec is written, with a
note on how to publish it once the runs are synced.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any, Optional

from experiments.run.rundir import read_status
from experiments.sweep.spec import Sweep
from experiments.sweep.status import other_configuration
from experiments.run.wandb_log import STEP_KEY
from tools.errors import report_error
from lit.specs import task_spec

THROUGHPUT = "perf/tokens_per_s_median"


class ViewError(RuntimeError):
    """The view cannot be published (a package or credential is missing)."""


def view_spec(sweep: Sweep) -> dict[str, Any]:
    """The workspace of ``sweep`` as plain data."""
    cfg = sweep.runs[0].cfg
    val, test = task_spec(cfg.task.name).headline
    return {
        "name": f"ablate: {sweep.name}", "entity": cfg.wandb.entity, "project": cfg.wandb.project,
        "sweep": sweep.name, "filter": {"job_type": sweep.name}, "group_by": "variant",
        "run_ids": [r.run_id for r in sweep.runs if r.awaiting is None],  # config:run_id, another filter
        "baseline": sweep.baseline, "variants": sweep.variants, "seeds": sweep.seeds,
        "panels": [
            {"kind": "line", "title": f"{val} by variant (mean of the seeds, band: min-max)", "x": STEP_KEY,
             "y": val, "aggregate": "mean", "band": "minmax"},
            {"kind": "bar", "title": f"{test} by variant (mean ± std over seeds)", "metric": test,
             "aggregate": "mean", "band": "stddev"},
            {"kind": "bar", "title": "throughput: median tokens/s per run (mean ± std over seeds)",
             "metric": THROUGHPUT, "aggregate": "mean", "band": "stddev"},
        ],
        "columns": ["config:variant", "config:seed", "config:is_baseline", "summary:state", f"summary:{test}",
                    f"summary:{val}", f"summary:{THROUGHPUT}", "summary:perf/mfu_median"],
    }


def to_workspace(spec: dict[str, Any], entity: Optional[str] = None):
    """The ``wandb_workspaces`` Workspace of a spec (built offline; saving needs W&B online)."""
    try:
        import wandb_workspaces.reports.v2 as wr
        import wandb_workspaces.workspaces as ws
        from wandb_workspaces import expr
    except ImportError:
        raise ViewError("saving a W&B workspace needs the wandb-workspaces package: "
                        "pip install 'ablate[wandb]' (or pip install wandb-workspaces)") from None
    panels = []
    for panel in spec["panels"]:
        common = {"title": panel["title"], "groupby": spec["group_by"], "groupby_aggfunc": panel["aggregate"],
                  "groupby_rangefunc": panel["band"]}
        if panel["kind"] == "line":
            panels.append(wr.LinePlot(x=panel["x"], y=[panel["y"]], **common))
        else:
            panels.append(wr.BarPlot(metrics=[panel["metric"]], **common))
    runs = ws.RunsetSettings(filters=[expr.Metric("JobType") == spec["filter"]["job_type"],
                                      expr.Config("run_id").isin(spec["run_ids"])],
                             groupby=[expr.Config(spec["group_by"])],
                             pinned_columns=["run:displayName", *spec["columns"]])
    return ws.Workspace(entity=entity or spec["entity"] or "", project=spec["project"], name=spec["name"],
                        sections=[ws.Section(name=spec["sweep"], panels=panels, is_open=True)],
                        runset_settings=runs)


def build_view(sweep: Sweep, out: Optional[Path] = None) -> tuple[Path, Optional[str], Optional[str]]:
    """Write the spec (``out``, default ``<run root>/<sweep>/wandb-view.json``); online, save the
    workspace too. Returns the spec's path, the workspace URL (None offline) and why W&B was not
    reachable (None online)."""
    from experiments.run.wandb_log import wandb_reachable

    spec = view_spec(sweep)
    out = Path(out) if out else sweep.root / "wandb-view.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(spec, indent=2) + "\n")
    problem = wandb_reachable()
    if problem:
        return out, None, problem
    import wandb

    entity = spec["entity"] or wandb.Api().default_entity
    workspace = to_workspace(spec, entity).save()
    return out, workspace.url, None


def command(sweep: Sweep, out: Optional[str]) -> int:
    """The CLI: 0 when the view was written (and saved online), 2 when it cannot be."""

    try:
        path, url, problem = build_view(sweep, Path(out) if out else None)
    except ViewError as err:
        report_error("ablate wandb-view", err)
        return 2
    other = [run.name for run in sweep.runs if other_configuration(run, read_status(run.run_dir).get("run_id"))]
    if other:
        print(f"left out of the view: {len(other)} run director{'y' if len(other) == 1 else 'ies'} of another "
              f"configuration (run ids not the sweep's): {', '.join(other)}")
    if url:
        print(f"saved the W&B workspace {url} (spec: {path})")
    else:
        print(f"W&B is not reachable ({problem}): wrote the workspace spec to {path}.\n"
              f"To publish it: upload the runs (wandb sync {shlex.quote(str(sweep.root))}/*/wandb/offline-run-*), then run "
              f"`ablate wandb-view {shlex.quote(str(sweep.path))}` again with W&B credentials (wandb login) and "
              f"pip install 'ablate[wandb]'.")
    return 0
