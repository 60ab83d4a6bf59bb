"""``avda flow``: optical flow as u/v JPEGs in the EPIC-KITCHENS layout, resumable.

Output, per video (the layout ``avda extract --flow`` and the EPIC loaders read)::

    <out>/<video_id>/flow.json                     method, stride, bound, size, weights, fps,
                                                   frames (the video's flow frames)...
    <out>/<video_id>/u/frame_0000000001.jpg ...    horizontal component (x)
    <out>/<video_id>/v/frame_0000000001.jpg ...    vertical component (y)

Frame pairs follow furnari-flow (the tool that made the EPIC flow) since its 2020 semantics:
flow frame ``j`` (1-based) is the flow from RGB frame ``a = (j - 1) * stride + 1`` to frame
``a + dilation``, computed on grayscale frames whose shorter side is resized to ``shorter_side``
(furnari-flow: 256, even width and height). Each component is clipped to ``±bound`` pixels and
quantised to ``round(255 * (v + bound) / (2 * bound))`` (0 = -bound, 255 = +bound, 127.5 = no
motion; rounding half to even, like ``cvRound``), then saved as a grayscale JPEG of quality 95
(OpenCV's default). EPIC-55 used bound 25 and stride 2, the EPIC-100 extension bound 8 and
stride 1; avda's default, bound 20 and stride 1, is the DeepMind I3D convention.

RGB frame n of a video is the frame shown at ``(n - 1) / fps`` (as ``avda extract --videos``
reads it and ffmpeg's default extraction numbers its files): a video whose first frame comes
after its stream's start repeats it (``first_frame_repeats`` in ``flow.json``; until 2026-12-07
decoded frames were numbered, one frame ahead on such files, and such folders are not resumed),
and frames shown before the stream's start (negative times: an MP4 cut without re-encoding)
get no number (``first_frame_repeats`` negative).

Methods:

- ``tvl1``: OpenCV's ``cv2.optflow.DualTVL1OpticalFlow_create`` with its defaults (tau 0.25,
  lambda 0.15, theta 0.3, 5 scales, 5 warps, epsilon 0.01) on the CPU, as the flow the I3D / TBN
  flow streams were trained on (needs ``opencv-contrib-python-headless``).
- ``raft``: torchvision RAFT (``raft_large`` or ``raft_small``, chosen from the ``--weights``
  state dict), on the GPU when there is one; fast, but its flow statistics differ from TV-L1.

Resuming: ``flow.json`` is written before the video's first flow frame, and each u and v JPEG
is written to a temporary name and renamed, so a killed run never leaves half a JPEG under the
final name nor a frame its record does not describe. A flow frame whose u and v files both
exist is finished and skipped (a rerun with the same settings finishes a folder with the same
files). A folder recorded with other settings is refused where it holds a finished frame
(unless ``force``) and taken over where it holds none. A folder holding files avda flow does
not write (another tool's frames, a user's) is refused, ``force`` or not, and never deleted.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

import avda
from avda._io import (
    DISK_FULL,
    atomic_write,
    atomic_write_text,
    file_lock,
    progress_bar,
    sha256_file,
)
from avda.cache.lock import flow_lock
from avda.data_manifests import schema as manifest_schema
from avda.devices import resolve_device
from avda.errors import AvdaError, CheckpointError, ConfigError
from avda.extract import frames as frames_lib
from avda.extract.decode import VideoDecoder, probe, resized_size, video_backend
from avda.paths import DESKTOP_FILES, check_inside, child

log = logging.getLogger(__name__)

FlowMethod = Literal["tvl1", "raft"]
JPEG_QUALITY = 95
FLOW_TEMPLATE = "frame_{:010d}.jpg"
FAILURES_LIST = "flow.failures.csv"  # in --out: the videos that failed, and why
FAILURES_LOCK = ".flow.failures.lock"  # held while a run rewrites that list
_FLOW_NAME = re.compile(r"frame_\d{10}\.jpg")
RAFT_MIN_SIDE = 128
COMPARED_KEYS = (
    "method",
    "stride",
    "dilation",
    "bound",
    "shorter_side",
    "weights_sha256",
    "first_frame_repeats",
)
# What a flow.json written before a key existed meant by it: avda flow numbered a video's
# decoded frames until 2026-12-07 (no repeats), whatever the video's first timestamp.
ABSENT_MEANS = {"first_frame_repeats": 0}


def _repeats_absent(asked: int) -> str:
    """A flow.json without first_frame_repeats, of a video this run numbers with ``asked``
    repeats (not 0): ahead of the RGB where the first frame starts late, behind where frames
    come before the stream's start."""
    way = "ahead of" if asked > 0 else "behind"
    return (
        " (no key: made before 2026-12-07, numbering decoded frames, so its flow runs "
        f"{way} avda's RGB on this video by {abs(asked)} frame(s))"
    )


