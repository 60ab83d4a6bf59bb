"""JPEG decoding of frame folders: Pillow against avda's ``read_image``, side by side.

Frame-folder extraction (EPIC's released RGB and flow JPEGs) decodes 80-240 JPEGs per segment
(``mmsada-test``: 5 clips x 16 frames of RGB and of u and v), which on a GPU is most of the
work. This measures, on the same files, frames per second of:

- ``pillow``: ``Image.open(...).convert(mode)``, what avda did before 2026-12-07;
- ``avda accurate``: ``read_image(..., dct="accurate")`` (the default): the same arrays,
  decoded by simplejpeg where no resize is needed (the test suite checks they are Pillow's);
- ``avda fast``: ``read_image(..., dct="fast")``: TensorFlow's decoding (``--jpeg-dct fast``).

Inputs: the shared TSN frames (320 x 240 RGB, one-channel flow) and EPIC-sized RGB frames
(456 x 256) re-encoded from a real 1280 x 720 video at quality 90, 4:2:0.

    python benchmarks/frames.py            # ~20 s on 2 cores
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from avda.extract import frames as frames_lib


def _shared() -> Path:
    return Path(os.environ.get("AVDA_SHARED_DATA", Path(__file__).parents[2] / "shared" / "data"))


def _epic_sized(folder: Path, count: int) -> list[Path]:
    import av
    from PIL import Image

    video = _shared() / "media" / "video" / "bigbuckbunny.mp4"
    paths = []
    with av.open(str(video)) as container:
        for i, frame in zip(range(count), container.decode(video=0), strict=False):
            image = frame.to_image().resize((456, 256), Image.BILINEAR)
            paths.append(folder / f"frame_{i + 1:010d}.jpg")
            image.save(paths[-1], "JPEG", quality=90, subsampling=2)
    return paths


def _pillow(path: Path, mode: str) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(path.read_bytes())) as image:
        return np.asarray(image.convert(mode))


def _rate(read, paths: list[Path], repeats: int) -> float:
    began = time.perf_counter()
    for _ in range(repeats):
        for path in paths:
            read(path)
    return repeats * len(paths) / (time.perf_counter() - began)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    shared = _shared() / "media" / "frames" / "mmaction2_imgs"
    with tempfile.TemporaryDirectory() as tmp:
        sets = {
            "EPIC-sized RGB 456 x 256": (_epic_sized(Path(tmp), 50), "RGB"),
            "TSN RGB 320 x 240": (sorted(shared.glob("img_*.jpg")), "RGB"),
            "TSN flow 320 x 240 (grey)": (sorted(shared.glob("[xy]_*.jpg")), "L"),
        }
        print("| frames | pillow fps | avda accurate fps | vs pillow | avda fast fps | vs pillow |")
        print("|---|---:|---:|---:|---:|---:|")
        for name, (paths, mode) in sets.items():
            pillow = _rate(lambda p, m=mode: _pillow(p, m), paths, args.repeats)
            accurate = _rate(
                lambda p, m=mode: frames_lib.read_image(p, shorter_side=None, mode=m),
                paths,
                args.repeats,
            )
            fast = _rate(
                lambda p, m=mode: frames_lib.read_image(p, shorter_side=None, mode=m, dct="fast"),
                paths,
                args.repeats,
            )
            print(
                f"| {name} | {pillow:.0f} | {accurate:.0f} | {accurate / pillow:.2f}x | "
                f"{fast:.0f} | {fast / pillow:.2f}x |"
            )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
