"""The manifest: one row per action segment (docs/manifest.md).

Required columns: ``uid, video_id, domain, split, start_sec, stop_sec``. Optional columns are
listed in :data:`OPTIONAL_COLUMNS`. Times are seconds, never frame indices, because source and
target videos can have different frame rates (EPIC-100: 59.94 vs 50 fps).

:func:`validate` reports every problem at once, each with its (1-based, header = row 1) file row
number, and raises one :class:`ManifestError` listing them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import hashlib
import logging
import numbers
import os
import re
import secrets
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from avda._io import file_lock, lock_file_of, name_written, remove_temporary, replace_file
from avda.errors import ConfigError, ManifestError
from avda.paths import component_problem, relative_path_problem, safe_component

log = logging.getLogger(__name__)

REQUIRED_COLUMNS: tuple[str, ...] = ("uid", "video_id", "domain", "split", "start_sec", "stop_sec")
OPTIONAL_COLUMNS: tuple[str, ...] = (
    "start_frame",
    "stop_frame",
    "fps",
    "participant_id",
    "narration",
    "verb",
    "verb_class",
    "noun",
    "noun_class",
    "labels",
    "score_group",
    "unlabelled_only",
    "video_path",
)
SPLITS: tuple[str, ...] = ("train", "val", "test")
CLASS_COLUMNS: tuple[str, ...] = ("verb_class", "noun_class")
STRING_COLUMNS: tuple[str, ...] = (
    "uid",
    "video_id",
    "domain",
    "split",
    "participant_id",
    "narration",
    "verb",
    "noun",
    "labels",
    "score_group",
    "unlabelled_only",
    "video_path",
)
# A row marked ``unlabelled_only = yes`` is only ever an unlabelled target training row (of a
# video outside a run's labelled share; docs/manifest.md "Unlabelled-only rows"): never
# labelled, scored or a source row. CharadesEgo ``--unit windows``' whole-video rows.
UNLABELLED_ONLY = "unlabelled_only"
UNLABELLED_ONLY_VALUE = "yes"
# Columns whose values become file or folder names (flow folders, frame and audio look-ups,
# plot names): each must be one plain path component (avda.paths, docs/security.md).
PATH_ID_COLUMNS: tuple[str, ...] = ("video_id", "domain", "participant_id")
# Times beyond this many seconds (11.6 days) are refused: no video is that long, and
# larger values overflow frame numbers.
MAX_SECONDS = 1e6
# Class ids index a classifier's outputs (0..C-1): an id of 10^9 made `avda finetune` ask for
# a 4 TB weight matrix. 100,000 leaves room for any action vocabulary (EPIC-100: 97 verbs,
# 300 nouns; Kinetics: 700 classes).
MAX_CLASS_ID = 99_999
MAX_PROBLEMS_SHOWN = 5  # the rest are counted: an error stays readable on one line
# A segment may run a little past its video's end (annotations often do: the last frame
# repeats there); one with more than this fraction of its span past the end is an error.
MAX_PAST_END_FRACTION = 0.5


def outside_video(
    start: float, stop: float, duration: float, what: str = "the video"
) -> str | None:
    """Why the segment ``[start, stop)`` cannot be read from ``what`` (a video or an audio
    track) of ``duration`` seconds (it starts after the end, or more than half of it lies past
    the end), or None."""
    if start >= duration:
        return f"starts at {start:.2f} s, after the end of {what} ({duration:.2f} s)"
    past = stop - duration
    if past > MAX_PAST_END_FRACTION * (stop - start):
        return (
            f"runs to {stop:.2f} s, {past:.2f} s past the end of {what} ({duration:.2f} s): "
            f"more than {MAX_PAST_END_FRACTION:.0%} of it has nothing to read"
        )
    return None


@dataclasses.dataclass(frozen=True)
class Problem:
    """One validation finding: ``row`` is the file row (header is row 1), None for the file.
    ``where``: how a message names the row when it is not a file's (a DataFrame's index)."""

    row: int | None
    column: str | None
    message: str
    where: str | None = None

    def __str__(self) -> str:
        where = self.where or ("file" if self.row is None else f"row {self.row}")
        col = f" [{self.column}]" if self.column else ""
        return f"{where}{col}: {self.message}"


def read(path: str | Path, *, videos: str | Path | None = None, check: bool = True) -> pd.DataFrame:
    """Read a CSV or Parquet manifest and (by default) validate it.

    ``videos``: the folder videos are resolved against; when given, missing video files are
    reported as problems too.
    """
    path = Path(path)
    if not path.exists():
        raise ManifestError(f"manifest {path} does not exist; build one with `avda manifest build`")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(
                path,
                dtype={c: "string" for c in STRING_COLUMNS},
                keep_default_na=False,
                na_values={"start_frame": [""], "stop_frame": [""], "fps": [""]}
                | {c: [""] for c in CLASS_COLUMNS},
            )
    except (OSError, ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ManifestError(f"manifest {path} cannot be read: {exc}") from exc
    if check:
        for column, known in misspelt_columns(frame.columns):  # also when the file fails
            log.warning(
                "%s: column %r is not one avda reads (it is kept as it is); did you mean %r?",
                *(path, column, known),
            )
        problems = find_problems(frame, videos=videos)
        if problems:
            raise ManifestProblems(path, problems)
    frame = normalise(frame)
    classes = build_classes(path)
    if classes:
        frame.attrs["classes"] = classes
    return frame


def is_class_tables(value: object) -> bool:
    """Whether ``value`` is class tables as a build record and a store's provenance hold them:
    an object of class column -> list of class names."""
    return isinstance(value, dict) and all(
        isinstance(v, list) and all(isinstance(n, str) for n in v) for v in value.values()
    )


def build_classes(path: str | Path) -> dict[str, list[str]]:
    """The class tables (class column -> names in id order) that ``avda manifest build``
    wrote beside the manifest ``path`` (``<path>.build.json``); {} when there is none. A file
    that is not such a record is refused in one line."""
    import json

    info = Path(f"{path}.build.json")
    if not info.exists():
        return {}
    try:
        classes = json.loads(info.read_text(encoding="utf-8")).get("classes", {})
    except (OSError, ValueError, AttributeError) as exc:
        raise ManifestError(f"{info} cannot be read as a manifest build record: {exc}") from exc
    if not is_class_tables(classes):
        raise ManifestError(f"{info}: 'classes' is not an object of class-name lists")
    return {str(k): list(v) for k, v in classes.items() if k in (*CLASS_COLUMNS, "labels")}


def normalise(frame: pd.DataFrame) -> pd.DataFrame:
    """Canonical dtypes: strings for ids, float64 seconds, Int64 class ids."""
    out = frame.copy()
    for column in STRING_COLUMNS:
        if column in out:
            out[column] = out[column].astype("string")
    for column in ("start_sec", "stop_sec", "fps"):
        if column in out:
            out[column] = pd.to_numeric(out[column], errors="coerce").astype("float64")
    for column in (*CLASS_COLUMNS, "start_frame", "stop_frame"):
        if column in out:
            out[column] = pd.to_numeric(out[column], errors="coerce").astype("Int64")
    return out.reset_index(drop=True)


def misspelt_columns(columns: Iterable[str]) -> list[tuple[str, str]]:
    """(column, the column avda reads it is probably meant to be) for each unknown column
    close to a known one that the table lacks (``verb_clas``, ``Verb_Class``): an optional
    column misspelt is not an error, but its data would be silently ignored."""
    import difflib

    columns = [str(c) for c in columns]
    names = (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS)
    lowered = {c.lower(): c for c in names if c not in columns}  # the ones the table lacks
    out = []
    for column in columns:
        if column in names or (column.endswith("_id") and column[:-3] in names):
            continue  # a known column, or the id of one (EPIC-100's narration_id)
        close = difflib.get_close_matches(column.strip().lower(), lowered, n=1, cutoff=0.85)
        if close:
            out.append((column, lowered[close[0]]))
    return out


# what other tools call a required column (EPIC's timestamps are strings: not these)
_ALIASES = {
    "uid": ("id", "segment_id", "narration_id", "clip_id"),
    "video_id": ("video", "video_name", "vid", "youtube_id"),
    "domain": ("dom",),
    "split": ("subset", "set"),
    "start_sec": ("start", "start_time", "start_s", "begin", "t_start"),
    "stop_sec": ("stop", "end", "end_sec", "stop_time", "end_time", "stop_s", "end_s", "t_end"),
}


def _meant_for(required: str, columns: Iterable[str]) -> str | None:
    """A column of the file that is probably ``required`` under another name (``video`` for
    ``video_id``, ``start_secs``), where the file lacks ``required``; None when none is."""
    import difflib

    known = {*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS}
    others = {str(c).strip().lower(): str(c) for c in columns if str(c) not in known}
    for alias in _ALIASES.get(required, ()):
        if alias in others:
            return others[alias]
    close = difflib.get_close_matches(required, others, n=1, cutoff=0.8)
    return others[close[0]] if close else None


def _shown(value: object) -> str:
    """A cell as its file spells it: ``-1``, not the ``-1.0`` of a column read as float (a
    class column with empty cells)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _other_separator(columns: Iterable[str]) -> str | None:
    """The separator of a CSV read with commas that used another (``;``, tab, ``|``): its
    header is then one column holding the required names joined by it."""
    columns = [str(c) for c in columns]
    if len(columns) != 1:
        return None
    for separator in (";", "\t", "|"):
        if sum(name in columns[0].split(separator) for name in REQUIRED_COLUMNS) >= 2:
            return separator
    return None


