"""Files and store fingerprints shared by the adversarial store tests (no zarr I/O at import
time: ``kill_every_write.py`` forks after importing this)."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

K, D = 3, 4


def annotations(path: Path, ids: list[str]) -> Path:
    """An annotation CSV giving ``ids`` (domain / split / verb_class filled in)."""
    pd.DataFrame(
        {
            "uid": ids,
            "video_id": [f"v{i % 3}" for i in range(len(ids))],
            "domain": ["source"] * len(ids),
            "split": ["train"] * len(ids),
            "start_sec": np.arange(len(ids), dtype=float),
            "stop_sec": np.arange(len(ids), dtype=float) + 1.5,
            "verb_class": [i % 2 for i in range(len(ids))],
        }
    ).to_csv(path, index=False)
    return path


def feature_pickle(path: Path, ids: list[str], modalities=("RGB", "Audio"), *, seed=0, **arrays):
    """An EPIC-100 UDA feature pickle; ``arrays`` (e.g. ``RGB=...``) replace generated ones."""
    rng = np.random.default_rng(seed)
    features = {m: rng.normal(size=(len(ids), K, D)).astype(np.float32) for m in modalities}
    features.update(arrays)
    with open(path, "wb") as handle:
        pickle.dump({"features": features, "narration_ids": list(ids)}, handle, protocol=4)
    return path


def files(folder: Path) -> dict[str, Path]:
    """``base.pkl`` (6 rows: rgb, audio), ``new.pkl`` (5 rows: rgb, flow: a new modality, no
    audio) and ``ann.csv`` with all 11 ids."""
    base_ids = [f"b{i}" for i in range(6)]
    new_ids = [f"n{i}" for i in range(5)]
    return {
        "ann": annotations(folder / "ann.csv", base_ids + new_ids),
        "base": feature_pickle(folder / "base.pkl", base_ids, ("RGB", "Audio"), seed=1),
        "new": feature_pickle(folder / "new.pkl", new_ids, ("RGB", "Flow"), seed=2),
    }


def snapshot(path: Path) -> dict[str, str]:
    """Every file of a store and the sha256 of its bytes (byte-for-byte comparison)."""
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(Path(path).rglob("*"))
        if p.is_file()
    }


def fingerprint(path: Path, *, physical: bool = True) -> dict:
    """What a reader of the store sees: rows, segments, every modality's features / status /
    errors, the provenance (creation time and the random ``cache_id`` left out) and,
    ``physical``, every array's shape."""
    from avda.cache import open_cache

    store = open_cache(path)
    N = store.num_segments
    prov = store.provenance
    prov.pop("created", None)
    prov.pop("cache_id", None)  # random per store: two clean imports differ in it too
    imports = [{k: v for k, v in e.items() if k != "imported"} for e in prov.pop("imports", [])]
    found = {
        "num_segments": N,
        "segments": store.segments.astype(str).to_dict("list"),
        "provenance": prov,
        "imports": imports,
    }
    for modality in store.modalities:
        features = np.asarray(store.features(modality)[:N], dtype=np.float32)
        found[f"features/{modality}"] = hashlib.sha256(features.tobytes()).hexdigest()
        found[f"status/{modality}"] = store.status(modality)[:N].tolist()
        found[f"errors/{modality}"] = [str(e) for e in store.errors(modality)[:N]]
    if physical:
        found["shapes"] = {name: list(a.shape) for name, a in store.arrays().items()}
    return found


