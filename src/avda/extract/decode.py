"""Video decoding: only the sampled frames, resized inside the decoder, with decord or PyAV.

Two backends with one interface (:class:`VideoDecoder`): ``decord`` where it is installed (its
wheels exist for Linux x86-64 and Windows x86-64 only) and ``pyav`` everywhere else (aarch64,
macOS). ``VideoDecoder(path, ...)`` picks decord when it can be imported, else PyAV;
``backend=`` or the environment variable ``AVDA_VIDEO_DECODER=pyav|decord`` forces one. Both
give the same frame count, timestamps and pixels: PyAV resizes through the filter chain decord
uses (``scale=W:H`` with bilinear flags, then rgb24), which reproduces decord's frames exactly.

Frame positions come from the container's own timestamps (``(pts - stream start) *
time_base`` of the video packets, sorted), so seconds map to the right frame for fractional
(29.97, 19.62) and variable frame rates alike. A stream without packet timestamps falls back to
``index / fps``. decord's timestamps are checked (:func:`timestamps_problem`): where they cannot
be the frames' times (packets without a pts: about -3.7e17 s; a stream without a start time, as
Matroska files written by PyAV: about 9.2e15 s for every frame), PyAV decodes the whole file
(decord finds frames by these timestamps: it returned frame 162 of test.avi for its last frame
now and then). PyAV's timestamps, with decord's frames, are used where decord's first frame time
differs from PyAV's (by more than 0.1 ms)
(:func:`first_frame_times`: a short Matroska stream with AAC audio, whose start decord's FFmpeg 4
takes from the audio's priming, put every frame 1024 samples late).

Corrupt packets: decord gives up on a whole batch when one packet cannot be decoded. The decord
backend then retries the frames one by one, and decodes those that still fail with PyAV (the
same code as the PyAV backend), which skips the damaged packets (FFmpeg error concealment); a
frame that no packet yields takes the nearest decodable frame within
:data:`CONCEALMENT_SECONDS` (logged), else the segment fails.
"""

from __future__ import annotations

import collections
import dataclasses
import heapq
import itertools
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from avda.errors import ConfigError, MediaError

log = logging.getLogger(__name__)

CONCEALMENT_SECONDS = 0.5
DECODER_ENV = "AVDA_VIDEO_DECODER"
BACKENDS = ("decord", "pyav")
# Output frames held back before their timestamps are assigned: some decoders (MPEG-4 part 2
# with packed B-frames in AVI) emit frames in display order but with their packets' pts, so a
# frame's own pts can belong to its neighbour; sorting the pts of a short window fixes that.
_REORDER_FRAMES = 3


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """What the container header says about a file (read with PyAV, no decoding)."""

    path: Path
    width: int
    height: int
    fps: float
    audio_channels: tuple[int, ...]
    audio_sample_rates: tuple[int, ...]
    # the video stream's length in seconds (its own, else the container's; None: unknown) and
    # whether it has a start time (decord misplaces every frame of a stream without one)
    duration: float | None = None
    has_start_time: bool = True
    # the video codec's FFmpeg name and whether its stream reorders frames (B-frames); the
    # container's FFmpeg name ("avi", "mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm", ...)
    codec: str = ""
    b_frames: bool = False
    container: str = ""


def probe(path: str | Path) -> VideoInfo:
    """Read stream metadata; raises :class:`MediaError` for missing or unreadable files."""
    import av

    path = Path(path)
    if not path.exists():
        from avda.data_manifests.schema import same_name_hint

        raise MediaError(
            f"video file {path} not found{same_name_hint(path)}; check --videos and the "
            "manifest's video_path"
        )
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise MediaError(f"{path} has no video stream")
            stream = container.streams.video[0]
            width, height = stream.codec_context.width, stream.codec_context.height
            rate = stream.average_rate or stream.guessed_rate or 0
            audio = container.streams.audio
            channels = tuple(int(a.codec_context.channels) for a in audio)
            rates = tuple(int(a.codec_context.sample_rate or 0) for a in audio)
            duration = _header_duration(container, stream)
            has_start_time = stream.start_time is not None
            codec, b_frames = stream.codec_context.name, bool(stream.codec_context.has_b_frames)
            container_name = str(container.format.name)
    except MediaError:
        raise
    except Exception as exc:  # PyAV raises many error types for damaged files
        raise MediaError(f"{path} cannot be opened as a video: {exc}") from exc
    if not width or not height:
        raise MediaError(f"{path}: video stream has no frame size (damaged header?)")
    return VideoInfo(
        *(path, int(width), int(height), float(rate), channels, rates, duration, has_start_time),
        *(codec, b_frames, container_name),
    )


def _header_duration(container: Any, stream: Any) -> float | None:
    """Seconds the header gives the video stream: its own duration, else the container's."""
    if stream.duration is not None and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return float(container.duration) / 1e6  # AV_TIME_BASE
    return None


