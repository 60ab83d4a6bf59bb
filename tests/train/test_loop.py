"""The training loop on a real Zarr cache: determinism, resume, run directory, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tests.conftest import make_feature_cache

from avda import runs
from avda.errors import CacheError, ConfigError, RunError
from avda.train.loop import config_difference, train


@pytest.fixture()
def shifted_cache(tmp_path):
    make_feature_cache(tmp_path / "c.zarr", shift=0.5, per_class=10)
    return tmp_path / "c.zarr"


def _train(cache, out, head="source-only", **overrides):
    options = {"epochs": 4, "batch_size": 16, **overrides}
    return train(
        cache=cache,
        head=head,
        source=["source"],
        target=["target"],
        out=out,
        seed=3,
        overrides=options,
        progress=False,
    )


def test_run_directory_contents(shifted_cache, tmp_path):
    result = _train(shifted_cache, tmp_path / "run")
    run = tmp_path / "run"
    assert runs.is_complete(run)
    config = runs.read_config(run)
    assert config["head"] == "source-only" and config["seed"] == 3
    assert config["head_config"]["epochs"] == 4
    assert config["tasks"] == [{"name": "verb", "num_classes": 4, "multi_label": False}]
    assert json.loads((run / runs.PROVENANCE).read_text())["recipe"] == {"name": "synthetic"}
    metrics = runs.read_metrics(run)
    assert [m["epoch"] for m in metrics] == [1, 2, 3, 4]
    assert "target_test/verb/top1" in metrics[-1]
    assert set(runs.prediction_sets(run)) == {"source_test", "target_test"}
    pred = runs.read_predictions(run, "target_test")
    assert pred["scores"]["verb"].shape == (20, 4)
    np.testing.assert_allclose(pred["scores"]["verb"].sum(1), 1.0, rtol=1e-5)
    assert result.metrics["source_test/verb/top1"] > 0.9  # clusters are separable


def test_same_seed_same_numbers(shifted_cache, tmp_path):
    first = _train(shifted_cache, tmp_path / "a", head="dann")
    second = _train(shifted_cache, tmp_path / "b", head="dann")
    assert first.metrics == second.metrics
    a = runs.read_predictions(tmp_path / "a", "target_test")["scores"]["verb"]
    b = runs.read_predictions(tmp_path / "b", "target_test")["scores"]["verb"]
    np.testing.assert_array_equal(a, b)


def test_bf16_precision_trains_like_fp32(shifted_cache, tmp_path, monkeypatch):
    from avda.train import loop

    seen = []
    real = torch.autocast

    def recording_autocast(device_type, dtype=None, enabled=True, **kwargs):
        seen.append((device_type, dtype, enabled))
        return real(device_type, dtype=dtype, enabled=enabled, **kwargs)

    monkeypatch.setattr(loop.torch, "autocast", recording_autocast)
    fp32 = _train(shifted_cache, tmp_path / "fp32", head="ta3n", epochs=6, batch_size=16)
    bf16 = _train(
        shifted_cache, tmp_path / "bf16", head="ta3n", epochs=6, batch_size=16, precision="bf16"
    )
    assert seen == [("cpu", torch.bfloat16, False), ("cpu", torch.bfloat16, True)]
    assert runs.read_config(tmp_path / "bf16")["head_config"]["precision"] == "bf16"
    losses = [[m["train/loss"] for m in runs.read_metrics(tmp_path / r)] for r in ("fp32", "bf16")]
    assert losses[0] != losses[1]  # bf16 really ran
    np.testing.assert_allclose(losses[1], losses[0], rtol=0.05)
    top1 = "source_test/verb/top1"
    assert abs(bf16.metrics[top1] - fp32.metrics[top1]) <= 0.1


def test_resume_after_interruption_matches_uninterrupted(shifted_cache, tmp_path, monkeypatch):
    from avda.train import loop

    _train(shifted_cache, tmp_path / "full", head="dann")
    save = loop._save_checkpoint

    def save_then_die(path, *args, **kwargs):
        save(path, *args, **kwargs)
        if args[4] == 2:  # the epoch just saved
            raise KeyboardInterrupt

    partial = tmp_path / "partial"
    monkeypatch.setattr(loop, "_save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        _train(shifted_cache, partial, head="dann")
    monkeypatch.setattr(loop, "_save_checkpoint", save)
    assert not runs.is_complete(partial)
    assert torch.load(partial / runs.CHECKPOINT, weights_only=False)["epoch"] == 2

    resumed = _train(shifted_cache, partial, head="dann")
    full = runs.read_predictions(tmp_path / "full", "target_test")["scores"]["verb"]
    again = runs.read_predictions(partial, "target_test")["scores"]["verb"]
    assert [m["epoch"] for m in runs.read_metrics(partial)] == [1, 2, 3, 4]
    np.testing.assert_array_equal(full, again)
    assert resumed.metrics == _train(shifted_cache, tmp_path / "full", head="dann").metrics


def test_checkpoint_keeps_the_gpu_generator_for_a_resume(tmp_path, monkeypatch):
    """On a GPU dropout draws from the device's generator: the checkpoint stores its state
    (a resumed run repeats the uninterrupted one there too); on a CPU there is none."""
    from avda.train import loop

    state = torch.arange(16, dtype=torch.uint8)
    asked = []

    def get_rng_state(device):
        asked.append(torch.device(device))
        return state

    monkeypatch.setattr(torch.cuda, "get_rng_state", get_rng_state)
    model = torch.nn.Linear(2, 2)
    model.stored_submodules = ()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1)
    for device, expected in (("cuda:0", state), ("cpu", None)):
        path = tmp_path / f"{device.replace(':', '')}.pt"
        loop._save_checkpoint(
            path, model, optimizer, scheduler, torch.Generator(), 1, None,
            complete=True, device=device,
        )  # fmt: skip
        saved = runs.load_checkpoint(path)["cuda_rng"]
        if expected is None:
            assert saved is None
        else:
            assert torch.equal(saved, expected)
    assert asked == [torch.device("cuda:0")]


def test_complete_run_is_skipped_and_other_config_refused(shifted_cache, tmp_path):
    _train(shifted_cache, tmp_path / "run")
    assert _train(shifted_cache, tmp_path / "run").skipped
    with pytest.raises(RunError, match="another configuration") as info:
        _train(shifted_cache, tmp_path / "run", epochs=5, lr=0.5)
    assert "(head_config.epochs: the run's 4 -> 5; head_config.lr: the run's 0.001 -> 0.5)" in (
        str(info.value)
    )


def test_the_refusal_shows_what_an_unset_field_ran_with(shifted_cache, tmp_path):
    """A field left unset is recorded as its "unset" value (``modalities: []``, every
    modality; ``target_batch_size: 0``, ``batch_size``): the refusal showed the run's ``[]``
    and ``0``, as if it had used no modality; it shows what the run used."""
    _train(shifted_cache, tmp_path / "run")
    with pytest.raises(RunError) as info:
        _train(shifted_cache, tmp_path / "run", modalities=["rgb"], target_batch_size=8)
    message = str(info.value)
    assert (
        "head_config.modalities: the run's ['audio', 'rgb'] (unset: every modality) -> ['rgb']"
    ) in message
    assert "head_config.target_batch_size: the run's 16 (unset: batch_size) -> 8" in message
    with pytest.raises(RunError) as info:
        _train(shifted_cache, tmp_path / "run", tasks=["verb"])
    assert "head_config.tasks: the run's ['verb'] (unset: every task) -> ['verb']" in (
        str(info.value)
    )
    # a field the run lacks is (none), not the string "'(none)'"
    assert config_difference({"seed": 0}, {"seed": 0, "protocol": "unified"}) == (
        "protocol: the run's (none) -> 'unified'"
    )


def test_errors_name_the_problem(shifted_cache, tmp_path):
    with pytest.raises(CacheError, match="unknown target domain 'tagret'; did you mean 'target'"):
        train(
            cache=shifted_cache,
            head="dann",
            source=["source"],
            target=["tagret"],
            out=tmp_path / "r",
            progress=False,
        )
    with pytest.raises(ConfigError, match="unknown DannConfig field 'lr_rate'"):
        _train(shifted_cache, tmp_path / "r", head="dann", lr_rate=1)
    with pytest.raises(CacheError, match="no 'flow' features"):
        _train(shifted_cache, tmp_path / "r", modalities=["flow"])


def test_cache_without_target_segments(tmp_path):
    from avda import cache as cache_lib

    store = make_feature_cache(tmp_path / "c.zarr", per_class=4)
    segments = store.segments.copy()
    segments["domain"] = "source"
    only_source = cache_lib.create(tmp_path / "s.zarr", segments, manifest_sha256="0", recipe={})
    only_source.add_modality("rgb", num_clips=2, num_features=16, info={"backbone": "x"})
    n = len(segments)
    only_source.write("rgb", np.arange(n), store.load("rgb"), np.ones(n), [""] * n)
    with pytest.raises(CacheError, match="unknown target domain 'target'"):
        train(
            cache=tmp_path / "s.zarr",
            head="source-only",
            source=["source"],
            target=["target"],
            out=tmp_path / "r",
            progress=False,
        )


def test_diverging_loss_stops_with_a_message(shifted_cache, tmp_path):
    from avda.errors import TrainingDiverged

    with pytest.raises(TrainingDiverged, match="lower lr"):
        _train(shifted_cache, tmp_path / "r", lr=1e30, optimizer="sgd", weight_decay=0.0)


def test_non_finite_predictions_are_never_recorded(shifted_cache, tmp_path, monkeypatch):
    """A finite loss with scores that are not (an eval-mode overflow): the run stops, nothing
    is written as its predictions and it is not complete (it was, with NaN scores that
    `avda evaluate` then scored as wrong answers)."""
    from avda.errors import TrainingDiverged
    from avda.train import loop

    real = loop.predict

    def overflowing(head, feature_set, device, batch_size=1024):
        scores = real(head, feature_set, device, batch_size)
        if len(feature_set) > 1:
            next(iter(scores.values()))[1] = np.nan
        return scores

    monkeypatch.setattr(loop, "predict", overflowing)
    out = tmp_path / "r"
    with pytest.raises(TrainingDiverged, match=r"not finite for 1 of .* lower lr"):
        _train(shifted_cache, out)
    assert not runs.is_complete(out) and runs.prediction_sets(out) == []


def test_segments_without_an_input_are_left_out_or_named(tmp_path, caplog):
    """Rows whose audio does not exist (status missing, zero features: a video without an
    audio track): an audio-only run leaves them out of training and evaluation instead of
    scoring the zeros; a run that also reads RGB keeps them and says their audio is zeros."""
    from avda.cache import Status, open_cache
    from avda.train import data as data_lib

    path = tmp_path / "c.zarr"
    make_feature_cache(path, shift=0.5, per_class=10)
    store = open_cache(path, mode="r+")
    uids = store.segments["uid"].to_numpy(dtype=str)
    gone = np.flatnonzero(np.char.startswith(uids, "target-test-2-") | (uids == "source-train-0-0"))
    for rows in (gone[:1], gone[1:]):  # contiguous runs of rows
        zeros = np.zeros((len(rows), 2, 16), np.float32)
        why = ["no audio track in v.mp4"] * len(rows)
        store.write("audio", rows, zeros, np.full(len(rows), int(Status.MISSING)), why)
    test_rows = np.flatnonzero(np.char.startswith(uids, "target-test-"))

    caplog.set_level("WARNING")
    rows = data_lib.select_rows(store, ["target"], ["test"], ["audio"])
    assert sorted(rows) == sorted(set(test_rows) - set(gone))
    assert "5 selected segments (target test) have no input in any modality" in caplog.text
    caplog.clear()
    rows = data_lib.select_rows(store, ["target"], ["test"], ["rgb", "audio"])
    assert sorted(rows) == sorted(test_rows)
    assert "5 selected segments (target test) have no audio input" in caplog.text
    # the reason the cache recorded, not always "a video without an audio track" (RGB
    # features missing from an import said so too)
    assert "(status missing, e.g. audio: no audio track in v.mp4; target-test-2-0" in caplog.text
    assert "--set modalities=[rgb] leaves audio out" in caplog.text
    caplog.clear()
    assert sorted(data_lib.select_rows(store, ["target"], ["test"], ["rgb"])) == sorted(test_rows)
    assert caplog.text == ""

    _train(path, tmp_path / "audio", modalities=["audio"])
    predicted = runs.read_predictions(tmp_path / "audio", "target_test")["uids"]
    assert len(predicted) == 15 and not any(u.startswith("target-test-2-") for u in predicted)
    _train(path, tmp_path / "both", modalities=["rgb", "audio"])
    assert len(runs.read_predictions(tmp_path / "both", "target_test")["uids"]) == 20


def test_the_recorded_lr_is_the_one_each_epoch_trained_at(shifted_cache, tmp_path, monkeypatch):
    """metrics.jsonl's ``lr`` of an epoch is the rate its steps used (it was the next epoch's:
    read after the scheduler's step, so a decay showed one epoch early)."""
    seen: dict[int, float] = {}
    originals = {cls: cls.step for cls in (torch.optim.Adam, torch.optim.SGD)}

    def recorder(cls):
        def record(self, *args, **kwargs):  # the lr of each epoch's first step
            epoch = len(runs.read_metrics(tmp_path / "run")) + 1
            seen.setdefault(epoch, self.param_groups[0]["lr"])
            return originals[cls](self, *args, **kwargs)

        return record

    for cls in originals:
        monkeypatch.setattr(cls, "step", recorder(cls))
    _train(shifted_cache, tmp_path / "run", lr_steps=(2,), lr_gamma=0.1, epochs=3)
    logged = {m["epoch"]: m["lr"] for m in runs.read_metrics(tmp_path / "run")}
    assert logged == pytest.approx(seen)
    assert logged[3] == pytest.approx(0.1 * logged[2]) and logged[1] == logged[2]


