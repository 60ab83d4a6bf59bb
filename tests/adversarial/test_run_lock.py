"""One process trains into a run folder at a time (avda.cache.lock.run_lock): a second
``avda train -o`` of the same folder stops with one line naming the holder, the first one
finishes a complete run, and a run refused before it starts leaves no empty folder behind."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import threading
import time

import pytest

from avda import runs
from avda.cache import lock as lock_module
from avda.cache.lock import (
    RUN_LOCK,
    SWEEP_LOCK,
    RunBusyError,
    run_lock,
    sweep_lock,
    training_holder,
)
from avda.train.loop import train
from tests.adversarial._cli import one_line, run
from tests.conftest import make_feature_cache

ARGS = ("--head", "source-only", "--source", "source", "--target", "target")


def test_a_second_trainer_of_the_same_folder_is_refused(tmp_path, capsys):
    cache = tmp_path / "c.zarr"
    make_feature_cache(cache, per_class=4, K=2, D=8)
    out = tmp_path / "run"
    with run_lock(out, what="avda train"):
        code, _, err = run(capsys, "train", "--cache", cache, *ARGS, "-o", out, "--epochs", "1")
        line = one_line(err)
        assert code != 0
        assert f"run {out} is being written by pid {os.getpid()}" in line
        assert "(avda train); wait for it to finish (or give this run another -o)" in line
        assert not (out / runs.CONFIG).exists()  # the refused process wrote nothing
    # Released on exit: the same command now trains a complete run.
    code, _, err = run(capsys, "train", "--cache", cache, *ARGS, "-o", out, "--epochs", "1")
    assert code == 0, err
    assert runs.is_complete(out)
    assert (out / RUN_LOCK).read_text() == ""  # the record names a holder only while it holds
    (out / runs.STATUS).unlink()  # as if it had stopped: no holder now
    code, _, err = run(capsys, "evaluate", out)
    # the command that resumes it, not "the same `avda train` command" (a sweep's run has none)
    assert code == 1 and f"finish it: `avda train --config {out / runs.CONFIG} -o {out}`" in err
    assert "(a sweep's run: run the same `avda sweep` again)" in err


def test_a_running_training_keeps_a_second_one_out(tmp_path, capsys):
    """A real second process: ``avda train`` runs in a subprocess while this one tries the same
    folder; it is refused, and the subprocess's run ends complete and uncorrupted."""
    cache = tmp_path / "c.zarr"
    make_feature_cache(cache, per_class=6, K=2, D=8)
    out = tmp_path / "run"
    entry = "import sys; from avda import cli; sys.exit(cli.main(sys.argv[1:]))"
    command = [sys.executable, "-c", entry, "train", "--cache", str(cache), *ARGS]
    command += ["-o", str(out), "--epochs", "150", "-q"]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / runs.CONFIG).exists():  # written under the lock
            assert child.poll() is None and time.monotonic() < deadline, child.communicate()
            time.sleep(0.1)
        # Evaluating it meanwhile says it is training, not "finish it with avda train".
        code, _, err = run(capsys, "evaluate", out)
        assert code == 1 and f"{out} is still training (pid {child.pid} on host" in err, err
        assert "finish it" not in err
        with pytest.raises(RunBusyError, match=rf"is being written by pid {child.pid} "):
            train(
                cache=cache,
                head="source-only",
                source=["source"],
                target=["target"],
                out=out,
                overrides={"epochs": 150},
                progress=False,
            )
        _, err = child.communicate(timeout=600)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 0, err
    assert runs.is_complete(out)


def test_a_refused_run_leaves_no_folder(tmp_path):
    cache = tmp_path / "c.zarr"
    make_feature_cache(cache, per_class=4, K=2, D=8)
    out = tmp_path / "never"
    with pytest.raises(Exception, match="no-such-head"):
        train(cache=cache, head="no-such-head", source=["source"], target=["target"], out=out)
    assert not out.exists()


@pytest.mark.parametrize("holder", ["run", "sweep"])
def test_a_stopped_holder_removes_only_a_folder_it_made(tmp_path, holder):
    """A run's or a sweep's lock holder stopped before it wrote anything removes its lock file
    and the folder only where it made that folder: one the user made (empty, or holding only
    a lock file an earlier holder left) stays, lock file and all."""

    def stopped(folder):
        hold = run_lock(folder, what="avda train") if holder == "run" else sweep_lock(folder)
        with pytest.raises(KeyboardInterrupt), hold:
            raise KeyboardInterrupt

    name = RUN_LOCK if holder == "run" else SWEEP_LOCK
    made = tmp_path / "made"
    stopped(made)
    assert not made.exists()  # made here, nothing written: gone with its lock
    empty = tmp_path / "empty"
    empty.mkdir()
    stopped(empty)
    assert empty.is_dir()
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / name).write_text("")
    stopped(locked)
    assert [p.name for p in locked.iterdir()] == [name]


