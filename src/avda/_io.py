"""Small file helpers shared by every part of avda: atomic writes, file hashes, checkpoint reads.

The lowest layer of the package: it imports only the standard library and :mod:`avda.errors`
(torch inside the one function that reads checkpoints, tqdm inside the progress bar), so any
module can use it without an import cycle.

- :func:`atomic_write` (and :func:`atomic_write_text`): a file appears whole or not at all. It
  is written under a temporary name in the same folder and renamed over the target with
  ``os.replace``; a write that fails removes the temporary file and leaves the target as it was.
- :func:`os_error_line`: an OS error (a full disk: :data:`DISK_FULL`; a read-only one:
  :data:`NOT_WRITABLE`) as one line with its fix.
- :func:`atomic_write_together` (:func:`atomic_write_texts`): several files so, renamed only
  once all are written.
- :func:`name_written`: an OS error of such a write (a full disk) names the file written;
  :func:`naming_writes`: one of a library's write (a Zarr chunk) names the store and what of
  it was written.
- :func:`check_writable`: a folder that cannot be written said before the work done for it.
- :func:`replace_file`: the rename at the end of an atomic write, for a temporary file that is
  kept when its writer fails (a resumable download's ``.part``).
- :func:`path_identity`: whether a file or folder was replaced or rewritten since it was seen.
- :func:`lock_file_of`: the lock file named for a file or folder, beside the one a link to it
  leads to (one lock whichever way it is reached).
- :func:`file_lock`: an exclusive ``flock`` on a lock file, waited for, the file removed by
  its holder when done (``avda manifest build``: two builds into one output take turns); a
  wait past ``LOCK_NOTICE_SECONDS`` is said once, one past ``$AVDA_LOCK_WAIT`` refused (not
  ``bounded``: never). The
  store locks (:mod:`avda.cache.lock`) share its holder record, wait limit and warning, and
  its check that the file locked is the one at the path (:func:`same_lock_file`, an NFS
  handle gone stale opened again: :func:`reopen_stale`).
- :func:`sha256_file`: the SHA-256 hex digest of a file, read 1 MiB at a time.
- :func:`torch_load`: ``torch.load`` with ``weights_only=True`` (tensors, numbers, strings and
  containers only: a received file cannot run code) onto ``map_location``. Every checkpoint
  avda reads goes through it; callers turn its errors into their own one-line messages.
- :func:`progress_bar`: every long loop's tqdm bar, updated every 10 s where it is written to a
  file or a pipe.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import hashlib
import json
import logging
import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from avda.errors import ConfigError, LockWaitError

log = logging.getLogger(__name__)

TEMPORARY_SUFFIX = ".tmp"
"""The default temporary name of :func:`atomic_write`: ``PATH.tmp`` next to ``PATH``."""


def replace_file(temporary: str | Path, path: str | Path, *, fsync: bool = False) -> None:
    """Rename the finished ``temporary`` over ``path`` (same folder: one atomic
    ``os.replace``); ``fsync``: flush its bytes to the disk first."""
    if fsync:
        with open(temporary, "rb+") as stream:
            os.fsync(stream.fileno())
    os.replace(temporary, path)


def atomic_write(
    path: str | Path,
    write: Callable[[Path], Any],
    *,
    temporary: str | Path | None = None,
    fsync: bool = False,
) -> Path:
    """Write ``path`` whole or not at all: ``write(tmp)`` fills the temporary file ``tmp``
    (``temporary``, default ``PATH.tmp``; give one in ``path``'s folder), which then replaces
    ``path``. ``path``'s folder is created. When ``write`` (or the rename) raises, ``tmp`` is
    removed and ``path`` is as it was; an OS error naming no file or ``tmp`` (a full disk: a
    write's ``ENOSPC`` names none) names ``path``. ``fsync``: flush ``tmp`` to the disk before
    the rename."""
    path = Path(path)
    tmp = Path(temporary) if temporary is not None else path.with_name(path.name + TEMPORARY_SUFFIX)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        write(tmp)
        replace_file(tmp, path, fsync=fsync)
    except BaseException as exc:
        remove_temporary(tmp)
        name_written(exc, path, tmp)
        raise
    return path


def remove_temporary(tmp: Path) -> None:
    """Remove the temporary file of a write that failed; one that cannot be removed (a
    read-only folder, where it was never made) is left: the write's own error is the one to
    say, not the removal's (``EROFS`` naming ``PATH.tmp``). One left that is there (a disk
    turned read-only mid-write) is said in a warning naming it."""
    try:
        tmp.unlink(missing_ok=True)
    except OSError as exc:
        if os.path.lexists(tmp):
            log.warning("%s, a failed write's temporary file, is left (%s)", tmp, exc.strerror)


DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
"""A full disk, a quota or a file-size limit: running again cannot help until space is freed."""
NOT_WRITABLE = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})
"""A read-only file system or a folder this user may not write: running again cannot help
until the output is moved or its permissions changed."""


def os_error_line(exc: OSError, output: str | None = None) -> str:
    """One line for an OS-level error: what failed, on which path, and what to do. A full disk
    whose error names no file (a Zarr chunk written by a library) names ``output``."""
    paths = " -> ".join(str(p) for p in (exc.filename, exc.filename2) if p is not None)
    reason = exc.strerror or str(exc) or type(exc).__name__
    where = f": {paths}" if paths else ""
    if paths and getattr(exc, WRITING, None):
        where += f" (writing {getattr(exc, WRITING)})"
    if not paths and output and exc.errno in DISK_FULL | {errno.EROFS}:
        where = f" writing {output}"
    if exc.errno == errno.EROFS:
        return (
            f"read-only file system{where}; write the output to a writable folder (or mount it "
            "read-write) and run the command again"
        )
    if exc.errno == errno.ENOSPC:
        return f"no space left on device{where}; free some space and run the command again"
    if exc.errno == errno.EFBIG:
        return f"file too large{where} (a file-size limit, ulimit -f); raise it and run again"
    if exc.errno == errno.EDQUOT:
        return f"disk quota exceeded{where}; free some space and run the command again"
    if isinstance(exc, PermissionError):
        return f"permission denied{where}; check the path's owner and permissions"
    if isinstance(exc, IsADirectoryError):
        return f"is a directory{where}; give a file path"
    if isinstance(exc, NotADirectoryError):
        return f"not a directory{where}; a part of the path is a file"
    if isinstance(exc, FileNotFoundError):
        return f"no such file or directory{where}"
    return f"{reason[:1].lower()}{reason[1:]}{where}"


WRITING = "avda_writing"
"""The attribute :func:`naming_writes` gives an OS error: what of its file was written."""


@contextlib.contextmanager
def naming_writes(path: str | Path, what: str) -> Iterator[None]:
    """An OS error of the block that names no file (a library's write: a Zarr chunk, whose
    ``ENOSPC`` names none) names ``path`` (a store) and says ``what`` of it was written
    (``the rgb features of rows 0-7``): :func:`os_error_line` writes ``PATH (writing WHAT)``.
    The innermost block names it. An error without an errno (``OSError("message")`` from
    Python code) is raised as it was: naming a file would print it as ``[Errno None] None``."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None and exc.errno is not None:
            exc.filename = str(path)
            setattr(exc, WRITING, what)
        raise


def name_written(exc: BaseException, path: str | Path, temporary: str | Path) -> None:
    """An OS error naming no file or the ``temporary`` one ``path`` is written through (a full
    disk: a write's ``ENOSPC`` names none) names ``path``, so its one line says which file;
    one without an errno keeps its message (see :func:`naming_writes`)."""
    if (
        isinstance(exc, OSError)
        and exc.errno is not None
        and exc.filename in (None, str(temporary))
    ):
        exc.filename = str(path)


def check_writable(path: str | Path) -> None:
    """Make ``path``'s folder and an empty file in it, so that a folder that cannot be written
    (read-only, permission denied) is said before the work whose result goes to ``path`` (a
    report of many runs), in the line its write would end with, naming ``path``. The file has
    no name where the file system allows (Linux's ``O_TMPFILE``, :class:`tempfile.TemporaryFile`):
    a kill leaves nothing; elsewhere a hidden ``.NAME.*.probe``, removed at once."""
    import tempfile

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(prefix=f".{path.name}.", suffix=".probe", dir=path.parent):
            pass
    except OSError as exc:
        if exc.filename is None or str(exc.filename).endswith(".probe"):  # not a folder made
            exc.filename = str(path)
        raise


def atomic_write_text(path: str | Path, text: str) -> Path:
    """``text`` to ``path`` atomically (:func:`atomic_write`)."""
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_write_texts(texts: dict[Path, str]) -> None:
    """Several text files whole or not at all, together (:func:`atomic_write_together`)."""
    atomic_write_together({path: _text_writer(text) for path, text in texts.items()})


def _text_writer(text: str) -> Callable[[Path], Any]:
    return lambda tmp: tmp.write_text(text)


def atomic_write_together(
    writes: dict[Path, Callable[[Path], Any]], temporaries: dict[Path, Path] | None = None
) -> None:
    """Several files whole or not at all, together: ``writes[path](tmp)`` fills each file's
    temporary (``temporaries[path]``, default ``PATH.tmp``) in ``writes``' order, and only
    once all are written are they renamed into place, in the reverse order (the first, the
    main file, goes last), after every old file is deleted: a write that fails (a full disk)
    removes them all and leaves every file as it was, a path that is a folder is refused
    before any old file is deleted, and a kill between the renames leaves some files missing
    (the rerun writes them), never a new one beside an old one (OUT.md and OUT.csv, a
    predictions .npz and its .csv, a manifest and its .build.json)."""
    for path in writes:  # refused before the old files go: the renames would fail on it
        if path.is_dir() and not path.is_symlink():
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    written: list[tuple[Path, Path]] = []
    try:
        for path, write in writes.items():
            tmp = (temporaries or {}).get(path) or path.with_name(path.name + TEMPORARY_SUFFIX)
            written.append((tmp, path))
            try:
                write(tmp)
            except OSError as exc:
                name_written(exc, path, tmp)
                raise
        for _, path in written:
            path.unlink(missing_ok=True)
        for tmp, path in reversed(written):
            replace_file(tmp, path)
    except BaseException:
        for tmp, _ in written:
            remove_temporary(tmp)
        raise


LOCKS_UNSUPPORTED = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL})
"""``flock``'s errors on a file system without working locks (some Lustre or old NFS mounts)."""
LOCK_WAIT_ENV = "AVDA_LOCK_WAIT"
"""Seconds a lock is waited for at most (the store locks: 0 unless set, refused at once;
:func:`file_lock`: as long as it takes unless set, or not ``bounded``)."""
LOCK_NOTICE_SECONDS = 2.0
"""How long :func:`file_lock` waits before it says, once, which lock it waits for."""


