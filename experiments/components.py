"""A tour of the registry: every registered component, built into every model kind.

For each variant (one slot changed from the baseline at a time) it prints the parameter
counts, the fingerprint read from the built modules, the time of one training step, and the
largest difference between cached step-by-step decoding and the full forward pass (``-`` for
the encoder-only kind, which does not decode).
"""

from __future__ import annotations

import time
from typing import Optional

import torch

from variants import REGISTRIES, ModelConfig, build_model
from variants.registry import KINDS

BASELINE = ModelConfig().components()  # the defaults: LayerNorm, Pre-LN, learned, GELU, mha


def variants_one_slot_at_a_time() -> list[dict[str, str]]:
    rows = [dict(BASELINE)]
    for slot, registry in REGISTRIES.items():
        rows += [{**BASELINE, slot: name} for name in registry.names() if name != BASELINE[slot]]
    return rows


def _cache_gap(model, tokens: torch.Tensor) -> Optional[float]:
    """Max |full forward - cached one-token-at-a-time decoding| over the logits; None for a kind
    that does not decode."""
    if model.cached is None:
        return None
    with torch.no_grad():
        full = model(*model.example_inputs(tokens))
        step, cache = model.stepper(tokens), model.new_cache(tokens.size(0), tokens.size(1))
        steps = [step(tokens[:, i:i + 1], cache) for i in range(tokens.size(1))]
    return (full - torch.cat(steps, dim=1)).abs().max().item()


def _train_step_ms(model, tokens: torch.Tensor, steps: int) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    times = []
    for _ in range(steps + 1):  # the first step (allocation, thread start-up) is not timed
        start = time.perf_counter()
        logits = model(*model.example_inputs(tokens))
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens.flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    times = sorted(times[1:])
    return 1000 * times[len(times) // 2]


def run_components(d_model: int = 256, steps: int = 3) -> None:
    torch.manual_seed(0)
    header = f"{'kind':8} {'norm':10} {'place':5} {'position':10} {'ffn':10} {'attention':9} {'params':>10} " \
             f"{'non-emb':>10} {'step ms':>8} {'cache gap':>9}"
    print(header)
    print("-" * len(header))
    for kind in KINDS.names():
        for slots in variants_one_slot_at_a_time():
            cfg = ModelConfig(kind=kind, vocab_size=8192, d_model=d_model, n_heads=4, n_layers=4,
                              max_seq_len=256, dropout=0.0, **slots)
            model = build_model(cfg)
            assert model.fingerprint() == slots, (model.fingerprint(), slots)
            tokens = torch.randint(1, cfg.vocab_size, (8, 64))
            step_ms = _train_step_ms(model.train(), tokens, steps)
            gap = _cache_gap(model.eval(), tokens[:2, :32])
            n = model.num_params()
            print(f"{kind:8} {slots['norm']:10} {slots['norm_position']:5} {slots['position']:10} "
                  f"{slots['ffn']:10} {slots['attention']:9} {n['total']:>10,} {n['non_embedding']:>10,} "
                  f"{step_ms:>8.1f} {'-' if gap is None else f'{gap:.1e}':>9}")
    print(f"\n(d_model {d_model}, 4 heads, 4 layers per stack, vocab 8192, batch 8 x 64 tokens, "
          f"median of {steps} training steps with AdamW, {torch.get_num_threads()} threads)")
