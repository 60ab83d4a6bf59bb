"""mmaction2's SlowFast (``slowfast-r{50,101}-mmaction``): published checkpoints load as they are.

The key manifests ``tests/extract/data/mmaction2_slowfast_r{50,101}_8x8.json`` were produced from
mmaction2 0.24.1's own ``Recognizer3D`` (the 8x8 configs); the synthetic checkpoints here have
their keys and shapes, in mmaction2's published wrapping (``{'meta', 'state_dict'}``). mmaction2
is not needed: its forward was compared once, outside the suite (docs/backbones.md).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tests.extract.test_backbones import single_thread  # noqa: F401 (autouse: one thread)

from avda.errors import CheckpointError, ConfigError
from avda.extract import backbones
from avda.extract.backbones import slowfast_mmaction
from avda.extract.backbones.weights import read_checkpoint
from avda.extract.transforms import model_input

DATA = Path(__file__).resolve().parent / "data"
DEPTHS = (50, 101)


def manifest(depth: int) -> dict:
    return json.loads((DATA / f"mmaction2_slowfast_r{depth}_8x8.json").read_text())


def published_state(depth: int, *, seed: int = 0) -> OrderedDict[str, torch.Tensor]:
    """Random tensors with the manifest's keys, shapes and dtypes (BN variances positive)."""
    generator = torch.Generator().manual_seed(seed)
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, info in manifest(depth)["keys"].items():
        dtype = getattr(torch, info["dtype"])
        if not dtype.is_floating_point:
            out[key] = torch.zeros(info["shape"], dtype=dtype)
        elif key.endswith("running_var"):
            out[key] = 0.5 + torch.rand(info["shape"], generator=generator)
        else:
            out[key] = 0.05 * torch.randn(info["shape"], generator=generator)
    return out


def write_published(state: dict, path: Path) -> Path:
    """mmcv's save_checkpoint after mmaction2's publish_model.py (optimizer removed)."""
    meta = {"mmcv_version": "1.2.7", "time": "Thu Feb 18 2021", "epoch": 256, "iter": 120000}
    torch.save({"meta": meta, "state_dict": state}, path)
    return path


