"""One run set-up: what training, a staged head's stages and a run's embedding all start from.

:func:`plan` checks the domains, builds the head's config, selects the rows, infers the tasks
and chooses the device; :meth:`RunSetup.load_sets` loads the training, target and evaluation
sets with the source-train input statistics applied. :func:`avda.train.loop.train`,
:func:`avda.train.audio_adaptive.run.run_stages` and
:func:`avda.train.embedding.head_embedding` (the report's embedding of a finished run, from
:meth:`RunSetup.from_run`) use it, so the three see the same rows, clips and standardisation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from avda import runs
from avda.cache import FeatureCache, open_cache
from avda.data_manifests.schema import UNLABELLED_ONLY, UNLABELLED_ONLY_VALUE
from avda.data_manifests.settings import CHARADES_EGO, Setting
from avda.devices import resolve_device
from avda.errors import CacheError, ConfigError
from avda.train import data as data_lib
from avda.train import heads as heads_lib
from avda.train.data import FeatureSet, Statistics, Task
from avda.train.heads._base import Head, HeadConfig

LABELLED_TARGET_SEED = 0  # one labelled split per cache, the same for every head and seed

log = logging.getLogger(__name__)


def input_statistics(
    train: FeatureSet, standardize: bool, feature_scale: float = 0.0
) -> Statistics:
    """Per modality ``(shift, scale)`` from the source-train set: ``x -> (x - shift) / scale``.

    ``standardize``: per-dimension z-scores. ``feature_scale > 0``: then one scalar per modality
    so that the source-train clips' root-mean-square L2 norm is ``feature_scale``: the features
    keep their shape and sign (non-negative features stay non-negative), only their size
    changes, so a recipe tuned for one backbone's feature scale (an SGD learning rate) meets the
    same scale with any backbone. Empty when neither is asked for.
    """
    stats = {}
    for modality, x in train.inputs.items():
        clips = x.reshape(-1, x.shape[-1])  # (N*K, D), as held (float16)
        if standardize:
            flat = clips.float()
            std = flat.std(0)
            # Floor the scale at 10% of the median: a dimension (nearly) constant on the source
            # (a dead ReLU unit) but active on the target must not be blown up by a tiny std.
            floor = max(float(std.median()) * 0.1, 1e-6)
            shift, scale = flat.mean(0), std.clamp_min(floor)
            del flat
        else:
            shift, scale = torch.zeros(clips.shape[1]), torch.ones(clips.shape[1])
        if feature_scale > 0:
            # each clip's squared norm, a block of clips at a time: the same float32 values as
            # on a whole float32 copy, without holding it and its temporaries (GBs at EPIC scale)
            blocks = range(0, len(clips), _STATISTICS_BLOCK)
            squares = [
                ((clips[i : i + _STATISTICS_BLOCK].float() - shift) / scale).pow(2).sum(1)
                for i in blocks
            ]
            norm = float(torch.cat(squares or [torch.zeros(0)]).mean().sqrt())
            scale = scale * max(norm, 1e-12) / feature_scale
        if standardize or feature_scale > 0:
            stats[modality] = (shift, scale)
    return stats


_STATISTICS_BLOCK = 16384  # clips per block of the feature-scale norm (64 MB at D = 1024)


def apply_statistics(feature_set: FeatureSet, stats: Statistics) -> None:
    """Make ``feature_set`` read as ``x -> (x - shift) / scale`` for every modality of
    ``stats``: the set keeps its features as loaded (float16) and :meth:`FeatureSet.batch`
    applies them one batch at a time, with the float32 operations a whole float32 copy would
    take, so the same values without holding that copy (GBs at EPIC-100 scale)."""
    for modality, (shift, scale) in stats.items():
        if modality in feature_set.stats:
            raise ValueError(f"{feature_set.name}: statistics of {modality} applied twice")
        feature_set.stats[modality] = (shift.float(), scale.float())


def labelled_target_rows(
    store: FeatureCache, rows: np.ndarray, fraction: float, pick: str = "random"
) -> tuple[np.ndarray, np.ndarray]:
    """``(labelled, unlabelled)`` target training rows: a fixed ``fraction`` of ``rows`` whose
    labels enter the classification loss; the rest stay unlabelled. ``pick="random"``: chosen
    by a permutation seeded with :data:`LABELLED_TARGET_SEED`, so every head and run seed sees
    the same labelled videos, as in a dataset's split; ``"first"``: the first
    ``int(fraction * n)`` of the ``n`` videos whose rows have a label, in the cache's order,
    with all their labelled rows (the Audio-Adaptive authors' CharadesEgo split: the first
    half of the first-person training list, videos without an action left out; one row per
    video, or several with ``--unit windows``). Refuses a split without labels."""
    columns = [c for c in data_lib.TASK_COLUMNS.values() if c in store.segments]
    if pick == "first":
        segments = store.segments.iloc[rows]
        has = np.zeros(len(rows), dtype=bool)
        for column in columns:
            has |= segments[column].replace("", pd.NA).notna().to_numpy()
        candidates = rows[has]
        # by video: a manifest of several rows per video (CharadesEgo's action windows or
        # segments) labels the rows of the first videos, as the authors' list of videos does
        videos = segments["video_id"].to_numpy()[has]
        order = pd.unique(videos)
        count = int(fraction * len(order))
        labelled = candidates[np.isin(videos, order[:count])]
        unlabelled = np.setdiff1d(rows, labelled)
    else:
        order = np.random.default_rng(LABELLED_TARGET_SEED).permutation(len(rows))
        count = int(round(fraction * len(rows)))
        labelled, unlabelled = np.sort(rows[order[:count]]), np.sort(rows[order[count:]])
    segments = store.segments.iloc[labelled]
    has_label = any(segments[c].replace("", pd.NA).notna().any() for c in columns)
    if count == 0 or not has_label:
        raise CacheError(
            f"labelled_target={fraction}: no labelled target training segment in {store.path} "
            f"({count} {'videos' if pick == 'first' else 'rows'} of "
            f"{len(order) if pick == 'first' else len(rows)} chosen); build the cache from a "
            "manifest with the target training labels, or set labelled_target=0"
        )
    return labelled, unlabelled


def unlabelled_only(store: FeatureCache, rows: np.ndarray) -> np.ndarray:
    """Which of ``rows`` are marked ``unlabelled_only`` (docs/manifest.md "Unlabelled-only
    rows"); all False for a cache without the column (built before it, or without such rows)."""
    segments = store.segments
    if UNLABELLED_ONLY not in segments:
        return np.zeros(len(rows), dtype=bool)
    marks = segments[UNLABELLED_ONLY].iloc[rows].fillna("").to_numpy(dtype=str)
    return np.char.strip(marks) == UNLABELLED_ONLY_VALUE


@contextlib.contextmanager
def quiet_repeated() -> Iterator[None]:
    """The records of a head built or rows read again, which the run logs itself (when it
    trains, or logged when it trained): the head's warnings about its config on this cache
    (cia's "one visual modality: add flow", audio-adaptive's "3 classes, so absent_classes=2")
    and the rows' (``N selected segments (target train) have no audio input ... --set
    modalities=[rgb] leaves audio out``, a training hint). A report and ``avda predict``
    repeated them per run as if they were their own, and ``check_head``'s build before the
    run's said the head's twice; errors pass, and everything with ``avda -v``."""
    loggers = [logging.getLogger(name) for name in ("avda.train.heads", "avda.train.data")]
    if loggers[0].isEnabledFor(logging.DEBUG):
        yield
        return
    previous = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, previous, strict=True):
            logger.setLevel(level)


