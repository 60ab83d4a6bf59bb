"""Every head trains and evaluates on every cache layout the README's recipes produce.

The layouts differ in the clips per segment K of each modality: MM-SADA's I3D recipe (RGB and
flow K = 5) with VGGSound audio (one window per segment, K = 1), the TA3N/TBN recipe (rgb, flow
and audio all K = 25 snippets), SlowFast (K = 5, 2304-d) with one audio window, and MM-SADA's
training recipe (10 random windows). Each head trains briefly through :func:`avda.train.train`
(the function ``avda train`` calls) on a real Zarr cache, and its target predictions must be
finite class probabilities, one row per target test segment. Variants whose options take
another path through the clips (mid fusion, per-modality discriminators, TRN-M) run too.

Also: MM-SADA's test fuses a single audio window with every visual clip; a head that cannot run
on a layout fails before its first training step (the loop's and the audio-adaptive pipeline's
evaluation batch) with a one-line avda error naming the head and the shapes, also through the
CLI; a shape error during training becomes such an error too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from avda import cache as cache_lib
from avda import runs
from avda.cache import Status
from avda.train import heads
from avda.train.loop import train

torch.set_num_threads(1)

NUM_CLASSES = 4
TRAIN_PER_CLASS = 6
TEST_PER_CLASS = 3

# name -> {modality: (K, D)}; D shrunk, the ratios of the real feature sizes kept roughly.
LAYOUTS: dict[str, dict[str, tuple[int, int]]] = {
    # avda extract --backbone i3d --recipe mmsada --modalities rgb,audio (the README's cache)
    "i3d-rgb5-audio1": {"rgb": (5, 24), "audio": (1, 16)},
    # the same with flow: I3D RGB + flow, VGGSound audio
    "i3d-rgb5-flow5-audio1": {"rgb": (5, 24), "flow": (5, 20), "audio": (1, 16)},
    # --recipe ta3n: TBN, 25 snippets for every modality
    "tbn-25": {"rgb": (25, 20), "flow": (25, 18), "audio": (25, 16)},
    # --recipe audio-adaptive: SlowFast (2304-d) with one audio window
    "slowfast-rgb5-audio1": {"rgb": (5, 36), "audio": (1, 16)},
    # --recipe mmsada-train: 10 random windows per segment, one audio window
    "i3d-rgb10-flow10-audio1": {"rgb": (10, 24), "flow": (10, 20), "audio": (1, 16)},
}

# Tiny networks and one epoch (MM-SADA: one per stage); the point is shapes, not accuracy.
SMALL = {"batch_size": 16}
HEADS: dict[str, dict] = {
    "source-only": {**SMALL, "epochs": 1, "hidden_dim": 16},
    "dann": {**SMALL, "epochs": 1, "hidden_dim": 16, "discriminator_hidden": 8},
    "adabn": {**SMALL, "epochs": 1, "hidden_dim": 16},
    "mmd": {**SMALL, "epochs": 1, "hidden_dim": 16},
    "mm-sada": {
        **SMALL,
        "target_batch_size": 16,
        "epochs": 2,
        "pretrain_epochs": 1,
        "lr_steps": [1],
        "keep_last_predictions": 1,
        "embedding_dim": 16,
        "discriminator_hidden": 8,
        "correspondence_hidden": 8,
    },
    "ta3n": {
        **SMALL,
        "target_batch_size": 16,
        "epochs": 1,
        "lr_steps": [],
        "shared_dim": 16,
        "relation_dim": 8,
    },
    "rna": {**SMALL, "epochs": 1, "embedding_dim": 16},
    "cia": {**SMALL, "epochs": 1, "consensus_dim": 8, "reduction": 4, "discriminator_hidden": 8},
    "audio-adaptive": {
        "audio_hidden_dim": 16,
        "audio_epochs": 1,
        "cluster_max_k": 3,
        "cluster_n_init": 1,
        "absent_classes": 1,
        "encoder_epochs": 1,
        "attention_dim": 16,
        "attention_depth": 1,
        "attention_heads": 2,
        "attention_head_dim": 8,
        "attention_mlp_dim": 16,
        "encoder_bottleneck": 8,
        "epochs": 1,
        "batch_size": 8,
        "lr_steps": [],
        "delegate_dim": 16,
        "recognizer_dim": 16,
        "recognizer_depth": 1,
        "recognizer_heads": 2,
        "recognizer_head_dim": 8,
        "recognizer_mlp_dim": 16,
    },
}


# Options that take another code path through the layout (mid fusion concatenates the
# clip-averaged modalities, TRN-M needs the same number of frames from every modality).
VARIANTS: dict[str, tuple[str, dict]] = {
    "source-only-mid": ("source-only", {"fusion": "mid"}),
    "dann-joint": ("dann", {"discriminator": "joint"}),
    "adabn-mid": ("adabn", {"fusion": "mid"}),
    "rna-uda": ("rna", {"setting": "uda", "discriminator_hidden": 8}),
    "cia-trn": ("cia", {"temporal": "trn", "relation_dim": 8}),
    "cia-concat": ("cia", {"fusion": "concat"}),
    "ta3n-no-attention": ("ta3n", {"domain_attention": False}),
}
RUNS = {name: (name, options) for name, options in HEADS.items()} | {
    variant: (head, {**HEADS[head], **options}) for variant, (head, options) in VARIANTS.items()
}


def test_every_registered_head_is_covered():
    assert sorted(HEADS) == sorted(heads.names())


def make_layout_cache(path: Path, layout: dict[str, tuple[int, int]], seed: int = 0):
    """A real Zarr cache with ``layout``'s (K, D) per modality: class clusters, shifted target."""
    rng = np.random.default_rng(seed)
    rows = []
    for domain in ("source", "target"):
        for split, count in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
            for c in range(NUM_CLASSES):
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
        path, segments, manifest_sha256="0" * 64, recipe={"name": "synthetic"}, chunk_rows=32
    )
    labels = segments["verb_class"].to_numpy()
    is_target = (segments["domain"] == "target").to_numpy()
    n = len(segments)
    info = {"backbone": "synthetic", "weights": None, "weights_sha256": None, "input_spec": {}}
    for modality, (K, D) in layout.items():
        centres = rng.normal(0, 1, (NUM_CLASSES, D)) * 2
        x = centres[labels][:, None, :] + rng.normal(0, 1, (n, K, D))
        x[is_target] += rng.normal(0, 0.5, D)
        x = np.maximum(x, 0.0)  # pooled post-ReLU features are non-negative
        store.add_modality(modality, num_clips=K, num_features=D, info=info)
        store.write(modality, np.arange(n), x, np.full(n, int(Status.DONE)), [""] * n)
    return store


