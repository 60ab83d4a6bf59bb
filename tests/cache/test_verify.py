"""``avda cache verify`` / :meth:`FeatureCache.verify`: every chunk read once, each problem one
line naming its file, its rows and the fix; exit code 3 when any (0 when clean)."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import zarr
from tests.conftest import make_feature_cache

from avda import cache as cache_lib
from avda import cli
from avda.cache import interop, schema
from avda.errors import CacheError


def verify_cli(capsys, path, *extra):
    code = cli.main(["cache", "verify", str(path), *extra])
    out, err = capsys.readouterr()
    return code, out.strip().splitlines(), err


@pytest.fixture
def store_path(tmp_path):
    path = tmp_path / "c.zarr"
    make_feature_cache(path, chunk_rows=8, per_class=4)  # 48 segments, 6 chunks
    return path


def test_a_clean_store_has_no_problems_and_exit_code_0(capsys, store_path):
    assert cache_lib.open_cache(store_path).verify().empty
    code, lines, err = verify_cli(capsys, store_path, "--quiet")
    assert code == 0 and err == ""
    assert lines == [f"cache {store_path}: no problems (13 arrays, 78 chunks read)"]


def test_the_progress_bar_goes_to_stderr_unless_quiet(capsys, store_path):
    code, lines, err = verify_cli(capsys, store_path)
    assert code == 0 and "verify" in err and "chunk" in err
    assert len(lines) == 1


@pytest.mark.parametrize(
    "group, file",
    [
        (schema.FEATURES_GROUP, "features/rgb/c/1/0/0"),
        (schema.STATUS_GROUP, "status/rgb/c/1"),
    ],
)
def test_a_truncated_chunk_file_is_named_with_its_rows_and_the_fix(capsys, store_path, group, file):
    chunk = store_path / file
    chunk.write_bytes(chunk.read_bytes()[:7])  # a copy cut short
    problems = cache_lib.open_cache(store_path).verify()
    assert problems[["kind", "array", "file"]].values.tolist() == [
        ["damaged", f"{group}/rgb", file]
    ]
    assert problems["rows"].iloc[0] == list(range(8, 16))
    message = problems["message"].iloc[0]
    assert f"{file} (rows 8-15) is damaged" in message
    # no errors/rgb/c/1: no row of it failed (zarr writes no chunk of fill values), and a
    # file named that is not there made `rm` of the list fail
    assert "delete features/rgb/c/1/0/0, status/rgb/c/1 under it" in message
    assert "avda extract" in message

    code, lines, _ = verify_cli(capsys, store_path, "-q")
    assert code == cli.EXIT_FAILED_ITEMS == 3
    assert lines == [message, f"cache {store_path}: 1 problem (1 file; 13 arrays, 78 chunks read)"]


def test_nan_in_a_done_row_is_named_with_its_row(capsys, store_path):
    features = zarr.open_group(str(store_path), mode="r+")["features/audio"]
    block = features[16:24]
    block[3, 1, 2] = np.nan
    features[16:24] = block
    problems = cache_lib.open_cache(store_path).verify()
    assert problems[["kind", "array", "file"]].values.tolist() == [
        ["nonfinite", "features/audio", "features/audio/c/2/0/0"]
    ]
    assert problems["rows"].iloc[0] == [19]
    assert "row 19 is done but NaN/inf" in problems["message"].iloc[0]
    # the command and its Python spelling: open_cache(...).verify() is read in a notebook too
    message = problems["message"].iloc[0]
    assert message.endswith(
        "run the same `avda extract --retry-failed` (Python: avda.extract(..., "
        "retry_failed=True)), which marks them failed and recomputes them"
    )

    code, lines, _ = verify_cli(capsys, store_path, "-q")
    assert code == 3 and lines[0] == problems["message"].iloc[0] and len(lines) == 2


def test_a_lost_modality_array_names_the_command_and_its_python_spelling(store_path):
    """A fix that names a command's option (``--force``) gives the keyword too: a Python user
    reading ``verify()`` cannot pass ``--force`` to ``avda.extract``."""
    zarr.open_group(str(store_path), mode="r+")["features/rgb"].resize((48, 5, 6))
    shutil.rmtree(store_path / "errors" / "rgb")
    problems = cache_lib.open_cache(store_path).verify()
    fix = "run `avda extract --force` (Python: avda.extract(..., force=True)) to recompute"
    for array in ("errors/rgb", "features/rgb"):
        message = problems.loc[problems["array"] == array, "message"].iloc[0]
        assert message.endswith(f"a good copy, or {fix} the modality"), message


def test_nan_in_a_failed_row_is_no_problem(store_path):
    group = zarr.open_group(str(store_path), mode="r+")
    features, status = group["features/audio"], group["status/audio"]
    block = features[16:24]
    block[3] = np.nan
    features[16:24] = block
    status[19] = int(cache_lib.Status.FAILED)
    assert cache_lib.open_cache(store_path).verify().empty


def test_a_status_value_outside_the_enum_and_a_short_array(store_path):
    group = zarr.open_group(str(store_path), mode="r+")
    group["status/rgb"][40] = 9
    group["errors/audio"].resize((40,))
    problems = cache_lib.open_cache(store_path).verify()
    found = {kind: (array, file, rows) for kind, array, file, rows in problems.values[:, :4]}
    assert found["status"] == ("status/rgb", "status/rgb/c/5", [40])
    assert found["shape"] == ("errors/audio", "", list(range(40, 48)))
    messages = "\n".join(problems["message"])
    assert "row 40 is status 9, not one of 0 pending, 1 done, 2 failed, 3 missing" in messages
    assert "errors/audio has 40 rows, the store 48 segments" in messages


def test_every_problem_is_found_in_one_pass(store_path):
    for file in ("features/rgb/c/0/0/0", "status/audio/c/5", "segments/uid/c/3"):
        chunk = store_path / file
        chunk.write_bytes(chunk.read_bytes()[:5])
    problems = cache_lib.open_cache(store_path).verify()
    assert sorted(problems["file"]) == [
        "features/rgb/c/0/0/0",
        "segments/uid/c/3",
        "status/audio/c/5",
    ]


def test_spatial_maps_damaged_or_nan_name_their_file_and_the_features_chunk(store_path):
    store = cache_lib.open_cache(store_path, mode="r+")
    info = {"backbone": "synthetic", "weights": None, "weights_sha256": None, "input_spec": {}}
    store.add_modality("flow", num_clips=2, num_features=16, info=info, spatial_shape=(3, 2, 2))
    n = store.num_segments
    store.write_spatial("flow", np.arange(n), np.ones((n, 2, 3, 2, 2)))
    store.write("flow", np.arange(n), np.ones((n, 2, 16)), np.ones(n, dtype=int), [""] * n)
    maps = zarr.open_group(str(store_path), mode="r+")["spatial/flow"]
    block = maps[8:16]
    block[2, 0, 1, 1, 1] = np.inf
    maps[8:16] = block
    chunk = store_path / "spatial/flow/c/3/0/0/0/0"
    chunk.write_bytes(chunk.read_bytes()[:6])
    problems = cache_lib.open_cache(store_path).verify()
    assert problems[["kind", "file", "rows"]].values.tolist() == [
        ["nonfinite", "spatial/flow/c/1/0/0/0/0", [10]],
        ["damaged", "spatial/flow/c/3/0/0/0/0", list(range(24, 32))],
    ]
    assert (
        "delete spatial/flow/c/3/0/0/0/0, features/flow/c/3/0/0, status/flow/c/3 under it"
        in problems["message"].iloc[1]
    )


def test_a_damaged_array_description_is_a_problem_not_an_internal_error(capsys, store_path):
    described = store_path / "features" / "rgb" / "zarr.json"
    described.write_bytes(described.read_bytes()[:30])
    code, lines, err = verify_cli(capsys, store_path, "-q")
    assert code == 3 and err == ""
    assert "features/rgb/zarr.json (the array's description) is damaged" in lines[0]
    assert "restore the store from a good copy" in lines[0]


def test_a_missing_chunk_file_of_done_rows_is_a_problem(capsys, store_path):
    """An interrupted rsync leaves files out, not only cut short: zarr reads an absent chunk as
    zeros, so the done rows' features would train as zeros without a word."""
    (store_path / "features/rgb/c/1/0/0").unlink()
    problems = cache_lib.open_cache(store_path).verify()
    assert problems[["kind", "array", "file"]].values.tolist() == [
        ["missing", "features/rgb", "features/rgb/c/1/0/0"]
    ]
    assert problems["rows"].iloc[0] == list(range(8, 16))
    message = problems["message"].iloc[0]
    assert "features/rgb/c/1/0/0 is missing, though rows 8, 9" in message
    # the files there are: naming the missing one too made `rm` of the list fail
    assert "or delete status/rgb/c/1 under it (those rows become" in message
    code, lines, _ = verify_cli(capsys, store_path, "-q")
    assert code == 3 and lines[0] == message


