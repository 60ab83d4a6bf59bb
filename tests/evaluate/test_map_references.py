"""avda's Charades mAP against transcriptions of the reference scorers (code avda did not write).

* ``Charades_v1_classify.m`` (the official Matlab scorer of the Charades and CharadesEgo
  releases, "adapted from THUMOS15"), as copied in ``PJunhyuk/charades-algorithms@02f38fc``:
  a video without actions gets no id (``load_charades``), so no prediction and ``-inf`` scores;
  ``THUMOSeventclspr`` ranks by Matlab's stable ``sort(-conf)`` and divides by ``npos`` (NaN for
  a class without positives, and ``map = mean(ap_all)`` NaN with it).
* ``charades_map`` / ``charades_nanmap`` of ``gsig/actor-observer@5858b34`` ``utils/map.py``
  (``gsig/charades-algorithms@927794c`` ``pytorch/utils/map.py`` has the same ``map`` and
  ``charades_map``): rows without a label set to ``-inf``, ``np.argsort(-x)``.
* ``AveragePrecisionMeter`` of ``xiaobai1217/DomainAdaptation@96c2f8f``
  ``CharadesEgo/util1.py`` (the Audio-Adaptive authors' CharadesEgo test, ``test_recognizer.py``
  l. 212-218: one ``(1, 157)`` row per video, ``100 * value().mean()``): scores stored as
  ``torch.FloatTensor``, ``torch.sort(descending=True)``, and a class without positives raises
  ``ZeroDivisionError``, caught, its AP left 0. Their test reads only videos with an action.

Only the numbers are compared: the transcriptions keep the references' arithmetic, not their
I/O. ``np.NINF`` (removed in numpy 2) is written ``-np.inf``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from avda.scoring.metrics import (
    average_precision_per_class,
    map_authors,
    map_present,
    max_over_groups,
    multilabel_map,
)

# --- Charades_v1_classify.m (PJunhyuk/charades-algorithms@02f38fc, l. 49-86) ----------------


def matlab_thumos_eventclspr(conf, labels):
    """``THUMOSeventclspr``: ``[so,sortind]=sort(-conf)`` (Matlab's sort is stable)."""
    sortind = np.argsort(-conf, kind="stable")
    tp = labels[sortind] == 1
    fp = labels[sortind] != 1
    npos = len(np.flatnonzero(labels == 1))
    fp = np.cumsum(fp)
    tp = np.cumsum(tp)
    with np.errstate(invalid="ignore", divide="ignore"):
        prec = tp / (fp + tp)
    ap = 0.0
    tmp = labels[sortind] == 1
    for i in range(len(conf)):
        if tmp[i] == 1:
            ap = ap + prec[i]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.float64(ap) / npos  # 0 / 0: NaN, as Matlab


def matlab_charades_v1_classify(scores, gtlabel):
    """The script's scoring loop: a video without actions has no id in ``gtids`` (its
    ``load_charades`` ``continue``s before setting it), so its row stays ``-inf``."""
    test = np.full(scores.shape, -np.inf)
    for i in range(len(gtlabel)):
        if gtlabel[i].sum() > 0:  # gtids{i} set: predictions.isKey(id)
            test[i, :] = scores[i]
    ap_all = np.array(
        [matlab_thumos_eventclspr(test[:, i], gtlabel[:, i]) for i in range(scores.shape[1])]
    )
    return ap_all, np.mean(ap_all)


# --- gsig/actor-observer@5858b34 utils/map.py ----------------------------------------------


def gsig_nanmap(submission_array, gt_array):
    m_aps = []
    n_classes = submission_array.shape[1]
    for oc_i in range(n_classes):
        sorted_idxs = np.argsort(-submission_array[:, oc_i])
        tp = gt_array[:, oc_i][sorted_idxs] == 1
        fp = np.invert(tp)
        n_pos = tp.sum()
        if n_pos < 0.1:
            m_aps.append(float("nan"))
            continue
        f_pcs = np.cumsum(fp)
        t_pcs = np.cumsum(tp)
        prec = t_pcs / (f_pcs + t_pcs).astype(float)
        avg_prec = 0
        for i in range(submission_array.shape[0]):
            if tp[i]:
                avg_prec += prec[i]
        m_aps.append(avg_prec / n_pos.astype(float))
    m_aps = np.array(m_aps)
    m_ap = np.nanmean(m_aps)
    return m_ap, m_aps


def gsig_charades_nanmap(submission_array, gt_array):
    fix = submission_array.copy()
    empty = np.sum(gt_array, axis=1) == 0
    fix[empty, :] = -np.inf
    return gsig_nanmap(fix, gt_array)


# --- xiaobai1217/DomainAdaptation@96c2f8f CharadesEgo/util1.py l. 62-181 -------------------


def authors_average_precision(output, target):
    """``AveragePrecisionMeter.average_precision`` (difficult_examples False)."""
    _, indices = torch.sort(output, dim=0, descending=True)
    pos_count = 0.0
    total_count = 0.0
    precision_at_i = 0.0
    for i in indices:
        label = target[i]
        if label == 1:
            pos_count += 1
        total_count += 1
        if label == 1:
            precision_at_i += pos_count / total_count
    precision_at_i /= pos_count
    return precision_at_i


def authors_meter_map(scores, targets):
    """``add`` of each video's ``(1, 157)`` row (FloatTensor scores, LongTensor targets), then
    ``value().mean()``: a class whose AP raises keeps 0."""
    scores = torch.from_numpy(np.asarray(scores)).float()
    targets = torch.from_numpy(np.asarray(targets)).long()
    ap = torch.zeros(scores.size(1))
    for k in range(scores.size(1)):
        try:
            ap[k] = authors_average_precision(scores[:, k], targets[:, k])
        except ZeroDivisionError:  # the code's bare except around a 0. / 0. division
            continue
    return float(ap.mean())


# --- the comparisons ------------------------------------------------------------------------


def case(seed: int, rows: int = 60, classes: int = 12, *, ties: bool):
    """Random scores (rounded to 3 levels: many ties), multi-hot targets with two classes
    without positives and a few rows without labels."""
    rng = np.random.default_rng(seed)
    scores = rng.random((rows, classes)).astype(np.float32).astype(np.float64)
    if ties:
        scores = np.round(scores * 2) / 2
    targets = (rng.random((rows, classes)) < 0.25).astype(np.int64)
    targets[:, [3, 7]] = 0  # classes without positives
    targets[rng.choice(rows, 6, replace=False)] = 0  # rows without labels
    targets[0, 0] = 1  # one positive at least in class 0
    return scores, targets


@pytest.mark.parametrize("seed", range(5))
def test_per_class_ap_is_the_official_matlab_scorers_with_ties(seed):
    scores, targets = case(seed, ties=True)
    assert len(np.unique(scores)) <= 3
    ap_all, official = matlab_charades_v1_classify(scores, targets)
    ours = average_precision_per_class(scores, targets)
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(ap_all))
    np.testing.assert_allclose(ours, ap_all, rtol=1e-12)
    # the script's mean is NaN where a class has no positive; avda's mAP-present leaves the
    # class out (the documented reading for subsets), which is the script's mAP otherwise
    assert math.isnan(official)
    assert map_present(scores, targets) == pytest.approx(np.nanmean(ap_all), rel=1e-12)
    present = targets.sum(axis=0) > 0
    _, official_present = matlab_charades_v1_classify(scores[:, present], targets[:, present])
    assert map_present(scores, targets) == pytest.approx(official_present, rel=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_map_present_is_gsigs_charades_nanmap(seed):
    # np.argsort's default sort breaks ties in no documented order: scores without ties
    scores, targets = case(seed, ties=False)
    assert len(np.unique(scores)) == scores.size
    reference, per_class = gsig_charades_nanmap(scores, targets)
    np.testing.assert_allclose(average_precision_per_class(scores, targets), per_class)
    assert map_present(scores, targets) == pytest.approx(reference, rel=1e-12)
    assert multilabel_map(scores, targets, metric="mAP") == pytest.approx(reference, rel=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_map_authors_is_the_audio_adaptive_meter_over_their_videos(seed):
    scores, targets = case(seed, ties=False)
    labelled = targets.sum(axis=1) > 0  # test_recognizer.py reads videos with an action only
    reference = authors_meter_map(scores[labelled], targets[labelled])
    assert map_authors(scores, targets) == pytest.approx(reference, rel=1e-6)
    assert multilabel_map(scores, targets, metric="mAP-authors") == pytest.approx(
        reference, rel=1e-6
    )
    # classes without positives count 0 in the authors' mean, not left out
    assert map_authors(scores, targets) == pytest.approx(
        map_present(scores, targets) * 10 / 12, rel=1e-12
    )


def test_clip_maximum_then_the_authors_meter():
    # test_recognizer.py l. 189-215: sigmoid per clip, torch.max over a video's clips, one row
    # per video into the meter; avda: max_over_groups on the rows' scores, then map_authors
    rng = np.random.default_rng(7)
    videos, clips, classes = 9, 10, 6
    logits = rng.normal(size=(videos * clips, classes))
    labels = (rng.random((videos, classes)) < 0.4).astype(np.int64)
    labels[:, 5] = 0
    labels[np.arange(videos), rng.integers(0, 5, videos)] = 1  # every video has an action
    groups = np.repeat([f"v{i}" for i in range(videos)], clips)
    order = rng.permutation(len(groups))  # a video's clips need not be next to each other
    logits, groups = logits[order], groups[order]
    row_targets = labels[[int(g[1:]) for g in groups]]
    per_video = torch.sigmoid(torch.from_numpy(logits)).numpy()
    reference = authors_meter_map(
        np.stack([per_video[groups == f"v{i}"].max(axis=0) for i in range(videos)]), labels
    )
    ours = multilabel_map(logits, row_targets, groups, metric="mAP-authors")
    assert ours == pytest.approx(reference, rel=1e-6)
    grouped, grouped_targets = max_over_groups(logits, row_targets, groups)
    assert grouped.shape == (videos, classes)
    assert map_authors(grouped, grouped_targets) == pytest.approx(reference, rel=1e-6)
