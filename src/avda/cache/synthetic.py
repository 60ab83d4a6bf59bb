"""Shifted feature sets for testing and benchmarking adaptation heads: real Zarr caches in the
layout of the EPIC-100 UDA feature release (``source/train``, ``target/train`` unlabelled for
the heads, ``target/test`` labelled; K snippets x D features per modality), with a domain shift
chosen from several *families*, so that a head is never tuned to one generator.

The data model: each segment has a latent action code ``z = mu_y + noise`` (``latent`` dims);
each modality observes it through its own random map, ``x_m = relu(W_m z_k + b_m) + noise``
per snippet ``k`` (post-ReLU, as pooled I3D / TBN features are). RGB and flow see the action
well, audio less well. The target domain then differs by one family:

==================  ========================================================================
``scene``           the nuisance "scene" factors (background, lighting, room acoustics) of the
                    target move far along one direction before the units' ReLU; RGB and flow
                    respond to them fully, audio at 0.2x
``affine``          RGB and flow of the target: a per-dimension scale and offset (lighting,
                    camera, white balance); audio moved a little
``rotation``        RGB and flow of the target: their active subspace rotated (a new viewpoint
                    mixes the same units differently); audio moved a little
``label-prior``     the target's class frequencies differ (a Dirichlet draw), on top of the
                    ``scene`` shift
``audio-informative``  the ``scene`` shift of RGB and flow; audio does not hear the scene
                    (sound shifts less than vision: the Audio-Adaptive setting)
==================  ========================================================================

``severity`` scales every shift (1: source-only loses roughly a third of its accuracy at the
defaults). Everything is deterministic from ``seed``; the family's own draws use a seed of
their own, so two families on one seed share the same source domain.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from avda.cache.schema import Status
from avda.cache.store import FeatureCache, create
from avda.errors import ConfigError
from avda.registry import unknown_name_message

FAMILIES = ("scene", "affine", "rotation", "label-prior", "audio-informative")
SCENE_FAMILIES = ("scene", "label-prior", "audio-informative")
SCENE = 8  # nuisance (scene) factors
VISUAL = ("rgb", "flow")


@dataclasses.dataclass(frozen=True)
class ShiftSpec:
    """What to generate. Sizes are segments per split (EPIC-100-like proportions by default)."""

    family: str = "affine"
    severity: float = 1.0
    classes: int = 8
    source_train: int = 480
    target_train: int = 480
    target_test: int = 320
    source_test: int = 160
    snippets: int = 5
    features: int = 256
    latent: int = 32
    separation: float = 0.35  # class centres' spread in the latent space (noise: 1)
    modalities: tuple[str, ...] = ("rgb", "flow", "audio")
    seed: int = 0

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ConfigError(unknown_name_message("shift family", self.family, FAMILIES))
        if self.classes < 2 or min(self.source_train, self.target_test) < self.classes:
            raise ConfigError("a shifted set needs >= 2 classes and one segment per class")


def _segments(spec: ShiftSpec, rng: np.random.Generator, priors: np.ndarray) -> pd.DataFrame:
    balanced = np.full(spec.classes, 1.0 / spec.classes)
    parts = [
        ("source", "train", spec.source_train, balanced),
        ("source", "test", spec.source_test, balanced),
        ("target", "train", spec.target_train, priors),
        ("target", "test", spec.target_test, priors),
    ]
    rows = []
    for domain, split, count, p in parts:
        labels = rng.choice(spec.classes, size=count, p=p)
        labels[: spec.classes] = np.arange(spec.classes)[:count]  # every class present
        for i, label in enumerate(labels):
            rows.append(
                {
                    "uid": f"{domain}_{split}_{i:06d}",
                    "video_id": f"{domain}_{i // 20:04d}",
                    "domain": domain,
                    "split": split,
                    "start_sec": 0.0,
                    "stop_sec": 2.0,
                    "verb_class": int(label),
                }
            )
    return pd.DataFrame(rows)


def _rotation(dim: int, subspace: int, angle: float, rng: np.random.Generator) -> np.ndarray:
    """An orthogonal ``dim x dim`` map rotating a random ``subspace``-dim subspace by ``angle``
    (radians) in pairs of planes."""
    basis, _ = np.linalg.qr(rng.normal(size=(dim, subspace)))
    block = np.eye(subspace)
    for i in range(0, subspace - 1, 2):
        c, s = np.cos(angle), np.sin(angle)
        block[i : i + 2, i : i + 2] = [[c, -s], [s, c]]
    return np.eye(dim) + basis @ (block - np.eye(subspace)) @ basis.T


def generate(path: str | Path, spec: ShiftSpec | None = None, **changes) -> FeatureCache:
    """Write a shifted feature cache at ``path`` (a new Zarr store) and return it opened."""
    spec = dataclasses.replace(spec or ShiftSpec(), **changes)
    rng = np.random.default_rng([spec.seed, 0])  # the source domain and the labels
    shift_rng = np.random.default_rng([spec.seed, 1 + FAMILIES.index(spec.family)])
    priors = np.full(spec.classes, 1.0 / spec.classes)
    if spec.family == "label-prior":
        priors = shift_rng.dirichlet(np.full(spec.classes, 1.0 / max(spec.severity, 1e-3)))
        priors = 0.9 * priors + 0.1 / spec.classes  # every class stays possible
    segments = _segments(spec, rng, priors)
    store = create(
        path,
        segments,
        manifest_sha256="0" * 64,
        recipe={"name": f"synthetic-{spec.family}", **dataclasses.asdict(spec)},
    )
    labels = segments["verb_class"].to_numpy()
    target = (segments["domain"] == "target").to_numpy()
    n, K, D, L = len(segments), spec.snippets, spec.features, spec.latent
    centres = rng.normal(size=(spec.classes, L)) * spec.separation
    z = centres[labels] + rng.normal(size=(n, L))
    # The scene: nuisance factors every unit also responds to (background, lighting, room
    # acoustics); they vary little within the source, and the target's scene is elsewhere.
    scene = rng.normal(size=(n, SCENE)) * 0.3
    direction = shift_rng.normal(size=SCENE)
    scene[target] += direction / np.linalg.norm(direction) * 5.0 * spec.severity
    for modality in spec.modalities:
        visual = modality in VISUAL
        informative = 1.0 if visual else 0.7  # audio sees the action less well
        weights = rng.normal(size=(L, D)) / np.sqrt(L)
        scene_weights = rng.normal(size=(SCENE, D)) / np.sqrt(SCENE)
        bias = rng.normal(size=D) * 0.5
        clips = z[:, None, :] * informative + rng.normal(size=(n, K, L)) * 0.6
        pre = clips @ weights + bias
        if spec.family in SCENE_FAMILIES:  # audio hears the scene less (or not at all)
            hears = (1.0 if visual else 0.2) if spec.family != "audio-informative" else 1.0
            hears = 0.0 if spec.family == "audio-informative" and not visual else hears
            pre = pre + (scene @ scene_weights)[:, None, :] * hears
        x = np.maximum(pre, 0.0) + np.abs(rng.normal(size=(n, K, D))) * 0.1
        add_features(store, modality, _shift(x, target, spec, visual, shift_rng))
    return store


def add_features(store: FeatureCache, modality: str, x: np.ndarray) -> None:
    """Add ``modality`` to ``store`` with features ``x`` (N, K, D) for every row, all done."""
    n, clips, features = x.shape
    store.add_modality(
        modality,
        num_clips=clips,
        num_features=features,
        info={"backbone": "synthetic", "weights": None, "weights_sha256": None, "input_spec": {}},
    )
    store.write(
        modality, np.arange(n), x.astype(np.float32), np.full(n, int(Status.DONE)), [""] * n
    )


def _shift(
    x: np.ndarray, target: np.ndarray, spec: ShiftSpec, visual: bool, rng: np.random.Generator
) -> np.ndarray:
    s, D = spec.severity, x.shape[-1]
    scale, offset = np.ones(D), np.zeros(D)
    spread = x[~target].std(axis=(0, 1)) + 1e-6
    if spec.family in SCENE_FAMILIES:
        return x  # the scene moved before the units' nonlinearity
    if spec.family == "affine":
        strength = s * (1.0 if visual else 0.15)
        scale = np.exp(rng.normal(size=D) * 0.5 * strength)
        offset = rng.normal(size=D) * spread * 3.0 * strength
    elif spec.family == "rotation":
        if visual:
            mean = x[~target].mean(axis=(0, 1))
            rotation = _rotation(D, D - D % 2, 1.2 * min(s, 1.3), rng)
            y = x.copy()
            y[target] = (x[target] - mean) @ rotation.T + mean
            return y
        offset = rng.normal(size=D) * spread * 0.15 * s
    y = x.copy()
    y[target] = x[target] * scale + offset
    return y


__all__ = ["FAMILIES", "ShiftSpec", "add_features", "generate"]
