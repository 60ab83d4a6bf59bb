"""The small helpers every part of avda shares (avda._io, avda.dask_support): one copy each."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import pickle

import pytest
import torch

from avda import _io


def test_atomic_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "folder" / "out.json"
    _io.atomic_write_text(target, "first")
    _io.atomic_write_text(target, "second")
    assert target.read_text() == "second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.json"]


def test_a_failed_atomic_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old and whole")

    def half_then_fail(tmp):
        tmp.write_bytes(b"half a fi")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        _io.atomic_write(target, half_then_fail)
    assert target.read_bytes() == b"old and whole"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]

    named = tmp_path / ".out.bin.partial"
    with pytest.raises(KeyboardInterrupt):
        _io.atomic_write(target, lambda tmp: (tmp.write_bytes(b"x"), _interrupt()), temporary=named)
    assert not named.exists() and target.read_bytes() == b"old and whole"

    fresh = tmp_path / "new.bin"
    with pytest.raises(OSError):
        _io.atomic_write(fresh, half_then_fail)
    assert not fresh.exists()  # never a half-written target


def _interrupt():
    raise KeyboardInterrupt


def test_file_lock_holders_take_turns_and_leave_no_lock_file(tmp_path):
    """Threads (one open file each, as processes) wait for one another. The holder removes the
    file as it lets go: a waiter then holding the removed file's lock must take the file now
    at the path instead (without that check, two holders at once)."""
    import threading
    import time

    path = tmp_path / "sub" / ".m.csv.lock"
    inside, most, guard = [0], [0], threading.Lock()

    def hold() -> None:
        for _ in range(5):
            with _io.file_lock(path) as locked:
                assert locked
                with guard:
                    inside[0] += 1
                    most[0] = max(most[0], inside[0])
                time.sleep(0.01)
                with guard:
                    inside[0] -= 1

    threads = [threading.Thread(target=hold) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert most[0] == 1
    assert list(path.parent.iterdir()) == []


def test_file_lock_without_locks_warns_runs_unlocked_and_leaves_no_lock_file(
    tmp_path, monkeypatch, caplog
):
    """A file system without working locks (ENOLCK): a warning, the block runs (False), and
    the lock file it created is removed as a holder's is (it was left behind)."""
    import errno
    import fcntl

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    path = tmp_path / ".m.csv.lock"
    with _io.file_lock(path) as locked:
        assert locked is False
    assert "does not support locks" in caplog.text and "run one writer at a time" in caplog.text
    assert list(tmp_path.iterdir()) == []


