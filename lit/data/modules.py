"""LightningDataModules: tokenizer trained on the training split, deterministic batches.

- :class:`LMDataModule`: the split's examples joined by ``<eos>`` into one token stream, cut into
  contiguous blocks of ``block_size`` inputs (targets shifted by one), so every token but the
  first is predicted exactly once; the last block is padded.
- :class:`TranslationDataModule`: ``source <eos>`` -> ``<bos> target <eos>``, batched by a token
  budget with length bucketing (as fairseq's ``--max-tokens``).

Training batches depend only on (seed, epoch), and the data module's ``state_dict`` (saved in
every checkpoint) records the epoch and how many of its batches were trained on, so a run resumed
mid-epoch continues with exactly the batches an uninterrupted run would see.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Optional

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from lit.config import DataConfig
from lit.data.sources import DataError, load_pairs, load_text, prepare
from lit.data.tokenizer import TextTokenizer, cached_bpe

SPLITS = ("train", "val", "test")


class _BaseDataModule(L.LightningDataModule):
    def __init__(self, data: DataConfig, max_seq_len: int, seed: int = 0) -> None:
        super().__init__()
        self.cfg = data
        self.max_seq_len = max_seq_len
        self.seed = seed
        self.tokenizer: Optional[TextTokenizer] = None
        self._resume_at: Optional[tuple[int, int]] = None

    def state_dict(self) -> dict:
        """Where training stands in the data: the epoch and the batches of it already trained on."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return {}
        progress = trainer.fit_loop.epoch_loop.batch_progress.current
        return {"epoch": trainer.current_epoch, "batches_done": progress.processed}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self._resume_at = (int(state["epoch"]), int(state["batches_done"]))

    def _train_batches(self, batches: "EpochBatches") -> "EpochBatches":
        if self._resume_at is not None:
            batches.resume(*self._resume_at)
            self._resume_at = None
        return batches

    def prepare_data(self) -> None:
        prepare(self.cfg)

    def _limit(self, items: list, split: str) -> list:
        limit = self.cfg.limit_train if split == "train" else self.cfg.limit_eval
        return items[:limit] if limit else items

    masks = False  # a masked-LM data module: its tokenizer has <mask>

    def _tokenizer(self, texts: list[str]) -> TextTokenizer:
        return cached_bpe(texts, self.cfg.vocab_size, self.cfg.cache_path / "tokenizers", mask=self.masks)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        raise NotImplementedError

    def _block_loader(self, split: str, shuffle: bool, collate) -> DataLoader:
        """A loader of fixed-size blocks: training a seeded permutation per epoch in equal-sized
        shards (resumable mid-epoch), evaluation every block on exactly one rank, in order."""
        data = self.datasets[split]
        rank, world = self.shard()
        collate = partial(collate, pad_id=self.tokenizer.pad_id)
        if shuffle:
            batches = self._train_batches(ShuffledBatches(len(data), self.cfg.batch_size, self.seed, rank, world))
            return DataLoader(data, batch_sampler=batches, num_workers=self.cfg.num_workers, collate_fn=collate)
        return DataLoader(data, batch_size=self.cfg.batch_size, sampler=range(rank, len(data), world),
                          num_workers=self.cfg.num_workers, collate_fn=collate)

    def shard(self) -> tuple[int, int]:
        """(rank, world size) of this process; the loaders shard the data themselves (the
        Trainer runs with ``use_distributed_sampler=False``) so that evaluation sees every
        example exactly once, never the padding duplicates of ``DistributedSampler``."""
        trainer = getattr(self, "trainer", None)
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_dataloader(self):
        return self._loader("train", shuffle=True)

    def val_dataloader(self):
        return self._loader("val", shuffle=False)

    def test_dataloader(self):
        return self._loader("test", shuffle=False)


# ----------------------------------------------------------------------------- language modelling

def token_stream(tokenizer: TextTokenizer, items: list[str]) -> torch.Tensor:
    """One split as a token stream: ``<eos>``, then each example followed by ``<eos>``."""
    stream = [tokenizer.eos_id]
    for ids in tokenizer.encode_batch(items):
        stream += ids + [tokenizer.eos_id]
    return torch.tensor(stream)