def lock_wait() -> float | None:
    """``$AVDA_LOCK_WAIT`` in seconds (>= 0), None where it is unset."""
    raw = os.environ.get(LOCK_WAIT_ENV, "").strip()
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        raise ConfigError(
            f"{LOCK_WAIT_ENV}={raw!r} is not a number of seconds; set it to one, or unset it"
        ) from None


# lock files this process warned were taken unlocked (:func:`warn_without_locks`)
_UNLOCKED: set[Path] = set()


def warn_without_locks(path: Path, exc: OSError) -> None:
    """The warning of a lock taken where the file system has none (:data:`LOCKS_UNSUPPORTED`):
    the block runs unlocked. Said once per lock file in a process (``avda extract --flow``
    takes a video folder's for each segment it reads), then at debug level."""
    said = path in _UNLOCKED
    _UNLOCKED.add(path)
    log.log(
        logging.DEBUG if said else logging.WARNING,
        "%s: the file system does not support locks (%s); going on without the lock: run one "
        "writer at a time",
        *(path, exc.strerror),
    )


def write_lock_holder(fd: int, **fields: Any) -> None:
    """Record this process (pid, host, since, and ``fields``) in the lock file ``fd`` it
    holds: a message for the process that waits for it or is refused."""
    holder = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        **fields,
    }
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
    except OSError as exc:  # the message is a courtesy; the flock is what counts
        log.debug("cannot record the lock holder: %s", exc)