def test_an_absent_chunk_of_rows_not_done_is_no_problem(store_path):
    group = zarr.open_group(str(store_path), mode="r+")
    group["status/rgb"][8:16] = int(cache_lib.Status.PENDING)
    (store_path / "features/rgb/c/1/0/0").unlink()
    assert cache_lib.open_cache(store_path).verify().empty


def test_rows_past_the_segment_count_are_a_note_not_a_problem(capsys, store_path):
    """A killed `avda cache import` leaves rows past num_segments (and the arrays of a modality
    the provenance does not list): readers never read them and the next import removes them,
    so the store is sound (exit 0), with a note; the leftover arrays are not checked."""
    store = cache_lib.open_cache(store_path, mode="r+")
    for array in store.arrays().values():
        array.resize((51, *array.shape[1:]))
    store.add_modality("flow", num_clips=2, num_features=16, info={}, register=False, rows=51)
    chunk = store_path / "segments/uid/c/6"  # rows 48-50 of the append: not read
    chunk.write_bytes(b"cut")
    zarr.open_group(str(store_path), mode="r+")["status/flow"][:] = 9  # not the store's
    problems = cache_lib.open_cache(store_path).verify()
    assert problems.empty
    notes = problems.attrs["notes"]
    assert len(notes) == 2
    assert "features/flow, status/flow, errors/flow: the arrays of a modality" in notes[0]
    assert "13 arrays (" in notes[1] and "rows past its 48 segments (up to row 50)" in notes[1]
    assert "the next `avda cache import` into it removes them" in notes[1]
    code, lines, _ = verify_cli(capsys, store_path, "-q")
    assert code == 0
    assert lines == [f"note: {note}" for note in notes] + [
        f"cache {store_path}: no problems (13 arrays, 78 chunks read; 2 notes above)"
    ]


