"""What extraction reads: inputs (video files, frame folders, flow folders, audio files) and
the per-segment dataset that decodes them in DataLoader workers.

A :class:`SegmentDataset` item is one segment of one modality: ``(row, x, status, error)`` with
``x`` a uint8 clip tensor ``(K, T, H, W, C)`` (C = 3 RGB, 2 u/v flow), a float spectrogram
``(K, 1, F, T)`` for audio, or None when the segment failed (status FAILED, the reason in
``error``) or has no input (status MISSING, e.g. a video without an audio track).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from avda._io import path_identity
from avda.cache import Status
from avda.cache.lock import flow_read_lock
from avda.data_manifests import schema as manifest_schema
from avda.errors import AvdaError, ConfigError, MediaError
from avda.extract import audio as audio_lib
from avda.extract import backbones
from avda.extract import frames as frames_lib
from avda.extract.decode import VideoDecoder, indexed_frames, probe, video_backend
from avda.extract.sampling import Recipe, SegmentFrames
from avda.extract.transforms import centre_crop
from avda.optional import require

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class InputPaths:
    """Where the inputs are: video files, RGB frame folders, flow folders, audio files.

    ``flow_stride`` overrides the flow-folder convention (flow frames every N RGB frames) for
    folders without ``flow.json`` (see :mod:`avda.extract.frames`). ``jpeg_dct``: how the JPEGs
    of frame and flow folders are decoded, ``accurate`` (Pillow) or ``fast`` (TensorFlow's
    default, MM-SADA's input; :func:`avda.extract.frames.read_image`).
    """

    videos: Path | None = None
    frames: Path | None = None
    flow: Path | None = None
    audio: Path | None = None
    flow_stride: int | None = None
    jpeg_dct: str = "accurate"

    def source_of(self, modality: str) -> str:
        """ "video", "frames", "flow-frames" or "audio-files": what ``modality`` is read from."""
        if modality == "rgb":
            if self.frames is not None:
                return "frames"
            if self.videos is None:
                raise ConfigError("rgb features need --videos DIR or --frames DIR (RGB JPEGs)")
            return "video"
        if modality == "flow":
            if self.flow is None:
                raise ConfigError(
                    "flow features need --flow DIR: u/v flow JPEG folders (EPIC flow_frames, "
                    "or computed with `avda flow`)"
                )
            return "flow-frames"
        if modality == "audio":
            if self.audio is not None:
                return "audio-files"
            if self.videos is None:
                raise ConfigError(
                    "audio features need --videos DIR (their audio tracks) or --audio DIR (wavs)"
                )
            return "video"
        raise ConfigError(f"unknown modality {modality!r}; valid: rgb, flow, audio")

    def provenance(self, modality: str) -> dict[str, Any]:
        """What the store records (and compares) about the input of ``modality``."""
        entry: dict[str, Any] = {"source": self.source_of(modality)}
        if modality == "flow":
            entry["flow_stride"] = self.flow_stride if self.flow_stride is not None else "auto"
        if self.jpeg_dct != "accurate" and entry["source"] in ("frames", "flow-frames"):
            entry["jpeg_dct"] = self.jpeg_dct  # absent: accurate (stores made before it)
        return entry

    def check(self, modalities: list[str]) -> None:
        """Every folder that is needed exists (one error before any work)."""
        for option, path in (
            ("--videos", self.videos),
            ("--frames", self.frames),
            ("--flow", self.flow),
            ("--audio", self.audio),
        ):
            if path is not None and not Path(path).is_dir():
                raise ConfigError(f"{option} {path}: no such folder")
        frames_lib.check_jpeg_dct(self.jpeg_dct)
        for modality in modalities:
            self.source_of(modality)
        reads_jpegs = any(self.source_of(m) in ("frames", "flow-frames") for m in modalities)
        if self.jpeg_dct != "accurate" and not reads_jpegs:
            raise ConfigError(
                f"--jpeg-dct {self.jpeg_dct} decodes the JPEGs of --frames/--flow folders; "
                "no modality here reads them: leave it out"
            )
        if self.jpeg_dct == "fast" and reads_jpegs:
            # one line before any work: each segment failed with it, in a store made for it
            require("simplejpeg", package="simplejpeg", extra="jpeg", feature="--jpeg-dct fast")
        if "rgb" in modalities and self.source_of("rgb") == "video":
            video_backend()  # one error for a bad AVDA_VIDEO_DECODER or decord asked but missing

    def check_rates(self, segments: pd.DataFrame, modalities: list[str]) -> None:
        """RGB frame folders have no timestamps: without --videos (whose headers give the
        rate) every segment needs the manifest's fps or its start/stop_frame. One error before
        any work; it was each segment failing. (Flow folders of `avda flow` record the rate.)"""
        if "rgb" not in modalities or self.source_of("rgb") != "frames" or self.videos:
            return

        def column(name: str) -> pd.Series:
            if name not in segments:
                return pd.Series(np.nan, index=segments.index)
            return pd.to_numeric(segments[name], errors="coerce")

        has_rate = column("fps") > 0
        has_frames = column("start_frame").notna() & column("stop_frame").notna()
        lacking = ~(has_rate | has_frames)
        if lacking.any():
            first = segments.loc[lacking, "uid"].iloc[0]
            raise ConfigError(
                f"{int(lacking.sum())} of {len(segments)} segments (first: {first}) have no "
                "frame rate for the RGB frame folders, which have no timestamps of their own: "
                "add an fps column (or start_frame and stop_frame) to the manifest, or give "
                "--videos for their headers"
            )

    def _check_located(self, segments: pd.DataFrame, modality: str) -> None:
        """The same for ``--audio DIR`` and the ``--frames``/``--flow`` folders: none of the
        videos' audio files or frame folders there (another folder, named otherwise) is one
        error, not a warning per segment."""
        if modality == "audio":
            option, root, what = "--audio", self.audio, "an audio file"
            locate = audio_lib.locate_audio_file
        else:
            kind = "rgb" if modality == "rgb" else "flow"
            option = "--frames" if kind == "rgb" else "--flow"
            root = self.frames if kind == "rgb" else self.flow
            what = "an rgb frame folder" if kind == "rgb" else "a flow frame folder"

            def locate(root: Path, video_id: str, participant: str | None) -> Path:
                return frames_lib.locate(root, video_id, participant, kind)

        columns = [c for c in ("video_id", "participant_id") if c in segments.columns]
        pairs = segments[columns].drop_duplicates()
        first = None
        for row in pairs.itertuples(index=False):
            video_id = str(row[0])
            participant = _text(pd.Series(row, index=columns), "participant_id")
            try:
                locate(Path(root), video_id, participant)
                return
            except MediaError as exc:
                first = first or str(exc).removesuffix(f"; check {option}")
        if first is not None:
            raise ConfigError(
                f"none of the {len(pairs)} video(s) the manifest names has {what} in "
                f"{root} ({option}; the first: {first}): give {option} the folder they are "
                "in, or a manifest of the videos there"
            )

    def check_videos(self, segments: pd.DataFrame, modality: str) -> None:
        """A manifest none of whose video files is under ``--videos`` (a manifest of other
        videos, or another folder): one error before ``modality`` is read from them. It was
        each segment failing, one warning a segment (3,209 lines for UCF-HMDB's lists), in a
        store of failed rows. Some videos missing still fail their own segments only."""
        source = self.source_of(modality)
        if source in ("audio-files", "frames", "flow-frames"):
            self._check_located(segments, modality)
            return
        if self.videos is None or source != "video":
            return
        columns = [c for c in ("video_id", "video_path") if c in segments.columns]
        paths = [
            path
            for row in segments[columns].drop_duplicates().itertuples(index=False)
            if (path := manifest_schema.video_path_or_none(row, self.videos)) is not None
        ]
        if not paths or any(path.exists() for path in paths):
            return
        raise ConfigError(
            f"none of the {len(paths)} video file(s) the manifest names is in {self.videos} "
            f"(--videos; the first: {paths[0]}{manifest_schema.same_name_hint(paths[0])}): "
            "give --videos the folder they are in, or a manifest of the videos there (`avda "
            "manifest validate MANIFEST --videos DIR` lists every row)"
        )


# The segment columns a SegmentDataset item reads (besides ``uid``, which only names the segment
# in messages, and seeds the ``random`` placement): rows equal in them decode to the same input.
INPUT_COLUMNS = (
    "video_id",
    "video_path",
    "participant_id",
    "start_sec",
    "stop_sec",
    "start_frame",
    "stop_frame",
    "fps",
)


def shared_inputs(
    segments: pd.DataFrame, rows: np.ndarray, recipe: Recipe
) -> dict[int, np.ndarray]:
    """``rows`` grouped by the input they read: the first row of each group -> every row of it
    (in order). Rows equal in :data:`INPUT_COLUMNS` (and in ``uid`` where the recipe's
    ``random`` placement draws from it) decode to the same clips: extraction reads and encodes
    the first and writes its result to all (CharadesEgo's 10 test clips of a video shorter than
    a window are one segment)."""
    rows = np.asarray(rows, dtype=np.int64)
    columns = [c for c in INPUT_COLUMNS if c in segments.columns]
    if recipe.placement == "random":
        columns.append("uid")
    table = segments.iloc[rows][columns].astype(object)
    groups = table.groupby(columns, dropna=False, sort=False).ngroup().to_numpy()
    order = np.argsort(groups, kind="stable")  # each group's rows, in row order
    starts = np.flatnonzero(np.r_[True, np.diff(groups[order]) != 0])
    members = np.split(rows[order], starts[1:])
    return {int(group[0]): group for group in sorted(members, key=lambda g: int(g[0]))}


class SegmentDataset(Dataset):
    """Item = (row, input tensor or None, status, error) for one segment and one modality.

    Visual items are uint8 clips ``(K, T, H, W, C)``; audio items float spectrograms
    ``(K, 1, F, T)``.
    """

    def __init__(
        self,
        segments: pd.DataFrame,
        rows: np.ndarray,
        inputs: InputPaths,
        recipe: Recipe,
        modality: str,
        spec: backbones.InputSpec,
        audio_recipe: str | None,
    ) -> None:
        self.segments = segments
        self.rows = rows
        self.inputs = inputs
        self.recipe = recipe
        self.modality = modality
        self.spec = spec
        self.audio_recipe = audio_recipe
        self.source = inputs.source_of(modality)
        self._open_readers: dict[str, tuple[Any, Any]] = {}  # per worker: kind -> (key, reader)
        self._warned: set[Path] = set()  # files whose lost frames were logged
        self._note = ""  # a done item's note (audio partly lost to damaged packets)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, int, str]:
        row = int(self.rows[index])
        segment = self.segments.iloc[row]
        self._note = ""
        try:
            if self.modality == "audio":
                x = self._audio(segment)
            elif self.modality == "flow":
                x = self._flow(segment)
            elif self.source == "frames":
                x = self._rgb_frames(segment)
            else:
                x = self._rgb_video(segment)
            return row, x, int(Status.DONE), self._note
        except audio_lib.NoAudioTrack as exc:
            return row, None, int(Status.MISSING), str(exc)
        except (AvdaError, OSError, RuntimeError, ValueError, ArithmeticError) as exc:
            # ArithmeticError: an overflow on an absurd time fails that segment, not the run
            return row, None, int(Status.FAILED), str(exc)

    # ----------------------------------------------------------------- helpers
    def _reader(self, kind: str, key: Any, make):
        """One open reader per kind, kept while consecutive segments share the video."""
        cached = self._open_readers.get(kind)
        if cached is None or cached[0] != key:
            self._open_readers.pop(kind, None)  # drop the previous reader before opening
            self._open_readers[kind] = (key, make())
        return self._open_readers[kind][1]

    def _video_path(self, segment: pd.Series) -> Path:
        if self.inputs.videos is None:
            raise ConfigError("this input needs --videos DIR")
        return manifest_schema.video_path(segment, self.inputs.videos)

    def _segment_frames(self, segment: pd.Series, fallback_fps: float | None) -> SegmentFrames:
        """The segment on its frame grid: the manifest's start/stop_frame and fps where given."""
        uid = str(segment["uid"])
        start, stop = float(segment["start_sec"]), float(segment["stop_sec"])
        start_frame, stop_frame = _value(segment, "start_frame"), _value(segment, "stop_frame")
        fps = _value(segment, "fps") or fallback_fps
        if fps is None and start_frame is not None and stop_frame is not None and stop > start:
            fps = (stop_frame - start_frame) / (stop - start)  # the frame columns' own rate
        if fps is None or not fps > 0:
            raise ConfigError(
                f"segment {uid!r}: no frame rate; add an fps column (or start_frame and "
                "stop_frame) to the manifest: frame folders have no timestamps of their own"
            )
        if start_frame is not None and stop_frame is not None:
            return SegmentFrames(uid, start, stop, int(start_frame), int(stop_frame), float(fps))
        return SegmentFrames.from_seconds(uid, start, stop, float(fps))

    def _frames_fps(self, segment: pd.Series) -> float | None:
        """The rate of a segment without a manifest fps: the video header, when there is one."""
        if _value(segment, "fps") is not None or self.inputs.videos is None:
            return None
        path = self._video_path(segment)
        return self._reader("probe", path, lambda: probe(path)).fps if path.exists() else None

    def _crop(self, frames: np.ndarray, K: int) -> np.ndarray:
        frames = centre_crop(frames, self.recipe.crop_size, self.recipe.crop_offset)
        return frames.reshape(K, -1, *frames.shape[1:])  # (K*T, H, W, C) -> (K, T, H, W, C)

    # ----------------------------------------------------------------- modalities
    def _rgb_video(self, segment: pd.Series) -> torch.Tensor:
        path = self._video_path(segment)
        decoder = self._reader(
            "video", path, lambda: VideoDecoder(path, shorter_side=self.recipe.resize_shorter)
        )
        frames_of = self._segment_frames(segment, decoder.fps)
        listed = self._reader("index", path, lambda: indexed_frames(path))  # once per video
        if float(segment["stop_sec"]) > decoder.duration:
            # a cut file first: a segment past its cut is told to re-download the file, not to
            # fix its times
            _check_not_cut(segment, decoder, path, listed)
        _check_inside_video(segment, decoder.duration, path)
        self._note = _lost_frames_note(decoder, path, listed)
        if self._note and path not in self._warned:  # once per file and worker (relayed once)
            self._warned.add(path)
            log.warning("%s", self._note.removeprefix("note: "))
        plan = self.recipe.rgb_plan(frames_of)
        times = plan.times if plan.times is not None else frames_of.time_of(plan.numbers)
        K = times.shape[0]
        frames = decoder.frames(decoder.indices_at(times.reshape(-1)))  # (K*T, H, W, 3)
        return torch.from_numpy(np.ascontiguousarray(self._crop(frames, K)))

    def _rgb_frames(self, segment: pd.Series) -> torch.Tensor:
        video_id = str(segment["video_id"])
        folder = frames_lib.locate(
            self.inputs.frames, video_id, _text(segment, "participant_id"), "rgb"
        )
        reader = self._reader(
            "rgb", folder, lambda: frames_lib.RgbFrames(folder, self.inputs.jpeg_dct)
        )
        frames_of = self._segment_frames(segment, self._frames_fps(segment))
        if frames_of.start_frame > reader.count:
            raise MediaError(
                f"segment {segment['uid']!r} starts at frame {frames_of.start_frame}, after the "
                f"last frame ({reader.count}) of {folder}; fix its times in the manifest"
            )
        numbers = self.recipe.rgb_numbers(frames_of)
        frames = reader.read(numbers.reshape(-1), shorter_side=self.recipe.resize_shorter)
        return torch.from_numpy(np.ascontiguousarray(self._crop(frames, numbers.shape[0])))

    def _check_flow_numbering(
        self, segment: pd.Series, folder: Path, convention: frames_lib.FlowConvention
    ) -> None:
        """Refuse a flow folder an ``avda flow`` before 2026-12-07 computed from a video whose
        first frame is not at its stream's start (``flow.json`` without
        ``first_frame_repeats``): it numbered decoded frames, so its flow is off the RGB by
        that many frames. Checked where the video is at hand (``--videos``), once per video.
        A folder whose recorded flow frames (``frames``) count the video's frames as avda
        extract numbers them, and not its decoded frames, is read: ``avda flow --frames`` of a
        folder ffmpeg's default extraction wrote (the repeats are files of their own there)."""
        if (
            convention.source != frames_lib.FLOW_METADATA
            or convention.first_frame_repeats is not None
            or self.inputs.videos is None
        ):
            return
        path = self._video_path(segment)
        if not path.exists():
            return
        from avda.extract.flow import pair_frames, video_first_frame_repeats

        def numbering() -> tuple[int, int]:
            decoder = VideoDecoder(path)
            return video_first_frame_repeats(decoder), decoder.num_frames

        repeats, decoded = self._reader("flow-numbering", path, numbering)
        if repeats and convention.frames is not None:
            old, now = (
                len(pair_frames(count, convention.stride, convention.dilation))
                for count in (decoded, decoded + repeats)
            )
            if convention.frames == now != old:  # numbered as avda extract reads the video
                return
        if repeats:
            raise MediaError(
                f"{folder / frames_lib.FLOW_METADATA} was written by an avda flow before "
                f"2026-12-07, which numbered the decoded frames of {path.name}, whose first "
                f"frame is not at its stream's start: its flow is {abs(repeats)} frame(s) "
                f"{'ahead of' if repeats > 0 else 'behind'} the RGB; recompute it (avda flow "
                "--force) and extract again (docs/extraction.md)"
            )

    def _flow(self, segment: pd.Series) -> torch.Tensor:
        video_id = str(segment["video_id"])
        folder = frames_lib.locate(
            self.inputs.flow, video_id, _text(segment, "participant_id"), "flow"
        )

        def make() -> frames_lib.FlowFrames:
            convention = frames_lib.flow_convention(folder, video_id, self.inputs.flow_stride)
            return frames_lib.FlowFrames(folder, convention, self.inputs.jpeg_dct)

        # never frames an `avda flow` run is writing (or deleting: --force, other settings)
        with flow_read_lock(folder):
            # a record a run replaced since the reader was made (other settings): made again
            key = (folder, path_identity(folder / frames_lib.FLOW_METADATA))
            return self._read_flow(segment, folder, self._reader("flow", key, make))

    def _read_flow(
        self, segment: pd.Series, folder: Path, reader: frames_lib.FlowFrames
    ) -> torch.Tensor:
        """The segment's flow frames from ``reader``, its folder's lock held."""
        self._check_flow_numbering(segment, folder, reader.convention)
        # the rate of the video it came from: the video's header, else what `avda flow` recorded
        fallback = self._frames_fps(segment) or reader.convention.fps
        frames_of = self._segment_frames(segment, fallback)
        recorded = reader.convention.fps
        if recorded and abs(frames_of.fps - recorded) > 0.01 * recorded:
            # the segment's seconds would be read on another frame grid than the flow's
            source = (
                "the manifest's fps"
                if _value(segment, "fps")
                else "the video's header"
                if self._frames_fps(segment)
                else "the manifest's start/stop_frame over its seconds"
            )
            raise MediaError(
                f"segment {segment['uid']!r}: {source} says {frames_of.fps:g} fps, but "
                f"{folder / frames_lib.FLOW_METADATA} records that its flow was computed from "
                f"a {recorded:g} fps video; fix the fps (or compute the flow again from this "
                "video)"
            )
        numbers = self.recipe.flow_numbers(frames_of, reader.convention.ratio)
        if numbers.min() > reader.count:  # every frame past the end: not a repeated last one
            raise MediaError(
                f"segment {segment['uid']!r} starts at flow frame {int(numbers.min())}, after "
                f"the last flow frame ({reader.count}) of {folder}; fix its times in the manifest"
            )
        frames = reader.read(numbers.reshape(-1), shorter_side=self.recipe.resize_shorter)
        return torch.from_numpy(np.ascontiguousarray(self._crop(frames, numbers.shape[0])))

    def _audio(self, segment: pd.Series) -> torch.Tensor:
        rate = int(self.spec.sample_rate or 16000)
        if self.inputs.audio is not None:
            path = audio_lib.locate_audio_file(
                self.inputs.audio, str(segment["video_id"]), _text(segment, "participant_id")
            )
        else:
            path = self._video_path(segment)
        track = self._reader("audio", path, lambda: audio_lib.read_audio(path, rate))
        samples = track.samples
        recipe = self.recipe
        if recipe.placement == "centres" and recipe.audio_windows != "snippets":
            spans = recipe.audio_spans(float(segment["start_sec"]), float(segment["stop_sec"]))
        else:
            # Seconds of whole-segment windows need no frame rate; clip / snippet centres do.
            fallback = 1.0 if recipe.audio_windows == "segment" else self._frames_fps(segment)
            spans = recipe.audio_windows_of(self._segment_frames(segment, fallback))
        why = manifest_schema.outside_video(
            float(segment["start_sec"]), float(segment["stop_sec"]), track.duration,
            f"the audio of {path}",
        )  # fmt: skip
        if why is not None:  # as a segment's frames do
            raise MediaError(f"segment {segment['uid']!r} {why}; fix its times in the manifest")
        if not any(min(b, track.duration) > max(a, 0.0) for a, b in spans):
            # No window holds a sample of the track: the cut would make audio up (the track's
            # last samples, tiled), so the segment's audio fails as its frames would.
            raise MediaError(
                f"segment {segment['uid']!r} ({segment['start_sec']}-{segment['stop_sec']} s) "
                f"lies after the end of the audio of {path} ({track.duration:.2f} s); fix its "
                "times in the manifest"
            )
        waves = [
            audio_lib.cut(recipe.audio_cut, samples, rate, start, stop, recipe.audio_seconds)
            for start, stop in spans
        ]
        self._note = _lost_note(track, segment, _used_spans(spans, recipe), path)
        name = self.audio_recipe or "vggsound"
        if len({len(w) for w in waves}) == 1:
            spec = audio_lib.spectrogram(name, torch.from_numpy(np.stack(waves)), rate)
        else:  # TBN windows may differ by a sample (rounding): one by one, cut to the shortest
            specs = [audio_lib.spectrogram(name, torch.from_numpy(w), rate) for w in waves]
            frames = min(s.shape[-1] for s in specs)
            spec = torch.stack([s[..., :frames] for s in specs])
        if self.spec.size is not None:
            spec = _fit_size(spec, self.spec.size)
        return spec.unsqueeze(1)  # (K, F, T) -> (K, 1, F, T)


# A video whose index lists this many more frames than it holds was cut short.
TRUNCATED_SECONDS = 1.0
TRUNCATED_FRACTION = 0.05


def _check_inside_video(segment: pd.Series, duration: float, path: Path) -> None:
    """A segment that starts after its video ends, or lies more than half past its end, fails
    (rather than repeating the last frame in every clip). Segments that run a little past the
    end, as annotations often do, are kept."""
    why = manifest_schema.outside_video(
        float(segment["start_sec"]), float(segment["stop_sec"]), duration
    )
    if why is not None:
        raise MediaError(f"segment {segment['uid']!r} {why}: {path}; fix its times in the manifest")


def _cut_bound(decoder: VideoDecoder, listed: int) -> float:
    """Frames a file may hold fewer than its index lists and not be cut short: 1 s or 5 %."""
    return max(TRUNCATED_SECONDS * decoder.fps, TRUNCATED_FRACTION * listed)


def _check_not_cut(segment: pd.Series, decoder: VideoDecoder, path: Path, listed: int) -> None:
    """A segment that runs past the last frame of a file cut short (an interrupted download or
    copy: its index lists more frames than it holds): the clips past the cut would repeat its
    last frame; the segment fails instead (the slack of :func:`_check_inside_video` is for
    annotations running past the end of a whole file). A file whose index lists no frames
    (Matroska/WebM) or as many as it holds (a last frame held, longer audio) is not cut.
    ``listed``: :func:`indexed_frames` of ``path``."""
    missing = listed - decoder.num_frames
    if missing <= _cut_bound(decoder, listed):
        return
    raise MediaError(
        f"segment {segment['uid']!r} runs to {float(segment['stop_sec']):.2f} s, but the "
        f"frames of {path} stop at {decoder.duration:.2f} s (frame {decoder.num_frames} of "
        f"the {listed} its index lists): the file was cut short (an interrupted download or "
        "copy?); re-download it"
    )


def _lost_frames_note(decoder: VideoDecoder, path: Path, listed: int) -> str:
    """A note for the segments of a file that holds a few frames fewer than its index lists
    (not cut short: :func:`_check_not_cut`). Frames lost to damaged packets in the middle of a
    file without timestamps (AVI numbers frames by count) move every later frame earlier:
    4 KB of garbage in test.avi lost 3 frames, and every frame after them was read 0.12 s
    early, stored as done without a word."""
    lost = listed - decoder.num_frames
    if lost <= 0 or lost > _cut_bound(decoder, listed):
        return ""
    message = (
        f"{path}'s index lists {listed} frames but it holds {decoder.num_frames}: {lost} lost "
        "(damaged packets?); if they were in the middle, the frames after them are read up to "
        f"{lost / max(decoder.fps, 1e-6):.2f} s early; re-download it to be sure"
    )
    return f"note: {message}"


def _used_spans(spans: list[tuple[float, float]], recipe: Recipe) -> list[tuple[float, float]]:
    """The seconds of each window the cut reads: the tiling cuts read the first
    ``audio_seconds`` of a longer window (a 10 s window of an 18 s segment), TBN's all of it."""
    if recipe.audio_cut == "tbn":
        return list(spans)
    return [(a, min(b, a + float(recipe.audio_seconds))) for a, b in spans]


def _lost_note(
    track: audio_lib.AudioTrack,
    segment: pd.Series,
    spans: list[tuple[float, float]],
    path: Path | None = None,
) -> str:
    """ "" when the segment's audio windows are intact; a note saying how much of them damaged
    packets replaced by silence; a MediaError when that is more than half of them (naming the
    cut when the file was cut short there)."""
    if not track.lost:
        return ""
    wanted = sum(max(0.0, min(b, track.duration) - max(a, 0.0)) for a, b in spans)
    lost = sum(track.lost_between(a, b) for a, b in spans)
    if lost <= 0:
        return ""
    cut = track.cut_at
    past = 0.0 if cut is None else sum(track.lost_between(max(a, cut), b) for a, b in spans)
    # a segment that runs past the cut fails, as its frames do (`_check_not_cut`): the rest
    # of a file cut short is not silence; a window that only reaches past it keeps a note
    runs_past = cut is not None and past > 0 and float(segment["stop_sec"]) > cut
    if runs_past or wanted <= 0 or lost > audio_lib.MAX_LOST_FRACTION * wanted:
        if runs_past or past >= lost / 2:  # mostly the windows' seconds past the cut
            raise MediaError(
                f"segment {segment['uid']!r}: {past:.2f} s of its {wanted:.2f} s of audio lie "
                f"past the end of the audio of {path or 'its file'} ({cut:.2f} s of the "
                f"{track.duration:.2f} s its container declares): the file was cut short (an "
                "interrupted download or copy?); re-download it"
            )
        raise MediaError(
            f"segment {segment['uid']!r}: {lost:.2f} s of its {wanted:.2f} s of audio are lost "
            "to damaged packets; re-encode or re-download the file"
        )
    notes = []
    if lost - past > 0:
        notes.append(f"{lost - past:.2f} s of {wanted:.2f} s of audio lost to damaged packets")
    if past > 0:
        notes.append(
            f"{past:.2f} s of {wanted:.2f} s of audio past the end of a file cut short at "
            f"{cut:.2f} s"
        )
    return "note: " + "; ".join(notes) + " (silence)"


def _fit_size(spec: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Crop or pad (with the minimum, i.e. silence) a ``(K, F, T)`` spectrogram to ``size``."""
    frequencies, frames = size
    spec = spec[:, :frequencies, :frames]
    pad_f, pad_t = frequencies - spec.shape[1], frames - spec.shape[2]
    if pad_f > 0 or pad_t > 0:
        spec = F.pad(spec, (0, max(pad_t, 0), 0, max(pad_f, 0)), value=float(spec.min()))
    return spec


def _value(segment: pd.Series, column: str) -> float | None:
    if column not in segment.index:
        return None
    value = segment[column]
    if value is None or pd.isna(value):
        return None
    return float(value)


def _text(segment: pd.Series, column: str) -> str | None:
    if column not in segment.index or pd.isna(segment[column]):
        return None
    return str(segment[column]) or None


class DecodingLoader(DataLoader):
    """A DataLoader whose worker processes start with SIGTERM and SIGINT held back: PyTorch
    builds its iterator in steps (workers started, then their states), and a signal between
    them (``avda finetune`` starts workers each epoch) left it half made, its collection
    printing 'Exception ignored in: ... __del__ ... AttributeError' above the command's one
    line. A signal that arrives meanwhile is raised once the iterator is whole.

    Its workers are forked on Linux, wherever it runs. A Dask worker (``avda extract
    --scheduler``) is itself spawned, which makes ``spawn`` its default start method: its
    loader's queues and events then held named semaphores registered with the resource
    tracker it shares with the command, and a Dask worker killed mid-shard (a SIGTERM to the
    job, the cluster closing on Ctrl-C) never unregistered them, so the command's tracker
    printed "There appear to be N leaked semaphore objects to clean up at shutdown" under the
    one line. Forked, the semaphores are unlinked at once and never registered (as in the
    command's own process, where fork is the default), and the workers start without seconds
    of imports."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("num_workers") and sys.platform.startswith("linux"):
            kwargs.setdefault("multiprocessing_context", "fork")
        super().__init__(*args, **kwargs)

    def __iter__(self):
        # The workers start with SIGTERM blocked (the mask of the thread that forks or spawns
        # them), until worker_init ignores it: a job's SIGTERM in between killed a worker the
        # old way, and the parent's SIGCHLD handler raised 'DataLoader worker ... is killed
        # by signal: Terminated'. This process gets one sent meanwhile once they have started.
        # (Windows has no signal masks, nor a process group's SIGTERM to hold back.)
        ours = bool(self.num_workers) and self.worker_init_fn is worker_init and _MASKS
        with _signals_held(), _blocked(signal.SIGTERM) if ours else contextlib.nullcontext():
            iterator = super().__iter__()
            # A worker still busy when the loader shuts down (the command stopped on an error,
            # or SIGTERM) is given PyTorch's wait, 5 s, then ended with terminate(): SIGTERM,
            # which decoding workers ignore (worker_init), so the command's exit waited for its
            # item, however long (a long segment, a slow file system). SIGKILL ends it.
            for worker in getattr(iterator, "_workers", ()):
                worker.terminate = worker.kill
        return iterator


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    import signal

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[int] = []

    def hold(signum: int, _: Any) -> None:
        arrived.append(signum)

    previous = {each: signal.signal(each, hold) for each in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for each, handler in previous.items():
            signal.signal(each, handler)
        if arrived:
            signal.raise_signal(arrived[0])


# signal masks: POSIX's (not Windows')
_MASKS = hasattr(signal, "pthread_sigmask")


@contextlib.contextmanager
def _blocked(signum: int) -> Iterator[None]:
    """``signum`` blocked in this thread, and in the processes it starts meanwhile, which
    inherit its signal mask; one that came is delivered as the block ends."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signum})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def worker_init(_: int) -> None:
    # Decoding workers do no heavy math; one thread each leaves the cores to the backbone.
    torch.set_num_threads(1)
    # A SIGTERM to the whole process group (SLURM at a time limit, a shell's kill of a job)
    # reaches the workers too: PyTorch's worker handler dies by it, and the parent's SIGCHLD
    # handler then raised "DataLoader worker ... is killed by signal" (exit 1 as an internal
    # error, or a traceback before the CLI's 'terminated' line). The parent decides: it
    # unwinds (avda.cli) and ends its workers, which die with it in any case (below).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # started with it blocked (DecodingLoader): one sent since is discarded, being ignored
    if _MASKS:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    die_with_parent()
    _keep_logs()


class _Kept(logging.Handler):
    """A decoding worker's log records (logger name, level, message), for the main process."""

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.records: list[tuple[str, int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((record.name, record.levelno, record.getMessage()))


_kept: _Kept | None = None


def _keep_logs() -> None:
    """In a decoding worker: avda's log records are kept, to go back with the next item
    (:class:`Relayed`), instead of being printed here. Every worker that decodes a file logs
    that file's warnings (damaged packets, a track cut short), and a fine-tuning epoch starts
    new workers: printed where they arise, one warning came once per worker and epoch."""
    global _kept
    _kept = _Kept()
    logger = logging.getLogger("avda")
    logger.handlers = [_kept]
    logger.propagate = False


class Relayed(Dataset):
    """``dataset``'s items as ``(item, records)``: the log records its worker kept while making
    the item (none in the main process, which logs them as they come)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, list[tuple[str, int, str]]]:
        item = self.dataset[index]
        if _kept is None:
            return item, []
        records, _kept.records = _kept.records, []
        return item, records


def relay(records: list, seen: set) -> None:
    """Log the records a worker kept, each one once (``seen``: those logged already)."""
    for record in map(tuple, records):  # the DataLoader hands tuples on as lists
        if record not in seen:
            seen.add(record)
            name, level, message = record
            logging.getLogger(name).log(level, "%s", message)


def die_with_parent() -> None:
    """End this worker process when the process that started it ends, however (Linux only).

    A Dask worker that extracts starts decoding workers for each shard; when the cluster closes
    (Ctrl-C) while a shard has just begun, the Dask worker can be killed before its new decoding
    workers have even recorded their parent, so PyTorch's own
    watchdog never notices, and they waited forever on their queue, holding the command's
    stderr. ``PR_SET_PDEATHSIG`` has the kernel send SIGKILL when the parent ends; a parent
    already gone by then (``multiprocessing.parent_process``) ends the worker at once.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import multiprocessing

    parent = multiprocessing.parent_process()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # no prctl: nothing more to do
        return
    if parent is not None and parent.pid is not None and os.getppid() != parent.pid:
        os._exit(1)  # the parent ended before the call: no signal will come
