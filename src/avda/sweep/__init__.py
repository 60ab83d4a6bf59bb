"""Sweeps: many training runs (heads x settings x seeds) as tasks on Dask distributed.

``avda.sweep.spec`` reads and checks a sweep file; ``avda.sweep.run`` plans the runs, executes
them (serially, on a ``LocalCluster``, or on a SLURM cluster through ``dask-jobqueue``) and
collects their table. The package sits beside ``avda.train`` and ``avda.evaluate`` and uses
both: it trains with the one and tabulates with the other.
"""

from avda.sweep import run as _run
from avda.sweep.run import *  # noqa: F403 - the package's API is run's

__all__ = list(_run.__all__)