def test_an_absent_status_chunk_of_written_rows_is_a_problem(capsys, store_path):
    """zarr reads an absent status chunk as 0, pending: `avda train` would leave the rows out
    and a resume recompute them, though their features are in the store."""
    (store_path / "status/rgb/c/1").unlink()
    problems = cache_lib.open_cache(store_path).verify()
    assert problems[["kind", "array", "file", "rows"]].values.tolist() == [
        ["missing", "status/rgb", "status/rgb/c/1", list(range(8, 16))]
    ]
    message = problems["message"].iloc[0]
    assert "status/rgb/c/1 is missing, so rows 8-15 read as pending" in message
    assert "though features/rgb/c/1/0/0 is there" in message
    assert "run the same `avda extract` again, which recomputes them" in message
    code, lines, _ = verify_cli(capsys, store_path, "-q")
    assert code == 3 and lines[0] == message
    # a chunk of rows never extracted has no files at all (zarr writes no chunk of pending
    # rows only): no problem
    (store_path / "features/rgb/c/1/0/0").unlink()
    assert cache_lib.open_cache(store_path).verify().empty


def _drop_chunk_1(store_path):
    """A copy that dropped every file of rows 8-15 of rgb: status and features (the errors of
    rows without one hold no file)."""
    for file in ("status/rgb/c/1", "features/rgb/c/1/0/0"):
        (store_path / file).unlink()
    assert not (store_path / "errors/rgb/c/1").exists()


def test_finished_rows_whose_status_and_features_files_were_lost_are_a_problem(capsys, store_path):
    """Without a completion record, rows whose every file was lost read as never extracted:
    a store whose extraction recorded finishing (finished_rows) tells them apart."""
    store = cache_lib.open_cache(store_path, mode="r+")
    assert store.record_finished("rgb") and store.finished_rows("rgb") == 48
    _drop_chunk_1(store_path)
    problems = cache_lib.open_cache(store_path).verify()
    assert problems[["kind", "array", "file", "rows"]].values.tolist() == [
        ["missing", "status/rgb", "status/rgb/c/1", list(range(8, 16))]
    ]
    message = problems["message"].iloc[0]
    assert "status/rgb/c/1 is missing, so rows 8-15 read as pending" in message
    assert "though the extraction finished its first 48 rows (finished_rows" in message
    assert "run the same `avda extract` again, which recomputes them" in message
    assert problems.attrs["notes"] == []
    code, lines, _ = verify_cli(capsys, store_path, "-q")
    assert code == 3 and lines[0] == message
    # no longer finished: the record is not written again
    assert not cache_lib.open_cache(store_path, mode="r+").record_finished("rgb")


