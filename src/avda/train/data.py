"""Cached features as in-memory tensors, selected by domain and split.

Training draws mini-batches by indexing whole tensors with a permutation: no per-item Python,
no DataLoader. Caches too large for memory stream through dask (``FeatureCache.to_dask``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from avda.cache import FeatureCache, Status, schema
from avda.errors import CacheError, ConfigError
from avda.registry import unknown_name_message

log = logging.getLogger(__name__)

TASK_COLUMNS = schema.TASK_COLUMNS  # task -> segment column


@dataclasses.dataclass(frozen=True)
class Task:
    """One prediction target: ``verb`` / ``noun`` (single-label) or ``labels`` (multi-label)."""

    name: str
    num_classes: int
    multi_label: bool = False


Statistics = dict[str, tuple[torch.Tensor, torch.Tensor]]  # modality -> (shift, scale)


@dataclasses.dataclass
class FeatureSet:
    """Features of a selection of segments.

    ``inputs[modality]`` is ``(N, K, D)`` as held in memory: a cached modality in the cache's
    dtype (float16, half the memory of float32: ~0.17 MB a segment of 3 x 25 x 1024), the
    head's own keys (stage outputs, spatial maps) as they were added. A head reads them
    through :meth:`batch` or :meth:`features`: float32, with ``stats`` applied (``x ->
    (x - shift) / scale``, the source-train input statistics), converted one batch at a
    time. The float16 -> float32 conversion is exact, so the values are those of a set held
    in float32 throughout.
    """

    name: str
    rows: np.ndarray
    uids: np.ndarray
    inputs: dict[str, torch.Tensor]
    labels: dict[str, torch.Tensor]
    domains: np.ndarray
    stats: Statistics = dataclasses.field(default_factory=dict)
    # each row's ``score_group`` (the sample a multi-label mAP scores it in, by the maximum
    # over the group's rows); None where the cache has no such column or no row has one
    groups: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def features(self, key: str, index=slice(None)) -> torch.Tensor:
        """``inputs[key][index]`` as the head reads it (float32, statistics applied)."""
        return self.prepare(key, self.inputs[key][index])

    def prepare(self, key: str, x: torch.Tensor) -> torch.Tensor:
        """``x``, rows of ``inputs[key]`` (on any device), as the head reads them."""
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        if key in self.stats:
            shift, scale = self.stats[key]
            # (x - shift) / scale, the division in place on the new difference: one float32
            # temporary a batch instead of two, the same values
            x = torch.sub(x, shift.to(x.device)).div_(scale.to(x.device))
        return x

    def batch(
        self,
        index: torch.Tensor,
        device: str | torch.device = "cpu",
        clips: Mapping[str, torch.Tensor] | None = None,
    ):
        """The rows ``index`` of every input (as the head reads them) and label; ``clips[m]``
        (one clip number per row) keeps only that clip of modality ``m``: ``(B, 1, ...)``.

        Rows are gathered with ``index_select``, the same rows as ``x[index]``: advanced
        indexing of a ``(N, K, D)`` float16 tensor took 3x as long on CPU (12 ms against 4 for
        128 EPIC-100 rows), in every training step of every modality. A clip is picked before
        the float32 conversion and the statistics, which act value by value: the same values as
        picking it from the prepared batch, for 1 of K clips' work (MM-SADA's sampling)."""
        index = torch.as_tensor(index, dtype=torch.long)
        inputs = {}
        for m, x in self.inputs.items():
            rows = index.to(x.device)
            if clips is not None and m in clips:  # row n, clip k: row n * K + k of (N * K, ...)
                rows = rows * x.shape[1] + clips[m].to(x.device)
                x = x.reshape(-1, *x.shape[2:])
            rows = x.index_select(0, rows)
            if clips is not None and m in clips:
                rows = rows[:, None]
            inputs[m] = self.prepare(m, rows.to(device, non_blocking=True))
        labels = {
            t: y.index_select(0, index.to(y.device)).to(device, non_blocking=True)
            for t, y in self.labels.items()
        }
        return inputs, labels

    def batches(
        self, batch_size: int, *, shuffle: bool, generator: torch.Generator | None = None
    ) -> Iterator[torch.Tensor]:
        order = (
            torch.randperm(len(self), generator=generator) if shuffle else torch.arange(len(self))
        )
        yield from split_batches(order, batch_size)


def batch_count(rows: int, batch_size: int) -> int:
    """How many batches :func:`split_batches` makes of ``rows`` rows."""
    count = -(-rows // batch_size)
    return count - 1 if rows > 1 and count > 1 and rows % batch_size == 1 else count


def split_batches(order: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    """``order`` in batches of ``batch_size``; a last batch of one row joins the one before.

    A BatchNorm in training mode cannot normalise one row (PyTorch raises): a set of ``k *
    batch_size + 1`` rows made every head with one (adabn, mm-sada, audio-adaptive) fail at
    its last step. The authors' loaders drop the partial batch (``drop_last=True``); keeping
    the row in a batch of ``batch_size + 1`` leaves every other set's batches as they were."""
    rows = len(order)
    count = batch_count(rows, batch_size)
    for i in range(count):
        end = rows if i == count - 1 else (i + 1) * batch_size
        yield order[i * batch_size : end]


