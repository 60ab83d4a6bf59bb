"""mmaction2's SlowFast 8x8 (R50 and R101), RGB, loading mmaction2 checkpoints as published.

Audio-Adaptive (Zhang et al. CVPR22) extracts with mmaction2's
``slowfast_r101_8x8x1_256e_kinetics400_rgb`` (docs/extraction.md section 9). This module is a
native transcription of mmaction2 0.x ``ResNet3dSlowFast`` (``resnet3d_slowfast.py``,
``resnet3d.py``; identical in the authors' vendored copy, mmaction2 0.12.0) and of its
``SlowFastHead``, built as those configs build it; its module tree, and so its state dict keys,
are those of mmaction2's ``Recognizer3D``: ``backbone.slow_path.*``, ``backbone.fast_path.*``,
``cls_head.fc_cls.*``. A published ``.pth`` (``{'meta': ..., 'state_dict': ...}``) loads
without any rename.

Data flow for one clip ``(B, 3, T, H, W)``, T = 32 (normalised RGB)::

    slow = frames 0, 4, ..., T - 4 of the clip   (interpolate(mode='nearest', scale 1/4))
    fast = all T frames                          (resample_rate // speed_ratio = 1)
    conv1  stems: slow conv (1,7,7) 64 | fast conv (5,7,7) 8, both s(1,2,2), BN, ReLU
           + maxpool (1,3,3) s(1,2,2)
           conv1_lateral: fast ─conv (7,1,1) s(4,1,1), no BN, no ReLU─► 16 ─► cat to slow
    layer1 (3 bottlenecks)                       + layer1_lateral 32 ─► 64
    layer2 (4 bottlenecks, s2)                   + layer2_lateral 64 ─► 128
    layer3 (6 | 23 bottlenecks, s2)              + layer3_lateral 128 ─► 256
    layer4 (3 bottlenecks, s2)
           ─► [slow (B, 2048, T/4, H/32, W/32), fast (B, 256, T, H/32, W/32)] = forward_spatial
    average pool per pathway, [slow ‖ fast]  ─► (B, 2304)                  = forward_features
      (``slowfast-r{50,101}-mmaction-max``: the maximum over T, H, W per pathway instead, as
      Audio-Adaptive's recognizer reads it: ``F.adaptive_max_pool3d(x, (1, 1, 1))`` of slow and
      of fast, ``cat((x_slow, x_fast), dim=1)``, ``train_recognizer.py`` l. 117-121)
    cls_head: dropout ─► fc_cls on [fast ‖ slow] of the averages (mmaction2's SlowFastHead
      order; both poolings)                                                = forward

Widths: slow 64/256/512/1024/2048, fast 8/32/64/128/256; a slow stage takes its input plus
the lateral channels (80, 320, 640, 1280). Temporal kernel of ``conv1`` in the bottlenecks:
slow 1, 1, 3, 3 (``inflate=(0, 0, 1, 1)``); fast 3 everywhere.

What differs from avda's ``slowfast`` (PySlowFast / pytorchvideo R50): the laterals have no
BatchNorm and no ReLU; the slow frames are a strict stride of 4 (PySlowFast: ``linspace``);
pixels are normalised with ImageNet's mean and std on 0-255 RGB; depth 101 is available.
"""

from __future__ import annotations

import dataclasses
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
    Hint,
    Layout,
    PublishedWeights,
    load_weights,
    num_classes_hint,
)

NUM_FEATURES = 2304  # slow 2048 + fast 256
POOLINGS = ("avg", "max")  # forward_features: the mean or the maximum of layer4 over T, H, W
RESAMPLE_RATE = 4  # tau: slow frames = every 4th frame of the clip
SPEED_RATIO = 4  # alpha: fast frames per slow frame
CHANNEL_RATIO = 8  # 1 / beta
FUSION_KERNEL = 7  # both 8x8 configs set slow_pathway fusion_kernel=7 (the 4x16 ones: 5)
BASE_CHANNELS = {"slow": 64, "fast": 8}
EXPANSION = 4
STAGE_DEPTHS: dict[int, tuple[int, ...]] = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
SPATIAL_STRIDES: tuple[int, ...] = (1, 2, 2, 2)
INFLATE = {"slow": (0, 0, 1, 1), "fast": (1, 1, 1, 1)}
STEM_TEMPORAL_KERNEL = {"slow": 1, "fast": 5}

