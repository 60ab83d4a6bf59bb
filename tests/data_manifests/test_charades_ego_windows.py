"""``charades-ego --unit windows``: the Audio-Adaptive authors' CharadesEgo training windows.

The reference is a transcription of ``xiaobai1217/DomainAdaptation`` ``CharadesEgo/``:
``generate_labels.py`` (frame-wise labels and runs, one ``Labels/<id>/frame_<a>_<b>.csv`` per
run), the window of ``dataloader_encoder.py`` / ``dataloader_recognizer.py`` (mmaction's
``SampleFrames(clip_len=64, frame_interval=8)`` in their ``mmaction/datasets/pipelines/
loading.py``, at the validation pipeline's ``test_mode=True`` placement, the deterministic one)
and their label computation (``label1``), run on rows of the real annotation file.
"""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from avda.data_manifests import build
from avda.data_manifests.charades_ego import CLASS_FILES
from avda.errors import ManifestError


def authors_labels_files(row: list[str], num_frames: int) -> dict[str, list[list[str]]]:
    """``generate_labels.py`` l. 17-76 for one csv row, writing ``{file name: rows}`` instead
    of files (``num_frames``: their frame folder's count)."""
    files: dict[str, list[list[str]]] = {}
    segment_list = row[9]
    segment_list = segment_list.split(";")
    if len(segment_list[0]) == 0:
        return files
    fps = 24
    segment_list2 = []
    for seg in segment_list:
        seg1 = seg.split(" ")
        start1 = int(np.round(float(seg1[1]) * fps)) + 1
        end1 = int(np.round(float(seg1[2]) * fps)) + 1
        if start1 < end1:
            segment_list2.append([seg1[0], start1, end1])
        else:
            segment_list2.append([seg1[0], end1, start1])
    frame_wise_label = []
    frame_wise_label1 = []
    for j in range(1, num_frames + 1):
        class1 = []
        for ii in range(len(segment_list2)):
            start1 = segment_list2[ii][1]
            end1 = segment_list2[ii][2]
            if start1 <= j <= end1:
                class1.append(segment_list2[ii][0])
        label = ""
        for class2 in class1:
            label += class2 + " "
        label = label[:-1]
        if len(frame_wise_label1) > 0 and len(label) == 0:
            frame_wise_label.append(frame_wise_label1)
            frame_wise_label1 = []
        elif len(label) == 0:
            continue
        else:
            frame_wise_label1.append([j, label])
    if len(frame_wise_label1) > 0:
        frame_wise_label.append(frame_wise_label1)
    for frame_wise_label1 in frame_wise_label:
        name = "frame_%010d_%010d.csv" % (frame_wise_label1[0][0], frame_wise_label1[-1][0])  # noqa: UP031
        files[name] = [[str(k[0]), k[1]] for k in frame_wise_label1]
    return files


def sample_frames_test_mode(total_frames: int, start_index: int, num_clips: int = 1) -> np.ndarray:
    """mmaction ``SampleFrames(clip_len=64, frame_interval=8, num_clips, test_mode=True)``
    (``_get_test_clips`` and ``__call__`` with ``out_of_bound_opt='loop'``), the frames of
    every clip in a row."""
    clip_len, frame_interval = 64, 8
    ori_clip_len = clip_len * frame_interval
    avg_interval = (total_frames - ori_clip_len + 1) / float(num_clips)
    if total_frames > ori_clip_len - 1:
        base_offsets = np.arange(num_clips) * avg_interval
        clip_offsets = (base_offsets + avg_interval / 2.0).astype(int)
    else:
        clip_offsets = np.zeros((num_clips,), dtype=int)
    frame_inds = clip_offsets[:, None] + np.arange(clip_len)[None, :] * frame_interval
    frame_inds = np.concatenate(frame_inds)
    frame_inds = frame_inds.reshape((-1, clip_len))
    with np.errstate(divide="ignore", invalid="ignore"):  # a one-frame run: numpy gives 0
        frame_inds = np.mod(frame_inds, total_frames)
    return np.concatenate(frame_inds) + start_index


def authors_window(lines: list[list[str]]) -> tuple[np.ndarray, list[int]]:
    """``dataloader_recognizer.py`` l. 105-138 on one run's label file: the window's frame
    numbers and the classes of ``label1``."""
    frame_list = [r[0] for r in lines]
    class_list = [r[1] for r in lines]
    start_frame = int(frame_list[0])
    end_frame = int(frame_list[-1])
    frame_inds = sample_frames_test_mode(end_frame - start_frame, start_frame)
    label1 = np.zeros(157)
    for i in frame_inds:
        tmp = class_list[i - start_frame].split(" ")
        for ttt in tmp:
            tt = ttt[1:]
            label1[int(tt)] += 1
    label1 = (label1 > 0).astype(np.float32)
    return frame_inds, np.flatnonzero(label1).tolist()


