"""Backbones built by name: ``create("i3d", modality="rgb", weights=None)``.

Registered: see ``names()``. Each builder takes keyword-only arguments; an unknown name or
keyword fails with the valid choices. A backbone is one module that registers its builder with
``@register(name, model=TheBackboneClass)`` and one import line at the end of this file; the
class declares what extraction asks of it (see :class:`Backbone` and docs/architecture.md).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from avda.errors import ConfigError
from avda.extract.backbones._base import (
    INPUT_LAYOUTS,
    MODALITIES,
    Backbone,
    InputLayout,
    InputSpec,
    fold_batch_norm_,
    init_random_features_,
    input_layout,
    register_input_layout,
)
from avda.registry import Registry, unknown_name_message

log = logging.getLogger(__name__)

BACKBONES: Registry = Registry("backbone")
MODEL_CLASSES: dict[str, type[Backbone]] = {}
"""The :class:`Backbone` subclass each registered builder returns, by name."""

B = TypeVar("B", bound=Callable[..., Backbone])


def register(name: str, *, model: type[Backbone]) -> Callable[[B], B]:
    """Decorator: register ``builder`` under ``name``; it builds ``model`` instances, whose class
    attributes (``spatial_maps``, ``checkpoint_layouts()``...) are asked before any is built."""

    def decorator(builder: B) -> B:
        BACKBONES.register(name)(builder)
        MODEL_CLASSES[name] = model
        return builder

    return decorator


def unregister(name: str) -> None:
    """Remove backbone ``name`` (a backbone registered for a while, e.g. by a test)."""
    BACKBONES.unregister(name)
    MODEL_CLASSES.pop(name, None)


def model_class(name: str) -> type[Backbone]:
    """The class backbone ``name`` builds (an unknown name fails with the valid ones)."""
    BACKBONES.get(name)
    return MODEL_CLASSES[name]


def with_spatial_maps() -> list[str]:
    """Names of the backbones whose spatial maps a ``spatial`` recipe can store."""
    return [name for name in names() if MODEL_CLASSES[name].spatial_maps]


RANDOM_INIT_WARNED: set[tuple[str, str]] = set()
"""``(backbone, modality)`` pairs whose random-initialisation warning was given: it is given
once (a process; ``avda`` clears it for each command; Dask shard tasks start with theirs)."""


def create(
    name: str, *, modality: str, weights: str | Path | None = None, **config: Any
) -> Backbone:
    """Build backbone ``name`` for ``modality``; load ``weights`` (a published checkpoint) if given.

    Without weights the model is randomly initialised and a warning (once per backbone and
    modality, see :data:`RANDOM_INIT_WARNED`) says the features carry no meaning beyond the
    architecture.
    """
    builder = BACKBONES.get(name)
    if modality not in MODALITIES:
        raise ConfigError(unknown_name_message("modality", modality, MODALITIES))
    params = inspect.signature(builder).parameters
    valid = [p for p in params if p not in ("modality", "weights")]
    for key in config:
        if key not in valid:
            raise ConfigError(unknown_name_message(f"keyword for backbone {name!r}", key, valid))
    model = builder(modality=modality, weights=weights, **config)
    if weights is None:
        init_random_features_(model)
    from avda.extract.backbones.weights import _COMMAND

    if weights is None and _COMMAND.get() == "finetune":  # training from scratch has meaning
        log.warning(
            "%s (%s): no --weights given: fine-tuning from random initialisation (from "
            "scratch); give --weights (a published name, `avda weights list`, or a file) to "
            "start from a pretrained checkpoint, as the papers do",
            name,
            modality,
        )
    elif weights is None and (name, modality) not in RANDOM_INIT_WARNED:
        RANDOM_INIT_WARNED.add((name, modality))
        # avda extract's and avda demo's option (avda.extract's keyword: avda.wording.spoken)
        option = "--audio-weights" if modality == "audio" else "--weights"
        log.warning(
            "%s (%s): no weights given, random initialisation: features are meaningless "
            "beyond the architecture; give a published checkpoint with %s (a file, or a "
            "name of `avda weights list`)",
            *(name, modality, option),
        )
    return model


def names() -> list[str]:
    return BACKBONES.names()


# Registration happens here, by import, in one place.
from avda.extract.backbones import audio_resnet as _audio_resnet  # noqa: E402,F401
from avda.extract.backbones import i3d as _i3d  # noqa: E402,F401
from avda.extract.backbones import slowfast as _slowfast  # noqa: E402,F401
from avda.extract.backbones import slowfast_mmaction as _slowfast_mmaction  # noqa: E402,F401
from avda.extract.backbones import tbn as _tbn  # noqa: E402,F401

__all__ = [
    "BACKBONES",
    "INPUT_LAYOUTS",
    "MODEL_CLASSES",
    "Backbone",
    "InputLayout",
    "InputSpec",
    "create",
    "fold_batch_norm_",
    "input_layout",
    "model_class",
    "names",
    "register",
    "register_input_layout",
    "unregister",
    "with_spatial_maps",
]