def _no_target_training(store: FeatureCache, target: Sequence[str]) -> str:
    """'target domain(s) [...] have no 'train' split segments in STORE', and why where the
    target is CharadesEgo's first person (a cache of the v0 files)."""
    why = ""
    if tuple(target) == CHARADES_EGO.target_domains:
        why = (
            " (CharadesEgo's v0 files, the Actor-Observer release, have no first-person "
            "training video: build the manifest from the v1 release, `--option version=v1`, "
            "or from its one-view files as the Audio-Adaptive code, `--option "
            "version=v1-only`; docs/benchmarks.md)"
        )
    return f"target domain(s) {list(target)} have no 'train' split segments in {store.path}{why}"


def training_rows(
    store: FeatureCache,
    source: Sequence[str],
    target: Sequence[str],
    modalities: Sequence[str],
    config: HeadConfig,
    *,
    reads_target: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """``(source_rows, target_rows)`` a run trains on: the labelled rows (the source domains'
    training split, with the labelled share of the target's when ``labelled_target > 0``) and
    the unlabelled target training rows. :func:`plan` and ``avda predict`` (the target set an
    adapting head normalises with) select them here, so both see the same rows.

    Rows marked ``unlabelled_only`` (CharadesEgo ``--unit windows``' whole-video rows of the
    first-person training videos) are never source or labelled rows: the labelled share is
    chosen among the other target rows, and a target video with marked rows contributes to
    the unlabelled target rows its marked rows, and only those, when none of its rows is
    labelled (else nothing): the authors' unlabelled half draws its windows anywhere in the
    video, not at its annotated actions. Without marked rows, as before.

    ``reads_target=False`` (a head that reads no unlabelled target row, in training or at
    evaluation: source-only): what the target rows lack (audio, extraction) is not logged,
    unless a labelled share of them is read."""
    source_rows = data_lib.select_rows(store, source, ["train"], modalities)
    source_rows = source_rows[~unlabelled_only(store, source_rows)]
    quiet = not reads_target and config.labelled_target <= 0
    target_rows = data_lib.select_rows(store, target, ["train"], modalities, quiet=quiet)
    if len(source_rows) == 0:
        raise CacheError(
            f"no extracted training segments for source domain(s) {list(source)} in {store.path}"
        )
    marked = unlabelled_only(store, target_rows)
    whole, target_rows = target_rows[marked], target_rows[~marked]
    labelled = target_rows[:0]
    if config.labelled_target > 0:  # semi-supervised: part of the target is labelled
        if len(target_rows) == 0 and not len(whole):  # not 'set labelled_target=0' alone
            raise CacheError(
                f"labelled_target={config.labelled_target}: "
                f"{_no_target_training(store, target)}; extract or import the target's "
                "training segments into the cache, or set labelled_target=0"
            )
        labelled, target_rows = labelled_target_rows(
            store, target_rows, config.labelled_target, config.labelled_target_pick
        )
        source_rows = np.concatenate([source_rows, labelled])
    if len(whole):  # the marked rows replace their videos' other rows as unlabelled rows
        videos = store.segments["video_id"].to_numpy(dtype=str)
        replaced = np.isin(videos[target_rows], videos[whole])
        whole = whole[~np.isin(videos[whole], videos[labelled])]
        target_rows = np.sort(np.concatenate([target_rows[~replaced], whole]))
    return source_rows, target_rows


def evaluation_rows(store: FeatureCache, source: Sequence[str], target: Sequence[str], modalities):
    """``source_val``, ``source_test``, ``target_val``, ``target_test`` rows that exist."""
    sets = {}
    for role, domains in (("source", source), ("target", target)):
        for split in ("val", "test"):
            rows = data_lib.select_rows(store, domains, [split], modalities)
            if len(rows):
                sets[f"{role}_{split}"] = rows
    return sets


@dataclasses.dataclass
class RunSetup:
    """A head, its resolved config and the cache rows a run trains and evaluates on."""

    store: FeatureCache
    head: str  # the registered head name
    config: HeadConfig
    modalities: list[str]
    tasks: list[Task]
    device: str
    source_rows: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))
    target_rows: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))
    eval_rows: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    @property
    def head_class(self) -> type[Head]:
        return heads_lib.HEADS.get(self.head)

    def clips(self) -> dict[str, list[int] | None]:
        """The cached clips of each modality the head reads (:meth:`Head.input_clips`)."""
        return {
            m: self.head_class.input_clips(self.config, self.store.modality_info(m)["num_clips"])
            for m in self.modalities
        }

    def load(self, name: str, rows: np.ndarray, stats: Statistics | None = None) -> FeatureSet:
        """The features of ``rows`` as the head reads them, with ``stats`` applied."""
        feature_set = data_lib.load_set(
            self.store, name, rows, self.modalities, self.tasks, self.clips()
        )
        apply_statistics(feature_set, stats or {})
        return feature_set

    def load_sets(
        self, *, evaluation: bool = True, target: bool = True
    ) -> tuple[FeatureSet, FeatureSet, dict[str, FeatureSet], Statistics]:
        """``(source_train, target_train, {eval set: set}, stats)``, every set standardised
        with the source-train statistics the config asks for (:func:`input_statistics`).
        ``target=False``: the target training set is loaded empty (a head that never reads it:
        source-only holds half of EPIC-100's features less)."""
        target_rows = self.target_rows if target else self.target_rows[:0]
        rows = len(self.source_rows) + len(target_rows)
        rows += sum(len(r) for r in self.eval_rows.values()) if evaluation else 0
        clips, row_bytes = self.clips(), 0
        for modality in self.modalities:
            info = self.store.modality_info(modality)
            kept = info["num_clips"] if clips.get(modality) is None else len(clips[modality])
            itemsize = self.store.features(modality).dtype.itemsize  # held as cached
            row_bytes += kept * info["num_features"] * itemsize
        log.info(
            "loading %d segments' features into memory (%s, %.1f GB)",
            rows,
            ", ".join(self.modalities),
            rows * row_bytes / 1e9,
        )
        train_set = self.load("source_train", self.source_rows)
        target_set = self.load("target_train", target_rows)
        eval_sets = {n: self.load(n, r) for n, r in self.eval_rows.items()} if evaluation else {}
        stats = input_statistics(train_set, self.config.standardize, self.config.feature_scale)
        for feature_set in (train_set, target_set, *eval_sets.values()):
            apply_statistics(feature_set, stats)
        return train_set, target_set, eval_sets, stats

    def build_head(self, inputs: dict[str, tuple[int, ...]]) -> Head:
        return heads_lib.create(self.head, inputs=inputs, tasks=self.tasks, config=self.config)

    def check_head(self) -> None:
        """Build the head on two source segments' features: a combination the head refuses
        (its own ValueError / TypeError, or a ConfigError) is raised before a run folder is
        written or a sweep's cluster starts."""
        sample = self.load("source_train", self.source_rows[:2])
        with quiet_repeated():  # the run's own build logs what the head says
            self.build_head({m: tuple(sample.inputs[m].shape[1:]) for m in self.modalities})

    @classmethod
    def from_run(
        cls, run: Path, device: str | None = "cpu", cache: str | Path | FeatureCache | None = None
    ) -> RunSetup:
        """The set-up a finished run recorded (``config.yaml``): its head, resolved config,
        modalities and tasks, on its cache or on ``cache`` (rows are selected by the caller)."""
        config = runs.read_config(run)
        if cache is None:
            cache = config["cache"]
        return cls(
            store=cache if isinstance(cache, FeatureCache) else open_cache(cache),
            head=config["head"],
            config=heads_lib.config_class(config["head"]).from_stored(config["head_config"]),
            modalities=list(config["modalities"]),
            tasks=[Task(**t) for t in config["tasks"]],
            device=resolve_device(device),
        )


