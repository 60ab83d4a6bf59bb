"""The Audio-Adaptive pipeline through the training loop: stages, stored outputs, resumption,
faithful (spatial) mode, and the comparison with source-only and DANN on synthetic data."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import zarr

import avda
from avda import cache as cache_lib
from avda import runs
from avda.cache import Status
from avda.cache.synthetic import add_features
from avda.errors import CacheError, ConfigError, RunError, TrainingDiverged
from avda.train import heads
from avda.train.audio_adaptive import pipeline
from avda.train.audio_adaptive.encoder import AudioAdaptiveEncoder
from avda.train.audio_adaptive.run import run_stages
from avda.train.clustering import cluster_store
from avda.train.data import Task
from avda.train.layers import DomainSpecificBatchNorm, set_norm_domain
from avda.train.loop import train
from avda.train.stages import StageStore

torch.set_num_threads(1)

# Small networks and short schedules: the tests check the plumbing, not the paper's numbers.
TINY = {
    "audio_hidden_dim": 16,
    "audio_epochs": 2,
    "cluster_max_k": 4,
    "cluster_n_init": 2,
    "encoder_epochs": 3,
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
}
STAGES = ["audio-classifier", "clusters", "weights", "absent-labels"]


def make_audio_visual_cache(
    path,
    *,
    seed: int = 0,
    num_classes: int = 6,
    source_counts: tuple[int, ...] = (40, 30, 20, 15, 10, 8),
    target_per_class: int = 20,
    clips: int = 5,
    group: int = 4,
    audio_dim: int = 16,
    true_level: float = 2.0,
    source_distractor: tuple[float, float] = (0.0, 2.5),
    target_distractor: tuple[float, float] = (2.0, 4.0),
    audio_noise: float = 1.5,
    visual: tuple[str, ...] = ("rgb",),
    spatial: bool = False,
    audio_mean: float = 0.0,
    target_offset: float = 0.0,
):
    """Synthetic audio-visual features with the domain shift Audio-Adaptive is made for.

    Visual clips are non-negative (like pooled ReLU features) with a group of ``group`` channels
    per class: the action's group is active, and so is the group of a *distractor* class (an
    object of another activity in view: "the sink while cutting"). Distractors are weaker in
    the source domain (``source_distractor`` levels) than in the target's cluttered kitchens
    (``target_distractor``), so visual evidence is ambiguous on the target. Audio has two kinds
    of sound per class (two interaction clusters) and is the same in both domains: informative,
    and domain-invariant. Source labels are imbalanced, target labels balanced.
    """
    rng = np.random.default_rng(seed)
    rows = []
    splits = (
        ("source", "train", source_counts),
        ("source", "test", (10,) * num_classes),
        ("target", "train", (target_per_class,) * num_classes),
        ("target", "test", (target_per_class,) * num_classes),
    )
    for domain, split, counts in splits:
        for c, count in enumerate(counts):
            for i in range(count):
                rows.append(
                    {
                        "uid": f"{domain}-{split}-{c}-{i}",
                        "video_id": f"{domain}-{c}",
                        "domain": domain,
                        "split": split,
                        "start_sec": 0.0,
                        "stop_sec": 1.0,
                        "verb_class": c,
                    }
                )
    segments = pd.DataFrame(rows)
    store = cache_lib.create(
        path, segments, manifest_sha256="0" * 64, recipe={"name": "synthetic-av"}, chunk_rows=64
    )
    labels = segments["verb_class"].to_numpy()
    is_target = (segments["domain"] == "target").to_numpy()
    n, D = len(segments), num_classes * group
    features = {}
    for modality in visual:
        distractor = (labels + rng.integers(1, num_classes, n)) % num_classes
        low = np.where(is_target, target_distractor[0], source_distractor[0])
        high = np.where(is_target, target_distractor[1], source_distractor[1])
        level = rng.uniform(low, high)
        base = np.zeros((n, D))
        for i in range(n):
            base[i, labels[i] * group : (labels[i] + 1) * group] += true_level
            base[i, distractor[i] * group : (distractor[i] + 1) * group] += level[i]
        features[modality] = np.maximum(0.0, base[:, None, :] + rng.normal(0, 0.5, (n, clips, D)))
        features[modality][is_target] += target_offset  # a camera's offset on every channel
    centres = rng.normal(0, 1, (num_classes, 2, audio_dim)) * 2.0
    kind = rng.integers(0, 2, n)
    features["audio"] = centres[labels, kind][:, None, :] + rng.normal(
        0, audio_noise, (n, 1, audio_dim)
    )
    if audio_mean:  # positive features of a large common mean, as pooled ReLU/softplus outputs
        features["audio"] = np.logaddexp(0.0, 0.2 * features["audio"]) + audio_mean
    info = {"backbone": "synthetic", "weights": None, "weights_sha256": None, "input_spec": {}}
    for modality, x in features.items():
        store.add_modality(modality, num_clips=x.shape[1], num_features=x.shape[2], info=info)
        store.write(modality, np.arange(n), x, np.full(n, int(Status.DONE)), [""] * n)
    if spatial:  # maps (N, K, C, 2, 2) whose average is the pooled feature
        group_ = zarr.open_group(str(path), mode="r+").require_group("spatial")
        for modality in visual:
            x = features[modality]
            maps = np.repeat(np.repeat(x[..., None, None], 2, -2), 2, -1)
            maps = maps * np.array([[1.5, 0.5], [0.5, 1.5]])  # positions differ, mean is x
            array = group_.create_array(modality, shape=maps.shape, dtype="float16")
            array[:] = maps.astype(np.float16)
    return store


def _train(cache, out, head="audio-adaptive", seed=0, **overrides):
    options = {**TINY, **overrides} if head == "audio-adaptive" else overrides
    return train(
        cache=cache,
        head=head,
        source=["source"],
        target=["target"],
        out=out,
        seed=seed,
        overrides=options,
        progress=False,
    )


@pytest.fixture(scope="module")
def av_cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("av") / "c.zarr"
    make_audio_visual_cache(
        path, source_counts=(12, 10, 8, 6), num_classes=4, target_per_class=8,
        visual=("rgb", "flow"),
    )  # fmt: skip
    return path


def test_pipeline_runs_every_stage_and_stores_its_outputs(av_cache, tmp_path):
    result = _train(av_cache, tmp_path / "run")
    assert runs.is_complete(tmp_path / "run")
    stages = StageStore(tmp_path / "run")
    names = sorted(p.stem for p in stages.folder.glob("*.json"))
    assert names == sorted(
        [*STAGES, "encoder-rgb", "encoder-flow", "pseudo-labels-rgb", "pseudo-labels-flow"]
        + ["audio-embeddings", "encoded-rgb", "encoded-flow"]
    )
    assert not list(stages.folder.glob("*.partial.pt"))
    store = cache_lib.open_cache(av_cache)
    segments = store.segments
    target_train = segments[(segments["domain"] == "target") & (segments["split"] == "train")]
    pseudo = stages.load_arrays("pseudo-labels-rgb")
    np.testing.assert_array_equal(pseudo["uids"], target_train["uid"].to_numpy())
    assert pseudo["labels"].shape == (len(target_train),)
    # the fused argmax refined by class centroids in the streams' stored clip features
    features = [stages.load_arrays(f"encoded-{v}")["target_train.values"] for v in ("rgb", "flow")]
    refined = pipeline.centroid_labels(
        [f.mean(axis=1) for f in features], pseudo["probabilities"], prior=0.2
    )
    np.testing.assert_array_equal(pseudo["labels"], refined)
    absent = stages.load_arrays("absent-labels")
    assert (absent["absent"].sum(1) == 3).all()
    # single-label: each row its own 3 least likely classes, though target rows share videos
    # (the multi-label rule ranks videos); the stage's key as it was
    assert not target_train["video_id"].is_unique and "videos" not in absent
    np.testing.assert_array_equal(
        absent["absent"], pipeline.pseudo_absent_labels(absent["probabilities"], 3)
    )
    assert set(stages.record("absent-labels")["key"]) == {"absent_classes", "upstream", "cache"}
    # the key names the store and how the audio it read was made, not the rgb and flow
    cache = stages.record("absent-labels")["key"]["cache"]
    assert cache["store"] == store.provenance["cache_id"] and list(cache["features"]) == ["audio"]
    assert set(stages.record("encoder-rgb")["key"]["cache"]["features"]) == {"audio", "rgb"}
    clusters = stages.load_arrays("clusters")
    assert (clusters["clusters"] >= 0).all()
    record = stages.record("pseudo-labels-rgb")
    assert record["key"]["upstream"]["encoder-rgb"] and record["summary"]["class_counts"]
    assert "computed in this run" in stages.record("clusters")["summary"]["origin"]
    assert "target_test/verb/top1" in result.metrics
    last = runs.read_metrics(tmp_path / "run")[-1]
    assert {"train/rgb/target_pseudo", "train/flow/audio_visual"} <= set(last)


@pytest.mark.parametrize("fusion", ["product", "mean"])
def test_output_fuses_the_streams(fusion):
    """Stage 7: the normalised product of the streams' probabilities (the default), or their
    mean (the reference's calc_acc.py); runs recorded before the option keep the mean."""
    config = heads.config_class("audio-adaptive")
    assert config.from_dict({}).stream_fusion == "product"
    assert config.from_stored({}).stream_fusion == "mean"
    tasks = [Task("verb", 4)]
    overrides = {k: v for k, v in TINY.items() if "epochs" not in k} | {"stream_fusion": fusion}
    head = heads.create(
        "audio-adaptive",
        inputs={"rgb": (3, 8), "flow": (3, 8), "audio": (1, 6)},
        tasks=tasks,
        overrides=overrides,
    ).eval()
    inputs = {
        "rgb": torch.rand(5, 3, 8),
        "flow": torch.rand(5, 3, 8),
        "audio": torch.randn(5, 1, 6),
    }
    output = head(inputs)
    streams = {
        k: v.detach().double().softmax(-1).numpy() for k, v in output.extras["streams"].items()
    }
    if fusion == "product":
        product = streams["rgb"] * streams["flow"]
        expected = product / product.sum(axis=1, keepdims=True)
    else:
        expected = (streams["rgb"] + streams["flow"]) / 2
    logits = output.logits["verb"].detach().double()
    np.testing.assert_allclose(logits.softmax(-1).numpy(), expected, rtol=1e-5, atol=1e-6)
    # the logits are log-probabilities already (normalised), as the mean's are
    np.testing.assert_allclose(logits.exp().numpy(), expected, rtol=1e-5, atol=1e-6)
    trainable = {n.split(".")[0] for n, p in head.named_parameters() if p.requires_grad}
    assert trainable == {"recognizers"}  # stages 1 and 5 are frozen in the final stage
    losses = head.training_step(inputs, {"verb": torch.tensor([0, 1, 2, 3, 0])}, inputs, 0.0)
    losses["loss"].backward()  # without stored pseudo labels: the stage-6a rule in the batch
    assert all(p.grad is not None for p in head.recognizers.parameters())


def test_output_adds_the_nearest_centroid_scores():
    """Stage 7 with ``centroid_weight`` (off by default): the fused log-probabilities plus the
    weight times the streams' summed cosines with the class centroids of the pseudo labels
    (computed here in numpy), renormalised; a class without a labelled segment scores 0."""
    config = heads.config_class("audio-adaptive")
    assert config.from_dict({}).centroid_weight == 0.0
    tiny = {k: v for k, v in TINY.items() if "epochs" not in k}
    layout = {"rgb": (3, 8), "flow": (3, 8), "audio": (1, 6)}
    head = heads.create(
        "audio-adaptive",
        inputs=layout,
        tasks=[Task("verb", 4)],
        overrides=tiny | {"centroid_weight": 10.0},
    ).eval()
    rng = np.random.default_rng(0)
    labels = np.array([0, 1, 2] * 6 + [0, 1])  # class 3: no pseudo-labelled segment
    fitted = {v: rng.normal(size=(20, 8)) + 3.0 for v in ("rgb", "flow")}
    for visual, centroids in head.centroids.items():
        centroids.fit(torch.from_numpy(fitted[visual]), torch.from_numpy(labels))
    inputs = {
        "rgb": torch.rand(5, 3, 8),
        "flow": torch.rand(5, 3, 8),
        "audio": torch.randn(5, 1, 6),
        **{pipeline.ENCODED_KEY.format(v): torch.randn(5, 3, 8) + 3.0 for v in ("rgb", "flow")},
    }
    output = head(inputs)
    streams = output.extras["streams"].values()
    fused = sum(v.detach().double().log_softmax(-1).numpy() for v in streams)
    cosines = 0.0
    for visual in ("rgb", "flow"):
        centred = fitted[visual] - fitted[visual].mean(axis=0)
        unit = centred / np.linalg.norm(centred, axis=1, keepdims=True)
        centroids = np.stack([unit[labels == c].sum(axis=0) for c in range(4)])
        norms = np.linalg.norm(centroids, axis=1, keepdims=True)
        centroids = np.divide(centroids, norms, out=np.zeros_like(centroids), where=norms > 0)
        x = inputs[pipeline.ENCODED_KEY.format(visual)].double().mean(dim=1).numpy()
        x = x - fitted[visual].mean(axis=0)
        cosines = cosines + (x / np.linalg.norm(x, axis=1, keepdims=True)) @ centroids.T
    assert np.all(cosines[:, 3] == 0) and np.abs(cosines[:, :3]).max() > 0.1
    scores = fused + 10.0 * cosines
    expected = np.exp(scores - scores.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    logits = output.logits["verb"].detach().double()
    np.testing.assert_allclose(logits.exp().numpy(), expected, rtol=1e-4, atol=1e-5)
    assert {"centroids.rgb.mean", "centroids.flow.centroids"} <= set(head.state_dict())
    assert (
        "centroids.rgb.mean"
        not in heads.create(
            "audio-adaptive", inputs=layout, tasks=[Task("verb", 4)], overrides=tiny
        ).state_dict()
    )  # off: the checkpoints of runs without it are unchanged
    with pytest.raises(ConfigError, match="centroid_weight"):
        heads.create(
            "audio-adaptive",
            inputs=layout,
            tasks=[Task("labels", 4, multi_label=True)],
            overrides=tiny | {"centroid_weight": 1.0},
        )


def test_run_fits_the_centroids_from_its_pseudo_labels(av_cache, tmp_path):
    """A run with ``centroid_weight`` fits stage 7's centroids from its stored stage-6a labels
    and the clip-averaged stage-5 features of the target training set, and saves them."""
    _train(av_cache, tmp_path / "run", centroid_weight=10.0)
    stages = StageStore(tmp_path / "run")
    labels = stages.load_arrays("pseudo-labels-rgb")["labels"]
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["model"]
    for visual in ("rgb", "flow"):
        features = stages.load_arrays(f"encoded-{visual}")["target_train.values"].mean(axis=1)
        centred = features - features.mean(axis=0)
        unit = centred / np.linalg.norm(centred, axis=1, keepdims=True)
        for label in np.unique(labels):
            centroid = unit[labels == label].sum(axis=0)
            np.testing.assert_allclose(
                state[f"centroids.{visual}.centroids"][label].numpy(),
                centroid / np.linalg.norm(centroid),
                rtol=1e-4,
                atol=1e-5,
            )
        np.testing.assert_allclose(
            state[f"centroids.{visual}.mean"].numpy(), features.mean(axis=0), rtol=1e-4, atol=1e-5
        )


@pytest.mark.parametrize("stage, epoch", [("audio-classifier", 1), ("encoder-rgb", 2)])
def test_interrupted_stage_resumes_where_it_stopped(
    av_cache, tmp_path, monkeypatch, caplog, stage, epoch
):
    from avda.train import stages as stages_module

    _train(av_cache, tmp_path / "full", visual_modalities=["rgb"])
    save = runs.save_checkpoint
    written = []

    def save_then_die(state, path):
        save(state, path)
        if Path(path).name.endswith(".partial.pt"):
            written.append((Path(path).name, state["epoch"]))
        if Path(path).name == f"{stage}.partial.pt" and state["epoch"] == epoch:
            raise KeyboardInterrupt

    monkeypatch.setattr(stages_module.runs, "save_checkpoint", save_then_die)
    _train(av_cache, tmp_path / "quick", visual_modalities=["rgb"])
    assert written == []  # epochs of milliseconds: no partial checkpoint within PARTIAL_SECONDS
    monkeypatch.setattr(stages_module, "PARTIAL_SECONDS", 0.0)  # one after every epoch but the last
    with pytest.raises(KeyboardInterrupt):
        _train(av_cache, tmp_path / "partial", visual_modalities=["rgb"])
    monkeypatch.setattr(stages_module.runs, "save_checkpoint", save)
    partial = StageStore(tmp_path / "partial")
    assert partial.record(stage) is None and partial.partial_path(stage).exists()
    with caplog.at_level(logging.INFO, logger="avda.train.stages"):
        _train(av_cache, tmp_path / "partial", visual_modalities=["rgb"])
    assert f"stage {stage}: resuming from epoch {epoch + 1}" in caplog.text
    epochs = TINY["audio_epochs"] if stage == "audio-classifier" else TINY["encoder_epochs"]
    assert [e for name, e in written if name == f"{stage}.partial.pt"] == list(range(1, epochs))
    full = StageStore(tmp_path / "full")
    for name in ("pseudo-labels-rgb", "absent-labels", "clusters"):
        for key, value in full.load_arrays(name).items():
            np.testing.assert_array_equal(value, partial.load_arrays(name)[key])
    a = runs.read_predictions(tmp_path / "full", "target_test")["scores"]["verb"]
    b = runs.read_predictions(tmp_path / "partial", "target_test")["scores"]["verb"]
    np.testing.assert_array_equal(a, b)


def test_checkpoints_before_the_last_epoch_leave_out_the_frozen_stages(
    av_cache, tmp_path, monkeypatch
):
    # The frozen audio classifier and encoders are in RUN/stages/*.pt: the loop's checkpoint
    # after epoch 1 holds the recognizers only, a run resumed from it reloads the rest from the
    # stage files and ends as the uninterrupted run, and the last checkpoint is the whole head.
    _train(av_cache, tmp_path / "full", visual_modalities=["rgb"], epochs=3)
    save = runs.save_checkpoint

    def save_then_die(state, path):
        save(state, path)
        if Path(path).name == Path(runs.CHECKPOINT).name and state["epoch"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(runs, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        _train(av_cache, tmp_path / "partial", visual_modalities=["rgb"], epochs=3)
    monkeypatch.setattr(runs, "save_checkpoint", save)
    partial = runs.load_checkpoint(tmp_path / "partial" / runs.CHECKPOINT)
    assert partial["omitted"] == ["audio_classifier", "encoders"]
    assert {k.split(".")[0] for k in partial["model"]} == {"recognizers"}
    _train(av_cache, tmp_path / "partial", visual_modalities=["rgb"], epochs=3)
    for name in ("full", "partial"):
        a = runs.read_predictions(tmp_path / "full", "target_test")["scores"]["verb"]
        b = runs.read_predictions(tmp_path / name, "target_test")["scores"]["verb"]
        np.testing.assert_array_equal(a, b)
    last = runs.load_checkpoint(tmp_path / "partial" / runs.CHECKPOINT)
    assert last["epoch"] == 3 and last["omitted"] == []
    assert set(last["model"]) == set(torch.load(tmp_path / "full" / runs.CHECKPOINT)["model"])
    stages = StageStore(tmp_path / "partial")
    for stage, prefix in (
        ("encoder-rgb", "encoders.rgb."),
        ("audio-classifier", "audio_classifier."),
    ):
        stored = runs.load_checkpoint(stages.folder / f"{stage}.pt")
        for key, value in stored.items():
            torch.testing.assert_close(last["model"][prefix + key], value)
    # a checkpoint that lacks more than it says it omits is refused, not half loaded
    broken = {**partial, "model": {k: v for k, v in partial["model"].items() if "head" not in k}}
    runs.save_checkpoint(broken, tmp_path / "partial" / runs.CHECKPOINT)
    (tmp_path / "partial" / runs.STATUS).unlink()
    with pytest.raises(RunError, match="does not fit"):
        _train(av_cache, tmp_path / "partial", visual_modalities=["rgb"], epochs=3)


def test_finished_stages_are_reused_not_retrained(av_cache, tmp_path, monkeypatch):
    _train(av_cache, tmp_path / "run", visual_modalities=["rgb"])
    first = runs.read_predictions(tmp_path / "run", "target_test")["scores"]["verb"]
    (tmp_path / "run" / runs.STATUS).unlink()  # redo the recognizer, keep the stages
    (tmp_path / "run" / runs.CHECKPOINT).unlink()

    def refuse(**kwargs):
        raise AssertionError(f"stage {kwargs['name']} was trained again")

    monkeypatch.setattr(pipeline, "fit_epochs", refuse)
    _train(av_cache, tmp_path / "run", visual_modalities=["rgb"])
    again = runs.read_predictions(tmp_path / "run", "target_test")["scores"]["verb"]
    np.testing.assert_array_equal(first, again)


def test_stages_run_alone_and_refuse_other_settings(av_cache, tmp_path):
    overrides = {**TINY, "visual_modalities": ["rgb"]}
    stages = run_stages(
        cache=av_cache, source=["source"], target=["target"], out=tmp_path / "run",
        overrides=overrides, until="absent-labels", progress=False, device="cpu",
    )  # fmt: skip
    assert sorted(p.stem for p in stages.stages.folder.glob("*.json")) == sorted(STAGES)
    with pytest.raises(RunError, match="stage 'absent-labels' .* other settings \\(absent_classes"):
        run_stages(
            cache=av_cache, source=["source"], target=["target"], out=tmp_path / "run",
            overrides={**overrides, "absent_classes": 2}, until="absent-labels", progress=False,
            device="cpu",
        )  # fmt: skip
    with pytest.raises(ConfigError, match="unknown audio-adaptive stage 'encoders'"):
        stages.run(until="encoders")
    # The full run in the same folder picks the finished stages up and adds the rest.
    _train(av_cache, tmp_path / "run", visual_modalities=["rgb"])
    assert StageStore(tmp_path / "run").record("pseudo-labels-rgb") is not None


def _stages_alone(cache, out, until="encoder", **overrides):
    return run_stages(
        cache=cache, source=["source"], target=["target"], out=out, until=until,
        overrides={**TINY, "visual_modalities": ["rgb"], **overrides}, progress=False,
        device="cpu",
    )  # fmt: skip


def _written(run) -> dict[str, int]:
    """The write time of every stage file of ``run``: unchanged when no stage is recomputed."""
    return {p.name: p.stat().st_mtime_ns for p in sorted((Path(run) / "stages").iterdir())}


def test_stages_of_another_cache_are_refused_not_reused(av_cache, tmp_path):
    # the same segments extracted again (other features), in another store
    other = tmp_path / "other.zarr"
    make_audio_visual_cache(
        other, seed=1, source_counts=(12, 10, 8, 6), num_classes=4, target_per_class=8,
        visual=("rgb", "flow"),
    )  # fmt: skip
    _stages_alone(av_cache, tmp_path / "run")
    written = _written(tmp_path / "run")
    refused = r"stage 'audio-classifier' .* computed from another cache's features \(store "
    with pytest.raises(RunError, match=refused):
        _stages_alone(other, tmp_path / "run")
    with pytest.raises(RunError, match=refused):  # the run trained into the stages' folder
        _train(other, tmp_path / "run", visual_modalities=["rgb"])
    assert _written(tmp_path / "run") == written  # the stages are kept as they were
    # the same store, its rgb extracted again with other weights: the encoder is refused, and
    # named for the features that changed (the audio stages before it are the same)
    copy = tmp_path / "copy.zarr"
    shutil.copytree(av_cache, copy)
    shutil.copytree(tmp_path / "run", tmp_path / "copied")
    cache_lib.open_cache(copy, mode="r+").update_modality_info("rgb", weights_sha256="f" * 64)
    with pytest.raises(RunError, match=r"'encoder-rgb' .* \(rgb features: weights_sha256 None "):
        _stages_alone(copy, tmp_path / "copied")


def test_a_modality_added_or_weights_moved_keep_the_stages(av_cache, tmp_path, monkeypatch):
    copy = tmp_path / "copy.zarr"
    shutil.copytree(av_cache, copy)
    store = cache_lib.open_cache(copy, mode="r+")
    for modality in ("audio", "flow"):
        store.update_modality_info(modality, weights="/old/w.pt", weights_sha256="e" * 64)
    _stages_alone(copy, tmp_path / "run", visual_modalities=["flow"])
    written = _written(tmp_path / "run")
    add_features(store, "rgb2", store.load("rgb"))  # a later extraction adds a modality
    for modality in ("audio", "flow"):  # the same weights file, fetched to another folder
        store.update_modality_info(modality, weights="/new/w.pt")

    def refuse(**kwargs):
        raise AssertionError(f"stage {kwargs['name']} was trained again")

    monkeypatch.setattr(pipeline, "fit_epochs", refuse)
    _stages_alone(copy, tmp_path / "run", visual_modalities=["flow"])
    assert _written(tmp_path / "run") == written


def test_an_interrupted_run_reuses_every_finished_stage_on_its_cache(
    av_cache, tmp_path, monkeypatch
):
    _stages_alone(av_cache, tmp_path / "run")  # a run stopped after stage 5
    written = _written(tmp_path / "run")
    assert {"audio-classifier.pt", "clusters.npz", "encoder-rgb.pt"} <= set(written)

    def refuse(**kwargs):
        raise AssertionError(f"stage {kwargs['name']} was trained again")

    monkeypatch.setattr(pipeline, "fit_epochs", refuse)
    _train(av_cache, tmp_path / "run", visual_modalities=["rgb"])
    now = _written(tmp_path / "run")
    assert {name: now[name] for name in written} == written  # not one recomputed
    assert runs.is_complete(tmp_path / "run")


def test_what_avda_extract_records_later_on_the_same_features_keeps_the_stages(
    av_cache, tmp_path, monkeypatch
):
    # a store of an older avda: no precision, no video_timestamps; stages trained on it
    copy = tmp_path / "copy.zarr"
    shutil.copytree(av_cache, copy)
    _stages_alone(copy, tmp_path / "run")
    written = _written(tmp_path / "run")
    # `avda extract` run on the store again (a modality added, failures retried) records, for
    # the features it keeps, the precision and the checked video timestamps
    store = cache_lib.open_cache(copy, mode="r+")
    store.update_modality_info("audio", precision="fp32")
    store.update_modality_info("rgb", precision="fp32", video_timestamps="checked-2026-12-07")

    def refuse(**kwargs):
        raise AssertionError(f"stage {kwargs['name']} was trained again")

    with monkeypatch.context() as patch:
        patch.setattr(pipeline, "fit_epochs", refuse)
        _stages_alone(copy, tmp_path / "run", until="pseudo-labels")
    now = _written(tmp_path / "run")
    assert {name: now[name] for name in written} == written  # not one recomputed
    # stages that recorded a precision are refused for features recorded in another
    _stages_alone(copy, tmp_path / "run2", until="encoder")
    store.update_modality_info("rgb", precision="bf16")
    with pytest.raises(RunError, match=r"'encoder-rgb' .* \(rgb features: precision 'fp32' "):
        _stages_alone(copy, tmp_path / "run2", until="encoder")


def test_a_partial_stage_resumes_after_avda_extract_records_more_of_its_features(
    av_cache, tmp_path, monkeypatch, caplog
):
    from avda.train import stages as stages_module

    copy = tmp_path / "copy.zarr"
    shutil.copytree(av_cache, copy)
    save = runs.save_checkpoint

    def save_then_die(state, path):
        save(state, path)
        if Path(path).name == "encoder-rgb.partial.pt":
            raise KeyboardInterrupt

    monkeypatch.setattr(stages_module, "PARTIAL_SECONDS", 0.0)
    monkeypatch.setattr(stages_module.runs, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        _stages_alone(copy, tmp_path / "run")
    monkeypatch.setattr(stages_module.runs, "save_checkpoint", save)
    store = cache_lib.open_cache(copy, mode="r+")
    store.update_modality_info("rgb", precision="fp32", video_timestamps="checked-2026-12-07")
    with caplog.at_level(logging.INFO, logger="avda.train.stages"):
        _stages_alone(copy, tmp_path / "run", until="pseudo-labels")
    assert "stage encoder-rgb: resuming from epoch 2" in caplog.text
    assert "discarding" not in caplog.text


def test_a_partial_stage_recorded_without_its_cache_is_discarded(av_cache, tmp_path, caplog):
    _stages_alone(av_cache, tmp_path / "run", until="clusters")
    stages = StageStore(tmp_path / "run")
    record = stages.record("audio-classifier")
    key = {k: v for k, v in record["key"].items() if k != "cache"}  # as an older avda wrote it
    partial = {"key": key, "module": {}, "epoch": 1}
    for path in stages.folder.iterdir():
        path.unlink()
    runs.save_checkpoint(partial, stages.partial_path("audio-classifier"))
    with caplog.at_level(logging.WARNING, logger="avda.train.stages"):
        _stages_alone(av_cache, tmp_path / "run", until="audio-classifier")
    assert "stage audio-classifier: discarding a partial checkpoint of an avda that did not " in (
        caplog.text
    )
    assert not stages.partial_path("audio-classifier").exists()
    assert stages.record("audio-classifier")["key"] == record["key"]  # recomputed, named


def test_stages_recorded_without_their_cache_are_recomputed_once(av_cache, tmp_path, caplog):
    _train(av_cache, tmp_path / "run", visual_modalities=["rgb"])
    stages = StageStore(tmp_path / "run")
    names = ("clusters", "absent-labels", "pseudo-labels-rgb")
    finished = {name: stages.load_arrays(name) for name in names}
    for path in stages.folder.glob("*.json"):  # as an avda before 2026-12-07 wrote them
        record = json.loads(path.read_text())
        record["key"].pop("cache", None)
        path.write_text(json.dumps(record))
    # avda predict reloads the finished run's stages as they are (it writes nothing)
    before = _written(tmp_path / "run")
    predicted = avda.predict(tmp_path / "run", splits="test", progress=False)
    assert _written(tmp_path / "run") == before
    top1 = runs.read_metrics(tmp_path / "run")[-1]["target_test/verb/top1"]
    assert predicted.metrics["target_test/verb/top1"] == top1
    # a new training run in the folder recomputes each of them, saying why, once
    (tmp_path / "run" / runs.STATUS).unlink()
    (tmp_path / "run" / runs.CHECKPOINT).unlink()
    with caplog.at_level(logging.WARNING, logger="avda.train.stages"):
        _train(av_cache, tmp_path / "run", visual_modalities=["rgb"])
    recomputed = [r.getMessage() for r in caplog.records if "did not record the cache" in r.message]
    assert len(recomputed) == len([*STAGES, "encoder-rgb", "pseudo-labels-rgb"])
    assert all("cache" in record["key"] for record in map(stages.record, STAGES))
    for name, arrays in finished.items():  # the same cache: the same results
        for key, value in arrays.items():
            np.testing.assert_array_equal(value, stages.load_arrays(name)[key])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="avda.train.stages"):
        _train(av_cache, tmp_path / "run2", visual_modalities=["rgb"])
    assert "did not record the cache" not in caplog.text


def test_the_absent_activity_term_lowers_the_targets_absent_class_probabilities(av_cache, tmp_path):
    """Stage 5's absent-activity term (eq. 4) pushes the encoder's target probabilities of
    each segment's pseudo-absent classes down: lower with the term than without it (the same
    seed, every other input alike), higher with it inverted. A weight lost on its way from the
    config to the loss (the loss itself is checked against a hand computation) fails here; the
    head's accuracy tests switch it off only together with the pseudo-label term."""

    def absent_mass(weight: float) -> float:
        stages = run_stages(
            cache=av_cache, source=["source"], target=["target"], out=tmp_path / f"w{weight}",
            overrides={**TINY, "visual_modalities": ["rgb"], "absent_weight": weight},
            until="encoder", progress=False, device="cpu",
        )  # fmt: skip
        probabilities = stages.encoder_probabilities("rgb", stages.context.target_set)
        return float((probabilities * stages.absent_labels()).sum(axis=1).mean())

    on, off, inverted = absent_mass(1.0), absent_mass(0.0), absent_mass(-1.0)
    assert on < off - 1e-3 and inverted > off + 1e-3, (on, off, inverted)


def _shot_labels(features, probabilities, prior):
    """The centroid labels as SHOT's ``obtain_label`` (tim-learn/SHOT, object/image_target.py)
    computes them, with scipy's cosine distance: centroids of the unit features, a soft round,
    then one with hard labels on the classes that have any; here summed over the streams'
    centred features (SHOT appends a 1), minus ``prior`` times the log-probabilities."""
    from scipy.spatial.distance import cdist

    features = [f - f.mean(axis=0) for f in features]
    features = [f / np.linalg.norm(f, axis=1, keepdims=True) for f in features]  # all_fea
    affinity = probabilities
    for _ in range(2):
        labelset = np.flatnonzero(affinity.sum(axis=0) > 0)
        distance = sum(
            cdist(f, (affinity.T @ f / (1e-8 + affinity.sum(axis=0)[:, None]))[labelset], "cosine")
            for f in features
        )
        log_prior = np.log(np.clip(probabilities[:, labelset], 1e-30, None))
        labels = labelset[(distance - prior * log_prior).argmin(axis=1)]
        affinity = np.eye(probabilities.shape[1])[labels]
    return labels


def test_centroid_labels_move_segments_to_their_cluster():
    """Two clusters in feature space; the classifier's probabilities put three points of the
    first cluster in the second class (with low confidence). The centroids bring them back; a
    large prior keeps the classifier's argmax; a class no point is likely for stays empty."""
    rng = np.random.default_rng(0)
    centres = np.array([[4.0, 0.0, 1.0], [0.0, 4.0, 1.0]])
    labels = np.repeat([0, 1], 20)
    features = centres[labels] + rng.normal(0, 0.3, (40, 3))
    probabilities = np.zeros((40, 3))
    probabilities[np.arange(40), labels] = 0.9
    probabilities[np.arange(40), 1 - labels] = 0.1
    probabilities[:3] = [0.45, 0.55, 0.0]  # wrong, and unsure
    assert (probabilities.argmax(axis=1) != labels).sum() == 3
    refined = pipeline.centroid_labels([features], probabilities, prior=0.05)
    np.testing.assert_array_equal(refined, labels)
    np.testing.assert_array_equal(refined, _shot_labels([features], probabilities, 0.05))
    kept = pipeline.centroid_labels([features], probabilities, prior=100.0)
    np.testing.assert_array_equal(kept, probabilities.argmax(axis=1))
    # two streams: the second one's clusters are the same classes in another space
    other = np.array([[0.0, 3.0], [3.0, 0.0]])[labels] + rng.normal(0, 0.3, (40, 2))
    both = pipeline.centroid_labels([features, other], probabilities, prior=0.05)
    np.testing.assert_array_equal(both, labels)
    np.testing.assert_array_equal(both, _shot_labels([features, other], probabilities, 0.05))


def test_pseudo_labels_fuse_the_streams_and_the_audio_classifier(av_cache, tmp_path):
    """pseudo_labels="product" (the default): every stream's label is the argmax of the
    product of every stream's encoder probabilities and the audio classifier's, recomputed here
    from the stored stages, then refined by class centroids in the streams' stage-5 features
    (pseudo_label_refine="centroids", the default; recomputed as SHOT's code does);
    "consensus" the streams' mean times the audio's; "stream" (the reference; runs recorded
    before) each stream's own argmax. All on the same stage-5 encoders (reused: their keys do
    not change) and label differently on this set."""
    config = heads.config_class("audio-adaptive")
    assert config.from_dict({}).pseudo_labels == "product"
    assert config.from_dict({}).pseudo_label_refine == "centroids"
    assert config.from_stored({}).pseudo_labels == "stream"
    assert config.from_stored({}).pseudo_label_refine == "none"
    stages = run_stages(
        cache=av_cache, source=["source"], target=["target"], out=tmp_path / "run",
        overrides=TINY, progress=False, device="cpu",
    )  # fmt: skip
    target = stages.context.target_set
    features = [stages.encoder_features(v, target) for v in ("rgb", "flow")]
    rgb, flow = (stages.encoder_probabilities(v, target) for v in ("rgb", "flow"))
    audio = stages._audio_probabilities(stages.audio_classifier(), target)
    fused = rgb * flow * audio
    fused /= fused.sum(axis=1, keepdims=True)
    refined = _shot_labels(features, fused, prior=0.2)
    assert not np.array_equal(refined, fused.argmax(axis=1))
    for visual in ("rgb", "flow"):
        stored = stages.stages.load_arrays(f"pseudo-labels-{visual}")
        record = stages.stages.record(f"pseudo-labels-{visual}")
        assert record["key"]["rule"] == "product"
        assert record["key"]["refine"] == {"method": "centroids", "prior": 0.2}
        np.testing.assert_allclose(stored["probabilities"], fused, rtol=1e-4, atol=1e-6)
        np.testing.assert_array_equal(stored["labels"], refined)

    def rerun(rule: str, **options):
        for path in (tmp_path / "run" / "stages").glob("pseudo-labels-*"):
            path.unlink()
        return run_stages(
            cache=av_cache, source=["source"], target=["target"], out=tmp_path / "run",
            overrides={**TINY, "pseudo_labels": rule, **options}, progress=False, device="cpu",
        )  # fmt: skip

    consensus = (rgb + flow) / 2 * audio
    consensus /= consensus.sum(axis=1, keepdims=True)
    own = (rgb.argmax(axis=1), flow.argmax(axis=1))
    assert not np.array_equal(fused.argmax(axis=1), consensus.argmax(axis=1))
    assert not np.array_equal(own[0], consensus.argmax(axis=1)) or not np.array_equal(
        own[1], consensus.argmax(axis=1)
    )
    plain = rerun("product", pseudo_label_refine="none")
    for visual in ("rgb", "flow"):
        stored = plain.stages.load_arrays(f"pseudo-labels-{visual}")
        assert "refine" not in plain.stages.record(f"pseudo-labels-{visual}")["key"]
        np.testing.assert_allclose(stored["probabilities"], fused, rtol=1e-4, atol=1e-6)
        np.testing.assert_array_equal(stored["labels"], fused.argmax(axis=1))
    mean = rerun("consensus", pseudo_label_refine="none")
    for visual in ("rgb", "flow"):
        stored = mean.stages.load_arrays(f"pseudo-labels-{visual}")
        np.testing.assert_allclose(stored["probabilities"], consensus, rtol=1e-5, atol=1e-7)
        np.testing.assert_array_equal(stored["labels"], consensus.argmax(axis=1))
    reference = rerun("stream", pseudo_label_refine="none")
    for visual, labels in zip(("rgb", "flow"), own, strict=True):
        stored = reference.stages.load_arrays(f"pseudo-labels-{visual}")["labels"]
        np.testing.assert_array_equal(stored, labels)


def _copy_cache(store, path, transform):
    """A new cache at ``path`` with ``store``'s segments and ``transform(features)`` of each of
    its modalities."""
    copy = cache_lib.create(
        path, store.segments, manifest_sha256="0" * 64, recipe={"name": "copy"}, chunk_rows=64
    )
    for modality in store.modalities:
        add_features(copy, modality, transform(store.load(modality)))
    return copy


def test_the_cached_clips_are_grouped_into_the_references_five(tmp_path):
    """clips=5 (the default): on a cache of 10 clips per segment, stage 5 and the recognizers
    train exactly as on a cache holding the means of consecutive pairs (computed here with
    numpy; the features are multiples of 1/64, so the float16 cache stores the means exactly).
    A cache of 5 clips or fewer is read as before (no "clips" in the stage keys), and
    clips=0 keeps the 10 clips."""
    assert heads.config_class("audio-adaptive").from_dict({}).clips == 5
    assert heads.config_class("audio-adaptive").from_stored({}).clips == 0
    made = make_audio_visual_cache(
        tmp_path / "made.zarr", source_counts=(12, 10, 8, 6), num_classes=4,
        target_per_class=8, clips=10, visual=("rgb", "flow"),
    )  # fmt: skip
    ten = _copy_cache(made, tmp_path / "ten.zarr", lambda x: np.round(np.clip(x, 0, 7) * 64) / 64)

    def pairs(x):  # consecutive pairs of the 10 visual clips; the one audio window as it is
        return x.reshape(len(x), 5, 2, x.shape[2]).mean(axis=2) if x.shape[1] == 10 else x

    five = _copy_cache(ten, tmp_path / "five.zarr", pairs)
    assert five.load("rgb").shape[1] == 5 and five.load("audio").shape[1] == 1
    grouped = _train(ten.path, tmp_path / "grouped")
    by_hand = _train(five.path, tmp_path / "by-hand")
    assert grouped.metrics == by_hand.metrics
    stages = {name: StageStore(tmp_path / name) for name in ("grouped", "by-hand")}
    for visual in ("rgb", "flow"):
        arrays = [s.load_arrays(f"encoded-{visual}") for s in stages.values()]
        assert arrays[0]["target_train.values"].shape[1] == 5
        for name in ("source_train", "target_train", "target_test"):
            values = [a[f"{name}.values"] for a in arrays]
            np.testing.assert_array_equal(values[0], values[1])
        labels = [s.load_arrays(f"pseudo-labels-{visual}")["labels"] for s in stages.values()]
        np.testing.assert_array_equal(labels[0], labels[1])
        assert stages["grouped"].record(f"encoder-{visual}")["key"]["clips"] == 5
        assert "clips" not in stages["by-hand"].record(f"encoder-{visual}")["key"]
    as_cached = run_stages(
        cache=ten.path, source=["source"], target=["target"], out=tmp_path / "as-cached",
        overrides={**TINY, "clips": 0}, progress=False, device="cpu",
    )  # fmt: skip
    as_cached.attach_frozen_outputs(
        [as_cached.context.target_set], training=[as_cached.context.target_set.name]
    )
    assert as_cached.context.target_set.inputs[pipeline.ENCODED_KEY.format("rgb")].shape[1] == 10


def test_stage_5_normalises_each_domain_with_its_own_statistics(tmp_path, monkeypatch):
    """domain_norm=true: the stage-5 encoder standardises the source batch and the target
    batch apart, as layer4's BatchNorms do when the reference runs SlowFast on each in turn;
    it keeps each domain's running statistics, and the pseudo labels and the stored clip
    features of the target use the target's."""
    cache = tmp_path / "c.zarr"
    make_audio_visual_cache(
        cache, source_counts=(12, 10, 8, 6), num_classes=4, target_per_class=8, target_offset=5.0
    )
    seen = []
    forward = DomainSpecificBatchNorm.forward

    def record(self, x):
        if self.training:
            seen.append((self.domain, float(x.detach().mean())))
        return forward(self, x)

    monkeypatch.setattr(DomainSpecificBatchNorm, "forward", record)
    overrides = {
        **TINY,
        "visual_modalities": ["rgb"],
        "domain_norm": True,
        "pseudo_labels": "stream",
    }
    stages = run_stages(
        cache=cache, source=["source"], target=["target"], out=tmp_path / "run",
        overrides=overrides, progress=False, device="cpu",
    )  # fmt: skip
    means = {d: [m for domain, m in seen if domain == d] for d in ("source", "target")}
    assert len(means["source"]) == len(means["target"]) > 0
    # every target batch (offset by 5 before the gate) went through the target's statistics
    assert max(means["source"]) + 1.0 < min(means["target"]), means
    encoder = stages.head.encoders["rgb"].eval()
    norms = encoder.norm[0].norms
    assert float((norms["target"].running_mean - norms["source"].running_mean).mean()) > 1.0
    target_set = stages.context.target_set
    inputs = (target_set.features("rgb"), target_set.features("audio"))
    predicted = {}
    for domain in ("source", "target"):
        set_norm_domain(encoder, domain)
        predicted[domain] = encoder.predict(*inputs).numpy()
    stored = stages.stages.load_arrays("pseudo-labels-rgb")["probabilities"]
    np.testing.assert_allclose(stored, predicted["target"], rtol=1e-5, atol=1e-6)
    assert not np.allclose(stored, predicted["source"], atol=1e-3)
    # off: no normalisation at all
    off = run_stages(
        cache=cache, source=["source"], target=["target"], out=tmp_path / "off",
        overrides={**TINY, "visual_modalities": ["rgb"], "domain_norm": False}, until="encoder",
        progress=False, device="cpu",
    )  # fmt: skip
    assert isinstance(off.head.encoders["rgb"].norm, torch.nn.Identity)
    # the stage keys: a stage recorded with the ReLU (key {"domain_norm": True}, as before the
    # option) is not reused by a run without it, and one recorded without the norm by neither
    key = stages.stages.record("encoder-rgb")["key"]
    assert (key["domain_norm"], key["relu"]) == (True, False)
    assert "domain_norm" not in off.stages.record("encoder-rgb")["key"]
    config = heads.config_class("audio-adaptive")
    assert config.from_dict({}).domain_norm and not config.from_stored({}).domain_norm


def test_domain_norm_keeps_the_values_below_the_mean_unless_asked_to_rectify():
    """domain_norm standardises without a ReLU (values below a domain's channel mean stay
    negative); domain_norm_relu=true rectifies them, and runs recorded before the option did."""

    def normalised(relu: bool) -> torch.Tensor:
        torch.manual_seed(0)
        encoder = AudioAdaptiveEncoder(
            6, 4, 3, attention_dim=8, depth=1, heads=2, head_dim=4, mlp_dim=8, bottleneck=4,
            domain_norm=True, domain_norm_relu=relu,
        ).train()  # fmt: skip
        set_norm_domain(encoder, "source")
        with torch.no_grad():
            return encoder.norm(torch.randn(32, 5, 6) * 3 + 10)

    plain, rectified = normalised(False), normalised(True)
    assert float(plain.min()) < -1.0  # standardised per channel: about half below zero
    assert abs(float(plain.mean())) < 1e-4
    torch.testing.assert_close(rectified, plain.clamp_min(0))
    config = heads.config_class("audio-adaptive")
    assert not config.from_dict({}).domain_norm_relu
    assert config.from_stored({"domain_norm": True}).domain_norm_relu  # recorded before


def test_clusters_made_by_avda_cluster_are_used(av_cache, tmp_path):
    import shutil

    cache = tmp_path / "c.zarr"
    shutil.copytree(av_cache, cache)
    cluster_store(cache, source=["source"], max_clusters=4, n_init=2, progress=False)
    stages = run_stages(
        cache=cache, source=["source"], target=["target"], out=tmp_path / "run",
        overrides={**TINY, "visual_modalities": ["rgb"]}, until="clusters", progress=False,
        device="cpu",
    )  # fmt: skip
    summary = stages.stages.record("clusters")["summary"]
    assert summary["origin"].startswith("cache ")
    ids, _ = cache_lib.open_cache(cache).read_clusters("audio")
    np.testing.assert_array_equal(
        stages.stages.load_arrays("clusters")["clusters"], ids[stages.context.train_set.rows]
    )


def test_faithful_mode_uses_spatial_maps(tmp_path):
    make_audio_visual_cache(
        tmp_path / "c.zarr", source_counts=(6, 6, 6), num_classes=3, target_per_class=4,
        spatial=True,
    )  # fmt: skip
    stages = run_stages(
        cache=tmp_path / "c.zarr", source=["source"], target=["target"], out=tmp_path / "run",
        overrides={**TINY, "encoder_input": "spatial", "absent_classes": 1}, progress=False,
        device="cpu",
    )  # fmt: skip
    head = stages.head
    assert head.encoders["rgb"].spatial and head.visual_key("rgb") == "spatial/rgb"
    assert stages.context.train_set.inputs["spatial/rgb"].shape[2:] == (12, 2, 2)
    assert stages.stages.record("pseudo-labels-rgb") is not None
    make_audio_visual_cache(tmp_path / "p.zarr", source_counts=(6, 6, 6), num_classes=3)
    with pytest.raises(CacheError, match="no spatial maps for 'rgb'.*avda extract"):
        run_stages(
            cache=tmp_path / "p.zarr", source=["source"], target=["target"],
            out=tmp_path / "run2", overrides={**TINY, "encoder_input": "spatial",
            "absent_classes": 1}, progress=False, device="cpu",
        )  # fmt: skip


def test_configuration_errors():
    tasks = [Task("verb", 4)]
    with pytest.raises(ConfigError, match="needs the 'audio' modality"):
        heads.create("audio-adaptive", inputs={"rgb": (2, 4)}, tasks=tasks)
    with pytest.raises(ConfigError, match="one single-label task"):
        heads.create(
            "audio-adaptive",
            inputs={"rgb": (2, 4), "audio": (1, 4)},
            tasks=[Task("verb", 4), Task("noun", 5)],
        )
    with pytest.raises(ConfigError, match="absent_classes=4 must be below"):
        heads.create(
            "audio-adaptive",
            inputs={"rgb": (2, 4), "audio": (1, 4)},
            tasks=[Task("v", 3)],
            config=heads.config_class("audio-adaptive").from_dict({"absent_classes": 4}),
        )
    # The default (the paper's 3 of 8 classes) becomes C - 1 when there are fewer classes.
    head = heads.create(
        "audio-adaptive", inputs={"rgb": (2, 4), "audio": (1, 4)}, tasks=[Task("v", 3)]
    )
    assert head.config.absent_classes == 2
    with pytest.raises(ConfigError, match="preset"):
        heads.config_class("audio-adaptive").from_dict({"preset": "epic55-source-D4"})
    with pytest.raises(ConfigError, match="flow_epochs=30 .* between 1 and epochs=29"):
        heads.create(
            "audio-adaptive",
            inputs={"rgb": (2, 4), "flow": (2, 4), "audio": (1, 4)},
            tasks=tasks,
            overrides={"flow_epochs": 30},
        )
    for prior in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="pseudo_label_prior.* finite number"):
            heads.create(
                "audio-adaptive", inputs={"rgb": (2, 4), "audio": (1, 4)}, tasks=tasks,
                overrides={"pseudo_label_prior": prior},
            )  # fmt: skip
    # Without a flow stream the flow settings are not used.
    heads.create(
        "audio-adaptive", inputs={"rgb": (2, 4), "audio": (1, 4)}, tasks=tasks,
        overrides={"flow_epochs": 30},
    )  # fmt: skip


# The reference's EPIC-rgb-audio/ and EPIC-flow-audio/ (config.py, train_audio_adaptive_encoder.py,
# train_recognizer.py): encoder lr by source for RGB, 1e-4 for flow; 15 / 17 encoder epochs;
# 29 / 24 recognizer epochs at a constant 7e-4 (StepLR(3, 0.1) is built, never stepped).
@pytest.mark.parametrize(
    "preset, rgb_encoder_lr",
    [(None, 1e-4), ("epic55-source-D1", 2e-4), ("epic55-source-D2", 9e-5),
     ("epic55-source-D3", 1e-4)],
)  # fmt: skip
def test_defaults_and_presets_are_the_reference_scripts(preset, rgb_encoder_lr):
    config = heads.config_class("audio-adaptive").from_dict({"preset": preset})
    assert (config.lr, config.lr_steps, config.epochs, config.batch_size) == (7e-4, (), 29, 8)
    assert (config.encoder_lr, config.encoder_epochs, config.encoder_grad_clip) == (
        rgb_encoder_lr, 15, 0.0,
    )  # fmt: skip
    assert (config.flow_encoder_lr, config.flow_encoder_epochs) == (1e-4, 17)
    assert (config.flow_encoder_grad_clip, config.flow_epochs) == (1.0, 24)
    head = heads.create(
        "audio-adaptive",
        inputs={"rgb": (2, 4), "flow": (2, 4), "audio": (1, 4)},
        tasks=[Task("verb", 8)],
        config=config,
    )
    rgb, flow = head.stream_settings("rgb"), head.stream_settings("flow")
    assert (rgb.encoder_lr, rgb.encoder_epochs, rgb.encoder_grad_clip, rgb.epochs) == (
        rgb_encoder_lr, 15, 0.0, 29,
    )  # fmt: skip
    assert (flow.encoder_lr, flow.encoder_epochs, flow.encoder_grad_clip, flow.epochs) == (
        1e-4, 17, 1.0, 24,
    )  # fmt: skip
    assert (rgb.class_tokens, flow.class_tokens) == ("mean", "per-clip")
    assert head.recognizers["rgb"].class_tokens == "mean"
    assert head.recognizers["flow"].class_tokens == "per-clip"


def test_flow_schedule_scales_with_epochs_and_names_its_stream():
    config_class = heads.config_class("audio-adaptive")
    half = config_class.from_dict({"epochs": 12})
    assert (half.encoder_epochs, half.flow_encoder_epochs, half.flow_epochs) == (6, 7, 10)
    assert half.lr_steps == ()
    explicit = config_class.from_dict({"epochs": 12, "flow_epochs": 3, "flow_encoder_epochs": 2})
    assert (explicit.flow_encoder_epochs, explicit.flow_epochs) == (2, 3)
    head = heads.create(
        "audio-adaptive",
        inputs={"rgb": (2, 4), "optical_flow": (2, 4), "audio": (1, 4)},
        tasks=[Task("verb", 4)],
        overrides={"flow_modality": "optical_flow", "encoder_lr": 3e-4},
    )
    assert head.stream_settings("optical_flow").encoder_lr == 1e-4
    assert head.stream_settings("rgb").encoder_lr == 3e-4


@pytest.mark.parametrize("epochs, steps_per_epoch", [(29, 1), (29, 7), (24, 193), (3, 100_003)])
def test_epoch_of_inverts_the_loops_progress(epochs, steps_per_epoch):
    head = heads.create(
        "audio-adaptive", inputs={"rgb": (2, 4), "audio": (1, 4)}, tasks=[Task("verb", 4)],
        overrides={"epochs": epochs},
    )  # fmt: skip
    total = epochs * steps_per_epoch
    for epoch in range(1, epochs + 1):
        for step in {0, 1, steps_per_epoch // 2, steps_per_epoch - 1}:
            if step < steps_per_epoch:  # the loop's progress_fraction
                progress = ((epoch - 1) * steps_per_epoch + step) / total
                assert head.epoch_of(progress) == epoch


def test_a_stream_past_its_epochs_is_left_unchanged():
    tasks = [Task("verb", 4)]
    overrides = {k: v for k, v in TINY.items() if "epochs" not in k}
    head = heads.create(
        "audio-adaptive",
        inputs={"rgb": (3, 8), "flow": (3, 8), "audio": (1, 6)},
        tasks=tasks,
        overrides={**overrides, "epochs": 4, "flow_epochs": 2},
    ).train()
    inputs = {
        "rgb": torch.rand(5, 3, 8),
        "flow": torch.rand(5, 3, 8),
        "audio": torch.randn(5, 1, 6),
    }
    labels = {"verb": torch.tensor([0, 1, 2, 3, 0])}
    for progress, trained in ((0.0, {"rgb", "flow"}), (0.49, {"rgb", "flow"}), (0.5, {"rgb"})):
        head.zero_grad(set_to_none=True)
        flow_bn = [b.clone() for b in head.recognizers["flow"].buffers()]
        losses = head.training_step(inputs, labels, inputs, progress)
        losses["loss"].backward()
        assert {k.split("/")[0] for k in losses if "/" in k} == trained
        flow_grads = [p.grad for p in head.recognizers["flow"].parameters()]
        assert all(g is not None for g in flow_grads) == ("flow" in trained)
        assert all(g is None for g in flow_grads) == ("flow" not in trained)
        assert all(p.grad is not None for p in head.recognizers["rgb"].parameters())
        if "flow" not in trained:  # no forward either: BatchNorm statistics stay
            for before, after in zip(flow_bn, head.recognizers["flow"].buffers(), strict=True):
                torch.testing.assert_close(before, after)
    # Only finished streams (a flow-only head after flow_epochs): an epoch that changes nothing.
    flow_only = heads.create(
        "audio-adaptive",
        inputs={"flow": (3, 8), "audio": (1, 6)},
        tasks=tasks,
        overrides={**overrides, "epochs": 4, "flow_epochs": 2},
    )
    losses = flow_only.training_step(inputs, labels, inputs, 0.75)
    losses["loss"].backward()
    assert float(losses["loss"].detach()) == 0.0 and set(losses) == {"loss"}
    assert all(p.grad is None for p in flow_only.parameters())


def test_recognizer_lr_is_constant_and_flow_keeps_its_own_schedule(av_cache, tmp_path, monkeypatch):
    clip_calls: list[int] = []
    clip = torch.nn.utils.clip_grad_norm_

    def counting_clip(parameters, max_norm, *args, **kwargs):
        clip_calls.append(max_norm)
        return clip(parameters, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", counting_clip)
    # The head's default lr and lr_steps; only the lengths are short.
    _train(
        av_cache, tmp_path / "run", epochs=5, flow_epochs=3, encoder_epochs=2,
        flow_encoder_epochs=4, flow_encoder_lr=3e-4,
    )  # fmt: skip
    metrics = runs.read_metrics(tmp_path / "run")
    assert [m["lr"] for m in metrics] == [7e-4] * 5  # never decayed (the reference: 7e-4 x 29)
    state = torch.load(tmp_path / "run" / runs.CHECKPOINT, weights_only=False)
    assert [g["lr"] for g in state["optimizer"]["param_groups"]] == [7e-4]
    # Stage 6b: the flow recognizer trains its 3 epochs, the RGB one all 5.
    assert ["train/flow/loss" in m for m in metrics] == [True] * 3 + [False] * 2
    assert all("train/rgb/loss" in m for m in metrics)
    # Stage 5: the flow encoder with its own lr, length and clipping; the RGB one with TINY's.
    stages = StageStore(tmp_path / "run")
    flow, rgb = stages.record("encoder-flow"), stages.record("encoder-rgb")
    assert (flow["key"]["encoder_lr"], flow["key"]["encoder_epochs"]) == (3e-4, 4)
    assert flow["key"]["encoder_grad_clip"] == 1.0 and flow["summary"]["lr"] == 3e-4
    assert len(flow["summary"]["history"]) == 4
    assert (rgb["key"]["encoder_lr"], rgb["key"]["encoder_epochs"]) == (1e-3, 2)
    assert "encoder_grad_clip" not in rgb["key"] and rgb["summary"]["lr"] == 1e-3
    assert len(rgb["summary"]["history"]) == 2
    steps = 3  # ceil(36 source segments (12 + 10 + 8 + 6) / encoder batch 16)
    assert clip_calls == [1.0] * (3 * 4 * steps)  # psi, block, fc; each step of 4 epochs


# ------------------------------------------------------------------------------ comparison
# The one-seed check of the default suite: small networks, short schedules (a plumbing check).
SMALL_COMPARISON = {
    **TINY,
    "audio_hidden_dim": 64,
    "audio_epochs": 4,
    "cluster_max_k": 8,
    "cluster_n_init": 3,
    "encoder_epochs": 30,
    "attention_dim": 64,
    "attention_depth": 2,
    "attention_heads": 4,
    "attention_head_dim": 16,
    "attention_mlp_dim": 128,
    "encoder_bottleneck": 64,
    "epochs": 29,
    "lr_steps": [20],
    "eval_every": 29,
    "delegate_dim": 64,
    "recognizer_dim": 64,
    "recognizer_depth": 3,
    "recognizer_heads": 4,
    "recognizer_head_dim": 16,
    "recognizer_mlp_dim": 128,
}
# The 3-seed comparison: the head's defaults (the paper's networks, learning rates, clustering
# settings); only the schedules are longer, as the synthetic source has 123 segments where the
# reference's EPIC-55 sources have 1.5k-3.9k, so an epoch here is about a twelfth of the
# reference's optimisation steps (docs/methods.md, audio-adaptive). The shrunk networks and the
# 10x encoder lr of SMALL_COMPARISON reach 0.817 here against 0.936 with these settings (0.947
# with an lr step at epoch 20, which the reference does not make).
PAPER_COMPARISON = {
    "audio_epochs": 48,  # 384 steps (the reference: 4 x 1543 / 16 = 386 on D1)
    "encoder_epochs": 60,  # 480 steps (the reference: 15 x 1543 / 16 = 1447 on D1)
    "epochs": 29,  # 464 steps at a constant 7e-4 (the reference: 29 x 1543 / 8 = ~5.6k on D1)
    "eval_every": 29,
}
BASELINE = {"epochs": 30, "batch_size": 32, "eval_every": 30}


def _train_variant(cache, out, head, options, seed) -> float:
    """Target top-1 of one run; a run that diverges (an inverted term) scores 0."""
    try:
        result = train(
            cache=cache, head=head, source=["source"], target=["target"], out=out, seed=seed,
            overrides=options, progress=False,
        )  # fmt: skip
    except TrainingDiverged:
        return 0.0
    return result.metrics["target_test/verb/top1"]


def _compare(tmp_path, seeds, options, variants=None):
    """Target top-1 of source-only, DANN (both: late fusion of RGB and audio) and
    audio-adaptive (RGB + audio) on the same synthetic caches; ``variants`` (name -> (seeds,
    overrides)) adds audio-adaptive runs with other settings on some of the seeds."""
    scores: dict[str, list[float]] = {}
    for seed in seeds:
        cache = tmp_path / f"c{seed}.zarr"
        make_audio_visual_cache(cache, seed=seed)
        runs_ = [("source-only", "source-only", BASELINE), ("dann", "dann", BASELINE)]
        runs_.append(("audio-adaptive", "audio-adaptive", options))
        for name, (variant_seeds, overrides) in (variants or {}).items():
            if seed in variant_seeds:
                runs_.append((name, "audio-adaptive", {**options, **overrides}))
        for name, head, head_options in runs_:
            out = tmp_path / f"{name}-{seed}"
            scores.setdefault(name, []).append(_train_variant(cache, out, head, head_options, seed))
    logging.getLogger(__name__).info("target top-1 per seed: %s", json.dumps(scores))
    return {head: float(np.mean(values)) for head, values in scores.items()}, scores


def test_beats_source_only_on_one_seed(tmp_path):
    means, _ = _compare(tmp_path, seeds=[1], options=SMALL_COMPARISON)
    assert means["audio-adaptive"] > means["source-only"]


# Its adaptation terms: the pseudo-labelled target term of stage 6b and the pseudo-absent
# term of stage 5 (both use target segments), switched off together, or the target term inverted.
BROKEN = {
    "off": ([0, 1], {"target_weight": 0.0, "absent_weight": 0.0}),
    "inverted": ([0, 1], {"target_weight": -1.0}),
}


@pytest.fixture(scope="module")
def paper_comparison(tmp_path_factory):
    # ~10 min on 2 cores (13 runs, 7 of them audio-adaptive at the paper's networks): slow; the
    # default suite has the one-seed version below.
    return _compare(
        tmp_path_factory.mktemp("paper"), seeds=[0, 1, 2], options=PAPER_COMPARISON,
        variants=BROKEN,
    )  # fmt: skip


@pytest.mark.slow
def test_beats_source_only_and_dann_over_three_seeds(paper_comparison):
    # Measured (2026-12-03, after the stage-1 BatchNorm): source-only 0.733 / 0.592 / 0.833,
    # DANN 0.667 / 0.617 / 0.733, audio-adaptive 0.933 / 0.917 / 0.942; 2026-12-05 (consensus
    # pseudo labels, domain_norm): audio-adaptive 0.892 / 0.842 / 0.950.
    means, scores = paper_comparison
    assert means["audio-adaptive"] > means["source-only"] + 0.02, scores
    assert means["audio-adaptive"] > means["dann"] + 0.02, scores


@pytest.mark.slow
def test_breaking_the_target_terms_loses_the_gain(paper_comparison):
    """Measured (seeds 0, 1; 120 target test segments each; 2026-12-05, domain_norm on):
    audio-adaptive 0.892 / 0.842; both target terms off 0.592 / 0.658; the target term
    inverted 0.167 / 0.167. Before domain_norm (2026-12-03): 0.933 / 0.917, off 0.892 / 0.908,
    inverted 0.167 / 0.167.

    With each domain normalised apart the target terms give +0.24 here (without it +0.025,
    when most of the gain came from the audio-infused recognizer trained on the source). If the
    terms were silently dropped, the default run would be the "off" run and the first check
    fails."""
    _, scores = paper_comparison
    adapted = float(np.mean(scores["audio-adaptive"][:2]))
    assert np.mean(scores["off"]) < adapted - 0.01, scores
    assert np.mean(scores["inverted"]) < adapted - 0.3, scores


# The same two checks on seed 0 alone, in the default suite (the issue's acceptance check).
# A broken variant differs from the adapted run only in its later stages, so it starts from a
# copy of the adapted run's earlier stage outputs (RUN/stages; a stage whose key matches is
# reused, not retrained): "off" changes absent_weight (stage 5) and target_weight (stage 6b) and
# reuses stages 1-4; "inverted" changes stage 6b only and reuses stages 1-5. Measured: the same
# scores as fresh runs (0.892 and 0.167), in ~1/3 of the time of the 3-seed fixture.
REUSED_STAGES = {
    "off": ("audio-classifier", "clusters", "weights", "absent-labels", "audio-embeddings"),
    "inverted": None,  # every stage before the recognizers
}


@pytest.fixture(scope="module")
def paper_comparison_one_seed(tmp_path_factory):
    root, seed = tmp_path_factory.mktemp("paper-one"), 0
    cache = root / "c.zarr"
    make_audio_visual_cache(cache, seed=seed)
    scores = {
        name: _train_variant(cache, root / name, name, BASELINE, seed)
        for name in ("source-only", "dann")
    }
    scores["audio-adaptive"] = _train_variant(
        cache, root / "audio-adaptive", "audio-adaptive", PAPER_COMPARISON, seed
    )
    adapted_stages = root / "audio-adaptive" / "stages"
    for name, (_, overrides) in BROKEN.items():
        stages = root / name / "stages"
        stages.mkdir(parents=True)
        for path in adapted_stages.iterdir():
            if REUSED_STAGES[name] is None or path.name.split(".")[0] in REUSED_STAGES[name]:
                shutil.copy(path, stages / path.name)
        options = {**PAPER_COMPARISON, **overrides}
        scores[name] = _train_variant(cache, root / name, "audio-adaptive", options, seed)
    return scores


def test_beats_source_only_and_dann_on_seed_0(paper_comparison_one_seed):
    # Measured: source-only 0.733, DANN 0.667, audio-adaptive 0.875 (pseudo labels refined by
    # class centroids, the default since 2026-12-05's fourteenth stop, docs/benchmark_history.md:
    # labels 0.900 against 0.892); before it 0.892 (with domain_norm, the default since
    # 2026-12-05; 0.958 without it, 0.933 with each stream's own pseudo labels,
    # pseudo_labels=stream, as in the 3-seed runs of 2026-12-03).
    scores = paper_comparison_one_seed
    assert scores["audio-adaptive"] > scores["source-only"] + 0.1, scores
    assert scores["audio-adaptive"] > scores["dann"] + 0.1, scores


def test_breaking_the_target_terms_loses_the_gain_on_seed_0(paper_comparison_one_seed):
    """Measured (2026-12-05, domain_norm on): audio-adaptive 0.892, both target terms off 0.592,
    the target term inverted 0.167; with the centroid-refined labels (the default since the
    fourteenth stop) 0.875, 0.592, 0.167. Without domain_norm (before): 0.958, off 0.892,
    inverted 0.167; the margin was 2.4 segments of 120, now 34."""
    scores = paper_comparison_one_seed
    assert scores["off"] < scores["audio-adaptive"] - 0.02, scores
    assert scores["inverted"] < scores["audio-adaptive"] - 0.3, scores


def test_stage_1_trains_on_audio_features_of_a_large_mean(tmp_path):
    """Pooled audio features of a large common mean (1024-d, RMS norm ~30, as softplus or ReLU
    outputs): the stage's Adam 1e-2 (the authors') diverged in its first epoch without the
    classifier's BatchNorm and every unit died (source-train accuracy at chance, 1/8 here)."""
    cache = tmp_path / "c.zarr"
    make_audio_visual_cache(
        cache, num_classes=8, source_counts=(20,) * 8, target_per_class=4, audio_dim=1024,
        audio_noise=1.0, audio_mean=0.3, group=2,
    )  # fmt: skip
    store = cache_lib.open_cache(cache)
    audio = store.features("audio")[:]
    assert 20 < np.sqrt((np.linalg.norm(audio.mean(1), axis=1) ** 2).mean()) < 40
    stages = run_stages(
        cache=cache, source=["source"], target=["target"], out=tmp_path / "run",
        overrides={"cluster_max_k": 4, "cluster_n_init": 2}, until="audio-classifier",
        progress=False, device="cpu",
    )  # fmt: skip
    summary = stages.stages.record("audio-classifier")["summary"]
    # Measured: 1.0 with the BatchNorm, 0.125 (one class) without it.
    assert summary["source_train_accuracy"] > 0.9, summary
