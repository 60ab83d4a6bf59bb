"""Multi-label test sets scored by ``score_group``: the maximum over a video's rows of their
sigmoid scores, then mAP over videos (the Audio-Adaptive authors' CharadesEgo test,
``test_recognizer.py``: ``torch.max`` over 10 clips, ``AveragePrecisionMeter``).

Per-row predictions are stored as before, with the rows' ``score_group`` beside them; the
grouping is applied when scoring (the loop's metrics, ``avda evaluate``'s tables, ``avda
predict``). A cache without the column is scored row by row, as before.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from tests.train.test_audio_adaptive_multilabel import multilabel_store

from avda import runs
from avda.scoring.metrics import (
    map_authors,
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


def grouped_cache(path, *, classes: int = 4, seed: int = 0, groups: bool = True):
    """tests/train/test_audio_adaptive_multilabel.py's CharadesEgo-like cache, whose 24
    first-person test rows are 3 clips of each of 8 videos (the videos' labels, clips that
    differ), ``score_group`` = the video (no column with ``groups=False``)."""
    rng = np.random.default_rng(seed)
    rows, present = [], []
    parts = (("third", "train", 32), ("first", "train", 32), ("first", "test", 24))
    for domain, split, count in parts:
        for i in range(count):
            video = f"{domain}-{split}-{i // 3 if split == 'test' else i}"
            if split != "test" or i % 3 == 0:
                labels = sorted(rng.choice(classes, size=int(rng.integers(1, 3)), replace=False))
            present.append(labels)
            row = {
                "uid": f"{domain}-{split}-{i}",
                "video_id": video,
                "domain": domain,
                "split": split,
                "start_sec": float(i % 3),
                "stop_sec": float(i % 3) + 1.0,
                "labels": ";".join(map(str, labels)),
            }
            if groups:
                row["score_group"] = video if split == "test" else ""
            rows.append(row)
    return multilabel_store(path, rows, present, classes, rng, noise=2.0)


def hand_map(uids, groups, scores, labels, metric=mean_average_precision) -> float:
    """The video's score the maximum over its rows' stored scores, one label row per video."""
    videos: dict[str, list[int]] = {}
    for row, group in enumerate(groups):
        videos.setdefault(str(group), []).append(row)
    video_scores = np.stack([scores[r].max(axis=0) for r in videos.values()])
    video_labels = np.stack([labels[r[0]] for r in videos.values()])
    for rows in videos.values():  # every clip row carries its video's labels
        assert (labels[rows] == labels[rows[0]]).all()
    return metric(video_scores, video_labels)


@pytest.fixture(scope="module")
def grouped_run(tmp_path_factory):
    from tests.train.test_audio_adaptive_multilabel import TINY

    from avda.train.loop import train

    folder = tmp_path_factory.mktemp("grouped")
    cache = grouped_cache(folder / "c.zarr")
    result = train(
        cache=cache,
        head="audio-adaptive",
        source=["third"],
        target=["first"],
        out=folder / "run",
        overrides=dict(TINY),
        protocol="audio-adaptive-charadesego",
        progress=False,
    )
    return cache, folder / "run", result


def test_the_loop_scores_each_video_by_the_maximum_over_its_rows(grouped_run):
    _, run, result = grouped_run
    stored = runs.read_predictions(run, "target_test")
    scores, labels = stored["scores"]["labels"], stored["labels"]["labels"]
    assert scores.shape == (24, 157)  # per row, as before
    np.testing.assert_array_equal(stored["groups"], [f"first-test-{i // 3}" for i in range(24)])
    expected = hand_map(stored["uids"], stored["groups"], scores, labels)
    assert math.isfinite(expected)
    assert result.metrics["target_test/labels/mAP"] == pytest.approx(expected, abs=1e-12)
    assert expected != pytest.approx(mean_average_precision(scores, labels), abs=1e-6)
    history = runs.read_metrics(run)
    assert history[-1]["target_test/labels/mAP"] == pytest.approx(expected, abs=1e-12)

    # avda evaluate: the runs table and the protocol's table (both conventions)
    from avda.evaluate.aggregate import aggregate
    from avda.evaluate.tables import run_metrics

    assert run_metrics(run)["target_test/labels/mAP"] == pytest.approx(expected, abs=1e-12)
    table = aggregate([run])
    cells = {column: table.cell(table.methods[0], column)[0] for column in table.columns}
    authors = hand_map(stored["uids"], stored["groups"], scores, labels, map_authors)
    assert sorted(cells.values()) == pytest.approx(sorted([expected * 100, authors * 100]))


def test_predict_scores_and_writes_the_groups(grouped_run, tmp_path):
    from avda.train.predict import predict_run

    cache, run, result = grouped_run
    predictions = predict_run(run, cache, splits=["test"], device="cpu", progress=False)
    assert predictions.metrics["target_test/labels/mAP"] == pytest.approx(
        result.metrics["target_test/labels/mAP"], abs=1e-6
    )
    written = runs.load_predictions(predictions.save(tmp_path / "p.npz"))
    np.testing.assert_array_equal(written["groups"], [f"first-test-{i // 3}" for i in range(24)])
    assert written["scores"]["labels"].shape == (24, 157)
    table = pd.read_csv(tmp_path / "p.csv")
    assert table["group"].tolist() == [f"first-test-{i // 3}" for i in range(24)]


def test_a_cache_without_the_column_is_scored_row_by_row(tmp_path):
    from tests.train.test_audio_adaptive_multilabel import TINY

    from avda.train.loop import train

    cache = grouped_cache(tmp_path / "c.zarr", groups=False)
    result = train(
        cache=cache,
        head="audio-adaptive",
        source=["third"],
        target=["first"],
        out=tmp_path / "run",
        overrides={**TINY, "tasks": ["labels"]},
        progress=False,
    )
    stored = runs.read_predictions(tmp_path / "run", "target_test")
    assert stored["groups"] is None
    scores, labels = stored["scores"]["labels"], stored["labels"]["labels"]
    expected = mean_average_precision(scores, labels)
    assert result.metrics["target_test/labels/mAP"] == pytest.approx(expected, abs=1e-12)
