"""CharadesEgo: third-person -> first-person (egocentric) activity recognition.

Files (``gsig/actor-observer``, "v0" of the dataset): ``CharadesEgo_v0_train.csv`` (9,597
third-person videos), ``CharadesEgo_v0_test.csv`` (2,043 third-person videos),
``CharadesEgo_v0_egocentric_test.csv`` (103 first-person videos), ``charades_v1_classes.txt``
(157 classes, ``c000 Holding some clothes``). The v1 release (``CharadesEgo_v1_train.csv``,
``CharadesEgo_v1_test.csv``, first- and third-person videos mixed) is read with
``version=v1``; its one-view files ``CharadesEgo_v1_{train,test}_only{3rd,1st}.csv``, the ones
the Audio-Adaptive code reads, with ``version=v1-only``.

First-person videos are marked by the suffix ``EGO`` of their ``id`` (``BHP3HEGO`` is the
egocentric recording of ``BHP3H``): the v0 README does not say more; the v1 release's README
states the rule and marks the rows in ``egocentric`` (``Yes``), and its one-view files hold one
view each. A row whose suffix disagrees with either is a problem (:func:`_check_views`).
Domains: ``third`` and ``first``.

Each row's ``actions`` is ``cNNN start end;cNNN start end;...`` (seconds). Two units:

* ``segments`` (default): one manifest row per action, ``verb_class`` = the class id,
  ``verb`` = its name, uid ``<id>_<k>`` (k = position in ``actions``). Dropped and counted:
  actions that end before they start (``stop before start``, 7 in v0 train), zero-length
  actions (``shorter than one frame``), and videos with no actions (``video without actions``).
* ``videos``: one row per video, 0 .. ``length`` seconds, ``labels`` = the ``';'``-joined sorted
  class ids of all its actions (empty for a video without actions, which Charades' mAP leaves
  out). Dropped and counted: videos without ``length`` (``video without length``; in v0 these
  also have no actions).

* ``windows``: the Audio-Adaptive authors' CharadesEgo samples (``xiaobai1217/
  DomainAdaptation``, ``CharadesEgo/``). Training videos: one row per **action window**; test
  videos with an action: their ``test_recognizer.py``'s **10 clips**, one row each (uid
  ``<id>_c<k>``, :func:`test_clip_frames`; each from its first to past its last sampled frame,
  ``labels`` = all the video's classes), ``score_group`` = the video, so that a multi-label
  evaluation scores the video by the maximum over its clips' sigmoid scores, as their test does
  (docs/manifest.md, "Scored groups"); training rows have an empty ``score_group``.
  ``generate_labels.py`` turns each action into frames ``round(t x 24) + 1`` (24 fps; start and
  stop swapped where the stop comes first) and splits the frames ``1 .. num_frames`` of a video
  into *runs*, maximal stretches of frames with at least one action; their dataloaders draw a
  64 x 8-frame window (``SampleFrames(clip_len=64, frame_interval=8)``, about 21 s) inside a run,
  looping over the run when it is shorter, labelled with the classes active at its 64 frames.
  A cache cannot redraw the window every epoch, so each run gets the window the authors'
  validation pipeline places (``test_mode=True``: the centre of the run, at offset
  ``int((n - 511) / 2)`` for a run of ``n + 1`` frames, else 0 and looped): uid ``<id>_w<k>``
  (k-th run), from its first to past its last sampled frame (``(f - 1) / 24`` s .. ``f / 24``
  s), ``labels`` = the classes active at its 64 frames (:func:`window_labels`). ``num_frames``
  (their frame folder's file count) is taken as ``round(length x 24)``. Dropped and counted:
  ``video without length``, ``video without actions`` (also: no action frame within the video).
  First-person training videos also get **whole-video rows** for the protocol's unlabelled
  half: ``dataloader_encoder.py`` draws an unlabelled target window anywhere in the whole video
  (``total_frames`` = its frame count, ``start_index`` 1, no annotation read), so each such
  video (one with a window row, the authors' list) gets the 10 evenly spread clips of
  :func:`test_clip_frames` over its frames, uid ``<id>_u<k>``, no ``labels``, and
  ``unlabelled_only`` = ``yes`` (:data:`avda.data_manifests.schema.UNLABELLED_ONLY`): a run
  uses them only as the unlabelled target rows of the videos outside its labelled share, and
  those videos' action windows not at all (``avda.train.setup.training_rows``). The column is
  written only where such rows exist (v1; v0 has no first-person training video).

Action times are kept as annotated, also where they run past ``length`` (common in Charades).
The videos have no fixed frame rate, so the manifest has no ``fps`` column.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from avda.data_manifests.benchmarks import ManifestBuild, register
from avda.data_manifests.epic_common import apply_video_path_template
from avda.data_manifests.schema import UNLABELLED_ONLY, UNLABELLED_ONLY_VALUE
from avda.data_manifests.settings import CHARADES_EGO
from avda.data_manifests.sources import (
    SHORTER_THAN_ONE_FRAME,
    Drops,
    SourceProblems,
    SourceTable,
    check_annotations_folder,
    drop_short_segments,
    join_ids,
    locate,
    parse_numbers,
    read_csv_table,
    read_text_lines,
)
from avda.errors import ConfigError, ManifestError

NAME = "charades-ego"
NUM_CLASSES = 157
EGO_SUFFIX = "EGO"
NO_ACTIONS = "video without actions"
NO_LENGTH = "video without length"
FILES: dict[str, tuple[tuple[str, str], ...]] = {
    "v0": (
        ("CharadesEgo_v0_train.csv", "train"),
        ("CharadesEgo_v0_test.csv", "test"),
        ("CharadesEgo_v0_egocentric_test.csv", "test"),
    ),
    "v1": (("CharadesEgo_v1_train.csv", "train"), ("CharadesEgo_v1_test.csv", "test")),
    # the one-view files of the v1 release, which the Audio-Adaptive code reads (its README's
    # layout; dataloader_recognizer.py l. 52, 67, test_recognizer.py l. 33): the first-person
    # training file's row order is the one the authors' labelled half is taken in
    "v1-only": (
        ("CharadesEgo_v1_train_only3rd.csv", "train"),
        ("CharadesEgo_v1_train_only1st.csv", "train"),
        ("CharadesEgo_v1_test_only3rd.csv", "test"),
        ("CharadesEgo_v1_test_only1st.csv", "test"),
    ),
}
# The view a one-view file of the v1 release holds (the authors' loaders take it from the file);
# the mixed v1 files mark each row's in ``egocentric`` (``Yes`` / ``No``, the release's README).
ONE_VIEW_FILES = {
    "CharadesEgo_v1_train_only3rd.csv": "third",
    "CharadesEgo_v1_train_only1st.csv": "first",
    "CharadesEgo_v1_test_only3rd.csv": "third",
    "CharadesEgo_v1_test_only1st.csv": "first",
}
EGOCENTRIC = "egocentric"
CLASS_FILES = ("charades_v1_classes.txt", "Charades_v1_classes.txt")
SUBFOLDERS = ("charadesego_v0", "CharadesEgo", "charadesego")
REQUIRED_COLUMNS = ("id", "actions", "length")
ACTION_PATTERN = re.compile(r"^c(\d{3})\s+(\S+)\s+(\S+)$")
# The Audio-Adaptive authors' CharadesEgo windows (unit="windows"): generate_labels.py counts
# frames at 24 fps; the SlowFast config samples 64 frames 8 apart.
AUTHORS_FPS = 24
WINDOW_FRAMES = 64
WINDOW_STRIDE = 8
# ... and its test pipeline 10 such clips over the whole video (test_recognizer.py).
TEST_CLIPS = 10
# The domain whose training videos also get whole-video rows (the unlabelled target's
# windows, drawn anywhere in the video by dataloader_encoder.py): TEST_CLIPS of them.
UNLABELLED_DOMAIN = "first"
UNITS = ("segments", "videos", "windows")


def read_classes(path: Path, problems: SourceProblems) -> tuple[str, ...]:
    """``c000 Holding some clothes`` lines -> names indexed by id (c000..c156 in order)."""
    lines = read_text_lines(path, problems)
    if lines is None:
        return ()
    names: list[str] = []
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line:
            continue
        code, _, name = line.partition(" ")
        if code != f"c{len(names):03d}" or not name.strip():
            problems.add(
                path.name,
                f"row {number}",
                None,
                f"expected 'c{len(names):03d} <name>', got {line!r}",
            )
            return ()
        names.append(name.strip())
    return tuple(names)


def _parse_actions(
    table: SourceTable, num_classes: int, problems: SourceProblems
) -> list[list[tuple[int, float, float]]]:
    """Every row's ``actions`` -> [(class id, start, stop), ...]; malformed ones are problems."""
    parsed: list[list[tuple[int, float, float]]] = []
    for position, cell in enumerate(table.frame["actions"]):
        actions: list[tuple[int, float, float]] = []
        for item in filter(None, (part.strip() for part in str(cell).split(";"))):
            match = ACTION_PATTERN.match(item)
            start = stop = float("nan")
            if match:
                try:
                    start, stop = float(match.group(2)), float(match.group(3))
                except ValueError:
                    match = None
            if not match or not (np.isfinite(start) and np.isfinite(stop)) or start < 0:
                problems.add(
                    table.name,
                    table.row_label(position),
                    "actions",
                    f"action {item!r} is not 'cNNN start end' with times in seconds >= 0",
                )
                continue
            class_id = int(match.group(1))
            if class_id >= num_classes:
                problems.add(
                    table.name,
                    table.row_label(position),
                    "actions",
                    f"unknown class c{class_id:03d} "
                    f"(the class list has c000..c{num_classes - 1:03d})",
                )
                continue
            actions.append((class_id, start, stop))
        parsed.append(actions)
    return parsed


