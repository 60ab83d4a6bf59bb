"""``avda predict`` / ``avda.predict``: a finished run's head on cache rows, bit for bit as the
run's own final evaluation predicted them."""

from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr
from tests.conftest import make_feature_cache
from tests.train.test_audio_adaptive_pipeline import _train as train_audio_adaptive
from tests.train.test_audio_adaptive_pipeline import make_audio_visual_cache
from tests.train.test_loop import _train as train_run

import avda
from avda import cache as cache_lib
from avda import cli, runs
from avda.errors import CacheError, ConfigError, RunError
from avda.train import heads

MODALITIES = ("rgb", "flow", "audio")
QUICK = [h for h in heads.names() if h != "audio-adaptive"]


def _train(cache, out, head, **overrides):
    # standardised: the run's input statistics change every score (the break-it check)
    return train_run(cache, out, head, **{"epochs": 2, "standardize": True, **overrides})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One small cache and a two-epoch run of every head but audio-adaptive on it."""
    root = tmp_path_factory.mktemp("predict")
    make_feature_cache(root / "c.zarr", shift=0.5, per_class=6, K=5, modalities=MODALITIES)
    for head in QUICK:
        _train(root / "c.zarr", root / head, head)
    return root


def _same_as_stored(run, result, name):
    stored = runs.read_predictions(run, name)
    index = {uid: i for i, uid in enumerate(result.uids.tolist())}
    rows = [index[uid] for uid in stored["uids"].tolist()]
    for task, scores in stored["scores"].items():
        np.testing.assert_array_equal(result.scores[task][rows], scores)
        np.testing.assert_array_equal(result.labels[task][rows], stored["labels"][task])


@pytest.mark.parametrize("head", QUICK)
def test_predict_reproduces_the_runs_own_scores_bit_for_bit(trained, head):
    run = trained / head
    result = avda.predict(run, splits="test", progress=False)
    assert result.sets == {"source_test": 12, "target_test": 12}
    for name in runs.prediction_sets(run):
        _same_as_stored(run, result, name)
    recorded = runs.read_metrics(run)[-1]
    assert result.metrics["target_test/verb/top1"] == recorded["target_test/verb/top1"]


def test_audio_adaptive_predicts_from_its_stages_without_writing_into_the_run(
    tmp_path, monkeypatch
):
    make_audio_visual_cache(
        tmp_path / "c.zarr", source_counts=(6, 5, 4, 3), num_classes=4, target_per_class=4,
        visual=("rgb",),
    )  # fmt: skip
    run = tmp_path / "run"
    train_audio_adaptive(tmp_path / "c.zarr", run, standardize=True)  # TINY's schedule
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    result = avda.predict(run, splits=["test"], progress=False)
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before
    _same_as_stored(run, result, "target_test")  # the stages' stored frozen outputs
    _same_as_stored(run, result, "source_test")
    # the encoders run only on sets the stages do not hold (their frozen outputs are read
    # back set by set): none for a subset of the run's sets, only the new ones otherwise
    from avda.train.audio_adaptive.pipeline import AudioAdaptiveStages

    encoded: list[str] = []
    original = AudioAdaptiveStages._encoder_inputs

    def spy(self, feature_set, visual, index):
        encoded.append(feature_set.name)
        return original(self, feature_set, visual, index)

    monkeypatch.setattr(AudioAdaptiveStages, "_encoder_inputs", spy)
    alone = avda.predict(run, domains="target", splits=["test"], progress=False)
    assert alone.sets == {"target_test": 16} and encoded == []
    _same_as_stored(run, alone, "target_test")
    train_rows = avda.predict(run, splits=["train"], progress=False)
    assert set(encoded) == {"source_train_rows", "target_train_rows"}
    assert np.isfinite(train_rows.scores["verb"]).all()
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before


def test_rows_are_chosen_by_domain_and_split_and_written_as_a_run_writes_them(trained, tmp_path):
    out = tmp_path / "p" / "out.npz"
    result = avda.predict(
        trained / "adabn", domains="target", splits="test", progress=False, out=out
    )
    assert result.sets == {"target_test": 12}
    assert all(uid.startswith("target-test-") for uid in result.uids)
    read = runs.load_predictions(out)
    np.testing.assert_array_equal(read["scores"]["verb"], result.scores["verb"])
    assert (tmp_path / "p" / "out.csv").exists()
    everything = avda.predict(trained / "source-only", progress=False)
    assert everything.sets == {
        "source_train_rows": 24, "source_test": 12, "target_train_rows": 24, "target_test": 12
    }  # fmt: skip
    assert len(everything) == 72 and len(set(everything.uids)) == 72
    with pytest.raises(CacheError, match="predicted domain 'targte'"):
        avda.predict(trained / "dann", domains="targte", progress=False)


def test_another_cache_of_the_same_features_is_predicted_with_the_runs_statistics(
    trained, tmp_path
):
    """A cache extracted later (other segments, the same backbone): AdaBN normalises with the
    run's target statistics, so a target_test row scores as it did on the run's own cache."""
    shutil.copytree(trained / "c.zarr", tmp_path / "copy.zarr")  # other path, same rows
    for head in ("adabn", "ta3n"):
        result = avda.predict(trained / head, tmp_path / "copy.zarr", splits="test",
                              progress=False)  # fmt: skip
        _same_as_stored(trained / head, result, "target_test")
    make_feature_cache(tmp_path / "new.zarr", seed=5, per_class=2, K=5, modalities=MODALITIES)
    result = avda.predict(trained / "mm-sada", tmp_path / "new.zarr", progress=False)
    assert len(result) == 2 * 4 * 2 + 2 * 4 * 1 and np.isfinite(result.scores["verb"]).all()


def test_a_cache_extracted_later_with_other_rows_is_predicted(tmp_path):
    """``avda extract`` records how many rows it finished (``finished_rows``, the store's
    bookkeeping, not how its features were made): a cache of other segments extracted the same
    way differs in it, and was refused (`its audio features differ from those run ... trained
    on (finished_rows: run 60, cache 13)`), README's `avda predict` on a new cache."""

    def extracted(path):
        store = cache_lib.open_cache(path, mode="r+")
        for modality in store.modalities:
            assert store.record_finished(modality)
        return store.num_segments

    make_feature_cache(tmp_path / "c.zarr", per_class=4, K=5)
    trained_rows = extracted(tmp_path / "c.zarr")
    _train(tmp_path / "c.zarr", tmp_path / "run", "source-only", epochs=1)
    make_feature_cache(tmp_path / "new.zarr", per_class=2, K=5, seed=3)
    assert extracted(tmp_path / "new.zarr") != trained_rows
    assert len(avda.predict(tmp_path / "run", tmp_path / "new.zarr", progress=False)) == 24


