"""A backbone added from outside avda's shared code: one class, one registration, nothing else.

The tiny backbone below is registered in the test (as a new module of
``avda.extract.backbones`` would register itself), declares what extraction asks of it (spatial
maps, its spectrogram recipe, its checkpoint layouts and an input layout of its own) and runs
through the real extraction path on a real video with an audio track. No shared file knows it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from tests.extract.conftest import tiny
from torch import nn

from avda import weights as published
from avda.cache import Status, open_cache
from avda.errors import ConfigError
from avda.extract import backbones, runner
from avda.extract.backbones import InputLayout, InputSpec
from avda.extract.backbones.weights import Layout

pytestmark = pytest.mark.usefixtures("one_thread")

# Frames first: a layout no built-in backbone uses, so model_input must learn it from the module.
LAYOUT = "B T C H W"


def frames_first(clip: torch.Tensor) -> torch.Tensor:
    """The normalised clip ``(B, C, T, H, W)`` -> ``(B, T, C, H, W)``."""
    return clip.transpose(1, 2)


SPECS = {
    "rgb": InputSpec(
        modality="rgb",
        layout=LAYOUT,
        num_frames=8,
        channel_order="RGB",
        scale=1 / 255,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
    ),
    "audio": InputSpec(modality="audio", layout="B 1 F T", sample_rate=16000),
}


class TinyNet(backbones.Backbone):
    """One strided conv: rgb clips ``(B, T, 3, H, W)`` or audio spectrograms ``(B, 1, F, T)``."""

    name = "tiny"
    num_features = 8
    spatial_maps = True
    spectrogram_recipe = "logmel"  # not the default (vggsound): the dataset must ask the model

    def __init__(self, modality: str) -> None:
        super().__init__()
        self.modality = modality
        self.input_spec = SPECS[modality]
        conv = nn.Conv3d if modality == "rgb" else nn.Conv2d
        bn = nn.BatchNorm3d if modality == "rgb" else nn.BatchNorm2d
        self.conv = conv(3 if modality == "rgb" else 1, self.num_features, 3, stride=2)
        self.bn = bn(self.num_features)
        self.seen: list[tuple[int, ...]] = []  # the shapes forward_spatial was given

    CONV_BN = (("conv", "bn"),)  # folded for inference like the built-in backbones

    @classmethod
    def checkpoint_layouts(cls) -> tuple[Layout, ...]:
        return (
            Layout(
                name="tiny-native",
                description="the tiny test backbone, 'conv.weight' and 'tiny_version'",
                detect=lambda keys: "tiny_version" in set(keys),
                convert=dict,
            ),
        )

    def forward_spatial(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(tuple(x.shape))
        if self.modality == "rgb":
            x = x.transpose(1, 2)  # (B, T, C, H, W) -> (B, C, T, H, W)
        return torch.relu(self.bn(self.conv(x)))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.forward_spatial(x)
        return maps.flatten(2).mean(dim=2)

    def features_and_map(self, maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = maps.flatten(2).mean(dim=2)
        return features, (maps.mean(dim=2) if maps.dim() == 5 else maps)


@pytest.fixture
def tiny_backbone():
    """Register ``tiny`` (and its input layout) as its own module would; remove it afterwards.
    Yields the models built, so that the test can look at what they were given."""
    built: list[TinyNet] = []

    def build(*, modality: str, weights=None) -> TinyNet:
        if modality not in SPECS:
            raise ConfigError(f"tiny has no {modality!r} modality")
        model = TinyNet(modality)
        built.append(model)
        return model

    layouts = dict(backbones.INPUT_LAYOUTS)
    backbones.register_input_layout(LAYOUT, InputLayout(pack=frames_first))
    backbones.register("tiny", model=TinyNet)(build)
    try:
        yield built
    finally:
        backbones.unregister("tiny")
        backbones.INPUT_LAYOUTS.clear()
        backbones.INPUT_LAYOUTS.update(layouts)


def _manifest() -> pd.DataFrame:
    """Two segments of the real UCF-style test.avi (320x240, 25 fps, MP3 audio, 6.56 s)."""
    return pd.DataFrame(
        {
            "uid": ["a", "b"],
            "video_id": ["test", "test"],
            "video_path": ["video/test.avi", "video/test.avi"],
            "domain": ["d", "d"],
            "split": ["train", "test"],
            "start_sec": [0.5, 3.0],
            "stop_sec": [2.5, 6.0],
        }
    )


@pytest.mark.filterwarnings("ignore:At least one mel filterbank")  # torchaudio on log-mel
def test_a_registered_backbone_runs_through_extraction(tiny_backbone, media, tmp_path):
    assert "tiny" in backbones.names() and "tiny" in backbones.with_spatial_maps()
    recipe = tiny("demo", num_frames=8, spatial=True)
    out = tmp_path / "tiny.zarr"
    result = runner.extract(
        _manifest(),
        recipe=recipe,
        modalities=[runner.ModalitySpec("rgb", "tiny"), runner.ModalitySpec("audio", "tiny")],
        videos=media,
        out=out,
        workers=0,
        precision="float32",
        progress=False,
    )
    assert result.ok and result.done == 4, result.failures

    store = open_cache(out)
    assert store.modality_info("rgb")["backbone"] == "tiny"
    assert store.modality_info("rgb")["input_spec"]["layout"] == LAYOUT
    rgb = store.load("rgb")
    assert rgb.shape == (2, recipe.num_clips, 8)
    assert np.all(store.status("rgb") == Status.DONE)
    assert np.all(store.status("audio") == Status.DONE)
    assert np.all(np.isfinite(rgb)) and not np.allclose(rgb[0], rgb[1])
    # The stored map is the backbone's own: its spatial mean is the feature vector.
    maps = store.load_spatial("rgb").astype(np.float32)
    assert maps.shape[:3] == (2, recipe.num_clips, 8)
    np.testing.assert_allclose(maps.mean(axis=(-2, -1)), rgb, rtol=0.02, atol=1e-3)

    # What the models were given: the rgb clip in the frames-first layout its module declared,
    # the audio as log-mel spectrograms (128 bands), its declared recipe.
    rgb_model, audio_model = (next(m for m in tiny_backbone if m.modality == k) for k in SPECS)
    assert {shape[1:3] for shape in rgb_model.seen} == {(8, 3)}
    assert {shape[1:3] for shape in audio_model.seen} == {(1, 128)}
    audio = store.load("audio")
    assert audio.shape[-1] == 8 and np.all(np.isfinite(audio))


def test_what_the_backbone_declares_drives_the_checks(tiny_backbone):
    # MM-SADA pixels are refused unless the backbone says it takes them (I3D does).
    with pytest.raises(ConfigError, match="MM-SADA way .* tiny needs its own input_spec"):
        runner._build_model(
            runner.ModalitySpec("rgb", "tiny"), tiny("demo", pixel_normalisation="mmsada")
        )
    # A file is recognised as the backbone's by the layouts it declares (avda weights verify).
    assert published._layouts_by_keys({"conv.weight": (8,), "tiny_version": ()}) == [
        ("tiny", "tiny-native")
    ]


def test_spatial_maps_refused_for_a_backbone_without_them(tiny_backbone, monkeypatch):
    monkeypatch.setattr(TinyNet, "spatial_maps", False)
    with pytest.raises(ConfigError, match=r"extracts for i3d, tbn only \(not tiny\)"):
        runner._build_model(runner.ModalitySpec("rgb", "tiny"), tiny("demo", spatial=True))
