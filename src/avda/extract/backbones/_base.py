"""What every backbone offers: the uniform interface of docs/design.md (Backbones).

A backbone is an ``nn.Module`` with

- ``name``, ``modality`` and ``num_features``;
- ``input_spec``: an :class:`InputSpec` saying exactly what tensor ``forward_features`` takes, so
  that a checkpoint always travels with its preprocessing;
- ``forward_features(x) -> (B, num_features)``, ``forward_spatial(x)`` (last map before
  pooling) and ``forward(x)`` (class logits where the checkpoint has a classifier).
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Iterator
from typing import Any, Literal

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

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


class Backbone(nn.Module, abc.ABC):
    """Base class: subclasses set ``name``, ``modality``, ``num_features``, ``input_spec``."""

    name: str = ""
    modality: str = ""
    num_features: int = 0
    input_spec: InputSpec

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
    caches cannot hold. With this init random features keep unit scale, so random-init runs
    (the demo, tests) still carry the information a random network preserves.
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
    return module


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