def _authors_ta3n_lrs(lr0: float, epochs: int, steps_per_epoch: int) -> list[float]:
    """The lr of every optimiser step of the original TA3N (cmhungsteve/TA3N main.py,
    --lr_adaptive dann), transcribed: ``for epoch in range(1, epochs + 1)``, in ``train()``
    ``start_steps = epoch * len(source_loader)``, ``p = (i + start_steps) / total_steps``,
    the step at the current lr, then ``adjust_learning_rate_dann``: lr0 / (1 + 10 p) ** 0.75."""
    lr, seen = lr0, []
    total_steps = epochs * steps_per_epoch
    for epoch in range(1, epochs + 1):
        start_steps = epoch * steps_per_epoch
        for i in range(steps_per_epoch):
            p = float(i + start_steps) / total_steps
            seen.append(lr)  # optimizer.step() with the current lr
            lr = lr0 / (1.0 + 10 * p) ** 0.75
    return seen


def test_the_ta3n_dann_schedule_steps_as_the_original_code(shifted_cache, tmp_path, monkeypatch):
    """lr_schedule=dann-ta3n: every step's lr equals the authors' loop (first step at lr0,
    then the previous step's progress counted from 1 / epochs); plain dann does not."""
    from avda.train.loop import ta3n_dann_factor

    # hand computation, the U->H recipe (lr 3e-2, 30 epochs of 12 steps): step 1 at p = 1/30,
    # 0.03 / (4/3)^0.75; the last step (359) at p = 358/360 + 1/30 = 370/360
    assert 0.03 * ta3n_dann_factor(0, 360, 30) == 0.03
    assert 0.03 * ta3n_dann_factor(1, 360, 30) == pytest.approx(0.03 * 0.75**0.75)
    assert 0.03 * ta3n_dann_factor(359, 360, 30) == pytest.approx(0.03 / (1 + 3700 / 360) ** 0.75)
    assert _authors_ta3n_lrs(0.03, 30, 12)[1] == pytest.approx(0.0241778235)  # 0.03 * 0.75^0.75

    lrs: list[float] = []
    original = torch.optim.SGD.step

    def record(self, *args, **kwargs):
        lrs.append(self.param_groups[0]["lr"])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", record)
    options = {"optimizer": "sgd", "lr": 0.03, "weight_decay": 0.0, "epochs": 3}
    _train(shifted_cache, tmp_path / "run", lr_schedule="dann-ta3n", **options)
    steps = len(lrs) // 3
    assert steps >= 2 and len(lrs) == 3 * steps
    assert lrs == pytest.approx(_authors_ta3n_lrs(0.03, 3, steps), rel=1e-12)
    logged = [m["lr"] for m in runs.read_metrics(tmp_path / "run")]
    assert logged == pytest.approx(lrs[::steps])  # each epoch's first step
    lrs.clear()
    _train(shifted_cache, tmp_path / "plain", lr_schedule="dann", **options)
    assert lrs != pytest.approx(_authors_ta3n_lrs(0.03, 3, steps), rel=1e-6)


