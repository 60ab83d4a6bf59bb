"""Classification metrics computed exactly as the papers and challenge servers compute them.

Conventions shared by every function here:

* ``scores`` is ``(N, C)`` (logits or probabilities: only their order matters), ``labels`` is
  ``(N,)`` integer class ids; fractions are returned in [0, 1], not percent.
* **Ties**: one rule for every ranking, prediction, top-k and per-class number of a task
  (:func:`task_ties`, :func:`rank_classes`): the lower class index first among equal scores
  (``argmax``; top-k takes tied classes in index order, numpy's stable sort), except EPIC-100's
  verb and noun (a run with both), ranked as the official scorer ranks them, highest index
  first (``argsort()[:, ::-1]`` with a stable sort).
* Classes absent from ``labels`` have no recall: they are left out of means and reported as NaN
  per class; in mAP, classes without a positive are left out. Charades' official script
  (``Charades_v1_classify.m``, and gsig's Python ``charades_map``) averages every class and
  returns NaN when one has no positive (which cannot happen on Charades' full test set);
  leaving those classes out (a ``nanmean``) is avda's reading of it for subsets.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from avda.errors import ConfigError


def check_scores_and_labels(
    scores: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Validated ``(N, C)`` scores and ``(N,)`` integer labels in ``0 .. C-1``."""
    scores = np.asarray(scores)
    labels = np.asarray(labels)
    if scores.ndim != 2:
        raise ConfigError(f"scores must be (N, C), got shape {scores.shape}")
    if labels.ndim != 1 or len(labels) != len(scores):
        raise ConfigError(
            f"labels must be (N,) with N = {len(scores)} (one per row of scores), "
            f"got shape {labels.shape}"
        )
    if len(labels) and not np.issubdtype(labels.dtype, np.integer):
        if not np.all(np.mod(labels, 1) == 0):
            raise ConfigError("labels must be integer class ids")
        labels = labels.astype(np.int64)
    if len(labels) and (labels.min() < 0 or labels.max() >= scores.shape[1]):
        raise ConfigError(
            f"labels must be class ids in 0..{scores.shape[1] - 1} (scores have "
            f"{scores.shape[1]} columns), got {labels.min()}..{labels.max()}"
        )
    if np.issubdtype(scores.dtype, np.floating) and np.isnan(scores).any():
        raise ConfigError("scores contain NaN; check the model outputs before evaluating")
    return scores, labels


TIES = ("lowest", "highest")


def task_ties(task: str, single_label_tasks: Iterable[str]) -> str:
    """The tie rule of ``task`` among a run's ``single_label_tasks``: ``"highest"`` (the
    official EPIC-100 scorer's) for ``verb`` and ``noun`` where both are single-label tasks,
    which the EPIC-100 columns score, else ``"lowest"``; what a run's top-1 and mca, its
    predictions' ``<task>_prediction``, the per-class tables and confusion matrices use."""
    epic100 = {"verb", "noun"} <= set(single_label_tasks)
    return "highest" if epic100 and task in ("verb", "noun") else "lowest"


def rank_classes(scores: np.ndarray, k: int | None = None, ties: str = "lowest") -> np.ndarray:
    """Class indices per row by decreasing score: ``(N, k)``. ``ties``: ``"lowest"`` index
    first among equal scores, or ``"highest"`` first, as EPIC-100's official scorer
    (``scores.argsort()[:, ::-1]``, its sort stable: numpy's default one leaves tied classes
    in an order of its CPU, version and dtype)."""
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ConfigError(f"scores must be (N, C), got shape {scores.shape}")
    if _checked(ties) == "highest":
        order = np.argsort(scores, axis=1, kind="stable")[:, ::-1]
    else:
        order = np.argsort(-scores, axis=1, kind="stable")
    return order if k is None else order[:, :k]


def predicted_classes(scores: np.ndarray, ties: str = "lowest") -> np.ndarray:
    """Each row's predicted class ``(N,)``: the first of :func:`rank_classes`."""
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ConfigError(f"scores must be (N, C), got shape {scores.shape}")
    if _checked(ties) == "highest":  # the last maximum: rank_classes' first, without sorting
        return scores.shape[1] - 1 - scores[:, ::-1].argmax(axis=1)
    return scores.argmax(axis=1)


def _checked(ties: str) -> str:
    if ties not in TIES:
        raise ConfigError(f"ties must be one of {', '.join(TIES)}, got {ties!r}")
    return ties


def top1_accuracy(scores: np.ndarray, labels: np.ndarray, ties: str = "lowest") -> float:
    """Fraction of rows whose predicted class (:func:`predicted_classes`) equals the label."""
    scores, labels = check_scores_and_labels(scores, labels)
    if len(labels) == 0:
        return float("nan")
    return float(np.mean(predicted_classes(scores, ties) == labels))