def write_annotations(folder: Path, train: list[list[str]], header: list[str]) -> Path:
    folder.mkdir()
    source = Path(os.environ.get("AVDA_SHARED_DATA", "")) / "annotations" / "charadesego_v0"
    (folder / CLASS_FILES[0]).write_text((source / CLASS_FILES[0]).read_text())
    for name, rows in (
        ("CharadesEgo_v0_train.csv", train),
        ("CharadesEgo_v0_test.csv", []),
        ("CharadesEgo_v0_egocentric_test.csv", []),
    ):
        with open(folder / name, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(rows)
    return folder


@pytest.fixture(scope="module")
def real_rows(shared_data) -> tuple[list[str], list[list[str]]]:
    path = shared_data / "annotations" / "charadesego_v0" / "CharadesEgo_v0_train.csv"
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1::12]  # every 12th video: 800 of 9,597


def test_windows_match_the_authors_code_on_the_real_file(real_rows, tmp_path):
    header, rows = real_rows
    folder = write_annotations(tmp_path / "ann", rows, header)
    result = build("charades-ego", folder, unit="windows")
    manifest = result.manifest
    assert set(result.classes) == {"labels"}
    expected_rows, multi_run, cut = [], 0, 0
    for row in rows:
        if not row[10].strip():  # no length: not in the manifest
            continue
        files = authors_labels_files(row, int(np.round(float(row[10]) * 24)))
        multi_run += len(files) > 1
        for index, name in enumerate(sorted(files)):  # their names sort in frame order
            frames, labels = authors_window(files[name])
            active = {c for line in files[name] for c in line[1].split(" ")}
            cut += len(labels) < len(active)
            expected_rows.append(
                (
                    f"{row[0]}_w{index}",
                    row[0],
                    (frames.min() - 1) / 24,
                    frames.max() / 24,
                    ";".join(str(c) for c in labels),
                )
            )
    assert multi_run > 50 and cut > 50  # videos of several runs; windows without every class
    expected = pd.DataFrame(
        expected_rows, columns=["uid", "video_id", "start_sec", "stop_sec", "labels"]
    )
    got = manifest[expected.columns].reset_index(drop=True)
    pd.testing.assert_frame_equal(got, expected, check_dtype=False)
    assert (manifest["split"] == "train").all() and (manifest["domain"] == "third").all()
    no_actions = sum(1 for r in rows if r[10].strip() and not r[9].strip())
    assert result.dropped.get("video without actions", 0) == no_actions > 0


def small(tmp_path: Path, actions: str, length: str) -> pd.DataFrame:
    header = ["id", "subject", "scene", "quality", "relevance", "verified", "script"]
    header += ["objects", "descriptions", "actions", "length"]
    row = ["VID01", "S", "Kitchen", "6", "7", "Yes", "", "", "", actions, length]
    folder = write_annotations(tmp_path / "ann", [row], header)
    return build("charades-ego", folder, unit="windows").manifest.set_index("uid")


def test_short_runs_loop_and_take_only_the_sampled_frames_classes(tmp_path):
    # 10 s = 240 frames. c001 frames 1-49; c004 frames 2-7 (inside run 1, never sampled: the
    # window loops over frames 1, 9, ..., 41; the run's last frame is never read); c002 given
    # stop first (97-121, swapped); c003 one frame (193); c005 past the end (frames 236-240)
    actions = "c001 0.00 2.00;c004 0.05 0.25;c002 5.00 4.00;c003 8.00 8.00;c005 9.80 12.00"
    manifest = small(tmp_path, actions, "10.0")
    assert manifest.index.tolist() == ["VID01_w0", "VID01_w1", "VID01_w2", "VID01_w3"]
    assert manifest["labels"].tolist() == ["1", "2", "3", "5"]
    assert manifest.loc["VID01_w0", "start_sec"] == 0.0
    assert manifest.loc["VID01_w0", "stop_sec"] == pytest.approx(41 / 24)  # frames 1..41
    assert manifest.loc["VID01_w1", "start_sec"] == pytest.approx(96 / 24)
    # run 97..121 (total 24): offsets 0, 8, 16 -> frames 97, 105, 113
    assert manifest.loc["VID01_w1", "stop_sec"] == pytest.approx(113 / 24)
    assert manifest.loc["VID01_w2", ["start_sec", "stop_sec"]].tolist() == pytest.approx(
        [192 / 24, 193 / 24]
    )
    # run 236..240 (total 4): every offset mod 4 is 0, frame 236 only
    assert manifest.loc["VID01_w3", ["start_sec", "stop_sec"]].tolist() == pytest.approx(
        [235 / 24, 236 / 24]
    )


def test_a_long_run_gets_its_centre_window(tmp_path):
    # 40 s = 960 frames, one run 1..960 (total 959): offset int((959 - 511) / 2) = 224, frames
    # 225, 233, ..., 729; c011 (frames 1-25) and c012 (937-960) lie outside it
    manifest = small(tmp_path, "c010 0.00 40.00;c011 0.00 1.00;c012 39.00 40.00", "40.0")
    assert manifest["labels"].tolist() == ["10"]
    assert manifest["start_sec"].tolist() == pytest.approx([224 / 24])
    assert manifest["stop_sec"].tolist() == pytest.approx([729 / 24])


def sample_frames_test_pipeline(total_frames: int) -> np.ndarray:
    """The SlowFast config's ``test_pipeline`` ``SampleFrames(clip_len=64, frame_interval=8,
    num_clips=10, test_mode=True)`` as ``test_recognizer.py`` runs it (``start_index`` 1,
    ``frame_inds.reshape((num_clips, -1))``, l. 62-83)."""
    return sample_frames_test_mode(total_frames, 1, num_clips=10).reshape((10, -1))


