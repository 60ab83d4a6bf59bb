"""Optional dependencies: one feature each, installed with an extra (``pip install 'avda[flow]'``).

| extra | package | needed by |
|---|---|---|
| ``flow`` | opencv-contrib-python-headless | ``avda flow --method tvl1`` |
| ``jpeg`` | simplejpeg | ``avda extract --jpeg-dct fast`` |
| ``hpc`` | dask-jobqueue | ``avda sweep --cluster slurm|pbs`` |
| ``report`` | matplotlib | ``avda report``, ``avda cluster --plots`` |
| ``log`` | tensorboard | ``avda train --log tensorboard`` |
| ``wandb`` | wandb | ``avda train --log wandb`` |
| ``mlflow`` | mlflow | ``avda train --log mlflow`` |

:func:`require` imports one, or raises :class:`MissingDependencyError` whose one line names the
feature, the package and the extra to install.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from avda.errors import MissingDependencyError


def require(module: str, *, package: str, extra: str, feature: str) -> ModuleType:
    """``import module``, or one line saying how to install it for ``feature``."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError(
            f"{feature} needs {package}, which is not installed: "
            f"pip install 'avda[{extra}]' (or pip install {package})"
        ) from None
