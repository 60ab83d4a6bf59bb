"""Pre-extracted frame folders: EPIC-KITCHENS RGB JPEGs and TV-L1 u/v flow JPEGs.

Layouts read (one folder per video, found under the root given with ``--frames`` / ``--flow``)::

    <root>/<video_id>/                       or <root>/<participant>/<video_id>/
    <root>/<participant>/rgb_frames/<video_id>/   (EPIC-100 download layout; flow_frames/ for flow)

    RGB:   frame_0000000001.jpg ...          (EPIC)      img_00001.jpg ...        (TSN / mmaction2)
    flow:  u/frame_0000000001.jpg, v/...     (EPIC)      x_00001.jpg, y_00001.jpg (TSN / mmaction2)
                                                         flow_x_00001.jpg, flow_y_00001.jpg

Frame numbers are 1-based (the first file of a folder is frame 1, whatever number its name
starts at); a number beyond the folder repeats the first or last frame, as the video decoder does.

Flow JPEGs hold ``round(255 * (v + b) / (2 b))`` of each component clipped to ``±b`` (128 = no
motion). The *flow convention* of a folder (stride in RGB frames, bound b) is read, in order, from
``flow.json`` (written by ``avda flow``), from the EPIC rule (video ids ``PXX_YY``: EPIC-55,
stride 2, bound 25; ``PXX_YYY``: EPIC-100 extension, stride 1, bound 8), or from the
``flow_stride`` option; otherwise stride 1, bound 20 (the DeepMind I3D convention).
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from avda.errors import ConfigError, MediaError
from avda.extract.decode import resized_size
from avda.optional import require
from avda.paths import safe_component

log = logging.getLogger(__name__)

FLOW_METADATA = "flow.json"
RGB_PATTERN = re.compile(r"^(frame_|img_|image_)(\d+)\.(jpe?g|png)$", re.IGNORECASE)
FLOW_PATTERNS: dict[str, re.Pattern[str]] = {
    "u": re.compile(r"^(flow_x_|x_)(\d+)\.(jpe?g|png)$", re.IGNORECASE),
    "v": re.compile(r"^(flow_y_|y_)(\d+)\.(jpe?g|png)$", re.IGNORECASE),
}
EPIC_FLOW_PATTERN = re.compile(r"^(frame_)(\d+)\.(jpe?g|png)$", re.IGNORECASE)
EPIC_VIDEO_ID = re.compile(r"^P\d+_(\d+)$")
DEFAULT_FLOW_BOUND = 20.0


@dataclasses.dataclass(frozen=True)
class FlowConvention:
    """How a flow folder was made: one flow frame every ``stride`` RGB frames, clipped to
    ``±bound`` pixels, between frames ``dilation`` apart; ``source`` says where this came from."""

    stride: int
    bound: float
    dilation: int = 1
    source: str = "default"
    fps: float | None = None  # the rate of the video it was computed from (flow.json)
    frames: int | None = None  # the video's flow frames, held or not (flow.json since 2026-12)
    # frame numbers before the video's first frame that show it (flow.json since 2026-12-07;
    # None: a folder of an earlier avda flow, which numbered decoded frames, or not avda's)
    first_frame_repeats: int | None = None

    @property
    def ratio(self) -> float:
        """Flow frames per RGB frame (EPIC-55: 0.5)."""
        return 1.0 / self.stride

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def epic_convention(video_id: str) -> FlowConvention | None:
    """EPIC-KITCHENS flow parameters from the video id, None for other ids."""
    match = EPIC_VIDEO_ID.match(str(video_id))
    if match is None:
        return None
    if len(match.group(1)) == 3:  # P01_101: EPIC-100 extension (2020), README erratum -s 1 -b 8
        return FlowConvention(stride=1, bound=8.0, source="epic-100")
    return FlowConvention(stride=2, bound=25.0, dilation=3, source="epic-55")


def flow_convention(folder: Path, video_id: str, stride: int | None = None) -> FlowConvention:
    """The convention of the flow folder of ``video_id`` (see the module docstring)."""
    metadata = folder / FLOW_METADATA
    if metadata.exists():
        try:
            info = json.loads(metadata.read_text())
            fps, frames = info.get("fps"), info.get("frames")
            repeats = info.get("first_frame_repeats")
            return FlowConvention(
                stride=int(info["stride"]),
                bound=float(info["bound"]),
                dilation=int(info.get("dilation", 1)),
                source=FLOW_METADATA,
                fps=float(fps) if fps else None,
                frames=int(frames) if frames else None,
                first_frame_repeats=None if repeats is None else int(repeats),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise MediaError(
                f"{metadata} cannot be read ({exc}); delete it or re-run `avda flow`"
            ) from exc
    if stride is not None:
        epic = epic_convention(video_id)
        bound = epic.bound if epic else DEFAULT_FLOW_BOUND
        return FlowConvention(stride=stride, bound=bound, source="option")
    epic = epic_convention(video_id)
    if epic is not None:
        return epic
    return FlowConvention(stride=1, bound=DEFAULT_FLOW_BOUND, source="default")


def candidate_folders(root: Path, video_id: str, participant: str | None, kind: str) -> list[Path]:
    """Where the frames of ``video_id`` may live under ``root`` (first existing wins); the
    ids must be one name each (avda.paths), so no look-up leaves ``root``."""
    video_id = safe_component(video_id, "video_id")
    participant = safe_component(participant or str(video_id).split("_")[0], "participant_id")
    sub = "rgb_frames" if kind == "rgb" else "flow_frames"
    return [
        root / video_id,
        root / participant / video_id,
        root / participant / sub / video_id,
        root / sub / video_id,
    ]


def locate(root: Path, video_id: str, participant: str | None, kind: str) -> Path:
    """The frame folder of ``video_id``; MediaError listing the places looked at."""
    candidates = candidate_folders(root, video_id, participant, kind)
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    tried = ", ".join(str(c) for c in candidates[:3])
    option = "--frames" if kind == "rgb" else "--flow"
    raise MediaError(
        f"no {kind} frame folder for video {video_id!r} (looked at {tried}); check {option}"
    )


class ImageSequence:
    """Numbered image files of one stream of one video (e.g. ``frame_%010d.jpg``).

    File numbers are the video's frame numbers: 1-based as EPIC's and mmaction2's folders (a
    folder numbered from 0 is read as 0-based), and kept as they are where a folder holds part
    of a video: ``avda flow --segments-only`` writes only the flow frames near segments, so
    its first file may be frame 21, and frame 30 is read from file 30, not from the folder's
    tenth file. ``total``: the video's frame count where known (``flow.json``): a folder that
    ends before it holds part of the video even without gaps (a segments-only folder of the
    video's first seconds), and a frame past its last file fails instead of repeating it."""

    def __init__(
        self,
        directory: Path,
        pattern: re.Pattern[str],
        total: int | None = None,
        jpeg_dct: str = "accurate",
    ) -> None:
        self.directory = directory
        self.jpeg_dct = check_jpeg_dct(jpeg_dct)
        names: dict[int, str] = {}  # file number -> its file's name
        namings: dict[tuple[str, str], str] = {}  # (prefix, extension) -> a file of it
        try:
            entries = sorted(entry.name for entry in os.scandir(directory))
        except OSError as exc:
            raise MediaError(f"frame folder {directory} cannot be listed: {exc}") from exc
        # temporaries of writes that did not finish (avda flow's .frame_%010d.jpg.partial)
        self.unfinished = [name for name in entries if name.endswith(".partial")]
        for name in entries:
            match = pattern.match(name)
            if match:
                number = int(match.group(2))
                if number in names:  # frame_0000000001.jpg and .png, img_1 and img_00001
                    raise MediaError(
                        f"{directory} holds two files of frame number {number} "
                        f"({names[number]}, {name}): frames of two tools or runs in one "
                        "folder; keep one set of frames per folder"
                    )
                names[number] = name
                namings.setdefault((match.group(1), match.group(3)), name)
        if not names:
            raise MediaError(
                f"{directory} holds no frame images (expected names like frame_0000000001.jpg "
                "or img_00001.jpg)"
            )
        if len(namings) > 1:  # x_00001.jpg beside flow_x_00001.jpg: whose is which frame?
            raise MediaError(
                f"{directory} holds frames named in {len(namings)} ways "
                f"({', '.join(sorted(namings.values()))}): frames of two tools or runs in one "
                "folder are not read as one sequence; keep one naming per folder"
            )
        numbers = list(names)
        self._offset = 1 if min(numbers) == 0 else 0  # frame n is file n - offset
        self._held = frozenset(n + self._offset for n in numbers)
        self.first = min(self._held)  # 1-based frame numbers of the first and last files
        self.count = self.last = max(self._held)  # the video's frames up to the last one held
        if total is not None and total > self.count:
            self.count = total  # the video's frames, the last ones not in the folder
        if len(self._held) != self.last - self.first + 1:
            log.info(
                "%s: %d images numbered %d..%d (gaps); a segment that needs a missing frame fails",
                directory,
                len(self._held),
                self.first,
                self.last,
            )
        self._names = names

    @property
    def partial(self) -> bool:
        """Whether frames are missing before the last one (a folder of segments only)."""
        return len(self._held) != self.count

    def path(self, number: int) -> Path:
        """File of 1-based frame ``number`` (one the folder holds)."""
        return self.directory / self._names[number - self._offset]

    def clamp(self, numbers: np.ndarray) -> np.ndarray:
        return np.clip(np.asarray(numbers, dtype=np.int64), 1, self.count)

    def read(self, numbers: np.ndarray, *, shorter_side: int | None, mode: str) -> np.ndarray:
        """uint8 images of ``numbers`` (any order, repeats decoded once): ``(n, H, W[, 3])``."""
        numbers = self.clamp(numbers)
        unique, inverse = np.unique(numbers, return_inverse=True)
        missing = [int(n) for n in unique if int(n) not in self._held]
        if missing:
            raise MediaError(
                f"{self.directory} has no frame {missing[0]}"
                + (f" (nor {len(missing) - 1} more)" if len(missing) > 1 else "")
                + f": it holds {len(self._held)} frames numbered {self.first}..{self.last}"
                + (f" of the video's {self.count}" if self.count > self.last else "")
                + (
                    "; a flow folder of `avda flow --segments-only` holds only frames within "
                    "--margin of the manifest's segments: compute it again for these segments "
                    "(a larger --margin, or without --segments-only)"
                    if self.partial
                    else ""
                )
            )
        images = [
            read_image(self.path(int(n)), shorter_side=shorter_side, mode=mode, dct=self.jpeg_dct)
            for n in unique
        ]
        shapes = {image.shape for image in images}
        if len(shapes) > 1:
            raise MediaError(f"{self.directory}: frames differ in size ({sorted(shapes)})")
        return np.stack(images)[inverse.reshape(-1)]


JPEG_DCT = ("accurate", "fast")


def check_jpeg_dct(dct: str) -> str:
    """``dct`` if it names a JPEG decoding (``accurate`` or ``fast``), else one line."""
    if dct not in JPEG_DCT:
        raise ConfigError(f"--jpeg-dct {dct!r}: expected accurate or fast")
    return dct


def read_image(
    path: Path, *, shorter_side: int | None, mode: str, dct: str = "accurate"
) -> np.ndarray:
    """One JPEG/PNG as uint8, resized so that its shorter side is ``shorter_side``.

    JPEGs are downscaled inside the decoder first (DCT scaling by 1/2, 1/4 or 1/8, never below
    the target), then resized bilinearly to the exact size (TSN's ``GroupScale`` resizes the whole
    JPEG bilinearly: docs/extraction.md gives the difference).

    ``dct="fast"``: a JPEG is decoded as TensorFlow's ``tf.image.decode_jpeg`` decodes it by
    default (libjpeg-turbo's fast integer IDCT, fancy upsampling; ``channels=1`` for ``mode``
    "L": the decoder's own luminance), through simplejpeg, then resized bilinearly without DCT
    scaling: MM-SADA's input. ``"accurate"``: Pillow's arrays (libjpeg's accurate integer
    IDCT); a JPEG that needs no resizing, YCbCr read as RGB or grey read as L, is decoded by
    simplejpeg when it is installed: the same arrays, 1.5-1.9x faster (benchmarks/frames.py).
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise MediaError(f"frame {path} not found (a gap in the frame folder?)") from exc
    except OSError as exc:
        raise MediaError(f"frame {path} cannot be read: {exc}") from exc
    if data[:3] == b"\xff\xd8\xff":  # a JPEG
        if dct == "fast":
            return _read_jpeg_fast(path, data, shorter_side=shorter_side, mode=mode)
        decoded = _accurate_by_simplejpeg(data, shorter_side=shorter_side, mode=mode)
        if decoded is not None:
            return decoded
    return _read_with_pillow(path, data, shorter_side=shorter_side, mode=mode)


def _read_with_pillow(path: Path, data: bytes, *, shorter_side: int | None, mode: str):
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = resized_size(image.width, image.height, shorter_side)
            if (width, height) != image.size:
                image.draft(mode, (width, height))
            converted = image.convert(mode)
            if converted.size != (width, height):
                converted = converted.resize((width, height), Image.BILINEAR)
            return np.asarray(converted)
    except OSError as exc:
        raise MediaError(f"frame {path} cannot be decoded: {exc}") from exc


# what a JPEG's components must be for simplejpeg to give Pillow's array in each mode (Pillow
# converts other layouts itself, e.g. a colour JPEG read as L by its own RGB -> L formula)
_SAME_LAYOUT = {"RGB": "YCbCr", "L": "Gray"}


def _accurate_by_simplejpeg(data: bytes, *, shorter_side: int | None, mode: str):
    """Pillow's array of a JPEG that needs no resizing, decoded by simplejpeg (the same
    libjpeg-turbo computation: accurate IDCT, fancy upsampling), or None where it cannot be
    (simplejpeg not installed, another layout, a resize: Pillow's DCT scaling, a JPEG it does
    not read)."""
    try:
        import simplejpeg
    except ImportError:
        return None
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        if _SAME_LAYOUT.get(mode) != colorspace:
            return None
        if resized_size(width, height, shorter_side) != (width, height):
            return None
        image = simplejpeg.decode_jpeg(
            data, colorspace="GRAY" if mode == "L" else "RGB", fastdct=False, fastupsample=False
        )
    except ValueError:
        return None  # Pillow reads it, or says why not
    return np.ascontiguousarray(image[..., 0] if mode == "L" else image)


def _read_jpeg_fast(path: Path, data: bytes, *, shorter_side: int | None, mode: str):
    from PIL import Image

    simplejpeg = require(
        "simplejpeg", package="simplejpeg", extra="jpeg", feature="--jpeg-dct fast"
    )
    try:
        decoded = simplejpeg.decode_jpeg(
            data, colorspace="GRAY" if mode == "L" else "RGB", fastdct=True, fastupsample=False
        )
    except (ValueError, OSError) as exc:
        raise MediaError(f"frame {path} cannot be decoded: {exc}") from exc
    image = decoded[..., 0] if mode == "L" else decoded
    height, width = image.shape[:2]
    size = resized_size(width, height, shorter_side)
    if size != (width, height):
        image = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
    return np.ascontiguousarray(image)


class RgbFrames:
    """The RGB JPEG folder of one video (``jpeg_dct``: see :func:`read_image`)."""

    def __init__(self, directory: Path, jpeg_dct: str = "accurate") -> None:
        self.directory = directory
        self.images = ImageSequence(directory, RGB_PATTERN, jpeg_dct=jpeg_dct)

    @property
    def count(self) -> int:
        return self.images.count

    def read(self, numbers: np.ndarray, *, shorter_side: int | None) -> np.ndarray:
        """``(n, H, W, 3)`` uint8 RGB."""
        return self.images.read(numbers, shorter_side=shorter_side, mode="RGB")


class FlowFrames:
    """The u/v flow JPEG folder of one video (EPIC ``u/`` ``v/`` or TSN ``x_`` ``y_`` files)."""

    def __init__(
        self, directory: Path, convention: FlowConvention, jpeg_dct: str = "accurate"
    ) -> None:
        self.directory = directory
        self.convention = convention
        total = convention.frames
        if (directory / "u").is_dir() and (directory / "v").is_dir():
            flat = sorted(
                entry.name
                for entry in os.scandir(directory)
                if any(p.match(entry.name) for p in FLOW_PATTERNS.values())
            )
            if flat:  # TSN's x_/y_ files beside u/ and v/: two flows, one would go unread
                raise MediaError(
                    f"{directory} holds u/ and v/ and {len(flat)} flow frame(s) beside them "
                    f"({flat[0]}...): two tools' flow in one folder; move one of them out"
                )
            self.u = ImageSequence(directory / "u", EPIC_FLOW_PATTERN, total, jpeg_dct)
            self.v = ImageSequence(directory / "v", EPIC_FLOW_PATTERN, total, jpeg_dct)
        else:
            self.u = ImageSequence(directory, FLOW_PATTERNS["u"], total, jpeg_dct)
            self.v = ImageSequence(directory, FLOW_PATTERNS["v"], total, jpeg_dct)
        unfinished = [*self.u.unfinished, *self.v.unfinished]
        if unfinished:  # a run stopped there: its frames are not all written
            raise MediaError(
                f"{directory} holds {len(unfinished)} unfinished write(s) ({unfinished[0]}): "
                "an avda flow run on it stopped before it finished; run the same avda flow "
                "again to finish it, then extract"
            )
        if self.u.count != self.v.count:
            log.warning(
                "%s: %d u frames but %d v frames; using the first %d",
                directory,
                self.u.count,
                self.v.count,
                min(self.u.count, self.v.count),
            )

    @property
    def count(self) -> int:
        return min(self.u.count, self.v.count)

    def read(self, numbers: np.ndarray, *, shorter_side: int | None) -> np.ndarray:
        """``(n, H, W, 2)`` uint8 with channels (u, v), 128 = no motion."""
        numbers = np.clip(np.asarray(numbers, dtype=np.int64), 1, self.count)
        u = self.u.read(numbers, shorter_side=shorter_side, mode="L")
        v = self.v.read(numbers, shorter_side=shorter_side, mode="L")
        return np.stack([u, v], axis=-1)


def dequantise(values: np.ndarray, bound: float) -> np.ndarray:
    """Flow JPEG values 0..255 back to pixels: ``v / 255 * 2b - b``."""
    return np.asarray(values, dtype=np.float32) / 255.0 * (2.0 * bound) - bound


def quantise(flow: np.ndarray, bound: float) -> np.ndarray:
    """Pixels to uint8: clip to ``±bound``, then ``round(255 * (v + b) / (2 b))``.

    Rounding is half-to-even (``cvRound`` in furnari-flow / gpu_flow).
    """
    clipped = np.clip(np.asarray(flow, dtype=np.float32), -bound, bound)
    return np.rint(255.0 * (clipped + bound) / (2.0 * bound)).astype(np.uint8)
