"""The README's main job: a small ablation on the ``bible`` data, on CPU, ending in a table.

Language modelling (English WEB): the GPT-2-style baseline and one slot changed at a time
(RoPE, ALiBi, RMSNorm, SwiGLU). Translation (German -> English): Pre-LN vs Post-LN.
One seed each: a demonstration of the pipeline, not a result (seed noise is not measured).
"""

from __future__ import annotations

from pathlib import Path

from experiments.config import load_config
from experiments.train import train

ROOT = Path(__file__).resolve().parents[1]
LAYER = ROOT / "configs" / "debug" / "demo.yaml"
RUNS = [
    ("lm-bible", []),
    ("lm-bible", ["model.position=rope"]),
    ("lm-bible", ["model.position=alibi"]),
    ("lm-bible", ["model.norm=rmsnorm"]),
    ("lm-bible", ["model.ffn=swiglu"]),
    ("mt-bible-de-en", ["model.max_seq_len=256"]),
    ("mt-bible-de-en", ["model.max_seq_len=256", "model.norm_position=post"]),
]
BASE = ["model.norm=layernorm", "model.norm_position=pre", "model.position=learned", "model.ffn=gelu"]


def run_demo(root: str = "runs", logger: str = "wandb", extra: list[str] | None = None) -> str:
    rows = []
    for experiment, changes in RUNS:
        cfg = load_config([ROOT / "configs" / "experiments" / f"{experiment}.yaml", LAYER],
                          [*BASE, *changes, f"run.root={root}", "run.experiment=demo-" + experiment,
                           f"logger={logger}", *(extra or [])])
        result = train(cfg)
        rows.append((experiment, cfg.run_name, result))
    table = _table(rows)
    out = Path(root) / "demo-summary.md"
    out.write_text(table)
    print("\n" + table + f"\n(written to {out})")
    return table


def _fmt(result: dict, key: str, spec: str) -> str:
    return format(result[key], spec) if key in result else "-"


def _table(rows) -> str:
    lines = ["| task | variant | params | state | val ppl | test ppl | test bpb | test BLEU | tokens/s¹ | MFU¹ | wall s |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for experiment, name, r in rows:
        lines.append(" | ".join([
            f"| {experiment}", name, f"{r['params']:,}", r["state"], _fmt(r, "val/ppl", ".1f"),
            _fmt(r, "test/ppl", ".1f"), _fmt(r, "test/bpb", ".3f"), _fmt(r, "test/bleu", ".2f"),
            _fmt(r, "perf/tokens_per_s_median", ",.0f"), _fmt(r, "perf/mfu_median", ".1%"),
            f"{r['wall_s']:.0f} |"]))
    lines.append("\n¹ medians over the run's logging windows (steady state, warm-up steps excluded)")
    return "\n".join(lines) + "\n"
