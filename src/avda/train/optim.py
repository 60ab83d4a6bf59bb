"""The optimisers every training path builds: Adam (PyTorch's fused kernel) or SGD.

The loop, Audio-Adaptive's stages and the spectrogram audio classifier build their optimiser
here, so one rule decides how it steps. PyTorch's default Adam on the CPU updates each
parameter tensor in a Python loop of separate element-wise kernels; ``fused=True`` does the
whole update in one kernel per tensor group. Same update rule (L2 weight decay added to the
gradient), the same values up to float rounding (the fused kernel orders the arithmetic
differently), and cheaper for heads with many parameter tensors: a source-only run is 18 %
faster on this project's 2-core CPU (``docs/benchmarks.md``).

SGD keeps PyTorch's default implementation: its fused kernel (torch 2.11) fails with a
``TypeError`` when some parameters already have momentum buffers and others get their first
gradient later, which is how MM-SADA trains (its discriminators join at stage 2); for the SGD
heads the update is a few milliseconds of a step anyway.

Fused Adam exists for floating-point parameters on CPU and CUDA; anything else (another
device type) gets PyTorch's default implementation.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch

FUSED_DEVICES = ("cpu", "cuda")


def fusable(params: list[torch.Tensor]) -> bool:
    """Whether PyTorch's fused Adam kernel accepts every one of ``params``."""
    return bool(params) and all(
        p.is_floating_point() and p.device.type in FUSED_DEVICES for p in params
    )


def make_optimizer(
    kind: Literal["adam", "sgd"],
    params: Iterable[torch.Tensor],
    *,
    lr: float,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    nesterov: bool = False,
) -> torch.optim.Optimizer:
    """``torch.optim.Adam`` (``kind="adam"``, fused when :func:`fusable`) or ``torch.optim.SGD``
    (PyTorch's default implementation) over those of ``params`` that require a gradient (frozen
    parts of a model are left out). ``momentum`` and ``nesterov`` are SGD's."""
    params = [p for p in params if p.requires_grad]
    if kind == "sgd":
        return torch.optim.SGD(
            params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay
        )
    if kind == "adam":
        extra = {"fused": True} if fusable(params) else {}
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, **extra)
    raise ValueError(f"optimizer must be 'adam' or 'sgd', got {kind!r}")


__all__ = ["FUSED_DEVICES", "fusable", "make_optimizer"]
