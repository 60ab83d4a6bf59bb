"""Input statistics of a run (``standardize``, ``feature_scale``): computed on the source-train
set only, applied to every set and stored in the checkpoint (where the report reads it)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avda import runs
from avda.cache import synthetic
from avda.train.data import FeatureSet
from avda.train.loop import train
from avda.train.setup import apply_statistics as _apply_standardizer
from avda.train.setup import input_statistics


def _set(name: str, x: np.ndarray) -> FeatureSet:
    n = x.shape[0]
    return FeatureSet(
        name=name,
        rows=np.arange(n),
        uids=np.array([f"u{i}" for i in range(n)]),
        inputs={"rgb": torch.from_numpy(x.astype(np.float32))},
        labels={},
        domains=np.array(["source"] * n),
    )


def test_feature_scale_sets_the_rms_norm_and_keeps_sign_and_direction():
    rng = np.random.default_rng(0)
    x = np.abs(rng.normal(size=(40, 5, 64))) * 3.0  # non-negative, RMS norm ~ 24
    source, other = _set("source_train", x), _set("target_test", x[:10] * 2.0)
    stats = input_statistics(source, standardize=False, feature_scale=8.0)
    before = other.inputs["rgb"].clone()
    for feature_set in (source, other):
        _apply_standardizer(feature_set, stats)
    scaled = source.features("rgb").reshape(-1, 64)
    assert float(scaled.pow(2).sum(1).mean().sqrt()) == pytest.approx(8.0, rel=1e-5)
    assert float(scaled.min()) >= 0.0  # one positive number per modality: signs kept
    # Every set gets the source's factor (a target twice as large stays twice as large).
    factor = np.sqrt((x.reshape(-1, 64) ** 2).sum(1).mean()) / 8.0
    assert torch.allclose(other.features("rgb"), before / factor, rtol=1e-5)


def test_statistics_are_applied_per_batch_to_the_float16_features_with_the_float32_values():
    """A set keeps the cache's float16 features (half the memory of float32) and reads them
    as float32 with the statistics applied, one batch at a time: bit for bit what ``(x -
    shift) / scale`` gives on a whole float32 copy, the stored tensor untouched."""
    rng = np.random.default_rng(2)
    x = rng.normal(loc=1.0, scale=3.0, size=(30, 4, 8)).astype(np.float16)
    source = _set("source_train", x)
    source.inputs["rgb"] = torch.from_numpy(x)
    stats = input_statistics(source, True, 4.0)
    shift, scale = stats["rgb"]
    whole = torch.from_numpy(x.astype(np.float32))
    expected = whole.clone().sub_(shift).div_(scale)  # the in-place float32 path of before
    _apply_standardizer(source, stats)
    assert source.inputs["rgb"].dtype == torch.float16
    assert torch.equal(source.inputs["rgb"], torch.from_numpy(x))
    assert torch.equal(source.features("rgb"), expected)
    index = torch.tensor([7, 2, 29])
    inputs, _ = source.batch(index)
    assert inputs["rgb"].dtype == torch.float32 and torch.equal(inputs["rgb"], expected[index])
    assert torch.equal(source.features("rgb", index), expected[index])
    with pytest.raises(ValueError, match="applied twice"):
        _apply_standardizer(source, stats)


def test_standardize_then_scale_and_nothing_when_off():
    rng = np.random.default_rng(1)
    x = rng.normal(loc=2.0, scale=0.5, size=(50, 3, 16))
    assert input_statistics(_set("source_train", x), False, 0.0) == {}
    source = _set("source_train", x)
    _apply_standardizer(source, input_statistics(source, True, 0.0))
    flat = source.features("rgb").reshape(-1, 16)
    assert torch.allclose(flat.mean(0), torch.zeros(16), atol=1e-5)
    assert torch.allclose(flat.std(0), torch.ones(16), atol=1e-4)
    source = _set("source_train", x)
    _apply_standardizer(source, input_statistics(source, True, 2.0))
    flat = source.features("rgb").reshape(-1, 16)
    assert float(flat.pow(2).sum(1).mean().sqrt()) == pytest.approx(2.0, rel=1e-5)


def test_a_run_stores_its_scale_in_the_checkpoint(tmp_path):
    cache = synthetic.generate(
        tmp_path / "c.zarr",
        family="affine",
        seed=0,
        source_train=48,
        source_test=16,
        target_train=48,
        target_test=16,
        features=32,
        snippets=2,
    ).path
    result = train(
        cache=cache,
        head="source-only",
        source=["source"],
        target=["target"],
        out=tmp_path / "run",
        seed=0,
        overrides={"feature_scale": 3.0, "epochs": 2},
        progress=False,
    )
    state = runs.load_checkpoint(result.run / runs.CHECKPOINT)
    shift, scale = state["standardize"]["rgb"]
    assert torch.count_nonzero(shift) == 0 and torch.all(scale == scale[0])
    assert float(scale[0]) > 1.0  # the cached features' RMS norm is larger than 3


@pytest.mark.parametrize("standardize", [False, True])
def test_statistics_of_float16_features_equal_a_whole_float32_computation(monkeypatch, standardize):
    """The feature-scale norm is summed a block of clips at a time (no whole float32 copy of
    the source set): the same values, bit for bit, as on one float32 tensor."""
    from avda.train import setup

    rng = np.random.default_rng(3)
    x = np.abs(rng.normal(loc=1.0, scale=2.0, size=(37, 5, 24))).astype(np.float16)
    source = _set("source_train", x)
    source.inputs["rgb"] = torch.from_numpy(x)
    monkeypatch.setattr(setup, "_STATISTICS_BLOCK", 7)  # 185 clips: 27 blocks, the last short
    shift, scale = input_statistics(source, standardize, 8.0)["rgb"]
    flat = torch.from_numpy(x.astype(np.float32)).reshape(-1, 24)
    if standardize:
        std = flat.std(0)
        want_shift, want_scale = flat.mean(0), std.clamp_min(max(float(std.median()) * 0.1, 1e-6))
    else:
        want_shift, want_scale = torch.zeros(24), torch.ones(24)
    norm = float(((flat - want_shift) / want_scale).pow(2).sum(1).mean().sqrt())
    assert torch.equal(shift, want_shift)
    assert torch.equal(scale, want_scale * norm / 8.0)