def authors_test_videos(rows: list[list[str]]) -> list[tuple[str, list[int]]]:
    """``CharadesEgoTesting.__init__`` (``test_recognizer.py`` l. 33-45): the videos with an
    action and their classes (``row[-4]`` of the v1 file is the ``actions`` column, v0's is
    ``row[9]``)."""
    video_list, class_list = [], []
    for row in rows:
        class_list1 = row[9]
        class_list1 = class_list1.split(";")
        if len(class_list1[0]) > 0:
            tmp = []
            for item in class_list1:
                tmp.append(int((item.split(" "))[0][1:]))
            class_list.append(tmp)
            video_list.append(row[0])
    return list(zip(video_list, class_list, strict=True))


@pytest.fixture(scope="module")
def windows_manifest(shared_data) -> pd.DataFrame:
    folder = shared_data / "annotations" / "charadesego_v0"
    return build("charades-ego", folder, unit="windows").manifest


@pytest.mark.parametrize("name", ["CharadesEgo_v0_egocentric_test.csv", "CharadesEgo_v0_test.csv"])
def test_test_videos_are_the_authors_ten_clips(shared_data, windows_manifest, name):
    """Every test video with an action becomes 10 rows, one per clip of ``test_recognizer.py``
    (its frames as 24-fps seconds, ``num_frames = round(length x 24)``), labelled with all the
    video's classes, ``score_group`` = the video."""
    path = shared_data / "annotations" / "charadesego_v0" / name
    with open(path, newline="") as f:
        rows = list(csv.reader(f))[1:]
    rows = rows if "egocentric" in name else rows[::15]
    lengths = {r[0]: r[10] for r in rows}
    test = windows_manifest[windows_manifest["split"] == "test"].set_index("uid")
    checked = short = 0
    for video, classes in authors_test_videos(rows):
        if not lengths[video].strip():  # no length: no frame count (dropped, counted)
            assert f"{video}_c0" not in test.index
            continue
        clips = sample_frames_test_pipeline(int(np.round(float(lengths[video]) * 24)))
        short += int((clips[:, 0] == 1).all())
        for k, frames in enumerate(clips):
            row = test.loc[f"{video}_c{k}"]
            assert row["video_id"] == video
            assert row["score_group"] == video
            assert row["start_sec"] == pytest.approx((frames.min() - 1) / 24)
            assert row["stop_sec"] == pytest.approx(frames.max() / 24)
            assert row["labels"] == ";".join(map(str, sorted(set(classes))))
        assert f"{video}_c10" not in test.index
        checked += 1
    assert checked > 50 and 0 < short < checked  # long videos and short, looped ones
    videos = {v for v, _ in authors_test_videos(rows) if lengths[v].strip()}
    mine = test[test["video_id"].isin(list(lengths))]
    assert set(mine["video_id"]) == videos  # none without an action
    assert len(mine) == 10 * len(videos)


def test_training_windows_are_scored_alone(windows_manifest):
    train = windows_manifest[windows_manifest["split"] == "train"]
    assert (train["score_group"] == "").all()
    assert train["uid"].str.contains("_w").all()
    test = windows_manifest[windows_manifest["split"] == "test"]
    assert len(test) == 10 * (1863 + 103 - 49)  # the test videos with an action
    from avda.data_manifests.stats import stats

    # `avda manifest stats` says its class counts are of rows, the groups being the videos
    assert "scored groups: 1917 (e.g. videos) of 19170 rows" in stats(windows_manifest)