def timestamps_problem(timestamps: np.ndarray, fps: float, duration: float | None) -> str | None:
    """Why ``timestamps`` (seconds, one per frame, display order) cannot be a video's frame
    times, or None: non-finite, before -1 s, decreasing, or past the stream's ``duration``
    (from the header; else ``len / fps``) by more than a frame. decord computes ``(pts - stream
    start) * time_base`` with FFmpeg's "no value" (-2**63) taken as a number: packets without a
    pts come out at about -3.7e17 s, and every frame of a stream without a start time at about
    9.2e15 s (one float32 value, so all frames at one time)."""
    ts = np.asarray(timestamps, dtype=np.float64)
    if ts.size == 0:
        return None
    if not np.all(np.isfinite(ts)):
        return "not finite"
    if ts.min() < -1.0:
        return f"frames at {ts.min():.3g} s"
    if np.any(np.diff(ts) < 0):
        return "not in display order"
    frame = 1.0 / fps if fps > 0 else 0.0
    span = duration if duration is not None and duration > 0 else ts.size * frame
    if span > 0 and ts.max() > span + frame + 1e-3:
        return f"frames at {ts.max():.3g} s in a {span:.3g} s stream"
    return None


# Video packets (decode order) read for the first displayed frame: more than any B-frame delay.
_FIRST_VIDEO_PACKETS = 8
_FIRST_PACKETS = 256  # all streams together: stop reading a file that interleaves badly
_FIRST_FRAME_TOLERANCE = 1e-4  # seconds


@dataclasses.dataclass(frozen=True)
class FirstFrameTimes:
    """The first displayed video frame's time in seconds (None: unknown, a packet without pts)
    as PyAV gives it (``(min pts of the first packets - stream start) * time_base``, as
    :class:`_PyAVStream`) and as decord's FFmpeg 4 did (see :func:`first_frame_times`)."""

    pyav: float | None
    decord: float | None


def first_frame_times(path: str | Path) -> FirstFrameTimes:
    """Read the header and the first few packets (cheap) of ``path`` with PyAV.

    decord computes ``(pts - video stream start_time) * time_base``. A video stream without a
    start time of its own (short H.264 Matroska streams) is given the container's by FFmpeg,
    the earliest of all streams' starts; FFmpeg 7 (PyAV) starts an AAC track after its priming
    samples (Matroska CodecDelay), decord's FFmpeg 4 at its first packet, 1024 samples earlier
    (pts -64 ms at 16 kHz; Opus 7 ms, AC-3 5 ms likewise): decord put every frame that much
    late. ``decord`` predicts this from
    the container's first packets: in Matroska (no per-track durations) a video stream whose
    start and duration are the container's took them from the container."""
    import av

    try:
        with av.open(str(path)) as container:
            video = container.streams.video[0]
            base = float(video.time_base)
            first: dict[int, float] = {}
            pts: list[int | None] = []
            for count, packet in enumerate(container.demux(), start=1):
                if packet.size and packet.pts is not None and packet.stream.index not in first:
                    first[packet.stream.index] = float(packet.pts * packet.stream.time_base)
                if packet.size and packet.stream.index == video.index:
                    pts.append(packet.pts)
                if len(pts) >= _FIRST_VIDEO_PACKETS or count >= _FIRST_PACKETS:
                    break
            start = video.start_time
            filled = (
                "matroska" in container.format.name
                and start is not None
                and container.start_time is not None
                and container.duration is not None
                and video.duration is not None
                and start == round(container.start_time * 1e-6 / base)
                and video.duration == round(container.duration * 1e-6 / base)
            )
    except Exception:  # unreadable, no video stream: nothing to compare
        return FirstFrameTimes(None, None)
    known = [p for p in pts if p is not None]
    if not known or len(known) < len(pts):
        return FirstFrameTimes(None, None)
    pyav = (min(known) - (start or 0)) * base
    decord = min(known) * base - min(first.values()) if filled else pyav
    return FirstFrameTimes(float(pyav), float(decord))


def shifted_first_frame(decord: float, pyav: float | None) -> bool:
    """Whether decord's first frame time is off PyAV's (by more than 0.1 ms: float32 rounding;
    a Matroska tick is 1 ms, 1024 AAC samples at 44.1 kHz 23 ms, a quarter frame at 10 fps)."""
    return pyav is not None and abs(decord - pyav) > _FIRST_FRAME_TOLERANCE


# Codecs whose B-frames decord's random access gets wrong in every container (its seek lands
# on another frame): measured against PyAV's in-order decode, docs/extraction.md.
_DECORD_WRONG_B_FRAMES = ("mpeg4", "mpeg1video", "mpeg2video")
# Video packets read to find an open GOP: x264's default keyframe interval is 250 frames.
_OPEN_GOP_PACKETS = 600


