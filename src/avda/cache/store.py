"""Create, open, write and read avda feature caches (Zarr v3).

Writers put features first and the per-segment status second, so a reader (or a resumed
extraction) trusts exactly the rows whose status is DONE. Appends (``avda cache import``) write
rows past ``num_segments`` and then commit them with one write of the provenance; readers read
the first ``num_segments`` rows of every array only, so an append in progress (or killed) is
invisible until that commit, and :meth:`FeatureCache.repair` removes its traces.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import glob
import json
import logging
import os
import re
import secrets
import shlex
import shutil
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import zarr

import avda
from avda._io import naming_writes, path_identity
from avda.cache import faults, schema
from avda.cache.schema import Status
from avda.data_manifests.schema import is_class_tables
from avda.errors import CacheError
from avda.paths import check_no_outward_links
from avda.registry import unknown_name_message

log = logging.getLogger(__name__)

# What reading a chunk file cut short raises (numcodecs' zstd: RuntimeError; a wrong size once
# decoded: ValueError)
_DECODE_ERRORS = (RuntimeError, ValueError)

# spatial/<modality>: (N, K, C, *S) maps before pooling, for heads that need them (CIA, the
# faithful Audio-Adaptive encoder); written by `avda extract` with a recipe that has spatial=True.
SPATIAL_GROUP = schema.SPATIAL_GROUP


class FeatureCache:
    """An opened feature store. Use :func:`create` or :func:`open_cache` to get one."""

    def __init__(self, path: Path, group: zarr.Group) -> None:
        self.path = path
        self._group = group
        self._segments: pd.DataFrame | None = None

    # ----------------------------------------------------------------- metadata
    @property
    def provenance(self) -> dict[str, Any]:
        return dict(self._group.attrs[schema.ROOT_ATTRIBUTE])

    def _set_provenance(self, provenance: dict[str, Any]) -> None:
        with naming_writes(self.path, "its provenance (zarr.json)"):
            self._group.attrs[schema.ROOT_ATTRIBUTE] = provenance

    @property
    def num_segments(self) -> int:
        return int(self.provenance["num_segments"])

    @property
    def chunk_rows(self) -> int:
        return int(self.provenance["chunk_rows"])

    @property
    def modalities(self) -> list[str]:
        return sorted(self.provenance["modalities"])

    def modality_info(self, modality: str) -> dict[str, Any]:
        infos = self.provenance["modalities"]
        if modality in infos:
            return dict(infos[modality])
        known = ", ".join(sorted(infos)) or "none"
        if modality not in EXTRACTED_MODALITIES:  # a typo: `avda cluster --modality rgbb`
            import difflib

            meant = difflib.get_close_matches(modality, sorted(EXTRACTED_MODALITIES), n=1)
            if infos and meant and not difflib.get_close_matches(modality, sorted(infos), n=1):
                # `audoi` on a store of rgb: the typo of a modality the store lacks
                raise CacheError(
                    f"unknown modality {modality!r}; did you mean {meant[0]!r}? cache "
                    f"{self.path} has no {meant[0]!r} features (it has: {known}); run `avda "
                    f"extract` with --modalities {meant[0]}"
                )
            # a store of no modality yet: the ones avda extracts (it was told to extract rgbb)
            whose = f"of cache {self.path}" if infos else f"avda extracts; {self.path} has none"
            raise CacheError(
                unknown_name_message("modality", modality, infos or EXTRACTED_MODALITIES)
                + f" (the modalities {whose})"
            )
        raise CacheError(
            f"cache {self.path} has no {modality!r} features (it has: {known}); "
            f"run `avda extract` with --modalities {modality}"
        )

    def finetuning(self, modality: str) -> tuple[dict[str, Any] | None, bool]:
        """The `avda finetune` run that trained ``modality``'s weights, and whether the store
        records it (``finetuned``). A store extracted before it did (2026-12-07) has no such
        entry: the record is then read from beside the weights the store names
        (:func:`finetuning_record`, the file's digest the store's), while it is there.
        ``(None, False)``: weights avda did not fine-tune, or whose record is gone."""
        info = self.modality_info(modality)
        if isinstance(info.get("finetuned"), dict):
            return info["finetuned"], True
        weights, sha256 = info.get("weights"), info.get("weights_sha256")
        if not weights or not sha256:
            return None, False
        return finetuning_record(weights, sha256, current=False), False

    @property
    def segments(self) -> pd.DataFrame:
        """The segment table (the committed ``num_segments`` rows), aligned with the features."""
        if self._segments is None:
            self._segments = self.read_segments(self.num_segments)
        return self._segments

    def read_segments(self, rows: int) -> pd.DataFrame:
        """The first ``rows`` rows of the segment table (past ``num_segments``: an append
        not committed yet, read by that append itself)."""
        group = self._group[schema.SEGMENTS_GROUP]
        columns = {}
        for name, kind in schema.SEGMENT_COLUMNS.items():
            if name not in group:
                continue
            values = group[name][:rows]
            if kind == "str":
                columns[name] = pd.array(values.tolist(), dtype="string")
            elif kind == "int":
                series = pd.Series(values.astype("int64"))
                columns[name] = series.where(series != schema.MISSING_CLASS).astype("Int64")
            else:
                columns[name] = values.astype("float64")
        return pd.DataFrame(columns)

    # ----------------------------------------------------------------- modalities
    def add_modality(
        self,
        modality: str,
        *,
        num_clips: int,
        num_features: int,
        info: dict[str, Any],
        spatial_shape: Sequence[int] | None = None,
        register: bool = True,
        rows: int | None = None,
    ) -> dict[str, Any]:
        """Create the arrays of a new modality (all rows pending); returns its provenance entry.

        ``spatial_shape`` (C, H, W): also create ``spatial/<modality>`` ``(N, K, C, H, W)``,
        chunked by a divisor of ``chunk_rows`` that keeps a chunk under 64 MiB.
        ``register=False`` (an append, which commits the entry with its rows): the arrays are
        made (``rows`` long, default N) but the provenance does not list them yet, so readers
        do not see them and :meth:`repair` removes them if the append never commits.
        """
        N = self.num_segments if rows is None else rows
        chunk = self.chunk_rows  # min(chunk_rows, N) at creation, unless the store grows
        with naming_writes(self.path, f"the new {modality} arrays"):
            if spatial_shape is not None:
                spatial_shape = tuple(int(s) for s in spatial_shape)
                clip_bytes = num_clips * int(np.prod(spatial_shape)) * 2
                rows = _divisor_rows(chunk, clip_bytes)
                self._group.require_group(schema.SPATIAL_GROUP).create_array(
                    modality,
                    shape=(N, num_clips, *spatial_shape),
                    chunks=(rows, num_clips, *spatial_shape),
                    dtype=schema.SPATIAL_DTYPE,
                    fill_value=0,
                    overwrite=True,
                )
                info = {**info, "spatial_shape": list(spatial_shape)}
            elif self.has_spatial(modality):
                del self._group[schema.SPATIAL_GROUP][modality]  # recomputed without maps
            self._group.require_group(schema.FEATURES_GROUP).create_array(
                modality,
                shape=(N, num_clips, num_features),
                chunks=(chunk, num_clips, num_features),
                dtype=schema.FEATURE_DTYPE,
                fill_value=0,
                overwrite=True,
            )
            self._group.require_group(schema.STATUS_GROUP).create_array(
                modality,
                shape=(N,),
                chunks=(chunk,),
                dtype=schema.STATUS_DTYPE,
                fill_value=0,
                overwrite=True,
            )
            errors = self._group.require_group(schema.ERRORS_GROUP).create_array(
                modality, shape=(N,), chunks=(chunk,), dtype=str, overwrite=True
            )
            errors[:] = np.full(N, "", dtype=object)
        info = features_record(info)  # its rows are pending
        entry = {"num_clips": num_clips, "num_features": num_features, **info}
        if register:
            provenance = self.provenance
            provenance["modalities"] = {**provenance["modalities"], modality: entry}
            self._set_provenance(provenance)
        return entry

    def update_modality_info(self, modality: str, **fields: Any) -> None:
        """Add or change provenance fields of an existing modality."""
        provenance = self.provenance
        entry = {**self.modality_info(modality), **fields}
        provenance["modalities"] = {**provenance["modalities"], modality: entry}
        self._set_provenance(provenance)

    def finished_rows(self, modality: str) -> int:
        """How many first rows of ``modality`` an extraction finished (none pending), as it
        recorded when it had; 0 where none did (not yet, or a store made before the record:
        docs/cache_schema.md). ``verify`` reports a pending row among them as lost."""
        value = self.modality_info(modality).get(FINISHED_ROWS)
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    def record_finished(self, modality: str) -> bool:
        """Record ``finished_rows`` = N when no row of ``modality`` is pending (the writer holds
        the store's lock exclusively, or a shard the creation lock); whether it is recorded."""
        status = self.status(modality)
        if np.any(status == Status.PENDING):
            return False
        if self.finished_rows(modality) != len(status):
            self.update_modality_info(modality, **{FINISHED_ROWS: len(status)})
        return True

    def status(self, modality: str) -> np.ndarray:
        self.modality_info(modality)
        array = self._group[schema.STATUS_GROUP][modality]
        try:
            return array[: self.num_segments]
        except _DECODE_ERRORS as exc:
            self._refuse_damaged(array, modality, exc)
            raise

    def status_array(self, modality: str) -> zarr.Array:
        """The lazily read ``status/<modality>`` array (N,) int8."""
        self.modality_info(modality)
        return self._group[schema.STATUS_GROUP][modality]

    def errors_array(self, modality: str) -> zarr.Array:
        """The lazily read ``errors/<modality>`` array (N,) of strings."""
        self.modality_info(modality)
        return self._group[schema.ERRORS_GROUP][modality]

    def errors(self, modality: str) -> np.ndarray:
        array = self._group[schema.ERRORS_GROUP][modality]
        try:
            values = array[: self.num_segments]
        except _DECODE_ERRORS as exc:
            self._refuse_damaged(array, modality, exc)
            raise
        return np.array(values.tolist(), dtype=object)

    def _refuse_damaged(self, array: zarr.Array, modality: str, exc: Exception) -> None:
        """Raise one CacheError naming the first chunk file of ``array`` that cannot be decoded
        (``exc`` came from reading it) and how to recompute its rows; return when every chunk
        reads (``exc`` was something else). avda writes chunk files whole (write, then rename),
        so a damaged one was cut short or changed outside avda: a copy that was interrupted."""
        step = int(array.chunks[0])
        for chunk in range(-(-self.num_segments // step)):
            lo, hi = chunk * step, min((chunk + 1) * step, self.num_segments)
            try:
                array[lo:hi]
            except _DECODE_ERRORS:
                raise CacheError(
                    f"cache {self.path}: "
                    + damaged_chunk_message(
                        array,
                        chunk,
                        lo,
                        hi,
                        exc,
                        self.chunk_rows,
                        self._import_fix(modality, lo, hi),
                    )
                ) from None

    def verify(self, *, progress: bool = False) -> pd.DataFrame:
        """Read every chunk of every array once (chunk by chunk) and list what is wrong: chunk
        files that cannot be decoded, absent chunk files of done rows (zarr reads them as
        zeros) or absent status chunk files of written rows (read as pending), done rows
        holding NaN/inf, status values outside :class:`Status`, arrays shorter than
        ``num_segments``. Rows an import brought get the import as their fix
        (:meth:`_import_fix`).

        One row per problem: ``kind`` (damaged, missing, nonfinite, status, shape), ``array``
        (``features/rgb``), ``file`` (the chunk file under the store, "" for a whole array),
        ``rows`` (the row numbers concerned), ``message`` (one line with the fix); empty when
        the store is sound. ``attrs``: ``arrays`` and ``chunks``, how many were read;
        ``notes``, lines on what a killed import left (rows past ``num_segments``, arrays of a
        modality the provenance does not list), which readers ignore: no problem.
        ``progress``: a tqdm bar of chunks read on stderr
        (``avda cache verify``).
        """
        from avda.cache.verify import verify_store

        return verify_store(self, progress=progress)

    def failures(self) -> pd.DataFrame:
        """One row per failed (segment, modality): uid, video_id, modality, error."""
        return self._rows_of(Status.FAILED)

    def missing(self) -> pd.DataFrame:
        """One row per (segment, modality) without input (a video without an audio track, a
        missing frame folder; stored as zeros): uid, video_id, modality, error (the reason)."""
        return self._rows_of(Status.MISSING)

    def _rows_of(self, status: Status) -> pd.DataFrame:
        frames = []
        for modality in self.modalities:
            rows = np.flatnonzero(self.status(modality) == status)
            if len(rows):
                seg = self.segments.iloc[rows]
                frames.append(
                    pd.DataFrame(
                        {
                            "uid": seg["uid"].to_numpy(),
                            "video_id": seg["video_id"].to_numpy(),
                            "modality": modality,
                            "error": self.errors(modality)[rows],
                        }
                    )
                )
        if not frames:
            return pd.DataFrame(columns=["uid", "video_id", "modality", "error"])
        return pd.concat(frames, ignore_index=True)

    # ----------------------------------------------------------------- writing
    def write(
        self,
        modality: str,
        rows: np.ndarray,
        features: np.ndarray,
        statuses: np.ndarray,
        errors: Sequence[str],
    ) -> None:
        """Write a contiguous block of rows: features first, then errors, then status.

        A DONE row whose features are not finite once cast to the stored float16 (NaN, inf, or
        beyond ±65504) is written FAILED instead, with zero features and the reason as error.
        """
        rows = np.asarray(rows)
        if len(rows) == 0:
            return
        start, stop = int(rows[0]), int(rows[-1]) + 1
        if stop - start != len(rows) or np.any(np.diff(rows) != 1):
            raise CacheError(f"internal: rows to write must be contiguous, got {rows[:5]}...")
        features = np.asarray(features)
        with np.errstate(over="ignore"):  # float16 overflow to inf: caught just below
            stored = features.astype(schema.FEATURE_DTYPE)
        statuses = np.array(statuses, dtype=schema.STATUS_DTYPE)  # a copy: failed rows change
        errors = list(errors)
        bad = (statuses == Status.DONE) & ~_finite_rows(stored)
        if bad.any():
            hint = self._nonfinite_hint(modality)
            for i in np.flatnonzero(bad):
                errors[i] = nonfinite_error("features", features[i], stored[i], hint)
                segments = self.segments
                uid = segments["uid"].iloc[start + i] if start + i < len(segments) else start + i
                log.warning("segment %s (%s): %s", uid, modality, errors[i])
            stored[bad] = 0
            statuses[bad] = Status.FAILED
        with naming_writes(self.path, f"the {modality} features of rows {start}-{stop - 1}"):
            self._group[schema.FEATURES_GROUP][modality][start:stop] = stored
            errors = np.asarray(errors, dtype=object)
            self._group[schema.ERRORS_GROUP][modality][start:stop] = errors
            self._group[schema.STATUS_GROUP][modality][start:stop] = statuses

    def _import_fix(self, modality: str, lo: int = 0, hi: int | None = None) -> str | None:
        """How to get back rows ``lo``..``hi - 1`` of ``modality`` when they came from
        ``avda cache import`` (None: they were extracted, and the same ``avda extract``
        recomputes them). An import is not repeated into the store that holds it (same sha256:
        "already imported"), so the fix imports again into a new store: the command of each
        recorded import those rows came from, and how many other imports the store records."""
        provenance = self.provenance
        entry = provenance["modalities"].get(modality) or {}
        given = entry.get("input") or {}
        hi = self.num_segments if hi is None else hi
        imports = [e for e in provenance.get("imports", []) if isinstance(e, dict)]
        covering = []
        for record in imports:
            start, stop = (list(record.get("rows") or [0, 0]) + [0, 0])[:2]
            if not (start < hi and lo < stop):
                continue
            # a fill brought one modality (its entry names the file) to rows extracted before
            if record.get("fill") and Path(str(record.get("file"))).name != given.get("file"):
                continue
            covering.append(record)
        if not covering and given.get("source") != "import":
            return None
        if covering:
            commands = [_import_command(record, modality, entry) for record in covering[:3]]
            if len(covering) > 3:
                commands.append(f"{len(covering) - 3} more")
        else:  # the modality records its file's name only
            record = {"file": given.get("file", "FILE"), "format": given.get("format")}
            commands = [_import_command(record, modality, entry)]
        rest = (
            f" (to re-create the whole store: its {len(imports)} files, in the order `imports` "
            "in its zarr.json lists them)"
            if len(imports) > len(covering)
            else ""
        )
        rows = f"rows {lo}-{hi - 1}" if hi - lo > 1 else f"row {lo}"
        return (
            f"import what {rows} of {modality} came from into a new store (-o NEW.zarr; "
            "`avda cache import` does not import a file again into the store that holds it), "
            f"with the annotations used then: {' and '.join(commands)}{rest}"
        )

    def _nonfinite_hint(self, modality: str) -> str:
        """How to fix non-finite rows of ``modality``: re-extract, or (imported) re-import."""
        entry = self.provenance["modalities"].get(modality) or {"input": {"source": "import"}}
        source = (entry.get("input") or {}).get("source")
        if source == "import":
            return NONFINITE_IMPORT_HINT
        return NONFINITE_EXTRACT_HINT

    def nonfinite_rows(
        self, modality: str, rows: np.ndarray | None = None, *, spatial: bool = False
    ) -> np.ndarray:
        """DONE rows (of ``rows``, all if None) whose features (``spatial``: maps) are NaN/inf.

        Reads the array chunk by chunk (one pass over the modality's stored values).
        """
        array = self.spatial(modality) if spatial else self.features(modality)
        status = self.status(modality)
        candidates = np.arange(len(status)) if rows is None else np.unique(np.asarray(rows))
        candidates = candidates[status[candidates] == Status.DONE]
        step = int(array.chunks[0])
        found = []
        for chunk in np.unique(candidates // step):
            lo = int(chunk) * step
            block = array[lo : min(lo + step, array.shape[0])]
            wanted = candidates[(candidates >= lo) & (candidates < lo + step)]
            found.append(wanted[~_finite_rows(block[wanted - lo])])
        return np.concatenate(found) if found else np.zeros(0, dtype=np.int64)

    def mark_nonfinite(self, modality: str, rows: np.ndarray | None = None) -> np.ndarray:
        """Mark DONE rows whose features or spatial maps are NaN/inf FAILED (a cache written
        before avda refused them); returns those rows. ``avda extract --retry-failed`` calls
        this on the rows it owns, then recomputes them."""
        bad = self.nonfinite_rows(modality, rows)
        if self.has_spatial(modality):
            bad = np.union1d(bad, self.nonfinite_rows(modality, rows, spatial=True))
        if len(bad) == 0:
            return bad
        message = (
            "non-finite features or maps (NaN/inf) found in the store (written by an older avda "
            f"or imported); {self._nonfinite_hint(modality)}"
        )
        uids = self.segments["uid"].iloc[bad[:5]].tolist()
        log.warning(
            "%s: %d done %s rows hold NaN/inf (first uids %s): marked failed",
            *(self.path, len(bad), modality, ", ".join(uids)),
        )
        with naming_writes(self.path, f"the {modality} rows marked failed"):
            for run in _contiguous(bad):
                start, stop = int(run[0]), int(run[-1]) + 1
                self._group[schema.STATUS_GROUP][modality][start:stop] = int(Status.FAILED)
                self._group[schema.ERRORS_GROUP][modality][start:stop] = np.full(
                    len(run), message, dtype=object
                )
                self._group[schema.FEATURES_GROUP][modality][start:stop] = 0
                if self.has_spatial(modality):
                    self.spatial(modality)[start:stop] = 0
        return bad

    def write_spatial(self, modality: str, rows: np.ndarray, maps: np.ndarray) -> None:
        """Write spatial maps ``(n, K, C, H, W)`` of a contiguous block of rows (before the
        rows' status, like features)."""
        rows = np.asarray(rows)
        if len(rows) == 0:
            return
        start, stop = int(rows[0]), int(rows[-1]) + 1
        if stop - start != len(rows):
            raise CacheError(f"internal: rows to write must be contiguous, got {rows[:5]}...")
        with naming_writes(self.path, f"the {modality} spatial maps of rows {start}-{stop - 1}"):
            self.spatial(modality)[start:stop] = maps.astype(schema.SPATIAL_DTYPE)

    def spatial_chunk_rows(self, modality: str) -> int:
        """Rows per chunk of ``spatial/<modality>`` (a divisor of ``chunk_rows``)."""
        return int(self.spatial(modality).chunks[0])

    # ----------------------------------------------------------------- appending
    def arrays(self) -> dict[str, zarr.Array]:
        """Every per-segment array of the store by ``group/name`` (all have N rows)."""
        found: dict[str, zarr.Array] = {}
        for group_name in schema.GROUPS:
            if group_name not in self._group:
                continue
            group = self._group[group_name]
            for name, array in group.arrays():
                found[f"{group_name}/{name}"] = array
        return found

    def repair(self) -> None:
        """Remove the traces of an append that never committed (a killed ``avda cache import``):
        arrays of modalities the provenance does not list, and rows past ``num_segments``.

        Only a writer holding the store's exclusive lock (:mod:`avda.cache.lock`) calls this.
        """
        known = set(self.provenance["modalities"])
        for group_name in (
            schema.FEATURES_GROUP,
            schema.STATUS_GROUP,
            schema.ERRORS_GROUP,
            schema.SPATIAL_GROUP,
        ):
            if group_name not in self._group:
                continue
            group = self._group[group_name]
            for name in [name for name, _ in group.arrays() if name not in known]:
                log.warning(
                    "%s: removing %s/%s (an import that never committed)",
                    *(self.path, group_name, name),
                )
                del group[name]
        self.repair_length()

    def repair_length(self) -> None:
        """Cut arrays longer than ``num_segments`` back (an append killed before its commit)."""
        N = self.num_segments
        for name, array in self.arrays().items():
            if array.shape[0] != N:
                log.warning(
                    "%s: %s has %d rows, the store %d: truncating",
                    self.path,
                    name,
                    array.shape[0],
                    N,
                )
                array.resize((N, *array.shape[1:]))

    def append_segments(self, segments: pd.DataFrame, *, commit: bool = True) -> np.ndarray:
        """Append segments (all modalities pending); returns their row numbers.

        Every array is resized along N, its chunk shape unchanged: the last, partly filled chunk
        fills up and new chunks follow. ``num_segments`` in the provenance is updated last, so
        it is the commit point: :meth:`repair_length` undoes an append that did not reach it.
        ``commit=False``: leave ``num_segments`` alone (the caller commits it later, together
        with everything else it writes, in one provenance write).
        """
        self.repair_length()
        old = self.num_segments
        new = old + len(segments)
        uids = set(self.segments["uid"].astype(str))
        clash = [u for u in segments["uid"].astype(str) if u in uids]
        if clash:
            raise CacheError(
                f"cache {self.path} already has segments {clash[:5]} "
                f"({len(clash)} in all); appended uids must be new"
            )
        with naming_writes(self.path, f"the appended rows {old}-{new - 1}"):
            seg_group = self._group[schema.SEGMENTS_GROUP]
            for name, kind in schema.SEGMENT_COLUMNS.items():
                present = name in seg_group
                if not present and name not in segments.columns:
                    continue
                if not present:  # a column the store did not have: earlier rows get the fill value
                    dtype = {"str": str, "int": "int64", "float": "float64"}[kind]
                    array = seg_group.create_array(
                        name, shape=(old,), chunks=(self.chunk_rows,), dtype=dtype
                    )
                    array[:] = _segment_values(pd.DataFrame({name: [None] * old}), name, kind)
                array = seg_group[name]
                array.resize((new,))
                source = (
                    segments
                    if name in segments.columns
                    else pd.DataFrame({name: [None] * len(segments)})
                )
                array[old:new] = _segment_values(source, name, kind)
            for name, array in self.arrays().items():
                group_name = name.split("/", 1)[0]
                if group_name == schema.SEGMENTS_GROUP:
                    continue
                array.resize((new, *array.shape[1:]))
                if group_name == schema.ERRORS_GROUP:
                    array[old:new] = np.full(new - old, "", dtype=object)
                elif group_name == schema.CLUSTERS_GROUP:
                    array[old:new] = -1
                else:
                    array[old:new] = 0
        if commit:
            provenance = self.provenance
            provenance["num_segments"] = new
            self._set_provenance(provenance)
        self._segments = None
        return np.arange(old, new)

    def write_clusters(self, modality: str, clusters: np.ndarray, info: dict[str, Any]) -> None:
        """Replace ``clusters/<modality>`` (ids and provenance ``info``) whole or not at all.

        The new array is written in the store's swap folder (:func:`_cluster_swap`'s
        ``new``), then takes the old one's place by two renames (the old one aside, the new one
        in, the old one deleted); a kill before them leaves the previous clusters as they were,
        one between them leaves them whole aside, where :meth:`read_clusters` reads them, the
        next exclusive lock puts them back (:func:`restore_cluster_swaps`) and ``avda cache
        verify`` names them. Until 2026-12-07 the array was recreated in place: a kill midway
        lost the groups written earlier."""
        current = self.path / schema.CLUSTERS_GROUP / modality
        new, aside = _cluster_swap(self, modality)
        shutil.rmtree(new, ignore_errors=True)
        try:
            with naming_writes(self.path, f"the {modality} clusters"):
                array = zarr.create_array(
                    str(new),
                    shape=(self.num_segments,),
                    chunks=(min(self.chunk_rows, max(self.num_segments, 1)),),
                    dtype=schema.CLUSTER_DTYPE,
                    fill_value=-1,
                    zarr_format=3,
                )
                array[:] = clusters.astype(schema.CLUSTER_DTYPE)
                array.attrs[schema.CLUSTERS_ATTRIBUTE] = info
                self._group.require_group(schema.CLUSTERS_GROUP)
                faults.checkpoint("clusters-written")
        except BaseException:
            shutil.rmtree(new, ignore_errors=True)
            raise
        if current.exists():
            shutil.rmtree(aside, ignore_errors=True)
            os.replace(current, aside)
            faults.checkpoint("clusters-aside")
        os.replace(new, current)
        shutil.rmtree(aside, ignore_errors=True)
        with contextlib.suppress(OSError):  # a store without a swap under way has no folder
            new.parent.rmdir()

    # ----------------------------------------------------------------- reading
    def features(self, modality: str) -> zarr.Array:
        """The lazily read Zarr array ``(N, K, D)`` of ``modality``."""
        self.modality_info(modality)
        return self._group[schema.FEATURES_GROUP][modality]

    def load(
        self,
        modality: str,
        rows: np.ndarray | None = None,
        clips: np.ndarray | None = None,
        *,
        check_finite: bool = True,
        dtype: np.dtype | str | None = np.float32,
    ) -> np.ndarray:
        """Features of ``rows`` (all rows if None; row numbers or a boolean mask over the
        segments) in memory as ``(n, K, D)`` float32, or ``dtype``; ``clips`` keeps only those
        clips (selected before the conversion).

        ``check_finite``: raise :class:`CacheError` when a loaded value is NaN/inf (a store
        written before avda refused them, or edited), naming the rows and the fix.
        ``dtype``: the in-memory dtype; ``None`` keeps the stored one (float16: half the
        memory, and exactly the float32 values once converted).
        """
        rows = self._rows(rows)
        array = self.features(modality)
        try:
            values = _read_rows(array, rows, clips, self.num_segments, dtype)
        except _DECODE_ERRORS as exc:
            self._refuse_damaged(array, modality, exc)
            raise
        if check_finite:
            self._refuse_nonfinite(modality, values, rows, spatial=False)
        return values

    def _rows(self, rows: Any) -> np.ndarray | None:
        """``rows`` as row numbers: a boolean mask over the segments (``segments["domain"] ==
        "D1"``) becomes the rows it selects; numbers outside ``[0, N)`` are refused (a mask
        was read as rows 0 and 1, and a row past the end as no row, silently)."""
        if rows is None:
            return None
        rows = np.asarray(rows)
        if rows.dtype == bool:
            if rows.shape != (self.num_segments,):
                raise CacheError(
                    f"cache {self.path}: a boolean mask of rows needs one value per segment "
                    f"({self.num_segments}), got shape {list(rows.shape)}"
                )
            return np.flatnonzero(rows)
        if rows.size == 0:
            return rows.astype(np.int64).reshape(0)
        if rows.ndim != 1 or not np.issubdtype(rows.dtype, np.integer):
            raise CacheError(
                f"cache {self.path}: rows must be row numbers (a 1-d integer array) or a "
                f"boolean mask, got {rows.dtype} of shape {list(rows.shape)}"
            )
        outside = (rows < 0) | (rows >= self.num_segments)
        if outside.any():
            raise CacheError(
                f"cache {self.path}: row {int(rows[outside][0])} is outside its "
                f"{self.num_segments} segments (rows are 0..{self.num_segments - 1})"
            )
        return rows

    def _refuse_nonfinite(
        self, modality: str, values: np.ndarray, rows: np.ndarray | None, *, spatial: bool
    ) -> None:
        if _all_finite(values):
            return
        bad = self.nonfinite_rows(modality, spatial=spatial)  # every such row of the store
        if len(bad) == 0:  # not DONE rows (they should hold zeros): name the loaded ones
            loaded = np.arange(len(values)) if rows is None else np.asarray(rows)
            bad = loaded[~_finite_rows(values)]
        what = "spatial maps" if spatial else "features"
        uids = ", ".join(self.segments["uid"].iloc[bad[:3]].astype(str))
        hint = self._nonfinite_hint(modality)
        if hint == NONFINITE_EXTRACT_HINT:
            hint = (
                f"re-extract them with {RETRY_FAILED_COMMAND}, which marks such rows failed "
                "and recomputes them"
            )
        raise CacheError(
            f"cache {self.path}: {len(bad)} rows of {modality} hold non-finite {what} "
            f"(NaN/inf; first uids: {uids}), written by an older avda or imported; {hint}"
        )

    def to_dask(self, modality: str):
        """A dask array over the Zarr chunks, for caches larger than memory."""
        import dask.array as da

        return da.from_zarr(self.features(modality))[: self.num_segments]

    # ----------------------------------------------------------------- derived arrays (read)
    def read_clusters(self, modality: str) -> tuple[np.ndarray, dict[str, Any]] | None:
        """Cluster ids ``(N,)`` (-1 where none) and their provenance, or None if never clustered.

        Written by ``avda cluster`` (:func:`avda.train.clustering.cluster_store`), which
        swaps a new array in by two renames (:meth:`write_clusters`) while readers, holding
        no lock, may read: a read is kept only where the folder it read is still the one in
        place afterwards (else read again), as Zarr reads a chunk whose file has gone as -1
        (it read old and new chunks mixed, or -1s, and the old provenance with the new ids).
        Between the renames (a kill there) the previous array put aside is read.
        """
        current = self.path / schema.CLUSTERS_GROUP / modality
        asides = (_cluster_swap(self, modality)[1], _legacy_aside(self, modality))
        for _ in range(200):
            where = next((p for p in (current, *asides) if p.is_dir()), current)
            before = path_identity(where)
            if before is None:
                if current.is_dir():  # swapped in meanwhile
                    continue
                return None
            try:
                array = zarr.open_array(str(where), mode="r")
                ids = array[: self.num_segments].astype(np.int64)
                info = dict(array.attrs.get(schema.CLUSTERS_ATTRIBUTE, {}))
                failed = None
            except (OSError, ValueError, KeyError) as exc:
                failed = exc
            kept = path_identity(where) == before and (where == current or not current.is_dir())
            if kept:
                if failed is not None:  # not a swap: the array itself cannot be read
                    raise failed
                return ids, info
            time.sleep(0.01)  # renamed meanwhile: read again
        raise CacheError(
            f"{current}: its clusters were replaced throughout 200 reads (an `avda cluster` "
            "looping on this store?); run this again when it has finished"
        )

    def has_spatial(self, modality: str) -> bool:
        """Whether spatial maps ``spatial/<modality>`` (N, K, C, *S) are stored."""
        return SPATIAL_GROUP in self._group and modality in self._group[SPATIAL_GROUP]

    def spatial(self, modality: str) -> zarr.Array:
        """The lazily read spatial maps ``(N, K, C, *S)`` of ``modality`` (e.g. C x 7 x 7)."""
        if not self.has_spatial(modality):
            raise CacheError(
                f"cache {self.path} has no spatial maps for {modality!r} "
                f"({SPATIAL_GROUP}/{modality}); extract them with a spatial recipe "
                "(`avda extract --recipe cia`), "
                "or use the head's pooled-feature mode"
            )
        return self._group[SPATIAL_GROUP][modality]

    def load_spatial(
        self,
        modality: str,
        rows: np.ndarray | None = None,
        *,
        dtype: np.dtype | str | None = np.float32,
    ) -> np.ndarray:
        """Spatial maps of ``rows`` (all if None) in memory as float32 ``(n, K, C, *S)``, or
        ``dtype`` (None: the stored float16); NaN/inf raise :class:`CacheError` like
        :meth:`load`."""
        rows = self._rows(rows)
        maps = _read_rows(self.spatial(modality), rows, None, self.num_segments, dtype)
        self._refuse_nonfinite(modality, maps, rows, spatial=True)
        return maps

    def summary(self) -> str:
        """A human-readable description (``avda cache info``)."""
        prov = self.provenance
        seg = self.segments
        lines = [
            f"cache      {self.path}",
            f"schema     v{prov['schema_version']} (avda {prov['avda_version']}, "
            f"created {prov['created']})",
            f"segments   {len(seg)} (chunk rows {prov['chunk_rows']})",
            f"manifest   sha256 {prov['manifest_sha256'][:16]}...",
            f"recipe     {json.dumps(prov.get('recipe', {}), sort_keys=True)}",
        ]
        for task, names in sorted((prov.get("classes") or {}).items()):
            shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
            lines.append(f"classes    {task}: {len(names)} ({shown})")
        counts = seg.groupby(["domain", "split"]).size()
        for (domain, split), count in counts.items():
            lines.append(f"  {domain:>12} / {split:<5} {count}")
        for modality in self.modalities:
            info = self.modality_info(modality)
            status = self.status(modality)
            state = ", ".join(
                f"{s.name.lower()} {int(np.sum(status == s))}"
                for s in Status
                if np.any(status == s)
            )
            failed = np.flatnonzero(status == Status.FAILED)
            if len(failed):
                errors = self.errors(modality)[failed]
                nonfinite = sum(str(e).startswith(NONFINITE_PREFIX) for e in errors)
                if nonfinite:
                    state += f" ({nonfinite} of them NaN/inf)"
            weights = info.get("weights") or "random init"
            tuned, recorded = self.finetuning(modality)
            if tuned is not None:
                weights += f" (fine-tuned on {','.join(map(str, tuned.get('source') or []))}"
                weights += ")" if recorded else f"; not recorded here: from {tuned['record']})"
            source = info.get("input") or {}
            if source.get("source") == "import":
                weights = f"imported ({source.get('format')})"
            precision = f" {info['precision']}" if info.get("precision") else ""
            read = ""  # videos (or imports, named by weights) say nothing more
            if source.get("source") in ("frames", "flow-frames", "audio-files"):
                read = f" from {source['source']}"
                read += f" (jpeg_dct {source['jpeg_dct']})" if source.get("jpeg_dct") else ""
            lines.append(
                f"{modality:<6} {info['backbone']} K={info['num_clips']} D={info['num_features']} "
                f"weights={weights}{precision}{read}: {state}"
            )
        return "\n".join(lines)


# What `avda extract --modalities` makes (an import may add others, named after its keys).
EXTRACTED_MODALITIES = ("rgb", "flow", "audio")
# Modality-entry key: the first rows an extraction finished (FeatureCache.finished_rows).
FINISHED_ROWS = "finished_rows"


def features_record(info: Mapping[str, Any]) -> dict[str, Any]:
    """A modality's provenance entry as the record of how its features were made: without the
    store's extraction bookkeeping (``finished_rows``, a count of the store's own rows), in which
    a cache of other segments made the same way differs (``avda predict`` refused one, naming
    ``finished_rows: run 60, cache 13``; a run's resume refused its cache once an extraction
    recorded it)."""
    return {k: v for k, v in info.items() if k != FINISHED_ROWS}


def store_identity(provenance: Mapping[str, Any]) -> str:
    """A store's identity from its provenance: its ``cache_id`` (written once when it was
    made, kept by a copy or a move), or for a store made before it had one, its creation
    time (``created ...``)."""
    ident = provenance.get("cache_id")
    return str(ident) if ident else f"created {provenance.get('created')}"


def comparable_record(info: Mapping[str, Any]) -> dict[str, Any]:
    """A modality's record as extraction's resume compares it (:func:`features_record`): the
    weights by their checksum (the same file fetched to another folder is the same weights),
    a record from before the input sources were recorded read from videos."""
    record = {"input": {"source": "video"}, **features_record(info)}
    if record.get("weights_sha256"):
        record.pop("weights", None)
    return record


# Fields `avda extract` adds to a modality's record of features it keeps, not recomputes, in a
# store made before avda recorded them (the precision where none was named, the video
# timestamps it checked): a record made without them holds nothing to compare them with.
RECORDED_LATER = ("precision", "video_timestamps")


def as_recorded(record: Mapping[str, Any], recorded: Mapping[str, Any]) -> dict[str, Any]:
    """``record`` without the :data:`RECORDED_LATER` fields ``recorded`` (the same modality's
    record, made before) lacks: what to compare with ``recorded``."""
    return {k: v for k, v in record.items() if k in recorded or k not in RECORDED_LATER}


# Start of the error message of a row refused for NaN/inf values (see nonfinite_error).
NONFINITE_PREFIX = "non-finite "
# Stored as the failed rows' error, read by command-line and Python users alike: both names.
NONFINITE_EXTRACT_HINT = (
    "check the weights / input, then extract again retrying failed rows (`avda extract "
    "--retry-failed`; Python: avda.extract(..., retry_failed=True))"
)
NONFINITE_IMPORT_HINT = "fix the imported file and import it into a new store"
# The commands that recompute rows, in the store's messages (verify's fixes, a read's refusal)
# that command-line and Python users alike read: both names, as NONFINITE_EXTRACT_HINT.
RETRY_FAILED_COMMAND = (
    "the same `avda extract --retry-failed` (Python: avda.extract(..., retry_failed=True))"
)
FORCE_COMMAND = "`avda extract --force` (Python: avda.extract(..., force=True))"


def nonfinite_error(what: str, values: np.ndarray, stored: np.ndarray, hint: str) -> str:
    """Why one row (``(K, ...)`` as computed, and as ``stored`` in float16) is refused."""
    num_clips = len(stored)
    finite = np.isfinite(stored.reshape(num_clips, -1))
    clips = int(np.sum(~finite.all(axis=1)))
    overflow = bool(
        np.any(np.isfinite(np.asarray(values, dtype=np.float64)) & ~np.isfinite(stored))
    )
    cause = (
        "values beyond ±65504 overflow float16 (the backbone's output is not unit scale)"
        if overflow
        else "the backbone or input produced NaN/inf"
    )
    return f"{NONFINITE_PREFIX}{what} (NaN/inf) in {clips} of {num_clips} clips; {cause}: {hint}"


def chunk_file(array: zarr.Array, chunk: int) -> str:
    """The file (under the store) of row-chunk ``chunk`` of a row-chunked ``array``."""
    return "/".join([array.path, "c", str(chunk)] + ["0"] * (array.ndim - 1))


def finetuning_record(
    weights: str | Path, sha256: str, *, current: bool = True
) -> dict[str, Any] | None:
    """What a store records of the `avda finetune` run that wrote ``weights`` (whose SHA-256
    is ``sha256``): its source domains, initial weights, epochs, recipe, classes and record
    file, read from ``<weights>.json``. None for weights avda did not fine-tune (no such
    record, or one that is not a fine-tuning's) and for a record of another file (its
    ``weights_sha256`` differs: ``current``, the digest of the file as it is now, warns of it).
    A record written before 2026-12-07 holds no ``weights_sha256``: it is ``weights``' own
    (avda never overwrites a finished fine-tuning's ``OUT``) where ``current``, else (a
    store's digest of weights read long ago) where the file there still has ``sha256``."""
    from avda._io import sha256_file

    path = Path(weights).with_name(Path(weights).name + ".json")
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    key = meta.get("key") if isinstance(meta, dict) else None
    if not isinstance(key, dict) or "segments" not in key or "source" not in meta:
        return None
    if "weights_sha256" in meta:
        if meta["weights_sha256"] != sha256:
            if current:
                log.warning("%s is not the record of %s (another file's SHA-256): not "
                            "recorded", path, weights)  # fmt: skip
            return None
    elif not current and not (Path(weights).is_file() and sha256_file(weights) == sha256):
        return None
    return {
        "source": list(meta.get("source") or []),
        "init_weights": meta.get("init_weights"),
        "init_weights_sha256": key.get("init_weights_sha256"),
        "epochs": (meta.get("config") or {}).get("epochs"),
        "recipe": meta.get("recipe"),
        "num_classes": meta.get("num_classes"),
        "record": str(path.absolute()),
    }


def _import_command(record: dict[str, Any], modality: str, entry: dict[str, Any]) -> str:
    """The ``avda cache import`` command of a recorded import (its file, format, domain and
    split; ``modality``'s backbone from its provenance ``entry``, and for per-video features
    the modality, its feature rate, clips and placement), in backquotes."""
    file = str(record.get("file"))
    given = entry.get("input") or {}
    words = ["avda", "cache", "import", shlex.quote(file)]
    options: dict[str, Any] = {k: record.get(k) for k in ("format", "domain", "split")}
    if entry.get("backbone") not in (None, "unknown"):  # one backbone per modality
        options["backbone"] = entry["backbone"]
    if record.get("format") in schema.PER_VIDEO_FORMATS:  # one modality per folder, its rate
        options.update(
            {
                "modality": modality,
                "feature-rate": given.get("feature_rate"),
                "num-clips": entry.get("num_clips"),
                "placement": given.get("placement"),  # recorded where not the default nearest
            }
        )
    for option, value in options.items():
        if value is not None:
            words += [
                f"--{option}",
                shlex.quote(f"{value:g}" if isinstance(value, float) else str(value)),
            ]
    return "`" + " ".join(words) + "`"


# How to get a store's segment table back (no command recomputes part of it).
RECREATE_HINT = "re-create it with the command that made it (avda extract / import)"


def damaged_chunk_message(
    array: zarr.Array,
    chunk: int,
    lo: int,
    hi: int,
    exc: Exception,
    chunk_rows: int,
    imported: str | None = None,
) -> str:
    """Why chunk ``chunk`` (rows ``lo``..``hi - 1``) of ``array`` cannot be read (``exc``, the
    codec's error) and how to get its rows back: restore the store, or delete the chunk's files
    and recompute them (a modality's rows with ``avda extract``; ``imported``, from
    :meth:`FeatureCache._import_fix`: rows an import brought, imported again instead).
    ``chunk_rows``: the store's."""
    group, _, name = array.path.partition("/")
    what = (
        f"{chunk_file(array, chunk)} (rows {lo}-{hi - 1}) is damaged ({str(exc).strip()[:120]}); "
        "avda writes chunk files whole, so it was cut short or changed outside avda (an "
        "interrupted copy?): restore the store from a good copy"
    )
    if group == schema.SEGMENTS_GROUP:
        return what + ", or " + RECREATE_HINT
    if group == schema.CLUSTERS_GROUP:
        return what + f", or delete {array.path} under it and run `avda cluster` again"
    return what + ", or " + recompute_hint(array, chunk, lo, chunk_rows, imported)


def recompute_hint(
    array: zarr.Array, chunk: int, lo: int, chunk_rows: int, imported: str | None = None
) -> str:
    """How to recompute the rows of chunk ``chunk`` (from row ``lo``) of a modality's array
    (``features``, ``spatial``, ...): delete its chunk files (those there are, in a store on
    disk: a file named that is gone made ``rm`` fail), then the same ``avda extract``;
    ``imported`` (rows an import brought, :meth:`FeatureCache._import_fix`): that text."""
    if imported:
        return imported
    group, _, name = array.path.partition("/")
    rows_chunk = lo // chunk_rows  # a spatial chunk holds a divisor of chunk_rows rows
    files = [
        f"{part}/{name}/c/{rows_chunk}" + ("/0/0" if part == schema.FEATURES_GROUP else "")
        for part in (schema.FEATURES_GROUP, schema.ERRORS_GROUP, schema.STATUS_GROUP)
    ]
    if group == schema.SPATIAL_GROUP:
        files.insert(0, chunk_file(array, chunk))
    root = getattr(array.store, "root", None)  # a LocalStore's folder
    if root is not None:
        files = [file for file in files if (Path(root) / file).is_file()]
    if not files:  # the rows read as pending already
        return "run the same `avda extract` again to recompute them"
    return (
        f"delete {', '.join(files)} under it (those rows become pending) "
        "and run the same `avda extract` again to recompute them"
    )


def _all_finite(values: np.ndarray) -> bool:
    """Whether every value of ``values`` is finite, without an ``(n, K, D)`` boolean temporary.

    float16 (how features are stored): a value is NaN or inf exactly when its 5 exponent bits
    are all set, i.e. when its 16 bits shifted left by one (the sign dropped) are at least
    0xF800; the largest shifted value of each block of a million, 12x faster than the float64
    sum below (0.9 against 10 ns a value: 13 of the 57 s that loading EPIC-100's source set
    took). Other dtypes: their float64 sum, finite exactly when every value is (loaded values
    come from float16, |x| <= 65504, so it never overflows)."""
    if values.dtype == np.float16:
        bits = np.ascontiguousarray(values).view(np.uint16).reshape(-1)
        return all(
            int(np.left_shift(bits[i : i + _FINITE_BLOCK], 1).max()) < 0xF800
            for i in range(0, bits.size, _FINITE_BLOCK)
        )
    return bool(np.isfinite(values.sum(dtype=np.float64)))


_FINITE_BLOCK = 2**20  # values per block of _all_finite's float16 test (2 MB of shifted bits)


def _finite_rows(values: np.ndarray) -> np.ndarray:
    """Per row (first axis): whether every value is finite."""
    return np.isfinite(values.reshape(len(values), -1)).all(axis=1)


def _contiguous(rows: np.ndarray) -> list[np.ndarray]:
    rows = np.asarray(rows)
    if len(rows) == 0:
        return []
    return np.split(rows, np.flatnonzero(np.diff(rows) != 1) + 1)


def _divisor_rows(chunk_rows: int, row_bytes: int, limit: int = 64 * 2**20) -> int:
    """The largest divisor of ``chunk_rows`` whose chunk of ``row_bytes`` rows fits ``limit``."""
    for rows in range(chunk_rows, 0, -1):
        if chunk_rows % rows == 0 and rows * row_bytes <= limit:
            return rows
    return 1


def _read_rows(
    array: zarr.Array,
    rows: np.ndarray | None,
    clips: np.ndarray | None = None,
    num_rows: int | None = None,
    dtype: np.dtype | str | None = np.float32,
) -> np.ndarray:
    """Rows of a row-chunked array (all ``num_rows`` if None) in memory as ``dtype`` (the
    stored dtype when None), keeping only ``clips`` along the second axis when given.

    Reads the covering range chunk-wise, then selects: far faster than point reads. The
    selection runs on the stored dtype, so only what is kept is converted.
    """
    dtype = array.dtype if dtype is None else np.dtype(dtype)
    if rows is None:
        block = array[:num_rows]
    else:
        rows = np.asarray(rows)
        if len(rows) == 0:
            shape = list(array.shape[1:])
            if clips is not None:
                shape[0] = len(clips)
            return np.zeros((0, *shape), dtype=dtype)
        lo, hi = int(rows.min()), int(rows.max()) + 1
        block = array[lo:hi]
        if len(rows) != hi - lo or np.any(rows[1:] <= rows[:-1]):  # not exactly lo..hi-1
            block = block[rows - lo]
    if clips is not None:
        block = block[:, np.asarray(clips)]
    return block.astype(dtype, copy=False)


def _segment_values(frame: pd.DataFrame, name: str, kind: str) -> np.ndarray:
    column = frame[name]
    if kind == "str":
        return column.astype("string").fillna("").astype(str).to_numpy(dtype=object)
    if kind == "int":
        numeric = pd.to_numeric(column, errors="coerce")
        return numeric.fillna(schema.MISSING_CLASS).astype("int64").to_numpy()
    return pd.to_numeric(column, errors="coerce").astype("float64").to_numpy()


def create(
    path: str | Path,
    segments: pd.DataFrame,
    *,
    manifest_sha256: str,
    recipe: dict[str, Any],
    chunk_rows: int = schema.DEFAULT_CHUNK_ROWS,
    shrink_chunks: bool = True,
    classes: dict[str, Sequence[str]] | None = None,
) -> FeatureCache:
    """Create a new, empty store for ``segments`` (refuses to overwrite an existing path).

    ``classes``: class column -> the benchmark's class names in id order (its whole table,
    which training sizes its classifiers by), recorded in the provenance when given.

    ``shrink_chunks``: a store with fewer than ``chunk_rows`` segments uses chunks of N rows;
    stores that will grow by appending (``avda cache import``) pass False.

    The store is built under a hidden name next to ``path`` (``.<name>.creating-<pid>-<hex>``)
    and renamed into place when complete, so ``path`` is either absent or a whole store: a
    process killed while creating leaves only that hidden folder, which
    :func:`remove_partial_creations` deletes (writers call it under the store's lock).
    """
    path = Path(path)
    if path.exists():
        raise CacheError(f"{path} already exists; open it, or remove it to start a new cache")
    if chunk_rows < 1:
        raise CacheError(f"chunk_rows must be >= 1, got {chunk_rows}")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{_CREATING_PREFIX.format(name=path.name)}{os.getpid()}-")
    partial = partial.with_name(partial.name + secrets.token_hex(4))
    try:
        with naming_writes(path, "a new store"):
            _build(partial, segments, manifest_sha256, recipe, chunk_rows, shrink_chunks, classes)
        faults.checkpoint("store-built")
        try:
            os.rename(partial, path)
        except OSError as exc:  # another process made ``path`` meanwhile
            raise CacheError(
                f"{path} already exists; open it, or remove it to start a new cache"
            ) from exc
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return FeatureCache(path, zarr.open_group(str(path), mode="r+"))


_CREATING_PREFIX = ".{name}.creating-"


def remove_partial_creations(path: str | Path) -> None:
    """Delete what :func:`create` calls killed half-way left next to ``path``."""
    path = Path(path)
    prefix = _CREATING_PREFIX.format(name=path.name)
    if not path.parent.is_dir():
        return
    for leftover in path.parent.glob(f"{glob.escape(prefix)}*"):
        log.warning("removing %s (a store creation that was killed)", leftover)
        shutil.rmtree(leftover, ignore_errors=True)


_UNFINISHED_WRITE = re.compile(r"\.[0-9a-f]{32}\.partial$")


def unfinished_writes(path: str | Path) -> list[Path]:
    """Files of Zarr writes that never finished inside the store ``path``.

    Zarr writes every file (a chunk, a ``zarr.json``) as ``<name>.<32 hex digits>.partial``
    and renames it into place; a writer killed (or interrupted) during that write leaves the
    temporary file. Nothing reads it, and the store is as it was before that write; it only
    takes space (a features chunk: up to tens of MiB) and is copied with the store.
    """
    root = Path(path)
    if not root.is_dir():
        return []
    return sorted(
        p for p in root.rglob("*.partial") if _UNFINISHED_WRITE.search(p.name) and p.is_file()
    )


def remove_unfinished_writes(path: str | Path) -> None:
    """Delete the :func:`unfinished_writes` of the store ``path``. Only a writer holding the
    store's lock exclusively calls this: a shard's write in progress looks the same."""
    found = unfinished_writes(path)
    if found:
        log.warning(
            "%s: removing %d unfinished write file%s of a killed writer (%s%s)",
            *(path, len(found), "s" if len(found) > 1 else ""),
            *(found[0].relative_to(path), ", ..." if len(found) > 1 else ""),
        )
    for leftover in found:
        leftover.unlink(missing_ok=True)


CLUSTERS_SWAP = ".avda-clusters-swap"
"""The folder inside a store where :meth:`FeatureCache.write_clusters` writes a new clusters
array and puts the old one aside: not a Zarr group (no ``zarr.json``; avda lists only its
groups' arrays), inside the store so that a copy of it takes clusters a kill left aside along."""


def _cluster_swap(store: FeatureCache, modality: str) -> tuple[Path, Path]:
    """Where :meth:`FeatureCache.write_clusters` writes the new clusters of ``modality``
    (``<store>/.avda-clusters-swap/<modality>.new``) and puts the old ones aside (``.old``):
    inside the store, outside its Zarr groups, on its file system (renamed into it, they
    must be), and copied with it."""
    folder = store.path / CLUSTERS_SWAP
    return folder / f"{modality}.new", folder / f"{modality}.old"


def _legacy_stem(store: FeatureCache) -> Path:
    """The name's start of the swap arrays an avda before 2026-12-07 wrote *beside* the store
    (the one a link leads to): ``.<store>.clusters-``, then ``<modality>.<cache_id>.new|old``
    (named for the store's ``cache_id``: a store made anew at the path neither reads nor gets
    them)."""
    path = store.path.resolve()
    return path.with_name(f".{path.name}.clusters-")


def _legacy_aside(store: FeatureCache, modality: str) -> Path:
    stem = _legacy_stem(store)
    return stem.with_name(f"{stem.name}{modality}.{_swap_owner(store)}.old")


def _swap_owner(store: FeatureCache) -> str:
    """The ``cache_id`` of ``store`` (``unidentified``: a store made before it had one)."""
    return str(store.provenance.get("cache_id") or "unidentified")


def cluster_swap_leftovers(store: FeatureCache) -> list[tuple[Path, str, bool]]:
    """What :meth:`FeatureCache.write_clusters` killed midway left, in the store's swap folder
    or beside the store (an older avda's): ``(folder, modality, goes_back)``, ``goes_back``
    where it is this store's previous clusters put aside (a kill between the renames) and
    ``clusters/<modality>`` is empty; the rest (an unfinished new array, another store's, an
    aside whose place was filled since) is deleted."""
    found = []
    inside = store.path / CLUSTERS_SWAP
    if inside.is_dir():
        for leftover in sorted(inside.iterdir()):
            modality, _, kind = leftover.name.rpartition(".")
            found.append((leftover, modality, kind == "old"))
    stem = _legacy_stem(store)
    for leftover in sorted(stem.parent.glob(f"{glob.escape(stem.name)}*")):
        modality, _, rest = leftover.name[len(stem.name) :].partition(".")
        written_for, _, kind = rest.rpartition(".")
        if kind in ("new", "old"):
            found.append((leftover, modality, written_for == _swap_owner(store) and kind == "old"))
    clusters = store.path / schema.CLUSTERS_GROUP
    return [(p, m, aside and not (clusters / m).exists()) for p, m, aside in found]


def restore_cluster_swaps(store: FeatureCache) -> None:
    """Finish what a :meth:`FeatureCache.write_clusters` killed midway left
    (:func:`cluster_swap_leftovers`): clusters put aside whose place is empty go back (a kill
    between its renames), the rest is deleted."""
    for leftover, modality, goes_back in cluster_swap_leftovers(store):
        if goes_back:
            log.warning(
                "%s: putting back the %s clusters a killed writer left", *(store.path, modality)
            )
            os.replace(leftover, store.path / schema.CLUSTERS_GROUP / modality)
        else:
            log.warning("removing %s (clusters a killed writer left)", leftover)
            shutil.rmtree(leftover, ignore_errors=True)
    with contextlib.suppress(OSError):
        (store.path / CLUSTERS_SWAP).rmdir()


def remove_kill_leftovers(path: str | Path) -> None:
    """Delete what writers killed half-way left beside and inside the store ``path``: a
    creation's hidden folder (:func:`remove_partial_creations`) and, in an avda cache, Zarr's
    unfinished writes (:func:`remove_unfinished_writes`; a path that is no cache is left to
    its command to refuse) and a clusters write's arrays (:func:`restore_cluster_swaps`: the
    previous clusters back in place). :func:`avda.cache.lock.store_lock` calls it when it
    takes the lock exclusively, so every command that writes a store alone cleans the same
    way."""
    remove_partial_creations(path)
    try:
        store = open_cache(path)
    except CacheError:
        return
    remove_unfinished_writes(path)
    restore_cluster_swaps(store)


def _build(
    path: Path,
    segments: pd.DataFrame,
    manifest_sha256: str,
    recipe: dict[str, Any],
    chunk_rows: int,
    shrink_chunks: bool,
    classes: dict[str, Sequence[str]] | None = None,
) -> None:
    group = zarr.open_group(str(path), mode="w-", zarr_format=3)
    N = len(segments)
    chunk = min(chunk_rows, max(N, 1)) if shrink_chunks else chunk_rows
    seg_group = group.create_group(schema.SEGMENTS_GROUP)
    for name, kind in schema.SEGMENT_COLUMNS.items():
        if name not in segments.columns:
            continue
        values = _segment_values(segments, name, kind)
        dtype = {"str": str, "int": "int64", "float": "float64"}[kind]
        array = seg_group.create_array(name, shape=(N,), chunks=(chunk,), dtype=dtype)
        array[:] = values
    for name in (schema.FEATURES_GROUP, schema.STATUS_GROUP, schema.ERRORS_GROUP):
        group.create_group(name)
    provenance = {
        "schema_version": schema.SCHEMA_VERSION,
        "avda_version": avda.__version__,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "cache_id": uuid.uuid4().hex,  # this store's identity: a rebuilt one gets another
        "manifest_sha256": manifest_sha256,
        "num_segments": N,
        "chunk_rows": chunk,
        "recipe": recipe,
        "modalities": {},
    }
    if classes:
        provenance["classes"] = {str(k): [str(n) for n in v] for k, v in classes.items()}
    group.attrs[schema.ROOT_ATTRIBUTE] = provenance


def open_cache(path: str | Path, *, mode: str = "r") -> FeatureCache:
    """Open an existing store; refuses paths that are not avda caches or of unknown schema."""
    path = Path(path)
    if not path.exists():
        raise CacheError(f"cache {path} does not exist; create it with `avda extract`")
    if mode != "r":  # check it is an avda cache without writing, and keep writes inside it
        open_cache(path)
        check_no_outward_links(path)
    try:
        group = zarr.open_group(str(path), mode=mode)
    except (FileNotFoundError, ValueError, zarr.errors.GroupNotFoundError) as exc:
        raise CacheError(
            f"{path} is not a Zarr store ({exc}); give the path of a cache `avda extract` wrote "
            "(a folder ending in .zarr)"
        ) from exc
    attrs = dict(group.attrs)
    if schema.ROOT_ATTRIBUTE not in attrs:
        raise CacheError(
            f"{path} is a Zarr store but not an avda cache (no {schema.ROOT_ATTRIBUTE!r} attribute)"
        )
    provenance = attrs[schema.ROOT_ATTRIBUTE]
    if not isinstance(provenance, dict):
        _damaged(path, f"it is a {type(provenance).__name__}, not an object")
    version = provenance.get("schema_version")
    if version not in schema.SUPPORTED_SCHEMA_VERSIONS:
        raise CacheError(
            f"cache {path} has schema version {version!r}; this avda ({avda.__version__}) reads "
            f"versions {list(schema.SUPPORTED_SCHEMA_VERSIONS)}: upgrade avda or re-extract"
        )
    _check_provenance(path, provenance)
    return FeatureCache(path, group)


def _damaged(path: Path, what: str) -> None:
    raise CacheError(
        f"cache {path}: its provenance (the {schema.ROOT_ATTRIBUTE!r} attribute in "
        f"{path / 'zarr.json'}) is damaged: {what}; re-create the cache with the command that "
        "made it (avda extract / avda cache import)"
    )


def _check_provenance(path: Path, provenance: dict[str, Any]) -> None:
    """The keys and types readers rely on, so a damaged zarr.json is one line, not a crash."""
    missing = [k for k in schema.PROVENANCE_KEYS if k not in provenance]
    if missing:
        _damaged(path, f"missing {', '.join(missing)}")

    def is_count(value: Any, low: int) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= low

    if not is_count(provenance["num_segments"], 0):
        _damaged(path, f"num_segments is {provenance['num_segments']!r}, not a count")
    if not is_count(provenance["chunk_rows"], 1):
        _damaged(path, f"chunk_rows is {provenance['chunk_rows']!r}, not a count >= 1")
    if not isinstance(provenance["recipe"], dict):
        _damaged(path, "recipe is not an object")
    modalities = provenance["modalities"]
    if not isinstance(modalities, dict):
        _damaged(path, "modalities is not an object")
    for name, entry in modalities.items():
        if not isinstance(entry, dict):
            _damaged(path, f"modality {name!r} is not an object")
        for key in ("num_clips", "num_features"):
            if not is_count(entry.get(key), 1):
                _damaged(path, f"modality {name!r}: {key} is {entry.get(key)!r}, not a count >= 1")
    if not isinstance(provenance.get("imports", []), list):
        _damaged(path, "imports is not a list")
    if not is_class_tables(provenance.get("classes", {})):
        _damaged(path, "classes is not an object of class-name lists")
