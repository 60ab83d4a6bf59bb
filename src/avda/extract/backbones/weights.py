"""Loading published checkpoints into avda backbones, unchanged.

One path for every backbone:

    file ──read_checkpoint──► object ──find_state_dict──► {key: tensor}
         ──layout.detect / layout.convert──► native keys ──load_state_dict_checked──► model

- :func:`read_checkpoint` uses ``torch.load(weights_only=True)`` (``.npz`` files through
  ``numpy.load(allow_pickle=False)``, ``.safetensors`` files through ``safetensors``); a file
  that holds numpy scalars (e.g. a ``best_prec1`` stored as ``numpy.float64``) is retried with
  only those numpy types allow-listed, never with arbitrary pickles.
- :func:`find_state_dict` unwraps the published containers (``{'state_dict': ...}``,
  ``{'model_state': ...}``, ``{'model_state_dict': ...}``) down to the tensor dictionary.
- Each backbone declares its accepted :class:`Layout` objects (how to recognise a layout from its
  keys, and how to rename it to the native keys) next to its model code.
- :func:`load_state_dict_checked` checks every key and shape against the model, reports the first
  mismatch by name with the file and the layout expected, accepts a missing
  ``num_batches_tracked`` and ignores an extra one.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import logging
import pickle
import re
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
from torch import nn

from avda._io import refused_global, torch_load
from avda.errors import CheckpointError, MissingDependencyError

log = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]

# Containers used by the published files, tried in this order.
CONTAINER_KEYS: tuple[str, ...] = ("state_dict", "model_state", "model_state_dict", "model")

BATCHES_TRACKED = "num_batches_tracked"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Layout:
    """One checkpoint key layout that a backbone accepts.

    ``detect`` says, from the file's keys alone, whether a state dict is in this layout;
    ``convert`` renames (and, where needed, reshapes) it to the backbone's native keys.
    """

    name: str
    description: str
    detect: Callable[[Iterable[str]], bool]
    convert: Callable[[StateDict], StateDict]


@dataclasses.dataclass(frozen=True, kw_only=True)
class PublishedWeights:
    """A published checkpoint file and everything needed to use it (torchvision-style metadata).

    ``manifest`` names the key/shape manifest of the file (generated from the reference code);
    ``wrapping`` says how the file stores the state dict; ``config`` are the builder keywords that
    reproduce the model the file was trained with.
    """

    name: str
    file_name: str
    source: str
    licence: str
    modality: str
    layout: str
    wrapping: str
    manifest: str
    config: Mapping[str, Any]
    notes: str = ""


# A hint is asked for when a key mismatches: (native key, shape in file, shape expected) -> text.
Hint = Callable[[str, tuple[int, ...], tuple[int, ...]], str | None]


def read_checkpoint(path: str | Path) -> Any:
    """Read a checkpoint file without running arbitrary pickled code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"weights file {str(path)!r} does not exist; give the path of a downloaded "
            "checkpoint (published files by name: `avda weights list`, docs/weights.md)"
        )
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as archive:
                return {name: archive[name] for name in archive.files}
        except (ValueError, OSError) as error:
            raise CheckpointError(f"{path}: cannot read as a numpy .npz archive: {error}") from None
    if path.suffix == ".pkl" and not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path}: a plain pickle (.pkl: Caffe2 / Detectron weights such as PySlowFast's), "
            "not a torch checkpoint; avda does not unpickle it (that could run code): convert "
            "it once as docs/backbones.md (Converting other files) says"
        )
    try:
        return torch_load(path)
    except pickle.UnpicklingError:
        pass
    except (RuntimeError, EOFError, OSError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(
            f"{path}: not a readable torch checkpoint ({first}); a download cut short or a "
            "damaged copy reads so: fetch it again (`avda weights fetch NAME` for a published "
            "one)"
        ) from None
    except Exception as error:  # noqa: BLE001 - a text file, a cut-off pickle: one line
        raise CheckpointError(
            f"{path}: not a torch checkpoint (a text file, or a damaged or cut-off one: "
            f"{type(error).__name__}: {error}); pass the published weights file"
        ) from None
    with torch.serialization.safe_globals(_numpy_safe_globals()):
        try:
            checkpoint = torch_load(path)
        except pickle.UnpicklingError as error:
            lines = str(error).splitlines()
            reason = refused_global(str(error))
            if reason is None:
                # Not a pickle of objects it refuses but no pickle at all ("Unsupported
                # operand": the bytes of a text file or of a damaged one).
                reason = next((line for line in lines if "Unsupported" in line), lines[-1])
                raise CheckpointError(
                    f"{path}: not a torch checkpoint (a text file, or a damaged or cut-off one: "
                    f"{reason.strip()}); pass the published weights file"
                ) from None
            if _runs_code(reason):
                raise CheckpointError(
                    f"{path}: torch.load(weights_only=True) refuses this file ({reason.strip()}):"
                    " loading it would run that code; do not load it anywhere, get the "
                    "weights from their publisher (docs/weights.md)"
                ) from None
            raise CheckpointError(
                f"{path}: torch.load(weights_only=True) refuses this file ({reason.strip()}); "
                "it holds Python objects beyond tensors and numbers. Only if you trust where "
                "it came from, re-save its state dict alone: torch.save(torch.load(PATH, "
                "weights_only=False)[KEY], NEW), KEY its state dict's key ('state_dict', "
                "'model_state_dict', ...)"
            ) from None
    log.info("%s: loaded with numpy data types allow-listed", path)
    return checkpoint


# Modules whose functions run commands, code or file operations when a pickle calls them,
# and the builtins that do (torch names a builtin without its module: "GLOBAL eval"): a
# checkpoint naming one is an attack, not a file with extra metadata.
_CODE_MODULES = frozenset(
    "os posix nt subprocess builtins __builtin__ sys shutil socket importlib runpy pty io "
    "webbrowser code codeop ctypes pickle marshal operator".split()
)
_CODE_BUILTINS = frozenset(
    "eval exec compile getattr setattr delattr __import__ open globals locals vars input "
    "breakpoint apply execfile".split()
)


def _runs_code(reason: str) -> bool:
    """Whether a refused global (``refused_global``'s text) would run code when unpickled."""
    if "is blocked" in reason:  # torch blocks modules like os, subprocess, sys
        return True
    words = reason.split()
    name = words[1] if len(words) > 1 else ""
    if "." not in name:
        return name in _CODE_BUILTINS
    return name.split(".")[0] in _CODE_MODULES


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """A ``.safetensors`` file: a JSON header and raw tensor bytes, no code at all."""
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise MissingDependencyError(
            f"{path}: reading .safetensors weights needs the safetensors package: "
            "pip install safetensors"
        ) from None
    try:
        return load_file(str(path), device="cpu")
    except Exception as error:  # noqa: BLE001 - SafetensorError, OSError: one line
        raise CheckpointError(
            f"{path}: not a readable .safetensors file ({type(error).__name__}: {error}); "
            "pass the published weights file"
        ) from None


def _numpy_safe_globals() -> list[Any]:
    """numpy types that a checkpoint may hold: metadata scalars (``best_prec1``, ``epoch``) and
    arrays (e.g. TF variables dumped to a torch file). Only data types, no callables of note.

    Files written with numpy 1.x name ``numpy.core.multiarray``; numpy 2 names it
    ``numpy._core.multiarray``: both names are allowed.
    """
    multiarray = np._core.multiarray  # type: ignore[attr-defined]
    allowed: list[Any] = [np.dtype, np.ndarray]
    allowed += [
        type(np.dtype(name)) for name in ("float64", "float32", "float16", "int64", "int32")
    ]
    for function in ("scalar", "_reconstruct"):
        for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            allowed.append((getattr(multiarray, function), f"{module}.{function}"))
    return allowed


def _is_tensor_like(value: Any) -> bool:
    return isinstance(value, torch.Tensor | np.ndarray | np.generic)


def find_state_dict(checkpoint: Any, *, source: str | Path) -> StateDict:
    """Unwrap a published container down to ``{key: tensor}`` (numpy arrays become tensors).

    Non-tensor entries next to the tensors (trainer metadata) are dropped.
    """
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(
            f"{source}: expected a state dict or a dict holding one, "
            f"got {type(checkpoint).__name__}"
        )
    for key in CONTAINER_KEYS:
        inner = checkpoint.get(key)
        if isinstance(inner, Mapping) and any(_is_tensor_like(v) for v in inner.values()):
            log.debug("%s: state dict found under %r", source, key)
            checkpoint = inner
            break
    tensors = {str(k): v for k, v in checkpoint.items() if _is_tensor_like(v)}
    if not tensors:
        raise CheckpointError(
            f"{source}: no tensors found; top-level keys are {sorted(map(str, checkpoint))[:10]}; "
            f"expected a state dict, possibly under one of {list(CONTAINER_KEYS)}"
        )
    return {
        k: torch.as_tensor(np.asarray(v)) if not isinstance(v, torch.Tensor) else v
        for k, v in tensors.items()
    }


def strip_prefix(state_dict: StateDict, prefix: str) -> StateDict:
    """Remove ``prefix`` from every key that has it; keys without it are kept unchanged."""
    return {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in state_dict.items()}


def select_prefix(state_dict: StateDict, prefix: str) -> StateDict:
    """Keep only the keys under ``prefix`` (e.g. one modality of a multi-stream model), stripped."""
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}


