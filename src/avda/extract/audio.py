"""Audio: the video's own track (or a wav file) -> mono -> resampled -> spectrogram.

Spectrogram recipes, each exactly as its backbone's reference code computes it:

- ``vggsound``: scipy.signal.spectrogram(x, 16000, nperseg=512, noverlap=353) (Tukey 0.25
  periodic window, constant detrend, density scaling, one-sided), then ``log(S + 1e-7)`` and a
  per-example z-score -> ``(257, frames)``. Used by the VGGSound ResNet-18 (audio_resnet18).
- ``tbn``: librosa-equivalent STFT(n_fft 511, hop 120, win 240, Hann, centred, zero padded),
  ``log(|X|^2 + 1e-6)`` -> ``(256, frames)``. Used by TBN's audio stream at 24 kHz.
- ``logmel``: torchaudio MelSpectrogram + log, a general-purpose recipe.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchaudio

from avda.errors import ConfigError, MediaError
from avda.extract.decode import _short
from avda.registry import unknown_name_message


class NoAudioTrack(MediaError):
    """The file has no audio stream (features are stored as zeros with status MISSING)."""


def load_audio(path: str | Path, sample_rate: int) -> np.ndarray:
    """The whole audio track of ``path`` (a video or an audio file) as float32 mono at
    ``sample_rate`` (1-D array).

    Multi-channel audio (stereo, 5.1) is mixed down by averaging the channels; resampling uses
    torchaudio's band-limited sinc interpolation. The first audio stream is used.
    """
    import decord

    path = Path(path)
    native_rate = _audio_rate(path)
    try:
        reader = decord.AudioReader(str(path), sample_rate=-1, mono=False)
        waveform = torch.from_numpy(reader[:].asnumpy())  # (channels, n)
    except Exception as exc:
        raise MediaError(f"{path}: audio cannot be decoded: {_short(exc)}") from exc
    if waveform.numel() == 0:
        raise MediaError(f"{path}: the audio track is empty")
    mono = waveform.float().mean(dim=0)
    if native_rate != sample_rate:
        mono = torchaudio.functional.resample(mono, native_rate, sample_rate)
    return mono.numpy().astype(np.float32)


def _audio_rate(path: Path) -> int:
    """Sample rate of the first audio stream (PyAV header read); NoAudioTrack if none."""
    import av

    if not path.exists():
        raise MediaError(f"media file {path} not found; check --videos / the audio folder")
    try:
        with av.open(str(path)) as container:
            streams = container.streams.audio
            if not streams:
                raise NoAudioTrack(f"{path} has no audio track")
            rate = int(streams[0].codec_context.sample_rate or 0)
    except MediaError:
        raise
    except Exception as exc:
        raise MediaError(f"{path} cannot be opened: {exc}") from exc
    if rate <= 0:
        raise MediaError(f"{path}: audio stream has no sample rate")
    return rate


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
    participant = participant or str(video_id).split("_")[0]
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
