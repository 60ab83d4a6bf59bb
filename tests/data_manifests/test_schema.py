"""Manifest schema validation: every problem reported at once, with file row numbers."""

from __future__ import annotations

import errno
import re
from pathlib import Path

import pandas as pd
import pytest

from avda.data_manifests import schema
from avda.errors import ManifestError

GOOD = """uid,video_id,domain,split,start_sec,stop_sec,verb_class
a,v1,D1,train,0.0,1.5,0
b,v1,D1,test,2.0,3.0,1
"""


def test_valid_manifest_reads_with_canonical_dtypes(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text(GOOD)
    frame = schema.read(path)
    assert len(frame) == 2
    assert str(frame["verb_class"].dtype) == "Int64"
    assert frame["stop_sec"].tolist() == [1.5, 3.0]


def test_every_problem_is_reported_with_its_row(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text(
        "uid,video_id,domain,split,start_sec,stop_sec,verb_class\n"
        "a,v1,D1,train,0.0,1.5,0\n"  # row 2 ok
        "a,v1,D1,train,0.0,1.5,0\n"  # row 3 duplicate uid
        "c,v1,D1,training,0.0,1.5,0\n"  # row 4 unknown split
        "d,v1,D1,test,3.0,2.0,0\n"  # row 5 stop <= start
        "e,v1,D1,test,0.0,1.0,1.5\n"  # row 6 non-integer class
        "f,v1,D1,test,abc,1.0,1\n"  # row 7 bad number
        "g,v1,D1,test,0.0,1.0,-1\n"  # row 8 negative class (it printed -1.0)
        "h,v1,D1,test,0.0,1.0,1000000000\n"  # row 9: `avda finetune` asked for 4 TB
        "i,v1,D1,test,0.0,1.0,99999\n"  # row 10 ok
    )
    with pytest.raises(ManifestError) as info:
        schema.read(path)
    message = str(info.value)
    assert "7 problem(s)" in message
    assert "not a non-negative integer: 1.5" in message
    shown = [str(p) for p in info.value.problems]
    assert "row 8 [verb_class]: not a non-negative integer: -1" in shown
    assert (
        "row 9 [verb_class]: class id 1000000000 is beyond 99,999: ids number the classes "
        "from 0 (renumber them)" in shown
    )
    # the multi-label column too (CharadesEgo's "3;17"), and readers that skip find_problems
    frame = pd.DataFrame({"uid": ["a", "b", "c"], "labels": ["0;17", "3;1000000000", "x"]})
    assert schema.labels_problem("0;17") is None and schema.labels_problem("") is None
    assert "labels id '1000000000' is not a class id 0..99,999" in schema.labels_problem(
        "3;1000000000"
    )
    assert schema.class_id_problem(frame).startswith("labels id '1000000000'")
    assert schema.class_id_problem(frame.iloc[[0]]) is None
    for expected in (
        "row 3 [uid]: duplicate uid 'a' (first at row 2)",
        "row 4 [split]",
        "row 5 [stop_sec]",
        "row 6 [verb_class]",
        "row 7 [start_sec]",
    ):
        assert expected in message


def test_missing_columns_and_missing_videos(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("uid,video_id,domain\na,v1,D1\n")
    with pytest.raises(ManifestError, match="required column 'split' is missing"):
        schema.read(path)
    path.write_text(GOOD)
    (tmp_path / "videos").mkdir()
    with pytest.raises(ManifestError, match=r"row 2 \[video_path\]: video file .*v1.mp4 not found"):
        schema.read(path, videos=tmp_path / "videos")
    # a file of the video's name with another extension: named, with the fix (a new user's
    # test.avi read as test.mp4, "not found" and nothing more)
    (tmp_path / "videos" / "v1.avi").write_bytes(b"")
    hint = "(the folder has v1.avi: give its name in the manifest's video_path column"
    with pytest.raises(ManifestError, match=re.escape(hint)):
        schema.read(path, videos=tmp_path / "videos")
    from avda.errors import MediaError
    from avda.extract.decode import probe

    with pytest.raises(MediaError, match=re.escape(hint)):
        probe(tmp_path / "videos" / "v1.mp4")


def test_a_missing_required_column_names_the_one_the_file_has_for_it(tmp_path, caplog):
    # a new user's header `uid,video,domain,split,start,stop_sec,verb_clas`: it said only
    # "required column 'video_id' is missing ... fix these rows (or drop them)", and the
    # verb_clas hint was not shown because the file failed first
    path = tmp_path / "m.csv"
    path.write_text(
        GOOD.replace("video_id", "video")
        .replace("start_sec", "Start")
        .replace("verb_class", "verb_clas")
    )
    caplog.set_level("WARNING")
    with pytest.raises(ManifestError) as info:
        schema.read(path)
    message = str(info.value)
    assert "required column 'video_id' is missing; the file has 'video': rename it" in message
    assert "required column 'start_sec' is missing; the file has 'Start': rename it" in message
    assert "fix the file (its header and columns) and run" in message
    assert "fix these rows" not in message
    assert "did you mean 'verb_class'?" in caplog.text
    path.write_text("uid,video_id,domain,split,start_secs,stop_sec\na,v,D1,train,0,1\n")
    with pytest.raises(ManifestError, match="the file has 'start_secs': rename it to 'start_sec'"):
        schema.read(path)
    path.write_text("uid,video_id,domain,split,stop_sec\na,v,D1,train,1\n")  # nothing close
    with pytest.raises(ManifestError, match=r"required column 'start_sec' is missing\n"):
        schema.read(path)


def test_missing_file_message_names_the_fix(tmp_path):
    with pytest.raises(ManifestError, match="avda manifest build"):
        schema.read(tmp_path / "absent.csv")


def test_fingerprint_is_stable_and_content_sensitive():
    frame = pd.read_csv(pd.io.common.StringIO(GOOD))
    other = frame.copy()
    other.loc[0, "stop_sec"] = 1.6
    assert schema.fingerprint(frame) == schema.fingerprint(frame.copy())
    assert schema.fingerprint(frame) != schema.fingerprint(other)


def test_a_misspelt_optional_column_is_named_with_the_one_meant(tmp_path, caplog):
    """An optional column misspelt is not an error (a manifest may carry columns of its own),
    but its data would be silently unused: a source without labels only failed at training."""
    path = tmp_path / "m.csv"
    path.write_text(GOOD.replace("verb_class", "verb_clas").replace("split,", "split,Participant,")
                    .replace("train,", "train,P01,").replace("test,", "test,P01,"))  # fmt: skip
    caplog.set_level("WARNING")
    frame = schema.read(path)
    assert "verb_class" not in frame and list(frame["verb_clas"]) == [0, 1]
    assert "column 'verb_clas' is not one avda reads" in caplog.text
    assert "did you mean 'verb_class'?" in caplog.text
    assert "did you mean 'participant_id'?" in caplog.text
    caplog.clear()
    path.write_text(GOOD.replace("uid,", "narration_id,uid,").replace("\na,", "\nn1,a,")
                    .replace("\nb,", "\nn2,b,"))  # fmt: skip
    schema.read(path)  # a column of its own, or the id of a known one: nothing to say
    assert caplog.text == ""


@pytest.mark.parametrize("separator", [";", "\t"])
def test_a_file_with_another_separator_is_one_problem_naming_it(tmp_path, separator):
    path = tmp_path / "m.csv"
    path.write_text(GOOD.replace(",", separator))
    with pytest.raises(ManifestError) as info:
        schema.read(path)
    message = str(info.value)
    assert "1 problem(s)" in message and f"the file is {separator!r}-separated" in message
    assert "required column" not in message


def test_the_build_records_class_tables_are_read_and_ids_outside_them_refused(tmp_path):
    import json

    import numpy as np

    from avda.errors import CacheError
    from avda.train.data import infer_tasks

    path = tmp_path / "m.csv"
    path.write_text(GOOD)
    assert "classes" not in schema.read(path).attrs  # no build record: nothing attached
    Path(f"{path}.build.json").write_text(json.dumps({"classes": {"verb_class": list("abcdef")}}))
    frame = schema.read(path)
    assert frame.attrs["classes"] == {"verb_class": list("abcdef")}
    rows = np.arange(len(frame))
    assert infer_tasks(frame, rows, None)[0].num_classes == 2  # the largest id + 1
    assert infer_tasks(frame, rows, None, frame.attrs["classes"])[0].num_classes == 6
    with pytest.raises(CacheError, match="class id 1, outside the cache's class table of 1"):
        infer_tasks(frame, rows, None, {"verb_class": ["a"]})
    # no class table: a protocol's benchmark count (CharadesEgo's 157 on a subset), else max + 1
    bench = "protocol p's benchmark"
    assert infer_tasks(frame, rows, None, known={"verb": 8}, benchmark=bench)[0].num_classes == 8
    assert (
        infer_tasks(frame, rows, None, {"verb_class": list("abcdef")}, known={"verb": 8})[
            0
        ].num_classes
        == 6
    )  # the table the cache records wins
    with pytest.raises(CacheError, match="class id 1, outside the 1 classes of protocol p's"):
        infer_tasks(frame, rows, None, known={"verb": 1}, benchmark=bench)
    Path(f"{path}.build.json").write_text('{"classes": {"verb_class": "abc"}}')
    with pytest.raises(ManifestError, match="not an object of class-name lists"):
        schema.read(path)


def test_a_written_csv_keeps_integer_classes_with_unlabelled_rows(tmp_path):
    # EPIC-100's UDA manifest (target train unlabelled) was written with verb_class 3.0
    frame = pd.read_csv(pd.io.common.StringIO(GOOD + "c,v1,D2,train,4.0,5.0,\n"))
    assert frame["verb_class"].dtype == float  # what pandas makes of an empty cell
    path = schema.write(frame, tmp_path / "m.csv")
    lines = path.read_text().splitlines()
    assert lines[1].endswith(",0") and lines[2].endswith(",1") and lines[3].endswith(",")
    again = schema.read(path)
    assert schema.fingerprint(again) == schema.fingerprint(frame)
    assert again["verb_class"].iloc[:2].tolist() == [0, 1] and pd.isna(again["verb_class"][2])


def test_a_written_parquet_keeps_integer_classes_with_unlabelled_rows(tmp_path):
    # `avda manifest build epic100-uda -o epic100.parquet` stored verb_class/noun_class as
    # float64 (3.0, NaN), against manifest.md's "int": pandas readers of the file got floats
    frame = pd.read_csv(pd.io.common.StringIO(GOOD + "c,v1,D2,train,4.0,5.0,\n"))
    path = schema.write(frame, tmp_path / "m.parquet")
    stored = pd.read_parquet(path)
    assert str(stored["verb_class"].dtype) == "Int64"
    assert stored["verb_class"].iloc[:2].tolist() == [0, 1] and pd.isna(stored["verb_class"][2])
    assert schema.fingerprint(schema.read(path)) == schema.fingerprint(frame)


def test_a_failed_write_whose_partial_cannot_be_removed_names_the_manifest(tmp_path, monkeypatch):
    # a disk full, then turned read-only: the partial cannot be removed (EROFS), and that
    # removal's error, naming .partial-<pid>-<hex>-m.csv, was said instead of the write's
    frame = pd.read_csv(pd.io.common.StringIO(GOOD))

    def full(self, target, **kwargs):
        Path(target).write_text("uid,vid")
        raise OSError(errno.ENOSPC, "No space left on device")

    def read_only(self, missing_ok=False):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(pd.DataFrame, "to_csv", full)
    monkeypatch.setattr(Path, "unlink", read_only)
    with pytest.raises(OSError) as raised:
        schema.write_partial(frame, tmp_path / "m.csv")
    assert (raised.value.errno, raised.value.filename) == (errno.ENOSPC, str(tmp_path / "m.csv"))
