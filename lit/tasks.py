"""LightningModules for the tasks: thin wrappers that own loss, metrics, logging and the
optimizer, around a pure ``variants`` model.

Reported metrics follow the standard definitions:
- ``loss`` is the mean negative log-likelihood (nats) per non-pad target token; label smoothing,
  the z-loss (``train/z_loss``) and a mixture of experts' auxiliary losses (``train/aux_loss``,
  with ``train/moe_balance`` and ``train/router_z`` unweighted) change only the training
  objective (logged as ``train/objective``), never ``loss``/``ppl``;
- ``ppl = exp(sum NLL / number of non-pad target tokens)`` over the whole split (sums are
  accumulated in float64 torchmetrics ``SumMetric``s and reduced over ranks, not per-batch
  perplexities averaged), so it depends neither on batching nor on the number of processes;
- ``bpb`` (LM) = sum NLL / ln 2 / UTF-8 bytes of the split's text: comparable across tokenizers;
- ``bleu`` = sacreBLEU corpus BLEU on detokenized text; its signature is logged beside it.
"""

from __future__ import annotations

import math
import warnings
from collections import deque
from typing import Optional

import lightning as L
import torch
from torchmetrics.aggregation import SumMetric

from lit.config import TaskConfig
from lit.data.modules import bert_mask
from lit.extrapolation import extrapolation
from tools.metrics import bits_per_byte, corpus_bleu, corpus_chrf, one_line, perplexity
from variants import ModelConfig, build_model
from variants.decoding import beam_translate, greedy_translate
from variants.flops import FlopCounter


# the masked-LM task masks its training blocks in its own on_before_batch_transfer, by design
warnings.filterwarnings("ignore", message=r"You have overridden `on_before_batch_transfer` in `LightningModule`")

SOURCE_CHECK_SENTENCES = 300  # validation examples decoded twice, with true and with shuffled sources
SOURCE_CHECK_SEED = 0


def split_sums(device: torch.device, n: int = 2) -> tuple[SumMetric, ...]:
    """``n`` float64 sums (default: NLL, tokens) over one pass's batches, reduced over ranks when
    computed, starting at 0; a NaN is kept (a diverged model's loss must show, not be dropped)."""
    sums = []
    for _ in range(n):
        metric = SumMetric(nan_strategy="disable").to(device)
        metric.set_dtype(torch.float64)
        metric.update(torch.zeros((), dtype=torch.float64, device=device))  # a pass with no batch sums to 0
        sums.append(metric)
    return tuple(sums)


