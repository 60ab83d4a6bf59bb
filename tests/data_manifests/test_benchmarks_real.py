"""Every benchmark built from the real annotation files in shared/data.

Row counts, class counts and per-domain/split class distributions are compared with numbers
computed here straight from the files (pandas / plain parsing), and with data/README.md.
"""

from __future__ import annotations

import collections
import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from avda.data_manifests import BENCHMARKS, build
from avda.data_manifests.epic_common import EPIC_FRAME_RATE


def distribution(frame: pd.DataFrame, column: str) -> dict[int, int]:
    counts = frame[column].dropna().astype(int).value_counts()
    return {int(k): int(v) for k, v in counts.items()}


def manifest_distribution(manifest: pd.DataFrame, domain: str, split: str, column: str):
    part = manifest[(manifest["domain"] == domain) & (manifest["split"] == split)]
    return distribution(part, column)


@pytest.fixture(scope="module")
def annotations(shared_data) -> Path:
    return shared_data / "annotations"


def test_every_registered_benchmark_is_documented():
    text = (Path(__file__).resolve().parents[2] / "docs" / "benchmarks.md").read_text()
    for name in BENCHMARKS:
        assert f"`{name}`" in text, f"docs/benchmarks.md does not describe {name}"


# --- EPIC-55 / MM-SADA ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def mmsada(annotations):
    return build("epic55-mmsada", annotations)


MMSADA_COUNTS = {
    ("D1", "train"): 1543,
    ("D2", "train"): 2495,
    ("D3", "train"): 3897,
    ("D1", "test"): 435,
    ("D2", "test"): 750,
    ("D3", "test"): 974,
}


def test_mmsada_counts_and_distributions_match_the_pickles(mmsada, annotations):
    manifest = mmsada.manifest
    assert len(manifest) == sum(MMSADA_COUNTS.values())
    for (domain, split), count in MMSADA_COUNTS.items():
        raw = pd.read_pickle(annotations / "epic55_mmsada_splits" / f"{domain}_{split}.pkl")
        assert len(raw) == count
        part = manifest[(manifest["domain"] == domain) & (manifest["split"] == split)]
        assert len(part) == count
        assert part["uid"].tolist() == raw["uid"].astype(str).tolist()
        assert manifest_distribution(manifest, domain, split, "verb_class") == distribution(
            raw, "verb_class"
        )
    assert mmsada.classes == {
        "verb_class": ("take", "put", "open", "close", "wash", "cut", "mix", "pour")
    }
    assert mmsada.dropped == {}
    assert set(mmsada.settings) >= {"D1-D2", "D3-D1", "D1,D2-D3"}


def test_mmsada_times_domains_and_paths(mmsada):
    manifest = mmsada.manifest.set_index("uid")
    row = manifest.loc["22931"]  # D3_train first row: P22_01 00:00:01.17 -> 00:00:02.92
    assert row["domain"] == "D3" and row["split"] == "test"
    assert row["start_sec"] == pytest.approx(1.17)
    assert row["stop_sec"] == pytest.approx(2.92)
    assert (row["start_frame"], row["stop_frame"]) == (70, 175)
    assert row["video_path"] == "P22/videos/P22_01.MP4"
    assert np.allclose(mmsada.manifest["fps"], EPIC_FRAME_RATE)
    participants = mmsada.manifest.groupby("domain")["participant_id"].unique()
    assert {d: list(p) for d, p in participants.items()} == {
        "D1": ["P08"],
        "D2": ["P01"],
        "D3": ["P22"],
    }


def test_mmsada_accepts_the_splits_folder_itself(annotations, mmsada):
    direct = build("epic55-mmsada", annotations / "epic55_mmsada_splits")
    pd.testing.assert_frame_equal(direct.manifest, mmsada.manifest)


@pytest.fixture(scope="module")
def epic55(annotations):
    return build("epic55", annotations)