def decord_wrong_frames(info: VideoInfo) -> str | None:
    """Why decord's frames of the video ``info`` describes cannot be trusted (None: they can),
    though its timestamps look valid (docs/extraction.md, "Codecs whose frames decord gets
    wrong"): MPEG-4 Part 2 (xvid/divx) or MPEG-1/2 with B-frames, from the header (wrong at
    most random positions in MP4, MOV, AVI and Matroska alike), or H.264 / HEVC with an open
    GOP (:func:`open_gop`, the first packets read: H.264 about half, HEVC 1 in 10)."""
    if info.b_frames and info.codec in _DECORD_WRONG_B_FRAMES:
        return f"decord returns wrong frames of {info.codec} with B-frames"
    if info.b_frames and info.codec in ("h264", "hevc") and open_gop(info.path):
        return f"decord returns wrong frames of open-GOP {info.codec}"
    return None


def open_gop(path: str | Path, packets: int = _OPEN_GOP_PACKETS) -> bool:
    """Whether a keyframe after the first is followed, before the next, by a frame shown
    before it (leading B-frames: an open GOP), in the first ``packets`` video packets (read,
    not decoded); False for unreadable files."""
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            keyframes, key_pts = 0, None
            for packet in itertools.islice(container.demux(stream), packets):
                if packet.pts is None:
                    continue
                if packet.is_keyframe:
                    keyframes, key_pts = keyframes + 1, packet.pts
                elif keyframes > 1 and packet.pts < key_pts:
                    return True
    except Exception:  # noqa: BLE001 - unreadable: decord's own checks decide
        return False
    return False


def decord_misplaced_frames(path: str | Path) -> bool:
    """Whether avda before 2026-12-07 read this video's frames with decord at wrong times or
    from wrong places: a video stream without a start time (decord put every frame at about
    9.2e15 s, so every clip time was read as frame 0), one whose first frame decord put
    elsewhere than PyAV (:func:`first_frame_times`: short Matroska with AAC, every frame late),
    one whose frames decord returns wrong (:func:`decord_wrong_frames`: MPEG-4 Part 2 or
    MPEG-1/2 with B-frames in any container, open-GOP H.264 / HEVC),
    or, where decord is installed, one whose decord timestamps are invalid
    (:func:`timestamps_problem`: B-frames of MPEG-4 in AVI without pts; decord finds frames by
    them and returned wrong ones: test.avi's last frame at times, most frames of such an AVI
    written by PyAV; decord's FFmpeg 4 gives no pts to AVI packets that PyAV's reorders, and
    H.264 B-frames in MPEG-PS at -1e14 s; its timestamps of MP4, MOV, Matroska, WebM and
    MPEG-TS files with a start time were valid).
    Reads the header and a few packets, and outside MP4/MOV, Matroska/WebM and MPEG-TS
    decord's packet index (a demux of the whole file: AVI, MPEG-PS, ...); False for unreadable
    files."""
    try:
        info = probe(path)
    except MediaError:
        return False
    if not info.has_start_time or decord_wrong_frames(info) is not None:
        return True
    times = first_frame_times(path)
    if times.decord is not None and shifted_first_frame(times.decord, times.pyav):
        return True
    return _invalid_decord_timestamps(path, info)


def decord_kept_wrong_frames(path: str | Path) -> bool:
    """Whether an avda recording ``checked-2026-12-07-pyav-frames`` read this video's frames
    with decord where :func:`decord_wrong_frames` now gives them to PyAV: that avda already
    decoded with PyAV whole a stream without a start time and one with invalid decord
    timestamps (MPEG-4 / MPEG-2 B-frames in AVI, as UCF/HMDB's xvid files), whose features are
    PyAV's now too. Reads what :func:`decord_misplaced_frames` reads; False for unreadable
    files."""
    try:
        info = probe(path)
    except MediaError:
        return False
    if not info.has_start_time or decord_wrong_frames(info) is None:
        return False
    return not _invalid_decord_timestamps(path, info)


# Containers (FFmpeg's names) whose decord timestamps were valid for streams with a start time,
# B-frames included (measured 2026-12-07): the resume check does not read decord's index of
# them. Not AVI (reordered packets without pts) nor MPEG-PS (H.264 B-frames at -1e14 s).
_DECORD_VALID_TIMESTAMPS = ("mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm", "mpegts")


def _invalid_decord_timestamps(path: str | Path, info: VideoInfo) -> bool:
    """Whether decord's timestamps of ``path`` are invalid (as :class:`DecordVideoDecoder`
    finds them), where decord is installed; decord's index, a demux of the whole file, is not
    read for a container in :data:`_DECORD_VALID_TIMESTAMPS` (False)."""
    return (
        info.container not in _DECORD_VALID_TIMESTAMPS
        and decord_available()
        and _decord_timestamps_problem(path, info) is not None
    )


