"""Checkpoints that survive faults, and what exact resume needs beyond Lightning's own state.

- :class:`AtomicCheckpointIO` writes a checkpoint to a temporary file in the same directory,
  flushes it to disk and renames it into place: a checkpoint file either exists whole or not at
  all, whatever moment the process is killed.
- :class:`PeriodicCheckpoint` saves ``step-<global step>.ckpt`` every ``every_n_steps`` optimizer
  steps and when training ends, keeping the newest ``keep`` periodic ones. A step that is followed
  by a validation is saved at the end of that validation, so that the checkpoint holds its
  metrics and a run killed during it repeats it on resume.
- :func:`latest_checkpoint` picks the newest whole checkpoint: each candidate, newest first, is
  verified (its zip listing and every member's CRC, see :func:`checkpoint_damage`) until one
  passes; a truncated or damaged file (a full disk, bytes overwritten on disk) is set aside as
  ``*.corrupt`` with a warning that names it, and the previous one is used.
- :class:`ResumeState` carries the random-number generator states, the training time so far and
  the W&B run id in the checkpoint. Training steps draw from their own stream of the global
  generator: the state at the end of one training step is put back at the start of the next, so
  whatever runs in between (validation, a new epoch's loader) never changes the dropout masks,
  and a resumed run draws exactly those of an uninterrupted one.
  (The data position is carried by the data module; see ``lit.data.modules``.)
"""

from __future__ import annotations

import os
import random
import struct
import time
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Any, Optional

import lightning as L
import numpy as np
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from tools.errors import writing