def test_the_cli_builds_windows(shared_data, tmp_path, capsys):
    from avda import cli

    out = tmp_path / "ce.csv"
    folder = shared_data / "annotations" / "charadesego_v0"
    args = ["manifest", "build", "charades-ego", "-a", str(folder), "--unit", "windows"]
    code = cli.main([*args, "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    written = pd.read_csv(out, dtype={"labels": str})
    assert written["uid"].iloc[0] == "46GP8_w0"
    assert written["labels"].iloc[0] == "92;147"


def test_the_protocols_labelled_half_takes_whole_videos_of_windows(real_rows, tmp_path):
    """``labelled_target_pick="first"`` counts videos, not rows: the authors' labelled half is
    the first half of the view's videos with an action (``dataloader_encoder.py``), and each
    of them brings all its windows."""
    from avda.cache.store import create
    from avda.train.setup import labelled_target_rows

    header, rows = real_rows
    folder = write_annotations(tmp_path / "ann", rows, header)
    manifest = build("charades-ego", folder, unit="windows").manifest
    store = create(tmp_path / "c.zarr", manifest, manifest_sha256="0" * 64, recipe={})
    train = np.arange(len(store.segments))
    view = [r[0] for r in rows if r[9].strip() and r[10].strip()]
    expected = set(view[: int(len(view) / 2)])
    labelled, unlabelled = labelled_target_rows(store, train, 0.5, "first")
    videos = store.segments["video_id"].to_numpy()
    assert set(videos[labelled]) == expected
    assert not set(videos[unlabelled]) & expected
    assert len(labelled) > len(expected)  # videos of several windows among them
    assert sorted([*labelled, *unlabelled]) == train.tolist()


@pytest.mark.parametrize(("option", "value"), [("unit", "window"), ("version", "v2")])
def test_an_unknown_unit_or_version_is_refused_not_built_as_windows(tmp_path, option, value):
    """The Python API does not go through the CLI's choice check: ``unit="window"`` (a typo)
    built the windows manifest (before --unit windows: the videos one) without a word."""
    from avda.errors import ConfigError

    header = ["id", "subject", "scene", "quality", "relevance", "verified", "script"]
    header += ["objects", "descriptions", "actions", "length"]
    row = ["VID01", "S", "Kitchen", "6", "7", "Yes", "", "", "", "c001 0.00 2.00", "10.0"]
    folder = write_annotations(tmp_path / "ann", [row], header)
    with pytest.raises(ConfigError, match=f"charades-ego {option}: expected one of .*{value}"):
        build("charades-ego", folder, **{option: value})


# --- the unlabelled target's windows: drawn anywhere in the whole video -----------------------


def sample_frames_train_offsets(total_frames: int) -> list[int]:
    """Every clip offset mmaction's ``SampleFrames(clip_len=64, frame_interval=8,
    num_clips=1)`` in train mode (``_get_train_clips``, loading.py l. 128-159) can draw:
    ``np.random.randint`` replaced by each of its values in turn."""
    clip_len, frame_interval, num_clips = 64, 8, 1
    offsets = set()
    for value in range(max(total_frames, 1)):

        def randint(high, size, value=value):
            return np.full(size, value) if value < high else None

        ori_clip_len = clip_len * frame_interval
        avg_interval = (total_frames - ori_clip_len + 1) // num_clips
        if avg_interval > 0:
            base_offsets = np.arange(num_clips) * avg_interval
            drawn = randint(avg_interval, size=num_clips)
            clip_offsets = None if drawn is None else base_offsets + drawn
        elif total_frames > max(num_clips, ori_clip_len):
            drawn = randint(total_frames - ori_clip_len + 1, size=num_clips)
            clip_offsets = None if drawn is None else np.sort(drawn)
        elif avg_interval == 0:
            ratio = (total_frames - ori_clip_len + 1.0) / num_clips
            clip_offsets = np.around(np.arange(num_clips) * ratio).astype(int)
        else:
            clip_offsets = np.zeros((num_clips,), dtype=int)
        if clip_offsets is not None:
            offsets.add(int(clip_offsets[0]))
    return sorted(offsets)


def authors_unlabelled_window(total_frames: int, offset: int) -> np.ndarray:
    """``dataloader_encoder.py`` l. 234-265: the unlabelled target's window of a video of
    ``total_frames`` frames (``len(os.listdir(...))``) from ``start_frame = 1``, with the clip
    offset ``offset`` (``SampleFrames.__call__``, loop option; no label file read)."""
    clip_len, frame_interval = 64, 8
    frame_inds = offset + np.arange(clip_len) * frame_interval
    frame_inds = np.mod(frame_inds.reshape((-1, clip_len)), total_frames)
    return np.concatenate(frame_inds) + 1


def ego_copies(rows: list[list[str]]) -> list[list[str]]:
    """First-person training videos with the real rows' actions and lengths (v0 has none; v1
    pairs each third-person video ``X`` with ``XEGO``)."""
    return [[f"{r[0]}EGO", *r[1:]] for r in rows]


@pytest.fixture(scope="module")
def ego_rows(real_rows) -> tuple[list[str], list[list[str]]]:
    header, rows = real_rows
    return header, rows[::4]  # 200 videos


def test_unlabelled_rows_are_windows_the_authors_draw_anywhere_in_the_video(ego_rows, tmp_path):
    """Every first-person training video with an action (the authors' list,
    ``dataloader_encoder.py`` l. 60-73) gets 10 rows ``<id>_u<k>``: windows the unlabelled
    target's draw can produce (l. 234-265), at the 10 evenly spread offsets (the test
    pipeline's, the centres of 10 equal shares of the drawn offsets), unlabelled, marked."""
    header, rows = ego_rows
    folder = write_annotations(tmp_path / "ann", [*rows, *ego_copies(rows)], header)
    manifest = build("charades-ego", folder, unit="windows").manifest
    marked = manifest[manifest["unlabelled_only"] == "yes"].set_index("uid")
    assert (marked["domain"] == "first").all() and (marked["split"] == "train").all()
    assert (marked["labels"] == "").all() and (marked["score_group"] == "").all()
    assert set(manifest.loc[manifest["domain"] == "third", "unlabelled_only"]) == {""}
    checked = short = 0
    for row in ego_copies(rows):
        if not (row[9].strip() and row[10].strip()):
            assert f"{row[0]}_u0" not in marked.index  # not in the authors' list
            continue
        total = int(np.round(float(row[10]) * 24))
        drawable = sample_frames_train_offsets(total)
        expected = sample_frames_test_mode(total, 0, num_clips=10).reshape((10, -1))[:, 0]
        short += total <= 511
        for k in range(10):
            offset = int(expected[k])
            assert offset in drawable
            frames = authors_unlabelled_window(total, offset)
            got = marked.loc[f"{row[0]}_u{k}"]
            assert got["video_id"] == row[0]
            assert got["start_sec"] == pytest.approx((frames.min() - 1) / 24)
            assert got["stop_sec"] == pytest.approx(frames.max() / 24)
        if total > 512:  # spread over the whole range the code draws from
            span = drawable[-1] - drawable[0]
            assert expected[0] - drawable[0] < span / 10 and drawable[-1] - expected[-1] < span / 10
        assert f"{row[0]}_u10" not in marked.index
        checked += 1
    assert checked > 100 and 0 < short < checked
    assert len(marked) == 10 * checked


def test_unlabelled_rows_do_not_depend_on_the_action_annotations(ego_rows, tmp_path):
    """The whole-video rows read only the video's length: shuffling the first-person videos'
    actions among them, or replacing them by one arbitrary action, leaves them as they are
    (the action windows change). (A video keeps an action frame within it, c005 at 0-1 s
    added to the shuffled ones: one without is in no list, neither the authors' nor avda's.)"""
    header, rows = ego_rows
    ego = [r for r in ego_copies(rows) if r[9].strip() and r[10].strip()]
    rng = np.random.default_rng(0)
    order = rng.permutation(len(ego))
    shuffled = [
        [*r[:9], f"{ego[i][9]};c005 0.00 1.00", r[10]] for r, i in zip(ego, order, strict=True)
    ]
    one = [[*r[:9], "c005 1.00 2.00", r[10]] for r in ego]

    def built(ego_part, name):
        folder = write_annotations(tmp_path / name, [*rows, *ego_part], header)
        manifest = build("charades-ego", folder, unit="windows").manifest
        marked = manifest[manifest["unlabelled_only"] == "yes"].reset_index(drop=True)
        windows = manifest[manifest["uid"].str.contains("EGO_w")].reset_index(drop=True)
        return marked, windows

    marked, windows = built(ego, "a")
    for other, name in ((shuffled, "b"), (one, "c")):
        other_marked, other_windows = built(other, name)
        pd.testing.assert_frame_equal(other_marked, marked)
        assert not other_windows[["uid", "start_sec", "labels"]].equals(
            windows[["uid", "start_sec", "labels"]]
        )
    assert len(marked) == 10 * len(ego)


def test_a_manifest_without_first_person_training_videos_is_as_before(windows_manifest):
    # v0: no first-person training video, so no whole-video rows and no unlabelled_only column
    assert "unlabelled_only" not in windows_manifest
    assert not windows_manifest["uid"].str.contains("_u").any()


def test_the_marked_manifest_validates_and_a_misused_mark_is_refused(ego_rows, tmp_path):
    from avda.data_manifests import schema

    header, rows = ego_rows
    folder = write_annotations(tmp_path / "ann", [*rows[:20], *ego_copies(rows[:20])], header)
    manifest = build("charades-ego", folder, unit="windows").manifest
    path = tmp_path / "m.csv"
    manifest.to_csv(path, index=False)
    read = schema.read(path)
    assert (read["unlabelled_only"] == "yes").sum() == (manifest["unlabelled_only"] == "yes").sum()
    from avda.data_manifests.stats import stats

    # `avda manifest stats` counts them: they are train rows without labels, which the class
    # counts and "labelled rows" leave out
    videos = read.loc[read["unlabelled_only"] == "yes", "video_id"].nunique()
    assert videos > 0
    assert f"unlabelled-only rows: {10 * videos} of {videos} videos" in stats(read)
    marked = int(np.flatnonzero((manifest["unlabelled_only"] == "yes").to_numpy())[0])
    for column, value, message in (
        ("labels", "3", "an unlabelled-only row has no labels"),
        ("split", "test", "an unlabelled-only row must be a train row"),
        ("score_group", "X", "an unlabelled-only row has no score_group"),
        ("unlabelled_only", "true", "expected 'yes' or empty"),
    ):
        bad = manifest.copy()
        bad.loc[marked if column != "unlabelled_only" else 0, column] = value
        bad.to_csv(path, index=False)
        with pytest.raises(ManifestError, match=message):
            schema.read(path)


def windows_cache(path: Path, manifest: pd.DataFrame) -> Path:
    """A cache of ``manifest`` whose rows all have (zero) rgb features."""
    from avda.cache import Status
    from avda.cache.store import create

    store = create(path, manifest, manifest_sha256="0" * 64, recipe={})
    n = len(manifest)
    info = {"backbone": "synthetic", "weights": None, "weights_sha256": None, "input_spec": {}}
    store.add_modality("rgb", num_clips=1, num_features=4, info=info)
    store.write("rgb", np.arange(n), np.zeros((n, 1, 4)), np.full(n, int(Status.DONE)), [""] * n)
    return path


def test_a_run_reads_the_unlabelled_half_from_the_whole_video_rows_only(ego_rows, tmp_path):
    """Under ``audio-adaptive-charadesego`` (``labelled_target=0.5``, pick ``first``): the
    labelled half is the first half of the first-person videos with all their action windows
    and no whole-video row; the unlabelled target rows are the whole-video rows of the other
    half, and none of their action windows; no marked row is a source row."""
    from avda.cache import open_cache
    from avda.train.setup import plan

    header, rows = ego_rows
    folder = write_annotations(tmp_path / "ann", [*rows, *ego_copies(rows)], header)
    manifest = build("charades-ego", folder, unit="windows").manifest
    cache = windows_cache(tmp_path / "c.zarr", manifest)
    setup = plan(
        cache=cache,
        head="audio-adaptive",
        source=["third"],
        target=["first"],
        device="cpu",
        evaluation=False,
        protocol="audio-adaptive-charadesego",
    )
    segments = open_cache(cache).segments
    uid = segments["uid"].to_numpy(dtype=str)
    video = segments["video_id"].to_numpy(dtype=str)
    marked = (segments["unlabelled_only"] == "yes").to_numpy()
    first = (segments["domain"] == "first").to_numpy()
    view = [f"{r[0]}EGO" for r in rows if r[9].strip() and r[10].strip()]
    labelled_videos, unlabelled_videos = set(view[: len(view) // 2]), set(view[len(view) // 2 :])
    source, target = setup.source_rows, setup.target_rows
    labelled = source[first[source]]
    assert set(video[labelled]) == labelled_videos
    assert not marked[source].any()  # never labelled, never a source row
    expected_labelled = np.flatnonzero(first & ~marked & np.isin(video, list(labelled_videos)))
    np.testing.assert_array_equal(np.sort(labelled), expected_labelled)
    assert marked[target].all()  # the unlabelled half: whole-video rows only
    assert set(video[target]) == unlabelled_videos
    assert len(target) == 10 * len(unlabelled_videos)
    assert all("_u" in u for u in uid[target])


def test_marked_rows_replace_their_videos_rows_also_without_labelled_target(ego_rows, tmp_path):
    """Unsupervised (``labelled_target=0``): every first-person video's unlabelled rows are its
    whole-video rows; a target video without marked rows (here third-person, as target) keeps
    its action windows."""
    from avda.cache import open_cache
    from avda.train import heads as heads_lib
    from avda.train.setup import training_rows

    header, rows = ego_rows
    folder = write_annotations(tmp_path / "ann", [*rows, *ego_copies(rows)], header)
    manifest = build("charades-ego", folder, unit="windows").manifest
    cache = windows_cache(tmp_path / "c.zarr", manifest)
    store = open_cache(cache)
    marked = (store.segments["unlabelled_only"] == "yes").to_numpy()
    domain = store.segments["domain"].to_numpy(dtype=str)
    config = heads_lib.config_class("dann").from_dict({})
    source, target = training_rows(store, ["third"], ["first"], ["rgb"], config)
    np.testing.assert_array_equal(target, np.flatnonzero(marked))
    np.testing.assert_array_equal(source, np.flatnonzero(domain == "third"))
    # the other direction: first-person as source has its action windows, never marked rows
    source, target = training_rows(store, ["first"], ["third"], ["rgb"], config)
    np.testing.assert_array_equal(source, np.flatnonzero((domain == "first") & ~marked))
    np.testing.assert_array_equal(target, np.flatnonzero(domain == "third"))


def test_a_cache_without_the_mark_selects_as_before(ego_rows, tmp_path):
    """The same manifest without ``unlabelled_only`` (a cache built before it): the
    unlabelled half is every other target training row, as before (its action windows and,
    unmarked, the whole-video rows)."""
    from avda.cache import open_cache
    from avda.train import heads as heads_lib
    from avda.train.setup import labelled_target_rows, training_rows

    header, rows = ego_rows
    folder = write_annotations(tmp_path / "ann", [*rows, *ego_copies(rows)], header)
    manifest = build("charades-ego", folder, unit="windows").manifest
    manifest = manifest.drop(columns="unlabelled_only", errors="ignore")  # old code: none
    store = open_cache(windows_cache(tmp_path / "c.zarr", manifest))
    assert "unlabelled_only" not in store.segments
    domain = store.segments["domain"].to_numpy(dtype=str)
    config = heads_lib.config_class("audio-adaptive").from_dict(
        {"labelled_target": 0.5, "labelled_target_pick": "first"}
    )
    source, target = training_rows(store, ["third"], ["first"], ["rgb"], config)
    first = np.flatnonzero(domain == "first")
    labelled, unlabelled = labelled_target_rows(store, first, 0.5, "first")
    np.testing.assert_array_equal(
        source, np.concatenate([np.flatnonzero(domain == "third"), labelled])
    )
    np.testing.assert_array_equal(target, unlabelled)
    assert sorted([*labelled, *unlabelled]) == first.tolist()


def test_the_protocols_stages_mark_absent_classes_on_the_whole_video_rows(ego_rows, tmp_path):
    """End to end under ``audio-adaptive-charadesego`` on a marked cache (random features,
    classes folded to 4): stage 4 ranks the unlabelled half's whole-video rows, 10 per video."""
    from tests.train.test_audio_adaptive_multilabel import TINY, multilabel_store

    from avda.train.loop import train
    from avda.train.stages import StageStore

    header, rows = ego_rows
    rows = [r for r in rows if r[9].strip() and r[10].strip()][:30]
    folder = write_annotations(tmp_path / "ann", [*rows, *ego_copies(rows)], header)
    with open(folder / "CharadesEgo_v0_egocentric_test.csv", "a", newline="") as f:
        csv.writer(f).writerow(["T1EGO", *rows[0][1:]])
    manifest = build("charades-ego", folder, unit="windows").manifest
    present = [[int(c) % 4 for c in cell.split(";")] if cell else [] for cell in manifest["labels"]]
    manifest["labels"] = [";".join(map(str, sorted(set(p)))) for p in present]
    cache = tmp_path / "c.zarr"
    multilabel_store(
        cache, manifest.to_dict("records"), present, 4, np.random.default_rng(0), noise=1.0
    )
    result = train(
        cache=cache,
        head="audio-adaptive",
        source=["third"],
        target=["first"],
        out=tmp_path / "run",
        overrides=dict(TINY),
        progress=False,
        protocol="audio-adaptive-charadesego",
    )
    assert np.isfinite(result.metrics["target_test/labels/mAP"])
    stored = StageStore(tmp_path / "run").load_arrays("absent-labels")
    absent = stored["absent"]
    assert absent.shape == (10 * (len(rows) - len(rows) // 2), 157)
    # ranked per video, as the authors' get_unlikely_cls_per_video.py: a video's 10 rows share
    # the absent classes of their mean probabilities
    from tests.train.test_audio_adaptive_multilabel import authors_unlikely_per_video

    videos = stored["videos"]
    order = list(dict.fromkeys(videos.tolist()))
    assert len(order) == len(rows) - len(rows) // 2
    assert all(np.sum(videos == v) == 10 for v in order)
    authors = authors_unlikely_per_video(
        [stored["probabilities"][videos == v] for v in order], stored["frequencies"], 0.5
    )
    np.testing.assert_array_equal(absent, authors[[order.index(v) for v in videos]])


# --- the v1 release's one-view files, which the authors' code reads -------------------------

V1_EXTRA = ["egocentric", "charades_video"]  # v1's last two columns: `actions` is row[-4]


def authors_view_list(rows: list[list[str]]) -> list[str]:
    """The videos of a one-view file the authors' loaders keep, in the file's order: those
    whose ``actions`` (``row[-4]``) is not empty (``dataloader_recognizer.py`` l. 67-84,
    ``test_recognizer.py`` l. 33-45)."""
    kept = []
    for row in rows:
        class_list1 = row[-4].split(";")
        if len(class_list1[0]) > 0:
            kept.append(row[0])
    return kept


def test_the_v1_one_view_files_build_the_authors_lists(real_rows, tmp_path):
    """``version=v1-only`` reads the four ``CharadesEgo_v1_*_only{3rd,1st}.csv`` files of the
    authors' README; the first-person training videos keep the file's order, so the
    protocol's labelled half is the authors' ``target_video_list[:num_target_videos]``
    (``dataloader_recognizer.py`` l. 86-90). Before, only the mixed ``CharadesEgo_v1_train.csv``
    / ``_test.csv`` were read, the first-person order there taken to be the one-view file's,
    unchecked."""
    from avda.cache.store import create
    from avda.train.setup import labelled_target_rows

    header, rows = real_rows
    rows = [r for r in rows if r[10].strip()][:120]  # a video without length has no action
    v1 = [[*r, "No", ""] for r in rows]
    ego = [[f"{r[0]}EGO", *r[1:-2], "Yes", r[0]] for r in reversed(v1[40:100])]
    files = {
        "CharadesEgo_v1_train_only3rd.csv": v1[:40],
        "CharadesEgo_v1_train_only1st.csv": ego[:40],
        "CharadesEgo_v1_test_only3rd.csv": v1[100:],
        "CharadesEgo_v1_test_only1st.csv": ego[40:],
    }
    folder = write_v1(tmp_path / "CharadesEgo", header, files)
    manifest = build("charades-ego", folder, unit="windows", version="v1-only").manifest
    first = manifest[(manifest["domain"] == "first") & (manifest["split"] == "train")]
    target = authors_view_list(files["CharadesEgo_v1_train_only1st.csv"])
    assert list(pd.unique(first["video_id"])) == target
    third = manifest[(manifest["domain"] == "third") & (manifest["split"] == "train")]
    assert list(pd.unique(third["video_id"])) == authors_view_list(v1[:40])
    tested = manifest[(manifest["domain"] == "first") & (manifest["split"] == "test")]
    assert list(pd.unique(tested["score_group"])) == authors_view_list(ego[40:])

    store = create(tmp_path / "c.zarr", manifest, manifest_sha256="0" * 64, recipe={})
    rows_first = np.flatnonzero(
        (store.segments["domain"] == "first").to_numpy()
        & (store.segments["split"] == "train").to_numpy()
    )
    labelled, _ = labelled_target_rows(store, rows_first, 0.5, "first")
    labelled_videos = set(store.segments["video_id"].to_numpy()[labelled])
    assert labelled_videos == set(target[: int(len(target) / 2)])

    # the authors' folder built as v0 (the default) or v1: the refusal names the option; it
    # said "none of CharadesEgo_v0_train.csv found ...; pass --annotations the folder that
    # holds the benchmark's annotation files", the folder it was given
    for version in ("v0", "v1"):
        with pytest.raises(ManifestError) as caught:
            build("charades-ego", folder, unit="windows", version=version)
        assert str(caught.value).endswith(
            "holds the version=v1-only files (CharadesEgo_v1_train_only3rd.csv, "
            "CharadesEgo_v1_train_only1st.csv, CharadesEgo_v1_test_only3rd.csv, "
            "CharadesEgo_v1_test_only1st.csv): pass `--option version=v1-only`"
        )
    # the v1 release holds its mixed files beside the one-view ones: both versions are named
    # (the mixed files' version=v1 alone was, whose first-person order is not the authors')
    for name in ("CharadesEgo_v1_train.csv", "CharadesEgo_v1_test.csv"):
        shutil.copy(folder / "CharadesEgo_v1_train_only3rd.csv", folder / name)
    with pytest.raises(ManifestError) as caught:
        build("charades-ego", folder, unit="windows")
    assert str(caught.value) == (
        f"charades-ego: CharadesEgo_v0_train.csv (version=v0) is not in {folder}, which holds "
        "the version=v1 files (CharadesEgo_v1_train.csv, CharadesEgo_v1_test.csv) and the "
        "version=v1-only files (CharadesEgo_v1_train_only3rd.csv, "
        "CharadesEgo_v1_train_only1st.csv, CharadesEgo_v1_test_only3rd.csv, "
        "CharadesEgo_v1_test_only1st.csv): pass `--option version=v1` or `--option "
        "version=v1-only`"
    )


def write_v1(folder: Path, header: list[str], files: dict[str, list[list[str]]]) -> Path:
    folder.mkdir()
    source = Path(os.environ.get("AVDA_SHARED_DATA", "")) / "annotations" / "charadesego_v0"
    (folder / "Charades_v1_classes.txt").write_text((source / CLASS_FILES[0]).read_text())
    for name, file_rows in files.items():
        with open(folder / name, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow([*header, *V1_EXTRA])
            writer.writerows(file_rows)
    return folder


def test_a_first_person_video_is_the_files_and_its_egocentric_column_says_so(real_rows, tmp_path):
    """The v1 release's README: "This id contains 'EGO' at the end for first person videos",
    and its ``egocentric`` column is 'Yes' for them; the authors' loaders take the view from
    the one-view file read. A row where the id's suffix disagrees with either was put in the
    domain of its suffix without a word; it is refused, each such row named."""
    header, rows = real_rows
    rows = [r for r in rows if r[10].strip()][:8]
    third = [[*r, "No", ""] for r in rows]
    first = [[f"{r[0]}EGO", *r[1:], "Yes", r[0]] for r in rows]
    good = {
        "CharadesEgo_v1_train_only3rd.csv": third[:4],
        "CharadesEgo_v1_train_only1st.csv": first[:4],
        "CharadesEgo_v1_test_only3rd.csv": third[4:],
        "CharadesEgo_v1_test_only1st.csv": first[4:],
    }
    manifest = build("charades-ego", write_v1(tmp_path / "good", header, good), version="v1-only")
    domains = manifest.manifest.drop_duplicates("video_id").set_index("video_id")["domain"]
    assert (domains[[r[0] for r in first]] == "first").all()
    assert (domains[[r[0] for r in third]] == "third").all()

    bad = dict(good)
    bad["CharadesEgo_v1_train_only1st.csv"] = [third[0], *first[1:4]]  # no EGO, No
    bad["CharadesEgo_v1_test_only3rd.csv"] = [
        [f"{rows[4][0]}EGO", *rows[4][1:], "No", ""],  # EGO in the third-person file, No
        *third[5:],
    ]
    with pytest.raises(ManifestError) as caught:
        build("charades-ego", write_v1(tmp_path / "bad", header, bad), version="v1-only")
    message = str(caught.value)
    assert "have 3 problem(s)" in message
    assert (
        f"CharadesEgo_v1_train_only1st.csv row 2 [id]: id '{rows[0][0]}' does not end "
        "in EGO, in the first-person file: fix the id or move the row"
    ) in message
    assert (
        f"CharadesEgo_v1_test_only3rd.csv row 2 [id]: id '{rows[4][0]}EGO' ends in "
        "EGO, in the third-person file: fix the id or move the row"
    ) in message
    assert (
        f"CharadesEgo_v1_test_only3rd.csv row 2 [egocentric]: egocentric is 'No' but "
        f"id '{rows[4][0]}EGO' ends in EGO: fix the id or the column"
    ) in message

    # the mixed files of version=v1: the egocentric column only
    mixed = {
        "CharadesEgo_v1_train.csv": [*third[:4], *first[:3], [*first[3][:-2], "No", ""]],
        "CharadesEgo_v1_test.csv": [*third[4:], *first[4:]],
    }
    with pytest.raises(ManifestError, match=r"have 1 problem\(s\)") as caught:
        build("charades-ego", write_v1(tmp_path / "mixed", header, mixed), version="v1")
    assert (
        f"CharadesEgo_v1_train.csv row 9 [egocentric]: egocentric is 'No' but id "
        f"'{rows[3][0]}EGO' ends in EGO"
    ) in str(caught.value)
    mixed["CharadesEgo_v1_train.csv"][-1] = first[3]
    write_v1(tmp_path / "fixed", header, mixed)
    assert len(build("charades-ego", tmp_path / "fixed", version="v1").manifest)
