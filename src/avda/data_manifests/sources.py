"""Reading benchmark annotation files: shared by the benchmark builders.

Two rules hold for every builder:

* **Malformed rows are errors.** Bad times, unknown class ids, missing columns, bytes that are not
  UTF-8... are collected in a :class:`SourceProblems` and raised together, each with its file and
  row number (header = row 1, as in a spreadsheet), in one :class:`ManifestError`.
* **Rows dropped on purpose are counted.** A segment shorter than one frame, a video without
  actions... is removed with a named reason in a :class:`Drops`; the counts travel with the
  build (``ManifestBuild.dropped``) and are logged, never silently discarded.
"""

from __future__ import annotations

import ast
import collections
import dataclasses
import io
import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from avda.data_manifests import safe_pickle
from avda.errors import ManifestError

logger = logging.getLogger(__name__)

MAX_PROBLEMS_SHOWN = 5  # the rest are counted: an error stays readable on one line
TIMESTAMP_PATTERN = r"^(\d+):([0-5]\d):([0-5]\d(?:\.\d+)?)$"

# Drop reasons shared by several builders.
SHORTER_THAN_ONE_FRAME = "shorter than one frame"
STOP_BEFORE_START = "stop before start"


@dataclasses.dataclass(frozen=True)
class SourceProblem:
    """One malformed row (or file) of an annotation file."""

    file: str
    row: str | None
    column: str | None
    message: str

    def __str__(self) -> str:
        where = self.file if self.row is None else f"{self.file} {self.row}"
        column = f" [{self.column}]" if self.column else ""
        return f"{where}{column}: {self.message}"


class SourceProblems:
    """Collects malformed rows of a benchmark's files and raises them all at once."""

    def __init__(self, benchmark: str, *, released: bool = True) -> None:
        self.benchmark = benchmark
        self.released = released  # whether the benchmark's files were published (not user's)
        self.problems: list[SourceProblem] = []
        self.renames = False  # a problem names an option that renames its values

    def add(self, file: str, row: str | None, column: str | None, message: str) -> None:
        self.problems.append(SourceProblem(file, row, column, message))

    def add_rows(
        self,
        table: SourceTable,
        mask: np.ndarray | pd.Series,
        column: str | None,
        message_of: Callable[[int], str],
    ) -> None:
        """Add one problem per True position of ``mask`` (positions into ``table.frame``)."""
        for position in np.flatnonzero(np.asarray(mask, dtype=bool)):
            self.add(table.name, table.row_label(int(position)), column, message_of(int(position)))

    def __bool__(self) -> bool:
        return bool(self.problems)

    def about(self, file: str) -> bool:
        """Whether a problem of ``file`` was recorded (what it gave cannot check others)."""
        return any(problem.file == file for problem in self.problems)

    def raise_if_any(self) -> None:
        if not self.problems:
            return
        shown = self.problems[:MAX_PROBLEMS_SHOWN]
        lines = [f"{self.benchmark} annotations have {len(self.problems)} problem(s):"]
        lines += [f"  {problem}" for problem in shown]
        if len(self.problems) > len(shown):
            lines.append(f"  ... and {len(self.problems) - len(shown)} more")
        released = " (or use the files as released)" if self.released else ""
        renames = " (or with the options named)" if self.renames else ""
        lines.append(
            f"fix these in the annotation files{released}{renames} and run `avda manifest "
            "build` again"
        )
        raise ManifestError("\n".join(lines))


