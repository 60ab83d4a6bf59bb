"""I3D (Carreira & Zisserman 2017): Inception-v1 inflated to 3D, RGB or optical flow.

Native PyTorch re-implementation whose state dict keys are exactly those of
piergiaj/pytorch-i3d ``InceptionI3d`` (344 keys). The hassony2 / v-iashin layout and the DeepMind
TF variables load through explicit key maps (see ``LAYOUTS``).

Data flow for a clip ``(B, C, T, H, W)`` in [-1, 1]::

    Conv3d_1a_7x7 (s2) ─► MaxPool3d_2a ─► Conv3d_2b_1x1 ─► Conv3d_2c_3x3 ─► MaxPool3d_3a
    ─► Mixed_3b, 3c ─► MaxPool3d_4a ─► Mixed_4b..4f ─► MaxPool3d_5a ─► Mixed_5b, 5c
    ─► (B, 1024, ceil(T/8), ceil(H/32), ceil(W/32))          = forward_spatial
    ─► avg pool (2, 7, 7), stride 1 ─► mean over T', H', W'  = forward_features (B, 1024)
    ─► dropout ─► 1x1x1 conv (logits) ─► mean over T', H', W' = forward (B, num_classes)

Every conv and max-pool pads like TensorFlow "SAME", computed from the actual input size, so the
output matches DeepMind / piergiaj for any crop size.

Deviation (small inputs): the (2, 7, 7) average pool is clipped to the Mixed_5c map when the
map is smaller (kernel = min(kernel, map size) per dimension). At 224x224 with T >= 9 this is the
original pool; at 112x112 (map 4x4) it pools the whole 4x4 map, and T <= 8 (one time step)
pools that single step instead of failing as the original does.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from avda.errors import CheckpointError, ConfigError
from avda.extract.backbones import register
from avda.extract.backbones._base import Backbone, InputSpec
from avda.extract.backbones.weights import (
    Layout,
    PublishedWeights,
    StateDict,
    input_channels_hint,
    load_weights,
    native_state_dict,
    num_classes_hint,
)

Triple = tuple[int, int, int]

IN_CHANNELS: dict[str, int] = {"rgb": 3, "flow": 2}
NUM_FEATURES = 1024
BATCH_NORM_EPS = 1e-3  # TF / Sonnet v1 BatchNorm
BATCH_NORM_MOMENTUM = 0.01  # piergiaj; irrelevant for frozen evaluation
HEAD_POOL: Triple = (2, 7, 7)

# name -> (b0, b1a, b1b, b2a, b2b, b3b) output channels of the four branches.
INCEPTION_CHANNELS: dict[str, tuple[int, int, int, int, int, int]] = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}

# Endpoints in order: ("conv", out, kernel, stride) | ("pool", kernel, stride) | ("mixed",).
ENDPOINTS: tuple[tuple[str, tuple], ...] = (
    ("Conv3d_1a_7x7", ("conv", 64, (7, 7, 7), (2, 2, 2))),
    ("MaxPool3d_2a_3x3", ("pool", (1, 3, 3), (1, 2, 2))),
    ("Conv3d_2b_1x1", ("conv", 64, (1, 1, 1), (1, 1, 1))),
    ("Conv3d_2c_3x3", ("conv", 192, (3, 3, 3), (1, 1, 1))),
    ("MaxPool3d_3a_3x3", ("pool", (1, 3, 3), (1, 2, 2))),
    ("Mixed_3b", ("mixed",)),
    ("Mixed_3c", ("mixed",)),
    ("MaxPool3d_4a_3x3", ("pool", (3, 3, 3), (2, 2, 2))),
    ("Mixed_4b", ("mixed",)),
    ("Mixed_4c", ("mixed",)),
    ("Mixed_4d", ("mixed",)),
    ("Mixed_4e", ("mixed",)),
    ("Mixed_4f", ("mixed",)),
    ("MaxPool3d_5a_2x2", ("pool", (2, 2, 2), (2, 2, 2))),
    ("Mixed_5b", ("mixed",)),
    ("Mixed_5c", ("mixed",)),
)

INPUT_SPECS: dict[str, InputSpec] = {
    # DeepMind: 25 fps, shorter side 256, centre crop 224, x / 127.5 - 1. One 16-frame window
    # gives exactly one 1024-d vector (MM-SADA convention).
    "rgb": InputSpec(
        modality="rgb",
        layout="B C T H W",
        num_frames=16,
        frame_stride=1,
        size=(224, 224),
        resize_shorter=256,
        channel_order="RGB",
        scale=1 / 255,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        value_range=(-1.0, 1.0),
    ),
    # TV-L1 flow clipped to [-20, 20] px and quantised to uint8 around 128, then x / 255 * 2 - 1.
    "flow": InputSpec(
        modality="flow",
        layout="B C T H W",
        num_frames=16,
        frame_stride=1,
        size=(224, 224),
        resize_shorter=256,
        channel_order="uv",
        scale=1 / 255,
        mean=(0.5, 0.5),
        std=(0.5, 0.5),
        value_range=(-1.0, 1.0),
    ),
}


def _published() -> tuple[PublishedWeights, ...]:
    """The published I3D files (``avda weights fetch NAME``, then NAME or the file's path as
    weights)."""
    entries: list[PublishedWeights] = []
    for modality in ("rgb", "flow"):
        for variant, num_classes, notes in (
            ("imagenet", 400, "DeepMind ImageNet+Kinetics-400 weights converted by piergiaj"),
            ("charades", 157, "fine-tuned on Charades (157 classes, taken from the file)"),
        ):
            entries.append(
                PublishedWeights(
                    name=f"piergiaj_{modality}_{variant}",
                    file_name=f"models/{modality}_{variant}.pt",
                    source="https://github.com/piergiaj/pytorch-i3d",
                    licence="Apache-2.0",
                    modality=modality,
                    layout="piergiaj",
                    wrapping="plain state dict",
                    manifest=f"i3d_piergiaj_{modality}.json",
                    config={"num_classes": num_classes},
                    notes=notes,
                )
            )
        entries.append(
            PublishedWeights(
                name=f"hassony2_{modality}_imagenet",
                file_name=f"model/model_{modality}.pth (v-iashin: i3d_{modality}.pt)",
                source="https://github.com/hassony2/kinetics_i3d_pytorch",
                licence="MIT",
                modality=modality,
                layout="hassony2",
                wrapping="plain state dict",
                manifest=f"i3d_hassony2_{modality}.json",
                config={"num_classes": 400},
                notes="DeepMind weights converted by hassony2; also v-iashin/video_features",
            )
        )
        for variant in ("imagenet", "scratch"):
            entries.append(
                PublishedWeights(
                    name=f"deepmind_{modality}_{variant}",
                    file_name=f"data/checkpoints/{modality}_{variant}/model.ckpt",
                    source="https://github.com/deepmind/kinetics-i3d",
                    licence="Apache-2.0",
                    modality=modality,
                    layout="deepmind-tf",
                    wrapping="TF checkpoint: convert to an .npz of TF-named arrays first",
                    manifest=f"i3d_tf_deepmind_{modality}_{variant}.json",
                    config={"num_classes": 400},
                    notes="Kinetics-400; TF BatchNorm has no gamma (set to 1)",
                )
            )
    entries.append(
        PublishedWeights(
            name="deepmind_rgb_scratch_kin600",
            file_name="data/checkpoints/rgb_scratch_kin600/model.ckpt",
            source="https://github.com/deepmind/kinetics-i3d",
            licence="Apache-2.0",
            modality="rgb",
            layout="deepmind-tf",
            wrapping="TF checkpoint without scope: convert to an .npz of TF-named arrays first",
            manifest="i3d_tf_deepmind_rgb_scratch_kin600.json",
            config={"num_classes": 600},
            notes="Kinetics-600; BN variables stored as [1, 1, 1, 1, C]; Momentum slots ignored",
        )
    )
    return tuple(entries)


PUBLISHED: tuple[PublishedWeights, ...] = _published()


@dataclasses.dataclass(frozen=True, kw_only=True)
class I3DConfig:
    """``num_classes`` of the logits layer; ``dropout`` probability before it."""

    modality: str = "rgb"
    num_classes: int = 400
    dropout: float = 0.5

    def __post_init__(self) -> None:
        if self.modality not in IN_CHANNELS:
            raise ConfigError(
                f"i3d has no {self.modality!r} modality; valid: {', '.join(IN_CHANNELS)} "
                "(use audio_resnet18 or tbn for audio)"
            )
        if self.num_classes < 1:
            raise ConfigError(f"i3d num_classes must be >= 1, got {self.num_classes}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"i3d dropout must be in [0, 1), got {self.dropout}")

    @property
    def in_channels(self) -> int:
        return IN_CHANNELS[self.modality]


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "SAME" padding (front, back) for one dimension; the odd pixel goes to the back."""
    if size % stride == 0:
        total = max(kernel - stride, 0)
    else:
        total = max(kernel - size % stride, 0)
    return total // 2, total - total // 2


