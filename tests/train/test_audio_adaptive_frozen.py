"""Audio-Adaptive's frozen outputs (stage-1 audio embeddings, stage-5 clip features) are
computed once per run, stored under ``RUN/stages/``, and stage 6b and evaluation read them: the
same logits, losses and predictions as running the frozen modules on every batch (issue 19)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tests.train.test_audio_adaptive_pipeline import TINY, _train, make_audio_visual_cache

from avda import runs
from avda.train.audio_adaptive import pipeline
from avda.train.audio_adaptive.pipeline import AUDIO_EMBEDDING_KEY, ENCODED_KEY
from avda.train.audio_adaptive.run import run_stages
from avda.train.data import evaluation_domain
from avda.train.layers import set_norm_domain
from avda.train.stages import StageStore

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def av_cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("av-frozen") / "c.zarr"
    make_audio_visual_cache(
        path, source_counts=(10, 8, 6, 6), num_classes=4, target_per_class=6,
        visual=("rgb", "flow"),
    )  # fmt: skip
    return path


@pytest.fixture(scope="module")
def stages(av_cache, tmp_path_factory):
    """Stages 1-6a of a tiny two-stream run (no recognizer training), with each domain
    normalised apart (``domain_norm``), so stored and computed outputs must pick the same
    domain's statistics for every row."""
    return run_stages(
        cache=av_cache, source=["source"], target=["target"],
        out=tmp_path_factory.mktemp("run") / "run", overrides={**TINY, "domain_norm": True},
        progress=False, device="cpu",
    )  # fmt: skip


def _without_stored(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in batch.items() if k != AUDIO_EMBEDDING_KEY and not k.startswith("_enc")}


def _refuse(*args, **kwargs):
    raise AssertionError("a frozen module ran although its outputs are stored")


def test_stage_6b_on_stored_outputs_gives_the_frozen_encoders_logits(stages, monkeypatch):
    head, context = stages.head, stages.context
    train_set, target_set = context.train_set, context.target_set
    stages.attach_frozen_outputs([train_set, target_set], training=[train_set.name])
    for feature_set in (train_set, target_set):
        assert feature_set.inputs[AUDIO_EMBEDDING_KEY].shape == (len(feature_set), 16)
        for visual in ("rgb", "flow"):
            stored = feature_set.inputs[ENCODED_KEY.format(visual)]
            assert stored.shape == feature_set.inputs[visual].shape  # (N, K, C_v) pooled mode
    source, labels = train_set.batch(torch.arange(0, 8))
    target, _ = target_set.batch(torch.arange(3, 11))
    assert "_pseudo_label/rgb" in target  # stage 6a's labels travel with the target batch

    head.eval()
    computed = head(_without_stored(target))
    with monkeypatch.context() as patch:
        for module in (head.audio_classifier, *head.encoders.values()):
            patch.setattr(module, "forward", _refuse)
        read = head(target)
    for visual in ("rgb", "flow"):
        torch.testing.assert_close(
            read.extras["streams"][visual], computed.extras["streams"][visual]
        )
    torch.testing.assert_close(read.logits["verb"], computed.logits["verb"])
    # the frozen modules produce something a recognizer can tell apart: not a constant
    assert computed.logits["verb"].std(0).max() > 0

    head.train()  # recognizers train (dropout on), frozen modules stay in eval mode
    losses = {}
    for name, batches in (("computed", map(_without_stored, (source, target))), ("read", None)):
        s, t = batches if batches is not None else (source, target)
        torch.manual_seed(5)  # the recognizers' dropout draws the same masks in both
        with monkeypatch.context() as patch:
            if name == "read":
                for module in (head.audio_classifier, *head.encoders.values()):
                    patch.setattr(module, "forward", _refuse)
            out = head.training_step(s, labels, t, 0.0)
        out["loss"].backward()
        grads = [p.grad.clone() for p in head.recognizers.parameters()]
        head.zero_grad(set_to_none=True)
        losses[name] = (out, grads)
    (a, grads_a), (b, grads_b) = losses["computed"], losses["read"]
    assert set(a) == set(b) and "rgb/target_pseudo" in a
    for key in a:
        torch.testing.assert_close(a[key], b[key])
    for ga, gb in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(ga, gb)


