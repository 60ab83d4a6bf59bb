"""Audio ResNet-18 of VGGSound (Chen et al. 2020), model "H" (ResNet-18 + average pool).

Also the audio model of Zhang et al. CVPR 2022 (same ``H.pth.tar``). The network is exactly
``torchvision.models.resnet18(num_classes=309)`` with a one-channel stem
``Conv2d(1, 64, 7, stride=2, padding=3, bias=False)``, so the key names are torchvision's; the
published file wraps them as ``{'model_state_dict': {'audnet.' + key: tensor}}``.

Data flow for a normalised log spectrogram ``(B, 1, 257, T)`` (T = 1004 for 10 s)::

    conv1 (s2) ─► bn ─► relu ─► maxpool (s2) ─► layer1 ─► layer2 ─► layer3 ─► layer4
    ─► (B, 512, 9, 32) at T = 1004        = forward_spatial
    ─► global average pool ─► (B, 512)    = forward_features
    ─► fc ─► (B, num_classes)             = forward
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn
from torchvision.models import resnet18

from avda.errors import CheckpointError, ConfigError
from avda.extract.backbones import register
from avda.extract.backbones._base import Backbone, InputSpec
from avda.extract.backbones.weights import (
    Layout,
    PublishedWeights,
    StateDict,
    load_weights,
    num_classes_hint,
    strip_prefix,
)

NUM_FEATURES = 512
VGGSOUND_CLASSES = 309

# hche11/VGGSound test.py: 16 kHz mono, 10 s (tiled), scipy.signal.spectrogram, log, z-score.
INPUT_SPEC = InputSpec(
    modality="audio",
    layout="B 1 F T",
    sample_rate=16000,
    clip_seconds=10.0,
    value_range=None,
    spectrogram={
        "kind": "scipy.signal.spectrogram",
        "nperseg": 512,
        "noverlap": 353,
        "hop_length": 159,
        "window": ["tukey", 0.25],
        "detrend": "constant",
        "scaling": "density",
        "onesided": True,
        "log_offset": 1e-7,
        "normalise": "per-example z-score over the whole spectrogram, std + 1e-9",
        "shape": [257, 1004],
        "tile_short_clips": True,
    },
)

PUBLISHED: tuple[PublishedWeights, ...] = (
    PublishedWeights(
        name="vggsound_H",
        file_name="H.pth.tar",
        source="https://www.robots.ox.ac.uk/~vgg/data/vggsound/models/",
        licence="none stated for the weights (dataset: CC BY 4.0)",
        modality="audio",
        layout="vggsound",
        wrapping="{'model_state_dict': {'audnet.' + key}}",
        manifest="vggsound_resnet18_avgpool_H.json",
        config={"num_classes": VGGSOUND_CLASSES},
        notes="ResNet-18 + average pool, 309 VGGSound classes; also used by Zhang et al. CVPR22",
    ),
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class AudioResNetConfig:
    """``num_classes`` of the final linear layer (309 for VGGSound)."""

    modality: str = "audio"
    num_classes: int = VGGSOUND_CLASSES

    def __post_init__(self) -> None:
        if self.modality != "audio":
            raise ConfigError(
                f"audio_resnet18 takes only modality 'audio', got {self.modality!r}; "
                "use i3d, tbn or slowfast for rgb/flow"
            )
        if self.num_classes < 1:
            raise ConfigError(f"audio_resnet18 num_classes must be >= 1, got {self.num_classes}")


class AudioResNet18(Backbone):
    """torchvision ResNet-18 with a one-channel stem; torchvision key names."""

    name = "audio_resnet18"
    modality = "audio"
    num_features = NUM_FEATURES
    spectrogram_recipe = "vggsound"  # avda.extract.audio.vggsound_spectrogram

    @classmethod
    def checkpoint_layouts(cls) -> tuple[Layout, ...]:
        return LAYOUTS

    def __init__(self, config: AudioResNetConfig) -> None:
        super().__init__()
        self.config = config
        self.input_spec = INPUT_SPEC
        network = resnet18(num_classes=config.num_classes)
        network.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        # Adopt torchvision's modules under their own names so the state dict keys are identical.
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            self.add_module(name, getattr(network, name))
        self.avgpool = network.avgpool
        self.fc = network.fc

    def conv_bn_pairs(self):
        """The stem, each BasicBlock's two convs and its downsample (torchvision's modules)."""
        yield self, "conv1", "bn1"
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in layer:
                yield block, "conv1", "bn1"
                yield block, "conv2", "bn2"
                if block.downsample is not None:
                    yield block.downsample, "0", "1"

    def forward_spatial(self, x: torch.Tensor) -> torch.Tensor:
        """layer4 map ``(B, 512, ceil(F/32), ceil(T/32))``, e.g. (B, 512, 9, 32) for 257x1004."""
        if x.dim() != 4 or x.shape[1] != 1:
            raise ConfigError(
                f"audio_resnet18 expects a (B, 1, 257, T) spectrogram, got shape {list(x.shape)}"
            )
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.avgpool(self.forward_spatial(x)), 1)  # (B, 512, 1, 1) -> (B, 512)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x))


def _is_vggsound(keys: Iterable[str]) -> bool:
    return "audnet.conv1.weight" in set(keys)


def _is_torchvision(keys: Iterable[str]) -> bool:
    return "conv1.weight" in set(keys)


def _from_vggsound(state_dict: StateDict) -> StateDict:
    if "audnet.avgpool.centroids" in state_dict:
        raise CheckpointError(
            "this is the VGGSound NetVLAD model (I.pth.tar, 'audnet.avgpool.centroids'); "
            "audio_resnet18 implements the average-pool model H.pth.tar"
        )
    return strip_prefix(state_dict, "audnet.")


LAYOUTS: tuple[Layout, ...] = (
    Layout(
        name="vggsound",
        description="hche11/VGGSound AVENet, 'audnet.' + torchvision resnet18 keys",
        detect=_is_vggsound,
        convert=_from_vggsound,
    ),
    Layout(
        name="torchvision",
        description="torchvision resnet18 keys, 1-channel conv1, e.g. 'layer1.0.conv1.weight'",
        detect=_is_torchvision,
        convert=dict,
    ),
)


@register("audio_resnet18", model=AudioResNet18)
def audio_resnet18(
    *,
    modality: str,
    weights: str | Path | None = None,
    num_classes: int = VGGSOUND_CLASSES,
) -> AudioResNet18:
    """VGGSound audio ResNet-18 for ``modality="audio"``; returned in eval mode."""
    config = AudioResNetConfig(modality=modality, num_classes=num_classes)
    model = AudioResNet18(config)
    if weights is not None:
        load_weights(
            model,
            weights,
            layouts=LAYOUTS,
            expected=f"VGGSound audio ResNet-18 (1 input channel, {num_classes} classes)",
            hints=(num_classes_hint("fc.weight"),),
            model_name="audio_resnet18",
        )
    model.eval()
    return model
