"""Shared fixtures: the path of the real data in ../shared/data, and small media files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """``$AVDA_SHARED_DATA``, else ``<repo>/../shared/data``."""
    return Path(os.environ.get("AVDA_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if not path.exists():
        pytest.fail(f"shared test data not found at {path}; set AVDA_SHARED_DATA")
    return path


@pytest.fixture(scope="session")
def media(shared_data: Path) -> Path:
    return shared_data / "media"


@pytest.fixture(scope="session")
def demo_dataset(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    """A tiny demo dataset (2 videos per domain, 3 segments each): real mp4 files."""
    from avda.data_manifests import demo

    root = tmp_path_factory.mktemp("demo")
    manifest = demo.generate(
        root, seed=0, videos_per_domain=2, test_videos_per_domain=1, progress=False
    )
    return root, manifest


def make_feature_cache(
    path: Path,
    *,
    seed: int = 0,
    per_class: int = 12,
    num_classes: int = 4,
    shift: float = 0.0,
    K: int = 2,
    D: int = 16,
    modalities=("rgb", "audio"),
    chunk_rows: int = 8,
    verb_names=None,
    domains=("source", "target"),
    target_train: bool = True,
):
    """A cache of synthetic features: class clusters, target moved by ``shift`` (real Zarr);
    ``verb_names``: a ``verb`` column naming each class (as a manifest's does); ``domains``:
    the names of the source and the (shifted) target domain; ``target_train=False``: the
    target has test segments only (CharadesEgo v0's first person)."""
    from avda import cache as cache_lib
    from avda.cache import Status

    rng = np.random.default_rng(seed)
    rows = []
    for domain in domains:
        for split, count in (("train", per_class), ("test", per_class // 2)):
            if split == "train" and domain == domains[1] and not target_train:
                continue
            for c in range(num_classes):
                for i in range(count):
                    rows.append(
                        {
                            "uid": f"{domain}-{split}-{c}-{i}",
                            "video_id": f"v{c}",
                            "domain": domain,
                            "split": split,
                            "start_sec": 0.0,
                            "stop_sec": 1.0,
                            "verb_class": c,
                            **({"verb": verb_names[c]} if verb_names else {}),
                        }
                    )
    segments = pd.DataFrame(rows)
    store = cache_lib.create(
        path,
        segments,
        manifest_sha256="0" * 64,
        recipe={"name": "synthetic"},
        chunk_rows=chunk_rows,
    )
    centres = {m: rng.normal(0, 1, (num_classes, D)) * 3 for m in modalities}
    offset = {m: rng.normal(0, 1, D) * shift for m in modalities}
    labels = segments["verb_class"].to_numpy()
    is_target = (segments["domain"] == domains[1]).to_numpy()
    for m in modalities:
        x = centres[m][labels][:, None, :] + rng.normal(0, 1, (len(segments), K, D))
        x[is_target] += offset[m]
        store.add_modality(
            m,
            num_clips=K,
            num_features=D,
            info={
                "backbone": "synthetic",
                "weights": None,
                "weights_sha256": None,
                "input_spec": {},
            },
        )
        n = len(segments)
        store.write(m, np.arange(n), x, np.full(n, int(Status.DONE)), [""] * n)
    return store


def kill_while_writing_csv(code: str, marker: Path) -> None:
    """Run the Python ``code`` in a new process whose ``DataFrame.to_csv`` into a file writes
    half its text, creates ``marker`` and waits; SIGKILL it there (a kill half-way through
    writing a table: no ``finally`` runs)."""
    import signal
    import subprocess
    import sys
    import time

    script = f"""
import time
from pathlib import Path
import pandas as pd
real = pd.DataFrame.to_csv
def half(self, path=None, **kwargs):
    text = real(self, None, **kwargs)
    if path is None:
        return text
    Path(path).write_text(text[: len(text) // 2])
    Path({str(marker)!r}).touch()
    time.sleep(600)
pd.DataFrame.to_csv = half
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    process = subprocess.Popen([sys.executable, "-c", script + code], env=env)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), f"the process never wrote its table (exit {process.poll()})"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)


def without_audio(store, row: int = 0) -> None:
    """Segment ``row`` of ``store`` (a cache of :func:`make_feature_cache`; row 0 is a source
    training segment) without audio input: status missing, zero features, as extraction
    records a video without an audio track. A run on RGB and audio warns that its audio is
    zeros."""
    from avda.cache import Status

    zeros = np.zeros((1, *store.features("audio").shape[1:]), np.float32)
    store.write("audio", np.array([row]), zeros, np.array([int(Status.MISSING)]), ["no audio"])
