"""The "already imported" fingerprint of a TA3N feature folder, before and after, side by side.

``avda cache import --format ta3n-t7`` fingerprints the folder before it imports (a second
import of the same folder says "already imported"). Until 2026-12-07 it hashed every frame
file: 507,000 files on TA3N's real release (3,209 videos, 158 frames a video on average),
where the import itself unpickles 16,045. Now it hashes the bytes of the frames the import
reads (the segments' clips and each video's frame 1) and takes the others' names and sizes.
This builds a synthetic folder in TA3N's layout (PyTorch 0.4's legacy ``torch.save`` of 2,048
floats a frame, 100-216 frames a video, the lists' whole-video segments at 25 fps) and times,
on the same files in one run:

- ``every file``: the former fingerprint (each file's SHA-256);
- ``frames read``: the present one (the frames read's SHA-256, the others' sizes);
- ``import``: the whole ``avda cache import`` (fingerprint, then reading 5 frames a video).

The files are in the page cache (just written): reading them from a disk costs the former
fingerprint far more, the present one little more.

    python benchmarks/ta3n_import.py --videos 300     # ~1 min on 2 cores (47,000 files)
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd


def _folder(root: Path, videos: int, width: int, seed: int = 0) -> Path:
    import torch

    rng = np.random.default_rng(seed)
    folder = root / "RGB-feature"
    for v in range(videos):
        video = folder / f"v_Class{v % 12}_g{v:04d}_c01"
        video.mkdir(parents=True)
        for n in range(1, int(rng.integers(100, 217)) + 1):
            buffer = io.BytesIO()
            values = torch.from_numpy(rng.standard_normal(width, dtype=np.float32))
            torch.save(values, buffer, _use_new_zipfile_serialization=False)
            (video / f"img_{n:05d}.t7").write_bytes(buffer.getvalue())
    return folder


def _manifest(folder: Path, path: Path, fps: float = 25.0) -> Path:
    names = sorted(p.name for p in folder.iterdir())
    frames = [len(list((folder / n).iterdir())) for n in names]
    pd.DataFrame({
        "uid": names, "video_id": names, "domain": "ucf", "split": "train",
        "start_sec": 0.0, "stop_sec": np.asarray(frames) / fps, "fps": fps,
    }).to_csv(path, index=False)  # fmt: skip
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=300)
    parser.add_argument("--width", type=int, default=2048)
    args = parser.parse_args()
    from avda.cache import interop

    with tempfile.TemporaryDirectory(prefix="avda-ta3n-") as scratch:
        root = Path(scratch)
        started = time.perf_counter()
        folder = _folder(root, args.videos, args.width)
        manifest = _manifest(folder, root / "m.csv")
        videos = interop._ta3n_videos(folder)
        files = [path for frames in videos.values() for path in frames]
        size = sum(p.stat().st_size for p in files)
        print(
            f"{len(videos)} videos, {len(files)} files, {size / 1e6:.0f} MB "
            f"(written in {time.perf_counter() - started:.0f} s); load {os.getloadavg()[0]:.1f}"
        )
        segments = interop.read_segment_table(manifest).reset_index(drop=True)
        for run in (1, 2):
            started = time.perf_counter()
            interop._folder_sha256(folder, files, None)
            every = time.perf_counter() - started
            started = time.perf_counter()
            read = interop._frames_read(videos, segments, 25.0, 5, "tsn")
            interop._folder_sha256(folder, files, read)
            some = time.perf_counter() - started
            print(
                f"run {run}: every file {every:.2f} s | frames read ({len(read)} files) "
                f"{some:.2f} s; load {os.getloadavg()[0]:.1f}"
            )
        started = time.perf_counter()
        interop.import_features(
            folder, out=root / "s.zarr", annotations=manifest, feature_rate=25.0, num_clips=5,
            placement="tsn", backbone="resnet101",
        )  # fmt: skip
        print(f"import: {time.perf_counter() - started:.2f} s; load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