def test_a_pending_row_among_finished_ones_in_a_status_file_is_a_problem(store_path):
    store = cache_lib.open_cache(store_path, mode="r+")
    store.record_finished("rgb")
    zarr.open_group(str(store_path), mode="r+")["status/rgb"][9] = 0  # an older status file
    problems = cache_lib.open_cache(store_path).verify()
    assert problems[["kind", "file", "rows"]].values.tolist() == [["status", "status/rgb/c/1", [9]]]
    assert (
        "row 9 is pending, though the extraction finished its first 48"
        in (problems["message"].iloc[0])
    )


def test_rows_appended_after_the_record_may_be_pending(store_path):
    store = cache_lib.open_cache(store_path, mode="r+")
    store.record_finished("rgb")
    store.update_modality_info("rgb", finished_rows=12)  # as if rows 12-47 came later
    group = zarr.open_group(str(store_path), mode="r+")
    group["status/rgb"][12:16] = 0
    group["status/rgb"][16:24] = 0  # the whole chunk 2 pending: no status file
    (store_path / "features/rgb/c/2/0/0").unlink()  # nor features: never extracted
    assert cache_lib.open_cache(store_path).verify().empty
    (store_path / "features/rgb/c/1/0/0").unlink()
    (store_path / "status/rgb/c/1").unlink()  # rows 8-11 finished, 12-15 appended
    problems = cache_lib.open_cache(store_path).verify()
    assert problems[["file", "rows"]].values.tolist() == [["status/rgb/c/1", [8, 9, 10, 11]]]


def test_a_store_without_the_record_reads_as_before_with_a_note(store_path):
    """Stores made before finished_rows: lost rows cannot be told from rows never extracted,
    which is no problem, and a note says so."""
    _drop_chunk_1(store_path)
    problems = cache_lib.open_cache(store_path).verify()
    assert problems.empty
    (note,) = problems.attrs["notes"]
    assert "status/rgb: 8 rows pending, and no finished extraction of rgb recorded" in note
    assert "the same `avda extract` computes them and records it" in note


def test_a_new_modalitys_arrays_drop_a_finished_record(store_path):
    store = cache_lib.open_cache(store_path, mode="r+")
    store.record_finished("rgb")
    info = store.modality_info("rgb")
    store.add_modality("rgb", num_clips=2, num_features=16, info=info)  # --force: all pending
    assert store.finished_rows("rgb") == 0
    assert cache_lib.open_cache(store_path).verify().empty


@pytest.fixture
def imported_path(tmp_path):
    """A store made by `avda cache import` of per-video .npy files: 8 segments, 4 per chunk."""
    folder = tmp_path / "feats"
    folder.mkdir()
    np.save(folder / "v1.npy", np.random.default_rng(0).normal(size=(40, 16)).astype("float32"))
    pd.DataFrame(
        {
            "uid": [f"s{i}" for i in range(8)],
            "video_id": "v1",
            "domain": "D1",
            "split": "train",
            "start_sec": np.arange(8.0),
            "stop_sec": np.arange(8.0) + 1,
        }
    ).to_csv(tmp_path / "m.csv", index=False)
    result = interop.import_features(
        folder,
        out=tmp_path / "imported.zarr",
        annotations=tmp_path / "m.csv",
        feature_rate=2.0,
        num_clips=2,
        chunk_rows=4,
        domain="D1",
    )
    return result.store


@pytest.mark.parametrize("file", ["features/rgb/c/1/0/0", "status/rgb/c/1"])
def test_an_imported_modalitys_chunk_is_imported_again_not_extracted(imported_path, file):
    """`avda extract` cannot recompute rows an import brought, and the same import into the
    store says 'already imported': the fix names the import, into a new store."""
    chunk = imported_path / file
    chunk.write_bytes(chunk.read_bytes()[:7])
    problems = cache_lib.open_cache(imported_path).verify()
    assert problems[["kind", "file", "rows"]].values.tolist() == [["damaged", file, [4, 5, 6, 7]]]
    message = problems["message"].iloc[0]
    folder = imported_path.parent / "feats"
    assert "avda extract" not in message
    assert "import what rows 4-7 of rgb came from into a new store (-o NEW.zarr" in message
    assert (
        f"`avda cache import {folder} --format npy --domain D1 --modality rgb --feature-rate 2 "
        "--num-clips 2`"
    ) in message
    store = cache_lib.open_cache(imported_path)
    read = store.load if file.startswith("features") else store.status  # a reader says so too
    with pytest.raises(CacheError, match="into a new store") as raised:
        read("rgb")
    assert "avda extract" not in str(raised.value)