def test_epic55_every_kitchen_with_its_class_distribution(epic55, annotations):
    raw = pd.read_csv(annotations / "epic55" / "EPIC_train_action_labels.csv")
    manifest = epic55.manifest
    assert len(manifest) == len(raw) == 28472
    assert set(manifest["split"]) == {"train"}
    assert sorted(manifest["domain"].unique()) == sorted(raw["participant_id"].unique())
    for participant, group in raw.groupby("participant_id"):
        for column in ("verb_class", "noun_class"):
            assert manifest_distribution(manifest, participant, "train", column) == distribution(
                group, column
            )
    assert epic55.num_classes("verb_class") == 125
    assert epic55.num_classes("noun_class") == 352
    # the rate the frame numbers count at (60), not the camera's (47.95, 29.97, 59.94 fps)
    fps = manifest.groupby("video_id")["fps"].first()
    assert fps["P17_01"] == fps["P10_04"] == fps["P01_01"] == 60.0
    said = _numbering_rate(manifest)
    assert np.allclose(said, 60.0, rtol=0.004), said.agg(["min", "max"])
    row = manifest.set_index("uid").loc["68"]  # all_noun_classes longer than all_nouns: kept
    assert (row["all_nouns"], row["all_noun_classes"]) == ("celery", "185;25")


def test_epic55_participants_option_counts_the_rest_as_dropped(annotations):
    result = build("epic55", annotations, participants=("P01", "P08"))
    assert sorted(result.manifest["domain"].unique()) == ["P01", "P08"]
    assert len(result.manifest) == 3090 + 2032
    assert result.dropped == {"participant not selected": 28472 - 3090 - 2032}
    assert set(result.settings) == {"P01-P08", "P08-P01"}


# --- EPIC-100 UDA ---------------------------------------------------------------------------

UDA = {
    "EPIC_100_uda_source_train": ("source", "train", 16115),
    "EPIC_100_uda_source_val": ("source", "val", 5002),
    "EPIC_100_uda_source_test_timestamps": ("source", "test", 4298),
    "EPIC_100_uda_target_train_timestamps": ("target", "train", 26115),
    "EPIC_100_uda_target_val": ("target", "val", 7906),
    "EPIC_100_uda_target_test_timestamps": ("target", "test", 5909),
}


@pytest.fixture(scope="module")
def epic100(annotations):
    return build("epic100-uda", annotations)


def test_epic100_counts_and_distributions_match_the_csv_files(epic100, annotations):
    manifest = epic100.manifest
    assert len(manifest) == sum(count for _, _, count in UDA.values())
    for stem, (domain, split, count) in UDA.items():
        raw = pd.read_csv(annotations / "epic100" / "UDA_annotations" / f"{stem}.csv")
        part = manifest[(manifest["domain"] == domain) & (manifest["split"] == split)]
        assert len(raw) == len(part) == count
        assert part["uid"].tolist() == raw["narration_id"].tolist()
        if "verb_class" in raw.columns:
            for column in ("verb_class", "noun_class"):
                assert manifest_distribution(manifest, domain, split, column) == distribution(
                    raw, column
                )
        else:
            assert part["verb_class"].isna().all() and part["noun_class"].isna().all()
    assert epic100.num_classes("verb_class") == 97
    assert epic100.num_classes("noun_class") == 300
    assert epic100.classes["verb_class"][:2] == ("take", "put")
    assert set(epic100.settings) == {"epic100-uda"}


def _numbering_rate(manifest: pd.DataFrame) -> pd.Series:
    """What the released rows say their frame numbers count at: start_frame / start_sec per
    video (rows past 10 s, where the timestamps' rounding to 0.01 s is below 0.1 %)."""
    later = manifest[manifest["start_sec"] > 10]
    return (later["start_frame"] / later["start_sec"]).groupby(later["video_id"]).median()


def test_epic100_frame_rates_are_the_rates_its_frame_numbers_count_at(epic100, annotations):
    """``fps`` is the rate ``start_frame`` counts at, read here from the released rows
    themselves: 60 for the 2018 videos whatever the camera's rate in the video info file
    (P09_07 is a 29.97 fps video), 50 for the 2020 ones."""
    manifest = epic100.manifest
    target = manifest[manifest["domain"] == "target"]
    assert np.allclose(target["fps"], 50.0)
    source = manifest[manifest["domain"] == "source"]
    rates = source.groupby("video_id")["fps"].first()
    assert rates["P01_01"] == rates["P09_07"] == 60.0
    camera = pd.read_csv(annotations / "epic100" / "EPIC_100_video_info.csv").set_index("video_id")[
        "fps"
    ]
    assert camera["P09_07"] == pytest.approx(29.97003)  # a source_test video at 29.97 fps
    assert source["video_id"].map(camera).round(2).eq(29.97).sum() == 44
    said = _numbering_rate(manifest)
    given = manifest.groupby("video_id")["fps"].first()[said.index]
    assert np.allclose(said, given, rtol=0.004), (said / given).agg(["min", "max"])


