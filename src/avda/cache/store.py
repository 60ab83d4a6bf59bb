"""Create, open, write and read avda feature caches (Zarr v3).

Writers put features first and the per-segment status second, so a reader (or a resumed
extraction) trusts exactly the rows whose status is DONE.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import zarr

import avda
from avda.cache import schema
from avda.cache.schema import Status
from avda.errors import CacheError

log = logging.getLogger(__name__)


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
        if modality not in infos:
            known = ", ".join(sorted(infos)) or "none"
            raise CacheError(
                f"cache {self.path} has no {modality!r} features (it has: {known}); "
                f"run `avda extract` with --modalities {modality}"
            )
        return dict(infos[modality])

    @property
    def segments(self) -> pd.DataFrame:
        """The segment table, aligned with the feature rows."""
        if self._segments is None:
            group = self._group[schema.SEGMENTS_GROUP]
            columns = {}
            for name, kind in schema.SEGMENT_COLUMNS.items():
                if name not in group:
                    continue
                values = group[name][:]
                if kind == "str":
                    columns[name] = pd.array(values.tolist(), dtype="string")
                elif kind == "int":
                    series = pd.Series(values.astype("int64"))
                    columns[name] = series.where(series != schema.MISSING_CLASS).astype("Int64")
                else:
                    columns[name] = values.astype("float64")
            self._segments = pd.DataFrame(columns)
        return self._segments

    # ----------------------------------------------------------------- modalities
    def add_modality(
        self, modality: str, *, num_clips: int, num_features: int, info: dict[str, Any]
    ) -> None:
        """Create the arrays of a new modality (all rows pending)."""
        N = self.num_segments
        chunk = min(self.chunk_rows, max(N, 1))
        self._group.require_group(schema.FEATURES_GROUP).create_array(
            modality,
            shape=(N, num_clips, num_features),
            chunks=(chunk, num_clips, num_features),
            dtype=schema.FEATURE_DTYPE,
            fill_value=0,
            overwrite=True,
        )
        self._group.require_group(schema.STATUS_GROUP).create_array(
            modality, shape=(N,), chunks=(chunk,), dtype="int8", fill_value=0, overwrite=True
        )
        errors = self._group.require_group(schema.ERRORS_GROUP).create_array(
            modality, shape=(N,), chunks=(chunk,), dtype=str, overwrite=True
        )
        errors[:] = np.full(N, "", dtype=object)
        provenance = self.provenance
        entry = {"num_clips": num_clips, "num_features": num_features, **info}
        provenance["modalities"] = {**provenance["modalities"], modality: entry}
        self._set_provenance(provenance)

    def status(self, modality: str) -> np.ndarray:
        self.modality_info(modality)
        return self._group[schema.STATUS_GROUP][modality][:]

    def errors(self, modality: str) -> np.ndarray:
        return np.array(self._group[schema.ERRORS_GROUP][modality][:].tolist(), dtype=object)

    def failures(self) -> pd.DataFrame:
        """One row per failed (segment, modality): uid, video_id, modality, error."""
        frames = []
        for modality in self.modalities:
            failed = np.flatnonzero(self.status(modality) == Status.FAILED)
            if len(failed):
                seg = self.segments.iloc[failed]
                frames.append(
                    pd.DataFrame(
                        {
                            "uid": seg["uid"].to_numpy(),
                            "video_id": seg["video_id"].to_numpy(),
                            "modality": modality,
                            "error": self.errors(modality)[failed],
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
        """Write a contiguous block of rows: features first, then errors, then status."""
        rows = np.asarray(rows)
        if len(rows) == 0:
            return
        start, stop = int(rows[0]), int(rows[-1]) + 1
        if stop - start != len(rows) or np.any(np.diff(rows) != 1):
            raise CacheError(f"internal: rows to write must be contiguous, got {rows[:5]}...")
        self._group[schema.FEATURES_GROUP][modality][start:stop] = features.astype(
            schema.FEATURE_DTYPE
        )
        self._group[schema.ERRORS_GROUP][modality][start:stop] = np.asarray(errors, dtype=object)
        self._group[schema.STATUS_GROUP][modality][start:stop] = np.asarray(statuses, dtype="int8")

    def write_clusters(self, modality: str, clusters: np.ndarray, info: dict[str, Any]) -> None:
        array = self._group.require_group(schema.CLUSTERS_GROUP).create_array(
            modality,
            shape=(self.num_segments,),
            chunks=(min(self.chunk_rows, max(self.num_segments, 1)),),
            dtype="int32",
            fill_value=-1,
            overwrite=True,
        )
        array[:] = clusters.astype("int32")
        array.attrs["avda_clusters"] = info

    # ----------------------------------------------------------------- reading
    def features(self, modality: str) -> zarr.Array:
        """The lazily read Zarr array ``(N, K, D)`` of ``modality``."""
        self.modality_info(modality)
        return self._group[schema.FEATURES_GROUP][modality]

    def load(self, modality: str, rows: np.ndarray | None = None) -> np.ndarray:
        """Features of ``rows`` (all rows if None) in memory as float32 ``(n, K, D)``."""
        array = self.features(modality)
        if rows is None:
            return array[:].astype(np.float32)
        rows = np.asarray(rows)
        if len(rows) == 0:
            return np.zeros((0, *array.shape[1:]), dtype=np.float32)
        # Read the covering range chunk-wise, then select: far faster than point reads.
        lo, hi = int(rows.min()), int(rows.max()) + 1
        return array[lo:hi][rows - lo].astype(np.float32)

    def to_dask(self, modality: str):
        """A dask array over the Zarr chunks, for caches larger than memory."""
        import dask.array as da

        return da.from_zarr(self.features(modality))

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
            weights = info.get("weights") or "random init"
            lines.append(
                f"{modality:<6} {info['backbone']} K={info['num_clips']} D={info['num_features']} "
                f"weights={weights}: {state}"
            )
        return "\n".join(lines)


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
) -> FeatureCache:
    """Create a new, empty store for ``segments`` (refuses to overwrite an existing path)."""
    path = Path(path)
    if path.exists():
        raise CacheError(f"{path} already exists; open it, or remove it to start a new cache")
    group = zarr.open_group(str(path), mode="w-", zarr_format=3)
    N = len(segments)
    chunk = min(chunk_rows, max(N, 1))
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
        "manifest_sha256": manifest_sha256,
        "num_segments": N,
        "chunk_rows": chunk,
        "recipe": recipe,
        "modalities": {},
    }
    group.attrs[schema.ROOT_ATTRIBUTE] = provenance
    return FeatureCache(path, group)


def open_cache(path: str | Path, *, mode: str = "r") -> FeatureCache:
    """Open an existing store; refuses paths that are not avda caches or of unknown schema."""
    path = Path(path)
    if not path.exists():
        raise CacheError(f"cache {path} does not exist; create it with `avda extract`")
    try:
        group = zarr.open_group(str(path), mode=mode)
    except (FileNotFoundError, ValueError, zarr.errors.GroupNotFoundError) as exc:
        raise CacheError(
            f"{path} is not a Zarr store ({exc}); point --cache at an avda cache"
        ) from exc
    attrs = dict(group.attrs)
    if schema.ROOT_ATTRIBUTE not in attrs:
        raise CacheError(
            f"{path} is a Zarr store but not an avda cache (no {schema.ROOT_ATTRIBUTE!r} attribute)"
        )
    version = attrs[schema.ROOT_ATTRIBUTE].get("schema_version")
    if version not in schema.SUPPORTED_SCHEMA_VERSIONS:
        raise CacheError(
            f"cache {path} has schema version {version!r}; this avda ({avda.__version__}) reads "
            f"versions {list(schema.SUPPORTED_SCHEMA_VERSIONS)}: upgrade avda or re-extract"
        )
    return FeatureCache(path, group)
