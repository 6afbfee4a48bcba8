"""The bench sections: LM training, encoder-decoder training, decoding with the KV cache.

Each section builds its implementations at identical dimensions, times them interleaved
(:func:`benchmarks.measure.time_interleaved`) and returns one row per implementation:
tokens/s (median and spread over the timed rounds), MFU, peak memory and the ratio to the
section's reference (the fastest peer for LM training, ``torch.nn.Transformer`` for
encoder-decoder training, Hugging Face ``generate`` for decoding).

Training units are what ``ablate train`` computes per step: forward, the token-level
cross-entropy (sum over non-pad targets / their count, in fp32), backward, fused AdamW, and
zeroing the gradients; under CUDA the forward runs in bf16 autocast (``bf16-mixed``). Ours
computes the head and the loss fused (``model.loss``, as the training task does); the peers
compute full logits and ``F.cross_entropy``, which is what their own training losses do.
"""

from __future__ import annotations

import contextlib
import statistics
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks import models as M
from benchmarks.config import BenchConfig
from benchmarks.measure import (Contender, op_profile, out_of_memory, peak_bytes, persistent_bytes, summary,
                                time_interleaved)
from variants.decoding import beam_translate, greedy_generate, greedy_translate
from variants.flops import FlopCounter, lm_decode_flops, s2s_decode_flops

PAD = 0

PRESET_TITLES = {"gpt2": "gpt2-style", "llama": "llama-style", "alibi": "alibi (bloom-style)",
                 "vaswani": "vaswani"}


def autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean NLL over non-pad targets from full logits, in fp32: the peers' training objective."""
    nll = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=PAD,
                          reduction="sum")
    return nll / (targets != PAD).sum().clamp(min=1)