# what a folder's flow.json without the key was, given what this run asks for: said where it
# differs from this run
ABSENT_SAYS = {"first_frame_repeats": _repeats_absent}


@dataclasses.dataclass(frozen=True, kw_only=True)
class FlowOptions:
    """How flow is computed; written to each video's ``flow.json``."""

    method: FlowMethod = "tvl1"
    stride: int = 1
    dilation: int = 1
    bound: float = frames_lib.DEFAULT_FLOW_BOUND
    shorter_side: int = 256
    weights: Path | None = None
    raft_updates: int = 12

    def __post_init__(self) -> None:
        if self.method not in ("tvl1", "raft"):
            raise ConfigError(f"unknown flow method {self.method!r}; valid: tvl1, raft")
        if self.stride < 1 or self.dilation < 1:
            raise ConfigError(
                f"--stride and --dilation must be >= 1, got {self.stride}, {self.dilation}"
            )
        if self.bound <= 0:
            raise ConfigError(f"--bound must be positive, got {self.bound}")
        if self.method == "raft" and self.weights is None:
            raise ConfigError(
                "raft needs --weights: a torchvision raft_large or raft_small state dict "
                "(e.g. raft_large_C_T_SKHT_V2-ff5fadd5.pth); weights cannot be downloaded here"
            )

    def metadata(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "stride": self.stride,
            "dilation": self.dilation,
            "bound": self.bound,
            "shorter_side": self.shorter_side,
            "weights": str(self.weights) if self.weights else None,
            "weights_sha256": sha256_file(self.weights) if self.weights else None,
            "raft_updates": self.raft_updates if self.method == "raft" else None,
            "quantisation": "round(255 * (clip(v, -bound, bound) + bound) / (2 * bound))",
            "jpeg_quality": JPEG_QUALITY,
            "pairs": "flow j: frame (j - 1) * stride + 1 -> that frame + dilation",
            "avda_version": avda.__version__,
        }


@dataclasses.dataclass
class FlowResult:
    videos: int
    computed: int
    skipped: int
    failures: list[tuple[str, str]]
    seconds: float

    @property
    def ok(self) -> bool:
        return not self.failures


def pair_frames(num_frames: int, stride: int, dilation: int) -> np.ndarray:
    """``(M, 2)`` 1-based RGB frame numbers (a, b) of flow frames 1..M."""
    if num_frames <= dilation:
        return np.zeros((0, 2), dtype=np.int64)
    first = np.arange(1, num_frames - dilation + 1, stride, dtype=np.int64)
    return np.stack([first, first + dilation], axis=1)