def test_stored_outputs_are_the_frozen_modules_on_every_segment(stages, monkeypatch):
    head, context = stages.head, stages.context
    sets = [context.train_set, context.target_set]
    stages.attach_frozen_outputs(sets)
    folder = StageStore(context.run)
    head.eval()
    for visual in ("rgb", "flow"):
        arrays = folder.load_arrays(f"encoded-{visual}")
        for feature_set in sets:
            np.testing.assert_array_equal(arrays[f"{feature_set.name}.uids"], feature_set.uids)
            encoder = head.encoders[visual]
            direct = {}
            for domain in ("source", "target"):  # domain_norm: each domain's own statistics
                set_norm_domain(encoder, domain)
                with torch.no_grad():
                    direct[domain] = encoder(
                        feature_set.features(visual), feature_set.features("audio")
                    ).features
            own, other = evaluation_domain(feature_set), {"source", "target"}
            (other,) = other - {own}
            stored = torch.from_numpy(arrays[f"{feature_set.name}.values"])
            torch.testing.assert_close(stored, direct[own])
            assert not torch.allclose(stored, direct[other], atol=1e-3)
    # A new process (stages object) reads them back without running the frozen modules.
    again = pipeline.AudioAdaptiveStages(head, context)
    with monkeypatch.context() as patch:
        for module in (head.audio_classifier, *head.encoders.values()):
            patch.setattr(module, "forward", _refuse)
        again.run()
        for feature_set in sets:
            del feature_set.inputs[ENCODED_KEY.format("rgb")]
        again.attach_frozen_outputs(sets)
    assert ENCODED_KEY.format("rgb") in context.train_set.inputs
    # Other sets (a run with evaluation sets): remade, not refused.
    only_source = [context.train_set]
    pipeline.AudioAdaptiveStages(head, context).attach_frozen_outputs(only_source)
    record = folder.record("encoded-rgb")
    assert list(record["key"]["sets"]) == [context.train_set.name]
    # A stored file that does not hold these sets' rows (damaged, or rows reordered): remade.
    train_set = context.train_set
    np.savez(
        folder.folder / "encoded-rgb.npz",
        **{
            f"{train_set.name}.uids": train_set.uids[::-1],
            f"{train_set.name}.values": np.zeros((len(train_set), 1, 1), np.float32),
        },
    )
    pipeline.AudioAdaptiveStages(head, context).attach_frozen_outputs(only_source)
    with torch.no_grad():
        inputs = (train_set.features("rgb"), train_set.features("audio"))
        direct = head.encoders["rgb"](*inputs).features
    torch.testing.assert_close(train_set.inputs[ENCODED_KEY.format("rgb")], direct)
    arrays = folder.load_arrays("encoded-rgb")
    np.testing.assert_array_equal(arrays[f"{train_set.name}.uids"], train_set.uids)


def test_training_with_stored_outputs_predicts_as_running_the_frozen_modules(
    av_cache, tmp_path, monkeypatch
):
    """The whole loop (stage 6b and evaluation) with and without the stored outputs."""
    overrides = {"visual_modalities": ["rgb", "flow"], "flow_epochs": 1}
    _train(av_cache, tmp_path / "stored", **overrides)
    monkeypatch.setattr(
        pipeline.AudioAdaptiveStages, "attach_frozen_outputs", lambda self, sets, training=(): None
    )
    _train(av_cache, tmp_path / "computed", **overrides)
    assert StageStore(tmp_path / "stored").record("encoded-flow") is not None
    assert StageStore(tmp_path / "computed").record("encoded-flow") is None
    a = runs.read_predictions(tmp_path / "stored", "target_test")["scores"]["verb"]
    b = runs.read_predictions(tmp_path / "computed", "target_test")["scores"]["verb"]
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert a.std(0).max() > 0
