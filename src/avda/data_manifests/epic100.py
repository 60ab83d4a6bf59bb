"""EPIC-KITCHENS-100 unsupervised domain adaptation (``epic-kitchens-100-annotations``).

Domains: ``source`` (EPIC-55 videos, 59.94 fps, recorded 2018) and ``target`` (the EPIC-100
extension videos, 50 fps, recorded 2020). Files in ``UDA_annotations/`` (CSV, or the same
tables as pickles) and their manifest split:

=========================================  ========  =====  =======
file                                       domain    split  labels
=========================================  ========  =====  =======
``EPIC_100_uda_source_train``              source    train  yes
``EPIC_100_uda_source_val``                source    val    yes
``EPIC_100_uda_source_test_timestamps``    source    test   no
``EPIC_100_uda_target_train_timestamps``   target    train  no (unlabelled by design)
``EPIC_100_uda_target_val``                target    val    yes
``EPIC_100_uda_target_test_timestamps``    target    test   no (challenge server)
=========================================  ========  =====  =======

Classes: 97 verbs (``EPIC_100_verb_classes.csv``) and 300 nouns (``EPIC_100_noun_classes.csv``);
EPIC-100 verb ids differ from EPIC-55 ones. fps per video from ``EPIC_100_video_info.csv``.
``all_nouns``/``all_noun_classes`` are kept as ``';'``-joined strings. The uid is the
``narration_id`` (what the challenge submission is keyed by).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pandas as pd

from avda.data_manifests.benchmarks import ManifestBuild, register
from avda.data_manifests.epic_common import (
    EPIC_VIDEO_PATH,
    SEGMENT_COLUMNS,
    apply_video_path_template,
    epic_segments,
    usable_references,
)
from avda.data_manifests.settings import EPIC100_UDA
from avda.data_manifests.sources import (
    Drops,
    SourceProblems,
    SourceTable,
    check_annotations_folder,
    drop_short_segments,
    locate,
    parse_numbers,
    read_class_names,
    read_csv_table,
    read_pickle_table,
)

NAME = "epic100-uda"
# (file stem, domain, split, labelled)
UDA_FILES: tuple[tuple[str, str, str, bool], ...] = (
    ("EPIC_100_uda_source_train", "source", "train", True),
    ("EPIC_100_uda_source_val", "source", "val", True),
    ("EPIC_100_uda_source_test_timestamps", "source", "test", False),
    ("EPIC_100_uda_target_train_timestamps", "target", "train", False),
    ("EPIC_100_uda_target_val", "target", "val", True),
    ("EPIC_100_uda_target_test_timestamps", "target", "test", False),
)
LABEL_COLUMNS = ("narration", "verb", "verb_class", "noun", "noun_class")
LIST_COLUMNS = ("all_nouns", "all_noun_classes")
SUBFOLDERS = ("UDA_annotations", "..", "epic100", "epic100/UDA_annotations")


def read_video_fps(path: Path, id_column: str, problems: SourceProblems) -> dict[str, float]:
    """``video info`` CSV -> {video id: fps}; bad rates are problems."""
    table = read_csv_table(path, (id_column, "fps"), problems)
    if table is None:
        return {}
    fps, bad = parse_numbers(table.frame["fps"])
    bad |= fps <= 0
    problems.add_rows(
        table, bad, "fps", lambda i: f"fps {table.frame['fps'].iloc[i]!r} is not a positive number"
    )
    return dict(zip(table.frame[id_column].str.strip(), fps, strict=True))


def _read_uda_table(
    annotations: Path,
    stem: str,
    labelled: bool,
    file_format: str,
    problems: SourceProblems,
) -> tuple[Path, SourceTable | None]:
    required = ("narration_id", *SEGMENT_COLUMNS) + (
        LABEL_COLUMNS + LIST_COLUMNS if labelled else ()
    )
    # The README spells the files EPIC_100_UDA_*; the released files are EPIC_100_uda_*.
    stems = [stem, stem.replace("_uda_", "_UDA_")]
    suffixes = ("csv", "pkl") if file_format == "auto" else (file_format,)
    path = locate(annotations, [f"{s}.{x}" for x in suffixes for s in stems], NAME, SUBFOLDERS)
    if path.suffix == ".pkl":
        return path, read_pickle_table(path, required, problems, index_name="narration_id")
    return path, read_csv_table(path, required, problems)


@register(NAME)
def build(
    annotations: Path,
    *,
    file_format: Literal["auto", "csv", "pkl"] = "auto",
    video_path_template: str = EPIC_VIDEO_PATH,
) -> ManifestBuild:
    """Manifest of the six UDA files.

    ``file_format``: read the CSV files or the pickles (``auto``: CSV where present).
    ``video_path_template``: ``video_path`` of a row, formatted from its columns ("" = none).
    """
    check_annotations_folder(annotations, NAME, ["EPIC_100_video_info.csv"], SUBFOLDERS)
    problems = SourceProblems(NAME)
    drops = Drops()
    info_path = locate(annotations, ["EPIC_100_video_info.csv"], NAME, SUBFOLDERS)
    verb_path = locate(annotations, ["EPIC_100_verb_classes.csv"], NAME, SUBFOLDERS)
    noun_path = locate(annotations, ["EPIC_100_noun_classes.csv"], NAME, SUBFOLDERS)
    video_fps = read_video_fps(info_path, "video_id", problems)
    verb_classes = read_class_names(verb_path, "id", "key", problems)
    noun_classes = read_class_names(noun_path, "id", "key", problems)
    fps, verbs, nouns = usable_references(
        problems, video_fps, info_path.name, verb_classes, verb_path.name, noun_classes,
        noun_path.name,
    )  # fmt: skip

    frames: list[pd.DataFrame] = []
    sources = [str(info_path), str(verb_path), str(noun_path)]
    for stem, domain, split, labelled in UDA_FILES:
        path, table = _read_uda_table(annotations, stem, labelled, file_format, problems)
        sources.append(str(path))
        if table is None:
            continue
        frames.append(
            epic_segments(
                table,
                problems,
                uid_column="narration_id",
                domain=domain,
                split=split,
                fps=fps,
                video_info_name=info_path.name,
                verb_classes=verbs if labelled else None,
                verb_class_file=verb_path.name,
                noun_classes=nouns if labelled else None,
                noun_class_file=noun_path.name,
                keep_all_nouns=labelled,
            )
        )
    problems.raise_if_any()  # the class and info files' with the rows'
    manifest = pd.concat(frames, ignore_index=True)
    manifest = drop_short_segments(manifest, drops, fps=manifest["fps"].to_numpy())
    manifest = apply_video_path_template(manifest, video_path_template)
    return ManifestBuild(
        benchmark=NAME,
        manifest=manifest,
        classes={"verb_class": verb_classes, "noun_class": noun_classes},
        dropped=drops.as_dict(),
        domains={
            "source": "EPIC-55 videos in EPIC-100 (2018 recordings, 59.94 fps)",
            "target": "EPIC-100 extension videos (2020 recordings, 50 fps)",
        },
        settings={EPIC100_UDA.name: EPIC100_UDA},
        options={"file_format": file_format, "video_path_template": video_path_template},
        sources=tuple(sources),
    )