def test_a_finished_run_of_another_avda_version_is_skipped_not_refused(shifted_cache, tmp_path):
    """After an upgrade, the same `avda train` on a finished run skips it (its numbers are that
    version's, recorded in config.yaml); a changed setting is still refused."""
    first = _train(shifted_cache, tmp_path / "run")
    config = runs.read_config(tmp_path / "run")
    config["avda_version"] = "0.0.1"
    runs.write_config(tmp_path / "run", config)
    again = _train(shifted_cache, tmp_path / "run")
    assert again.skipped and again.metrics == first.metrics
    assert runs.read_config(tmp_path / "run")["avda_version"] == "0.0.1"
    with pytest.raises(RunError, match="another configuration .*head_config.epochs"):
        _train(shifted_cache, tmp_path / "run", epochs=3)


def test_split_batches_keeps_every_row_and_never_a_lone_one():
    from avda.train.data import batch_count, split_batches

    for rows in range(1, 40):
        for size in (1, 2, 5, 13):
            batches = list(split_batches(torch.arange(rows), size))
            assert len(batches) == batch_count(rows, size)
            assert torch.equal(torch.cat(batches), torch.arange(rows))
            assert all(len(b) > 1 for b in batches) or size == 1 or rows == 1
            assert max(len(b) for b in batches) <= size + 1


