"""EPIC-KITCHENS rows -> manifest rows, shared by the EPIC-55, MM-SADA and EPIC-100 builders.

EPIC annotation rows carry ``start_timestamp``/``stop_timestamp`` as ``HH:MM:SS.ff`` and
``start_frame``/``stop_frame`` (1-based frame numbers of the released RGB frames). The manifest
keeps both, and as ``fps`` the rate those numbers count at (:func:`frame_number_rates`): 60 in
the 2018 recordings whatever the camera's rate (59.94 fps, and 29.97, 47.95 or 90 fps for a few
videos), 50 in the 2020 extension of EPIC-100 (recorded at 50 fps). Sampling converts frame
offsets within a segment to seconds with it, anchored at ``start_sec``.
"""

from __future__ import annotations

import string
from collections.abc import Mapping

import numpy as np
import pandas as pd

from avda.data_manifests.sources import (
    SourceProblems,
    SourceTable,
    check_class_ids,
    join_ids,
    parse_integers,
    parse_list_cells,
    parse_timestamps,
)
from avda.errors import ConfigError

EPIC_FRAME_RATE = 60.0
"""The rate EPIC's frame numbers count at in the 2018 recordings (all of EPIC-55), whatever the
camera's rate: ``start_frame / start_sec`` is 60.0 (not 59.94) on the released annotations, for
the 29.97, 47.95 and 90 fps videos too; TBN's ``epickitchens*_record.py`` uses 60 for them."""


def frame_number_rates(video_fps: Mapping[str, float]) -> dict[str, float]:
    """``{video id: the rate its EPIC frame numbers count at}`` from the video info file's camera
    rates: 50 for a video recorded at 50 fps (the 2020 extension of EPIC-100, whose frame
    numbers count at 50), :data:`EPIC_FRAME_RATE` (60) for every other (the 2018 recordings).
    Using the camera's rate instead puts a 29.97 fps video's snippets twice as far into the
    segment as the frame numbers say (and 59.94 fps ones 0.1 % too far)."""
    return {
        video: 50.0 if abs(fps - 50.0) < 0.01 else EPIC_FRAME_RATE
        for video, fps in video_fps.items()
    }


def usable_references(
    problems: SourceProblems,
    video_fps: Mapping[str, float],
    info_name: str,
    verb_classes: tuple[str, ...],
    verb_file: str,
    noun_classes: tuple[str, ...],
    noun_file: str,
) -> tuple[float | dict[str, float], tuple[str, ...] | None, tuple[str, ...] | None]:
    """What the segment rows are checked against: the frame-number rates of the video info
    file and the class tables, each only when its file read without problems (else one rate
    for every video, and None: no class check). A row is then checked for what it holds
    (times, frames, ids) in the same run as the broken file, not after it is fixed, and not
    against a table it would fail only because the table is broken."""
    fps = EPIC_FRAME_RATE if problems.about(info_name) else frame_number_rates(video_fps)
    verbs = None if problems.about(verb_file) else verb_classes
    nouns = None if problems.about(noun_file) else noun_classes
    return fps, verbs, nouns


EPIC_VIDEO_PATH = "{participant_id}/videos/{video_id}.MP4"
"""Where the official download scripts put a video, relative to the videos folder."""

TIMESTAMP_COLUMNS = ("start_timestamp", "stop_timestamp")
SEGMENT_COLUMNS = ("participant_id", "video_id", *TIMESTAMP_COLUMNS, "start_frame", "stop_frame")