def _decord_timestamps_problem(path: str | Path, info: VideoInfo) -> str | None:
    """:func:`timestamps_problem` of decord's frame timestamps of ``path`` (None: it cannot
    open it, as :class:`DecordVideoDecoder` then decodes with PyAV)."""
    import decord

    _quiet_decord(decord)
    try:
        reader = decord.VideoReader(str(path), num_threads=1)
        timestamps = reader.get_frame_timestamp(np.arange(len(reader)))[:, 0]
        fps = float(reader.get_avg_fps())
    except Exception:  # noqa: BLE001 - decord raises DECORDError / RuntimeError
        return None
    return timestamps_problem(timestamps, fps, info.duration)


def indexed_frames(path: str | Path) -> int:
    """The number of frames the container's index lists for its first video stream (MP4's
    sample table, AVI's header; 0 when it lists none, as Matroska/WebM). A file cut short
    (an interrupted download or copy) keeps its index: it lists more frames than it holds."""
    import av

    try:
        with av.open(str(path)) as container:
            return int(container.streams.video[0].frames or 0)
    except Exception:  # noqa: BLE001 - unreadable or no video: nothing listed
        return 0


def resized_size(width: int, height: int, shorter_side: int | None) -> tuple[int, int]:
    """(width, height) after scaling the shorter side to ``shorter_side`` (keeping aspect)."""
    if shorter_side is None:
        return width, height
    if width <= height:
        return shorter_side, max(1, round(height * shorter_side / width))
    return max(1, round(width * shorter_side / height)), shorter_side


# --------------------------------------------------------------------------- backend choice
def decord_available() -> bool:
    """Whether ``import decord`` works here (x86-64 Linux / Windows wheels only)."""
    try:
        import decord  # noqa: F401
    except ImportError:
        return False
    return True


def video_backend(name: str | None = None) -> str:
    """The video decoder to use: ``name``, else ``$AVDA_VIDEO_DECODER``, else decord when it
    is installed, else PyAV. Raises :class:`ConfigError` (one line) for an unknown name or
    decord requested where it is not installed."""
    source = "backend" if name else DECODER_ENV
    requested = (name or os.environ.get(DECODER_ENV, "") or "auto").strip().lower()
    if requested not in ("auto", *BACKENDS):
        raise ConfigError(
            f"{source}={requested!r}: unknown video decoder; choose one of {', '.join(BACKENDS)}"
        )
    if requested == "pyav":
        return "pyav"
    if decord_available():
        return "decord"
    if requested == "decord":
        raise ConfigError(
            f"{source}=decord, but decord is not installed (it has wheels for x86-64 Linux and "
            f"Windows only); use {DECODER_ENV}=pyav"
        )
    return "pyav"


# --------------------------------------------------------------------------- the interface
class VideoDecoder:
    """Frames of one video, resized in the decoder; maps seconds to frame indices.

    ``VideoDecoder(path, ...)`` returns a :class:`DecordVideoDecoder` or a
    :class:`PyAVVideoDecoder` (see :func:`video_backend`). Attributes: ``num_frames``,
    ``timestamps`` (start time of every frame in seconds, display order), ``fps``, ``size``
    ((width, height) of the decoded frames) and ``backend``.
    """

    backend: str = ""
    num_frames: int
    timestamps: np.ndarray
    fps: float

    def __new__(cls, *args: Any, backend: str | None = None, **kwargs: Any) -> VideoDecoder:
        if cls is VideoDecoder:
            chosen = video_backend(backend)
            cls = DecordVideoDecoder if chosen == "decord" else PyAVVideoDecoder
        return super().__new__(cls)

    def __init__(
        self,
        path: str | Path,
        *,
        shorter_side: int | None = None,
        size: tuple[int, int] | None = None,
        threads: int = 1,
        backend: str | None = None,
    ) -> None:
        """``shorter_side``: resize keeping the aspect ratio; ``size``: (width, height) exactly."""
        self.info = probe(path)
        self.path = Path(path)
        width, height = size or resized_size(self.info.width, self.info.height, shorter_side)
        self.size = (int(width), int(height))
        self.threads = threads

    @property
    def duration(self) -> float:
        return float(self.timestamps[-1] + 1.0 / max(self.fps, 1e-6))

    def indices_at(self, seconds: np.ndarray) -> np.ndarray:
        """Index of the frame shown at each time (clamped to the video: edge frames repeat)."""
        index = np.searchsorted(self.timestamps, np.asarray(seconds) + 1e-6, side="right") - 1
        return np.clip(index, 0, self.num_frames - 1)

    def frames(self, indices: np.ndarray) -> np.ndarray:
        """Decode ``indices`` (any order, repeats allowed) -> uint8 ``(n, H, W, 3)`` RGB."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if indices.size == 0:
            width, height = self.size
            return np.zeros((0, height, width, 3), np.uint8)
        if indices.min() < 0 or indices.max() >= self.num_frames:
            raise IndexError(
                f"{self.path}: frame indices must lie in [0, {self.num_frames}), "
                f"got {indices.min()}..{indices.max()}"
            )
        unique, inverse = np.unique(indices, return_inverse=True)
        return self._decode_unique(unique)[inverse.reshape(-1)]

    def _decode_unique(self, unique: np.ndarray) -> np.ndarray:
        """uint8 ``(len(unique), H, W, 3)`` for sorted, distinct, in-range indices."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the open file (also done when the decoder is garbage collected)."""