class TaskModule(L.LightningModule):
    def __init__(self, model: ModelConfig, task: TaskConfig, pad_id: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters({"model": model.to_dict(), "task": vars(task)})
        self.model_cfg, self.cfg, self.pad_id = model, task, pad_id
        self.model = build_model(model)
        self.count_flops = FlopCounter(self.model)
        # stage -> the summed NLL and non-pad target tokens over the split's batches and every
        # rank. Made at a pass's first batch in the process that runs it, and not submodules:
        # a module sent to spawned processes shares its tensors with them, DDP broadcasts rank 0's
        # buffers over the others', and checkpoints need not hold them.
        self.split_sums: dict[str, tuple[SumMetric, SumMetric]] = {}
        self._compiled_losses = None
        self._cuda_graphs = False
        # gradient health: the last global norms (device tensors, read only when a run diverges),
        # and how many of the optimizer steps so far clipping acted on
        self.grad_norms: deque[torch.Tensor] = deque(maxlen=4)
        self.clip_steps, self._clipped, self._clipped_before = 0, None, 0

    def compile_losses(self, cuda_graphs: bool = False) -> None:
        """Run every step's model, head and loss through ``torch.compile`` (``perf.compile``);
        the model's parameters and checkpoints are unchanged. With ``cuda_graphs``
        (``perf.cuda_graphs``), mode ``reduce-overhead``: each shape's kernels are captured once
        and replayed as a CUDA graph."""
        self._compiled_losses = torch.compile(self.losses, mode="reduce-overhead" if cuda_graphs else None)
        self._cuda_graphs = cuda_graphs

    # --------------------------------------------------------------------------- shared step
    def forward_batch(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(final states (B, T, D) before the output head, targets (B, T)) of a batch."""
        raise NotImplementedError

    def losses(self, batch, smoothing: float, z_loss: float = 0.0):
        """(objective, NLL, z, auxiliary, targets) of a batch: objective, NLL and ``z`` (the summed
        squared log-partition, :func:`variants.loss.linear_cross_entropy`) summed over the non-pad
        targets, the objective with ``z_loss * z``; ``auxiliary``: what the model's components
        add (:meth:`variants.models.TransformerBase.auxiliary`: the MoE losses, per token)."""
        # head and cross-entropy fused (``model.loss``): the (B, T, V) logits are never built
        hidden, targets = self.forward_batch(batch)
        objective, nll, z = self.model.loss(hidden, targets, self.pad_id, smoothing, z_loss, with_z=True)
        return objective, nll, z, self.model.auxiliary(), targets

    def model_step(self, batch):
        """(the objective per target token, with gradient; the summed NLL; the target count; the
        objective's extra terms per token for logging: ``z_loss`` (weighted) and the model's
        auxiliary losses, ``aux_loss`` weighted)."""
        smoothing = self.cfg.label_smoothing if self.training else 0.0
        z_loss = self.cfg.z_loss if self.training else 0.0
        if self._cuda_graphs:  # a new step: the graphs' output buffers of the last one may be reused
            torch.compiler.cudagraph_mark_step_begin()
        objective, nll, z, aux, targets = (self._compiled_losses or self.losses)(batch, smoothing, z_loss)
        if self._cuda_graphs:  # kept past the next replay (the loss is read at logging steps only)
            objective, nll, z = objective.clone(), nll.clone(), z.clone()
            aux = {key: value.clone() for key, value in aux.items()}
        tokens = (targets != self.pad_id).sum()
        objective = objective / tokens.clamp(min=1)
        terms = {}
        if z_loss:
            terms["z_loss"] = z_loss * z / tokens.clamp(min=1)
        if aux:
            objective = objective + aux["loss"]
            terms.update(aux_loss=aux["loss"].detach(), **{key: value for key, value in aux.items() if key != "loss"})
        return objective, nll.detach(), tokens, terms

    def training_step(self, batch, batch_idx):
        objective, nll, tokens, terms = self.model_step(batch)
        self.log("train/loss", nll / tokens.clamp(min=1), prog_bar=True)
        if self.cfg.label_smoothing > 0 or terms:
            self.log("train/objective", objective.detach())
        for key, value in terms.items():
            self.log(f"train/{key}", value)
        return objective

    def _eval_step(self, batch, stage: str) -> None:
        _, nll, tokens, _ = self.model_step(batch)
        if stage not in self.split_sums:
            self.split_sums[stage] = split_sums(nll.device)
        for metric, value in zip(self.split_sums[stage], (nll, tokens)):
            metric.update(value)  # adds on the device: no sync per batch

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, "test")

    def _log_split(self, stage: str) -> dict[str, float]:
        # every rank joins the reduction, one that had no batch too
        sums = self.split_sums.pop(stage, None) or split_sums(self.device)
        nll, tokens = (float(metric.compute()) for metric in sums)
        metrics = {f"{stage}/loss": nll / max(tokens, 1), f"{stage}/ppl": perplexity(nll, tokens)}
        metrics.update(self.extra_metrics(stage, nll))
        for key, value in metrics.items():
            self.log(key, value, prog_bar=key.endswith(("ppl", "bleu")), sync_dist=False)
        return metrics

    def extra_metrics(self, stage: str, nll: float) -> dict[str, float]:
        return {}

    def on_validation_epoch_end(self) -> None:
        self._log_split("val")

    def on_test_epoch_end(self) -> None:
        self._log_split("test")

    # ---------------------------------------------------------------------------- optimizer
    def configure_optimizers(self):
        decay = [p for p in self.parameters() if p.requires_grad and p.dim() >= 2]
        no_decay = [p for p in self.parameters() if p.requires_grad and p.dim() < 2]
        groups = [{"params": decay, "weight_decay": self.cfg.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        optimizer = torch.optim.AdamW(groups, lr=self.cfg.lr, betas=self.cfg.betas,
                                      fused=self._fused_ok())
        total = max(1, int(self.trainer.estimated_stepping_batches)) if self._trainer else 1
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(self.cfg, total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Logs the global gradient norm before clipping (``train/grad_norm``), then clips as the
        Trainer asks; by norm, with the norm just measured, which is what ``clip_grad_norm_``
        computes (the same clipped gradients, one reduction instead of two). Nothing here reads
        the device: the norm is logged as a tensor and the clip count stays on the device."""
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not params:
            return
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        self.log("train/grad_norm", norm)
        self.grad_norms.append(norm.detach())
        if not gradient_clip_val:
            return
        if gradient_clip_algorithm not in (None, "norm"):
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
            return
        acted = (norm + 1e-6 > gradient_clip_val).long()  # clip_grad_norm_'s own test
        self._clipped = acted if self._clipped is None else self._clipped + acted
        self.clip_steps += 1
        torch.nn.utils.clip_grads_with_norm_(params, gradient_clip_val, norm)

    def clip_fraction(self) -> Optional[float]:
        """The share of optimizer steps whose gradients clipping scaled down (None: no clipping)."""
        if not self.clip_steps:
            return None
        return self._clipped_count() / self.clip_steps

    def _clipped_count(self) -> int:
        return self._clipped_before + (int(self._clipped) if self._clipped is not None else 0)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["grad_health"] = {"clip_steps": self.clip_steps, "clipped": self._clipped_count()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = checkpoint.get("grad_health") or {}
        self.clip_steps, self._clipped_before = int(saved.get("clip_steps", 0)), int(saved.get("clipped", 0))
        self._clipped = None

    def on_train_end(self) -> None:
        if (fraction := self.clip_fraction()) is not None:
            self.trainer.callback_metrics["train/clip_fraction"] = torch.tensor(fraction)

    def _fused_ok(self) -> bool:
        """The fused AdamW kernel (about 3x faster steps on CPU), except under Lightning's
        mixed-precision plugin, which refuses gradient clipping with optimizers that unscale
        gradients themselves."""
        if self._trainer is not None and "mixed" in str(self.trainer.precision):
            return False
        p = next(self.parameters())
        return p.dtype in (torch.float32, torch.float16, torch.bfloat16) and p.device.type in ("cpu", "cuda")

    # ---------------------------------------------------------------------------- reporting
    def tokens_in(self, batch) -> int:
        """Non-pad target tokens of a batch (throughput counts these), as the collate function
        counted them on the host: counting on the device would wait for it at every step."""
        return int(batch["n_targets"])

    def flops_of(self, batch) -> float:
        raise NotImplementedError


def lr_multiplier(cfg: TaskConfig, total_steps: int):
    """The learning-rate factor at each optimizer step: linear warm-up, then the schedule.

    ``inverse_sqrt``: ``sqrt(warmup / step)`` after warm-up (Vaswani et al. 2017);
    ``cosine``: half a cosine from 1 to ``min_lr_ratio`` at ``total_steps``; ``constant``: 1.
    """
    warmup = cfg.warmup_steps

    def factor(step: int) -> float:
        step += 1
        if warmup and step <= warmup:
            return step / warmup
        if cfg.schedule == "inverse_sqrt":
            return math.sqrt(max(warmup, 1) / step)
        if cfg.schedule == "cosine":
            progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
            return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        return 1.0

    return factor


class LanguageModelTask(TaskModule):
    """Next-token prediction on contiguous blocks."""

    def __init__(self, model: ModelConfig, task: TaskConfig, block_size: int, pad_id: int = 0,
                 n_bytes: Optional[dict[str, int]] = None, streams: Optional[dict[str, torch.Tensor]] = None) -> None:
        super().__init__(model, task, pad_id)
        self.n_bytes = n_bytes or {}
        self.streams = streams or {}
        self.block_size = block_size  # the data module's (DataConfig.lm_block_size)

    def forward_batch(self, batch):
        # ``padded``: found while collating on the CPU, so the model need not look on the device
        return self.model.hidden(batch["inputs"], padded=batch.get("padded")), batch["targets"]

    def extra_metrics(self, stage, nll):
        metrics = {}
        if stage in self.n_bytes:
            metrics[f"{stage}/bpb"] = bits_per_byte(nll, self.n_bytes[stage])
        if stage == "test" and stage in self.streams and self.cfg.extrapolation:
            found = extrapolation(self.model, self.streams[stage], self.block_size, self.cfg.extrapolation,
                                  self.pad_id, self.cfg.extrapolation_stride)
            metrics.update({f"{stage}/{k}": v for k, v in found.items() if v is not None})
        return metrics

    def flops_of(self, batch) -> float:
        return self.count_flops(self.tokens_in(batch), batch["inputs"].size(1))


class MaskedLanguageModelTask(TaskModule):
    """Masked language modelling (BERT): predict the chosen word pieces of a corrupted block from
    both sides. Training blocks are masked at each step on a generator keyed by the run's seed and
    the optimizer step (a resumed run masks exactly as an uninterrupted one); validation and test
    blocks carry fixed masks (:class:`lit.data.modules.MaskedBlocks`). Metrics over the masked
    positions: ``ppl`` (exp of their summed NLL over their count), ``acc`` (the share whose
    argmax is the original token) and ``bpb`` (their NLL in bits over the UTF-8 bytes they
    stand for)."""

    def __init__(self, model: ModelConfig, task: TaskConfig, tokenizer, token_bytes: torch.Tensor,
                 seed: int = 0) -> None:
        super().__init__(model, task, tokenizer.pad_id)
        self.mask_id, self.n_specials, self.vocab = tokenizer.mask_id, tokenizer.n_specials, tokenizer.vocab_size
        self.seed = seed
        self.register_buffer("token_bytes", token_bytes, persistent=False)  # moves with the model, once
        self.mask_sums: dict[str, tuple[SumMetric, ...]] = {}  # stage -> (correct, bytes, masked tokens)

    def on_before_batch_transfer(self, batch, dataloader_idx: int = 0):
        """Training blocks are masked here, on the host, before they reach the device."""
        if "tokens" in batch:
            step = self.trainer.global_step if self._trainer is not None else 0
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
            batch["inputs"], batch["targets"] = bert_mask(batch.pop("tokens"), generator, self.mask_id,
                                                          self.n_specials, self.vocab, self.pad_id)
            batch["n_targets"] = int((batch["targets"] != self.pad_id).sum())
        return batch

    def forward_batch(self, batch):
        return self.model.hidden(batch["inputs"], padded=batch.get("padded")), batch["targets"]

    def _eval_step(self, batch, stage: str) -> None:
        hidden, targets = self.forward_batch(batch)
        _, nll = self.model.loss(hidden, targets, self.pad_id)
        chosen = targets != self.pad_id
        wanted = targets[chosen]
        correct = (self.model.logits(hidden[chosen]).argmax(-1) == wanted).sum()
        n_bytes = self.token_bytes[wanted].sum()
        if stage not in self.split_sums:
            self.split_sums[stage], self.mask_sums[stage] = split_sums(nll.device), split_sums(nll.device, 3)
        count = chosen.sum()
        for metric, value in zip((*self.split_sums[stage], *self.mask_sums[stage]),
                                 (nll.detach(), count, correct, n_bytes, count)):
            metric.update(value)

    def extra_metrics(self, stage, nll):
        sums = self.mask_sums.pop(stage, None) or split_sums(self.device, 3)
        correct, n_bytes, count = (float(metric.compute()) for metric in sums)
        return {f"{stage}/acc": correct / max(count, 1),
                f"{stage}/bpb": bits_per_byte(nll, n_bytes) if n_bytes else float("nan")}

    def tokens_in(self, batch) -> int:
        """Every non-pad input token is processed (throughput), not only the masked ones."""
        return int(batch["n_tokens"])

    def flops_of(self, batch) -> float:
        return self.count_flops(self.tokens_in(batch), batch["inputs"].size(1))


class TranslationTask(TaskModule):
    """Teacher-forced training; BLEU from greedy decoding at validation, beam search at test."""

    def __init__(self, model: ModelConfig, task: TaskConfig, tokenizer=None,
                 references: Optional[dict[str, list[str]]] = None) -> None:
        super().__init__(model, task, tokenizer.pad_id if tokenizer else 0)
        self.tokenizer = tokenizer
        self.references = references or {}
        self.hypotheses: dict[int, str] = {}
        self.bleu_signature: Optional[str] = None
        self.val_runs = 0  # completed validation runs, sanity check excluded

    def forward_batch(self, batch):
        return self.model.hidden(batch["src"], batch["tgt_in"], padded=batch.get("src_padded")), batch["tgt_out"]

    def _decode_now(self, stage: str) -> bool:
        """Test always decodes; validation every ``bleu_every_n_val``-th run (not the sanity check)."""
        if self.tokenizer is None or stage not in self.references:
            return False
        if stage == "test":
            return True
        every = self.cfg.bleu_every_n_val
        return every > 0 and not self.trainer.sanity_checking and self.val_runs % every == every - 1

    def _eval_step(self, batch, stage):
        super()._eval_step(batch, stage)
        if not self._decode_now(stage):
            return
        tok, max_len = self.tokenizer, self.cfg.max_decode_len
        if stage == "test" and self.cfg.beam_size > 1:
            hyps = beam_translate(self.model, batch["src"], tok.bos_id, tok.eos_id, max_len,
                                  beam=self.cfg.beam_size, length_penalty=self.cfg.length_penalty)
        else:
            hyps = greedy_translate(self.model, batch["src"], tok.bos_id, tok.eos_id, max_len)
        for i, ids in zip(batch["index"].tolist(), hyps):
            self.hypotheses[i] = tok.decode(ids)

    def extra_metrics(self, stage, nll):
        if self.trainer.world_size > 1 and torch.distributed.is_initialized():
            shards = [None] * self.trainer.world_size  # every rank decoded its own share
            torch.distributed.all_gather_object(shards, self.hypotheses)
            self.hypotheses = {i: h for shard in shards for i, h in shard.items()}
        if not self.hypotheses:
            return {}
        order = sorted(self.hypotheses)
        # one line each, as written to test.hyp: the scores are those of the file
        self.last_hypotheses = {stage: [one_line(self.hypotheses[i]) for i in order]}
        references = [self.references[stage][i] for i in order]
        score, self.bleu_signature = corpus_bleu(self.last_hypotheses[stage], references)
        self.hypotheses = {}
        metrics = {f"{stage}/bleu": score, f"{stage}/bleu_sentences": float(len(order))}
        if stage == "test":
            metrics[f"{stage}/chrf"] = corpus_chrf(self.last_hypotheses[stage], references)[0]
        return metrics

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        if not self.trainer.sanity_checking:
            self.val_runs += 1

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """The validation count travels with the checkpoint, so that a resumed run decodes at the
        same validations as an uninterrupted one (a step's checkpoint is written after the
        validation due at that step, which is counted already)."""
        super().on_save_checkpoint(checkpoint)
        checkpoint["val_runs"] = self.val_runs

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self.val_runs = int(checkpoint.get("val_runs", 0))

    @torch.no_grad()
    def source_check(self, dataset, references: list[str], count: int = SOURCE_CHECK_SENTENCES,
                     batch_size: int = 64) -> dict[str, float]:
        """Does the model read its source? Greedy BLEU of the first ``count`` examples of
        ``dataset`` (validation) with their own sources (``test/src_check_bleu``) and with the
        sources shuffled among them, each example paired with another's source and scored against
        its own reference (``test/src_shuffled_bleu``). A model that ignores its source scores
        about the same on both; one that translates falls to near zero on the shuffled sources."""
        n = min(count, len(dataset))
        if n < 2 or self.tokenizer is None:
            return {}
        sources = [dataset[i][1] for i in range(n)]
        order = torch.randperm(n, generator=torch.Generator().manual_seed(SOURCE_CHECK_SEED)).tolist()
        place = {example: k for k, example in enumerate(order)}
        shuffled = [sources[order[(place[i] + 1) % n]] for i in range(n)]  # never an example's own
        tok, was_training = self.tokenizer, self.training
        self.eval()
        out = {}
        for key, srcs in (("test/src_check_bleu", sources), ("test/src_shuffled_bleu", shuffled)):
            hyps = []
            for start in range(0, n, batch_size):
                rows = srcs[start:start + batch_size]
                src = torch.full((len(rows), max(map(len, rows))), tok.pad_id, dtype=torch.long)
                for r, ids in enumerate(rows):
                    src[r, :len(ids)] = torch.tensor(ids)
                hyps += [one_line(tok.decode(ids)) for ids in greedy_translate(
                    self.model, src.to(self.device), tok.bos_id, tok.eos_id, self.cfg.max_decode_len)]
            out[key] = corpus_bleu(hyps, references[:n])[0]
        self.train(was_training)
        return out

    def flops_of(self, batch) -> float:
        return self.count_flops(self.tokens_in(batch), batch["tgt_in"].size(1), int(batch["n_src"]),
                                batch["src"].size(1))
