"""Sampling recipes: how many clips K per segment, where, and which frames / audio each takes.

A recipe is data (a frozen config) written into the cache provenance, so a cache always says how
its features were sampled. Every recipe of the five reference methods is registered here by name
and documented in ``docs/extraction.md``; the placements reproduce the reference code's index
arithmetic exactly:

===========  ==============================================================================
placement    where the K clips go (and how a segment shorter than a clip is padded)
===========  ==============================================================================
centres      time based (avda v0.1): centres ``start + (k + 0.5) * duration / K``, frames
             ``1 / frame_rate`` s apart around them; frames outside the video repeat the edge
mmsada       MM-SADA ``sample_segment_test``: centre frames ``linspace(s0, e0, K + 2)[1:-1]``
             with ``s0 = start + step*T/2``, ``e0 = stop + 1 - step*T/2``; a segment shorter than
             a window falls back to ``[start, stop]`` and the window reads frames outside it
random       MM-SADA ``sample_segment`` (training): centres drawn uniformly from ``[s0, e0]``,
             seeded by (recipe seed, segment uid) so that resumed and sharded runs agree
tsn          TSN / TBN ``_get_test_indices``: ``tick = (n - new_length + 1) / K``, offsets
             ``int(tick/2 + tick*k)``; a snippet's consecutive frames stop advancing at the last
             frame of the segment (the last frame repeats)
mmaction     mmaction2 ``SampleFrames(test_mode=True)``: ``avg = (n - T*step + 1) / K``, offsets
             ``int(avg/2 + avg*k)`` (all 0 when the segment is shorter than a clip) and frame
             indices wrap around the segment (``out_of_bound_opt='loop'``)
===========  ==============================================================================

Frame numbers are 1-based, as in EPIC-KITCHENS file names (``frame_0000000001.jpg``) and its
``start_frame`` / ``stop_frame`` columns. Where a manifest has no frame columns they are derived
from the seconds and the frame rate (:meth:`SegmentFrames.from_seconds`). Converting between
frame numbers and seconds is anchored at the segment start (:meth:`SegmentFrames.time_of`), so a
frame folder extracted at a nominal rate (EPIC: 60 fps for 59.94 fps videos) never drifts.

Flow frame numbers: a recipe samples RGB frame numbers and converts them to flow numbers with the
flow folder's rate ratio (MM-SADA ``int(rgb / 2)`` for EPIC-55, identity for EPIC-100), except
``tsn``, which (like TBN) places its flow snippets in flow-frame space.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from typing import Literal

import numpy as np

from avda.config import Config
from avda.errors import ConfigError
from avda.registry import Registry

RECIPES: Registry = Registry("sampling recipe")

Placement = Literal["centres", "mmsada", "random", "tsn", "mmaction"]
AudioWindows = Literal["segment", "clips", "snippets"]
AudioCut = Literal["tile", "tile-round", "tbn"]


@dataclasses.dataclass(frozen=True)
class SegmentFrames:
    """One segment on its source's frame grid: seconds, 1-based frame numbers and the rate.

    ``start_frame`` is the number of the first frame of the segment and ``stop_frame`` that of
    its last one (EPIC convention). ``fps`` converts frame offsets *within* the segment to
    seconds.
    """

    uid: str
    start_sec: float
    stop_sec: float
    start_frame: int
    stop_frame: int
    fps: float

    @classmethod
    def from_seconds(cls, uid: str, start_sec: float, stop_sec: float, fps: float) -> SegmentFrames:
        """Frame numbers of the frames shown at ``start_sec`` and ``stop_sec``."""
        if not fps or not 0 < fps < math.inf:
            raise ConfigError(f"segment {uid!r}: frame rate {fps!r} must be positive")
        if not (math.isfinite(start_sec) and math.isfinite(stop_sec * fps)):
            raise ConfigError(
                f"segment {uid!r}: start_sec {start_sec!r} / stop_sec {stop_sec!r} are not "
                "finite times at this frame rate; fix the manifest (`avda manifest validate`)"
            )
        start = int(math.floor(start_sec * fps + 1e-6)) + 1
        stop = max(start, int(math.floor(stop_sec * fps + 1e-6)) + 1)
        return cls(uid, float(start_sec), float(stop_sec), start, stop, float(fps))

    def time_of(self, numbers: np.ndarray) -> np.ndarray:
        """A time inside each frame of ``numbers``, to decode it from a video by its timestamps.

        Anchored at the segment start: ``start_sec`` is a time of frame ``start_frame`` (the
        frame shown then), at a fraction ``f`` of it (``start_sec * fps`` mod 1), and frame n is
        the one shown ``(n - start_frame) / fps`` later. The time returned is the middle of what
        is left of that frame: ``(1 - f) / 2`` frames on, so strictly inside it whether
        ``start_sec`` lies at a frame's start (a timestamp rounded to the millisecond then still
        reads frame n, not n - 1) or late in it (half a frame would read frame n + 1)."""
        position = self.start_sec * self.fps
        fraction = position - math.floor(position + 1e-6)  # where start_sec is in its frame
        inside = (1.0 - min(max(fraction, 0.0), 1.0)) / 2.0
        return self.anchored(numbers) + inside / self.fps

    def anchored(self, numbers: np.ndarray) -> np.ndarray:
        """``start_sec + (n - start_frame) / fps``: the time frame n is at ``start_sec``'s place
        in it (docs/extraction.md; TBN centres its audio windows there)."""
        return self.start_sec + (np.asarray(numbers, dtype=np.float64) - self.start_frame) / (
            self.fps
        )

    def number_at(self, seconds: np.ndarray) -> np.ndarray:
        """Number of the frame shown at each time (anchored at the segment start)."""
        offsets = np.floor(
            (np.asarray(seconds, dtype=np.float64) - self.start_sec) * self.fps + 1e-6
        )
        return self.start_frame + offsets.astype(np.int64)


@dataclasses.dataclass(frozen=True)
class ClipPlan:
    """The frames of the K clips of one segment and one stream.

    Exactly one of ``times`` (seconds, time-based recipes decoded from videos) and ``numbers``
    (1-based frame numbers of the stream: RGB or flow) is set; both are ``(K, T)``.
    """

    times: np.ndarray | None = None
    numbers: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int]:
        values = self.times if self.times is not None else self.numbers
        return tuple(values.shape)  # type: ignore[union-attr,return-value]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Recipe(Config):
    """Where and how to sample a segment.

    v0.1 fields: ``frame_rate`` is the rate of the sampled frames of a time-based clip
    (``placement="centres"``; frame-based placements record the nominal rate for information);
    ``resize_shorter`` is done inside the decoder, then a centre crop of ``crop_size``. Audio:
    ``audio_windows`` "segment" takes one window over the whole segment (tiled or cut to
    ``audio_seconds``); "clips" one ``audio_seconds`` window centred on each visual clip.

    Added fields (their defaults reproduce v0.1, so older provenance compares equal):

    - ``placement``: see the module docstring.
    - ``frame_step``: source frames between two sampled frames (MM-SADA and SlowFast 2, TBN 1);
      frame-based placements only.
    - ``flow_frames``: flow frames per clip (TBN: 5, stacked to 10 channels); None = ``num_frames``.
    - ``audio_windows="snippets"``: one window centred on the first frame of each clip (TBN).
    - ``audio_cut``: how a window is cut from the track: "tile" (v0.1: floor/ceil, tiled when
      short), "tile-round" (VGGSound / Audio-Adaptive: ``round(t * rate)``, first ``n``
      samples, tiled), "tbn" (TBN: ``[c - 0.639, c + 0.639)``, shifted inside the track at its
      edges).
    - ``pixel_normalisation``: "input_spec" (the backbone's contract) or "mmsada"
      (``x / 128 - 1`` for RGB and flow JPEG values, MM-SADA's I3D input).
    - ``spatial``: also store the last feature map before pooling (CIA / M3EM).
    - ``seed``: seed of the ``random`` placement.
    - ``crop_offset``: where the centre crop starts, ``(W - crop_size) / 2`` rounded half to
      even ("round": TF / torchvision ``CenterCrop``, v0.1) or floored ("floor": mmaction2's
      ``CenterCrop``, ``(W - crop_size) // 2``); they differ by one pixel when the margin is
      odd, e.g. 224 of 455-wide frames (1280 x 720 and 1920 x 1080 videos): 116 against 115.
    """

    name: str
    num_clips: int
    num_frames: int
    frame_rate: float
    resize_shorter: int
    crop_size: int
    audio_windows: AudioWindows = "segment"
    audio_seconds: float = 10.0
    placement: Placement = "centres"
    frame_step: int = 1
    flow_frames: int | None = None
    audio_cut: AudioCut = "tile"
    pixel_normalisation: Literal["input_spec", "mmsada"] = "input_spec"
    spatial: bool = False
    seed: int = 0
    crop_offset: Literal["round", "floor"] = "round"

    def __post_init__(self) -> None:
        where = f"recipe {self.name!r}"
        for field in ("num_clips", "num_frames", "frame_step", "resize_shorter", "crop_size"):
            if getattr(self, field) < 1:
                raise ConfigError(f"{where}: {field} must be >= 1, got {getattr(self, field)}")
        if self.flow_frames is not None and self.flow_frames < 1:
            raise ConfigError(f"{where}: flow_frames must be >= 1 or null, got {self.flow_frames}")
        if self.frame_rate <= 0 or self.audio_seconds <= 0:
            raise ConfigError(f"{where}: frame_rate and audio_seconds must be positive")
        if self.crop_offset not in ("round", "floor"):
            raise ConfigError(
                f"{where}: crop_offset must be round or floor, got {self.crop_offset!r}"
            )
        if self.crop_size > self.resize_shorter:
            raise ConfigError(
                f"{where}: crop_size {self.crop_size} is larger than resize_shorter "
                f"{self.resize_shorter}; the crop must fit inside the resized frame"
            )

    # ----------------------------------------------------------------- v0.1 API (time based)
    def clip_centres(self, start: float, stop: float) -> np.ndarray:
        """(K,) clip centre times in seconds, uniformly spaced over ``[start, stop]``."""
        duration = max(stop - start, 0.0)
        return start + (np.arange(self.num_clips) + 0.5) * duration / self.num_clips

    def frame_times(self, start: float, stop: float) -> np.ndarray:
        """(K, T) times of every sampled frame (``centres`` placement)."""
        offsets = (np.arange(self.num_frames) - (self.num_frames - 1) / 2) / self.frame_rate
        return self.clip_centres(start, stop)[:, None] + offsets[None, :]

    def audio_spans(self, start: float, stop: float) -> list[tuple[float, float]]:
        """The (start, stop) seconds of each audio window (``centres`` placement)."""
        if self.audio_windows == "segment":
            return [(start, stop)]
        half = self.audio_seconds / 2
        return [(c - half, c + half) for c in self.clip_centres(start, stop)]

    @property
    def num_audio_windows(self) -> int:
        return 1 if self.audio_windows == "segment" else self.num_clips

    @property
    def clip_frames(self) -> dict[str, int]:
        """Frames per clip of each visual stream (``{"rgb": T, "flow": T_flow}``)."""
        return {"rgb": self.num_frames, "flow": self.flow_frames or self.num_frames}

    # ----------------------------------------------------------------- plans
    def rgb_plan(self, segment: SegmentFrames) -> ClipPlan:
        """Frames of the K RGB clips: times (``centres``) or RGB frame numbers."""
        if self.placement == "centres":
            return ClipPlan(times=self.frame_times(segment.start_sec, segment.stop_sec))
        return ClipPlan(numbers=self._rgb_numbers(segment, self.num_frames))

    def rgb_numbers(self, segment: SegmentFrames) -> np.ndarray:
        """(K, T) RGB frame numbers, for frame folders (time-based plans are converted)."""
        plan = self.rgb_plan(segment)
        if plan.numbers is not None:
            return plan.numbers
        return segment.number_at(plan.times)

    def flow_numbers(self, segment: SegmentFrames, flow_ratio: float) -> np.ndarray:
        """(K, T_flow) flow frame numbers; ``flow_ratio`` = flow frames per RGB frame."""
        frames = self.clip_frames["flow"]
        if self.placement == "tsn":
            return self._tsn_flow(segment, frames, flow_ratio)
        if self.placement == "centres":
            rgb = segment.number_at(self.frame_times(segment.start_sec, segment.stop_sec))
            if frames != self.num_frames:
                rgb = _resample_columns(rgb, frames)
        else:
            rgb = self._rgb_numbers(segment, frames)
        # MM-SADA: flow index = int(rgb_index / 2) for the half-rate EPIC-55 flow.
        return np.maximum(np.floor(rgb * flow_ratio + 1e-9).astype(np.int64), 1)

    def clip_times(self, segment: SegmentFrames) -> np.ndarray:
        """(K,) centre time of each visual clip (mean time of its RGB frames)."""
        plan = self.rgb_plan(segment)
        if plan.times is not None:
            return plan.times.mean(axis=1)
        # the frames' middles where start_sec is a frame's start (EPIC's times are not)
        return segment.anchored(plan.numbers).mean(axis=1) + 0.5 / segment.fps

    def audio_windows_of(self, segment: SegmentFrames) -> list[tuple[float, float]]:
        """(start, stop) seconds of each audio window of ``segment``."""
        if self.audio_windows == "segment":
            return [(segment.start_sec, segment.stop_sec)]
        if self.audio_windows == "snippets":
            numbers = self.rgb_numbers(segment)[:, 0]
            # TBN: centre = (start_frame + idx) / fps, i.e. the start time of the snippet frame.
            centres = segment.anchored(numbers)
        elif self.placement == "centres":
            centres = self.clip_centres(segment.start_sec, segment.stop_sec)
        else:
            centres = self.clip_times(segment)
        half = self.audio_seconds / 2
        return [(float(c) - half, float(c) + half) for c in centres]

    # ----------------------------------------------------------------- placements
    def _rgb_numbers(self, segment: SegmentFrames, frames: int) -> np.ndarray:
        if self.placement in ("mmsada", "random"):
            return self._mmsada(segment, frames)
        if self.placement == "tsn":
            return _tsn_numbers(
                first=segment.start_frame - 1,
                count=segment.stop_frame - segment.start_frame - 1,
                num_clips=self.num_clips,
                new_length=frames,
            )
        if self.placement == "mmaction":
            return self._mmaction(segment, frames)
        times = self.frame_times(segment.start_sec, segment.stop_sec)
        return segment.number_at(times)

    def _mmsada(self, segment: SegmentFrames, frames: int) -> np.ndarray:
        """MM-SADA ``c3d_sampling`` (``batch_generator.py``) with ``step = frame_step``."""
        step, half = self.frame_step, frames // 2
        start, stop = segment.start_frame, segment.stop_frame
        lo, hi = start + step * half, stop + 1 - step * half
        if lo >= hi:  # segment shorter than a window: sample around the whole segment
            lo, hi = start, stop
        if lo <= half * step + 1:  # never below frame 1
            lo = half * step + 2
        if self.placement == "mmsada":
            centres = np.linspace(lo, hi, self.num_clips + 2, dtype=np.int32)[1:-1]
        else:
            rng = np.random.default_rng([self.seed, zlib.crc32(segment.uid.encode())])
            centres = rng.integers(min(lo, hi), max(lo, hi) + 1, size=self.num_clips)
        offsets = np.arange(-step * half, -step * half + step * frames, step)
        return centres.astype(np.int64)[:, None] + offsets[None, :]

    def _mmaction(self, segment: SegmentFrames, frames: int) -> np.ndarray:
        """mmaction2 ``SampleFrames._get_test_clips`` + ``out_of_bound_opt='loop'``."""
        total = max(segment.stop_frame - segment.start_frame, 1)
        span = frames * self.frame_step
        average = (total - span + 1) / float(self.num_clips)
        if total > span - 1:
            offsets = (np.arange(self.num_clips) * average + average / 2.0).astype(np.int64)
        else:
            offsets = np.zeros(self.num_clips, dtype=np.int64)
        indices = offsets[:, None] + np.arange(frames)[None, :] * self.frame_step
        return np.mod(indices, total) + segment.start_frame

    def _tsn_flow(self, segment: SegmentFrames, frames: int, ratio: float) -> np.ndarray:
        """TBN flow snippets: placed in flow-frame space (``dataset.py``, ``_load_data``)."""
        first = segment.start_frame - 1  # TBN record: start_frame - 1 (0-based)
        last = segment.stop_frame - 2  # TBN record: stop_frame - 2
        count = (last - first) * ratio  # a float, as in the reference
        numbers = _tsn_numbers(
            first=int(np.floor(first * ratio)),
            count=count,
            num_clips=self.num_clips,
            new_length=frames,
        )
        return np.maximum(numbers, 1)


def _tsn_numbers(*, first: int, count: float, num_clips: int, new_length: int) -> np.ndarray:
    """TSN/TBN test indices as 1-based file numbers ``(K, new_length)``.

    ``first`` is the 0-based index of the segment's first frame, ``count`` its number of frames.
    Within a snippet the index advances only while it is below ``count`` (TBN ``get``).
    """
    tick = (count - new_length + 1) / float(num_clips)
    offsets = np.array([int(tick / 2.0 + tick * k) for k in range(num_clips)], dtype=np.int64)
    rows = []
    for offset in offsets:
        position, row = int(offset), []
        for _ in range(new_length):
            row.append(first + position + 1)  # 0-based index -> 1-based file number
            if position < count:
                position += 1
        rows.append(row)
    return np.asarray(rows, dtype=np.int64)


def _resample_columns(values: np.ndarray, count: int) -> np.ndarray:
    """``count`` evenly spaced columns of ``values`` (K, T)."""
    index = np.linspace(0, values.shape[1] - 1, count).round().astype(int)
    return values[:, index]


def get(name: str) -> Recipe:
    return RECIPES.get(name)


def names() -> list[str]:
    return RECIPES.names()


def _add(recipe: Recipe) -> None:
    RECIPES.register(recipe.name)(recipe)


# v0.1 recipes: unchanged, so caches made with them resume and compare equal.
# 5 uniformly spaced 16-frame I3D windows at 30 fps (time based), shorter side 256, centre crop
# 224. Audio: one 10 s window (VGGSound recipe).
_add(
    Recipe(
        name="mmsada",
        num_clips=5,
        num_frames=16,
        frame_rate=30.0,
        resize_shorter=256,
        crop_size=224,
    )
)
# The built-in demo: 2 clips of 16 frames at 16 fps, 112 px crops, 2 s of audio per segment.
_add(
    Recipe(
        name="demo",
        num_clips=2,
        num_frames=16,
        frame_rate=16.0,
        resize_shorter=128,
        crop_size=112,
        audio_seconds=2.0,
    )
)

# MM-SADA test protocol exactly (training_loops.evaluate / sample_segment_test): 5 windows of
# 16 frames, every 2nd frame (60 fps EPIC frames -> 30 fps), centres linspace(s0, e0, 7)[1:-1];
# flow = int(rgb / 2) on EPIC-55; pixels x / 128 - 1; centre crop 224 of the 256-high frames.
_add(
    Recipe(
        name="mmsada-test",
        placement="mmsada",
        num_clips=5,
        num_frames=16,
        frame_step=2,
        frame_rate=30.0,
        resize_shorter=256,
        crop_size=224,
        pixel_normalisation="mmsada",
        audio_cut="tile-round",
    )
)
# MM-SADA training: one random 16-frame window per step. The cache stores 10 random windows per
# segment (seeded); a head draws one per epoch (the same k for RGB and flow gives synchronised
# pairs, different k independent positions as in MM-SADA's default).
_add(
    Recipe(
        name="mmsada-train",
        placement="random",
        num_clips=10,
        num_frames=16,
        frame_step=2,
        frame_rate=30.0,
        resize_shorter=256,
        crop_size=224,
        pixel_normalisation="mmsada",
        audio_cut="tile-round",
    )
)
# TA3N / EPIC-100 UDA released features: TBN, 25 test snippets per segment (TSN indices);
# RGB 1 frame, flow 5 frames (10 channels), audio a 1.279 s window at each snippet (24 kHz).
_add(
    Recipe(
        name="ta3n",
        placement="tsn",
        num_clips=25,
        num_frames=1,
        flow_frames=5,
        frame_step=1,
        frame_rate=60.0,
        resize_shorter=256,
        crop_size=224,
        audio_windows="snippets",
        audio_seconds=1.278,
        audio_cut="tbn",
    )
)
# RNA-Net (WACV'22): I3D 16-frame windows strided by 2 (as MM-SADA, 5 test windows) and a
# 1.28 s audio window centred on each (supplementary Table 1; BN-Inception / TBN audio stream).
_add(
    Recipe(
        name="rna-net",
        placement="mmsada",
        num_clips=5,
        num_frames=16,
        frame_step=2,
        frame_rate=30.0,
        resize_shorter=256,
        crop_size=224,
        pixel_normalisation="mmsada",
        audio_windows="clips",
        audio_seconds=1.28,
        audio_cut="tbn",
    )
)
# CIA (CVPR'22) / M3EM (EPIC-100 UDA 2021): TBN features of 25 uniformly sampled snippets, with
# the 1024 x 7 x 7 RGB and flow maps before pooling (audio: pooled 1024).
_add(
    Recipe(
        name="cia",
        placement="tsn",
        num_clips=25,
        num_frames=1,
        flow_frames=5,
        frame_step=1,
        frame_rate=60.0,
        resize_shorter=256,
        crop_size=224,
        audio_windows="snippets",
        audio_seconds=1.278,
        audio_cut="tbn",
        spatial=True,
    )
)
# Audio-Adaptive (CVPR'22): SlowFast test pipeline SampleFrames(clip_len=32, frame_interval=2,
# num_clips=5, test_mode=True), short side 256, crop 256 (one of its three crops); audio: the
# whole segment cut at round(t * 16000), first 10 s, tiled (VGGSound ResNet-18).
_add(
    Recipe(
        name="audio-adaptive",
        placement="mmaction",
        num_clips=5,
        num_frames=32,
        frame_step=2,
        frame_rate=30.0,
        resize_shorter=256,
        crop_size=256,
        audio_windows="segment",
        audio_seconds=10.0,
        audio_cut="tile-round",
    )
)
# Audio-Adaptive's per-epoch evaluation input: train_recognizer.py's EPICDOMAIN(split='test')
# reads the config's val_pipeline: the same 5 clips, short side 256, then mmaction2's
# CenterCrop(224), whose offset is floored (test_recognizer.py reads the test pipeline,
# CenterCrop(256): the `audio-adaptive` recipe; docs/extraction.md).
_add(
    dataclasses.replace(
        RECIPES.get("audio-adaptive"), name="audio-adaptive-224", crop_size=224, crop_offset="floor"
    )
)
