"""avda cache import / export: EPIC-100 UDA pickles joined with the real UDA annotations,
appending along N, refusing crafted pickles, HDF5 round trips, per-video .npy features."""

from __future__ import annotations

import os
import pickle

import h5py
import numpy as np
import pandas as pd
import pytest

from avda.cache import Status, interop, open_cache
from avda.data_manifests import safe_pickle
from avda.errors import CacheError, ConfigError

K, D = 25, 8


@pytest.fixture(scope="module")
def uda(shared_data):
    return shared_data / "annotations" / "epic100" / "UDA_annotations"


def _feature_pickle(path, ids, modalities=("RGB", "Flow", "Audio"), seed=0):
    rng = np.random.default_rng(seed)
    features = {m: rng.normal(size=(len(ids), K, D)).astype(np.float32) for m in modalities}
    with open(path, "wb") as handle:
        pickle.dump({"features": features, "narration_ids": list(ids)}, handle, protocol=2)
    return features


def test_epic_pickles_are_joined_by_narration_id_and_appended(uda, tmp_path):
    source = safe_pickle.load(uda / "EPIC_100_uda_source_train.pkl")
    target = pd.read_csv(uda / "EPIC_100_uda_target_val.csv")
    source_ids = list(source.index[[5, 0, 17, 3, 40, 11, 2, 9, 30, 21]])  # any order
    target_ids = target["narration_id"].iloc[:7].tolist()
    first = _feature_pickle(tmp_path / "source_train.pkl", source_ids)
    second = _feature_pickle(tmp_path / "target_val.pkl", target_ids, ("RGB", "Flow"), seed=1)
    out = tmp_path / "uda.zarr"
    a = interop.import_features(
        tmp_path / "source_train.pkl",
        out=out,
        chunk_rows=4,
        annotations=uda / "EPIC_100_uda_source_train.pkl",
        domain="source",
        split="train",
    )
    b = interop.import_features(
        tmp_path / "target_val.pkl",
        out=out,
        annotations=uda / "EPIC_100_uda_target_val.csv",
        domain="target",
        split="val",
    )
    assert (a.rows, b.rows) == (10, 7)
    store = open_cache(out)
    segments = store.segments
    assert segments["uid"].tolist() == source_ids + target_ids
    assert store.features("rgb").shape == (17, K, D) and store.features("rgb").chunks[0] == 4
    row = source.loc[source_ids[1]]
    assert segments["video_id"].iloc[1] == row["video_id"]
    assert segments["verb_class"].iloc[1] == row["verb_class"]
    assert segments["start_sec"].iloc[1] == pytest.approx(
        pd.to_timedelta(row["start_timestamp"]).total_seconds()
    )
    assert segments["domain"].tolist() == ["source"] * 10 + ["target"] * 7
    np.testing.assert_allclose(store.load("flow", np.arange(10, 17)), second["Flow"], atol=4e-3)
    np.testing.assert_allclose(store.load("audio", np.arange(10)), first["Audio"], atol=4e-3)
    # The target file has no audio: those rows are MISSING, not pending.
    assert store.status("audio").tolist() == [Status.DONE] * 10 + [Status.MISSING] * 7
    imports = store.provenance["imports"]
    assert [i["rows"] for i in imports] == [[0, 10], [10, 17]]
    assert imports[1]["sha256"] == interop.sha256_file(tmp_path / "target_val.pkl")
    # Importing the same file again is a no-op; a new file with known ids is refused.
    again = interop.import_features(
        tmp_path / "target_val.pkl",
        out=out,
        annotations=uda / "EPIC_100_uda_target_val.csv",
        domain="target",
        split="val",
    )
    assert again.already_imported and open_cache(out).num_segments == 17
    # ... but not with annotations that give one of its segments another label: the file's
    # sha256 says nothing of them, and the store keeps the old one (it was "already imported")
    relabelled = target.copy()
    relabelled.loc[0, "verb_class"] = (relabelled.loc[0, "verb_class"] + 1) % 97
    relabelled.to_csv(tmp_path / "relabelled.csv", index=False)
    with pytest.raises(CacheError, match=f"segment '{target_ids[0]}' has verb_class"):
        interop.import_features(tmp_path / "target_val.pkl", out=out, domain="target",
                                annotations=tmp_path / "relabelled.csv", split="val")  # fmt: skip
    _feature_pickle(tmp_path / "overlap.pkl", target_ids[:2], seed=5)
    with pytest.raises(CacheError, match="already in"):
        interop.import_features(
            tmp_path / "overlap.pkl",
            out=out,
            annotations=uda / "EPIC_100_uda_target_val.csv",
            domain="target",
            split="val",
        )
    # Unknown ids name the annotation file to use.
    _feature_pickle(tmp_path / "wrong.pkl", ["P99_99_0"], seed=6)
    with pytest.raises(CacheError, match="not in .*EPIC_100_uda_target_val.csv"):
        interop.import_features(
            tmp_path / "wrong.pkl",
            out=tmp_path / "w.zarr",
            annotations=uda / "EPIC_100_uda_target_val.csv",
            domain="target",
            split="val",
        )