@pytest.fixture(scope="module")
def layout_caches(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("layouts")
    caches = {}
    for index, (name, layout) in enumerate(LAYOUTS.items()):
        make_layout_cache(root / f"{name}.zarr", layout, seed=index)
        caches[name] = root / f"{name}.zarr"
    return caches


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("variant", list(RUNS))
def test_head_trains_and_predicts_on_layout(variant, layout, layout_caches, tmp_path):
    head, overrides = RUNS[variant]
    run = tmp_path / "run"
    result = train(
        cache=layout_caches[layout],
        head=head,
        source=["source"],
        target=["target"],
        out=run,
        seed=0,
        overrides=overrides,
        progress=False,
    )
    assert runs.is_complete(run)
    predictions = runs.read_predictions(run, "target_test")
    scores = predictions["scores"]["verb"]
    assert scores.shape == (NUM_CLASSES * TEST_PER_CLASS, NUM_CLASSES)
    assert np.isfinite(scores).all()
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, rtol=1e-4)
    assert np.isfinite(result.metrics["target_test/verb/top1"])


# ---------------------------------------------------------------------- MM-SADA's clip test
def test_mm_sada_broadcasts_one_audio_clip_over_the_visual_clips():
    """One segment-long audio window is fused with every visual clip: the same prediction as
    the 5-clip test with that window repeated at each clip position."""
    from avda.train.data import Task

    torch.manual_seed(0)
    tasks = [Task("verb", NUM_CLASSES)]
    options = {"embedding_dim": 16, "epochs": 2, "pretrain_epochs": 1}
    one = heads.create("mm-sada", inputs={"rgb": (5, 8), "audio": (1, 6)}, tasks=tasks,
                       overrides=options).eval()  # fmt: skip
    five = heads.create("mm-sada", inputs={"rgb": (5, 8), "audio": (5, 6)}, tasks=tasks,
                        overrides=options).eval()  # fmt: skip
    five.load_state_dict(one.state_dict())
    rgb, audio = torch.rand(3, 5, 8), torch.rand(3, 1, 6)
    with torch.no_grad():
        expected = five({"rgb": rgb, "audio": audio.expand(-1, 5, -1)}).logits["verb"]
        torch.testing.assert_close(one({"rgb": rgb, "audio": audio}).logits["verb"], expected)
        # 10 audio clips against 5 RGB clips: each RGB clip is fused with the two audio clips
        # it spans (clips are spread evenly over the segment in every recipe)
        ten = torch.rand(3, 10, 6)
        features = one.embed({"rgb": rgb, "audio": ten})
        aligned = one.fused_logits(features)["verb"]
        repeated = {"rgb": features["rgb"].repeat_interleave(2, dim=1), "audio": features["audio"]}
        assert aligned.shape == (3, 10, NUM_CLASSES)
        torch.testing.assert_close(aligned, one.fused_logits(repeated)["verb"])