def read_lock_holder(fd: int) -> dict:
    """The holder recorded in the lock file ``fd`` (:func:`write_lock_holder`; ``{}``: none).
    A holder writes it just after taking the lock (and a killed one leaves its own behind),
    so an empty record, or one naming a process that is gone, is read again for up to a
    second."""
    holder: dict = {}
    for _ in range(20):
        try:
            holder = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        except (OSError, ValueError):
            holder = {}
        if not isinstance(holder, dict):
            holder = {}
        pid = holder.get("pid")
        if isinstance(pid, int) and (holder.get("host") != socket.gethostname() or pid_alive(pid)):
            break
        time.sleep(0.05)
    return holder


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host is there."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


STALE_TRIES = 20
"""Times a lock file is opened again after ``ESTALE`` (:func:`reopen_stale`) before it stands."""


def same_lock_file(fd: int, path: Path) -> bool:
    """Whether the open lock file ``fd`` is still the one at ``path``, not deleted (or
    replaced) by its holder as it let go: where not, the caller opens ``path`` again. Decided
    by ``stat``, which an NFS client may answer from its attribute cache (docs/security.md);
    opening ``path`` to ask would drop this process's lock where ``flock`` is emulated by
    POSIX locks (NFS), which any close of the file releases. ``ESTALE`` is raised
    (:func:`reopen_stale`)."""
    held = os.fstat(fd)
    try:
        current = os.stat(path)
    except FileNotFoundError:
        return False
    return (current.st_dev, current.st_ino) == (held.st_dev, held.st_ino)


