"""One lock per feature store, taken by every command that writes it (or must not read it
half-written).

The lock is an advisory ``flock`` on the file ``<store>.lock`` next to the store (a sibling,
not inside it: an import that creates the store must hold the lock before the store exists),
the store a link leads to: reached by a link and by its real path, a store has one lock:

- **exclusive** (``shared=False``): ``avda cache import``, ``avda cluster``, an unsharded
  ``avda extract`` (and ``--force``, which moves the store aside), ``avda extract
  --scheduler`` while it sets the store up. One writer, nobody else: taking it deletes what a
  killed writer left (a creation's hidden folder, Zarr's unfinished writes).
- **shared** (``shared=True``): the shards of one extraction (``--shard i/n``, Dask tasks and
  their client), which write disjoint chunks and may run together, and ``avda cache export``,
  which reads. Shared holders exclude exclusive ones and nothing else.

A run folder has the same kind of lock (:func:`run_lock`, the file ``<run>/.lock``, exclusive):
``avda train`` holds it while it trains, resumes or checks a finished run, so a second
``avda train -o`` of the same folder (a script started twice, a sweep and a hand-run) stops at
once with one line (:class:`RunBusyError`) instead of interleaving two writers' checkpoints.

Each video folder of an ``avda flow`` output has one too (:func:`flow_lock`,
``<out>/.flow.<video>.lock``, exclusive), so two runs never write one video folder together;
``avda extract --flow`` holds it shared while it reads (:func:`flow_read_lock`), so it never
reads frames a run is writing or deleting.

A command that cannot get the lock stops at once with one line (:class:`StoreBusyError`, exit
1) naming the holder: ``cache X is being written by pid N on host H since T (avda cache import);
wait for it to finish, then run the command again``. ``AVDA_LOCK_WAIT=<seconds>`` makes it wait
that long for the lock first (polling), for scripts that queue commands on purpose.

Why ``flock`` rather than a lock file created with ``O_CREAT | O_EXCL``: the lock belongs to the
open file, so the kernel drops it when its process ends for any reason (``kill -9``, OOM, a
crash, a reboot), and a stale lock cannot exist. A lock *file* outlives a killed process and
needs a stale-lock rule (is pid N alive? only answerable on the same host), which is exactly the
moment an interrupted import is rerun. ``flock`` also has a shared mode, which shards need. On
Linux NFS clients ``flock`` is carried by the NFS lock protocol (NLM / NFSv4 locks) and holds
across hosts; a file system without working locks (some Lustre or old NFS mounts) makes
``flock`` fail with ENOLCK / EOPNOTSUPP: avda then warns and goes on unlocked (the protection of
this module is off there; run one writer at a time), once the file it tried is still the one at
the path: an NFS waiter on a lock file its holder deleted gets ENOLCK or ESTALE, and opens the
path again (:func:`avda._io.same_lock_file`, :func:`avda._io.reopen_stale`). The file
``<store>.lock`` stays beside a store: its content (holder pid, host, time, command) is only a
message for the next process; whether the store is locked is the ``flock`` alone, so a leftover
file is harmless.
Deleting it while a writer runs would let a second writer in: don't. (An exclusive holder
that leaves no store behind, a refused import into a new path, deletes it itself while it
still holds it; every holder, once it has the lock, checks that the file it locked is still
the one at the path, and takes that one otherwise.)

Locks are per open file: two threads (or two nested calls) of one process taking the same
store's lock conflict like two processes.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from avda._io import (
    LOCK_WAIT_ENV,
    LOCKS_UNSUPPORTED,
    NOT_WRITABLE,
    lock_file_of,
    lock_wait,
    pid_alive,
    read_lock_holder,
    reopen_stale,
    same_lock_file,
    warn_without_locks,
    write_lock_holder,
)
from avda.cache.store import remove_kill_leftovers
from avda.errors import AvdaError, CacheError, RunError

log = logging.getLogger(__name__)

WAIT_ENV = LOCK_WAIT_ENV


class StoreBusyError(CacheError):
    """Another process holds the store's lock."""


class RunBusyError(RunError):
    """Another process is training into the run folder."""


def lock_path(store: str | Path, *, replaced: bool = False) -> Path:
    """The lock file of ``store``: ``<store>.lock`` next to it, where a link to it leads
    (:func:`~avda._io.lock_file_of`: the same lock by the link and by the real path);
    ``replaced``: an output file written by a rename over it, beside the path given."""
    return lock_file_of(store, "{name}.lock", replaced=replaced)