def ours_loss(model, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Our training objective as ``ablate train`` computes it: head and loss fused, plus the
    auxiliary losses of its components (a mixture of experts' load balancing)."""
    objective, _ = model.loss(hidden, targets, PAD)
    objective = objective / (targets != PAD).sum().clamp(min=1)
    auxiliary = model.auxiliary()
    return objective + auxiliary["loss"] if auxiliary else objective


def training_unit(model: nn.Module, objective: Callable[[], torch.Tensor],
                  device: torch.device) -> tuple[Callable[[], None], torch.optim.Optimizer]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, fused=True)

    def unit():
        with autocast(device):
            loss = objective()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return unit, optimizer


def train_contender(impl: str, model: nn.Module, inputs: tuple, targets: torch.Tensor, tokens: int,
                    flops: float, device: torch.device, ours: bool = False, compile: bool = False,
                    note: str = "") -> Contender:
    """A training step of ``model``; ours through ``model.hidden`` + ``model.loss``, peers through
    their logits and ``token_loss``; with ``compile``, the whole objective (model, head and loss)
    goes through ``torch.compile``, ours and peers alike."""
    model = model.to(device).train()
    if ours:
        def loss(*inputs):  # the bench's batches hold no padding, and ours is told so
            return ours_loss(model, model.hidden(*inputs, padded=False), targets)

        # compiled: the whole objective, head and loss included (``model.loss`` switches to the
        # plain formula under the compiler, which fuses it)
        compiled = torch.compile(loss) if compile else loss

        def objective():
            return compiled(*inputs)
    else:
        def loss(*inputs):
            return token_loss(model(*inputs), targets)

        compiled = torch.compile(loss) if compile else loss  # peers compiled the same way: like with like

        def objective():
            return compiled(*inputs)
    unit, optimizer = training_unit(model, objective, device)
    try:
        unit()  # creates the optimizer state: memory is measured with it in place
    except torch.OutOfMemoryError:
        return Contender(impl, unit, tokens, flops, ours=ours, note=note, failed=out_of_memory(device))
    return Contender(impl, unit, tokens, flops, ours=ours, note=note, warmup=3 if compile else 0,
                     memory=lambda: peak_bytes(unit, device, persistent_bytes(model, optimizer)))


def _rows(section: str, title: str, contenders: list[Contender], reference: Optional[str],
          peak: float, settings: str, measure_memory: bool = True,
          profile_on: Optional[torch.device] = None) -> list[dict]:
    """One row per contender; ``reference`` None = the fastest non-ours contender. With
    ``profile_on``, ours and the reference also get an operator profile (``row["profile"]``)."""
    failed = [c for c in contenders if c.failed]
    contenders = [c for c in contenders if not c.failed]
    stats = {c.impl: summary(c.times, c.tokens) for c in contenders}
    peers = [c for c in contenders if not c.ours]
    if reference is None and peers:
        reference = max(peers, key=lambda c: stats[c.impl]["median"]).impl
    ref_rate = stats[reference]["median"] if reference in stats else None
    rows = []
    for c in contenders:
        s = stats[c.impl]
        try:
            mem = c.memory() if (measure_memory and c.memory is not None) else None
        except torch.OutOfMemoryError:  # timed, but the memory measurement did not fit
            mem = None
            torch.cuda.empty_cache()
        rows.append({
            "section": section, "model": title, "impl": c.impl, "ours": c.ours,
            "tokens_per_s": s["median"], "min": s["min"], "max": s["max"], "q1": s["q1"], "q3": s["q3"],
            "repeats": len(c.times), "mfu": c.flops * s["median"] / c.tokens / peak if peak else None,
            "peak_mem_mb": mem / 2**20 if mem is not None else None,
            "ratio": s["median"] / ref_rate if ref_rate else None, "reference": reference,
            "settings": settings, "note": c.note,
            "profile": ({**op_profile(c.unit, profile_on), "unit_ms": 1000 * statistics.median(c.times)}
                        if profile_on is not None and (c.ours or c.impl == reference) else None),
        })
    for c in failed:
        rows.append({"section": section, "model": title, "impl": c.impl, "ours": c.ours, "tokens_per_s": None,
                     "min": None, "max": None, "q1": None, "q3": None, "repeats": 0, "mfu": None,
                     "peak_mem_mb": None, "ratio": None, "reference": reference, "settings": settings,
                     "note": c.failed, "profile": None})
    return rows


def lm_batch(cfg: BenchConfig, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The LM rows' (inputs, targets): random non-pad tokens, the same for every implementation."""
    gen = torch.Generator().manual_seed(cfg.seed)
    data = torch.randint(1, cfg.vocab_size, (cfg.lm_batch, cfg.lm_seq_len + 1), generator=gen).to(device)
    return data[:, :-1], data[:, 1:]


def s2s_batch(cfg: BenchConfig, device: torch.device) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The encoder-decoder rows' ((sources, decoder inputs), targets)."""
    gen = torch.Generator().manual_seed(cfg.seed)
    V, B = cfg.s2s_dims()["vocab_size"], cfg.s2s_batch
    src = torch.randint(1, V, (B, cfg.s2s_src_len), generator=gen).to(device)
    tgt = torch.randint(1, V, (B, cfg.s2s_tgt_len + 1), generator=gen).to(device)
    return (src, tgt[:, :-1]), tgt[:, 1:]


def _profiling(cfg: BenchConfig, device: torch.device) -> Optional[torch.device]:
    return device if "profile" in cfg.sections else None


def _seeded(seed: int):
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------- LM training
def train_lm(cfg: BenchConfig, device: torch.device, peak: float, log=print) -> list[dict]:
    rows = []
    B, T = cfg.lm_batch, cfg.lm_seq_len
    inputs, targets = lm_batch(cfg, device)
    settings = (f"vocab {cfg.vocab_size}, d_model {cfg.d_model}, {cfg.n_layers} layers, {cfg.n_heads} heads, "
                f"d_ff {cfg.d_ff}, context {T}, batch {B}, dropout {cfg.dropout}")
    for preset in cfg.presets:
        title = PRESET_TITLES[preset]
        log(f"train-lm {title}")
        mcfg = M.preset_config(preset, kind="lm", **cfg.dims())
        _seeded(cfg.seed)
        model = M.ours(mcfg)
        flops = FlopCounter(model)(B * T, T)
        for compiled in ([False, True] if cfg.compile else [False]):
            if compiled:
                _seeded(cfg.seed)
                model = M.ours(mcfg)
            contenders = [train_contender(_impl("ablate", compiled), model, (inputs,), targets, B * T, flops, device,
                                          ours=True, compile=compiled)]
            contenders += _lm_peers(preset, mcfg, inputs, targets, B * T, flops, device, cfg, log, compiled)
            time_interleaved(contenders, device, cfg.warmup, cfg.repeats, log)
            rows += _rows("train-lm", _title(title, compiled), contenders, None, peak, settings,
                          profile_on=None if compiled else _profiling(cfg, device))
    return rows


def _impl(name: str, compiled: bool) -> str:
    return f"{name} + torch.compile" if compiled else name


def _title(title: str, compiled: bool) -> str:
    """With ``--compile`` every model of a table is compiled, so that its ratios compare like
    with like; the compiled table carries this suffix."""
    return f"{title}, torch.compile" if compiled else title


def missing_peers(sections: tuple[str, ...]) -> list[str]:
    """Notes for the report on the peers the sections wanted and this environment lacks."""
    notes = []
    if {"train-lm", "train-seq2seq"} & set(sections) and not M.available("x-transformers"):
        notes.append("x-transformers is not installed: its rows are skipped (pip install 'ablate[bench]')")
    if "train-lm" in sections and not M.available("transformers"):
        notes.append("transformers is not installed: its rows are skipped")
    if "decode" in sections and not M.available("transformers"):
        notes.append("transformers is not installed: decoding is compared with nothing")
    return notes


def _lm_peers(preset, mcfg, inputs, targets, tokens, flops, device, cfg, log, compiled=False) -> list[Contender]:
    peers = []
    if M.available("x-transformers"):
        _seeded(cfg.seed)
        peers.append(train_contender(_impl("x-transformers", compiled), M.XTransformersLM(mcfg), (inputs,),
                                     targets, tokens, flops, device, compile=compiled))
    if M.available("transformers"):
        _seeded(cfg.seed)
        hf = M.hf_lm(preset, mcfg)
        if hf is not None:
            name = type(hf).__name__.replace("ForCausalLM", "").replace("LMHeadModel", "")
            peers.append(train_contender(_impl(f"transformers ({name})", compiled), M.HFCausalLM(hf), (inputs,),
                                         targets, tokens, flops, device, compile=compiled))
    return peers


# ---------------------------------------------------------------------------- encoder training
MASKED_SHARE = 0.15  # of the positions carry a target, as in masked-LM training


def train_encoder(cfg: BenchConfig, device: torch.device, peak: float, log=print) -> list[dict]:
    """Masked-LM training of our bert-style encoder (``configs/model/bert.yaml``: Post-LN, learned
    positions, GELU, an embedding norm, the prediction head) against ``BertForMaskedLM`` at the
    same size, on the LM rows' tokens with 15% of the positions as targets (the rest ignored),
    the same for both; tokens/s counts every input token, FLOPs the head over every position."""
    B, T = cfg.lm_batch, cfg.lm_seq_len
    inputs, _ = lm_batch(cfg, device)
    chosen = torch.rand(inputs.shape, generator=torch.Generator().manual_seed(cfg.seed + 1)) < MASKED_SHARE
    targets = inputs.masked_fill(~chosen.to(device), PAD)
    settings = (f"bert-style encoder, masked LM ({100 * MASKED_SHARE:.0f}% of positions as targets): vocab "
                f"{cfg.vocab_size}, d_model {cfg.d_model}, {cfg.n_layers} layers, {cfg.n_heads} heads, d_ff "
                f"{cfg.d_ff}, length {T}, batch {B}, dropout {cfg.dropout}")
    title = "bert-style encoder"
    log(f"train-encoder {title}")
    mcfg = M.preset_config("bert", kind="encoder", **cfg.dims())
    _seeded(cfg.seed)
    model = M.ours(mcfg)
    flops = FlopCounter(model)(B * T, T)
    contenders = [train_contender("ablate", model, (inputs,), targets, B * T, flops, device, ours=True)]
    if M.available("transformers"):
        _seeded(cfg.seed)
        contenders.append(train_contender("transformers (BertForMaskedLM)", M.HFMaskedLM(M.hf_bert(mcfg)),
                                          (inputs,), targets, B * T, flops, device))
    time_interleaved(contenders, device, cfg.warmup, cfg.repeats, log)
    return _rows("train-encoder", title, contenders, None, peak, settings)


# -------------------------------------------------------------------------- head + loss alone
def head_loss(cfg: BenchConfig, device: torch.device, peak: float, log=print) -> list[dict]:
    """The output head and the token-level cross-entropy alone, forward and backward, at the LM
    rows' shape: our chunks with eager softmax passes, our chunks through the compiled region
    (``fused``, the CUDA default) and the peers' way, full logits and ``F.cross_entropy``
    (the reference)."""
    from variants.loss import linear_cross_entropy

    B, T, D, V = cfg.lm_batch, cfg.lm_seq_len, cfg.d_model, cfg.vocab_size
    title = "output head + cross-entropy"
    log(f"loss {title}")
    gen = torch.Generator().manual_seed(cfg.seed)
    hidden = torch.randn(B * T, D, generator=gen).to(device).requires_grad_()
    weight = (D ** -0.5 * torch.randn(V, D, generator=gen)).to(device).requires_grad_()
    targets = torch.randint(1, V, (B * T,), generator=gen).to(device)
    flops = 6.0 * B * T * D * V  # the head's product forward, and its two products backward

    def unit_of(objective: Callable[[], torch.Tensor]) -> Callable[[], None]:
        def unit():
            with autocast(device):
                loss = objective()
            loss.backward()
            hidden.grad = weight.grad = None
        return unit

    def ours(fused: bool):
        return lambda: linear_cross_entropy(hidden, weight, targets, PAD, fused=fused)[0]

    def plain():
        return F.cross_entropy(F.linear(hidden, weight).float(), targets, ignore_index=PAD, reduction="sum")

    contenders = []
    for impl, objective, is_ours, warmup in [("ablate, chunks, eager", ours(False), True, 0),
                                             ("ablate, chunks, compiled region", ours(True), True, 3),
                                             ("full logits + F.cross_entropy", plain, False, 0)]:
        unit = unit_of(objective)
        contenders.append(Contender(impl, unit, B * T, flops, ours=is_ours, warmup=warmup,
                                    memory=lambda unit=unit: peak_bytes(unit, device, 0)))
    time_interleaved(contenders, device, cfg.warmup, cfg.repeats, log)
    settings = (f"{B * T} tokens (batch {B} x context {T}), d_model {D}, vocab {V}; forward and backward of "
                f"the head's product and the summed loss; peak MB counts the unit's own allocations")
    return _rows("loss", title, contenders, "full logits + F.cross_entropy", peak, settings,
                 profile_on=_profiling(cfg, device))


# ----------------------------------------------------------------------- position schemes
POSITION_SCHEMES = ("rope", "learned", "alibi")


def positions(cfg: BenchConfig, device: torch.device, peak: float, log=print) -> list[dict]:
    """Our gpt2-style LM with each position scheme, all else equal; ratios against RoPE
    (on a GPU, ALiBi's bias is added inside a FlexAttention kernel)."""
    B, T = cfg.lm_batch, cfg.lm_seq_len
    inputs, targets = lm_batch(cfg, device)
    settings = (f"gpt2-style (LayerNorm, Pre-LN, GELU) with each position scheme: vocab {cfg.vocab_size}, "
                f"d_model {cfg.d_model}, {cfg.n_layers} layers, {cfg.n_heads} heads, d_ff {cfg.d_ff}, "
                f"context {T}, batch {B}")
    rows = []
    for compiled in ([False, True] if cfg.compile else [False]):
        title = "gpt2-style positions" + (", torch.compile" if compiled else "")
        log(f"positions {title}")
        contenders = []
        for scheme in POSITION_SCHEMES:
            mcfg = M.preset_config("gpt2", kind="lm", **{**cfg.dims(), "position": scheme})
            _seeded(cfg.seed)
            model = M.ours(mcfg)
            flops = FlopCounter(model)(B * T, T)
            contenders.append(train_contender(f"ablate, {scheme}", model, (inputs,), targets, B * T, flops,
                                              device, ours=True, compile=compiled))
        time_interleaved(contenders, device, cfg.warmup, cfg.repeats, log)
        rows += _rows("positions", title, contenders, "ablate, rope", peak, settings)
    return rows


MOE_CONTENDERS = (("ablate dense (swiglu)", {"ffn": "swiglu"}),
                  ("ablate moe, 4 experts top-2", {"ffn": "moe"}),
                  ("ablate moe, 8 experts top-2", {"ffn": "moe", "n_experts": 8}))


def moe(cfg: BenchConfig, device: torch.device, peak: float, log=print) -> list[dict]:
    """Our llama-style LM with its SwiGLU feed-forward and with mixtures of SwiGLU experts sized
    to the same active FLOPs per token (``moe_sizing: active``), all else equal; ratios against
    the dense model. Tokens/s at equal active FLOPs is what routing costs; MFU counts active
    FLOPs."""
    B, T = cfg.lm_batch, cfg.lm_seq_len
    inputs, targets = lm_batch(cfg, device)
    settings = (f"llama-style (RMSNorm, Pre-LN, RoPE, SwiGLU experts, top-2, load-balancing loss 0.01): vocab "
                f"{cfg.vocab_size}, d_model {cfg.d_model}, {cfg.n_layers} layers, {cfg.n_heads} heads, d_ff "
                f"{cfg.d_ff}, context {T}, batch {B}")
    title = "llama-style LM: dense vs mixture of experts (iso-FLOP)"
    log(f"moe {title}")
    contenders = []
    for impl, ffn in MOE_CONTENDERS:
        mcfg = M.preset_config("llama", kind="lm", **cfg.dims()).replace(**ffn)
        _seeded(cfg.seed)
        model = M.ours(mcfg)
        counts = model.num_params()
        flops = FlopCounter(model)(B * T, T)
        note = f"{counts['total']:,} parameters" + (f", {counts['active']:,} active" if "active" in counts else "")
        contenders.append(train_contender(impl, model, (inputs,), targets, B * T, flops, device, ours=True,
                                          note=note))
    time_interleaved(contenders, device, cfg.warmup, cfg.repeats, log)
    return _rows("moe", title, contenders, "ablate dense (swiglu)", peak, settings)


# --------------------------------------------------------------------------- seq2seq training
def train_seq2seq(cfg: BenchConfig, device: torch.device, peak: float, log=print) -> list[dict]:
    B, S, T = cfg.s2s_batch, cfg.s2s_src_len, cfg.s2s_tgt_len
    title = "vaswani enc-dec"
    log(f"train-seq2seq {title}")
    mcfg = M.preset_config("vaswani", kind="seq2seq", **cfg.s2s_dims())
    inputs, targets = s2s_batch(cfg, device)
    _seeded(cfg.seed)
    model = M.ours(mcfg)
    flops = FlopCounter(model)(B * T, T, B * S, S)
    settings = (f"vocab {mcfg.vocab_size}, d_model {mcfg.d_model}, {cfg.s2s_layers}+{cfg.s2s_layers} layers, "
                f"{mcfg.n_heads} heads, d_ff {mcfg.d_ff}, source/target {S}/{T}, batch {B}, "
                f"dropout {cfg.dropout}; tokens/s counts target tokens")
    rows = []
    for compiled in ([False, True] if cfg.compile else [False]):
        if compiled:
            _seeded(cfg.seed)
            model = M.ours(mcfg)
        contenders = [train_contender(_impl("ablate", compiled), model, inputs, targets, B * T, flops, device,
                                      ours=True, compile=compiled)]
        _seeded(cfg.seed)
        contenders.append(train_contender(_impl("torch.nn.Transformer", compiled), M.TorchTransformerSeq2Seq(mcfg),
                                          inputs, targets, B * T, flops, device, compile=compiled))
        if M.available("x-transformers"):
            _seeded(cfg.seed)
            contenders.append(train_contender(_impl("x-transformers", compiled), M.XTransformersSeq2Seq(mcfg),
                                              inputs, targets, B * T, flops, device, compile=compiled))
        time_interleaved(contenders, device, cfg.warmup, cfg.repeats, log)
        rows += _rows("train-seq2seq", _title(title, compiled), contenders, _impl("torch.nn.Transformer", compiled),
                      peak, settings, profile_on=None if compiled else _profiling(cfg, device))
    return rows


# ------------------------------------------------------------------------------------ decoding
def decode(cfg: BenchConfig, device: torch.device, peak: float, log=print) -> list[dict]:
    """Greedy LM continuation, then greedy and beam-search translation (with transformers
    installed: the same weights in Hugging Face and imported into ours)."""
    gen = torch.Generator().manual_seed(cfg.seed)
    prompt = torch.randint(3, cfg.vocab_size, (cfg.decode_batch, cfg.decode_prompt), generator=gen).to(device)
    rows = _decode_lm(cfg, device, peak, prompt, log)
    rows += _decode_gqa(cfg, device, peak, prompt, log)
    if M.available("transformers"):
        rows += _decode_translation(cfg, device, peak, prompt, log)
    return rows


def _decode_lm(cfg: BenchConfig, device: torch.device, peak: float, prompt: torch.Tensor, log) -> list[dict]:
    """Greedy LM continuation: the same GPT-2 weights in HF and imported into ours."""
    B, P, N = cfg.decode_batch, cfg.decode_prompt, cfg.decode_new
    title = "gpt2-style LM, greedy"
    log(f"decode {title}")
    mcfg = M.preset_config("gpt2", kind="lm", **{**cfg.dims(), "dropout": 0.0})
    contenders = []
    flops = None
    if M.available("transformers"):
        from variants.interop import from_hf

        _seeded(cfg.seed)
        hf = M.hf_lm("gpt2", mcfg).to(device).eval()
        ours = from_hf(hf).to(device).eval()
        flops = lm_decode_flops(ours, B, P, N)
        mask = torch.ones_like(prompt)
        contenders.append(Contender("ablate (same weights)", lambda: greedy_generate(ours, prompt, N), B * N,
                                    flops, ours=True, memory=_no_grad_peak(lambda: greedy_generate(ours, prompt, N),
                                                                            device, ours)))
        hf_unit = _hf_generate(hf, dict(input_ids=prompt, attention_mask=mask), N, beams=1)
        contenders.append(Contender("transformers generate", hf_unit, B * N, flops,
                                    memory=_no_grad_peak(hf_unit, device, hf)))
    else:
        _seeded(cfg.seed)
        ours = M.ours(mcfg).to(device).eval()
        flops = lm_decode_flops(ours, B, P, N)
        contenders.append(Contender("ablate", lambda: greedy_generate(ours, prompt, N), B * N, flops, ours=True))
    if M.available("x-transformers"):
        from x_transformers import AutoregressiveWrapper

        _seeded(cfg.seed)
        xt = AutoregressiveWrapper(M.XTransformersLM(mcfg).net).to(device).eval()

        @torch.no_grad()
        def xt_unit():
            return xt.generate(prompt, N, temperature=0.0, cache_kv=True)

        contenders.append(Contender("x-transformers generate", xt_unit, B * N, flops,
                                    note="own random weights, same dimensions",
                                    memory=_no_grad_peak(xt_unit, device, xt)))
    time_interleaved(contenders, device, 1, cfg.decode_repeats, log)
    settings = f"batch {B}, prompt {P}, {N} new tokens; tokens/s counts new tokens"
    ref = "transformers generate" if any(c.impl == "transformers generate" for c in contenders) else None
    return _rows("decode", title, contenders, ref, peak, settings, profile_on=_profiling(cfg, device))


def _decode_gqa(cfg: BenchConfig, device: torch.device, peak: float, prompt: torch.Tensor, log) -> list[dict]:
    """Greedy LM continuation of the llama-style composition with 1, 2 and ``n_heads`` key/value
    heads (multi-query, grouped-query, multi-head): tokens/s against multi-head, and the KV
    cache's size (its keys and values for the prompt and every new token)."""
    B, P, N = cfg.decode_batch, cfg.decode_prompt, cfg.decode_new
    title = "llama-style LM, greedy: key/value heads"
    log(f"decode {title}")
    heads = cfg.n_heads
    contenders = []
    for kv in sorted({1, min(2, heads), heads}):
        if heads % kv:
            continue
        attention = {"attention": "mha"} if kv == heads else {"attention": "gqa", "n_kv_heads": kv}
        mcfg = M.preset_config("llama", kind="lm", **{**cfg.dims(), "dropout": 0.0}).replace(**attention)
        _seeded(cfg.seed)
        model = M.ours(mcfg).to(device).eval()
        cache = model.new_cache(B, P + N)
        cache_mb = sum(t.numel() * t.element_size() for t in (*cache.keys, *cache.values)) / 2**20
        del cache

        def unit(model=model):
            return greedy_generate(model, prompt, N)

        name = "ablate mha" if kv == heads else f"ablate gqa, {kv} key/value head{'s' if kv > 1 else ''}"
        contenders.append(Contender(name, unit, B * N, lm_decode_flops(model, B, P, N), ours=True,
                                    note=f"KV cache {cache_mb:.3g} MB ({kv} of {heads} heads)",
                                    memory=_no_grad_peak(unit, device, model)))
    time_interleaved(contenders, device, 1, cfg.decode_repeats, log)
    settings = f"batch {B}, prompt {P}, {N} new tokens; tokens/s counts new tokens; ratio against multi-head"
    # all ours (no peer, so no speed goal): the ratio reads against multi-head
    return _rows("decode", title, contenders, "ablate mha", peak, settings, profile_on=_profiling(cfg, device))


def _decode_translation(cfg: BenchConfig, device: torch.device, peak: float, prompt: torch.Tensor,
                        log) -> list[dict]:
    """Greedy and beam-search translation: the same Marian weights in HF and imported into ours."""
    from variants.interop import from_hf

    B, N = cfg.decode_batch, cfg.decode_new
    scfg = M.preset_config("vaswani", kind="seq2seq", **{**cfg.s2s_dims(), "dropout": 0.0})
    _seeded(cfg.seed)
    marian = M.hf_marian(scfg).to(device).eval()
    ours = from_hf(marian).to(device).eval()
    src = (prompt - 3).remainder(scfg.vocab_size - 3) + 3  # the prompts, inside this vocabulary
    mask = torch.ones_like(src)
    start = marian.config.decoder_start_token_id
    rows = []
    for beams in (1, cfg.beam):
        title = "vaswani enc-dec (Marian), " + ("greedy" if beams == 1 else f"beam {beams}")
        log(f"decode {title}")
        if beams == 1:
            def ours_unit():  # eos -1: no row stops early, as min_new_tokens does in HF
                return greedy_translate(ours, src, start, -1, N)
        else:
            def ours_unit(beams=beams):
                return beam_translate(ours, src, start, -1, N, beam=beams, length_penalty=1.0)
        hf_unit = _hf_generate(marian, dict(input_ids=src, attention_mask=mask), N, beams=beams)
        flops = s2s_decode_flops(ours, B, beams, src.size(1), N)
        contenders = [
            Contender("ablate (same weights)", ours_unit, B * N, flops, ours=True,
                      memory=_no_grad_peak(ours_unit, device, ours)),
            Contender("transformers generate", hf_unit, B * N, flops, memory=_no_grad_peak(hf_unit, device, marian)),
        ]
        time_interleaved(contenders, device, 1, cfg.decode_repeats, log)
        settings = (f"batch {B}, source {src.size(1)}, {N} new tokens, "
                    f"{'greedy' if beams == 1 else f'beam {beams}, length penalty 1.0'}; "
                    f"tokens/s counts output tokens (best hypothesis)")
        rows += _rows("decode", title, contenders, "transformers generate", peak, settings,
                      profile_on=_profiling(cfg, device))
    return rows


def _hf_generate(hf, inputs: dict, new: int, beams: int) -> Callable:
    # min_new_tokens keeps EOS out, so every implementation decodes exactly ``new`` steps
    fixed = {"min_new_tokens": new} if hf.generation_config.eos_token_id is not None else {}

    @torch.no_grad()
    def unit():
        return hf.generate(**inputs, max_new_tokens=new, do_sample=False, num_beams=beams,
                           use_cache=True, length_penalty=1.0, pad_token_id=hf.config.pad_token_id or 0,
                           **fixed)
    return unit


def _no_grad_peak(unit, device, model) -> Callable[[], Optional[float]]:
    def measure():
        with torch.no_grad():
            return peak_bytes(unit, device, persistent_bytes(model))
    return measure
