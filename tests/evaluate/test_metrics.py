"""Metrics against hand-computed values on small inputs, including ties and absent classes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from avda.errors import ConfigError
from avda.scoring.metrics import (
    average_precision,
    average_precision_per_class,
    average_scores,
    confusion_matrix,
    format_mean_std,
    mean_average_precision,
    mean_class_accuracy,
    mean_std,
    per_class_accuracy,
    predicted_classes,
    rank_classes,
    softmax,
    task_ties,
    top1_accuracy,
    top_k_accuracy,
)


def test_top1_ties_pick_the_lowest_index():
    scores = np.array([[0.5, 0.5, 0.0], [0.0, 1.0, 1.0]])
    assert top1_accuracy(scores, np.array([0, 1])) == 1.0
    assert top1_accuracy(scores, np.array([1, 2])) == 0.0
    assert math.isnan(top1_accuracy(np.zeros((0, 3)), np.zeros(0, dtype=int)))


def test_rank_and_top_k_with_ties():
    scores = np.array([[0.1, 0.3, 0.3, 0.2]])
    np.testing.assert_array_equal(rank_classes(scores), [[1, 2, 3, 0]])
    assert top_k_accuracy(scores, np.array([2]), k=1) == 0.0  # tie: class 1 comes first
    assert top_k_accuracy(scores, np.array([2]), k=2) == 1.0
    assert top_k_accuracy(scores, np.array([3]), k=2) == 0.0
    assert top_k_accuracy(scores, np.array([3]), k=3) == 1.0
    assert top_k_accuracy(scores, np.array([0]), k=10) == 1.0  # k beyond C: every class


def test_the_tie_rules_and_the_prediction_of_each():
    """``ties="highest"``: EPIC-100's official ``argsort()[:, ::-1]`` (tied classes highest id
    first), for verb and noun of a run with both; the prediction is each rule's first class."""
    scores = np.array([[0.1, 0.3, 0.3, 0.2]])
    np.testing.assert_array_equal(rank_classes(scores, ties="highest"), [[2, 1, 3, 0]])
    assert top_k_accuracy(scores, np.array([2]), k=1, ties="highest") == 1.0
    rng = np.random.default_rng(0)
    tied = rng.integers(0, 3, (200, 7)).astype(np.float32)  # many ties
    for ties in ("lowest", "highest"):
        np.testing.assert_array_equal(
            predicted_classes(tied, ties), rank_classes(tied, 1, ties)[:, 0]
        )
    assert task_ties("verb", ["verb", "noun"]) == task_ties("noun", ["noun", "verb"]) == "highest"
    assert (
        task_ties("verb", ["verb"]) == task_ties("labels", ["verb", "noun", "labels"]) == "lowest"
    )
    with pytest.raises(ConfigError, match="ties must be one of lowest, highest"):
        rank_classes(scores, ties="first")


def test_top_k_over_several_rows():
    scores = np.array([[3.0, 2.0, 1.0, 0.0], [0.0, 1.0, 2.0, 3.0], [1.0, 0.0, 3.0, 2.0]])
    labels = np.array([1, 1, 0])
    assert top_k_accuracy(scores, labels, k=1) == 0.0
    assert top_k_accuracy(scores, labels, k=2) == pytest.approx(1 / 3)
    assert top_k_accuracy(scores, labels, k=3) == 1.0


def test_class_accuracies_leave_out_absent_classes():
    scores = np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.1, 0.7, 0.2]])
    labels = np.array([0, 0, 1])  # class 2 absent from the target split
    assert mean_class_accuracy(scores, labels) == pytest.approx(0.75)
    np.testing.assert_allclose(per_class_accuracy(scores, labels), [0.5, 1.0, np.nan])
    np.testing.assert_allclose(
        per_class_accuracy(scores, labels, num_classes=4), [0.5, 1.0, np.nan, np.nan]
    )


def test_confusion_matrix_rows_are_true_classes():
    matrix = confusion_matrix(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 1]), num_classes=3)
    np.testing.assert_array_equal(matrix, [[1, 1, 0], [0, 1, 0], [0, 1, 0]])
    assert matrix.sum() == 4
    with pytest.raises(ConfigError, match=r"predictions must be class ids in 0\.\.2"):
        confusion_matrix(np.array([0]), np.array([3]), num_classes=3)