INPUT_SPEC = InputSpec(
    # mmaction2 slowfast_r{50,101}_8x8x1 configs: SampleFrames(clip_len=32, frame_interval=2),
    # Resize(-1, 256), test ThreeCrop(256) (val CenterCrop(224)), Normalize(mean=[123.675,
    # 116.28, 103.53], std=[58.395, 57.12, 57.375], to_bgr=False) on 0-255 RGB.
    modality="rgb",
    layout="B C 4T H W",
    num_frames=32,
    frame_stride=2,
    size=(256, 256),
    resize_shorter=256,
    channel_order="RGB",
    scale=1.0,
    mean=(123.675, 116.28, 103.53),
    std=(58.395, 57.12, 57.375),
    value_range=(-123.675 / 58.395, (255 - 103.53) / 57.375),
)

_PAGE = "https://github.com/open-mmlab/mmaction2/tree/0.x/configs/recognition/slowfast"
_DOWNLOAD = "https://download.openmmlab.com/mmaction/recognition/slowfast"


def _published(depth: int, stamp: str, notes: str) -> PublishedWeights:
    config = f"slowfast_r{depth}_8x8x1_256e_kinetics400_rgb"
    return PublishedWeights(
        name=f"mmaction2_slowfast_r{depth}_8x8_kinetics400",
        file_name=f"{config}_{stamp}.pth",
        source=f"{_DOWNLOAD}/{config}/{config}_{stamp}.pth ({_PAGE})",
        licence="Apache-2.0",
        modality="rgb",
        layout=f"mmaction2-r{depth}",
        wrapping="{'meta': {...}, 'state_dict': {'backbone.' + key, 'cls_head.fc_cls.*'}}",
        manifest=f"mmaction2_slowfast_r{depth}_8x8.json",
        config={"num_classes": 400},
        notes=notes,
    )


