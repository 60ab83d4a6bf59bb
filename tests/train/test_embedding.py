"""``avda.train.embedding.head_embedding``: the report's embedding of a finished run rebuilds
the head on the rows the run trained with."""

from __future__ import annotations

import numpy as np
from tests.conftest import make_feature_cache
from tests.train.test_loop import _train as train_run

from avda.cache import open_cache
from avda.train import data as data_lib
from avda.train.embedding import head_embedding
from avda.train.setup import RunSetup, training_rows


def _rows_loaded(monkeypatch) -> dict[str, np.ndarray]:
    """The rows of each set ``RunSetup.load`` is asked for, by set name, from now on."""
    loaded: dict[str, np.ndarray] = {}
    load = RunSetup.load

    def spy(self, name, rows, *args, **kwargs):
        loaded[name] = np.asarray(rows).copy()
        return load(self, name, rows, *args, **kwargs)

    monkeypatch.setattr(RunSetup, "load", spy)
    return loaded


def test_an_adapting_heads_target_set_is_the_runs_unlabelled_target_rows(tmp_path, monkeypatch):
    """AdaBN normalises with the target's training rows: those the run trained with
    (``training_rows``), here without the labelled half of the target moved into the
    labelled set, not every target training row."""
    cache, run = tmp_path / "c.zarr", tmp_path / "run"
    make_feature_cache(cache, shift=0.5, per_class=6)
    train_run(cache, run, "adabn", epochs=1, labelled_target=0.5)
    loaded = _rows_loaded(monkeypatch)
    embedding = head_embedding(run, max_points=40)
    assert np.isfinite(embedding.after).all()
    setup = RunSetup.from_run(run)
    store = open_cache(cache)
    _, unlabelled = training_rows(store, ["source"], ["target"], setup.modalities, setup.config)
    every = data_lib.select_rows(store, ["target"], ["train"], setup.modalities)
    assert 0 < len(unlabelled) < len(every)
    np.testing.assert_array_equal(loaded["target_train"], unlabelled)


def test_unlabelled_only_rows_are_not_drawn_as_source_points(tmp_path, monkeypatch):
    """A source domain's rows marked ``unlabelled_only`` (CharadesEgo's whole-video rows,
    first-person as source) are never source rows in training, nor source points here."""
    import zarr

    cache, run = tmp_path / "c.zarr", tmp_path / "run"
    make_feature_cache(cache, shift=0.5, per_class=6)
    store = open_cache(cache)
    marks = np.where(
        (store.segments["domain"] == "source").to_numpy()
        & (np.arange(store.num_segments) % 2 == 0),
        "yes",
        "",
    )
    group = zarr.open_group(str(cache / "segments"), mode="r+")
    group.create_array("unlabelled_only", shape=marks.shape, dtype=str)[:] = marks
    train_run(cache, run, "adabn", epochs=1)
    loaded = _rows_loaded(monkeypatch)
    head_embedding(run, max_points=400)
    marked = np.flatnonzero(marks == "yes")
    assert len(loaded["source_embedding"]) and not np.isin(loaded["source_embedding"], marked).any()