def mean_class_accuracy(scores: np.ndarray, labels: np.ndarray, ties: str = "lowest") -> float:
    """Mean over the classes present in ``labels`` of the per-class recall.

    Classes absent from ``labels`` are left out of the mean (they have no recall).
    """
    scores, labels = check_scores_and_labels(scores, labels)
    if len(labels) == 0:
        return float("nan")
    predictions = predicted_classes(scores, ties)
    classes = np.unique(labels)
    return float(np.mean([np.mean(predictions[labels == c] == c) for c in classes]))


def top_k_correct(
    scores: np.ndarray, labels: np.ndarray, k: int, ties: str = "lowest"
) -> np.ndarray:
    """Per row: is the label among the ``k`` best-scored classes (:func:`rank_classes`)?"""
    scores, labels = check_scores_and_labels(scores, labels)
    if k < 1:
        raise ConfigError(f"k must be at least 1, got {k}")
    return (rank_classes(scores, k, ties) == labels[:, None]).any(axis=1)


def top_k_accuracy(
    scores: np.ndarray, labels: np.ndarray, k: int = 5, ties: str = "lowest"
) -> float:
    """Fraction of rows whose label is among the ``k`` best-scored classes; NaN when empty."""
    correct = top_k_correct(scores, labels, k, ties)
    return float(correct.mean()) if len(correct) else float("nan")


def per_class_accuracy(
    scores: np.ndarray, labels: np.ndarray, num_classes: int | None = None, ties: str = "lowest"
) -> np.ndarray:
    """Recall of each class ``(C,)``: NaN for classes with no row in ``labels``."""
    scores, labels = check_scores_and_labels(scores, labels)
    num_classes = scores.shape[1] if num_classes is None else int(num_classes)
    predictions = predicted_classes(scores, ties)
    support = np.bincount(labels, minlength=num_classes).astype(np.float64)
    hits = np.bincount(labels[predictions == labels], minlength=num_classes).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, hits / support, np.nan)


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """``(C, C)`` counts: row = true class, column = predicted class."""
    labels = np.asarray(labels, dtype=np.int64)
    predictions = np.asarray(predictions, dtype=np.int64)
    if labels.shape != predictions.shape or labels.ndim != 1:
        raise ConfigError(
            f"labels and predictions must be (N,) of the same length, got {labels.shape} "
            f"and {predictions.shape}"
        )
    for name, values in (("labels", labels), ("predictions", predictions)):
        if len(values) and (values.min() < 0 or values.max() >= num_classes):
            raise ConfigError(f"{name} must be class ids in 0..{num_classes - 1}")
    flat = labels * num_classes + predictions
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def average_precision(scores: np.ndarray, positives: np.ndarray) -> float:
    """AP of one class: mean over positives of the precision at their rank.

    Rows are ranked by decreasing score, ties in row order (MATLAB's stable ``sort``, which
    the official Charades script uses). NaN when there is no positive.
    """
    scores = np.asarray(scores, dtype=np.float64)
    positives = np.asarray(positives).astype(bool)
    count = int(positives.sum())
    if count == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    hits = positives[order]
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision[hits].sum() / count)


def average_precision_per_class(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """AP of each class ``(C,)`` for multi-label ``targets`` (N, C) in {0, 1}.

    As in Charades' evaluation, rows without any positive label are removed first (the
    official script gives them ``-inf`` scores, ranked below every other row: the same APs);
    classes without a positive get NaN.
    """
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets)
    if scores.ndim != 2 or scores.shape != targets.shape:
        raise ConfigError(
            f"scores and targets must both be (N, C), got {scores.shape} and {targets.shape}"
        )
    if np.isnan(scores).any():
        raise ConfigError("scores contain NaN; check the model outputs before evaluating")
    keep = targets.sum(axis=1) > 0
    scores, targets = scores[keep], targets[keep]
    return np.array(
        [average_precision(scores[:, c], targets[:, c]) for c in range(scores.shape[1])]
    )


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """Charades-style mAP: mean AP over the classes that have a positive (NaN if none).

    This is ``map_present``; :func:`map_authors` is the convention of the Audio-Adaptive
    authors' CharadesEgo evaluation, where a class without positives counts as AP 0.
    """
    per_class = average_precision_per_class(scores, targets)
    valid = per_class[~np.isnan(per_class)]
    return float(valid.mean()) if len(valid) else float("nan")


def map_present(scores: np.ndarray, targets: np.ndarray) -> float:
    """mAP over the classes with at least one positive in ``targets`` (avda's ``mAP``; the
    official script gives NaN where a class has none, see the module's notes). NaN when no
    class has a positive."""
    return mean_average_precision(scores, targets)


def map_authors(scores: np.ndarray, targets: np.ndarray) -> float:
    """mAP over every class, a class without positives counting as AP 0 (the convention of the
    Audio-Adaptive authors' CharadesEgo evaluation code): ``map_present * present / C``."""
    per_class = average_precision_per_class(scores, targets)
    if not len(per_class):
        return float("nan")
    return float(np.nan_to_num(per_class, nan=0.0).mean())