def test_an_imported_modalitys_absent_or_odd_chunks_are_imported_again(imported_path):
    (imported_path / "features/rgb/c/0/0/0").unlink()  # done rows
    (imported_path / "status/rgb/c/1").unlink()  # every imported row has a status
    problems = cache_lib.open_cache(imported_path).verify()
    assert problems[["kind", "file", "rows"]].values.tolist() == [
        ["missing", "status/rgb/c/1", [4, 5, 6, 7]],  # status arrays are read first
        ["missing", "features/rgb/c/0/0/0", [0, 1, 2, 3]],
    ]
    for message in problems["message"]:
        assert "avda extract" not in message and "into a new store (-o NEW.zarr" in message
    assert "an import gives each of its rows a status" in problems["message"].iloc[0]
    zarr.open_group(str(imported_path), mode="r+")["status/rgb"][5] = 9
    problems = cache_lib.open_cache(imported_path).verify()
    odd = problems.loc[problems["kind"] == "status", "message"].iloc[0]
    assert "row 5 is status 9" in odd and "import what row 5 of rgb came from" in odd
    assert "avda extract" not in odd
    shutil.rmtree(imported_path / "errors" / "rgb")  # a whole array the copy never reached
    problems = cache_lib.open_cache(imported_path).verify()
    gone = problems.loc[problems["array"] == "errors/rgb", "message"].iloc[0]
    assert "errors/rgb is missing (the provenance lists modality 'rgb')" in gone
    assert "avda extract" not in gone and "into a new store (-o NEW.zarr" in gone


def test_nan_in_an_imported_row_names_the_import_to_fix(imported_path):
    features = zarr.open_group(str(imported_path), mode="r+")["features/rgb"]
    block = features[4:8]
    block[2, 0, 3] = np.nan
    features[4:8] = block
    problems = cache_lib.open_cache(imported_path).verify()
    message = problems["message"].iloc[0]
    assert "row 6 is done but NaN/inf; fix the imported file, then import what row 6" in message
    assert f"`avda cache import {imported_path.parent / 'feats'} --format npy" in message


def test_the_fix_names_each_import_the_rows_came_from_with_the_modalitys_backbone(tmp_path):
    """Two imports of per-video .npy files (backbone `mine`) into one store: a damaged chunk
    of the second one's rows names that import, with --backbone (the second import is refused
    without it: one modality, one backbone), and the store's other files."""
    rng = np.random.default_rng(0)
    for part, video, rows in (("a", "v1", range(0, 4)), ("b", "v2", range(4, 8))):
        (tmp_path / part).mkdir()
        np.save(tmp_path / part / f"{video}.npy", rng.normal(size=(20, 16)).astype("float32"))
        pd.DataFrame(
            {
                "uid": [f"s{i}" for i in rows],
                "video_id": video,
                "domain": "D1",
                "split": "train",
                "start_sec": np.arange(4.0),
                "stop_sec": np.arange(4.0) + 1,
            }
        ).to_csv(tmp_path / f"{part}.csv", index=False)
        interop.import_features(
            tmp_path / part,
            out=tmp_path / "two.zarr",
            annotations=tmp_path / f"{part}.csv",
            feature_rate=2.0,
            num_clips=2,
            chunk_rows=4,
            backbone="mine",
        )
    chunk = tmp_path / "two.zarr/features/rgb/c/1/0/0"
    chunk.write_bytes(chunk.read_bytes()[:7])
    message = cache_lib.open_cache(tmp_path / "two.zarr").verify()["message"].iloc[0]
    assert (
        f"`avda cache import {tmp_path / 'b'} --format npy --backbone mine --modality rgb "
        "--feature-rate 2 --num-clips 2`"
    ) in message
    assert f"{tmp_path / 'a'}" not in message
    assert "(to re-create the whole store: its 2 files, in the order `imports`" in message


