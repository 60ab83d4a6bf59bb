"""Malformed annotation rows are reported all at once; rows dropped on purpose are counted."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from tests.conftest import kill_while_writing_csv

from avda.data_manifests import build, build_manifest, schema
from avda.data_manifests.benchmarks import ManifestBuild, parse_options, read_build_info
from avda.errors import ConfigError, ManifestError, UnknownNameError

UDA_STEMS = (
    "EPIC_100_uda_source_train",
    "EPIC_100_uda_source_val",
    "EPIC_100_uda_source_test_timestamps",
    "EPIC_100_uda_target_train_timestamps",
    "EPIC_100_uda_target_val",
    "EPIC_100_uda_target_test_timestamps",
)


@pytest.fixture
def small_epic100(shared_data, tmp_path) -> Path:
    """The real EPIC-100 class and video-info files plus the first 3 rows of each UDA file."""
    source = shared_data / "annotations" / "epic100"
    root = tmp_path / "epic100"
    (root / "UDA_annotations").mkdir(parents=True)
    for name in (
        "EPIC_100_verb_classes.csv",
        "EPIC_100_noun_classes.csv",
        "EPIC_100_video_info.csv",
    ):
        shutil.copy(source / name, root / name)
    for stem in UDA_STEMS:
        lines = (source / "UDA_annotations" / f"{stem}.csv").read_text().splitlines()[:4]
        (root / "UDA_annotations" / f"{stem}.csv").write_text("\n".join(lines) + "\n")
    return root


def _edit(path: Path, row: int, column: str, value: str) -> None:
    """Set one cell (file row numbering: header = 1) of a CSV kept as text."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame.loc[row - 2, column] = value
    frame.to_csv(path, index=False)


def test_small_epic100_builds(small_epic100):
    result = build("epic100-uda", small_epic100)
    assert len(result.manifest) == 18
    assert result.dropped == {}


def test_every_malformed_row_is_reported_with_file_and_row(small_epic100):
    uda = small_epic100 / "UDA_annotations"
    _edit(uda / "EPIC_100_uda_source_train.csv", 2, "start_timestamp", "00:00:xx")
    _edit(uda / "EPIC_100_uda_source_train.csv", 4, "verb_class", "97")
    _edit(uda / "EPIC_100_uda_target_val.csv", 3, "noun_class", "tap")
    _edit(uda / "EPIC_100_uda_target_test_timestamps.csv", 3, "video_id", "P99_999")
    _edit(uda / "EPIC_100_uda_source_val.csv", 2, "all_noun_classes", "[3, 400]")
    with pytest.raises(ManifestError) as caught:
        build("epic100-uda", small_epic100)
    message = str(caught.value)
    assert "5 problem(s)" in message and "(or use the files as released)" in message
    expected = [
        "EPIC_100_uda_source_train.csv row 2 [start_timestamp]: time '00:00:xx' is not HH:MM:SS.ff",
        "EPIC_100_uda_source_train.csv row 4 [verb_class]: unknown class id 97 "
        "(EPIC_100_verb_classes.csv has ids 0..96)",
        "EPIC_100_uda_target_val.csv row 3 [noun_class]: class id 'tap' is not an integer",
        "EPIC_100_uda_target_test_timestamps.csv row 3 [video_id]: video 'P99_999' is not in "
        "EPIC_100_video_info.csv",
        "EPIC_100_uda_source_val.csv row 2 [all_noun_classes]: unknown noun class id '400'",
    ]
    for line in expected:
        assert line in message


def test_a_broken_class_or_info_file_is_reported_with_the_rows_problems(small_epic100):
    """A class file with a bad id stopped the build before the UDA rows were read: their
    problems came one run later. One run names both, and no row is reported for an id the
    broken table cannot hold (its ids are checked once the table reads)."""
    uda = small_epic100 / "UDA_annotations"
    _edit(small_epic100 / "EPIC_100_verb_classes.csv", 3, "id", "one")
    _edit(small_epic100 / "EPIC_100_video_info.csv", 2, "fps", "-1")
    _edit(uda / "EPIC_100_uda_source_train.csv", 2, "start_timestamp", "00:00:xx")
    _edit(uda / "EPIC_100_uda_target_val.csv", 3, "noun_class", "tap")
    with pytest.raises(ManifestError) as caught:
        build("epic100-uda", small_epic100)
    assert str(caught.value).splitlines()[1:5] == [
        "  EPIC_100_video_info.csv row 2 [fps]: fps '-1' is not a positive number",
        "  EPIC_100_verb_classes.csv row 3 [id]: class id is not an integer",
        "  EPIC_100_uda_source_train.csv row 2 [start_timestamp]: time '00:00:xx' is not "
        "HH:MM:SS.ff",
        "  EPIC_100_uda_target_val.csv row 3 [noun_class]: class id 'tap' is not an integer",
    ]
    assert "4 problem(s)" in str(caught.value)


