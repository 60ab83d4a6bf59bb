"""Multi-label test sets scored by ``score_group``: the maximum over a video's rows of their
sigmoid scores, then mAP over videos (the Audio-Adaptive authors' CharadesEgo test,
``test_recognizer.py``: ``torch.max`` over 10 clips, ``AveragePrecisionMeter``).

Per-row predictions are stored as before, with the rows' ``score_group`` beside them; the
grouping is applied when scoring (the loop's metrics, ``avda evaluate``'s tables, ``avda
predict``). A cache without the column is scored row by row, as before.
"""

from __future__ import annotations

import numpy as np
import pytest

from avda.scoring.metrics import (
    max_over_groups,
    mean_average_precision,
    multilabel_map,
)

# 5 rows of 3 videos (a's rows are not next to each other), 2 classes
SCORES = np.array([[0.1, 0.9], [0.8, 0.3], [0.7, 0.2], [0.6, 0.5], [0.2, 0.4]])
GROUPS = np.array(["a", "b", "a", "c", "b"])
VIDEO_LABELS = {"a": [1, 0], "b": [0, 1], "c": [1, 1]}
TARGETS = np.array([VIDEO_LABELS[g] for g in GROUPS])


def test_max_then_map_by_hand():
    # the videos' scores, the maximum over their rows: a [.7, .9], b [.8, .4], c [.6, .5]
    grouped, targets = max_over_groups(SCORES, TARGETS, GROUPS)
    np.testing.assert_allclose(grouped, [[0.7, 0.9], [0.8, 0.4], [0.6, 0.5]])
    np.testing.assert_array_equal(targets, [[1, 0], [0, 1], [1, 1]])
    # class 0: b .8 (-), a .7 (+), c .6 (+): AP (1/2 + 2/3) / 2 = 7/12
    # class 1: a .9 (-), c .5 (+), b .4 (+): AP (1/2 + 2/3) / 2 = 7/12
    assert multilabel_map(SCORES, TARGETS, GROUPS) == pytest.approx(7 / 12)
    assert multilabel_map(SCORES, TARGETS, GROUPS, "mAP-authors") == pytest.approx(7 / 12)
    # not the mean over clips: a [.4, .55], b [.5, .35], c [.6, .5] -> class 0 c+ b- a+:
    # (1 + 2/3) / 2 = 5/6, class 1 a- c+ b+: 7/12
    mean = np.array([SCORES[GROUPS == g].mean(0) for g in "abc"])
    assert mean_average_precision(mean, targets) == pytest.approx((5 / 6 + 7 / 12) / 2)
    # nor the rows' mAP (class 0: .8- .7+ .6+ .2- .1+, class 1: .9- .5+ .4+ .3+ .2-)
    per_class = [(1 / 2 + 2 / 3 + 3 / 5) / 3, (1 / 2 + 2 / 3 + 3 / 4) / 3]
    assert mean_average_precision(SCORES, TARGETS) == pytest.approx(np.mean(per_class))
    assert np.mean(per_class) != pytest.approx(7 / 12)


def test_rows_without_a_group_are_scored_alone():
    assert multilabel_map(SCORES, TARGETS, None) == mean_average_precision(SCORES, TARGETS)
    alone = np.full(5, "")
    assert multilabel_map(SCORES, TARGETS, alone) == mean_average_precision(SCORES, TARGETS)
    # one video's rows grouped, the others alone: 4 samples, a's in the place of its first row
    mixed = np.array(["a", "", "a", "", ""])
    grouped, targets = max_over_groups(SCORES, TARGETS, mixed)
    np.testing.assert_allclose(grouped, [[0.7, 0.9], SCORES[1], SCORES[3], SCORES[4]])
    np.testing.assert_array_equal(targets, TARGETS[[0, 1, 3, 4]])