def reopen_stale(path: Path, exc: OSError, tries: int) -> int:
    """``tries`` + 1, where ``exc`` (raised locking the lock file ``path``, or asking
    :func:`same_lock_file`) is ``ESTALE``: an NFS client's handle of a lock file its holder
    deleted as it let go, to be opened again; past :data:`STALE_TRIES` a
    :class:`LockWaitError` naming it and the fix. Any other error is raised."""
    if exc.errno != errno.ESTALE:
        raise exc
    if tries >= STALE_TRIES:
        raise LockWaitError(
            f"{path}: the lock file went stale ({exc.strerror}) each of the {tries + 1} times "
            "it was opened (an NFS folder where other avda commands make and delete it as fast): "
            "run the command again once they have ended"
        ) from exc
    time.sleep(0.05)
    return tries + 1


def lock_file_of(target: str | Path, pattern: str, *, replaced: bool = False) -> Path:
    """The lock file of ``target`` (a store, an output, a manifest): ``pattern`` with
    ``{name}`` its name (``"{name}.lock"``), beside it, named from its resolved path. Two
    processes reaching one store by a link and by its real path (``/data/link.zarr``,
    ``/data/real.zarr``), or through a linked folder, lock the same file: named from the path
    given, each held its own and both wrote the store "exclusively". ``replaced``: ``target``
    is a file written by a rename over it (a manifest, a fine-tuning's weights), which
    replaces a link ``target`` itself, not the file it leads to: its folder is resolved, not
    its name (named for the link's target, the lock moved once the first write had replaced
    the link, and writers started before and after it held two locks of one file). A loop of
    links is refused in one line (:class:`ConfigError`): it leads to no file to lock or
    write; so is a link (``target``, or its folder) to nothing: the lock's folder would be
    made where it leads, and the store could not be made through it."""
    target = Path(target)
    try:
        real = target.parent.resolve() / target.name if replaced else target.resolve()
    except (RuntimeError, OSError) as exc:  # a loop: RuntimeError (3.11-3.12), ELOOP (3.13)
        raise ConfigError(
            f"{target} is a loop of symbolic links ({exc}): point the link at a real folder or "
            "file, or remove it"
        ) from None
    for link in (target.parent,) if replaced else (target, target.parent):
        if link.is_symlink() and not link.exists():
            raise ConfigError(
                f"{link} is a link to {os.readlink(link)}, which does not exist: give the path "
                "it leads to instead, or remove the link"
            )
    return real.with_name(pattern.format(name=real.name))