def common_prefix(keys: Iterable[str], prefix: str) -> bool:
    """Whether every key starts with ``prefix`` (e.g. ``module.`` from ``nn.DataParallel``)."""
    keys = list(keys)
    return bool(keys) and all(k.startswith(prefix) for k in keys)


def detect_layout(
    state_dict: StateDict, layouts: Iterable[Layout], *, source: str | Path, model: str
) -> Layout:
    """The first layout whose ``detect`` accepts the keys, or an error listing what was tried."""
    layouts = list(layouts)
    for layout in layouts:
        if layout.detect(state_dict.keys()):
            log.info("%s: detected %s layout", source, layout.name)
            return layout
    sample = ", ".join(repr(k) for k in list(state_dict)[:4])
    others = _backbones_detecting(state_dict.keys(), besides=model)
    if others:
        raise CheckpointError(
            f"{source}: a checkpoint of {' or '.join(others)}, not of {model}; "
            f"{_which_option(model, others)} (the keys, first: {sample})"
        )
    if _is_raft(state_dict.keys()):
        raise CheckpointError(
            f"{source}: a torchvision RAFT state dict (optical flow), not a checkpoint of "
            f"{model}; RAFT weights are for `avda flow --method raft --weights FILE` "
            f"(the keys, first: {sample})"
        )
    known = "; ".join(f"{layout.name} ({layout.description})" for layout in layouts)
    raise CheckpointError(
        f"{source}: the keys (first: {sample}) match no layout known for {model}; "
        f"known layouts: {known}"
    )