def test_epic55_reports_a_broken_class_file_with_the_rows_problems(shared_data, tmp_path):
    source = shared_data / "annotations" / "epic55"
    root = tmp_path / "epic55"
    root.mkdir()
    for name in ("EPIC_noun_classes.csv", "EPIC_verb_classes.csv", "EPIC_video_info.csv"):
        shutil.copy(source / name, root / name)
    lines = (source / "EPIC_train_action_labels.csv").read_text().splitlines()[:4]
    (root / "EPIC_train_action_labels.csv").write_text("\n".join(lines) + "\n")
    _edit(root / "EPIC_noun_classes.csv", 2, "noun_id", "x")
    _edit(root / "EPIC_train_action_labels.csv", 3, "stop_frame", "late")
    with pytest.raises(ManifestError) as caught:
        build("epic55", root)
    assert str(caught.value).splitlines()[:3] == [
        "epic55 annotations have 2 problem(s):",
        "  EPIC_noun_classes.csv row 2 [noun_id]: class id is not an integer",
        "  EPIC_train_action_labels.csv row 3 [stop_frame]: frame 'late' is not an integer",
    ]


def test_missing_column_and_missing_file(small_epic100):
    path = small_epic100 / "UDA_annotations" / "EPIC_100_uda_source_val.csv"
    frame = pd.read_csv(path).drop(columns=["noun_class"])
    frame.to_csv(path, index=False)
    with pytest.raises(
        ManifestError, match=r"EPIC_100_uda_source_val.csv: missing column\(s\) noun_class"
    ):
        build("epic100-uda", small_epic100)
    path.unlink()
    with pytest.raises(ManifestError, match="EPIC_100_uda_source_val.csv"):
        build("epic100-uda", small_epic100)


def test_mixed_encodings_are_reported_per_row(small_epic100):
    path = small_epic100 / "UDA_annotations" / "EPIC_100_uda_target_val.csv"
    lines = path.read_bytes().split(b"\n")
    lines[1] = lines[1].replace(b"turn on tap", b"turn on t\xe9p")  # latin-1 in a UTF-8 file
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(ManifestError) as caught:
        build("epic100-uda", small_epic100)
    assert "EPIC_100_uda_target_val.csv row 2: byte 0xe9 (byte 77 of the row)" in str(caught.value)
    assert "re-save the file as UTF-8" in str(caught.value)


def test_short_and_reversed_segments_are_dropped_and_counted(small_epic100):
    uda = small_epic100 / "UDA_annotations"
    # target video at 50 fps: 0.01 s is shorter than one frame (0.02 s)
    _edit(uda / "EPIC_100_uda_target_val.csv", 2, "stop_timestamp", "00:00:02.61")
    _edit(uda / "EPIC_100_uda_source_train.csv", 3, "stop_timestamp", "00:00:01.00")
    result = build("epic100-uda", small_epic100)
    assert result.dropped == {"shorter than one frame": 1, "stop before start": 1}
    assert len(result.manifest) == 16
    assert "P03_101_0" not in set(result.manifest["uid"])


def test_unknown_benchmark_and_options_list_the_valid_ones(small_epic100):
    with pytest.raises(UnknownNameError, match="did you mean 'epic100-uda'"):
        build("epic100-udaa", small_epic100)
    with pytest.raises(ConfigError, match="file_format"):
        build("epic100-uda", small_epic100, file_fromat="csv")
    with pytest.raises(ConfigError, match="expected one of auto, csv, pkl"):
        parse_options("epic100-uda", ["file_format=xlsx"])
    with pytest.raises(ConfigError, match="key=value"):
        parse_options("charades-ego", ["videos"])