def evaluation_domain(feature_set: FeatureSet) -> str:
    """``"target"`` for a set of the target domain (``target_train``, ``target_test``, ...),
    else ``"source"``: whose statistics a domain-specific normalisation uses on it."""
    return "target" if feature_set.name.startswith("target") else "source"


def infer_tasks(
    segments: pd.DataFrame,
    rows: np.ndarray,
    requested: Sequence[str] | None,
    classes: dict[str, Sequence[str]] | None = None,
    known: Mapping[str, int] | None = None,
    benchmark: str = "",
) -> list[Task]:
    """Tasks with labels in ``rows``. Class counts: the size of the benchmark's class table
    when the cache records one (``classes``, from the manifest build: EPIC-100's 97 verbs
    though its UDA splits' largest id is 95), else the count ``known`` gives the task (a
    protocol's benchmark, named ``benchmark``: CharadesEgo's 157 when a manifest subset lost
    its class table and its largest id is 139), else the largest id in the whole cache + 1 (so
    splits agree); an id outside the table or the known count is refused."""
    names = (
        list(requested)
        if requested
        else [
            t
            for t, c in TASK_COLUMNS.items()
            if c in segments and segments[c].iloc[rows].replace("", pd.NA).notna().any()
        ]
    )
    if not names:
        raise CacheError(
            "the source training segments have no labels (no verb_class, noun_class or labels "
            "column values): check the manifest the cache was built from"
        )
    tasks = []
    for name in names:
        if name not in TASK_COLUMNS:
            raise ConfigError(unknown_name_message("task", name, TASK_COLUMNS))
        column = TASK_COLUMNS[name]
        if column not in segments:
            raise CacheError(
                f"task {name!r} needs column {column!r}, which the cache does not have"
            )
        if name == "labels":
            ids = [int(v) for s in segments[column].dropna() for v in str(s).split(";") if v != ""]
            count = (max(ids) + 1) if ids else 0
        else:
            values = pd.to_numeric(segments[column], errors="coerce").dropna()
            count = int(values.max()) + 1
        table = (classes or {}).get(column)
        if table is not None:
            if count > len(table):
                raise CacheError(
                    f"{column} holds class id {count - 1}, outside the cache's class table of "
                    f"{len(table)} classes (from the manifest build); rebuild the manifest"
                )
            count = len(table)
        elif name in (known or {}):
            expected = int(known[name])
            if count > expected:
                raise CacheError(
                    f"{column} holds class id {count - 1}, outside the {expected} classes of "
                    f"{benchmark or 'the benchmark'}; train without that protocol, or check "
                    "the manifest's class ids"
                )
            if count < expected:
                log.info(
                    "task %s: %d classes, those of %s (the cache records no class table and "
                    "its largest id is %d)",
                    *(name, expected, benchmark or "the benchmark", count - 1),
                )
            count = expected
        else:
            log.info(
                "task %s: %d classes (the largest id + 1: the cache records no class table)",
                *(name, count),
            )
        tasks.append(Task(name, count, multi_label=name == "labels"))
    return tasks