class BlockDataset(Dataset):
    """(inputs, targets) blocks of a token stream; targets are inputs shifted by one."""

    def __init__(self, stream: torch.Tensor, block_size: int, pad_id: int) -> None:
        n_blocks = max(1, -(-(len(stream) - 1) // block_size))
        padded = torch.full((n_blocks * block_size + 1,), pad_id, dtype=torch.long)
        padded[: len(stream)] = stream
        self.inputs = padded[:-1].view(n_blocks, block_size)
        self.targets = padded[1:].view(n_blocks, block_size)

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, i):
        return {"inputs": self.inputs[i], "targets": self.targets[i]}


class LMDataModule(_BaseDataModule):
    def setup(self, stage: Optional[str] = None) -> None:
        if self.tokenizer is not None:
            return
        texts = {split: self._limit(load_text(self.cfg, split), split) for split in SPLITS}
        self.tokenizer = self._tokenizer(texts["train"])
        self.block_size = self.cfg.lm_block_size(self.max_seq_len)
        self.datasets, self.n_bytes, self.streams = {}, {}, {}
        for split, items in texts.items():
            self.streams[split] = token_stream(self.tokenizer, items)
            self.datasets[split] = BlockDataset(self.streams[split], self.block_size, self.tokenizer.pad_id)
            # bytes predicted: every example plus one separator byte for each <eos>
            self.n_bytes[split] = sum(len(t.encode("utf-8")) + 1 for t in items)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return self._block_loader(split, shuffle, collate_blocks)


# ------------------------------------------------------------------------------------ masked LM

MASK_RATE = 0.15  # of the word pieces: BERT's share chosen for prediction
EVAL_MASK_SEED = 20_250_101  # the masks of the validation and test splits: one fixed set for every run


def bert_mask(tokens: torch.Tensor, generator: torch.Generator, mask_id: int, n_specials: int, vocab_size: int,
              pad_id: int, rate: float = MASK_RATE) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's corruption of ``tokens`` (B, T) on the CPU (Devlin et al. 2019): each word piece
    (never a special token or padding) is chosen with probability ``rate``; of the chosen, 80%
    become ``<mask>``, 10% a random word piece and 10% stay. Returns (inputs, targets): targets
    hold the original token at the chosen positions and ``pad_id`` (ignored) elsewhere. A function
    of the generator's state alone: the same seed masks the same positions the same way."""
    shape = tokens.shape
    chosen = (tokens >= n_specials) & (torch.rand(shape, generator=generator) < rate)
    how = torch.rand(shape, generator=generator)
    random_ids = torch.randint(n_specials, vocab_size, shape, generator=generator)
    inputs = torch.where(chosen & (how < 0.8), torch.full_like(tokens, mask_id), tokens)
    swap = chosen & (how >= 0.8) & (how < 0.9)
    inputs = torch.where(swap, random_ids, inputs)
    return inputs, torch.where(chosen, tokens, torch.full_like(tokens, pad_id))


class MaskedBlocks(Dataset):
    """Blocks of a token stream, not shifted: ``tokens`` alone (training: masked at each step by
    the task, on a generator keyed by the step) or masked once here (evaluation: ``inputs`` and
    ``targets``, the same positions for every run and variant)."""

    def __init__(self, stream: torch.Tensor, block_size: int, pad_id: int,
                 masked: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> None:
        n_blocks = max(1, -(-len(stream) // block_size))
        padded = torch.full((n_blocks * block_size,), pad_id, dtype=torch.long)
        padded[: len(stream)] = stream
        self.tokens = padded.view(n_blocks, block_size)
        self.masked = masked

    def mask_with(self, generator: torch.Generator, tokenizer: TextTokenizer) -> None:
        self.masked = bert_mask(self.tokens, generator, tokenizer.mask_id, tokenizer.n_specials,
                                tokenizer.vocab_size, tokenizer.pad_id)

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i):
        if self.masked is None:
            return {"tokens": self.tokens[i]}
        return {"inputs": self.masked[0][i], "targets": self.masked[1][i]}


def collate_masked(items, pad_id: int):
    """Masked-LM blocks stacked; ``n_tokens``: the non-pad input tokens (throughput counts them),
    ``n_targets`` the masked ones (evaluation; training counts them when it masks)."""
    batch = {key: torch.stack([item[key] for item in items]) for key in items[0]}
    inputs = batch.get("inputs", batch.get("tokens"))
    batch.update(padded=bool((inputs == pad_id).any()), n_tokens=int((inputs != pad_id).sum()))
    if "targets" in batch:
        batch["n_targets"] = int((batch["targets"] != pad_id).sum())
    return batch


class MaskedLMDataModule(_BaseDataModule):
    """Masked language modelling on blocks of one token stream per split (verses joined by
    ``<eos>``, as for language modelling), with a ``<mask>`` token in the tokenizer."""

    masks = True

    def setup(self, stage: Optional[str] = None) -> None:
        if self.tokenizer is not None:
            return
        texts = {split: self._limit(load_text(self.cfg, split), split) for split in SPLITS}
        self.tokenizer = tok = self._tokenizer(texts["train"])
        self.block_size = self.cfg.lm_block_size(self.max_seq_len)
        self.datasets = {}
        for i, (split, items) in enumerate(texts.items()):
            self.datasets[split] = MaskedBlocks(token_stream(tok, items), self.block_size, tok.pad_id)
            if split != "train":
                self.datasets[split].mask_with(torch.Generator().manual_seed(EVAL_MASK_SEED + i), tok)
        # the UTF-8 bytes each token stands for: bits per byte over the masked tokens
        self.token_bytes = torch.tensor([0 if i < tok.n_specials else len(tok.tokenizer.decode([i]).encode("utf-8"))
                                         for i in range(tok.vocab_size)])  # int64: never cast by a precision setting

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return self._block_loader(split, shuffle, collate_masked)


# ------------------------------------------------------------------------------------ translation

class PairDataset(Dataset):
    def __init__(self, src: list[list[int]], tgt: list[list[int]]) -> None:
        self.src, self.tgt = src, tgt

    def __len__(self) -> int:
        return len(self.src)

    def __getitem__(self, i):
        return i, self.src[i], self.tgt[i]


class EpochBatches(Sampler):
    """A batch sampler whose batches are a function of (seed, epoch); :meth:`resume` starts an
    epoch part-way through, skipping the batches already trained on."""

    def __init__(self, shuffle: bool, seed: int = 0, rank: int = 0, world: int = 1) -> None:
        self.shuffle, self.seed, self.rank, self.world = shuffle, seed, rank, world
        self.epoch, self.skip = 0, 0
        self._fixed: Optional[list[list[int]]] = None  # evaluation batches never change
        # Lightning advances the epoch through ``loader.batch_sampler.sampler.set_epoch``
        self.sampler = _EpochSetter(self)

    def _make(self) -> list[list[int]]:
        raise NotImplementedError

    def _batches(self) -> list[list[int]]:
        if not self.shuffle:
            if self._fixed is None:
                self._fixed = self._make()
            return self._fixed
        return self._make()

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.skip = epoch, 0

    def resume(self, epoch: int, batches_done: int) -> None:
        self.epoch, self.skip = epoch, batches_done
        if batches_done >= len(self):  # saved after the epoch's last batch: the next epoch starts
            self.epoch, self.skip = epoch + 1, 0

    def _generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)

    def __iter__(self):
        skip, self.skip = self.skip, 0
        return iter(self._batches()[skip:])

    def __len__(self) -> int:
        return len(self._batches())


class _EpochSetter:
    def __init__(self, owner: EpochBatches) -> None:
        self.set_epoch = owner.set_epoch


class ShuffledBatches(EpochBatches):
    """A seeded permutation of ``n`` examples per epoch, cut into full batches; with ``world > 1``
    each rank takes every ``world``-th batch (equally many on every rank)."""

    def __init__(self, n: int, batch_size: int, seed: int = 0, rank: int = 0, world: int = 1) -> None:
        super().__init__(True, seed, rank, world)
        self.n, self.batch_size = n, batch_size

    def _make(self) -> list[list[int]]:
        order = torch.randperm(self.n, generator=self._generator()).tolist()
        batches = [order[i:i + self.batch_size] for i in range(0, self.n - self.batch_size + 1, self.batch_size)]
        batches = batches[: len(batches) // self.world * self.world]
        return batches[self.rank::self.world]


class TokenBudgetBatches(EpochBatches):
    """Batches of example indices whose padded size (rows x longest side) stays within
    ``max_tokens``. Examples are sorted by length (ties broken at random when shuffling), cut
    into batches, and the batch order is shuffled; the same seed and epoch give the same batches.
    With ``world > 1`` each rank takes every ``world``-th batch: equally many when shuffling
    (training, the remainder dropped), all of them exactly once otherwise (evaluation)."""

    def __init__(self, lengths: list[int], max_tokens: int, shuffle: bool, seed: int = 0,
                 rank: int = 0, world: int = 1) -> None:
        super().__init__(shuffle, seed, rank, world)
        self.lengths, self.max_tokens = lengths, max_tokens

    def _make(self) -> list[list[int]]:
        g = self._generator()
        order = torch.randperm(len(self.lengths), generator=g).tolist() if self.shuffle else range(len(self.lengths))
        order = sorted(order, key=lambda i: self.lengths[i])  # stable: ties keep the random order
        batches, batch, longest = [], [], 0
        for i in order:
            longest_next = max(longest, self.lengths[i])
            if batch and longest_next * (len(batch) + 1) > self.max_tokens:
                batches.append(batch)
                batch, longest_next = [], self.lengths[i]
            batch.append(i)
            longest = longest_next
        if batch:
            batches.append(batch)
        if self.shuffle:
            batches = [batches[j] for j in torch.randperm(len(batches), generator=g).tolist()]
            batches = batches[: len(batches) // self.world * self.world]
        return batches[self.rank::self.world]


def collate_blocks(items, pad_id: int):
    """LM blocks stacked, whether any input is padding (only the last block of a split can be),
    and the count of non-pad targets (counted here, on the host: reading it from the device
    would wait for the device at every step)."""
    inputs = torch.stack([item["inputs"] for item in items])
    targets = torch.stack([item["targets"] for item in items])
    return {"inputs": inputs, "targets": targets, "padded": bool((inputs == pad_id).any()),
            "n_targets": int((targets != pad_id).sum())}


def round_up(n: int, multiple: int, limit: Optional[int] = None) -> int:
    """``n`` rounded up to a multiple, at most ``limit`` (never below ``n``)."""
    rounded = -(-n // multiple) * multiple
    return rounded if limit is None else min(rounded, max(limit, n))


def collate_pairs(items, pad_id: int, multiple: int = 1, limit: Optional[int] = None):
    """Source and target rows padded to the batch's longest, rounded up to ``multiple`` (at most
    ``limit``, the model's ``max_seq_len``): with a multiple of 8 or 16, a run's batches take a
    few shapes, which compiled kernels and CUDA graphs reuse. Pads are masked in attention and
    left out of the loss, so the multiple changes no result beyond rounding."""
    index, src, tgt = zip(*items)
    src_width = round_up(max(map(len, src)), multiple, limit)
    tgt_width = round_up(max(map(len, tgt)) - 1, multiple, limit)  # of tgt_in and tgt_out

    def pad(seqs, width):
        out = torch.full((len(seqs), width), pad_id, dtype=torch.long)
        for row, seq in enumerate(seqs):
            out[row, : len(seq)] = torch.tensor(seq)
        return out

    counts = {"n_targets": sum(len(t) - 1 for t in tgt), "n_src": sum(map(len, src))}  # non-pad, on the host
    tgt = pad(tgt, tgt_width + 1)
    return {"index": torch.tensor(index), "src": pad(src, src_width), "tgt_in": tgt[:, :-1], "tgt_out": tgt[:, 1:],
            "src_padded": any(len(s) < src_width for s in src), **counts}


class TranslationDataModule(_BaseDataModule):
    def setup(self, stage: Optional[str] = None) -> None:
        if self.tokenizer is not None:
            return
        pairs = {split: self._limit(load_pairs(self.cfg, split), split) for split in SPLITS}
        train_text = [s for pair in pairs["train"] for s in pair]  # joint vocabulary
        self.tokenizer = self._tokenizer(train_text)
        tok = self.tokenizer
        self.datasets, self.sources, self.references = {}, {}, {}
        for split, items in pairs.items():
            src = [ids + [tok.eos_id] for ids in tok.encode_batch([s for s, _ in items])]
            tgt = [[tok.bos_id] + ids + [tok.eos_id] for ids in tok.encode_batch([t for _, t in items])]
            keep = [i for i in range(len(items)) if max(len(src[i]), len(tgt[i]) - 1) <= self.max_seq_len]
            if split != "train" and len(keep) < len(items):
                kept = set(keep)
                bad = next(i for i in range(len(items)) if i not in kept)
                raise DataError(
                    f"{self.cfg.source} {split} example {bad + 1} has {len(src[bad])} source / "
                    f"{len(tgt[bad]) - 1} target tokens, more than model.max_seq_len="
                    f"{self.max_seq_len}; raise model.max_seq_len")
            if not keep:
                raise DataError(f"{self.cfg.source} {split}: no example fits model.max_seq_len={self.max_seq_len}")
            self.datasets[split] = PairDataset([src[i] for i in keep], [tgt[i] for i in keep])
            self.sources[split] = [items[i][0] for i in keep]
            self.references[split] = [items[i][1] for i in keep]
        self.dropped_train = len(pairs["train"]) - len(self.datasets["train"])

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        data = self.datasets[split]
        multiple = self.cfg.length_multiple
        # the budget counts the padded size; sorting by it groups each length bucket
        lengths = [round_up(max(len(s), len(t)), multiple) for s, t in zip(data.src, data.tgt)]
        batches = TokenBudgetBatches(lengths, self.cfg.max_tokens, shuffle, self.seed, *self.shard())
        if shuffle:
            batches = self._train_batches(batches)
        return DataLoader(data, batch_sampler=batches, num_workers=self.cfg.num_workers,
                          collate_fn=partial(collate_pairs, pad_id=self.tokenizer.pad_id, multiple=multiple,
                                             limit=self.max_seq_len))
