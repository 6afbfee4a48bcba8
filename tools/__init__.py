"""Plain helpers below the Lightning layer, used by lit, experiments and benchmarks alike:
error reporting for the commands (errors), the machine and its peak FLOP/s (system), and the
metric definitions (metrics: BLEU, chrF, perplexity, bits per byte). Imports torch and
sacrebleu, nothing of Lightning, OmegaConf or W&B, and nothing else of ours."""