def test_what_extraction_records_later_is_not_compared_with_a_run_made_before(tmp_path):
    """A run trained on a store made before avda recorded a modality's video timestamps (or
    its precision) predicts a cache that records them: its record holds nothing to compare
    with (it was refused, `video_timestamps: run None, cache 'checked-2026-12-07'`); a
    precision both record, differing, is refused."""
    make_feature_cache(tmp_path / "c.zarr", per_class=4, K=5)
    store = cache_lib.open_cache(tmp_path / "c.zarr", mode="r+")
    for modality in store.modalities:
        store.update_modality_info(modality, precision="fp32")
    _train(tmp_path / "c.zarr", tmp_path / "run", "source-only", epochs=1)
    make_feature_cache(tmp_path / "new.zarr", per_class=2, K=5, seed=3)
    store = cache_lib.open_cache(tmp_path / "new.zarr", mode="r+")
    for modality in store.modalities:
        store.update_modality_info(
            modality, precision="fp32", video_timestamps="checked-2026-12-07"
        )
    assert len(avda.predict(tmp_path / "run", tmp_path / "new.zarr", progress=False)) == 24
    store.update_modality_info(store.modalities[0], precision="bf16")
    with pytest.raises(CacheError, match=r"precision: run 'fp32', cache 'bf16'"):
        avda.predict(tmp_path / "run", tmp_path / "new.zarr", progress=False)


