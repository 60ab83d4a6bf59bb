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

    notes: list[str] = []
    arrays = _arrays(store, problem)
    leftovers = [
        name
        for name in arrays
        if name.partition("/")[0] in _MODALITY_GROUPS
        and name.partition("/")[2] not in store.modalities
    ]
    if leftovers:  # never read: an import killed before its commit made them (repair removes)
        for name in leftovers:
            del arrays[name]
        notes.append(
            prefix + f"{', '.join(leftovers)}: the arrays of a modality the provenance does not "
            "list, made by an `avda cache import` killed before its commit; not part of the store "
            "(readers ignore them), the next `avda cache import` into it removes them: import "
            "that file again to add it"
        )
    unfinished = store_lib.unfinished_writes(store.path)
    if unfinished:  # a killed writer's temporary files: never read, the store is as before them
        first = unfinished[0].relative_to(store.path)
        notes.append(
            prefix + f"{len(unfinished)} unfinished write file{'s' if len(unfinished) > 1 else ''}"
            f" ({first}{', ...' if len(unfinished) > 1 else ''}): Zarr's temporary files of "
            "writes a killed writer never finished; not part of the store (nothing reads them), "
            "the next command that writes it alone (`avda extract` without --shard, with or "
            "without --scheduler, `avda cache import`, `avda cluster`) removes them, or delete "
            "them"
        )
    notes += [prefix + note for note in _swap_notes(store)]
    for modality in store.modalities:
        tuned, recorded = store.finetuning(modality)
        if tuned is not None and not recorded:  # the record beside its weights says so
            notes.append(
                prefix + f"the {modality} weights were fine-tuned by `avda finetune` on the labels "
                f"of {', '.join(map(str, tuned['source']))} ({tuned['record']}), which the store, "
                "extracted before stores recorded fine-tunings (2026-12-07), does not record; "
                "`avda train` and `avda cache info` read it from that file: keep it beside the "
                "weights"
            )
    longer = {name: a.shape[0] for name, a in arrays.items() if a.shape[0] > N}
    if longer:
        notes.append(
            prefix + f"{len(longer)} array{'s' if len(longer) > 1 else ''} ({next(iter(longer))}"
            f"{', ...' if len(longer) > 1 else ''}) hold rows past its {N} segments (up to row "
            f"{max(longer.values()) - 1}): an append that never committed (a killed `avda cache "
            "import`); not part of the store (readers read the first num_segments rows only), "
            "the next `avda cache import` into it removes them: import that file again to add it"
        )
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
                    "restore the store from a good copy, or " + _modality_fix(store, modality),
                )
    # status first: which rows are done, for the NaN/inf check of features and maps
    order = sorted(arrays, key=lambda name: (not name.startswith(schema.STATUS_GROUP + "/"), name))
    total = sum(-(-min(arrays[name].shape[0], N) // int(arrays[name].chunks[0])) for name in order)
    done: dict[str, np.ndarray] = {}  # modality -> done mask (False where unknown)
    pending: dict[str, int] = {}  # modality -> rows read as pending
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
                pending[modality] = 0
            for chunk in range(-(-length // step)):
                lo, hi = chunk * step, min((chunk + 1) * step, length)
                bar.update(1)
                try:
                    block = array[lo:hi]
                except store_lib._DECODE_ERRORS as exc:
                    imported = (
                        store._import_fix(modality, lo, hi) if group in _MODALITY_GROUPS else None
                    )
                    message = store_lib.damaged_chunk_message(
                        array, chunk, lo, hi, exc, store.chunk_rows, imported
                    )
                    problem(
                        "damaged", name, store_lib.chunk_file(array, chunk), range(lo, hi), message
                    )
                    continue
                if group == schema.SEGMENTS_GROUP and modality in ALWAYS_WRITTEN:
                    _check_segments_file(store, array, chunk, lo, hi, problem)
                elif group == schema.STATUS_GROUP:
                    _check_status(store, array, chunk, lo, block, problem)
                    _check_status_file(store, arrays, array, chunk, lo, hi, block, problem)
                    done[modality][lo:hi] = block == Status.DONE
                    pending[modality] += int(np.sum(block == Status.PENDING))
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
                            + store_lib.recompute_hint(
                                array,
                                chunk,
                                lo,
                                store.chunk_rows,
                                store._import_fix(modality, lo, hi),
                            ),
                        )
                        continue
                    rows = np.flatnonzero(done[modality][lo:hi] & ~_finite(block)) + lo
                    if len(rows):
                        hint = store._nonfinite_hint(modality)
                        imported = store._import_fix(modality, int(rows[0]), int(rows[-1]) + 1)
                        if imported:  # the file they came from holds them: fix it, import again
                            hint = f"fix the imported file, then {imported}"
                        elif hint == store_lib.NONFINITE_EXTRACT_HINT:
                            hint = (
                                "check the weights / input, then run "
                                f"{store_lib.RETRY_FAILED_COMMAND}, which marks them failed "
                                "and recomputes them"
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
    for modality, count in pending.items():
        if count and modality in store.modalities and not store.finished_rows(modality):
            if store._import_fix(modality) is None:
                notes.append(prefix + _unrecorded_note(modality, count))
    found = pd.DataFrame(problems, columns=COLUMNS)
    found.attrs.update(arrays=len(arrays), chunks=total, notes=notes)
    return found


_ALONE = (
    "the next command that writes the store alone (`avda cluster`, `avda extract` without "
    "--shard, `avda cache import`)"
)


def _swap_notes(store: FeatureCache) -> list[str]:
    """What an `avda cluster` killed midway left (:func:`~avda.cache.store.
    cluster_swap_leftovers`): clusters put aside, which readers read there, and the rest."""
    from avda.cache import store as store_lib

    notes = []
    for leftover, modality, goes_back in store_lib.cluster_swap_leftovers(store):
        inside = leftover.is_relative_to(store.path)  # else beside it, an older avda's
        where = leftover.relative_to(store.path) if inside else leftover
        if goes_back:
            notes.append(
                f"{schema.CLUSTERS_GROUP}/{modality} is not in place: an `avda cluster` killed "
                f"between the two renames of its swap left those clusters aside ({where}), "
                f"where readers read them; {_ALONE} puts them back (or run `avda cluster` "
                "again)"
            )
        else:
            notes.append(
                f"{where}: a clusters array an `avda cluster` killed midway left; not part of "
                f"the store (nothing reads it), {_ALONE} removes it"
            )
    return notes


# Segment columns whose every row holds a value other than the fill value (a non-empty uid,
# video, domain and split): each of their chunks is a file, and an absent one is a copy cut
# short. (start_sec, labels, ... may fill a whole chunk with the fill value, which zarr does not
# write; so may stop_sec, 0.0 in every row of an import whose table gave no times: an import
# checks no times, as its features are already cut.)
ALWAYS_WRITTEN = ("uid", "video_id", "domain", "split")

_MODALITY_GROUPS = (
    schema.FEATURES_GROUP,
    schema.STATUS_GROUP,
    schema.ERRORS_GROUP,
    schema.SPATIAL_GROUP,
)


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
                f"{expected[0]}, {expected[1]}); restore the store from a good copy, or "
                + _modality_fix(store, modality),
            )


def _modality_fix(store: FeatureCache, modality: str) -> str:
    """What re-creates a whole modality of ``store``: the import that brought it, else
    extracting it again (both spellings: command-line and Python users read verify's fixes)."""
    from avda.cache import store as store_lib

    return store._import_fix(modality) or f"run {store_lib.FORCE_COMMAND} to recompute the modality"


def _check_segments_file(store, array: zarr.Array, chunk: int, lo: int, hi: int, problem):
    """An absent chunk file of an :data:`ALWAYS_WRITTEN` segment column reads as its fill value
    (``""``): rows without a uid, domain or split, which readers take as they read (a
    run selects rows by domain and split, and would train and score without them)."""
    from avda.cache import store as store_lib

    file = store_lib.chunk_file(array, chunk)
    if (store.path / file).is_file():
        return
    rows = f"rows {lo}-{hi - 1}" if hi - lo > 1 else f"row {lo}"
    column = array.path.partition("/")[2]
    problem(
        "missing",
        array.path,
        file,
        range(lo, hi),
        f"{file} is missing, so {rows} read {column} '', a value no row has (a run would "
        "take them as they read): a copy cut short (an interrupted rsync?); restore the store "
        "from a good copy, or " + store_lib.RECREATE_HINT,
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
    imported = store._import_fix(modality, int(rows[0]), int(rows[-1]) + 1)
    fix = store_lib.recompute_hint(array, chunk, lo, store.chunk_rows, imported)
    problem(
        "status",
        array.path,
        file,
        rows,
        f"{file}: {_rows_text(rows)} status {values}, not one of {KNOWN_STATUS} (changed "
        f"outside avda?): restore the store from a good copy, or {fix}",
    )


def _check_status_file(
    store, arrays, array: zarr.Array, chunk: int, lo: int, hi: int, block, problem
) -> None:
    """An absent status chunk file reads as 0, pending: rows ``avda train`` leaves out and a
    resume recomputes. Absent is how zarr stores a chunk of pending rows only (it writes no
    chunk that holds the fill value alone), so it is a problem where the rows were written:
    its features or errors chunk file is there (written before the status), an import
    brought them (an import gives every row a status), or an extraction recorded them finished
    (``finished_rows``: a copy that dropped all their files). A pending row among the finished
    ones in a status file that is there is a problem too."""
    from avda.cache import store as store_lib

    file = store_lib.chunk_file(array, chunk)
    modality = array.path.partition("/")[2]
    finished = min(store.finished_rows(modality), hi)
    fix = "run the same `avda extract` again, which recomputes them"
    if (store.path / file).is_file():
        lost = np.flatnonzero(block[: max(finished - lo, 0)] == Status.PENDING) + lo
        if len(lost):
            problem(
                "status",
                array.path,
                file,
                lost,
                f"{file}: {_rows_text(lost)} pending, though the extraction finished its first "
                f"{store.finished_rows(modality)} rows (finished_rows in the provenance): a "
                f"status file older than the store (a copy mixed from two?); restore the store "
                f"from a good copy, or {fix}",
            )
        return
    imported = store._import_fix(modality, lo, hi)
    written = [
        store_lib.chunk_file(arrays[name], chunk)
        for name in (f"{schema.FEATURES_GROUP}/{modality}", f"{schema.ERRORS_GROUP}/{modality}")
        if name in arrays and (store.path / store_lib.chunk_file(arrays[name], chunk)).is_file()
    ]
    if not imported and not written:
        if finished <= lo:
            return  # rows never extracted yet
        hi = finished  # rows past it came later (an append), pending as they should be
    rows = f"rows {lo}-{hi - 1}" if hi - lo > 1 else f"row {lo}"
    if imported:
        why = (
            "though an import gives each of its rows a status: a copy cut short (an "
            "interrupted rsync?)"
        )
        fix = imported
    elif written:
        why = (
            f"though {' and '.join(written)} {'are' if len(written) > 1 else 'is'} there: a "
            "copy cut short (or an extraction killed between the two writes)"
        )
    else:
        why = (
            f"though the extraction finished its first {store.finished_rows(modality)} rows "
            "(finished_rows in the provenance) and none of their chunk files is left: a copy "
            "that dropped files (an interrupted rsync?)"
        )
    problem(
        "missing",
        array.path,
        file,
        range(lo, hi),
        f"{file} is missing, so {rows} read as pending (`avda train` leaves them out), "
        f"{why}; restore the store from a good copy, or {fix}",
    )


def _unrecorded_note(modality: str, count: int) -> str:
    return (
        f"status/{modality}: {count} row{'s' if count > 1 else ''} pending, and no finished "
        f"extraction of {modality} recorded (finished_rows: an extraction not finished yet, "
        "stopped by an error, a full disk or a kill, or a store an older avda made), so rows "
        "never extracted cannot be told from finished rows whose status and features files a "
        "copy lost; the same `avda extract` computes them and records it"
    )


def _finite(block: np.ndarray) -> np.ndarray:
    return np.isfinite(block.reshape(len(block), -1)).all(axis=1)


def _rows_text(rows: np.ndarray) -> str:
    shown = ", ".join(str(int(r)) for r in rows[:10])
    more = f", ... ({len(rows)} rows)" if len(rows) > 10 else ""
    return f"rows {shown}{more} are" if len(rows) > 1 else f"row {shown} is"
