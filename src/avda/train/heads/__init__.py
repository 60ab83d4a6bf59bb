"""Adaptation heads built by name: ``create("dann", inputs=..., tasks=..., overrides={...})``."""

from __future__ import annotations

from typing import Any

from avda.registry import Registry
from avda.train.data import Task

HEADS: Registry = Registry("head")


def register(name: str):
    """Class decorator: register a head under ``name`` and record it as ``cls.name``."""

    def decorator(cls):
        cls.name = name
        return HEADS.register(name)(cls)

    return decorator


def config_class(name: str):
    return HEADS.get(name).Config


def create(
    name: str,
    *,
    inputs: dict[str, tuple[int, int]],
    tasks: list[Task],
    config=None,
    overrides: dict[str, Any] | None = None,
):
    """Build head ``name``; ``config`` (a HeadConfig) or ``overrides`` (validated dict)."""
    cls = HEADS.get(name)
    if config is None:
        config = cls.Config.from_dict(overrides or {})
    return cls(config, inputs=inputs, tasks=tasks)


def names() -> list[str]:
    return HEADS.names()


# Registration by import, in one place.
from avda.train.heads import adabn as _adabn  # noqa: E402,F401
from avda.train.heads import audio_adaptive as _audio_adaptive  # noqa: E402,F401
from avda.train.heads import cia as _cia  # noqa: E402,F401
from avda.train.heads import dann as _dann  # noqa: E402,F401
from avda.train.heads import mm_sada as _mm_sada  # noqa: E402,F401
from avda.train.heads import mmd as _mmd  # noqa: E402,F401
from avda.train.heads import rna as _rna  # noqa: E402,F401
from avda.train.heads import source_only as _source_only  # noqa: E402,F401
from avda.train.heads import ta3n as _ta3n  # noqa: E402,F401

__all__ = ["HEADS", "create", "config_class", "names", "register"]
