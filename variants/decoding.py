"""Greedy, sampled and beam-search decoding with the KV cache.

Sampling draws each token from ``softmax(logits / temperature)`` restricted to the ``top_k``
most likely tokens and to the nucleus (``top_p``: the smallest set of most likely tokens whose
probability reaches ``top_p``), from a caller's ``torch.Generator`` so that a seed repeats.

Beam search scores a finished hypothesis by its summed log-probability divided by
``length ** length_penalty`` (fairseq's convention; the length counts the ``<eos>``), takes an
``<eos>`` as an ending only when it ranks among the best ``beam`` of the ``2 * beam`` candidates
of a step (as fairseq does: a beam of one is greedy decoding), and stops for a source once
``beam`` hypotheses have finished.
"""

from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F


@torch.no_grad()
def greedy_translate(model, src: torch.Tensor, bos_id: int, eos_id: int, max_len: int) -> list[list[int]]:
    """Most likely next token at each step; returns the token ids of each row, without
    ``<bos>``/``<eos>``."""
    B = src.size(0)
    memory, memory_valid = model.encode(src)
    cache = model.new_cache(B, max_len)
    step = torch.full((B, 1), bos_id, dtype=torch.long, device=src.device)
    out, finished = [], torch.zeros(B, dtype=torch.bool, device=src.device)
    for _ in range(max_len):
        step = model.decode(step, memory, memory_valid, cache)[:, -1].argmax(-1, keepdim=True)
        out.append(step)
        finished |= step.squeeze(1) == eos_id
        if bool(finished.all()):
            break
    return [_until(row, eos_id) for row in torch.cat(out, dim=1).tolist()]


@torch.no_grad()
def beam_translate(model, src: torch.Tensor, bos_id: int, eos_id: int, max_len: int,
                   beam: int = 4, length_penalty: float = 1.0) -> list[list[int]]:
    """Beam search over ``beam`` hypotheses per source row (cache rows reordered each step)."""
    B, device = src.size(0), src.device
    memory, memory_valid = model.encode(src)
    memory = memory.repeat_interleave(beam, dim=0)  # (B * beam, S, D)
    if memory_valid is not None:
        memory_valid = memory_valid.repeat_interleave(beam, dim=0)
    cache = model.new_cache(B * beam, max_len)
    history = torch.full((B * beam, 1), bos_id, dtype=torch.long, device=device)
    scores = torch.full((B, beam), float("-inf"), device=device)
    scores[:, 0] = 0.0  # all beams start identical: expand only the first
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(B)]
    done = [False] * B
    for length in range(1, max_len + 1):
        logp = F.log_softmax(model.decode(history[:, -1:], memory, memory_valid, cache)[:, -1].float(), -1)
        V = logp.size(-1)
        top, flat = (scores.view(-1, 1) + logp).view(B, beam * V).topk(2 * beam, dim=-1)
        top, flat = top.tolist(), flat.tolist()
        # the next beams, filled in Python lists and turned into tensors once per step
        new_scores = [[float("-inf")] * beam for _ in range(B)]
        rows = [list(range(b * beam, (b + 1) * beam)) for b in range(B)]
        tokens = [[eos_id] * beam for _ in range(B)]
        for b in range(B):
            if done[b]:
                continue
            k = 0
            for rank, (score, index) in enumerate(zip(top[b], flat[b])):
                if score == float("-inf"):
                    break
                row, token = b * beam + index // V, index % V
                if token == eos_id and rank >= beam:
                    continue  # an ending counts only among the best ``beam`` candidates (fairseq)
                if token == eos_id or length == max_len:
                    hyp = history[row, 1:].tolist() + ([] if token == eos_id else [token])
                    finished[b].append((score / (length ** length_penalty), hyp))
                elif k < beam:
                    new_scores[b][k], rows[b][k], tokens[b][k] = score, row, token
                    k += 1
                if k == beam and len(finished[b]) >= beam:
                    break
            done[b] = len(finished[b]) >= beam or k == 0
        if all(done):
            break
        index = torch.tensor(rows, device=device).view(-1)
        cache.reorder(index, cross=False)  # beams stay with their source
        history = torch.cat([history.index_select(0, index), torch.tensor(tokens, device=device).view(-1, 1)], dim=1)
        scores = torch.tensor(new_scores, device=device)
    return [max(hyps, key=lambda h: h[0])[1] if hyps else [] for hyps in finished]


@torch.no_grad()
def greedy_generate(model, prompt: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """Continue (B, T) prompts of a decoder-only LM by ``max_new_tokens`` greedy tokens.
    Prompts may be left-padded; generated tokens are never taken for padding."""
    cache = model.new_cache(prompt.size(0), prompt.size(1) + max_new_tokens)
    step, out, padded = prompt, [], None  # the prompt may hold padding; generated tokens never do
    for _ in range(max_new_tokens):
        hidden = model.hidden(step, cache, padded)[:, -1:]  # the head reads the last position only
        step = model.logits(hidden)[:, -1].argmax(-1, keepdim=True)
        out.append(step)
        padded = False
    return torch.cat(out, dim=1)


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """``logits`` (..., V) with every token outside the top ``top_k`` and outside the nucleus
    (the smallest set of most likely tokens whose probability reaches ``top_p``) set to -inf;
    tokens tied with the k-th are kept. The most likely token always stays."""
    if top_k is not None:
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        if top_k < logits.size(-1):
            kth = logits.topk(top_k, dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        ordered, order = logits.sort(dim=-1, descending=True)
        mass = ordered.softmax(-1).cumsum(-1)
        outside = (mass - ordered.softmax(-1)) >= top_p  # the mass before a token already reaches p
        logits = logits.masked_fill(outside.scatter(-1, order, outside), float("-inf"))
    return logits


@torch.no_grad()
def sample_generate(model, prompt: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                    top_k: int | None = None, top_p: float | None = None,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """Continue (B, T) prompts of a decoder-only LM by ``max_new_tokens`` sampled tokens.
    ``temperature`` 0 is greedy decoding."""
    return torch.cat(list(sample_steps(model, prompt, max_new_tokens, temperature, top_k, top_p, generator)), dim=1)


@torch.no_grad()
def sample_steps(model, prompt: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None,
                 generator: torch.Generator | None = None) -> Iterator[torch.Tensor]:
    """The tokens of :func:`sample_generate` as they are drawn, one (B, 1) step at a time, so a
    caller can show them or stop early (at ``<eos>``) without changing those drawn before."""
    if temperature < 0:
        raise ValueError(f"temperature must be 0 or more, got {temperature}")
    cache = model.new_cache(prompt.size(0), prompt.size(1) + max_new_tokens)
    step, padded = prompt, None
    for _ in range(max_new_tokens):
        logits = model.logits(model.hidden(step, cache, padded)[:, -1:])[:, -1].float()
        if temperature == 0:
            step = logits.argmax(-1, keepdim=True)
        else:
            probs = filter_logits(logits / temperature, top_k, top_p).softmax(-1)
            step = torch.multinomial(probs, 1, generator=generator)
        yield step
        padded = False


def _until(ids: list[int], eos_id: int) -> list[int]:
    return ids[: ids.index(eos_id)] if eos_id in ids else ids
