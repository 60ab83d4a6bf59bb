"""``avda manifest stats``: what a manifest holds, as plain text.

Rows per domain and split, the class columns (size of the class table when the build info next
to the manifest is available, classes present, labelled rows) and, per class column, the class
distribution per domain/split -- the numbers to compare against a paper's dataset table.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from avda.data_manifests import schema
from avda.data_manifests.benchmarks import read_build_info

CLASS_COLUMNS: tuple[str, ...] = ("verb_class", "noun_class", "labels")


def class_counts(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    """Rows per (class id x domain/split); ``labels`` counts each id of a multi-label row once."""
    parts = frame[["domain", "split", column]].dropna(subset=[column])
    if column == "labels":
        parts = parts.assign(labels=parts["labels"].astype(str).str.split(";")).explode("labels")
        parts = parts[parts["labels"].str.strip() != ""]
    ids = pd.to_numeric(parts[column], errors="coerce").astype("Int64")
    where = parts["domain"].astype(str) + "/" + parts["split"].astype(str)
    table = pd.crosstab(ids.rename("class"), where.rename("domain/split"))
    split_order = {split: index for index, split in enumerate(schema.SPLITS)}

    def order(name: str) -> tuple[str, int]:
        domain, _, split = name.rpartition("/")
        return domain, split_order.get(split, len(split_order))

    return table[sorted(table.columns, key=order)].sort_index()


def stats(frame: pd.DataFrame, classes: Mapping[str, tuple[str, ...]] | None = None) -> str:
    """The text report of ``frame``; ``classes`` (column -> names) adds names and table sizes."""
    classes = dict(classes or {})
    lines = [f"rows: {len(frame)}"]
    counts = pd.crosstab(
        frame["domain"].astype(str).rename("domain"),
        pd.Series(
            pd.Categorical(frame["split"].astype(str), categories=schema.SPLITS),
            index=frame.index,
            name="split",
        ),
        margins=True,
        margins_name="total",
        dropna=False,
    )
    lines += ["", "rows per domain/split:", counts.to_string()]
    if "score_group" in frame.columns:
        grouped = frame["score_group"].fillna("").astype(str)
        grouped = grouped[grouped != ""]
        if len(grouped):
            lines.append(
                f"scored groups: {grouped.nunique()} (e.g. videos) of {len(grouped)} rows, "
                "each scored by the maximum over its rows; the class counts below count rows"
            )
    if schema.UNLABELLED_ONLY in frame.columns:
        marks = frame[schema.UNLABELLED_ONLY].astype("string").fillna("").str.strip()
        marked = frame[(marks == schema.UNLABELLED_ONLY_VALUE).to_numpy()]
        if len(marked):
            lines.append(
                f"unlabelled-only rows: {len(marked)} of {marked['video_id'].nunique()} videos, "
                "unlabelled target training rows in place of those videos' other rows, never "
                'labelled or scored (docs/manifest.md, "Unlabelled-only rows")'
            )
    present = [c for c in CLASS_COLUMNS if c in frame.columns and frame[c].notna().any()]
    if present:
        lines += ["", "classes:"]
    tables: list[tuple[str, pd.DataFrame]] = []
    for column in present:
        table = class_counts(frame, column)
        labelled = int(frame[column].notna().sum())
        if column == "labels":
            labelled = int((frame[column].astype("string").str.strip() != "").fillna(False).sum())
        size = f"{len(classes[column])} in the class table, " if column in classes else ""
        lines.append(f"  {column}: {size}{len(table)} present, {labelled} labelled rows")
        tables.append((column, table))
    for column, table in tables:
        if table.empty:
            lines += ["", f"{column} distribution per domain/split: no labelled rows"]
            continue
        names = classes.get(column)
        if names is not None:
            table = table.copy()
            table.insert(
                0,
                "name",
                [names[i] if 0 <= int(i) < len(names) else "?" for i in table.index],
            )
        lines += ["", f"{column} distribution per domain/split:", table.to_string()]
    return "\n".join(lines)


def stats_file(path: str | Path) -> str:
    """``avda manifest stats FILE``: read and validate the manifest, then :func:`stats`."""
    frame = schema.read(path)
    info = read_build_info(path)
    classes = {k: tuple(v) for k, v in (info or {}).get("classes", {}).items()}
    header = f"manifest {path}"
    if info:
        header += f" (benchmark {info.get('benchmark')})"
        dropped = info.get("dropped") or {}
        if dropped:
            header += "\ndropped when built: " + ", ".join(
                f"{count} {reason}" for reason, count in dropped.items()
            )
    return header + "\n" + stats(frame, classes)
