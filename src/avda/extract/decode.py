"""Video decoding with decord: only the sampled frames, resized inside the decoder.

Frame positions come from the container's own timestamps, so seconds map to the right frame
for fractional (29.97, 19.62) and variable frame rates alike.

Corrupt packets: decord gives up on a whole batch when one packet cannot be decoded. The
decoder then retries the frames one by one, and decodes those that still fail with PyAV, which
skips the damaged packets (FFmpeg error concealment); a frame that no packet yields takes the
nearest decodable frame within :data:`CONCEALMENT_SECONDS` (logged), else the segment fails.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np

from avda.errors import MediaError

log = logging.getLogger(__name__)

CONCEALMENT_SECONDS = 0.5


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """What the container header says about a file (read with PyAV, no decoding)."""

    path: Path
    width: int
    height: int
    fps: float
    audio_channels: tuple[int, ...]
    audio_sample_rates: tuple[int, ...]

    @property
    def has_audio(self) -> bool:
        return len(self.audio_channels) > 0


def probe(path: str | Path) -> VideoInfo:
    """Read stream metadata; raises :class:`MediaError` for missing or unreadable files."""
    import av

    path = Path(path)
    if not path.exists():
        raise MediaError(
            f"video file {path} not found; check --videos and the manifest's video_path"
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
    except MediaError:
        raise
    except Exception as exc:  # PyAV raises many error types for damaged files
        raise MediaError(f"{path} cannot be opened as a video: {exc}") from exc
    if not width or not height:
        raise MediaError(f"{path}: video stream has no frame size (damaged header?)")
    return VideoInfo(path, int(width), int(height), float(rate), channels, rates)


def resized_size(width: int, height: int, shorter_side: int | None) -> tuple[int, int]:
    """(width, height) after scaling the shorter side to ``shorter_side`` (keeping aspect)."""
    if shorter_side is None:
        return width, height
    if width <= height:
        return shorter_side, max(1, round(height * shorter_side / width))
    return max(1, round(width * shorter_side / height)), shorter_side


class VideoDecoder:
    """A decord reader that resizes in the decoder and maps seconds to frame indices."""

    def __init__(
        self,
        path: str | Path,
        *,
        shorter_side: int | None = None,
        size: tuple[int, int] | None = None,
        threads: int = 1,
    ):
        """``shorter_side``: resize keeping the aspect ratio; ``size``: (width, height) exactly."""
        import decord

        self.info = probe(path)
        self.path = Path(path)
        width, height = size or resized_size(self.info.width, self.info.height, shorter_side)
        self.size = (width, height)
        try:
            self._reader = decord.VideoReader(
                str(path), width=width, height=height, num_threads=threads
            )
            self.num_frames = len(self._reader)
            # Start time of every frame, from the container's timestamps.
            self.timestamps = self._reader.get_frame_timestamp(np.arange(self.num_frames))[:, 0]
        except Exception as exc:  # decord raises DECORDError / RuntimeError
            raise MediaError(f"{path} cannot be decoded: {_short(exc)}") from exc
        if self.num_frames == 0:
            raise MediaError(f"{path} has no decodable frames")
        self.fps = float(self._reader.get_avg_fps())

    @property
    def duration(self) -> float:
        return float(self.timestamps[-1] + 1.0 / max(self.fps, 1e-6))

    def indices_at(self, seconds: np.ndarray) -> np.ndarray:
        """Index of the frame shown at each time (clamped to the video: edge frames repeat)."""
        index = np.searchsorted(self.timestamps, np.asarray(seconds) + 1e-6, side="right") - 1
        return np.clip(index, 0, self.num_frames - 1)

    def frames(self, indices: np.ndarray) -> np.ndarray:
        """Decode ``indices`` (any order, repeats allowed) -> uint8 ``(n, H, W, 3)`` RGB."""
        indices = np.asarray(indices, dtype=np.int64)
        unique, inverse = np.unique(indices, return_inverse=True)
        try:
            batch = self._reader.get_batch(unique.tolist()).asnumpy()
        except Exception as exc:  # a corrupt packet: go frame by frame
            log.info(
                "%s: batch decoding failed (%s); decoding frame by frame", self.path, _short(exc)
            )
            batch = self._frames_tolerant(unique)
        return batch[inverse.reshape(-1)]

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
        import av

        width, height = self.size
        times = self.timestamps[indices]
        got: dict[int, np.ndarray] = {}
        try:
            with av.open(str(self.path)) as container:
                stream = container.streams.video[0]
                base = float(stream.time_base)
                start = max(float(times.min()) - CONCEALMENT_SECONDS, 0.0)
                container.seek(int(start / base), stream=stream, backward=True)
                for packet in container.demux(stream):
                    try:
                        frames = packet.decode()
                    except av.error.FFmpegError:
                        continue  # a damaged packet
                    for frame in frames:
                        if frame.time is None:
                            continue
                        index = int(np.argmin(np.abs(self.timestamps - frame.time)))
                        if abs(self.timestamps[index] - frame.time) > CONCEALMENT_SECONDS:
                            continue
                        got[index] = frame.to_ndarray(width=width, height=height, format="rgb24")
                    if packet.pts is not None and packet.pts * base > times.max() + 1.0:
                        break
        except av.error.FFmpegError as exc:
            raise MediaError(f"{self.path}: decoding frames failed: {exc}") from exc
        result: dict[int, np.ndarray] = {}
        for index in indices.tolist():
            if index in got:
                result[index] = got[index]
                continue
            nearest = min(got, key=lambda i: abs(i - index), default=None)
            gap = (
                abs(self.timestamps[nearest] - self.timestamps[index])
                if nearest is not None
                else None
            )
            if gap is None or gap > CONCEALMENT_SECONDS:
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
            result[index] = got[nearest]
        return result


def _short(exc: BaseException) -> str:
    """decord errors carry a C++ stack; keep the first meaningful line."""
    text = str(exc).strip().splitlines()
    lines = [t for t in text if t and not t.startswith(("Stack trace", "  ["))]
    return (lines[0] if lines else type(exc).__name__)[:300]
