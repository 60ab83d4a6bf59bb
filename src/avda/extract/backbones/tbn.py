"""TBN / EPIC-Fusion (Kazakos et al. 2019): one BN-Inception per modality.

Native re-implementation of the TSN BN-Inception graph (``bn_inception.yaml``) with its Caffe
layer names, so the keys are exactly those of one stream of the published TBN checkpoint
(``rgb.*``, ``flow.*`` or ``spec.*``) and of the ImageNet BN-Inception file. All convs have a
bias; BatchNorm eps 1e-5; all pools are Caffe-style (``ceil_mode=True``); every branch output
is post-ReLU.

Data flow for one snippet, ``(B, C, 224, 224)`` (audio: ``(B, 1, 256, 256)``)::

    conv1_7x7_s2 ─► pool1 ─► conv2_3x3_reduce ─► conv2_3x3 ─► pool2
    ─► inception_3a, 3b, 3c (s2) ─► inception_4a..4d, 4e (s2) ─► inception_5a, 5b
    ─► (B, 1024, 7, 7)  [audio: (B, 1024, 8, 8)]      = forward_spatial
    ─► global pool: AvgPool 7 stride 1 [audio: AvgPool 8] ─► (B, 1024) = forward_features
    ─► fc (only with num_classes, e.g. the ImageNet file) = forward

Each inception block concatenates ``1x1 | 3x3_reduce-3x3 | double_3x3_reduce-1-2 | pool-proj``;
the stride-2 blocks (3c, 4e) have no 1x1 and pass the max-pooled input through unprojected.

TBN's fusion head (``fusion_classification_net``) takes all three streams; a per-modality
backbone ignores it, so ``forward`` returns the features unless ``num_classes`` is given.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable
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
    num_classes_hint,
    select_prefix,
)

log = logging.getLogger(__name__)

NUM_FEATURES = 1024
IN_CHANNELS: dict[str, int] = {"rgb": 3, "flow": 10, "audio": 1}
# The TBN checkpoint names its audio stream "spec".
STREAM_PREFIX: dict[str, str] = {"rgb": "rgb.", "flow": "flow.", "audio": "spec."}
FINAL_POOL: dict[str, int] = {"rgb": 7, "flow": 7, "audio": 8}


@dataclasses.dataclass(frozen=True)
class InceptionSpec:
    """Output channels of one block; ``None`` where the branch does not exist."""

    name: str
    one: int | None
    reduce: int
    three: int
    double_reduce: int
    double: int
    pool: str  # "avg" (3, s1, p1), "max" (3, s1, p1) or "max_s2" (3, s2, unprojected)
    proj: int | None

    @property
    def stride(self) -> int:
        return 2 if self.pool == "max_s2" else 1


BLOCKS: tuple[InceptionSpec, ...] = (
    InceptionSpec("inception_3a", 64, 64, 64, 64, 96, "avg", 32),
    InceptionSpec("inception_3b", 64, 64, 96, 64, 96, "avg", 64),
    InceptionSpec("inception_3c", None, 128, 160, 64, 96, "max_s2", None),
    InceptionSpec("inception_4a", 224, 64, 96, 96, 128, "avg", 128),
    InceptionSpec("inception_4b", 192, 96, 128, 96, 128, "avg", 128),
    InceptionSpec("inception_4c", 160, 128, 160, 128, 160, "avg", 128),
    InceptionSpec("inception_4d", 96, 128, 192, 160, 192, "avg", 128),
    InceptionSpec("inception_4e", None, 128, 192, 192, 256, "max_s2", None),
    InceptionSpec("inception_5a", 352, 192, 320, 160, 224, "avg", 128),
    InceptionSpec("inception_5b", 352, 192, 320, 192, 224, "max", 128),
)

INPUT_SPECS: dict[str, InputSpec] = {
    # TSN/TBN test: shorter side 256, centre crop 224, BGR 0..255 minus the Caffe mean.
    "rgb": InputSpec(
        modality="rgb",
        layout="B C H W",
        num_frames=1,
        frame_stride=1,
        size=(224, 224),
        resize_shorter=256,
        channel_order="BGR",
        scale=1.0,
        mean=(104.0, 117.0, 128.0),
        std=(1.0, 1.0, 1.0),
        value_range=(-128.0, 151.0),
    ),
    # 5 consecutive flow frames stacked as [x_t, y_t, x_t+1, y_t+1, ...], uint8 JPEGs minus 128.
    "flow": InputSpec(
        modality="flow",
        layout="B C H W",
        num_frames=5,
        frame_stride=1,
        size=(224, 224),
        resize_shorter=256,
        channel_order="uv",
        scale=1.0,
        mean=(128.0,) * 10,
        std=(1.0,) * 10,
        value_range=(-128.0, 127.0),
    ),
    # librosa-style log power spectrogram of a 1.279 s window at 24 kHz, not normalised.
    "audio": InputSpec(
        modality="audio",
        layout="B 1 F T",
        size=(256, 256),
        sample_rate=24000,
        clip_seconds=1.279,
        spectrogram={
            "kind": "stft",
            "n_fft": 511,
            "hop_length": 120,
            "win_length": 240,
            "window": "hann",
            "center": True,
            "pad_mode": "constant",
            "power": 2,
            "log_offset": 1e-6,
            "window_seconds": 1.278,
            "edge_window_samples": 30696,
            "shape": [256, 256],
            "normalise": "none",
        },
    ),
}

PUBLISHED: tuple[PublishedWeights, ...] = tuple(
    PublishedWeights(
        name=f"tbn_{dataset}_{modality}",
        file_name=f"TBN-epic-kitchens-{number}.pth",
        source="https://github.com/ekazakos/temporal-binding-network (README, Dropbox)",
        licence="CC BY-NC-SA 4.0",
        modality=modality,
        layout="tbn",
        wrapping="{'epoch', 'arch', 'state_dict': {'module.' + key}, 'best_prec1'}",
        manifest=f"tbn_{dataset}_rgb_flow_spec_concat.json",
        config={},
        notes=f"EPIC-KITCHENS-{number} RGB+Flow+Spec TBN; the {prefix} stream is used",
    )
    for dataset, number in (("epic55", 55), ("epic100", 100))
    for modality, prefix in STREAM_PREFIX.items()
) + (
    PublishedWeights(
        name="bninception_imagenet_rgb",
        file_name="bn_inception-9f5701afb96c8044.pth",
        source="https://yjxiong.blob.core.windows.net/models/ (TSN)",
        licence="see TSN (yjxiong/tsn-pytorch)",
        modality="rgb",
        layout="bninception",
        wrapping="plain state dict; BN parameters stored as [1, C]",
        manifest="bninception_imagenet_tsn.json",
        config={"num_classes": 1000},
        notes="ImageNet BN-Inception; the initialisation of TSN/TBN",
    ),
    PublishedWeights(
        name="tsn_kinetics_flow",
        file_name="TSN-kinetics-flow.pth",
        source="https://github.com/ekazakos/temporal-binding-network (README)",
        licence="CC BY-NC-SA 4.0",
        modality="flow",
        layout="bninception",
        wrapping="plain state dict; tensors may carry a leading 1 dimension",
        manifest="bninception_imagenet_tsn.json",
        config={},
        notes="Caffe TSN Kinetics flow model; conv1 [64, 10, 7, 7]; initialises TBN's flow stream",
    ),
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TBNConfig:
    """``num_classes``: add an ``fc`` classifier (e.g. 1000 for the ImageNet file); None: none."""

    modality: str = "rgb"
    num_classes: int | None = None
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.modality not in IN_CHANNELS:
            raise ConfigError(
                f"tbn has no {self.modality!r} modality; valid: {', '.join(IN_CHANNELS)}"
            )
        if self.num_classes is not None and self.num_classes < 1:
            raise ConfigError(f"tbn num_classes must be >= 1 or None, got {self.num_classes}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"tbn dropout must be in [0, 1), got {self.dropout}")

    @property
    def in_channels(self) -> int:
        return IN_CHANNELS[self.modality]


class BNInception(Backbone):
    """BN-Inception with Caffe layer names (flat attributes, as in the published keys)."""

    name = "tbn"
    num_features = NUM_FEATURES
    spatial_maps = True
    spectrogram_recipe = "tbn"  # the audio stream's STFT (avda.extract.audio.tbn_spectrogram)

    def __init__(self, config: TBNConfig) -> None:
        super().__init__()
        self.config = config
        self.modality = config.modality
        self.input_spec = INPUT_SPECS[config.modality]
        self._conv("conv1_7x7_s2", config.in_channels, 64, kernel=7, stride=2, padding=3)
        self.pool1_3x3_s2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self._conv("conv2_3x3_reduce", 64, 64, kernel=1)
        self._conv("conv2_3x3", 64, 192, kernel=3, padding=1)
        self.pool2_3x3_s2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        channels = 192
        for block in BLOCKS:
            channels = self._inception(block, channels)
        # Caffe global pool (ceil mode) for rgb/flow; TBN's audio stream uses AvgPool2d(8).
        self.pool_kernel = FINAL_POOL[config.modality]
        self.pool_ceil_mode = config.modality != "audio"
        self.dropout = nn.Dropout(config.dropout)
        self.fc = nn.Linear(NUM_FEATURES, config.num_classes) if config.num_classes else None

    def _conv(
        self,
        name: str,
        in_channels: int,
        out_channels: int,
        *,
        kernel: int,
        stride: int = 1,
        padding: int = 0,
    ) -> None:
        self.add_module(name, nn.Conv2d(in_channels, out_channels, kernel, stride, padding))
        self.add_module(f"{name}_bn", nn.BatchNorm2d(out_channels, eps=1e-5, momentum=0.1))

    def _inception(self, block: InceptionSpec, in_channels: int) -> int:
        name = block.name
        out_channels = 0
        if block.one is not None:
            self._conv(f"{name}_1x1", in_channels, block.one, kernel=1)
            out_channels += block.one
        self._conv(f"{name}_3x3_reduce", in_channels, block.reduce, kernel=1)
        self._conv(
            f"{name}_3x3", block.reduce, block.three, kernel=3, stride=block.stride, padding=1
        )
        self._conv(f"{name}_double_3x3_reduce", in_channels, block.double_reduce, kernel=1)
        self._conv(f"{name}_double_3x3_1", block.double_reduce, block.double, kernel=3, padding=1)
        self._conv(
            f"{name}_double_3x3_2",
            block.double,
            block.double,
            kernel=3,
            stride=block.stride,
            padding=1,
        )
        out_channels += block.three + block.double
        if block.pool == "avg":
            pool: nn.Module = nn.AvgPool2d(3, stride=1, padding=1, ceil_mode=True)
        elif block.pool == "max":
            pool = nn.MaxPool2d(3, stride=1, padding=1, ceil_mode=True)
        else:
            pool = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.add_module(f"{name}_pool", pool)
        if block.proj is not None:
            self._conv(f"{name}_pool_proj", in_channels, block.proj, kernel=1)
            out_channels += block.proj
        else:
            out_channels += in_channels
        return out_channels

    def conv_bn_pairs(self):
        """Every conv ``name`` with its ``name_bn`` (:meth:`_unit` applies them in a row)."""
        for name, module in self.named_children():
            if isinstance(module, nn.Conv2d) and hasattr(self, f"{name}_bn"):
                yield self, name, f"{name}_bn"

    def _unit(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """conv -> BN -> ReLU of layer ``name``."""
        return torch.relu(getattr(self, f"{name}_bn")(getattr(self, name)(x)))

    def _block(self, block: InceptionSpec, x: torch.Tensor) -> torch.Tensor:
        name = block.name
        branches = []
        if block.one is not None:
            branches.append(self._unit(f"{name}_1x1", x))
        branches.append(self._unit(f"{name}_3x3", self._unit(f"{name}_3x3_reduce", x)))
        double = self._unit(f"{name}_double_3x3_reduce", x)
        double = self._unit(f"{name}_double_3x3_2", self._unit(f"{name}_double_3x3_1", double))
        branches.append(double)
        pooled = getattr(self, f"{name}_pool")(x)
        if block.proj is not None:
            pooled = self._unit(f"{name}_pool_proj", pooled)
        branches.append(pooled)
        return torch.cat(branches, dim=1)

    def forward_spatial(self, x: torch.Tensor) -> torch.Tensor:
        """inception_5b output ``(B, 1024, 7, 7)`` at 224 (audio at 256: ``(B, 1024, 8, 8)``)."""
        channels = self.config.in_channels
        if x.dim() != 4 or x.shape[1] != channels:
            raise ConfigError(
                f"tbn {self.modality} expects a (B, {channels}, H, W) snippet, "
                f"got shape {list(x.shape)}"
            )
        if x.shape[2] % 32 or x.shape[3] % 32:
            raise ConfigError(
                f"tbn {self.modality}: H and W must be multiples of 32 (the Caffe ceil-mode "
                f"pools of BN-Inception misalign otherwise), got {list(x.shape[2:])}; "
                "crop to 224 (rgb/flow) or 256 (audio)"
            )
        x = self.pool1_3x3_s2(self._unit("conv1_7x7_s2", x))
        x = self._unit("conv2_3x3", self._unit("conv2_3x3_reduce", x))
        x = self.pool2_3x3_s2(x)
        for block in BLOCKS:
            x = self._block(block, x)
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 1024)``: the global pool, then a mean over any positions it leaves.

        The pool kernel is clipped to the map when the map is smaller (inputs below 224 / 256),
        which then averages the whole map.
        """
        return self._pool(self.forward_spatial(x))

    def features_and_map(self, maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features as :meth:`forward_features` and the inception_5b map itself."""
        return self._pool(maps), maps

    def _pool(self, maps: torch.Tensor) -> torch.Tensor:
        kernel = [min(self.pool_kernel, size) for size in maps.shape[2:]]
        pooled = F.avg_pool2d(maps, kernel, stride=1, ceil_mode=self.pool_ceil_mode)
        return pooled.mean(dim=(2, 3))

    @classmethod
    def checkpoint_layouts(cls) -> tuple[Layout, ...]:
        """The layouts of the rgb stream: detection does not depend on the modality."""
        return layouts("rgb", has_classifier=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits when built with ``num_classes``; otherwise the features (TBN has no per-stream
        classifier)."""
        features = self.forward_features(x)
        if self.fc is None:
            return features
        return self.fc(self.dropout(features))


# ---------------------------------------------------------------------------------------------
# Checkpoint layouts


def _is_tbn(keys: Iterable[str]) -> bool:
    return any(
        k.endswith("conv1_7x7_s2.weight") and k.split(".")[0] in ("rgb", "flow", "spec")
        for k in keys
    )


def _is_bninception(keys: Iterable[str]) -> bool:
    return "conv1_7x7_s2.weight" in set(keys)


def _tbn_stream(modality: str, *, has_classifier: bool) -> Callable[[StateDict], StateDict]:
    prefix = STREAM_PREFIX[modality]

    def convert(state_dict: StateDict) -> StateDict:
        stream = select_prefix(state_dict, prefix)
        if not stream:
            streams = sorted({k.split(".")[0] for k in state_dict})
            raise CheckpointError(
                f"the TBN checkpoint has no {prefix!r} stream for modality {modality!r}; "
                f"it holds {', '.join(streams)}"
            )
        return stream if has_classifier else _drop_classifier(stream)

    return convert


def _bninception(*, has_classifier: bool) -> Callable[[StateDict], StateDict]:
    def convert(state_dict: StateDict) -> StateDict:
        # The TSN files store BN parameters (and some others) with a leading 1: [1, C].
        squeezed = {
            k: v.squeeze(0) if v.dim() > 1 and v.shape[0] == 1 else v for k, v in state_dict.items()
        }
        return squeezed if has_classifier else _drop_classifier(squeezed)

    return convert


def _drop_classifier(state_dict: StateDict) -> StateDict:
    kept = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
    if len(kept) < len(state_dict):
        log.info("ignoring the file's fc classifier (build with num_classes to use it)")
    return kept


def layouts(modality: str, *, has_classifier: bool) -> tuple[Layout, ...]:
    """The layouts accepted for ``modality``; the file's ``fc`` is used only with num_classes."""
    return (
        Layout(
            name="tbn",
            description=f"TBN checkpoint, stream {STREAM_PREFIX[modality]!r} of "
            "{'state_dict': {'module.rgb.|flow.|spec.' + key}}",
            detect=_is_tbn,
            convert=_tbn_stream(modality, has_classifier=has_classifier),
        ),
        Layout(
            name="bninception",
            description="plain BN-Inception (TSN ImageNet / Kinetics), e.g. 'conv1_7x7_s2.weight'",
            detect=_is_bninception,
            convert=_bninception(has_classifier=has_classifier),
        ),
    )


@register("tbn", model=BNInception)
def tbn(
    *,
    modality: str,
    weights: str | Path | None = None,
    num_classes: int | None = None,
    dropout: float = 0.0,
) -> BNInception:
    """One TBN stream: ``modality`` "rgb" (3 ch), "flow" (10 ch) or "audio" (1 ch, "spec").

    A full TBN checkpoint holds all three streams; the one for ``modality`` is loaded and the
    fusion head is ignored. Returned in eval mode.
    """
    config = TBNConfig(modality=modality, num_classes=num_classes, dropout=dropout)
    model = BNInception(config)
    if weights is not None:
        classes = f"fc with {num_classes} classes" if num_classes else "no classifier"
        load_weights(
            model,
            weights,
            layouts=layouts(modality, has_classifier=num_classes is not None),
            expected=f"BN-Inception {modality} stream ({config.in_channels} input channels, "
            f"{classes})",
            hints=(
                input_channels_hint("conv1_7x7_s2.weight", {v: k for k, v in IN_CHANNELS.items()}),
                num_classes_hint("fc.weight"),
            ),
            model_name=f"tbn {modality}",
        )
    model.eval()
    return model