CHECKPOINT_PATTERN = "step-*.ckpt"


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}.ckpt"


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to ``<name>.tmp-<pid>``, fsync, then ``os.replace`` onto the final name."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        try:
            with writing(path), open(tmp, "wb") as f:  # a full disk's error names the checkpoint
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def checkpoint_damage(path: Path) -> Optional[str]:
    """What is wrong with a checkpoint file, or None when it is whole. A torch checkpoint is a
    zip archive: a truncated one lacks its central directory, and bytes overwritten inside it
    fail the CRC of the member holding them (what ``zipfile.ZipFile.testzip`` checks; the
    member is named). Reads the whole file once; a file found whole is not read again in this
    process while its size and modification time stay the same."""
    path = Path(path)
    try:
        stat = path.stat()
        key = (str(path.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if key in _WHOLE:
            return None
        with zipfile.ZipFile(path) as archive:
            if not any(name.endswith("data.pkl") for name in archive.namelist()):
                return "no data.pkl in the archive"
            for member in archive.infolist():  # testzip's check, keeping its error message
                try:
                    with archive.open(member) as f:
                        while f.read(1 << 20):
                            pass
                except _UNREADABLE as err:
                    return f"damaged member {member.filename} ({err})"
    except _UNREADABLE as err:
        return f"not a readable zip archive ({err})"
    _WHOLE.add(key)
    return None


_WHOLE: set[tuple[str, int, int, int]] = set()  # checkpoint files verified whole (see checkpoint_damage)
# what reading a damaged archive raises: bad headers or CRCs, cut short, garbled listing fields
_UNREADABLE = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, NotImplementedError, struct.error)


def is_complete(path: Path) -> bool:
    """Whether a checkpoint file is whole: its zip listing and every member's CRC check out."""
    return checkpoint_damage(path) is None


def _step_of(path: Path) -> int:
    try:
        return int(path.stem.split("-", 1)[1])
    except (IndexError, ValueError):
        return -1


def checkpoints(directory: Path) -> list[Path]:
    """Checkpoint files of a run, newest (highest step) first; temporary files are ignored."""
    return sorted((p for p in Path(directory).glob(CHECKPOINT_PATTERN) if _step_of(p) >= 0),
                  key=_step_of, reverse=True)


def latest_checkpoint(directory: Path) -> Optional[Path]:
    """The newest whole checkpoint in ``directory``, or None. Candidates are verified newest
    first (:func:`checkpoint_damage`), and only until one passes; a truncated or damaged file is
    renamed ``*.corrupt`` (kept for inspection, never resumed from or counted again) with a
    warning naming it, what is wrong with it and the checkpoint used instead."""
    set_aside: list[tuple[Path, str]] = []
    chosen = None
    for path in checkpoints(directory):
        problem = checkpoint_damage(path)
        if problem is None:
            chosen = path
            break
        try:
            path.replace(path.with_name(path.name + ".corrupt"))
        except FileNotFoundError:  # removed meanwhile (an old one rotated out by the run itself)
            continue
        set_aside.append((path, problem))
    instead = f"using the older {chosen.name}" if chosen else "no older whole checkpoint is left"
    for path, problem in set_aside:
        warnings.warn(f"{path}: incomplete or corrupt checkpoint ({problem}), set aside as "
                      f"{path.name}.corrupt; {instead}", stacklevel=2)
    return chosen


def remove_partial_writes(directory: Path) -> None:
    """Temporary files of writes cut short by a kill (call while holding the run's lock)."""
    for path in Path(directory).glob("*.ckpt.tmp-*"):
        path.unlink(missing_ok=True)


def checkpoint_step(path: Path) -> int:
    return _step_of(Path(path))


def validation_follows(trainer) -> bool:
    """Whether the training loop validates right after the current batch (Lightning's own test)."""
    loop = trainer.fit_loop
    if not trainer.training or loop.epoch_loop.val_loop.skip:
        return False
    try:
        return bool(loop.epoch_loop._should_check_val_fx(loop._data_fetcher))
    except (AttributeError, TypeError):  # a Lightning whose loop differs: save at the batch end
        return False


class PeriodicCheckpoint(L.Callback):
    """Saves every ``every_n_steps`` optimizer steps and at the end of training.

    When a validation follows the step, the save waits for its end (as Lightning's own
    ``ModelCheckpoint`` does for validation metrics). Lightning resumes a checkpoint written at
    a batch's end *past* the validation due at that step, so a run killed during that validation
    would lose its record; resumed from a checkpoint written after the validation, it has
    nothing to repeat, and killed before that checkpoint exists, it repeats the step's
    validation from the previous checkpoint.
    """

    def __init__(self, directory: Path, every_n_steps: int, keep: int = 2, guard: Optional[L.Callback] = None) -> None:
        if every_n_steps < 1:
            raise ValueError(f"checkpoint.every_n_steps must be >= 1, got {every_n_steps}")
        self.directory = Path(directory)
        self.every_n_steps = every_n_steps
        self.keep = max(1, keep)
        self.guard = guard  # a DivergenceGuard: a diverged state is never saved
        self.final: Optional[Path] = None
        self._last_saved = -1  # global step of the last checkpoint written
        self._after_validation = False  # a save is due at the end of the running validation

    def _save(self, trainer: L.Trainer) -> Path:
        path = self.directory / checkpoint_name(trainer.global_step)
        trainer.save_checkpoint(path)
        self._last_saved = trainer.global_step
        if trainer.is_global_zero:
            for old in checkpoints(self.directory)[self.keep:]:
                if old != path:
                    old.unlink(missing_ok=True)
        return path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if trainer.fit_loop._should_accumulate():  # mid gradient accumulation: the step is not done
            return
        last = 0 < trainer.max_steps <= step  # the final checkpoint is written after the last validation
        if step > 0 and step % self.every_n_steps == 0 and step != self._last_saved and not trainer.should_stop \
                and not last and not self._diverged(trainer):
            if validation_follows(trainer):
                self._after_validation = True
            else:
                self._save(trainer)

    def on_validation_end(self, trainer, pl_module):
        if not self._after_validation or trainer.sanity_checking:
            return
        self._after_validation = False
        if trainer.should_stop or self._diverged(trainer):
            return  # stopping (diverged, or asked to): the end of training decides what is saved
        self._save(trainer)

    def _diverged(self, trainer: L.Trainer) -> bool:
        """Whether the guard finds a non-finite loss since its last look (never save such a state)."""
        return self.guard is not None and self.guard.check(trainer)

    def on_train_end(self, trainer, pl_module):
        """The final checkpoint, written after the last validation so that it carries the final
        metrics (a run resumed from it has nothing left to train and still reports them)."""
        if self._diverged(trainer):
            return  # never make a diverged state the newest checkpoint
        self.final = self._save(trainer)


def _rng_state() -> dict[str, Any]:
    """Generator states as tensors and plain Python values (loadable with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class ResumeState(L.Callback):
    """RNG states, elapsed training time, the run id and the W&B run id, saved in every checkpoint."""

    def __init__(self, wandb_id: Optional[str] = None, run_id: Optional[str] = None) -> None:
        self.wandb_id = wandb_id
        self.run_id = run_id
        self.saved_metrics: dict[str, float] = {}  # the logged metrics at the checkpoint resumed from
        self._trainer: Optional[L.Trainer] = None
        self.elapsed_before = 0.0  # training seconds of earlier segments of this run
        self.resumed_from_step: Optional[int] = None
        self._segment_start = time.time()
        self._pending_rng: Optional[dict[str, Any]] = None  # from a checkpoint
        self._step_rng: Optional[torch.Tensor] = None  # torch CPU state at the end of the last step

    @property
    def elapsed(self) -> float:
        return self.elapsed_before + time.time() - self._segment_start

    def setup(self, trainer, pl_module, stage):
        self._trainer = trainer

    def on_fit_start(self, trainer, pl_module):
        self._segment_start = time.time()

    def state_dict(self) -> dict[str, Any]:
        rng = _rng_state()
        if self._step_rng is not None:
            rng["torch"] = self._step_rng
        metrics = {}
        if self._trainer is not None:
            metrics = {k: float(v) for k, v in self._trainer.callback_metrics.items() if v.numel() == 1}
        return {"rng": rng, "elapsed_s": self.elapsed, "wandb_id": self.wandb_id, "run_id": self.run_id,
                "metrics": metrics}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._pending_rng = state.get("rng")
        self.elapsed_before = float(state.get("elapsed_s", 0.0))
        self.wandb_id = self.wandb_id or state.get("wandb_id")
        self.saved_metrics = dict(state.get("metrics", {}))

    def on_load_checkpoint(self, trainer, pl_module, checkpoint):
        self.resumed_from_step = int(checkpoint.get("global_step", 0))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self._pending_rng is not None:
            _set_rng_state(self._pending_rng)
            self._pending_rng = None
        elif self._step_rng is not None:
            torch.set_rng_state(self._step_rng)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._step_rng = torch.get_rng_state()


def saved_resume_state(path: Path) -> dict[str, Any]:
    """What :class:`ResumeState` saved in a checkpoint (run id, W&B id, ...), read without
    loading the weights into memory; {} when it holds none."""
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    for key, value in state.get("callbacks", {}).items():
        if key.startswith("ResumeState"):
            return dict(value)
    return {}
