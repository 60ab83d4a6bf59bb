"""The Audio-Adaptive pipeline through the training loop: stages, stored outputs, resumption,
faithful (spatial) mode, and the comparison with source-only and DANN on synthetic data."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest
import torch
import zarr

from avda import cache as cache_lib
from avda import runs
from avda.cache import Status
from avda.errors import CacheError, ConfigError, RunError
from avda.train import heads
from avda.train.audio_adaptive import pipeline
from avda.train.clustering import cluster_store
from avda.train.data import Task
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
    "lr_steps": [],
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
    centres = rng.normal(0, 1, (num_classes, 2, audio_dim)) * 2.0
    kind = rng.integers(0, 2, n)
    features["audio"] = centres[labels, kind][:, None, :] + rng.normal(
        0, audio_noise, (n, 1, audio_dim)
    )
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
    )
    assert not list(stages.folder.glob("*.partial.pt"))
    store = cache_lib.open_cache(av_cache)
    segments = store.segments
    target_train = segments[(segments["domain"] == "target") & (segments["split"] == "train")]
    pseudo = stages.load_arrays("pseudo-labels-rgb")
    np.testing.assert_array_equal(pseudo["uids"], target_train["uid"].to_numpy())
    assert pseudo["labels"].shape == (len(target_train),)
    np.testing.assert_array_equal(pseudo["labels"], pseudo["probabilities"].argmax(1))
    absent = stages.load_arrays("absent-labels")
    assert (absent["absent"].sum(1) == 3).all()
    clusters = stages.load_arrays("clusters")
    assert (clusters["clusters"] >= 0).all()
    record = stages.record("pseudo-labels-rgb")
    assert record["key"]["upstream"]["encoder-rgb"] and record["summary"]["class_counts"]
    assert "computed in this run" in stages.record("clusters")["summary"]["origin"]
    assert "target_test/verb/top1" in result.metrics
    last = runs.read_metrics(tmp_path / "run")[-1]
    assert {"train/rgb/target_pseudo", "train/flow/audio_visual"} <= set(last)


def test_output_is_the_average_of_the_streams():
    tasks = [Task("verb", 4)]
    overrides = {k: v for k, v in TINY.items() if "epochs" not in k}
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
    streams = output.extras["streams"]
    expected = (streams["rgb"].softmax(-1) + streams["flow"].softmax(-1)) / 2
    torch.testing.assert_close(output.logits["verb"].softmax(-1), expected)
    trainable = {n.split(".")[0] for n, p in head.named_parameters() if p.requires_grad}
    assert trainable == {"recognizers"}  # stages 1 and 5 are frozen in the final stage
    losses = head.training_step(inputs, {"verb": torch.tensor([0, 1, 2, 3, 0])}, inputs, 0.0)
    losses["loss"].backward()  # without stored pseudo labels: the stage-6a rule in the batch
    assert all(p.grad is not None for p in head.recognizers.parameters())


@pytest.mark.parametrize("stage, epoch", [("audio-classifier", 1), ("encoder-rgb", 2)])
def test_interrupted_stage_resumes_where_it_stopped(
    av_cache, tmp_path, monkeypatch, caplog, stage, epoch
):
    from avda.train import stages as stages_module

    _train(av_cache, tmp_path / "full", visual_modalities=["rgb"])
    save = stages_module._atomic_save

    def save_then_die(path, write):
        save(path, write)
        if (
            path.name == f"{stage}.partial.pt"
            and torch.load(path, weights_only=False)["epoch"] == epoch
        ):
            raise KeyboardInterrupt

    monkeypatch.setattr(stages_module, "_atomic_save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        _train(av_cache, tmp_path / "partial", visual_modalities=["rgb"])
    monkeypatch.setattr(stages_module, "_atomic_save", save)
    partial = StageStore(tmp_path / "partial")
    assert partial.record(stage) is None and partial.partial_path(stage).exists()
    with caplog.at_level(logging.INFO, logger="avda.train.stages"):
        _train(av_cache, tmp_path / "partial", visual_modalities=["rgb"])
    assert f"stage {stage}: resuming from epoch {epoch + 1}" in caplog.text
    full = StageStore(tmp_path / "full")
    for name in ("pseudo-labels-rgb", "absent-labels", "clusters"):
        for key, value in full.load_arrays(name).items():
            np.testing.assert_array_equal(value, partial.load_arrays(name)[key])
    a = runs.read_predictions(tmp_path / "full", "target_test")["scores"]["verb"]
    b = runs.read_predictions(tmp_path / "partial", "target_test")["scores"]["verb"]
    np.testing.assert_array_equal(a, b)


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
    stages = pipeline.run_stages(
        cache=av_cache, source=["source"], target=["target"], out=tmp_path / "run",
        overrides=overrides, until="absent-labels", progress=False, device="cpu",
    )  # fmt: skip
    assert sorted(p.stem for p in stages.stages.folder.glob("*.json")) == sorted(STAGES)
    with pytest.raises(RunError, match="stage 'absent-labels' .* other settings \\(absent_classes"):
        pipeline.run_stages(
            cache=av_cache, source=["source"], target=["target"], out=tmp_path / "run",
            overrides={**overrides, "absent_classes": 2}, until="absent-labels", progress=False,
            device="cpu",
        )  # fmt: skip
    with pytest.raises(ConfigError, match="unknown audio-adaptive stage 'encoders'"):
        stages.run(until="encoders")
    # The full run in the same folder picks the finished stages up and adds the rest.
    _train(av_cache, tmp_path / "run", visual_modalities=["rgb"])
    assert StageStore(tmp_path / "run").record("pseudo-labels-rgb") is not None


def test_clusters_made_by_avda_cluster_are_used(av_cache, tmp_path):
    import shutil

    cache = tmp_path / "c.zarr"
    shutil.copytree(av_cache, cache)
    cluster_store(cache, source=["source"], max_clusters=4, n_init=2, progress=False)
    stages = pipeline.run_stages(
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
    stages = pipeline.run_stages(
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
        pipeline.run_stages(
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
    config = heads.config_class("audio-adaptive").from_dict({"preset": "epic55-source-D2"})
    assert config.encoder_lr == 9e-5 and config.lr == 7e-4 and config.epochs == 29
    assert config.lr_steps == (3, 6, 9, 12, 15, 18, 21, 24, 27)
    with pytest.raises(ConfigError, match="preset"):
        heads.config_class("audio-adaptive").from_dict({"preset": "epic55-source-D4"})


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
# 10x encoder lr of SMALL_COMPARISON reach 0.817 here against 0.947 with these settings.
PAPER_COMPARISON = {
    "audio_epochs": 48,  # 384 steps (the reference: 4 x 1543 / 16 = 386 on D1)
    "encoder_epochs": 60,  # 480 steps (the reference: 15 x 1543 / 16 = 1447 on D1)
    "epochs": 29,
    "lr_steps": [20],  # 320 steps at 7e-4 (the reference: 3 x 1543 / 8 = 579 on D1), then 7e-5
    "eval_every": 29,
}
BASELINE = {"epochs": 30, "batch_size": 32, "eval_every": 30}


def _compare(tmp_path, seeds, options):
    """Target top-1 of source-only, DANN (both: late fusion of RGB and audio) and
    audio-adaptive (RGB + audio) on the same synthetic caches."""
    scores: dict[str, list[float]] = {}
    for seed in seeds:
        cache = tmp_path / f"c{seed}.zarr"
        make_audio_visual_cache(cache, seed=seed)
        for head, head_options in (
            ("source-only", BASELINE),
            ("dann", BASELINE),
            ("audio-adaptive", options),
        ):
            result = train(
                cache=cache, head=head, source=["source"], target=["target"],
                out=tmp_path / f"{head}-{seed}", seed=seed, overrides=head_options,
                progress=False,
            )  # fmt: skip
            scores.setdefault(head, []).append(result.metrics["target_test/verb/top1"])
    logging.getLogger(__name__).info("target top-1 per seed: %s", json.dumps(scores))
    return {head: float(np.mean(values)) for head, values in scores.items()}, scores


def test_beats_source_only_on_one_seed(tmp_path):
    means, _ = _compare(tmp_path, seeds=[1], options=SMALL_COMPARISON)
    assert means["audio-adaptive"] > means["source-only"]


def test_beats_source_only_and_dann_over_three_seeds(tmp_path):
    # ~4 min on 2 cores; in the default suite because it is the acceptance check.
    # Measured (docs/methods.md): source-only 0.733 / 0.592 / 0.833, DANN 0.833 / 0.800 / 0.900,
    # audio-adaptive 0.942 / 0.933 / 0.967.
    means, scores = _compare(tmp_path, seeds=[0, 1, 2], options=PAPER_COMPARISON)
    assert means["audio-adaptive"] > means["source-only"] + 0.02, scores
    assert means["audio-adaptive"] > means["dann"] + 0.02, scores