@contextlib.contextmanager
def file_lock(
    path: str | Path, *, bounded: bool = True, guards: str | Path | None = None
) -> Iterator[bool]:
    """Wait for, and hold for the ``with`` block, an exclusive ``flock`` on the lock file
    ``path`` (created, with its folder); yields True. Its holder removes the file before it
    lets go, so none is left behind; a waiter that then gets the lock of the removed file
    opens the one at ``path`` again (the kernel drops a killed holder's lock: its file stays,
    harmless, for the next holder to take and remove; ``ESTALE``, an NFS client's handle of
    the removed file: the same, :func:`reopen_stale`). Where the file system has no locks (and
    the file is still the one at ``path``: an NFS waiter on the removed one gets ``ENOLCK``),
    a warning, and the block runs unlocked: yields False (the file removed after it, too).

    A wait past :data:`LOCK_NOTICE_SECONDS` is said once (the lock file and its holder, as
    it recorded itself); one past ``$AVDA_LOCK_WAIT`` seconds, where set, ends with
    :class:`LockWaitError` naming them and the fix (unset: as long as it takes). Not
    ``bounded``: as long as it takes whatever it says (the processes of one command taking
    turns, as the shards of one extraction: ``AVDA_LOCK_WAIT=0``, the store locks' refusal at
    once, would end every shard but the first). ``guards``: the file the lock is for, named
    by the error of a lock file that cannot be made (a read-only folder, :data:`NOT_WRITABLE`)
    in its place: the user asked for it, not for the hidden lock file."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    limit = lock_wait() if bounded else None
    began = time.monotonic()
    said = False
    stale = 0
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            if guards is not None and exc.errno in NOT_WRITABLE:
                exc.filename = str(guards)
            raise
        unsupported = None
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    waited = time.monotonic() - began
                    if limit is not None and waited >= limit:
                        raise LockWaitError(_lock_wait_message(path, fd, waited)) from None
                    if not said and waited >= LOCK_NOTICE_SECONDS:
                        said = True
                        bound = f" ({LOCK_WAIT_ENV}=SECONDS bounds the wait)" if bounded else ""
                        log.warning(
                            "waiting for the lock %s, held by %s%s",
                            *(path, _holder_text(read_lock_holder(fd)), bound),
                        )
                    time.sleep(0.05)
                except OSError as exc:
                    if exc.errno not in LOCKS_UNSUPPORTED:
                        raise
                    unsupported = exc
                    break
            if same_lock_file(fd, path):
                break
        except OSError as exc:
            os.close(fd)
            stale = reopen_stale(path, exc, stale)
            continue
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # its holder removed it on release: take the file at ``path`` now
    if unsupported is not None:
        os.close(fd)
        warn_without_locks(path, unsupported)
        try:
            yield False
        finally:
            path.unlink(missing_ok=True)
        return
    write_lock_holder(fd)
    try:
        yield True
    finally:
        path.unlink(missing_ok=True)  # before letting go: a waiter on it opens a new one
        os.close(fd)


def _holder_text(holder: dict) -> str:
    """``pid N on host H since T`` of a lock holder's record; another process without one."""
    if not isinstance(holder.get("pid"), int):
        return "another process"
    return f"pid {holder['pid']} on host {holder.get('host', '?')} since {holder.get('since', '?')}"