def test_option_strings_are_converted_by_type():
    assert parse_options("epic55", ["participants=P01, P08"]) == {"participants": ("P01", "P08")}
    assert parse_options("ucf-hmdb", ["ucf_fps=29.97", "variant=small"]) == {
        "ucf_fps": 29.97,
        "variant": "small",
    }
    assert parse_options("generic", ["columns=uid=clip,video_id=vid"]) == {
        "columns": {"uid": "clip", "video_id": "vid"}
    }
    with pytest.raises(ConfigError, match="expected a number"):
        parse_options("ucf-hmdb", ["ucf_fps=fast"])


def test_build_manifest_writes_manifest_and_build_info(shared_data, tmp_path):
    output = tmp_path / "d1d2.csv"
    result = build_manifest("epic55-mmsada", shared_data / "annotations", output, setting="D1-D2")
    frame = schema.read(output)
    assert sorted(frame["domain"].unique()) == ["D1", "D2"]
    assert len(frame) == 1543 + 435 + 2495 + 750 == len(result.manifest)
    info = read_build_info(output)
    assert info["benchmark"] == "epic55-mmsada"
    assert info["classes"]["verb_class"][7] == "pour"
    assert info["options"]["setting"] == "D1-D2"
    assert set(info["settings"]) == {"D1-D2", "D2-D1"}
    assert info["fingerprint"] == schema.fingerprint(frame)


def test_build_manifest_with_source_target_and_options(shared_data, tmp_path):
    output = tmp_path / "ce.parquet"
    build_manifest(
        "charades-ego",
        shared_data / "annotations",
        output,
        source="third",
        target="first",
        options=["unit=videos"],
    )
    frame = schema.read(output)
    assert len(frame) == 7985 + 1863 + 103
    assert read_build_info(output)["dropped"] == {"video without length": 1792}
    with pytest.raises(ConfigError, match="unknown domain 'D9'"):
        build_manifest(
            "epic55-mmsada",
            shared_data / "annotations",
            tmp_path / "x.csv",
            source="D1",
            target="D9",
        )


def test_a_setting_of_another_variant_names_the_option_and_an_unknown_one_fails_first(
    shared_data, tmp_path, monkeypatch
):
    # `--setting olympic-ucf` said only "valid: hmdb-ucf, ucf-hmdb", although the benchmark
    # builds it with -O variant=olympic
    where = shared_data / "annotations"
    for asked in ({"setting": "olympic-ucf"}, {"source": "ucf", "target": "olympic"}):
        with pytest.raises(ConfigError, match=r"add -O variant=olympic$"):
            build_manifest("ucf-hmdb", where, tmp_path / "x.csv", **asked)
    with pytest.raises(ConfigError, match=r"drop it \(or -O variant=small\) for HMDB51$"):
        build_manifest("ucf-hmdb", where, tmp_path / "x.csv", setting="hmdb-ucf",
                       options=["variant=olympic"])  # fmt: skip
    build_manifest("ucf-hmdb", where, tmp_path / "o.csv", setting="olympic-ucf",
                   options=["variant=olympic"])  # fmt: skip
    assert set(schema.read(tmp_path / "o.csv")["domain"]) == {"ucf", "olympic"}
    # a name no benchmark has is refused before the annotation files are read
    from avda.data_manifests import benchmarks

    monkeypatch.setattr(benchmarks, "build", lambda *a, **k: pytest.fail("parsed first"))
    with pytest.raises(ConfigError, match="unknown setting 'olympics'"):
        build_manifest("charades-ego", where, tmp_path / "c.csv", setting="olympics")


# --- CharadesEgo and UCF/HMDB malformed rows ------------------------------------------------

CHARADES_HEADER = (
    "id,subject,scene,quality,relevance,verified,script,objects,descriptions,actions,length"
)


@pytest.fixture
def small_charades(shared_data, tmp_path) -> Path:
    root = tmp_path / "charades"
    root.mkdir()
    source = shared_data / "annotations" / "charadesego_v0"
    shutil.copy(source / "charades_v1_classes.txt", root)
    (root / "CharadesEgo_v0_train.csv").write_text(
        f"{CHARADES_HEADER}\n"
        "AAAAA,,,,,,,,,c001 0.0 2.0;c002 3.0 1.0,10.0\n"  # second action reversed: dropped
        "BBBBB,,,,,,,,,,\n"  # no actions, no length
        "CCCCC,,,,,,,,,c003 1.0 1.0,5.0\n"  # zero length: dropped
    )
    (root / "CharadesEgo_v0_test.csv").write_text(
        f"{CHARADES_HEADER}\nDDDDD,,,,,,,,,c156 0.5 4.0,6.0\n"
    )
    (root / "CharadesEgo_v0_egocentric_test.csv").write_text(
        f"{CHARADES_HEADER}\nDDDDDEGO,,,,,,,,,c156 0.5 4.0;c000 1 2,6.5\n"
    )
    return root


