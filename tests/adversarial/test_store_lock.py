"""avda.cache.lock: exclusive and shared holders, the one-line refusal, AVDA_LOCK_WAIT, and no
lock file for a reader of a store that does not exist."""

from __future__ import annotations

import errno
import os
import socket
import threading
import time

import pytest

from avda.cache.lock import StoreBusyError, lock_path, store_lock


def test_exclusive_refuses_everyone_and_names_the_holder(tmp_path):
    store = tmp_path / "s.zarr"
    store.mkdir()
    with store_lock(store, what="avda cache import"):
        for shared in (False, True):
            with pytest.raises(StoreBusyError) as caught:
                with store_lock(store, what="x", shared=shared):
                    pass
            message = str(caught.value)
            assert "\n" not in message
            assert f"cache {store} is being written by pid {os.getpid()}" in message
            assert f"on host {socket.gethostname()}" in message
            assert "(avda cache import); wait for it to finish" in message
    with store_lock(store, what="again"):  # released on exit
        pass
    assert lock_path(store) == tmp_path / "s.zarr.lock"
    assert lock_path(store).read_text() == ""  # the record names a holder only while it holds


def test_shared_holders_share_and_keep_writers_out(tmp_path):
    store = tmp_path / "s.zarr"
    store.mkdir()
    with store_lock(store, what="avda cache export", shared=True):
        with store_lock(store, what="shard", shared=True):
            with pytest.raises(StoreBusyError) as refused:
                with store_lock(store, what="avda cluster"):
                    pass
    # shards hold it shared while they write their rows: not "being read"
    message = str(refused.value)
    assert f"cache {store} is in use by pid {os.getpid()}" in message
    assert "(shard; a shared lock: a shard, a reader); wait for it" in message


def test_a_writer_waits_when_asked(tmp_path, monkeypatch):
    store = tmp_path / "s.zarr"
    held = threading.Event()

    def hold() -> None:
        with store_lock(store, what="first"):
            held.set()
            time.sleep(0.6)

    thread = threading.Thread(target=hold)
    thread.start()
    held.wait(5)
    monkeypatch.setenv("AVDA_LOCK_WAIT", "20")
    began = time.monotonic()
    with store_lock(store, what="second"):
        waited = time.monotonic() - began
    thread.join()
    assert 0.2 < waited < 20


