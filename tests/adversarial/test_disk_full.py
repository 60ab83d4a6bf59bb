"""A full disk while training (issue 18, item 9): one line naming the file, the run resumable.

The disk is "full" through ``RLIMIT_FSIZE`` (the process may not write a file larger than the
limit; ``SIGXFSZ`` ignored, so the write fails with ``EFBIG`` as a full disk fails with
``ENOSPC``). Before, torch's zip writer reported it as ``internal error: RuntimeError: ...
unexpected pos 4288 vs 4182``.
"""

from __future__ import annotations

import resource
import signal
import subprocess
import sys

from tests.conftest import make_feature_cache

TRAIN = ["train", "--cache", "c.zarr", "--head", "source-only", "--source", "source"]
TRAIN += ["--target", "target", "-o", "run", "--epochs", "2"]


def _limit(size: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))

    return apply


def test_a_checkpoint_that_does_not_fit_is_one_line_and_the_run_resumes(tmp_path):
    make_feature_cache(tmp_path / "c.zarr", per_class=8)
    command = [sys.executable, "-c", "from avda.cli import entry; entry()", *TRAIN]
    full = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, preexec_fn=_limit(20_000)
    )
    assert full.returncode == 1
    last = full.stderr.strip().splitlines()[-1]
    assert last.startswith("error: file too large"), full.stderr[-800:]
    assert "checkpoints/last.pt" in last and "Traceback" not in full.stderr
    assert not (tmp_path / "run" / "checkpoints" / "last.pt.tmp").exists()
    again = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-800:]
    assert (tmp_path / "run" / "checkpoints" / "last.pt").exists()


FULL_WITH_WRITES_PENDING = """
import asyncio, errno, gc, sys
import avda.train.clustering
from avda.cli import main

def cluster_store(*args, **kwargs):  # one of Zarr's writes fails, the others left pending
    global pending
    loop = asyncio.new_event_loop()
    pending = loop.create_task(asyncio.sleep(3600))
    loop.run_until_complete(asyncio.sleep(0))  # it started
    raise OSError(errno.ENOSPC, "No space left on device")

avda.train.clustering.cluster_store = cluster_store
code = main(["cluster", "c.zarr", "-q"])
pending = None
gc.collect()
sys.exit(code)
"""


def test_a_full_disk_with_writes_pending_ends_with_its_one_line(tmp_path):
    """Zarr writes a store's chunks concurrently: when one fills the disk, the others are left
    pending, and asyncio said 'Task was destroyed but it is pending!' under the error line."""
    ended = subprocess.run(
        [sys.executable, "-c", FULL_WITH_WRITES_PENDING],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert ended.returncode == 1
    assert ended.stderr.strip().splitlines() == [
        "error: no space left on device: c.zarr; free some space and run the command again"
    ], ended.stderr
