"""One process trains into a run folder at a time (avda.cache.lock.run_lock): a second
``avda train -o`` of the same folder stops with one line naming the holder, the first one
finishes a complete run, and a run refused before it starts leaves no empty folder behind."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from avda import runs
from avda.cache.lock import RUN_LOCK, RunBusyError, run_lock
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
    assert code == 1 and "finish it with the same `avda train` command" in err


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
