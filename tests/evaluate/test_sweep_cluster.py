"""``avda sweep`` on SLURM / PBS (dask-jobqueue) and lost workers: spec checks of the cluster
resources, job scripts, Ctrl-C, and a cluster left without workers."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

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
