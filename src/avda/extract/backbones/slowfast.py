"""SlowFast R50 8x8 (Feichtenhofer et al. 2019), RGB.

Native re-implementation whose module tree, and so whose state dict keys, are those of
pytorchvideo's ``slowfast_r50`` (the ``model_state`` of ``SLOWFAST_8x8_R50.pyth``); PySlowFast
names load through a rename (``pyslowfast_to_pytorchvideo``).

Data flow for ``[slow (B, 3, 8, H, W), fast (B, 3, 32, H, W)]`` (normalised RGB)::

    blocks.0  stems: slow conv (1,7,7) 64 | fast conv (5,7,7) 8, both s(1,2,2) + maxpool
              fuse: fast ─conv (7,1,1) s(4,1,1)─► 2x channels ─► concatenated to slow
    blocks.1  res2 (3 bottlenecks)          + fuse
    blocks.2  res3 (4 bottlenecks, s2)      + fuse
    blocks.3  res4 (6 bottlenecks, s2)      + fuse
    blocks.4  res5 (3 bottlenecks, s2)
              ─► [slow (B, 2048, 8, H/32, W/32), fast (B, 256, 32, H/32, W/32)] = forward_spatial
    blocks.5  adaptive average pool per pathway, concatenated [slow ‖ fast] ─► (B, 2304)
                                                                          = forward_features
    blocks.6  dropout ─► proj (2304 ─► num_classes)                       = forward

Widths: slow 64/256/512/1024/2048, fast 8/32/64/128/256 (beta = 1/8). Temporal kernel of
``conv_a``: slow 1, 1, 3, 3; fast 3 everywhere.

Deviation: pytorchvideo pools each pathway with a fixed (T, 7, 7) stride-1 kernel, projects,
then averages; at 224x224 that equals the adaptive pool used here exactly. At other sizes
(e.g. the 256 test crop) avda averages the whole map first, so the feature is the true global
mean and ``forward`` is the projection of that feature.

The input list is never modified (pytorchvideo's ``MultiPathWayWithFuse`` overwrites it).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import nn

from avda.errors import ConfigError
from avda.extract.backbones import register
from avda.extract.backbones._base import (
    Backbone,
    InputLayout,
    InputSpec,
    MaxPool3d,
    register_input_layout,
)
from avda.extract.backbones.weights import (
    Layout,
    PublishedWeights,
    StateDict,
    load_weights,
    num_classes_hint,
    regex_rename,
)

Triple = tuple[int, int, int]

NUM_FEATURES = 2304  # slow 2048 + fast 256
ALPHA = 4  # fast frames per slow frame
FUSION_RATIO = 2  # fused channels = 2 x fast channels
FUSION_KERNEL = 7
STAGE_DEPTHS: tuple[int, ...] = (3, 4, 6, 3)
SLOW_WIDTHS: tuple[int, ...] = (64, 256, 512, 1024, 2048)  # stem, res2..res5 outputs
FAST_WIDTHS: tuple[int, ...] = (8, 32, 64, 128, 256)
BOTTLENECK_RATIO = 4  # inner width = output width / 4
SLOW_TEMPORAL_KERNELS: tuple[int, ...] = (1, 1, 3, 3)
FAST_TEMPORAL_KERNELS: tuple[int, ...] = (3, 3, 3, 3)
STAGE_SPATIAL_STRIDES: tuple[int, ...] = (1, 2, 2, 2)

INPUT_SPEC = InputSpec(
    # PySlowFast test: 32 frames at stride 2 (30 fps), slow = frames linspace(0, 31, 8).long()
    # of the fast clip; shorter side 256, crop 256 (train 224); (x / 255 - 0.45) / 0.225.
    modality="rgb",
    layout="[B C 8 H W, B C 32 H W]",
    num_frames=32,
    frame_stride=2,
    size=(256, 256),
    resize_shorter=256,
    channel_order="RGB",
    scale=1 / 255,
    mean=(0.45, 0.45, 0.45),
    std=(0.225, 0.225, 0.225),
    value_range=(-0.45 / 0.225, 0.55 / 0.225),
)

PUBLISHED: tuple[PublishedWeights, ...] = (
    PublishedWeights(
        name="pytorchvideo_slowfast_r50_8x8_kinetics400",
        file_name="SLOWFAST_8x8_R50.pyth",
        source="https://dl.fbaipublicfiles.com/pytorchvideo/model_zoo/kinetics/SLOWFAST_8x8_R50.pyth",
        licence="Apache-2.0",
        modality="rgb",
        layout="pytorchvideo",
        wrapping="{'model_state': state dict, ...trainer entries}",
        manifest="slowfast_r50_8x8_pytorchvideo.json",
        config={"num_classes": 400},
        notes="Kinetics-400 top-1 76.94 (pytorchvideo model zoo)",
    ),
    PublishedWeights(
        name="pyslowfast_slowfast_r50_8x8",
        file_name="a PySlowFast checkpoint_epoch_*.pyth",
        source="https://github.com/facebookresearch/SlowFast (configs/Kinetics/SLOWFAST_8x8_R50)",
        licence="Apache-2.0",
        modality="rgb",
        layout="pyslowfast",
        wrapping="{'epoch', 'model_state', 'optimizer_state', 'cfg'}",
        manifest="slowfast_r50_8x8_pyslowfast.json",
        config={"num_classes": 400},
        notes="PySlowFast names (s1..s5, head.projection); Caffe2 .pkl files must be converted "
        "to .pyth by PySlowFast first",
    ),
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SlowFastConfig:
    """``num_classes`` of the projection; ``dropout`` before it."""

    modality: str = "rgb"
    num_classes: int = 400
    dropout: float = 0.5

    def __post_init__(self) -> None:
        if self.modality != "rgb":
            raise ConfigError(
                f"slowfast takes only modality 'rgb', got {self.modality!r}; "
                "use i3d or tbn for flow, audio_resnet18 or tbn for audio"
            )
        if self.num_classes < 1:
            raise ConfigError(f"slowfast num_classes must be >= 1, got {self.num_classes}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"slowfast dropout must be in [0, 1), got {self.dropout}")


def _norm(channels: int) -> nn.BatchNorm3d:
    return nn.BatchNorm3d(channels, eps=1e-5, momentum=0.1)


class Stem(nn.Module):
    """conv (kT, 7, 7) stride (1, 2, 2) ─► BN ─► ReLU ─► maxpool (1, 3, 3) stride (1, 2, 2)."""

    CONV_BN = (("conv", "norm"),)

    def __init__(self, out_channels: int, temporal_kernel: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(
            3,
            out_channels,
            (temporal_kernel, 7, 7),
            stride=(1, 2, 2),
            padding=(temporal_kernel // 2, 3, 3),
            bias=False,
        )
        self.norm = _norm(out_channels)
        self.activation = nn.ReLU(inplace=True)
        self.pool = MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.activation(self.norm(self.conv(x))))


class FuseFastToSlow(nn.Module):
    """Lateral connection: time-strided conv of the fast map, concatenated to the slow map."""

    CONV_BN = (("conv_fast_to_slow", "norm"),)

    def __init__(self, fast_channels: int) -> None:
        super().__init__()
        self.conv_fast_to_slow = nn.Conv3d(
            fast_channels,
            fast_channels * FUSION_RATIO,
            (FUSION_KERNEL, 1, 1),
            stride=(ALPHA, 1, 1),
            padding=(FUSION_KERNEL // 2, 0, 0),
            bias=False,
        )
        self.norm = _norm(fast_channels * FUSION_RATIO)
        self.activation = nn.ReLU(inplace=True)

    def forward(self, slow: torch.Tensor, fast: torch.Tensor) -> torch.Tensor:
        lateral = self.activation(self.norm(self.conv_fast_to_slow(fast)))
        return torch.cat([slow, lateral], dim=1)


class Bottleneck(nn.Module):
    """conv_a (kT, 1, 1) ─► conv_b (1, 3, 3) with the spatial stride ─► conv_c (1, 1, 1)."""

    CONV_BN = (("conv_a", "norm_a"), ("conv_b", "norm_b"), ("conv_c", "norm_c"))

    def __init__(
        self, in_channels: int, inner: int, out_channels: int, temporal_kernel: int, stride: int
    ) -> None:
        super().__init__()
        self.conv_a = nn.Conv3d(
            in_channels,
            inner,
            (temporal_kernel, 1, 1),
            padding=(temporal_kernel // 2, 0, 0),
            bias=False,
        )
        self.norm_a = _norm(inner)
        self.act_a = nn.ReLU(inplace=True)
        self.conv_b = nn.Conv3d(
            inner, inner, (1, 3, 3), stride=(1, stride, stride), padding=(0, 1, 1), bias=False
        )
        self.norm_b = _norm(inner)
        self.act_b = nn.ReLU(inplace=True)
        self.conv_c = nn.Conv3d(inner, out_channels, 1, bias=False)
        self.norm_c = _norm(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act_a(self.norm_a(self.conv_a(x)))
        x = self.act_b(self.norm_b(self.conv_b(x)))
        return self.norm_c(self.conv_c(x))


class ResBlock(nn.Module):
    """ReLU(branch2(x) + shortcut(x)); shortcut = strided 1x1 conv + BN when shapes change."""

    CONV_BN = (("branch1_conv", "branch1_norm"),)

    def __init__(
        self, in_channels: int, out_channels: int, temporal_kernel: int, stride: int
    ) -> None:
        super().__init__()
        if in_channels != out_channels or stride != 1:
            self.branch1_conv: nn.Module | None = nn.Conv3d(
                in_channels, out_channels, 1, stride=(1, stride, stride), bias=False
            )
            self.branch1_norm: nn.Module | None = _norm(out_channels)
        else:
            self.branch1_conv = None
            self.branch1_norm = None
        self.branch2 = Bottleneck(
            in_channels,
            out_channels // BOTTLENECK_RATIO,
            out_channels,
            temporal_kernel,
            stride,
        )
        self.activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        if self.branch1_conv is not None and self.branch1_norm is not None:
            shortcut = self.branch1_norm(self.branch1_conv(x))
        # In place, as torchvision's ResNet: no new activation-sized tensor per op (on a CPU
        # the out-of-place add and ReLU took 20% of a bf16 forward).
        out = self.branch2(x)
        out += shortcut
        return self.activation(out)


class ResStage(nn.Module):
    def __init__(
        self, in_channels: int, out_channels: int, depth: int, temporal_kernel: int, stride: int
    ) -> None:
        super().__init__()
        self.res_blocks = nn.ModuleList(
            ResBlock(
                in_channels if index == 0 else out_channels,
                out_channels,
                temporal_kernel,
                stride if index == 0 else 1,
            )
            for index in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.res_blocks:
            x = block(x)
        return x


class MultiPathway(nn.Module):
    """One stage for both pathways, then the optional fast-to-slow fusion."""

    def __init__(self, pathways: Sequence[nn.Module], fusion: FuseFastToSlow | None) -> None:
        super().__init__()
        self.multipathway_blocks = nn.ModuleList(pathways)
        self.multipathway_fusion = fusion

    def forward(self, slow: torch.Tensor, fast: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        slow = self.multipathway_blocks[0](slow)
        fast = self.multipathway_blocks[1](fast)
        if self.multipathway_fusion is not None:
            slow = self.multipathway_fusion(slow, fast)
        return slow, fast


class PoolConcat(nn.Module):
    """Global average pool per pathway, concatenated [slow ‖ fast] (no parameters)."""

    def forward(self, slow: torch.Tensor, fast: torch.Tensor) -> torch.Tensor:
        return torch.cat([slow.mean(dim=(2, 3, 4)), fast.mean(dim=(2, 3, 4))], dim=1)


class Head(nn.Module):
    def __init__(self, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(NUM_FEATURES, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.proj(self.dropout(features))


class SlowFast(Backbone):
    """SlowFast R50 8x8 with pytorchvideo key names; see the module docstring."""

    name = "slowfast"
    modality = "rgb"
    num_features = NUM_FEATURES

    @classmethod
    def checkpoint_layouts(cls) -> tuple[Layout, ...]:
        return LAYOUTS

    def __init__(self, config: SlowFastConfig) -> None:
        super().__init__()
        self.config = config
        self.input_spec = INPUT_SPEC
        blocks: list[nn.Module] = [
            MultiPathway(
                [Stem(SLOW_WIDTHS[0], 1), Stem(FAST_WIDTHS[0], 5)],
                FuseFastToSlow(FAST_WIDTHS[0]),
            )
        ]
        for stage, depth in enumerate(STAGE_DEPTHS):
            slow_in = SLOW_WIDTHS[stage] + FAST_WIDTHS[stage] * FUSION_RATIO
            stride = STAGE_SPATIAL_STRIDES[stage]
            slow = ResStage(
                slow_in, SLOW_WIDTHS[stage + 1], depth, SLOW_TEMPORAL_KERNELS[stage], stride
            )
            fast = ResStage(
                FAST_WIDTHS[stage],
                FAST_WIDTHS[stage + 1],
                depth,
                FAST_TEMPORAL_KERNELS[stage],
                stride,
            )
            last = stage == len(STAGE_DEPTHS) - 1
            fusion = None if last else FuseFastToSlow(FAST_WIDTHS[stage + 1])
            blocks.append(MultiPathway([slow, fast], fusion))
        blocks.append(PoolConcat())
        blocks.append(Head(config.num_classes, config.dropout))
        self.blocks = nn.ModuleList(blocks)

    def forward_spatial(self, x: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """``[slow (B, 2048, T, H/32, W/32), fast (B, 256, 4T, H/32, W/32)]``: the res5 maps."""
        slow, fast = check_pathways(x)
        for block in self.blocks[:5]:
            slow, fast = block(slow, fast)
        return [slow, fast]

    def forward_features(self, x: Sequence[torch.Tensor]) -> torch.Tensor:
        """``(B, 2304)`` = [slow mean (2048) ‖ fast mean (256)]: the input of the projection."""
        slow, fast = self.forward_spatial(x)
        return self.blocks[5](slow, fast)

    def forward(self, x: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.blocks[6](self.forward_features(x))


def check_pathways(x: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate ``[slow, fast]`` without modifying the caller's list."""
    if isinstance(x, torch.Tensor) or len(x) != 2:
        raise ConfigError(
            "slowfast expects a list [slow (B, 3, T, H, W), fast (B, 3, 4T, H, W)]; "
            f"got {type(x).__name__}; build it with avda.extract.backbones.slowfast.pathways(clip)"
        )
    slow, fast = x
    if slow.dim() != 5 or fast.dim() != 5 or slow.shape[1] != 3 or fast.shape[1] != 3:
        raise ConfigError(
            "slowfast pathways must be (B, 3, T, H, W); got "
            f"slow {list(slow.shape)} and fast {list(fast.shape)}"
        )
    if fast.shape[2] != ALPHA * slow.shape[2] or slow.shape[3:] != fast.shape[3:]:
        raise ConfigError(
            f"slowfast needs fast frames = {ALPHA} x slow frames and equal H, W; got slow "
            f"{list(slow.shape)} and fast {list(fast.shape)}"
        )
    return slow, fast