# ---------------------------------------------------------------------- shape errors
def _train_layout(cache: Path, out: Path, head: str, **overrides):
    return train(
        cache=cache,
        head=head,
        source=["source"],
        target=["target"],
        out=out,
        seed=0,
        overrides={**HEADS[head], **overrides},
        progress=False,
    )


def _stack_without_alignment(self, features):  # MM-SADA's fusion before the fix
    return {
        t.name: torch.stack(
            [self.classifiers[m][t.name](self.dropout(features[m])) for m in self.modalities]
        ).sum(0)
        for t in self.tasks
    }


def test_a_head_that_cannot_evaluate_the_layout_fails_before_training(
    layout_caches, tmp_path, monkeypatch
):
    from avda.errors import CacheError
    from avda.train.heads.mm_sada import MmSada

    steps = []
    real_step = MmSada.training_step
    monkeypatch.setattr(MmSada, "fused_logits", _stack_without_alignment)
    monkeypatch.setattr(
        MmSada, "training_step", lambda self, *a: steps.append(1) or real_step(self, *a)
    )
    with pytest.raises(CacheError) as caught:
        _train_layout(layout_caches["i3d-rgb5-audio1"], tmp_path / "run", "mm-sada")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("mm-sada cannot predict ")
    assert "rgb (K=5, D=24), audio (K=1, D=16)" in message
    assert "stack expects each tensor to be equal size" in message
    assert steps == []  # not one training step was spent
    assert runs.read_metrics(tmp_path / "run") == []


def test_a_shape_error_in_training_becomes_one_line(layout_caches, tmp_path, monkeypatch):
    from avda.errors import CacheError
    from avda.train.heads.dann import Dann

    def broken(self, *args):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (16x24 and 20x16)")

    monkeypatch.setattr(Dann, "training_step", broken)
    with pytest.raises(CacheError, match=r"^dann cannot train with the cache's inputs rgb "
                       r"\(K=5, D=24\), flow \(K=5, D=20\), audio \(K=1, D=16\): RuntimeError: "
                       r"mat1 and mat2 shapes"):  # fmt: skip
        _train_layout(layout_caches["i3d-rgb5-flow5-audio1"], tmp_path / "run", "dann")

    def other(self, *args):
        raise RuntimeError("something unrelated went wrong")

    monkeypatch.setattr(Dann, "training_step", other)  # not a shape error: left alone
    with pytest.raises(RuntimeError, match="^something unrelated"):
        _train_layout(layout_caches["i3d-rgb5-flow5-audio1"], tmp_path / "other", "dann")


def test_audio_adaptive_checks_its_layout_before_stage_1(layout_caches, tmp_path, monkeypatch):
    from avda.errors import CacheError
    from avda.train.heads.audio_adaptive import AudioAdaptive

    def broken(self, inputs):
        torch.stack([inputs["rgb"], inputs["audio"]])  # the kind of bug a layout exposes

    monkeypatch.setattr(AudioAdaptive, "forward", broken)
    with pytest.raises(CacheError, match="^audio-adaptive cannot predict .*audio \\(K=1, D=16\\)"):
        _train_layout(layout_caches["slowfast-rgb5-audio1"], tmp_path / "run", "audio-adaptive")
    assert not list((tmp_path / "run").glob("stages/*"))  # no stage was trained


def test_cli_prints_one_line(layout_caches, tmp_path, monkeypatch, capsys):
    from avda.cli import main
    from avda.train.heads.mm_sada import MmSada

    monkeypatch.setattr(MmSada, "fused_logits", _stack_without_alignment)
    settings = [f"--set={k}={v}" for k, v in HEADS["mm-sada"].items()]
    code = main(
        ["train", "--head", "mm-sada", "--cache", str(layout_caches["i3d-rgb5-audio1"]),
         "--source", "source", "--target", "target", "-o", str(tmp_path / "run"), *settings]
    )  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert [line for line in err if line.startswith("error:")] == [err[-1]]
    assert err[-1].startswith("error: mm-sada cannot predict")
    assert "Traceback" not in "\n".join(err)