def test_charades_drops_are_counted(small_charades):
    segments = build("charades-ego", small_charades)
    assert segments.dropped == {
        "shorter than one frame": 1,
        "stop before start": 1,
        "video without actions": 1,
    }
    assert segments.manifest["uid"].tolist() == ["AAAAA_0", "DDDDD_0", "DDDDDEGO_0", "DDDDDEGO_1"]
    assert segments.manifest["domain"].tolist() == ["third", "third", "first", "first"]
    videos = build("charades-ego", small_charades, unit="videos")
    assert videos.manifest["labels"].tolist() == ["1;2", "3", "156", "0;156"]
    assert videos.dropped == {"video without length": 1}


def test_charades_malformed_actions(small_charades):
    path = small_charades / "CharadesEgo_v0_test.csv"
    path.write_text(
        f"{CHARADES_HEADER}\nDDDDD,,,,,,,,,c157 0.5 4.0;c001 a 2,6.0\nEEEEE,,,,,,,,,c001 1 2,long\n"
    )
    with pytest.raises(ManifestError) as caught:
        build("charades-ego", small_charades)
    message = str(caught.value)
    assert "CharadesEgo_v0_test.csv row 2 [actions]: unknown class c157" in message
    assert "CharadesEgo_v0_test.csv row 2 [actions]: action 'c001 a 2' is not" in message
    assert "CharadesEgo_v0_test.csv row 3 [length]: length 'long' is not a number" in message


def test_a_broken_class_list_is_reported_with_the_rows_problems(small_charades, shared_data,
                                                                tmp_path):  # fmt: skip
    """A broken class list stopped CharadesEgo and UCF-HMDB before the rows were read, and the
    small variant's list naming a class the full list lacks came after every row problem: one
    run names them all (rows are not checked against what a broken list gave)."""
    classes = small_charades / "charades_v1_classes.txt"
    classes.write_text("\n".join(classes.read_text().splitlines()[:150]) + "\n")
    (small_charades / "CharadesEgo_v0_test.csv").write_text(
        f"{CHARADES_HEADER}\nDDDDD,,,,,,,,,c001 1 2,long\n"
    )
    with pytest.raises(ManifestError) as caught:
        build("charades-ego", small_charades)
    assert str(caught.value).splitlines()[:3] == [
        "charades-ego annotations have 2 problem(s):",
        "  charades_v1_classes.txt: lists 150 classes; Charades has 157",
        "  CharadesEgo_v0_test.csv row 2 [length]: length 'long' is not a number",
    ]
    root = tmp_path / "ucf"
    shutil.copytree(shared_data / "annotations" / "ucf_hmdb_lists", root)
    full = root / "ta3n_class_lists" / "classInd_hmdb_ucf.txt"
    full.write_text(full.read_text().replace("2 golf", "2 golfing"))
    hmdb = root / "list_hmdb51_val_ucf101-feature.txt"
    lines = hmdb.read_text().splitlines()
    lines[1] = lines[1].split(" ")[0] + " many 3"
    hmdb.write_text("\n".join(lines) + "\n")
    with pytest.raises(ManifestError) as caught:
        build("ucf-hmdb", root, variant="small")
    assert str(caught.value).splitlines()[:3] == [
        "ucf-hmdb annotations have 2 problem(s):",
        "  classInd_hmdb_ucf_small.txt: names golf, which classInd_hmdb_ucf.txt lacks",
        "  list_hmdb51_val_ucf101-feature.txt row 2 [num_frames]: 'many' is not a frame count",
    ]
    full.write_text(full.read_text().replace("2 golfing", "x golf"))
    with pytest.raises(ManifestError) as caught:
        build("ucf-hmdb", root)
    assert str(caught.value).splitlines()[:4] == [
        "ucf-hmdb annotations have 3 problem(s):",
        "  classInd_hmdb_ucf.txt row 3: expected 'id name', got 'x golf'",
        "  classInd_hmdb_ucf.txt: class ids are not 0..10, one each",
        "  list_hmdb51_val_ucf101-feature.txt row 2 [num_frames]: 'many' is not a frame count",
    ]  # no "unknown class id 2" for every golf row


