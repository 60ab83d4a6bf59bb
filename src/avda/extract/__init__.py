"""Stage 1: decode media, run frozen backbones, write features into a Zarr cache.

The package is callable: ``avda.extract(manifest, out, ...)`` is :func:`avda.api.extract`.
"""

from avda._callable import make_callable

make_callable(__name__, "extract")