def test_rows_without_audio_are_named_without_trainings_hint(tmp_path, caplog):
    """A predicted row without audio is named once per set, without `--set modalities=[...]
    leaves audio out` (a hint to train without it: the run's modalities are its own; the
    Python API said it in the command line's words), and the run's training rows that an
    adapting head re-reads do not repeat training's warning."""
    cache = tmp_path / "c.zarr"
    make_feature_cache(cache, per_class=4, K=5)
    store = cache_lib.open_cache(cache, mode="r+")
    target = store.segments["domain"] == "target"
    rows = np.flatnonzero((target & (store.segments["split"] == "train")).to_numpy())[:2]
    info = store.modality_info("audio")
    zeros = np.zeros((len(rows), info["num_clips"], info["num_features"]), dtype=np.float32)
    store.write("audio", rows, zeros, np.full(len(rows), 3), ["no audio track"] * 2)
    _train(cache, tmp_path / "run", "adabn", epochs=1)
    caplog.clear()
    with caplog.at_level("WARNING", logger="avda"):
        avda.predict(tmp_path / "run", progress=False)
    named = [r.getMessage() for r in caplog.records if "have no audio input" in r.getMessage()]
    assert len(named) == 1 and "(target train)" in named[0], named
    assert "modalities" not in named[0] and named[0].endswith("their audio features are zeros")


def test_a_cache_of_other_features_is_refused_in_one_line(trained, tmp_path):
    make_feature_cache(tmp_path / "d8.zarr", D=8, K=5, modalities=MODALITIES)
    with pytest.raises(
        CacheError, match=r"its \w+ features differ .*num_features: run 16, cache 8"
    ):
        avda.predict(trained / "dann", tmp_path / "d8.zarr", progress=False)
    make_feature_cache(tmp_path / "rgb.zarr", K=5, modalities=("rgb",))
    with pytest.raises(CacheError, match="has no 'audio' features, which run"):
        avda.predict(trained / "dann", tmp_path / "rgb.zarr", progress=False)


def test_an_unfinished_run_is_refused(trained, tmp_path):
    run = tmp_path / "unfinished"
    shutil.copytree(trained / "source-only", run)
    (run / runs.STATUS).unlink()
    with pytest.raises(RunError, match="is not a finished run"):
        avda.predict(run, progress=False)


def test_a_non_finite_feature_row_is_refused(trained, tmp_path):
    store = make_feature_cache(tmp_path / "nan.zarr", K=5, modalities=MODALITIES)
    array = zarr.open_group(str(store.path), mode="r+")["features"]["rgb"]
    array[3, 0, 0] = np.nan
    with pytest.raises(CacheError, match="non-finite features"):
        avda.predict(trained / "source-only", tmp_path / "nan.zarr", progress=False)


