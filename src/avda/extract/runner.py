"""Extraction: manifest rows -> decoded clips -> batched backbone -> Zarr cache.

::

    DataLoader workers (processes)          main process                    writer thread
    ─────────────────────────────           ────────────────────────        ─────────────────
    segment row ─► SegmentFrames            uint8 clips of several           buffers rows per
      ─► recipe plan (frame numbers/times)  segments ─► pinned ─► device     Zarr chunk; writes
      ─► decord|PyAV / JPEG / PyAV audio    ─► model_input (normalise,     features (+ spatial)
      ─► centre crop ─► uint8 (K,T,H,W,C)      layout) ─► channels-last      then status once a
         or spectrogram (K,1,F,T)              ─► bf16 autocast (GPU)        chunk is complete
                                               ─► features (K, D)

Each segment is independent: a bad video fails its own segments (status FAILED with the reason)
and the run goes on. Rows that read the same input (``inputs.shared_inputs``: same video, times
and sampling) are decoded and encoded once, the result written to each. Results are written
chunk by chunk, features first and status last, so a killed run resumes exactly at the first
segment whose status is not DONE. Inputs: video files (decord, else PyAV), EPIC-style RGB frame
folders (``frames``), u/v flow JPEG folders (``flow``) and audio files (``audio``; else the
video's own track); see ``docs/extraction.md``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from avda import cache as cache_lib
from avda._io import file_lock, lock_file_of, progress_bar, sha256_file
from avda.cache import FeatureCache, Status, faults
from avda.cache.lock import store_lock
from avda.cache.store import remove_partial_creations
from avda.data_manifests import schema as manifest_schema
from avda.devices import resolve_device
from avda.errors import CacheError, ConfigError, MediaError
from avda.extract import backbones, sampling
from avda.extract.decode import decord_kept_wrong_frames, decord_misplaced_frames
from avda.extract.inference import (
    BatchRunner,
    Precision,
    features_and_spatial,
    prepare_model,
    resolve_precision,
    reuse_freed_memory,
)
from avda.extract.inputs import (
    DecodingLoader,
    InputPaths,
    Relayed,
    SegmentDataset,
    relay,
    shared_inputs,
    worker_init,
)
from avda.extract.sampling import Recipe
from avda.extract.transforms import check_clip_frames, model_input
from avda.extract.writer import BackgroundWriter, ChunkWriter
from avda.paths import STORE_OUTPUT, check_output_folder, refuse_foreign_folder, remove_empty_folder

log = logging.getLogger(__name__)

RANDOM_INIT_SEED = 0
_MODEL_LOCK = threading.Lock()


@dataclasses.dataclass(frozen=True)
class ModalitySpec:
    """Which backbone (and weights) encodes one modality."""

    modality: str
    backbone: str
    weights: Path | None = None

    @classmethod
    def default(cls, modality: str) -> ModalitySpec:
        """``modality`` with :func:`avda.extract`'s default backbone, random weights."""
        return cls(modality, DEFAULT_AUDIO_BACKBONE if modality == "audio" else DEFAULT_BACKBONE)


# avda.extract's (and the CLI's) defaults
DEFAULT_BACKBONE = "i3d"
DEFAULT_AUDIO_BACKBONE = "audio_resnet18"


INPUT_KEYWORDS = ("videos", "frames", "flow", "audio", "flow_stride", "jpeg_dct")


def _path(value: str | Path | None) -> Path | None:
    return Path(value) if value is not None else None