def _benchmark_classes(protocol: str, source: Sequence[str], target: Sequence[str]) -> dict:
    """The class counts of ``protocol``'s benchmark when the run's domains are that
    benchmark's (EPIC-55's D1-D3, CharadesEgo's third/first...), else none: a protocol's
    recipe can run on another dataset, whose classes it does not know."""
    from avda import protocols as protocols_lib

    chosen = protocols_lib.get(protocol)
    if not chosen.classes or not _on_benchmark(protocol, source, target):
        return {}
    return dict(chosen.classes)


def _benchmark_domains(protocol: str) -> set[str]:
    """The domains of ``protocol``'s settings (empty for a protocol of any dataset)."""
    from avda import protocols as protocols_lib

    return {d for setting in protocols_lib.get(protocol).named_settings() for d in setting.domains}


def _on_benchmark(protocol: str, source: Sequence[str], target: Sequence[str]) -> bool:
    domains = _benchmark_domains(protocol)
    return bool(domains) and {*source, *target} <= domains


def _check_protocol_run(protocol: str, source, target, config, head: str) -> None:
    """Refuse a run too short for its protocol's table (fewer evaluations than the checkpoints
    it averages); warn when the run's domains are not the protocol's benchmark's (only its
    recipe applies there; a semi-supervised one still uses target labels)."""
    from avda import protocols as protocols_lib

    rule = protocols_lib.get(protocol).evaluation
    needed = rule.checkpoints
    every = max(int(config.eval_every), 1)
    evaluations = runs.evaluations(config.epochs, every)
    if needed > 1 and evaluations < needed:
        raise ConfigError(
            f"protocol {protocol} scores {rule.needs()}, but this "
            f"{head} run evaluates {evaluations} time(s) ({config.epochs} epochs, eval_every "
            f"{every}): train at least {(needed - 1) * every + 1} epochs (--epochs), or "
            "without the protocol (no --protocol, and no protocol: line in a --config file)"
        )
    if _benchmark_domains(protocol) and not _on_benchmark(protocol, source, target):
        labels = (
            f"; its labelled_target={config.labelled_target} trains on that share of "
            f"{list(target)}'s training labels (not unsupervised adaptation)"
            if config.labelled_target > 0
            else ""
        )
        log.warning(
            "protocol %s is a benchmark of domains %s; on %s -> %s only its recipe applies "
            "(not its class counts or split)%s",
            *(protocol, ", ".join(sorted(_benchmark_domains(protocol))), "+".join(source)),
            *("+".join(target), labels),
        )


