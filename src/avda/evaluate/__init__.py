"""Evaluation: metrics, tables and reports over run directories.

The package is callable: ``avda.evaluate(runs, ...)`` is :func:`avda.api.evaluate`.
"""

from avda._callable import make_callable

make_callable(__name__, "evaluate")
