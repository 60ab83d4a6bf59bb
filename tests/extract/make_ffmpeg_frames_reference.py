"""Record how ffmpeg numbers the frames it extracts, for tests/extract/data/ffmpeg_frames.json.

EPIC-KITCHENS, TSN and MM-SADA users extract RGB frame folders with ffmpeg
(``ffmpeg -i X -q:v 2 frame_%010d.jpg``; EPIC: ``-vf scale=-2:256 -q:v 4 -r 60``). On a file
whose first video frame is not at the stream's start (``test.avi``: first pts 0.04 s, stream and
container start 0) the numbering depends on ffmpeg's frame-rate mode, which avda must match.
ffmpeg is never run by avda or by the test suite; only this script runs it (a static binary from
the ``imageio-ffmpeg`` wheel, in a throwaway environment)::

    python3 -m venv /tmp/ffenv && /tmp/ffenv/bin/pip install imageio-ffmpeg
    FFMPEG=$(/tmp/ffenv/bin/python -c "import imageio_ffmpeg as f; print(f.get_ffmpeg_exe())")
    .venv/bin/python tests/extract/make_ffmpeg_frames_reference.py ../shared/data "$FFMPEG"

Frames are written as PNG (lossless) and matched to PyAV's decoded frames (display order, rgb24)
by content: ``files`` maps a file number to the 0-based decoded frame it equals exactly (mean
absolute difference 0), for the first 4 and last 2 files. JPEG commands are counted only.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import av
import numpy as np
from PIL import Image

VIDEOS = ("test.avi", "demo.mp4", "v_GGSY1Qvo990.mp4", "v_ZNVhz7ctTq0.mp4", "bigbuckbunny.mp4")
PNG_MODES = {
    "default": [],
    "rate": ["-r", "{fps}"],
    "passthrough": ["-fps_mode", "passthrough"],
}
JPEG_MODES = {
    "q2": ["-q:v", "2"],
    "epic": ["-vf", "scale=-2:256", "-q:v", "4"],
}


def decoded(path: Path) -> tuple[dict, list[np.ndarray]]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        pts = sorted(p.pts for p in container.demux(stream) if p.size)
        base = float(stream.time_base)
        about = {
            "streams": len(container.streams),
            "container_start": (container.start_time or 0) / 1e6,
            "stream_start": (stream.start_time or 0) * base,
            "first_pts": round(pts[0] * base, 6),
            "fps": round(float(stream.average_rate), 6),
        }
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    about["decoded"] = len(frames)
    return about, frames


def extract(ffmpeg: str, path: Path, args: list[str], suffix: str, tmp: Path) -> list[Path]:
    out = Path(tempfile.mkdtemp(dir=tmp))
    command = [ffmpeg, "-hide_banner", "-loglevel", "error", "-threads", "1", "-i", str(path)]
    subprocess.run([*command, *args, str(out / f"frame_%010d.{suffix}")], check=True)
    return sorted(out.glob(f"*.{suffix}"))


def match(files: list[Path], frames: list[np.ndarray]) -> dict[str, int]:
    picked = [*range(4), len(files) - 2, len(files) - 1]
    found = {}
    for i in picked:
        image = np.asarray(Image.open(files[i]).convert("RGB"))
        equal = [k for k, f in enumerate(frames) if f.shape == image.shape and (f == image).all()]
        assert len(equal) == 1, (files[i], equal)
        found[str(i + 1)] = equal[0]
    return found


def record(ffmpeg: str, path: Path, tmp: Path) -> dict:
    about, frames = decoded(path)
    for mode, args in PNG_MODES.items():
        args = [a.format(fps=about["fps"]) for a in args]
        files = extract(ffmpeg, path, args, "png", tmp)
        about[mode] = {"command": args, "count": len(files), "files": match(files, frames)}
    for mode, args in JPEG_MODES.items():
        about[mode] = {"command": args, "count": len(extract(ffmpeg, path, args, "jpg", tmp))}
    return about


def main(shared: Path, ffmpeg: str) -> None:
    version = subprocess.run([ffmpeg, "-version"], capture_output=True, text=True, check=True)
    out: dict = {"ffmpeg": version.stdout.split("\n")[0], "pyav": av.__version__, "videos": {}}
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        for video in VIDEOS:
            out["videos"][video] = record(ffmpeg, shared / "media" / "video" / video, tmp)
        # test.avi without its audio track: ffmpeg's automatic mode on an input with one
        # stream does not repeat the initial frames (it does with two)
        alone = tmp / "test_video_only.avi"
        source = shared / "media" / "video" / "test.avi"
        subprocess.run([ffmpeg, "-loglevel", "error", "-i", str(source), "-an", "-c", "copy",
                        str(alone)], check=True)  # fmt: skip
        out["videos"]["test.avi (video stream only, -an -c copy)"] = record(ffmpeg, alone, tmp)
    target = Path(__file__).parent / "data" / "ffmpeg_frames.json"
    target.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {target}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
