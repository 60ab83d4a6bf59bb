"""The built-in demo dataset: real H.264 + AAC mp4 files in two domains, made with PyAV.

Four actions, each with its own motion and its own sound:

====  =========  ==================================  ==============================
 id   verb       motion                              sound
====  =========  ==================================  ==============================
 0    slide      a block moves left to right         steady 440 Hz tone
 1    bounce     a block moves up and down           880 Hz beeps, 4 per second
 2    spin       a bar rotates about the centre      rising chirp 300 -> 1200 Hz
 3    pulse      a disc grows and shrinks            low 150 Hz hum, amplitude-modulated
====  =========  ==================================  ==============================

The domains differ the way kitchens do: ``source`` is bright and clean at 25 fps; ``target`` is
dim, colour-tinted, with a moving textured background and background noise, at 20 fps (like
EPIC-100's 59.94 vs 50 fps, so sampling by seconds matters). Each video holds 3 consecutive
actions of 2 s; the audio is stereo AAC, the action's sound panned off centre (left and right
differ, so extraction exercises the channel mix). Everything is deterministic from ``seed``.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pandas as pd

from avda.data_manifests import schema

VERBS = ("slide", "bounce", "spin", "pulse")
SAMPLE_RATE = 16000
WIDTH, HEIGHT = 160, 120


@dataclasses.dataclass(frozen=True)
class DomainStyle:
    name: str
    fps: int
    background: tuple[int, int, int]
    foreground: tuple[int, int, int]
    gain: float  # brightness multiplier
    texture: float  # amplitude of the moving background texture
    noise: float  # audio background noise (std)
    hum: float  # amplitude of a 100 Hz mains hum with harmonics (a fridge, an extractor fan)
    pixel_noise: float


DOMAINS = (
    DomainStyle("source", 25, (200, 200, 190), (40, 60, 200), 1.0, 0.0, 0.02, 0.0, 4.0),
    DomainStyle("target", 20, (185, 180, 170), (40, 60, 200), 0.9, 10.0, 0.02, 0.15, 6.0),
)


def _frame(verb: int, phase: float, style: DomainStyle, rng: np.random.Generator, t: float):
    """One RGB frame (H, W, 3) uint8 of action ``verb`` at ``phase`` in [0, 1)."""
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    image = np.empty((HEIGHT, WIDTH, 3), np.float32)
    image[:] = style.background
    if style.texture:
        stripes = np.sin((xx + 40 * t) / 7.0) * np.cos((yy - 25 * t) / 11.0)
        image += style.texture * stripes[..., None]
    cx, cy = WIDTH / 2, HEIGHT / 2
    if verb == 0:  # slide
        x = 20 + phase * (WIDTH - 40)
        mask = (abs(xx - x) < 14) & (abs(yy - cy) < 14)
    elif verb == 1:  # bounce
        y = 20 + abs(math.sin(2 * math.pi * phase)) * (HEIGHT - 40)
        mask = (abs(xx - cx) < 14) & (abs(yy - y) < 14)
    elif verb == 2:  # spin
        angle = 2 * math.pi * phase
        u = (xx - cx) * math.cos(angle) + (yy - cy) * math.sin(angle)
        v = -(xx - cx) * math.sin(angle) + (yy - cy) * math.cos(angle)
        mask = (abs(u) < 40) & (abs(v) < 5)
    else:  # pulse
        radius = 10 + 30 * (0.5 + 0.5 * math.sin(4 * math.pi * phase))
        mask = (xx - cx) ** 2 + (yy - cy) ** 2 < radius**2
    image[mask] = style.foreground
    image = image * style.gain + rng.normal(0, style.pixel_noise, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def _sound(verb: int, seconds: float, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    if verb == 0:
        wave = np.sin(2 * np.pi * 440 * t)
    elif verb == 1:
        wave = np.sin(2 * np.pi * 880 * t) * (np.sin(2 * np.pi * 4 * t) > 0)
    elif verb == 2:
        freq = 300 + 900 * (t % 1.0)
        wave = np.sin(2 * np.pi * np.cumsum(freq) / SAMPLE_RATE)
    else:
        wave = np.sin(2 * np.pi * 150 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 2 * t))
    return 0.4 * wave * rng.uniform(0.7, 1.0)


def write_video(
    path: str | Path,
    frames: np.ndarray,
    fps: int,
    audio: np.ndarray | None = None,
    sample_rate: int = SAMPLE_RATE,
    *,
    codec: str = "libx264",
    crf: int = 18,
) -> Path:
    """Encode ``frames`` (T, H, W, 3) uint8 RGB (+ float ``audio`` in [-1, 1], mono ``(n,)``
    or ``(channels, n)``: 2 channels are written as stereo AAC) with PyAV.

    ``codec="libx264rgb"`` with ``crf=0`` gives a lossless file whose decoded frames equal
    ``frames`` exactly (used by tests).
    """
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "rgb24" if codec == "libx264rgb" else "yuv420p"
        stream.options = {"crf": str(crf), "preset": "veryfast"}
        audio_stream = None
        if audio is not None:
            audio = np.atleast_2d(np.asarray(audio, dtype=np.float32))
            if audio.shape[0] not in (1, 2):
                raise ValueError(f"audio must be (n,) or (1|2, n), got {audio.shape}")
            layout = "mono" if audio.shape[0] == 1 else "stereo"
            audio_stream = container.add_stream("aac", rate=sample_rate, layout=layout)
        for image in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        if audio_stream is not None:
            samples = np.clip(audio, -1, 1).astype(np.float32)
            block = 1024
            for offset in range(0, samples.shape[1], block):
                piece = np.ascontiguousarray(samples[:, offset : offset + block])
                frame = av.AudioFrame.from_ndarray(piece, format="fltp", layout=layout)
                frame.sample_rate = sample_rate
                frame.pts = offset
                for packet in audio_stream.encode(frame):
                    container.mux(packet)
            for packet in audio_stream.encode():
                container.mux(packet)
    return path


def generate(
    root: str | Path,
    *,
    seed: int = 0,
    videos_per_domain: int = 16,
    test_videos_per_domain: int = 6,
    actions_per_video: int = 3,
    action_seconds: float = 2.0,
    progress: bool = True,
) -> pd.DataFrame:
    """Write the demo videos under ``root/videos`` and return the manifest (also saved as
    ``root/manifest.csv``). Re-running with the same arguments writes the same manifest, sound
    and frames; the H.264 files themselves are not byte-identical from run to run (measured
    2026-12-03: 28 of 32 files differ, in about one decoded frame of 150 by up to 8 grey levels;
    not x264's threads, which were ruled out), so cached RGB features of two generations can
    differ slightly (23 of 96 rows, at most 0.6 % relative)."""
    from avda._io import progress_bar

    root = Path(root)
    rows = []
    jobs = [(d, v) for d in DOMAINS for v in range(videos_per_domain)]
    for style, video in progress_bar(jobs, desc="demo videos", unit="video", disable=not progress):
        domain_index = DOMAINS.index(style)
        rng = np.random.default_rng([seed, domain_index, video])
        # Balanced classes: each video cycles through a rotated class order.
        verbs = [(video + k) % len(VERBS) for k in range(actions_per_video)]
        rng.shuffle(verbs)
        video_id = f"{style.name}_{video:03d}"
        frames_per_action = int(round(action_seconds * style.fps))
        frames, sound = [], []
        for k, verb in enumerate(verbs):
            speed = rng.uniform(0.8, 1.2)
            offset = rng.uniform(0, 1)
            for i in range(frames_per_action):
                t = k * action_seconds + i / style.fps
                phase = (offset + speed * i / frames_per_action) % 1.0
                frames.append(_frame(verb, phase, style, rng, t))
            sound.append(_sound(verb, action_seconds, rng))
            start = k * action_seconds
            split = "test" if video >= videos_per_domain - test_videos_per_domain else "train"
            rows.append(
                {
                    "uid": f"{video_id}_{k}",
                    "video_id": video_id,
                    "domain": style.name,
                    "split": split,
                    "start_sec": round(start + 0.05, 3),
                    "stop_sec": round(start + action_seconds - 0.05, 3),
                    "fps": float(style.fps),
                    "verb": VERBS[verb],
                    "verb_class": verb,
                    "video_path": f"videos/{video_id}.mp4",
                }
            )
        # Stereo, left and right different (as in EPIC-Kitchens and VGGSound): the action's
        # sound panned off centre by a per-video amount, independent noise per channel. The
        # mono mix (channel mean) is the action plus the hum.
        action = np.concatenate(sound)
        t = np.arange(len(action)) / SAMPLE_RATE
        hum = style.hum * sum(np.sin(2 * np.pi * 100 * h * t) / h for h in (1, 2, 3))
        pan = rng.uniform(0.2, 0.35)
        pan = 1 - pan if video % 2 else pan
        audio = np.stack([2 * pan * action + hum, 2 * (1 - pan) * action + hum])
        audio = audio + rng.normal(0, style.noise, audio.shape)
        write_video(root / "videos" / f"{video_id}.mp4", np.stack(frames), style.fps, audio)
    manifest = pd.DataFrame(rows)
    # Whole or not at all: `avda demo` reuses a folder whose manifest.csv exists (a half one,
    # from a kill while it was written, would validate with fewer rows).
    schema.write(manifest, root / "manifest.csv")
    return manifest