def pathways(clip: torch.Tensor, *, slow_frames: int = 8) -> list[torch.Tensor]:
    """Split a normalised fast clip ``(B, 3, T, H, W)`` into ``[slow, fast]`` as PySlowFast does.

    Slow = frames ``linspace(0, T - 1, slow_frames).long()`` (e.g. 0, 4, 8, 13, 17, 22, 26, 31
    for T = 32): not a strict stride of 4.
    """
    index = torch.linspace(0, clip.shape[2] - 1, slow_frames).long().to(clip.device)
    return [clip.index_select(2, index), clip]


def _pack_pathways(clip: torch.Tensor) -> list[torch.Tensor]:
    """The normalised fast clip ``(B, 3, T, H, W)`` -> ``[slow (T / 4 frames), fast]``."""
    return pathways(clip, slow_frames=clip.shape[2] // ALPHA)


def _check_pathway_frames(spec: InputSpec, frames: int, *, recipe: str, backbone: str) -> None:
    if frames % ALPHA:
        raise ConfigError(
            f"recipe {recipe!r} samples {frames} frames per clip; {backbone} needs a multiple of "
            f"{ALPHA} (fast pathway = {ALPHA} x slow)"
        )


# Extraction builds the [slow, fast] input from one normalised clip of the recipe's frames.
register_input_layout(
    INPUT_SPEC.layout, InputLayout(pack=_pack_pathways, check_frames=_check_pathway_frames)
)


# ---------------------------------------------------------------------------------------------
# Checkpoint layouts

PYSLOWFAST_RULES: tuple[tuple[str, str], ...] = (
    (r"^s1\.pathway(\d)_stem\.conv\.", r"blocks.0.multipathway_blocks.\1.conv."),
    (r"^s1\.pathway(\d)_stem\.bn\.", r"blocks.0.multipathway_blocks.\1.norm."),
    (r"^s(\d)_fuse\.conv_f2s\.", r"fuse\1.multipathway_fusion.conv_fast_to_slow."),
    (r"^s(\d)_fuse\.bn\.", r"fuse\1.multipathway_fusion.norm."),
    (r"^s(\d)\.pathway(\d)_res(\d+)\.", r"stage\1.multipathway_blocks.\2.res_blocks.\3."),
    (r"\.branch1\.", ".branch1_conv."),
    (r"\.branch1_bn\.", ".branch1_norm."),
    (r"\.branch2\.([abc])\.", r".branch2.conv_\1."),
    (r"\.branch2\.([abc])_bn\.", r".branch2.norm_\1."),
    (r"^head\.projection\.", "blocks.6.proj."),
)


def pyslowfast_to_pytorchvideo(key: str) -> str:
    """``s2.pathway0_res0.branch2.a_bn.weight`` -> ``blocks.1.[...].branch2.norm_a.weight``.

    PySlowFast stage ``sK`` is pytorchvideo block ``K - 1`` (stem s1 = block 0).
    """
    key = regex_rename(key, PYSLOWFAST_RULES)
    return re.sub(r"^(?:fuse|stage)(\d)", lambda m: f"blocks.{int(m.group(1)) - 1}", key)


def _is_pytorchvideo(keys: Iterable[str]) -> bool:
    return "blocks.0.multipathway_blocks.0.conv.weight" in set(keys)


def _is_pyslowfast(keys: Iterable[str]) -> bool:
    return "s1.pathway0_stem.conv.weight" in set(keys)


def _from_pyslowfast(state_dict: StateDict) -> StateDict:
    return {pyslowfast_to_pytorchvideo(k): v for k, v in state_dict.items()}


LAYOUTS: tuple[Layout, ...] = (
    Layout(
        name="pytorchvideo",
        description="pytorchvideo slowfast_r50, e.g. 'blocks.0.multipathway_blocks.0.conv.weight'",
        detect=_is_pytorchvideo,
        convert=dict,
    ),
    Layout(
        name="pyslowfast",
        description="facebookresearch/SlowFast, e.g. 's1.pathway0_stem.conv.weight'",
        detect=_is_pyslowfast,
        convert=_from_pyslowfast,
    ),
)


@register("slowfast", model=SlowFast)
def slowfast(
    *,
    modality: str,
    weights: str | Path | None = None,
    num_classes: int = 400,
    dropout: float = 0.5,
) -> SlowFast:
    """SlowFast R50 8x8 for ``modality="rgb"``; returned in eval mode."""
    config = SlowFastConfig(modality=modality, num_classes=num_classes, dropout=dropout)
    model = SlowFast(config)
    if weights is not None:
        load_weights(
            model,
            weights,
            layouts=LAYOUTS,
            expected=f"SlowFast R50 8x8 rgb ({num_classes} classes)",
            hints=(num_classes_hint("blocks.6.proj.weight"),),
            model_name="slowfast rgb",
        )
    model.eval()
    return model
