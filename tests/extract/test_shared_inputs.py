"""Rows that read the same input (same video, times and clip sampling; CharadesEgo's 10 test
clips of a video shorter than a window) are decoded and encoded once, every row written."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pandas as pd
import pytest
from tests.extract.conftest import sigkill_mid_extraction

from avda.cache import FeatureCache, Status, open_cache
from avda.extract import inference, inputs, runner, sampling

RECIPE = sampling.get("demo")


def _duplicated(manifest: pd.DataFrame) -> pd.DataFrame:
    """Three segments, then copies of the first two under other uids (other labels too): rows
    0, 3, 5 read one input, 1 and 4 another, 2 its own; chunks of 2 rows split each group."""
    base = manifest.head(3)
    copies = base.iloc[[0, 1, 0]].copy()
    copies["uid"] = [f"{uid}_copy{k}" for k, uid in enumerate(copies["uid"])]
    if "verb_class" in copies:
        copies["verb_class"] = (copies["verb_class"] + 1) % 2
    return pd.concat([base, copies], ignore_index=True)


GROUPS = [[0, 3, 5], [1, 4], [2]]


@pytest.fixture
def counted(monkeypatch):
    """How often each row was decoded (a dataset item) and encoded (given to the backbone)."""
    calls: dict[str, list[int]] = {"decoded": [], "encoded": []}
    getitem, add = inputs.SegmentDataset.__getitem__, inference.BatchRunner.add

    def decoded(self, index):
        item = getitem(self, index)
        calls["decoded"].append(item[0])
        return item

    def encoded(self, row, x):
        calls["encoded"].append(row)
        return add(self, row, x)

    monkeypatch.setattr(inputs.SegmentDataset, "__getitem__", decoded)
    monkeypatch.setattr(inference.BatchRunner, "add", encoded)
    return calls


def _extract(frame, videos, out, **kwargs):
    return runner.extract(
        frame,
        recipe=RECIPE,
        modalities=["rgb"],
        videos=videos,
        out=out,
        workers=0,
        chunk_rows=2,
        batch_size=4,
        progress=False,
        **kwargs,
    )


def test_shared_inputs_groups_rows_by_what_they_read(demo_dataset):
    _, manifest = demo_dataset
    frame = _duplicated(manifest)
    found = inputs.shared_inputs(frame, np.arange(len(frame)), RECIPE)
    assert {k: v.tolist() for k, v in found.items()} == {g[0]: g for g in GROUPS}
    # a shard's (or a resume's) rows: groups among those rows only
    found = inputs.shared_inputs(frame, np.array([3, 4, 5]), RECIPE)
    assert {k: v.tolist() for k, v in found.items()} == {3: [3, 5], 4: [4]}
    # the random placement draws each row's clips from its uid: no two rows share them
    random = sampling.Recipe.from_dict({**RECIPE.to_dict(), "placement": "random"})
    assert len(inputs.shared_inputs(frame, np.arange(len(frame)), random)) == len(frame)


def test_each_distinct_input_is_decoded_and_encoded_once(demo_dataset, tmp_path, counted):
    root, manifest = demo_dataset
    frame = _duplicated(manifest)
    result = _extract(frame, root, tmp_path / "s.zarr")
    assert result.ok and result.done == len(frame)
    assert sorted(counted["decoded"]) == sorted(counted["encoded"]) == [0, 1, 2]
    features = open_cache(tmp_path / "s.zarr").load("rgb")
    for group in GROUPS:
        for row in group[1:]:
            np.testing.assert_array_equal(features[row], features[group[0]])
    assert not np.array_equal(features[0], features[1])


def test_a_failed_shared_input_fails_every_row_reading_it(demo_dataset, tmp_path, counted):
    root, manifest = demo_dataset
    videos = tmp_path / "videos"
    shutil.copytree(root / "videos", videos / "videos")
    frame = _duplicated(manifest)
    broken = frame["video_path"].iloc[0]
    (videos / broken).write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
    bad = (frame["video_path"] == broken).to_numpy()
    result = _extract(frame, videos, tmp_path / "f.zarr")
    store = open_cache(tmp_path / "f.zarr")
    status, errors = store.status("rgb"), store.errors("rgb")
    assert np.all(status[bad] == Status.FAILED) and np.all(status[~bad] == Status.DONE)
    assert len(set(errors[bad])) == 1 and "cannot" in errors[bad][0]
    assert set(result.failures["uid"]) == set(frame["uid"][bad])
    # each distinct input read once, the broken one too
    assert len(counted["decoded"]) == len(inputs.shared_inputs(frame, np.arange(6), RECIPE))


def test_a_run_killed_between_a_shared_inputs_writes_resumes_every_row(
    demo_dataset, tmp_path, counted, monkeypatch
):
    """Chunks of 2 rows: the first chunk's write (rows 0, 1) lands, the run dies before the
    chunk of row 3 (row 0's copy) is written; the rerun computes the pending rows only."""
    root, manifest = demo_dataset
    frame = _duplicated(manifest)
    out = tmp_path / "k.zarr"
    write = FeatureCache.write

    def dies_after_the_first(self, *args, **kwargs):
        if open_cache(out).status("rgb").any():
            raise RuntimeError("killed")
        return write(self, *args, **kwargs)

    monkeypatch.setattr(FeatureCache, "write", dies_after_the_first)
    with pytest.raises(RuntimeError, match="killed"):
        _extract(frame, root, out)
    status = open_cache(out).status("rgb")
    assert status.tolist() == [Status.DONE, Status.DONE] + [Status.PENDING] * 4
    monkeypatch.setattr(FeatureCache, "write", write)
    counted["decoded"].clear()
    result = _extract(frame, root, out)
    assert result.ok and result.done == len(frame)
    assert sorted(counted["decoded"]) == [2, 3, 4]  # rows 3 and 5 one input, 4 another
    features = open_cache(out).load("rgb")
    for group in GROUPS:
        for row in group[1:]:  # a resumed row: recomputed in another batch, float16 rounding
            np.testing.assert_allclose(features[row], features[group[0]], rtol=2e-3, atol=2e-3)


def test_the_failure_of_a_shared_input_names_each_rows_own_segment(demo_dataset, tmp_path):
    """Rows 0, 3 and 5 run past their video: each row's recorded error names its own segment
    (rows 3 and 5 said "segment '<row 0's uid>' runs to ...: fix its times", whose fix, made
    on row 0 alone, left them failing), as the failures listed do."""
    root, manifest = demo_dataset
    frame = _duplicated(manifest)
    frame.loc[[0, 3, 5], "stop_sec"] = 10_000.0
    result = _extract(frame, root, tmp_path / "t.zarr")
    errors = open_cache(tmp_path / "t.zarr").errors("rgb")
    for row in (0, 3, 5):
        assert errors[row].startswith(f"segment {frame['uid'].iloc[row]!r} "), errors[row]
    listed = result.failures.set_index("uid")["error"]
    assert all(listed[uid].startswith(f"segment {uid!r} ") for uid in frame["uid"].iloc[[0, 3, 5]])


def test_sigkill_between_a_shared_inputs_writes_then_rerun_equals_an_uninterrupted_run(
    demo_dataset, tmp_path
):
    """A real SIGKILL of `avda extract` while rows that share inputs are written (chunks of 2
    rows split every group): the rerun leaves no row pending, and every row equals an
    uninterrupted extraction of the same rows, copies included."""
    import subprocess

    root, manifest = demo_dataset
    frame = _duplicated(manifest)
    manifest_path = tmp_path / "manifest.csv"
    frame.to_csv(manifest_path, index=False)
    reference = tmp_path / "reference.zarr"
    assert _extract(frame, root, reference).ok
    out = tmp_path / "killed.zarr"
    # one input per forward pass: the statuses advance while it runs
    command = sigkill_mid_extraction(
        manifest_path, root, out, modalities="rgb", batch_size=1, least=1
    )
    done = open_cache(out).status("rgb") == Status.DONE
    assert done.sum() < len(frame)
    # the state the test is about: a group of rows sharing an input half written (inputs of
    # rows 0 and 1 written with their chunks (0, 1) and (4, 5), row 3's chunk still pending)
    assert any(0 < done[group].sum() < len(group) for group in GROUPS), done

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    resumed, expected = open_cache(out), open_cache(reference)
    assert np.all(resumed.status("rgb") == Status.DONE)
    assert resumed.verify().empty
    # equal up to float16 rounding: the rerun batches other inputs together
    np.testing.assert_allclose(resumed.load("rgb"), expected.load("rgb"), rtol=2e-3, atol=2e-3)
    for group in GROUPS:
        for row in group[1:]:
            np.testing.assert_allclose(
                resumed.load("rgb")[row], resumed.load("rgb")[group[0]], rtol=2e-3, atol=2e-3
            )