@register(NAME)
def build(
    annotations: Path,
    *,
    unit: Literal["segments", "videos", "windows"] = "segments",
    version: Literal["v0", "v1", "v1-only"] = "v0",
    video_path_template: str = "{video_id}.mp4",
) -> ManifestBuild:
    """Manifest of CharadesEgo action segments (or videos with multi-labels).

    ``unit``: ``segments`` (one row per action), ``videos`` (one row per video, ``labels``) or
    ``windows`` (training: the Audio-Adaptive authors' action windows; test: their 10 clips
    per video, ``score_group`` = the video).
    ``version``: ``v0`` (Actor-Observer files), ``v1`` (CharadesEgo release, both views in one
    file) or ``v1-only`` (the release's one-view files ``CharadesEgo_v1_{train,test}_only{3rd,
    1st}.csv``, which the Audio-Adaptive code reads).
    ``video_path_template``: ``video_path`` of a row, formatted from its columns ("" = none).
    """
    for name, value, valid in (("unit", unit, UNITS), ("version", version, tuple(FILES))):
        if value not in valid:  # a typo would build another manifest (windows) without a word
            raise ConfigError(f"{NAME} {name}: expected one of {', '.join(valid)}, got {value!r}")
    check_annotations_folder(annotations, NAME, CLASS_FILES, SUBFOLDERS)
    problems = SourceProblems(NAME)
    drops = Drops()
    class_path = locate(annotations, CLASS_FILES, NAME, SUBFOLDERS)
    classes = read_classes(class_path, problems)
    if len(classes) != NUM_CLASSES and not problems.about(class_path.name):
        problems.add(
            class_path.name, None, None, f"lists {len(classes)} classes; Charades has {NUM_CLASSES}"
        )
    # a broken class list is reported with the rows' problems, which are checked against
    # Charades' 157 classes meanwhile (one run names them all); nothing is built from them
    usable = not problems.about(class_path.name)
    frames: list[pd.DataFrame] = []
    sources = [str(class_path)]
    for file_name, split in FILES[version]:
        path = _locate_file(annotations, file_name, version)
        sources.append(str(path))
        table = read_csv_table(path, REQUIRED_COLUMNS, problems)
        if table is None:
            continue
        video_ids = table.frame["id"].str.strip()
        problems.add_rows(table, video_ids == "", "id", lambda i: "empty video id")
        actions = _parse_actions(table, NUM_CLASSES, problems)
        length, bad_length = parse_numbers(table.frame["length"])
        empty_length = (table.frame["length"].str.strip() == "").to_numpy()
        problems.add_rows(
            table,
            bad_length & ~empty_length,
            "length",
            lambda i, t=table: f"length {t.frame['length'].iloc[i]!r} is not a number",
        )
        domain = np.where(video_ids.str.endswith(EGO_SUFFIX), "first", "third")
        _check_views(table, video_ids, domain, problems)
        if not usable:
            continue
        if unit == "segments":
            frames.append(_segments(video_ids, domain, split, actions, classes, drops))
        elif unit == "videos":
            frames.append(_videos(video_ids, domain, split, actions, length, empty_length, drops))
        else:  # windows: the action windows of training videos, the clips of test videos
            test = split != "train"
            frames.append(
                _frame_rows(
                    video_ids,
                    domain,
                    split,
                    actions,
                    length,
                    empty_length,
                    drops,
                    _test_clips if test else _windows,
                    grouped=test,
                    whole_video=None if test else _whole_video,
                )  # fmt: skip
            )
    problems.raise_if_any()
    manifest = pd.concat(frames, ignore_index=True)
    if UNLABELLED_ONLY in manifest and not (manifest[UNLABELLED_ONLY] != "").any():
        manifest = manifest.drop(columns=UNLABELLED_ONLY)  # none: the manifest as before
    if unit == "segments":
        manifest = drop_short_segments(manifest, drops, fps=None)
    else:
        short = (manifest["stop_sec"] <= 0).to_numpy()
        drops.add(SHORTER_THAN_ONE_FRAME, int(short.sum()))
        manifest = manifest[~short].reset_index(drop=True)
    manifest = apply_video_path_template(manifest, video_path_template)
    class_column = "verb_class" if unit == "segments" else "labels"
    return ManifestBuild(
        benchmark=NAME,
        manifest=manifest,
        classes={class_column: classes},
        dropped=drops.as_dict(),
        domains={"third": "third-person videos (Charades)", "first": "first-person videos (EGO)"},
        settings={CHARADES_EGO.name: CHARADES_EGO},
        options={"unit": unit, "version": version, "video_path_template": video_path_template},
        sources=tuple(sources),
    )


