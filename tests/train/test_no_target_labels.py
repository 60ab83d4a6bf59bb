"""Unsupervised adaptation never learns from the target's training labels.

A cache holds the labels of every segment it can (the generated sets, EPIC-100's target_val...),
and the target's training rows travel through the loop, their FeatureSet and the heads' batches
beside the source's. For every head, two trainings that differ only in those labels (the
second cache's target-train labels permuted, everything else equal) must end in the same model,
tensor for tensor: a head that read them anywhere (a loss, a pseudo label, a class weight, a
checkpoint choice) would differ. Diagnostics computed from them (audio-adaptive's pseudo-label
accuracy in its stage records) may differ; training may not.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avda import runs
from avda.cache import create, open_cache, synthetic
from avda.train.loop import train

torch.set_num_threads(1)

# Short schedules: the property does not depend on the amount of training.
HEADS = {
    "source-only": {"epochs": 2},
    "dann": {"epochs": 2},
    "mmd": {"epochs": 2},
    "adabn": {"epochs": 2},
    "mm-sada": {"epochs": 4, "pretrain_epochs": 2, "lr_steps": [2]},
    "ta3n": {"epochs": 2},
    "rna": {"epochs": 2, "setting": "uda"},
    "cia": {"epochs": 2},
    "audio-adaptive": {
        "audio_hidden_dim": 16, "audio_epochs": 1, "cluster_max_k": 3, "cluster_n_init": 1,
        "encoder_epochs": 1, "flow_encoder_epochs": 1, "attention_dim": 16,
        "attention_depth": 1, "attention_heads": 2, "attention_head_dim": 8,
        "attention_mlp_dim": 16, "encoder_bottleneck": 8, "epochs": 2, "flow_epochs": 2,
        "delegate_dim": 16, "recognizer_dim": 16, "recognizer_depth": 1,
        "recognizer_heads": 2, "recognizer_head_dim": 8, "recognizer_mlp_dim": 16,
    },
}  # fmt: skip


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    """The same generated set twice; in the second the target-train labels are permuted."""
    folder = tmp_path_factory.mktemp("labels")
    spec = synthetic.ShiftSpec(
        family="scene", classes=4, source_train=24, target_train=24, target_test=16,
        source_test=8, snippets=5, features=16, latent=8, seed=3,
    )  # fmt: skip
    first = synthetic.generate(folder / "a.zarr", spec)
    segments = first.segments.copy()
    rows = np.flatnonzero((segments["domain"] == "target") & (segments["split"] == "train"))
    labels = segments["verb_class"].to_numpy().copy()
    permuted = np.random.default_rng(0).permutation(labels[rows])
    assert (permuted != labels[rows]).sum() >= len(rows) // 2  # most of them change
    labels[rows] = permuted
    segments["verb_class"] = labels
    second = create(folder / "b.zarr", segments, manifest_sha256="0" * 64, recipe={"name": "b"})
    for modality in first.modalities:
        synthetic.add_features(second, modality, first.load(modality))
    return folder / "a.zarr", folder / "b.zarr"


def _trained(cache, head, out):
    train(
        cache=cache, head=head, source=["source"], target=["target"], out=out,
        overrides=HEADS[head], seed=0, progress=False, device="cpu",
    )  # fmt: skip
    return torch.load(out / runs.CHECKPOINT, map_location="cpu", weights_only=True)["model"]


@pytest.mark.parametrize("head", list(HEADS))
def test_the_targets_training_labels_change_nothing_that_is_trained(caches, head, tmp_path):
    original, permuted = caches
    assert open_cache(original).modalities == open_cache(permuted).modalities
    first = _trained(original, head, tmp_path / "a")
    second = _trained(permuted, head, tmp_path / "b")
    assert first.keys() == second.keys()
    differ = [k for k in first if not torch.equal(first[k], second[k])]
    assert not differ, f"{head}: trained differently with other target labels: {differ[:5]}"