class Drops:
    """Per-reason counts of rows removed on purpose."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()

    def add(self, reason: str, count: int = 1) -> None:
        if count:
            self.counts[reason] += int(count)

    def as_dict(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))


@dataclasses.dataclass
class SourceTable:
    """A raw annotation table and how to name its rows in messages.

    ``row_numbers`` are file rows (header = row 1) for text files; for pickles, where there are
    no file rows, rows are named by position and index value.
    """

    name: str
    frame: pd.DataFrame
    row_numbers: np.ndarray | None = None
    index_values: Sequence[object] | None = None

    def row_label(self, position: int) -> str:
        if self.row_numbers is not None:
            return f"row {int(self.row_numbers[position])}"
        if self.index_values is not None:
            return f"record {position + 1} (index {self.index_values[position]!r})"
        return f"record {position + 1}"

    def rows_label(self, mask: np.ndarray | pd.Series, shown: int = 3) -> str:
        """The rows of ``mask`` as one problem names them: ``row 4, row 9 and 3 more``."""
        positions = np.flatnonzero(np.asarray(mask, dtype=bool))
        names = [self.row_label(int(p)) for p in positions[:shown]]
        more = f" and {len(positions) - shown} more" if len(positions) > shown else ""
        return ", ".join(names) + more


def add_rename_problem(
    problems: SourceProblems,
    table: SourceTable,
    values: pd.Series,
    valid: Sequence[str],
    column: str,
    option: str,
) -> np.ndarray:
    """One problem for the rows of ``table`` whose ``column`` holds a value outside ``valid``
    (empty ones aside), naming the values and the ``option`` that renames them, written for
    them: ``--option splits=testing=test,training=train`` (a value is guessed as the valid
    name it starts with, case aside, else left for the user: ``Val=<train|val|test>``).
    Returns the rows' mask (``values`` is aligned with ``table.frame``)."""
    text = values.astype("string").str.strip()
    unknown = (text.notna() & (text != "") & ~text.isin(list(valid))).to_numpy(dtype=bool)
    if not unknown.any():
        return unknown
    found = sorted(set(text[unknown]))
    choices = "<" + "|".join(valid) + ">"

    def guess(value: str) -> str:
        key = value.lower()
        return next((name for name in valid if key.startswith(name)), choices)

    renames = ",".join(f"{value}={guess(value)}" for value in found)
    problems.renames = True
    problems.add(
        table.name,
        table.rows_label(unknown),
        column,
        f"{column} value(s) {', '.join(found)} are not {', '.join(valid)}; rename them with "
        f"the {option} option: `--option {option}={renames}`",
    )
    return unknown


def locate(
    annotations: Path, names: Iterable[str], benchmark: str, subfolders: Iterable[str] = ()
) -> Path:
    """The first of ``names`` found in ``annotations`` or one of its ``subfolders``."""
    annotations = Path(annotations)
    names = list(names)
    folders = [annotations, *(annotations / sub for sub in subfolders)]
    for folder in folders:
        for name in names:
            candidate = folder / name
            if candidate.is_file():
                return candidate
    looked = ", ".join(str(folder) for folder in folders)
    raise ManifestError(
        f"{benchmark}: none of {', '.join(names)} found in {looked}; pass --annotations the "
        "folder that holds the benchmark's annotation files (see docs/benchmarks.md)"
    )


def check_annotations_folder(
    annotations: Path, benchmark: str, reads: Iterable[str] = (), subfolders: Iterable[str] = ()
) -> Path:
    """``annotations`` where it is a folder; refused otherwise, a file of a folder from which one
    of ``reads`` (a file of the benchmark's own folder) is found (in it or its ``subfolders``,
    as :func:`locate` finds them) with that folder: the file's, or the one the file's folder is
    a subfolder of (``ucf_hmdb_lists/ta3n_class_lists/classInd_hmdb_ucf.txt``)."""
    annotations = Path(annotations)
    if not annotations.exists():
        raise ManifestError(
            f"{benchmark}: annotations path {annotations} does not exist; pass --annotations "
            "the folder that holds the benchmark's annotation files"
        )
    if not annotations.is_dir():  # it was looked into as a folder: 'none of ... found in FILE/'
        reads, subfolders = list(reads), list(subfolders)
        parent = annotations.parent
        folders = (
            [parent]
            + [
                Path(*parent.parts[: -len(sub)])  # Path() is "." (-a ta3n_class_lists/FILE)
                for sub in (Path(name).parts for name in subfolders)
                if ".." not in sub and parent.parts[-len(sub) :] == sub
            ]
        )
        for folder in folders if reads else ():
            try:  # a file of the benchmark's folder (CharadesEgo_v0_test.csv): that folder
                found = locate(folder, reads, benchmark, subfolders)
            except ManifestError:
                continue
            whose = "its folder" if folder == parent else "the folder above it"
            raise ManifestError(
                f"{benchmark}: --annotations {annotations} is a file, and {benchmark} reads a "
                f"folder of annotation files: pass {whose}, --annotations {folder} (avda finds "
                f"{found.relative_to(folder)} from there)"
            )
        raise ManifestError(
            f"{benchmark}: --annotations {annotations} is a file, and {benchmark} reads a "
            "folder of annotation files: pass the folder that holds them (see "
            "docs/benchmarks.md); a single table file is read by the generic and actorshift "
            "benchmarks"
        )
    return annotations