def test_epic100_times_lists_and_paths(epic100):
    manifest = epic100.manifest.set_index("uid")
    row = manifest.loc["P01_01_1"]  # 00:00:04.37 -> 00:00:06.17, turn on light
    assert (row["start_sec"], row["stop_sec"]) == pytest.approx((4.37, 6.17))
    assert (row["verb_class"], row["noun_class"]) == (6, 114)
    assert (row["all_nouns"], row["all_noun_classes"]) == ("light", "114")
    assert row["video_path"] == "P01/videos/P01_01.MP4"
    multiple = manifest["all_noun_classes"].dropna().str.contains(";")
    assert multiple.any()


def test_epic100_pickles_give_the_same_manifest(epic100, annotations):
    from_pickles = build("epic100-uda", annotations, file_format="pkl")
    pd.testing.assert_frame_equal(from_pickles.manifest, epic100.manifest)


# --- CharadesEgo ----------------------------------------------------------------------------

CHARADES = {
    "CharadesEgo_v0_train.csv": ("third", "train"),
    "CharadesEgo_v0_test.csv": ("third", "test"),
    "CharadesEgo_v0_egocentric_test.csv": ("first", "test"),
}


def parse_actions(path: Path) -> list[tuple[str, int, float, float]]:
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    actions = []
    for video, cell in zip(raw["id"], raw["actions"], strict=True):
        for item in filter(None, cell.split(";")):
            code, start, stop = item.split()
            actions.append((video, int(code[1:]), float(start), float(stop)))
    return actions


def test_charades_segments_per_view_and_class(annotations):
    result = build("charades-ego", annotations)
    manifest = result.manifest
    folder = annotations / "charadesego_v0"
    reversed_total = 0
    for file_name, (domain, split) in CHARADES.items():
        actions = parse_actions(folder / file_name)
        kept = [a for a in actions if a[3] > a[2]]
        reversed_total += sum(a[3] < a[2] for a in actions)
        expected = dict(collections.Counter(a[1] for a in kept))
        assert manifest_distribution(manifest, domain, split, "verb_class") == expected
    assert len(manifest) == 49802 + 16691 + 883
    assert reversed_total == 7
    assert result.dropped == {"stop before start": 7, "video without actions": 1786 + 229}
    assert result.num_classes("verb_class") == 157
    assert result.classes["verb_class"][0] == "Holding some clothes"
    first = manifest[manifest["domain"] == "first"]
    assert first["video_id"].str.endswith("EGO").all()
    assert not manifest[manifest["domain"] == "third"]["video_id"].str.endswith("EGO").any()
    row = manifest.set_index("uid").loc["46GP8_1"]  # c147 0.00 12.60 of the first train video
    assert (row["verb_class"], row["start_sec"], row["stop_sec"]) == (147, 0.0, 12.6)


def test_charades_videos_unit_has_multi_labels(annotations):
    result = build("charades-ego", annotations, unit="videos")
    manifest = result.manifest.set_index("uid")
    counts = result.manifest.groupby(["domain", "split"]).size().to_dict()
    assert counts == {
        ("third", "train"): 9597 - 1612,
        ("third", "test"): 2043 - 180,
        ("first", "test"): 103,
    }
    assert result.dropped == {"video without length": 1612 + 180}
    assert manifest.loc["46GP8", "labels"] == "92;147"
    assert manifest.loc["46GP8", "stop_sec"] == pytest.approx(24.83)
    raw = pd.read_csv(annotations / "charadesego_v0" / "CharadesEgo_v0_train.csv", dtype=str)
    no_actions = raw[raw["actions"].isna() & raw["length"].notna()]["id"]
    assert len(no_actions) == 1786 - 1612
    assert (manifest.loc[no_actions, "labels"] == "").all()
    assert set(result.classes) == {"labels"}


def test_charades_videos_labels_are_the_official_scorers_per_video(annotations):
    """Every video's ``labels`` against the class ids the official ``Charades_v1_classify.m``
    reads from ``actions`` (its ``load_charades``: split on ';', then on ' ', class =
    ``str2double(class(2:end))``), read here with the csv module: each file's videos in order,
    their domain by file (the egocentric test file: first person), ids within 0..156."""
    result = build("charades-ego", annotations, unit="videos")
    manifest = result.manifest
    expected = []
    for file_name, (domain, split) in CHARADES.items():
        with open(annotations / "charadesego_v0" / file_name, newline="") as f:
            for row in csv.DictReader(f):
                if not row["length"]:
                    continue  # dropped: 'video without length'
                classes = set()
                for action in filter(None, row["actions"].split(";")):
                    classes.add(int(action.split(" ")[0][1:]))
                labels = ";".join(str(c) for c in sorted(classes))
                expected.append((row["id"], domain, split, labels, float(row["length"])))
    got = list(
        zip(
            manifest["video_id"],
            manifest["domain"],
            manifest["split"],
            manifest["labels"],
            manifest["stop_sec"],
            strict=True,
        )
    )
    assert got == expected
    ids = {int(c) for labels in manifest["labels"] if labels for c in labels.split(";")}
    assert ids == set(range(157))  # every class present somewhere, none outside 0..156
    assert (manifest["start_sec"] == 0).all()