def test_rows_of_another_backbone_are_not_appended_to_a_modality(uda, tmp_path):
    # An import checked K and D only: TBN rows went into an I3D-extracted modality, and the
    # store's provenance said i3d for all of them
    target = pd.read_csv(uda / "EPIC_100_uda_target_val.csv")
    ids = target["narration_id"].tolist()
    _feature_pickle(tmp_path / "a.pkl", ids[:4])
    _feature_pickle(tmp_path / "b.pkl", ids[4:8], seed=1)
    _feature_pickle(tmp_path / "c.pkl", ids[8:12], seed=2)
    out, where = tmp_path / "s.zarr", uda / "EPIC_100_uda_target_val.csv"
    common = {"annotations": where, "domain": "target", "split": "val"}
    interop.import_features(tmp_path / "a.pkl", out=out, backbone="tbn", **common)
    with pytest.raises(CacheError, match=r"holds rgb features of backbone tbn; .*b.pkl is "
                       r"imported with --backbone i3d: .*import with --backbone tbn"):  # fmt: skip
        interop.import_features(tmp_path / "b.pkl", out=out, backbone="i3d", **common)
    assert open_cache(out).num_segments == 4
    interop.import_features(tmp_path / "c.pkl", out=out, **common)  # EPIC's release: tbn
    assert open_cache(out).num_segments == 8
    # an avda HDF5 export records its backbone: --backbone may name an unknown one, not
    # relabel a known one (the refusal above told the user to pass an option it ignored)
    exported = interop.export_h5(out, tmp_path / "s.h5")
    with pytest.raises(CacheError, match=r"records its features as tbn's; --backbone i3d "
                       r"cannot relabel them"):  # fmt: skip
        interop.import_features(exported, out=tmp_path / "i.zarr", backbone="i3d")
    back = interop.import_features(exported, out=tmp_path / "t.zarr", backbone="tbn")
    assert open_cache(back.store).modality_info("rgb")["backbone"] == "tbn"


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_feature_file_imported_again_with_another_backbone_is_refused(uda, tmp_path):
    """An EPIC-100 UDA pickle or a generic HDF5 file run again with another --backbone (or
    none where the store recorded one; a pickle's is tbn unless given): 'already imported'
    while the store kept its own label. Refused naming the store's backbone, as a folder of
    per-video features is; with its own, already imported."""
    ids = pd.read_csv(uda / "EPIC_100_uda_target_val.csv")["narration_id"].tolist()[:6]
    features = _feature_pickle(tmp_path / "a.pkl", ids)
    with h5py.File(tmp_path / "g.h5", "w") as handle:
        handle["narration_ids"] = np.array(ids, dtype=object).astype("S")
        handle["RGB"] = features["RGB"][:, 0]
    common = {"annotations": uda / "EPIC_100_uda_target_val.csv", "domain": "target",
              "split": "val"}  # fmt: skip
    for source, recorded, others in (("a.pkl", "i3d", ["tsm", None]), ("g.h5", "tsm", ["i3d"])):
        out = tmp_path / f"{source}.zarr"
        interop.import_features(tmp_path / source, out=out, backbone=recorded, **common)
        for other in others:
            said = "no --backbone" if other is None and source == "g.h5" else "--backbone"
            with pytest.raises(CacheError, match=(
                rf"holds rgb features of backbone {recorded} imported from .*{source}; it is "
                rf"imported again with {said}.*which would only relabel them: give --backbone "
                rf"{recorded} \(it is imported: nothing to do\)"
            )):  # fmt: skip
                interop.import_features(tmp_path / source, out=out, backbone=other, **common)
        again = interop.import_features(tmp_path / source, out=out, backbone=recorded, **common)
        assert again.already_imported
        assert open_cache(out).modality_info("rgb")["backbone"] == recorded
    interop.import_features(tmp_path / "g.h5", out=tmp_path / "u.zarr", **common)  # unknown
    with pytest.raises(CacheError, match=r"backbone unknown .*leave --backbone out"):
        interop.import_features(tmp_path / "g.h5", out=tmp_path / "u.zarr", backbone="x", **common)


def test_a_fill_imported_again_with_other_annotations_is_refused(uda, tmp_path):
    """A file whose modality filled the rows of segments the store held (a second pickle of
    the same ids, another modality) run again with annotations that give a segment another
    label: said imported, as only appended rows were compared. Refused as for an append."""
    target = pd.read_csv(uda / "EPIC_100_uda_target_val.csv")
    ids = target["narration_id"].tolist()[:6]
    _feature_pickle(tmp_path / "rgb.pkl", ids, ("RGB",))
    _feature_pickle(tmp_path / "audio.pkl", ids, ("Audio",), seed=1)
    out, where = tmp_path / "s.zarr", uda / "EPIC_100_uda_target_val.csv"
    common = {"domain": "target", "split": "val"}
    for name in ("rgb.pkl", "audio.pkl"):
        interop.import_features(tmp_path / name, out=out, annotations=where, **common)
    assert open_cache(out).provenance["imports"][1].get("fill") is True
    relabelled = target.copy()
    relabelled.loc[2, "verb_class"] = (relabelled.loc[2, "verb_class"] + 1) % 97
    relabelled.to_csv(tmp_path / "relabelled.csv", index=False)
    with pytest.raises(CacheError, match=f"segment '{ids[2]}' has verb_class"):
        interop.import_features(tmp_path / "audio.pkl", out=out,
                                annotations=tmp_path / "relabelled.csv", **common)  # fmt: skip
    again = interop.import_features(tmp_path / "audio.pkl", out=out, annotations=where, **common)
    assert again.already_imported


def test_a_crafted_pickle_is_refused_before_it_runs(uda, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open(tmp_path / "evil.pkl", "wb") as handle:
        pickle.dump({"features": {"RGB": _Exploit()}, "narration_ids": ["P01_101_0"]}, handle)
    with pytest.raises(safe_pickle.UnsafePickleError, match="os.system|posix.system"):
        interop.import_features(
            tmp_path / "evil.pkl",
            out=tmp_path / "x.zarr",
            annotations=uda / "EPIC_100_uda_target_val.csv",
            domain="target",
            split="val",
        )
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "x.zarr").exists()


