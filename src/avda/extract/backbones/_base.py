"""What every backbone offers: the uniform interface of docs/design.md (Backbones).

A backbone is an ``nn.Module`` with

- ``name``, ``modality`` and ``num_features``;
- ``input_spec``: an :class:`InputSpec` saying exactly what tensor ``forward_features`` takes, so
  that a checkpoint always travels with its preprocessing;
- ``forward_features(x) -> (B, num_features)``, ``forward_spatial(x)`` (last map before
  pooling) and ``forward(x)`` (class logits where the checkpoint has a classifier);
- what the shared extraction code would otherwise decide by the backbone's name (it never
  compares names): ``spatial_maps`` with :meth:`Backbone.features_and_map`,
  ``spectrogram_recipe``, ``mmsada_pixels`` and :meth:`Backbone.checkpoint_layouts`; an
  ``input_spec.layout`` other than ``B C T H W`` / ``B C H W`` is declared with
  :func:`register_input_layout` (see docs/architecture.md, Adding a backbone).
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from avda.errors import ConfigError

if TYPE_CHECKING:
    from avda.extract.backbones.weights import Layout

Modality = Literal["rgb", "flow", "audio"]
MODALITIES: tuple[str, ...] = ("rgb", "flow", "audio")


@dataclasses.dataclass(frozen=True, kw_only=True)
class InputSpec:
    """The input contract of a backbone (stored in cache provenance).

    Visual: ``num_frames`` per clip, ``size`` (H, W) of the crop, ``resize_shorter`` side before the
    crop, ``value_range`` after normalisation, ``channel_order`` ("RGB", "BGR" or "uv"),
    ``mean``/``std`` applied as ``(x * scale - mean) / std`` with ``scale`` mapping uint8 to the
    working range. Audio: ``sample_rate``, ``clip_seconds`` and ``spectrogram`` parameters.
    """

    modality: str
    layout: str  # e.g. "B C T H W", "B 1 F T"
    num_frames: int | None = None
    frame_stride: int | None = None
    size: tuple[int, int] | None = None
    resize_shorter: int | None = None
    channel_order: str | None = None
    scale: float = 1.0
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    value_range: tuple[float, float] | None = None
    sample_rate: int | None = None
    clip_seconds: float | None = None
    spectrogram: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in out.items()}


@dataclasses.dataclass(frozen=True, kw_only=True)
class InputLayout:
    """How extraction builds a visual input of one ``InputSpec.layout`` from uint8 clips
    ``(B, T, H, W, C)`` (:func:`avda.extract.transforms.model_input`).

    ``stacked``: the T frames stacked along channels, ``(B, T * C, H, W)`` (TSN / TBN), in
    channels-last memory; else the clip ``(B, C, T, H, W)``, channels-last-3d. ``pack``: applied
    to the normalised tensor (e.g. SlowFast's ``[slow, fast]`` pathways); None: it is the input.
    ``check_frames(spec, frames, recipe=, backbone=)``: raise :class:`ConfigError` saying why
    a clip length does not fit the backbone, before any decoding (the caller adds the recipes
    that fit); None: any length.
    """

    stacked: bool = False
    pack: Callable[[torch.Tensor], torch.Tensor | list[torch.Tensor]] | None = None
    check_frames: Callable[..., None] | None = None


INPUT_LAYOUTS: dict[str, InputLayout] = {}
"""Visual input layouts by ``InputSpec.layout`` (spaces removed): ``B C T H W`` and ``B C H W``
here, others registered by the backbone module that uses them (:func:`register_input_layout`)."""


def _layout_key(layout: str) -> str:
    return layout.replace(" ", "")


def register_input_layout(layout: str, how: InputLayout) -> InputLayout:
    """Declare how to build inputs of ``layout``; a layout registered twice differently fails."""
    key = _layout_key(layout)
    if INPUT_LAYOUTS.get(key, how) != how:
        raise ConfigError(f"input layout {layout!r} is registered twice")
    INPUT_LAYOUTS[key] = how
    return how


def input_layout(spec: InputSpec) -> InputLayout:
    """The :class:`InputLayout` of ``spec.layout``; an unknown (or audio) layout fails."""
    try:
        return INPUT_LAYOUTS[_layout_key(spec.layout)]
    except KeyError:
        raise ConfigError(
            f"input layout {spec.layout!r} is not a visual layout avda can build"
        ) from None


def _check_stacked_frames(spec: InputSpec, frames: int, *, recipe: str, backbone: str) -> None:
    """A stack takes exactly as many frames as its first conv has channels for."""
    channels = len(spec.mean) or 3
    per_frame = 2 if spec.modality == "flow" else 3
    if frames * per_frame != channels:
        raise ConfigError(
            f"recipe {recipe!r} samples {frames} {spec.modality} frame(s) per clip, but "
            f"{backbone} {spec.modality} takes {channels // per_frame} (a {channels}-channel "
            "stack)"
        )


register_input_layout("B C T H W", InputLayout())
register_input_layout("B C H W", InputLayout(stacked=True, check_frames=_check_stacked_frames))


class Backbone(nn.Module, abc.ABC):
    """Base class: subclasses set ``name``, ``modality``, ``num_features``, ``input_spec``.

    The class attributes below answer, for each backbone, what extraction asks of it; the
    defaults suit a backbone without spatial maps, with the default spectrogram and its
    ``input_spec`` normalisation only.
    """

    name: str = ""
    modality: str = ""
    num_features: int = 0
    input_spec: InputSpec

    spatial_maps: ClassVar[bool] = False
    """Whether recipes with ``spatial`` can store its maps (:meth:`features_and_map`)."""
    spectrogram_recipe: ClassVar[str | None] = None
    """Audio: the spectrogram its audio input is computed with, a name in
    ``avda.extract.audio.SPECTROGRAMS``; None: "vggsound"."""
    mmsada_pixels: ClassVar[bool] = False
    """Whether it takes MM-SADA's ``x / 128 - 1`` pixels (recipes with ``pixel_normalisation``
    "mmsada"): I3D's normalisation; other backbones need their own ``input_spec``."""

    @classmethod
    def checkpoint_layouts(cls) -> tuple[Layout, ...]:
        """The checkpoint layouts by which ``avda weights verify`` recognises a file as this
        backbone's (:class:`avda.extract.backbones.weights.Layout`); none by default."""
        return ()

    def features_and_map(self, maps: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """From :meth:`forward_spatial`'s output: the pooled features ``(B, num_features)``
        (as :meth:`forward_features` gives them) and the map a ``spatial`` recipe stores
        ``(B, C, H, W)``. Backbones with ``spatial_maps`` override it."""
        raise ConfigError(f"spatial maps are not available for {self.name}")

    def conv_bn_pairs(self) -> Iterator[tuple[nn.Module, str, str]]:
        """``(parent, conv, bn)`` for every BatchNorm applied directly to a conv's output.

        Submodules declare theirs in a ``CONV_BN`` class attribute of attribute-name pairs;
        backbones built from modules they do not own (torchvision's) override this.
        """
        for module in self.modules():
            for conv, bn in getattr(module, "CONV_BN", ()):
                yield module, conv, bn

    @abc.abstractmethod
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features ``(B, num_features)`` for a preprocessed batch."""

    @abc.abstractmethod
    def forward_spatial(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map before pooling."""


class MaxPool3d(nn.MaxPool3d):
    """``nn.MaxPool3d`` that pools in its input's dtype, autocast or not.

    CPU autocast runs ``max_pool3d`` in float32: a bfloat16 activation is copied to float32,
    pooled by a slower kernel, and cast back by the next conv. Max-pooling selects values, so it
    is exact in bfloat16; skipping the casts makes a bf16 I3D forward ~15% faster on a CPU.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x)


def init_random_features_(module: nn.Module) -> nn.Module:
    """Variance-preserving random initialisation (He et al., fan-out) for weight-less use.

    The reference implementations keep PyTorch's default conv init, under which activations
    shrink by ~3x per layer: a random-init I3D then emits features around 1e-6, which float16
    caches cannot hold. With this init random features are of order 1-100 (a random I3D on the
    demo videos: mean 31, std 52, max 640; fan-out preserves the backward variance, and the
    forward one grows where a layer has fewer outputs than inputs), inside float16's range, so
    random-init runs (the demo, tests) still carry the information a random network preserves.
    """
    for layer in module.modules():
        if isinstance(layer, nn.Conv1d | nn.Conv2d | nn.Conv3d):
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, nn.BatchNorm1d | nn.BatchNorm2d | nn.BatchNorm3d):
            if layer.affine:
                nn.init.ones_(layer.weight)
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, nn.Linear):
            nn.init.normal_(layer.weight, 0, 0.01)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
    # A residual block may name the BatchNorm that ends its branch (``RESIDUAL_BN``): its scale
    # starts small, or the sum over 33 R101 blocks grows past float16 (a random
    # slowfast-r101-mmaction gave features of 2.6e5: every clip refused). mmaction2's
    # zero_init_residual starts it at 0, which would leave the branch without a gradient.
    for layer in module.modules():
        for name in getattr(layer, "RESIDUAL_BN", ()):
            nn.init.constant_(layer.get_submodule(name).weight, RESIDUAL_BN_SCALE)
    return module


RESIDUAL_BN_SCALE = 0.2  # random R101 features: max ~2, std ~0.4 (0.0: max ~1, no gradient)


def fold_batch_norm_(model: Backbone) -> int:
    """Fold each BatchNorm of ``model.conv_bn_pairs()`` into its conv, for inference.

    ``conv -> BN`` with running statistics is one conv with scaled weights and a bias: the same
    function (up to float rounding) with one pass over the activations less. The BN becomes an
    ``nn.Identity``, so a folded model can no longer be trained; call on eval-mode models only.
    Returns the number of layers folded (0 when already folded).
    """
    if model.training:
        raise RuntimeError("fold_batch_norm_ needs a model in eval mode")
    folded = 0
    for parent, conv_name, bn_name in list(model.conv_bn_pairs()):
        conv, bn = getattr(parent, conv_name), getattr(parent, bn_name)
        if not isinstance(bn, nn.modules.batchnorm._BatchNorm):
            continue  # folded before
        setattr(parent, conv_name, fuse_conv_bn_eval(conv, bn))
        setattr(parent, bn_name, nn.Identity())
        folded += 1
    return folded