@contextlib.contextmanager
def store_lock(
    store: str | Path,
    *,
    what: str,
    shared: bool = False,
    wait: float | None = None,
    reads: bool = False,
) -> Iterator[None]:
    """Hold the lock of ``store`` (exclusive, or ``shared``) for the ``with`` block.

    ``what`` names the command for the message another process gets (``avda cache import``).
    ``wait``: seconds to wait for the lock (default ``$AVDA_LOCK_WAIT``, else 0: refuse at once).
    Taken exclusively, it first deletes what a killed writer left in and beside the store
    (:func:`~avda.cache.store.remove_kill_leftovers`): its holder is the store's only writer,
    so nothing of another writer's is in progress.
    ``reads``: the holder only reads the store (``avda cache export``; shared): a store that
    does not exist takes no lock (the reader fails on its own; no lock file is left behind). A
    shard (shared, a writer) locks a store it is about to create, as every writer does.
    """
    store = Path(store)
    if reads and not store.exists():
        yield
        return
    with _flock(
        store, lock_path(store), what=what, shared=shared or reads, wait=wait,
        remove=None if shared or reads else lambda: not store.exists(),
    ):  # fmt: skip
        if not shared:
            remove_kill_leftovers(store)
        yield


# The lock file inside a run folder (a run folder exists before its lock is taken).
RUN_LOCK = ".lock"
# Run folders this process holds the lock of (resolved path -> since when): probing one's own
# lock would open and close the file, and where flock is emulated by POSIX locks (NFS) closing
# any descriptor of it drops every lock this process has on it.
_HELD_RUNS: dict[Path, str] = {}
# The lock file of a sweep's output folder.
SWEEP_LOCK = ".sweep.lock"


class SweepBusyError(RunError):
    """Another ``avda sweep`` writes into the output folder."""


@contextlib.contextmanager
def sweep_lock(out: str | Path, *, wait: float | None = None) -> Iterator[None]:
    """Hold the exclusive lock of a sweep's output folder ``out`` (created if missing) for the
    ``with`` block; a sweep stopped before it wrote anything there (its queue timed out, a
    SIGTERM while its jobs waited) leaves neither the lock file nor a folder it made."""
    with _folder_lock(
        Path(out), SWEEP_LOCK, what="avda sweep", wait=wait, kind="sweep output",
        error=SweepBusyError,
    ):  # fmt: skip
        yield


@contextlib.contextmanager
def flow_lock(out: str | Path, video_id: str, *, wait: float | None = None) -> Iterator[None]:
    """Hold the exclusive lock of one video's folder of an ``avda flow`` output ``out`` for the
    ``with`` block (the file ``OUT/.flow.<video_id>.lock``, deleted as it lets go): a second
    run on that video (other settings, or the same command started twice) fails it at once
    with :class:`RunBusyError` naming the holder, instead of taking over the folder the first
    is writing or sharing its temporary files; runs on other videos (the jobs of an array
    split by video) write beside it."""
    out = Path(out)
    with _flock(
        out / video_id, flow_lock_file(out / video_id), what="avda flow", shared=False,
        wait=wait, kind="flow folder", error=RunBusyError, remove=lambda: True,
    ):  # fmt: skip
        yield


def flow_lock_file(folder: Path) -> Path:
    """The lock file of an ``avda flow`` video folder: ``OUT/.flow.<video_id>.lock``, beside
    the folder a link to it leads to (:func:`~avda._io.lock_file_of`: a reader reaching it by
    a link and a run by its real path take one lock)."""
    return lock_file_of(folder, ".flow.{name}.lock")


@contextlib.contextmanager
def flow_read_lock(folder: str | Path, *, wait: float | None = None) -> Iterator[None]:
    """Hold the lock of the video folder ``folder`` of an ``avda flow`` output shared for the
    ``with`` block (``avda extract --flow`` reading it): a run writing it (or taking it over
    with other settings, or ``--force``) makes the reader fail at once naming it, or wait
    ``$AVDA_LOCK_WAIT`` seconds; readers share it, and a run started while one reads fails
    that video naming the reader; the last reader deletes the lock file as it lets go. A
    folder without a ``flow.json`` nor a lock file is not avda flow's (EPIC's download): read
    unlocked, and no lock file is made beside it."""
    folder = Path(folder)
    path = flow_lock_file(folder)
    if not (folder / "flow.json").exists() and not path.exists():
        yield
        return
    with _flock(
        folder, path, what="avda extract --flow", shared=True, wait=wait, kind="flow folder",
        error=RunBusyError, remove=lambda: True,
    ):  # fmt: skip
        yield