def test_an_append_killed_before_its_commit_is_undone(uda, tmp_path):
    ids = safe_pickle.load(uda / "EPIC_100_uda_source_val.pkl").index[:6].tolist()
    _feature_pickle(tmp_path / "val.pkl", ids)
    out = tmp_path / "c.zarr"
    interop.import_features(
        tmp_path / "val.pkl",
        out=out,
        domain="source",
        split="val",
        annotations=uda / "EPIC_100_uda_source_val.pkl",
        chunk_rows=4,
    )
    store = open_cache(out, mode="a")
    # Simulate a crash after the arrays were resized but before num_segments was committed.
    for array in store.arrays().values():
        array.resize((9, *array.shape[1:]))
    assert open_cache(out).num_segments == 6
    store.repair_length()
    assert all(a.shape[0] == 6 for a in open_cache(out).arrays().values())
    # Killed after the commit but before the import was recorded: rerunning finishes it.
    more = safe_pickle.load(uda / "EPIC_100_uda_source_val.pkl").index[6:9].tolist()
    features = _feature_pickle(tmp_path / "more.pkl", more, seed=3)
    table = interop.read_segment_table(
        uda / "EPIC_100_uda_source_val.pkl", domain="source", split="val"
    )
    store.append_segments(
        table.loc[more].reset_index(drop=True)[
            ["uid", "video_id", "domain", "split", "start_sec", "stop_sec"]
        ]
    )
    result = interop.import_features(
        tmp_path / "more.pkl",
        out=out,
        domain="source",
        split="val",
        annotations=uda / "EPIC_100_uda_source_val.pkl",
    )
    assert result.rows == 3
    store = open_cache(out)
    assert store.num_segments == 9 and store.provenance["imports"][-1]["rows"] == [6, 9]
    np.testing.assert_allclose(store.load("rgb", np.arange(6, 9)), features["RGB"], atol=4e-3)


def test_the_next_import_removes_a_killed_imports_uncommitted_modality(uda, tmp_path):
    ids = safe_pickle.load(uda / "EPIC_100_uda_source_val.pkl").index[:9].tolist()
    _feature_pickle(tmp_path / "first.pkl", ids[:6], ("RGB",))
    out = tmp_path / "c.zarr"
    annotations = uda / "EPIC_100_uda_source_val.pkl"
    interop.import_features(
        tmp_path / "first.pkl", out=out, domain="source", split="val", annotations=annotations
    )
    # A killed import had made the arrays of a new modality (and rows past the commit point)
    # but never wrote the provenance that lists them.
    store = open_cache(out, mode="a")
    store.add_modality("flow", num_clips=K, num_features=D, info={}, register=False, rows=8)
    assert "flow" in dict(store._group["features"].arrays())
    assert open_cache(out).modalities == ["rgb"]
    features = _feature_pickle(tmp_path / "more.pkl", ids[6:], ("RGB",), seed=3)
    interop.import_features(
        tmp_path / "more.pkl", out=out, domain="source", split="val", annotations=annotations
    )
    store = open_cache(out)
    for group in ("features", "status", "errors"):
        assert "flow" not in dict(store._group[group].arrays()), group
    assert store.modalities == ["rgb"] and store.num_segments == 9
    assert all(a.shape[0] == 9 for a in store.arrays().values())
    np.testing.assert_allclose(store.load("rgb", np.arange(6, 9)), features["RGB"], atol=4e-3)


def test_the_next_import_removes_a_killed_writes_unfinished_files(uda, tmp_path):
    """A writer killed while Zarr wrote a file leaves ``<name>.<hex>.partial`` (never read);
    the next import, the store's only writer, deletes it (it was kept for good before)."""
    ids = safe_pickle.load(uda / "EPIC_100_uda_source_val.pkl").index[:9].tolist()
    annotations = uda / "EPIC_100_uda_source_val.pkl"
    _feature_pickle(tmp_path / "first.pkl", ids[:6], ("RGB",))
    out = tmp_path / "c.zarr"
    common = dict(out=out, domain="source", split="val", annotations=annotations)
    interop.import_features(tmp_path / "first.pkl", **common)
    hex_name = "0123456789abcdef0123456789abcdef"
    leftovers = [out / f"zarr.{hex_name}.partial", out / f"features/rgb/c/0/0/0.{hex_name}.partial"]
    for leftover in leftovers:
        leftover.write_bytes(b"half a write")
    _feature_pickle(tmp_path / "more.pkl", ids[6:], ("RGB",), seed=3)
    interop.import_features(tmp_path / "more.pkl", **common)
    assert not any(leftover.exists() for leftover in leftovers)
    assert open_cache(out).verify().attrs["notes"] == []


