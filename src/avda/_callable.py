"""Packages that are also functions: ``avda.extract(...)`` is :func:`avda.api.extract`.

``avda.extract``, ``avda.train`` and ``avda.evaluate`` are packages, and importing any of their
modules makes the package the attribute of ``avda``: a function of the same name would be
replaced by it. So the packages themselves are callable and call the API function.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
import types
from typing import Any


def submodule(package: str, name: str) -> types.ModuleType:
    """``package.name`` imported on first use, as the docs write avda's modules after ``import
    avda`` (``avda.weights.resolve``, ``avda.extract.backbones.create``): a package's module is
    its attribute only once imported. AttributeError where there is no such module."""
    if not name.startswith("_") and importlib.util.find_spec(f"{package}.{name}") is not None:
        return importlib.import_module(f"{package}.{name}")
    raise AttributeError(f"module {package!r} has no attribute {name!r}")


def make_callable(module_name: str, function: str) -> None:
    """Make the module ``module_name`` callable as ``avda.api.<function>``."""

    class CallableModule(types.ModuleType):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return getattr(importlib.import_module("avda.api"), function)(*args, **kwargs)

        def __getattr__(self, name: str) -> types.ModuleType:
            return submodule(module_name, name)

        @property
        def __signature__(self) -> inspect.Signature:
            """The API function's keywords for ``inspect.signature`` (Jupyter's Shift-Tab,
            ``help``), not ``__call__``'s ``(*args, **kwargs)``."""
            return inspect.signature(getattr(importlib.import_module("avda.api"), function))

    CallableModule.__name__ = CallableModule.__qualname__ = f"callable_{function}_module"
    sys.modules[module_name].__class__ = CallableModule
