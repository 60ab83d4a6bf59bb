"""EPIC-100 (official C1 scorer and TA3N), the challenge JSON, MM-SADA and Charades protocols."""

from __future__ import annotations

import io
import json
import math
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.special import softmax as scipy_softmax

from avda.errors import ConfigError
from avda.scoring.protocols import (
    action_ids,
    charades_map,
    epic100_accuracies,
    epic100_action_scores,
    epic100_rank,
    epic100_uda_submission,
    mmsada_checkpoint_accuracy,
    mmsada_clip_scores,
    multi_hot,
    set_metrics,
    ta3n_action_correct,
    write_submission,
)

# The official EPIC-KITCHENS-100 scorer, transcribed from epic-kitchens/C1-Action-Recognition
# at c90b6f925634ec434a5353d3d2fba04e2bb49d1d (utils/scoring.py, utils/metrics.py, evaluate.py).
# Its ``argsort`` is numpy's default, whose order of tied scores numpy leaves open (2.x's SIMD
# sort shuffles them); transcribed as ``official_argsort``, that order in index order, the one
# avda documents (highest id first once reversed), so the comparison holds on any machine.


def official_argsort(scores, axis=-1):
    """The official code's ``argsort``, ties kept in index order (see above)."""
    return np.argsort(scores, axis=axis, kind="stable")


def official_compute_action_scores(verb_scores, noun_scores, top_n=100):
    """``C1-Action-Recognition/utils/scoring.py::compute_action_scores``, transcribed."""

    def top_scores(scores):
        index = official_argsort(scores)[:, ::-1][:, :top_n]
        return index, scores[np.arange(len(scores)).reshape(-1, 1), index]

    top_verbs, top_verb_scores = top_scores(verb_scores)
    top_nouns, top_noun_scores = top_scores(noun_scores)
    verb_probs = scipy_softmax(top_verb_scores)
    noun_probs = scipy_softmax(top_noun_scores)
    matrix = verb_probs[:, :, np.newaxis] * noun_probs[:, np.newaxis, :]
    count = matrix.shape[0]
    ranks = official_argsort(matrix.reshape(count, -1))[:, ::-1]
    verb_index, noun_index = np.unravel_index(ranks[:, :top_n], shape=matrix.shape[1:])
    segments = np.arange(0, count).reshape(-1, 1)
    return (
        (top_verbs[segments, verb_index], top_nouns[segments, noun_index]),
        matrix.reshape(count, -1)[segments, ranks[:, :top_n]],
    )


def official_action_ranks(verb_scores, noun_scores):
    """``evaluate.py``: action scores as one {action id: score} dict per segment, ranked by
    ``utils/scoring.py::_scores_dict_to_ranks`` (transcribed)."""
    (verbs, nouns), scores = official_compute_action_scores(verb_scores, noun_scores)
    dicts = [
        {int(a): s for a, s in zip(row_ids, row_scores, strict=True)}
        for row_ids, row_scores in zip(action_ids(verbs, nouns), scores, strict=True)
    ]
    ranks = []
    for score in dicts:
        class_ids = np.array(list(score.keys()))
        score_array = np.array([score[class_id] for class_id in class_ids])
        ranks.append(class_ids[official_argsort(score_array)[::-1]])
    return np.array(ranks)


def official_action_accuracy(verb_scores, noun_scores, verb_labels, noun_labels, k):
    """The official action top-``k`` (``topk_accuracy`` of :func:`official_action_ranks`)."""
    ranks = official_action_ranks(verb_scores, noun_scores)
    labels = action_ids(verb_labels, noun_labels)
    return float((ranks[:, :k] == labels[:, None]).any(axis=1).mean())