def compute_flow(
    manifest: pd.DataFrame,
    *,
    out: str | Path,
    videos: str | Path | None = None,
    frames: str | Path | None = None,
    options: FlowOptions | None = None,
    device: str | None = None,
    batch_size: int = 8,
    segments_only: bool = False,
    margin: float = 1.0,
    force: bool = False,
    progress: bool = True,
) -> FlowResult:
    """Compute flow for every video of ``manifest`` (decoded from ``videos`` or read from RGB
    frame folders ``frames``) into ``out``; see the module docstring.

    ``segments_only``: only flow frames within ``margin`` seconds of a segment (fast for sparse
    annotations); otherwise whole videos, as the EPIC flow.
    """
    began = time.perf_counter()
    options = options or FlowOptions()
    if (videos is None) == (frames is None):
        raise ConfigError("avda flow reads either --videos DIR or --frames DIR (one of them)")
    root = Path(videos if videos is not None else frames)
    if not root.is_dir():
        raise ConfigError(
            f"{'--videos' if videos is not None else '--frames'} {root}: no such folder"
        )
    if videos is not None:
        video_backend()  # one error for a bad AVDA_VIDEO_DECODER or decord asked but missing
    out = Path(out)
    device = resolve_device(device)
    estimator = _estimator(options, device)  # refused weights leave no --out folder behind
    out.mkdir(parents=True, exist_ok=True)
    metadata = options.metadata()
    segments = manifest_schema.normalise(manifest)
    result = FlowResult(videos=0, computed=0, skipped=0, failures=[], seconds=0.0)
    groups = list(segments.groupby("video_id", sort=False))
    bar = progress_bar(total=0, desc="flow", unit="pair", disable=not progress)
    for video_id, rows in groups:
        video_id = str(video_id)
        try:
            folder = child(out, video_id, "video_id")  # one name: never outside --out
            # one run writes a video folder at a time (another run on it fails that video,
            # naming the first; runs on other videos, an array split by video, write beside)
            with flow_lock(out, video_id):
                source = _open_source(rows.iloc[0], root, videos is not None, options)
                # the video's rate: `avda extract --flow` maps a segment's seconds to flow frames
                # with it when the manifest has no fps column
                pairs = pair_frames(source.count, options.stride, options.dilation)
                # and its flow frames, held or not: a --segments-only folder that ends early is
                # then read as part of the video (a frame past its last file fails, not repeats)
                about = {
                    "fps": source.fps or None,
                    "frames": len(pairs),
                    "first_frame_repeats": source.repeats,
                }
                _claim_folder(folder, out, {**metadata, **about}, force)
                wanted = np.arange(1, len(pairs) + 1)
                if segments_only:
                    wanted = _near_segments(wanted, pairs, rows, source.fps, margin)
                finished = _finished(folder)
                todo = [j for j in wanted if FLOW_TEMPLATE.format(int(j)) not in finished]
                result.skipped += len(wanted) - len(todo)
                bar.total += len(todo)
                bar.refresh()
                for start in range(0, len(todo), batch_size):
                    block = np.asarray(todo[start : start + batch_size], dtype=np.int64)
                    first, second = pairs[block - 1, 0], pairs[block - 1, 1]
                    images = source.read(np.concatenate([first, second]))  # (2n, H, W, 3)
                    flows = estimator(images[: len(block)], images[len(block) :])  # (n, H, W, 2)
                    for j, flow in zip(block, flows, strict=True):
                        _write_pair(folder, int(j), flow, options.bound)
                    result.computed += len(block)
                    bar.update(len(block))
                result.videos += 1
        except (AvdaError, OSError, RuntimeError, ValueError) as exc:
            if isinstance(exc, OSError) and exc.errno in DISK_FULL:
                bar.close()  # every later video (and the failures list) would fail the same:
                raise  # the run stops, its one line naming the file that did not fit
            log.warning("flow for video %s failed: %s", video_id, exc)
            result.failures.append((video_id, str(exc)))
    bar.close()
    with file_lock(out / FAILURES_LOCK, bounded=False):  # read, then replace: in turn
        _list_failures(out, set(segments["video_id"].astype(str)), result.failures)
    result.seconds = time.perf_counter() - began
    return result


def _list_failures(out: Path, ran: set[str], failures: list[tuple[str, str]]) -> None:
    """``OUT/flow.failures.csv``: this run's failed videos, and an earlier run's rows of videos
    it did not run (those of ``ran`` are stale); deleted once empty. Written whole, while the
    run holds :data:`FAILURES_LOCK`, so two runs' lists never overwrite each other's rows."""
    path = out / FAILURES_LIST
    frame = pd.DataFrame(failures, columns=["video_id", "error"])
    if path.exists():  # an earlier run's list: its rows of this run's videos are stale
        try:
            earlier = pd.read_csv(path, dtype=str, keep_default_na=False)
            frame = pd.concat([earlier[~earlier["video_id"].isin(ran)], frame])
        except (ValueError, KeyError):  # not a list of ours: this run's replaces it
            pass
    if frame.empty:
        path.unlink(missing_ok=True)
    else:
        atomic_write_text(path, frame.to_csv(index=False))


