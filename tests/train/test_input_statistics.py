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
    scaled = source.inputs["rgb"].reshape(-1, 64)
    assert float(scaled.pow(2).sum(1).mean().sqrt()) == pytest.approx(8.0, rel=1e-5)
    assert float(scaled.min()) >= 0.0  # one positive number per modality: signs kept
    # Every set gets the source's factor (a target twice as large stays twice as large).
    factor = np.sqrt((x.reshape(-1, 64) ** 2).sum(1).mean()) / 8.0
    assert torch.allclose(other.inputs["rgb"], before / factor, rtol=1e-5)


def test_statistics_are_applied_in_place_with_the_same_values():
    """The set's own float32 tensor is overwritten (no second copy of a set that can be GBs),
    bit for bit what ``(x - shift) / scale`` gives; a view of another tensor is not touched."""
    rng = np.random.default_rng(2)
    x = rng.normal(loc=1.0, scale=3.0, size=(30, 4, 8))
    source = _set("source_train", x)
    stats = input_statistics(source, True, 4.0)
    shift, scale = stats["rgb"]
    expected = (source.inputs["rgb"] - shift) / scale
    pointer = source.inputs["rgb"].data_ptr()
    _apply_standardizer(source, stats)
    assert source.inputs["rgb"].data_ptr() == pointer
    assert torch.equal(source.inputs["rgb"], expected)
    whole = torch.from_numpy(x.astype(np.float32))
    view = _set("target_test", x)
    view.inputs["rgb"] = whole[:10]
    kept = whole.clone()
    _apply_standardizer(view, stats)
    assert torch.equal(whole, kept) and torch.equal(view.inputs["rgb"], (kept[:10] - shift) / scale)


def test_standardize_then_scale_and_nothing_when_off():
    rng = np.random.default_rng(1)
    x = rng.normal(loc=2.0, scale=0.5, size=(50, 3, 16))
    assert input_statistics(_set("source_train", x), False, 0.0) == {}
    source = _set("source_train", x)
    _apply_standardizer(source, input_statistics(source, True, 0.0))
    flat = source.inputs["rgb"].reshape(-1, 16)
    assert torch.allclose(flat.mean(0), torch.zeros(16), atol=1e-5)
    assert torch.allclose(flat.std(0), torch.ones(16), atol=1e-4)
    source = _set("source_train", x)
    _apply_standardizer(source, input_statistics(source, True, 2.0))
    flat = source.inputs["rgb"].reshape(-1, 16)
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