def pad_same(x: torch.Tensor, kernel: Triple, stride: Triple) -> torch.Tensor:
    """Zero-pad ``(B, C, T, H, W)`` so that a VALID conv/pool behaves like TF "SAME"."""
    pads: list[int] = []
    for size, k, s in zip(reversed(x.shape[2:]), reversed(kernel), reversed(stride), strict=True):
        pads.extend(same_padding(size, k, s))  # F.pad wants (W front, W back, H..., T...)
    if not any(pads):
        return x
    return F.pad(x, pads)


class Unit3D(nn.Module):
    """Conv3d (bias only in the logits layer) + BatchNorm (eps 1e-3) + ReLU, SAME padding."""

    CONV_BN = (("conv3d", "bn"),)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        kernel: Triple = (1, 1, 1),
        stride: Triple = (1, 1, 1),
        batch_norm: bool = True,
        activation: bool = True,
        bias: bool = False,
    ) -> None:
        super().__init__()
        self.kernel = kernel
        self.stride = stride
        self.activation = activation
        # With stride 1 and odd kernels SAME padding is symmetric: the conv pads by itself
        # (no padded copy of the input); otherwise pad_same pads before a VALID conv.
        self.symmetric = all(s == 1 for s in stride) and all(k % 2 == 1 for k in kernel)
        padding = tuple(k // 2 for k in kernel) if self.symmetric else 0
        self.conv3d = nn.Conv3d(in_channels, out_channels, kernel, stride, padding, bias=bias)
        self.bn = (
            nn.BatchNorm3d(out_channels, eps=BATCH_NORM_EPS, momentum=BATCH_NORM_MOMENTUM)
            if batch_norm
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(x if self.symmetric else pad_same(x, self.kernel, self.stride))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x, inplace=True) if self.activation else x


class MaxPool3dSame(nn.Module):
    """Max-pool with TF "SAME" padding; zero padding equals TF's here since inputs are post-ReLU.

    Pools in the input's dtype, as :class:`~avda.extract.backbones._base.MaxPool3d`.
    """

    def __init__(self, kernel: Triple, stride: Triple) -> None:
        super().__init__()
        self.kernel = kernel
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            stride_1 = all(s == 1 for s in self.stride) and all(k % 2 for k in self.kernel)
            if stride_1 and not (x.requires_grad and torch.is_grad_enabled()):  # out= maxima
                return separable_max_pool(x, self.kernel)
            padding = pool_padding(x.shape[2:], self.kernel, self.stride)
            if padding is not None:
                # The pool pads by itself (no padded copy): 1.3-4x faster than pad + pool on a
                # CPU. Its -inf padding equals zero padding on these non-negative inputs.
                return F.max_pool3d(x, self.kernel, self.stride, padding, ceil_mode=True)
            return F.max_pool3d(pad_same(x, self.kernel, self.stride), self.kernel, self.stride)


def separable_max_pool(x: torch.Tensor, kernel: Triple) -> torch.Tensor:
    """Stride-1 max-pool over odd ``kernel`` with symmetric (-inf) padding, one dim at a time.

    Equal to ``F.max_pool3d(x, kernel, 1, k // 2)``: a max over a box is the max over its rows
    of the max over its columns. Three passes of elementwise maxima replace 27 comparisons per
    output and the pool's int64 index tensor: 4x faster for the inception branches' 3x3x3 pools
    in bfloat16 on a CPU, as fast in float32.
    """
    for dim, k in zip((4, 3, 2), reversed(kernel), strict=True):
        if k == 1:
            continue
        out = x.clone()
        length = x.shape[dim]
        for shift in range(1, min(k // 2, length - 1) + 1):
            ahead, behind = (
                out.narrow(dim, 0, length - shift),
                out.narrow(dim, shift, length - shift),
            )
            torch.maximum(ahead, x.narrow(dim, shift, length - shift), out=ahead)
            torch.maximum(behind, x.narrow(dim, 0, length - shift), out=behind)
        x = out
    return x


def pool_padding(size: Sequence[int], kernel: Triple, stride: Triple) -> Triple | None:
    """Padding that makes ``max_pool3d(..., ceil_mode=True)`` take exactly TF "SAME"'s windows,
    or None when no such padding exists.

    SAME's windows start at ``i * stride - front``; a ceil-mode pool padded by ``front`` starts
    its windows there too and clips the last ones at the input's end (the "back" padding). Both
    give ``ceil(size / stride)`` outputs when ``back`` is ``front`` or ``front + 1``.
    """
    padding = []
    for length, k, s in zip(size, kernel, stride, strict=True):
        front, back = same_padding(length, k, s)
        if back - front not in (0, 1) or front > k // 2:
            return None
        out = -(-(length + 2 * front - k) // s) + 1  # PyTorch's ceil-mode output size
        if (out - 1) * s >= length + front:  # its last window may not start in the padding
            out -= 1
        if out != -(-length // s):
            return None
        padding.append(front)
    return tuple(padding)  # type: ignore[return-value]


class InceptionBlock(nn.Module):
    """Four branches concatenated on channels: 1x1 | 1x1-3x3 | 1x1-3x3 | maxpool 3x3-1x1."""

    def __init__(self, in_channels: int, channels: tuple[int, int, int, int, int, int]) -> None:
        super().__init__()
        c0, c1a, c1b, c2a, c2b, c3b = channels
        self.b0 = Unit3D(in_channels, c0)
        self.b1a = Unit3D(in_channels, c1a)
        self.b1b = Unit3D(c1a, c1b, kernel=(3, 3, 3))
        self.b2a = Unit3D(in_channels, c2a)
        self.b2b = Unit3D(c2a, c2b, kernel=(3, 3, 3))
        self.b3a = MaxPool3dSame((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(in_channels, c3b)
        self.out_channels = c0 + c1b + c2b + c3b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [
                self.b0(x),
                self.b1b(self.b1a(x)),
                self.b2b(self.b2a(x)),
                self.b3b(self.b3a(x)),
            ],
            dim=1,
        )


class I3D(Backbone):
    """InceptionI3d with piergiaj key names; see the module docstring for the data flow."""

    name = "i3d"
    num_features = NUM_FEATURES
    spatial_maps = True
    mmsada_pixels = True  # MM-SADA's x / 128 - 1 is I3D's [-1, 1] input

    def __init__(self, config: I3DConfig) -> None:
        super().__init__()
        self.config = config
        self.modality = config.modality
        self.input_spec = INPUT_SPECS[config.modality]
        # Registered first so the key order matches piergiaj's state dict.
        self.logits = Unit3D(
            NUM_FEATURES,
            config.num_classes,
            batch_norm=False,
            activation=False,
            bias=True,
        )
        self.endpoint_names: list[str] = []
        channels = config.in_channels
        for endpoint, spec in ENDPOINTS:
            if spec[0] == "conv":
                _, out_channels, kernel, stride = spec
                module: nn.Module = Unit3D(channels, out_channels, kernel=kernel, stride=stride)
                channels = out_channels
            elif spec[0] == "pool":
                _, kernel, stride = spec
                module = MaxPool3dSame(kernel, stride)
            else:
                module = InceptionBlock(channels, INCEPTION_CHANNELS[endpoint])
                channels = module.out_channels
            self.add_module(endpoint, module)
            self.endpoint_names.append(endpoint)
        self.dropout = nn.Dropout(config.dropout)

    def forward_spatial(self, x: torch.Tensor) -> torch.Tensor:
        """Mixed_5c map ``(B, 1024, ceil(T/8), ceil(H/32), ceil(W/32))``."""
        check_input(x, self.config.in_channels, self.modality)
        for endpoint in self.endpoint_names:
            x = getattr(self, endpoint)(x)
        return x

    def pooled(self, spatial: torch.Tensor) -> torch.Tensor:
        """The (2, 7, 7) stride-1 average pool, clipped to the map size (see module docstring)."""
        kernel = tuple(min(k, s) for k, s in zip(HEAD_POOL, spatial.shape[2:], strict=True))
        return F.avg_pool3d(spatial, kernel, stride=1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 1024)``: the avg-pool output averaged over its remaining time (and space) steps."""
        return self.pooled(self.forward_spatial(x)).mean(dim=(2, 3, 4))

    def features_and_map(self, maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features as :meth:`forward_features` and the Mixed_5c map averaged over time."""
        features = self.pooled(maps).mean(dim=(2, 3, 4))
        return features, maps.mean(dim=2)  # (B, C, T', H, W) -> (B, C, H, W)

    @classmethod
    def checkpoint_layouts(cls) -> tuple[Layout, ...]:
        return LAYOUTS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes)`` averaged over time, as DeepMind's TF model does."""
        pooled = self.pooled(self.forward_spatial(x))
        return self.logits(self.dropout(pooled)).mean(dim=(2, 3, 4))


def check_input(x: torch.Tensor, channels: int, modality: str) -> None:
    if x.dim() != 5 or x.shape[1] != channels:
        raise ConfigError(
            f"i3d {modality} expects a (B, {channels}, T, H, W) clip, got shape {list(x.shape)}"
        )


# ---------------------------------------------------------------------------------------------
# Checkpoint layouts


BRANCHES_HASSONY2: dict[str, str] = {
    "b0": "branch_0",
    "b1a": "branch_1.0",
    "b1b": "branch_1.1",
    "b2a": "branch_2.0",
    "b2b": "branch_2.1",
    "b3b": "branch_3.1",
}

BRANCHES_TF: dict[str, str] = {
    "Branch_0/Conv3d_0a_1x1": "b0",
    "Branch_1/Conv3d_0a_1x1": "b1a",
    "Branch_1/Conv3d_0b_3x3": "b1b",
    "Branch_2/Conv3d_0a_1x1": "b2a",
    "Branch_2/Conv3d_0b_3x3": "b2b",
    "Branch_2/Conv3d_0a_3x3": "b2b",  # the typo in DeepMind's Mixed_5b
    "Branch_3/Conv3d_0b_1x1": "b3b",
}

TF_VARIABLES: dict[str, str] = {
    "conv_3d/w": "conv3d.weight",
    "conv_3d/b": "conv3d.bias",
    "batch_norm/beta": "bn.bias",
    "batch_norm/moving_mean": "bn.running_mean",
    "batch_norm/moving_variance": "bn.running_var",
}

TF_SCOPES: dict[str, str] = {"RGB/inception_i3d/": "rgb", "Flow/inception_i3d/": "flow"}


def piergiaj_to_hassony2(key: str) -> str:
    """``Mixed_3b.b1a.bn.weight`` -> ``mixed_3b.branch_1.0.batch3d.weight`` (rename only)."""
    module, rest = key.split(".", 1)
    if module == "logits":
        return "conv3d_0c_1x1." + rest
    if module.startswith("Mixed"):
        branch, rest = rest.split(".", 1)
        module = f"{module.lower()}.{BRANCHES_HASSONY2[branch]}"
    else:
        module = module.lower()
    return f"{module}.{rest.replace('bn.', 'batch3d.', 1)}"


def tf_to_piergiaj(name: str) -> str | None:
    """A DeepMind TF variable name (scope already removed) -> piergiaj key; None if not a weight."""
    match = re.fullmatch(
        r"(Logits/Conv3d_0c_1x1|Conv3d_\w+|Mixed_\w+?/Branch_\d/\w+)/(\w+/\w+)", name
    )
    if match is None or match.group(2) not in TF_VARIABLES:
        return None
    module, variable = match.groups()
    if module.startswith("Logits"):
        module = "logits"
    elif module.startswith("Mixed"):
        block, branch = module.split("/", 1)
        module = f"{block}.{BRANCHES_TF[branch]}"
    return f"{module}.{TF_VARIABLES[variable]}"


def _is_piergiaj(keys: Iterable[str]) -> bool:
    return "Conv3d_1a_7x7.conv3d.weight" in set(keys)


def _is_hassony2(keys: Iterable[str]) -> bool:
    return "conv3d_1a_7x7.conv3d.weight" in set(keys)


def _is_tf(keys: Iterable[str]) -> bool:
    return any(k.endswith("Conv3d_1a_7x7/conv_3d/w") for k in keys)


def _from_hassony2(state_dict: StateDict) -> StateDict:
    """Rename through the inverse of :func:`piergiaj_to_hassony2`; unknown keys pass through
    unchanged (and are then reported as unexpected)."""
    inverse = {piergiaj_to_hassony2(k): k for k in _KEY_TEMPLATE}
    return {inverse.get(k, k): v for k, v in state_dict.items()}


def _from_tf(state_dict: StateDict) -> StateDict:
    """Strip the scope, drop optimizer slots, transpose conv weights, set BN gamma to 1."""
    out: StateDict = {}
    for name, value in state_dict.items():
        for scope in TF_SCOPES:
            if name.startswith(scope):
                name = name[len(scope) :]
                break
        if name.endswith("/Momentum") or name == "global_step":
            continue
        key = tf_to_piergiaj(name)
        if key is None:
            raise CheckpointError(
                f"TF variable {name!r} is not part of the I3D graph; expected names like "
                "'RGB/inception_i3d/Mixed_3b/Branch_0/Conv3d_0a_1x1/conv_3d/w'"
            )
        if key.endswith("conv3d.weight"):
            # [kT, kH, kW, Cin, Cout] -> [Cout, Cin, kT, kH, kW]
            value = value.permute(4, 3, 0, 1, 2).contiguous()
        else:
            # [C]; the Kinetics-600 file stores BN variables as [1, 1, 1, 1, C]
            value = value.reshape(-1)
        out[key] = value
        if key.endswith("bn.bias"):
            out[key.replace("bn.bias", "bn.weight")] = torch.ones_like(value)
    return out


# Key names do not depend on modality or class count; computed once from a meta-device model.
with torch.device("meta"):
    _KEY_TEMPLATE: list[str] = list(I3D(I3DConfig()).state_dict())

LAYOUTS: tuple[Layout, ...] = (
    Layout(
        name="piergiaj",
        description="piergiaj/pytorch-i3d InceptionI3d, e.g. 'Mixed_3b.b0.conv3d.weight'",
        detect=_is_piergiaj,
        convert=dict,
    ),
    Layout(
        name="hassony2",
        description="hassony2/kinetics_i3d_pytorch and v-iashin/video_features, "
        "e.g. 'mixed_3b.branch_0.conv3d.weight'",
        detect=_is_hassony2,
        convert=_from_hassony2,
    ),
    Layout(
        name="deepmind-tf",
        description="DeepMind kinetics-i3d TF variables as arrays, "
        "e.g. 'RGB/inception_i3d/Mixed_3b/Branch_0/Conv3d_0a_1x1/conv_3d/w'",
        detect=_is_tf,
        convert=_from_tf,
    ),
)


@register("i3d", model=I3D)
def i3d(
    *,
    modality: str,
    weights: str | Path | None = None,
    num_classes: int | None = None,
    dropout: float = 0.5,
) -> I3D:
    """I3D for ``modality`` "rgb" (3 channels) or "flow" (2 channels, u/v).

    ``weights`` may be any layout in ``LAYOUTS``; it is auto-detected from the keys.
    ``num_classes``: the logits layer's classes; None: the file's (Charades' 157, Kinetics-600's
    600: the features do not depend on it), else 400 (Kinetics-400). A number the file does
    not have is refused with the file's count.
    """
    native = None
    if weights is not None:
        native = native_state_dict(weights, LAYOUTS, model_name=f"i3d {modality}")
        logits = native[0].get("logits.conv3d.weight")
        if num_classes is None and logits is not None:
            num_classes = int(logits.shape[0])
    num_classes = 400 if num_classes is None else num_classes
    config = I3DConfig(modality=modality, num_classes=num_classes, dropout=dropout)
    model = I3D(config)
    if weights is not None:
        load_weights(
            model,
            weights,
            layouts=LAYOUTS,
            expected=f"I3D {modality} ({config.in_channels} input channels, {num_classes} classes)",
            hints=(
                input_channels_hint(
                    "Conv3d_1a_7x7.conv3d.weight", {v: k for k, v in IN_CHANNELS.items()}
                ),
                num_classes_hint("logits.conv3d.weight"),
            ),
            model_name=f"i3d {modality}",
            native=native,
        )
    model.eval()
    return model