def clip(frames: int = 8, size: int = 32) -> torch.Tensor:
    return torch.randn(1, 3, frames, size, size, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("depth", DEPTHS)
def test_model_keys_are_the_published_keys_in_order(depth: int) -> None:
    model = backbones.create(f"slowfast-r{depth}-mmaction", modality="rgb")
    expected = {k: v["shape"] for k, v in manifest(depth)["keys"].items()}
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert list(ours) == list(expected)
    assert ours == expected
    assert model.name == f"slowfast-r{depth}-mmaction"


@pytest.mark.parametrize("depth", DEPTHS)
def test_published_checkpoint_loads_strictly_and_runs(depth: int, tmp_path: Path) -> None:
    state = published_state(depth)
    path = write_published(state, tmp_path / f"slowfast_r{depth}_8x8x1_kinetics400_rgb.pth")
    assert set(read_checkpoint(path)) == {"meta", "state_dict"}  # read without unpickling code
    model = backbones.create(f"slowfast-r{depth}-mmaction", modality="rgb", weights=path)
    assert not model.training
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    with torch.no_grad():
        slow, fast = model.forward_spatial(clip())
        features = model.forward_features(clip())
        logits = model(clip())
    assert slow.shape == (1, 2048, 2, 1, 1) and fast.shape == (1, 256, 8, 1, 1)
    assert features.shape == (1, 2304) and torch.isfinite(features).all()
    # features = [slow ‖ fast] averages; the logits are mmaction2's SlowFastHead: fc_cls on
    # [fast ‖ slow] (its forward unpacks (slow, fast) as "x_fast, x_slow").
    torch.testing.assert_close(features[:, :2048], slow.mean(dim=(2, 3, 4)))
    torch.testing.assert_close(features[:, 2048:], fast.mean(dim=(2, 3, 4)))
    head = torch.cat([features[:, 2048:], features[:, :2048]], dim=1)
    expected = head @ state["cls_head.fc_cls.weight"].T + state["cls_head.fc_cls.bias"]
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


def test_max_variant_loads_the_same_file_pools_by_maximum_and_keeps_the_head(
    tmp_path: Path,
) -> None:
    """``-max``: Audio-Adaptive's recognizer input (``F.adaptive_max_pool3d`` per pathway,
    ``cat((x_slow, x_fast))``); the logits stay mmaction2's (its head averages)."""
    path = write_published(published_state(50), tmp_path / "r50.pth")
    avg = backbones.create("slowfast-r50-mmaction", modality="rgb", weights=path)
    top = backbones.create("slowfast-r50-mmaction-max", modality="rgb", weights=path)
    assert top.name == "slowfast-r50-mmaction-max" and top.config.pooling == "max"
    assert backbones.model_class("slowfast-r50-mmaction-max").pooling == "max"
    with torch.no_grad():
        slow, fast = top.forward_spatial(clip())
        features = top.forward_features(clip())
        torch.testing.assert_close(top(clip()), avg(clip()))
    assert features.shape == (1, 2304)
    assert torch.equal(features[:, :2048], F.adaptive_max_pool3d(slow, (1, 1, 1)).flatten(1))
    assert torch.equal(features[:, 2048:], F.adaptive_max_pool3d(fast, (1, 1, 1)).flatten(1))
    with pytest.raises(ConfigError, match="pooling must be one of avg, max"):
        slowfast_mmaction.MMActionSlowFastConfig(depth=50, pooling="min")


def test_r101_file_given_to_r50_names_the_right_backbone(tmp_path: Path) -> None:
    path = write_published(published_state(101), tmp_path / "r101.pth")
    with pytest.raises(CheckpointError) as error:
        backbones.create("slowfast-r50-mmaction", modality="rgb", weights=path)
    message = str(error.value)
    assert "a checkpoint of slowfast-r101-mmaction, not of slowfast-r50-mmaction" in message
    assert "--backbone slowfast-r101-mmaction" in message
    assert "\n" not in message
    with pytest.raises(CheckpointError) as error:  # the -max variant names the -max one
        backbones.create("slowfast-r50-mmaction-max", modality="rgb", weights=path)
    assert "a checkpoint of slowfast-r101-mmaction-max, not of slowfast-r50-mmaction-max" in str(
        error.value
    )


def test_pyslowfast_file_is_not_read_as_mmaction(tmp_path: Path) -> None:
    state = {"blocks.0.multipathway_blocks.0.conv.weight": torch.zeros(64, 3, 1, 7, 7)}
    path = tmp_path / "SLOWFAST_8x8_R50.pyth"
    torch.save({"model_state": state}, path)
    with pytest.raises(CheckpointError, match=r"a checkpoint of slowfast, not of slowfast-r101"):
        backbones.create("slowfast-r101-mmaction", modality="rgb", weights=path)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (
            lambda s: s.pop("backbone.slow_path.layer2_lateral.conv.weight"),
            r"key 'backbone\.slow_path\.layer2_lateral\.conv\.weight' is missing from the file",
        ),
        (
            lambda s: s.update({"backbone.slow_path.conv1_lateral.bn.weight": torch.ones(16)}),
            r"'backbone\.slow_path\.conv1_lateral\.bn\.weight' is in the file but not in the "
            r"model",
        ),
        (
            lambda s: s.update({"cls_head.fc_cls.weight": torch.zeros(8, 2304)}),
            r"has shape \[8, 2304\].*expects \[400, 2304\].*pass num_classes=8",
        ),
        (  # a 4x16 checkpoint: fusion kernel 5
            lambda s: s.update(
                {"backbone.slow_path.conv1_lateral.conv.weight": torch.zeros(16, 8, 5, 1, 1)}
            ),
            r"temporal kernel of 5: a 4x16 checkpoint",
        ),
    ],
    ids=["missing", "extra", "classes", "4x16"],
)
def test_wrong_or_missing_keys_fail_in_one_line(edit, match: str, tmp_path: Path) -> None:
    state = published_state(50)
    edit(state)
    path = write_published(state, tmp_path / "edited.pth")
    with pytest.raises(CheckpointError, match=match) as error:
        backbones.create("slowfast-r50-mmaction", modality="rgb", weights=path)
    assert "\n" not in str(error.value)
    assert "mmaction2 SlowFast R50 8x8" in str(error.value)