def read_text_lines(path: Path, problems: SourceProblems) -> list[str] | None:
    """The lines of a UTF-8 text file; lines that are not UTF-8 become problems (None then)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        problems.add(path.name, None, None, f"cannot be read: {exc}")
        return None
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    lines: list[str] = []
    undecodable = False
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            lines.append(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            undecodable = True
            problems.add(
                path.name,
                f"row {number}",
                None,
                f"byte 0x{raw[exc.start]:02x} (byte {exc.start + 1} of the row) is not UTF-8 "
                "(the file mixes encodings); re-save the file as UTF-8",
            )
    if lines and lines[-1] == "":
        lines.pop()
    return None if undecodable else lines


def read_csv_table(
    path: Path, required: Sequence[str], problems: SourceProblems
) -> SourceTable | None:
    """Read a CSV with every cell as a string; None (with problems recorded) when unusable."""
    lines = read_text_lines(path, problems)
    if lines is None:
        return None
    if not lines:
        problems.add(path.name, None, None, "the file is empty")
        return None
    try:
        frame = pd.read_csv(
            io.StringIO("\n".join(lines) + "\n"),
            dtype=str,
            keep_default_na=False,
            skip_blank_lines=False,
        )
    except (pd.errors.ParserError, ValueError) as exc:
        problems.add(path.name, None, None, f"is not a valid CSV file: {exc}")
        return None
    frame.columns = [str(column).strip() for column in frame.columns]
    if not check_columns(path.name, frame, required, problems):
        return None
    row_numbers = np.arange(len(frame)) + 2
    blank = frame.apply(lambda column: column.str.strip() == "").all(axis=1)
    if blank.any():
        keep = ~blank.to_numpy()
        frame = frame[keep].reset_index(drop=True)
        row_numbers = row_numbers[keep]
    return SourceTable(path.name, frame, row_numbers=row_numbers)


def read_pickle_table(
    path: Path,
    required: Sequence[str],
    problems: SourceProblems,
    *,
    index_name: str | None = None,
    label_column: str | None = None,
) -> SourceTable | None:
    """Read a pandas DataFrame pickle with the restricted unpickler.

    ``index_name``: the column the index holds (``narration_id`` in the EPIC-100 pickles); it is
    turned back into a column. Rows are named in messages by ``label_column`` (default: the
    index) because a pickle has no file rows.
    """
    frame = safe_pickle.load(path)
    if not isinstance(frame, pd.DataFrame):
        problems.add(path.name, None, None, f"holds a {type(frame).__name__}, not a DataFrame")
        return None
    frame = frame.copy()
    if index_name is not None and index_name not in frame.columns:
        frame.index.name = index_name
        frame = frame.reset_index()
    if not check_columns(path.name, frame, required, problems):
        return None
    if label_column is not None and label_column in frame.columns:
        index_values = list(frame[label_column])
    elif index_name is not None:
        index_values = list(frame[index_name])
    else:
        index_values = list(frame.index)
    frame = frame.reset_index(drop=True)
    for column in frame.columns:
        if frame[column].dtype == object or isinstance(frame[column].dtype, pd.CategoricalDtype):
            frame[column] = frame[column].astype(object)
    return SourceTable(path.name, frame, index_values=index_values)


def check_columns(
    name: str, frame: pd.DataFrame, required: Sequence[str], problems: SourceProblems
) -> bool:
    missing = [column for column in required if column not in frame.columns]
    if missing:
        problems.add(
            name,
            None,
            None,
            f"missing column(s) {', '.join(missing)}; found {', '.join(map(str, frame.columns))}",
        )
        return False
    return True


def parse_timestamps(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """``HH:MM:SS.ff`` strings -> (seconds float64, malformed mask)."""
    text = values.astype(str).str.strip()
    parts = text.str.extract(TIMESTAMP_PATTERN)
    bad = parts[0].isna().to_numpy()
    hours = pd.to_numeric(parts[0], errors="coerce")
    minutes = pd.to_numeric(parts[1], errors="coerce")
    seconds = pd.to_numeric(parts[2], errors="coerce")
    total = (hours * 3600 + minutes * 60 + seconds).to_numpy(dtype="float64")
    return total, bad


def parse_integers(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Integer cells (strings or numbers) -> (int64 values, malformed mask); 0 where malformed."""
    numeric = pd.to_numeric(values.astype(str).str.strip(), errors="coerce")
    bad = (numeric.isna() | (numeric % 1 != 0)).to_numpy()
    return np.where(bad, 0, numeric.fillna(0)).astype("int64"), bad