@pytest.mark.parametrize("head", ["adabn", "mm-sada", "audio-adaptive"])
def test_a_set_one_row_past_whole_batches_trains_a_head_with_batchnorm(
    shifted_cache, tmp_path, head
):
    """40 source and 40 target rows in batches of 13: a last batch of one row made BatchNorm
    raise in training ("Expected more than 1 value per channel") at every epoch's end."""
    sizes = {"audio_batch_size": 13, "encoder_batch_size": 13} if head == "audio-adaptive" else {}
    result = _train(shifted_cache, tmp_path / head, head, epochs=2, batch_size=13, **sizes)
    assert runs.is_complete(result.run)
    assert all(np.isfinite(v) for v in result.metrics.values())


def test_a_batch_of_one_is_refused_in_one_line_and_the_fixed_rerun_trains(shifted_cache, tmp_path):
    """batch_size=1 under a BatchNorm: one line that says so (it read "cannot train with the
    cache's inputs ... report this as a bug"), and the rerun with a fixed setting in the same
    folder trains (it was refused as "another configuration" of an unfinished run)."""
    with pytest.raises(ConfigError, match="adabn normalises with BatchNorm, which cannot train"):
        _train(shifted_cache, tmp_path / "run", "adabn", epochs=1, batch_size=1)
    result = _train(shifted_cache, tmp_path / "run", "adabn", epochs=1, batch_size=2)
    assert runs.is_complete(result.run)
    with pytest.raises(ConfigError, match=r"encoder_batch_size: expected an integer >= 2"):
        _train(shifted_cache, tmp_path / "aa", "audio-adaptive", encoder_batch_size=1)