class DecordVideoDecoder(VideoDecoder):
    """decord's ``VideoReader``; damaged batches fall back to PyAV frame by frame, and a file
    decord cannot open, whose decord timestamps are invalid, or whose codec's B-frames decord
    returns wrong (:func:`decord_wrong_frames`) is PyAV's whole (``backend`` then "pyav")."""

    backend = "decord"

    def __init__(
        self,
        path: str | Path,
        *,
        shorter_side: int | None = None,
        size: tuple[int, int] | None = None,
        threads: int = 1,
        backend: str | None = None,
    ) -> None:
        super().__init__(path, shorter_side=shorter_side, size=size, threads=threads)
        try:
            import decord
        except ImportError as exc:
            raise ConfigError(
                f"the decord video decoder is not installed; use {DECODER_ENV}=pyav"
            ) from exc
        _quiet_decord(decord)
        width, height = self.size
        self._pyav: _PyAVStream | None = None
        self._reader: Any = None
        wrong = decord_wrong_frames(self.info)
        if wrong is not None:
            self._open_with_pyav(wrong)
            return
        try:
            reader = decord.VideoReader(str(path), width=width, height=height, num_threads=threads)
            self.num_frames = len(reader)
            # Start time of every frame, from the container's timestamps.
            self.timestamps = reader.get_frame_timestamp(np.arange(self.num_frames))[:, 0]
            self.fps = float(reader.get_avg_fps())
        except Exception as exc:  # decord raises DECORDError / RuntimeError
            # decord opens a file only when it can read it to the end; a truncated file (an
            # interrupted download or copy) still has its frames up to the cut, which PyAV
            # reads: the whole file is then PyAV's, as with AVDA_VIDEO_DECODER=pyav.
            self._open_with_pyav(f"decord cannot read it ({_short(exc)})", exc)
            return
        if self.num_frames == 0:
            raise MediaError(f"{path} has no decodable frames")
        problem = timestamps_problem(self.timestamps, self.fps, self.info.duration)
        if problem is not None:
            # decord finds a frame by its packet's pts: where those cannot be the frames' times
            # (packets without a pts: B-frames of MPEG-4 in AVI as its FFmpeg 4 demuxes them;
            # a stream without a start time), its frames cannot be trusted either (the last
            # frame of test.avi: frame 162 for 163 in about 1 fresh call in 5).
            self._open_with_pyav(f"decord's frame timestamps are invalid ({problem})")
            return
        self._reader = reader
        first = float(self.timestamps.min())
        pyav = first_frame_times(path).pyav
        if shifted_first_frame(first, pyav):
            self.timestamps = self._shifted_timestamps(
                f"first frame at {first:.4g} s, PyAV's at {pyav:.4g} s"
            )

    def _open_with_pyav(self, reason: str, error: BaseException | None = None) -> None:
        """Make the whole file PyAV's (its frame count, timestamps and frames), as with
        ``AVDA_VIDEO_DECODER=pyav``: decord cannot open it (``error``, logged as a warning) or
        its frames cannot be trusted (logged at INFO); ``reason`` says which."""
        try:
            stream = self._pyav_stream()
        except MediaError as exc:
            raise MediaError(
                f"{self.path} cannot be decoded: {reason} (PyAV: {_short(exc)})"
            ) from (error or exc)
        level = logging.INFO if error is None else logging.WARNING
        log.log(level, "%s: %s; PyAV decodes its %d frames", self.path, reason, stream.num_frames)
        self.backend = "pyav"  # what reads its frames and timestamps (flow's messages name it)
        self.num_frames, self.fps = stream.num_frames, stream.fps
        self.timestamps = stream.timestamps

    def _shifted_timestamps(self, problem: str) -> np.ndarray:
        """PyAV's timestamps where decord's first frame time is off PyAV's (a short Matroska
        stream with AAC audio, :func:`first_frame_times`); decord's frames are right there.
        ``index / fps`` where PyAV counts other frames."""
        stream = self._pyav_stream()
        if stream.num_frames == self.num_frames:
            log.info(
                "%s: decord's frame timestamps are invalid (%s); using PyAV's", self.path, problem
            )
            return stream.timestamps.copy()
        log.warning(
            "%s: decord's frame timestamps are invalid (%s); assuming a constant %.3f fps",
            *(self.path, problem, self.fps),
        )
        return np.arange(self.num_frames) / max(self.fps, 1e-6)

    def _pyav_stream(self) -> _PyAVStream:
        if self._pyav is None:
            self._pyav = _PyAVStream(self.path, self.size, threads=self.threads)
        return self._pyav

    def _decode_unique(self, unique: np.ndarray) -> np.ndarray:
        if self._reader is None:  # the file is PyAV's (_open_with_pyav)
            return self._pyav_stream().decode_stacked(unique)
        try:
            return self._reader.get_batch(unique.tolist()).asnumpy()
        except Exception as exc:  # a corrupt packet: go frame by frame
            log.info(
                "%s: batch decoding failed (%s); decoding frame by frame", self.path, _short(exc)
            )
            return self._frames_tolerant(unique)

    def _frames_tolerant(self, unique: np.ndarray) -> np.ndarray:
        decoded: dict[int, np.ndarray] = {}
        failed: list[int] = []
        for index in unique.tolist():
            try:
                decoded[index] = self._reader.get_batch([index]).asnumpy()[0]
            except Exception:  # decord: DECORDError / RuntimeError
                failed.append(index)
        if failed:
            rescued = self._decode_with_pyav(np.asarray(failed))
            for index in failed:
                decoded[index] = rescued[index]
        return np.stack([decoded[i] for i in unique.tolist()])

    def _decode_with_pyav(self, indices: np.ndarray) -> dict[int, np.ndarray]:
        """Frames ``indices`` decoded by PyAV, skipping undecodable packets (see module doc)."""
        stream = self._pyav_stream()
        if stream.num_frames != self.num_frames:
            raise MediaError(
                f"{self.path}: decord and PyAV count {self.num_frames} and {stream.num_frames} "
                "frames; the damaged frames cannot be decoded"
            )
        return stream.decode(np.unique(indices))

    def close(self) -> None:
        if self._pyav is not None:
            self._pyav.close()
            self._pyav = None