def _warn_target_labels_in_backbone(store: FeatureCache, modalities, target) -> None:
    """A backbone `avda finetune` trained on a target domain's labels (the store records the
    fine-tuning's source domains, or, extracted before it did, the weights' own record does)
    has seen the labels the run is scored on: say so."""
    for modality in modalities:
        tuned, _ = store.finetuning(modality)
        if tuned is None:
            continue
        seen = sorted(set(map(str, target)) & set(map(str, tuned.get("source") or [])))
        if seen:
            log.warning(
                "the %s features of %s come from a backbone fine-tuned on the labels of "
                "target domain(s) %s (%s): its target scores are not unsupervised adaptation; "
                "fine-tune on the source domain(s) only for that",
                modality, store.path, ", ".join(seen), tuned.get("record"),
            )  # fmt: skip


def plan(
    *,
    cache: str | Path,
    head: str,
    source: Sequence[str],
    target: Sequence[str],
    overrides: dict[str, Any] | None = None,
    device: str | None = None,
    evaluation: bool = True,
    protocol: str | None = None,
) -> RunSetup:
    """Check ``source`` / ``target`` against the cache, build ``head``'s config for this data
    (a recipe's schedule in optimiser steps, the choices the cache decides) and select the rows;
    one-line errors for anything a run cannot start with. ``evaluation``: also select the
    val / test rows of both sides. ``protocol``: the run's protocol; ``head`` is then the
    protocol's method (``source-only``), resolved to the head that trains it and its config
    values, and the benchmark's class counts size the tasks when the cache records no class
    table."""
    chosen = None
    method = head  # what the user named: a protocol's method trains another head
    if protocol is not None:
        from avda import protocols as protocols_lib

        chosen = protocols_lib.get(protocol)
        head, overrides = chosen.resolve(head, overrides, source, target)
    Setting(tuple(source), tuple(target))  # refuses a domain on both sides, or none on one
    store = open_cache(cache)
    for role_name, domains in (("source", source), ("target", target)):
        data_lib.check_domains(store, domains, role_name)
    config = heads_lib.config_class(head).from_dict(overrides or {})
    modalities = list(config.modalities) or store.modalities
    for modality in modalities:
        store.modality_info(modality)  # raises for a modality the cache lacks
    _warn_target_labels_in_backbone(store, modalities, target)
    device = resolve_device(device)

    cls = heads_lib.HEADS.get(head)
    # whether the head may read unlabelled target rows (a "config" head decides only once its
    # config is resolved, below, which needs these rows)
    reads_target = cls.target_use != "never" or cls.adapts_at_evaluation
    source_rows, target_rows = training_rows(
        store, source, target, modalities, config, reads_target=reads_target
    )
    eval_rows = evaluation_rows(store, source, target, modalities) if evaluation else {}
    if not any(k.startswith("target") for k in eval_rows) and len(target_rows) == 0:
        raise CacheError(
            f"cache {store.path} has no segments of target domain(s) {list(target)}: "
            "nothing to adapt to or evaluate on"
        )
    # A recipe's schedule is an amount of optimisation: epochs for this data size.
    checkpoints = chosen.evaluation.checkpoints if chosen is not None else 1
    config = config.for_data(len(source_rows), head, min_evaluations=checkpoints)
    if protocol is not None:
        named = head if method == head else f"{method} (head {head})"
        _check_protocol_run(protocol, source, target, config, named)
    known = _benchmark_classes(protocol, source, target) if protocol is not None else {}
    tasks = data_lib.infer_tasks(
        store.segments,
        source_rows,
        config.tasks or None,
        store.provenance.get("classes"),
        known=known,
        benchmark=f"protocol {protocol}'s dataset" if protocol else "",
    )
    # e.g. cia's spatial=auto, rna's setting=auto
    config = cls.resolve_config(config, store, modalities, target_segments=len(target_rows))
    if cls.needs_target(config) and len(target_rows) == 0:
        raise CacheError(
            f"head {head!r} needs unlabelled target training segments, but "
            f"{_no_target_training(store, target)}; extract or import the target's training "
            "segments into the cache, or train a head without a target term (source-only, adabn)"
        )
    return RunSetup(
        store=store,
        head=head,
        config=config,
        modalities=modalities,
        tasks=tasks,
        device=device,
        source_rows=source_rows,
        target_rows=target_rows,
        eval_rows=eval_rows,
    )


__all__ = [
    "LABELLED_TARGET_SEED",
    "RunSetup",
    "Statistics",
    "apply_statistics",
    "evaluation_rows",
    "input_statistics",
    "labelled_target_rows",
    "plan",
    "quiet_repeated",
    "training_rows",
    "unlabelled_only",
]
