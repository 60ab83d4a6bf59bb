"""A shifted feature set from a generator independent of ``avda.cache.synthetic``, to check
heads on data they were not tuned on (``docs/methods.md``, dann: "One discriminator per
modality").

Layout of the EPIC-100 feature release: 8 classes, 480 source-train, 480 target-train, 320
target-test and 160 source-test segments, 25 snippets x 1024 features per modality (rgb, flow,
audio). Each class has a prototype vector per modality (``N(0, proto^2)`` per feature; audio
0.7x); a segment is its class prototype plus segment noise (0.7) plus snippet noise (0.7),
through a softplus (positive, like pooled features). The target's RGB and flow are moved by a
per-dimension scale ``exp(N(0, (0.4 severity)^2))`` and offset ``N(0, (1.5 severity std)^2)``
(std: the source's per-dimension std), its audio by a tenth of that.

    python benchmarks/prototype_shift.py OUT.zarr --seed 0 --severity 0.6 --proto 0.08
    avda train --cache OUT.zarr --head dann --source source --target target -o runs/dann-0
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from avda.cache.store import FeatureCache, create
from avda.cache.synthetic import add_features

SPLITS = (("source", "train"), ("target", "train"), ("target", "test"), ("source", "test"))


def make(
    path: str,
    *,
    seed: int = 0,
    severity: float = 0.6,
    proto: float = 0.08,
    snippets: int = 25,
    features: int = 1024,
    classes: int = 8,
    sizes: tuple[int, int, int, int] = (480, 480, 320, 160),
    audio_shift: float = 0.1,
) -> FeatureCache:
    rng = np.random.default_rng(seed + 1000)
    rows = []
    for (domain, split), count in zip(SPLITS, sizes, strict=True):
        for i, label in enumerate(rng.integers(0, classes, count)):
            rows.append(
                {
                    "uid": f"{domain}_{split}_{i:05d}",
                    "video_id": f"{domain}_{i // 30:03d}",
                    "domain": domain,
                    "split": split,
                    "start_sec": 0.0,
                    "stop_sec": 2.0,
                    "verb_class": int(label),
                }
            )
    segments = pd.DataFrame(rows)
    labels = segments["verb_class"].to_numpy()
    target = (segments["domain"] == "target").to_numpy()
    n, K, D = len(segments), snippets, features
    store = create(path, segments, manifest_sha256="0" * 64, recipe={"name": "prototype-shift"})
    for modality in ("rgb", "flow", "audio"):
        spread = proto if modality != "audio" else 0.7 * proto
        prototypes = rng.normal(size=(classes, D)) * spread
        x = prototypes[labels][:, None, :] + rng.normal(size=(n, 1, D)) * 0.7
        x = np.log1p(np.exp(x + rng.normal(size=(n, K, D)) * 0.7))
        std = x[~target].std(axis=(0, 1))
        s = severity * (1.0 if modality != "audio" else audio_shift)
        scale = np.exp(rng.normal(size=D) * 0.4 * s)
        offset = rng.normal(size=D) * std * 1.5 * s
        x[target] = x[target] * scale + offset
        add_features(store, modality, x)
    return store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--severity", type=float, default=0.6)
    parser.add_argument("--proto", type=float, default=0.08)
    args = parser.parse_args()
    store = make(args.out, seed=args.seed, severity=args.severity, proto=args.proto)
    print(store.path)


if __name__ == "__main__":
    main()
