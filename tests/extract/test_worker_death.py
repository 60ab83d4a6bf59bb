"""Decoding workers end with the process that started them, however it ends (Linux): also one
whose parent is gone before the worker starts (a Dask worker killed as its shard begins)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")

PARENT = """
import multiprocessing, os, sys, time

def child(path, gate):
    while not os.path.exists(gate):  # the test kills the parent first when asked to
        time.sleep(0.01)
    from avda.extract.inputs import die_with_parent
    die_with_parent()
    open(path, "w").write(str(os.getpid()))
    time.sleep(120)

if __name__ == "__main__":
    multiprocessing.set_start_method("fork")
    process = multiprocessing.Process(target=child, args=sys.argv[1:3])
    process.start()
    open(sys.argv[3], "w").write(str(process.pid))
    time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:  # a zombie waits for its reaper: it is gone
            return handle.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _wait_for(path, parent, seconds=60.0):
    deadline = time.monotonic() + seconds
    while not path.exists() or not path.read_text():
        assert parent.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    return int(path.read_text())


@pytest.mark.parametrize("parent_dies", ["after the call", "before the call"])
def test_a_killed_parent_takes_its_decoding_worker_along(tmp_path, parent_dies):
    script, marker = tmp_path / "parent.py", tmp_path / "called.pid"
    gate, started = tmp_path / "gate", tmp_path / "started.pid"
    script.write_text(PARENT)
    parent = subprocess.Popen([sys.executable, str(script), str(marker), str(gate), str(started)])
    try:
        child = _wait_for(started, parent)
        if parent_dies == "after the call":
            gate.touch()
            assert _wait_for(marker, parent) == child
        parent.send_signal(signal.SIGKILL)  # no clean-up runs: only the kernel can end it
        parent.wait(10)
        gate.touch()
        deadline = time.monotonic() + 20
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child)
    finally:
        if parent.poll() is None:
            parent.kill()
        if started.exists() and started.read_text() and _alive(int(started.read_text())):
            os.kill(int(started.read_text()), signal.SIGKILL)
