"""``avda cache verify``: read every chunk of a store once and list what is wrong with it.

A copy of a store cut short (``rsync`` killed, a full disk on the other side) leaves chunk files
that the codec cannot decode; readers find them only when a run reads them. This reads every
chunk of every array, one chunk at a time (memory: one chunk, plus one status byte per
segment), and reports each problem with the file, its rows and the fix.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import zarr

from avda.cache import schema
from avda.cache.schema import Status

if TYPE_CHECKING:
    from avda.cache.store import FeatureCache

COLUMNS = ["kind", "array", "file", "rows", "message"]
KNOWN_STATUS = ", ".join(f"{int(s)} {s.name.lower()}" for s in Status)


def verify_store(store: FeatureCache, *, progress: bool = False) -> pd.DataFrame:
    """See :meth:`FeatureCache.verify`."""
    from avda._io import progress_bar
    from avda.cache import store as store_lib

    N = store.num_segments
    prefix = f"cache {store.path}: "
    problems: list[dict[str, Any]] = []

    def problem(kind: str, name: str, file: str, rows: Any, message: str) -> None:
        rows = [int(r) for r in rows]
        problems.append(
            {"kind": kind, "array": name, "file": file, "rows": rows, "message": prefix + message}
        )

    arrays = _arrays(store, problem)
    for modality in store.modalities:
        for group in (schema.FEATURES_GROUP, schema.STATUS_GROUP, schema.ERRORS_GROUP):
            if f"{group}/{modality}" not in arrays and not any(
                found["array"] == f"{group}/{modality}" for found in problems
            ):
                problem(
                    "shape",
                    f"{group}/{modality}",
                    "",
                    [],
                    f"{group}/{modality} is missing (the provenance lists modality {modality!r}); "
                    "restore the store from a good copy, or run `avda extract --force` to "
                    "recompute the modality",
                )
    # status first: which rows are done, for the NaN/inf check of features and maps
    order = sorted(arrays, key=lambda name: (not name.startswith(schema.STATUS_GROUP + "/"), name))
    total = sum(-(-min(arrays[name].shape[0], N) // int(arrays[name].chunks[0])) for name in order)
    done: dict[str, np.ndarray] = {}  # modality -> done mask (False where unknown)
    bar = progress_bar(total=total, unit="chunk", desc="verify", disable=not progress)
    try:
        for name in order:
            array = arrays[name]
            group, _, modality = name.partition("/")
            _check_shape(store, array, name, group, modality, problem)
            step = int(array.chunks[0])
            length = min(array.shape[0], N)
            if group == schema.STATUS_GROUP:
                done[modality] = np.zeros(N, dtype=bool)
            for chunk in range(-(-length // step)):
                lo, hi = chunk * step, min((chunk + 1) * step, length)
                bar.update(1)
                try:
                    block = array[lo:hi]
                except store_lib._DECODE_ERRORS as exc:
                    message = store_lib.damaged_chunk_message(
                        array, chunk, lo, hi, exc, store.chunk_rows
                    )
                    problem(
                        "damaged", name, store_lib.chunk_file(array, chunk), range(lo, hi), message
                    )
                    continue
                if group == schema.STATUS_GROUP:
                    _check_status(store, array, chunk, lo, block, problem)
                    done[modality][lo:hi] = block == Status.DONE
                elif group in (schema.FEATURES_GROUP, schema.SPATIAL_GROUP) and modality in done:
                    file = store_lib.chunk_file(array, chunk)
                    rows = np.flatnonzero(done[modality][lo:hi]) + lo
                    if len(rows) and not (store.path / file).is_file():
                        # zarr reads an absent chunk as zeros: done rows whose values are gone
                        # (a copy cut short before it reached the file)
                        problem(
                            "missing",
                            name,
                            file,
                            rows,
                            f"{file} is missing, though {_rows_text(rows)} done (their values "
                            "read as zeros): a copy cut short (an interrupted rsync?); restore "
                            "the store from a good copy, or "
                            + store_lib.recompute_hint(array, chunk, lo, store.chunk_rows),
                        )
                        continue
                    rows = np.flatnonzero(done[modality][lo:hi] & ~_finite(block)) + lo
                    if len(rows):
                        hint = store._nonfinite_hint(modality)
                        if hint == store_lib.NONFINITE_EXTRACT_HINT:
                            hint = (
                                "check the weights / input, then run the same `avda extract "
                                "--retry-failed`, which marks them failed and recomputes them"
                            )
                        problem(
                            "nonfinite",
                            name,
                            file,
                            rows,
                            f"{file}: {_rows_text(rows)} done but NaN/inf; {hint}",
                        )
    finally:
        bar.close()
    found = pd.DataFrame(problems, columns=COLUMNS)
    found.attrs.update(arrays=len(arrays), chunks=total)
    return found


def _arrays(store: FeatureCache, problem) -> dict[str, zarr.Array]:
    """Every array of the store by ``group/name``, as :meth:`FeatureCache.arrays`; one whose
    description (``zarr.json``) cannot be read is a problem, not an error that ends the check."""
    found: dict[str, zarr.Array] = {}
    root = zarr.open_group(str(store.path), mode="r")
    for group_name in schema.GROUPS:
        folder = store.path / group_name
        if not folder.is_dir():
            continue
        for entry in sorted(folder.iterdir()):
            if not (entry / "zarr.json").is_file():
                continue
            name = f"{group_name}/{entry.name}"
            try:
                array = root[name]
            except (ValueError, KeyError, TypeError) as exc:  # JSONDecodeError is a ValueError
                problem(
                    "damaged",
                    name,
                    f"{name}/zarr.json",
                    [],
                    f"{name}/zarr.json (the array's description) is damaged "
                    f"({str(exc).strip()[:120]}); it was cut short or changed outside avda (an "
                    "interrupted copy?): restore the store from a good copy",
                )
                continue
            if isinstance(array, zarr.Array):
                found[name] = array
    return found


def _check_shape(store, array: zarr.Array, name: str, group: str, modality: str, problem) -> None:
    N = store.num_segments
    rows = array.shape[0]
    if rows < N:
        problem(
            "shape",
            name,
            "",
            range(rows, N),
            f"{name} has {rows} rows, the store {N} segments (rows {rows}-{N - 1} missing); "
            "restore the store from a good copy, or re-create it with the command that made it",
        )
    elif rows > N:
        problem(
            "shape",
            name,
            "",
            range(N, rows),
            f"{name} has {rows} rows, the store {N} segments: rows {N}-{rows - 1} of an append "
            "that never committed (a killed `avda cache import`); the next `avda cache import` "
            "into the store removes them (readers ignore them)",
        )
    if group == schema.FEATURES_GROUP and modality in store.modalities:
        info = store.modality_info(modality)
        expected = (info["num_clips"], info["num_features"])
        if tuple(array.shape[1:]) != expected:
            problem(
                "shape",
                name,
                "",
                [],
                f"{name} has shape {list(array.shape)}, the provenance says (N, "
                f"{expected[0]}, {expected[1]}); restore the store from a good copy, or run "
                "`avda extract --force` to recompute the modality",
            )


def _check_status(store, array: zarr.Array, chunk: int, lo: int, block: np.ndarray, problem):
    from avda.cache import store as store_lib

    known = np.isin(block, [int(s) for s in Status])
    if known.all():
        return
    rows = np.flatnonzero(~known) + lo
    values = ", ".join(str(int(v)) for v in np.unique(block[~known]))
    file = store_lib.chunk_file(array, chunk)
    modality = array.path.partition("/")[2]
    files = ", ".join(
        f"{part}/{modality}/c/{chunk}" + ("/0/0" if part == schema.FEATURES_GROUP else "")
        for part in (schema.FEATURES_GROUP, schema.ERRORS_GROUP, schema.STATUS_GROUP)
    )
    problem(
        "status",
        array.path,
        file,
        rows,
        f"{file}: {_rows_text(rows)} status {values}, not one of {KNOWN_STATUS} (changed "
        "outside avda?): restore the store from a good "
        f"copy, or delete {files} under it (those rows become pending) and run the same "
        "`avda extract` again to recompute them",
    )


def _finite(block: np.ndarray) -> np.ndarray:
    return np.isfinite(block.reshape(len(block), -1)).all(axis=1)


def _rows_text(rows: np.ndarray) -> str:
    shown = ", ".join(str(int(r)) for r in rows[:10])
    more = f", ... ({len(rows)} rows)" if len(rows) > 10 else ""
    return f"rows {shown}{more} are" if len(rows) > 1 else f"row {shown} is"