class PyAVVideoDecoder(VideoDecoder):
    """PyAV (FFmpeg): seeks to the keyframe before the first wanted frame, decodes forward."""

    backend = "pyav"

    def __init__(
        self,
        path: str | Path,
        *,
        shorter_side: int | None = None,
        size: tuple[int, int] | None = None,
        threads: int = 1,
        backend: str | None = None,
    ) -> None:
        super().__init__(path, shorter_side=shorter_side, size=size, threads=threads)
        self._stream = _PyAVStream(self.path, self.size, threads=threads)
        self.num_frames = self._stream.num_frames
        self.timestamps = self._stream.timestamps
        self.fps = self._stream.fps

    def _decode_unique(self, unique: np.ndarray) -> np.ndarray:
        return self._stream.decode_stacked(unique)

    def close(self) -> None:
        self._stream.close()


# --------------------------------------------------------------------------- PyAV machinery
class _PyAVStream:
    """The first video stream of a file opened with PyAV: its packet index (timestamps and
    keyframes, read without decoding), and decoding of chosen frames, resized as decord does."""

    def __init__(self, path: Path, size: tuple[int, int], *, threads: int = 1) -> None:
        self.path = path
        self.size = size
        self.threads = threads
        self._container: Any = None
        self._graph: Any = None
        self._graph_key: tuple[Any, ...] | None = None
        try:
            self._open()
            self._index()
        except MediaError:
            self.close()
            raise
        except Exception as exc:  # av.error.FFmpegError and friends
            self.close()
            raise MediaError(f"{path} cannot be decoded: {exc}") from exc

    # ----------------------------------------------------------------- opening, index
    def _open(self) -> None:
        import av

        self.close()
        self._container = av.open(str(self.path))
        if not self._container.streams.video:
            raise MediaError(f"{self.path} has no video stream")
        self._stream = self._container.streams.video[0]
        self._stream.codec_context.thread_count = max(int(self.threads), 0)

    def _index(self) -> None:
        """Timestamps of every frame from the packets' pts (sorted: B-frames come out of
        order), keyframe positions; a stream where some packet has no pts: ``index / fps``."""
        stream = self._stream
        pts: list[int | None] = []
        keys: list[bool] = []
        for packet in self._container.demux(stream):
            if packet.size == 0:  # the flush packet at the end
                continue
            pts.append(packet.pts)
            keys.append(bool(packet.is_keyframe))
        if not pts:
            raise MediaError(f"{self.path} has no decodable frames")
        self.num_frames = len(pts)
        rate = stream.average_rate or stream.guessed_rate
        self.fps = float(rate) if rate else 0.0
        if any(p is None for p in pts):
            self.pts: np.ndarray | None = None
            self.key_positions = np.zeros(1, np.int64)  # decoded from the start
            if self.fps <= 0:
                raise MediaError(f"{self.path}: video packets have no timestamps and no rate")
            self.timestamps = np.arange(self.num_frames) / self.fps
            log.info("%s: video packets without timestamps; frame i at i / fps", self.path)
        else:
            values = np.asarray(pts, dtype=np.int64)
            order = np.argsort(values, kind="stable")
            self.pts = values[order]
            self.key_positions = np.flatnonzero(np.asarray(keys)[order])
            if self.key_positions.size == 0 or self.key_positions[0] != 0:
                self.key_positions = np.concatenate([[0], self.key_positions])
            start = stream.start_time if stream.start_time is not None else 0
            self.timestamps = (self.pts - start) * float(stream.time_base)
            self._position = {int(p): i for i, p in enumerate(self.pts.tolist())}
            if self.fps <= 0 and self.num_frames > 1:
                span = self.timestamps[-1] - self.timestamps[0]
                self.fps = (self.num_frames - 1) / span if span > 0 else 0.0
        if self.fps <= 0:
            self.fps = 25.0  # a single frame without a rate: any positive value

    def close(self) -> None:
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # closing a damaged file
                pass
            self._container = None
        self._graph, self._graph_key = None, None

    def __del__(self) -> None:
        self.close()

    # ----------------------------------------------------------------- decoding
    def decode_stacked(self, wanted: np.ndarray) -> np.ndarray:
        """:meth:`decode` of ``wanted`` as one uint8 array ``(len(wanted), H, W, 3)``."""
        got = self.decode(wanted)
        return np.stack([got[i] for i in wanted.tolist()])

    def decode(self, wanted: np.ndarray) -> dict[int, np.ndarray]:
        """Frames ``wanted`` (sorted, distinct) as uint8 RGB; a frame no packet yields takes
        the nearest decodable frame within :data:`CONCEALMENT_SECONDS`, else MediaError."""
        import av

        try:
            got, seen = self._decode_pass(wanted)
            missing = [i for i in wanted.tolist() if i not in got]
            if not missing:
                return got
            substitutes = self._substitutes(missing, seen)
            extra = sorted(set(substitutes.values()) - set(got))
            if extra:
                more, _ = self._decode_pass(np.asarray(extra, dtype=np.int64))
                got.update(more)
        except av.error.FFmpegError as exc:
            self.close()
            raise MediaError(f"{self.path}: decoding frames failed: {exc}") from exc
        for index, nearest in substitutes.items():
            if nearest not in got:
                raise MediaError(f"{self.path}: frame {index} cannot be decoded")
            got[index] = got[nearest]
        return got

    def _substitutes(self, missing: list[int], seen: set[int]) -> dict[int, int]:
        candidates = np.asarray(sorted(seen), dtype=np.int64)
        result: dict[int, int] = {}
        for index in missing:
            nearest, gap = None, None
            if candidates.size:
                position = int(
                    np.argmin(np.abs(self.timestamps[candidates] - self.timestamps[index]))
                )
                nearest = int(candidates[position])
                gap = abs(float(self.timestamps[nearest] - self.timestamps[index]))
            if nearest is None or gap is None or gap > CONCEALMENT_SECONDS:
                raise MediaError(
                    f"{self.path}: frame {index} ({self.timestamps[index]:.2f} s) cannot be "
                    "decoded (corrupt packets); re-encode or re-download the file"
                )
            log.warning(
                "%s: frame %d is undecodable; using frame %d (%.3f s away)",
                self.path,
                index,
                nearest,
                gap,
            )
            result[index] = nearest
        return result

    def _groups(self, wanted: np.ndarray) -> list[np.ndarray]:
        """Runs of wanted frames decoded in one pass: a new seek where a keyframe lies between
        two wanted frames (seeking there is cheaper than decoding through)."""
        keys = self.key_positions
        key_before = keys[np.searchsorted(keys, wanted, side="right") - 1]
        starts = np.flatnonzero(key_before[1:] > wanted[:-1]) + 1
        return np.split(wanted, starts)

    def _decode_pass(self, wanted: np.ndarray) -> tuple[dict[int, np.ndarray], set[int]]:
        got: dict[int, np.ndarray] = {}
        seen: set[int] = set()
        for group in self._groups(wanted):
            if not self._decode_group(group, got, seen, from_start=False):
                self._decode_group(group, got, seen, from_start=True)
        return got, seen

    def _decode_group(
        self, group: np.ndarray, got: dict[int, np.ndarray], seen: set[int], *, from_start: bool
    ) -> bool:
        """Decode the frames of ``group`` into ``got``; False when the seek landed after the
        first wanted frame (then the caller decodes from the start)."""
        first, last = int(group[0]), int(group[-1])
        wanted = set(group.tolist())
        key = int(self.key_positions[np.searchsorted(self.key_positions, first, "right") - 1])
        if self.pts is None or from_start or key == 0 or self._container is None:
            self._open()  # from the first frame: no seek needed (nor trusted)
            from_start = True
        else:
            self._container.seek(
                int(self.pts[key]), stream=self._stream, backward=True, any_frame=False
            )
        started = False
        for index, frame in self._frames_in_order(start=0 if from_start else None):
            if not started:
                started = True
                if index > first and not from_start:
                    return False
            seen.add(index)
            if index in wanted and index not in got:
                got[index] = self._to_rgb(frame)
            if index >= last:
                break
        return True

    def _frames_in_order(self, start: int | None) -> Iterator[tuple[int, Any]]:
        """(index, frame) in display order from the current position; damaged packets are
        skipped. Frames are labelled by the sorted pts of a short window (see
        ``_REORDER_FRAMES``); without pts, by counting from ``start``."""
        import av

        pending: collections.deque[Any] = collections.deque()
        heap: list[int] = []
        previous = -1 if start is None else start - 1

        def label(frame: Any) -> int:
            nonlocal previous
            index = None
            if frame.pts is not None and self.pts is not None:
                pts = heapq.heappop(heap)
                index = self._position.get(pts)
                if index is None:  # a pts no packet had: the nearest frame time
                    seconds = frame.time if frame.time is not None else 0.0
                    nearest = int(np.argmin(np.abs(self.timestamps - seconds)))
                    if abs(self.timestamps[nearest] - seconds) <= CONCEALMENT_SECONDS:
                        index = nearest
            if index is None:
                index = previous + 1
            previous = index
            return index

        for packet in self._container.demux(self._stream):
            try:
                frames = packet.decode()
            except av.error.FFmpegError:
                continue  # a damaged packet
            for frame in frames:
                pending.append(frame)
                if frame.pts is not None and self.pts is not None:
                    heapq.heappush(heap, frame.pts)
                if len(pending) > _REORDER_FRAMES:
                    frame_out = pending.popleft()
                    yield label(frame_out), frame_out
        while pending:
            frame_out = pending.popleft()
            yield label(frame_out), frame_out

    def _to_rgb(self, frame: Any) -> np.ndarray:
        """rgb24 at ``size`` through decord's filter chain (``[transpose,]scale=W:H`` with
        bilinear flags, then rgb24): the same pixels as decord."""
        import av

        rotation = int(round(-(getattr(frame, "rotation", 0) or 0))) % 360
        key = (frame.width, frame.height, frame.format.name, rotation)
        if key != self._graph_key:
            self._graph = self._build_graph(frame, rotation)
            self._graph_key = key
        width, height = self.size
        if self._graph is not None:
            try:
                self._graph.push(frame)
                return self._graph.pull().to_ndarray()
            except (av.error.FFmpegError, ValueError) as exc:
                log.info("%s: filter graph failed (%s); swscale directly", self.path, exc)
                self._graph = None
        return frame.to_ndarray(
            width=width, height=height, format="rgb24", interpolation="BILINEAR"
        )

    def _build_graph(self, frame: Any, rotation: int) -> Any:
        import av.filter

        width, height = self.size
        transpose = {90: ["1"], 180: ["1", "1"], 270: ["2"]}.get(rotation, [])
        try:
            graph = av.filter.Graph()
            chain = [
                graph.add_buffer(
                    width=frame.width,
                    height=frame.height,
                    format=frame.format.name,
                    time_base=self._stream.time_base,
                )
            ]
            chain += [graph.add("transpose", value) for value in transpose]
            chain.append(graph.add("scale", f"{width}:{height}:flags=bilinear"))
            chain.append(graph.add("format", "rgb24"))
            chain.append(graph.add("buffersink"))
            for source, target in zip(chain[:-1], chain[1:], strict=True):
                source.link_to(target)
            graph.configure()
        except Exception as exc:  # an unusual pixel format
            log.info("%s: no filter graph (%s); swscale directly", self.path, exc)
            return None
        return graph


