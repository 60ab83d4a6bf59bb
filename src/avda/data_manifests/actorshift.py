"""ActorShift (Zhang et al., CVPR 2022): human actors -> animal actors.

The dataset is released on figshare only (project page of "Audio-Adaptive Activity Recognition
Across Video Domains"); the authors' repository (``xiaobai1217/DomainAdaptation``) has no
ActorShift loader, split file or class list, and avda's test data none of its files
(docs/benchmarks.md). This builder is therefore the :mod:`generic <avda.data_manifests.generic>`
loader plus what the paper fixes:

* domains ``human`` (1,305 Kinetics-700 videos, source train) and ``animal`` (200 YouTube
  videos: 35 train, unlabelled in adaptation, and 165 test);
* 7 classes, in the paper's order: sleeping, watching tv, eating, drinking, swimming, running,
  opening a door (``class_names`` option to change it);
* top-1 accuracy on ``animal/test``.

The table needs the manifest columns, renamed with ``columns`` when the file names them
differently, e.g. ``columns=uid=clip,video_id=clip,domain=actor,split=subset,
start_sec=start,stop_sec=end,verb=label``. When the table has class names (``verb``) but no
ids, ids are the position of the name in ``class_names`` (case, spaces, ``_`` and the articles
a/an/the ignored: ``opening door`` is ``opening a door``).
Domain values other than ``human``/``animal`` must be renamed with ``domains=Humans=human,...``
(a problem names the values found and the option, written for them; splits the same way).
Unknown domains, class ids and class names are problems of their file and rows, reported with
the schema's (:func:`load_tables`' ``check``) so that one run names every problem.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from avda.data_manifests.benchmarks import ManifestBuild, register
from avda.data_manifests.generic import load_tables
from avda.data_manifests.settings import ACTORSHIFT
from avda.data_manifests.sources import SourceProblems, SourceTable, add_rename_problem

NAME = "actorshift"
CLASSES: tuple[str, ...] = (
    "sleeping",
    "watching tv",
    "eating",
    "drinking",
    "swimming",
    "running",
    "opening a door",
)
DOMAINS = {
    "human": "human actors (Kinetics-700 videos)",
    "animal": "animal actors (YouTube videos)",
}


# Words a class name may hold or leave out: the paper and project page say "opening a door",
# the tables other projects wrote for ActorShift's videos "opening door" (docs/benchmarks.md).
ARTICLES = frozenset({"a", "an", "the"})


def _key(name: object) -> str:
    """A class name as it is looked up: case, ``_``, spaces and articles ignored."""
    words = str(name).replace("_", " ").lower().split()
    # a name of articles alone is kept: "the" is an unknown class, not an empty (unlabelled) one
    return " ".join([word for word in words if word not in ARTICLES] or words)


@register(NAME)
def build(
    annotations: Path,
    *,
    columns: dict[str, str] | None = None,
    domains: dict[str, str] | None = None,
    splits: dict[str, str] | None = None,
    class_names: tuple[str, ...] = CLASSES,
) -> ManifestBuild:
    """Manifest of an ActorShift table (see the module docstring for the expected columns).

    ``columns``: manifest column <- file column. ``domains``/``splits``: value renames.
    ``class_names``: the class list, in id order.
    """
    lookup = {_key(name): index for index, name in enumerate(class_names)}

    def check(table: SourceTable, frame: pd.DataFrame, problems: SourceProblems) -> None:
        """ActorShift's domains and classes, checked with the schema (one run reports all)."""
        if "domain" in frame.columns:
            add_rename_problem(problems, table, frame["domain"], list(DOMAINS), "domain", "domains")
        if "verb_class" in frame.columns:
            ids = pd.to_numeric(frame["verb_class"], errors="coerce")
            outside = (ids >= len(class_names)).fillna(False)
            if outside.any():
                problems.add(
                    table.name,
                    table.rows_label(outside),
                    "verb_class",
                    f"class id(s) {', '.join(str(int(i)) for i in sorted(set(ids[outside])))} "
                    f"are outside the {len(class_names)} classes {', '.join(class_names)}; "
                    "pass class_names with the dataset's class list",
                )
        elif "verb" in frame.columns:
            keys = frame["verb"].map(_key, na_action="ignore")
            unknown = keys.notna() & (keys != "") & ~keys.isin(list(lookup))
            written = frame["verb"].astype("string").str.strip()  # as the file spells them
            if unknown.any():
                problems.add(
                    table.name,
                    table.rows_label(unknown),
                    "verb",
                    f"class name(s) {', '.join(sorted(set(written[unknown])))} are not in "
                    f"{', '.join(class_names)}; pass class_names with the dataset's class list",
                )

    manifest, files = load_tables(
        annotations,
        NAME,
        columns=columns or {},
        domains=domains or {},
        splits=splits or {},
        check=check,
    )
    found = sorted(manifest["domain"].astype(str).unique())
    if "verb_class" not in manifest.columns and "verb" in manifest.columns:
        keys = manifest["verb"].map(_key, na_action="ignore")
        keys = keys.mask(keys == "")  # an empty name is an unlabelled row
        manifest["verb_class"] = keys.map(lookup).astype("Int64")
    labelled = "verb_class" in manifest.columns
    return ManifestBuild(
        benchmark=NAME,
        manifest=manifest,
        classes={"verb_class": tuple(class_names)} if labelled else {},
        dropped={},
        domains={d: DOMAINS[d] for d in found},
        settings={ACTORSHIFT.name: ACTORSHIFT},
        options={
            "columns": columns or {},
            "domains": domains or {},
            "splits": splits or {},
            "class_names": class_names,
        },
        sources=tuple(str(p) for p in files),
    )
