"""Run directory locks and states."""

import json
import os
import subprocess
import sys

import pytest

from experiments.run.rundir import RunLock, RunLocked, lock_holder, read_status, write_status


def test_second_lock_on_a_run_is_refused(tmp_path):
    with RunLock(tmp_path):
        assert lock_holder(tmp_path)["pid"] == os.getpid()
        with pytest.raises(RunLocked, match=f"pid {os.getpid()}"):
            RunLock(tmp_path).acquire()
    assert lock_holder(tmp_path) is None
    RunLock(tmp_path).acquire().release()


def test_lock_of_a_killed_process_is_stale(tmp_path):
    code = (f"import os, signal; from experiments.run.rundir import RunLock; RunLock({str(tmp_path)!r}).acquire(); "
            f"os.kill(os.getpid(), signal.SIGKILL)")
    subprocess.run([sys.executable, "-c", code], check=False)
    dead = json.loads((tmp_path / "run.lock").read_text())["pid"]
    assert lock_holder(tmp_path) is None
    lock = RunLock(tmp_path).acquire()
    assert lock.stale["pid"] == dead
    lock.release()


def test_running_without_a_live_holder_reads_as_interrupted(tmp_path):
    assert read_status(tmp_path)["state"] == "pending"
    write_status(tmp_path, "running", step=20)
    assert read_status(tmp_path)["state"] == "interrupted"
    with RunLock(tmp_path):
        status = read_status(tmp_path)
        assert status["state"] == "running" and status["holder"]["pid"] == os.getpid()
    write_status(tmp_path, "completed", step=40)
    assert read_status(tmp_path) | {"time": 0} == {"state": "completed", "step": 40, "time": 0}