def test_ucf_lists_with_bad_rows(shared_data, tmp_path):
    source = shared_data / "annotations" / "ucf_hmdb_lists"
    root = tmp_path / "ucf"
    shutil.copytree(source, root)
    path = root / "list_hmdb51_val_ucf101-feature.txt"
    lines = path.read_text().splitlines()
    lines[0] = lines[0].rsplit(" ", 1)[0] + " 12"  # class 12 of 0..11
    lines[1] = lines[1].split(" ")[0] + " many 3"
    lines[2] = "just_a_name"
    path.write_text("\r\n".join(lines) + "\r\n")
    ucf = root / "list_ucf101_val_hmdb51-feature.txt"
    ucf_lines = ucf.read_text().splitlines()
    ucf_lines[0] = "v_Fencing_g07_c01 147 2"  # Fencing is class 1
    ucf.write_text("\n".join(ucf_lines) + "\n")
    with pytest.raises(ManifestError) as caught:
        build("ucf-hmdb", root)
    message = str(caught.value)
    assert "list_hmdb51_val_ucf101-feature.txt row 1 [label]: unknown class id 12" in message
    assert "list_hmdb51_val_ucf101-feature.txt row 2 [num_frames]: 'many'" in message
    assert "list_hmdb51_val_ucf101-feature.txt row 3: expected 'video num_frames label'" in message
    assert (
        "list_ucf101_val_hmdb51-feature.txt row 1 [label]: UCF class Fencing is class 1" in message
    )


def test_ucf_zero_frame_videos_are_dropped(shared_data, tmp_path):
    root = tmp_path / "ucf"
    shutil.copytree(shared_data / "annotations" / "ucf_hmdb_lists", root)
    path = root / "list_olympic_val_ucf101-feature.txt"
    lines = path.read_text().splitlines()
    name, _, label = lines[0].split()
    lines[0] = f"{name} 0 {label}"
    path.write_text("\n".join(lines) + "\n")
    result = build("ucf-hmdb", root, variant="olympic")
    assert result.dropped == {"shorter than one frame": 1}
    assert name not in set(result.manifest["uid"])


def test_missing_annotations_folder_says_how_to_fix(tmp_path):
    with pytest.raises(ManifestError, match="does not exist; pass --annotations"):
        build("epic55-mmsada", tmp_path / "nowhere")
    with pytest.raises(ManifestError, match=r"none of D1_train\.pkl found"):
        build("epic55-mmsada", tmp_path)


def test_mmsada_setting_reads_only_its_domains_pickles(shared_data, tmp_path):
    """A new user's folder of D1 and D2 only, for --setting D1-D2: it needed all six pickles.
    The setting's build reads its four and gives the rows of the full build that the setting
    keeps; a file it needs missing is named alone, the folder being right (not locate's 'pass
    --annotations the folder that holds ...'); the full build still names D3's."""
    splits = shared_data / "annotations" / "epic55_mmsada_splits"
    root = tmp_path / "splits"
    root.mkdir()
    for name in ("D1_train.pkl", "D1_test.pkl", "D2_train.pkl", "D2_test.pkl"):
        shutil.copy(splits / name, root / name)
    part = build_manifest("epic55-mmsada", root, tmp_path / "d1d2.csv", setting="D1-D2")
    full = build_manifest("epic55-mmsada", splits, tmp_path / "all.csv")
    kept = full.restrict(part.settings["D1-D2"])
    pd.testing.assert_frame_equal(part.manifest, kept.manifest)
    assert len(part.manifest) == 1543 + 435 + 2495 + 750
    assert [Path(p).name for p in part.sources] == [
        "D1_train.pkl", "D1_test.pkl", "D2_train.pkl", "D2_test.pkl"
    ]  # fmt: skip
    assert (part.domains, part.settings, part.classes) == (
        kept.domains, kept.settings, kept.classes
    )  # fmt: skip
    again = build_manifest("epic55-mmsada", root, tmp_path / "d21.csv", source="D2", target="D1")
    pd.testing.assert_frame_equal(again.manifest, part.manifest)

    (root / "D2_test.pkl").unlink()
    with pytest.raises(ManifestError) as raised:
        build_manifest("epic55-mmsada", root, tmp_path / "m.csv", setting="D1-D2")
    message = str(raised.value)
    assert f"{root} lacks D2_test.pkl: the build reads D1_train.pkl, D1_test.pkl, " in message
    assert "D3" not in message and "pass --annotations" not in message
    assert not (tmp_path / "m.csv").exists()
    with pytest.raises(
        ManifestError,
        match=r"lacks D2_test\.pkl, D3_train\.pkl, D3_test\.pkl: the build reads all six",
    ):
        build_manifest("epic55-mmsada", root, tmp_path / "m.csv")
    # D4 is not a domain of the benchmark: all are read, and the setting is refused naming them
    with pytest.raises(ConfigError, match="D4.; valid: D1, D2, D3"):
        build_manifest("epic55-mmsada", splits, tmp_path / "m.csv", setting="D1->D4")


