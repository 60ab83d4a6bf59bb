"""Class names of a cache's tasks (its class tables, else its segments' ``verb``/``noun``
columns), for the report's figures and ``avda evaluate --per-class``; no plotting library."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from avda.errors import AvdaError

NAME_COLUMNS = {"verb": ("verb_class", "verb"), "noun": ("noun_class", "noun")}


def class_names(segments) -> dict[str, list[str]]:
    """Per task, the name of each class id (``""`` where none is known) from a segment table's
    ``verb``/``noun`` columns (the most frequent name of each ``verb_class``/``noun_class``);
    a task without any name is left out."""
    import pandas as pd

    out: dict[str, list[str]] = {}
    for task, (id_column, name_column) in NAME_COLUMNS.items():
        if id_column not in segments or name_column not in segments:
            continue
        ids = pd.to_numeric(segments[id_column], errors="coerce")
        names = segments[name_column].astype("string").str.strip()
        keep = ids.notna() & (ids >= 0) & names.notna() & (names != "")
        if not keep.any():
            continue
        table = [""] * (int(ids[keep].max()) + 1)
        pairs = pd.DataFrame({"id": ids[keep].astype("int64"), "name": names[keep]})
        for class_id, group in pairs.groupby("id"):
            table[int(class_id)] = str(group["name"].value_counts().index[0])
        out[task] = table
    return out


def cache_class_names(cache: str | Path) -> dict[str, list[str]]:
    """Per task, the class names of the cache at ``cache``: its class tables (the benchmark's
    official names: EPIC-100 verb 0 is ``take``, narrated most often as "pick-up"; every task's,
    CharadesEgo's multi-label ``labels`` too), else :func:`class_names` of its segments; empty
    when it cannot be opened."""
    from avda.cache import open_cache
    from avda.cache.schema import TASK_COLUMNS

    try:
        store = open_cache(cache)
        out = class_names(store.segments)
        tables = store.provenance.get("classes") or {}
    except (AvdaError, OSError):
        return {}
    for task, id_column in TASK_COLUMNS.items():
        if isinstance(tables.get(id_column), list) and tables[id_column]:
            out[task] = [str(name) for name in tables[id_column]]
    return out


def class_label(names: Sequence[str] | None, class_id: int) -> str:
    """The name of ``class_id`` when known, else the id."""
    class_id = int(class_id)
    if names is not None and 0 <= class_id < len(names) and names[class_id]:
        return str(names[class_id])
    return str(class_id)