def test_a_refused_run_never_deletes_the_lock_file_of_the_holder(tmp_path, monkeypatch):
    """Two trainers of a new folder started together both saw no folder; the refused one
    deleted the lock file the other held (a third then locked a new one and trained beside
    it). Only a holder deletes it, while it holds it."""
    from avda.cache import lock as lock_module

    run = tmp_path / "new"
    with run_lock(run, what="avda train"):  # the holder (locks are per open file)

        class Unseen(type(run)):
            def exists(self, **kwargs):  # as it was when the refused process looked
                return False if self == run else super().exists(**kwargs)

        monkeypatch.setattr(lock_module, "Path", Unseen)
        with pytest.raises(RunBusyError):
            with run_lock(run, what="avda train"):
                pass
        monkeypatch.undo()
        assert (run / RUN_LOCK).exists()  # the holder's lock file is still there


def test_a_record_left_by_a_killed_trainer_on_another_host_is_not_believed(tmp_path, capsys):
    """Whether a run is training is its lock, not the record in the lock file: a trainer killed
    on another host (a cluster node) leaves its record, and the run is then not "still
    training" but unfinished. A held lock is named from its record."""
    cache = tmp_path / "c.zarr"
    make_feature_cache(cache, per_class=4, K=2, D=8)
    out = tmp_path / "run"
    code, _, err = run(capsys, "train", "--cache", cache, *ARGS, "-o", out, "--epochs", "1")
    assert code == 0, err
    (out / runs.STATUS).unlink()  # as if it had been killed before it finished
    record = {"pid": 1, "host": "node-that-died", "since": "2026-12-01T00:00:00+00:00"}
    (out / RUN_LOCK).write_text(json.dumps(record) + "\n")
    assert training_holder(out) is None
    code, _, err = run(capsys, "evaluate", out)
    assert code == 1 and "not a complete run" in err and "still training" not in err, err
    with run_lock(out, what="avda train"):  # held (here, by this process's other descriptor)
        assert training_holder(out).startswith(f"pid {os.getpid()} on host ")
        code, _, err = run(capsys, "evaluate", out)
        assert code == 1 and "still training" in err, err


def test_a_trainer_starting_while_the_lock_is_probed_is_not_refused(tmp_path):
    """``training_holder`` (``avda evaluate``) takes the lock for an instant to see whether it
    is held; a trainer starting at that instant tries once more instead of being refused."""
    out = tmp_path / "run"
    out.mkdir()
    # the record a trainer killed on another node left (read at once: not this host's pid)
    record = {"pid": 1, "host": "node-that-died", "since": "2026-12-01T00:00:00+00:00"}
    (out / RUN_LOCK).write_text(json.dumps(record) + "\n")
    taken, release = threading.Event(), threading.Event()

    def probe() -> None:  # a probe that lingers (0.3 s), as a slow file system might
        fd = os.open(out / RUN_LOCK, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            taken.set()
            release.wait(0.3)
        finally:
            os.close(fd)

    thread = threading.Thread(target=probe)
    thread.start()
    try:
        assert taken.wait(10)
        with run_lock(out, what="avda train", wait=0):
            pass  # taken: refused before, with "being written by another process"
    finally:
        release.set()
        thread.join()


def test_the_holder_is_found_by_the_lock_of_another_process_and_never_probed_by_its_own(
    tmp_path, monkeypatch
):
    """Another process's lock is found by the probe; a process asking about a run it trains
    itself is answered without opening the lock file: where flock is emulated with POSIX locks
    (NFS), closing any descriptor of the file would drop the lock it holds."""
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\nfrom avda.cache.lock import run_lock\n"
         f"with run_lock({str(out)!r}, what='avda train'):\n"
         "    print('held', flush=True)\n    sys.stdin.readline()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline() == "held\n"
        assert training_holder(out).startswith(f"pid {holder.pid} on host ")
    finally:
        holder.communicate("\n", timeout=60)
    assert training_holder(out) is None
    with run_lock(out, what="avda train"):

        def no_open(*args, **kwargs):
            raise AssertionError("the lock file was opened by the process holding it")

        monkeypatch.setattr(lock_module.os, "open", no_open)
        assert training_holder(out).endswith("(this process)")
        monkeypatch.undo()
    assert training_holder(out) is None


def test_a_run_folder_removed_as_its_lock_file_is_opened_is_made_again(tmp_path, monkeypatch):
    """A trainer waiting for a new run folder (AVDA_LOCK_WAIT, a sweep's worker) whose holder
    stopped before it wrote anything: the holder deletes the lock file, lets go and removes
    the empty folder; removed between the waiter's making it again and opening the lock file
    in it, the waiter ended with FileNotFoundError. It makes the folder again and locks."""
    from pathlib import Path

    run = tmp_path / "new"
    opened, real_open = [], os.open

    def racing(path, *args, **kwargs):
        if Path(path) == run / RUN_LOCK and not opened:
            opened.append(path)
            run.rmdir()  # the holder's removal lands between the mkdir and the open
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", racing)
    with run_lock(run, what="avda train"):
        monkeypatch.undo()
        assert opened and (run / RUN_LOCK).exists()