def _lock_wait_message(path: Path, fd: int, waited: float) -> str:
    holder = read_lock_holder(fd)
    message = (
        f"{path} is held by {_holder_text(holder)}, waited {waited:.0f} s "
        f"({LOCK_WAIT_ENV}={os.environ.get(LOCK_WAIT_ENV, '').strip()}): wait for it to finish, "
        f"then run the command again, or raise {LOCK_WAIT_ENV} (unset, it waits as long as it "
        "takes)"
    )
    pid = holder.get("pid")
    if holder.get("host") == socket.gethostname() and isinstance(pid, int) and not pid_alive(pid):
        message += f" (pid {pid} has exited, but a process it started still holds it: end that)"
    return message


def sha256_file(path: str | Path) -> str:
    """The SHA-256 hex digest of the file at ``path``."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def torch_load(path: str | Path, *, map_location: Any = "cpu") -> Any:
    """``torch.load(path, map_location=..., weights_only=True)``: the one way avda reads a
    checkpoint. Raises what torch raises (``pickle.UnpicklingError`` for a file that holds more
    than tensors and numbers; add allowed types with ``torch.serialization.safe_globals``)."""
    import torch

    return torch.load(path, map_location=map_location, weights_only=True)


def refused_global(message: str) -> str | None:
    """The global a ``weights_only`` load refused, from torch's error text (``GLOBAL io.open``;
    ``GLOBAL posix.system (its module posix is blocked)``), or None when the error is not such
    a refusal (a text file, a damaged one). torch words the two cases differently: an
    importable global it does not allow ("Unsupported global: GLOBAL x.y was not an allowed
    global") and one from a module it blocks ("Trying to load unsupported GLOBAL x.y whose
    module x is blocked")."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", message)  # torch bolds part of its message
    found = re.search(r"unsupported (?:global: *)?(GLOBAL [\w.]+)", text, re.IGNORECASE)
    if found is None:
        return None
    blocked = re.search(r"whose module ([\w.]+) is blocked", text)
    return found.group(1) + (f" (its module {blocked.group(1)} is blocked)" if blocked else "")


LOG_BAR_INTERVAL = 10.0
"""Seconds between progress-bar updates written to a file or a pipe (a job's log)."""


@contextlib.contextmanager
def quiet_logs() -> Iterator[None]:
    """avda's log records below ERROR dropped for the block: planning a run whose warnings were
    reported when it trained (a finished run rerun, a sweep's check of its runs)."""
    logger = logging.getLogger("avda")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def progress_bar(*args: Any, **kwargs: Any) -> Any:
    """A tqdm bar (on stderr unless ``file=``). Written to a file or a pipe, as a cluster
    job's log is, it updates every :data:`LOG_BAR_INTERVAL` seconds instead of tqdm's 0.1 (a
    1,170-epoch training on a few segments wrote thousands of updates); on a terminal or in a
    notebook it is tqdm's own. ``TQDM_MININTERVAL`` or ``mininterval=`` set by the caller win."""
    import sys

    from tqdm import tqdm

    stream = kwargs.get("file") or sys.stderr
    if (
        "mininterval" not in kwargs
        and "TQDM_MININTERVAL" not in os.environ
        and "ipykernel" not in sys.modules
        and not _isatty(stream)
    ):
        kwargs["mininterval"] = LOG_BAR_INTERVAL
    return tqdm(*args, **kwargs)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def path_identity(path: str | Path) -> tuple[int, int, int] | None:
    """Device, inode and change time of the file or folder ``path`` (None: not there): whether
    a rename put another in its place, or it was rewritten."""
    try:
        stat = Path(path).stat()
    except OSError:
        return None
    return (stat.st_dev, stat.st_ino, stat.st_ctime_ns)
