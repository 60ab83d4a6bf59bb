"""What a result was computed with: software versions, the GPU, avda's own git revision.

:func:`describe` is recorded under ``"environment"`` in a run's ``provenance.json`` (see
:mod:`avda.runs`), so a number in a table can be traced to the torch / CUDA / cuDNN build, the
GPU and the avda commit that produced it. Nothing here fails: a value that cannot be found
(no CUDA, git not installed, avda installed from a wheel) is ``None``.
"""

from __future__ import annotations

import datetime as _dt
import functools
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import avda

GIT_TIMEOUT = 5.0  # seconds per git call: a hung network file system must not stall training


def _git(folder: Path, *args: str) -> str | None:
    git = shutil.which("git")
    if git is None:
        return None
    environment = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    try:
        result = subprocess.run(
            [git, "-C", str(folder), *args],
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT,
            env=environment,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def git_revision(package_file: str | Path | None = None) -> dict[str, Any] | None:
    """``{"revision": sha, "dirty": bool}`` of the git checkout avda is imported from, or None.

    ``package_file`` (default ``avda/__init__.py``) must be a file tracked by the checkout
    that holds it: avda installed into a virtual environment that happens to sit inside some
    other repository is not that repository's revision. ``dirty``: tracked files differ from
    the commit (untracked files do not count).
    """
    path = Path(package_file or avda.__file__).resolve()
    top = _git(path.parent, "rev-parse", "--show-toplevel")
    if not top:
        return None
    try:
        relative = path.relative_to(Path(top).resolve()).as_posix()
    except ValueError:
        return None
    if _git(Path(top), "ls-files", "--error-unmatch", "--", relative) is None:
        return None  # not tracked there: avda is not this checkout's
    revision = _git(Path(top), "rev-parse", "HEAD")
    if not revision:
        return None
    status = _git(Path(top), "status", "--porcelain", "--untracked-files=no")
    return {"revision": revision, "dirty": bool(status) if status is not None else None}


@functools.lru_cache(maxsize=1)
def _avda_git() -> dict[str, Any] | None:
    return git_revision()


def describe(device: str | None = None) -> dict[str, Any]:
    """Versions (avda and its git revision, Python, torch, CUDA, cuDNN), the platform, the
    device used and, when CUDA is available, the GPU's name and memory."""
    import torch

    cudnn = None
    try:
        version = torch.backends.cudnn.version()
        cudnn = int(version) if version is not None else None
    except (RuntimeError, AttributeError):  # a build without cuDNN
        pass
    info: dict[str, Any] = {
        "avda_version": avda.__version__,
        "avda_git": _avda_git(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": cudnn,
        "device": device,
        "gpu": None,
        "gpu_memory_gb": None,
        "recorded": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    if torch.cuda.is_available():
        index = 0
        if device and device.startswith("cuda"):
            index = torch.device(device).index or 0
        properties = torch.cuda.get_device_properties(index)
        info["gpu"] = properties.name
        info["gpu_memory_gb"] = round(properties.total_memory / 2**30, 1)
        info["gpu_count"] = torch.cuda.device_count()
    if sys.platform == "darwin" and getattr(torch.backends, "mps", None):
        info["mps"] = bool(torch.backends.mps.is_available())
    return info


__all__ = ["describe", "git_revision"]