def test_the_fix_of_a_tsn_placed_import_keeps_its_placement(tmp_path):
    """Rows imported with --placement tsn are imported again with it: the default placement
    takes other rows (one frame early for many of TA3N's videos)."""
    (tmp_path / "npy").mkdir()
    np.save(tmp_path / "npy/v1.npy", np.arange(40, dtype="float32").reshape(20, 2))
    pd.DataFrame(
        {
            "uid": [f"s{i}" for i in range(4)],
            "video_id": "v1",
            "domain": "D1",
            "split": "train",
            "start_sec": np.arange(4.0),
            "stop_sec": np.arange(4.0) + 1,
        }
    ).to_csv(tmp_path / "a.csv", index=False)
    interop.import_features(
        tmp_path / "npy",
        out=tmp_path / "tsn.zarr",
        annotations=tmp_path / "a.csv",
        feature_rate=2.0,
        num_clips=2,
        placement="tsn",
        chunk_rows=4,
        backbone="mine",
    )
    chunk = tmp_path / "tsn.zarr/features/rgb/c/0/0/0"
    chunk.write_bytes(chunk.read_bytes()[:7])
    message = cache_lib.open_cache(tmp_path / "tsn.zarr").verify()["message"].iloc[0]
    assert "--feature-rate 2 --num-clips 2 --placement tsn`" in message


def test_unfinished_zarr_writes_are_a_note_naming_the_file(capsys, store_path):
    """Zarr writes each file as ``<name>.<hex>.partial`` and renames it: a writer killed during
    a write leaves that file (3 of 15 SIGKILLs of an import of 13 MiB chunks did), which
    nothing reads; verify names it in a note (exit 0), and said nothing before."""
    chunk = store_path / "features/rgb/c/0/0/0"
    leftover = chunk.with_name("0.0123456789abcdef0123456789abcdef.partial")
    leftover.write_bytes(chunk.read_bytes()[:10])
    problems = cache_lib.open_cache(store_path).verify()
    assert problems.empty
    (note,) = problems.attrs["notes"]
    assert "1 unfinished write file (features/rgb/c/0/0/0.0123456789abcdef" in note
    assert "the next command that writes it alone (`avda extract` without --shard" in note
    code, lines, _ = verify_cli(capsys, store_path, "-q")
    assert code == 0 and lines[0] == f"note: {note}"


@pytest.mark.parametrize("column", ["domain", "uid", "split"])
def test_a_missing_chunk_file_of_the_segment_table_is_a_problem(capsys, store_path, column):
    """zarr reads an absent chunk of segments/<column> as "" (0.0): rows of no domain or
    split, which a run leaves out without a word; every row has a value there, so its chunk
    files are all written, and an absent one is a copy cut short."""
    (store_path / f"segments/{column}/c/1").unlink()
    problems = cache_lib.open_cache(store_path).verify()
    assert problems[["kind", "array", "file", "rows"]].values.tolist() == [
        ["missing", f"segments/{column}", f"segments/{column}/c/1", list(range(8, 16))]
    ]
    message = problems["message"].iloc[0]
    assert f"segments/{column}/c/1 is missing, so rows 8-15 read {column}" in message
    assert "re-create it with the command that made it" in message
    code, lines, _ = verify_cli(capsys, store_path, "-q")
    assert code == 3 and lines[0] == message


def test_a_store_whose_times_are_zero_in_a_chunk_is_sound(tmp_path):
    """An import takes the times of its table unchecked (its features are already cut): a
    chunk whose rows all stop at 0.0 has no file (zarr writes none of the fill value), and
    verify called it a copy cut short."""
    segments = pd.DataFrame(
        {"uid": ["a", "b", "c", "d"], "video_id": "v", "domain": "d", "split": "train",
         "start_sec": 0.0, "stop_sec": [0.0, 0.0, 1.0, 2.0]}
    )  # fmt: skip
    store = cache_lib.create(
        tmp_path / "s.zarr", segments, manifest_sha256="", recipe={"name": "imported"},
        chunk_rows=2,
    )  # fmt: skip
    assert not (store.path / "segments/stop_sec/c/0").exists()
    assert store.verify().empty


def test_an_absent_chunk_of_an_optional_segment_column_is_no_problem(store_path):
    """start_sec (and an optional column) can hold the fill value in every row of a chunk
    (whole videos from 0 s), which zarr does not write."""
    group = zarr.open_group(str(store_path), mode="r+")
    group["segments/start_sec"][8:16] = 0.0
    (store_path / "segments/start_sec/c/1").unlink(missing_ok=True)
    assert cache_lib.open_cache(store_path).verify().empty