@pytest.mark.parametrize("benchmark", ["epic55-mmsada", "epic100-uda", "charades-ego", "ucf-hmdb"])
def test_an_annotation_file_for_a_folder_benchmark_is_named_as_a_file(shared_data, benchmark):
    """`--annotations` one file (help: "Folder (or table file)") of a benchmark that reads a
    folder: it was looked into as a folder, 'none of D1_train.pkl found in X.csv,
    X.csv/epic55_mmsada_splits, ...'."""
    table = shared_data / "annotations" / "charadesego_v0" / "CharadesEgo_v0_test.csv"
    with pytest.raises(ManifestError) as refused:
        build(benchmark, table)
    message = str(refused.value)
    assert message.startswith(f"{benchmark}: --annotations {table} is a file, and"), message
    assert f"{table}/" not in message
    if benchmark != "charades-ego":  # the file's folder holds none of its files
        assert "pass the folder that holds them" in message and "its folder" not in message


@pytest.mark.parametrize(
    ("benchmark", "file", "folder", "held"),
    [
        ("charades-ego", "CharadesEgo_v0_egocentric_test.csv", "charadesego_v0", None),
        ("epic55", "EPIC_noun_classes.csv", "epic55", None),
        ("epic55-mmsada", "D2_test.pkl", "epic55_mmsada_splits", None),
        ("ucf-hmdb", "list_hmdb51_train_ucf101-feature.txt", "ucf_hmdb_lists", None),
        # a file of a subfolder: the folder above it, which the builder reads (it named
        # ta3n_class_lists/, where the lists are not: `none of list_ucf101_train... found`)
        ("ucf-hmdb", "ta3n_class_lists/classInd_hmdb_ucf.txt", "ucf_hmdb_lists", "above"),
        # ... unless its folder holds them (UDA_annotations/ finds the rest in ..)
        ("epic100-uda", "UDA_annotations/EPIC_100_uda_source_train.pkl", "epic100", "uda"),
    ],
)
def test_an_annotation_file_of_the_benchmarks_folder_is_refused_naming_that_folder(
    shared_data, benchmark, file, folder, held
):
    """`--annotations CharadesEgo_v0_test.csv`, a file of the folder the benchmark reads: the
    refusal said to pass a folder without naming the one beside the user's file; the folder it
    names builds the manifest."""
    annotations = shared_data / "annotations" / folder
    table = annotations / file
    if held == "uda":
        annotations = table.parent
    first = {
        "charades-ego": "charades_v1_classes.txt",
        "epic55": "EPIC_train_action_labels.csv",
        "epic55-mmsada": "D1_train.pkl",
        "ucf-hmdb": "list_ucf101_train_hmdb51-feature.txt",
        "epic100-uda": "../EPIC_100_video_info.csv",
    }[benchmark]
    whose = "the folder above it" if held == "above" else "its folder"
    with pytest.raises(ManifestError) as refused:
        build(benchmark, table)
    assert str(refused.value) == (
        f"{benchmark}: --annotations {table} is a file, and {benchmark} reads a folder of "
        f"annotation files: pass {whose}, --annotations {annotations} (avda finds {first} "
        "from there)"
    )
    if benchmark == "ucf-hmdb":  # the folder named is one avda builds from
        assert len(build(benchmark, annotations).manifest)