_HOLD_LOCK = """
import sys, time
from avda import _io
with _io.file_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_file_lock_wait_is_said_once_and_bounded_by_avda_lock_wait(tmp_path, monkeypatch, caplog):
    """Another process holds the lock: the wait was silent, and endless whatever
    AVDA_LOCK_WAIT said (the store locks honour it). Past LOCK_NOTICE_SECONDS one warning names
    the lock file and its holder; past AVDA_LOCK_WAIT one error names them and the fix; once
    the holder is gone, the lock is taken."""
    import subprocess
    import sys
    import time

    from avda.errors import ConfigError, LockWaitError

    path = tmp_path / ".m.csv.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setattr(_io, "LOCK_NOTICE_SECONDS", 0.3)
        monkeypatch.setenv("AVDA_LOCK_WAIT", "1.5")
        began = time.monotonic()
        with caplog.at_level("WARNING", logger="avda._io"):
            with pytest.raises(LockWaitError) as refused:
                with _io.file_lock(path):
                    raise AssertionError("taken while another process holds it")
        assert 1.5 <= time.monotonic() - began < 10
        message = str(refused.value)
        assert "\n" not in message
        assert message.startswith(f"{path} is held by pid {holder.pid} on host ")
        assert "(AVDA_LOCK_WAIT=1.5): wait for it to finish, then run the command again, or " in (
            message
        )
        notices = [r.getMessage() for r in caplog.records if "waiting for the lock" in r.message]
        assert len(notices) == 1, notices
        assert notices[0].startswith(f"waiting for the lock {path}, held by pid {holder.pid} on")
        assert notices[0].endswith(
            " since "
            + message.split(" since ")[1].split(",")[0]
            + (" (AVDA_LOCK_WAIT=SECONDS bounds the wait)")
        )
        monkeypatch.setenv("AVDA_LOCK_WAIT", "soon")
        with pytest.raises(ConfigError, match="AVDA_LOCK_WAIT='soon' is not a number of seconds"):
            with _io.file_lock(path):
                pass
    finally:
        holder.kill()
        holder.wait()
    monkeypatch.delenv("AVDA_LOCK_WAIT")
    with _io.file_lock(path) as locked:  # the kernel dropped the killed holder's lock
        assert locked
    assert not path.exists()


def test_atomic_write_uses_the_temporary_name_given_and_can_fsync(tmp_path):
    target = tmp_path / "pred.npz"
    seen = []
    _io.atomic_write(
        target,
        lambda tmp: (seen.append(tmp.name), tmp.write_bytes(b"data")),
        temporary=tmp_path / "pred.tmp.npz",
        fsync=True,
    )
    assert seen == ["pred.tmp.npz"] and target.read_bytes() == b"data"
    _io.atomic_write(target, lambda tmp: seen.append(tmp.name) or tmp.write_bytes(b"d"))
    assert seen[-1] == "pred.npz.tmp"  # the default: PATH.tmp


def test_replace_file_moves_a_finished_temporary_into_place(tmp_path):
    part = tmp_path / "w.pt.part"
    part.write_bytes(b"weights")
    _io.replace_file(part, tmp_path / "w.pt", fsync=True)
    assert [p.name for p in tmp_path.iterdir()] == ["w.pt"]


def test_sha256_file_matches_hashlib(tmp_path):
    path = tmp_path / "blob"
    data = bytes(range(256)) * 9000  # more than one 1 MiB block
    path.write_bytes(data)
    assert _io.sha256_file(path) == hashlib.sha256(data).hexdigest()
    (tmp_path / "empty").write_bytes(b"")
    assert _io.sha256_file(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()


class _Code:  # a pickled class: weights_only refuses it
    pass


def test_torch_load_reads_tensors_and_refuses_code(tmp_path):
    path = tmp_path / "state.pt"
    torch.save({"w": torch.arange(3), "epoch": 2}, path)
    state = _io.torch_load(path)
    assert state["epoch"] == 2 and state["w"].tolist() == [0, 1, 2]
    assert state["w"].device.type == "cpu"
    torch.save({"object": _Code()}, tmp_path / "code.pt")
    with pytest.raises(pickle.UnpicklingError):
        _io.torch_load(tmp_path / "code.pt")


# ------------------------------------------------------------------------------ Dask workers
def test_available_cores_follows_the_cpu_affinity():
    from avda import dask_support

    cores = dask_support.available_cores()
    if hasattr(os, "sched_getaffinity"):
        assert cores == len(os.sched_getaffinity(0))
    assert cores >= 1
    assert dask_support.threads_per_worker(1) == cores
    assert dask_support.threads_per_worker(10 * cores) == 1


def test_worker_index_is_the_last_number_of_the_name():
    from avda.dask_support import worker_index

    assert [worker_index(n) for n in ("0", "3", "SLURMCluster-2-1", "gpu-node", "")] == [
        0,
        3,
        1,
        0,
        0,
    ]


def test_workers_spread_over_the_gpus_of_a_host(monkeypatch):
    from avda import dask_support

    assert dask_support.worker_name() == ""  # not in a Dask worker
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert [dask_support.worker_device(None, str(i)) for i in range(3)] == [
        "cuda:0",
        "cuda:1",
        "cuda:0",
    ]
    assert dask_support.worker_device("cuda", "job-3") == "cuda:1"
    assert dask_support.worker_device("cpu", "1") == "cpu"
    assert dask_support.worker_device("cuda:0", "1") == "cuda:0"  # asked for: kept
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert dask_support.worker_device(None, "1") is None  # one GPU: the default device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert dask_support.worker_device(None, "1") is None


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bars_into_a_log_file_update_every_ten_seconds(monkeypatch):
    # stderr redirected to a file or a pipe (a cluster job's log): a 1,170-epoch training's
    # bar wrote thousands of updates into it, one every 0.1 s
    from avda._io import LOG_BAR_INTERVAL, progress_bar

    monkeypatch.delenv("TQDM_MININTERVAL", raising=False)
    assert LOG_BAR_INTERVAL == 10
    assert progress_bar(range(3), file=io.StringIO()).mininterval == 10
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert progress_bar(range(3)).mininterval == 10
    # a terminal, a caller's own interval, or the user's TQDM_MININTERVAL: tqdm's as it is
    assert progress_bar(range(3), file=_Terminal()).mininterval == 0.1
    assert progress_bar(range(3), file=io.StringIO(), mininterval=1).mininterval == 1
    monkeypatch.setenv("TQDM_MININTERVAL", "2")
    assert progress_bar(range(3), file=io.StringIO()).mininterval != 10


def test_spoken_rewrites_while_a_block_runs_and_puts_the_factory_back(caplog):
    """avda.wording.spoken: the log record factory it installs is in place only while a block
    runs in some thread (it stayed installed for good after the first API call, over every
    record of the user's process), the last block to leave puts the one before back, and a
    block that ends in one thread leaves another's rewriting on."""
    import logging
    import threading

    from avda import wording

    before = logging.getLogRecordFactory()
    log = logging.getLogger("avda.test_spoken")
    entered, leave = threading.Event(), threading.Event()

    def other() -> None:
        with wording.spoken(str.upper):
            entered.set()
            leave.wait(30)

    with caplog.at_level(logging.WARNING, logger="avda"):
        with wording.spoken(lambda message: message.replace("--epochs", "epochs")):
            thread = threading.Thread(target=other)
            thread.start()
            assert entered.wait(30)
            leave.set()
            thread.join(30)  # the other block has ended: this one still rewrites
            log.warning("leave %s unset", "--epochs")
            assert logging.getLogRecordFactory() is not before
        log.warning("leave --epochs unset, outside")
    assert [r.getMessage() for r in caplog.records] == [
        "leave epochs unset",
        "leave --epochs unset, outside",
    ]
    assert logging.getLogRecordFactory() is before

    # a factory set over avda's during a block stays after it (avda's, under it, passes on)
    def user(*args, **kwargs):
        return inner(*args, **kwargs)

    try:
        with wording.spoken(str.upper):
            inner = logging.getLogRecordFactory()
            logging.setLogRecordFactory(user)
        assert logging.getLogRecordFactory() is user
        assert logging.LogRecord.getMessage(user("avda.x", 30, "", 0, "kept", (), None)) == "kept"
    finally:
        logging.setLogRecordFactory(before)


def test_predictions_npz_and_csv_are_written_both_or_neither(tmp_path, monkeypatch):
    # avda predict -o p.npz (and a run's predictions) on a full disk: the .npz was renamed
    # into place before its .csv was written, leaving new scores beside an earlier .csv
    import errno
    from pathlib import Path

    import numpy as np

    from avda import runs

    out = tmp_path / "p.npz"
    uids, labels = np.array(["a", "b"]), {"verb": np.array([0, 1])}
    runs.save_predictions(out, uids, labels, {"verb": np.eye(2)})
    before = out.read_bytes(), out.with_suffix(".csv").read_text()
    write_text = Path.write_text

    def full(self, *args, **kwargs):
        if self.name.startswith("p.csv"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return write_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(OSError) as raised:
        runs.save_predictions(out, uids, labels, {"verb": np.eye(2)[::-1]})
    assert raised.value.filename == str(out.with_suffix(".csv"))
    assert (out.read_bytes(), out.with_suffix(".csv").read_text()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.csv", "p.npz"]


def test_files_written_together_never_leave_a_new_one_beside_an_old_one(tmp_path, monkeypatch):
    # a kill between the renames of atomic_write_together (OUT.md and OUT.csv, a manifest and
    # its .build.json) left the first file new beside the second's old one; the old files go
    # first, so the rest are missing (the rerun writes them), never mismatched
    first, second = tmp_path / "t.csv", tmp_path / "t.md"
    first.write_text("old csv")
    second.write_text("old md")
    renamed = []
    replace = _io.replace_file

    def killed_after_one(tmp, path):
        if renamed:
            raise KeyboardInterrupt  # a kill between the renames
        renamed.append(path)
        replace(tmp, path)

    monkeypatch.setattr(_io, "replace_file", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        _io.atomic_write_together(
            {first: lambda tmp: tmp.write_text("y"), second: lambda tmp: tmp.write_text("x")}
        )
    assert second.read_text() == "x" and not first.exists()  # renamed last to first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.md"]  # no temporary left


def test_atomic_write_together_keeps_old_files_when_a_target_is_a_folder(tmp_path):
    # the old files are deleted before the renames: a later path that is a folder (its unlink
    # or rename fails) deleted the first one's finished file with nothing in its place
    first, second = tmp_path / "OUT.md", tmp_path / "OUT.csv"
    first.write_text("old md")
    second.mkdir()
    with pytest.raises(IsADirectoryError) as raised:
        _io.atomic_write_texts({first: "new md", second: "new csv"})
    assert raised.value.filename == str(second)
    assert first.read_text() == "old md" and second.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["OUT.csv", "OUT.md"]  # no temporary


def test_predictions_killed_between_their_renames_leave_no_npz(tmp_path, monkeypatch):
    # the .npz (what evaluate and predict read) is renamed last: a kill after the .csv's
    # rename leaves no .npz (the rerun writes it), never new scores beside an earlier .csv
    import numpy as np

    from avda import runs

    out = tmp_path / "p.npz"
    uids, labels = np.array(["a", "b"]), {"verb": np.array([0, 1])}
    runs.save_predictions(out, uids, labels, {"verb": np.eye(2)})
    replace, renamed = _io.replace_file, []

    def killed_after_one(tmp, path, **keywords):
        if renamed:
            raise KeyboardInterrupt  # a kill between the renames
        renamed.append(path.name)
        replace(tmp, path, **keywords)

    monkeypatch.setattr(_io, "replace_file", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        runs.save_predictions(out, uids, labels, {"verb": np.eye(2)[::-1]})
    assert renamed == ["p.csv"] and sorted(p.name for p in tmp_path.iterdir()) == ["p.csv"]


def test_naming_writes_names_the_store_only_for_an_os_error_naming_no_file():
    # a Zarr chunk's ENOSPC names no file: the store and what was written are named; an error
    # naming its file, or not an OS error (a Zarr ValueError, Ctrl-C), is raised as it was
    import errno

    with pytest.raises(OSError) as raised, _io.naming_writes("c.zarr", "the rgb features"):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert _io.os_error_line(raised.value).startswith(
        "no space left on device: c.zarr (writing the rgb features); free"
    )
    with pytest.raises(OSError) as raised, _io.naming_writes("c.zarr", "the rgb features"):
        raise OSError(errno.EIO, "Input/output error", "c.zarr/features/rgb/c/0/0/0")
    assert _io.os_error_line(raised.value) == "input/output error: c.zarr/features/rgb/c/0/0/0"
    # an OSError with a message and no errno (Python code's): naming the store printed it as
    # "[Errno None] None: 'c.zarr'", its message lost (test_clustering's midway fault)
    for error in (ValueError("bad shape"), KeyboardInterrupt(), OSError("disk full")):
        with pytest.raises(type(error)) as raised, _io.naming_writes("c.zarr", "the rgb features"):
            raise error
        assert raised.value is error and vars(error) == {}, vars(error)
        assert getattr(error, "filename", None) is None and not hasattr(error, _io.WRITING)


def test_naming_writes_nested_the_innermost_names_the_write():
    import errno

    with pytest.raises(OSError) as raised, _io.naming_writes("c.zarr", "a new store"):
        with _io.naming_writes("c.zarr", "its provenance (zarr.json)"):
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
    assert _io.os_error_line(raised.value).startswith(
        "disk quota exceeded: c.zarr (writing its provenance (zarr.json)); free"
    )


def test_check_writable_makes_the_folder_and_leaves_no_probe(tmp_path, monkeypatch):
    _io.check_writable(tmp_path / "new" / "rep.html")
    assert [p.name for p in tmp_path.rglob("*")] == ["new"]
    # killed before the probe is removed: one with a name (.rep.html.*.probe) was left behind
    monkeypatch.setattr(os, "unlink", lambda *args, **kwargs: _interrupt())
    with contextlib.suppress(KeyboardInterrupt):
        _io.check_writable(tmp_path / "new" / "rep.html")
    assert [p.name for p in tmp_path.rglob("*")] == ["new"]


def test_a_failed_writes_temporary_that_cannot_be_removed_is_left_and_said(
    tmp_path, monkeypatch, caplog
):
    # a disk turned read-only mid-write: the half-written PATH.tmp stays; it was left unsaid
    import errno
    from pathlib import Path

    def read_only(self, missing_ok=False):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    def half_then_fail(tmp):
        tmp.write_bytes(b"half a fi")
        monkeypatch.setattr(Path, "unlink", read_only)
        raise OSError(errno.EROFS, "Read-only file system")

    with pytest.raises(OSError) as raised:
        _io.atomic_write(tmp_path / "out.bin", half_then_fail)
    assert raised.value.filename == str(tmp_path / "out.bin")
    assert caplog.messages == [
        f"{tmp_path / 'out.bin.tmp'}, a failed write's temporary file, is left "
        "(Read-only file system)"
    ]
    caplog.clear()  # one that was never made (a read-only folder): nothing to say
    with pytest.raises(OSError):
        _io.atomic_write(tmp_path / "new.bin", _fail)
    assert caplog.messages == []


def _fail(tmp):
    raise OSError(30, "Read-only file system")