def test_a_reader_of_a_missing_store_leaves_no_lock_file(tmp_path):
    with store_lock(tmp_path / "none.zarr", what="avda cache export", reads=True):
        pass
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES])
def test_a_writer_in_a_read_only_place_is_told_the_store_not_the_lock_file(
    tmp_path, monkeypatch, code
):
    """A store (or run folder) whose folder cannot be written: the writer gets one line naming
    the store and the fix; a reader still reads it (unlocked). (Tests run as root here, where
    chmod does not stop a write: the refusal of a read-only mount is simulated.)"""
    from avda.cache import lock as lock_module
    from avda.errors import CacheError, RunError

    store = tmp_path / "s.zarr"
    store.mkdir()
    real_open = os.open

    def refuse_lock_files(path, *args, **kwargs):
        if str(path).endswith("lock"):
            raise OSError(code, os.strerror(code), str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(lock_module.os, "open", refuse_lock_files)
    with pytest.raises(CacheError) as caught:
        with store_lock(store, what="avda cache import"):
            pass
    message = str(caught.value)
    assert message.startswith(f"cannot write the cache {store}: {tmp_path} is not writable")
    assert "write it to a writable place" in message and "\n" not in message
    with store_lock(store, what="avda cache export", shared=True):  # a reader needs no lock
        pass
    with pytest.raises(RunError, match=f"cannot write the run {tmp_path / 'run'}: "):
        with lock_module.run_lock(tmp_path / "run", what="avda train"):
            pass


def test_a_store_lock_without_locks_warns_as_file_lock_does(tmp_path, monkeypatch, caplog):
    """A file system without working locks (ENOLCK): the store lock goes on unlocked with the
    warning file_lock gives (one helper, one text: it was written in both)."""
    import fcntl

    from avda import _io

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    store = tmp_path / "s.zarr"
    with caplog.at_level("WARNING"):
        with store_lock(store, what="avda cache import"):
            pass
        with _io.file_lock(tmp_path / ".m.csv.lock"):
            pass
    said = [r.getMessage() for r in caplog.records]
    assert said == [
        f"{lock_path(store)}: the file system does not support locks (No locks available); "
        "going on without the lock: run one writer at a time",
        f"{tmp_path / '.m.csv.lock'}: the file system does not support locks (No locks "
        "available); going on without the lock: run one writer at a time",
    ]


_HOLD_SHARED = """
import sys, time
from avda.cache.lock import store_lock
with store_lock(sys.argv[1], what="avda extract", shared=True):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def test_a_refusal_behind_shards_does_not_send_the_user_after_the_shard_that_ended(tmp_path):
    """Two shards hold the lock shared, each recorded itself in turn; the last to record
    ended: the refusal named it and said 'pid N has exited, but a process it started still
    holds the lock: end that process' (there is none: the other shard holds it). It says the
    lock is shared, naming the one that ended as such, and the wait that helps."""
    import subprocess
    import sys

    store = tmp_path / "s.zarr"
    holders = []
    try:
        for seconds in ("60", "0.3"):
            holders.append(
                subprocess.Popen(
                    [sys.executable, "-c", _HOLD_SHARED, str(store), seconds],
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
            assert holders[-1].stdout.readline().strip() == "held"
        ended = holders[1]
        assert ended.wait(60) == 0
        with pytest.raises(StoreBusyError) as refused:
            with store_lock(store, what="avda cluster"):
                pass
    finally:
        holders[0].kill()
        holders[0].wait()
    message = str(refused.value)
    assert "\n" not in message and "end that process" not in message
    assert message == (
        f"cache {store} is in use by another process sharing its lock (a shard, a "
        f"reader; the last to record itself, pid {ended.pid} on host {socket.gethostname()} "
        "(avda extract), has ended); wait for it to finish, then run the command again "
        "(AVDA_LOCK_WAIT=SECONDS waits for it)"
    )


_HOLD_THROUGH = """
import sys, time
from avda.cache.lock import store_lock
from avda.data_manifests.schema import writing
kind, path = sys.argv[1], sys.argv[2]
lock = store_lock(path, what="avda cluster") if kind == "store" else writing(path)
with lock:
    print("held", flush=True)
    sys.stdin.read()
"""


@pytest.mark.parametrize("kind", ["store", "manifest"])
def test_a_link_and_the_real_path_take_one_lock(tmp_path, monkeypatch, kind):
    """A real process holds the lock of a store (a manifest's write lock) reached by a link:
    a second one reaching it by its real path is refused (the manifest's write waits, here
    bounded by AVDA_LOCK_WAIT=0) as by the same path. The lock file was named from the path
    given, so each held its own and both wrote the store 'exclusively'."""
    import subprocess
    import sys

    from avda.data_manifests.schema import writing
    from avda.errors import LockWaitError

    real = tmp_path / "data" / ("real.zarr" if kind == "store" else "m.csv")
    real.parent.mkdir()
    if kind == "store":
        real.mkdir()
    else:
        real.write_text("")
    (tmp_path / "linked").symlink_to(real.parent)  # a linked folder, then a link to the store
    # (a manifest is written by a rename, which replaces a link to it: the linked folder only)
    link = tmp_path / "linked" / ("link.zarr" if kind == "store" else "m.csv")
    if kind == "store":
        link.symlink_to(real)
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_THROUGH, kind, str(link)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        if kind == "store":
            with pytest.raises(StoreBusyError, match=f"cache {real} is being written by pid"):
                with store_lock(real, what="avda cache import"):
                    pass
        else:
            monkeypatch.setenv("AVDA_LOCK_WAIT", "0")
            with pytest.raises(LockWaitError, match=f"is held by pid {holder.pid} "):
                with writing(real):
                    pass
    finally:
        holder.stdin.close()
        assert holder.wait(60) == 0
    assert lock_path(link) == lock_path(real) == real.with_name(f"{real.name}.lock")


def test_a_writer_that_made_no_store_leaves_no_lock_file(shared_data, tmp_path):
    """An `avda cache import` refused before it made the store left `STORE.zarr.lock` beside
    a store that does not exist; it deletes it as it lets go (still holding it). Beside a
    store, the file stays."""
    import pickle

    import numpy as np

    from avda.cache import interop
    from avda.errors import CacheError

    with open(tmp_path / "wrong.pkl", "wb") as handle:
        features = {"RGB": np.zeros((1, 2, 3), dtype=np.float32)}
        pickle.dump({"features": features, "narration_ids": ["P99_99_0"]}, handle)
    out = tmp_path / "w.zarr"
    annotations = shared_data / "annotations/epic100/UDA_annotations/EPIC_100_uda_target_val.csv"
    with pytest.raises(CacheError, match="not in"):
        interop.import_features(
            tmp_path / "wrong.pkl", out=out, annotations=annotations, domain="target", split="val"
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wrong.pkl"]
    store = tmp_path / "s.zarr"
    store.mkdir()
    with store_lock(store, what="avda cluster"):
        pass
    assert lock_path(store).exists()


def test_holders_of_a_lock_file_deleted_as_it_is_let_go_take_turns(tmp_path):
    """Exclusive holders of the lock of a store that does not exist delete its file as they
    let go: a waiter then holding the deleted file's lock must take the file now at the path
    instead (without that check, two holders at once). Threads: one open file each, as
    processes."""
    store = tmp_path / "absent.zarr"
    inside, most, guard = [0], [0], threading.Lock()

    def hold() -> None:
        for _ in range(3):
            with store_lock(store, what="avda cache import", wait=60):
                with guard:
                    inside[0] += 1
                    most[0] = max(most[0], inside[0])
                time.sleep(0.25)  # a waiter polls every 0.2 s
                with guard:
                    inside[0] -= 1

    threads = [threading.Thread(target=hold) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most[0] == 1
    assert not lock_path(store).exists()


def test_a_loop_of_links_is_one_line(tmp_path, capsys):
    """A store path that is a loop of links: naming its lock from the resolved path ended
    `avda cache import` with 'internal error: RuntimeError: Symlink loop'; it is one line
    naming the path and the fix."""
    from ._cli import one_line, run
    from ._helpers import files

    (tmp_path / "a.zarr").symlink_to("b.zarr")
    (tmp_path / "b.zarr").symlink_to("a.zarr")
    loop = tmp_path / "a.zarr"
    given = files(tmp_path)
    code, _, err = run(
        capsys, "cache", "import", given["base"], "-o", loop, "-a", given["ann"],
        "--domain", "source", "--split", "train",
    )  # fmt: skip
    assert code != 0
    line = one_line(err)
    assert f"{loop} is a loop of symbolic links" in line and "point the link at" in line


@pytest.mark.parametrize("kind", ["store", "run"])
def test_a_lock_file_is_deleted_while_its_holder_still_holds_it(tmp_path, monkeypatch, kind):
    """The lock of a store that does not exist (a refused import), or of a run folder a
    training stopped in before it wrote anything, is deleted by its holder as it lets go:
    before it lets go, else a waiter locks the file then deleted while a third locks a new
    one (two holders). The holders' turns (above) do not catch a delete just after the
    release: the file is probed as it is deleted."""
    from avda.cache.lock import RUN_LOCK, run_lock

    from ._helpers import probe_held_when_deleted

    target = tmp_path / ("absent.zarr" if kind == "store" else "new-run")
    lock = lock_path(target) if kind == "store" else target / RUN_LOCK
    held_then = probe_held_when_deleted(monkeypatch, lock)
    with pytest.raises(KeyboardInterrupt):
        with (
            store_lock(target, what="avda cache import")
            if kind == "store"
            else run_lock(target, what="avda train")
        ):
            raise KeyboardInterrupt  # stopped before it wrote anything
    monkeypatch.undo()
    assert held_then == [True] and not lock.exists() and not target.exists()


def test_a_file_written_by_a_rename_through_a_link_is_locked_beside_the_link(tmp_path, monkeypatch):
    """A manifest (a fine-tuning's weights) is written by a rename over its path, which
    replaces a link there, not the file it leads to. Its lock was named for the link's target:
    the first write through the link made it a file, and the next writer of the same path
    locked another file (`.link.csv.lock`) than one that had started before (`real/.m.csv.lock`):
    two writers of one manifest at once. The lock is beside the path written, every time."""
    import pandas as pd

    from avda.cache.lock import output_lock
    from avda.data_manifests import schema

    from ._helpers import annotations

    frame = pd.read_csv(annotations(tmp_path / "ann.csv", ["a", "b"])).assign(video_path="v.mp4")
    (tmp_path / "real").mkdir()
    schema.write(frame, tmp_path / "real" / "m.csv")
    link = tmp_path / "link.csv"
    link.symlink_to(tmp_path / "real" / "m.csv")
    locked, file_lock = [], schema.file_lock

    def recording(path, **kwargs):
        locked.append(path)
        return file_lock(path, **kwargs)

    monkeypatch.setattr(schema, "file_lock", recording)
    schema.write(frame, link)
    assert not link.is_symlink()  # the rename replaced the link
    schema.write(frame, link)
    assert locked == [tmp_path / ".link.csv.lock"] * 2
    weights = tmp_path / "w.pt"
    weights.symlink_to(tmp_path / "real" / "w.pt")
    with output_lock(weights, what="avda finetune"):
        assert (tmp_path / "w.pt.lock").exists() and not (tmp_path / "real" / "w.pt.lock").exists()


@pytest.mark.parametrize("where", ["store", "folder"])
def test_a_link_to_nothing_is_one_line_and_makes_no_folder(tmp_path, capsys, where):
    """`avda cache import -o dang.zarr`, a link to a store (or in a linked folder) that does
    not exist: naming the lock from the link's target made the target's folders
    (`nowhere/deep/`) and left them, then said 'dang.zarr already exists'. It is one line
    naming the link and where it leads, and nothing is made."""
    from ._cli import one_line, run
    from ._helpers import files

    given = files(tmp_path)
    link = tmp_path / ("dang.zarr" if where == "store" else "dang")
    link.symlink_to(tmp_path / "nowhere" / "deep" / "x.zarr")
    out = link if where == "store" else link / "s.zarr"
    before = sorted(p.name for p in tmp_path.iterdir())
    if where == "store":
        code, _, err = run(
            capsys, "cache", "import", given["base"], "-o", out, "-a", given["ann"],
            "--domain", "source", "--split", "train",
        )  # fmt: skip
        assert code != 0
        line = one_line(err)
    else:  # the command line refuses it before (a file of that name); a Python caller
        from avda.errors import ConfigError

        with pytest.raises(ConfigError) as caught:
            with store_lock(out, what="avda cache import"):
                pass
        line = str(caught.value)
    assert f"{link} is a link to {tmp_path / 'nowhere'}" in line
    assert "which does not exist: give the path it leads to instead" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no nowhere/, no lock file


def test_a_lock_file_that_is_a_link_to_nowhere_is_no_endless_retry(tmp_path, monkeypatch):
    """A lock whose folder was removed as it was opened is opened again (a run folder its
    holder removed empty); a lock file that is a link to nowhere, its folder there, raises
    what the open raised instead of retrying for ever."""
    store = tmp_path / "s.zarr"
    store.mkdir()
    lock_path(store).symlink_to(tmp_path / "nowhere" / "x")
    opened, real_open = [], os.open

    def counting(path, *args, **kwargs):
        opened.append(path)
        if len(opened) > 50:
            raise RuntimeError("retried for ever")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", counting)
    with pytest.raises(FileNotFoundError):
        with store_lock(store, what="avda cluster"):
            pass
    assert len(opened) == 1


# -- NFS: a lock file its holder deleted, seen through a client's handle (no NFS here: the
# errnos an NFSv3 client gives are raised by monkeypatched calls) --


def _nfs_lockers(tmp_path):
    """(lock file, a factory of its lock's context) for a store lock and a file_lock."""
    from avda import _io

    store = tmp_path / "s.zarr"
    return [
        (lock_path(store), lambda: store_lock(store, what="avda cache import")),
        (tmp_path / ".m.csv.lock", lambda: _io.file_lock(tmp_path / ".m.csv.lock")),
    ]


@pytest.mark.parametrize("which", [0, 1], ids=["store_lock", "file_lock"])
@pytest.mark.parametrize("call", ["flock", "stat"])
def test_a_stale_nfs_handle_opens_the_lock_file_again(tmp_path, monkeypatch, which, call):
    """ESTALE from flock or from the same-file stat (an NFS client polling a lock file its
    holder deleted): the path is opened again and locked; it was an internal error (OSError)."""
    import fcntl

    path, locker = _nfs_lockers(tmp_path)[which]
    real = {"flock": fcntl.flock, "stat": os.stat}[call]
    calls = []

    def stale_once(target, *args, **kwargs):
        if call == "flock" or os.fspath(target) == os.fspath(path):
            calls.append(target)
            if len(calls) == 1:
                raise OSError(errno.ESTALE, "Stale file handle")
        return real(target, *args, **kwargs)

    monkeypatch.setattr(fcntl if call == "flock" else os, call, stale_once)
    with locker():
        held = os.fstat(_held_fd(path))
        assert (held.st_dev, held.st_ino) == (path.stat().st_dev, path.stat().st_ino)
    assert len(calls) >= 2  # opened and asked again


def _held_fd(path):
    """The descriptor of this process that has ``path`` open (the lock's)."""
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == str(path):
                return int(name)
        except OSError:
            continue
    raise AssertionError(f"{path} is not open")


@pytest.mark.parametrize("which", [0, 1], ids=["store_lock", "file_lock"])
def test_a_lock_file_stale_every_time_is_one_line_not_an_endless_retry(
    tmp_path, monkeypatch, which
):
    import fcntl

    from avda import _io
    from avda.errors import LockWaitError

    def always_stale(fd, operation):
        raise OSError(errno.ESTALE, "Stale file handle")

    monkeypatch.setattr(fcntl, "flock", always_stale)
    monkeypatch.setattr(_io, "STALE_TRIES", 3)
    path, locker = _nfs_lockers(tmp_path)[which]
    with pytest.raises(LockWaitError) as caught:
        with locker():
            pass
    assert str(caught.value) == (
        f"{path}: the lock file went stale (Stale file handle) each of the 4 times it was "
        "opened (an NFS folder where other avda commands make and delete it as fast): run the "
        "command again once they have ended"
    )


@pytest.mark.parametrize("which", [0, 1], ids=["store_lock", "file_lock"])
def test_enolck_on_a_deleted_lock_file_takes_the_one_at_the_path(
    tmp_path, monkeypatch, caplog, which
):
    """ENOLCK from the lock of a file its holder deleted meanwhile (an NFSv3 waiter) is not
    'locks unsupported': the file at the path is opened and locked, no warning; avda went on
    unlocked."""
    import fcntl

    path, locker = _nfs_lockers(tmp_path)[which]
    real = fcntl.flock
    deleted = []

    def enolck_on_the_deleted(fd, operation):
        if not deleted:  # its holder deletes it as it lets go; the lock of it fails
            path.unlink()
            deleted.append(fd)
        if os.fstat(fd).st_nlink == 0:
            raise OSError(errno.ENOLCK, "No locks available")
        return real(fd, operation)

    monkeypatch.setattr(fcntl, "flock", enolck_on_the_deleted)
    with caplog.at_level("WARNING"):
        with locker():
            assert os.fstat(_held_fd(path)).st_nlink == 1
    assert deleted and "does not support locks" not in caplog.text


def test_flow_readers_leave_no_lock_file_behind_and_keep_it_while_one_reads(tmp_path):
    """`avda extract --flow` holds a video folder's lock shared while it reads: the last
    reader deletes the lock file as it lets go (one was left per video read, and a file of
    one user's made another's `avda flow` fail that folder as not writable), never while
    another reader holds it (a run would then take a new file's lock and write under it)."""
    from avda.cache.lock import RunBusyError, flow_lock, flow_lock_file, flow_read_lock

    folder = tmp_path / "flow" / "P01_01"
    folder.mkdir(parents=True)
    (folder / "flow.json").write_text("{}")
    lock = flow_lock_file(folder)
    with flow_read_lock(folder):
        with flow_read_lock(folder):  # a second reader (a DataLoader worker)
            assert lock.exists()
        assert lock.exists()  # the first still reads
        with pytest.raises(RunBusyError, match="avda extract --flow"):
            with flow_lock(folder.parent, folder.name):
                pass
    assert not lock.exists()
    with flow_lock(folder.parent, folder.name):  # and a run takes it after them
        assert lock.exists()
    assert not lock.exists()


def test_flow_reads_without_locks_warn_once_per_folder_not_per_segment(
    tmp_path, monkeypatch, caplog
):
    """On a file system without locks (ENOLCK: some NFS or Lustre mounts) `avda extract
    --flow` takes a video folder's lock for each segment it reads: the warning that it goes
    on unlocked is said once per lock file, not once per segment (70,000 lines for EPIC-100),
    and the frames are still read."""
    import fcntl

    from avda.cache.lock import flow_read_lock

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    folders = [tmp_path / "flow" / video for video in ("P01_01", "P01_02")]
    for folder in folders:
        folder.mkdir(parents=True)
        (folder / "flow.json").write_text("{}")
    read = 0
    with caplog.at_level("WARNING"):
        for folder in [*folders] * 3:  # three segments of each video
            with flow_read_lock(folder):
                read += 1
    said = [r.getMessage() for r in caplog.records if "does not support locks" in r.getMessage()]
    assert read == 6 and len(said) == 2, said
    assert ".flow.P01_01.lock" in said[0] and ".flow.P01_02.lock" in said[1]


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES])
def test_flow_is_read_from_a_read_only_mount_without_its_lock(tmp_path, monkeypatch, code):
    """An `avda flow` output on a read-only dataset mount (or a folder of another user's):
    `avda extract --flow` cannot make the video folder's lock file there, and reads it
    unlocked (nobody can write it there either), while a run into it is refused naming the
    folder. (Run as root here: the refusal of a read-only mount is simulated.)"""
    from avda.cache import lock as lock_module
    from avda.errors import RunError

    folder = tmp_path / "flow" / "P01_01"
    folder.mkdir(parents=True)
    (folder / "flow.json").write_text("{}")
    real_open = os.open

    def refuse_lock_files(path, *args, **kwargs):
        if str(path).endswith(".lock"):
            raise OSError(code, os.strerror(code), str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(lock_module.os, "open", refuse_lock_files)
    with lock_module.flow_read_lock(folder):
        read = True
    assert read and not lock_module.flow_lock_file(folder).exists()
    with pytest.raises(RunError, match=f"cannot write the flow folder {folder}: "):
        with lock_module.flow_lock(folder.parent, folder.name):
            pass


def test_a_flow_folder_reached_by_a_link_is_read_under_the_runs_lock(tmp_path):
    """A video folder of an `avda flow` output reached by a link (an EPIC-style tree,
    ``P01/flow_frames/P01_01 -> OUT/P01_01``) is read holding the lock the run writes it
    under (``OUT/.flow.P01_01.lock``); the reader locked a file beside the link, which no run
    takes, and read frames a run was writing."""
    from avda.cache.lock import RunBusyError, flow_lock, flow_read_lock

    out = tmp_path / "out"
    (out / "P01_01").mkdir(parents=True)
    (out / "P01_01" / "flow.json").write_text("{}")
    tree = tmp_path / "epic" / "P01" / "flow_frames"
    tree.mkdir(parents=True)
    (tree / "P01_01").symlink_to(out / "P01_01")
    with flow_lock(out, "P01_01"):
        with pytest.raises(RunBusyError, match="avda flow"):
            with flow_read_lock(tree / "P01_01"):
                pass
    with flow_read_lock(tree / "P01_01"):
        assert (out / ".flow.P01_01.lock").exists()
    assert sorted(p.name for p in tree.iterdir()) == ["P01_01"]  # nothing made beside it