def test_h5_export_round_trip_and_generic_h5(uda, tmp_path):
    ids = safe_pickle.load(uda / "EPIC_100_uda_source_val.pkl").index[:9].tolist()
    features = _feature_pickle(tmp_path / "val.pkl", ids)
    out = tmp_path / "c.zarr"
    interop.import_features(
        tmp_path / "val.pkl",
        out=out,
        domain="source",
        split="val",
        annotations=uda / "EPIC_100_uda_source_val.pkl",
        chunk_rows=4,
    )
    exported = interop.export_h5(out, tmp_path / "c.h5")
    with h5py.File(exported) as handle:
        assert handle.attrs["format"] == "avda-h5"
        assert handle["features/rgb"].shape == (9, K, D)
        assert handle["features/rgb"].chunks == (4, K, D)  # streamed chunk by chunk
    back = interop.import_features(exported, out=tmp_path / "back.zarr", annotations=None)
    original, restored = open_cache(out), open_cache(back.store)
    for modality in ("rgb", "flow", "audio"):
        np.testing.assert_array_equal(restored.load(modality), original.load(modality))
        np.testing.assert_array_equal(restored.status(modality), original.status(modality))
    pd.testing.assert_frame_equal(restored.segments, original.segments)
    # the class tables (a training sized its classifiers by the largest id without them) and
    # the recipe come back too
    assert original.provenance["classes"]["verb_class"][:2] == ["take", "put"]
    assert restored.provenance["classes"] == original.provenance["classes"]
    assert restored.provenance["recipe"] == {**original.provenance["recipe"],
                                             "imported_from": "h5"}  # fmt: skip
    # A generic file: an id dataset and one (N, D) dataset per modality.
    with h5py.File(tmp_path / "generic.h5", "w") as handle:
        handle["narration_ids"] = np.array(ids, dtype=object).astype("S")
        handle["RGB"] = features["RGB"][:, 0]
        handle["times"] = np.zeros((len(ids), 2))  # not a modality: left out, with a warning
    generic = interop.import_features(
        tmp_path / "generic.h5",
        out=tmp_path / "g.zarr",
        annotations=uda / "EPIC_100_uda_source_val.pkl",
        domain="source",
        split="val",
    )
    loaded = open_cache(generic.store).load("rgb")
    assert loaded.shape == (9, 1, D)
    np.testing.assert_allclose(loaded[:, 0], features["RGB"][:, 0], atol=4e-3)
    assert open_cache(generic.store).modalities == ["rgb"]
    # again with annotations that relabel one of its segments: refused, not already imported
    relabelled = safe_pickle.load(uda / "EPIC_100_uda_source_val.pkl").reset_index()
    row = relabelled.index[relabelled["narration_id"].astype(str) == str(ids[0])][0]
    relabelled.loc[row, "verb_class"] = (relabelled.loc[row, "verb_class"] + 1) % 97
    relabelled.to_csv(tmp_path / "relabelled.csv", index=False)
    with pytest.raises(CacheError, match=f"segment '{ids[0]}' has verb_class"):
        interop.import_features(tmp_path / "generic.h5", out=tmp_path / "g.zarr", domain="source",
                                annotations=tmp_path / "relabelled.csv", split="val")  # fmt: skip
    # one dataset called features (of which modality?): one line naming the fix, not an
    # internal TypeError
    with h5py.File(tmp_path / "one.h5", "w") as handle:
        handle["ids"] = np.array(ids, dtype=object).astype("S")
        handle["features"] = features["RGB"][:, 0]
    with pytest.raises(CacheError, match=r"one dataset 'features' \(9, \d+\); .*rename it"):
        interop.import_features(tmp_path / "one.h5", out=tmp_path / "o.zarr",
                                annotations=uda / "EPIC_100_uda_source_val.pkl")  # fmt: skip
    # And back to the TA3N pickle layout, read by the restricted unpickler.
    interop.export_epic_pickle(out, tmp_path / "ta3n.pkl", domain="source", split="val")
    data = safe_pickle.load(tmp_path / "ta3n.pkl")
    assert list(data["features"]) == ["RGB", "Flow", "Audio"]
    assert data["narration_ids"] == ids
    np.testing.assert_allclose(data["features"]["Flow"], features["Flow"], atol=4e-3)


