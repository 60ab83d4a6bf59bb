"""Sampling recipes: how many clips K per segment, where, and how many frames each.

A recipe is data (a frozen config) and is written into the cache provenance, so a cache always
says how its features were sampled. Clip centres are uniformly spaced over the segment
(``start + (k + 0.5) * duration / K``, the test-time protocol of MM-SADA, TSN and TBN); frames of
a clip are spaced ``1 / frame_rate`` seconds apart around the centre. Frames that fall outside
the video repeat the first or last frame (the clamping of the reference loaders).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np

from avda.config import Config
from avda.registry import Registry

RECIPES: Registry = Registry("sampling recipe")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Recipe(Config):
    """Where and how to sample a segment.

    ``frame_rate`` is the rate of the sampled frames in a clip (MM-SADA: every 2nd frame of
    60 fps video = 30); ``resize_shorter`` is done inside the decoder, then a centre crop of
    ``crop_size``. Audio: ``audio_windows`` "segment" takes one window over the whole segment
    (tiled or cut to ``audio_seconds``); "clips" takes one ``audio_seconds`` window centred on
    each visual clip.
    """

    name: str
    num_clips: int
    num_frames: int
    frame_rate: float
    resize_shorter: int
    crop_size: int
    audio_windows: Literal["segment", "clips"] = "segment"
    audio_seconds: float = 10.0

    def clip_centres(self, start: float, stop: float) -> np.ndarray:
        """(K,) clip centre times in seconds, uniformly spaced over ``[start, stop]``."""
        duration = max(stop - start, 0.0)
        return start + (np.arange(self.num_clips) + 0.5) * duration / self.num_clips

    def frame_times(self, start: float, stop: float) -> np.ndarray:
        """(K, T) times of every sampled frame."""
        offsets = (np.arange(self.num_frames) - (self.num_frames - 1) / 2) / self.frame_rate
        return self.clip_centres(start, stop)[:, None] + offsets[None, :]

    def audio_spans(self, start: float, stop: float) -> list[tuple[float, float]]:
        """The (start, stop) seconds of each audio window."""
        if self.audio_windows == "segment":
            return [(start, stop)]
        half = self.audio_seconds / 2
        return [(c - half, c + half) for c in self.clip_centres(start, stop)]

    @property
    def num_audio_windows(self) -> int:
        return 1 if self.audio_windows == "segment" else self.num_clips


def get(name: str) -> Recipe:
    return RECIPES.get(name)


def _add(recipe: Recipe) -> None:
    RECIPES.register(recipe.name)(recipe)


# MM-SADA test protocol: 5 uniformly spaced 16-frame I3D windows, every 2nd frame of 60 fps
# video (30 fps), shorter side 256, centre crop 224. Audio: one 10 s window (VGGSound recipe).
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