_RAFT_MODULES = frozenset({"feature_encoder", "context_encoder", "update_block", "mask_predictor"})


def _is_raft(keys: Iterable[str]) -> bool:
    """Whether these are the keys of torchvision's raft_large / raft_small (`avda flow`'s)."""
    tops = {str(key).removeprefix("module.").split(".")[0] for key in keys}
    return {"feature_encoder", "context_encoder", "update_block"} <= tops <= _RAFT_MODULES


AUDIO_ONLY = frozenset({"audio_resnet18"})  # backbones without a visual modality
VISUAL_ONLY = frozenset(  # backbones without audio (tbn has both)
    {
        "i3d",
        "slowfast",
        "slowfast-r50-mmaction",
        "slowfast-r101-mmaction",
        "slowfast-r50-mmaction-max",
        "slowfast-r101-mmaction-max",
    }
)


# The command whose options the advice names: `avda finetune` has one --backbone and
# --modality where `avda extract` has --weights and --audio-weights.
_COMMAND: contextvars.ContextVar[str] = contextvars.ContextVar("avda_command", default="extract")


@contextlib.contextmanager
def advising(command: str) -> Iterator[None]:
    """Name ``command``'s options in the advice of a wrong checkpoint."""
    token = _COMMAND.set(command)
    try:
        yield
    finally:
        _COMMAND.reset(token)