# --- UCF / HMDB / Olympic -------------------------------------------------------------------


def read_list(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep=r"\s+", header=None, names=["video", "frames", "label"])


@pytest.mark.parametrize(
    ("variant", "other", "files", "num_classes"),
    [
        ("full", "hmdb", ("hmdb51_train_ucf101", "hmdb51_val_ucf101"), 12),
        ("olympic", "olympic", ("olympic_train_ucf101", "olympic_val_ucf101"), 6),
    ],
)
def test_ucf_lists_counts_labels_and_seconds(annotations, variant, other, files, num_classes):
    result = build("ucf-hmdb", annotations, variant=variant)
    manifest = result.manifest
    folder = annotations / "ucf_hmdb_lists"
    suffix = "hmdb51" if variant == "full" else "olympic"
    lists = {
        ("ucf", "train"): f"ucf101_train_{suffix}",
        ("ucf", "test"): f"ucf101_val_{suffix}",
        (other, "train"): files[0],
        (other, "test"): files[1],
    }
    for (domain, split), stem in lists.items():
        raw = read_list(folder / f"list_{stem}-feature.txt")
        part = manifest[(manifest["domain"] == domain) & (manifest["split"] == split)]
        assert part["uid"].tolist() == raw["video"].tolist()
        assert manifest_distribution(manifest, domain, split, "verb_class") == distribution(
            raw, "label"
        )
        fps = 25.0 if domain == "ucf" else 30.0
        np.testing.assert_allclose(part["stop_sec"], raw["frames"] / fps)
        assert part["stop_frame"].tolist() == raw["frames"].tolist()
        assert (part["start_frame"] == 1).all() and (part["start_sec"] == 0).all()
    assert result.num_classes("verb_class") == num_classes
    assert result.dropped == {}


def test_ucf_hmdb_small_keeps_five_classes_by_name(annotations):
    full = build("ucf-hmdb", annotations).manifest
    small = build("ucf-hmdb", annotations, variant="small")
    assert small.classes["verb_class"] == (
        "golf",
        "pullup",
        "ride_bike",
        "ride_horse",
        "shoot_ball",
    )
    kept = full[full["verb"].isin(small.classes["verb_class"])]
    assert small.manifest["uid"].tolist() == kept["uid"].tolist()
    assert small.dropped == {"class not in the small class list": len(full) - len(kept)}
    names = dict(enumerate(small.classes["verb_class"]))
    assert (small.manifest["verb_class"].map(names) == small.manifest["verb"]).all()
    sizes = small.manifest.groupby(["domain", "split"]).size().to_dict()
    assert sizes == {
        ("hmdb", "test"): 150,
        ("hmdb", "train"): 350,
        ("ucf", "test"): 189,
        ("ucf", "train"): 482,
    }


def test_ucf_frame_rate_options(annotations):
    result = build("ucf-hmdb", annotations, ucf_fps=30.0, hmdb_fps=24.0)
    manifest = result.manifest
    ucf = manifest[manifest["domain"] == "ucf"]
    hmdb = manifest[manifest["domain"] == "hmdb"]
    np.testing.assert_allclose(ucf["stop_sec"], ucf["stop_frame"] / 30.0)
    np.testing.assert_allclose(hmdb["stop_sec"], hmdb["stop_frame"] / 24.0)


def test_manifest_build_prints_its_summary_once_on_stdout(annotations, tmp_path, capsys):
    """Results to stdout, logs to stderr: the summary was printed on both."""
    from avda import cli

    out = tmp_path / "m.csv"
    code = cli.main(["manifest", "build", "epic55-mmsada", "-a", str(annotations), "-o", str(out)])
    printed, err = capsys.readouterr()
    assert code == 0, err
    assert printed.startswith(f"wrote {out}\nepic55-mmsada: 10094 segments\n")
    assert "10094 segments" not in err