MAP_CONVENTIONS = {"mAP": map_present, "mAP-present": map_present, "mAP-authors": map_authors}
"""The mAP conventions by metric name: ``mAP`` is ``mAP-present`` (avda's default)."""


def max_over_groups(
    scores: np.ndarray, targets: np.ndarray, groups: np.ndarray | Sequence[str] | None
) -> tuple[np.ndarray, np.ndarray]:
    """Multi-label ``scores`` and ``targets`` (N, C) of rows that belong to scored samples
    (``groups``, one name per row: the ``score_group`` column, e.g. the video of a test clip)
    -> one row per group, in the order of its first row: the **maximum** of its rows' scores
    per class, and the union of their targets (the Audio-Adaptive authors' CharadesEgo test:
    ``torch.max`` over a video's clips of their sigmoids). A row whose group is ``""`` is a
    sample of its own; ``groups`` None returns the rows as they are."""
    scores = np.asarray(scores)
    targets = np.asarray(targets)
    if groups is None:
        return scores, targets
    groups = np.asarray(groups, dtype=str)
    if scores.ndim != 2 or scores.shape != targets.shape or groups.shape != (len(scores),):
        raise ConfigError(
            f"scores and targets must both be (N, C) with one group per row, got "
            f"{scores.shape}, {targets.shape} and {groups.shape} groups"
        )
    alone = groups == ""
    if alone.all():
        return scores, targets
    keys = np.where(alone, np.char.add("\0", np.arange(len(groups)).astype(str)), groups)
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    position = np.empty(len(first), dtype=np.int64)
    position[np.argsort(first, kind="stable")] = np.arange(len(first))
    index = position[inverse.reshape(-1)]
    grouped = np.full((len(first), scores.shape[1]), -np.inf, dtype=np.float64)
    np.maximum.at(grouped, index, scores.astype(np.float64))
    labels = np.zeros((len(first), targets.shape[1]), dtype=targets.dtype)
    np.maximum.at(labels, index, targets)
    return grouped, labels


def multilabel_map(
    scores: np.ndarray,
    targets: np.ndarray,
    groups: np.ndarray | Sequence[str] | None = None,
    metric: str = "mAP",
) -> float:
    """mAP (``metric``: a :data:`MAP_CONVENTIONS` name) of multi-label ``scores``, over the
    samples ``groups`` names (:func:`max_over_groups`: a group's score is the maximum over its
    rows), or over the rows where ``groups`` is None or every row's group is ``""``."""
    if metric not in MAP_CONVENTIONS:
        raise ConfigError(f"metric must be one of {', '.join(MAP_CONVENTIONS)}, got {metric!r}")
    scores, targets = max_over_groups(scores, targets, groups)
    return MAP_CONVENTIONS[metric](scores, targets)


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax along ``axis`` (float64)."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(axis=axis, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=axis, keepdims=True)


def average_scores(scores: np.ndarray | Sequence[np.ndarray], *, axis: int = 0) -> np.ndarray:
    """Mean of several score arrays of one shape (checkpoints, test clips...).

    ``scores``: a sequence of equally shaped arrays (averaged element-wise), or one array
    averaged along ``axis``. Used by the MM-SADA protocol (5 test clips, last 9 checkpoints).
    """
    if isinstance(scores, np.ndarray):
        if scores.ndim == 0 or scores.shape[axis] == 0:
            raise ConfigError(f"nothing to average along axis {axis} of shape {scores.shape}")
        return scores.mean(axis=axis)
    arrays = [np.asarray(s) for s in scores]
    if not arrays:
        raise ConfigError("average_scores needs at least one score array")
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ConfigError(f"score arrays to average must share one shape, got {sorted(shapes)}")
    return np.mean(np.stack(arrays), axis=0)


def mean_std(values: Sequence[float] | np.ndarray, *, ddof: int = 1) -> tuple[float, float]:
    """Mean and standard deviation over seeds (sample std, ``ddof=1``; NaN for one value)."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or len(array) == 0:
        raise ConfigError(f"mean_std needs a non-empty list of numbers, got shape {array.shape}")
    if len(array) > ddof and (array == array[0]).all():  # seeds that agree: exactly 0, not
        return float(array[0]), 0.0  # the 4e-15 that summing three 22.22...s leaves
    std = float(array.std(ddof=ddof)) if len(array) > ddof else float("nan")
    return float(array.mean()), std


def format_mean_std(
    values: Sequence[float] | np.ndarray, *, scale: float = 100.0, digits: int = 1
) -> str:
    """``"61.0 ± 1.2"`` (``scale`` 100 turns fractions into percent)."""
    mean, std = mean_std(values)
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"
