"""The multi-label (CharadesEgo) variant of Audio-Adaptive: the per-class pseudo-absent rule, the
binary cross-entropy losses and weights against hand computations, the recognizer's per-row
domain, and the head end-to-end through the training loop (also under the
``audio-adaptive-charadesego`` protocol with its labelled target half)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from avda import cache as cache_lib
from avda import runs
from avda.cache import Status
from avda.errors import ConfigError
from avda.train import heads
from avda.train.audio_adaptive.audio_classifier import multilabel_pseudo_absent_labels
from avda.train.audio_adaptive.losses import (
    class_frequencies,
    multilabel_absent_loss,
    multilabel_audio_balanced_weights,
    multilabel_balanced_loss,
    multilabel_encoder_loss,
    multilabel_recognizer_loss,
)
from avda.train.audio_adaptive.recognizer import SOURCE, TARGET, AudioInfusedRecognizer
from avda.train.data import Task
from avda.train.loop import train
from avda.train.stages import StageStore

torch.set_num_threads(1)


# ------------------------------------------------------------------------------ stage 4
def test_pseudo_absent_rule_by_hand():
    p = np.array(
        [
            [0.9, 0.5, 0.1],
            [0.1, 0.5, 0.2],
            [0.3, 0.2, 0.3],
            [0.2, 0.5, 0.9],
            [0.8, 0.9, 0.0],
        ]
    )
    # N = 5, gamma = 0.5: class 0 alpha 0.2 -> int(0.8 * 5 * 0.5) = 2 lowest: rows 1 (0.1), 3
    # (0.2); class 1 alpha 0.25 -> int(1.875) = 1: row 2 (0.2); class 2 alpha 1 -> 0 absent.
    absent = multilabel_pseudo_absent_labels(p, np.array([0.2, 0.25, 1.0]), gamma=0.5)
    expected = np.zeros((5, 3), dtype=np.float32)
    expected[[1, 3], 0] = 1
    expected[2, 1] = 1
    np.testing.assert_array_equal(absent, expected)
    assert absent.dtype == np.float32
    # ties (class 1: rows 0, 1, 3 all 0.5) go to the earlier row: alpha 0 -> int(2.5) = 2 lowest
    absent = multilabel_pseudo_absent_labels(p, np.array([0.0, 0.0, 0.0]), gamma=0.5)
    np.testing.assert_array_equal(np.flatnonzero(absent[:, 1]), [0, 2])
    np.testing.assert_array_equal(np.flatnonzero(absent[:, 2]), [0, 4])  # 0.1 and 0.0
    # gamma = 1 and a class no source segment has: every target segment is absent
    absent = multilabel_pseudo_absent_labels(p, np.array([0.0, 0.4, 0.6]), gamma=1.0)
    assert absent[:, 0].sum() == 5 and absent[:, 1].sum() == 3 and absent[:, 2].sum() == 2
    # the paper's gamma = 0.05 on 5 segments marks nothing (int(0.25) = 0)
    assert multilabel_pseudo_absent_labels(p, np.zeros(3)).sum() == 0
    assert multilabel_pseudo_absent_labels(torch.tensor(p), np.zeros(3), 1.0).sum() == 15
    for gamma in (0.0, 1.5):
        with pytest.raises(ConfigError, match="absent_gamma"):
            multilabel_pseudo_absent_labels(p, np.zeros(3), gamma)
    with pytest.raises(ConfigError, match="one entry per class"):
        multilabel_pseudo_absent_labels(p, np.zeros(2))
    with pytest.raises(ConfigError, match="fractions"):
        multilabel_pseudo_absent_labels(p, np.array([0.0, 1.5, 0.0]))


def authors_unlikely_per_video(windows: list[np.ndarray], per_cls_freq, gamma: float):
    """Transcription of the authors' ``CharadesEgo/get_audio_pred_on_train.py`` l. 129-139 (a
    video's sigmoid predictions ``(W, C)`` over its windows, averaged) and
    ``get_unlikely_cls_per_video.py`` l. 26-49 on those videos (``windows``: the unlabelled
    half, in list order; the code's constant 0.55 is ``gamma``)."""
    preds = [np.mean(w, axis=0) for w in windows]  # predict1 = torch.mean(predict1, dim=0)
    num_videos = len(preds)
    records = np.zeros((num_videos, len(per_cls_freq)))
    for ii in range(len(per_cls_freq)):
        pred_list = []
        unlikely_videos_num = int((1 - per_cls_freq[ii]) * num_videos * gamma)
        for pred1 in preds:
            pred_list.append(pred1[ii])
        pred_list = np.array(pred_list)
        idx_list = np.argsort(pred_list)
        idx_list = idx_list[:unlikely_videos_num]
        for id in idx_list:
            records[id, ii] = 1
    return records


# rows of 4 videos, interleaved: A B A C B D B D; video means (class 0) A 0.5, B 0.3, C 0.4,
# D 0.6; (class 1) A 0.2, B 0.55, C 0.8, D 0.3; (class 2) A 0.6, B 0.2, C 0.9, D 0.1
HAND_VIDEOS = np.array(["A", "B", "A", "C", "B", "D", "B", "D"])
HAND_ROWS = np.array(
    [
        [0.1, 0.2, 0.5],
        [0.3, 0.9, 0.2],
        [0.9, 0.2, 0.7],
        [0.4, 0.8, 0.9],
        [0.3, 0.05, 0.2],
        [0.6, 0.1, 0.1],
        [0.3, 0.7, 0.2],
        [0.6, 0.5, 0.1],
    ]
)


def test_pseudo_absent_rule_ranks_videos_by_their_mean_over_rows():
    """Rows of one video: the authors rank videos (N = 4 here), each by its windows' mean, and
    avda gives every row its video's absent classes. Ranked alone (N = 8), class 1 would mark
    B's 0.05 and D's 0.1 rows, not video A."""
    frequencies = np.array([0.0, 0.5, 0.0])
    absent = multilabel_pseudo_absent_labels(HAND_ROWS, frequencies, 0.5, videos=HAND_VIDEOS)
    # class 0: int(4 * 0.5) = 2 videos: B (0.3), C (0.4); class 1: int(0.5 * 4 * 0.5) = 1: A
    # (0.2); class 2: 2 videos: D (0.1), B (0.2)
    per_video = {"A": [0, 1, 0], "B": [1, 0, 1], "C": [1, 0, 0], "D": [0, 0, 1]}
    np.testing.assert_array_equal(absent, [per_video[v] for v in HAND_VIDEOS])
    assert absent.dtype == np.float32
    order = ["A", "B", "C", "D"]  # the videos in the order of their first row
    authors = authors_unlikely_per_video(
        [HAND_ROWS[HAND_VIDEOS == v] for v in order], frequencies, 0.5
    )
    np.testing.assert_array_equal(absent, authors[[order.index(v) for v in HAND_VIDEOS]])
    alone = multilabel_pseudo_absent_labels(HAND_ROWS, frequencies, 0.5)
    assert not np.array_equal(alone, absent)
    # random videos of 1-10 rows (the whole-video rows: 10), the code's gamma 0.55 and others
    rng = np.random.default_rng(0)
    for trial in range(20):
        sizes = rng.integers(1, 11, size=int(rng.integers(2, 30)))
        names = np.array([f"v{trial}-{i}" for i in range(len(sizes))])
        videos = rng.permutation(np.repeat(names, sizes))
        p = rng.random((len(videos), 5)).astype(np.float32)
        f = rng.random(5)
        for gamma in (0.05, 0.55, 1.0):
            order = list(dict.fromkeys(videos.tolist()))
            authors = authors_unlikely_per_video([p[videos == v] for v in order], f, gamma)
            expected = authors[[order.index(v) for v in videos]]
            got = multilabel_pseudo_absent_labels(p, f, gamma, videos=videos)
            np.testing.assert_array_equal(got, expected)
    with pytest.raises(ConfigError, match="video of each"):
        multilabel_pseudo_absent_labels(HAND_ROWS, frequencies, 0.5, videos=HAND_VIDEOS[:3])


def test_pseudo_absent_rule_on_videos_of_one_row_is_the_rows_rule():
    rng = np.random.default_rng(1)
    p = rng.random((40, 6)).astype(np.float32)
    p[5:9, 2] = p[4, 2]  # ties go to the earlier row either way
    f = rng.random(6)
    for gamma in (0.05, 0.55, 1.0):
        np.testing.assert_array_equal(
            multilabel_pseudo_absent_labels(p, f, gamma, videos=np.arange(40)[::-1]),
            multilabel_pseudo_absent_labels(p, f, gamma),
        )


def test_class_frequencies():
    labels = np.array([[1, 0, 1], [1, 0, 0], [0, 0, 1], [1, 0, 0]])
    np.testing.assert_allclose(class_frequencies(labels), [0.75, 0.0, 0.5])


# ------------------------------------------------------------------------------ stage 3
def test_multilabel_weights_by_hand():
    # beta = 0.5; class 0 in segments 0, 1, 2 (clusters 0, 0, 1), class 1 in segment 2 only,
    # segment 3 has no class. Class weights e(3) = 4/7, e(1) = 1 -> sum to 2: w0 = 8/11,
    # w1 = 14/11. Class 0 clusters e(2) = 2/3, e(1) = 1 -> (0.4, 0.6) * K=2 * w0.
    labels = np.array([[1, 0], [1, 0], [1, 1], [0, 0]])
    clusters = np.array([[0, -1], [0, -1], [1, 0], [-1, -1]])
    weights, table = multilabel_audio_balanced_weights(labels, clusters, beta=0.5)
    w0, w1 = 8 / 11, 14 / 11
    expected = [0.8 * w0, 0.8 * w0, (1.2 * w0 + w1) / 2, 0.0]  # mean over present classes
    np.testing.assert_allclose(weights, expected)
    assert table[0] == pytest.approx({0: 0.8 * w0, 1: 1.2 * w0})
    assert table[1] == pytest.approx({0: w1})
    with pytest.raises(ConfigError, match="no audio cluster"):
        multilabel_audio_balanced_weights(labels, np.where(labels > 0, -1, -1), beta=0.5)


# ------------------------------------------------------------------------------ losses
def _bce(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Elementwise -(y log s + (1 - y) log(1 - s)), s = 1 / (1 + e^-z), written out."""
    s = 1.0 / (1.0 + torch.exp(-z))
    return -(y * torch.log(s) + (1 - y) * torch.log(1 - s))


def test_multilabel_losses_by_hand():
    z = torch.tensor([[2.0, -1.0, 0.5], [0.0, 1.5, -2.0]], dtype=torch.float64)
    y = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    w = torch.tensor([1.0, 3.0], dtype=torch.float64)
    # weights normalised over the batch: [1, 3] / 4 * 2 = [0.5, 1.5]; mean over 2 x 3 entries
    per_row = _bce(z, y).sum(dim=1)
    balanced = (0.5 * per_row[0] + 1.5 * per_row[1]) / 6
    assert multilabel_balanced_loss(z, y, w).item() == pytest.approx(balanced.item())
    assert multilabel_balanced_loss(z, y, torch.zeros(2, dtype=torch.float64)).item() == 0.0

    a = torch.tensor([[0.0, 1.0, 1.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    s = 1.0 / (1.0 + torch.exp(-z))
    # row 0: (-log(1 - s01 + 1e-7) - log(1 - s02 + 1e-7)) / (2 + 3); row 1: 0 / 3
    row0 = (-math.log(1 - s[0, 1].item() + 1e-7) - math.log(1 - s[0, 2].item() + 1e-7)) / 5
    absent = row0 / 2
    assert multilabel_absent_loss(z, a).item() == pytest.approx(absent)

    zl = torch.tensor([[0.3, -0.7, 1.0]], dtype=torch.float64)
    yl = torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)
    labelled = _bce(zl, yl).mean()
    out = multilabel_encoder_loss(z, y, w, z, a, 0.01, zl, yl)
    assert out["loss"].item() == pytest.approx((balanced + labelled).item() + 0.01 * absent)
    assert out["labelled_target"].item() == pytest.approx(labelled.item())
    without = multilabel_encoder_loss(z, y, w, z, a, 0.01)
    assert without["loss"].item() == pytest.approx(balanced.item() + 0.01 * absent)
    assert "labelled_target" not in without


def test_multilabel_recognizer_loss_by_hand():
    torch.manual_seed(0)
    z = torch.randn(3, 4, dtype=torch.float64)
    y = torch.tensor([[1, 0, 0, 1], [0, 1, 0, 0], [0, 0, 1, 1]], dtype=torch.float64)
    h = torch.randn(3, 4, dtype=torch.float64)
    hv = torch.randn(3, 2, 4, dtype=torch.float64)
    is_target = torch.tensor([False, True, False])
    src = torch.tensor([0, 2])
    source = _bce(z[src], y[src]).mean()
    target = _bce(z[1:2], y[1:2]).mean()
    audio = _bce(h[src], y[src]).mean()
    audio_visual = _bce(hv[src], y[src][:, None, :].expand(2, 2, 4)).mean()
    parts = multilabel_recognizer_loss(z, y, is_target, h, hv, target_weight=0.5)
    expected = (source + 0.5 * target) / 2 + 0.1 * (audio + 0.2 * audio_visual)
    assert parts["loss"].item() == pytest.approx(expected.item())
    assert parts["labelled_target"].item() == pytest.approx(target.item())
    # a batch of source rows only: the source term alone (not halved)
    only = multilabel_recognizer_loss(z, y, torch.zeros(3, dtype=torch.bool), h, hv)
    full = _bce(z, y).mean() + 0.1 * (
        _bce(h, y).mean() + 0.2 * _bce(hv, y[:, None, :].expand(3, 2, 4)).mean()
    )
    assert only["loss"].item() == pytest.approx(full.item())
    # labelled target rows only: no auxiliary terms
    none = multilabel_recognizer_loss(z, y, torch.ones(3, dtype=torch.bool), h, hv)
    assert none["loss"].item() == pytest.approx(_bce(z, y).mean().item())


def test_recognizer_takes_a_domain_per_row():
    torch.manual_seed(0)
    model = AudioInfusedRecognizer(
        6, 5, 4, delegate_dim=8, dim=8, depth=1, heads=2, head_dim=4, mlp_dim=8
    ).eval()
    visual, audio = torch.randn(3, 2, 6), torch.randn(3, 5)
    domain = torch.tensor([SOURCE, TARGET, SOURCE])
    mixed = model(visual, audio, domain).logits
    torch.testing.assert_close(mixed[[0, 2]], model(visual, audio, SOURCE).logits[[0, 2]])
    torch.testing.assert_close(mixed[1], model(visual, audio, TARGET).logits[1])


# ------------------------------------------------------------------------------ end to end
TINY = {
    "audio_hidden_dim": 16,
    "audio_epochs": 2,
    "cluster_max_k": 3,
    "cluster_n_init": 1,
    "encoder_epochs": 2,
    "encoder_lr": 1e-3,
    "attention_dim": 16,
    "attention_depth": 1,
    "attention_heads": 2,
    "attention_head_dim": 8,
    "attention_mlp_dim": 16,
    "encoder_bottleneck": 8,
    "epochs": 2,
    "delegate_dim": 16,
    "recognizer_dim": 16,
    "recognizer_depth": 1,
    "recognizer_heads": 2,
    "recognizer_head_dim": 8,
    "recognizer_mlp_dim": 16,
    "absent_gamma": 0.5,
}


def multilabel_av_cache(path, *, classes: int = 4, seed: int = 0, per_video: int = 1):
    """CharadesEgo-like: domains third / first, 1-2 classes per segment, rgb and audio;
    ``per_video`` consecutive first-person training rows share a video."""
    rng = np.random.default_rng(seed)
    rows, present = [], []
    parts = (("third", "train", 32), ("first", "train", 32), ("first", "test", 16))
    for domain, split, count in parts:
        for i in range(count):
            labels = sorted(rng.choice(classes, size=int(rng.integers(1, 3)), replace=False))
            present.append(labels)
            video = i // per_video if (domain, split) == ("first", "train") else i
            rows.append(
                {
                    "uid": f"{domain}-{split}-{i}",
                    "video_id": f"{domain}-{split}-{video}",
                    "domain": domain,
                    "split": split,
                    "start_sec": 0.0,
                    "stop_sec": 1.0,
                    "labels": ";".join(map(str, labels)),
                }
            )
    return multilabel_store(path, rows, present, classes, rng, noise=1.0)


def multilabel_store(path, rows, present, classes: int, rng, *, noise: float):
    """A real cache of ``rows`` whose rgb (2 clips x 8) and audio (1 x 6) features are each
    row's ``present`` classes (multi-hot) through random maps, plus Gaussian ``noise``."""
    store = cache_lib.create(
        path, pd.DataFrame(rows), manifest_sha256="0" * 64, recipe={"name": "synthetic"}
    )
    n = len(rows)
    hot = np.zeros((n, classes))
    for i, labels in enumerate(present):
        hot[i, labels] = 1
    features = {
        "rgb": (hot @ rng.normal(0, 2, (classes, 8)))[:, None, :] + rng.normal(0, noise, (n, 2, 8)),
        "audio": (hot @ rng.normal(0, 2, (classes, 6)))[:, None, :]
        + rng.normal(0, noise, (n, 1, 6)),
    }
    info = {"backbone": "synthetic", "weights": None, "weights_sha256": None, "input_spec": {}}
    for modality, x in features.items():
        store.add_modality(modality, num_clips=x.shape[1], num_features=x.shape[2], info=info)
        store.write(modality, np.arange(n), x, np.full(n, int(Status.DONE)), [""] * n)
    return path


@pytest.fixture(scope="module")
def ml_cache(tmp_path_factory):
    return multilabel_av_cache(tmp_path_factory.mktemp("ml") / "c.zarr")


def test_avda_cluster_on_a_multilabel_cache_says_the_run_clusters(ml_cache, tmp_path):
    # a new user ran `avda cluster` on a CharadesEgo cache, as the EPIC recipe does first:
    # the error named only the missing verb_class column
    from avda.errors import CacheError
    from avda.train.clustering import cluster_store

    with pytest.raises(CacheError, match="multi-label variant clusters each present class"):
        cluster_store(ml_cache, progress=False)


def _train(cache, out, **options):
    return train(
        cache=cache,
        head="audio-adaptive",
        source=["third"],
        target=["first"],
        out=out,
        overrides={**TINY, **options.pop("overrides", {})},
        progress=False,
        **options,
    )


def test_multilabel_head_trains_end_to_end(ml_cache, tmp_path):
    result = _train(ml_cache, tmp_path / "run", overrides={"tasks": ["labels"]})
    assert math.isfinite(result.metrics["target_test/labels/mAP"])
    stages = StageStore(tmp_path / "run")
    absent = stages.load_arrays("absent-labels")
    # the stored labels are the rule on the stored sigmoid probabilities and frequencies
    np.testing.assert_array_equal(
        absent["absent"],
        multilabel_pseudo_absent_labels(absent["probabilities"], absent["frequencies"], 0.5),
    )
    assert absent["absent"].shape == (32, 4) and absent["absent"].sum() > 0
    # one row a video: the rows are ranked, under the key of a stage made before videos were
    assert "videos" not in absent
    assert set(stages.record("absent-labels")["key"]) == {"absent_gamma", "upstream", "cache"}
    # sigmoid probabilities (rows need not sum to 1) and alpha from the 32 source segments
    assert not np.allclose(absent["probabilities"].sum(1), 1.0)
    clusters = stages.load_arrays("clusters")["clusters"]
    labels = stages.load_arrays("clusters")["labels"]
    assert clusters.shape == (32, 4)
    assert np.all((clusters >= 0) == (labels > 0))  # a cluster in each present class only
    assert stages.record("pseudo-labels-rgb") is None  # no stage 6a
    history = runs.read_metrics(tmp_path / "run")
    assert all(math.isfinite(r["train/loss"]) for r in history)
    assert all(r["train/rgb/labelled_target"] == 0 for r in history)  # no labelled target
    predictions = runs.read_predictions(tmp_path / "run", "target_test")
    scores = predictions["scores"]["labels"]
    assert scores.shape == (16, 4) and np.all((scores > 0) & (scores < 1))


def test_multilabel_head_under_the_charadesego_protocol(ml_cache, tmp_path):
    # the protocol's recipe picks the labels task (the head's default is verb)
    result = _train(ml_cache, tmp_path / "run", protocol="audio-adaptive-charadesego")
    assert runs.read_config(tmp_path / "run")["head_config"]["tasks"] == ["labels"]
    assert math.isfinite(result.metrics["target_test/labels/mAP"])
    stages = StageStore(tmp_path / "run")
    # the labelled half (16 of 32 first-person segments) joins the labelled set: the stages
    # train the audio classifier and cluster on the 32 third-person rows, mark absent classes
    # on the 16 unlabelled ones, and the encoder has a labelled target term
    # the protocol's benchmark has Charades' 157 classes (this cache's largest id is 3)
    assert stages.load_arrays("absent-labels")["absent"].shape == (16, 157)
    clusters = stages.load_arrays("clusters")["clusters"]
    assert clusters.shape == (48, 157) and np.all(clusters[32:] == -1)
    weights = stages.load_arrays("weights")["weights"]
    assert np.all(weights[:32] > 0) and np.all(weights[32:] == 0)
    encoder = stages.record("encoder-rgb")["summary"]["history"]
    assert all(epoch["labelled_target"] > 0 for epoch in encoder)
    history = runs.read_metrics(tmp_path / "run")
    assert all(r["train/rgb/labelled_target"] > 0 for r in history)


def test_multilabel_recognizer_sees_each_domain_apart(ml_cache, tmp_path, monkeypatch):
    """``CharadesEgo/train_recognizer.py`` calls the recognizer on the source batch and on the
    labelled target batch apart, so its BatchNorms normalise each with its own statistics:
    the labelled half of the protocol never shares a call with source rows."""
    seen = []
    forward = AudioInfusedRecognizer.forward

    def record(self, visual, audio, domain):
        if self.training:
            seen.append(domain if isinstance(domain, int) else tuple(domain.tolist()))
        return forward(self, visual, audio, domain)

    monkeypatch.setattr(AudioInfusedRecognizer, "forward", record)
    _train(ml_cache, tmp_path / "run", protocol="audio-adaptive-charadesego")
    assert set(seen) == {SOURCE, TARGET}, set(seen)
    # the rows come back in the batch's order, each as its own domain's call gives it
    from avda.train.heads.audio_adaptive import _each_domain_apart

    torch.manual_seed(0)
    recognizer = AudioInfusedRecognizer(
        6, 4, 3, dim=8, depth=1, heads=2, head_dim=4, mlp_dim=8, delegate_dim=8, fc_hidden=8,
        visual_hidden=8,
    )  # fmt: skip
    features, audio = torch.randn(6, 2, 6), torch.randn(6, 4)
    features[[1, 4, 5]] += 3.0
    is_target = torch.tensor([False, True, False, False, True, True])
    recognizer.eval()  # no dropout: the same call twice gives the same values
    for module in recognizer.modules():
        if isinstance(module, torch.nn.BatchNorm1d):
            module.train()  # batch statistics, as in training
    joint = _each_domain_apart(recognizer, features, audio, is_target)
    source = recognizer(features[[0, 2, 3]], audio[[0, 2, 3]], SOURCE)
    target = recognizer(features[[1, 4, 5]], audio[[1, 4, 5]], TARGET)
    torch.testing.assert_close(joint.logits[[0, 2, 3]], source.logits)
    torch.testing.assert_close(joint.logits[[1, 4, 5]], target.logits)
    torch.testing.assert_close(joint.audio_logits[[1, 4, 5]], target.audio_logits)
    mixed = recognizer(features, audio, torch.where(is_target, TARGET, SOURCE).long())
    assert not torch.allclose(mixed.logits, joint.logits, atol=1e-3)
    # one target row in the batch: it is normalised with the running statistics
    one = torch.tensor([False, True, False, False, False, False])
    alone = _each_domain_apart(recognizer, features, audio, one)
    assert all(m.training for m in recognizer.modules() if isinstance(m, torch.nn.BatchNorm1d))
    recognizer.eval()
    expected = recognizer(features[[1]], audio[[1]], TARGET).logits
    torch.testing.assert_close(alone.logits[[1]], expected)


def test_multilabel_configuration():
    labels = [Task("labels", 5, multi_label=True)]
    inputs = {"rgb": (2, 4), "audio": (1, 4)}
    head = heads.create("audio-adaptive", inputs=inputs, tasks=labels)
    assert head.multi_label and head.config.absent_gamma == 0.05  # the paper's gamma
    assert head.config.absent_classes == 3  # the single-label rule's setting is not used
    with pytest.raises(ConfigError, match="absent_gamma"):
        heads.create("audio-adaptive", inputs=inputs, tasks=labels, overrides={"absent_gamma": 0})
    with pytest.raises(ConfigError, match="one task"):
        heads.create("audio-adaptive", inputs=inputs, tasks=[*labels, Task("verb", 3)])


def test_stages_run_alone_under_a_protocol_are_the_ones_its_training_reuses(ml_cache, tmp_path):
    """``run_stages(protocol=...)`` sizes and configures the stages as ``avda train
    --protocol`` does (Charades' 157 classes here): the training then reuses them; without the
    protocol they were made for 4 classes and the training refused them."""
    from avda.train.audio_adaptive.run import run_stages

    out = tmp_path / "run"
    run_stages(cache=ml_cache, source=["third"], target=["first"], out=out, overrides=TINY,
               until="absent-labels", progress=False,
               protocol="audio-adaptive-charadesego")  # fmt: skip
    made = (out / "stages" / "absent-labels.npz").stat().st_mtime_ns
    assert StageStore(out).load_arrays("absent-labels")["absent"].shape == (16, 157)
    _train(ml_cache, out, protocol="audio-adaptive-charadesego")
    assert (out / "stages" / "absent-labels.npz").stat().st_mtime_ns == made  # reused


def test_stage_4_ranks_the_videos_of_several_target_rows(tmp_path):
    """First-person training rows 4 to a video (as the 10 whole-video rows of CharadesEgo
    ``--unit windows``): stage 4 averages the audio probabilities of a video's rows, ranks
    the 8 videos as the authors' code does, and gives each row its video's absent classes."""
    from avda.train.audio_adaptive.run import run_stages

    cache = multilabel_av_cache(tmp_path / "c.zarr", per_video=4)
    out = tmp_path / "run"
    run_stages(cache=cache, source=["third"], target=["first"], out=out,
               overrides={**TINY, "tasks": ["labels"]}, until="absent-labels",
               progress=False)  # fmt: skip
    stored = StageStore(out).load_arrays("absent-labels")
    p, f, absent = stored["probabilities"], stored["frequencies"], stored["absent"]
    videos = np.array([f"first-train-{i // 4}" for i in range(32)])
    np.testing.assert_array_equal(stored["videos"], videos)
    order = list(dict.fromkeys(videos.tolist()))
    authors = authors_unlikely_per_video([p[videos == v] for v in order], f, 0.5)
    np.testing.assert_array_equal(absent, authors[[order.index(v) for v in videos]])
    assert absent.sum() > 0 and not np.array_equal(
        absent, multilabel_pseudo_absent_labels(p, f, 0.5)
    )
    record = StageStore(out).record("absent-labels")
    assert record["key"]["rank"] == "videos" and record["summary"]["target_videos"] == 8
