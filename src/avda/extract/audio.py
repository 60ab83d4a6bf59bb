"""Audio: the video's own track (or a wav file) -> mono -> resampled -> spectrogram.

Decoding is PyAV's (FFmpeg): every codec and channel layout, damaged packets skipped and
replaced by silence at their place on the timeline (:func:`read_audio`). decord's
``AudioReader`` is not used: it scrambles multichannel audio (see ``docs/extraction.md``).

Spectrogram recipes, each exactly as its backbone's reference code computes it:

- ``vggsound``: scipy.signal.spectrogram(x, 16000, nperseg=512, noverlap=353) (Tukey 0.25
  periodic window, constant detrend, density scaling, one-sided), then ``log(S + 1e-7)`` and a
  per-example z-score -> ``(257, frames)``. Used by the VGGSound ResNet-18 (audio_resnet18).
- ``tbn``: librosa-equivalent STFT(n_fft 511, hop 120, win 240, Hann, centred, zero padded),
  ``log(|X|^2 + 1e-6)`` -> ``(256, frames)``. Used by TBN's audio stream at 24 kHz.
- ``logmel``: torchaudio MelSpectrogram + log, a general-purpose recipe.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchaudio

from avda.errors import ConfigError, MediaError
from avda.extract.decode import _short
from avda.paths import safe_component
from avda.registry import unknown_name_message

log = logging.getLogger(__name__)


class NoAudioTrack(MediaError):
    """The file has no audio stream (features are stored as zeros with status MISSING)."""


@dataclasses.dataclass(frozen=True)
class AudioTrack:
    """A decoded audio track: mono float32 samples and what decoding lost.

    ``lost`` lists the ``[start, stop)`` spans (seconds from sample 0: the video's first
    frame, or an audio file's first sample) that damaged packets took: they hold silence
    (zeros), so later audio keeps its place on the timeline.
    """

    samples: np.ndarray
    sample_rate: int
    source_rate: int
    channels: int
    codec: str
    lost: tuple[tuple[float, float], ...] = ()
    damaged_packets: int = 0
    # where the audio of a file cut short ends (seconds; None: not cut), before the silence
    # that stands for the rest of the track its container declares
    cut_at: float | None = None

    @property
    def duration(self) -> float:
        return len(self.samples) / float(self.sample_rate)

    @property
    def lost_seconds(self) -> float:
        return float(sum(stop - start for start, stop in self.lost))

    def lost_between(self, start: float, stop: float) -> float:
        """Seconds of ``[start, stop)`` that damaged packets took (0 when none)."""
        return float(sum(max(0.0, min(stop, b) - max(start, a)) for a, b in self.lost))


# A segment whose audio is more than this fraction silence-filled (damaged packets) fails.
MAX_LOST_FRACTION = 0.5


def load_audio(path: str | Path, sample_rate: int) -> np.ndarray:
    """The whole audio track of ``path`` as float32 mono samples at ``sample_rate`` (1-D)."""
    return read_audio(path, sample_rate).samples


def read_audio(path: str | Path, sample_rate: int | None = None) -> AudioTrack:
    """Decode the first audio stream of ``path`` (a video or an audio file) with PyAV.

    Every sample format (float, 16/32-bit integer, planar or packed) becomes float32 in
    [-1, 1] as FFmpeg defines it (``s16 / 32768``); the channels (stereo, 5.1, any layout) are
    mixed to mono by their mean, as librosa's ``to_mono`` does; the result is resampled to
    ``sample_rate`` (None: the track's own rate) with torchaudio's band-limited sinc
    interpolation. A damaged packet is
    skipped: its span becomes silence at its place on the timeline and is reported in
    :attr:`AudioTrack.lost` (logged as a warning).
    """
    path = Path(path)
    mono, native_rate, channels, codec, lost, damaged, cut = _decode_mono(path)
    waveform = torch.from_numpy(mono)
    sample_rate = sample_rate or native_rate
    if native_rate != sample_rate:
        waveform = torchaudio.functional.resample(waveform, native_rate, sample_rate)
    samples = np.ascontiguousarray(waveform.numpy(), dtype=np.float32)
    spans = tuple((a / native_rate, b / native_rate) for a, b in lost)
    cut_at = cut / native_rate if cut is not None else None
    track = AudioTrack(samples, sample_rate, native_rate, channels, codec, spans, damaged, cut_at)
    # the cut short (logged where it is found) is not a damaged packet nor silence in the file
    cut_seconds = track.duration - cut_at if cut_at is not None else 0.0
    packets = damaged - (cut_at is not None)
    if packets > 0 or track.lost_seconds - cut_seconds > 1e-6:
        log.warning(
            "%s: %d damaged audio packet(s); %.2f s of %.2f s filled with silence",
            *(path, packets, track.lost_seconds - cut_seconds, track.duration),
        )
    return track


def _decode_mono(
    path: Path,
) -> tuple[np.ndarray, int, int, str, list[tuple[int, int]], int, int | None]:
    """(mono samples at the native rate, rate, channels, codec, lost sample spans, damaged
    packets, the sample where the audio of a file cut short ends or None). Frames are placed
    by their timestamps: a gap left by a skipped packet is zeros.

    Sample 0 is at the start of the video stream when the file has one (the origin of the
    frame timestamps that place the video clips, decord's and PyAV's alike; a first frame may
    come later: test.avi's is at 0.04 s), so a track that starts later than the video stream
    begins with silence and one that starts earlier loses what precedes the stream's start:
    the audio stays where it plays beside the video.
    An audio file's sample 0 is its first decoded sample."""
    import av

    if not path.exists():
        raise MediaError(f"media file {path} not found; check --videos / the audio folder")
    pieces: list[np.ndarray] = []
    lost: list[tuple[int, int]] = []
    damaged = 0
    position = 0  # samples placed so far
    origin: float | None = None  # the time of sample 0
    offset: int | None = None  # where the first decoded sample falls, in samples from it
    damaged_until: float | None = None  # end time of the latest damaged packet
    cut: int | None = None  # where the audio of a file cut short ends
    try:
        container = av.open(str(path))
    except Exception as exc:  # PyAV raises many error types for damaged files
        raise MediaError(f"{path} cannot be opened: {_short(exc)}") from exc
    with container:
        streams = container.streams.audio
        if not streams:
            raise NoAudioTrack(f"{path} has no audio track")
        stream = streams[0]
        rate = int(stream.codec_context.sample_rate or 0)
        channels = int(stream.codec_context.channels or 0)
        codec = str(stream.codec_context.name)
        declared = _declared_seconds(stream, container, path)
        origin = _video_start(container)
        if rate <= 0:
            raise MediaError(f"{path}: audio stream has no sample rate")
        packets = container.demux(stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                break
            except av.error.FFmpegError as exc:  # the container itself is cut or damaged
                log.warning("%s: audio demuxing stopped early: %s", path, _short(exc))
                damaged += 1
                break
            try:
                frames = packet.decode()
            except av.error.FFmpegError:
                damaged += 1
                if packet.pts is not None and packet.duration:
                    end = float((packet.pts + packet.duration) * packet.time_base)
                    damaged_until = max(damaged_until or end, end)
                continue
            for frame in frames:
                data = _frame_mono(frame)
                if frame.sample_rate and int(frame.sample_rate) != rate:
                    raise MediaError(
                        f"{path}: the audio sample rate changes mid-stream ({rate} -> "
                        f"{frame.sample_rate} Hz); re-encode the audio track"
                    )
                if frame.time is not None:
                    if origin is None:
                        origin = float(frame.time)
                    at = int(round((float(frame.time) - origin) * rate))
                    if offset is None:
                        offset = at
                    if position == 0 and not pieces and at < 0:  # before the video starts
                        data = data[min(-at, len(data)) :]
                        at = 0
                        if not len(data):
                            continue
                    elif position == 0 and not pieces and at > 0:  # it starts after the video
                        pieces.append(np.zeros(at, np.float32))  # silence, not a loss
                        position = at
                    elif at - position > max(1, frame.samples // 2):  # a skipped packet's gap
                        lost.append((position, at))
                        pieces.append(np.zeros(at - position, np.float32))
                        position = at
                bad = ~np.isfinite(data)
                if bad.any():  # a decoder that returns NaN / inf: silence, counted as lost
                    data = np.where(bad, np.float32(0), data)
                    damaged += 1
                    lost.append((position, position + len(data)))
                pieces.append(data)
                position += len(data)
    if damaged_until is not None and origin is not None:
        end = int(round((damaged_until - origin) * rate))
        if end > position:  # the last packets were damaged: the track keeps its length
            lost.append((position, end))
            pieces.append(np.zeros(end - position, np.float32))
            position = end
    if declared is not None and position > 0:
        end = (offset or 0) + int(round(declared * rate))
        if end - position > max(CUT_SHORT_SECONDS, CUT_SHORT_FRACTION * declared) * rate:
            # a cut or damaged file whose audio ends early: the rest of the declared track is
            # lost, not silence, so segments there fail instead of being silently zero-padded
            log.warning(
                "%s: the audio ends at %.2f s of the %.2f s its container declares (cut short)",
                *(path, position / rate, declared),
            )
            lost.append((position, end))
            pieces.append(np.zeros(end - position, np.float32))
            cut, position = position, end
            damaged += 1
    if position == 0:
        detail = f" ({damaged} damaged packets)" if damaged else ""
        raise MediaError(f"{path}: the audio track is empty or cannot be decoded{detail}")
    return np.concatenate(pieces), rate, channels, codec, _merge(lost), damaged, cut


def _video_start(container) -> float | None:
    """The start time (seconds) of the container's first video stream, which the video
    decoders take as time 0 (None: no video stream, or one without a start time). Cover art
    (an attached picture, as in audio files) is not a video."""
    import av

    for stream in container.streams.video:
        try:
            if stream.disposition & av.stream.Disposition.attached_pic:
                continue
        except (AttributeError, TypeError):  # a PyAV without dispositions
            pass
        if stream.start_time is None or stream.time_base is None:
            return None
        return float(stream.start_time * stream.time_base)
    return None


# Audio that ends this much before its declared duration (and this fraction of it) was cut
# short by damage; smaller differences are ordinary rounding of container durations.
CUT_SHORT_SECONDS = 0.5
CUT_SHORT_FRACTION = 0.02


def _declared_seconds(stream, container, path: Path | None = None) -> float | None:
    """The audio stream's duration as its container declares it (None when it does not).

    FFmpeg derives a WAV file's duration from the bytes present, so a cut WAV declares its cut
    length; its own header still says how long its data chunk was written to be.
    """
    if path is not None and path.suffix.lower() == ".wav":
        written = _wav_declared_seconds(path)
        if written is not None:
            return written
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return float(container.duration) / 1_000_000  # AV_TIME_BASE
    return None


def _wav_declared_seconds(path: Path) -> float | None:
    """Seconds of audio a RIFF/WAVE header declares (its ``data`` chunk size / byte rate)."""
    import struct

    try:
        with open(path, "rb") as handle:
            head = handle.read(1 << 16)
    except OSError:
        return None
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    byte_rate, offset = None, 12
    while offset + 8 <= len(head):
        name, size = (
            head[offset : offset + 4],
            struct.unpack("<I", head[offset + 4 : offset + 8])[0],
        )
        if name == b"fmt " and offset + 20 <= len(head):
            byte_rate = struct.unpack("<I", head[offset + 16 : offset + 20])[0]
        if name == b"data":
            # 0 or 0xFFFFFFFF: a stream written without knowing its length (no declaration)
            if not byte_rate or size in (0, 0xFFFFFFFF):
                return None
            return size / byte_rate
        offset += 8 + size + (size & 1)
    return None


def _frame_mono(frame) -> np.ndarray:
    """One decoded ``av.AudioFrame`` -> float32 mono (channel mean), FFmpeg's scaling."""
    data = frame.to_ndarray()
    count = int(frame.layout.nb_channels)
    if not frame.format.is_planar:  # packed: (1, samples * channels), interleaved
        data = data.reshape(-1, count).T
    kind = data.dtype
    if kind == np.uint8:
        data = (data.astype(np.float32) - 128.0) / 128.0
    elif kind == np.int16:
        data = data.astype(np.float32) / 32768.0
    elif kind == np.int32:
        data = (data.astype(np.float64) / 2147483648.0).astype(np.float32)
    elif kind == np.int64:
        data = (data.astype(np.float64) / 9223372036854775808.0).astype(np.float32)
    else:
        data = data.astype(np.float32, copy=False)
    if data.shape[0] == 1:
        return np.ascontiguousarray(data[0])
    return data.mean(axis=0, dtype=np.float32)


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, stop in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], stop))
        else:
            merged.append((start, stop))
    return merged


def window(
    samples: np.ndarray, sample_rate: int, start: float, stop: float, length: float
) -> np.ndarray:
    """Samples of ``[start, stop)`` seconds, tiled (repeated) or cut to exactly ``length`` s.

    Tiling a short segment is the VGGSound / Audio-Adaptive reference behaviour
    (``np.tile(x, k)[:n]``).
    """
    n = int(round(length * sample_rate))
    lo = max(0, int(math.floor(start * sample_rate)))
    hi = min(len(samples), max(lo + 1, int(math.ceil(stop * sample_rate))))
    piece = samples[lo:hi]
    if len(piece) == 0:  # the segment lies after the end of the audio: take the last samples
        piece = samples[-n:] if len(samples) else np.zeros(1, np.float32)
    if len(piece) >= n:
        return piece[:n]
    repeats = int(math.ceil(n / len(piece)))
    return np.tile(piece, repeats)[:n]


AUDIO_EXTENSIONS: tuple[str, ...] = (".wav", ".flac", ".mp3", ".m4a", ".aac", ".ogg", ".opus")


def locate_audio_file(root: Path, video_id: str, participant: str | None = None) -> Path:
    """``<root>/<video_id>.wav`` (or another audio extension, or under ``<participant>/``)."""
    video_id = safe_component(video_id, "video_id")
    participant = safe_component(participant or str(video_id).split("_")[0], "participant_id")
    for folder in (root, root / participant):
        for extension in AUDIO_EXTENSIONS:
            candidate = folder / f"{video_id}{extension}"
            if candidate.exists():
                return candidate
    raise MediaError(
        f"no audio file for video {video_id!r} in {root} (looked for {video_id}.wav and "
        f"{participant}/{video_id}.wav, also .flac/.mp3/.m4a); check --audio"
    )


def window_tile_round(
    samples: np.ndarray, sample_rate: int, start: float, stop: float, length: float
) -> np.ndarray:
    """The VGGSound / Audio-Adaptive cut, exactly: ``x[round(start*sr):round(stop*sr)]``, the
    first ``length`` seconds, tiled (``np.tile(x, 10)[:n]`` until long enough) when shorter."""
    n = int(round(length * sample_rate))
    lo = max(0, int(round(start * sample_rate)))
    hi = min(len(samples), int(round(stop * sample_rate)))
    piece = samples[lo:hi]
    if len(piece) == 0:  # segment after the end of the audio (the reference loops forever)
        piece = samples[-n:] if len(samples) else np.zeros(1, np.float32)
    if len(piece) >= n:
        return piece[:n]
    return np.tile(piece, int(math.ceil(n / len(piece))))[:n]


def window_tbn(
    samples: np.ndarray, sample_rate: int, start: float, stop: float, length: float
) -> np.ndarray:
    """TBN's ``_extract_sound_feature``: ``[start, stop)`` (centre ± 0.639 s), shifted inside.

    Left of the track start: the first ``round((length + 0.001) * sr)`` samples (1.279 s for the
    1.278 s window); past its end: the last as many. A track shorter than that is zero padded.
    """
    edge = int(round((length + 0.001) * sample_rate))
    duration = len(samples) / float(sample_rate)
    if start < 0:
        piece = samples[:edge]
    elif stop > duration:
        piece = samples[-edge:]
    else:
        piece = samples[int(round(start * sample_rate)) : int(round(stop * sample_rate))]
    minimum = int(round(length * sample_rate))
    if len(piece) < minimum:
        piece = np.pad(piece, (0, minimum - len(piece)))
    return piece


WINDOW_CUTS = {"tile": window, "tile-round": window_tile_round, "tbn": window_tbn}


def cut(
    rule: str, samples: np.ndarray, sample_rate: int, start: float, stop: float, length: float
) -> np.ndarray:
    """Cut one window with ``rule`` ("tile", "tile-round" or "tbn"; see ``Recipe.audio_cut``)."""
    if rule not in WINDOW_CUTS:
        raise ConfigError(unknown_name_message("audio cut", rule, WINDOW_CUTS))
    return WINDOW_CUTS[rule](samples, sample_rate, start, stop, length)


def _tukey_periodic(length: int, alpha: float) -> torch.Tensor:
    """scipy.signal.get_window(('tukey', alpha), length) (fftbins=True: periodic)."""
    m = length + 1
    n = torch.arange(m, dtype=torch.float64)
    width = int(math.floor(alpha * (m - 1) / 2.0))
    w = torch.ones(m, dtype=torch.float64)
    left = n[: width + 1]
    w[: width + 1] = 0.5 * (1 + torch.cos(math.pi * (-1 + 2.0 * left / alpha / (m - 1))))
    right = n[m - width - 1 :]
    w[m - width - 1 :] = 0.5 * (
        1 + torch.cos(math.pi * (-2.0 / alpha + 1 + 2.0 * right / alpha / (m - 1)))
    )
    return w[:length]


def vggsound_spectrogram(samples: torch.Tensor, sample_rate: int = 16000) -> torch.Tensor:
    """``(..., n)`` waveform -> ``(..., 257, frames)`` z-scored log spectrogram (VGGSound)."""
    nperseg, noverlap = 512, 353
    x = samples.to(torch.float64).clamp(-1.0, 1.0)
    frames = x.unfold(-1, nperseg, nperseg - noverlap)  # (..., frames, 512)
    frames = frames - frames.mean(dim=-1, keepdim=True)  # detrend='constant'
    w = _tukey_periodic(nperseg, 0.25).to(frames.device)
    spectrum = torch.fft.rfft(frames * w, dim=-1).abs() ** 2 / (sample_rate * (w**2).sum())
    spectrum[..., 1:-1] *= 2  # one-sided density (even nperseg: Nyquist not doubled)
    spec = torch.log(spectrum.transpose(-1, -2) + 1e-7)  # (..., 257, frames)
    mean = spec.mean(dim=(-1, -2), keepdim=True)
    std = spec.std(dim=(-1, -2), keepdim=True, correction=0)
    return ((spec - mean) / (std + 1e-9)).to(torch.float32)


def tbn_spectrogram(samples: torch.Tensor, sample_rate: int = 24000) -> torch.Tensor:
    """``(..., n)`` -> ``(..., 256, frames)``: TBN's librosa STFT recipe, ``log(|X|^2 + 1e-6)``."""
    x = samples.to(torch.float64)
    stft = torch.stft(
        x.reshape(-1, x.shape[-1]),
        n_fft=511,
        hop_length=120,
        win_length=240,
        window=torch.hann_window(240, periodic=True, dtype=torch.float64),
        center=True,
        pad_mode="constant",
        return_complex=True,
    )
    spec = torch.log(stft.abs() ** 2 + 1e-6)
    return spec.reshape(*x.shape[:-1], *spec.shape[-2:]).to(torch.float32)


def logmel_spectrogram(
    samples: torch.Tensor, sample_rate: int = 16000, n_mels: int = 128
) -> torch.Tensor:
    """``(..., n)`` -> ``(..., n_mels, frames)`` log-mel (25 ms window, 10 ms hop)."""
    transform = torchaudio.transforms.MelSpectrogram(
        sample_rate=sample_rate,
        n_fft=int(0.025 * sample_rate),
        hop_length=int(0.010 * sample_rate),
        n_mels=n_mels,
    )
    return torch.log(transform(samples.to(torch.float32)) + 1e-6)


SPECTROGRAMS = {
    "vggsound": vggsound_spectrogram,
    "tbn": tbn_spectrogram,
    "logmel": logmel_spectrogram,
}


def spectrogram(name: str, samples: torch.Tensor, sample_rate: int, **options: Any) -> torch.Tensor:
    if name not in SPECTROGRAMS:
        raise ConfigError(unknown_name_message("spectrogram recipe", name, SPECTROGRAMS))
    return SPECTROGRAMS[name](samples, sample_rate, **options)
