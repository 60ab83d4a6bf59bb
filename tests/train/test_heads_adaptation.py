"""The adaptation heads adapt: on features with a real domain shift each beats source-only on
target accuracy (mean of 3 seeds), and their loop hooks (AdaBN statistics, TA3N snippet
loading, MM-SADA's last-9-checkpoint average, RNA's DG/UDA switch) work end to end.

The shift: ``make_feature_cache(shift=8)`` moves the target's class clusters in both
modalities; the rgb target rows are then moved back onto the source by their mean difference,
so only the audio stays shifted (as the demo's mains hum and background noise). Late fusion sums
the modalities' logits, so the shifted audio drags source-only to 50% (4 classes).

DANN runs with ``adversarial_loss="confusion"``: this shift is trivially separable (an offset of
~16 noise standard deviations), the reversed minimax cross-entropy saturates as soon as the
discriminator is confident and its gradient vanishes (ADDA, Tzeng et al. 2017, sec. 3.2), so
the default DANN only matches source-only here (checked below); see docs/methods.md.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tests.conftest import make_feature_cache

from avda import runs
from avda.cache import Status, open_cache
from avda.errors import RunError, TrainingDiverged
from avda.evaluate.checkpoints import checkpoint_accuracy
from avda.train import data as data_lib
from avda.train import heads
from avda.train.layers import DomainBatchNorm1d
from avda.train.loop import PER_STEP_SCHEDULES, _make_optimizer, evaluate_sets, train

torch.set_num_threads(1)
SEEDS = (0, 1, 2)


def audio_shift_cache(path, **options):
    """A real Zarr cache whose target differs from the source in the audio only."""
    store = make_feature_cache(path, **options)
    domain = store.segments["domain"].to_numpy()
    target, source = np.flatnonzero(domain == "target"), np.flatnonzero(domain == "source")
    rgb = store.load("rgb")
    rgb[target] -= rgb[target].mean((0, 1)) - rgb[source].mean((0, 1))
    store.write(
        "rgb", target, rgb[target], np.full(len(target), int(Status.DONE)), [""] * len(target)
    )
    return open_cache(path)


def load_sets(store):
    modalities = store.modalities
    rows = {
        name: data_lib.select_rows(store, [name.split("_")[0]], [name.split("_")[1]], modalities)
        for name in ("source_train", "target_train", "target_test")
    }
    tasks = data_lib.infer_tasks(store.segments, rows["source_train"], None)
    sets = {n: data_lib.load_set(store, n, r, modalities, tasks) for n, r in rows.items()}
    return sets, tasks


def fit(name: str, sets, tasks, overrides: dict, seed: int) -> float:
    """Target top-1 after training in memory the way the loop does (no run directory)."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    cls = heads.HEADS.get(name)
    config = cls.Config.from_dict(overrides)
    source, target = sets["source_train"], sets["target_train"]
    inputs = {m: tuple(x.shape[1:]) for m, x in source.inputs.items()}
    head = heads.create(name, inputs=inputs, tasks=tasks, config=config)
    steps = math.ceil(len(source) / config.batch_size)
    optimizer, scheduler = _make_optimizer(head, config, config.epochs * steps)
    uses_target = cls.needs_target(config)
    target_batch = config.target_batch_size or config.batch_size
    for epoch in range(config.epochs):
        head.train()
        target_order = [
            index
            for _ in range(steps * target_batch // max(len(target), 1) + 2)
            for index in target.batches(target_batch, shuffle=True, generator=generator)
        ]
        for step, index in enumerate(
            source.batches(config.batch_size, shuffle=True, generator=generator)
        ):
            x, y = source.batch(index)
            t = target.batch(target_order[step])[0] if uses_target else None
            loss = head.training_step(x, y, t, (epoch * steps + step) / (config.epochs * steps))
            optimizer.zero_grad(set_to_none=True)
            loss["loss"].backward()
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_(head.parameters(), config.grad_clip)
            optimizer.step()
            if config.lr_schedule in PER_STEP_SCHEDULES:
                scheduler.step()
        if config.lr_schedule not in PER_STEP_SCHEDULES:
            scheduler.step()
    try:
        metrics, _ = evaluate_sets(head, {"target_test": sets["target_test"]}, "cpu", target)
    except TrainingDiverged:  # scores not finite (an inverted term can blow the model up)
        return 0.0
    return metrics["target_test/verb/top1"]


# Small-set settings: 48 source segments, batches of 8, 25 epochs (150 steps); each head's
# defaults otherwise, except what a 150-step run needs (MM-SADA's two stages, TA3N's steps).
FAST = {"epochs": 25, "batch_size": 8}
COMPARISON = {
    "dann": {"adversarial_loss": "confusion"},
    "adabn": {},
    "mmd": {},
    "mm-sada": {
        "pretrain_epochs": 8,
        "lr_steps": [8],
        "lr": 0.003,
        "target_batch_size": 8,
        "embedding_dim": 64,
    },
    "ta3n": {"target_batch_size": 8, "lr_steps": [8, 16]},
    "rna": {"setting": "uda", "embedding_dim": 64},
}


@pytest.fixture(scope="module")
def shifted(tmp_path_factory):
    store = audio_shift_cache(
        tmp_path_factory.mktemp("shift") / "c.zarr",
        per_class=12,
        num_classes=4,
        shift=8.0,
        D=8,
        K=3,
    )
    return load_sets(store)


@pytest.fixture(scope="module")
def source_only_accuracy(shifted):
    sets, tasks = shifted
    return float(np.mean([fit("source-only", sets, tasks, FAST, seed) for seed in SEEDS]))


@pytest.mark.parametrize("name", sorted(COMPARISON))
def test_adaptation_beats_source_only(name, shifted, source_only_accuracy):
    sets, tasks = shifted
    scores = [fit(name, sets, tasks, {**FAST, **COMPARISON[name]}, seed) for seed in SEEDS]
    assert np.mean(scores) > source_only_accuracy + 0.1, (scores, source_only_accuracy)


# Each term switched off (weight 0) and inverted (sign flipped), in the settings above.
# MM-SADA's gain here comes from its self-supervision (the adversarial term alone changes
# nothing on this trivially separable shift: 0.917 with or without it), so both of its terms
# are switched off or inverted together; inverting only the correspondence labels is not a
# break (a binary classifier learns the flipped labels as well). The adversarial and
# self-supervised terms are checked without the domain-specific normalisation (TA3N's AdaBN,
# MM-SADA's domain_norm), which alone removes this offset shift (1.0 with the terms off or
# inverted); the normalisation is checked on its own below.
BROKEN = {
    "mm-sada": (
        {"domain_norm": False},
        {"adversarial_weight": 0.0, "correspondence_weight": 0.0},
        {"pretrain_correspondence_weight": -5.0, "correspondence_weight": -1.0, "grl_weight": -0.2},
    ),
    "ta3n": (
        {"use_bn": "none"},
        {"beta": [0.0, 0.0, 0.0]},
        {"beta": [-0.75, -0.75, -0.5]},
    ),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_breaking_the_adaptation_term_loses_the_gain(name, shifted, source_only_accuracy):
    """Measured (3 seeds, source-only 0.500): mm-sada 0.917, off 0.667, inverted 0.250;
    ta3n 0.792, off 0.667, inverted 0.417."""
    sets, tasks = shifted
    without_norm, off, inverted = BROKEN[name]
    settings = {**FAST, **COMPARISON[name], **without_norm}
    if name == "mm-sada":  # stage 1's correspondence weight too
        off = {**off, "pretrain_correspondence_weight": 0.0}

    def mean(overrides):
        return np.mean([fit(name, sets, tasks, {**settings, **overrides}, s) for s in SEEDS])

    adapted = mean({})
    assert adapted > source_only_accuracy + 0.1
    assert mean(off) < adapted - 0.1
    assert mean(inverted) < adapted - 0.1


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_domain_statistics_alone_remove_an_offset_shift(name, shifted, source_only_accuracy):
    """Each domain normalised with its own statistics (the default) removes the audio's offset
    with the adversarial terms off; without the normalisation the same run loses the gain.
    Measured (3 seeds, source-only 0.500): ta3n 1.0 (without AdaBN 0.667); mm-sada 1.0
    (without domain_norm 0.667)."""
    sets, tasks = shifted
    without_norm, off, _ = BROKEN[name]
    if name == "mm-sada":
        off = {**off, "pretrain_correspondence_weight": 0.0}
    settings = {**FAST, **COMPARISON[name], **off}

    def mean(overrides):
        return np.mean([fit(name, sets, tasks, {**settings, **overrides}, s) for s in SEEDS])

    normalised = mean({})
    assert normalised > source_only_accuracy + 0.3
    assert mean(without_norm) < normalised - 0.2


def test_default_dann_does_not_collapse(shifted, source_only_accuracy):
    sets, tasks = shifted
    scores = [fit("dann", sets, tasks, FAST, seed) for seed in SEEDS]
    assert np.mean(scores) >= source_only_accuracy - 0.05, (scores, source_only_accuracy)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(COMPARISON))
def test_adaptation_beats_source_only_through_the_loop(name, tmp_path):
    """The same on a larger set (8 classes, 160 source segments) with real run directories."""
    cache = tmp_path / "c.zarr"
    audio_shift_cache(cache, per_class=20, num_classes=8, shift=8.0, D=8, K=3)
    base = {"epochs": 30, "batch_size": 16, "eval_every": 30}
    options = {**base, **COMPARISON[name]}
    if name == "mm-sada":
        options.update(pretrain_epochs=10, lr_steps=[10], target_batch_size=16)
    if name == "ta3n":
        options.update(target_batch_size=16, lr_steps=[10, 20])
    means = {}
    for head, overrides in (("source-only", base), (name, options)):
        scores = [
            train(
                cache=cache,
                head=head,
                source=["source"],
                target=["target"],
                out=tmp_path / f"{head}-{seed}",
                seed=seed,
                overrides=overrides,
                progress=False,
            ).metrics["target_test/verb/top1"]
            for seed in SEEDS
        ]
        means[head] = float(np.mean(scores))
    assert means[name] > means["source-only"] + 0.1, means


# ----------------------------------------------------------------------------- AdaBN
@pytest.mark.parametrize("normalize", ["inputs", "hidden"])
def test_adabn_uses_exact_target_statistics(shifted, normalize):
    sets, tasks = shifted
    head = heads.create(
        "adabn",
        inputs={m: tuple(x.shape[1:]) for m, x in sets["source_train"].inputs.items()},
        tasks=tasks,
        overrides={"statistics_batch_size": 7, "normalize": normalize},
    )
    target = sets["target_train"]
    head.before_evaluation(sets["target_test"], target)
    position = 0 if normalize == "inputs" else 1
    for modality in head.modalities:
        norm = head.encoders[modality][position]
        assert isinstance(norm, DomainBatchNorm1d) and norm.domain == "target"
        pooled = target.features(modality).mean(dim=1)  # the clip-averaged features
        with torch.no_grad():  # the BN's input over all target segments, computed here
            u = (pooled if normalize == "inputs" else head.encoders[modality][0](pooled)).double()
        torch.testing.assert_close(norm.target_mean.double(), u.mean(0), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(
            norm.target_var.double(), u.var(0, unbiased=False), rtol=1e-4, atol=1e-5
        )
    head.eval()
    with torch.no_grad():
        batch, _ = target.batch(torch.arange(len(target)))
        hidden = head(batch).extras["hidden"]["audio"]
        # target-normalised BN outputs have mean 0 (and unit variance before an affine 1, 0)
        layers = head.encoders["audio"][: position + 1]
        normalised = layers(batch["audio"].mean(1))
    torch.testing.assert_close(
        normalised.mean(0), torch.zeros(normalised.shape[1]), rtol=0, atol=1e-4
    )
    assert hidden.shape == (len(target), 512)
    source_set = sets["source_train"]
    source_set.name = "source_test"  # a source evaluation set: source running statistics
    head.before_evaluation(source_set, target)
    assert all(norm.domain == "source" for norm in head.norms())
    source_set.name = "source_train"


def test_adabn_trains_each_stream_to_classify_alone(shifted):
    """With late fusion the loss is the fused one plus stream_weight x the mean of the
    modalities' own losses (checked against cross-entropies computed here)."""
    sets, tasks = shifted
    inputs = {m: tuple(x.shape[1:]) for m, x in sets["source_train"].inputs.items()}
    batch, labels = sets["source_train"].batch(torch.arange(16))
    for weight in (0.0, 1.0, 0.5):
        torch.manual_seed(0)
        head = heads.create(
            "adabn", inputs=inputs, tasks=tasks, overrides={"stream_weight": weight}
        )
        head.eval()  # dropout off, BN on its running statistics: deterministic
        with torch.no_grad():
            parts = head.training_step(batch, labels, None, 0.0)
            hidden = head(batch).extras["hidden"]
        streams = [head.classifiers[m]["verb"](hidden[m]) for m in head.modalities]
        fused = F.cross_entropy(torch.stack(streams).sum(0), labels["verb"])
        own = torch.stack([F.cross_entropy(s, labels["verb"]) for s in streams]).mean()
        torch.testing.assert_close(parts["loss"], fused + weight * own)
    mid = heads.create("adabn", inputs=inputs, tasks=tasks, overrides={"fusion": "mid"})
    assert "streams" not in mid.training_step(batch, labels, None, 0.0)  # one stream: no term


def test_adabn_without_target_training_set_uses_the_evaluation_set(shifted, caplog):
    sets, tasks = shifted
    inputs = {m: tuple(x.shape[1:]) for m, x in sets["source_train"].inputs.items()}
    head = heads.create("adabn", inputs=inputs, tasks=tasks)
    with caplog.at_level("WARNING"):
        for _ in range(3):  # every evaluation of a run: said once (a new user saw it 4 times)
            head.before_evaluation(sets["target_test"], None)
    assert caplog.text.count("no unlabelled target training segments") == 1
    norm = head.norms()[0]
    modality = head.modalities[0]
    assert norm is head.encoders[modality][0]  # on the clip-averaged inputs
    u = sets["target_test"].features(modality).mean(1)
    torch.testing.assert_close(norm.target_mean, u.mean(0), rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- loop hooks
def test_ta3n_loads_only_its_snippets(tmp_path):
    store = make_feature_cache(tmp_path / "c.zarr", per_class=4, K=25, D=6)
    rows = np.arange(10)
    tasks = data_lib.infer_tasks(store.segments, rows, None)
    clips = {"rgb": [2, 7, 12, 17, 22], "audio": None}
    chosen = data_lib.load_set(store, "x", rows, ["rgb", "audio"], tasks, clips)
    assert chosen.inputs["rgb"].shape == (10, 5, 6) and chosen.inputs["audio"].shape == (10, 25, 6)
    full = store.load("rgb", rows)
    np.testing.assert_array_equal(chosen.features("rgb").numpy(), full[:, [2, 7, 12, 17, 22]])
    with pytest.raises(Exception, match="do not fit the 25 clips"):
        data_lib.load_set(store, "x", rows, ["rgb"], tasks, {"rgb": [30]})
    result = train(
        cache=tmp_path / "c.zarr",
        head="ta3n",
        source=["source"],
        target=["target"],
        out=tmp_path / "run",
        overrides={"epochs": 2, "batch_size": 8, "target_batch_size": 8},
        progress=False,
    )
    assert 0.0 <= result.metrics["target_test/verb/top1"] <= 1.0


def test_mm_sada_last_nine_checkpoint_average(tmp_path):
    make_feature_cache(tmp_path / "c.zarr", per_class=6, K=5, D=8, shift=1.0)
    options = {
        "epochs": 12,
        "pretrain_epochs": 4,
        "lr_steps": [4],
        "embedding_dim": 16,
        "batch_size": 8,
        "target_batch_size": 8,
    }
    train(
        cache=tmp_path / "c.zarr",
        head="mm-sada",
        source=["source"],
        target=["target"],
        out=tmp_path / "run",
        overrides=options,
        progress=False,
    )
    epochs = sorted(p.name for p in (tmp_path / "run" / "epochs").iterdir())
    assert epochs == [f"{e:04d}" for e in range(4, 13)]  # the last 9 of 12
    summary = checkpoint_accuracy(tmp_path / "run")
    per_epoch = []
    for epoch in epochs:
        prediction = runs.read_predictions(tmp_path / "run" / "epochs" / epoch, "target_test")
        scores, labels = prediction["scores"]["verb"], prediction["labels"]["verb"]
        per_epoch.append(float((scores.argmax(1) == labels).mean()))
    assert summary["checkpoints"] == 9.0
    assert summary["top1_mean"] == pytest.approx(np.mean(per_epoch))
    assert set(runs.prediction_sets(tmp_path / "run")) == {"source_test", "target_test"}
    with pytest.raises(RunError, match="keep_last_predictions=10"):
        checkpoint_accuracy(tmp_path / "run", last=10)


def test_rna_dg_trains_without_target_batches_and_uda_with(tmp_path, monkeypatch):
    make_feature_cache(tmp_path / "c.zarr", per_class=6, K=2, D=8)
    seen = []
    original = heads.HEADS.get("rna").training_step

    def spy(self, source, labels, target, progress):
        seen.append(target is not None)
        return original(self, source, labels, target, progress)

    monkeypatch.setattr(heads.HEADS.get("rna"), "training_step", spy)
    for setting in ("dg", "uda"):
        train(
            cache=tmp_path / "c.zarr",
            head="rna",
            source=["source"],
            target=["target"],
            out=tmp_path / setting,
            progress=False,
            overrides={"setting": setting, "epochs": 1, "batch_size": 8, "embedding_dim": 16},
        )
    assert seen[0] is False and seen[-1] is True


def test_mm_sada_runs_recorded_before_the_stream_loss_are_rebuilt_as_trained():
    config = heads.config_class("mm-sada")
    assert (config().domain_norm, config().stream_weight) == (True, 1.0)
    old = config.from_stored({"embedding_dim": 64})  # a config.yaml of a run before the options
    assert (old.domain_norm, old.stream_weight) == (False, 0.0)
    assert config.from_stored({"domain_norm": True}).stream_weight == 0.0


def test_adabn_runs_recorded_before_the_input_norm_are_rebuilt_as_trained():
    config = heads.config_class("adabn")
    assert (config().normalize, config().stream_weight) == ("inputs", 1.0)
    old = config.from_stored({"hidden_dim": 64})  # a config.yaml of a run before the options
    assert (old.normalize, old.stream_weight) == ("hidden", 0.0)
    assert config.from_stored({"normalize": "inputs"}).normalize == "inputs"
