"""The README's main job: a small ablation on the ``bible`` data, on CPU, ending in a report.

Two sweeps (``configs/sweeps/demo-lm.yaml``, ``demo-mt.yaml``): language modelling on the
English WEB, the GPT-2-style baseline and one slot changed at a time (RoPE, ALiBi, RMSNorm,
SwiGLU); translation German -> English, Pre-LN vs Post-LN. One seed each: a demonstration of the
pipeline, not a result (seed noise is not measured; the reports in ``reports/`` use 3 seeds).
Each sweep resumes like any other, and each ends in a report under ``<root>/reports/``.
"""

from __future__ import annotations

from pathlib import Path

from experiments.sweep.launchers.local import run_local
from experiments.report.page import build
from experiments.sweep.status import status_table
from experiments.sweep.spec import load_sweep

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = [ROOT / "configs" / "sweeps" / "demo-lm.yaml", ROOT / "configs" / "sweeps" / "demo-mt.yaml"]


def run_demo(root: str = "runs", logger: str = "wandb", extra: list[str] | None = None) -> int:
    overrides = [f"run.root={root}", f"logger={logger}", *(extra or [])]
    code, pages = 0, []
    for path in SWEEPS:
        sweep = load_sweep(path, overrides)
        code = max(code, run_local(sweep, workers=1))
        if code == 130:  # interrupted: stop here; running `ablate demo` again resumes
            return code
        pages.append(build(sweep, Path(root) / "reports" / sweep.name))
    print("\n" + "\n\n".join(status_table(load_sweep(p, overrides))[0] for p in SWEEPS))
    print("\nreports: " + ", ".join(str(p) for p in pages))
    return code