# decord's C++ log prefix: "[13:48:26] /github/workspace/src/video/video_reader.cc:486: "
_DECORD_PREFIX = re.compile(r"\[\d\d:\d\d:\d\d\] \S+\.(?:cc|h|cpp):\d+: ")


def _short(exc: BaseException) -> str:
    """decord errors carry a C++ stack and the build's source paths; keep the first
    meaningful line, without the paths (they name decord's build machine, not the file)."""
    text = str(exc).strip().splitlines()
    lines = [t for t in text if t and not t.startswith(("Stack trace", "  ["))]
    line = _DECORD_PREFIX.sub("", lines[0]) if lines else type(exc).__name__
    return line.strip()[:300] or type(exc).__name__


def _quiet_decord(decord: Any) -> None:
    """decord's bundled FFmpeg prints every error of a damaged file to stderr (``[mpeg4 @
    0x...] ac-tex damaged at 5 7``: 30 lines for one AVI); avda says what it could not decode
    in its own warnings. FFmpeg's lines are kept when avda logs at DEBUG (``-v``)."""
    level = decord.logging.ERROR if log.isEnabledFor(logging.DEBUG) else decord.logging.QUIET
    try:
        decord.logging.set_level(level)
    except Exception as exc:  # an older decord without the call: its lines stay
        log.debug("decord's log level cannot be set: %s", exc)