# --------------------------------------------------------------------------- sources
def first_frame_repeats(first_time: float, fps: float, num_frames: int) -> int:
    """How many frame numbers before the first frame's own show it: those whose middle,
    ``(n - 0.5) / fps``, comes before the first frame's timestamp (0 for a video whose first
    frame is at its stream's start; 1 for ``test.avi``, first frame at 0.04 s of 25 fps).
    Negative: that many leading frames are shown before the stream's start (an MP4 cut
    without re-encoding keeps them before its edit list's start, at negative times), where no
    frame number reads them (``avda extract --videos`` reads frame 1 at ``0.5 / fps``).

    A first timestamp further from 0 than the video is long is not a real one (decord gave the
    frames of a Matroska stream without a start time about 9.2e15 s; the decoder now replaces
    such timestamps with PyAV's): 0, numbering decoded frames."""
    if not fps or not np.isfinite(first_time) or abs(first_time) * fps > num_frames:
        return 0
    return math.ceil(first_time * fps + 0.5 - 1e-6) - 1


def video_first_frame_repeats(decoder: VideoDecoder) -> int:
    """:func:`first_frame_repeats` of an open video: how ``avda flow --videos`` numbers it."""
    return first_frame_repeats(float(decoder.timestamps[0]), decoder.fps, decoder.num_frames)


class _VideoSource:
    """Frames of a video file, resized in the decoder to even sides (as furnari-flow).

    Numbered as ``avda extract --videos`` reads a video and as ffmpeg's default (constant-rate)
    extraction numbers its files: frame n is the frame shown at ``(n - 1) / fps``, so a video
    whose first frame comes after its stream's start shows that frame under the numbers before
    it too (:func:`first_frame_repeats`; docs/extraction.md, "Videos whose first frame starts
    late"), and frames shown before its start (negative times) under none. Every later frame is
    the next decoded one."""

    def __init__(self, path: Path, shorter_side: int) -> None:
        info = probe(path)
        size = _even(*resized_size(info.width, info.height, shorter_side))
        self.decoder = VideoDecoder(path, size=size)
        self.fps = self.decoder.fps
        self.repeats = video_first_frame_repeats(self.decoder)
        self.count = self.decoder.num_frames + self.repeats
        if self.decoder.timestamps[0] * self.fps > self.decoder.num_frames:
            # the decoder that read the times: decord keeps only times PyAV agrees with
            # (decode.DecordVideoDecoder), so the other decoder reads the same
            log.warning(
                "%s: its first frame is at %.3g s (%s's timestamps), past the video's end (%d "
                "frames at %.3g fps); flow numbers its decoded frames, avda extract --videos "
                "cannot place frames by such times",
                *(path, float(self.decoder.timestamps[0]), self.decoder.backend),
                *(self.decoder.num_frames, self.fps),
            )

    def read(self, numbers: np.ndarray) -> np.ndarray:
        indices = np.asarray(numbers) - 1 - self.repeats
        return self.decoder.frames(np.clip(indices, 0, self.decoder.num_frames - 1))


class _FolderSource:
    def __init__(self, folder: Path, shorter_side: int, fps: float | None) -> None:
        self.frames = frames_lib.RgbFrames(folder)
        self.count = self.frames.count
        self.fps = fps or 0.0
        self.repeats = 0  # a folder's files are numbered already
        self.shorter_side = shorter_side

    def read(self, numbers: np.ndarray) -> np.ndarray:
        images = self.frames.read(numbers, shorter_side=self.shorter_side)
        height, width = images.shape[1:3]
        return images[:, : height - height % 2, : width - width % 2]  # even sides


def _open_source(row: pd.Series, root: Path, is_video: bool, options: FlowOptions):
    if is_video:
        return _VideoSource(manifest_schema.video_path(row, root), options.shorter_side)
    participant = row.get("participant_id") if "participant_id" in row.index else None
    folder = frames_lib.locate(root, str(row["video_id"]), participant, "rgb")
    fps = row.get("fps") if "fps" in row.index and not pd.isna(row.get("fps")) else None
    return _FolderSource(folder, options.shorter_side, fps)


