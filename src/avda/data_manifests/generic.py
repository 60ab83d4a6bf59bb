"""Any CSV or Parquet table that already has (or can be renamed to) the manifest columns.

``annotations`` is one file, or a folder whose ``*.csv``/``*.parquet`` files are all read and
concatenated (in name order). Options:

* ``columns``: manifest column <- file column, e.g. ``uid=clip_id,video_id=youtube_id``;
* ``domains`` / ``splits``: value renames, e.g. ``splits=training=train,testing=test``.

Rows are checked with the manifest schema; every problem is reported with its file and file
row. Class tables come from the data: for ``verb_class``/``noun_class`` the names are the most
frequent ``verb``/``noun`` of each id (ids without rows get an empty name) and the table size is
the largest id + 1; for ``labels`` the ids themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from avda.data_manifests import schema
from avda.data_manifests.benchmarks import ManifestBuild, register
from avda.data_manifests.sources import (
    SourceProblems,
    SourceTable,
    add_rename_problem,
    read_csv_table,
)
from avda.errors import ConfigError, ManifestError

NAME = "generic"
MANIFEST_COLUMNS: tuple[str, ...] = (*schema.REQUIRED_COLUMNS, *schema.OPTIONAL_COLUMNS)
TABLE_SUFFIXES = (".csv", ".parquet", ".pq")
NUMERIC_OPTIONAL: tuple[str, ...] = ("start_frame", "stop_frame", "fps", *schema.CLASS_COLUMNS)


def table_files(annotations: Path, benchmark: str) -> list[Path]:
    annotations = Path(annotations)
    if annotations.is_file():
        return [annotations]
    if annotations.is_dir():
        files = sorted(p for p in annotations.iterdir() if p.suffix.lower() in TABLE_SUFFIXES)
        if files:
            return files
        raise ManifestError(
            f"{benchmark}: no .csv or .parquet file in {annotations}; pass --annotations a "
            "table file or a folder of them"
        )
    raise ManifestError(f"{benchmark}: annotations path {annotations} does not exist")


def _read(path: Path, problems: SourceProblems) -> SourceTable | None:
    if path.suffix.lower() in (".parquet", ".pq"):
        try:
            frame = pd.read_parquet(path)
        except (OSError, ValueError) as exc:
            problems.add(path.name, None, None, f"cannot be read as Parquet: {exc}")
            return None
        return SourceTable(path.name, frame, row_numbers=None, index_values=None)
    return read_csv_table(path, (), problems)


def load_tables(
    annotations: Path,
    benchmark: str,
    *,
    columns: dict[str, str],
    domains: dict[str, str],
    splits: dict[str, str],
    check: Callable[[SourceTable, pd.DataFrame, SourceProblems], None] | None = None,
) -> tuple[pd.DataFrame, list[Path]]:
    """Read, rename and check the tables; raise every problem at once.

    ``check(table, frame, problems)``: a builder's own checks of each renamed ``frame`` (its
    rows are ``table``'s, in order), run with the schema's so that one run reports them all.
    """
    unknown = [name for name in columns if name not in MANIFEST_COLUMNS]
    if unknown:
        raise ConfigError(
            f"{benchmark}: columns maps unknown manifest column(s) {', '.join(unknown)}; "
            f"manifest columns are {', '.join(MANIFEST_COLUMNS)}"
        )
    problems = SourceProblems(benchmark, released=False)  # the user's own files
    files = table_files(annotations, benchmark)
    renamed: list[tuple[SourceTable, pd.DataFrame]] = []
    for path in files:
        table = _read(path, problems)
        if table is None:
            continue
        missing = [source for source in columns.values() if source not in table.frame.columns]
        if missing:
            problems.add(
                table.name,
                None,
                None,
                f"has no column(s) {', '.join(missing)} named in the columns option; "
                f"it has {', '.join(map(str, table.frame.columns))}",
            )
            continue
        frame = table.frame.copy()
        for target, source in columns.items():  # one file column may feed several (uid, video_id)
            frame[target] = table.frame[source]
        consumed = [s for s in set(columns.values()) if s not in columns]
        frame = frame.drop(columns=consumed)
        for column in NUMERIC_OPTIONAL:
            if column in frame.columns and not pd.api.types.is_numeric_dtype(frame[column]):
                text = frame[column].astype("string").str.strip()
                frame[column] = text.mask(text == "")
        for column, mapping in (("domain", domains), ("split", splits)):
            if mapping and column in frame.columns:
                frame[column] = frame[column].astype(str).str.strip().replace(mapping)
        renamed_split = np.zeros(len(frame), dtype=bool)
        if "split" in frame.columns:  # one problem naming the values and their rename
            renamed_split = add_rename_problem(
                problems, table, frame["split"], schema.SPLITS, "split", "splits"
            )
        for problem in schema.find_problems(frame):
            if problem.column == "split" and problem.row and renamed_split[problem.row - 2]:
                continue  # named above
            if problem.row is None:
                problems.add(table.name, None, problem.column, problem.message)
            else:
                position = problem.row - 2  # schema rows count the header as row 1
                problems.add(table.name, table.row_label(position), problem.column, problem.message)
        if check is not None:
            check(table, frame, problems)
        renamed.append((table, frame))
    _check_uids_across_files(renamed, problems)
    problems.raise_if_any()
    manifest = schema.normalise(pd.concat([frame for _, frame in renamed], ignore_index=True))
    return manifest, files


def _check_uids_across_files(
    renamed: list[tuple[SourceTable, pd.DataFrame]], problems: SourceProblems
) -> None:
    """A uid of a file that an earlier file holds (a file's own repeats are the schema's)."""
    first: dict[str, str] = {}  # uid -> "file row N" where it first appears
    for table, frame in renamed:
        if "uid" not in frame.columns:
            continue
        uids = frame["uid"].astype("string").str.strip()
        seen = first.copy()  # the earlier files'
        repeated = np.array([pd.notna(u) and u in seen for u in uids], dtype=bool)
        problems.add_rows(
            table,
            repeated,
            "uid",
            lambda i, u=uids, s=seen: (
                f"uid {u.iloc[i]!r} is also at {s[u.iloc[i]]}: uids must be unique across the files"
            ),
        )
        for position, uid in enumerate(uids):
            if pd.notna(uid) and uid != "":
                first.setdefault(uid, f"{table.name} {table.row_label(position)}")


def class_tables(manifest: pd.DataFrame) -> dict[str, tuple[str, ...]]:
    """Class tables inferred from the data (see the module docstring)."""
    tables: dict[str, tuple[str, ...]] = {}
    for column, name_column in (("verb_class", "verb"), ("noun_class", "noun")):
        if column not in manifest.columns or manifest[column].isna().all():
            continue
        size = int(manifest[column].max()) + 1
        names = [""] * size
        if name_column in manifest.columns:
            pairs = manifest[[column, name_column]].dropna()
            for class_id, group in pairs.groupby(column):
                names[int(class_id)] = str(group[name_column].value_counts().index[0])
        tables[column] = tuple(names)
    if "labels" in manifest.columns:
        ids = {
            int(value)
            for cell in manifest["labels"].dropna()
            for value in str(cell).split(";")
            if value.strip().isdigit()
        }
        if ids:
            tables["labels"] = tuple(str(i) for i in range(max(ids) + 1))
    return tables


@register(NAME)
def build(
    annotations: Path,
    *,
    columns: dict[str, str] | None = None,
    domains: dict[str, str] | None = None,
    splits: dict[str, str] | None = None,
) -> ManifestBuild:
    """Manifest from tables that already hold the manifest columns (after renaming).

    ``columns``: manifest column <- file column. ``domains``/``splits``: value renames.
    """
    manifest, files = load_tables(
        annotations, NAME, columns=columns or {}, domains=domains or {}, splits=splits or {}
    )
    found = sorted(manifest["domain"].astype(str).unique())
    return ManifestBuild(
        benchmark=NAME,
        manifest=manifest,
        classes=class_tables(manifest),
        dropped={},
        domains={domain: "from the input table" for domain in found},
        settings={},
        options={"columns": columns or {}, "domains": domains or {}, "splits": splits or {}},
        sources=tuple(str(p) for p in files),
    )