def test_the_bar_in_a_log_file_is_redrawn_at_its_interval_not_every_epoch(
    shifted_cache, tmp_path, monkeypatch
):
    # `avda demo 2> demo.log`: 894 redraws of "train source-only: 0/1170" (the epoch count
    # frozen, the loss postfix redrawing the bar at every epoch)
    import io

    log = io.StringIO()
    monkeypatch.setattr("sys.stderr", log)
    monkeypatch.delenv("TQDM_MININTERVAL", raising=False)
    train(cache=shifted_cache, head="source-only", source=["source"], target=["target"],
          out=tmp_path / "run", seed=0, overrides={"epochs": 60}, progress=True)  # fmt: skip
    draws = [d for d in log.getvalue().split("\r") if "train source-only" in d]
    assert 1 <= len(draws) <= 6, len(draws)  # the first, the last, and every 10 s between
    assert "60/60" in draws[-1]


def test_a_combination_the_head_refuses_leaves_no_run_folder(shifted_cache, tmp_path):
    # the head refused it once its folder held config.yaml and provenance.json: `avda evaluate`
    # then called the folder an unfinished run ("finish it with avda train")
    out = tmp_path / "refused"
    with pytest.raises(ValueError, match="per-modality"):
        _train(shifted_cache, out, head="dann", discriminator="per-modality", fusion="mid")
    assert not out.exists()


