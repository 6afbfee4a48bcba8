"""No error swallowed, no run left ``pending`` or ``running`` by one: an exception that escapes a
run leaves a ``failed`` status naming it, and its traceback in the run's log under the warm
runner too; a W&B extra that fails (a table, an artifact) is a warning after the final status,
never the loss of a finished run's result."""

import errno
import json
import multiprocessing
import os
import sys
import tempfile
from pathlib import Path

import lightning as L
import pytest

import experiments.run.train as train_module
from lit import checkpointing
from experiments.run import warm
from experiments.run.config import load_config
from experiments.run.rundir import write_status
from experiments.run.train import train

ROOT = Path(__file__).resolve().parents[3]
SMOKE = ROOT / "configs" / "debug" / "smoke.yaml"
LM = ROOT / "configs" / "experiments" / "lm-bible.yaml"
TINY = ("trainer.max_steps=2", "trainer.val_check_interval=2", "checkpoint.every_n_steps=2", "data.limit_train=300",
        "data.limit_eval=16", "perf.peak_flops=1e11")  # a run of a few seconds that trains, validates, checkpoints and tests


def _args(tmp_path, *overrides):
    return [str(LM), str(SMOKE), f"run.root={tmp_path}/runs", "logger=none", f"data.cache_dir={tmp_path}/cache",
            *overrides]


def _status(tmp_path):
    (path,) = (tmp_path / "runs").glob("*/*/status.json")
    return json.loads(path.read_text())


def _torn_cache(*args, **kwargs):
    raise RuntimeError("EOF while parsing a string at line 52 column 5")  # what a torn tokenizer cache raises


@pytest.mark.parametrize("earlier", [None, "running", "interrupted"])
def test_an_exception_that_escapes_a_run_leaves_a_failed_status_naming_it(tmp_path, monkeypatch, earlier):
    """Raised before training (here: reading the data), where nothing recorded it: the status is
    ``failed`` with the exception's type and message, whether the run never started, was killed
    (``running``) or was interrupted before; and the exception goes on."""
    monkeypatch.setattr(train_module, "_prepare_data", _torn_cache)
    cfg = load_config(_args(tmp_path)[:2], _args(tmp_path)[2:])
    if earlier:
        write_status(cfg.run_dir, earlier, step=20, run_id=train_module.run_id(cfg))
    with pytest.raises(RuntimeError, match="EOF while parsing"):
        train(cfg)
    status = _status(tmp_path)
    assert status["state"] == "failed" and status["run_id"] == train_module.run_id(cfg)
    assert status["error"] == "RuntimeError: EOF while parsing a string at line 52 column 5"
    assert status["step"] == (20 if earlier else 0)


def test_a_finished_result_is_kept_when_a_later_attempt_fails_before_touching_it(tmp_path, monkeypatch):
    monkeypatch.setattr(train_module, "_prepare_data", _torn_cache)
    cfg = load_config(_args(tmp_path)[:2], _args(tmp_path)[2:])
    write_status(cfg.run_dir, "completed", step=40, run_id=train_module.run_id(cfg), metrics={"test/ppl": 9.0})
    with pytest.raises(RuntimeError):
        train(cfg)
    assert _status(tmp_path)["state"] == "completed" and _status(tmp_path)["metrics"] == {"test/ppl": 9.0}


def _as_forkserver_child(argv, env, log):
    """``warm._child`` with the standard streams a forkserver's child has (pytest replaces them)."""
    sys.stdout, sys.stderr = open(1, "w", closefd=False), open(2, "w", closefd=False)
    warm._child(argv, env, log)


def _fork_child(tmp_path, argv):
    log = tmp_path / "train.log"
    child = multiprocessing.get_context("fork").Process(target=_as_forkserver_child,
                                                        args=(argv, dict(os.environ), str(log)))
    child.start()
    child.join(120)
    return child.exitcode, log.read_text()