def labels_problem(cell: Any) -> str | None:
    """What is wrong with a multi-label cell (``"3;17"``; empty or missing: no label), or
    None."""
    if cell is None or (isinstance(cell, float) and np.isnan(cell)):
        return None
    for part in str(cell).split(";"):
        part = part.strip()
        if part and (not part.isdigit() or int(part) > MAX_CLASS_ID):
            return (
                f"labels id {part!r} is not a class id 0..{MAX_CLASS_ID:,} (ids separated by "
                "';', numbered from 0)"
            )
    return None


def class_id_problem(frame: pd.DataFrame) -> str | None:
    """The first class id of ``frame`` beyond :data:`MAX_CLASS_ID` (class columns and
    ``labels``), for readers that do not run :func:`find_problems`: a classifier is sized by
    the largest id."""
    for column in CLASS_COLUMNS:
        if column in frame:
            ids = pd.to_numeric(frame[column], errors="coerce")
            beyond = ids > MAX_CLASS_ID
            if beyond.any():
                return f"{column} {int(ids[beyond].iloc[0])} is beyond {MAX_CLASS_ID:,}"
    if "labels" in frame:
        for cell in frame["labels"]:
            why = labels_problem(cell)
            if why is not None:
                return why
    return None


def find_problems(
    frame: pd.DataFrame, *, videos: str | Path | None = None, dataframe: bool = False
) -> list[Problem]:
    """Every problem in ``frame``, in row order (does not raise). ``dataframe``: ``frame`` is a
    caller's DataFrame, not a file's table: problems name its index labels and its columns
    (:func:`format_dataframe_problems`), not file rows."""
    problems: list[Problem] = []
    table = "columns" if dataframe else None  # where a problem of no row is
    holder = "the DataFrame" if dataframe else "the file"
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    separator = _other_separator(frame.columns) if missing else None
    if separator is not None:  # one problem, not one per column
        if dataframe:
            message = (
                f"one column holds the names joined by {separator!r}: the table was read from "
                f"a {separator!r}-separated file as comma-separated (pandas: "
                f"pd.read_csv(path, sep={separator!r}))"
            )
        else:
            message = (
                f"the header is one column holding {separator!r}: the file is "
                f"{separator!r}-separated; avda reads comma-separated CSV (pandas: "
                "df.to_csv(path, index=False))"
            )
        problems.append(Problem(None, None, message, table))
        return problems
    for column in missing:
        found = _meant_for(column, frame.columns)
        hint = f"; {holder} has {found!r}: rename it to {column!r}" if found else ""
        message = f"required column {column!r} is missing{hint}"
        problems.append(Problem(None, column, message, table))
    if frame.empty:
        message = "the manifest has no rows"
        if dataframe:
            message = "the DataFrame has no rows: pass one that holds the segments"
        problems.append(Problem(None, None, message, "rows" if dataframe else None))
    if missing or frame.empty:
        return problems

    rows = np.arange(len(frame)) + 2  # header is file row 1
    labels = [_index_label(label) for label in frame.index] if dataframe else None

    def row_name(index: int) -> str:
        return f"index {labels[index]}" if labels is not None else f"row {rows[index]}"

    def at(index: int, column: str | None, message: str) -> Problem:
        where = row_name(index) if labels is not None else None
        return Problem(int(rows[index]), column, message, where)

    def add(mask: Iterable[bool], column: str, message_of) -> None:
        for index in np.flatnonzero(np.asarray(mask, dtype=bool)):
            problems.append(at(int(index), column, message_of(index)))

    uid = frame["uid"].astype("string")
    add(uid.isna() | (uid.str.strip() == ""), "uid", lambda i: "empty uid")
    dup = uid.duplicated(keep="first") & uid.notna()
    first_seen: dict[str, str] = {}
    for i, u in enumerate(uid):
        if pd.isna(u):
            continue
        first_seen.setdefault(u, row_name(i))
    add(
        dup,
        "uid",
        lambda i: f"duplicate uid {uid.iloc[i]!r} (first at {first_seen[uid.iloc[i]]})",
    )

    for column in ("video_id", "domain"):
        values = frame[column].astype("string")
        add(values.isna() | (values.str.strip() == ""), column, lambda i, c=column: f"empty {c}")

    for column in PATH_ID_COLUMNS:
        if column not in frame:
            continue
        values = frame[column].astype("string")
        present = values.notna() & (values.str.strip() != "")
        found = {i: component_problem(values.iloc[i]) for i in np.flatnonzero(present.to_numpy())}
        add(
            [found.get(i) is not None for i in range(len(frame))],
            column,
            lambda i, c=column, f=found: f"{c} {f[i]}",
        )
    if "video_path" in frame:
        paths = frame["video_path"].astype("string")
        present = (paths.notna() & (paths != "")).to_numpy()
        found = {i: relative_path_problem(paths.iloc[i]) for i in np.flatnonzero(present)}
        add(
            [found.get(i) is not None for i in range(len(frame))],
            "video_path",
            lambda i, f=found: f"video_path {f[i]}",
        )

    split = frame["split"].astype("string")
    add(
        ~split.isin(SPLITS).fillna(False),
        "split",
        lambda i: f"unknown split {split.iloc[i]!r}; expected one of {', '.join(SPLITS)}",
    )

    start = pd.to_numeric(frame["start_sec"], errors="coerce")
    stop = pd.to_numeric(frame["stop_sec"], errors="coerce")
    add(start.isna(), "start_sec", lambda i: f"not a number: {frame['start_sec'].iloc[i]!r}")
    add(stop.isna(), "stop_sec", lambda i: f"not a number: {frame['stop_sec'].iloc[i]!r}")
    add(start.notna() & (start < 0), "start_sec", lambda i: f"negative start {start.iloc[i]}")
    for column, values in (("start_sec", start), ("stop_sec", stop)):
        add(
            values.notna() & ~(values.abs() <= MAX_SECONDS),
            column,
            lambda i, c=column, v=values: (
                f"{c} {v.iloc[i]} is not a time avda can use (finite, at most {MAX_SECONDS:.0f} s)"
            ),
        )
    add(
        start.notna() & stop.notna() & (stop <= start),
        "stop_sec",
        lambda i: f"stop_sec {stop.iloc[i]} <= start_sec {start.iloc[i]}",
    )

    for column in (*CLASS_COLUMNS, "start_frame", "stop_frame"):
        if column not in frame:
            continue
        raw = frame[column]
        numeric = pd.to_numeric(raw, errors="coerce")
        bad = (raw.notna() & numeric.isna()) | (numeric.notna() & (numeric % 1 != 0))
        bad |= numeric.notna() & (numeric < 0)
        add(bad, column, lambda i, r=raw: f"not a non-negative integer: {_shown(r.iloc[i])}")
        if column in CLASS_COLUMNS:
            add(
                ~bad & numeric.notna() & (numeric > MAX_CLASS_ID),
                column,
                lambda i, r=raw: (
                    f"class id {_shown(r.iloc[i])} is beyond {MAX_CLASS_ID:,}: ids "
                    "number the classes from 0 (renumber them)"
                ),
            )

    if "labels" in frame:  # multi-label ids "3;17": the same ids, the same bound
        found = {i: labels_problem(cell) for i, cell in enumerate(frame["labels"])}
        add([found[i] is not None for i in range(len(frame))], "labels", lambda i: found[i])

    if UNLABELLED_ONLY in frame:
        _check_unlabelled_only(frame, split, add)

    if "fps" in frame:
        fps = pd.to_numeric(frame["fps"], errors="coerce")
        bad = (frame["fps"].notna() & fps.isna()) | (fps.notna() & (fps <= 0))
        add(bad, "fps", lambda i: f"fps must be a positive number, got {frame['fps'].iloc[i]!r}")

    if videos is not None:
        root = Path(videos)
        checked: dict[str, bool] = {}
        durations: dict[str, float | str | None] = {}  # seconds, or why it cannot be opened
        paths = [video_path_or_none(row, root) for row in frame.itertuples(index=False)]
        for i, p in enumerate(paths):
            if p is None:  # an id or video_path that is not a safe path: reported above
                continue
            key = str(p)
            if key not in checked:
                checked[key] = p.exists()
                if checked[key]:
                    durations[key] = _declared_duration(p)
            if not checked[key]:
                problems.append(
                    at(i, "video_path", f"video file {p} not found under {root}{same_name_hint(p)}")
                )
            elif isinstance(durations[key], str):
                problems.append(at(i, "video_path", durations[key]))
            elif durations[key] is not None and start.notna().iloc[i] and stop.notna().iloc[i]:
                why = outside_video(float(start.iloc[i]), float(stop.iloc[i]), durations[key])
                if why is not None:
                    column = "start_sec" if why.startswith("starts at") else "stop_sec"
                    problems.append(at(i, column, f"{why}: {p}"))
    problems.sort(key=lambda p: p.row or 0)
    return problems


