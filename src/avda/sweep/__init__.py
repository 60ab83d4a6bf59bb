"""Sweeps: many training runs (heads x settings x seeds) as tasks on Dask distributed.

``avda.sweep.spec`` reads and checks a sweep file; ``avda.sweep.run`` plans the runs, executes
them (serially, on a ``LocalCluster``, or on a SLURM cluster through ``dask-jobqueue``) and
collects their table. The package sits beside ``avda.train`` and ``avda.evaluate`` and uses
both: it trains with the one and tabulates with the other.
"""

from avda.sweep.run import (
    CLUSTER_KINDS,
    INDEX,
    WARNINGS,
    ClusterSpec,
    HeadSpec,
    SweepSpec,
    SweepSummary,
    SweepTask,
    TaskOutcome,
    describe_spec,
    job_script,
    load_spec,
    parse_spec,
    plan,
    run_serial,
    run_sweep,
    run_task,
)

__all__ = [
    "CLUSTER_KINDS",
    "ClusterSpec",
    "INDEX",
    "WARNINGS",
    "HeadSpec",
    "SweepSpec",
    "SweepSummary",
    "SweepTask",
    "TaskOutcome",
    "describe_spec",
    "job_script",
    "load_spec",
    "parse_spec",
    "plan",
    "run_serial",
    "run_sweep",
    "run_task",
]