def test_the_warm_runner_logs_the_traceback_of_any_exception(tmp_path, monkeypatch):
    """The warm runner's child leaves with ``os._exit``: before, an exception other than
    ``SystemExit`` left an empty log and a ``pending`` run. Now: its traceback in the log (the
    child's stdout and stderr), exit code 1, and a ``failed`` status naming it."""
    monkeypatch.setattr(train_module, "_prepare_data", _torn_cache)
    code, log = _fork_child(tmp_path, ["train", *_args(tmp_path)])
    assert code == 1
    assert "Traceback (most recent call last)" in log and "_prepare_data" in log
    assert "RuntimeError: EOF while parsing a string at line 52 column 5" in log
    status = _status(tmp_path)
    assert status["state"] == "failed" and "EOF while parsing" in status["error"]


def test_a_forked_run_leaves_its_parents_temporary_directories_alone(tmp_path):
    """The child runs the exit handlers at its end, as an interpreter does; before, they included
    the parent's ``weakref.finalize`` cleanups, so a child deleted the temporary directories the
    parent had made (W&B's media staging directory among them: every later table of the parent,
    or of the warm server's later children, failed with FileNotFoundError)."""
    from wandb.sdk.data_types._private import MEDIA_TMP  # made, and its removal registered, at import

    kept = tempfile.TemporaryDirectory()
    try:
        code, log = _fork_child(tmp_path, ["train", str(LM), "no.such.key=1"])
        assert code == 2 and "key 'no'" in log
        assert Path(kept.name).is_dir()
        assert Path(MEDIA_TMP.name).is_dir()
    finally:
        kept.cleanup()


@pytest.mark.slow
def test_a_sweep_run_forked_by_the_warm_server_that_crashes_says_why(tmp_path):
    """The real warm server (a forkserver, the sweep's default runner): a data cache that cannot
    be created (``data.cache_dir`` under a regular file) raises an OSError while the data is
    prepared; the run's log holds its traceback and the status says ``failed``, naming it."""
    (tmp_path / "a-file").write_text("")
    args = _args(tmp_path, f"data.cache_dir={tmp_path}/a-file/cache")
    log = tmp_path / "train.log"
    run = warm.start_run(["train", *args], {**os.environ, "WANDB_MODE": "disabled"}, str(log))
    assert run.wait(300) == 1
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "NotADirectoryError" in text
    status = _status(tmp_path)
    assert status["state"] == "failed" and "NotADirectoryError" in status["error"]
    assert f"{tmp_path}/a-file/cache" in status["error"]


def test_a_wandb_table_that_fails_is_a_warning_after_the_final_status(tmp_path, monkeypatch):
    """The test continuations table raises (as W&B does when it cannot write its staging files):
    the run is ``completed`` with its test metrics, the table's failure is a warning naming it,
    and status.json already held the final result when the table was tried."""
    seen = {}

    def failing_table(*args, **kwargs):
        seen["status"] = _status(tmp_path)
        raise PermissionError("Unable to write staging files to /nowhere/artifacts/staging")

    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setattr(train_module.wandb_log, "log_table", failing_table)
    args = _args(tmp_path, "logger=wandb", *TINY)
    cfg = load_config(args[:2], args[2:])
    with pytest.warns(UserWarning, match=r"W&B: could not log the test continuations table \(PermissionError: "
                                         r"Unable to write staging files"):
        result = train(cfg)
    assert result["state"] == "completed"
    assert seen["status"]["state"] == "completed" and "test/ppl" in seen["status"]["metrics"]
    status = _status(tmp_path)
    assert status["state"] == "completed" and status["metrics"]["test/ppl"] == result["test/ppl"]


