"""Nothing non-finite is ever `done`: the write gate (features, float16 overflow, spatial maps,
imports), `cache info` / failures(), and readers refusing NaN/inf left by older caches."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import zarr
from tests.conftest import make_feature_cache

from avda import cache as cache_lib
from avda import cli
from avda.cache import Status, interop, open_cache
from avda.errors import CacheError
from avda.extract.writer import ChunkWriter

DONE, FAILED = int(Status.DONE), int(Status.FAILED)


def _store(path, n=6, K=2, D=3, spatial_shape=None):
    segments = pd.DataFrame(
        {
            "uid": [f"u{i}" for i in range(n)],
            "video_id": ["v"] * n,
            "domain": ["a"] * n,
            "split": ["train"] * n,
            "start_sec": np.arange(n, dtype=float),
            "stop_sec": np.arange(n) + 0.5,
        }
    )
    store = cache_lib.create(path, segments, manifest_sha256="0", recipe={}, chunk_rows=4)
    store.add_modality(
        "rgb", num_clips=K, num_features=D, info={"backbone": "x"}, spatial_shape=spatial_shape
    )
    return store


def _run(capsys, *args):
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_nan_inf_and_float16_overflow_rows_are_written_failed(tmp_path, caplog):
    store = _store(tmp_path / "c.zarr")
    features = np.random.default_rng(0).normal(size=(6, 2, 3)).astype(np.float32)
    features[1, 0, 2] = np.nan
    features[2, :, 0] = np.inf
    features[4, 1, 1] = 1e6  # finite in float32, inf in the stored float16
    with caplog.at_level(logging.WARNING, logger="avda.cache.store"):
        store.write("rgb", np.arange(6), features, np.full(6, DONE), [""] * 6)

    store = open_cache(tmp_path / "c.zarr")
    assert store.status("rgb").tolist() == [DONE, FAILED, FAILED, DONE, FAILED, DONE]
    errors = store.errors("rgb")
    assert errors[1].startswith("non-finite features (NaN/inf) in 1 of 2 clips")
    assert "in 2 of 2 clips" in errors[2] and "`avda extract --retry-failed`" in errors[2]
    # the record is read from the CLI and from Python (avda.extract's failures, open_cache's
    # failures()): it said only "then --retry-failed", an option the API does not have
    assert "Python: avda.extract(..., retry_failed=True)" in errors[2]
    assert "65504 overflow float16" in errors[4] and "65504" not in errors[1]
    assert errors[0] == errors[3] == ""
    assert not np.any(store.features("rgb")[[1, 2, 4]])  # failed rows hold zeros
    np.testing.assert_allclose(store.load("rgb", np.array([0, 3, 5])), features[[0, 3, 5]], 2e-3)
    assert {"u1", "u2", "u4"} <= {r.getMessage().split()[1] for r in caplog.records}

    failures = store.failures()
    assert failures["uid"].tolist() == ["u1", "u2", "u4"]
    assert set(failures["modality"]) == {"rgb"}
    assert failures["error"].str.startswith("non-finite features").all()
    assert "done 3, failed 3 (3 of them NaN/inf)" in store.summary()


def test_only_done_rows_are_gated(tmp_path):
    store = _store(tmp_path / "c.zarr")
    features = np.full((2, 2, 3), np.nan, dtype=np.float32)
    store.write("rgb", np.arange(2), features, np.array([Status.PENDING, Status.FAILED]), ["", "x"])
    assert store.status("rgb")[:2].tolist() == [int(Status.PENDING), FAILED]
    assert store.errors("rgb")[:2].tolist() == ["", "x"]


def test_chunk_writer_fails_rows_with_non_finite_spatial_maps(tmp_path):
    store = _store(tmp_path / "c.zarr", n=4, spatial_shape=(2, 2, 2))
    rng = np.random.default_rng(0)
    writer = ChunkWriter(store, "rgb", np.arange(4), 2, 3, spatial_shape=(2, 2, 2))
    for row in range(4):
        maps = rng.normal(size=(2, 2, 2, 2)).astype(np.float32)
        if row == 1:
            maps[0, 1, 0, 0] = np.nan
        if row == 2:
            maps[1] = 7e4  # overflows float16
        writer.add(row, rng.normal(size=(2, 3)).astype(np.float32), maps, DONE, "")
    writer.close()

    assert store.status("rgb").tolist() == [DONE, FAILED, FAILED, DONE]
    errors = store.errors("rgb")
    assert errors[1].startswith("non-finite spatial maps (NaN/inf) in 1 of 2 clips")
    assert "65504" in errors[2]
    assert not np.any(store.spatial("rgb")[1:3]) and not np.any(store.features("rgb")[1:3])
    assert np.isfinite(store.load_spatial("rgb")).all()
    assert store.failures()["uid"].tolist() == ["u1", "u2"]


def test_imported_non_finite_rows_are_failed_with_the_import_fix(tmp_path):
    folder = tmp_path / "npy"
    folder.mkdir()
    video = np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32)
    video[5] = np.nan  # inside segment "a" (rows 4..7), not "b" (rows 0..1)
    np.save(folder / "vid1.npy", video)
    pd.DataFrame(
        {
            "uid": ["a", "b"],
            "video_id": ["vid1", "vid1"],
            "domain": ["s", "s"],
            "split": ["train", "train"],
            "start_sec": [2.0, 0.0],
            "stop_sec": [4.0, 1.0],
        }
    ).to_csv(tmp_path / "m.csv", index=False)
    result = interop.import_features(
        folder, out=tmp_path / "n.zarr", annotations=tmp_path / "m.csv", feature_rate=2.0,
        num_clips=4, modality="rgb",
    )  # fmt: skip
    store = open_cache(result.store)
    assert store.status("rgb").tolist() == [FAILED, DONE]
    assert "in 1 of 4 clips" in store.errors("rgb")[0]
    assert "import it into a new store" in store.errors("rgb")[0]
    assert "failed 1 (1 of them NaN/inf)" in store.summary()


def _poison(path, modality, rows, value=np.nan):
    """Write NaN/inf into done rows directly, as an avda without the gate did."""
    features = zarr.open_group(str(path), mode="r+")["features"][modality]
    for row in rows:
        block = features[row]
        block[0, 0] = value
        features[row] = block


def test_cluster_and_train_refuse_non_finite_done_rows_in_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("AVDA_DEBUG", raising=False)
    path = tmp_path / "c.zarr"
    store = make_feature_cache(path, per_class=6)
    uids = store.segments["uid"].tolist()
    _poison(path, "audio", [0, 7])
    _poison(path, "rgb", [3], np.inf)

    code, _, err = _run(capsys, "cluster", path, "--modality", "audio", "--max-k", "2", "--quiet")
    assert code == 1 and "Traceback" not in err
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    assert f"2 rows of audio hold non-finite features (NaN/inf; first uids: {uids[0]}, " in line
    assert str(path) in line and "--retry-failed" in line

    train = ["train", "--head", "source-only", "--cache", path, "--source", "source",
             "--target", "target", "-o", tmp_path / "run", "--epochs", "1", "--quiet"]  # fmt: skip
    code, _, err = _run(capsys, *train)
    assert code == 1 and "Traceback" not in err and "lr" not in err
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    assert "2 rows of audio hold non-finite features" in line and uids[0] in line

    # The fix an extraction store gets: mark them failed (extract --retry-failed does this on
    # its rows, then recomputes them); training and clustering leave failed rows out.
    store = open_cache(path, mode="r+")
    assert store.mark_nonfinite("audio").tolist() == [0, 7]
    code, _, err = _run(capsys, *train)
    assert code == 1
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    assert "1 rows of rgb hold non-finite features" in line and uids[3] in line
    assert store.mark_nonfinite("rgb").tolist() == [3]
    assert store.mark_nonfinite("rgb").tolist() == []
    assert store.failures()["uid"].tolist() == [uids[0], uids[7], uids[3]]
    assert "failed 2 (2 of them NaN/inf)" in store.summary()
    code, _, err = _run(capsys, *train)
    assert code == 0, err
    code, _, err = _run(capsys, "cluster", path, "--modality", "audio", "--max-k", "2", "--quiet")
    assert code == 0, err


def test_load_refuses_non_finite_spatial_maps_and_can_skip_the_check(tmp_path):
    store = _store(tmp_path / "c.zarr", n=4, spatial_shape=(1, 2, 2))
    store.write("rgb", np.arange(4), np.ones((4, 2, 3)), np.full(4, DONE), [""] * 4)
    spatial = store.spatial("rgb")
    spatial[2] = np.full((2, 1, 2, 2), np.inf, dtype=np.float16)
    with pytest.raises(CacheError, match=r"1 rows of rgb hold non-finite spatial maps .*u2"):
        store.load_spatial("rgb", np.arange(4))
    store.features("rgb")[1] = np.full((2, 3), np.nan, dtype=np.float16)
    with pytest.raises(CacheError, match=r"first uids: u1\)"):
        store.load("rgb", np.array([0, 1]), np.array([1]))
    assert np.isnan(store.load("rgb", check_finite=False)[1]).all()
    assert store.mark_nonfinite("rgb").tolist() == [1, 2]
    assert np.isfinite(store.load_spatial("rgb")).all() and np.isfinite(store.load("rgb")).all()


def test_retry_failed_re_extracts_non_finite_rows_a_clean_rerun_drops_failures_csv(
    capsys, tmp_path, demo_dataset
):
    root, manifest = demo_dataset
    manifest.to_csv(tmp_path / "m.csv", index=False)
    store = tmp_path / "c.zarr"
    args = ["extract", "--manifest", tmp_path / "m.csv", "--videos", root, "-o", store,
            "--recipe", "demo", "--workers", "0", "--quiet"]  # fmt: skip
    code, out, err = _run(capsys, *args)
    assert code == 0, err
    reference = open_cache(store).load("rgb")
    _poison(store, "rgb", [2])
    stale = tmp_path / "c.zarr.failures.csv"
    stale.write_text("uid,video_id,modality,error\nold,v,rgb,x\n")
    code, out, err = _run(capsys, *args)  # nothing to extract, no failed row: list is stale
    assert code == 0 and not stale.exists()
    with pytest.raises(CacheError, match=r"--retry-failed` \(Python: avda.extract\(\.\.\., retry"):
        open_cache(store).load("rgb")

    code, out, err = _run(capsys, *args, "--retry-failed")
    assert code == 0 and " 0 failed" in out, err
    cache = open_cache(store)
    assert (cache.status("rgb") == Status.DONE).all()
    recomputed = cache.load("rgb")
    others = np.arange(len(reference)) != 2
    np.testing.assert_array_equal(recomputed[others], reference[others])  # untouched
    # Row 2 was recomputed in a batch of one: CPU kernels may pick another algorithm for
    # another batch size, which moves the float16 result by an ulp on some machines (seen in CI).
    np.testing.assert_allclose(recomputed[2], reference[2], rtol=2e-3, atol=1e-3)


def test_all_finite_float16_bit_test_agrees_with_isfinite_on_every_value(monkeypatch):
    """The float16 fast test of loaded features (exponent bits, block by block) decides as
    np.isfinite does for each of the 65,536 float16 bit patterns (+-inf, every NaN, the largest
    finite +-65504, subnormals), wherever in the array and in which block the value lies."""
    from avda.cache import store as store_lib

    monkeypatch.setattr(store_lib, "_FINITE_BLOCK", 7)  # several blocks, a partial last one
    patterns = np.arange(2**16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    finite = np.isfinite(patterns)
    assert (~finite).sum() == 2 * 1024  # 2 x 1024 patterns with every exponent bit set
    base = np.ones((3, 2, 5), dtype=np.float16)
    for position, value, expected in zip(
        np.arange(len(patterns)) % base.size, patterns, finite, strict=True
    ):
        values = base.copy()
        values.reshape(-1)[position] = value
        assert store_lib._all_finite(values) == expected, (hex(value.view(np.uint16)), position)
    assert store_lib._all_finite(np.zeros((0, 2, 5), np.float16))
    assert not store_lib._all_finite(base.astype(np.float32) * np.float32("inf"))


def test_load_refuses_negative_inf_and_negative_nan_past_the_first_block(tmp_path, monkeypatch):
    from avda.cache import store as store_lib

    monkeypatch.setattr(store_lib, "_FINITE_BLOCK", 5)
    path = tmp_path / "c.zarr"
    store = make_feature_cache(path, per_class=6)
    _poison(path, "audio", [7], -np.inf)
    _poison(path, "rgb", [5], np.float16(-np.nan))
    for modality, row in (("audio", 7), ("rgb", 5)):
        with pytest.raises(CacheError, match=f"1 rows of {modality} hold non-finite"):
            open_cache(path).load(modality, dtype=None)  # float16, as training loads
        assert store.load(modality, [0, 1], dtype=None).shape[0] == 2  # the rows before it
        assert row > 1