def _labels(segments: pd.DataFrame, rows: np.ndarray, tasks: list[Task]) -> dict[str, torch.Tensor]:
    out = {}
    for task in tasks:
        if TASK_COLUMNS[task.name] not in segments:  # a cache without these labels (a test set)
            column = pd.Series([pd.NA] * len(rows), dtype="object")
        else:
            column = segments[TASK_COLUMNS[task.name]].iloc[rows]
        if task.multi_label:
            target = torch.zeros(len(rows), task.num_classes)
            for i, value in enumerate(column.fillna("")):
                ids = [int(v) for v in str(value).split(";") if v != ""]
                target[i, ids] = 1.0
            out[task.name] = target
        else:
            values = pd.to_numeric(column, errors="coerce").fillna(-1).astype("int64").to_numpy()
            out[task.name] = torch.from_numpy(values.copy())
    return out


def select_rows(
    cache: FeatureCache,
    domains: Sequence[str],
    splits: Sequence[str],
    modalities: Sequence[str],
    *,
    quiet: bool = False,
    trains: bool = True,
) -> np.ndarray:
    """Rows of ``domains`` x ``splits`` whose features are usable in every modality.

    Pending and failed rows are left out. A row whose input does not exist in a modality
    (status ``missing``: zero features, e.g. a video without an audio track) is kept with those
    zeros when another modality has its input, and left out when none does (it has nothing to
    be read from); both are logged with their counts, as the zeros are not features (unless
    ``quiet``: rows the caller's head never reads), with the ``--set modalities=...`` that
    trains without a modality where the rows are read to train (``trains``; not a finished
    run's rows that ``avda predict`` scores: its modalities are its own)."""
    segments = cache.segments
    mask = (
        segments["domain"].isin(list(domains)).to_numpy()
        & segments["split"].isin(list(splits)).to_numpy()
    )
    usable = np.ones(len(segments), dtype=bool)
    has_input = np.zeros(len(segments), dtype=bool)
    missing = {}
    for modality in modalities:
        status = cache.status(modality)
        usable &= (status == Status.DONE) | (status == Status.MISSING)
        has_input |= status == Status.DONE
        missing[modality] = status == Status.MISSING
    where = f"{'/'.join(map(str, domains))} {'/'.join(map(str, splits))}"
    skipped = int(np.sum(mask & ~usable))
    if skipped and not quiet:
        log.warning(
            "%d selected segments (%s) are not extracted (pending or failed): left out",
            *(skipped, where),
        )
    empty = mask & usable & ~has_input
    if empty.any() and not quiet:
        log.warning(
            "%d selected segments (%s) have no input in any modality used (%s: status missing, "
            "e.g. %s; %s): left out",
            *(int(empty.sum()), where, ", ".join(modalities)),
            *(_why_missing(cache, modalities, empty), _some_uids(segments, empty)),
        )
    kept = mask & usable & has_input
    for modality, rows in missing.items():
        count = int(np.sum(kept & rows))
        if count and not quiet:
            others = ",".join(m for m in modalities if m != modality)
            fix = f"; --set modalities=[{others}] leaves {modality} out" if trains else ""
            log.warning(
                "%d selected segments (%s) have no %s input (status missing, e.g. %s; %s): "
                "their %s features are zeros%s",
                *(count, where, modality, _why_missing(cache, [modality], kept & rows)),
                *(_some_uids(segments, kept & rows), modality, fix),
            )
    return np.flatnonzero(kept)


