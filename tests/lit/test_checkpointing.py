"""Checkpoint files: atomic writes, the newest whole one found (verified); resumable batch order."""

import os

import pytest
import torch

from lit.checkpointing import (AtomicCheckpointIO, checkpoint_damage, checkpoint_name, is_complete,
                               latest_checkpoint)
from lit.data.modules import ShuffledBatches, TokenBudgetBatches


def _save(directory, step, payload=None):
    AtomicCheckpointIO().save_checkpoint({"global_step": step, "w": torch.randn(64) if payload is None else payload},
                                         directory / checkpoint_name(step))
    return directory / checkpoint_name(step)


def test_atomic_save_leaves_only_the_final_file(tmp_path):
    path = _save(tmp_path, 20)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    assert is_complete(path)
    assert torch.load(path, weights_only=True)["global_step"] == 20


def test_failed_write_leaves_no_file(tmp_path):
    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError):
        AtomicCheckpointIO().save_checkpoint({"x": Unpicklable()}, tmp_path / checkpoint_name(40))
    assert list(tmp_path.iterdir()) == []


def test_truncated_newest_checkpoint_is_skipped(tmp_path):
    _save(tmp_path, 20)
    newest = _save(tmp_path, 40)
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])  # a write cut short (e.g. a full disk)
    (tmp_path / (checkpoint_name(60) + ".tmp-123")).write_bytes(data[:100])  # a kill mid-write
    with pytest.warns(UserWarning, match="incomplete or corrupt"):
        assert latest_checkpoint(tmp_path) == tmp_path / checkpoint_name(20)


def overwrite_middle(path, size=4096):
    """Overwrite ``size`` bytes in the middle of a file in place (length unchanged): damage on
    disk or in transit, not a write cut short."""
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        f.write(os.urandom(size))


def test_a_checkpoint_overwritten_in_its_middle_is_skipped_for_the_older_one(tmp_path):
    """4 KiB overwritten inside the newest checkpoint keep its zip listing intact, so only the
    CRCs find it: it is set aside with a warning naming it and the damaged member, and the
    older whole one is used. Only candidates are verified: an older damaged file is left as it
    is while a newer whole one exists."""
    oldest = _save(tmp_path, 10, torch.randn(8192))
    overwrite_middle(oldest)
    older = _save(tmp_path, 20, torch.randn(8192))  # 32 KiB of weights: the middle is inside them
    newest = _save(tmp_path, 40, torch.randn(8192))
    overwrite_middle(newest)
    assert "damaged member" in checkpoint_damage(newest) and "data/0" in checkpoint_damage(newest)
    assert not is_complete(newest) and is_complete(older)
    with pytest.warns(UserWarning) as caught:
        assert latest_checkpoint(tmp_path) == older
    (warning,) = [str(w.message) for w in caught]
    assert str(newest) in warning and "damaged member" in warning and "data/0" in warning
    assert f"set aside as {newest.name}.corrupt; using the older {older.name}" in warning
    assert not newest.exists() and (tmp_path / f"{newest.name}.corrupt").is_file()
    assert oldest.is_file()  # never looked at: the run resumes from the newer one
    assert torch.load(older, weights_only=True)["global_step"] == 20


def test_a_damaged_only_checkpoint_leaves_none(tmp_path):
    only = _save(tmp_path, 20, torch.randn(8192))
    overwrite_middle(only)
    with pytest.warns(UserWarning, match="no older whole checkpoint is left"):
        assert latest_checkpoint(tmp_path) is None


def test_no_checkpoint(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    assert latest_checkpoint(tmp_path / "missing") is None


@pytest.mark.parametrize("make", [
    lambda: ShuffledBatches(103, 8, seed=3),
    lambda: TokenBudgetBatches([(i * 7) % 23 + 1 for i in range(200)], max_tokens=64, shuffle=True, seed=3),
], ids=["shuffled", "token-budget"])
def test_resume_continues_the_same_epoch(make):
    reference = make()
    reference.sampler.set_epoch(2)  # the way Lightning advances epochs
    epoch2 = list(reference)
    assert epoch2 != list(make())  # epochs differ
    resumed = make()
    resumed.resume(2, 5)
    assert list(resumed) == epoch2[5:]
    assert list(resumed) == epoch2  # only the first iteration after a resume skips
    at_end = make()
    at_end.resume(1, len(at_end))  # saved after the last batch of epoch 1: epoch 2 starts
    assert list(at_end) == epoch2


def test_shuffled_batches_shard_equally():
    shards = [list(ShuffledBatches(100, 8, seed=0, rank=r, world=3)) for r in range(3)]
    assert len({len(s) for s in shards}) == 1
    flat = [i for shard in shards for batch in shard for i in batch]
    assert len(flat) == len(set(flat))
