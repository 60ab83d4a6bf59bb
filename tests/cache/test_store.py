"""The Zarr feature cache: round trip, status, refusal of unknown schema versions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import zarr

from avda import cache as cache_lib
from avda.cache import Status, schema
from avda.errors import CacheError


def _segments(n=10):
    return pd.DataFrame(
        {
            "uid": [f"u{i}" for i in range(n)],
            "video_id": ["v"] * n,
            "domain": ["a" if i < n // 2 else "b" for i in range(n)],
            "split": ["train"] * n,
            "start_sec": np.arange(n, dtype=float),
            "stop_sec": np.arange(n) + 0.5,
            "verb_class": [i % 3 for i in range(n)],
        }
    )


def test_round_trip_features_status_and_segments(tmp_path):
    segments = _segments()
    store = cache_lib.create(
        tmp_path / "c.zarr", segments, manifest_sha256="ab" * 32, recipe={"name": "r"}, chunk_rows=4
    )
    store.add_modality("rgb", num_clips=3, num_features=5, info={"backbone": "i3d"})
    features = np.random.default_rng(0).normal(size=(4, 3, 5)).astype(np.float32)
    store.write("rgb", np.arange(2, 6), features, np.full(4, int(Status.DONE)), [""] * 4)

    reopened = cache_lib.open_cache(tmp_path / "c.zarr")
    assert reopened.features("rgb").dtype == np.float16
    assert reopened.features("rgb").chunks == (4, 3, 5)
    np.testing.assert_allclose(reopened.load("rgb", np.arange(2, 6)), features, atol=2e-3)
    assert list(reopened.status("rgb")) == [0, 0, 1, 1, 1, 1, 0, 0, 0, 0]
    pd.testing.assert_series_equal(
        reopened.segments["uid"], segments["uid"].astype("string"), check_names=False
    )
    assert reopened.segments["verb_class"].tolist() == segments["verb_class"].tolist()
    prov = reopened.provenance
    assert prov["schema_version"] == schema.SCHEMA_VERSION
    assert prov["modalities"]["rgb"]["num_clips"] == 3
    assert "rgb" in reopened.summary() and "done 4" in reopened.summary()


def test_load_selects_rows_and_clips(tmp_path):
    store = cache_lib.create(
        tmp_path / "c.zarr", _segments(), manifest_sha256="ab" * 32, recipe={}, chunk_rows=4
    )
    store.add_modality("rgb", num_clips=3, num_features=2, info={"backbone": "i3d"})
    features = np.arange(10 * 3 * 2, dtype=np.float32).reshape(10, 3, 2)
    store.write("rgb", np.arange(10), features, np.full(10, int(Status.DONE)), [""] * 10)
    expected = features.astype(np.float16).astype(np.float32)
    for rows in ([2, 3, 4, 5], [5, 2, 9], [3, 3, 4, 5], [7], np.arange(10)):
        for clips in (None, [2, 0], [1]):
            got = store.load("rgb", np.asarray(rows), None if clips is None else np.asarray(clips))
            want = expected[rows] if clips is None else expected[rows][:, clips]
            assert got.dtype == np.float32
            np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(store.load("rgb", clips=np.array([1])), expected[:, [1]])
    assert store.load("rgb", np.array([], dtype=int), np.array([0, 2])).shape == (0, 2, 2)


def test_load_takes_a_segments_mask_and_refuses_rows_outside_the_cache(tmp_path):
    # a boolean mask (``segments["domain"] == "D1"``) was read as rows 0 and 1, one per
    # segment; a row past the end (or negative) gave no row, silently
    store = cache_lib.create(
        tmp_path / "c.zarr", _segments(), manifest_sha256="ab" * 32, recipe={}, chunk_rows=4
    )
    store.add_modality("rgb", num_clips=1, num_features=2, info={"backbone": "i3d"})
    features = np.arange(10 * 2, dtype=np.float32).reshape(10, 1, 2)
    store.write("rgb", np.arange(10), features, np.full(10, int(Status.DONE)), [""] * 10)
    mask = np.arange(10) % 3 == 0
    np.testing.assert_array_equal(store.load("rgb", mask), features[mask])
    np.testing.assert_array_equal(store.load("rgb", pd.Series(mask)), features[mask])
    with pytest.raises(CacheError, match=r"one value per segment \(10\), got shape \[4\]"):
        store.load("rgb", mask[:4])
    for rows, first in (([3, 10], 10), ([-1], -1)):
        with pytest.raises(CacheError, match=rf"row {first} is outside its 10 segments"):
            store.load("rgb", np.array(rows))
    with pytest.raises(CacheError, match="rows must be row numbers"):
        store.load("rgb", np.array([0.0, 1.0]))


def test_failures_table_lists_failed_rows_with_reason(tmp_path):
    store = cache_lib.create(
        tmp_path / "c.zarr", _segments(4), manifest_sha256="0", recipe={}, chunk_rows=2
    )
    store.add_modality("audio", num_clips=1, num_features=2, info={"backbone": "x"})
    store.write(
        "audio",
        np.arange(4),
        np.zeros((4, 1, 2)),
        np.array([1, 2, 1, 3]),
        ["", "bad file", "", "no audio"],
    )
    failures = store.failures()
    assert failures["uid"].tolist() == ["u1"]
    assert failures["error"].tolist() == ["bad file"]
    # the rows without input, and why (the CLI prints them; Python had no table of them)
    missing = store.missing()
    assert missing[["uid", "modality", "error"]].values.tolist() == [["u3", "audio", "no audio"]]


def test_unknown_schema_version_is_refused(tmp_path):
    store = cache_lib.create(tmp_path / "c.zarr", _segments(2), manifest_sha256="0", recipe={})
    group = zarr.open_group(str(store.path), mode="a")
    prov = dict(group.attrs[schema.ROOT_ATTRIBUTE])
    prov["schema_version"] = 99
    group.attrs[schema.ROOT_ATTRIBUTE] = prov
    with pytest.raises(CacheError, match="schema version 99"):
        cache_lib.open_cache(store.path)


def test_not_a_cache_and_missing_path(tmp_path):
    with pytest.raises(CacheError, match="does not exist"):
        cache_lib.open_cache(tmp_path / "nope.zarr")
    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    with pytest.raises(CacheError, match="not an avda cache"):
        cache_lib.open_cache(tmp_path / "plain.zarr")


def test_missing_modality_names_the_fix(tmp_path):
    store = cache_lib.create(tmp_path / "c.zarr", _segments(2), manifest_sha256="0", recipe={})
    with pytest.raises(CacheError, match="--modalities flow"):
        store.features("flow")


def test_dask_view_reads_the_same_values(tmp_path):
    store = cache_lib.create(
        tmp_path / "c.zarr", _segments(), manifest_sha256="0", recipe={}, chunk_rows=3
    )
    store.add_modality("rgb", num_clips=1, num_features=2, info={"backbone": "x"})
    values = np.arange(20, dtype=np.float32).reshape(10, 1, 2)
    store.write("rgb", np.arange(10), values, np.ones(10), [""] * 10)
    lazy = store.to_dask("rgb")
    assert lazy.chunks[0] == (3, 3, 3, 1)
    np.testing.assert_array_equal(lazy.compute().astype(np.float32), values)


def test_summary_names_the_class_tables(tmp_path):
    names = [f"class{i}" for i in range(8)]
    store = cache_lib.create(
        tmp_path / "c.zarr",
        _segments(),
        manifest_sha256="ab" * 32,
        recipe={},
        chunk_rows=4,
        classes={"verb_class": names},
    )
    summary = store.summary()
    assert "classes    verb_class: 8 (class0, class1, class2, class3, class4, class5, ...)" in (
        summary
    )
    bare = cache_lib.create(
        tmp_path / "d.zarr", _segments(), manifest_sha256="ab" * 32, recipe={}, chunk_rows=4
    )
    assert "classes" not in bare.summary()


@pytest.mark.parametrize("group", [schema.FEATURES_GROUP, schema.STATUS_GROUP])
def test_a_damaged_chunk_file_is_one_error_naming_it_and_the_fix(tmp_path, group):
    """A chunk file cut short outside avda (avda writes chunk files whole: an interrupted copy)
    is a CacheError naming the file and how to recompute its rows, not a codec's RuntimeError
    (the CLI's "internal error ... please report it")."""
    from tests.conftest import make_feature_cache

    path = tmp_path / "c.zarr"
    make_feature_cache(path, chunk_rows=8)
    chunk = path / group / "rgb" / "c" / "1"
    chunk = chunk / "0" / "0" if group == schema.FEATURES_GROUP else chunk
    chunk.write_bytes(chunk.read_bytes()[:7])
    store = cache_lib.open_cache(path)
    read = store.load if group == schema.FEATURES_GROUP else store.status
    with pytest.raises(CacheError) as caught:
        read("rgb")
    message = str(caught.value)
    assert f"{group}/rgb/c/1" in message and "rows 8-15" in message
    assert "avda extract" in message
    assert len(store.load("audio")) == store.num_segments  # the other modality still reads


def test_a_modality_typo_is_named_as_one_and_a_missing_one_says_how_to_extract_it(tmp_path):
    """`avda cluster STORE --modality rgbb` was told to `run avda extract with --modalities
    rgbb`, a modality extraction does not know; a real one the store lacks still is."""
    store = cache_lib.create(
        tmp_path / "c.zarr", _segments(), manifest_sha256="ab" * 32, recipe={"name": "r"}
    )
    store.add_modality("rgb", num_clips=3, num_features=5, info={"backbone": "i3d"})
    with pytest.raises(CacheError) as typo:
        store.modality_info("rgbb")
    assert str(typo.value) == (
        f"unknown modality 'rgbb'; did you mean 'rgb'? valid: rgb (the modalities of cache "
        f"{store.path})"
    )
    with pytest.raises(CacheError, match=r"no 'audio' features \(it has: rgb\); run `avda ext"):
        store.modality_info("audio")
    # the typo of a modality the store lacks: named, with the fix (it said only "valid: rgb")
    with pytest.raises(CacheError) as lacking:
        store.modality_info("audoi")
    assert str(lacking.value) == (
        f"unknown modality 'audoi'; did you mean 'audio'? cache {store.path} has no 'audio' "
        "features (it has: rgb); run `avda extract` with --modalities audio"
    )


def test_a_modality_typo_on_a_store_of_no_modality_yet_is_named_as_one(tmp_path):
    """A store made (its segment table) but not extracted yet: `--modality rgbb` was told to
    `run avda extract with --modalities rgbb`; it is named unknown among the modalities avda
    extracts, and a real one still gets the fix."""
    store = cache_lib.create(
        tmp_path / "c.zarr", _segments(), manifest_sha256="ab" * 32, recipe={"name": "r"}
    )
    with pytest.raises(CacheError) as typo:
        store.modality_info("rgbb")
    assert str(typo.value) == (
        f"unknown modality 'rgbb'; did you mean 'rgb'? valid: audio, flow, rgb (the modalities "
        f"avda extracts; {store.path} has none)"
    )
    with pytest.raises(CacheError) as missing:
        store.modality_info("flow")
    assert str(missing.value) == (
        f"cache {store.path} has no 'flow' features (it has: none); run `avda extract` with "
        "--modalities flow"
    )