@contextlib.contextmanager
def output_lock(
    out: str | Path,
    *,
    what: str,
    wait: float | None = None,
    remove: Callable[[], bool] | None = None,
) -> Iterator[None]:
    """Hold the exclusive lock of an output file ``out`` (``avda finetune -o``: its partial
    checkpoint and results), the file ``<out>.lock`` beside it: a second process writing the
    same output (a script started twice) stops at once with :class:`RunBusyError` naming the
    holder, instead of interleaving two trainings' checkpoints. ``remove``: whether to delete
    the lock file as the holder lets go (asked while it still holds it, see ``_flock``)."""
    out = Path(out)
    with _flock(
        out, lock_path(out, replaced=True), what=what, shared=False, wait=wait, kind="output",
        error=RunBusyError, remove=remove,
    ):  # fmt: skip
        yield


@contextlib.contextmanager
def run_lock(run: str | Path, *, what: str, wait: float | None = None) -> Iterator[None]:
    """Hold the exclusive lock of the run folder ``run`` (created if missing) for the ``with``
    block: one process trains into a folder at a time (two would overwrite each other's
    checkpoints). Another process gets :class:`RunBusyError` naming the holder."""
    run = Path(run)
    with _folder_lock(run, RUN_LOCK, what=what, wait=wait, kind="run", error=RunBusyError):
        key = run.resolve()
        _HELD_RUNS[key] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        try:
            yield
        finally:
            _HELD_RUNS.pop(key, None)


@contextlib.contextmanager
def _folder_lock(
    folder: Path, name: str, *, what: str, wait: float | None, kind: str, error: type
) -> Iterator[None]:
    """Hold the exclusive lock file ``folder/name`` (the folder created if missing) for the
    ``with`` block: a run's, a sweep's output folder. A holder stopped (an exception) before it
    wrote anything in a folder it made removes its lock file and the folder as it lets go."""
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    stopped = True

    def made_nothing() -> bool:  # stopped before it wrote anything: its lock file goes too
        return stopped and created and [p.name for p in folder.iterdir()] == [name]

    try:
        # deleted by the holder while it holds it: a refused process (which may have seen no
        # folder too, started at the same moment) holds nothing and deletes none
        with _flock(
            folder, folder / name, what=what, shared=False, wait=wait, kind=kind, error=error,
            remove=made_nothing,
        ):  # fmt: skip
            yield
            stopped = False
    except BaseException:
        if created:  # refused or stopped before it wrote anything: leave no empty folder
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


@contextlib.contextmanager
def _flock(
    store: Path,
    path: Path,
    *,
    what: str,
    shared: bool,
    wait: float | None,
    kind: str = "cache",
    error: type[AvdaError] = StoreBusyError,
    remove: Callable[[], bool] | None = None,
) -> Iterator[None]:
    """The ``flock`` on ``path`` that guards ``store`` (a cache, or a run folder: ``kind``);
    ``error`` is raised, naming the holder, when another process has it.

    ``remove``: whether to delete the lock file as it lets go, still holding it (a refused
    command that made no store leaves none beside the path); a shared holder deletes it only
    where it is the last (:func:`_alone`), never under another reader's lock. A waiter
    that then gets the lock of the deleted file opens the one at ``path`` again, as every
    holder checks that the file it locked is still the one there
    (:func:`avda._io.file_lock`'s rule)."""
    if wait is None:  # unset: refused at once
        wait = lock_wait() or 0.0
    deadline = time.monotonic() + wait
    stale = 0
    while True:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except FileNotFoundError:
            if path.parent.is_dir():  # not its folder gone (a link to nowhere): said as it is
                raise
            continue  # its folder removed meanwhile (a run folder its holder stopped in,
            # empty, removed as it let go): make it again
        except OSError as exc:
            if exc.errno not in NOT_WRITABLE:
                raise
            if shared:  # a store in a read-only place: nobody can write it, reading needs no lock
                log.debug("cannot create %s (%s): reading %s unlocked", path, exc, store)
                yield
                return
            # a writer: name what the user asked to write, not the lock file they never heard of
            base = CacheError if kind == "cache" else RunError
            raise base(
                f"cannot write the {kind} {store}: {path.parent} is not writable "
                f"({exc.strerror}; {what} keeps its lock file {path.name} there); "
                "write it to a writable place"
            ) from None
        try:
            unsupported = _acquire(store, path, fd, shared, deadline, kind, error)
            if same_lock_file(fd, path):  # locked or not (ENOLCK may be the deleted file's)
                break
        except OSError as exc:  # ESTALE: an NFS handle of a deleted lock file, open it again
            os.close(fd)
            stale = reopen_stale(path, exc, stale)
            continue
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # its holder deleted it as it let go: take the file at ``path`` now
    locked = unsupported is None
    if not locked:
        warn_without_locks(path, unsupported)
    try:
        write_lock_holder(fd, command=what, mode="read" if shared else "write")
        try:
            yield
        finally:
            if not shared:  # the record names the holder only while it holds the lock
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, 0)
            if locked and remove is not None and (not shared or _alone(fd)) and remove():
                path.unlink(missing_ok=True)  # before letting go: see the docstring
    finally:
        os.close(fd)  # releases the flock


