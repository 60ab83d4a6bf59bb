"""Extraction: manifest rows -> decoded clips -> batched backbone -> Zarr cache.

Decoding runs in DataLoader worker processes and overlaps with batched inference in the main
process; every segment's clips are batched with other segments' clips. Each segment is
independent: a bad video fails its own segments (status FAILED with the reason) and the run
goes on. Results are written chunk by chunk, features first and status last, so a killed run
resumes exactly at the first segment whose status is not DONE.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from avda import cache as cache_lib
from avda.cache import FeatureCache, Status
from avda.data_manifests import schema as manifest_schema
from avda.errors import AvdaError, CacheError, ConfigError, MediaError
from avda.extract import audio as audio_lib
from avda.extract import backbones
from avda.extract.decode import VideoDecoder
from avda.extract.sampling import Recipe
from avda.extract.transforms import centre_crop, normalise_frames

log = logging.getLogger(__name__)

AUDIO_RECIPE_OF_BACKBONE = {"audio_resnet18": "vggsound", "tbn": "tbn"}
RANDOM_INIT_SEED = 0


@dataclasses.dataclass(frozen=True)
class ModalitySpec:
    """Which backbone (and weights) encodes one modality."""

    modality: str
    backbone: str
    weights: Path | None = None


@dataclasses.dataclass
class ExtractResult:
    store: Path
    done: int
    failed: int
    missing: int
    seconds: float
    failures: pd.DataFrame

    @property
    def ok(self) -> bool:
        return self.failed == 0


def sha256_file(path: Path | None) -> str | None:
    if path is None:
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------- datasets
class _SegmentDataset(Dataset):
    """Item = (row, input tensor or None, status, error) for one segment and one modality."""

    def __init__(
        self,
        segments: pd.DataFrame,
        rows: np.ndarray,
        videos: Path,
        recipe: Recipe,
        modality: str,
        spec: backbones.InputSpec,
        audio_recipe: str | None,
    ) -> None:
        self.segments = segments
        self.rows = rows
        self.videos = videos
        self.recipe = recipe
        self.modality = modality
        self.spec = spec
        self.audio_recipe = audio_recipe
        self._last: tuple[Path, Any] | None = None  # per-worker cache of the open video/audio

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, int, str]:
        row = int(self.rows[index])
        segment = self.segments.iloc[row]
        path = manifest_schema.video_path(segment, self.videos)
        try:
            if self.modality == "audio":
                x = self._audio(path, segment)
            else:
                x = self._visual(path, segment)
            return row, x, int(Status.DONE), ""
        except audio_lib.NoAudioTrack as exc:
            return row, None, int(Status.MISSING), str(exc)
        except (AvdaError, OSError, RuntimeError, ValueError) as exc:
            return row, None, int(Status.FAILED), str(exc)

    def _open(self, path: Path, make):
        if self._last is None or self._last[0] != path:
            self._last = None  # drop the previous reader before opening the next
            self._last = (path, make(path))
        return self._last[1]

    def _visual(self, path: Path, segment: pd.Series) -> torch.Tensor:
        decoder = self._open(
            path, lambda p: VideoDecoder(p, shorter_side=self.recipe.resize_shorter)
        )
        times = self.recipe.frame_times(float(segment["start_sec"]), float(segment["stop_sec"]))
        indices = decoder.indices_at(times.reshape(-1))
        frames = decoder.frames(indices)  # (K*T, H, W, 3)
        frames = centre_crop(frames, self.recipe.crop_size)
        K, T = times.shape
        frames = frames.reshape(K, T, *frames.shape[1:])  # (K, T, H, W, 3)
        return normalise_frames(frames, self.spec)  # (K, C, T, H, W)

    def _audio(self, path: Path, segment: pd.Series) -> torch.Tensor:
        rate = int(self.spec.sample_rate or 16000)
        samples = self._open(path, lambda p: audio_lib.load_audio(p, rate))
        windows = [
            audio_lib.window(samples, rate, start, stop, self.recipe.audio_seconds)
            for start, stop in self.recipe.audio_spans(
                float(segment["start_sec"]), float(segment["stop_sec"])
            )
        ]
        waves = torch.from_numpy(np.stack(windows))  # (K, n)
        spec = audio_lib.spectrogram(self.audio_recipe or "vggsound", waves, rate)
        return spec.unsqueeze(1)  # (K, 1, F, T)


def _collate(items: list) -> list:
    return items


def _worker_init(_: int) -> None:
    # Decoding workers do no heavy math; one thread each leaves the cores to the backbone.
    torch.set_num_threads(1)


# --------------------------------------------------------------------------- store handling
def _recipe_dict(recipe: Recipe) -> dict[str, Any]:
    return recipe.to_dict()


def _modality_entry(spec: ModalitySpec, model: backbones.Backbone) -> dict[str, Any]:
    return {
        "backbone": spec.backbone,
        "weights": str(spec.weights) if spec.weights else None,
        "weights_sha256": sha256_file(spec.weights),
        "random_init_seed": None if spec.weights else RANDOM_INIT_SEED,
        "input_spec": model.input_spec.to_dict(),
    }


def _differences(expected: dict[str, Any], found: dict[str, Any], keys) -> list[str]:
    return [
        f"{k}: store has {found.get(k)!r}, this run asks for {expected.get(k)!r}"
        for k in keys
        if found.get(k) != expected.get(k)
    ]


def open_or_create_store(
    out: Path,
    segments: pd.DataFrame,
    manifest_sha: str,
    recipe: Recipe,
    *,
    chunk_rows: int,
    force: bool,
) -> FeatureCache:
    """Resume a compatible store, refuse an incompatible one (unless ``force``), or create."""
    if out.exists():
        store = cache_lib.open_cache(out, mode="a")
        prov = store.provenance
        diffs = _differences(
            {"manifest_sha256": manifest_sha, "recipe": _recipe_dict(recipe)},
            prov,
            ("manifest_sha256", "recipe"),
        )
        if not diffs:
            return store
        if not force:
            raise CacheError(
                f"store {out} was built differently: "
                + "; ".join(diffs)
                + ". Use another -o, or --force to replace it with a new store"
            )
        backup = out.with_name(f"{out.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
        log.warning("--force: moving the old store %s to %s", out, backup)
        shutil.move(str(out), str(backup))
    return cache_lib.create(
        out,
        segments,
        manifest_sha256=manifest_sha,
        recipe=_recipe_dict(recipe),
        chunk_rows=chunk_rows,
    )


def _check_modality(
    store: FeatureCache, spec: ModalitySpec, entry: dict[str, Any], force: bool
) -> bool:
    """True when the modality exists and matches; raises when it exists and differs."""
    if spec.modality not in store.modalities:
        return False
    found = store.modality_info(spec.modality)
    diffs = _differences(entry, found, ("backbone", "weights_sha256", "random_init_seed"))
    if diffs and not force:
        raise CacheError(
            f"store {store.path} holds {spec.modality} features made differently: "
            + "; ".join(diffs)
            + ". Use another -o, or --force to recompute this modality"
        )
    return not diffs


def shard_rows(num_rows: int, chunk_rows: int, shard: tuple[int, int] | None) -> np.ndarray:
    """Rows of shard ``i/n``: whole chunks dealt round-robin, so no two shards share a chunk."""
    rows = np.arange(num_rows)
    if shard is None:
        return rows
    index, count = shard
    if not 0 <= index < count:
        raise ConfigError(f"--shard {index}/{count}: expected 0 <= i < n")
    chunk_of_row = rows // chunk_rows
    return rows[chunk_of_row % count == index]


# --------------------------------------------------------------------------- main entry
def extract(
    manifest: pd.DataFrame,
    *,
    videos: str | Path,
    out: str | Path,
    recipe: Recipe,
    modalities: list[ModalitySpec],
    batch_size: int = 16,
    workers: int = 2,
    device: str | None = None,
    chunk_rows: int = cache_lib.schema.DEFAULT_CHUNK_ROWS,
    retry_failed: bool = False,
    force: bool = False,
    shard: tuple[int, int] | None = None,
    progress: bool = True,
) -> ExtractResult:
    """Extract ``modalities`` for every manifest row into the store ``out`` (resuming)."""
    began = time.perf_counter()
    out, videos = Path(out), Path(videos)
    segments = manifest_schema.normalise(manifest)
    store = open_or_create_store(
        out,
        segments,
        manifest_schema.fingerprint(manifest),
        recipe,
        chunk_rows=chunk_rows,
        force=force,
    )
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    for spec in modalities:
        _extract_modality(
            store,
            segments,
            spec,
            videos=videos,
            recipe=recipe,
            batch_size=batch_size,
            workers=workers,
            device=device,
            retry_failed=retry_failed,
            force=force,
            shard=shard,
            progress=progress,
        )
    statuses = np.concatenate([store.status(m.modality) for m in modalities]) if modalities else []
    failures = store.failures()
    return ExtractResult(
        store=out,
        done=int(np.sum(np.asarray(statuses) == Status.DONE)),
        failed=int(np.sum(np.asarray(statuses) == Status.FAILED)),
        missing=int(np.sum(np.asarray(statuses) == Status.MISSING)),
        seconds=time.perf_counter() - began,
        failures=failures,
    )


def _extract_modality(
    store: FeatureCache,
    segments: pd.DataFrame,
    spec: ModalitySpec,
    *,
    videos: Path,
    recipe: Recipe,
    batch_size: int,
    workers: int,
    device: str,
    retry_failed: bool,
    force: bool,
    shard: tuple[int, int] | None,
    progress: bool,
) -> None:
    with torch.random.fork_rng(devices=[]):
        # Random init (no weights) is seeded, so a resumed or sharded run computes with the very
        # same network as the rest of the store.
        torch.manual_seed(RANDOM_INIT_SEED)
        model = backbones.create(spec.backbone, modality=spec.modality, weights=spec.weights)
    model.eval().to(device)
    entry = _modality_entry(spec, model)
    num_clips = recipe.num_audio_windows if spec.modality == "audio" else recipe.num_clips
    if not _check_modality(store, spec, entry, force):
        store.add_modality(
            spec.modality, num_clips=num_clips, num_features=model.num_features, info=entry
        )
    status = store.status(spec.modality)
    todo = status == Status.PENDING
    if retry_failed:
        todo |= status == Status.FAILED
    rows = shard_rows(len(segments), store.chunk_rows, shard)
    rows = rows[todo[rows]]
    if len(rows) == 0:
        log.info("%s: nothing to do (%d segments done)", spec.modality, int(np.sum(~todo)))
        return
    log.info("%s: %d segments to extract with %s", spec.modality, len(rows), spec.backbone)

    dataset = _SegmentDataset(
        segments,
        rows,
        videos,
        recipe,
        spec.modality,
        model.input_spec,
        AUDIO_RECIPE_OF_BACKBONE.get(spec.backbone),
    )
    per_batch = max(1, batch_size // max(num_clips, 1))
    loader = DataLoader(
        dataset,
        batch_size=per_batch,
        num_workers=workers,
        collate_fn=_collate,
        prefetch_factor=4 if workers else None,
        persistent_workers=False,
        worker_init_fn=_worker_init if workers else None,
        pin_memory=device.startswith("cuda"),
    )
    writer = _ChunkWriter(store, spec.modality, rows, num_clips, model.num_features)
    bar = tqdm(total=len(rows), desc=f"extract {spec.modality}", unit="seg", disable=not progress)
    for items in loader:
        ok = [item for item in items if item[1] is not None]
        feats = _forward(model, [item[1] for item in ok], device) if ok else []
        by_row = dict(zip((item[0] for item in ok), feats, strict=True))
        for row, _, state, error in items:
            if state == Status.FAILED:
                log.warning("segment %s failed: %s", segments["uid"].iloc[row], error)
            writer.add(row, by_row.get(row), state, error)
        bar.update(len(items))
    writer.close()
    bar.close()


@torch.inference_mode()
def _forward(
    model: backbones.Backbone, inputs: list[torch.Tensor], device: str
) -> list[np.ndarray]:
    """Run all clips of several segments as one batch; split the features back per segment."""
    counts = [x.shape[0] for x in inputs]
    batch = torch.cat(inputs).to(device, non_blocking=True)  # (sum K, ...)
    if device.startswith("cuda"):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            features = model.forward_features(batch)
    else:
        features = model.forward_features(batch)
    features = features.float().cpu().numpy()  # (sum K, D)
    return np.split(features, np.cumsum(counts)[:-1])


class _ChunkWriter:
    """Buffers per-segment results and writes each Zarr chunk once all its rows are in."""

    def __init__(self, store: FeatureCache, modality: str, rows: np.ndarray, K: int, D: int):
        self.store, self.modality, self.K, self.D = store, modality, K, D
        chunk = store.chunk_rows
        self.expected: dict[int, set[int]] = {}
        for row in rows:
            self.expected.setdefault(int(row) // chunk, set()).add(int(row))
        self.buffer: dict[int, dict[int, tuple]] = {}

    def add(self, row: int, features: np.ndarray | None, state: int, error: str) -> None:
        chunk = row // self.store.chunk_rows
        if features is None:
            features = np.zeros((self.K, self.D), dtype=np.float32)
        self.buffer.setdefault(chunk, {})[row] = (features, state, error)
        if len(self.buffer[chunk]) == len(self.expected[chunk]):
            self._flush(chunk)

    def _flush(self, chunk: int) -> None:
        results = self.buffer.pop(chunk)
        for run in _contiguous_runs(sorted(results)):
            feats = np.stack([results[r][0] for r in run])
            self.store.write(
                self.modality,
                np.asarray(run),
                feats,
                np.array([results[r][1] for r in run]),
                [results[r][2] for r in run],
            )

    def close(self) -> None:
        for chunk in list(self.buffer):
            self._flush(chunk)


def _contiguous_runs(rows: list[int]) -> Iterator[list[int]]:
    run: list[int] = []
    for row in rows:
        if run and row != run[-1] + 1:
            yield run
            run = []
        run.append(row)
    if run:
        yield run


__all__ = ["ExtractResult", "ModalitySpec", "MediaError", "extract", "shard_rows"]