def _even(width: int, height: int) -> tuple[int, int]:
    return max(2, width - width % 2), max(2, height - height % 2)


def _near_segments(
    wanted: np.ndarray, pairs: np.ndarray, rows: pd.DataFrame, fps: float, margin: float
) -> np.ndarray:
    """Flow frames whose first RGB frame lies within ``margin`` s of a segment."""
    if not fps:
        given = pd.to_numeric(rows["fps"], errors="coerce").dropna() if "fps" in rows else []
        if len(given) == 0:
            raise ConfigError(
                "--segments-only on frame folders needs the manifest's fps column (frame "
                "folders have no timestamps)"
            )
        fps = float(given.iloc[0])
    keep = np.zeros(len(wanted), dtype=bool)
    first_seconds = (pairs[wanted - 1, 0] - 1) / fps
    for start, stop in zip(rows["start_sec"], rows["stop_sec"], strict=True):
        keep |= (first_seconds >= start - margin) & (first_seconds <= stop + margin)
    return wanted[keep]


# --------------------------------------------------------------------------- output
def _claim_folder(folder: Path, out: Path, metadata: dict[str, Any], force: bool) -> None:
    """Create the video's folder and flow.json; refuse one that holds finished flow frames
    made with other settings (unless ``force``), and one that a symbolic link leads out of
    ``out`` (nothing is written or deleted outside it). Files avda flow does not write (another
    tool's or a user's: :func:`_foreign`) are refused, ``force`` or not: never mixed with avda's
    frames nor deleted. Frames without a flow.json are not avda flow's (it writes the record
    first): refused the same way, ``force`` or not. A folder of other settings without a
    finished frame (a run killed before its first pair was written whole) is taken over: its
    u or v files of unfinished pairs are deleted, then the record says this run's settings."""
    path = folder / frames_lib.FLOW_METADATA
    for part in (folder, folder / "u", folder / "v", path):
        if part.exists() or part.is_symlink():
            check_inside(part, out)
    foreign = _foreign(folder)
    if foreign:
        named = ", ".join(foreign[:3]) + (
            f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        )
        raise ConfigError(
            f"{folder} holds {len(foreign)} file(s) avda flow does not write ({named}): "
            "another tool's or a user's, neither written beside nor deleted (--force "
            "included); move them out of it, or use another --out"
        )
    found = _read_record(path)
    if isinstance(found, dict):
        if metadata.get("fps") is None and found.get("fps"):  # this run knows no rate
            metadata = {**metadata, "fps": found["fps"]}
        absent = {k for k in ABSENT_MEANS if k not in found}
        found = {**ABSENT_MEANS, **found}
        diffs = [
            f"{k}: folder has {found.get(k)!r}"
            + (
                ABSENT_SAYS.get(k, lambda _: " (not recorded)")(metadata.get(k))
                if k in absent
                else ""
            )
            + f", this run asks for {metadata.get(k)!r}"
            for k in COMPARED_KEYS
            if found.get(k) != metadata.get(k)
        ]
        how = f"made differently ({'; '.join(diffs)})"
    elif found is None:  # avda flow writes the record first: frames without one are not its
        diffs, how = ["no flow.json"], "and no flow.json (another tool's, or it was deleted)"
    else:  # not avda's record (written whole by it): settings unknown, as without one
        diffs, how = ["unreadable flow.json"], f"and {path} unreadable ({found})"
    if diffs and (not force or found is None):
        finished, kept = len(_finished(folder)), _not_left_by_a_stop(folder)
        held = f"{finished} flow frame(s)" if finished else f"{kept} JPEG(s) in u/ and v/"
        fix = (
            "use another --out, or --force to recompute it"
            if found is not None
            else "move them out of it (--force deletes only frames a flow.json records), or "
            "use another --out"
        )
        if finished or kept:
            raise ConfigError(f"{folder} holds {held} {how}; {fix}")
    if diffs:  # the record goes last: it never names settings its frames were not made with
        for component in ("u", "v"):
            for old in _own(folder / component):
                if not old.is_symlink():  # a link's target is not ours to delete
                    check_inside(old, out)
                old.unlink()
    for component in ("u", "v"):
        (folder / component).mkdir(parents=True, exist_ok=True)
    text = json.dumps(metadata, indent=2)
    atomic_write(
        path, lambda tmp: tmp.write_text(text), temporary=path.with_suffix(".json.partial")
    )


