"""Decoded frames / waveforms -> the exact tensor a backbone's forward takes (its input_spec)."""

from __future__ import annotations

import numpy as np
import torch

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