def parse_numbers(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Number cells -> (float64 values, malformed mask); NaN where malformed."""
    numeric = pd.to_numeric(values.astype(str).str.strip(), errors="coerce")
    array = numeric.to_numpy(dtype="float64")
    return array, ~np.isfinite(array)


def parse_list_cells(values: pd.Series) -> tuple[list[list[str]], np.ndarray]:
    """Cells that hold Python lists (pickles) or their text form ``"['door', 'tap']"`` (CSV)."""
    items: list[list[str]] = []
    bad = np.zeros(len(values), dtype=bool)
    parsed_text: dict[str, object] = {}  # the same few thousand lists repeat across rows
    for position, cell in enumerate(values):
        parsed: object = cell
        if isinstance(cell, str):
            if cell not in parsed_text:
                try:
                    parsed_text[cell] = ast.literal_eval(cell)
                except (ValueError, SyntaxError, MemoryError, RecursionError):
                    parsed_text[cell] = None
            parsed = parsed_text[cell]
        if isinstance(parsed, list | tuple | np.ndarray):
            items.append([str(value) for value in parsed])
        else:
            items.append([])
            bad[position] = True
    return items, bad


def check_class_ids(
    table: SourceTable,
    column: str,
    ids: np.ndarray,
    bad: np.ndarray,
    num_classes: int,
    class_file: str,
    problems: SourceProblems,
) -> None:
    """Record non-integer class ids and ids outside ``0 .. num_classes - 1``."""
    raw = table.frame[column]
    problems.add_rows(table, bad, column, lambda i: f"class id {raw.iloc[i]!r} is not an integer")
    unknown = ~bad & ((ids < 0) | (ids >= num_classes))
    problems.add_rows(
        table,
        unknown,
        column,
        lambda i: f"unknown class id {ids[i]} ({class_file} has ids 0..{num_classes - 1})",
    )


def drop_short_segments(
    frame: pd.DataFrame, drops: Drops, *, fps: np.ndarray | float | None
) -> pd.DataFrame:
    """Remove segments that stop before they start or last less than one frame (counted)."""
    duration = frame["stop_sec"].to_numpy(dtype="float64") - frame["start_sec"].to_numpy(
        dtype="float64"
    )
    reversed_mask = duration < 0
    if fps is None:
        short = duration == 0
    else:
        short = ~reversed_mask & (duration < 1.0 / np.asarray(fps, dtype="float64"))
    drops.add(STOP_BEFORE_START, int(reversed_mask.sum()))
    drops.add(SHORTER_THAN_ONE_FRAME, int(short.sum()))
    return frame[~(reversed_mask | short)].reset_index(drop=True)


def read_class_names(
    path: Path, id_column: str, name_column: str, problems: SourceProblems
) -> tuple[str, ...]:
    """A class table CSV (``id,key,...``) -> names indexed by id; ids must be 0..N-1."""
    table = read_csv_table(path, (id_column, name_column), problems)
    if table is None:
        return ()
    ids, bad = parse_integers(table.frame[id_column])
    problems.add_rows(table, bad, id_column, lambda i: "class id is not an integer")
    if bad.any():
        return ()
    if sorted(ids.tolist()) != list(range(len(ids))):
        problems.add(
            table.name, None, id_column, f"class ids are not 0..{len(ids) - 1} without gaps"
        )
        return ()
    names = dict(zip(ids.tolist(), table.frame[name_column].str.strip(), strict=True))
    return tuple(names[i] for i in range(len(ids)))


def join_ids(values: Iterable[object]) -> str:
    """The manifest's multi-value convention: ``';'``-joined."""
    return ";".join(str(value) for value in values)