# what avda flow writes in a video's folder, and in its u/ and v/ (frames, their temporaries)
_OWN_TOP = frozenset({frames_lib.FLOW_METADATA, f"{frames_lib.FLOW_METADATA}.partial", "u", "v"})
_OWN_FRAME = re.compile(r"(frame_\d{10}\.jpg)|\.(frame_\d{10}\.jpg)\.partial")


def _foreign(folder: Path) -> list[str]:
    """The files of ``folder`` (and of its u/ and v/) that avda flow does not write, as paths
    relative to it (sorted): another tool's frames (mmaction2's ``x_00001.jpg``, ``.png``),
    a user's files. A desktop's ``.DS_Store`` (and the like) is left alone."""
    names = [
        entry.name
        for entry in _entries(folder)
        if entry.name not in _OWN_TOP or (entry.name in ("u", "v") and not entry.is_dir())
    ]
    for component in ("u", "v"):
        names += [
            f"{component}/{entry.name}"
            for entry in _entries(folder / component)
            if not _OWN_FRAME.fullmatch(entry.name)
        ]
    return sorted(name for name in names if Path(name).name not in DESKTOP_FILES)


def _entries(folder: Path) -> list[Path]:
    return list(folder.iterdir()) if folder.is_dir() else []


def _own(folder: Path) -> list[Path]:
    """The flow frames and temporaries of avda flow's naming in ``folder`` (a u/ or v/)."""
    return [entry for entry in _entries(folder) if _OWN_FRAME.fullmatch(entry.name)]


def _read_record(path: Path) -> dict[str, Any] | str | None:
    """The flow.json at ``path``: its settings, None where there is none, or why it cannot be
    read (not JSON, not an object)."""
    if not path.exists():
        return None
    try:
        found = json.loads(path.read_text())
    except ValueError as exc:  # UnicodeDecodeError too
        return f"not JSON: {exc}"
    return found if isinstance(found, dict) else f"a JSON {type(found).__name__}, not an object"


def _finished(folder: Path) -> set[str]:
    """Names of the flow frames whose u and v files are both there (each written whole)."""
    u, v = ({p.name for p in _own(folder / c) if _FLOW_NAME.fullmatch(p.name)} for c in "uv")
    return u & v


def _not_left_by_a_stop(folder: Path) -> int:
    """How many u and v JPEGs of avda flow's naming ``folder`` holds that a run stopped
    before its first finished pair cannot have left (0 where it can): it writes u then v, one
    pair at a time, so it leaves at most one u file and no v file. Others (a u half per frame)
    are not deleted without ``force``."""
    u, v = ({p.name for p in _own(folder / c) if _FLOW_NAME.fullmatch(p.name)} for c in "uv")
    if not v and len(u) <= 1:
        return 0
    return len(u) + len(v)


def _write_pair(folder: Path, number: int, flow: np.ndarray, bound: float) -> None:
    """Quantise ``(H, W, 2)`` pixels and write u then v (each atomically)."""
    from PIL import Image

    name = FLOW_TEMPLATE.format(number)
    for channel, component in enumerate(("u", "v")):
        values = frames_lib.quantise(flow[..., channel], bound)
        final = folder / component / name
        atomic_write(
            final,
            lambda tmp, values=values: Image.fromarray(values, mode="L").save(
                tmp, format="JPEG", quality=JPEG_QUALITY
            ),
            temporary=final.with_name(f".{name}.partial"),
        )


# --------------------------------------------------------------------------- estimators
def _estimator(options: FlowOptions, device: str):
    """A function (first (n, H, W, 3) uint8, second (n, H, W, 3)) -> (n, H, W, 2) pixels."""
    if options.method == "tvl1":
        return _TVL1()
    return _Raft(options.weights, device=device, updates=options.raft_updates)


