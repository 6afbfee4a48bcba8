"""The warm runner: sweep runs as children forked from a server that has imported torch,
Lightning and the training code once, instead of fresh interpreters that import them per run.

:func:`start_run` asks a ``multiprocessing`` forkserver (started once per sweep process, with
this module preloaded) for a child that runs ``ablate train``'s code on the run's arguments.
Each run stays its own process: its own session (signals go to its group, as with a fresh
interpreter), environment (``CUDA_VISIBLE_DEVICES``, threads), RNG (seeded by the run), run lock
and log; a crash ends only that child, and leaves what a fresh interpreter's would: the
exception's traceback in the run's log and a ``failed`` status naming it (written by
``train``). What a fresh interpreter read from its environment at start is applied explicitly:
the CPU thread count (``torch.set_num_threads``) and glibc's malloc thresholds (``mallopt``).
The server never touches CUDA, so children initialise it themselves.
"""

from __future__ import annotations

import atexit
import ctypes
import multiprocessing
import os
import signal
import sys
import traceback
import weakref
from typing import Optional

import lightning
import torch

import experiments.run.train

# what the server imports once, and every run would otherwise import again (about 4 s on 2 cores):
# torch, Lightning, and the run's code with the data, model and W&B modules it pulls in
PRELOADED = (torch, lightning, experiments.run.train)

_CONTEXT: Optional[multiprocessing.context.BaseContext] = None

# glibc mallopt parameters set by the MALLOC_*_ environment variables of a fresh process
_MALLOPT = {"MALLOC_TRIM_THRESHOLD_": -1, "MALLOC_MMAP_THRESHOLD_": -3}


def available() -> bool:
    return "forkserver" in multiprocessing.get_all_start_methods()


def _context():
    global _CONTEXT
    if _CONTEXT is None:
        _CONTEXT = multiprocessing.get_context("forkserver")
        _CONTEXT.set_forkserver_preload([__name__])
    return _CONTEXT


class WarmRun:
    """A run's child process, with the part of ``subprocess.Popen``'s interface the sweep uses."""

    def __init__(self, process) -> None:
        self.process = process
        self.pid = process.pid

    @property
    def returncode(self) -> Optional[int]:
        return self.process.exitcode

    def poll(self) -> Optional[int]:
        return self.process.exitcode

    def wait(self, timeout: Optional[float] = None) -> int:
        import subprocess

        self.process.join(timeout)
        if self.process.exitcode is None:
            raise subprocess.TimeoutExpired("ablate train", timeout)
        return self.process.exitcode


def start_run(argv: list[str], env: dict[str, str], log_path: str) -> WarmRun:
    """Start ``ablate train <argv[1:]>`` (``argv[0]`` is ``train``) in a child of the warm server, with
    exactly ``env`` as its environment and its output appended to ``log_path``."""
    process = _context().Process(target=_child, args=(list(argv), dict(env), str(log_path)), daemon=False)
    process.start()
    return WarmRun(process)


def _child(argv: list[str], env: dict[str, str], log_path: str) -> None:
    _disown_inherited_finalizers()
    os.setsid()  # its own process group, as start_new_session gives a fresh interpreter
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    sys.stdout.reconfigure(line_buffering=True)
    sys.stderr.reconfigure(line_buffering=True)
    os.environ.clear()
    os.environ.update(env)
    threads = env.get("OMP_NUM_THREADS")
    if threads and threads.isdigit():
        torch.set_num_threads(int(threads))
    _apply_malloc_settings(env)
    code = 1
    try:
        code = experiments.run.train.run_command(argv[1:])
    except SystemExit as err:  # an interrupted run exits with the signal's code (130, 143)
        code = err.code if isinstance(err.code, int) else 1
    except BaseException:  # noqa: BLE001 - printed here, as an interpreter does before it exits:
        traceback.print_exc()  # os._exit below would leave the run's log without it
        code = 1
    finally:  # what an interpreter does at exit (W&B and Lightning register handlers), then leave
        try:
            atexit._run_exitfuncs()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)


def _disown_inherited_finalizers() -> None:
    """The parent's exit-time cleanups stay the parent's: the child runs the ``atexit`` handlers at
    its end (as an interpreter does), and among them ``weakref.finalize`` would otherwise clean up
    what the parent created before the fork, such as the temporary directories of
    ``tempfile.TemporaryDirectory``, deleting them under the parent and every later child. W&B
    makes its media staging directory (where tables are written) at import and registers its
    removal with ``atexit`` itself: when the parent imported W&B, that handler is dropped too.
    Cleanups the child registers itself still run."""
    for finalizer in list(weakref.finalize._registry):  # noqa: SLF001 - no public listing
        finalizer.atexit = False
    media = sys.modules.get("wandb.sdk.data_types._private")
    if media is not None:
        atexit.unregister(media.MEDIA_TMP.cleanup)


def _apply_malloc_settings(env: dict[str, str]) -> None:
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: the variables were ignored there too
        return
    for name, param in _MALLOPT.items():
        value = env.get(name)
        if value and value.isdigit():
            libc.mallopt(param, int(value))