@pytest.mark.slow
def test_an_unwritable_home_with_wandb_offline_keeps_the_runs_result(tmp_path, monkeypatch):
    """The real W&B client, offline, with a HOME it cannot write to: its test table cannot be
    staged. The run still ends ``completed`` with its test metrics, and the W&B run is finished
    with the run's result as its summary."""
    from experiments.run.wandb_records import run_segments

    (tmp_path / "home").write_text("")  # a file: nothing can be created under it
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for var in ("WANDB_DATA_DIR", "XDG_DATA_HOME", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    args = _args(tmp_path, "logger=wandb", *TINY)
    cfg = load_config(args[:2], args[2:])
    with pytest.warns(UserWarning, match="W&B: could not log the test continuations table"):
        result = train(cfg)
    status = _status(tmp_path)
    assert result["state"] == status["state"] == "completed" and "test/ppl" in status["metrics"]
    (run,) = run_segments(cfg.run_dir, (cfg.run_dir / "wandb_id").read_text().strip(), wait_s=30)
    assert run.exit_code == 0 and run.summary["state"] == "completed"
    assert run.summary["test/ppl"] == pytest.approx(status["metrics"]["test/ppl"])


def _full_disk_at_checkpoints(obj, f, *args, **kwargs):
    """What ``torch.save`` raises when the disk fills up mid-write: its zip writer's RuntimeError,
    the disk's OSError only in the context."""
    f.write(b"PK\x03\x04")
    try:
        raise OSError(errno.ENOSPC, "No space left on device")
    except OSError:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 46 vs 0")


def test_a_full_disk_at_a_checkpoint_is_a_retryable_failure_naming_the_checkpoint(tmp_path, monkeypatch):
    """It was ``RuntimeError('[enforce fail at inline_container.cc:672] ...')``, the full disk in a
    chained traceback only."""
    monkeypatch.setattr(checkpointing.torch, "save", _full_disk_at_checkpoints)
    cfg = load_config(_args(tmp_path)[:2], [*_args(tmp_path)[2:], *TINY])
    with pytest.raises(OSError) as err:
        train(cfg)
    checkpoint = cfg.run_dir / "checkpoints" / "step-00000002.ckpt"
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(checkpoint)
    status = _status(tmp_path)
    assert status["state"] == "failed" and status["retryable"] is True
    assert status["error"].startswith(f"{checkpoint}: no space left on device; free some space and run it again")
    assert list((cfg.run_dir / "checkpoints").iterdir()) == []  # no temporary file left behind


def test_a_full_disk_at_the_final_status_leaves_a_failed_status_and_no_temporary_file(tmp_path, monkeypatch):
    """It left status.json ``running`` and an empty ``status.json.tmp-<pid>`` for good. Once the
    disk is full no new file can be written: the failed status overwrites status.json in place."""
    original, full = Path.write_text, []

    def write_text(self, text, *args, **kwargs):
        if self.name.startswith("status.json.tmp") and (full or '"completed"' in text):
            full.append(self)
            original(self, "", *args, **kwargs)  # the file is created, its data finds no space
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text)
    cfg = load_config(_args(tmp_path)[:2], [*_args(tmp_path)[2:], *TINY])
    with pytest.raises(OSError, match="No space left on device"):
        train(cfg)
    assert len(full) == 2  # the completed status, then the failed one
    status = _status(tmp_path)
    assert status["state"] == "failed" and status["retryable"] is True
    assert status["error"].startswith(f"{cfg.run_dir / 'status.json'}: no space left on device")
    assert not list(cfg.run_dir.glob("status.json.tmp*"))


def test_an_interruption_is_recorded_in_words(tmp_path):
    """A sweep stops its runs with SIGTERM; the status said ``SIGTERMException()``."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    class Terminate(L.Callback):
        def on_train_batch_end(self, *args):
            raise SIGTERMException()

    cfg = load_config(_args(tmp_path)[:2], [*_args(tmp_path)[2:], *TINY])
    with pytest.raises(SystemExit) as stop:
        train(cfg, extra_callbacks=[Terminate()])
    assert stop.value.code == 143
    assert _status(tmp_path)["state"] == "interrupted" and _status(tmp_path)["error"] == "terminated (SIGTERM)"
    try:  # what Lightning raises after Ctrl-C
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            sys.exit(1)
    except SystemExit as ctrl_c:
        assert train_module.describe_interruption(ctrl_c) == "interrupted (Ctrl-C)"