def test_average_precision_by_hand_and_ties_in_row_order():
    assert average_precision([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision([0.5, 0.5], [0, 1]) == pytest.approx(0.5)  # tie: row 0 first
    assert average_precision([0.5, 0.5], [1, 0]) == pytest.approx(1.0)
    assert math.isnan(average_precision([0.5, 0.4], [0, 0]))


def test_charades_map_drops_empty_rows_and_classes_without_positives():
    targets = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
    scores = np.array(
        [
            [0.9, 0.1, 0.5],
            [0.2, 0.8, 0.4],
            [0.6, 0.05, 0.3],
            [1.0, 1.0, 1.0],  # no label: removed, else it would rank first everywhere
        ]
    )
    per_class = average_precision_per_class(scores, targets)
    np.testing.assert_allclose(per_class[:2], [1.0, (1 + 2 / 3) / 2])
    assert math.isnan(per_class[2])
    assert mean_average_precision(scores, targets) == pytest.approx((1 + (1 + 2 / 3) / 2) / 2)


def test_average_precision_matches_sklearn_without_ties():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(50, 6))
    targets = (rng.random((50, 6)) < 0.3).astype(int)
    targets[:, 0] = 0
    targets[0, 0] = 1
    keep = targets.sum(axis=1) > 0
    ours = average_precision_per_class(scores, targets)
    for c in range(6):
        expected = average_precision_score(targets[keep, c], scores[keep, c])
        assert ours[c] == pytest.approx(expected)


def test_mean_std_over_seeds():
    mean, std = mean_std([0.6, 0.8])
    assert mean == pytest.approx(0.7)
    assert std == pytest.approx(math.sqrt(0.02))
    assert format_mean_std([0.6, 0.8]) == "70.0 ± 14.1"
    single_mean, single_std = mean_std([0.5])
    assert single_mean == 0.5 and math.isnan(single_std)
    with pytest.raises(ConfigError, match="non-empty"):
        mean_std([])
    # three seeds at 2/9 (22.2%): their sum over 3 left std 4.4e-15 in AggregateTable.to_frame
    agree = [100 * 2 / 9] * 3
    assert mean_std(agree) == (agree[0], 0.0)


def test_average_scores_of_checkpoints_and_clips():
    first = np.array([[0.2, 0.8]])
    second = np.array([[0.6, 0.4]])
    np.testing.assert_allclose(average_scores([first, second]), [[0.4, 0.6]])
    clips = np.array([[[0.2, 0.8], [0.6, 0.4], [1.0, 0.0]]])  # (N=1, clips=3, C=2)
    np.testing.assert_allclose(average_scores(clips, axis=1), [[0.6, 0.4]])
    with pytest.raises(ConfigError, match="share one shape"):
        average_scores([first, np.zeros((2, 2))])
    with pytest.raises(ConfigError, match="at least one"):
        average_scores([])


def test_softmax_is_stable():
    np.testing.assert_allclose(softmax(np.array([[0.0, math.log(3.0)]])), [[0.25, 0.75]])
    np.testing.assert_allclose(softmax(np.array([[1000.0, 1000.0]])), [[0.5, 0.5]])


def test_bad_inputs_are_config_errors():
    scores = np.zeros((2, 3))
    with pytest.raises(ConfigError, match=r"class ids in 0\.\.2"):
        top_k_accuracy(scores, np.array([0, 3]), k=1)
    with pytest.raises(ConfigError, match="one per row"):
        top_k_accuracy(scores, np.array([0]), k=1)
    with pytest.raises(ConfigError, match="NaN"):
        top_k_accuracy(np.array([[np.nan, 1.0]]), np.array([0]), k=1)
    # top-1 and mean class accuracy too (a paper table's default metric scored NaN rows as
    # wrong answers, silently), and a label beyond the score columns
    for metric in (top1_accuracy, mean_class_accuracy):
        with pytest.raises(ConfigError, match="NaN"):
            metric(np.array([[np.nan, 1.0], [0.0, 1.0]]), np.array([0, 1]))
        with pytest.raises(ConfigError, match=r"class ids in 0\.\.2"):
            metric(scores, np.array([0, 3]))
    with pytest.raises(ConfigError, match="at least 1"):
        top_k_accuracy(scores, np.array([0, 1]), k=0)
    with pytest.raises(ConfigError, match=r"\(N, C\)"):
        average_precision_per_class(np.zeros(3), np.zeros(3))