def _check_unlabelled_only(frame: pd.DataFrame, split: pd.Series, add) -> None:
    """``unlabelled_only`` is empty or ``yes``; a ``yes`` row is a ``train`` row without a
    label or a ``score_group`` (it is never labelled nor scored)."""
    marks = frame[UNLABELLED_ONLY].astype("string").fillna("").str.strip()
    add(
        ~marks.isin(["", UNLABELLED_ONLY_VALUE]),
        UNLABELLED_ONLY,
        lambda i: f"expected {UNLABELLED_ONLY_VALUE!r} or empty, got {marks.iloc[i]!r}",
    )
    marked = (marks == UNLABELLED_ONLY_VALUE).to_numpy()
    add(
        marked & (split != "train").fillna(True).to_numpy(),
        UNLABELLED_ONLY,
        lambda i: f"an unlabelled-only row must be a train row, not {split.iloc[i]!r}",
    )
    for column in (*CLASS_COLUMNS, "labels", "score_group"):
        if column not in frame:
            continue
        values = frame[column].astype("string").fillna("").str.strip()
        add(
            marked & (values != "").to_numpy(),
            column,
            lambda i, c=column, v=values: (
                f"an unlabelled-only row has no {c} (got {v.iloc[i]!r}): it is never "
                "labelled nor scored"
            ),
        )