@pytest.fixture(scope="module")
def epic_like():
    rng = np.random.default_rng(0)
    count = 40
    verb_scores = rng.normal(size=(count, 97)).astype(np.float32)
    noun_scores = rng.normal(size=(count, 300)).astype(np.float32)
    verb_labels = rng.integers(0, 97, count)
    noun_labels = rng.integers(0, 300, count)
    # make some segments right so that the accuracies are not all zero
    verb_scores[np.arange(10), verb_labels[:10]] += 4
    noun_scores[np.arange(14), noun_labels[:14]] += 3
    return verb_scores, noun_scores, verb_labels, noun_labels


def test_action_scores_equal_the_official_scorer(epic_like):
    verb_scores, noun_scores, _, _ = epic_like
    (verbs, nouns), scores = official_compute_action_scores(verb_scores, noun_scores)
    ours = epic100_action_scores(verb_scores, noun_scores)
    np.testing.assert_array_equal(ours[0], verbs)
    np.testing.assert_array_equal(ours[1], nouns)
    np.testing.assert_allclose(ours[2], scores, rtol=1e-6)
    assert ours[0].shape == (40, 100)


def test_action_scores_ranked_in_blocks_equal_the_official_scorer_over_every_row(monkeypatch):
    """The pair scores are ranked a block of rows at a time (memory): the result is the
    official scorer's over the whole array, ties included (half the verbs underflow to 0)."""
    import avda.scoring.protocols as protocols

    monkeypatch.setattr(protocols, "_ACTION_BLOCK_ROWS", 7)
    rng = np.random.default_rng(3)
    for dtype, (verb_count, noun_count) in ((np.float32, (97, 300)), (np.float64, (6, 4))):
        verb_scores = rng.normal(size=(30, verb_count)).astype(dtype) * 20
        noun_scores = rng.normal(size=(30, noun_count)).astype(dtype) * 20
        verb_scores[:, : verb_count // 2] = -1e4
        (verbs, nouns), scores = official_compute_action_scores(verb_scores, noun_scores)
        ours = epic100_action_scores(verb_scores, noun_scores)
        np.testing.assert_array_equal(ours[0], verbs)
        np.testing.assert_array_equal(ours[1], nouns)
        np.testing.assert_array_equal(ours[2], scores)
        assert ours[2].dtype == scores.dtype and ours[0].shape == (
            30,
            min(100, verb_count * noun_count),
        )


def test_official_and_ta3n_accuracies(epic_like):
    verb_scores, noun_scores, verb_labels, noun_labels = epic_like
    results = epic100_accuracies(verb_scores, noun_scores, verb_labels, noun_labels)
    for k in (1, 5):
        assert results[f"all_action_accuracy_at_{k}"] == pytest.approx(
            official_action_accuracy(verb_scores, noun_scores, verb_labels, noun_labels, k)
        )
    assert results["all_verb_accuracy_at_1"] == pytest.approx(
        np.mean(verb_scores.argmax(1) == verb_labels)
    )
    assert results["ta3n_action_accuracy_at_1"] == results["all_action_accuracy_at_1"]
    assert results["ta3n_action_accuracy_at_5"] >= results["all_action_accuracy_at_5"]


def official_topk(scores, labels, ks):
    """``C1-Action-Recognition``'s ``topk_accuracy``, transcribed."""
    rankings = official_argsort(scores)[:, ::-1]
    tp = rankings[:, : max(ks)] == labels.reshape(-1, 1)
    return [tp[:, :k].max(1).mean() for k in ks]


def test_tied_scores_are_ranked_as_the_official_scorer_ranks_them():
    """Stored float32 probabilities underflow to exactly 0 beyond a segment's few likely
    classes: a top-5 then reaches into tied zeros, which the official scorer ranks highest
    index first (``argsort()[:, ::-1]``); avda ranked lowest first, scoring otherwise."""
    rng = np.random.default_rng(1)
    count = 60
    verb = np.zeros((count, 97), dtype=np.float32)
    noun = np.zeros((count, 300), dtype=np.float32)
    for row in range(count):  # three non-zero probabilities per segment
        verb[row, rng.choice(97, 3, replace=False)] = rng.dirichlet(np.ones(3))
        noun[row, rng.choice(300, 3, replace=False)] = rng.dirichlet(np.ones(3))
    # labels among the tied zeros, high ids (the official ranking's 4th and 5th) half the time
    verb_labels = np.where(np.arange(count) % 2, 96, rng.integers(0, 97, count))
    noun_labels = np.where(np.arange(count) % 2, 299, rng.integers(0, 300, count))
    verb_labels[verb[np.arange(count), verb_labels] > 0] = 95  # keep them among the zeros
    results = epic100_accuracies(verb, noun, verb_labels, noun_labels)
    for task, scores, labels in (("verb", verb, verb_labels), ("noun", noun, noun_labels)):
        at1, at5 = official_topk(scores, labels, (1, 5))
        assert results[f"all_{task}_accuracy_at_1"] == pytest.approx(at1)
        assert results[f"all_{task}_accuracy_at_5"] == pytest.approx(at5)
    assert results["all_verb_accuracy_at_5"] >= 0.4  # the tied high ids count, as officially
    for k in (1, 5):
        assert results[f"all_action_accuracy_at_{k}"] == pytest.approx(
            official_action_accuracy(verb, noun, verb_labels, noun_labels, k)
        )


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_tied_scores_rank_highest_id_first_whatever_numpy_sorts(dtype):
    """Ties rank highest class id first, as documented, on every row width and dtype: the
    official ``argsort()[:, ::-1]`` leaves their order to numpy's unstable sort, which (numpy
    2.x's SIMD sort) shuffled tied zeros of 8 and more classes and ranked a float16 copy of
    the same scores otherwise, so a run's verb top-1 depended on the machine and the dtype."""
    rng = np.random.default_rng(3)
    count, classes = 200, 97
    verb = np.zeros((count, classes), dtype)
    tied = np.array([np.sort(rng.choice(classes, 3, replace=False)) for _ in range(count)])
    verb[np.arange(count)[:, None], tied] = 0.5  # three classes tied best, the rest tied at 0
    expected = np.concatenate(
        [tied[:, ::-1], np.array([[c for c in range(classes)[::-1] if c not in t] for t in tied])],
        axis=1,
    )
    np.testing.assert_array_equal(epic100_rank(verb), expected)
    labels = tied[:, 2]  # the highest tied id: every top-1 right
    metrics = set_metrics("s", {"verb": verb, "noun": verb}, {"verb": labels, "noun": labels})
    assert metrics["s/verb/top1"] == metrics["s/noun/top1"] == 1.0
    # the pairs' products: float32 (float16's, ~1e-9, underflow to 0, the official code's too)
    verb = verb.astype(np.float32)
    assert epic100_accuracies(verb, verb, labels, labels)["all_action_accuracy_at_1"] == 1.0


def test_tied_action_scores_are_ranked_twice_as_evaluate_py_does():
    """One-hot-like probabilities tie most (verb, noun) pairs; evaluate.py ranks the top 100
    pairs a second time (a dict per segment, argsort reversed), which reorders the ties. avda
    ranked them once: action top-5 6.3% where the official scorer gives 0.9% on EPIC-100's
    target_val (a new user's check)."""
    rng = np.random.default_rng(11)
    count = 400
    verb_labels = rng.integers(0, 97, count)
    noun_labels = rng.integers(0, 300, count)
    verb = np.zeros((count, 97), np.float32)
    noun = np.zeros((count, 300), np.float32)
    for i in range(count):
        verb[i, verb_labels[i] if rng.random() < 0.6 else rng.integers(97)] = 1.0
        noun[i, rng.integers(300)] = 0.7
        noun[i, rng.integers(300)] += 0.3
    noun_labels[: count // 2] = np.argsort(noun[: count // 2], axis=1)[:, ::-1][:, 3]
    results = epic100_accuracies(verb, noun, verb_labels, noun_labels)
    for k in (1, 5):
        assert results[f"all_action_accuracy_at_{k}"] == pytest.approx(
            official_action_accuracy(verb, noun, verb_labels, noun_labels, k)
        )


def test_probabilities_are_ranked_by_their_sum_as_the_server_does():
    # Already-softmaxed inputs: the server's second softmax ranks pairs by p_verb + p_noun.
    verbs = np.array([[0.9, 0.1]])
    nouns = np.array([[0.68, 0.3, 0.02]])
    top_verbs, top_nouns, _ = epic100_action_scores(verbs, nouns)
    pairs = list(zip(top_verbs[0].tolist(), top_nouns[0].tolist(), strict=True))
    # product order would be (0,0) (0,1) (1,0) (1,1) (0,2) (1,2)
    assert pairs == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]


def test_ta3n_action_at_5_differs_from_the_official_one():
    logits = np.array([[5.0, 4.0, 3.0, 2.0, 1.0, 0.0]])
    verb_labels = noun_labels = np.array([3])  # both 4th best: in the top 5 of each
    assert ta3n_action_correct(logits, logits, verb_labels, noun_labels, 5).tolist() == [True]
    results = epic100_accuracies(logits, logits, verb_labels, noun_labels)
    assert results["ta3n_action_accuracy_at_5"] == 1.0
    assert results["all_action_accuracy_at_5"] == 0.0  # pair (3, 3) ranks far below 5th
    assert results["all_verb_accuracy_at_5"] == 1.0 and results["all_verb_accuracy_at_1"] == 0.0
    # tied scores: ranked as the official columns beside it, highest id first
    tied = np.zeros((1, 6))
    last = np.array([5])
    assert ta3n_action_correct(tied, tied, last, last, 1).tolist() == [True]
    results = epic100_accuracies(tied, tied, last, last)
    assert results["all_verb_accuracy_at_1"] == results["ta3n_action_accuracy_at_1"] == 1.0


def test_a_runs_set_metrics_add_epic100_action_when_it_predicts_verb_and_noun():
    """What ``avda train`` prints and ``avda evaluate --layout runs`` recomputes per set: with
    verb and noun, EPIC-100's verb/noun top-5 and action top-1/top-5, by hand. Probabilities
    (as runs store them) rank the official scorer's pairs by ``p_verb + p_noun``."""
    verb = np.array([[0.5, 0.35, 0.15], [0.2, 0.7, 0.1], [0.4, 0.25, 0.35], [0.1, 0.1, 0.8]])
    noun = np.array([[0.6, 0.3, 0.1], [0.1, 0.1, 0.8], [0.7, 0.2, 0.1], [0.3, 0.3, 0.4]])
    verb_labels = np.array([0, 1, 2, 2])
    noun_labels = np.array([2, 2, 0, -1])  # the last segment's noun is unlabelled
    metrics = set_metrics(
        "target_val", {"verb": verb, "noun": noun}, {"verb": verb_labels, "noun": noun_labels}
    )
    # segment 0: pairs by sum (0,0) 1.1, (1,0) .95, (0,1) .8, (2,0) .75, (1,1) .65, then the
    # label (0,2) .6: 6th, out of the top 5 (TA3N's top-5, verb and noun each in their top 5,
    # counts it); segment 1: (1,2) is the best pair; segment 2: (0,0) 1.1, then the label
    # (2,0) 1.05; segment 3 has no noun label, so no action
    assert metrics == pytest.approx(
        {
            "target_val/verb/top1": 3 / 4,  # all four segments: 0, 1 and 3 right
            "target_val/verb/mca": (1 + 1 + 1 / 2) / 3,
            "target_val/noun/top1": 2 / 3,
            "target_val/noun/mca": (1 / 2 + 1) / 2,  # noun 2 (segments 0, 1): 1 of 2; noun 0
            "target_val/verb/top5": 1.0,  # 3 classes
            "target_val/noun/top5": 1.0,
            "target_val/action/top1": 1 / 3,
            "target_val/action/top5": 2 / 3,
        }
    )
    # one task, or verb and noun where one is multi-label: no action columns
    alone = set_metrics("s", {"verb": verb}, {"verb": verb_labels})
    assert sorted(alone) == ["s/verb/mca", "s/verb/top1"]
    multi = set_metrics(
        "s",
        {"verb": verb, "noun": noun},
        {"verb": verb_labels, "noun": (noun > 0.35).astype(np.int8)},
        multi_label=["noun"],
    )
    assert sorted(multi) == ["s/noun/mAP", "s/noun/mAP-authors", "s/verb/mca", "s/verb/top1"]
    # no segment labelled with both: nothing for the action
    unlabelled = set_metrics(
        "s", {"verb": verb, "noun": noun}, {"verb": verb_labels, "noun": np.full(4, -1)}
    )
    assert sorted(unlabelled) == ["s/verb/mca", "s/verb/top1"]


def test_a_runs_verb_and_noun_top1_rank_ties_as_the_official_scorer():
    """A run with verb and noun: its verb and noun top-1 (and mca, from the same prediction)
    rank tied scores as the official scorer does, highest class id first, as its top-5 and
    ``avda evaluate --layout epic100`` do. Ranked lowest id first (argmax), a collapsed model's
    uniform rows gave verb top-1 0.5 beside a verb top-5 of 0.25 in one summary."""
    verb = np.full((4, 97), 1 / 97, np.float32)  # every class tied
    noun = np.full((4, 300), 1 / 300, np.float32)
    verb_labels, noun_labels = np.array([0, 0, 96, 5]), np.array([0, 1, 299, 3])
    metrics = set_metrics(
        "t", {"verb": verb, "noun": noun}, {"verb": verb_labels, "noun": noun_labels}
    )
    official = epic100_accuracies(verb, noun, verb_labels, noun_labels)
    for task, labels, scores in (("verb", verb_labels, verb), ("noun", noun_labels, noun)):
        assert metrics[f"t/{task}/top1"] == official_topk(scores, labels, (1,))[0] == 0.25
        assert metrics[f"t/{task}/top1"] == official[f"all_{task}_accuracy_at_1"]
        assert metrics[f"t/{task}/top1"] <= metrics[f"t/{task}/top5"]
    # one class of three right (the last id), the others never predicted
    assert metrics["t/verb/mca"] == pytest.approx(1 / 3)
    assert metrics["t/noun/mca"] == pytest.approx(1 / 4)
    # mca from the same prediction: the last id, which no segment here is (argmax: class 0)
    lowest = set_metrics(
        "t", {"verb": verb, "noun": noun}, {"verb": np.array([0, 0, 5, 5]), "noun": noun_labels}
    )
    assert lowest["t/verb/mca"] == lowest["t/verb/top1"] == 0.0
    # a run of one task keeps avda's rule (ties lowest id first)
    assert set_metrics("s", {"verb": verb}, {"verb": verb_labels})["s/verb/top1"] == 0.5


def official_compute_metrics(labels, verb_scores, noun_scores, tail_verbs, tail_nouns, unseen):
    """``utils/metrics.py::compute_metrics`` as ``evaluate.py`` prints it (fractions), keyed
    ``{all,tail,unseen}_{task}_accuracy_at_{k}``: transcribed, the ranks of each task
    subset by boolean masks, ``topk_accuracy`` as :func:`official_topk`."""
    verbs, nouns = labels["verb_class"].to_numpy(), labels["noun_class"].to_numpy()
    ranks = {
        "verb": official_argsort(verb_scores)[:, ::-1],
        "noun": official_argsort(noun_scores)[:, ::-1],
        "action": official_action_ranks(verb_scores, noun_scores),
    }
    truth = {"verb": verbs, "noun": nouns, "action": action_ids(verbs, nouns)}
    tail_verb, tail_noun = np.isin(verbs, tail_verbs), np.isin(nouns, tail_nouns)
    subsets = {
        "tail": {"verb": tail_verb, "noun": tail_noun, "action": tail_verb | tail_noun},
        "unseen": dict.fromkeys(truth, labels["participant_id"].isin(unseen).to_numpy()),
    }
    out = {}
    for task in truth:
        tp = ranks[task][:, :5] == truth[task].reshape(-1, 1)
        for k in (1, 5):
            out[f"all_{task}_accuracy_at_{k}"] = tp[:, :k].max(1).mean()
        for split, masks in subsets.items():
            if masks[task].any():  # the official code warns (unseen) or raises (tail) on none
                out[f"{split}_{task}_accuracy_at_1"] = tp[masks[task], :1].max(1).mean()
    return out


@pytest.mark.parametrize(
    "annotations",
    ["EPIC_100_validation.csv", "UDA_annotations/EPIC_100_uda_target_val.csv"],
)
def test_epic100_accuracies_equal_the_official_scorer_on_real_annotations(shared_data, annotations):
    """Every number ``epic100_accuracies`` shares with the official ``evaluate.py`` (all, tail,
    unseen participants), on a real EPIC-100 label file with its tail-class and unseen-
    participant lists: sparse probabilities (most classes tied at exactly 0, the label often
    among none of the few non-zero ones), some segments labelled with verb/noun pairs that are
    never ranked, verbs never predicted at all. C1-Action-Recognition@c90b6f9."""
    root = shared_data / "annotations" / "epic100"
    labels = pd.read_csv(root / annotations).iloc[::7].reset_index(drop=True)
    tail_verbs = pd.read_csv(root / "EPIC_100_tail_verbs.csv")["verb"].to_numpy()
    tail_nouns = pd.read_csv(root / "EPIC_100_tail_nouns.csv")["noun"].to_numpy()
    unseen = pd.read_csv(root / "EPIC_100_unseen_participant_ids_validation.csv")
    unseen = unseen["participant_id"].to_numpy()
    rng = np.random.default_rng(7)
    count = len(labels)
    verb_scores = np.zeros((count, 97), np.float32)
    noun_scores = np.zeros((count, 300), np.float32)
    for row in range(count):
        for scores, label in (
            (verb_scores, labels["verb_class"][row]),
            (noun_scores, labels["noun_class"][row]),
        ):
            classes = rng.choice(scores.shape[1] // 2, rng.integers(1, 4), replace=False)
            if rng.random() < 0.4:
                classes[0] = label
            scores[row, classes] = rng.dirichlet(np.ones(len(classes)))
    ours = epic100_accuracies(
        verb_scores,
        noun_scores,
        labels["verb_class"].to_numpy(),
        labels["noun_class"].to_numpy(),
        participant_ids=list(labels["participant_id"]),
        unseen_participants=unseen,
        tail_verbs=tail_verbs,
        tail_nouns=tail_nouns,
    )
    official = official_compute_metrics(
        labels, verb_scores, noun_scores, tail_verbs, tail_nouns, unseen
    )
    assert {k: v for k, v in ours.items() if not k.startswith("ta3n")} == official
    assert ("unseen_verb_accuracy_at_1" in official) == (annotations == "EPIC_100_validation.csv")
    assert "tail_action_accuracy_at_1" in official and 0 < official["all_action_accuracy_at_5"]


def test_tail_and_unseen_subsets():
    verb_scores = np.eye(3)[[0, 1, 2]]  # predicts verb 0, 1, 2
    noun_scores = np.eye(3)[[0, 0, 2]]  # predicts noun 0, 0, 2
    verb_labels = np.array([0, 1, 1])
    noun_labels = np.array([0, 1, 2])
    results = epic100_accuracies(
        verb_scores,
        noun_scores,
        verb_labels,
        noun_labels,
        participant_ids=["P01", "P33", "P33"],
        unseen_participants=["P33"],
        tail_verbs=[1],
        tail_nouns=[2],
    )
    assert results["all_verb_accuracy_at_1"] == pytest.approx(2 / 3)
    assert results["all_noun_accuracy_at_1"] == pytest.approx(2 / 3)
    assert results["all_action_accuracy_at_1"] == pytest.approx(1 / 3)
    assert results["tail_verb_accuracy_at_1"] == pytest.approx(1 / 2)  # segments 1, 2
    assert results["tail_noun_accuracy_at_1"] == 1.0  # segment 2
    assert results["tail_action_accuracy_at_1"] == 0.0  # segments 1, 2: both wrong actions
    assert results["unseen_verb_accuracy_at_1"] == pytest.approx(1 / 2)
    assert results["unseen_noun_accuracy_at_1"] == pytest.approx(1 / 2)
    assert results["unseen_action_accuracy_at_1"] == 0.0
    plain = epic100_accuracies(verb_scores, noun_scores, verb_labels, noun_labels)
    assert not any(key.startswith(("tail", "unseen")) for key in plain)


def test_submission_format_and_zip(tmp_path):
    rng = np.random.default_rng(1)
    ids = ["P01_101_0", "P01_101_1"]
    verbs, nouns = rng.random((2, 97)), rng.random((2, 300))
    submission = epic100_uda_submission(
        verbs, nouns, ids, sls_pt=2, sls_tl=3, sls_td=3, expected_narration_ids=ids
    )
    assert list(submission) == [
        "version",
        "challenge",
        "sls_pt",
        "sls_tl",
        "sls_td",
        "results_target",
    ]
    assert submission["version"] == "0.2" and submission["challenge"] == "domain_adaptation"
    entry = submission["results_target"]["P01_101_1"]
    assert list(entry) == ["verb", "noun"]
    assert list(entry["verb"])[:3] == ["0", "1", "2"] and len(entry["noun"]) == 300
    assert entry["noun"]["299"] == pytest.approx(nouns[1, 299])
    path = write_submission(submission, tmp_path / "submission.zip")
    with zipfile.ZipFile(path) as archive:
        assert archive.namelist() == ["test.json"]
        assert json.loads(archive.read("test.json")) == json.loads(json.dumps(submission))
    plain = write_submission(submission, tmp_path / "submission.json")
    assert json.loads(plain.read_text())["sls_td"] == 3
    with_source = epic100_uda_submission(
        verbs,
        nouns,
        ids,
        sls_pt=2,
        sls_tl=3,
        sls_td=3,
        source_verb_scores=verbs[:1],
        source_noun_scores=nouns[:1],
        source_narration_ids=["P01_11_0"],
    )
    assert list(with_source["results_source"]) == ["P01_11_0"]


@pytest.mark.parametrize("name", ["test.json", "test.zip"])
def test_a_submission_interrupted_while_written_leaves_the_old_file(tmp_path, monkeypatch, name):
    """Ctrl-C (or a kill) half-way through writing the challenge file: the old file stays, no
    half of one (a zip closed on the way out even held half a test.json, a valid archive)."""
    ids = ["P01_101_0", "P01_101_1"]
    rng = np.random.default_rng(2)
    levels = dict(sls_pt=2, sls_tl=3, sls_td=3)
    old = epic100_uda_submission(rng.random((2, 97)), rng.random((2, 300)), ids, **levels)
    path = write_submission(old, tmp_path / name)
    before = path.read_bytes()
    new = epic100_uda_submission(rng.random((2, 97)), rng.random((2, 300)), ids, **levels)
    real_text, real_member = Path.write_text, zipfile.ZipFile.writestr

    def half_text(self, text, *args, **kwargs):
        real_text(self, text[: len(text) // 2], *args, **kwargs)
        raise KeyboardInterrupt

    def half_member(self, member, data, *args, **kwargs):
        real_member(self, member, data[: len(data) // 2], *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_text", half_text)
    monkeypatch.setattr(zipfile.ZipFile, "writestr", half_member)
    with pytest.raises(KeyboardInterrupt):
        write_submission(new, path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_submission_errors():
    verbs, nouns, ids = np.zeros((2, 97)), np.zeros((2, 300)), ["a", "b"]
    levels = {"sls_pt": 2, "sls_tl": 3, "sls_td": 3}
    with pytest.raises(ConfigError, match=r"verb scores must be \(2, 97\)"):
        epic100_uda_submission(np.zeros((2, 96)), nouns, ids, **levels)
    with pytest.raises(ConfigError, match="repeat"):
        epic100_uda_submission(verbs, nouns, ["a", "a"], **levels)
    with pytest.raises(ConfigError, match="sls_td must be an integer supervision level"):
        epic100_uda_submission(verbs, nouns, ids, sls_pt=2, sls_tl=3, sls_td=6)
    with pytest.raises(ConfigError, match="1 id"):
        epic100_uda_submission(verbs, nouns, ids, expected_narration_ids=["a", "b", "c"], **levels)
    with pytest.raises(ConfigError, match="together"):
        epic100_uda_submission(verbs, nouns, ids, source_verb_scores=verbs, **levels)


def test_mmsada_clip_average_and_last_checkpoints():
    log3 = math.log(3.0)
    clips = np.array([[[0.0, log3], [log3, 0.0]]])  # softmax: [.25, .75] and [.75, .25]
    np.testing.assert_allclose(mmsada_clip_scores(clips), [[0.5, 0.5]])
    good = np.array([[[2.0, 0.0]] * 5, [[0.0, 2.0]] * 5])  # (N=2, clips=5, C=2), both right
    half = np.array([[[2.0, 0.0]] * 5, [[3.0, 0.0]] * 5])  # second segment wrong
    result = mmsada_checkpoint_accuracy([good, half], np.array([0, 1]))
    assert result["checkpoints"] == 2
    assert result["top1_mean"] == pytest.approx(0.75)
    assert result["top1_std"] == pytest.approx(math.sqrt(0.125))
    # averaged scores of segment 1: (0.12 + 0.95) / 2 for class 0 > class 1 -> wrong
    assert result["top1_of_mean_scores"] == pytest.approx(0.5)
    with pytest.raises(ConfigError, match=r"\(N, clips, C\)"):
        mmsada_clip_scores(np.zeros((2, 3)))


def test_multi_hot_and_charades_map():
    labels = ["0;2", "1", "", None]
    targets = multi_hot(labels, 3)
    np.testing.assert_array_equal(targets, [[1, 0, 1], [0, 1, 0], [0, 0, 0], [0, 0, 0]])
    scores = np.array([[0.9, 0.1, 0.2], [0.3, 0.8, 0.7], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    # class 0: rows 0,1 -> AP 1; class 1: AP 1; class 2: row 1 (0.7) before row 0 (0.2): 1/2
    assert charades_map(scores, labels) == pytest.approx((1 + 1 + 0.5) / 3)
    assert charades_map(scores, targets) == pytest.approx((1 + 1 + 0.5) / 3)
    # two videos of two clips each, scored by the maximum over their clips: v (class 0)
    # [0.9, 0.95], w (class 1) [0.6, 0.4]: class 0 AP 1, class 1 AP 1/2 (v first); per clip
    # row it would be 0.75 and 7/12
    clips = np.array([[0.9, 0.1], [0.2, 0.95], [0.5, 0.3], [0.6, 0.4]])
    clip_labels = ["0", "0", "1", "1"]
    assert charades_map(clips, clip_labels, groups=["v", "v", "w", "w"]) == pytest.approx(0.75)
    assert charades_map(clips, clip_labels) == pytest.approx((0.75 + 7 / 12) / 2)
    with pytest.raises(ConfigError, match=r"'7' is not a class id in 0\.\.2"):
        multi_hot(["7"], 3)
    # one label or none per row: pandas reads the column as floats (15.0, NaN), refused before
    as_floats = pd.read_csv(io.StringIO("labels,uid\n2,a\n1,b\n,c\n"))["labels"]
    assert as_floats.dtype == np.float64
    np.testing.assert_array_equal(multi_hot(as_floats, 3), [[0, 0, 1], [0, 1, 0], [0, 0, 0]])
    with pytest.raises(ConfigError, match=r"'1\.5' is not a class id"):
        multi_hot([1.5], 3)