def _check_views(
    table: SourceTable, video_ids: pd.Series, domain: np.ndarray, problems: SourceProblems
) -> None:
    """The README's rule (an ``id`` ending in ``EGO`` is first person) against what the file
    says: the view of a one-view file (:data:`ONE_VIEW_FILES`) and a row's ``egocentric``;
    a row where they disagree is a problem, not put in either domain by the suffix alone."""

    def suffix(i: int) -> str:
        ends = "ends" if domain[i] == "first" else "does not end"
        return f"id {video_ids.iloc[i]!r} {ends} in {EGO_SUFFIX}"

    view = ONE_VIEW_FILES.get(table.name)
    if view is not None:
        problems.add_rows(
            table,
            domain != view,
            "id",
            lambda i: f"{suffix(i)}, in the {view}-person file: fix the id or move the row",
        )
    if EGOCENTRIC in table.frame:
        marked = table.frame[EGOCENTRIC].str.strip().str.lower().to_numpy()
        wrong = np.isin(marked, ("yes", "no")) & ((marked == "yes") != (domain == "first"))
        problems.add_rows(
            table,
            wrong,
            EGOCENTRIC,
            lambda i: (
                f"{EGOCENTRIC} is {table.frame[EGOCENTRIC].iloc[i]!r} but {suffix(i)}: "
                "fix the id or the column"
            ),
        )


