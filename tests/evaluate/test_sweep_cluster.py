"""``avda sweep`` on SLURM / PBS (dask-jobqueue) and lost workers: spec checks of the cluster
resources, job scripts, Ctrl-C, and a cluster left without workers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from avda import runs
from avda.sweep import run as sweep

pytest.importorskip("dask_jobqueue")

SRC = Path(__file__).resolve().parents[2] / "src"


def test_importing_dask_jobqueue_keeps_ctrl_c_a_keyboard_interrupt():
    """dask_jobqueue installs ``sys.exit()`` as the SIGINT handler on import: avda's
    ``interrupted`` line and exit 130 would never come."""
    code = textwrap.dedent(
        """
        import os, signal, sys, time
        assert "dask_jobqueue" not in sys.modules
        from avda.sweep import run
        run.import_jobqueue("slurm")
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        except KeyboardInterrupt:
            print("KeyboardInterrupt")
        """
    )
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.stdout.strip() == "KeyboardInterrupt", (done.returncode, done.stderr[-2000:])


# ------------------------------------------------------------------------------ lost workers
@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    from tests.conftest import make_feature_cache

    path = tmp_path_factory.mktemp("sweep-cluster") / "features.zarr"
    make_feature_cache(path, shift=1.0)
    return path


def _close_every_worker_mid_run(clusters: list, run: Path, stop: threading.Event) -> bool:
    """Kill every worker of the sweep's cluster (as if each job was cancelled or ran past its
    walltime) once ``run`` has a checkpoint; the cluster keeps them in its spec, as
    dask-jobqueue keeps jobs that ended."""
    while not stop.is_set():
        if clusters and (run / runs.CHECKPOINT).exists() and len(runs.read_metrics(run)) >= 1:
            from distributed.core import Status

            for nanny in list(clusters[0].workers.values()):
                nanny.status = Status.failed  # no restart: the job is gone, nanny and all
                os.kill(nanny.process.pid, signal.SIGKILL)
            return True
        time.sleep(0.02)
    return False


@pytest.mark.parametrize("restarts", [0, 1])
def test_a_cluster_left_without_workers_restarts_them_or_fails_in_one_line(
    tmp_path, cache, monkeypatch, restarts
):
    """Every worker gone mid-run (scancel, walltime, preemption): Dask waits forever for one.
    After ``worker_timeout`` s the sweep starts its workers again (a SLURM/PBS sweep submits its
    jobs again) and the run resumes; with no restart left it fails in one line, and the index
    keeps the run that finished."""
    import distributed

    from avda.errors import AvdaError

    clusters: list = []

    class Recorded(distributed.LocalCluster):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            clusters.append(self)

    monkeypatch.setattr(distributed, "LocalCluster", Recorded)
    monkeypatch.setattr(sweep, "MAX_RESTARTS", restarts)
    epochs = 12
    spec = sweep.parse_spec(
        {
            "cache": str(cache),
            "heads": [{"name": "source-only", "epochs": epochs, "hidden_dim": 16}],
            "settings": ["source->target"],
            "seeds": [0, 1],
            "retries": 0,
            "cluster": {"kind": "local", "workers": 1, "worker_timeout": 2},
        }
    )
    out = tmp_path / "runs"
    second = out / "source-only/source-target/seed1"
    stop = threading.Event()
    closed: list = []
    closer = threading.Thread(
        target=lambda: closed.append(_close_every_worker_mid_run(clusters, second, stop))
    )
    closer.start()
    try:
        if restarts:
            summary = sweep.run_sweep(spec, out=out, progress=False)
        else:
            with pytest.raises(AvdaError) as raised:
                sweep.run_sweep(spec, out=out, progress=False)
    finally:
        stop.set()
        closer.join()
    assert closed == [True]
    index = {e["seed"]: e["status"] for e in json.loads((out / sweep.INDEX).read_text())["runs"]}
    if restarts:
        assert summary.ok, summary.text()
        assert summary.outcomes["source-only/source-target/seed1"].resumed_from_epoch >= 1
        assert index == {0: "complete", 1: "complete"}
        return
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("no Dask worker left in the local cluster for 2 s, giving up")
    assert "run the same command again" in message
    assert index == {0: "complete", 1: "pending"}
