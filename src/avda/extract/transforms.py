"""Decoded frames / waveforms -> the exact tensor a backbone's forward takes (its input_spec).

Decoding workers hand over uint8 clips ``(K, T, H, W, C)`` (C = 3 for RGB, 2 for u/v flow);
:func:`model_input` turns a batch of them into what the backbone's ``input_spec.layout`` says,
on the device where the model runs:

- ``B C T H W`` (I3D): channels first;
- ``B C H W`` (TBN): the T frames of a snippet stacked along channels, ``[x_t, y_t, x_t+1, ...]``
  for flow (TSN's 10-channel stack of 5 u/v pairs), T = 1 for RGB;
- ``[B C T/4 H W, B C T H W]`` (SlowFast): the fast clip and the slow pathway taken from it
  (:func:`avda.extract.backbones.slowfast.pathways`).

Values: the input_spec's ``(x * scale - mean) / std`` after its channel order (BGR for TBN), or,
with ``Recipe.pixel_normalisation = "mmsada"``, MM-SADA's ``x / 128 - 1`` for RGB and flow.
"""

from __future__ import annotations

import numpy as np
import torch

from avda.errors import ConfigError
from avda.extract.backbones import InputSpec


def centre_crop(frames: np.ndarray, size: int) -> np.ndarray:
    """Centre crop ``(..., H, W, C)`` to ``size x size`` (TF/torchvision rounding)."""
    height, width = frames.shape[-3], frames.shape[-2]
    top = max(0, int(round((height - size) / 2.0)))
    left = max(0, int(round((width - size) / 2.0)))
    return frames[..., top : top + size, left : left + size, :]


def normalise_frames(frames: np.ndarray, spec: InputSpec) -> torch.Tensor:
    """uint8 ``(K, T, H, W, 3)`` RGB -> float ``(K, C, T, H, W)`` per ``spec``.

    Applies the channel order (RGB/BGR), then ``(x * scale - mean) / std``.
    """
    x = torch.from_numpy(np.ascontiguousarray(frames)).float()
    if spec.channel_order == "BGR":
        x = x.flip(-1)
    x = x * spec.scale
    if spec.mean:
        x = x - torch.tensor(spec.mean, dtype=torch.float32)
    if spec.std:
        x = x / torch.tensor(spec.std, dtype=torch.float32)
    return x.permute(0, 4, 1, 2, 3).contiguous()  # (K, T, H, W, C) -> (K, C, T, H, W)


def layout_kind(spec: InputSpec) -> str:
    """ "clip" (B C T H W), "stack" (B C H W) or "pathways" ([slow, fast]) from the layout."""
    layout = spec.layout.replace(" ", "")
    if layout.startswith("["):
        return "pathways"
    if layout == "BCTHW":
        return "clip"
    if layout == "BCHW":
        return "stack"
    raise ConfigError(f"input layout {spec.layout!r} is not a visual layout avda can build")


def check_clip_frames(spec: InputSpec, frames: int, *, recipe: str, backbone: str) -> None:
    """Refuse a recipe whose clip length the backbone cannot take, before any decoding."""
    kind = layout_kind(spec)
    if kind == "stack":
        channels = len(spec.mean) or 3
        per_frame = 2 if spec.modality == "flow" else 3
        if frames * per_frame != channels:
            raise ConfigError(
                f"recipe {recipe!r} samples {frames} {spec.modality} frame(s) per clip, but "
                f"{backbone} {spec.modality} takes {channels // per_frame} (a {channels}-channel "
                "stack); use a recipe made for it (e.g. ta3n)"
            )
    elif kind == "pathways" and frames % 4:
        raise ConfigError(
            f"recipe {recipe!r} samples {frames} frames per clip; {backbone} needs a multiple of "
            "4 (fast pathway = 4 x slow); use audio-adaptive (32 frames)"
        )


def model_input(
    frames: torch.Tensor,
    spec: InputSpec,
    *,
    normalisation: str = "input_spec",
) -> torch.Tensor | list[torch.Tensor]:
    """uint8 ``(B, T, H, W, C)`` clips -> the backbone input described by ``spec``."""
    x = frames.float()
    if normalisation == "mmsada":
        x = x / 128.0 - 1.0  # MM-SADA: x / 256 * 2 - 1, for RGB and flow JPEGs alike
    elif normalisation == "input_spec":
        if spec.channel_order == "BGR":
            x = x.flip(-1)
        x = x * spec.scale
    else:
        raise ConfigError(
            f"unknown pixel normalisation {normalisation!r}; use input_spec or mmsada"
        )
    kind = layout_kind(spec)
    B, T, H, W, C = x.shape
    if kind == "stack":
        x = x.permute(0, 1, 4, 2, 3).reshape(B, T * C, H, W)  # (B, T, H, W, C) -> (B, T*C, H, W)
        channel_axis = 1
    else:
        x = x.permute(0, 4, 1, 2, 3)  # (B, T, H, W, C) -> (B, C, T, H, W)
        channel_axis = 1
    if normalisation == "input_spec":
        x = _standardise(x, spec, channel_axis)
    x = x.contiguous()
    if kind == "pathways":
        from avda.extract.backbones.slowfast import pathways

        return pathways(x, slow_frames=T // 4)
    return x


def _standardise(x: torch.Tensor, spec: InputSpec, channel_axis: int) -> torch.Tensor:
    shape = [1] * x.dim()
    channels = x.shape[channel_axis]
    shape[channel_axis] = channels
    if spec.mean:
        mean = torch.tensor(spec.mean, dtype=x.dtype, device=x.device)
        x = x - _per_channel(mean, channels).reshape(shape)
    if spec.std:
        std = torch.tensor(spec.std, dtype=x.dtype, device=x.device)
        x = x / _per_channel(std, channels).reshape(shape)
    return x


def _per_channel(values: torch.Tensor, channels: int) -> torch.Tensor:
    """Per-channel constants; a 1-entry or repeating pattern is tiled to ``channels``."""
    if values.numel() == channels:
        return values
    if channels % values.numel() == 0:
        return values.repeat(channels // values.numel())
    raise ConfigError(
        f"input_spec has {values.numel()} per-channel constants for {channels} channels"
    )
