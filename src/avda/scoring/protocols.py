"""Benchmark evaluation protocols: EPIC-100 (official C1 scorer and TA3N's), MM-SADA, Charades.

EPIC-KITCHENS-100 (``epic-kitchens/C1-Action-Recognition``, ``utils/scoring.py``,
``utils/metrics.py``, ``evaluate.py``):

* verb and noun top-1/top-5 over the raw score arrays;
* action scores: take each segment's top-100 verb and top-100 noun scores, apply
  ``scipy.special.softmax`` to each (N, 100) array -- without ``axis``, i.e. over the whole
  array; within a segment this only rescales, so ranks equal a per-row softmax unless ``exp``
  underflows -- form the outer product of the two, rank the verb x noun pairs and keep the best
  100 as actions ``verb * 1000 + noun``. Because the softmax is applied even when the inputs are
  already probabilities (TA3N writes probabilities), the ranking is by ``p_verb + p_noun`` then,
  not ``p_verb * p_noun``: this is what the server does, so we do it too;
* top-1/top-5 of all three; top-1 on tail classes (action: verb or noun is tail) and on unseen
  participants.

TA3N's in-code "action" accuracy (``multitask_accuracy``) counts a top-k hit when the verb is in
the top-k verbs **and** the noun in the top-k nouns. Top-1 agrees with the official one; top-5
does not, so it is reported separately as ``ta3n_action_accuracy_at_k``.

Ties: ranked highest class id first (:func:`epic100_rank`), the official code's ``argsort``
reversed with numpy's sort keeping ties in index order (its default sort does not promise it:
numpy 2.x shuffles them), for the verb, noun and action columns and, by the same rule
(:func:`avda.scoring.metrics.task_ties`), everywhere a run with verb and noun is ranked: its
verb and noun top-1 and mca (:func:`set_metrics`), predictions, per-class tables and confusion
matrices; avda's other tasks put the lowest index first.
"""

from __future__ import annotations

import json
import logging
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from avda._io import atomic_write
from avda.errors import ConfigError
from avda.scoring.metrics import (
    average_scores,
    check_scores_and_labels,
    max_over_groups,
    mean_average_precision,
    mean_class_accuracy,
    mean_std,
    multilabel_map,
    rank_classes,
    softmax,
    task_ties,
    top1_accuracy,
    top_k_correct,
)

log = logging.getLogger(__name__)

ACTION_VERB_MULTIPLIER = 1000
EPIC100_NUM_VERBS = 97
EPIC100_NUM_NOUNS = 300
EPIC100_TOP_N = 100
_ACTION_BLOCK_ROWS = 512  # rows of pair scores ranked at once
SUBMISSION_VERSION = "0.2"
UDA_CHALLENGE = "domain_adaptation"


def action_ids(verbs: np.ndarray | int, nouns: np.ndarray | int) -> np.ndarray | int:
    """EPIC action id ``verb * 1000 + noun`` (``utils/actions.py``)."""
    return verbs * ACTION_VERB_MULTIPLIER + nouns


def epic100_rank(scores: np.ndarray, k: int | None = None) -> np.ndarray:
    """Class indices per row by decreasing score as the official EPIC-100 scorer ranks them,
    ``scores.argsort()[:, ::-1]``: tied classes (probabilities that underflowed to 0) come
    highest index first (:func:`avda.scoring.metrics.rank_classes` with ``ties="highest"``).
    A top-5 of a segment with fewer than 5 non-zero scores differs from the lowest-first one.
    The sort is stable: numpy's default one (the official code's) leaves tied classes in an
    order of its CPU, version and dtype (numpy 2.4's SIMD sort shuffled tied zeros of 8 or
    more classes)."""
    return rank_classes(scores, k, ties="highest")