def _locate_file(annotations: Path, file_name: str, version: str) -> Path:
    """``file_name`` of ``version`` in the annotations folder; where it is missing and the
    folder holds every file of other versions, the refusal names their options."""

    def holds(names: list[str]) -> bool:
        try:
            for name in names:
                locate(annotations, [name], NAME, SUBFOLDERS)
        except ManifestError:
            return False
        return True

    try:
        return locate(annotations, [file_name], NAME, SUBFOLDERS)
    except ManifestError:
        # every version held is named: the v1 release holds the mixed files and the one-view
        # ones, and the first alone named version=v1, not the authors' v1-only
        held = {
            other: names
            for other, names in ((o, [name for name, _ in files]) for o, files in FILES.items())
            if other != version and holds(names)
        }
        if held:
            raise ManifestError(
                f"{NAME}: {file_name} (version={version}) is not in {annotations}, which "
                "holds the "
                + " and the ".join(f"version={o} files ({', '.join(n)})" for o, n in held.items())
                + ": pass "
                + " or ".join(f"`--option version={other}`" for other in held)
            ) from None
        raise


def _segments(
    video_ids: pd.Series,
    domain: np.ndarray,
    split: str,
    actions: list[list[tuple[int, float, float]]],
    classes: tuple[str, ...],
    drops: Drops,
) -> pd.DataFrame:
    rows: dict[str, list] = {k: [] for k in ("uid", "video_id", "domain", "start", "stop", "cls")}
    for position, video in enumerate(video_ids):
        if not actions[position]:
            drops.add(NO_ACTIONS)
            continue
        for index, (class_id, start, stop) in enumerate(actions[position]):
            rows["uid"].append(f"{video}_{index}")
            rows["video_id"].append(video)
            rows["domain"].append(domain[position])
            rows["start"].append(start)
            rows["stop"].append(stop)
            rows["cls"].append(class_id)
    return pd.DataFrame(
        {
            "uid": rows["uid"],
            "video_id": rows["video_id"],
            "domain": rows["domain"],
            "split": split,
            "start_sec": np.asarray(rows["start"], dtype="float64"),
            "stop_sec": np.asarray(rows["stop"], dtype="float64"),
            "verb": [classes[c] for c in rows["cls"]],
            "verb_class": np.asarray(rows["cls"], dtype="int64"),
        }
    )