@dataclasses.dataclass(frozen=True)
class ExtractOptions:
    """How to extract, apart from what (the manifest) and where to (``out``) and which part
    (``shard``): built once from the CLI's options or :func:`avda.extract`'s keywords and
    handed unchanged to :func:`extract`, to :func:`avda.extract.distributed.extract_distributed`
    and from there to each Dask shard task.

    ``inputs``: where videos, frame and flow folders and audio files are
    (:class:`~avda.extract.inputs.InputPaths`); ``precision`` ``auto``, ``float32`` or
    ``bfloat16``. :meth:`of` takes the flat keywords (``videos=``, ``frames=``, ...) instead.
    """

    recipe: Recipe  # or its name (``avda list recipes``)
    modalities: tuple[ModalitySpec, ...]  # or names: ``"rgb"`` = ``ModalitySpec.default("rgb")``
    inputs: InputPaths = InputPaths()
    batch_size: int = 16
    workers: int = 2
    device: str | None = None
    precision: Precision = "auto"
    chunk_rows: int = cache_lib.schema.DEFAULT_CHUNK_ROWS
    retry_failed: bool = False
    force: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.recipe, str):
            object.__setattr__(self, "recipe", sampling.get(self.recipe))
        names = self.modalities.split(",") if isinstance(self.modalities, str) else self.modalities
        specs = [ModalitySpec.default(m.strip()) if isinstance(m, str) else m for m in names]
        object.__setattr__(self, "modalities", tuple(specs))

    @classmethod
    def of(cls, *, recipe: Recipe | str, modalities, **keywords: Any) -> ExtractOptions:
        """From flat keywords, as :func:`extract` takes them (``videos=``, ``batch_size=``...)."""
        return cls(recipe=recipe, modalities=modalities).replace(**keywords)

    def replace(self, **changes: Any) -> ExtractOptions:
        """A copy with ``changes`` (input keywords such as ``videos=`` go into ``inputs``)."""
        inputs = {k: changes.pop(k) for k in INPUT_KEYWORDS if k in changes}
        if inputs:
            flow_stride = inputs.pop("flow_stride", self.inputs.flow_stride)
            jpeg_dct = inputs.pop("jpeg_dct", self.inputs.jpeg_dct)
            paths = {k: _path(v) for k, v in inputs.items()}
            changes["inputs"] = dataclasses.replace(
                self.inputs, flow_stride=flow_stride, jpeg_dct=jpeg_dct, **paths
            )
        known = {field.name for field in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise TypeError(f"unexpected extraction option(s): {', '.join(unknown)}")
        return dataclasses.replace(self, **changes)

    @property
    def modality_names(self) -> list[str]:
        return [spec.modality for spec in self.modalities]

    def check(self) -> None:
        """One error for a bad value or a missing input folder, before any work."""
        self.inputs.check(self.modality_names)
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {self.batch_size}")


def resolve_options(options: ExtractOptions | None, keywords: dict[str, Any]) -> ExtractOptions:
    """``options`` with ``keywords`` applied, or options built from ``keywords`` alone."""
    if options is None:
        return ExtractOptions.of(**keywords)
    return options.replace(**keywords) if keywords else options


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


# --------------------------------------------------------------------------- store handling
def recipe_differences(stored: dict[str, Any], recipe: Recipe) -> list[str]:
    """What differs between a store's recipe provenance and ``recipe`` (defaults filled in)."""
    try:
        stored = Recipe.from_dict(stored).to_dict()
    except (ConfigError, TypeError):
        pass
    wanted = recipe.to_dict()
    return [
        f"recipe.{key}: store has {stored.get(key)!r}, this run asks for {wanted.get(key)!r}"
        for key in sorted(set(stored) | set(wanted))
        if stored.get(key) != wanted.get(key)
    ]


def _named_recipe(stored: dict[str, Any]) -> str | None:
    """The name of the built-in recipe (``avda list recipes``) a store's recipe provenance is,
    unchanged; None for another (a recipe built in Python, or one since changed)."""
    name = stored.get("name")
    if name not in sampling.names() or recipe_differences(stored, sampling.get(name)):
        return None
    return name


def _modality_entry(
    spec: ModalitySpec, model: backbones.Backbone, inputs: InputPaths
) -> dict[str, Any]:
    from avda.cache.store import finetuning_record

    sha256 = sha256_file(spec.weights) if spec.weights is not None else None
    entry = {
        "backbone": spec.backbone,
        # absolute: a relative path means nothing once read from elsewhere (a name given as
        # --weights resolves to the absolute path of its fetched file)
        "weights": os.path.abspath(spec.weights) if spec.weights else None,
        "weights_sha256": sha256,
        "random_init_seed": None if spec.weights else RANDOM_INIT_SEED,
        "input_spec": model.input_spec.to_dict(),
        "input": inputs.provenance(spec.modality),
    }
    # weights written by `avda finetune`: on which domains' labels (docs/cache_schema.md)
    record = finetuning_record(spec.weights, sha256) if spec.weights and sha256 else None
    if record is not None:
        entry["finetuned"] = record
    return entry


def _differences(expected: dict[str, Any], found: dict[str, Any], keys) -> list[str]:
    return [
        f"{k}: store has {found.get(k)!r}, this run asks for {expected.get(k)!r}"
        for k in keys
        if found.get(k) != expected.get(k)
    ]


def manifest_difference(stored: pd.DataFrame, wanted: pd.DataFrame, shown: int = 3) -> str:
    """What changed between the store's segments and this manifest, by uid: rows added,
    removed, and rows whose values differ (with the first such column), a few of each named."""
    old = stored.assign(uid=stored["uid"].astype(str)).set_index("uid")
    new = wanted.assign(uid=wanted["uid"].astype(str)).set_index("uid")
    added = list(new.index.difference(old.index, sort=False))
    removed = list(old.index.difference(new.index, sort=False))
    common = new.index.intersection(old.index, sort=False)
    columns = new.columns.intersection(old.columns, sort=False)

    def text(frame: pd.DataFrame) -> pd.DataFrame:  # 1 and 1.0 alike, as CSV and the store
        out = frame.loc[common, columns].astype(object)
        out = out.where(out.notna(), "")  # NaN, None and pd.NA alike
        numeric = out.apply(pd.to_numeric, errors="coerce").astype(float)
        return numeric.astype(object).where(numeric.notna(), out).astype(str)

    before, after = text(old), text(new)
    differs = before.ne(after).to_numpy()
    rows = np.flatnonzero(differs.any(axis=1))
    changed = []
    for row in rows[: shown + 1]:
        column = columns[int(np.argmax(differs[row]))]
        changed.append(f"{common[row]} {column} {before.iat[row, columns.get_loc(column)]!r} -> "
                       f"{after.iat[row, columns.get_loc(column)]!r}")  # fmt: skip

    def few(items: list[str], count: int | None = None) -> str:
        count = len(items) if count is None else count
        extra = f" and {count - shown} more" if count > shown else ""
        return ", ".join(items[:shown]) + extra

    parts = [f"{len(added)} rows added ({few(added)})"] if added else []
    parts += [f"{len(removed)} removed ({few(removed)})"] if removed else []
    if changed:
        parts.append(f"{len(rows)} changed ({few(changed, len(rows))})")
    if list(new.index) != list(old.index) and not added and not removed:
        parts.append("the rows are in another order")
    return "the manifest's rows differ: " + ("; ".join(parts) or "in columns the store lacks")


def refuse_foreign_store(out: Path) -> bool:
    """Refuse ``out`` when it is a folder of other files (a run, ``-o .``), not an avda cache;
    whether it is a folder to create the store in (an empty one)."""
    if out.is_dir() and not (out / "zarr.json").exists():
        refuse_foreign_folder(out, "-o", "an avda cache", is_ours=False, name="features.zarr")
        return True
    return False


def open_or_create_store(
    out: Path,
    segments: pd.DataFrame,
    manifest_sha: str,
    recipe: Recipe,
    *,
    chunk_rows: int,
    force: bool,
    classes: dict[str, list[str]] | None = None,
) -> FeatureCache:
    """Resume a compatible store, refuse an incompatible one (unless ``force``), or create
    (recording the manifest build's class tables ``classes``).

    An existing folder that is not an avda cache is refused (nothing is written into it)
    unless it is empty: then the store is created there."""
    if refuse_foreign_store(out):
        remove_empty_folder(out)  # empty: the store is created in its place
    remove_partial_creations(out)  # a shard holds the creation lock (store_lock cleans, else)
    if out.exists():
        store = cache_lib.open_cache(out, mode="a")
        prov = store.provenance
        diffs = _differences({"manifest_sha256": manifest_sha}, prov, ("manifest_sha256",))
        if diffs:
            diffs.append(manifest_difference(store.segments, segments))
        built_with = _named_recipe(prov.get("recipe") or {})
        only_recipe = not diffs and built_with not in (None, recipe.name)
        diffs += recipe_differences(prov.get("recipe") or {}, recipe)
        if not diffs:
            return store
        if not force:
            # a rerun that left out the store's built-in recipe (the default is mmsada)
            keep = f"--recipe '{built_with}' to go on with it, " if only_recipe else ""
            raise CacheError(
                f"store {out} was built differently: "
                + "; ".join(diffs)
                + f". Use another -o, {keep}or --force to replace it with a new store"
            )
        backup = out.with_name(f"{out.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
        log.warning("--force: moving the old store %s to %s", out, backup)
        shutil.move(str(out), str(backup))
    return cache_lib.create(
        out,
        segments,
        manifest_sha256=manifest_sha,
        recipe=recipe.to_dict(),
        chunk_rows=chunk_rows,
        classes=classes,
    )


def _check_modality(
    store: FeatureCache, spec: ModalitySpec, entry: dict[str, Any], force: bool
) -> bool:
    """True when the modality exists and matches; raises when it exists and differs."""
    if spec.modality not in store.modalities:
        return False
    found = store.modality_info(spec.modality)
    found.setdefault("input", {"source": "video"})  # stores before the frames/flow inputs
    diffs = _differences(entry, found, ("backbone", "weights_sha256", "random_init_seed", "input"))
    pooling = _pooling_difference(found.get("backbone"), entry["backbone"])
    if pooling:
        diffs[0] += pooling
    if diffs and not force:
        raise CacheError(
            f"store {store.path} holds {spec.modality} features made differently: "
            + "; ".join(diffs)
            + ". Use another -o, or --force to recompute this modality"
        )
    return not diffs


def _pooling_difference(stored: str | None, wanted: str) -> str:
    """`` (average- against max-pooled features)`` where the two backbones differ in how they
    pool the same maps (``slowfast-r101-mmaction`` and ``-max``); "" otherwise."""
    if stored == wanted or stored not in backbones.names():
        return ""
    poolings = [getattr(backbones.model_class(n), "pooling", None) for n in (stored, wanted)]
    if None in poolings or poolings[0] == poolings[1]:
        return ""
    words = {"avg": "average", "max": "max"}
    return f" ({words[poolings[0]]}- against {words[poolings[1]]}-pooled layer4 features)"


# How frame numbers become times in a video (``SegmentFrames.time_of``), recorded with every
# modality that reads them: until 2026-12-06 avda read some segments a frame late (no record).
FRAME_TIMES = "inside-2026-12-06"


def _reads_frame_numbers_from_video(spec: ModalitySpec, recipe: Recipe, inputs: InputPaths) -> bool:
    return (
        spec.modality != "audio"
        and recipe.placement != "centres"
        and inputs.source_of(spec.modality) == "video"
    )


def _left_to_compute(store: FeatureCache, modality: str, retry_failed: bool) -> bool:
    """Whether extracting ``modality`` again would compute any row: a pending one, or with
    ``--retry-failed`` a failed one or a done one holding NaN/inf (which it marks failed and
    recomputes); failed and missing-input rows are otherwise left as they are."""
    status = store.status(modality)
    todo = status == Status.PENDING
    if retry_failed:
        todo |= status == Status.FAILED
    if todo.any() or not retry_failed:
        return bool(todo.any())
    if len(store.nonfinite_rows(modality)):
        return True
    return store.has_spatial(modality) and bool(len(store.nonfinite_rows(modality, spatial=True)))


def _check_frame_times(
    store: FeatureCache, modality: str, force: bool, retry_failed: bool = False
) -> bool:
    """False (recompute it) when ``modality``'s features were read from videos with the frame
    timing before 2026-12-06 and ``force``; without it, refuse to add to them (a resumed store
    would mix the two timings) and warn where nothing is left to compute; record the timing
    where nothing is done yet."""
    if store.modality_info(modality).get("frame_times") == FRAME_TIMES:
        return True
    done = store.status(modality) == Status.DONE
    if not done.any():
        store.update_modality_info(modality, frame_times=FRAME_TIMES)
        return True
    return _read_another_way(
        store,
        modality,
        f"store {store.path} holds {modality} features read from videos by an avda that read "
        "a segment starting late in its first frame one frame late (docs/extraction.md)",
        mix="resuming would mix the two",
        now="the corrected frame timing",
        force=force,
        retry_failed=retry_failed,
    )


def _read_another_way(
    store: FeatureCache,
    modality: str,
    what: str,
    *,
    mix: str,
    now: str,
    force: bool,
    retry_failed: bool,
) -> bool:
    """The rule for a store whose ``modality`` was read another way than this avda reads it
    (``what`` says how): warn where this run computes no row in it (the store still trains),
    refuse without ``force`` where it would (``mix``: the rows would mix the two), and return
    False (recompute the modality, as read ``now``) with it."""
    if not force and not _left_to_compute(store, modality, retry_failed):
        log.warning("%s; --force recomputes them", what)
        return True
    if not force:
        raise CacheError(
            f"{what}; {mix}: --force to recompute {modality}, or extract into another -o "
            "(the store as it is still trains)"
        )
    log.warning("%s: recomputing every segment with %s", modality, now)
    return False


def check_precision(
    store: FeatureCache,
    modality: str,
    precision: str,
    *,
    device: str,
    force: bool,
    sharded: bool = False,
) -> None:
    """Record the precision ``modality`` is extracted in; refuse to mix precisions in a store.

    A store resumed on another machine (a GPU, a CPU without native bf16) with ``auto`` would
    otherwise hold features of two precisions (~0.3% apart). ``force`` recomputes the modality.
    A shard refuses any other recorded precision, done rows or not: the shard that recorded it
    may be running and not have finished a chunk yet (a second shard overwrote the record, and
    the store held both precisions under one name).
    """
    info = store.modality_info(modality)
    found = info.get("precision")
    if found == precision:
        return
    if sharded and found is not None:
        raise CacheError(
            f"store {store.path} records {modality} in {found} (another shard may be computing "
            f"it); this shard would compute {precision} on {device}. Pass --precision {found} "
            "to every shard"
        )
    done = found is not None and bool(np.any(store.status(modality) == Status.DONE))
    if done and not force:
        raise CacheError(
            f"store {store.path} holds {modality} features extracted in {found}; this run would "
            f"compute {precision} on {device}. Pass --precision {found} to go on in {found}, "
            f"or --force to recompute {modality} in {precision}"
        )
    if done:  # force: start the modality again, never mix
        log.warning("%s: recomputing every segment in %s (was %s)", modality, precision, found)
        store.add_modality(
            modality,
            num_clips=int(info.pop("num_clips")),
            num_features=int(info.pop("num_features")),
            info=info,
            spatial_shape=info.pop("spatial_shape", None),
        )
    store.update_modality_info(modality, precision=precision)


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


# --------------------------------------------------------------------------- models
def _build_model(spec: ModalitySpec, recipe: Recipe) -> backbones.Backbone:
    # Random init (no weights) is seeded, so a resumed or sharded run computes with the very
    # same network as the rest of the store. The global RNG is shared by threads (Dask workers
    # with several threads, shards run as threads): one model is built at a time.
    with _MODEL_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        model = backbones.create(spec.backbone, modality=spec.modality, weights=spec.weights)
    model.eval()
    check_recipe_fits(model, spec.modality, spec.backbone, recipe)
    return model


def check_recipe_fits(
    model: backbones.Backbone, modality: str, backbone: str, recipe: Recipe, *, maps: bool = True
) -> None:
    """Refuse, before any decoding, a recipe whose clips the backbone cannot take (extraction
    and fine-tuning; ``maps``: the spatial maps a recipe asks for are stored), in one line
    naming the --recipe values that fit (:func:`_recipes_that_fit`)."""
    why = _recipe_problem(model, modality, backbone, recipe)
    if why is not None:
        fits = _recipes_that_fit(model, modality, backbone)
        named = " or ".join([", ".join(fits[:-1]), fits[-1]] if len(fits) > 2 else fits)
        fix = (
            f"set --recipe {named}"
            if fits
            else "set --recipe to one made for it (avda list recipes)"
        )
        other = ", or another audio backbone (audio_resnet18)" if modality == "audio" else ""
        raise ConfigError(f"{why}: {fix}{other}")
    if maps and recipe.spatial and modality != "audio" and not model.spatial_maps:
        raise ConfigError(
            f"recipe {recipe.name!r} stores spatial maps, which avda extracts for "
            f"{', '.join(backbones.with_spatial_maps())} only (not {backbone})"
        )


def _recipe_problem(
    model: backbones.Backbone, modality: str, backbone: str, recipe: Recipe
) -> str | None:
    """Why ``recipe``'s clips do not fit ``backbone``'s ``modality`` input (None: they do)."""
    audio_spec = model.input_spec
    if modality == "audio":
        if audio_spec.size and audio_spec.clip_seconds:
            if abs(recipe.audio_seconds - audio_spec.clip_seconds) > 0.01:
                return (
                    f"{backbone} audio takes {audio_spec.clip_seconds} s windows "
                    f"({audio_spec.size[0]} x {audio_spec.size[1]} spectrograms); recipe "
                    f"{recipe.name!r} cuts {recipe.audio_seconds} s"
                )
        return None
    frames = recipe.clip_frames[modality]
    try:
        check_clip_frames(model.input_spec, frames, recipe=recipe.name, backbone=backbone)
    except ConfigError as exc:
        return str(exc)
    if recipe.pixel_normalisation == "mmsada" and not model.mmsada_pixels:
        return (
            f"recipe {recipe.name!r} normalises pixels the MM-SADA way (x / 128 - 1), which "
            f"is I3D's; {backbone} needs its own input_spec"
        )
    return None


def _recipes_that_fit(model: backbones.Backbone, modality: str, backbone: str) -> list[str]:
    """The registered recipes made for ``backbone``'s ``modality`` input: those whose clips it
    takes and (a visual modality) that normalise pixels by its own ``input_spec``; not the
    v0.1 time-based ones (``mmsada``, ``demo``: placement ``centres``), which fit many
    backbones and are made for none."""
    fits = []
    for name in sampling.names():
        recipe = sampling.get(name)
        if recipe.placement == "centres":
            continue
        if modality != "audio" and recipe.pixel_normalisation != "input_spec":
            continue
        if _recipe_problem(model, modality, backbone, recipe) is None:
            fits.append(name)
    return fits


# How video frames get their times, recorded with every modality read from video files:
# until 2026-12-07 decord's times were used unchecked, and decord puts every frame of a video
# stream without a start time (Matroska written by PyAV) at about 9.2e15 s, so every clip of
# such a video was read from its first frame (decode.timestamps_problem), and
# a short Matroska stream with AAC audio every frame 1024 audio samples late (its first frame
# checked against PyAV's: decode.first_frame_times); absent: before then. "checked-2026-12-07"
# (also absent) kept decord's frames of a video whose decord timestamps are invalid (B-frames
# of MPEG-4 in AVI), which decord finds by those timestamps: wrong ones at times; such a video
# is PyAV's whole now (decode.DecordVideoDecoder). "checked-2026-12-07-pyav-frames" (also
# absent) kept decord's frames of MPEG-4 Part 2 / MPEG-1/2 with B-frames in other containers
# and of open-GOP H.264 / HEVC, whose timestamps are valid and frames wrong at many random
# positions: PyAV's whole now too (decode.decord_wrong_frames).
VIDEO_TIMESTAMPS = "checked-2026-12-07-pyav-b-frames"
# The key before it: a store recording it kept decord's frames only of the videos
# decode.decord_kept_wrong_frames finds (its other fixes are the same now).
_PYAV_FRAMES = "checked-2026-12-07-pyav-frames"


def _reads_video_files(spec: ModalitySpec, inputs: InputPaths) -> bool:
    return spec.modality != "audio" and inputs.source_of(spec.modality) == "video"


def _check_video_timestamps(
    store: FeatureCache,
    modality: str,
    videos: str | Path | None,
    force: bool,
    segments: pd.DataFrame | None,
    retry_failed: bool = False,
) -> bool:
    """False (recompute it) when ``modality`` was read from videos before 2026-12-07, some of
    whose done segments come from a video decord misplaced (a stream without a start time,
    one whose first frame decord put elsewhere than PyAV, or one whose decord timestamps are
    invalid, or one whose frames decord returns wrong: decode.decord_misplaced_frames; for a
    store recording ``checked-2026-12-07-pyav-frames``, only the last where that avda read it
    with decord: decode.decord_kept_wrong_frames) and
    ``force``; without it, refuse to add to them (a resumed store would mix wrong and right
    features) and warn where they are all done. Where no done segment comes from such a video
    (the header and a few packets read per video, once), or nothing is done, record the
    convention and resume.
    ``segments``: the store's rows as the manifest gives them (with ``video_path``, which the
    store does not keep); else the store's own."""
    recorded = store.modality_info(modality).get("video_timestamps")
    if recorded == VIDEO_TIMESTAMPS:
        return True
    misplaced = decord_kept_wrong_frames if recorded == _PYAV_FRAMES else decord_misplaced_frames
    done = store.status(modality) == Status.DONE
    affected: list[str] = []
    if done.any() and videos is not None:
        table = segments if segments is not None else store.segments
        rows = table.loc[done] if len(table) == len(done) else table.iloc[:0]
        seen: set[Path] = set()
        for row in rows.itertuples(index=False):
            try:
                path = manifest_schema.video_path(row, videos)
            except ConfigError:
                continue
            if path not in seen:
                seen.add(path)
                if path.exists() and misplaced(path):
                    affected.append(path.name)
    if not affected:
        store.update_modality_info(modality, video_timestamps=VIDEO_TIMESTAMPS)
        return True
    named = ", ".join(affected[:3]) + (
        f" and {len(affected) - 3} more" if len(affected) > 3 else ""
    )
    what = (
        f"store {store.path} holds {modality} features of {len(affected)} video(s) whose "
        f"frames an avda before 2026-12-07 may have read with decord at wrong times or places "
        f"({named}: no stream start time, a first frame off PyAV's, invalid decord "
        "timestamps, or a stream whose frames decord returns wrong: MPEG-4 / MPEG-1/2 with "
        "B-frames, open-GOP H.264 / HEVC; docs/extraction.md)"
    )
    return _read_another_way(
        store,
        modality,
        what,
        mix="resuming would mix them with correctly read ones",
        now="checked frame times",
        force=force,
        retry_failed=retry_failed,
    )


def _wants_spatial(recipe: Recipe, spec: ModalitySpec) -> bool:
    return recipe.spatial and spec.modality != "audio"


def _example_input(
    model: backbones.Backbone, recipe: Recipe, modality: str
) -> torch.Tensor | list[torch.Tensor]:
    frames = recipe.clip_frames[modality]
    channels = 2 if modality == "flow" else 3
    clip = torch.zeros(1, frames, recipe.crop_size, recipe.crop_size, channels, dtype=torch.uint8)
    return model_input(clip, model.input_spec, normalisation=recipe.pixel_normalisation)


@torch.inference_mode()
def _spatial_shape(model: backbones.Backbone, recipe: Recipe, modality: str) -> tuple[int, ...]:
    _, maps = features_and_spatial(model, _example_input(model, recipe, modality), True)
    return tuple(int(s) for s in maps.shape[1:])


def prepare_modality(
    store: FeatureCache,
    spec: ModalitySpec,
    recipe: Recipe,
    inputs: InputPaths,
    *,
    force: bool,
    model: backbones.Backbone | None = None,
    segments: pd.DataFrame | None = None,
    retry_failed: bool = False,
) -> backbones.Backbone:
    """Build the model (unless given) and make sure ``store`` has matching arrays for
    ``spec.modality``. ``segments``: the normalised manifest the store was built from (its
    video paths: a store made before 2026-12-07 is checked for misplaced video frames);
    ``retry_failed``: whether this run recomputes failed rows (a store made with an older frame
    timing is refused only when the run would add rows to it)."""
    model = model if model is not None else _build_model(spec, recipe)
    entry = _modality_entry(spec, model, inputs)
    if _reads_frame_numbers_from_video(spec, recipe, inputs):
        entry["frame_times"] = FRAME_TIMES
    if _reads_video_files(spec, inputs):
        entry["video_timestamps"] = VIDEO_TIMESTAMPS
    num_clips = recipe.num_audio_windows if spec.modality == "audio" else recipe.num_clips
    exists = _check_modality(store, spec, entry, force)
    if exists and "frame_times" in entry:
        exists = _check_frame_times(store, spec.modality, force, retry_failed)
    if exists and "video_timestamps" in entry:
        exists = _check_video_timestamps(
            store, spec.modality, inputs.videos, force, segments, retry_failed
        )
    if not exists:
        spatial_shape = None
        if _wants_spatial(recipe, spec):
            spatial_shape = _spatial_shape(model, recipe, spec.modality)
        store.add_modality(
            spec.modality,
            num_clips=num_clips,
            num_features=model.num_features,
            info=entry,
            spatial_shape=spatial_shape,
        )
    return model


# --------------------------------------------------------------------------- main entry
def extract(
    manifest: pd.DataFrame,
    options: ExtractOptions | None = None,
    *,
    out: str | Path,
    shard: tuple[int, int] | None = None,
    prepare_only: bool = False,
    **keywords: Any,
) -> ExtractResult:
    """Extract ``options.modalities`` for every manifest row into the store ``out`` (resuming).

    ``options``: an :class:`ExtractOptions`; ``keywords`` (``recipe=``, ``modalities=``,
    ``videos=``, ``batch_size=``...: its fields, inputs flat) build one, or change the given one.
    ``shard=(i, n)``: only the rows of chunks ``c`` with ``c % n == i``; shard processes started
    together create the store once (under the lock file ``<out>.create.lock`` next to it,
    :func:`avda._io.file_lock`; on file systems without working locks run
    ``prepare_only=True`` once first). An unsharded run holds
    the store's lock (:mod:`avda.cache.lock`) exclusively, shards hold it shared: a second
    unsharded run, an import or ``avda cluster`` on the same store is refused in one line.
    ``prepare_only``: create the store and every modality's arrays, extract nothing.

    Inputs: ``videos`` (video files; RGB and the audio track), ``frames`` (EPIC-style RGB JPEG
    folders), ``flow`` (u/v JPEG folders), ``audio`` (audio files per video). ``precision``
    "auto": bfloat16 where the device computes in it natively (Ampere+ GPUs, CPUs with
    AVX512-BF16 or AMX), float32 elsewhere (:func:`avda.extract.inference.resolve_precision`).
    """
    options = resolve_options(options, keywords)
    began = time.perf_counter()
    out = check_output_folder(out, "-o", *STORE_OUTPUT)  # as the CLI
    refuse_foreign_store(out)  # before any work, and before its lock file is made beside it
    options.check()
    inputs, recipe, modalities, force = (
        options.inputs,
        options.recipe,
        options.modalities,
        options.force,
    )
    if force and shard is not None:
        raise ConfigError(
            "--force with --shard would let every shard replace the store: replace it once "
            "(--force --prepare-only, without --shard), then run the shards"
        )
    segments = manifest_schema.normalise(manifest)
    inputs.check_rates(segments, [spec.modality for spec in modalities])
    device = resolve_device(options.device)
    resolved = resolve_precision(options.precision, device)
    # Models first: a recipe the backbone cannot take is refused before any store exists.
    built = [_build_model(spec, recipe) for spec in modalities]
    # One writer at a time (avda.cache.lock): an unsharded run holds the store's lock
    # exclusively; the shards of one extraction share it (they write disjoint chunks) and set
    # the store up once, one after another, under <out>.create.lock.
    creation = lock_file_of(out, "{name}.create.lock")
    with store_lock(out, what="avda extract", shared=shard is not None):
        with file_lock(creation, bounded=False) if shard is not None else contextlib.nullcontext():
            store = open_or_create_store(
                out,
                segments,
                manifest_schema.fingerprint(manifest),
                recipe,
                chunk_rows=options.chunk_rows,
                force=force,
                classes=manifest.attrs.get("classes"),
            )
            models = []
            for spec, model in zip(modalities, built, strict=True):
                models.append(
                    prepare_modality(
                        store,
                        spec,
                        recipe,
                        inputs,
                        force=force,
                        model=model,
                        segments=segments,
                        retry_failed=options.retry_failed,
                    )  # fmt: skip
                )
                if not prepare_only:
                    check_precision(store, spec.modality, resolved, device=device, force=force,
                                    sharded=shard is not None)  # fmt: skip
        faults.checkpoint("extract-opened")
        if prepare_only:
            return summarise(store, [m.modality for m in modalities], began, shard=shard)
        for spec, model in zip(modalities, models, strict=True):
            _extract_modality(
                store,
                segments,
                spec,
                model,
                inputs=inputs,
                recipe=recipe,
                batch_size=options.batch_size,
                workers=options.workers,
                device=device,
                retry_failed=options.retry_failed,
                shard=shard,
                progress=options.progress,
                precision=resolved,
            )
        record_finished(out, [m.modality for m in modalities], sharded=shard is not None)
        return summarise(store, [m.modality for m in modalities], began, shard=shard)


def record_finished(out: Path, modalities: list[str], *, sharded: bool) -> None:
    """Record each modality with no row left pending as finished (its ``finished_rows``), so
    that ``avda cache verify`` reports finished rows whose files a copy lost. A shard records it
    under the creation lock (``<out>.create.lock``), from the store as it is on disk: of shards
    ending together, the last to take the lock sees every row written."""
    creation = lock_file_of(out, "{name}.create.lock")
    with file_lock(creation, bounded=False) if sharded else contextlib.nullcontext():
        store = cache_lib.open_cache(out, mode="a")
        for modality in modalities:
            store.record_finished(modality)


def summarise(
    store: FeatureCache,
    modalities: list[str],
    began: float,
    *,
    shard: tuple[int, int] | None = None,
) -> ExtractResult:
    """Counts of done / failed / missing (segment, modality) pairs of ``shard`` (all if None)."""
    rows = shard_rows(store.num_segments, store.chunk_rows, shard)
    statuses = [store.status(m)[rows] for m in modalities]
    allstatus = np.concatenate(statuses) if statuses else np.zeros(0, dtype=np.int8)
    failures = store.failures()
    if shard is not None and len(failures):
        failures = failures[failures["uid"].isin(set(store.segments["uid"].iloc[rows]))]
    return ExtractResult(
        store=store.path,
        done=int(np.sum(allstatus == Status.DONE)),
        failed=int(np.sum(allstatus == Status.FAILED)),
        missing=int(np.sum(allstatus == Status.MISSING)),
        seconds=time.perf_counter() - began,
        failures=failures.reset_index(drop=True),
    )


def _extract_modality(
    store: FeatureCache,
    segments: pd.DataFrame,
    spec: ModalitySpec,
    model: backbones.Backbone,
    *,
    inputs: InputPaths,
    recipe: Recipe,
    batch_size: int,
    workers: int,
    device: str,
    retry_failed: bool,
    shard: tuple[int, int] | None,
    progress: bool,
    precision: Precision,
) -> None:
    rows = shard_rows(len(segments), store.chunk_rows, shard)
    if retry_failed:  # done rows with NaN/inf (stored before avda refused them) are redone too
        store.mark_nonfinite(spec.modality, rows)
    status = store.status(spec.modality)
    todo = status == Status.PENDING
    if retry_failed:
        todo |= status == Status.FAILED
    mine = status[rows]  # this shard's rows
    rows = rows[todo[rows]]
    if len(rows) == 0:
        counts = {
            name: int(np.sum(mine == code))
            for name, code in (("done", Status.DONE), ("missing input", Status.MISSING))
        }
        counts["failed (--retry-failed retries them)"] = int(np.sum(mine == Status.FAILED))
        log.info(
            "%s: nothing to do (%s)",
            spec.modality,
            ", ".join(f"{n} {name}" for name, n in counts.items() if n) or "no segments",
        )
        return
    inputs.check_videos(segments, spec.modality)  # rows to read: from videos that exist?
    shared = shared_inputs(segments, rows, recipe)  # first row -> the rows reading its input
    log.info(
        "%s: %d segments to extract with %s on %s in %s%s",
        *(spec.modality, len(rows), spec.backbone, device, precision),
        f" ({len(shared)} distinct inputs)" if len(shared) < len(rows) else "",
    )
    cuda = device.startswith("cuda")
    prepare_model(model, device)  # BN folded, channels-last
    reuse_freed_memory()  # activations reuse freed pages instead of page-faulting in anew

    dataset = SegmentDataset(
        segments,
        np.fromiter(shared, dtype=np.int64, count=len(shared)),
        inputs,
        recipe,
        spec.modality,
        model.input_spec,
        model.spectrogram_recipe,
    )
    workers = _usable_workers(workers)
    loader = DecodingLoader(
        Relayed(dataset),  # the workers' warnings come back with the items, each logged once
        batch_size=None,  # one segment per item; clips of several segments are batched below
        shuffle=False,
        num_workers=workers,
        prefetch_factor=4 if workers else None,
        persistent_workers=False,
        worker_init_fn=worker_init if workers else None,
        pin_memory=cuda,
        # Its own generator: iterating a DataLoader draws a seed, which from the global RNG
        # would race with a model being built (seeded) in another thread.
        generator=torch.Generator().manual_seed(RANDOM_INIT_SEED),
    )
    info = store.modality_info(spec.modality)
    spatial_shape = info.get("spatial_shape")
    writer = ChunkWriter(
        store,
        spec.modality,
        rows,
        int(info["num_clips"]),
        model.num_features,
        spatial_shape=tuple(spatial_shape) if spatial_shape else None,
    )
    background = BackgroundWriter(writer)
    runner = BatchRunner(
        model,
        device=device,
        batch_size=batch_size,
        normalisation=recipe.pixel_normalisation,
        visual=spec.modality != "audio",
        spatial=spatial_shape is not None,
        precision=precision,
    )
    bar = progress_bar(
        total=len(rows), desc=f"extract {spec.modality}", unit="seg", disable=not progress
    )
    notes: dict[int, str] = {}  # a done segment's note (e.g. audio lost to damaged packets)

    uids = segments["uid"].astype(str).to_numpy()

    def finished(row: int, features, spatial, state: int, error: str) -> None:
        error = notes.pop(row, error)
        for each in shared[row]:  # every row that reads this input gets its result
            own = _of_segment(error, uids[row], uids[each])
            background.add(int(each), features, spatial, state, own)
        bar.update(len(shared[row]))

    try:
        logged: set = set()
        for (row, x, state, error), records in loader:
            relay(records, logged)
            if x is None:
                if state == Status.FAILED:
                    same = len(shared[row]) - 1
                    also = f" (and {same} rows with the same input)" if same else ""
                    log.warning("segment %s%s failed: %s", segments["uid"].iloc[row], also, error)
                finished(row, None, None, state, error)
                continue
            if error:
                notes[row] = error
            for done in runner.add(row, x):
                finished(*done)
        for done in runner.flush():
            finished(*done)
    finally:
        bar.close()
        background.close()


def _of_segment(error: str, read: str, uid: str) -> str:
    """The error (or note) of the segment ``read`` as that of segment ``uid``, which reads the
    same input: the messages name their segment ``segment 'UID'`` (a copy's fix, "fix its times
    in the manifest", is its own row's)."""
    return error.replace(f"segment {read!r}", f"segment {uid!r}") if uid != read else error


def _usable_workers(workers: int) -> int:
    """Daemonic processes (e.g. default Dask workers) cannot start DataLoader workers."""
    if workers and multiprocessing.current_process().daemon:
        log.info("running inside a daemonic process: decoding in-process (workers=0)")
        return 0
    return workers


__all__ = [
    "ExtractOptions",
    "ExtractResult",
    "InputPaths",
    "MediaError",
    "ModalitySpec",
    "extract",
    "features_and_spatial",
    "prepare_modality",
    "check_precision",
    "recipe_differences",
    "record_finished",
    "shard_rows",
]