def _declared_duration(path: Path) -> float | str | None:
    """The duration a video file declares (its video stream's, else the container's), the
    reason it cannot be opened, or None when it declares none (then not checked here)."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                return f"{path} has no video stream"
            stream = container.streams.video[0]
            if stream.duration is not None and stream.time_base is not None:
                return float(stream.duration * stream.time_base)
            if container.duration is not None:
                return container.duration / 1e6
            return None
    except Exception as exc:  # PyAV raises many error types for damaged files
        return f"{path} cannot be opened as a video: {str(exc).splitlines()[0][:200]}"


def video_path_or_none(row: object, root: Path) -> Path | None:
    try:
        return video_path(row, root)
    except (ConfigError, ManifestError):
        return None


def same_name_hint(path: str | Path) -> str:
    """`` (the folder has v1.avi: ...)`` where a video is missing but a file of the same name
    with another extension is there (the default ``<video_id>.mp4`` of a manifest without a
    ``video_path`` column); "" otherwise."""
    path = Path(path)
    try:
        others = sorted(
            p.name for p in path.parent.glob(f"{glob.escape(path.stem)}.*") if p != path
        )[:3]
    except OSError:
        return ""
    if not others:
        return ""
    return (
        f" (the folder has {', '.join(others)}: give its name in the manifest's video_path "
        "column; without it a video is read as <video_id>.mp4)"
    )


def video_path(row: object, root: str | Path) -> Path:
    """Where the video of a manifest row lives: ``video_path`` if set, else ``<video_id>.mp4``."""
    rel = getattr(row, "video_path", None)
    if rel is None or pd.isna(rel) or str(rel) == "":
        rel = f"{safe_component(row.video_id, 'video_id')}.mp4"
    elif (problem := relative_path_problem(rel)) is not None:
        raise ConfigError(f"video_path {problem}")
    return Path(root) / str(rel)


class ManifestProblems(ManifestError):
    """A manifest with problems: the message names the first few, ``problems`` holds all."""

    def __init__(self, path: str | Path, problems: list[Problem]) -> None:
        super().__init__(format_problems(path, problems))
        self.path = Path(path)
        self.problems = list(problems)

    def __reduce__(self):  # its arguments are not its message (a pool's worker pickles it)
        return type(self), (self.path, self.problems)


def format_problems(path: str | Path, problems: list[Problem]) -> str:
    shown = problems[:MAX_PROBLEMS_SHOWN]
    more = len(problems) - len(shown)
    lines = [f"manifest {path} has {len(problems)} problem(s):"]
    lines += [f"  {p}" for p in shown]
    if more:
        lines.append(f"  ... and {more} more")
    lines.append(f"{fix_hint(problems)} and run `avda manifest validate` again")
    return "\n".join(lines)


def format_dataframe_problems(problems: list[Problem], argument: str, call: str) -> str:
    """The message of a DataFrame given to ``call`` as ``argument`` with ``problems`` (of
    :func:`find_problems` with ``dataframe=True``): it names the argument, index labels and
    columns, and no file (there is none)."""
    shown = problems[:MAX_PROBLEMS_SHOWN]
    more = len(problems) - len(shown)
    lines = [f"the DataFrame given as {argument} has {len(problems)} problem(s):"]
    lines += [f"  {p}" for p in shown]
    if more:
        lines.append(f"  ... and {more} more")
    if all(p.row is None for p in problems):
        lines.append(f"fix the DataFrame and call {call} again")
    else:
        lines.append(f"fix these rows of the DataFrame (or drop them) and call {call} again")
    return "\n".join(lines)


def _index_label(label: object) -> str:
    """A DataFrame index label as a message names it: ``3``, ``'clip_a'``."""
    if isinstance(label, numbers.Integral) and not isinstance(label, bool):
        return str(int(label))
    return repr(label.item() if isinstance(label, np.generic) else label)


def fix_hint(problems: list[Problem]) -> str:
    """What to fix: the rows, or the file (its columns) where no problem names a row."""
    if all(p.row is None for p in problems):
        return "fix the file (its header and columns)"
    return "fix these rows (or drop them)"


def write(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write a manifest as CSV or Parquet (by suffix), after validating it: whole or not at
    all (written as a :func:`partial_path` and renamed over ``path``, under :func:`writing`;
    a write killed half-way leaves ``path`` as it was, never a shorter table that would
    validate)."""
    path = Path(path)
    with writing(path):
        replace_file(write_partial(frame, path), path)
    return path