def differences(a: dict, b: dict) -> list[str]:
    return [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def probe_held_when_deleted(monkeypatch, lock: Path) -> list[bool]:
    """Record, each time ``lock`` is deleted (``Path.unlink``), whether a lock was still held
    on it then (another open file cannot take it): a holder must delete its lock file before it
    lets go, else a waiter locks the file then deleted while a third locks a new one."""
    import fcntl
    import os

    held_then: list[bool] = []
    real_unlink = Path.unlink

    def unlink(self, *args, **kwargs):
        if self == lock:
            fd = os.open(self, os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held_then.append(False)
            except BlockingIOError:
                held_then.append(True)
            finally:
                os.close(fd)
        return real_unlink(self, *args, **kwargs)

    monkeypatch.setattr(Path, "unlink", unlink)
    return held_then


# ------------------------------------------------------------------ a truly full disk (ENOSPC)
MOUNT = ["mount", "-t", "tmpfs", "-o"]


@functools.cache
def can_mount_tmpfs() -> bool:
    """Whether this process may mount a tmpfs (root on Linux; CI often may not): probed once."""
    probe = Path(tempfile.mkdtemp(prefix="avda-tmpfs-probe-"))
    try:
        if subprocess.run(
            MOUNT + ["size=64k", "tmpfs", str(probe)], capture_output=True
        ).returncode:
            return False
        subprocess.run(["umount", str(probe)], check=True)
        return True
    except OSError:  # no mount program
        return False
    finally:
        probe.rmdir()


@contextlib.contextmanager
def small_disk(folder: Path, size: str) -> Iterator[Path]:
    """``folder`` as a tmpfs of ``size`` (``"300k"``): writes past it fail with ``ENOSPC`` as a
    full disk's do; unmounted (its files gone) on the way out, whatever happened. Skips the
    test where tmpfs cannot be mounted (:func:`can_mount_tmpfs`)."""
    import pytest

    if not can_mount_tmpfs():
        pytest.skip("mounting a tmpfs needs root (a full disk is simulated with one)")
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(MOUNT + [f"size={size}", "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def grow_disk(folder: Path, size: str) -> None:
    """Free space on a :func:`small_disk`: ``folder``'s tmpfs grows to ``size``, files kept."""
    subprocess.run(MOUNT + [f"remount,size={size}", str(folder)], check=True)


def avda(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """``avda ARGS`` run in ``cwd`` as a separate process (its own file-size limits, exit)."""
    return subprocess.run(**_avda_process(args, cwd, env), capture_output=True)


def start_avda(args: list[str], cwd: Path, **env: str) -> subprocess.Popen:
    """``avda ARGS`` started in ``cwd`` as :func:`avda` runs it, not waited for (its output
    piped: ``communicate()``)."""
    return subprocess.Popen(
        **_avda_process(args, cwd, env), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


NOBODY = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]
"""The command prefix running a program as the user nobody (:func:`opened_to_nobody`)."""


@contextlib.contextmanager
def opened_to_nobody(folder: Path) -> Iterator[None]:
    """``folder`` and the folders above it readable by the user ``nobody`` for the block (a
    test's temporary folders are root's alone), their modes restored after: ``avda`` run as
    ``nobody`` (``NOBODY=1``, :func:`avda`) meets a real ``EACCES`` on a folder of root's,
    which root itself writes whatever its mode. Skips the test where this process is not root
    or has no ``setpriv``."""
    import pytest

    if os.geteuid() != 0 or shutil.which(NOBODY[0]) is None:
        pytest.skip("running avda as nobody needs root and setpriv")
    modes = {p: p.stat().st_mode & 0o7777 for p in (folder, *folder.parents)}
    modes = {path: mode for path, mode in modes.items() if mode | 0o555 != mode}
    try:
        for path, mode in modes.items():
            path.chmod(mode | 0o555)
        probe = subprocess.run(
            [*NOBODY, sys.executable, "-c", "import avda.cli"],
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
            capture_output=True,
            text=True,
        )
        if probe.returncode != 0:  # a checkout under a folder of mode 700 (mktemp -d), say
            pytest.skip(
                "the user nobody cannot import avda here (its sources or Python are in a "
                f"folder only root may read): {probe.stderr.strip().splitlines()[-1:]}"
            )
        yield
    finally:
        for path, mode in modes.items():
            path.chmod(mode)


def _avda_process(args: list[str], cwd: Path, env: dict[str, str]) -> dict:
    command = [sys.executable, "-c", "from avda.cli import entry; entry()", *args]
    if env.pop("NOBODY", None):
        command = NOBODY + command
    environ = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **env}
    return {"args": command, "cwd": cwd, "text": True, "env": environ}


def disk_full_line(result: subprocess.CompletedProcess, names: str) -> str:
    """The one line a command that filled the disk ended with: exit 1, no traceback, the disk
    named full, and the file or folder ``names`` named as the one written."""
    last = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ""
    assert result.returncode == 1, (result.returncode, result.stderr[-1500:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert last.startswith("error: no space left on device"), result.stderr[-1500:]
    assert f": {names};" in last, last
    return last


def fill_disk(folder: Path, leave: int) -> Path:
    """Fill ``folder``'s disk (a :func:`small_disk`) but ``leave`` bytes with a file of zeros,
    ``FILLER``, whose removal is the user freeing space."""
    filler = folder / "FILLER"
    free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
    with open(filler, "wb") as stream:
        stream.write(b"\0" * max(0, free - leave))
    return filler


def read_only(folder: Path) -> None:
    """``folder``'s :func:`small_disk` remounted read-only, its files kept: every write and
    every file made fails with ``EROFS`` (root's too, which ``chmod`` does not stop)."""
    subprocess.run(MOUNT + ["remount,ro", str(folder)], check=True)


def turn_read_only(folder: Path) -> None:
    """``folder``'s :func:`small_disk` replaced, under a process writing to it, by an empty
    read-only tmpfs: each file it opens next fails with ``EROFS``, as on a disk the kernel
    remounted read-only after an error (a remount is refused while a file is open for writing
    on it: a run's lock); the :func:`small_disk` context unmounts it."""
    subprocess.run(["umount", "-l", str(folder)], check=True)
    subprocess.run(MOUNT + ["ro,size=64k", "tmpfs", str(folder)], check=True)


def read_only_line(result: subprocess.CompletedProcess, names: str) -> str:
    """The one line a command writing to a :func:`read_only` folder ended with: exit 1, no
    traceback, the file system named read-only (not full), and ``names`` named in it."""
    last = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ""
    assert result.returncode == 1, (result.returncode, result.stderr[-1500:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert last.startswith("error: "), result.stderr[-1500:]
    assert "read-only file system" in last.lower() and "no space" not in last, last
    assert "writable" in last, last  # the fix: write elsewhere
    assert names in last and f"{names}.tmp" not in last, last
    return last
