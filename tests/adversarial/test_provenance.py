"""A run stays on the cache it started on (issue 18, item 5; docs/security.md, Runs and caches).

A cache rebuilt at the same path is another cache: a run that trained on the first refuses to
resume (or to report itself complete) on the second, with one line naming the cache and how to
start fresh, and its ``provenance.json`` is left as it was.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from avda.cache import open_cache
from tests.adversarial._cli import one_line, run
from tests.conftest import make_feature_cache


def train_args(cache: Path, out: Path, epochs: int = 2) -> list:
    return ["train", "--head", "source-only", "--cache", cache, "--source", "source",
            "--target", "target", "-o", out, "--epochs", str(epochs), "--quiet"]  # fmt: skip


@pytest.fixture
def trained(tmp_path, capsys, monkeypatch) -> tuple[Path, Path]:
    monkeypatch.delenv("AVDA_DEBUG", raising=False)
    cache, out = tmp_path / "c.zarr", tmp_path / "run"
    make_feature_cache(cache, per_class=3)
    code, _, err = run(capsys, *train_args(cache, out))
    assert code == 0, err
    return cache, out


def rebuild(cache: Path) -> None:
    """The same command that made the cache, run again after removing it."""
    shutil.rmtree(cache)
    make_feature_cache(cache, per_class=3)


def test_every_new_cache_gets_its_own_id(tmp_path):
    make_feature_cache(tmp_path / "a.zarr", per_class=2)
    make_feature_cache(tmp_path / "b.zarr", per_class=2)
    first = open_cache(tmp_path / "a.zarr").provenance["cache_id"]
    second = open_cache(tmp_path / "b.zarr").provenance["cache_id"]
    assert len(first) == 32 and first != second


def test_an_unfinished_run_refuses_to_resume_on_a_rebuilt_cache(trained, capsys):
    cache, out = trained
    (out / "run.json").unlink()  # interrupted after its last checkpoint
    recorded = (out / "provenance.json").read_text()
    rebuild(cache)
    code, _, err = run(capsys, *train_args(cache, out))
    assert code == 1
    message = one_line(err)
    assert f"{out} was trained on another cache than the one now at {cache.resolve()}" in message
    assert "another -o" in message and "remove" in message, message
    assert f"(the run's: at {cache.resolve()}, created" in message or (
        f"(the run's: at {cache}, created" in message
    ), message
    assert (out / "provenance.json").read_text() == recorded
    assert not (out / "run.json").exists()


def test_a_finished_run_is_not_reported_complete_on_a_rebuilt_cache(trained, capsys):
    cache, out = trained
    rebuild(cache)
    code, _, err = run(capsys, *train_args(cache, out))
    assert code == 1
    assert "was trained on another cache" in one_line(err)


def test_resuming_on_the_same_cache_still_works(trained, capsys):
    cache, out = trained
    recorded = json.loads((out / "provenance.json").read_text())
    assert recorded["cache_id"] == open_cache(cache).provenance["cache_id"]
    (out / "run.json").unlink()
    code, out_text, err = run(capsys, *train_args(cache, out))
    assert code == 0, err
    assert "done" in out_text
    code, out_text, err = run(capsys, *train_args(cache, out))
    assert code == 0 and "already complete" in out_text


def test_a_cache_without_an_id_is_compared_by_its_creation_time(tmp_path):
    from avda.train.loop import same_cache

    old = {"created": "2026-01-01T00:00:00+00:00", "manifest_sha256": "a"}
    assert same_cache(old, dict(old))
    assert not same_cache(old, {**old, "created": "2026-01-02T00:00:00+00:00"})
    assert same_cache({**old, "cache_id": "x"}, {**old, "cache_id": "x", "num_segments": 9})
    assert not same_cache({**old, "cache_id": "x"}, {**old, "cache_id": "y"})


def test_a_damaged_provenance_json_is_one_line(trained, capsys):
    cache, out = trained
    (out / "run.json").unlink()
    (out / "provenance.json").write_text('{"cache_id": "ab')
    code, _, err = run(capsys, *train_args(cache, out))
    assert code == 1
    assert f"{out / 'provenance.json'} is damaged" in one_line(err)


def test_a_sweep_does_not_skip_a_finished_run_of_a_rebuilt_cache(tmp_path, capsys, monkeypatch):
    import yaml

    from avda import sweep

    monkeypatch.delenv("AVDA_DEBUG", raising=False)
    cache = tmp_path / "c.zarr"
    make_feature_cache(cache, per_class=3)
    spec = {
        "cache": str(cache),
        "heads": [{"name": "source-only", "epochs": 2}],
        "settings": ["source->target"],
        "seeds": [0],
        "out": str(tmp_path / "runs"),
    }
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    task = sweep.plan(sweep.load_spec(tmp_path / "s.yaml"), tmp_path / "runs")[0]
    code, _, err = run(capsys, *train_args(cache, task.run))
    assert code == 0, err
    summary = sweep.run_sweep(tmp_path / "s.yaml", progress=False)
    assert summary.outcomes[task.name].status == "skipped"
    rebuild(cache)
    summary = sweep.run_sweep(tmp_path / "s.yaml", progress=False)
    outcome = summary.outcomes[task.name]
    assert outcome.status == "failed" and "was trained on another cache" in outcome.error


def test_an_unfinished_run_resumes_after_its_extraction_recorded_it_finished(trained, capsys):
    """`avda extract` run again on the finished cache (nothing to do) records its
    ``finished_rows``, the store's bookkeeping, not its features: the interrupted run resumes
    (it was refused: `started on ... before its rgb features (finished_rows None -> 48)
    changed`). So does a run that recorded it when it started (until 2026-12-07)."""
    cache, out = trained
    store = open_cache(cache, mode="a")
    for modality in store.modalities:
        assert store.record_finished(modality)
    (out / "run.json").unlink()  # interrupted after its last checkpoint
    code, _, err = run(capsys, *train_args(cache, out))
    assert code == 0, err
    assert (out / "run.json").exists()
    provenance = json.loads((out / "provenance.json").read_text())
    for modality, info in provenance["run_data"]["modalities"].items():
        assert "finished_rows" not in info
        info["finished_rows"] = store.finished_rows(modality)
    (out / "provenance.json").write_text(json.dumps(provenance))
    (out / "run.json").unlink()
    code, _, err = run(capsys, *train_args(cache, out))
    assert code == 0, err


@pytest.mark.parametrize("change", ["append", "recompute", "fail-a-row"])
def test_an_unfinished_run_refuses_to_resume_on_its_cache_changed_since(trained, capsys, change):
    """The same store (same cache id), changed under an interrupted run: rows appended by
    `avda cache import`, a modality recomputed in place (`avda extract --force` at another
    precision), a row failed by a later extraction. Resuming trained the rest of the run on
    other data than its first epochs, and its provenance.json still named the old cache."""
    import numpy as np
    import pandas as pd

    from avda.cache import Status

    cache, out = trained
    (out / "run.json").unlink()  # interrupted after its last checkpoint
    recorded = (out / "provenance.json").read_text()
    store = open_cache(cache, mode="a")
    if change == "append":
        row = store.segments.iloc[[0]].assign(uid="added-0")
        new = store.append_segments(pd.DataFrame(row))
        for modality in store.modalities:
            info = store.modality_info(modality)
            x = np.zeros((1, info["num_clips"], info["num_features"]), dtype=np.float32)
            store.write(modality, new, x, np.array([int(Status.DONE)]), [""])
        expected = "rows changed"
    elif change == "recompute":
        store.update_modality_info("rgb", precision="float32")
        expected = "rgb features (precision None -> float32) changed"
    else:
        info = store.modality_info("audio")
        x = np.zeros((1, info["num_clips"], info["num_features"]), dtype=np.float32)
        store.write("audio", np.array([0]), x, np.array([int(Status.FAILED)]), ["decode error"])
        expected = "the segments it trains or evaluates on"
    code, _, err = run(capsys, *train_args(cache, out))
    assert code == 1
    message = one_line(err)
    assert f"{out} was started on" in message and expected in message, message
    assert "to continue it, restore the cache as it was" in message
    assert (out / "provenance.json").read_text() == recorded
    assert not (out / "run.json").exists()