def _alone(fd: int) -> bool:
    """Whether the shared holder of the open lock file ``fd`` is its only holder: its lock
    made exclusive, not waited for (where that fails it may have been let go meanwhile, as
    Linux converts a lock by releasing it first: its holder is letting go anyway)."""
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _acquire(
    store: Path,
    path: Path,
    fd: int,
    shared: bool,
    deadline: float,
    kind: str,
    error: type[AvdaError],
) -> OSError | None:
    """Take the ``flock`` of the open lock file ``fd`` (waiting until ``deadline``, then
    ``error``); None, or the error of a file system without locks (unlocked, the caller
    warns once it knows the file is still the one at its path)."""
    import fcntl

    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return None
        except BlockingIOError:
            if time.monotonic() >= deadline:
                message = _busy_message(store, path, fd, kind)
                if _taken_within(fd, mode, PROBE_GRACE):  # a probe let go meanwhile
                    return None
                raise error(message) from None
            time.sleep(0.2)
        except OSError as exc:
            if exc.errno not in LOCKS_UNSUPPORTED:
                raise
            return exc


# Seconds a refused lock is tried again for before its holder is named: ``training_holder``
# (``avda evaluate``) takes it shared for an instant to see whether a run is training.
PROBE_GRACE = 0.5


def _taken_within(fd: int, mode: int, seconds: float) -> bool:
    import fcntl

    deadline = time.monotonic() + seconds
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)


def training_holder(run: str | Path) -> str | None:
    """Who trains into the run folder ``run`` now ("pid N on host H since T"), or None.

    Whether anyone does is the ``flock`` of its lock file, probed for an instant (shared, not
    waiting: a trainer starting at that instant tries again for ``PROBE_GRACE`` seconds,
    see ``_flock``), so a record a
    killed trainer left behind is not believed, from whichever host it came; who holds it is the
    record the trainer wrote. Where the file system has no locks, the record alone decides (a
    record of a process of this host that is gone is stale)."""
    import fcntl

    since = _HELD_RUNS.get(Path(run).resolve())
    if since is not None:  # this process trains there: never touch the file (see _HELD_RUNS)
        return f"pid {os.getpid()} on host {socket.gethostname()} since {since} (this process)"
    path = Path(run) / RUN_LOCK
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            held: bool | None = True
        except OSError:  # no locks here (e.g. ENOLCK): only the record can tell
            held = None
        else:
            return None  # nobody holds it: any record is a leftover
        try:
            holder = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        except (OSError, ValueError):
            holder = {}
    finally:
        os.close(fd)  # (releases the probe's flock, if it took it)
    pid = holder.get("pid") if isinstance(holder, dict) else None
    if not isinstance(pid, int):
        return "another process" if held else None
    host = holder.get("host", "?")
    if not held and host == socket.gethostname() and not pid_alive(pid):
        return None  # killed while holding it: its record stays, its lock went with it
    return f"pid {pid} on host {host} since {holder.get('since', '?')}"


def _busy_message(store: Path, path: Path, fd: int, kind: str = "cache") -> str:
    holder = read_lock_holder(fd)
    fix = "wait for it to finish, then run the command again"
    if kind in ("run", "output"):
        fix = "wait for it to finish (or give this run another -o), then run the command again"
    if "pid" not in holder:
        return f"{kind} {store} is being written by another process (lock {path}); {fix}"
    pid, host = holder.get("pid"), holder.get("host", "?")
    # a shared holder ("mode": "read" in its record) is a shard writing its rows or a reader
    shared = holder.get("mode") == "read"
    command = holder.get("command", "avda")
    gone = host == socket.gethostname() and isinstance(pid, int) and not pid_alive(pid)
    if gone and shared:
        # shared holders record themselves in turn: the last one ended, another holds it
        return (
            f"{kind} {store} is in use by another process sharing its lock (a shard, a "
            f"reader; the last to record itself, pid {pid} on host {host} ({command}), has "
            f"ended); {fix} ({WAIT_ENV}=SECONDS waits for it)"
        )
    doing = "in use" if shared else "being written"
    holds = f"{command}; a shared lock: a shard, a reader" if shared else command
    message = (
        f"{kind} {store} is {doing} by pid {pid} on host {host} since "
        f"{holder.get('since', '?')} ({holds}); {fix}"
    )
    if gone:
        message += (
            f" (pid {pid} has exited, but a process it started still holds {path}: end that "
            "process)"
        )
    else:
        message += f" ({WAIT_ENV}=SECONDS waits for it)"
    return message