def test_mmsada_pickle_rows_are_named_by_uid(shared_data, tmp_path):
    root = tmp_path / "splits"
    shutil.copytree(shared_data / "annotations" / "epic55_mmsada_splits", root)
    frame = pd.read_pickle(root / "D1_train.pkl")
    frame.loc[0, "start_timestamp"] = "1:2"
    frame.loc[1, "participant_id"] = "P01"
    frame.loc[2, "verb_class"] = 8
    frame.to_pickle(root / "D1_train.pkl")
    first, second, third = frame["uid"].iloc[:3]
    with pytest.raises(ManifestError) as caught:
        build("epic55-mmsada", root)
    message = str(caught.value)
    assert f"D1_train.pkl record 1 (index {first}) [start_timestamp]: time '1:2'" in message
    assert f"D1_train.pkl record 2 (index {second}) [participant_id]: participant 'P01' in D1" in (
        message
    )
    assert f"D1_train.pkl record 3 (index {third}) [verb_class]: unknown class id 8" in message


def test_epic55_unknown_participant_lists_the_known_ones(shared_data):
    with pytest.raises(ConfigError, match=r"unknown participant 'P99'.*valid: P01, P02"):
        build("epic55", shared_data / "annotations", participants=("P01", "P99"))


def _interrupt_half_way(monkeypatch):
    """``DataFrame.to_csv`` writes half its text, then is interrupted (as Ctrl-C would)."""
    real = pd.DataFrame.to_csv

    def half(self, path=None, **kwargs):
        text = real(self, None, **kwargs)
        if path is None:  # a fingerprint's text, not a file
            return text
        Path(path).write_text(text[: len(text) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(pd.DataFrame, "to_csv", half)


def test_a_manifest_build_interrupted_while_writing_leaves_the_old_pair(
    shared_data, tmp_path, monkeypatch
):
    output = tmp_path / "m.csv"
    build_manifest("epic55-mmsada", shared_data / "annotations", output, setting="D1-D2")
    before = output.read_bytes(), read_build_info(output)
    with monkeypatch.context() as patch:
        _interrupt_half_way(patch)
        with pytest.raises(KeyboardInterrupt):
            build_manifest("epic55-mmsada", shared_data / "annotations", output, setting="D1-D3")
    # never half a table (it would validate, with fewer rows), no partial file left
    assert (output.read_bytes(), read_build_info(output)) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.csv", "m.csv.build.json"]
    with monkeypatch.context() as patch:
        patch.setattr(ManifestBuild, "info", lambda self: (_ for _ in ()).throw(KeyboardInterrupt))
        with pytest.raises(KeyboardInterrupt):
            build_manifest("epic55-mmsada", shared_data / "annotations", output, setting="D1-D3")
    # a manifest is never left beside another build's record
    assert (output.read_bytes(), read_build_info(output)) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.csv", "m.csv.build.json"]
    build_manifest("epic55-mmsada", shared_data / "annotations", output, setting="D1-D3")
    assert read_build_info(output)["options"]["setting"] == "D1-D3"
    assert sorted(schema.read(output)["domain"].unique()) == ["D1", "D3"]


def _pair_of_one_build(output: Path) -> str:
    """The setting of the build whose record is beside ``output``, after checking that the
    manifest there is that build's (its rows' domains and fingerprint)."""
    info, manifest = read_build_info(output), schema.read(output)
    assert info["fingerprint"] == schema.fingerprint(manifest)
    setting = info["options"]["setting"]
    assert sorted(manifest["domain"].unique()) == setting.split("-")
    return setting


def test_two_builds_into_one_output_at_once_leave_one_builds_pair(
    shared_data, tmp_path, monkeypatch
):
    """Two `avda manifest build -o m.csv` at once: each writes its own temporary files and
    they take turns renaming them (the build lock), so the pair left is one build's. Forced
    here: the first build to rename its manifest waits (up to 2 s) for the other to rename
    its own first; before, both wrote the same `.partial-` files (one failed, the pair
    mixed)."""
    import threading

    from avda import _io

    output = tmp_path / "m.csv"
    real = _io.replace_file
    renamed, first = threading.Event(), threading.Lock()

    def replace(temporary, path, **keywords):
        if Path(path) == output and first.acquire(blocking=False):
            renamed.wait(2.0)  # the other build, unless it waits for this one's turn to end
        real(temporary, path, **keywords)
        if Path(path) == output:
            renamed.set()

    monkeypatch.setattr(_io, "replace_file", replace)
    start, outcome = threading.Barrier(2), {}

    def run(setting: str) -> None:
        start.wait()
        try:
            outcome[setting] = build_manifest(
                "epic55-mmsada", shared_data / "annotations", output, setting=setting
            )
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            outcome[setting] = exc

    threads = [threading.Thread(target=run, args=(s,)) for s in ("D1-D2", "D1-D3")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert all(isinstance(r, ManifestBuild) for r in outcome.values()) and len(outcome) == 2, (
        outcome
    )
    assert _pair_of_one_build(output) in ("D1-D2", "D1-D3")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.csv", "m.csv.build.json"]


def test_a_killed_builds_leftovers_are_removed_by_the_next_build(shared_data, tmp_path):
    """SIGKILL a build half-way through writing its manifest: the old pair stays, with its
    temporary file and lock file beside it; the next build into the output removes them."""
    output = tmp_path / "m.csv"
    build_manifest("epic55-mmsada", shared_data / "annotations", output, setting="D1-D2")
    before = output.read_bytes(), read_build_info(output)
    kill_while_writing_csv(
        "from avda.data_manifests import build_manifest\n"
        f"build_manifest('epic55-mmsada', {str(shared_data / 'annotations')!r}, "
        f"{str(output)!r}, setting='D1-D3')\n",
        tmp_path.parent / f"{tmp_path.name}-half-written",
    )
    left = sorted(p.name for p in tmp_path.iterdir())
    assert (output.read_bytes(), read_build_info(output)) == before
    assert ".m.csv.lock" in left and any(n.startswith(".partial-") for n in left), left
    build_manifest("epic55-mmsada", shared_data / "annotations", output, setting="D1-D3")
    assert _pair_of_one_build(output) == "D1-D3"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.csv", "m.csv.build.json"]


def test_each_write_of_a_manifest_has_its_own_temporary_file(tmp_path):
    """Where the build lock is not taken (a file system without locks), two writes of one
    output still never write into one file (the lock alone kept the two-build test green with
    one fixed name); the next locked write removes what killed ones left, other files aside."""
    path = tmp_path / "m.csv"
    first, second = schema.partial_path(path), schema.partial_path(path)
    assert first != second and first.parent == tmp_path and first.suffix == ".csv"
    other = tmp_path / ".partial-1-0a1b2c3d-other.csv"
    for leftover in (first, second, other):
        leftover.write_text("half")
    with schema.writing(path):
        assert not first.exists() and not second.exists() and other.exists()


def test_a_written_manifest_replaces_the_old_one_whole(tmp_path, monkeypatch):
    frame = pd.DataFrame(
        {
            "uid": ["a", "b"],
            "video_id": "v",
            "domain": "D1",
            "split": "train",
            "start_sec": [0.0, 1.0],
            "stop_sec": [1.0, 2.0],
        }
    )
    path = schema.write(frame, tmp_path / "m.csv")
    before = path.read_bytes()
    _interrupt_half_way(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        schema.write(frame.assign(uid=["c", "d"]), path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["m.csv"]


def test_a_build_killed_between_its_renames_leaves_no_manifest(shared_data, tmp_path, monkeypatch):
    """The manifest is renamed last, after the old pair is deleted: a kill after the first
    rename leaves no manifest (rerun the build), never a new manifest without its record or
    beside the earlier build's (the order of build_manifest's files, not only the helper's)."""
    from avda import _io

    output = tmp_path / "m.csv"
    annotations = shared_data / "annotations"
    build_manifest("epic55-mmsada", annotations, output, setting="D1-D2")
    real, renamed = _io.replace_file, []

    def killed_after_one(temporary, path, **keywords):
        if renamed:
            raise KeyboardInterrupt  # a kill between the renames
        renamed.append(Path(path))
        real(temporary, path, **keywords)

    monkeypatch.setattr(_io, "replace_file", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        build_manifest("epic55-mmsada", annotations, output, setting="D1-D3")
    assert renamed == [Path(f"{output}.build.json")] and not output.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.csv.build.json"]