@contextlib.contextmanager
def writing(path: str | Path, *companions: str | Path) -> Iterator[None]:
    """Hold the write lock of the manifest ``path`` (:func:`avda._io.file_lock` on the hidden
    file ``.<name>.lock`` beside it, in the folder a linked folder leads to, removed when done;
    a link ``path`` itself, which the rename replaces, :func:`avda._io.lock_file_of`) while
    it and its ``companions`` (its ``.build.json``) are written and renamed into place:
    another writer of ``path`` waits, so two writes never mix their files. Holding it, the
    :func:`partial_path` files a killed write of them left are removed first (no other write
    of them is in progress)."""
    path = Path(path)
    lock = lock_file_of(path, ".{name}.lock", replaced=True)
    with file_lock(lock, guards=path) as locked:
        if locked:
            for each in (path, *map(Path, companions)):
                _remove_partials(each)
        yield


def partial_path(path: str | Path) -> Path:
    """A new temporary name for a write of ``path``: ``.partial-<pid>-<hex>-<name>`` beside it
    (its own for each write, so two writers never write into one file; the same suffix, so CSV
    compression is inferred as for ``path``). A killed write leaves it; the next write of
    ``path`` (:func:`writing`) removes it."""
    path = Path(path)
    return path.with_name(f".partial-{os.getpid()}-{secrets.token_hex(4)}-{path.name}")