def _why_missing(cache: FeatureCache, modalities: Sequence[str], rows: np.ndarray) -> str:
    """Why the first of ``rows`` has no input: the reason its cache recorded (``no P01_01.npy
    in feats``, ``no audio track``), for the first modality that has one."""
    first = int(np.flatnonzero(rows)[0])
    for modality in modalities:
        reason = str(cache.errors(modality)[first] or "")
        if reason:
            return f"{modality}: {reason}"
    return "no input recorded for them"


def _some_uids(segments: pd.DataFrame, rows: np.ndarray, shown: int = 3) -> str:
    uids = segments["uid"].to_numpy(dtype=str)[rows]
    more = f" and {len(uids) - shown} more" if len(uids) > shown else ""
    return ", ".join(uids[:shown]) + more


def check_domains(cache: FeatureCache, domains: Sequence[str], role: str) -> None:
    known = sorted(cache.segments["domain"].dropna().unique())
    for domain in domains:
        if domain not in known:
            raise CacheError(
                unknown_name_message(f"{role} domain", domain, known)
                + f" (domains in {cache.path})"
            )


def load_set(
    cache: FeatureCache,
    name: str,
    rows: np.ndarray,
    modalities: Sequence[str],
    tasks: list[Task],
    clips: dict[str, Sequence[int] | None] | None = None,
) -> FeatureSet:
    """Features and labels of ``rows``; ``clips[modality]`` keeps only those clips (all if None)."""
    segments = cache.segments
    inputs = {
        m: torch.from_numpy(_load_clips(cache, m, rows, (clips or {}).get(m))) for m in modalities
    }  # the cache's dtype: FeatureSet.batch converts
    return FeatureSet(
        name=name,
        rows=rows,
        uids=segments["uid"].iloc[rows].to_numpy(dtype=str),
        inputs=inputs,
        labels=_labels(segments, rows, tasks),
        domains=segments["domain"].iloc[rows].to_numpy(dtype=str),
        groups=score_groups(segments, rows),
    )


def score_groups(segments: pd.DataFrame, rows: np.ndarray) -> np.ndarray | None:
    """The ``score_group`` of ``rows`` (``""`` = scored alone), or None where the segment
    table has no such column or none of ``rows`` has a group: scored row by row."""
    if "score_group" not in segments:
        return None
    groups = segments["score_group"].iloc[rows].fillna("").to_numpy(dtype=str)
    return groups if (groups != "").any() else None


def _load_clips(
    cache: FeatureCache, modality: str, rows: np.ndarray, clips: Sequence[int] | None
) -> np.ndarray:
    """``(n, K', D)`` features of ``rows`` in the cache's dtype, keeping clips ``clips`` (all
    when None).

    Selected clips are read block by block, so memory peaks at the kept clips plus one block
    (EPIC-100: 5 of 25 TBN snippets of 42k segments).
    """
    if clips is None:
        return cache.load(modality, rows, dtype=None)
    num_clips = cache.modality_info(modality)["num_clips"]
    index = np.asarray(list(clips), dtype=np.int64)
    if len(index) == 0 or index.min() < 0 or index.max() >= num_clips:
        raise ConfigError(
            f"clip indices {index.tolist()} do not fit the {num_clips} clips per segment of "
            f"{modality!r} in {cache.path}; check the head's clip settings (e.g. num_segments)"
        )
    rows = np.asarray(rows)
    blocks = [
        cache.load(modality, rows[start : start + _CLIP_BLOCK_ROWS], index, dtype=None)
        for start in range(0, len(rows), _CLIP_BLOCK_ROWS)
    ]
    if not blocks:
        shape = (0, len(index), cache.modality_info(modality)["num_features"])
        return np.zeros(shape, cache.features(modality).dtype)
    return np.concatenate(blocks)


_CLIP_BLOCK_ROWS = 2048