def _videos(
    video_ids: pd.Series,
    domain: np.ndarray,
    split: str,
    actions: list[list[tuple[int, float, float]]],
    length: np.ndarray,
    empty_length: np.ndarray,
    drops: Drops,
) -> pd.DataFrame:
    keep = ~empty_length
    drops.add(NO_LENGTH, int(empty_length.sum()))
    labels = [join_ids(sorted({a[0] for a in row})) for row in actions]
    return pd.DataFrame(
        {
            "uid": video_ids[keep].to_numpy(),
            "video_id": video_ids[keep].to_numpy(),
            "domain": domain[keep],
            "split": split,
            "start_sec": 0.0,
            "stop_sec": length[keep],
            "labels": [labels[i] for i in np.flatnonzero(keep)],
        }
    )


def frame_number(seconds: float) -> int:
    """A time as the authors' frame number: ``int(np.round(t * 24)) + 1``
    (``generate_labels.py``; frame 1 is the first)."""
    return int(np.round(seconds * AUTHORS_FPS)) + 1


def frame_classes(actions: list[tuple[int, float, float]], num_frames: int) -> list[frozenset[int]]:
    """The classes active at frames ``1 .. num_frames`` (item ``j - 1`` for frame ``j``), as
    ``generate_labels.py`` computes them: an action covers its frames ``start .. stop``
    inclusive, swapped where the stop comes first."""
    spans = []
    for class_id, start, stop in actions:
        first, last = frame_number(start), frame_number(stop)
        spans.append((class_id, min(first, last), max(first, last)))
    return [
        frozenset(c for c, first, last in spans if first <= j <= last)
        for j in range(1, num_frames + 1)
    ]


def action_runs(classes: list[frozenset[int]]) -> list[tuple[int, int]]:
    """``(first, last)`` frame numbers of the maximal stretches of frames with an action."""
    runs: list[tuple[int, int]] = []
    first = None
    for j, active in enumerate(classes, start=1):
        if active and first is None:
            first = j
        elif not active and first is not None:
            runs.append((first, j - 1))
            first = None
    if first is not None:
        runs.append((first, len(classes)))
    return runs


def window_frames(first: int, last: int) -> np.ndarray:
    """The 64 frame numbers of the window in the run ``first .. last``: mmaction's
    ``SampleFrames(64, 8, num_clips=1, test_mode=True)`` on ``total_frames = last - first``
    (as the authors' loaders pass it) from ``start_index = first``: the centre of a long run,
    offset 0 and looped (``mod total_frames``) in a short one."""
    total = last - first
    span = WINDOW_FRAMES * WINDOW_STRIDE
    offset = int((total - span + 1) / 2.0) if total > span - 1 else 0
    indices = offset + np.arange(WINDOW_FRAMES) * WINDOW_STRIDE
    indices = np.mod(indices, total) if total > 0 else np.zeros_like(indices)
    return indices + first


def test_clip_frames(num_frames: int) -> np.ndarray:
    """The ``(10, 64)`` frame numbers of the authors' test clips of a video of ``num_frames``
    frames: mmaction's ``SampleFrames(64, 8, num_clips=10, test_mode=True)`` from
    ``start_index = 1`` (``test_recognizer.py``, the SlowFast config's ``test_pipeline``): clip
    ``k`` at offset ``int(k a + a / 2)``, ``a = (N - 511) / 10``, for a video longer than 511
    frames, else every clip at offset 0, the indices looped (``mod N``)."""
    span = WINDOW_FRAMES * WINDOW_STRIDE
    if num_frames > span - 1:
        interval = (num_frames - span + 1) / float(TEST_CLIPS)
        offsets = (np.arange(TEST_CLIPS) * interval + interval / 2.0).astype(np.int64)
    else:
        offsets = np.zeros(TEST_CLIPS, dtype=np.int64)
    indices = offsets[:, None] + np.arange(WINDOW_FRAMES)[None, :] * WINDOW_STRIDE
    indices = np.mod(indices, num_frames) if num_frames > 0 else np.zeros_like(indices)
    return indices + 1