def test_a_head_that_never_reads_the_target_does_not_load_it(shifted_cache, tmp_path, monkeypatch):
    """source-only never reads the target training set (not in training, not at evaluation):
    it is loaded empty, and the run is the same as with it loaded; heads that read it (dann in
    training, adabn at evaluation) get every row."""
    from avda.train import setup as setup_lib
    from avda.train.heads.source_only import SourceOnly

    loaded = {}
    load = setup_lib.RunSetup.load

    def record(self, name, rows, stats=None):
        loaded[(self.head, name)] = len(rows)
        return load(self, name, rows, stats)

    monkeypatch.setattr(setup_lib.RunSetup, "load", record)
    lean = _train(shifted_cache, tmp_path / "lean")
    for head in ("dann", "adabn"):
        _train(shifted_cache, tmp_path / head, head=head, epochs=1)
    assert loaded[("source-only", "target_train")] == 0
    assert loaded[("dann", "target_train")] == loaded[("adabn", "target_train")] > 0
    monkeypatch.setattr(SourceOnly, "adapts_at_evaluation", True)  # as before: loaded
    full = _train(shifted_cache, tmp_path / "full")
    assert loaded[("source-only", "target_train")] > 0
    assert lean.metrics == full.metrics


def test_ta3n_without_target_draws_no_target_batch(shifted_cache, tmp_path, monkeypatch):
    """TA3N with use_target=false (the protocols' source-only, the authors' --use_target none)
    trains on source batches alone: the target training set is loaded empty and every step
    gets no target batch; with use_target (TA3N itself) every step gets one."""
    from avda.train import setup as setup_lib
    from avda.train.heads.ta3n import Ta3n

    loaded, targets = {}, []
    load, step = setup_lib.RunSetup.load, Ta3n.training_step

    def record(self, name, rows, stats=None):
        loaded[(self.config.use_target, name)] = len(rows)
        return load(self, name, rows, stats)

    def training_step(self, source, source_labels, target, progress):
        targets.append((self.config.use_target, target is None))
        return step(self, source, source_labels, target, progress)

    monkeypatch.setattr(setup_lib.RunSetup, "load", record)
    monkeypatch.setattr(Ta3n, "training_step", training_step)
    common = {"epochs": 2, "use_bn": "none", "num_segments": 2}
    _train(shifted_cache, tmp_path / "off", head="ta3n", use_target=False, **common)
    _train(shifted_cache, tmp_path / "on", head="ta3n", **common)
    assert loaded[(False, "target_train")] == 0 and loaded[(True, "target_train")] == 40
    assert set(targets) == {(False, True), (True, False)}


def test_a_run_recorded_before_a_field_existed_is_the_same_run(shifted_cache, tmp_path):
    """A finished run whose config.yaml lacks a head-config field added since (here
    labelled_target_pick) is the run the same settings make now: skipped, not refused; a field
    whose recorded value differs still refuses it."""
    import yaml

    out = tmp_path / "run"
    first = _train(shifted_cache, out, epochs=1)
    path = out / runs.CONFIG
    config = yaml.safe_load(path.read_text())
    del config["head_config"]["labelled_target_pick"]
    path.write_text(yaml.safe_dump(config))
    again = _train(shifted_cache, out, epochs=1)
    assert again.skipped and again.metrics == first.metrics
    config["head_config"]["hidden_dim"] = 7
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(RunError, match="head_config.hidden_dim"):
        _train(shifted_cache, out, epochs=1)


