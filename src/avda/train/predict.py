"""A finished run's head applied to cache rows it never saw (``avda predict``).

The head is rebuilt from the run's ``config.yaml`` and ``checkpoints/last.pt`` and predicts the
way the run's own final evaluation did (:func:`avda.train.loop.evaluate_sets`):

- the input statistics (standardisation, feature scale) are the ones the run recorded in its
  checkpoint, never recomputed on the new rows;
- the rows are predicted in sets named as the loop names its evaluation sets
  (``<role>_<split>``): a row of one of the run's source domains is ``source``, any other
  domain (the run's target, or a domain the run never saw) is ``target``, so a domain-specific
  normalisation (TA3N, MM-SADA, CIA's per-domain norms) takes the target's statistics there;
  each domain the run never saw is a set of its own (``target_<split>@<domain>``);
- a head that adapts at evaluation (AdaBN) re-estimates its target statistics from the run's
  own unlabelled target training set (on the run's cache, with the run's statistics), exactly
  as at the run's evaluation (``statistics="evaluation-set"``: from the predicted set);
- a staged head (Audio-Adaptive) reloads its stages from ``RUN/stages`` (read only: nothing is
  written into the run) on the run's training sets, then predicts with its final recognizer as
  the run's final evaluation did.

Predicting a run's own evaluation set (``target_test``) therefore reproduces the scores the
run stored in ``predictions/target_test.npz`` bit for bit.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from avda import runs
from avda._io import progress_bar
from avda.cache import FeatureCache, open_cache
from avda.cache.store import as_recorded, comparable_record
from avda.errors import CacheError, ConfigError, RunError
from avda.paths import check_output_file
from avda.scoring.metrics import task_ties, top1_accuracy
from avda.scoring.protocols import set_metrics
from avda.train import data as data_lib
from avda.train import heads as heads_lib
from avda.train import loop as loop_lib
from avda.train.data import FeatureSet
from avda.train.heads._base import shape_errors
from avda.train.setup import RunSetup, evaluation_rows, quiet_repeated, training_rows
from avda.train.stages import TrainingContext

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Predictions:
    """What :func:`predict_run` predicted: per row (in the order of ``sets``) its ``uids``,
    ``labels`` and ``scores`` per task (the arrays of a run's ``predictions/<set>.npz``),
    ``sets`` (name -> number of rows, in order) and ``metrics`` per set where labels exist
    (``<set>/<task>/top1`` ..., fractions, as a run's ``metrics.jsonl``; a multi-label mAP by
    the cache's ``score_group``, as the run's loop scores it). ``groups``: each row's
    ``score_group`` (``""`` = scored alone) where the cache has one, else None."""

    uids: np.ndarray
    labels: dict[str, np.ndarray]
    scores: dict[str, np.ndarray]
    sets: dict[str, int]
    metrics: dict[str, float]
    run: Path | None = None  # the run that predicted (save refuses to write into it)
    groups: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.uids)

    def __repr__(self) -> str:
        sets = ", ".join(f"{name}: {count}" for name, count in self.sets.items())
        return f"Predictions({len(self)} segments; {sets}; tasks {', '.join(self.scores)})"

    def set_names(self) -> np.ndarray:
        """The set of every row (``target_test``, ``target_test@P03``...), in row order."""
        return np.repeat(list(self.sets), list(self.sets.values())).astype(str)

    def top1(self, task: str, set: str | None = None) -> float | None:
        """Top-1 accuracy of ``task`` over the rows of ``set`` that have a label (a row
        without one, ``-1``, is not counted); None where none has (or the task is
        multi-label). It is ``metrics["<set>/<task>/top1"]``. ``set`` may be left out only
        when one set was predicted: an accuracy over several would mix source and target,
        training and test rows, which no metric of a run does. ``"action"``, for a run with
        verb and noun: EPIC-100's action top-1 (the official scorer), over the rows labelled
        with both."""
        has_action = {"verb", "noun"} <= self.scores.keys()
        action = task == "action" and has_action
        if task not in self.scores and not action:
            extra = " (and action: verb and noun)" if has_action else ""
            raise ConfigError(
                f"the run predicts no task {task!r}; its tasks: {', '.join(self.scores)}{extra}"
            )
        if set is None:
            if len(self.sets) > 1:
                raise ConfigError(
                    f"top1({task!r}): {len(self.sets)} sets were predicted "
                    f"({', '.join(self.sets)}); name one, e.g. "
                    f"top1({task!r}, set={next(reversed(self.sets))!r})"
                )
            set = next(iter(self.sets))
        if set not in self.sets:
            raise ConfigError(f"no predicted set {set!r}; sets: {', '.join(self.sets)}")
        chosen = self.set_names() == set
        if action:
            pair = ("verb", "noun")
            metrics = set_metrics(
                "rows",
                {t: self.scores[t][chosen] for t in pair},
                {t: self.labels[t][chosen] for t in pair},
            )
            return metrics.get("rows/action/top1")
        labels, scores = self.labels[task][chosen], self.scores[task][chosen]
        if labels.ndim != 1:
            return None
        known = labels >= 0
        if not known.any():
            return None
        single = [t for t in self.scores if self.labels[t].ndim == 1]
        return top1_accuracy(scores[known], labels[known], task_ties(task, single))

    def to_frame(self) -> pd.DataFrame:
        """One row per segment, the table ``save`` writes as .csv: ``uid``, ``set`` (and
        ``group`` where the cache has score groups), per task ``<task>_label`` and
        ``<task>_prediction`` (the arg-max class; -1: no label); a multi-label task
        ``<task>_labels`` (its true class ids) and ``<task>_top5`` (the five best-scored),
        ``;``-joined."""
        return runs.predictions_table(self.uids, self.labels, self.scores, self._columns())

    def _columns(self) -> dict[str, np.ndarray]:
        columns = {"set": self.set_names()}
        if self.groups is not None:
            columns[runs.GROUP_COLUMN] = self.groups
        return columns

    def save(self, path: str | Path) -> Path:
        """Write ``path`` (a ``.npz``) and its .csv as a run writes its predictions, with each
        row's ``set`` (and its ``score_group`` as ``group``, where the cache has one)."""
        path = check_output(self.run, path)
        return runs.save_predictions(
            path, self.uids, self.labels, self.scores, columns=self._columns()
        )


def _check_same_features(run: Path, recorded: dict[str, Any], store: FeatureCache, modalities):
    """Refuse a cache whose features are not the run's: a modality missing, or recorded with
    other extraction settings (clips, feature size, backbone, weights, precision, maps)."""
    for modality in modalities:
        infos = store.provenance.get("modalities") or {}
        if modality not in infos:
            raise CacheError(
                f"cache {store.path} has no {modality!r} features, which run {run} reads (it "
                f"has: {', '.join(sorted(infos)) or 'none'}); extract them with `avda extract "
                f"--modalities {modality}` and the run's backbone"
            )
        want = recorded.get(modality)
        if not isinstance(want, dict):
            continue  # a run recorded before it: nothing to compare with
        want = comparable_record(want)  # what the run's older record lacks is not compared
        have = as_recorded(comparable_record(dict(infos[modality])), want)
        keys = sorted(k for k in {*want, *have} if want.get(k) != have.get(k))
        if keys:
            raise CacheError(
                f"cache {store.path}: its {modality} features differ from those run {run} "
                f"trained on ({_shown(want, have, keys)}); extract {modality} with the run's "
                "settings (avda extract, the same backbone, weights and recipe) to predict "
                "with this run"
            )


def check_output(run: str | Path | None, out: str | Path) -> Path:
    """``out``, a .npz file (a folder or ``.npz`` alone, :func:`check_output_file`, and another
    suffix are refused), refused inside ``run`` (whose predictions avda evaluate reads back)."""
    out = check_output_file(out, "-o", "predictions.npz")
    if run is not None and out.resolve().is_relative_to(Path(run).resolve()):
        raise ConfigError(
            f"-o {out} is inside run {run}, whose files avda reads back (evaluate, report): "
            "write the predictions elsewhere"
        )
    if out.suffix != ".npz":
        raise ConfigError(
            f"-o {out}: avda predict writes a .npz (and its .csv beside it); name it "
            f"{out.with_suffix('.npz').name}"
        )
    return out


def _shown(want: dict[str, Any], have: dict[str, Any], keys: list[str]) -> str:
    """The first three differing ``keys`` as ``key: run VALUE, cache VALUE`` (values cut to
    60 characters: a backbone's input spec is a dict)."""

    def short(value: Any) -> str:
        text = repr(value)
        return text if len(text) <= 60 else text[:57] + "..."

    return "; ".join(f"{k}: run {short(want.get(k))}, cache {short(have.get(k))}" for k in keys[:3])


def _check_same_recipe_and_classes(run: Path, recorded: dict[str, Any], store: FeatureCache):
    """Refuse a cache extracted with another recipe (crop, clips, frame sampling: its
    settings, not its name) or holding another class table than the cache the run trained on
    (a field one record lacks, written by an older avda, is not compared)."""
    want, have = recorded.get("recipe"), store.provenance.get("recipe")
    generated = any(
        isinstance(r, dict) and str(r.get("name", "")).startswith("synthetic") for r in (want, have)
    )
    if isinstance(want, dict) and isinstance(have, dict) and not generated:
        # the settings that make the features, not the recipe's name or its random placement's
        # seed; a generated cache (avda.cache.synthetic) records its generator, not a recipe
        keys = sorted(k for k in set(want) & set(have) - {"name", "seed"} if want[k] != have[k])
        if keys:
            raise CacheError(
                f"cache {store.path} was extracted with another recipe than the features run "
                f"{run} trained on ({_shown(want, have, keys)}); extract with the run's "
                "--recipe to predict with it"
            )
    want, have = recorded.get("classes"), store.provenance.get("classes")
    if isinstance(want, dict) and isinstance(have, dict):
        for column in sorted(set(want) & set(have)):
            if list(want[column]) != list(have[column]):
                raise CacheError(
                    f"cache {store.path}: its {column} class table is not the one of the cache "
                    f"run {run} trained on (names or order differ); its scores would be read "
                    "against the wrong classes: build the cache's manifest with the run's class "
                    "table"
                )


def _check_training_rows(
    run: Path,
    recorded: dict[str, Any] | None,
    store: FeatureCache,
    used: dict[str, np.ndarray],
    setup: RunSetup | None = None,
) -> None:
    """Refuse predicting when the ``used`` training sets of the run (name -> rows now) changed
    since it trained (segments extracted, failed or appended to its training splits): an
    adapting head would normalise with other statistics, a staged head read other rows than
    its stages were made from. A run recorded before the per-set digests has one digest of
    all its sets: when the rows ``setup`` reads no longer match it, a warning (evaluation rows
    added change it too, so it cannot refuse)."""
    data = (recorded or {}).get("run_data")
    digests = data.get("training_sets_sha256") if isinstance(data, dict) else None
    if not isinstance(digests, dict):
        overall = data.get("segments_sha256") if isinstance(data, dict) else None
        if overall and setup is not None:
            if loop_lib.run_data(setup)["segments_sha256"] != overall:
                log.warning(
                    "run %s predates avda's digest of each training set, and the rows of %s "
                    "it read changed since it trained (segments extracted, failed or added): "
                    "if its training splits changed, the head's statistics and stages now "
                    "read other rows than at its evaluation",
                    run,
                    store.path,
                )
        return
    uids = store.segments["uid"].astype(str).to_numpy()
    for name, rows in used.items():
        if name in digests and loop_lib.rows_digest(uids, rows) != digests[name]:
            raise RunError(
                f"the {name} rows of {store.path} changed since run {run} trained on them "
                f"(now {len(rows)}: segments extracted, failed or added): its head uses them "
                "at evaluation; restore the cache's training splits, or put new segments in "
                "another domain or split"
            )


def _check_labels(run: Path, store: FeatureCache, rows: np.ndarray, tasks) -> None:
    """Refuse labels the run's head has no class for (a cache of another class table): one
    line, not an index error while the labels load."""
    import pandas as pd

    segments = store.segments
    for task in tasks:
        column = data_lib.TASK_COLUMNS[task.name]
        if column not in segments:
            continue  # no labels: predicted without
        values = segments[column].iloc[rows]
        if task.multi_label:
            ids = [int(v) for text in values.dropna() for v in str(text).split(";") if v != ""]
        else:
            ids = pd.to_numeric(values, errors="coerce").dropna().astype(int).tolist()
        if ids and max(ids) >= task.num_classes:
            raise CacheError(
                f"cache {store.path}: {column} holds class id {max(ids)}, but run {run} predicts "
                f"{task.num_classes} {task.name} classes (ids 0..{task.num_classes - 1}): its "
                "labels follow another class table; predict rows of the run's classes (--domain "
                "/ --split) or a cache built with the run's class table"
            )


def _recorded_features(run: Path, run_store: FeatureCache | None) -> dict[str, Any]:
    provenance = runs.read_provenance(run) or {}
    data = provenance.get("run_data")
    if isinstance(data, dict) and isinstance(data.get("modalities"), dict):
        return data["modalities"]
    if isinstance(provenance.get("modalities"), dict):
        return provenance["modalities"]
    return dict(run_store.provenance.get("modalities") or {}) if run_store else {}


def _open_run_cache(
    run: Path, config: dict[str, Any], store: FeatureCache | None = None
) -> FeatureCache:
    """The cache the run trained on (``store``: the caller's, found to be it), refused if it
    was rebuilt since."""
    try:
        store = store if store is not None else open_cache(config["cache"])
    except CacheError as exc:
        raise CacheError(
            f"run {run} needs the cache it trained on ({config['cache']}) to predict: its head "
            f"uses the run's training rows at evaluation; {exc} (moved? pass it with --cache)"
        ) from None
    recorded = runs.read_provenance(run)
    if recorded is not None and not loop_lib.same_cache(recorded, store.provenance):
        raise RunError(
            f"the cache at {store.path} is not the one run {run} trained on (rebuilt since?); "
            "restore that cache to predict with this run"
        )
    return store


def prediction_rows(
    store: FeatureCache,
    modalities: Sequence[str],
    source: Sequence[str],
    domains: Sequence[str] | None = None,
    splits: Sequence[str] | None = None,
    target: Sequence[str] = (),
) -> dict[str, np.ndarray]:
    """The usable rows of ``domains`` x ``splits`` of ``store`` (default: all of them), in sets
    named as the loop's evaluation sets: ``source_<split>`` for the run's ``source`` domains,
    ``target_<split>`` for its ``target`` domains, ``target_<split>@<domain>`` for each other
    domain (a set of its own: a head that re-estimates statistics on the predicted set does
    so per domain); ``..._train_rows`` for a training split (the names ``source_train`` /
    ``target_train`` are the run's own training sets)."""
    segments = store.segments
    known_domains = sorted(segments["domain"].dropna().unique())
    known_splits = sorted(segments["split"].dropna().unique())
    if domains:
        data_lib.check_domains(store, domains, "predicted")
    if splits:
        for split in splits:
            if split not in known_splits:
                raise CacheError(
                    data_lib.unknown_name_message("--split", split, known_splits)
                    + f" (splits in {store.path})"
                )
    chosen_domains = list(domains) if domains else known_domains
    chosen_splits = list(splits) if splits else known_splits
    order = {"train": 0, "val": 1, "test": 2}
    sets: dict[str, np.ndarray] = {}
    groups = [("source", "", [d for d in chosen_domains if d in source])]
    groups.append(("target", "", [d for d in chosen_domains if d in target and d not in source]))
    groups += [
        ("target", f"@{d}", [d]) for d in chosen_domains if d not in source and d not in target
    ]
    for role, suffix, members in groups:
        if not members:
            continue
        for split in sorted(chosen_splits, key=lambda s: (order.get(s, 3), s)):
            rows = data_lib.select_rows(store, members, [split], modalities, trains=False)
            if len(rows):
                name = f"{role}_{split}" + ("_rows" if split == "train" else "")
                sets[name + suffix] = rows
    if not sets:
        raise CacheError(
            f"no extracted segments of domain(s) {chosen_domains} and split(s) {chosen_splits} "
            f"in {store.path}: nothing to predict"
        )
    return sets


def predict_run(
    run: str | Path,
    cache: str | Path | FeatureCache | None = None,
    *,
    domains: Sequence[str] | None = None,
    splits: Sequence[str] | None = None,
    device: str | None = None,
    progress: bool = True,
) -> Predictions:
    """Scores of the finished ``run``'s head on ``domains`` x ``splits`` of ``cache`` (default:
    the run's cache; every domain and split) on ``device`` (default: cuda when present, as
    ``avda.predict`` and ``avda predict``; the scores equal the run's own bit for bit on the
    kind of device it trained on, to float rounding on another). The module docstring says
    how the head sees the rows. An unfinished run is refused (its checkpoint is not the head
    its predictions came from); so is a cache whose features differ from the run's."""
    run = Path(run)
    config = runs.read_config(run)
    if not runs.is_complete(run):
        raise RunError(
            f"{run} is not a finished run (no complete run.json): its checkpoint is not the "
            f"head it evaluates; finish it first (avda train --config {run / runs.CONFIG} "
            f"-o {run} resumes it)"
        )
    given = cache if isinstance(cache, FeatureCache) or cache is None else open_cache(cache)
    provenance = runs.read_provenance(run)
    # the run's own cache: at the path it trained on, or the same store moved or copied since
    own_cache = (
        given is None
        or Path(given.path).resolve() == Path(str(config.get("cache"))).resolve()
        or (provenance is not None and loop_lib.same_cache(provenance, given.provenance))
    )
    cls = heads_lib.HEADS.get(config["head"])
    # the run's own cache: predicted on, or read for the run's training sets (a staged head's
    # stages, an adapting head's target statistics)
    needs_run_cache = own_cache or cls.staged or cls.adapts_at_evaluation
    with quiet_repeated():  # planning the run again: the rows are named once, below
        run_setup = (
            RunSetup.from_run(
                run, device, cache=_open_run_cache(run, config, given if own_cache else None)
            )
            if needs_run_cache
            else None
        )
        setup = run_setup if own_cache else RunSetup.from_run(run, device, cache=given)
    if not own_cache:
        recorded = _recorded_features(run, run_setup.store if run_setup else None)
        _check_same_features(run, recorded, setup.store, setup.modalities)
        _check_same_recipe_and_classes(run, provenance or {}, setup.store)
        if cls.staged and getattr(setup.config, "encoder_input", None) == "spatial":
            raise RunError(
                f"run {run} ({config['head']}, encoder_input=spatial) predicts only on the "
                "cache it trained on: its stages read that cache's spatial maps; append the "
                "new segments to it (avda extract) and pass --domain/--split"
            )
    state = runs.load_checkpoint(run / runs.CHECKPOINT)
    statistics = state.get("standardize") or {}
    head_name = setup.head
    device = setup.device
    modalities = setup.modalities

    rows = prediction_rows(
        setup.store, modalities, config["source"], domains, splits, config["target"]
    )
    _check_labels(run, setup.store, np.concatenate(list(rows.values())), setup.tasks)
    bar = progress_bar(
        list(rows.items()), desc=f"predict {head_name}", unit="set", disable=not progress
    )
    sets: dict[str, FeatureSet] = {}
    for name, set_rows in bar:
        sets[name] = setup.load(name, set_rows, statistics)  # the run's statistics
    bar.close()

    # what the loop's prepare and evaluation read besides the predicted rows: the run's own
    # training sets (a staged head's stages; an adapting head's target statistics)
    empty = setup.load("source_train", np.zeros(0, np.int64), statistics)
    train_set, target_set = empty, setup.load("target_train", np.zeros(0, np.int64))
    if run_setup is not None and (cls.staged or cls.adapts_at_evaluation):
        with quiet_repeated():  # the run's rows, as it logged them when it trained
            source_rows, target_rows = training_rows(
                run_setup.store, config["source"], config["target"], modalities, run_setup.config
            )
            eval_rows = evaluation_rows(
                run_setup.store, config["source"], config["target"], modalities
            )
        used = {
            "target_train": target_rows,
            **({"source_train": source_rows} if cls.staged else {}),
        }
        as_trained = dataclasses.replace(  # the rows the run's loop reads now
            run_setup, source_rows=source_rows, target_rows=target_rows, eval_rows=eval_rows
        )
        _check_training_rows(run, provenance, run_setup.store, used, as_trained)
        target_set = run_setup.load("target_train", target_rows, statistics)
        if cls.staged:
            train_set = run_setup.load("source_train", source_rows, statistics)
    first = next(iter(sets.values()))
    model = setup.build_head({m: tuple(first.inputs[m].shape[1:]) for m in modalities})
    model = model.to(device)
    model.prepare(
        TrainingContext(
            run=run,
            store=run_setup.store if cls.staged else setup.store,
            train_set=train_set,
            target_set=target_set,
            eval_sets=sets,
            seed=int(config.get("seed", 0)),
            device=device,
            progress=progress,
            read_only=True,
        )
    )
    loop_lib.load_model_state(model, state, run / runs.CHECKPOINT)
    shapes = {k: tuple(x.shape[1:]) for k, x in first.inputs.items()}
    with shape_errors(head_name, shapes, "predict"):
        metrics, scores = loop_lib.evaluate_sets(model, sets, device, target_set)

    tasks = [t.name for t in setup.tasks]
    grouped = any(s.groups is not None for s in sets.values())
    groups = [s.groups if s.groups is not None else np.full(len(s), "") for s in sets.values()]
    return Predictions(
        uids=np.concatenate([s.uids for s in sets.values()]),
        labels={t: np.concatenate([s.labels[t].numpy() for s in sets.values()]) for t in tasks},
        scores={t: np.concatenate([scores[n][t] for n in sets]) for t in tasks},
        sets={n: len(s) for n, s in sets.items()},
        metrics=metrics,
        run=run,
        groups=np.concatenate(groups).astype(str) if grouped else None,
    )


__all__ = ["Predictions", "predict_run", "prediction_rows"]