def _which_option(model: str, others: list[str]) -> str:
    """The fix for a checkpoint of ``others`` given to ``model``: a visual file given as audio
    weights belongs to --weights (it said "use --backbone i3d" for an --audio-weights value),
    an audio file given as visual weights to --audio-weights."""
    other = others[0]
    name, _, modality = model.partition(" ")  # "i3d rgb", "tbn audio", "audio_resnet18"
    as_audio = modality == "audio" or name in AUDIO_ONLY  # given as audio weights
    if _COMMAND.get() == "finetune":
        if as_audio and other in VISUAL_ONLY:
            return f"a visual backbone's file: fine-tune --backbone {other} --modality rgb"
        if not as_audio and other in AUDIO_ONLY:
            return f"an audio backbone's file: fine-tune --backbone {other} --modality audio"
        return f"fine-tune --backbone {other}"
    if as_audio and other in VISUAL_ONLY:
        return (
            f"a visual backbone's file: give it to --weights (--backbone {other}), not to "
            "--audio-weights"
        )
    if not as_audio and other in AUDIO_ONLY:
        return (
            f"an audio backbone's file: give it to --audio-weights (--audio-backbone {other}), "
            "not to --weights"
        )
    return f"use {'--audio-backbone' if as_audio else '--backbone'} {other}"


def _backbones_detecting(keys: Iterable[str], *, besides: str) -> list[str]:
    """The other registered backbones with a layout that accepts these keys."""
    from avda.extract import backbones

    keys = list(keys)
    found = [
        name
        for name in backbones.names()
        if name != besides
        and any(layout.detect(keys) for layout in backbones.model_class(name).checkpoint_layouts())
    ]

    def pooling(name: str) -> str | None:  # mmaction2 SlowFast: avg, or max for the -max names
        model = backbones.MODEL_CLASSES.get(name)
        return getattr(model, "pooling", None)

    # One name per network: the variant that pools as the backbone asked for (average if none)
    wanted = pooling(besides.partition(" ")[0]) or "avg"
    return [name for name in found if pooling(name) in (None, wanted)] or found


def renamed_hint(key: str, extra: Iterable[str]) -> str:
    """`` (the file has 'X' instead, which the model lacks: renamed?)`` where one of ``extra``
    (the file's keys the model does not have) is close to the missing ``key``; "" otherwise."""
    import difflib

    candidates = [k for k in extra if not k.endswith(BATCHES_TRACKED)]
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.9)
    if not close:
        return ""
    return f" (the file has {close[0]!r} instead, which the model lacks: renamed?)"


def load_state_dict_checked(
    model: nn.Module,
    state_dict: StateDict,
    *,
    source: str | Path,
    expected: str,
    hints: Iterable[Hint] = (),
) -> None:
    """Load ``state_dict`` into ``model`` after checking every key and shape.

    ``expected`` describes the layout the model expects (it goes into the error message);
    ``hints`` may explain a mismatch (e.g. "this is a flow checkpoint").
    Raises :class:`CheckpointError` naming the first mismatching key, in the model's key order.
    """
    target = model.state_dict()
    hints = list(hints)

    def fail(
        key: str, problem: str, file_shape: tuple[int, ...], model_shape: tuple[int, ...]
    ) -> NoReturn:
        extra = [h(key, file_shape, model_shape) for h in hints]
        advice = " ".join(text for text in extra if text)
        raise CheckpointError(
            f"{source}: key {key!r} {problem}; expected layout: {expected}"
            + (f". {advice}" if advice else "")
        )

    for key, value in target.items():
        if key not in state_dict:
            if key.endswith(BATCHES_TRACKED):
                continue
            extra = (k for k in state_dict if k not in target)
            missing = "is missing from the file" + renamed_hint(key, extra)
            fail(key, missing, (), tuple(value.shape))
        file_shape = tuple(state_dict[key].shape)
        if key.endswith(BATCHES_TRACKED):
            continue
        if file_shape != tuple(value.shape):
            fail(
                key,
                f"has shape {list(file_shape)} in the file but the model expects "
                f"{list(value.shape)}",
                file_shape,
                tuple(value.shape),
            )
    for key in state_dict:
        if key not in target and not key.endswith(BATCHES_TRACKED):
            fail(key, "is in the file but not in the model", tuple(state_dict[key].shape), ())
    usable = {
        k: v.to(target[k].dtype) if v.is_floating_point() else v
        for k, v in state_dict.items()
        if k in target
    }
    model.load_state_dict(usable, strict=False)