PUBLISHED: dict[int, tuple[PublishedWeights, ...]] = {
    50: (
        _published(50, "20200716-73547d2b", "Kinetics-400 top-1 76.94 (mmaction2 0.x model zoo)"),
    ),
    101: (
        _published(
            101,
            "20210218-0dd54025",
            "Kinetics-400 top-1 77.9 (mmaction2 0.x model zoo); Audio-Adaptive's visual network",
        ),
    ),
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class MMActionSlowFastConfig:
    """``depth`` 50 or 101; ``num_classes`` of ``fc_cls``; ``dropout`` before it; ``pooling``
    of the features: ``avg`` (mmaction2's ``SlowFastHead``) or ``max`` (Audio-Adaptive's
    recognizer input)."""

    modality: str = "rgb"
    depth: int = 101
    num_classes: int = 400
    dropout: float = 0.5
    pooling: str = "avg"

    @property
    def name(self) -> str:
        return backbone_name(self.depth, self.pooling)

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ConfigError(
                f"mmaction2 SlowFast pooling must be one of {', '.join(POOLINGS)}, "
                f"got {self.pooling!r}"
            )
        name = self.name
        if self.modality != "rgb":
            raise ConfigError(
                f"{name} takes only modality 'rgb', got {self.modality!r}; "
                "use i3d or tbn for flow, audio_resnet18 or tbn for audio"
            )
        if self.depth not in STAGE_DEPTHS:
            raise ConfigError(f"mmaction2 SlowFast depth must be 50 or 101, got {self.depth}")
        if self.num_classes < 1:
            raise ConfigError(f"{name} num_classes must be >= 1, got {self.num_classes}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"{name} dropout must be in [0, 1), got {self.dropout}")


class ConvModule(nn.Module):
    """mmcv's ``ConvModule``: ``conv`` (no bias) ─► ``bn`` ─► ``activate`` (each optional)."""

    CONV_BN = (("conv", "bn"),)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: tuple[int, int, int],
        *,
        stride: tuple[int, int, int] = (1, 1, 1),
        padding: tuple[int, int, int] = (0, 0, 0),
        norm: bool = True,
        act: bool = True,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv3d(
            in_channels, out_channels, kernel, stride=stride, padding=padding, bias=False
        )
        self.bn: nn.Module | None = (
            nn.BatchNorm3d(out_channels, eps=1e-5, momentum=0.1) if norm else None
        )
        self.activate: nn.Module | None = nn.ReLU(inplace=True) if act else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        if self.activate is not None:
            x = self.activate(x)
        return x


class Bottleneck3d(nn.Module):
    """mmaction2's ``Bottleneck3d`` (style 'pytorch', inflate_style '3x1x1'):
    conv1 (kT, 1, 1) ─► conv2 (1, 3, 3) with the spatial stride ─► conv3 (1, 1, 1), + shortcut
    (``downsample``: 1x1x1 conv + BN where the shape changes), then ReLU."""

    RESIDUAL_BN = ("conv3.bn",)  # random init: a small scale (init_random_features_)

    def __init__(
        self, in_channels: int, planes: int, stride: int, inflate: bool, downsample: bool
    ) -> None:
        super().__init__()
        kt = 3 if inflate else 1
        self.conv1 = ConvModule(in_channels, planes, (kt, 1, 1), padding=(kt // 2, 0, 0))
        self.conv2 = ConvModule(
            planes, planes, (1, 3, 3), stride=(1, stride, stride), padding=(0, 1, 1)
        )
        self.conv3 = ConvModule(planes, planes * EXPANSION, (1, 1, 1), act=False)
        self.downsample = (
            ConvModule(
                in_channels, planes * EXPANSION, (1, 1, 1), stride=(1, stride, stride), act=False
            )
            if downsample
            else None
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.conv3(self.conv2(self.conv1(x)))
        out += identity
        return self.relu(out)


def _lateral(fast_channels: int) -> ConvModule:
    """``ResNet3dPathway`` lateral: conv (7, 1, 1) stride (4, 1, 1) to 2x the fast channels,
    without BN or ReLU (``lateral_norm=False``; the authors' 0.12 copy has no such option)."""
    return ConvModule(
        fast_channels,
        fast_channels * 2,
        (FUSION_KERNEL, 1, 1),
        stride=(SPEED_RATIO, 1, 1),
        padding=((FUSION_KERNEL - 1) // 2, 0, 0),
        norm=False,
        act=False,
    )


class Pathway(nn.Module):
    """mmaction2's ``ResNet3dPathway``: ``conv1``, ``maxpool``, ``layer1..4`` and, for the slow
    pathway, ``conv1_lateral`` and ``layer1_lateral..layer3_lateral`` (fed by the fast one)."""

    def __init__(self, pathway: str, depth: int) -> None:
        super().__init__()
        base = BASE_CHANNELS[pathway]
        lateral = pathway == "slow"
        kt = STEM_TEMPORAL_KERNEL[pathway]
        self.conv1 = ConvModule(
            3, base, (kt, 7, 7), stride=(1, 2, 2), padding=((kt - 1) // 2, 3, 3)
        )
        self.maxpool = MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))
        inplanes = base
        laterals = [base]  # the slow channels whose 1/8 the fast pathway has at each fusion
        for stage, blocks in enumerate(STAGE_DEPTHS[depth]):
            planes = base * 2**stage
            # The slow stage also takes the lateral's channels (mmaction2: inplanes * 2 //
            # channel_ratio), 2x the fast pathway's at that point.
            extra = inplanes * 2 // CHANNEL_RATIO if lateral else 0
            stride = SPATIAL_STRIDES[stage]
            inflate = INFLATE[pathway][stage] == 1
            first_in = inplanes + extra
            layer = nn.Sequential(
                *(
                    Bottleneck3d(
                        first_in if index == 0 else planes * EXPANSION,
                        planes,
                        stride if index == 0 else 1,
                        inflate,
                        downsample=index == 0 and (stride != 1 or first_in != planes * EXPANSION),
                    )
                    for index in range(blocks)
                )
            )
            self.add_module(f"layer{stage + 1}", layer)
            inplanes = planes * EXPANSION
            laterals.append(inplanes)
        if lateral:  # registered after the stages, as mmaction2 does (the state dict's order)
            self.conv1_lateral = _lateral(laterals[0] // CHANNEL_RATIO)
            for stage, channels in enumerate(laterals[1:-1], start=1):  # none after layer4
                self.add_module(f"layer{stage}_lateral", _lateral(channels // CHANNEL_RATIO))

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.conv1(x))


class ResNet3dSlowFast(nn.Module):
    """mmaction2's ``ResNet3dSlowFast`` forward (``resample_rate=4``, ``speed_ratio=4``)."""

    def __init__(self, depth: int) -> None:
        super().__init__()
        self.slow_path = Pathway("slow", depth)
        self.fast_path = Pathway("fast", depth)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        slow = self.slow_path.stem(slow_frames(x))
        fast = self.fast_path.stem(x)
        slow = torch.cat([slow, self.slow_path.conv1_lateral(fast)], dim=1)
        for stage in range(1, 5):
            slow = getattr(self.slow_path, f"layer{stage}")(slow)
            fast = getattr(self.fast_path, f"layer{stage}")(fast)
            if stage < 4:
                lateral = getattr(self.slow_path, f"layer{stage}_lateral")(fast)
                slow = torch.cat([slow, lateral], dim=1)
        return [slow, fast]


class SlowFastHead(nn.Module):
    """mmaction2's ``SlowFastHead``: average pools, dropout, ``fc_cls`` on [fast ‖ slow]."""

    def __init__(self, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc_cls = nn.Linear(NUM_FEATURES, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        slow, fast = features.split([NUM_FEATURES - 256, 256], dim=1)
        return self.fc_cls(self.dropout(torch.cat([fast, slow], dim=1)))


class MMActionSlowFast(Backbone):
    """mmaction2's SlowFast 8x8 (R50 / R101) with mmaction2's key names; see the module
    docstring."""

    modality = "rgb"
    num_features = NUM_FEATURES

    @classmethod
    def checkpoint_layouts(cls) -> tuple[Layout, ...]:
        return (LAYOUTS[cls.depth],)

    depth = 101
    pooling = "avg"  # of forward_features (the class's; its builder's config says the same)

    def __init__(self, config: MMActionSlowFastConfig) -> None:
        super().__init__()
        self.config = config
        self.name = config.name
        self.input_spec = INPUT_SPEC
        self.backbone = ResNet3dSlowFast(config.depth)
        self.cls_head = SlowFastHead(config.num_classes, config.dropout)

    def forward_spatial(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``[slow (B, 2048, T/4, H/32, W/32), fast (B, 256, T, H/32, W/32)]``: layer4."""
        return self.backbone(check_clip(x, self.name))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 2304)`` = [slow (2048) ‖ fast (256)], each pathway's ``layer4`` map pooled over
        T, H, W: the mean (``avg``, as avda's ``slowfast``) or the maximum (``max``)."""
        return pool_pathways(self.forward_spatial(x), self.config.pooling)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """mmaction2's class scores (before softmax) for the clip (its head averages, whatever
        the features' pooling)."""
        return self.cls_head(pool_pathways(self.forward_spatial(x), "avg"))


def pool_pathways(maps: Sequence[torch.Tensor], pooling: str) -> torch.Tensor:
    """``[slow ‖ fast]`` of the ``(B, C, T, H, W)`` maps, each reduced over T, H, W jointly."""
    if pooling == "max":
        return torch.cat([m.amax(dim=(2, 3, 4)) for m in maps], dim=1)
    return torch.cat([m.mean(dim=(2, 3, 4)) for m in maps], dim=1)


def backbone_name(depth: int, pooling: str) -> str:
    """``slowfast-r101-mmaction`` (average), ``slowfast-r101-mmaction-max`` (maximum)."""
    return f"slowfast-r{depth}-mmaction" + ("-max" if pooling == "max" else "")


class MMActionSlowFastR50(MMActionSlowFast):
    depth = 50


class MMActionSlowFastR101(MMActionSlowFast):
    depth = 101


class MMActionSlowFastR50Max(MMActionSlowFastR50):
    pooling = "max"


class MMActionSlowFastR101Max(MMActionSlowFastR101):
    pooling = "max"


MODELS: dict[tuple[int, str], type[MMActionSlowFast]] = {
    (50, "avg"): MMActionSlowFastR50,
    (101, "avg"): MMActionSlowFastR101,
    (50, "max"): MMActionSlowFastR50Max,
    (101, "max"): MMActionSlowFastR101Max,
}


def slow_frames(clip: torch.Tensor) -> torch.Tensor:
    """The slow pathway's frames: ``interpolate(mode='nearest', scale_factor=(1/4, 1, 1))``
    keeps frames ``0, 4, ..., 4 * (T // 4 - 1)``; the same frames by slicing (a view)."""
    return clip[:, :, : (clip.shape[2] // RESAMPLE_RATE) * RESAMPLE_RATE : RESAMPLE_RATE]


def check_clip(x: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dim() != 5 or x.shape[1] != 3:
        shape = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ConfigError(f"{name} expects one clip (B, 3, T, H, W); got {shape}")
    if x.shape[2] < RESAMPLE_RATE or x.shape[2] % RESAMPLE_RATE:
        raise ConfigError(
            f"{name} needs T a multiple of {RESAMPLE_RATE} (slow = every {RESAMPLE_RATE}th "
            f"frame); got T = {x.shape[2]}"
        )
    return x


def _check_frames(spec: InputSpec, frames: int, *, recipe: str, backbone: str) -> None:
    if frames < RESAMPLE_RATE or frames % RESAMPLE_RATE:
        raise ConfigError(
            f"recipe {recipe!r} samples {frames} frames per clip; {backbone} needs a multiple of "
            f"{RESAMPLE_RATE} (slow pathway = every {RESAMPLE_RATE}th frame)"
        )


# One clip goes in whole; the model picks the slow frames itself, as mmaction2's does.
register_input_layout(INPUT_SPEC.layout, InputLayout(check_frames=_check_frames))


# ---------------------------------------------------------------------------------------------
# Checkpoint layout: mmaction2's Recognizer3D state dict, unchanged

MMACTION_KEY = "backbone.slow_path.conv1.conv.weight"
R101_KEY = "backbone.slow_path.layer3.22.conv3.conv.weight"  # the 23rd res4 block


def _is_mmaction(keys: Iterable[str], depth: int) -> bool:
    keys = set(keys)
    return MMACTION_KEY in keys and (R101_KEY in keys) == (depth == 101)


def _lateral_kernel_hint(name: str, file_shape: tuple[int, ...], model_shape: tuple[int, ...]):
    if "lateral" not in name or len(file_shape) != 5 or file_shape[2] == model_shape[2]:
        return None
    return (
        f"The file's lateral convs have a temporal kernel of {file_shape[2]}: a 4x16 "
        f"checkpoint (fusion_kernel={file_shape[2]}, alpha 8); avda implements the 8x8 "
        "configs (slowfast_r50_8x8x1 / slowfast_r101_8x8x1) only"
    )


LAYOUTS: dict[int, Layout] = {
    depth: Layout(
        name=f"mmaction2-r{depth}",
        description=f"mmaction2 0.x Recognizer3D with ResNet3dSlowFast depth {depth}, e.g. "
        f"{MMACTION_KEY!r}",
        detect=lambda keys, depth=depth: _is_mmaction(keys, depth),
        convert=dict,
    )
    for depth in STAGE_DEPTHS
}


def _build(
    depth: int,
    modality: str,
    weights: str | Path | None,
    num_classes: int,
    dropout: float,
    pooling: str = "avg",
) -> MMActionSlowFast:
    config = MMActionSlowFastConfig(
        modality=modality, depth=depth, num_classes=num_classes, dropout=dropout, pooling=pooling
    )
    model = MODELS[depth, pooling](config)
    if weights is not None:
        hints: Sequence[Hint] = (num_classes_hint("cls_head.fc_cls.weight"), _lateral_kernel_hint)
        load_weights(
            model,
            weights,
            layouts=(LAYOUTS[depth],),
            expected=f"mmaction2 SlowFast R{depth} 8x8 rgb ({num_classes} classes)",
            hints=hints,
            model_name=model.name,
        )
    model.eval()
    return model


@register("slowfast-r101-mmaction", model=MMActionSlowFastR101)
def slowfast_r101_mmaction(
    *,
    modality: str,
    weights: str | Path | None = None,
    num_classes: int = 400,
    dropout: float = 0.5,
) -> MMActionSlowFast:
    """mmaction2's SlowFast R101 8x8 for ``modality="rgb"`` (Audio-Adaptive's); eval mode."""
    return _build(101, modality, weights, num_classes, dropout)


@register("slowfast-r50-mmaction", model=MMActionSlowFastR50)
def slowfast_r50_mmaction(
    *,
    modality: str,
    weights: str | Path | None = None,
    num_classes: int = 400,
    dropout: float = 0.5,
) -> MMActionSlowFast:
    """mmaction2's SlowFast R50 8x8 for ``modality="rgb"``; eval mode."""
    return _build(50, modality, weights, num_classes, dropout)


@register("slowfast-r101-mmaction-max", model=MMActionSlowFastR101Max)
def slowfast_r101_mmaction_max(
    *,
    modality: str,
    weights: str | Path | None = None,
    num_classes: int = 400,
    dropout: float = 0.5,
) -> MMActionSlowFast:
    """slowfast-r101-mmaction whose features are each pathway's ``layer4`` maximum, as
    Audio-Adaptive's recognizer pools them (``F.adaptive_max_pool3d``); eval mode."""
    return _build(101, modality, weights, num_classes, dropout, pooling="max")


@register("slowfast-r50-mmaction-max", model=MMActionSlowFastR50Max)
def slowfast_r50_mmaction_max(
    *,
    modality: str,
    weights: str | Path | None = None,
    num_classes: int = 400,
    dropout: float = 0.5,
) -> MMActionSlowFast:
    """slowfast-r50-mmaction whose features are each pathway's ``layer4`` maximum; eval mode."""
    return _build(50, modality, weights, num_classes, dropout, pooling="max")