def test_other_class_counts_load_with_num_classes(tmp_path: Path) -> None:
    state = published_state(50)
    state["cls_head.fc_cls.weight"] = torch.zeros(8, 2304)
    state["cls_head.fc_cls.bias"] = torch.zeros(8)
    path = write_published(state, tmp_path / "epic8.pth")
    model = backbones.create("slowfast-r50-mmaction", modality="rgb", weights=path, num_classes=8)
    with torch.no_grad():
        assert model(clip()).shape == (1, 8)


def test_slow_frames_are_mmaction2_nearest_interpolation() -> None:
    for frames in (4, 8, 32, 64):
        x = (
            torch.arange(frames, dtype=torch.float32)
            .view(1, 1, frames, 1, 1)
            .expand(1, 3, -1, 2, 2)
        )
        reference = F.interpolate(x, mode="nearest", scale_factor=(0.25, 1.0, 1.0))
        ours = slowfast_mmaction.slow_frames(x)
        assert torch.equal(ours, reference)
    x32 = torch.arange(32.0).view(1, 1, 32, 1, 1)
    assert slowfast_mmaction.slow_frames(x32).flatten().tolist() == list(range(0, 32, 4))


def test_input_is_imagenet_normalised_rgb_clip_of_32() -> None:
    spec = backbones.create("slowfast-r50-mmaction", modality="rgb").input_spec
    assert (spec.num_frames, spec.frame_stride, spec.channel_order) == (32, 2, "RGB")
    frames = torch.randint(0, 256, (1, 32, 8, 8, 3), dtype=torch.uint8)
    x = model_input(frames, spec)
    assert isinstance(x, torch.Tensor) and x.shape == (1, 3, 32, 8, 8)  # one clip, no pathways
    mean = torch.tensor([123.675, 116.28, 103.53])
    std = torch.tensor([58.395, 57.12, 57.375])
    mmaction = ((frames.float() - mean) / std).permute(0, 4, 1, 2, 3)  # Normalize, to_bgr=False
    torch.testing.assert_close(x, mmaction, rtol=0, atol=1e-5)
    low, high = spec.value_range
    assert low == pytest.approx(float(mmaction.new_tensor(0.0).sub(mean).div(std).min()))
    assert high == pytest.approx(float(mmaction.new_tensor(255.0).sub(mean).div(std).max()))


def test_clip_length_and_shape_errors() -> None:
    model = backbones.create("slowfast-r50-mmaction", modality="rgb")
    with pytest.raises(ConfigError, match="T a multiple of 4"):
        model.forward_features(clip(frames=6))
    with pytest.raises(ConfigError, match=r"one clip \(B, 3, T, H, W\)"):
        model.forward_features([clip(frames=2), clip()])
    how = backbones.input_layout(model.input_spec)
    with pytest.raises(ConfigError, match="needs a multiple of 4"):
        assert how.check_frames is not None
        how.check_frames(model.input_spec, 30, recipe="x", backbone=model.name)


def test_published_entries_point_at_the_manifests() -> None:
    for depth, entries in slowfast_mmaction.PUBLISHED.items():
        for entry in entries:
            assert (DATA / entry.manifest).is_file()
            assert entry.layout == slowfast_mmaction.LAYOUTS[depth].name
            assert entry.file_name in entry.source
            assert manifest(depth)["checkpoint_files"][0].endswith(entry.file_name)


@pytest.mark.parametrize("depth", DEPTHS)
def test_random_initialisation_keeps_features_within_float16(depth):
    # without weights (the demo, a smoke test) every residual branch ends in a BN of small
    # scale: R101's 33 blocks summed random branches past 65504, so `avda extract` refused
    # every clip of a real video as non-finite in float16
    torch.manual_seed(0)
    model = backbones.create(f"slowfast-r{depth}-mmaction", modality="rgb")
    with torch.no_grad():
        features = model.forward_features(torch.randn(1, 3, 8, 64, 64))
    assert torch.isfinite(features.half()).all() and float(features.abs().max()) < 1e3
    assert float(features.std()) > 0
