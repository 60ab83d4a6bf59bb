"""Feature files in and out of avda caches (``avda cache import`` / ``avda cache export``).

Import (each appends to the store ``out``, creating it when absent):

- **EPIC-100 UDA feature pickles** (the TA3N baseline's ``source_train.pkl`` ...):
  ``{'features': {'RGB', 'Flow', 'Audio'}: [N, 25, 1024], 'narration_ids': [...]}``, one file
  per split, joined by narration id with a UDA annotation file (CSV or pickle) for the segment
  table. Read with the restricted unpickler (:mod:`avda.data_manifests.safe_pickle`): a file
  that names any global outside numpy / pandas is refused before anything runs.
- **HDF5**: files written by :func:`export_h5` (round trip, segments included), or any file
  with a string id dataset (``uid``, ``narration_ids`` ...) and one ``(N, K, D)`` or ``(N, D)``
  dataset per modality (at the root or under ``features/``), joined with an annotation table.
- **per-video .npy**: ``<folder>/<video_id>.npy`` holding ``(T, D)`` features at
  ``feature_rate`` rows per second (row i at ``(i + 0.5) / feature_rate`` s); each manifest
  segment takes the rows nearest to K uniformly spaced times (or TSN's, ``placement="tsn"``).
- **TA3N's per-frame features** (``ta3n-t7``): ``<folder>/<video_id>/img_00001.t7`` ...,
  one ``torch.save``d tensor per frame (row i = the file TA3N's ``dataset.py`` names
  ``img_{i+1:05d}.t7``), sampled as a video's ``.npy`` rows are. Each file is read with
  ``torch.load(weights_only=True)`` (tensors only; a file whose pickle names any other global
  is refused before anything runs), and only the K frames a segment takes.

An import, in this order, under the store's exclusive lock (:mod:`avda.cache.lock`; a second
writer is refused in one line):

1. **check** the whole file before the store is touched: dtype (numbers), shape (``(N, K, D)``
   or ``(N, D)``, N = the ids), K and D against the store's modality, status codes, ids
   repeated inside the file or already in the store (unless it adds modalities to them, see
   2). NaN/inf rows (once cast to float16) become
   ``failed`` rows here, with zeros and the reason. A refused import leaves the store byte for
   byte as it was (and creates no store).
2. **write** past ``num_segments``: every array is resized along N (chunk shapes unchanged; the
   last partial chunk fills up), the new rows written; a modality new to the store gets arrays
   the provenance does not list yet (its earlier rows ``missing``). Readers read the first
   ``num_segments`` rows of the modalities the provenance lists, so none of this is visible.
   An import of modalities new to the store, for segments it holds already (a second
   modality's folder of per-video ``.npy`` files), writes those rows in place instead: into
   arrays the provenance does not list yet, so equally invisible.
3. **commit** with one write of the provenance (an atomic file replace): ``num_segments``, the
   new modalities and the ``imports`` record (file, sha256, rows) together.

Killed before 3, the store is as if the import never started (the next writer's
:meth:`FeatureCache.repair` removes the traces), and rerunning imports it; killed after, it is
complete, and rerunning says "already imported" (same sha256; a folder of per-video
features: and the same segments, :func:`_already_imported`). A new store is built under a
hidden name and renamed into place (:func:`avda.cache.store.create`).

Export: :func:`export_h5` streams the store chunk by chunk (a cache larger than memory exports
in bounded memory); :func:`export_epic_pickle` writes the TA3N pickle layout back.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import logging
import pickle
import re
import stat
import tarfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from avda._io import atomic_write, sha256_file
from avda.cache import faults, schema
from avda.cache.lock import store_lock
from avda.cache.schema import Status
from avda.cache.store import (
    NONFINITE_IMPORT_HINT,
    FeatureCache,
    create,
    nonfinite_error,
    open_cache,
)
from avda.errors import CacheError, ConfigError, ManifestError

log = logging.getLogger(__name__)

H5_FORMAT = "avda-h5"
H5_FORMAT_VERSION = 1
# EPIC-100 UDA feature dict keys <-> avda modalities (dict order = TA3N's concatenation order).
RELEASED_MODALITIES: dict[str, str] = {"RGB": "rgb", "Flow": "flow", "Audio": "audio"}
MODALITIES = tuple(RELEASED_MODALITIES.values())
ID_DATASETS = ("uid", "uids", "narration_ids", "narration_id", "ids", "names")
ImportFormat = Literal["auto", "epic-pkl", "h5", "npy", "ta3n-t7"]
FORMATS = ("auto", "epic-pkl", "h5", "npy", "ta3n-t7")
# how a per-video import picks a segment's K rows (import_npy, import_ta3n_t7)
NpyPlacement = Literal["nearest", "tsn"]
NPY_PLACEMENTS: tuple[str, ...] = ("nearest", "tsn")


@dataclasses.dataclass
class ImportResult:
    store: Path
    file: Path
    rows: int
    modalities: list[str]
    already_imported: bool = False
    fill: bool = False  # the modalities went into segments the store held (no new rows)
    earlier: dict[str, Any] | None = None  # the store's record of an already imported file
    # per modality, the segments it gave no features (status -> count, an example reason)
    not_done: dict[str, tuple[dict[str, int], str]] = dataclasses.field(default_factory=dict)

    def not_done_text(self) -> str:
        """``; rgb: 9658 missing, 2 failed (e.g. no P01_01.npy in feats)`` (empty: all done)."""
        parts = []
        for modality, (counts, example) in self.not_done.items():
            said = ", ".join(f"{n} {status}" for status, n in counts.items())
            parts.append(f"{modality}: {said} (e.g. {example})")
        return "; " + "; ".join(parts) if parts else ""


# --------------------------------------------------------------------------- annotations
def read_segment_table(
    path: str | Path, *, domain: str | None = None, split: str | None = None
) -> pd.DataFrame:
    """Segments keyed by ``uid`` from an avda manifest or an EPIC annotation file.

    An EPIC file (CSV or pickle; the UDA pickles are DataFrames indexed by ``narration_id``)
    gives ``uid = narration_id`` and seconds from ``start_timestamp`` / ``stop_timestamp``;
    ``domain`` and ``split`` label the rows (they override the manifest's when given).
    """
    from avda.data_manifests import safe_pickle
    from avda.data_manifests import schema as manifest_schema

    path = Path(path)
    if not path.exists():
        raise ConfigError(f"annotation file {path} does not exist; check --annotations")
    if path.suffix.lower() in (".pkl", ".pickle"):
        table = safe_pickle.load(path)
        if not isinstance(table, pd.DataFrame):
            raise ConfigError(f"{path} holds a {type(table).__name__}, not an annotation table")
        if table.index.name is not None:
            table = table.reset_index()
    elif path.suffix.lower() in (".parquet", ".pq"):
        table = pd.read_parquet(path)
    else:
        table = pd.read_csv(path, keep_default_na=False, na_values={"verb_class": [""]})
    table = table.copy()
    if "uid" not in table.columns:
        if "narration_id" not in table.columns:
            raise ConfigError(
                f"{path} has neither a uid nor a narration_id column; pass an avda manifest or "
                "an EPIC-KITCHENS annotation file"
            )
        table["uid"] = table["narration_id"].astype(str)
    for column, source in (("start_sec", "start_timestamp"), ("stop_sec", "stop_timestamp")):
        if column not in table.columns:
            if source not in table.columns:
                raise ConfigError(f"{path} has neither {column} nor {source}")
            table[column] = pd.to_timedelta(table[source].astype(str)).dt.total_seconds()
    if domain is not None:
        table["domain"] = domain
    if split is not None:
        table["split"] = split
    for column in ("domain", "split"):
        if column not in table.columns:
            raise ConfigError(f"{path} has no {column} column: pass --{column} NAME")
    bad = sorted(set(table["split"].astype(str)) - {"train", "val", "test"})
    if bad:
        raise ConfigError(f"split {bad[0]!r} is not one of train, val, test; pass --split")
    why = manifest_schema.class_id_problem(table)
    if why is not None:  # a classifier is sized by the largest id (10^9: terabytes)
        raise ConfigError(f"{path}: {why}; ids number the classes from 0 (renumber them)")
    table["uid"] = table["uid"].astype(str)
    if table["uid"].duplicated().any():
        first = table["uid"][table["uid"].duplicated()].iloc[0]
        raise ConfigError(f"{path}: uid {first!r} appears twice")
    return table.set_index("uid", drop=False)


def _join(ids: Sequence[str], table: pd.DataFrame, source: Path, annotations: Path) -> pd.DataFrame:
    ids = [str(i) for i in ids]
    missing = [i for i in ids if i not in table.index]
    if missing:
        raise CacheError(
            f"{len(missing)} of {len(ids)} ids in {source} are not in {annotations} (first: "
            f"{missing[:3]}); use the annotation file of the same split"
        )
    segments = table.loc[ids].reset_index(drop=True)
    columns = [c for c in schema.SEGMENT_COLUMNS if c in segments.columns]
    return segments[columns]


# --------------------------------------------------------------------------- the store side
IMPORT_LOCK = "avda cache import"
EXPORT_LOCK = "avda cache export"


@dataclasses.dataclass
class _Block:
    """One modality of a file to import, checked: (n, K, D) float16 features, statuses,
    errors (non-finite DONE rows already turned FAILED with zeros)."""

    features: np.ndarray
    statuses: np.ndarray
    errors: list[str]
    info: dict[str, Any]


def _block(
    source: Path,
    modality: str,
    values: Any,
    rows: int,
    info: dict[str, Any],
    statuses: Sequence[int] | None = None,
    errors: Sequence[str] | None = None,
) -> _Block:
    """Check one modality's values (shape, dtype, row count, finiteness) before any write."""
    array = np.asarray(values)
    if array.dtype.kind not in "fiu":
        raise CacheError(
            f"{source}: {modality} features are of dtype {array.dtype}, not numbers; "
            "write them as a float array"
        )
    if array.ndim == 2:
        array = array[:, None, :]  # (N, D) -> (N, 1, D)
    if array.ndim != 3:
        raise CacheError(
            f"{source}: {modality} features have shape {array.shape}; expected (N, K, D) or (N, D)"
        )
    if array.shape[0] != rows:
        raise CacheError(f"{source}: {modality} has {array.shape[0]} rows but there are {rows} ids")
    statuses = (
        np.full(rows, int(Status.DONE), dtype=schema.STATUS_DTYPE)
        if statuses is None
        else np.array(statuses, dtype=schema.STATUS_DTYPE)
    )
    errors = [""] * rows if errors is None else [str(e) for e in errors]
    if len(statuses) != rows or len(errors) != rows:
        raise CacheError(f"{source}: status/errors of {modality} do not have {rows} rows")
    unknown = sorted(set(statuses.tolist()) - {int(s) for s in Status})
    if unknown:
        raise CacheError(f"{source}: status codes {unknown} of {modality} are not avda's")
    with np.errstate(over="ignore", invalid="ignore"):  # float16 overflow: caught just below
        stored = array.astype(schema.FEATURE_DTYPE)
    finite = np.isfinite(stored.reshape(rows, -1)).all(axis=1)
    bad = (statuses == Status.DONE) & ~finite
    for i in np.flatnonzero(bad):
        errors[i] = nonfinite_error("features", array[i], stored[i], NONFINITE_IMPORT_HINT)
    if bad.any():
        log.warning(
            "%s: %d rows of %s hold NaN/inf (or overflow float16): stored as failed",
            *(source, int(bad.sum()), modality),
        )
        statuses[bad] = int(Status.FAILED)
    stored[~finite] = 0
    return _Block(stored, statuses, errors, info)


def _check_import(
    store: FeatureCache | None,
    segments: pd.DataFrame,
    blocks: dict[str, _Block],
    source: Path,
) -> np.ndarray | None:
    """Refuse, before anything is written, an import that cannot go in whole; returns the
    rows it fills (None: appended after the store's rows)."""
    uids = segments["uid"].astype(str)
    twice = uids[uids.duplicated()]
    if len(twice):
        raise CacheError(
            f"{source}: id {twice.iloc[0]!r} appears twice ({len(twice)} repeated ids); each "
            "segment can be imported once: remove the repeats from the file"
        )
    if store is None:
        return None
    for modality, block in blocks.items():
        K, D = int(block.features.shape[1]), int(block.features.shape[2])
        if modality in store.modalities:
            found = store.modality_info(modality)
            if (found["num_clips"], found["num_features"]) != (K, D):
                raise CacheError(
                    f"{store.path} holds {modality} features of K={found['num_clips']}, "
                    f"D={found['num_features']}; {source} has K={K}, D={D}: import it into "
                    "another store"
                )
            _check_backbone(store, modality, found, block.info, source)
            _check_npy_sampling(store, modality, found, block.info, source)
    if _adds_modalities(store, segments, blocks):
        return _same_segments(store, segments, source)
    return _rows_for(store, segments, source, sorted(blocks))


def _check_backbone(
    store: FeatureCache,
    modality: str,
    found: Mapping[str, Any],
    info: Mapping[str, Any],
    source: Path,
    rerun: bool = False,
) -> None:
    """Refuse rows of another backbone than the modality's (``found``): its provenance names
    one. ``rerun``: ``source`` is the import that stored them, run again with another
    --backbone, which would only relabel them: refused too, naming the recorded one."""
    theirs, ours = found.get("backbone", "unknown"), info.get("backbone", "unknown")
    if theirs == ours:
        return
    said = "no --backbone" if ours == "unknown" else f"--backbone {ours}"
    if rerun:
        given = "leave --backbone out" if theirs == "unknown" else f"give --backbone {theirs}"
        raise CacheError(
            f"{store.path} holds {modality} features of backbone {theirs} imported from "
            f"{source}; it is imported again with {said}, which would only relabel them: "
            f"{given} (it is imported: nothing to do), or import it into another store"
        )
    raise CacheError(
        f"{store.path} holds {modality} features of backbone {theirs}; {source} is imported "
        f"with {said}: features of one modality come from one backbone. If they are "
        f"{theirs}'s, import with --backbone {theirs}; else import them into another store"
    )


def _npy_sampling(info: Mapping[str, Any]) -> tuple[float, str] | None:
    """``(feature_rate, placement)`` of a modality imported from per-video features (.npy or
    TA3N's .t7 frames; None: not such an import). Records without ``placement`` are nearest's."""
    given = info.get("input") or {}
    if given.get("format") not in schema.PER_VIDEO_FORMATS or given.get("feature_rate") is None:
        return None
    return float(given["feature_rate"]), str(given.get("placement", "nearest"))


def _check_npy_sampling(
    store: FeatureCache, modality: str, found: Mapping[str, Any], info: Mapping[str, Any], source
) -> None:
    """Refuse rows appended to a modality sampled another way: per-video rows (.npy, ta3n-t7)
    at another --feature-rate or --placement, or per-video rows with rows of a feature file or
    of an extraction (which have no feature rate), either way round. The store records one input
    per modality (its provenance and `avda cache verify`'s re-import command would be wrong for
    the new rows)."""
    theirs, ours = _npy_sampling(found), _npy_sampling(info)
    if theirs == ours:
        return
    fix = "Import it into another store"
    if theirs is not None and ours is not None:
        fix = f"Import it with {_npy_options(theirs)}, or into another store"
    raise CacheError(
        f"{store.path} holds {modality} features {_sampling_text(store, found)}; {source} is "
        f"{_sampling_text(None, info)}: the store records one rate and placement per modality. "
        f"{fix}"
    )


def _sampling_text(store: FeatureCache | None, info: Mapping[str, Any]) -> str:
    """How a modality's rows were sampled, from its provenance ``info`` (``store``: the store
    that holds them, for an extraction's recipe): ``imported at --feature-rate 4 --placement
    nearest``, ``imported from epic-pkl (...)``, ``extracted (recipe ta3n, ...)``."""
    sampling = _npy_sampling(info)
    if sampling is not None:
        return f"imported at {_npy_options(sampling)}"
    given = info.get("input") or {}
    if given.get("source") == "import":
        return f"imported from {given.get('format')} (a segment's clips as the file gives them)"
    recipe = (store.provenance.get("recipe") or {}).get("name") if store is not None else None
    return f"extracted (recipe {recipe})" if recipe else "extracted"


def _npy_options(sampling: tuple[float, str]) -> str:
    return f"--feature-rate {sampling[0]:g} --placement {sampling[1]}"


def _adds_modalities(
    store: FeatureCache | None, segments: pd.DataFrame, blocks: dict[str, _Block]
) -> bool:
    """Whether the import brings modalities new to the store for segments it holds already
    (every id present, in rows an earlier import recorded or the extraction made): another
    modality's features of the same segments, e.g. a second folder of per-video ``.npy``
    files. Their rows are filled in place; the store's other modalities keep theirs. (Rows
    past the last recorded import are an older avda's import killed before its record:
    :func:`_rows_for` finishes those.)"""
    if store is None or not store.num_segments or any(m in store.modalities for m in blocks):
        return False
    existing = pd.Index(store.segments["uid"].astype(str))
    uids = segments["uid"].astype(str)
    if not uids.isin(existing).all():
        return False
    if (store.provenance.get("recipe") or {}).get("name") != "imported":
        return True
    return int(existing.get_indexer(uids).max()) < _recorded_rows(store)


def _recorded_rows(store: FeatureCache) -> int:
    """The end of the rows the store's recorded imports appended (fills append none)."""
    imports = store.provenance.get("imports", [])
    return max((e["rows"][1] for e in imports if not e.get("fill")), default=0)


# what a fill compares: the segment's video, times, side and labels must be the stored ones
_FILL_COLUMNS = (
    "video_id",
    "start_sec",
    "stop_sec",
    "domain",
    "split",
    *schema.TASK_COLUMNS.values(),
)


_FILL_FIX = (
    "import another modality with the annotations (and --domain/--split) the store was built from"
)


def _same_segments(
    store: FeatureCache,
    segments: pd.DataFrame,
    source: Path,
    fix: str = _FILL_FIX,
    columns: Sequence[str] = _FILL_COLUMNS,
) -> np.ndarray:
    """The store's rows of ``segments``, refused when a segment's video, times, domain, split
    or labels (``columns``) differ from the stored ones (the features would describe another
    segment; ``fix``: what to do then)."""
    stored = store.segments
    rows = pd.Index(stored["uid"].astype(str)).get_indexer(segments["uid"].astype(str))
    for column in columns:
        if column not in segments.columns or column not in stored.columns:
            continue
        ours = stored[column].iloc[rows].reset_index(drop=True)
        theirs = segments[column].reset_index(drop=True)
        if column in ("start_sec", "stop_sec"):
            a = pd.to_numeric(ours, errors="coerce").to_numpy(dtype=float)
            b = pd.to_numeric(theirs, errors="coerce").to_numpy(dtype=float)
            differ = ~np.isclose(a, b, atol=1e-3, equal_nan=True)
            show = "{:g}".format
        else:
            a, b = _text(ours), _text(theirs)
            differ = a != b
            show = repr
        if differ.any():
            i = int(np.flatnonzero(differ)[0])
            raise CacheError(
                f"{source}: segment {segments['uid'].iloc[i]!r} has {column} {show(b[i])}, "
                f"{store.path} has {show(a[i])} ({int(differ.sum())} segment(s) differ): {fix}"
            )
    return rows


def _text(values: pd.Series) -> np.ndarray:
    """A column as comparable text: missing values (NaN, None, "", the store's -1) as "",
    whole numbers as ints (3, 3.0 and "3" are one label)."""
    out = []
    for value in values.tolist():
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        text = "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)
        out.append("" if text == str(schema.MISSING_CLASS) else text)
    return np.asarray(out, dtype=object)


def _rows_for(
    store: FeatureCache, segments: pd.DataFrame, source: Path, modalities: Sequence[str] = ()
) -> np.ndarray | None:
    """Rows for ``segments``: None (appended), or rows committed by an older avda whose
    import was killed before its record (in file order, after the last recorded import)."""
    existing = pd.Index(store.segments["uid"].astype(str)) if store.num_segments else pd.Index([])
    uids = segments["uid"].astype(str)
    present = uids.isin(existing)
    if not present.any():
        return None
    rows = existing.get_indexer(uids)
    committed = _recorded_rows(store)
    imported = (store.provenance.get("recipe") or {}).get("name") == "imported"
    if imported and present.all() and np.all(np.diff(rows) == 1) and rows[0] >= committed:
        log.info("%s: finishing an interrupted import of %s", store.path, source)
        return rows
    held = [m for m in modalities if m in store.modalities]
    if present.all() and held:
        raise CacheError(
            f"the {len(uids)} segments of {source} are already in {store.path}, which has "
            f"{', '.join(held)} features (first: {uids.iloc[0]!r}): a modality is added to a "
            "store's segments once, by one import (one file, or one folder of per-video features "
            "(.npy, TA3N's .t7) with one annotation table for all its segments: TA3N's two zips "
            "unpacked into one folder); import the modality's features together, into a new "
            "store (-o)"
        )
    raise CacheError(
        f"{int(present.sum())} segments of {source} are already in {store.path} (first: "
        f"{uids[present].iloc[0]!r}); each segment can be imported once"
    )


def _open_existing(out: Path) -> FeatureCache | None:
    """The store ``out`` opened for appending (the caller holds its lock), None if absent."""
    return open_cache(out, mode="a") if out.exists() else None


def _create_store(
    out: Path,
    chunk_rows: int,
    fmt: str,
    annotations: Path | None = None,
    exported: Mapping[str, Any] | None = None,
) -> FeatureCache:
    """A new, empty store at ``out`` (built under another name and renamed into place), with
    the class tables found for ``annotations`` (:func:`import_classes`), or those and the
    recipe of the store an avda HDF5 file was ``exported`` from (its provenance)."""
    empty = pd.DataFrame({c: pd.Series(dtype=object) for c in schema.REQUIRED_SEGMENT_COLUMNS})
    classes = import_classes(annotations) if annotations is not None else None
    recipe: dict[str, Any] = {"name": "imported", "format": fmt}
    if exported:
        classes = exported.get("classes") or classes
        if isinstance(exported.get("recipe"), dict):
            recipe = {**exported["recipe"], "imported_from": fmt}
    return create(
        out,
        empty,
        manifest_sha256="",
        recipe=recipe,
        chunk_rows=chunk_rows,
        shrink_chunks=False,
        classes=classes,
    )


EPIC100_CLASS_FILES = {
    "verb_class": "EPIC_100_verb_classes.csv",
    "noun_class": "EPIC_100_noun_classes.csv",
}


def import_classes(annotations: str | Path) -> dict[str, list[str]]:
    """The class tables of an import's annotations: an avda manifest's build record
    (``<manifest>.build.json``), else EPIC-100's ``EPIC_100_{verb,noun}_classes.csv`` in the
    annotation file's folder or the one above it (the layout of epic-kitchens-100-annotations,
    whose UDA files are in ``UDA_annotations/``); {} when neither is there (training then
    counts classes up to the largest id)."""
    from avda.data_manifests import schema as manifest_schema
    from avda.data_manifests.sources import SourceProblems, read_class_names

    annotations = Path(annotations)
    classes = manifest_schema.build_classes(annotations)
    if classes:
        return classes
    for folder in (annotations.parent, annotations.parent.parent):
        paths = {c: folder / name for c, name in EPIC100_CLASS_FILES.items()}
        if all(path.exists() for path in paths.values()):
            problems = SourceProblems("epic100 class tables")
            tables = {c: list(read_class_names(p, "id", "key", problems)) for c, p in paths.items()}
            problems.raise_if_any()
            log.info("class tables from %s", folder)
            return tables
    return {}


def _commit_import(
    out: Path,
    store: FeatureCache | None,
    rows: np.ndarray | None,
    *,
    source: Path,
    sha: str,
    fmt: str,
    segments: pd.DataFrame,
    blocks: dict[str, _Block],
    domain: str | None,
    split: str | None,
    chunk_rows: int,
    annotations: Path | None = None,
    exported: Mapping[str, Any] | None = None,
    segments_sha256: str | None = None,
) -> ImportResult:
    """Write a checked import and commit it (the caller holds the store's lock exclusively:
    taking it removed what a killed writer left, :func:`avda.cache.lock.store_lock`).

    The rows go past ``num_segments`` (new modalities into arrays the provenance does not list
    yet), invisible to readers; one write of the provenance then commits the rows, the new
    modalities and the import record together. A kill before that write leaves the store as
    it was (the next writer's :meth:`FeatureCache.repair` removes the traces); after it, the
    import is complete.
    """
    fill = _adds_modalities(store, segments, blocks)
    if store is None:
        store = _create_store(out, chunk_rows, fmt, annotations, exported)
        faults.checkpoint("after-create")
    else:
        store.repair()
    if fill:  # rows in the store's order, the blocks' rows with them
        order = np.argsort(rows, kind="stable")
        rows = rows[order]
        blocks = {
            m: _Block(b.features[order], b.statuses[order], [b.errors[i] for i in order], b.info)
            for m, b in blocks.items()
        }
    old = store.num_segments
    if rows is None:
        rows = store.append_segments(segments, commit=False)
    total = max(old, int(rows.max()) + 1) if len(rows) else old
    faults.checkpoint("after-segments")
    new_entries: dict[str, dict[str, Any]] = {}
    for modality, block in blocks.items():
        K, D = int(block.features.shape[1]), int(block.features.shape[2])
        if modality not in store.modalities:
            new_entries[modality] = store.add_modality(
                modality, num_clips=K, num_features=D, info=block.info, register=False, rows=total
            )
            other = np.ones(total, dtype=bool)
            other[rows] = False
            _mark_missing(store, modality, np.flatnonzero(other), K, D, "not in the imported files")
        _write_rows(store, modality, rows, block)
    faults.checkpoint("after-features")
    for modality in [] if fill else store.modalities:
        if modality not in blocks:
            info = store.modality_info(modality)
            K, D = int(info["num_clips"]), int(info["num_features"])
            _mark_missing(store, modality, rows, K, D, f"not in {source.name}")
    faults.checkpoint("before-record")
    _record_import(store, source, sha, fmt, rows, domain, split, total, new_entries, fill=fill,
                   segments_sha256=segments_sha256)  # fmt: skip
    faults.checkpoint("after-record")
    not_done = {}
    for modality, block in sorted(blocks.items()):
        statuses = np.asarray(block.statuses)
        counts = {
            status.name.lower(): int((statuses == int(status)).sum())
            for status in (Status.MISSING, Status.FAILED)
        }
        if any(counts.values()):
            first = int(np.flatnonzero(statuses != int(Status.DONE))[0])
            not_done[modality] = ({k: v for k, v in counts.items() if v}, block.errors[first])
    return ImportResult(out, source, len(rows), sorted(blocks), fill=fill, not_done=not_done)


def _write_rows(store: FeatureCache, modality: str, rows: np.ndarray, block: _Block) -> None:
    """Write a checked block chunk-wise (``rows`` ascending)."""
    step = store.chunk_rows
    errors = np.asarray(block.errors, dtype=object)
    for start in range(0, len(rows), step):
        for run in _runs(rows[start : start + step]):
            index = np.searchsorted(rows, run)
            store.write(
                modality, run, block.features[index], block.statuses[index], errors[index].tolist()
            )


def _mark_missing(
    store: FeatureCache, modality: str, rows: np.ndarray, K: int, D: int, reason: str
) -> None:
    for run in _runs(rows):
        zeros = np.zeros((len(run), K, D), dtype=np.float16)
        store.write(
            modality, run, zeros, np.full(len(run), int(Status.MISSING)), [reason] * len(run)
        )


def _runs(rows: np.ndarray) -> list[np.ndarray]:
    rows = np.asarray(rows)
    if len(rows) == 0:
        return []
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    return np.split(rows, breaks)


def _record_import(
    store: FeatureCache,
    source: Path,
    sha: str,
    fmt: str,
    rows: np.ndarray,
    domain: str | None,
    split: str | None,
    total: int,
    new_entries: dict[str, dict[str, Any]],
    *,
    fill: bool = False,
    segments_sha256: str | None = None,
) -> None:
    """The commit: one provenance write with ``num_segments``, the new modalities and the
    import record (``fill``: rows filled in place, the segments and their fingerprint kept;
    ``segments_sha256``: the segments a .npy folder's import mapped)."""
    from avda.data_manifests import schema as manifest_schema

    entry = {
        "file": str(source),
        "sha256": sha,
        "format": fmt,
        "rows": [int(rows.min()), int(rows.max()) + 1] if len(rows) else [0, 0],
        "domain": domain,
        "split": split,
        "imported": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    if fill:
        entry["fill"] = True
    if segments_sha256 is not None:
        entry["segments_sha256"] = segments_sha256
    provenance = store.provenance
    provenance["num_segments"] = total
    provenance["modalities"] = {**provenance["modalities"], **new_entries}
    provenance["imports"] = [*provenance.get("imports", []), entry]
    if not fill:  # a fill adds no segment: the fingerprint (an extraction's too) stays
        segments = store.read_segments(total)
        columns = [c for c in manifest_schema.REQUIRED_COLUMNS if c in segments.columns]
        provenance["manifest_sha256"] = manifest_schema.fingerprint(segments[columns])
    store._set_provenance(provenance)
    store._segments = None


def _already_imported(
    store: FeatureCache, sha: str, segments_sha256: str | None = None
) -> dict[str, Any] | None:
    """The store's record of the import of a file with this sha256 (None: not imported).

    ``segments_sha256`` (a folder of .npy files, which holds no segment ids: the segments
    come from its annotations): also of these segments (:func:`_segments_sha256`), so that the
    folder imported with another annotation table is another import. A record written before
    imports recorded their segments (2026-12-07) is compared by the ids of the rows it
    appended; one that filled rows in place cannot be, and is taken as this import, with a
    warning."""
    imports = store.provenance.get("imports", [])
    for entry in imports:
        if entry.get("sha256") != sha:
            continue
        if segments_sha256 is None or entry.get("segments_sha256") == segments_sha256:
            return entry
        if "segments_sha256" in entry:
            continue  # the folder with other segments
        if not entry.get("fill"):
            start, stop = entry["rows"]
            uids = store.segments["uid"].iloc[start:stop]
            if _segments_sha256(uids) == segments_sha256:
                return entry
            continue
        log.warning(
            "%s records an import of %s (on %s) that does not record its segments (an avda "
            "before 2026-12-07 wrote it): taken as this import, with whatever annotations; to "
            "import the folder with others, import it into another store",
            *(store.path, entry.get("file"), entry.get("imported")),
        )
        return entry
    return None


def _segments_sha256(uids: Iterable[Any]) -> str:
    """The SHA-256 of a set of segment ids (their order aside): what a .npy import mapped."""
    return hashlib.sha256("\n".join(sorted(map(str, uids))).encode()).hexdigest()


def _import_info(backbone: str | None, fmt: str, source: Path) -> dict[str, Any]:
    return {
        "backbone": backbone or "unknown",
        "weights": None,
        "weights_sha256": None,
        "input_spec": {},
        "input": {"source": "import", "format": fmt, "file": source.name},
    }


# --------------------------------------------------------------------------- importers
def import_features(
    source: str | Path,
    *,
    out: str | Path,
    annotations: str | Path | None = None,
    format: ImportFormat = "auto",
    domain: str | None = None,
    split: str | None = None,
    backbone: str | None = None,
    modality: str = "rgb",
    feature_rate: float | None = None,
    num_clips: int = 25,
    placement: NpyPlacement = "nearest",
    chunk_rows: int = schema.DEFAULT_CHUNK_ROWS,
) -> ImportResult:
    """Import one feature file (or .npy folder) into the store ``out``; see the module doc."""
    source, out = Path(source), Path(out)
    if not source.exists():
        raise ConfigError(f"feature file {source} does not exist")
    fmt = format if format != "auto" else _guess_format(source)
    if annotations is None and fmt != "h5":
        raise ConfigError(
            f"importing {source} needs --annotations: the annotation file (EPIC CSV/pickle) or "
            "avda manifest that gives its segments"
        )
    if fmt == "epic-pkl":
        return import_epic_pickle(
            source,
            out=out,
            annotations=annotations,
            domain=domain,
            split=split,
            backbone=backbone or "tbn",
            chunk_rows=chunk_rows,
        )
    if fmt == "h5":
        return import_h5(
            source,
            out=out,
            annotations=annotations,
            domain=domain,
            split=split,
            backbone=backbone,
            chunk_rows=chunk_rows,
        )
    if fmt in schema.PER_VIDEO_FORMATS:
        if feature_rate is None:
            raise ConfigError(f"a {fmt} import needs --feature-rate (rows per second)")
        return (import_npy if fmt == "npy" else import_ta3n_t7)(
            source,
            out=out,
            annotations=annotations,
            feature_rate=feature_rate,
            num_clips=num_clips,
            placement=placement,
            modality=modality,
            domain=domain,
            split=split,
            backbone=backbone,
            chunk_rows=chunk_rows,
        )
    raise ConfigError(f"unknown import format {format!r}; valid: {', '.join(FORMATS)}")


def _guess_format(source: Path) -> str:
    if source.is_dir():  # TA3N's features: no .npy, folders of img_NNNNN.t7 (or flow's .t7)
        if next(source.glob("*.npy"), None) is None and next(source.glob("*/*.t7"), None):
            return "ta3n-t7"
        return "npy"
    suffix = source.suffix.lower()
    if suffix in (".pkl", ".pickle"):
        return "epic-pkl"
    if suffix in (".h5", ".hdf5", ".hdf"):
        return "h5"
    raise ConfigError(
        f"cannot tell the format of {source} from its name; pass --format epic-pkl, h5, npy "
        "or ta3n-t7"
    )


def import_epic_pickle(
    source: str | Path,
    *,
    out: str | Path,
    annotations: str | Path,
    domain: str | None = None,
    split: str | None = None,
    backbone: str = "tbn",
    chunk_rows: int = schema.DEFAULT_CHUNK_ROWS,
) -> ImportResult:
    """Append an EPIC-100 UDA feature pickle, its segments taken from ``annotations``."""
    source, out, annotations = Path(source), Path(out), Path(annotations)
    with store_lock(out, what=IMPORT_LOCK):
        store = _open_existing(out)
        sha = sha256_file(source)
        earlier = _already_imported(store, sha) if store is not None else None
        ids, features = _read_epic_pickle(source)
        info = _import_info(backbone, "epic-pkl", source)
        if earlier is not None:
            modalities = [RELEASED_MODALITIES.get(str(k), str(k).lower()) for k in features]
            _check_rerun(store, source, ids, dict.fromkeys(modalities, info), annotations,
                         domain, split)  # fmt: skip
            log.info("%s is already imported into %s", source, out)
            return ImportResult(out, source, 0, [], already_imported=True, earlier=earlier)
        table = read_segment_table(annotations, domain=domain, split=split)
        segments = _join(ids, table, source, annotations)
        blocks = {
            RELEASED_MODALITIES.get(str(key), str(key).lower()): _block(
                source, str(key), values, len(ids), info
            )
            for key, values in features.items()
        }
        rows = _check_import(store, segments, blocks, source)
        return _commit_import(
            out,
            store,
            rows,
            source=source,
            sha=sha,
            fmt="epic-pkl",
            segments=segments,
            blocks=blocks,
            domain=domain,
            split=split,
            chunk_rows=chunk_rows,
            annotations=Path(annotations) if annotations is not None else None,
        )


def _read_epic_pickle(source: Path) -> tuple[list[str], dict]:
    """The narration ids and the modality -> ``(N, K, D)`` features of an EPIC-100 UDA
    feature pickle; another file is one line."""
    from avda.data_manifests import safe_pickle

    data = safe_pickle.load(source)
    if not isinstance(data, dict) or "features" not in data or "narration_ids" not in data:
        raise CacheError(
            f"{source} is not an EPIC-100 UDA feature pickle (expected a dict with "
            "'features' and 'narration_ids')"
        )
    features = data["features"]
    if not isinstance(features, dict) or not features:
        raise CacheError(f"{source}: 'features' must be a dict of modality -> [N, K, D] arrays")
    return [_text_id(i) for i in list(data["narration_ids"])], features


def import_h5(
    source: str | Path,
    *,
    out: str | Path,
    annotations: str | Path | None = None,
    domain: str | None = None,
    split: str | None = None,
    backbone: str | None = None,
    chunk_rows: int = schema.DEFAULT_CHUNK_ROWS,
) -> ImportResult:
    """Append an HDF5 feature file: an :func:`export_h5` file, or ids + per-modality datasets."""
    import h5py

    source, out = Path(source), Path(out)
    with store_lock(out, what=IMPORT_LOCK):
        store = _open_existing(out)
        sha = sha256_file(source)
        earlier = _already_imported(store, sha) if store is not None else None
        with h5py.File(source, "r") as handle:
            if earlier is not None:  # read no features: what the rows were imported with
                if handle.attrs.get("format") == H5_FORMAT:  # its segments are its own
                    _, arrays, _, _, infos = _read_avda_h5(handle, source)
                    ids, given = [], None
                else:  # a generic file's segments are the annotations'
                    ids, arrays = _read_generic_h5(handle, source)
                    infos, given = {}, annotations
                _check_rerun(
                    store, source, ids,
                    {m: _h5_info(infos.get(m), backbone, source) for m in arrays},
                    given, domain, split,
                )  # fmt: skip
                return ImportResult(out, source, 0, [], already_imported=True, earlier=earlier)
            exported = None
            if handle.attrs.get("format") == H5_FORMAT:
                segments, arrays, statuses, errors, infos = _read_avda_h5(handle, source)
                exported = _exported_provenance(handle)
                if domain is not None:
                    segments["domain"] = domain
                if split is not None:
                    segments["split"] = split
            else:
                if annotations is None:
                    raise ConfigError(
                        f"{source} is not an avda HDF5 export: pass --annotations (an avda "
                        "manifest or EPIC annotation file) to give its segments"
                    )
                ids, arrays = _read_generic_h5(handle, source)
                table = read_segment_table(annotations, domain=domain, split=split)
                segments = _join(ids, table, source, Path(annotations))
                statuses, errors, infos = {}, {}, {}
            blocks = {
                modality: _block(
                    source,
                    modality,
                    dataset[:],
                    len(segments),
                    _h5_info(infos.get(modality), backbone, source),
                    statuses.get(modality),
                    errors.get(modality),
                )
                for modality, dataset in arrays.items()
            }
        rows = _check_import(store, segments, blocks, source)
        return _commit_import(
            out,
            store,
            rows,
            source=source,
            sha=sha,
            fmt="h5",
            segments=segments,
            blocks=blocks,
            domain=domain,
            split=split,
            chunk_rows=chunk_rows,
            annotations=Path(annotations) if annotations is not None else None,
            exported=exported,
        )


def _h5_info(recorded: dict[str, Any] | None, backbone: str | None, source: Path) -> dict:
    """A modality's provenance for an HDF5 import: an avda export's own record, where it
    names a backbone (``--backbone`` cannot relabel it), else the one ``--backbone`` gives."""
    if not recorded:
        return _import_info(backbone, "h5", source)
    if backbone and recorded.get("backbone", "unknown") == "unknown":
        return {**recorded, "backbone": backbone}
    if backbone and recorded.get("backbone") != backbone:
        raise CacheError(
            f"{source} records its features as {recorded.get('backbone')}'s; --backbone "
            f"{backbone} cannot relabel them: leave --backbone out"
        )
    return recorded


def _text_id(value: Any) -> str:
    """An id as text: bytes (HDF5 strings, numpy ``S`` arrays in a pickle) decoded, as every
    reader does (a pickle's ``b'P01_02_90'`` was refused as not in the annotations)."""
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode()
    return str(value)


def _exported_provenance(handle) -> dict[str, Any]:
    """The provenance of the store an avda HDF5 file was exported from ({} if unreadable:
    the file's own checks report a damaged one)."""
    try:
        found = json.loads(handle.attrs.get(schema.ROOT_ATTRIBUTE, "{}"))
    except (TypeError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _read_avda_h5(handle, source: Path):
    """The segments, arrays and records of an :func:`export_h5` file; a file that says it is
    one but lacks a group or holds damaged attributes is one ``CacheError`` line."""
    try:
        return _read_avda_h5_parts(handle, source)
    except (KeyError, ValueError, TypeError, AttributeError, json.JSONDecodeError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise CacheError(
            f"{source} says it is an avda HDF5 export (format {H5_FORMAT!r}) but a group or "
            f"attribute is missing or damaged ({reason}); export it again with avda cache "
            "export --format h5"
        ) from None


def _read_avda_h5_parts(handle, source: Path):
    group = handle["segments"]
    columns = {}
    for name, kind in schema.SEGMENT_COLUMNS.items():
        if name not in group:
            continue
        values = group[name][:]
        if kind == "str":
            columns[name] = [v.decode() if isinstance(v, bytes) else str(v) for v in values]
        else:
            columns[name] = values
    segments = pd.DataFrame(columns)
    if "int" in schema.SEGMENT_COLUMNS.values():
        for name, kind in schema.SEGMENT_COLUMNS.items():
            if kind == "int" and name in segments:
                segments[name] = segments[name].where(segments[name] != schema.MISSING_CLASS)
    provenance = json.loads(handle.attrs.get(schema.ROOT_ATTRIBUTE, "{}"))
    arrays, statuses, errors, infos = {}, {}, {}, {}
    for modality in handle.get(schema.FEATURES_GROUP, {}):
        arrays[modality] = handle[schema.FEATURES_GROUP][modality]
        statuses[modality] = handle[schema.STATUS_GROUP][modality][:].astype(np.int8)
        raw = handle[schema.ERRORS_GROUP][modality][:]
        errors[modality] = [v.decode() if isinstance(v, bytes) else str(v) for v in raw]
        info = dict(provenance.get("modalities", {}).get(modality, {}))
        info.pop("num_clips", None)
        info.pop("num_features", None)
        info.pop("spatial_shape", None)
        infos[modality] = info or None
    if not arrays:
        raise CacheError(f"{source} (an avda HDF5 export) holds no features")
    return segments, arrays, statuses, errors, infos


def _read_generic_h5(handle, source: Path):
    id_name = next((n for n in ID_DATASETS if n in handle), None)
    if id_name is None:
        raise CacheError(
            f"{source} has no id dataset (one of {', '.join(ID_DATASETS)}) to join with the "
            "annotations"
        )
    ids = [_text_id(v) for v in handle[id_name][:]]
    names = "rgb, flow or audio (or RGB, Flow, Audio)"
    container = handle["features"] if "features" in handle else handle
    if hasattr(container, "shape"):  # one dataset called features: of which modality?
        raise CacheError(
            f"{source}: its features are one dataset 'features' {container.shape}; avda reads "
            f"one dataset per modality, named {names}, at the root or in a 'features' group: "
            "rename it (h5py: f.move('features', 'rgb'))"
        )
    arrays, ignored = {}, []
    for name in container:
        dataset = container[name]
        if name in ID_DATASETS or not hasattr(dataset, "shape") or len(dataset.shape) not in (2, 3):
            continue
        modality = RELEASED_MODALITIES.get(name, name.lower())
        if modality not in MODALITIES:  # times, labels...: not features
            ignored.append(name)
            continue
        if dataset.shape[0] != len(ids):
            raise CacheError(f"{source}: {name} has {dataset.shape[0]} rows, {len(ids)} ids")
        arrays[modality] = dataset
    if ignored:
        log.warning(
            "%s: datasets %s ignored: not a modality (%s)", source, ", ".join(ignored), names
        )
    if not arrays:
        raise CacheError(f"{source} holds no (N, K, D) or (N, D) feature dataset named {names}")
    return ids, arrays


def import_npy(
    folder: str | Path,
    *,
    out: str | Path,
    annotations: str | Path,
    feature_rate: float,
    num_clips: int = 25,
    placement: NpyPlacement = "nearest",
    modality: str = "rgb",
    domain: str | None = None,
    split: str | None = None,
    backbone: str | None = None,
    chunk_rows: int = schema.DEFAULT_CHUNK_ROWS,
) -> ImportResult:
    """Append per-video ``<video_id>.npy`` features sampled at K times per segment.

    Row ``i`` of a video's ``(T, D)`` array is taken to describe ``(i + 0.5) / feature_rate``
    seconds. ``placement="nearest"``: segment ``[start, stop]`` takes the rows nearest to
    ``start + (k + 0.5) * (stop - start) / K``; ``"tsn"``: TSN's test indices
    (:func:`tsn_rows`) over the segment's ``n = round((stop - start) * rate)`` rows from row
    ``round(start * rate)``, the frames TA3N reads from its per-frame features. Clamped to the
    array. A video without a file gets status MISSING.
    """
    folder = Path(folder)
    files = sorted(folder.glob("*.npy"))
    if not files:
        raise CacheError(f"{folder} holds no .npy files")
    videos = {path.stem: path for path in files}
    return _import_per_video(
        folder,
        "npy",
        videos,
        files,
        _open_npy,
        out=out,
        annotations=annotations,
        feature_rate=feature_rate,
        num_clips=num_clips,
        placement=placement,
        modality=modality,
        domain=domain,
        split=split,
        backbone=backbone,
        chunk_rows=chunk_rows,
    )


_TA3N_FRAME = re.compile(r"img_(\d+)\.t7")


def import_ta3n_t7(
    folder: str | Path,
    *,
    out: str | Path,
    annotations: str | Path,
    feature_rate: float,
    num_clips: int = 25,
    placement: NpyPlacement = "nearest",
    modality: str = "rgb",
    domain: str | None = None,
    split: str | None = None,
    backbone: str | None = None,
    chunk_rows: int = schema.DEFAULT_CHUNK_ROWS,
) -> ImportResult:
    """Append TA3N's released per-frame features: ``<folder>/<video_id>/img_00001.t7`` ...
    (cmhungsteve/TA3N ``video2feature.py``: ``torch.save`` of one frame's tensor), sampled as
    :func:`import_npy` samples a video's rows, row ``i`` being frame ``i + 1``, the file
    ``dataset.py`` loads as ``img_{i+1:05d}.t7``. The frames of a video must be numbered
    1..T without a gap (a gap would shift every later row). Only the frames a segment takes
    are loaded, each with ``torch.load(weights_only=True)``, and hashed (the "already
    imported" check, with every other file's name and size: :func:`_folder_sha256`); none is
    unpickled otherwise."""
    folder = Path(folder)
    videos = _ta3n_videos(folder)
    files = [path for frames in videos.values() for path in frames]
    return _import_per_video(
        folder,
        "ta3n-t7",
        videos,
        files,
        _Ta3nFrames,
        out=out,
        annotations=annotations,
        feature_rate=feature_rate,
        num_clips=num_clips,
        placement=placement,
        modality=modality,
        domain=domain,
        split=split,
        backbone=backbone,
        chunk_rows=chunk_rows,
    )


def _ta3n_videos(folder: Path) -> dict[str, list[Path]]:
    """``video_id`` -> its frame files in frame order (``img_00001.t7`` first), the video
    folders under ``folder`` that hold any; refused in one line where the numbers have a gap
    or a repeat, or where ``folder`` is one video's folder itself."""
    videos: dict[str, list[Path]] = {}
    for video in sorted(p for p in folder.iterdir() if p.is_dir()):
        numbered = {}
        for path in video.iterdir():
            found = _TA3N_FRAME.fullmatch(path.name)
            if found is None:
                continue
            number = int(found.group(1))
            if number in numbered:
                raise CacheError(
                    f"{video} holds {numbered[number].name} and {path.name}, both frame "
                    f"{number}: keep one (TA3N names frame n img_{{n:05d}}.t7)"
                )
            numbered[number] = path
        if not numbered:
            continue
        gap = next((n for n in range(1, len(numbered) + 1) if n not in numbered), None)
        if gap is not None:
            raise CacheError(
                f"{video} has {len(numbered)} frames up to img_{max(numbered):05d}.t7 but no "
                f"img_{gap:05d}.t7: TA3N reads frame n from img_{{n:05d}}.t7, so the later "
                "rows would shift; unpack that video's folder again"
            )
        videos[video.name] = [numbered[n] for n in range(1, len(numbered) + 1)]
    if not videos:
        itself = next(folder.glob("img_*.t7"), None) is not None
        flow = min(folder.glob("*/*[xy]_[0-9]*.t7"), default=None)  # the first by name
        raise CacheError(
            f"{folder} holds no <video>/img_NNNNN.t7 folders"
            + ("; it is one video's folder: pass the folder above it" if itself else "")
            + (
                f"; {flow.relative_to(folder)} is named as TA3N's Flow reader names a frame's x "
                "or y features, which avda does not import (TA3N released RGB features only, "
                "and its code does not say how x and y make one row): save each video's rows "
                "as <video>.npy and import them with --format npy"
                if flow is not None and not itself
                else ""
            )
        )
    return videos


def _open_npy(path: Path) -> np.ndarray:
    """A video's ``(T, D)`` rows, memory-mapped (read row by row); a file that is no numeric
    2-D ``.npy`` array is refused in one line (``allow_pickle`` stays False: nothing of an
    object array is unpickled)."""
    try:
        values = np.load(path, mmap_mode="r")
    except (ValueError, OSError, EOFError) as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
        raise CacheError(
            f"{path}: not a readable .npy array of numbers ({first}); save each video's "
            "features as one (T, D) array with numpy.save"
        ) from None
    if not isinstance(values, np.ndarray):  # a zip (.npz) is opened by its bytes, any name
        values.close()
        raise CacheError(
            f"{path} is a .npz archive, not one array; save each video's features as one "
            "(T, D) array with numpy.save"
        )
    if values.ndim != 2 or values.dtype.kind not in "fiu":  # as _block checks a file's
        raise CacheError(
            f"{path} has shape {values.shape} ({values.dtype}); expected (T, D) numbers: one "
            "row of D features per time step"
        )
    return values


class _Ta3nFrames:
    """One video's TA3N frame files as a ``(T, D)`` array that loads a row (its file, with
    ``torch.load(weights_only=True)``) when it is indexed; D is the size of the first frame
    read (``shape`` reads frame 1 when none was read yet)."""

    def __init__(self, frames: list[Path]) -> None:
        self.frames = frames
        self.ndim = 2
        self._loaded: dict[int, np.ndarray] = {}
        self._width: int | None = None

    @property
    def shape(self) -> tuple[int, int]:
        if self._width is None:
            self._row(0)
        return len(self.frames), int(self._width or 0)

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: np.ndarray) -> np.ndarray:
        return np.stack([self._row(int(i)) for i in np.asarray(index).reshape(-1)])

    def _row(self, i: int) -> np.ndarray:
        if i not in self._loaded:
            path = self.frames[i]
            row = _load_ta3n_frame(path)
            if self._width is None:
                self._width = row.size
            elif row.size != self._width:
                raise CacheError(
                    f"{path} holds {row.size} values, other frames of {path.parent.name} "
                    f"{self._width}: one video's frames have one size; unpack its folder again"
                )
            self._loaded[i] = row
        return self._loaded[i]


def _load_ta3n_frame(path: Path) -> np.ndarray:
    """A TA3N frame file's values (float32, flattened, as ``.numpy().reshape(-1)``); a file
    that is no ``torch.save``d tensor is refused in one line, one whose pickle names a global
    beyond tensors before it runs (``weights_only=True``)."""
    import torch

    from avda._io import refused_global, torch_load

    try:
        value = torch_load(path)
    except pickle.UnpicklingError as error:
        refused = refused_global(str(error))
        why = (
            f"its pickle would call {refused}, which avda never runs"
            if refused
            else "not a torch.save file"
        )
        raise CacheError(
            f"{path}: torch.load(weights_only=True) refuses it ({why}); a TA3N feature file "
            "holds one tensor: take the features from TA3N's release (ucf101-feat.zip, "
            "hmdb51-feat.zip)"
        ) from None
    except (RuntimeError, EOFError, ValueError) as error:
        if _legacy_torch_tar(path):  # weights_only refuses the layout before it reads it
            raise CacheError(
                f"{path} is an old PyTorch tar-format file (torch.save of PyTorch 0.1, "
                "before its 2017 format; TA3N's PyTorch 0.4 never wrote one), which torch.load "
                "reads only by unpickling it unsafely, so avda does not: re-save it with a newer "
                "torch where you trust it (torch.save(torch.load(f, weights_only=False), f))"
            ) from None
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
        raise CacheError(
            f"{path}: not a readable torch.save file ({first}); a cut-off or damaged copy "
            "reads so: unpack that video's folder again"
        ) from None
    if not isinstance(value, torch.Tensor) or value.numel() == 0:
        raise CacheError(
            f"{path} holds an object of type {type(value).__name__}, not a tensor of features; "
            "a TA3N feature file holds one frame's tensor"
        )
    return value.detach().to(torch.float32).numpy().reshape(-1)


def _legacy_torch_tar(path: Path) -> bool:
    """Whether ``path`` is a tar archive of PyTorch 0.1's ``torch.save`` (its ``storages``,
    ``tensors`` and ``pickle`` members), read as a tar's index only (nothing unpickled)."""
    try:
        with tarfile.open(path, mode="r:") as archive:
            return {"storages", "tensors", "pickle"} <= set(archive.getnames())
    except (tarfile.TarError, OSError):
        return False


def _import_per_video(
    folder: Path,
    fmt: str,
    videos: Mapping[str, Any],
    files: list[Path],
    open_video,
    *,
    out: str | Path,
    annotations: str | Path,
    feature_rate: float,
    num_clips: int,
    placement: NpyPlacement,
    modality: str,
    domain: str | None,
    split: str | None,
    backbone: str | None,
    chunk_rows: int,
) -> ImportResult:
    """The import of one folder of per-video features (``fmt`` one of
    ``schema.PER_VIDEO_FORMATS``): ``videos`` maps a video id to what ``open_video`` opens as
    its ``(T, D)`` rows; ``files`` are every file of the folder, in the order of the "already
    imported" fingerprint (:func:`_folder_sha256`: a .npy folder's every file hashed, a TA3N
    folder's the frames read)."""
    out = Path(out)
    if feature_rate <= 0 or num_clips < 1:
        raise ConfigError("--feature-rate must be positive and --num-clips >= 1")
    if placement not in NPY_PLACEMENTS:
        raise ConfigError(
            f"--placement must be one of {', '.join(NPY_PLACEMENTS)}, got {placement!r}"
        )
    table = read_segment_table(annotations, domain=domain, split=split)
    if fmt == "ta3n-t7":
        _check_frame_rate(table, feature_rate, annotations)
    with store_lock(out, what=IMPORT_LOCK):
        store = _open_existing(out)
        segments = table.reset_index(drop=True)
        segments = segments[[c for c in schema.SEGMENT_COLUMNS if c in segments.columns]]
        read = None  # a .npy folder: every file hashed; a video opened only if it has segments
        if fmt == "ta3n-t7":
            read = _frames_read(videos, segments, feature_rate, num_clips, placement)
        sha = _folder_sha256(folder, files, read)
        mapped = _segments_sha256(table["uid"])  # the folder's files say nothing of these
        info = _import_info(backbone, fmt, folder)
        info["input"]["feature_rate"] = feature_rate
        if placement != "nearest":  # records of earlier imports have no placement: nearest
            info["input"]["placement"] = placement
        if store is not None and (earlier := _already_imported(store, sha, mapped)) is not None:
            _check_rerun_sampling(store, modality, info, num_clips, folder)
            # the fingerprint holds the segments' ids, not their times or labels (another
            # --domain/--split is said not applied: avda cache import's output)
            _same_segments(store, segments, folder, _RERUN_FIX, _RERUN_COLUMNS)
            return ImportResult(out, folder, 0, [], already_imported=True, earlier=earlier)
        features, statuses, errors = _sample_videos(
            folder, fmt, videos, open_video, segments, feature_rate, num_clips, placement
        )
        blocks = {
            modality: _block(folder, modality, features, len(segments), info, statuses, errors)
        }
        rows = _check_import(store, segments, blocks, folder)
        return _commit_import(
            out,
            store,
            rows,
            source=folder,
            sha=sha,
            fmt=fmt,
            segments=segments,
            blocks=blocks,
            domain=domain,
            split=split,
            chunk_rows=chunk_rows,
            annotations=Path(annotations) if annotations is not None else None,
            segments_sha256=mapped,
        )


_RERUN_COLUMNS = tuple(c for c in _FILL_COLUMNS if c not in ("domain", "split"))
_RERUN_FIX = (
    "the store holds it imported with other annotations; import it with these into another "
    "store (-o)"
)


def _check_rerun(
    store: FeatureCache,
    source: Path,
    ids: Sequence[str],
    infos: Mapping[str, Mapping[str, Any]],
    annotations: str | Path | None,
    domain: str | None,
    split: str | None,
) -> None:
    """A feature file found imported (its sha256 in the store's ``imports``: an EPIC-100 UDA
    pickle, an HDF5 file) is so only with what it was imported with, of which the sha256 says
    nothing: its modalities' backbone (``infos``: what this run would record;
    :func:`_check_rerun_backbone`) and, where its segments come from ``annotations`` (its
    ``ids`` joined to them), the store's video, times and labels of those segments, whether
    the import appended them or filled their rows in place (:func:`_same_segments`). Refused
    otherwise, as the import would be."""
    _check_rerun_backbone(store, infos, source)
    if annotations is None:
        return
    table = read_segment_table(annotations, domain=domain, split=split)
    segments = _join(list(ids), table, source, Path(annotations))
    _same_segments(store, segments, source, _RERUN_FIX, _RERUN_COLUMNS)


def _check_rerun_backbone(
    store: FeatureCache, infos: Mapping[str, Mapping[str, Any]], source: Path
) -> None:
    """An import found done, run again with another --backbone (or none where the store
    recorded one): it would only relabel the rows, so it is refused naming the store's
    (:func:`_check_backbone`), not said imported while the store keeps its own label."""
    for modality, info in infos.items():
        if modality in store.modalities:
            found = store.modality_info(modality)
            _check_backbone(store, modality, found, info, source, rerun=True)


def _check_rerun_sampling(
    store: FeatureCache, modality: str, info: Mapping[str, Any], num_clips: int, source: Path
) -> None:
    """A folder of per-video features found imported (the same files and segments) is so only
    at the store's sampling: at another --feature-rate, --placement or --num-clips it would
    store other rows, so it is refused as an append would be (:func:`_check_npy_sampling`),
    not taken as done. The fingerprint does not tell: a .npy folder's is of every file, and a
    TA3N folder's of the frames read, which other options may read too. Another --backbone
    would store the same rows under another name: refused too, as the store keeps its own."""
    if modality not in store.modalities:
        return
    _check_rerun_backbone(store, {modality: info}, source)
    found = store.modality_info(modality)
    _check_npy_sampling(store, modality, found, info, source)
    if int(found["num_clips"]) != num_clips:
        raise CacheError(
            f"{store.path} holds {modality} features of K={found['num_clips']} imported from "
            f"{source}; it is imported again with --num-clips {num_clips}: give --num-clips "
            f"{found['num_clips']} (it is imported: nothing to do), or import it into another "
            "store"
        )


def _folder_sha256(folder: Path, files: list[Path], read: set[Path] | None) -> str:
    """The "already imported" fingerprint of a folder of per-video features: each file's path
    under ``folder`` with its bytes' SHA-256 where the import reads it (``read``; None: every
    file), else its size. A TA3N folder's unread frames change nothing the import stores (their
    names give the videos' lengths), so hashing them all, which cost more than the import on
    the real release (docs/benchmarks.md), is not needed to tell a changed folder. A file that
    is not a regular one is refused before it is read (a FIFO, or a link to /dev/zero, would be
    read for ever)."""
    digest = hashlib.sha256()
    for path in files:
        try:
            status = path.stat()
        except OSError:  # a dangling link
            status = None
        if status is None or not stat.S_ISREG(status.st_mode):
            raise CacheError(
                f"{path} is not a regular file (a pipe, a device, a folder or a dangling link); "
                "a feature folder holds files only: remove it, or unpack the features again"
            )
        digest.update(path.relative_to(folder).as_posix().encode())
        if read is None or path in read:
            digest.update(sha256_file(path).encode())
        else:
            digest.update(f"size {status.st_size}".encode())
    return digest.hexdigest()


def _frames_read(
    videos: Mapping[str, list[Path]],
    segments: pd.DataFrame,
    feature_rate: float,
    num_clips: int,
    placement: NpyPlacement,
) -> set[Path]:
    """The TA3N frame files an import of ``segments`` may load: those their clips take
    (:func:`_clip_rows`), and frame 1 of every video (what tells a video's feature size where
    none of its segments takes a frame)."""
    read = {frames[0] for frames in videos.values()}
    for video_id, positions in segments.groupby("video_id", sort=False).groups.items():
        frames = videos.get(str(video_id))
        for i in positions if frames is not None else ():
            index = _clip_rows(segments, i, len(frames), feature_rate, num_clips, placement, "")
            if not isinstance(index, str):
                read.update(frames[j] for j in index)
    return read


def _check_frame_rate(table: pd.DataFrame, feature_rate: float, annotations) -> None:
    """TA3N's features are one per frame: row i is frame i + 1 only where the manifest's
    seconds count frames at ``feature_rate`` (its ``fps``). A manifest of `avda manifest build
    ucf-hmdb`'s defaults (HMDB51 at 30 fps) imported at 25 took HMDB's frames from the first
    5/6 of each video, without a word; refused in one line naming the rows, how far off their
    frames would be read and the fix. Rates equal to ``np.isclose``'s 1e-5 pass; 29.97 at 30
    (0.1 %) does not: the frames drift by the time into the video, not by a clip's length."""
    if "fps" not in table.columns:
        return
    fps = pd.to_numeric(table["fps"], errors="coerce")
    other = fps.notna() & ~np.isclose(fps.fillna(feature_rate), feature_rate)
    if not other.any():
        return
    rates = ", ".join(f"{r:.10g}" for r in sorted(fps[other].unique()))
    rows = table[other]
    where = ", ".join(sorted(rows["domain"].astype(str).unique())) if "domain" in rows else ""
    stop = pd.to_numeric(rows["stop_sec"], errors="coerce").fillna(0.0)
    drift = stop * (fps[other] - feature_rate).abs()
    latest = int(drift.to_numpy().argmax())
    off = (
        f"frame n would be read for the time n/{feature_rate:g} s, {drift.iloc[latest]:.3g} "
        f"frames off at {rows['uid'].iloc[latest]!r}'s end ({stop.iloc[latest]:g} s)"
    )
    if fps.nunique() == 1:  # rows without an fps (empty cells) say nothing of theirs
        fix = f"give the manifest's rate, --feature-rate {fps.dropna().iloc[0]:.10g}"
    else:
        fix = _one_rate_fix(table, feature_rate, annotations)
    raise ConfigError(
        f"{annotations}: {len(rows)} rows ({where + ', ' if where else ''}e.g. "
        f"{rows['uid'].iloc[0]!r}) count seconds at {rates} fps, not --feature-rate "
        f"{feature_rate:g}: TA3N's features are one per frame, so {off}; {fix}"
    )


def _one_rate_fix(table: pd.DataFrame, feature_rate: float, annotations) -> str:
    """How to give a manifest whose rows count seconds at one rate: `avda manifest build`'s
    frame-rate options of its builder where its ``.build.json`` names one with such options
    (``ucf-hmdb``'s ``{domain}_fps`` of the manifest's domains, ``epic55-mmsada``'s ``fps``),
    else in general."""
    from avda.data_manifests.benchmarks import read_build_info

    try:
        info = read_build_info(annotations) or {}
    except ManifestError:  # an unreadable record names no builder
        info = {}
    options = [k for k in info.get("options") or {} if k == "fps" or str(k).endswith("_fps")]
    domains = set(table["domain"].astype(str)) if "domain" in table else set()
    named = [k for k in options if k.removesuffix("_fps") in domains] or options
    if info.get("benchmark") and named:
        given = " ".join(f"--option {k}={feature_rate:.10g}" for k in named)
        return (
            f"rebuild it with one rate for every dataset (avda manifest build "
            f"{info['benchmark']} {given}, its other options as before)"
        )
    return (
        "give a manifest whose rows all count seconds at the rate of the features' frames "
        "(one value in its fps column), and that rate as --feature-rate"
    )


def tsn_rows(count: int, num_clips: int) -> np.ndarray:
    """TSN's ``_get_test_indices`` (0-based) for ``count`` rows and ``num_clips`` snippets, as
    TA3N's ``dataset.py`` takes them: ``int(tick / 2 + tick * k)``, ``tick = count / K``; fewer
    rows than snippets: every row, then the last repeated."""
    if count >= num_clips:
        tick = count / float(num_clips)
        return np.array([int(tick / 2.0 + tick * k) for k in range(num_clips)], dtype=np.int64)
    return np.array(list(range(count)) + [count - 1] * (num_clips - count), dtype=np.int64)


def _clip_rows(
    segments: pd.DataFrame,
    i: int,
    count: int,
    feature_rate: float,
    num_clips: int,
    placement: NpyPlacement,
    what: str,
) -> np.ndarray | str:
    """The K rows (0-based) segment ``i`` takes of its video's ``count`` rows, or why it
    cannot (it starts after the rows end or lies more than half past them, which ``what``
    names), as extraction fails a segment past its video."""
    from avda.data_manifests import schema as manifest_schema

    start, stop = float(segments.at[i, "start_sec"]), float(segments.at[i, "stop_sec"])
    why = manifest_schema.outside_video(start, stop, count / feature_rate, what)
    if why is not None:
        return f"{why} ({count} rows at --feature-rate {feature_rate:g})"
    if placement == "tsn":
        first = int(round(start * feature_rate))
        index = first + tsn_rows(max(1, int(round((stop - start) * feature_rate))), num_clips)
    else:
        times = start + (np.arange(num_clips) + 0.5) * (stop - start) / num_clips
        index = np.round(times * feature_rate - 0.5).astype(int)
    return np.clip(index, 0, count - 1)


def _sample_videos(
    folder: Path,
    fmt: str,
    videos: Mapping[str, Any],
    open_video,
    segments: pd.DataFrame,
    feature_rate: float,
    num_clips: int,
    placement: NpyPlacement = "nearest",
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(n, K, D) features of ``segments`` from their videos' rows (``open_video(videos[id])``,
    a ``(T, D)`` array); statuses and errors (MISSING for a video without features; FAILED
    for a segment that starts after the video's rows end or lies more than half past them,
    as extraction fails one past its video)."""
    features: np.ndarray | None = None  # (n, K, D) once a video told D
    statuses = np.full(len(segments), int(Status.DONE))
    errors = [""] * len(segments)
    for video_id, positions in segments.groupby("video_id", sort=False).groups.items():
        name = f"{video_id}.npy" if fmt == "npy" else f"{video_id}/img_*.t7"
        found = videos.get(str(video_id))
        if found is None:
            for i in positions:
                statuses[i], errors[i] = int(Status.MISSING), f"no {name} in {folder}"
            continue
        values = open_video(found)  # (T, D)
        taken: dict[int, np.ndarray] = {}  # the video's segments' (K, D) rows
        for i in positions:
            index = _clip_rows(
                segments, i, len(values), feature_rate, num_clips, placement, f"{name}'s features"
            )
            if isinstance(index, str):  # its clips would all be the last row (a wrong rate?)
                statuses[i], errors[i] = int(Status.FAILED), index
                continue
            taken[i] = values[index]
        # checked after the reads: TA3N frames tell their size when read (a .npy its header)
        if features is None:  # one (n, K, D) array: the rows go in video by video
            features = np.zeros((len(segments), num_clips, values.shape[1]), dtype=np.float32)
        if values.shape[1] != features.shape[2]:
            path = found if fmt == "npy" else folder / str(video_id)
            raise CacheError(f"{path} has shape {values.shape}; expected (T, {features.shape[2]})")
        for i, rows in taken.items():
            features[i] = rows
    if features is None:  # no segment's video has features: the first video's D
        D = open_video(next(iter(videos.values()))).shape[1]
        features = np.zeros((len(segments), num_clips, D), dtype=np.float32)
    return features, statuses, errors


# --------------------------------------------------------------------------- export
def export_h5(
    store_path: str | Path,
    out: str | Path,
    *,
    modalities: Sequence[str] | None = None,
    compression: str | None = "gzip",
) -> Path:
    """Write the store as HDF5, chunk by chunk (memory stays at one chunk per array).

    Layout: ``segments/<column>``, ``features/<modality>`` ``(N, K, D)`` float16 chunked like
    the store, ``status/<modality>``, ``errors/<modality>``, ``spatial/<modality>`` when present;
    root attributes ``format = "avda-h5"``, ``format_version``, ``avda_cache`` (provenance JSON).
    """
    import h5py

    with store_lock(store_path, what=EXPORT_LOCK, reads=True):
        store = open_cache(store_path)
        out = Path(out)
        chosen = list(modalities) if modalities else store.modalities
        for modality in chosen:
            store.modality_info(modality)

        def write(temporary: Path) -> None:
            with h5py.File(temporary, "w") as handle:
                _write_h5(handle, store, chosen, compression)

        atomic_write(out, write, temporary=_export_target(out))
    return out


def _write_h5(handle, store: FeatureCache, chosen: list[str], compression: str | None) -> None:
    import h5py

    N, step = store.num_segments, store.chunk_rows
    handle.attrs["format"] = H5_FORMAT
    handle.attrs["format_version"] = H5_FORMAT_VERSION
    handle.attrs[schema.ROOT_ATTRIBUTE] = json.dumps(store.provenance)
    segments = store.segments
    group = handle.create_group(schema.SEGMENTS_GROUP)
    for name, kind in schema.SEGMENT_COLUMNS.items():
        if name not in segments.columns:
            continue
        column = segments[name]
        if kind == "str":
            values = column.fillna("").astype(str).to_numpy(dtype=object)
            group.create_dataset(name, data=values, dtype=h5py.string_dtype())
        elif kind == "int":
            group.create_dataset(name, data=column.fillna(schema.MISSING_CLASS).astype("int64"))
        else:
            group.create_dataset(name, data=column.astype("float64").to_numpy())
    for modality in chosen:
        # Status before features: shards (which may write while an export reads) write a
        # row's features before its status, so a row read as done has its features.
        status = store.status_array(modality)
        _copy_chunked(handle, schema.STATUS_GROUP, modality, status, N, step, None)
        errors = handle.require_group(schema.ERRORS_GROUP).create_dataset(
            modality, shape=(N,), dtype=h5py.string_dtype()
        )
        source = store.errors_array(modality)
        for start in range(0, N, step):
            stop = min(start + step, N)
            errors[start:stop] = np.asarray(source[start:stop].tolist(), dtype=object)
        features = store.features(modality)
        _copy_chunked(handle, schema.FEATURES_GROUP, modality, features, N, step, compression)
        if store.has_spatial(modality):
            _copy_chunked(
                handle,
                schema.SPATIAL_GROUP,
                modality,
                store.spatial(modality),
                N,
                store.spatial_chunk_rows(modality),
                compression,
            )


def _copy_chunked(
    handle, group: str, name: str, array, N: int, step: int, compression: str | None
) -> None:
    """Copy the first ``N`` (committed) rows of ``array`` ``step`` rows at a time."""
    shape = (N, *array.shape[1:])
    chunks = (max(1, min(step, N)), *array.shape[1:]) if N else None
    dataset = handle.require_group(group).create_dataset(
        name, shape=shape, dtype=array.dtype, chunks=chunks, compression=compression
    )
    for start in range(0, N, step):
        stop = min(start + step, N)
        dataset[start:stop] = array[start:stop]


def export_epic_pickle(
    store_path: str | Path,
    out: str | Path,
    *,
    domain: str | None = None,
    split: str | None = None,
    modalities: list[str] | None = None,
) -> Path:
    """The TA3N feature pickle ``{'features': {'RGB', 'Flow', 'Audio'}: [n, K, D],
    'narration_ids': [...]}`` of the rows of ``domain`` / ``split`` (all when None) and of
    ``modalities`` (all when None).

    Pickle holds everything in memory: export one split at a time.
    """
    with store_lock(store_path, what=EXPORT_LOCK, reads=True):
        store = open_cache(store_path)
        chosen = _chosen_modalities(store, modalities)
        return _export_epic_pickle(store, Path(out), domain, split, chosen)


def _chosen_modalities(store: FeatureCache, modalities: list[str] | None) -> list[str]:
    if modalities is None:
        return list(store.modalities)
    unknown = [m for m in modalities if m not in store.modalities]
    if unknown or not modalities:
        raise CacheError(
            f"{store.path} has no {', '.join(unknown) or 'modality given'}; it has: "
            f"{', '.join(store.modalities)}"
        )
    return list(modalities)


def _refuse_undone_rows(
    store: FeatureCache, rows: np.ndarray, modality: str, modalities: list[str]
) -> None:
    """The TA3N pickle has no status: rows without features would read as features of zeros."""
    status = store.status(modality)[rows]
    undone = status != int(Status.DONE)
    if not undone.any():
        return
    counts = ", ".join(
        f"{s.name.lower()} {int((status == int(s)).sum())}"
        for s in Status
        if s != Status.DONE and (status == int(s)).any()
    )
    uids = ", ".join(store.segments["uid"].iloc[rows[undone][:3]].astype(str))
    others = [m for m in modalities if m != modality]
    leave_out = f"leave it out (--modalities {','.join(others)}), " if others else ""
    if (status[undone] == int(Status.MISSING)).all():  # no input: nothing to retry
        fix = f"their videos have no {modality} input: {leave_out}"
    else:
        fix = f"finish them with `avda extract --retry-failed`, {leave_out}"
    raise CacheError(
        f"{int(undone.sum())} of the {len(rows)} rows to export have no {modality} features "
        f"({counts}; first uids: {uids}); the TA3N pickle has no status, so they would read "
        f"as features of zeros: {fix}export another domain/split, or use the h5 format (which "
        "keeps the status)"
    )


def _export_epic_pickle(
    store: FeatureCache,
    out: Path,
    domain: str | None,
    split: str | None,
    modalities: list[str],
) -> Path:
    segments = store.segments
    keep = np.ones(len(segments), dtype=bool)
    if domain is not None:
        keep &= (segments["domain"] == domain).to_numpy()
    if split is not None:
        keep &= (segments["split"] == split).to_numpy()
    rows = np.flatnonzero(keep)
    if len(rows) == 0:
        raise CacheError(f"{store.path} has no segments of domain {domain!r}, split {split!r}")
    for modality in modalities:
        _refuse_undone_rows(store, rows, modality, modalities)
    names = {v: k for k, v in RELEASED_MODALITIES.items()}
    features = {
        names.get(m, m): store.load(m, rows)
        for m in sorted(modalities, key=lambda m: list(names).index(m) if m in names else 9)
    }
    data = {"features": features, "narration_ids": segments["uid"].iloc[rows].astype(str).tolist()}

    def write(temporary: Path) -> None:
        with open(temporary, "wb") as handle:
            pickle.dump(data, handle, protocol=4)

    atomic_write(out, write, temporary=_export_target(out))
    return out


def _export_target(out: Path) -> Path:
    """The temporary file an export writes before renaming it to ``out`` (whose folders are
    created here); ``out`` must not be a folder."""
    if out.is_dir():
        raise CacheError(f"export target {out} is a folder; give the path of the file to write")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out.with_name(f".{out.name}.partial")