def test_the_command_prints_a_summary_and_fails_in_one_line(trained, tmp_path, capsys):
    out = tmp_path / "preds.npz"
    code = cli.main(["predict", str(trained / "dann"), "--split", "test", "--domain",
                     "target", "-o", str(out), "-q"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert f"{out}: 12 segments predicted" in captured.out
    assert "target_test: 12 segments, verb top-1" in captured.out
    assert runs.load_predictions(out)["uids"].shape == (12,)
    make_feature_cache(tmp_path / "d8.zarr", D=8, K=5, modalities=MODALITIES)
    code = cli.main(["predict", str(trained / "dann"), "--cache", str(tmp_path / "d8.zarr"),
                     "-o", str(out)])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 1 and captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1
    assert captured.err.startswith("error: cache ")
    code = cli.main(["predict", str(trained / "dann"), "-o", str(tmp_path / "p.csv")])
    captured = capsys.readouterr()  # not p.csv.npz and p.csv.csv
    assert code == 1 and "name it p.npz" in captured.err and not list(tmp_path.glob("p.*"))


@pytest.mark.parametrize("head", ["adabn", "source-only"])
def test_the_runs_own_cache_moved_since_is_found_by_its_identity(trained, tmp_path, head):
    """The run's cache moved (the path in config.yaml is gone) and given with --cache: the
    same store (its cache_id), so AdaBN still reads its target training set there."""
    moved = tmp_path / "moved.zarr"
    shutil.copytree(trained / "c.zarr", moved)
    (trained / "c.zarr").rename(tmp_path / "away.zarr")
    try:
        result = avda.predict(trained / head, moved, splits="test", progress=False)
        _same_as_stored(trained / head, result, "target_test")
        with pytest.raises(CacheError, match="needs the cache it trained on"):
            avda.predict(trained / "adabn", progress=False)  # not given: one line
    finally:
        (tmp_path / "away.zarr").rename(trained / "c.zarr")


def test_the_same_weights_file_at_another_path_is_the_same_features(tmp_path):
    """Features extracted elsewhere with the run's weights (the same sha256, fetched to
    another folder) are the run's; other weights (another sha256) are refused."""

    def tag(path, weights, sha):
        store = cache_lib.open_cache(path, mode="r+")
        for modality in store.modalities:
            store.update_modality_info(modality, weights=weights, weights_sha256=sha)

    make_feature_cache(tmp_path / "c.zarr", per_class=4, K=5)
    tag(tmp_path / "c.zarr", "/home/alice/.cache/avda/i3d.pt", "ab" * 32)
    _train(tmp_path / "c.zarr", tmp_path / "run", "source-only", epochs=1)
    make_feature_cache(tmp_path / "new.zarr", per_class=2, K=5, seed=3)
    tag(tmp_path / "new.zarr", "/home/bob/weights/i3d.pt", "ab" * 32)
    assert len(avda.predict(tmp_path / "run", tmp_path / "new.zarr", progress=False)) == 24
    tag(tmp_path / "new.zarr", "/home/alice/.cache/avda/i3d.pt", "cd" * 32)
    with pytest.raises(CacheError, match="weights_sha256: run 'abab"):
        avda.predict(tmp_path / "run", tmp_path / "new.zarr", progress=False)


def test_labels_outside_the_runs_classes_are_refused_in_one_line(trained, tmp_path):
    """A cache whose labels hold class ids the run has no score for (another class table)."""
    make_feature_cache(tmp_path / "six.zarr", num_classes=6, per_class=2, K=5,
                       modalities=MODALITIES)  # fmt: skip
    with pytest.raises(CacheError, match="verb_class holds class id 5, but run .* 4 verb"):
        avda.predict(trained / "source-only", tmp_path / "six.zarr", progress=False)


def test_multi_label_ids_outside_the_runs_classes_are_refused_in_one_line(tmp_path):
    import pandas as pd

    from avda.cache import Status

    def multi_label_cache(path, labels, domains=("source", "target"), seed=0):
        rng = np.random.default_rng(seed)
        segments = pd.DataFrame(
            [
                {"uid": f"{d}-{s}-{i}", "video_id": "v", "domain": d, "split": s,
                 "start_sec": 0.0, "stop_sec": 1.0, "labels": labels[i % len(labels)]}
                for d in domains for s in ("train", "test") for i in range(8)
            ]
        )  # fmt: skip
        store = cache_lib.create(path, segments, manifest_sha256="0" * 64,
                                 recipe={"name": "synthetic"}, chunk_rows=8)  # fmt: skip
        n = len(segments)
        for modality in ("rgb", "audio"):
            store.add_modality(modality, num_clips=2, num_features=8, info={
                "backbone": "synthetic", "weights": None, "weights_sha256": None,
                "input_spec": {}})  # fmt: skip
            x = rng.normal(0, 1, (n, 2, 8))
            store.write(modality, np.arange(n), x, np.full(n, int(Status.DONE)), [""] * n)

    multi_label_cache(tmp_path / "c.zarr", ["0;1", "2", "3;4", ""])
    _train(tmp_path / "c.zarr", tmp_path / "run", "source-only", epochs=1)
    multi_label_cache(tmp_path / "new.zarr", ["1;7", "2"], seed=1)
    with pytest.raises(CacheError, match="labels holds class id 7, but run .* 5 labels"):
        avda.predict(tmp_path / "run", tmp_path / "new.zarr", progress=False)


def _edit_provenance(path, change):
    from avda.cache import schema

    group = zarr.open_group(str(path), mode="r+")
    provenance = dict(group.attrs[schema.ROOT_ATTRIBUTE])
    change(provenance)
    group.attrs[schema.ROOT_ATTRIBUTE] = provenance


def test_another_recipe_or_class_table_is_refused_in_one_line(trained, tmp_path):
    """A cache of the run's backbone but another recipe (another crop), or whose class table
    names the same number of classes otherwise, would be scored silently wrong: refused."""
    import json

    run = tmp_path / "run"
    shutil.copytree(trained / "source-only", run)
    recorded = json.loads((run / runs.PROVENANCE).read_text())
    recorded["recipe"] = {"name": "audio-adaptive", "crop_size": 256, "clips": 5}
    recorded["classes"] = {"verb_class": ["open", "close", "take", "put"]}
    (run / runs.PROVENANCE).write_text(json.dumps(recorded))
    shutil.copytree(trained / "c.zarr", tmp_path / "new.zarr")
    store = cache_lib.open_cache(tmp_path / "new.zarr")

    def other(recipe, classes):
        def change(provenance):
            provenance.update(cache_id="another", recipe=recipe, classes=classes)

        _edit_provenance(store.path, change)

    other({"name": "mine", "crop_size": 256, "clips": 5}, recorded["classes"])  # same settings
    assert len(avda.predict(run, store.path, splits="test", progress=False)) == 24
    other({"name": "audio-adaptive-224", "crop_size": 224, "clips": 5}, recorded["classes"])
    with pytest.raises(CacheError, match=r"another recipe .*crop_size: run 256, cache 224"):
        avda.predict(run, store.path, progress=False)
    other(recorded["recipe"], {"verb_class": ["close", "open", "take", "put"]})
    with pytest.raises(CacheError, match="its verb_class class table is not the one"):
        avda.predict(run, store.path, progress=False)


def test_an_adapting_head_refuses_when_the_runs_training_rows_changed(trained, tmp_path):
    """AdaBN normalises with the run's target training rows at evaluation: with those rows
    changed since (here: one more extracted), its scores would move silently; evaluation rows
    added do not matter."""
    moved = tmp_path / "c.zarr"
    shutil.copytree(trained / "c.zarr", moved)
    store = cache_lib.open_cache(moved)
    segments = store.segments
    target_train = np.flatnonzero(
        ((segments["domain"] == "target") & (segments["split"] == "train")).to_numpy()
    )
    from avda.cache import schema

    status = zarr.open_group(str(moved), mode="r+")[schema.STATUS_GROUP]["rgb"]
    result = avda.predict(trained / "adabn", moved, splits="test", progress=False)
    _same_as_stored(trained / "adabn", result, "target_test")  # unchanged: predicted
    status[int(target_train[0])] = int(schema.Status.FAILED)
    with pytest.raises(RunError, match="target_train rows of .* changed since run"):
        avda.predict(trained / "adabn", moved, splits="test", progress=False)


def test_each_domain_the_run_never_saw_is_a_set_of_its_own(trained, tmp_path):
    """The run's target domains are predicted together (as its evaluation did), every other
    domain apart (``target_<split>@<domain>``), so statistics estimated on a predicted set
    never mix two unseen domains; the scores of those rows do not depend on the grouping for a
    head that does not adapt at evaluation."""
    import yaml

    run = tmp_path / "run"
    shutil.copytree(trained / "source-only", run)
    config = yaml.safe_load((run / runs.CONFIG).read_text())
    config["target"] = ["elsewhere"]  # the cache's "target" rows: a domain this run never saw
    (run / runs.CONFIG).write_text(yaml.safe_dump(config))
    result = avda.predict(run, splits="test", progress=False)
    assert result.sets == {"source_test": 12, "target_test@target": 12}
    stored = runs.read_predictions(trained / "source-only", "target_test")
    np.testing.assert_array_equal(result.scores["verb"][12:], stored["scores"]["verb"])


def test_the_output_says_each_rows_set_and_never_goes_into_the_run(trained, tmp_path, capsys):
    """A new user wrote ``-o RUN/predictions/target_test.npz``: the run's own file was
    replaced and ``avda evaluate`` read 240 rows as its target test. Refused now, before any
    work; the files name each row's set; ``top1`` per set; a short repr."""
    run = trained / "dann"
    before = (run / runs.PREDICTIONS / "target_test.npz").read_bytes()
    inside = run / runs.PREDICTIONS / "target_test.npz"
    code = cli.main(["predict", str(run), "-o", str(inside), "-q"])
    assert code == 1 and "is inside run" in capsys.readouterr().err
    assert (run / runs.PREDICTIONS / "target_test.npz").read_bytes() == before
    result = avda.predict(run, splits="test", progress=False)
    with pytest.raises(ConfigError, match="is inside run"):
        result.save(inside)
    with pytest.raises(ConfigError, match="name it p.npz"):
        result.save(tmp_path / "p.NPZ")
    path = result.save(tmp_path / "p.npz")
    assert np.load(path)["set"].tolist() == ["source_test"] * 12 + ["target_test"] * 12
    assert open(tmp_path / "p.csv").readline().startswith("uid,set,")
    # the same table as a DataFrame, without writing and parsing the .csv
    frame = result.to_frame()
    assert list(frame.columns) == ["uid", "set", "verb_label", "verb_prediction"]
    written = pd.read_csv(tmp_path / "p.csv", dtype={"uid": str})
    pd.testing.assert_frame_equal(frame, written, check_dtype=False)
    assert result.top1("verb", set="target_test") == pytest.approx(
        runs.read_metrics(run)[-1]["target_test/verb/top1"]
    )
    assert repr(result) == (
        "Predictions(24 segments; source_test: 12, target_test: 12; tasks verb)"
    )
    with pytest.raises(ConfigError, match="no task 'noun'; its tasks: verb"):
        result.top1("noun")
    with pytest.raises(ConfigError, match=r"2 sets were predicted \(source_test, target_test\)"):
        result.top1("verb")  # source and target rows together: no run's metric


def test_top1_is_one_sets_accuracy_over_its_labelled_rows():
    """``top1(task)`` counted every predicted row: source with target, the run's training rows
    with its test rows. It is one set's (the only one, or the one named), as ``metrics``
    holds it; a row without a label (-1: an unlabelled target row) is never counted."""
    from avda.train.predict import Predictions

    scores = np.eye(3)[[0, 1, 2, 0, 1, 2]].astype("float32")  # predicts 0, 1, 2, 0, 1, 2
    labels = np.array([0, 2, 2, 0, -1, -1])  # source_test 2/3 right; target: one labelled row
    both = Predictions(
        uids=np.array(list("abcdef")), labels={"verb": labels}, scores={"verb": scores},
        sets={"source_test": 3, "target_train_rows": 3}, metrics={},
    )  # fmt: skip
    with pytest.raises(ConfigError, match=r"name one, e\.g\. top1\('verb', set='target_"):
        both.top1("verb")
    assert both.top1("verb", set="source_test") == pytest.approx(2 / 3)
    assert both.top1("verb", set="target_train_rows") == 1.0  # the -1 rows are not counted
    with pytest.raises(ConfigError, match="no predicted set 'target_test'; sets: source_test"):
        both.top1("verb", set="target_test")
    one = Predictions(
        uids=np.array(list("def")), labels={"verb": labels[3:]}, scores={"verb": scores[3:]},
        sets={"target_test": 3}, metrics={},
    )  # fmt: skip
    assert one.top1("verb") == 1.0
    unlabelled = dataclasses.replace(one, labels={"verb": np.full(3, -1)})
    assert unlabelled.top1("verb") is None


def test_a_run_without_per_set_digests_warns_when_its_rows_changed(trained, tmp_path, caplog):
    """Runs recorded before ``training_sets_sha256`` have one digest of all their sets: when
    the rows no longer match it, predict warns (it cannot tell training rows from evaluation
    rows added, so it does not refuse); with the rows unchanged, nothing is said."""
    import json

    from avda.cache import schema

    run, moved = tmp_path / "adabn", tmp_path / "c.zarr"
    shutil.copytree(trained / "adabn", run)
    shutil.copytree(trained / "c.zarr", moved)
    provenance = json.loads((run / runs.PROVENANCE).read_text())
    del provenance["run_data"]["training_sets_sha256"]
    (run / runs.PROVENANCE).write_text(json.dumps(provenance))
    with caplog.at_level("WARNING", logger="avda.train.predict"):
        result = avda.predict(run, moved, splits="test", progress=False)
    assert "predates" not in caplog.text
    _same_as_stored(trained / "adabn", result, "target_test")
    segments = cache_lib.open_cache(moved).segments
    target_train = np.flatnonzero(
        ((segments["domain"] == "target") & (segments["split"] == "train")).to_numpy()
    )
    status = zarr.open_group(str(moved), mode="r+")[schema.STATUS_GROUP]["rgb"]
    status[int(target_train[0])] = int(schema.Status.FAILED)
    with caplog.at_level("WARNING", logger="avda.train.predict"):
        avda.predict(run, moved, splits="test", progress=False)
    assert "predates avda's digest of each training set" in caplog.text


def test_an_interrupted_predictions_write_leaves_no_table_cut_short(tmp_path, monkeypatch):
    """save_predictions writes the .npz and its .csv atomically (the .csv was written in
    place: a kill left the table for people with rows missing beside a whole .npz)."""
    uids = np.array([f"u{i}" for i in range(50)])
    labels = {"verb": np.arange(50) % 3}
    scores = {"verb": np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)}
    path = runs.save_predictions(tmp_path / "p.npz", uids, labels, scores)
    before = (tmp_path / "p.csv").read_bytes()
    real = pd.DataFrame.to_csv

    def half(self, target=None, *args, **kwargs):
        text = real(self, None, *args, **kwargs)
        if target is None:
            return text
        Path(target).write_bytes(text[: len(text) // 2].encode())
        raise KeyboardInterrupt

    def half_text(self, data, *args, **kwargs):
        Path.write_bytes(self, data[: len(data) // 2].encode())
        raise KeyboardInterrupt

    monkeypatch.setattr(pd.DataFrame, "to_csv", half)
    monkeypatch.setattr(Path, "write_text", half_text)
    with pytest.raises(KeyboardInterrupt):
        runs.save_predictions(path, uids[::-1], labels, scores)
    monkeypatch.undo()
    assert (tmp_path / "p.csv").read_bytes() == before
    assert len(runs.load_predictions(tmp_path / "p.npz")["uids"]) == 50
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.csv", "p.npz"]


def test_avda_predict_refuses_an_out_naming_a_folder_before_any_work(
    trained, tmp_path, monkeypatch
):
    """``avda.predict(run, out="sub/")`` predicted every row, then was told ``name it sub.npz``
    (the slash dropped) and the predictions were lost; ``out=".npz"`` was told ``.npz.npz``.
    Refused before any work now, as ``avda predict -o`` (docs/cli.md, "Output paths"), in the
    keyword's words."""
    from avda.train import predict as predict_lib

    def no_work(*args, **kwargs):
        raise AssertionError("predicted before out was checked")

    monkeypatch.setattr(predict_lib, "predict_run", no_work)
    monkeypatch.chdir(tmp_path)
    write = "give the path of the file to write"
    for out, expected in (
        ("sub/", f"out sub/ names a folder; {write}: sub/predictions.npz"),
        (".npz", f"out .npz is a file type alone; {write}: predictions.npz"),
        ("p.csv", "out p.csv: avda predict writes a .npz (and its .csv beside it); name it p.npz"),
    ):
        with pytest.raises(ConfigError, match=f"^{re.escape(expected)}$"):
            avda.predict(trained / "dann", out=out, progress=False)
    assert not list(tmp_path.iterdir())


def test_training_predicting_and_evaluating_do_not_import_scipy_or_sklearn():
    """scipy and scikit-learn (4 s of a 12 s `avda predict`) are imported only by what uses
    them: the audio-adaptive head's clustering, EPIC-100's action scores, report plots."""
    import subprocess
    import sys

    code = (
        "import sys, avda.cli, avda.api, avda.train.loop, avda.train.predict, avda.train.heads, "
        "avda.evaluate, avda.scoring.protocols\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'scipy', 'sklearn'}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    assert done.stdout.strip() == "[]", done.stdout + done.stderr