class _TVL1:
    def __init__(self) -> None:
        from avda.optional import require

        cv2 = require(
            "cv2",
            package="opencv-contrib-python-headless",
            extra="flow",
            feature="TV-L1 flow (avda flow --method tvl1)",
        )
        if not hasattr(cv2, "optflow"):
            raise ConfigError(
                "this OpenCV has no cv2.optflow (the plain opencv-python wheel); install "
                "opencv-contrib-python-headless instead (pip install 'avda[flow]')"
            )
        self.cv2 = cv2
        self.algorithm = cv2.optflow.DualTVL1OpticalFlow_create()

    def __call__(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        flows = []
        for a, b in zip(first, second, strict=True):
            gray_a = self.cv2.cvtColor(np.ascontiguousarray(a), self.cv2.COLOR_RGB2GRAY)
            gray_b = self.cv2.cvtColor(np.ascontiguousarray(b), self.cv2.COLOR_RGB2GRAY)
            flows.append(self.algorithm.calc(gray_a, gray_b, None))  # (H, W, 2): x, y
        return np.stack(flows)


class _Raft:
    def __init__(self, weights: Path, *, device: str, updates: int) -> None:
        self.model = load_raft(weights).eval().to(device)
        self.device, self.updates = device, updates

    @torch.inference_mode()
    def __call__(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        a, b = _raft_input(first, self.device), _raft_input(second, self.device)
        height, width = first.shape[1:3]
        # RAFT needs sides divisible by 8 and at least 128 (its correlation pyramid).
        pad_h = max(RAFT_MIN_SIDE, height + (-height) % 8) - height
        pad_w = max(RAFT_MIN_SIDE, width + (-width) % 8) - width
        if pad_h or pad_w:
            a = torch.nn.functional.pad(a, (0, pad_w, 0, pad_h), mode="replicate")
            b = torch.nn.functional.pad(b, (0, pad_w, 0, pad_h), mode="replicate")
        flow = self.model(a, b, num_flow_updates=self.updates)[-1]  # (n, 2, H', W')
        flow = flow[:, :, :height, :width]
        return flow.permute(0, 2, 3, 1).float().cpu().numpy()  # (n, 2, H, W) -> (n, H, W, 2)


def _raft_input(images: np.ndarray, device: str) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    x = x.permute(0, 3, 1, 2).float()  # (n, H, W, 3) -> (n, 3, H, W)
    return x / 127.5 - 1.0  # RAFT takes RGB in [-1, 1]


def load_raft(weights: str | Path) -> torch.nn.Module:
    """torchvision ``raft_large`` or ``raft_small`` with the state dict in ``weights``.

    Accepts a plain state dict (torchvision's published files) or one wrapped in
    ``{'state_dict': ...}`` / ``{'model': ...}``; the architecture is chosen by the keys, and the
    first missing, unexpected or mis-shaped key is reported by name.
    """
    from torchvision.models.optical_flow import raft_large, raft_small

    path = Path(weights)
    if not path.exists():
        raise CheckpointError(f"RAFT weights {path} not found")
    from avda.extract.backbones.weights import read_checkpoint

    # weights_only=True, and a refusal in one line that names the global (issue 18)
    state = read_checkpoint(path)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a state dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    candidates = {"raft_large": raft_large, "raft_small": raft_small}
    best_name, best_missing = "", None
    for name, builder in candidates.items():
        model = builder(weights=None)
        expected = model.state_dict()
        missing = [k for k in expected if k not in state]
        if best_missing is None or len(missing) < len(best_missing):
            best_name, best_missing = name, missing
        if missing:
            continue
        extra = [k for k in state if k not in expected]
        if extra:
            raise CheckpointError(f"{path}: unexpected key {extra[0]!r} for torchvision {name}")
        for key, value in expected.items():
            if tuple(state[key].shape) != tuple(value.shape):
                raise CheckpointError(
                    f"{path}: {key} has shape {list(state[key].shape)}, torchvision {name} "
                    f"expects {list(value.shape)}"
                )
        model.load_state_dict(state)
        log.info("RAFT: loaded %s weights from %s", name, path)
        return model
    raise CheckpointError(
        f"{path} is neither a torchvision raft_large nor raft_small state dict (closest: "
        f"{best_name}, missing {best_missing[0]!r} and {len(best_missing) - 1} more)"
    )