def _epic100_top_k(scores: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    return (epic100_rank(scores, k) == np.asarray(labels)[:, None]).any(axis=1)


def epic100_action_scores(
    verb_scores: np.ndarray, noun_scores: np.ndarray, top_n: int = EPIC100_TOP_N
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The official ``compute_action_scores``: ``(verbs, nouns, scores)``, each ``(N, top_n)``.

    Row ``i`` lists segment ``i``'s ``top_n`` best (verb, noun) pairs, best first.
    """
    verb_scores = np.asarray(verb_scores)
    noun_scores = np.asarray(noun_scores)
    if verb_scores.ndim != 2 or noun_scores.ndim != 2 or len(verb_scores) != len(noun_scores):
        raise ConfigError(
            f"verb and noun scores must be (N, C) with the same N, got {verb_scores.shape} "
            f"and {noun_scores.shape}"
        )
    from scipy.special import softmax as scipy_softmax  # 0.5 s of importing: only here

    rows = np.arange(len(verb_scores))[:, None]
    top_verbs = epic100_rank(verb_scores, top_n)
    top_nouns = epic100_rank(noun_scores, top_n)
    # scipy's softmax without axis: normalised over the whole (N, top_n) array, as the server.
    verb_probs = scipy_softmax(verb_scores[rows, top_verbs])
    noun_probs = scipy_softmax(noun_scores[rows, top_nouns])
    # The (N, top_n**2) pair scores, ranked a block of rows at a time: each row's products and
    # argsort depend on that row alone, so the result is the whole array's (8,000 EPIC-100
    # segments held ~1.3 GB at once; a block ~80 MB).
    pairs = (top_verbs.shape[1], top_nouns.shape[1])
    shape = (len(verb_scores), min(top_n, pairs[0] * pairs[1]))
    verbs, nouns = np.empty(shape, top_verbs.dtype), np.empty(shape, top_nouns.dtype)
    scores = np.empty(shape, np.result_type(verb_probs, noun_probs))
    for start in range(0, len(verb_scores), _ACTION_BLOCK_ROWS):
        block = slice(start, start + _ACTION_BLOCK_ROWS)
        joint = (verb_probs[block, :, None] * noun_probs[block, None, :]).reshape(
            len(verb_probs[block]), -1
        )
        order = epic100_rank(joint, top_n)  # indices into the flattened pairs
        inner = np.arange(len(order))[:, None]
        verb_index, noun_index = np.unravel_index(order, pairs)
        verbs[block] = top_verbs[block][inner, verb_index]
        nouns[block] = top_nouns[block][inner, noun_index]
        scores[block] = joint[inner, order]
    return verbs, nouns, scores


def _action_top_k(
    verb_scores: np.ndarray,
    noun_scores: np.ndarray,
    verb_labels: np.ndarray,
    noun_labels: np.ndarray,
    ks: Sequence[int],
) -> list[np.ndarray]:
    verbs, nouns, scores = epic100_action_scores(verb_scores, noun_scores)
    # The official evaluate.py then turns each row into a {action: score} dict and ranks it
    # again (utils/scoring.py, _scores_dict_to_ranks: ``argsort(scores)[::-1]`` of the row
    # already sorted), which reverses the order of tied pairs a second time.
    rows = np.arange(len(scores))[:, None]
    again = epic100_rank(scores)
    verbs, nouns = verbs[rows, again], nouns[rows, again]
    hits = (verbs == verb_labels[:, None]) & (nouns == noun_labels[:, None])
    return [hits[:, :k].any(axis=1) for k in ks]


def ta3n_action_correct(
    verb_scores: np.ndarray,
    noun_scores: np.ndarray,
    verb_labels: np.ndarray,
    noun_labels: np.ndarray,
    k: int,
) -> np.ndarray:
    """TA3N's ``multitask_accuracy``: verb in the top-k verbs and noun in the top-k nouns,
    ranked by the rule of a run's verb and noun (tied scores highest id first, as the official
    columns beside it; TA3N's ``torch.topk`` promises no order of ties)."""
    ties = task_ties("verb", ("verb", "noun"))
    return top_k_correct(verb_scores, verb_labels, k, ties) & top_k_correct(
        noun_scores, noun_labels, k, ties
    )


def epic100_accuracies(
    verb_scores: np.ndarray,
    noun_scores: np.ndarray,
    verb_labels: np.ndarray,
    noun_labels: np.ndarray,
    *,
    participant_ids: Sequence[str] | None = None,
    unseen_participants: Iterable[str] = (),
    tail_verbs: Iterable[int] = (),
    tail_nouns: Iterable[int] = (),
) -> dict[str, float]:
    """EPIC-100 accuracies (fractions) named as the official ``evaluate.py`` prints them.

    ``all_{verb,noun,action}_accuracy_at_{1,5}`` (official), ``tail_*_accuracy_at_1`` when tail
    classes are given, ``unseen_*_accuracy_at_1`` when participants and unseen participants are
    given and some segment is unseen, and ``ta3n_action_accuracy_at_{1,5}`` (TA3N's in-code
    definition, labelled apart from the official action accuracy).
    """
    verb_scores, verb_labels = check_scores_and_labels(verb_scores, verb_labels)
    noun_scores, noun_labels = check_scores_and_labels(noun_scores, noun_labels)
    if len(verb_labels) != len(noun_labels):
        raise ConfigError(
            f"verb and noun arrays describe {len(verb_labels)} and {len(noun_labels)} segments"
        )
    if len(verb_labels) == 0:
        raise ConfigError("need at least one segment to evaluate")
    hits = {
        "verb": [_epic100_top_k(verb_scores, verb_labels, k) for k in (1, 5)],
        "noun": [_epic100_top_k(noun_scores, noun_labels, k) for k in (1, 5)],
        "action": _action_top_k(verb_scores, noun_scores, verb_labels, noun_labels, (1, 5)),
    }
    results: dict[str, float] = {}
    for task, task_hits in hits.items():
        for k, correct in zip((1, 5), task_hits, strict=True):
            results[f"all_{task}_accuracy_at_{k}"] = float(correct.mean())
    tail_verb_mask = np.isin(verb_labels, list(tail_verbs))
    tail_noun_mask = np.isin(noun_labels, list(tail_nouns))
    if tail_verb_mask.any() or tail_noun_mask.any():
        masks = {
            "verb": tail_verb_mask,
            "noun": tail_noun_mask,
            "action": tail_verb_mask | tail_noun_mask,
        }
        for task, mask in masks.items():
            if mask.any():
                results[f"tail_{task}_accuracy_at_1"] = float(hits[task][0][mask].mean())
    if participant_ids is not None:
        participants = np.asarray(participant_ids, dtype=str)
        if len(participants) != len(verb_labels):
            raise ConfigError(
                f"participant_ids has {len(participants)} entries for {len(verb_labels)} segments"
            )
        unseen = np.isin(participants, [str(p) for p in unseen_participants])
        if unseen.any():
            for task in hits:
                results[f"unseen_{task}_accuracy_at_1"] = float(hits[task][0][unseen].mean())
    for k in (1, 5):
        correct = ta3n_action_correct(verb_scores, noun_scores, verb_labels, noun_labels, k)
        results[f"ta3n_action_accuracy_at_{k}"] = float(correct.mean())
    return results


# The columns of ``avda evaluate --layout epic100`` that a run's per-task top-1 and mca lack,
# as ``<task>/<metric>`` -> the key of :func:`epic100_accuracies` they come from.
EPIC100_RUN_METRICS = {
    "verb/top5": "all_verb_accuracy_at_5",
    "noun/top5": "all_noun_accuracy_at_5",
    "action/top1": "all_action_accuracy_at_1",
    "action/top5": "all_action_accuracy_at_5",
}


def set_metrics(
    name: str,
    scores: Mapping[str, np.ndarray],
    labels: Mapping[str, np.ndarray],
    *,
    multi_label: Iterable[str] = (),
    groups: np.ndarray | None = None,
) -> dict[str, float]:
    """The metrics a run reports for its evaluation set ``name`` (fractions), as ``avda train``
    prints them and writes them to ``metrics.jsonl`` and ``run.json``, ``avda evaluate
    --layout runs`` recomputes them and ``avda predict`` reports them.

    Per task of ``scores``: a multi-label task ``<name>/<task>/mAP`` (``mAP-present``) and
    ``<name>/<task>/mAP-authors`` (by ``groups``, a row's ``score_group``:
    :func:`avda.scoring.metrics.multilabel_map`); a single-label task
    ``<name>/<task>/top1`` and ``/mca`` over its labelled rows (label >= 0; none: nothing).
    With single-label ``verb`` and ``noun`` tasks, their top-1 and mca rank tied scores as the
    official scorer does (:func:`epic100_rank`), and EPIC-100's other columns as ``avda
    evaluate --layout epic100`` computes them (the official scorer,
    :func:`epic100_accuracies`) over the rows labelled with both: ``<name>/verb/top5``,
    ``<name>/noun/top5``, ``<name>/action/top1`` and ``<name>/action/top5``.
    """
    multi = set(multi_label)
    epic100 = {"verb", "noun"} <= set(scores) - multi
    metrics: dict[str, float] = {}
    for task, task_scores in scores.items():
        task_labels = np.asarray(labels[task])
        if task in multi:  # mAP is mAP-present; mAP-authors: the Audio-Adaptive code's
            for metric in ("mAP", "mAP-authors"):
                metrics[f"{name}/{task}/{metric}"] = multilabel_map(
                    task_scores, task_labels, groups, metric
                )
            continue
        known = task_labels >= 0
        if not known.any():
            continue
        known_scores, known_labels = check_scores_and_labels(task_scores[known], task_labels[known])
        # EPIC-100's verb and noun: the official scorer's top-1 (ties highest id first), as
        # their top-5 and ``avda evaluate --layout epic100``; argmax could exceed the top-5
        ties = task_ties(task, set(scores) - multi)
        metrics[f"{name}/{task}/top1"] = top1_accuracy(known_scores, known_labels, ties)
        metrics[f"{name}/{task}/mca"] = mean_class_accuracy(known_scores, known_labels, ties)
    if epic100:
        verbs, nouns = np.asarray(labels["verb"]), np.asarray(labels["noun"])
        both = (verbs >= 0) & (nouns >= 0)
        if both.any():
            official = epic100_accuracies(
                np.asarray(scores["verb"])[both],
                np.asarray(scores["noun"])[both],
                verbs[both],
                nouns[both],
            )
            for key, official_key in EPIC100_RUN_METRICS.items():
                metrics[f"{name}/{key}"] = official[official_key]
    return metrics


def _scores_dict(row: np.ndarray) -> dict[str, float]:
    return {str(index): float(value) for index, value in enumerate(row)}


def _results(
    verb_scores: np.ndarray, noun_scores: np.ndarray, narration_ids: Sequence[str], side: str
) -> dict[str, dict[str, dict[str, float]]]:
    verb_scores = np.asarray(verb_scores, dtype=np.float64)
    noun_scores = np.asarray(noun_scores, dtype=np.float64)
    ids = [str(i) for i in narration_ids]
    if verb_scores.shape != (len(ids), EPIC100_NUM_VERBS):
        raise ConfigError(
            f"{side} verb scores must be ({len(ids)}, {EPIC100_NUM_VERBS}), got {verb_scores.shape}"
        )
    if noun_scores.shape != (len(ids), EPIC100_NUM_NOUNS):
        raise ConfigError(
            f"{side} noun scores must be ({len(ids)}, {EPIC100_NUM_NOUNS}), got {noun_scores.shape}"
        )
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{side} narration ids repeat; each segment needs exactly one entry")
    if not (np.isfinite(verb_scores).all() and np.isfinite(noun_scores).all()):
        raise ConfigError(f"{side} scores contain NaN or infinity; JSON cannot carry them")
    return {
        narration_id: {"verb": _scores_dict(verb_row), "noun": _scores_dict(noun_row)}
        for narration_id, verb_row, noun_row in zip(ids, verb_scores, noun_scores, strict=True)
    }


def epic100_uda_submission(
    verb_scores: np.ndarray,
    noun_scores: np.ndarray,
    narration_ids: Sequence[str],
    *,
    sls_pt: int,
    sls_tl: int,
    sls_td: int,
    expected_narration_ids: Iterable[str] | None = None,
    source_verb_scores: np.ndarray | None = None,
    source_noun_scores: np.ndarray | None = None,
    source_narration_ids: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The EPIC-100 UDA challenge JSON for ``target_test`` (optionally ``source_test`` too).

    Format (the UDA challenge's page, ``competitions.codalab.org/competitions/26096``,
    "Submission format"; ``results_target`` as ``jonmun/EPIC-KITCHENS-100_UDA_TA3N@7f13e69``,
    ``test_models.py``, writes it, which leaves out the optional ``results_source``)::

        {"version": "0.2", "challenge": "domain_adaptation",
         "sls_pt": 2, "sls_tl": 3, "sls_td": 3,
         "results_target": {"P01_101_0": {"verb": {"0": s, ..., "96": s},
                                          "noun": {"0": s, ..., "299": s}}, ...},
         "results_source": {...}}                               # only with source scores

    ``sls_pt``/``sls_tl``/``sls_td`` are the supervision levels (0-5, see
    ``github.com/epic-kitchens/sls``); they have no default because they must describe the
    model. ``expected_narration_ids``: the target_test ids; when given, missing or extra ids
    are an error.
    """
    levels = {"sls_pt": sls_pt, "sls_tl": sls_tl, "sls_td": sls_td}
    for name, level in levels.items():
        if (
            isinstance(level, bool)
            or not isinstance(level, int | np.integer)
            or not 0 <= level <= 5
        ):
            raise ConfigError(f"{name} must be an integer supervision level 0..5, got {level!r}")
    results = _results(verb_scores, noun_scores, narration_ids, "target")
    if expected_narration_ids is not None:
        expected = {str(i) for i in expected_narration_ids}
        missing = sorted(expected - set(results))
        extra = sorted(set(results) - expected)
        if missing or extra:
            raise ConfigError(
                f"the submission must cover target_test exactly: {len(missing)} id(s) missing "
                f"(e.g. {missing[:3]}), {len(extra)} unexpected (e.g. {extra[:3]})"
            )
    submission: dict[str, Any] = {
        "version": SUBMISSION_VERSION,
        "challenge": UDA_CHALLENGE,
        **{name: int(level) for name, level in levels.items()},
        "results_target": results,
    }
    source = (source_verb_scores, source_noun_scores, source_narration_ids)
    if any(part is not None for part in source):
        if any(part is None for part in source):
            raise ConfigError(
                "source results need source_verb_scores, source_noun_scores and "
                "source_narration_ids together"
            )
        submission["results_source"] = _results(*source, "source")  # type: ignore[arg-type]
    return submission


def write_submission(submission: dict[str, Any], path: str | Path) -> Path:
    """Write the submission as JSON, or as a zip holding ``test.json`` when ``path`` ends .zip,
    whole or not at all (a kill while it is written leaves the old file, never half of one to
    upload)."""
    path = Path(path)
    text = json.dumps(submission)

    def write(temporary: Path) -> None:
        if path.suffix.lower() == ".zip":
            with zipfile.ZipFile(
                temporary, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=5
            ) as zf:
                zf.writestr("test.json", text)
        else:
            temporary.write_text(text, encoding="utf-8")

    return atomic_write(path, write)


def mmsada_clip_scores(clip_logits: np.ndarray) -> np.ndarray:
    """MM-SADA test: softmax of each clip's (fused) logits, averaged over clips.

    ``clip_logits``: ``(N, clips, C)`` (5 clips centred at ``linspace(start, stop, 7)[1:-1]``).
    """
    clip_logits = np.asarray(clip_logits)
    if clip_logits.ndim != 3:
        raise ConfigError(f"clip logits must be (N, clips, C), got shape {clip_logits.shape}")
    return average_scores(softmax(clip_logits, axis=-1), axis=1)


def mmsada_checkpoint_accuracy(
    checkpoint_clip_logits: Sequence[np.ndarray], labels: np.ndarray
) -> dict[str, float]:
    """MM-SADA's reported number over the last checkpoints (steps 5600..6000 every 50: 9).

    ``top1_mean`` (what the paper reports: mean of each checkpoint's top-1, confirmed in
    ``MM-SADA_Domain_Adaptation_Splits#3``) with ``top1_std``, and ``top1_of_mean_scores``
    (top-1 of the checkpoint-averaged clip scores, an ensemble -- not the paper's number).
    """
    if not checkpoint_clip_logits:
        raise ConfigError("need the clip logits of at least one checkpoint")
    scores = [mmsada_clip_scores(logits) for logits in checkpoint_clip_logits]
    labels = np.asarray(labels)
    accuracies = [top1_accuracy(*check_scores_and_labels(s, labels)) for s in scores]
    mean, std = mean_std(accuracies)
    return {
        "checkpoints": float(len(scores)),
        "top1_mean": mean,
        "top1_std": std,
        "top1_of_mean_scores": top1_accuracy(average_scores(scores), labels),
    }


def multi_hot(labels: Sequence[str | None], num_classes: int) -> np.ndarray:
    """Manifest ``labels`` cells (``"3;17"``, ``""`` or NaN for none; a number such as the
    ``15.0`` of a column pandas read as floats) -> ``(N, num_classes)`` 0/1 array."""
    targets = np.zeros((len(labels), num_classes), dtype=np.int8)
    for row, cell in enumerate(labels):
        if cell is None or (isinstance(cell, (float, np.floating)) and np.isnan(cell)):
            continue
        if isinstance(cell, (float, np.floating)) and float(cell).is_integer():
            cell = int(cell)  # one label per row, read by pandas as a float column ("15.0")
        for part in str(cell).split(";"):
            part = part.strip()
            if not part:
                continue
            if not part.isdigit() or int(part) >= num_classes:
                raise ConfigError(
                    f"labels row {row}: {part!r} is not a class id in 0..{num_classes - 1}"
                )
            targets[row, int(part)] = 1
    return targets


def charades_map(
    scores: np.ndarray,
    labels: Sequence[str | None] | np.ndarray,
    groups: np.ndarray | Sequence[str] | None = None,
) -> float:
    """CharadesEgo video-level mAP (Charades' official protocol, see ``mean_average_precision``).

    ``labels``: manifest ``labels`` strings, or an ``(N, C)`` multi-hot array. ``groups``: the
    rows' ``score_group`` (a test video's clips, ``--unit windows``): each video scored by the
    maximum over its rows first (:func:`avda.scoring.metrics.max_over_groups`).
    """
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ConfigError(f"scores must be (N, C), got shape {scores.shape}")
    targets = (
        labels
        if isinstance(labels, np.ndarray) and labels.ndim == 2
        else multi_hot(list(labels), scores.shape[1])
    )
    scores, targets = max_over_groups(scores, targets, groups)
    return mean_average_precision(scores, targets)


def export_run_submission(
    run: str | Path,
    path: str | Path,
    *,
    sls_pt: int,
    sls_tl: int,
    sls_td: int,
    target_test: Sequence[str] | None = None,
    source_test: Sequence[str] | None = None,
    reasons: Mapping[str, str] | None = None,
) -> Path:
    """Write the EPIC-100 UDA challenge file of a finished run's ``target_test`` predictions
    (and ``source_test`` when the run has them). The run must predict ``verb`` and ``noun``.

    ``target_test``: the ids of every target test segment of the run's cache; a submission
    without one of them is refused (the server needs every id), naming it with its
    ``reasons`` entry (why it has no prediction), and a split that is not EPIC-100's 5,909
    segments is warned about (:func:`avda.evaluate.tables.export_submission` reads them).
    ``source_test``: those of its source test segments; ``results_source`` is optional for the
    server, which refuses a file whose ``results_source`` lacks one of the split's ids
    (``epic-kitchens-100-annotations#9``), so where the run does not predict all of them, or
    they are not the split's 4,298, it is left out, with a warning naming one and why."""
    from avda import runs

    run = Path(run)
    if "target_test" not in runs.prediction_sets(run):
        raise ConfigError(
            f"{run} has no target_test predictions: train with target test segments in the "
            "cache (EPIC-100 UDA target_test timestamps) to export a submission"
        )
    target = runs.read_predictions(run, "target_test")
    for task in ("verb", "noun"):
        if task not in target["scores"]:
            raise ConfigError(
                f"{run} predicts {sorted(target['scores'])}; the EPIC-100 submission needs verb "
                "and noun scores: train a head that predicts both (--set tasks=[verb,noun]; "
                "audio-adaptive predicts verbs only)"
            )
    predicted = [str(u) for u in target["uids"]]
    if target_test is not None:
        _check_complete(run, predicted, [str(u) for u in target_test], reasons or {})
    source: dict[str, Any] = {}
    if "source_test" in runs.prediction_sets(run):
        theirs = runs.read_predictions(run, "source_test")
        ids = [str(u) for u in theirs["uids"]]
        have = set(ids)
        left_out = [u for u in source_test or () if u not in have]
        if left_out:
            log.warning(
                "%s predicts %d of the %d source test segments of its cache (%d left out, e.g. "
                "%r, %s): the file has no results_source (optional; the server refuses one "
                "that lacks an id), only results_target",
                *(run, len(ids), len(source_test or ()), len(left_out), left_out[0]),
                (reasons or {}).get(left_out[0], "not predicted"),
            )
        elif len(have) != EPIC100_SOURCE_TEST:  # a cache of part of the split
            log.warning(
                "%s predicts %d source test segments; the EPIC-100 UDA source_test split has %d: "
                "the file has no results_source (optional; the server refuses one that lacks an "
                "id), only results_target",
                *(run, len(have), EPIC100_SOURCE_TEST),
            )
        else:
            source = {
                "source_verb_scores": theirs["scores"]["verb"],
                "source_noun_scores": theirs["scores"]["noun"],
                "source_narration_ids": ids,
            }
    submission = epic100_uda_submission(
        target["scores"]["verb"],
        target["scores"]["noun"],
        predicted,
        sls_pt=sls_pt,
        sls_tl=sls_tl,
        sls_td=sls_td,
        **source,
    )
    return write_submission(submission, path)


EPIC100_TARGET_TEST = 5909  # segments of the EPIC-100 UDA target_test split
EPIC100_SOURCE_TEST = 4298  # and of its source_test split (EPIC_100_uda_source_test_timestamps)


def _check_complete(
    run: Path, predicted: Sequence[str], expected: Sequence[str], reasons: Mapping[str, str]
) -> None:
    """Refuse a submission that leaves out target test segments of the run's cache (rows
    stored failed or missing are not predicted: the server needs every narration id), and warn
    when the cache's target test is not the whole EPIC-100 split."""
    have = set(predicted)
    missing = [uid for uid in expected if uid not in have]
    if missing:
        raise ConfigError(
            f"{run} predicts {len(predicted)} of the {len(expected)} target test segments of "
            f"its cache: {len(missing)} left out (e.g. {missing[0]!r}, "
            f"{reasons.get(missing[0], 'not predicted')}), and the challenge server needs every "
            "one; extract or re-import them, train again, then export"
        )
    if len(expected) != EPIC100_TARGET_TEST:
        log.warning(
            "%s: %d target test segments; the EPIC-100 UDA target_test split has %d, and the "
            "challenge server scores a file that covers all of them",
            *(run, len(expected), EPIC100_TARGET_TEST),
        )