def window_labels(classes: list[frozenset[int]], frames: np.ndarray) -> list[int]:
    """The sorted classes active at any of ``frames`` (the loaders' ``label1``)."""
    return sorted(set().union(*(classes[int(f) - 1] for f in frames)))


def _windows(video_actions, num_frames: int) -> list[tuple[str, np.ndarray, str]]:
    """A training video under ``unit=windows``: one window per action run, the one the code's
    validation pipeline places in it (:func:`window_frames`), uid ``<id>_w<k>``, labelled with
    the classes active at its frames (scored alone)."""
    classes = frame_classes(video_actions, num_frames)
    made = []
    for index, (first, last) in enumerate(action_runs(classes)):
        frames = window_frames(first, last)
        made.append((f"w{index}", frames, join_ids(window_labels(classes, frames))))
    return made


def _test_clips(video_actions, num_frames: int) -> list[tuple[str, np.ndarray, str]]:
    """A test video under ``unit=windows``: the authors' 10 test clips if it has an action
    (:func:`test_clip_frames`), uid ``<id>_c<k>``, each labelled with all the video's classes
    (``score_group`` = the video)."""
    if not video_actions:  # test_recognizer.py reads the videos with an action
        return []
    labels = join_ids(sorted({a[0] for a in video_actions}))
    return [(f"c{k}", frames, labels) for k, frames in enumerate(test_clip_frames(num_frames))]


def _whole_video(num_frames: int) -> list[tuple[str, np.ndarray]]:
    """A first-person training video's whole-video rows (``unit=windows``), the unlabelled
    target's windows: ``dataloader_encoder.py`` l. 234-265 draws one anywhere in the video
    (``SampleFrames(64, 8)`` in train mode on ``total_frames`` = the video's frame count, from
    frame 1; no annotation read); a cache holds :data:`TEST_CLIPS` evenly spread ones,
    the clips of :func:`test_clip_frames` (the centres of equal shares of the offsets the code
    draws from), uid ``<id>_u<k>``. They depend on ``num_frames`` alone."""
    return [(f"u{k}", frames) for k, frames in enumerate(test_clip_frames(num_frames))]


def _frame_rows(
    video_ids: pd.Series,
    domain: np.ndarray,
    split: str,
    actions: list[list[tuple[int, float, float]]],
    length: np.ndarray,
    empty_length: np.ndarray,
    drops: Drops,
    windows_of,
    *,
    grouped: bool,
    whole_video=None,
) -> pd.DataFrame:
    """One row per window ``windows_of(actions, num_frames)`` gives a video (``(uid suffix,
    1-based 24-fps frames, labels)``; none: the video has no action and is dropped), from its
    first frame's start to its last frame's end; ``grouped``: ``score_group`` = the video.
    ``whole_video``: a video of :data:`UNLABELLED_DOMAIN` with a window also gets the rows
    ``whole_video(num_frames)`` gives (``(uid suffix, frames)``), without labels, marked
    ``unlabelled_only``."""
    records = []
    drops.add(NO_LENGTH, int(empty_length.sum()))
    for position, video in enumerate(video_ids):
        if empty_length[position]:
            continue
        num_frames = int(np.round(length[position] * AUTHORS_FPS))
        windows = windows_of(actions[position], num_frames)
        if not windows:
            drops.add(NO_ACTIONS)
            continue
        for suffix, frames, labels in windows:
            records.append(
                (f"{video}_{suffix}", video, domain[position], split,
                 (int(frames.min()) - 1) / AUTHORS_FPS, int(frames.max()) / AUTHORS_FPS,
                 labels, video if grouped else "", "")  # ungrouped: scored alone
            )  # fmt: skip
        if whole_video is None or domain[position] != UNLABELLED_DOMAIN:
            continue
        for suffix, frames in whole_video(num_frames):  # the annotations unread
            records.append(
                (f"{video}_{suffix}", video, domain[position], split,
                 (int(frames.min()) - 1) / AUTHORS_FPS, int(frames.max()) / AUTHORS_FPS,
                 "", "", UNLABELLED_ONLY_VALUE)
            )  # fmt: skip
    columns = ["uid", "video_id", "domain", "split", "start_sec", "stop_sec", "labels"]
    return pd.DataFrame.from_records(
        records, columns=[*columns, "score_group", UNLABELLED_ONLY]
    ).astype({"start_sec": "float64", "stop_sec": "float64"})
