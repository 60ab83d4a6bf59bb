"""Small file helpers shared by every part of avda: atomic writes, file hashes, checkpoint reads.

The lowest layer of the package: it imports only the standard library (torch inside the one
function that reads checkpoints, tqdm inside the progress bar), so any module can use it
without an import cycle.

- :func:`atomic_write` (and :func:`atomic_write_text`): a file appears whole or not at all. It
  is written under a temporary name in the same folder and renamed over the target with
  ``os.replace``; a write that fails removes the temporary file and leaves the target as it was.
- :func:`replace_file`: the rename at the end of an atomic write, for a temporary file that is
  kept when its writer fails (a resumable download's ``.part``).
- :func:`file_lock`: an exclusive ``flock`` on a lock file, waited for, the file removed by
  its holder when done (``avda manifest build``: two builds into one output take turns).
- :func:`sha256_file`: the SHA-256 hex digest of a file, read 1 MiB at a time.
- :func:`torch_load`: ``torch.load`` with ``weights_only=True`` (tensors, numbers, strings and
  containers only: a received file cannot run code) onto ``map_location``. Every checkpoint
  avda reads goes through it; callers turn its errors into their own one-line messages.
- :func:`progress_bar`: every long loop's tqdm bar, updated every 10 s where it is written to a
  file or a pipe.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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
    removed and ``path`` is as it was. ``fsync``: flush ``tmp`` to the disk before the rename."""
    path = Path(path)
    tmp = Path(temporary) if temporary is not None else path.with_name(path.name + TEMPORARY_SUFFIX)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        write(tmp)
        replace_file(tmp, path, fsync=fsync)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """``text`` to ``path`` atomically (:func:`atomic_write`)."""
    return atomic_write(path, lambda tmp: tmp.write_text(text))


LOCKS_UNSUPPORTED = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL})
"""``flock``'s errors on a file system without working locks (some Lustre or old NFS mounts)."""


@contextlib.contextmanager
def file_lock(path: str | Path) -> Iterator[bool]:
    """Wait for, and hold for the ``with`` block, an exclusive ``flock`` on the lock file
    ``path`` (created, with its folder); yields True. Its holder removes the file before it
    lets go, so none is left behind; a waiter that then gets the lock of the removed file
    opens the one at ``path`` again (the kernel drops a killed holder's lock: its file stays,
    harmless, for the next holder to take and remove). Where the file system has no locks,
    a warning, and the block runs unlocked: yields False (the file removed after it, too)."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in LOCKS_UNSUPPORTED:
                raise
            logging.getLogger(__name__).warning(
                "%s: the file system does not support locks (%s); going on without the lock: "
                "run one writer at a time",
                *(path, exc.strerror),
            )
            try:
                yield False
            finally:
                path.unlink(missing_ok=True)
            return
        held = os.fstat(fd)
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        if current is not None and (current.st_dev, current.st_ino) == (held.st_dev, held.st_ino):
            break
        os.close(fd)  # its holder removed it on release: take the file at ``path`` now
    try:
        yield True
    finally:
        path.unlink(missing_ok=True)  # before letting go: a waiter on it opens a new one
        os.close(fd)


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