def load_weights(
    model: nn.Module,
    weights: str | Path,
    *,
    layouts: Iterable[Layout],
    expected: str,
    hints: Iterable[Hint] = (),
    model_name: str,
    native: tuple[dict[str, torch.Tensor], Layout] | None = None,
) -> Layout:
    """Read ``weights``, detect its layout, convert to native keys and load with full checks
    (``native``: what :func:`native_state_dict` returned for them, not read again)."""
    converted, layout = native or native_state_dict(weights, layouts, model_name=model_name)
    load_state_dict_checked(
        model,
        converted,
        source=weights,
        expected=f"{expected}, read as the {layout.name} layout ({layout.description})",
        hints=hints,
    )
    log.info("%s: loaded %d tensors into %s", weights, len(converted), model_name)
    return layout


def native_state_dict(
    weights: str | Path, layouts: Iterable[Layout], *, model_name: str
) -> tuple[dict[str, torch.Tensor], Layout]:
    """``weights`` read, its layout detected and its tensors under the model's own keys."""
    checkpoint = read_checkpoint(weights)
    state_dict = find_state_dict(checkpoint, source=weights)
    if common_prefix(state_dict, "module."):
        state_dict = strip_prefix(state_dict, "module.")
    layout = detect_layout(state_dict, layouts, source=weights, model=model_name)
    try:
        return layout.convert(state_dict), layout
    except CheckpointError as error:
        raise CheckpointError(f"{weights}: {error}") from None


def input_channels_hint(key: str, channels_to_modality: Mapping[int, str]) -> Hint:
    """A hint for the first conv: the file's input channels say which modality it was made for."""

    def hint(name: str, file_shape: tuple[int, ...], model_shape: tuple[int, ...]) -> str | None:
        if name != key or len(file_shape) < 2 or len(model_shape) < 2:
            return None
        file_modality = channels_to_modality.get(file_shape[1])
        if file_modality is None or file_shape[1] == model_shape[1]:
            return None
        wanted = channels_to_modality.get(model_shape[1], "this modality")
        return (
            f"The file's first conv takes {file_shape[1]} input channels: it is a "
            f"{file_modality} checkpoint: extract it as {file_modality} (--modalities "
            f"{file_modality}; Python: modality={file_modality!r}), and {wanted} with a "
            f"{wanted} checkpoint in a run of its own into the same store (--modalities "
            f"{wanted} --weights {wanted.upper()}_FILE, the same -o)"
        )

    return hint


def num_classes_hint(key: str, *, keyword: str = "num_classes", axis: int = 0) -> Hint:
    """A hint for the classifier: the file's class count, and the keyword that sets it."""

    def hint(name: str, file_shape: tuple[int, ...], model_shape: tuple[int, ...]) -> str | None:
        if name != key or not file_shape or not model_shape:
            return None
        if (
            len(file_shape) > axis
            and len(model_shape) > axis
            and (file_shape[axis] == model_shape[axis])
        ):
            return None  # the same classes: the shapes differ elsewhere
        count = file_shape[axis]
        return f"The file's classifier has {count} classes: pass {keyword}={count}"

    return hint


def regex_rename(key: str, rules: Iterable[tuple[str, str]]) -> str:
    """Apply ``re.sub`` rules in order (used to express key maps as a few readable rules)."""
    for pattern, replacement in rules:
        key = re.sub(pattern, replacement, key)
    return key