@pytest.mark.parametrize(
    ("domains", "charades"), [(("third", "first"), True), (("source", "target"), False)]
)
def test_a_head_with_a_target_term_without_target_training_rows_says_what_to_do(
    tmp_path, domains, charades
):
    """CharadesEgo's v0 files have no first-person training video: DANN on them was refused
    without a word of why or what to do (source-only trains)."""
    cache = tmp_path / "c.zarr"
    make_feature_cache(cache, per_class=4, domains=domains, target_train=False)
    options = {"epochs": 1, "batch_size": 8}
    kwargs = {"cache": cache, "source": [domains[0]], "target": [domains[1]], "progress": False}
    with pytest.raises(CacheError) as caught:
        train(head="dann", out=tmp_path / "dann", overrides=options, **kwargs)
    message = str(caught.value)
    assert f"target domain(s) ['{domains[1]}'] have no 'train' split segments" in message
    assert message.endswith(
        "extract or import the target's training segments into the cache, or train a head "
        "without a target term (source-only, adabn)"
    )
    assert ("build the manifest from the v1 release, `--option version=v1`" in message) is charades
    assert not (tmp_path / "dann").exists()
    train(head="source-only", out=tmp_path / "so", overrides=options, **kwargs)
    assert runs.is_complete(tmp_path / "so")


def test_a_labelled_target_share_without_target_training_rows_says_why(tmp_path):
    """Under audio-adaptive-charadesego (labelled_target 0.5) on a v0 cache, every head was
    refused with 'no labelled target training segment ... or set labelled_target=0': DANN
    then failed again for the target rows that v0 lacks, which the first refusal never said."""
    cache = tmp_path / "c.zarr"
    make_feature_cache(cache, per_class=4, domains=("third", "first"), target_train=False)
    kwargs = {"cache": cache, "source": ["third"], "target": ["first"], "progress": False}
    options = {"epochs": 1, "batch_size": 8, "labelled_target": 0.5}
    with pytest.raises(CacheError) as caught:
        train(head="dann", out=tmp_path / "dann", overrides=options, **kwargs)
    message = str(caught.value)
    assert message.startswith(
        "labelled_target=0.5: target domain(s) ['first'] have no 'train' split segments in "
    )
    assert "CharadesEgo's v0 files, the Actor-Observer release, have no first-person" in message
    assert message.endswith(
        "extract or import the target's training segments into the cache, or set labelled_target=0"
    )
    assert not (tmp_path / "dann").exists()


@pytest.mark.parametrize(("head", "warned"), [("source-only", False), ("dann", True)])
def test_target_rows_a_head_never_reads_are_not_warned_about(tmp_path, caplog, head, warned):
    """A target training row without audio: source-only, which never reads those rows (its
    target set is loaded empty), warned '1 selected segments (target train) have no audio
    input ... their audio features are zeros'; a head that reads them still warns."""
    from tests.conftest import without_audio

    from avda.train import setup

    store = make_feature_cache(tmp_path / "c.zarr", per_class=4)
    first_target_train = int(np.flatnonzero(
        (store.segments["domain"] == "target") & (store.segments["split"] == "train")
    )[0])  # fmt: skip
    without_audio(store, row=first_target_train)
    with caplog.at_level("WARNING", logger="avda.train.data"):
        setup.plan(cache=tmp_path / "c.zarr", head=head, source=["source"], target=["target"])
    assert ("(target train) have no audio input" in caplog.text) is warned
    caplog.clear()
    with caplog.at_level("WARNING", logger="avda.train.data"):  # a labelled share is read
        setup.plan(cache=tmp_path / "c.zarr", head=head, source=["source"], target=["target"],
                   overrides={"labelled_target": 0.5})  # fmt: skip
    assert "(target train) have no audio input" in caplog.text


def _batch_by_indexing(feature_set, index, clips=None):
    """What FeatureSet.batch gave before 2026-12-07: ``x[index]``, converted, statistics
    applied, then one clip per row picked from the prepared batch (the loop's random clips)."""
    inputs = {}
    for m, x in feature_set.inputs.items():
        x = x[index].float()
        if m in feature_set.stats:
            shift, scale = feature_set.stats[m]
            x = (x - shift) / scale
        if clips is not None and m in clips:
            x = x[torch.arange(len(x)), clips[m]][:, None]
        inputs[m] = x
    return inputs, {t: y[index] for t, y in feature_set.labels.items()}