def _remove_partials(path: Path) -> None:
    """Delete the :func:`partial_path` files of ``path`` that killed writes left (and the
    fixed ``.partial-<name>`` that earlier versions wrote)."""
    named = re.compile(r"\.partial-(?:\d+-[0-9a-f]{8}-)?" + re.escape(path.name))
    if not path.parent.is_dir():
        return
    for leftover in path.parent.glob(".partial-*"):
        if named.fullmatch(leftover.name):
            log.warning("removing %s (a write of %s that was killed)", leftover, path.name)
            leftover.unlink(missing_ok=True)


def write_partial(frame: pd.DataFrame, path: str | Path, temporary: Path | None = None) -> Path:
    """Validate ``frame`` and write it as ``temporary`` (default :func:`partial_path` of
    ``path``; CSV or Parquet by ``path``'s suffix); returns that file, for the caller to rename
    over ``path``. A write that raises removes it."""
    path = Path(path)
    problems = find_problems(frame)
    if problems:
        raise ManifestError(format_problems(path, problems))
    path.parent.mkdir(parents=True, exist_ok=True)
    # integer columns with empty cells (unlabelled target rows) as integers: 3, not 3.0
    # (in CSV as in Parquet, whose float64 column pandas readers would get as floats)
    integers = [c for c in (*CLASS_COLUMNS, "start_frame", "stop_frame") if c in frame]
    shown = frame.copy()
    for column in integers:
        values = pd.to_numeric(shown[column], errors="coerce")
        if values.notna().any() and (values.dropna() % 1 == 0).all():
            shown[column] = values.astype("Int64")
    temporary = temporary or partial_path(path)
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            shown.to_parquet(temporary, index=False)
        else:
            shown.to_csv(temporary, index=False)
    except BaseException as exc:
        remove_temporary(temporary)
        name_written(exc, path, temporary)
        raise
    return temporary


def fingerprint(frame: pd.DataFrame) -> str:
    """sha256 of the canonical CSV of the manifest: recorded in cache provenance."""
    cols = [c for c in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS) if c in frame.columns]
    data = normalise(frame)[cols].to_csv(index=False).encode()
    return hashlib.sha256(data).hexdigest()


def num_classes(frame: pd.DataFrame, column: str = "verb_class") -> int:
    values = pd.to_numeric(frame[column], errors="coerce").dropna()
    return int(values.max()) + 1 if len(values) else 0