def test_per_video_npy_features(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "npy"
    folder.mkdir()
    video = rng.normal(size=(20, D)).astype(np.float32)  # 2 rows per second, 10 s
    np.save(folder / "vid1.npy", video)
    manifest = pd.DataFrame(
        {
            "uid": ["a", "b", "edge", "past"],
            "video_id": ["vid1", "vid2", "vid1", "vid1"],
            "domain": ["s", "s", "s", "s"],
            "split": ["train", "train", "train", "train"],
            "start_sec": [2.0, 0.0, 9.0, 8.0],
            "stop_sec": [4.0, 1.0, 10.5, 30.0],
        }
    )
    manifest.to_csv(tmp_path / "m.csv", index=False)
    result = interop.import_features(
        folder,
        out=tmp_path / "n.zarr",
        annotations=tmp_path / "m.csv",
        feature_rate=2.0,
        num_clips=4,
        modality="rgb",
    )
    store = open_cache(result.store)
    # Times 2.25, 2.75, 3.25, 3.75 s -> rows round(t * 2 - 0.5) = 4, 5, 6, 7.
    np.testing.assert_allclose(store.load("rgb")[0], video[4:8], atol=4e-3)
    # A segment mostly past the rows' 10 s (or a wrong --feature-rate) is not the last row
    # repeated: it fails, as extraction fails one past its video; a little past is kept.
    done, missing, failed = Status.DONE, Status.MISSING, Status.FAILED
    assert store.status("rgb").tolist() == [done, missing, done, failed]
    assert "no vid2.npy" in store.errors("rgb")[1]
    assert (
        "runs to 30.00 s, 20.00 s past the end of vid1.npy's features (10.00 s)"
        in (store.errors("rgb")[3])
    )
    assert "20 rows at --feature-rate 2" in store.errors("rgb")[3]
    # `avda cache import` says so: it printed "appended 4 segments (rgb)" and no more
    assert result.not_done == {"rgb": ({"missing": 1, "failed": 1}, f"no vid2.npy in {folder}")}
    assert result.not_done_text() == f"; rgb: 1 missing, 1 failed (e.g. no vid2.npy in {folder})"


def _ta3n_test_indices(num_frames: int, num_segments: int = 5) -> list[int]:
    """cmhungsteve/TA3N dataset.py ``_get_test_indices`` (new_length 1), transcribed; minus 1:
    the 0-based row of the ``img_{:05d}.t7`` file it loads."""
    num_min, num_select = num_segments, num_frames
    if num_frames >= num_min:
        tick = float(num_select) / float(num_segments)
        offsets = np.array([int(tick / 2.0 + tick * float(x)) for x in range(num_segments)])
    else:
        id_select = np.array(list(range(num_select)))
        id_expand = np.ones(num_segments - num_select, dtype=int) * id_select[id_select[0] - 1]
        offsets = np.append(id_select, id_expand)
    return (offsets + 1 - 1).tolist()


def test_npy_tsn_placement_reads_the_frames_ta3n_reads(shared_data, tmp_path, capsys):
    """TA3N's per-frame features as one .npy per video (row = frame), a manifest of its lists
    with one frame rate: --placement tsn gives every video TA3N's 5 frames; nearest is one frame
    early where (k + 1/2) N / 5 is an odd whole number (v_BoxingPunchingBag_g16_c02, 122)."""
    from avda import cli

    lines = shared_data / "annotations" / "ucf_hmdb_lists" / "list_ucf101_train_hmdb51-feature.txt"
    videos = [line.split()[:2] for line in lines.read_text().splitlines()[:30]]
    videos += [["short", "3"]]  # fewer frames than segments: the last repeats
    folder = tmp_path / "npy"
    folder.mkdir()
    for name, frames in videos:
        rows = np.repeat(np.arange(int(frames), dtype=np.float32)[:, None], 2, axis=1)
        np.save(folder / f"{name}.npy", rows)
    pd.DataFrame({
        "uid": [v for v, _ in videos], "video_id": [v for v, _ in videos],
        "domain": "ucf", "split": "train", "start_sec": 0.0,
        "stop_sec": [int(n) / 25 for _, n in videos],
    }).to_csv(tmp_path / "m.csv", index=False)  # fmt: skip
    loaded = {}
    for placement in ("tsn", "nearest"):
        out = tmp_path / f"{placement}.zarr"
        code = cli.main(["cache", "import", str(folder), "--format", "npy", "-a",
                         str(tmp_path / "m.csv"), "--feature-rate", "25", "--num-clips", "5",
                         "--placement", placement, "-o", str(out)])  # fmt: skip
        assert code == 0, capsys.readouterr().err
        loaded[placement] = open_cache(out).load("rgb")[:, :, 0].astype(int).tolist()
    expected = [_ta3n_test_indices(int(n)) for _, n in videos]
    assert loaded["tsn"] == expected
    assert expected[-1] == [0, 1, 2, 2, 2]
    boxing = [v for v, _ in videos].index("v_BoxingPunchingBag_g16_c02")
    assert expected[boxing] == [12, 36, 61, 85, 109] and loaded["nearest"][boxing][2] == 60
    code = cli.main(["cache", "import", str(folder), "--format", "npy", "-a",
                     str(tmp_path / "m.csv"), "--feature-rate", "25", "--placement", "middle",
                     "-o", str(tmp_path / "x.zarr")])  # fmt: skip
    err = capsys.readouterr().err
    assert code != 0 and "--placement must be one of nearest, tsn, got 'middle'" in err
    assert len(err.strip().splitlines()) == 1


def test_a_second_modality_of_per_video_npy_fills_the_same_segments(tmp_path):
    """Features come as one folder of per-video .npy files per modality: the second folder's
    import adds its modality to the segments the first one made (it was refused as 'already
    in' the store), in the store's row order, leaving the first modality as it was; a
    segment whose times differ from the store's is refused before anything is written."""
    rng = np.random.default_rng(1)
    rgb_dir, audio_dir = tmp_path / "rgb", tmp_path / "audio"
    rgb_dir.mkdir(), audio_dir.mkdir()
    rgb = {v: rng.normal(size=(20, D)).astype(np.float32) for v in ("v1", "v2")}
    audio = {v: rng.normal(size=(40, 3)).astype(np.float32) for v in ("v1",)}  # v2: silent
    for v, x in rgb.items():
        np.save(rgb_dir / f"{v}.npy", x)
    for v, x in audio.items():
        np.save(audio_dir / f"{v}.npy", x)
    manifest = pd.DataFrame(
        {
            "uid": ["a", "b", "c"],
            "video_id": ["v1", "v2", "v1"],
            "domain": ["s", "s", "t"],
            "split": ["train", "train", "test"],
            "start_sec": [0.0, 2.0, 6.0],
            "stop_sec": [2.0, 4.0, 8.0],
        }
    )
    manifest.to_csv(tmp_path / "m.csv", index=False)
    out = tmp_path / "av.zarr"
    interop.import_features(rgb_dir, out=out, annotations=tmp_path / "m.csv", feature_rate=2.0,
                            num_clips=2, modality="rgb")  # fmt: skip
    before = open_cache(out).load("rgb").copy()
    # the audio manifest lists the segments in another order: rows follow the store's
    manifest.iloc[::-1].to_csv(tmp_path / "m_reversed.csv", index=False)
    result = interop.import_features(audio_dir, out=out, annotations=tmp_path / "m_reversed.csv",
                                     feature_rate=4.0, num_clips=2, modality="audio")  # fmt: skip
    store = open_cache(out)
    assert (
        result.rows == 3 and store.num_segments == 3 and set(store.modalities) == {"rgb", "audio"}
    )
    assert store.segments["uid"].tolist() == ["a", "b", "c"]
    np.testing.assert_array_equal(store.load("rgb"), before)
    assert store.status("rgb").tolist() == [Status.DONE] * 3
    # c = v1 [6, 8) s at 4 rows/s: times 6.5, 7.5 s -> rows 25.5 and 29.5 rounded: 26, 30
    np.testing.assert_allclose(store.load("audio")[2], audio["v1"][[26, 30]], atol=4e-3)
    np.testing.assert_allclose(store.load("audio")[0], audio["v1"][[2, 6]], atol=4e-3)
    assert store.status("audio").tolist() == [Status.DONE, Status.MISSING, Status.DONE]
    # other times for a segment: its features would describe another span
    flow_dir = tmp_path / "flow"
    flow_dir.mkdir()
    np.save(flow_dir / "v1.npy", rgb["v1"])
    manifest.assign(stop_sec=[2.0, 4.0, 9.0]).to_csv(tmp_path / "m_moved.csv", index=False)
    with pytest.raises(CacheError, match="segment 'c' has stop_sec 9, .* has 8 "):
        interop.import_features(flow_dir, out=out, annotations=tmp_path / "m_moved.csv",
                                feature_rate=2.0, num_clips=2, modality="flow")  # fmt: skip
    assert set(open_cache(out).modalities) == {"rgb", "audio"}


def test_npy_rows_of_another_rate_or_placement_are_not_appended_to_a_modality(tmp_path):
    """The store records one --feature-rate and --placement per modality (its provenance,
    and the re-import command `avda cache verify` gives): a second domain's .npy rows read
    another way are refused in one line naming both values and the fix, before anything is
    written; the same values append."""
    rng = np.random.default_rng(2)
    for video in ("v1", "v2"):  # one folder per domain
        (tmp_path / video).mkdir()
        np.save(tmp_path / video / f"{video}.npy", rng.normal(size=(40, D)).astype(np.float32))
    first, folder = tmp_path / "v1", tmp_path / "v2"
    for domain, video in (("s", "v1"), ("t", "v2")):
        pd.DataFrame({
            "uid": [f"{domain}0", f"{domain}1"], "video_id": [video, video],
            "domain": [domain, domain], "split": ["train", "train"],
            "start_sec": [0.0, 4.0], "stop_sec": [3.0, 8.0],
        }).to_csv(tmp_path / f"{domain}.csv", index=False)  # fmt: skip
    out = tmp_path / "n.zarr"
    common = {"out": out, "num_clips": 2, "modality": "rgb"}
    interop.import_features(first, annotations=tmp_path / "s.csv", feature_rate=4.0, **common)
    for rate, placement in ((4.0, "tsn"), (2.0, "nearest")):
        with pytest.raises(CacheError) as refused:
            interop.import_features(folder, annotations=tmp_path / "t.csv", feature_rate=rate,
                                    placement=placement, **common)  # fmt: skip
        message = str(refused.value)
        assert "\n" not in message
        assert message == (
            f"{out} holds rgb features imported at --feature-rate 4 --placement nearest; "
            f"{folder} is imported at --feature-rate {rate:g} --placement {placement}: the "
            "store records one rate and placement per modality. Import it with --feature-rate "
            "4 --placement nearest, or into another store"
        )
        assert open_cache(out).num_segments == 2
    interop.import_features(folder, annotations=tmp_path / "t.csv", feature_rate=4.0, **common)
    assert open_cache(out).segments["uid"].tolist() == ["s0", "s1", "t0", "t1"]


def test_a_npy_folder_imported_with_other_annotations_is_another_import(tmp_path, capsys):
    """A folder of .npy files holds no segment ids: its import was recognised by its files
    alone, so the same folder with another domain's annotation table said "already imported"
    and imported nothing. The record holds the segments it mapped; a store written before
    (records without them) is compared by the ids of the rows each import appended."""
    from avda import cli

    folder = tmp_path / "npy"
    folder.mkdir()
    np.save(folder / "v1.npy", np.ones((40, D), dtype=np.float32))
    for domain in ("s", "t", "u"):
        pd.DataFrame({
            "uid": [f"{domain}0", f"{domain}1"], "video_id": "v1", "domain": domain,
            "split": "train", "start_sec": [0.0, 4.0], "stop_sec": [3.0, 8.0],
        }).to_csv(tmp_path / f"{domain}.csv", index=False)  # fmt: skip
    out = tmp_path / "n.zarr"

    def run(domain):
        return interop.import_features(folder, out=out, annotations=tmp_path / f"{domain}.csv",
                                       feature_rate=4.0, num_clips=2)  # fmt: skip

    assert not run("s").already_imported
    second = run("t")
    assert not second.already_imported and second.rows == 2
    assert open_cache(out).segments["uid"].tolist() == ["s0", "s1", "t0", "t1"]
    assert run("s").already_imported and run("t").already_imported
    code = cli.main(["cache", "import", str(folder), "-a", str(tmp_path / "t.csv"),
                     "--feature-rate", "4", "--num-clips", "2", "-o", str(out)])  # fmt: skip
    said = capsys.readouterr().out
    assert code == 0 and "was already imported" in said and "(same files and segments;" in said
    # a store an avda before 2026-12-07 wrote: its records do not hold the segments
    store = open_cache(out, mode="a")
    provenance = store.provenance
    for entry in provenance["imports"]:
        del entry["segments_sha256"]
    store._set_provenance(provenance)
    assert run("s").already_imported and run("t").already_imported
    assert not run("u").already_imported
    assert open_cache(out).num_segments == 6
    # one that filled rows in place cannot be compared: the same import, with a warning
    store = open_cache(out, mode="a")
    provenance = store.provenance
    provenance["imports"][-1]["fill"] = True
    del provenance["imports"][-1]["segments_sha256"]
    provenance["imports"] = provenance["imports"][-1:]
    store._set_provenance(provenance)
    capsys.readouterr()
    assert run("s").already_imported  # (logged to stderr: cli.main set up avda's logging)
    assert "does not record its segments (an avda before 2026-12-07 wrote it)" in (
        capsys.readouterr().err
    )


def test_npy_rows_are_not_appended_to_a_modality_of_a_feature_file_or_an_extraction(uda, tmp_path):
    """A .npy import's rows were checked against an earlier .npy import's rate and placement
    only: appended to a modality a pickle import or an extraction made (no feature rate), or a
    pickle appended to a .npy modality, they went in under a provenance that describes the
    other rows (and `avda cache verify` named a re-import without --feature-rate). Each is
    refused in one line naming the store, the modality, both and the fix; nothing written."""
    from tests.conftest import make_feature_cache

    folder = tmp_path / "npy"
    folder.mkdir()
    np.save(folder / "v1.npy", np.ones((40, D), dtype=np.float32))
    pd.DataFrame({
        "uid": ["n0", "n1"], "video_id": ["v1", "v1"], "domain": "t", "split": "train",
        "start_sec": [0.0, 4.0], "stop_sec": [3.0, 8.0],
    }).to_csv(tmp_path / "n.csv", index=False)  # fmt: skip
    npy = {"annotations": tmp_path / "n.csv", "feature_rate": 4.0, "modality": "rgb"}
    ids = safe_pickle.load(uda / "EPIC_100_uda_source_val.pkl").index[:4].tolist()
    _feature_pickle(tmp_path / "s.pkl", ids, ("RGB",))
    pickled = tmp_path / "p.zarr"
    epic = {"annotations": uda / "EPIC_100_uda_source_val.pkl", "domain": "s", "split": "val"}
    interop.import_features(tmp_path / "s.pkl", out=pickled, **epic)
    before = (pickled / "zarr.json").read_bytes()
    with pytest.raises(CacheError) as refused:
        interop.import_features(folder, out=pickled, backbone="tbn", num_clips=K, **npy)
    assert str(refused.value) == (
        f"{pickled} holds rgb features imported from epic-pkl (a segment's clips as the file "
        f"gives them); {folder} is imported at --feature-rate 4 --placement nearest: the store "
        "records one rate and placement per modality. Import it into another store"
    )
    assert (pickled / "zarr.json").read_bytes() == before
    extracted = make_feature_cache(tmp_path / "x.zarr", modalities=("rgb",), per_class=2, D=D)
    with pytest.raises(CacheError, match=(
        r"x.zarr holds rgb features extracted \(recipe synthetic\); .*npy is imported at "
        r"--feature-rate 4 --placement nearest: .* Import it into another store$"
    )):  # fmt: skip
        interop.import_features(folder, out=extracted.path, backbone="synthetic", num_clips=2,
                                **npy)  # fmt: skip
    assert open_cache(extracted.path).num_segments == extracted.num_segments
    # the other way round: a pickle's rows into a modality of .npy rows
    rated = tmp_path / "r.zarr"
    interop.import_features(folder, out=rated, backbone="tbn", num_clips=K, **npy)
    with pytest.raises(CacheError, match=(
        r"r.zarr holds rgb features imported at --feature-rate 4 --placement nearest; .*s.pkl "
        r"is imported from epic-pkl .* Import it into another store$"
    )):  # fmt: skip
        interop.import_features(tmp_path / "s.pkl", out=rated, **epic)
    assert open_cache(rated).num_segments == 2


def test_a_modality_added_to_an_extracted_store_keeps_its_segments_and_fingerprint(tmp_path):
    """A store built by extraction (its own manifest fingerprint) gets a modality from
    per-video .npy files: its segments, fingerprint (a later `avda extract` with the same
    manifest checks it) and features stay; a segment labelled otherwise is refused."""
    from tests.conftest import make_feature_cache

    store = make_feature_cache(tmp_path / "x.zarr", modalities=("rgb",), per_class=2)
    before = {"sha": store.provenance["manifest_sha256"], "rgb": store.load("rgb").copy()}
    segments = store.segments
    flow = tmp_path / "flow"
    flow.mkdir()
    for video in segments["video_id"].unique():
        np.save(flow / f"{video}.npy", np.ones((4, 3), dtype=np.float32))
    segments.to_csv(tmp_path / "m.csv", index=False)
    segments.assign(verb_class=(segments["verb_class"] + 1) % 4).to_csv(
        tmp_path / "relabelled.csv", index=False
    )
    with pytest.raises(CacheError, match="has verb_class '1', .* has '0'"):
        interop.import_features(flow, out=store.path, annotations=tmp_path / "relabelled.csv",
                                feature_rate=2.0, num_clips=2, modality="flow")  # fmt: skip
    interop.import_features(flow, out=store.path, annotations=tmp_path / "m.csv",
                            feature_rate=2.0, num_clips=2, modality="flow")  # fmt: skip
    after = open_cache(store.path)
    assert after.provenance["manifest_sha256"] == before["sha"]
    assert after.provenance["imports"][-1]["fill"] is True
    np.testing.assert_array_equal(after.load("rgb"), before["rgb"])
    assert (after.status("flow") == Status.DONE).all() and after.load("flow").shape[1:] == (2, 3)


def test_dask_reads_a_store_chunk_by_chunk(uda, tmp_path):
    ids = safe_pickle.load(uda / "EPIC_100_uda_source_val.pkl").index[:10].tolist()
    features = _feature_pickle(tmp_path / "val.pkl", ids, ("RGB",))
    interop.import_features(
        tmp_path / "val.pkl",
        out=tmp_path / "c.zarr",
        domain="source",
        split="val",
        annotations=uda / "EPIC_100_uda_source_val.pkl",
        chunk_rows=3,
    )
    lazy = open_cache(tmp_path / "c.zarr").to_dask("rgb")
    assert lazy.chunks[0] == (3, 3, 3, 1)
    np.testing.assert_allclose(
        lazy.mean(axis=(0, 1)).compute(), features["RGB"].mean(axis=(0, 1)), atol=1e-3
    )


def test_an_epic100_import_keeps_the_whole_class_tables(uda, tmp_path):
    """The UDA files' largest ids are 95 (verbs) and 298 (nouns); EPIC-100 has 97 and 300
    classes, and the challenge's submission needs scores for all of them: the class tables
    found beside the annotations (the official repository's layout) size the classifiers."""
    from avda import runs
    from avda.train.loop import train

    verbs = pd.read_csv(uda.parent / "EPIC_100_verb_classes.csv")["key"].tolist()
    nouns = pd.read_csv(uda.parent / "EPIC_100_noun_classes.csv")["key"].tolist()
    source = pd.read_csv(uda / "EPIC_100_uda_source_train.csv")
    target = pd.read_csv(uda / "EPIC_100_uda_target_val.csv")
    out = tmp_path / "uda.zarr"
    for name, ids, table, domain, split in (
        ("s.pkl", source["narration_id"].iloc[:24], "EPIC_100_uda_source_train", "source", "train"),
        ("t.pkl", target["narration_id"].iloc[:8], "EPIC_100_uda_target_val", "target", "val"),
    ):  # fmt: skip
        _feature_pickle(tmp_path / name, ids.tolist(), ("RGB",))
        interop.import_features(tmp_path / name, out=out, annotations=uda / f"{table}.csv",
                                domain=domain, split=split)  # fmt: skip
    classes = open_cache(out).provenance["classes"]
    assert classes == {"verb_class": verbs, "noun_class": nouns}
    assert (len(verbs), len(nouns)) == (97, 300)
    train(cache=out, head="source-only", source=["source"], target=["target"],
          out=tmp_path / "run", seed=0, overrides={"epochs": 1}, progress=False)  # fmt: skip
    scores = runs.read_predictions(tmp_path / "run", "target_val")["scores"]
    assert scores["verb"].shape == (8, 97) and scores["noun"].shape == (8, 300)
    # Annotations without class tables beside them: the largest id + 1, as before.
    lone = tmp_path / "lone" / "EPIC_100_uda_source_train.csv"
    lone.parent.mkdir()
    source.iloc[:24].to_csv(lone, index=False)
    assert interop.import_classes(lone) == {}


def test_byte_string_ids_in_a_pickle_are_read_as_text(uda, tmp_path):
    # HDF5 ids were decoded, a pickle's were not: b'P01_02_90' was "not in" the annotations
    ids = pd.read_csv(uda / "EPIC_100_uda_target_val.csv")["narration_id"].iloc[:5].tolist()
    features = {"RGB": np.random.default_rng(0).normal(size=(5, K, D)).astype(np.float32)}
    for name, given in (("list", [i.encode() for i in ids]), ("array", np.array(ids, "S"))):
        with open(tmp_path / f"{name}.pkl", "wb") as handle:
            pickle.dump({"features": features, "narration_ids": given}, handle, protocol=2)
        result = interop.import_features(
            tmp_path / f"{name}.pkl", out=tmp_path / f"{name}.zarr", domain="target",
            split="val", annotations=uda / "EPIC_100_uda_target_val.csv",
        )  # fmt: skip
        assert open_cache(result.store).segments["uid"].tolist() == ids


def test_annotations_with_a_huge_class_id_are_refused(tmp_path):
    # `avda cache import` read annotations without the manifest checks: a verb_class of 10^9
    # was stored, and training sized its classifier by it
    (tmp_path / "a.csv").write_text(
        "uid,video_id,domain,split,start_sec,stop_sec,verb_class\n"
        "a,v,d,train,0,1,1000000000\nb,v,d,train,1,2,2\n"
    )
    with pytest.raises(ConfigError, match=r"a.csv: verb_class 1000000000 is beyond 99,999"):
        interop.read_segment_table(tmp_path / "a.csv")


def test_a_npy_file_that_is_no_numeric_2d_array_is_refused_in_one_line(tmp_path, capsys):
    """A 0-d, 3-d, object (pickled) or damaged ``<video>.npy`` is refused naming the file,
    exit 1, no store, nothing unpickled (they were internal errors: len() of an unsized
    object, a tuple index, an object array that cannot be memory-mapped)."""
    from avda import cli

    folder = tmp_path / "npy"
    folder.mkdir()
    pd.DataFrame({
        "uid": ["a"], "video_id": ["v"], "domain": "s", "split": "train",
        "start_sec": 0.0, "stop_sec": 1.0,
    }).to_csv(tmp_path / "m.csv", index=False)  # fmt: skip
    path = folder / "v.npy"
    cases = {
        "0-d": lambda: np.save(path, np.float32(3)),
        "3-d": lambda: np.save(path, np.zeros((4, 2, 3), np.float32)),
        "object": lambda: np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True),
        "text": lambda: path.write_text("not an array\n"),
        "strings": lambda: np.save(path, np.array([["a", "b"]])),
        # np.load opens a zip by its bytes, whatever the name: an NpzFile, no array
        "npz": lambda: np.savez(path.open("wb"), np.zeros((4, 2), np.float32)),
    }
    for case, write in cases.items():
        write()
        code = cli.main(["cache", "import", str(folder), "-a", str(tmp_path / "m.csv"),
                         "--feature-rate", "4", "-o", str(tmp_path / "s.zarr")])  # fmt: skip
        err = capsys.readouterr().err
        assert code == 1 and len(err.strip().splitlines()) == 1, (case, err)
        assert str(path) in err and "internal error" not in err, (case, err)
        assert not (tmp_path / "s.zarr").exists(), case


def test_per_video_sampling_holds_one_copy_of_the_features(tmp_path):
    """The (n, K, D) features are filled video by video: the sampling's peak memory is one
    array of them (the rows of every segment held apart until the end doubled it)."""
    import tracemalloc

    folder = tmp_path / "npy"
    folder.mkdir()
    videos = [f"v{i:03d}" for i in range(60)]
    for video in videos:
        np.save(folder / f"{video}.npy", np.ones((40, 64), np.float32))
    segments = pd.DataFrame({
        "uid": videos, "video_id": videos, "domain": "s", "split": "train",
        "start_sec": 0.0, "stop_sec": 8.0,
    })  # fmt: skip
    found = {v: folder / f"{v}.npy" for v in videos}
    tracemalloc.start()
    try:
        features, _, _ = interop._sample_videos(
            folder, "npy", found, interop._open_npy, segments, 5.0, 25, "nearest"
        )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert features.shape == (60, 25, 64) and (features == 1).all()
    assert peak < 1.5 * features.nbytes, (peak, features.nbytes)