def test_batch_gathers_rows_and_clips_as_indexing_the_prepared_set():
    """FeatureSet.batch gathers with index_select and picks a random clip before converting:
    the same values, bit for bit, as indexing the set and picking from the prepared batch, for
    float16 features with statistics, float32 spatial maps without, and labels."""
    from avda.train.data import FeatureSet

    g = torch.Generator().manual_seed(0)
    n, k = 11, 5
    feature_set = FeatureSet(
        name="source_train",
        rows=np.arange(n),
        uids=np.array([f"u{i}" for i in range(n)]),
        inputs={
            "rgb": (torch.randn(n, k, 7, generator=g) * 3).half(),
            "maps": torch.randn(n, k, 3, 2, 2, generator=g),
        },
        labels={"verb": torch.arange(n) * 7 % 5},
        domains=np.array(["source"] * n),
        stats={"rgb": (torch.randn(7, generator=g), torch.rand(7, generator=g) + 0.1)},
    )
    index = torch.randperm(n, generator=g)[:6]
    clips = {m: torch.randint(0, k, (6,), generator=g) for m in ("rgb", "maps")}
    for chosen in (None, clips, {"rgb": clips["rgb"]}):
        got, labels = feature_set.batch(index, clips=chosen)
        want, want_labels = _batch_by_indexing(feature_set, index, chosen)
        assert got.keys() == want.keys()
        for m in want:
            assert got[m].dtype == torch.float32 and got[m].shape == want[m].shape, m
            assert torch.equal(got[m], want[m]), (m, chosen is None)
        assert torch.equal(labels["verb"], want_labels["verb"])


def test_random_training_clips_train_as_picking_from_the_whole_batch(
    shifted_cache, tmp_path, monkeypatch
):
    """training_clips=random (MM-SADA's sampling) with standardised features: a run whose
    batches pick each row's clip before the conversion gives the same predictions, bit for bit,
    as one whose batches prepare every clip and pick afterwards (as before 2026-12-07)."""
    from avda.train.data import FeatureSet

    options = {"training_clips": "random", "standardize": True, "epochs": 2}
    _train(shifted_cache, tmp_path / "now", head="dann", **options)
    monkeypatch.setattr(
        FeatureSet,
        "batch",
        lambda self, index, device="cpu", clips=None: _batch_by_indexing(self, index, clips),
    )
    _train(shifted_cache, tmp_path / "before", head="dann", **options)
    for name in ("source_test", "target_test"):
        now = runs.read_predictions(tmp_path / "now", name)["scores"]["verb"]
        before = runs.read_predictions(tmp_path / "before", name)["scores"]["verb"]
        np.testing.assert_array_equal(now, before)


def test_single_clip_view_is_a_view_where_a_modality_has_every_clip():
    """MM-SADA's mean-scores test views each clip as a row: a modality with the most clips is
    viewed in place (no copy of the set at each evaluation), one with fewer (a segment-long
    audio window) is repeated at each position, with the same values as indexing both."""
    from avda.train.data import FeatureSet
    from avda.train.loop import single_clip_view

    n = 3
    rgb, audio = torch.randn(n, 4, 5).half(), torch.randn(n, 1, 2)
    feature_set = FeatureSet(
        name="target_test",
        rows=np.arange(n),
        uids=np.array(["a", "b", "c"]),
        inputs={"rgb": rgb, "audio": audio},
        labels={"verb": torch.arange(n)},
        domains=np.array(["target"] * n),
    )
    view = single_clip_view(feature_set)
    assert torch.equal(view.inputs["rgb"], rgb[:, torch.arange(4)].reshape(-1, 1, 5))
    assert view.inputs["rgb"].data_ptr() == rgb.data_ptr()  # no copy
    assert torch.equal(view.inputs["audio"], audio[:, [0, 0, 0, 0]].reshape(-1, 1, 2))
    assert view.uids.tolist() == ["a"] * 4 + ["b"] * 4 + ["c"] * 4
    assert view.labels["verb"].tolist() == [0] * 4 + [1] * 4 + [2] * 4