def epic_segments(
    table: SourceTable,
    problems: SourceProblems,
    *,
    uid_column: str,
    domain: str | pd.Series,
    split: str,
    fps: float | Mapping[str, float],
    video_info_name: str = "",
    verb_classes: tuple[str, ...] | None = None,
    verb_class_file: str = "",
    noun_classes: tuple[str, ...] | None = None,
    noun_class_file: str = "",
    keep_all_nouns: bool = False,
) -> pd.DataFrame:
    """Convert one EPIC annotation table; malformed rows go to ``problems``.

    ``fps``: one rate for every video, or a mapping video id -> fps (a video missing from it
    is a malformed row). ``verb_classes``/``noun_classes``: the class tables the ids must index;
    None when the file has no labels (``*_timestamps`` files).
    """
    raw = table.frame
    uid = raw[uid_column].astype(str).str.strip()
    problems.add_rows(table, uid == "", uid_column, lambda i: "empty id")
    video_id = raw["video_id"].astype(str).str.strip()
    problems.add_rows(table, video_id == "", "video_id", lambda i: "empty video_id")

    start_sec, bad_start = parse_timestamps(raw["start_timestamp"])
    stop_sec, bad_stop = parse_timestamps(raw["stop_timestamp"])
    for column, bad in (("start_timestamp", bad_start), ("stop_timestamp", bad_stop)):
        problems.add_rows(
            table,
            bad,
            column,
            lambda i, c=column: f"time {raw[c].iloc[i]!r} is not HH:MM:SS.ff",
        )
    start_frame, bad_start_frame = parse_integers(raw["start_frame"])
    stop_frame, bad_stop_frame = parse_integers(raw["stop_frame"])
    for column, bad in (("start_frame", bad_start_frame), ("stop_frame", bad_stop_frame)):
        problems.add_rows(
            table, bad, column, lambda i, c=column: f"frame {raw[c].iloc[i]!r} is not an integer"
        )

    if isinstance(fps, Mapping):
        video_fps = video_id.map(fps).to_numpy(dtype="float64")
        problems.add_rows(
            table,
            np.isnan(video_fps),
            "video_id",
            lambda i: (
                f"video {video_id.iloc[i]!r} is not in {video_info_name}; "
                "use the video info file released with these annotations"
            ),
        )
    else:
        video_fps = np.full(len(raw), float(fps))

    out = pd.DataFrame(
        {
            "uid": uid,
            "video_id": video_id,
            "domain": domain if isinstance(domain, pd.Series) else [domain] * len(raw),
            "split": [split] * len(raw),
            "start_sec": start_sec,
            "stop_sec": stop_sec,
            "start_frame": start_frame,
            "stop_frame": stop_frame,
            "fps": video_fps,
            "participant_id": raw["participant_id"].astype(str).str.strip(),
        }
    )
    if "narration" in raw.columns:
        out["narration"] = raw["narration"].astype(str)
    if verb_classes is not None:
        ids, bad = parse_integers(raw["verb_class"])
        check_class_ids(table, "verb_class", ids, bad, len(verb_classes), verb_class_file, problems)
        out["verb"] = raw["verb"].astype(str) if "verb" in raw.columns else None
        out["verb_class"] = ids
    if noun_classes is not None:
        ids, bad = parse_integers(raw["noun_class"])
        check_class_ids(table, "noun_class", ids, bad, len(noun_classes), noun_class_file, problems)
        out["noun"] = raw["noun"].astype(str) if "noun" in raw.columns else None
        out["noun_class"] = ids
    if keep_all_nouns and "all_nouns" in raw.columns:
        out["all_nouns"], out["all_noun_classes"] = _all_nouns(table, problems, noun_classes)
    return out


def _all_nouns(
    table: SourceTable, problems: SourceProblems, noun_classes: tuple[str, ...] | None
) -> tuple[list[str], list[str]]:
    """``all_nouns``/``all_noun_classes`` lists -> ``';'``-joined strings (the manifest form).

    The two lists are kept as released; they need not have the same length (232 EPIC-55 rows
    list more class ids than nouns, e.g. ``['celery']`` with ``[185, 25]``).
    """
    raw = table.frame
    nouns, bad_nouns = parse_list_cells(raw["all_nouns"])
    classes, bad_classes = parse_list_cells(raw["all_noun_classes"])
    problems.add_rows(table, bad_nouns, "all_nouns", lambda i: "not a list of nouns")
    problems.add_rows(table, bad_classes, "all_noun_classes", lambda i: "not a list of class ids")
    has_separator = np.array([any(";" in noun for noun in row) for row in nouns])
    problems.add_rows(table, has_separator, "all_nouns", lambda i: "a noun contains ';'")
    count = len(noun_classes) if noun_classes is not None else None
    for position, row in enumerate(classes):
        if bad_classes[position]:
            continue
        for value in row:
            if not value.isdigit() or (count is not None and int(value) >= count):
                problems.add(
                    table.name,
                    table.row_label(position),
                    "all_noun_classes",
                    f"unknown noun class id {value!r}",
                )
    return [join_ids(row) for row in nouns], [join_ids(row) for row in classes]


def apply_video_path_template(frame: pd.DataFrame, template: str) -> pd.DataFrame:
    """Fill ``video_path`` from a ``str.format`` template of the row's columns ("" = none)."""
    if not template:
        return frame
    fields = [name for _, name, _, _ in string.Formatter().parse(template) if name]
    unknown = [name for name in fields if name not in frame.columns]
    if unknown:
        raise ConfigError(
            f"video_path_template {template!r} uses unknown field(s) {', '.join(unknown)}; "
            f"available: {', '.join(map(str, frame.columns))}"
        )
    out = frame.copy()
    columns = {name: out[name].astype(str).tolist() for name in fields}
    out["video_path"] = [
        template.format(**{name: columns[name][i] for name in fields}) for i in range(len(out))
    ]
    return out
