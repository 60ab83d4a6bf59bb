"""UCF101 <-> HMDB51 and UCF101 <-> Olympic Sports, with the TA3N lists (Chen et al., ICCV 2019).

List files (``cmhungsteve/TA3N``): one video per line, ``video_name num_frames label``:

================  ===============================================  ==========================
variant           lists (train / val)                              class list
================  ===============================================  ==========================
``full``          ``list_ucf101_{train,val}_hmdb51-feature.txt``,  ``classInd_hmdb_ucf.txt``
                  ``list_hmdb51_{train,val}_ucf101-feature.txt``   (12 classes)
``small``         the same lists, keeping the 5 classes of         ``classInd_hmdb_ucf_small.txt``
                  ``classInd_hmdb_ucf_small.txt``
``olympic``       ``list_ucf101_{train,val}_olympic-feature.txt``, ``classInd_ucf_olympic.txt``
                  ``list_olympic_{train,val}_ucf101-feature.txt``  (6 classes)
================  ===============================================  ==========================

TA3N evaluates on the ``val`` lists and has no other held-out set, so ``val`` lists become split
``test``. The class lists have CRLF line ends, tabs and trailing spaces; they are stripped.
``small`` maps a row's 12-class label to the 5-class id by class name; rows of the other 7
classes are dropped and counted (``class not in the small class list``). When the per-UCF-class
list (``ucf101_splits__class_list_*.txt``) is present, the class in each UCF video name
(``v_<Class>_g08_c01``) must agree with the row's label.

The lists count frames, not seconds: ``start_frame = 1``, ``stop_frame = num_frames`` (1-based,
inclusive, like the released JPEG frames), ``start_sec = 0``, ``stop_sec = num_frames / fps``
with documented default rates: UCF101 25 fps, HMDB51 30 fps, Olympic Sports 30 fps (options
``ucf_fps``, ``hmdb_fps``, ``olympic_fps``). Classes go to ``verb_class`` (``verb`` = name).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from avda.data_manifests.benchmarks import ManifestBuild, register
from avda.data_manifests.epic_common import apply_video_path_template
from avda.data_manifests.settings import UCF_HMDB_SETTINGS, UCF_OLYMPIC_SETTINGS
from avda.data_manifests.sources import (
    SHORTER_THAN_ONE_FRAME,
    Drops,
    SourceProblems,
    SourceTable,
    check_annotations_folder,
    locate,
    read_text_lines,
)
from avda.errors import ManifestError

NAME = "ucf-hmdb"
NOT_IN_SMALL = "class not in the small class list"
SUBFOLDERS = ("ta3n_class_lists", "ucf_hmdb_lists", "ucf_hmdb_lists/ta3n_class_lists")
UCF_NAME_PATTERN = re.compile(r"^v_(.+?)_g\d+_c\d+$")
# variant -> (class list, [(domain, list file, split)], per-UCF-class list)
VARIANTS: dict[str, tuple[str, tuple[tuple[str, str, str], ...], str]] = {
    "full": (
        "classInd_hmdb_ucf.txt",
        (
            ("ucf", "list_ucf101_train_hmdb51-feature.txt", "train"),
            ("ucf", "list_ucf101_val_hmdb51-feature.txt", "test"),
            ("hmdb", "list_hmdb51_train_ucf101-feature.txt", "train"),
            ("hmdb", "list_hmdb51_val_ucf101-feature.txt", "test"),
        ),
        "ucf101_splits__class_list_hmdb_ucf.txt",
    ),
    "olympic": (
        "classInd_ucf_olympic.txt",
        (
            ("ucf", "list_ucf101_train_olympic-feature.txt", "train"),
            ("ucf", "list_ucf101_val_olympic-feature.txt", "test"),
            ("olympic", "list_olympic_train_ucf101-feature.txt", "train"),
            ("olympic", "list_olympic_val_ucf101-feature.txt", "test"),
        ),
        "ucf101_splits__class_list_ucf_olympic.txt",
    ),
}
SMALL_CLASS_LIST = "classInd_hmdb_ucf_small.txt"


def read_class_list(path: Path, problems: SourceProblems, *, unique_ids: bool) -> dict[str, int]:
    """``id name`` lines (CRLF, tabs, trailing spaces allowed) -> {name: id}.

    ``unique_ids``: a ``classInd`` file (ids 0..N-1, one name each) rather than a many-to-one
    per-dataset class list.
    """
    lines = read_text_lines(path, problems)
    if lines is None:
        return {}
    mapping: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text:
            continue
        parts = text.split(None, 1)
        if len(parts) != 2 or not parts[0].isdigit():
            problems.add(path.name, f"row {number}", None, f"expected 'id name', got {text!r}")
            continue
        name = parts[1].strip()
        if name in mapping:
            problems.add(path.name, f"row {number}", None, f"class {name!r} listed twice")
            continue
        mapping[name] = int(parts[0])
    if unique_ids and sorted(mapping.values()) != list(range(len(mapping))):
        problems.add(path.name, None, None, f"class ids are not 0..{len(mapping) - 1}, one each")
    return mapping


def read_list(path: Path, problems: SourceProblems) -> SourceTable | None:
    """A TA3N list -> table with columns ``video``, ``frames``, ``label`` (row = line number)."""
    lines = read_text_lines(path, problems)
    if lines is None:
        return None
    rows: list[tuple[str, str, str]] = []
    numbers: list[int] = []
    for number, line in enumerate(lines, start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 3:
            problems.add(
                path.name, f"row {number}", None, f"expected 'video num_frames label', got {line!r}"
            )
            continue
        rows.append((parts[0], parts[1], parts[2]))
        numbers.append(number)
    frame = pd.DataFrame(rows, columns=["video", "frames", "label"], dtype=str)
    return SourceTable(path.name, frame, row_numbers=np.asarray(numbers, dtype="int64"))


@register(NAME)
def build(
    annotations: Path,
    *,
    variant: Literal["full", "small", "olympic"] = "full",
    ucf_fps: float = 25.0,
    hmdb_fps: float = 30.0,
    olympic_fps: float = 30.0,
    video_path_template: str = "{video_id}.avi",
) -> ManifestBuild:
    """Manifest of a TA3N UCF/HMDB/Olympic benchmark (one row per video).

    ``variant``: ``full`` (UCF-HMDB 12 classes), ``small`` (UCF-HMDB 5 classes) or ``olympic``.
    ``ucf_fps``/``hmdb_fps``/``olympic_fps``: frame rates that turn frame counts into seconds.
    ``video_path_template``: ``video_path`` of a row, formatted from its columns ("" = none).
    """
    class_file, lists, ucf_class_file = VARIANTS["olympic" if variant == "olympic" else "full"]
    # the lists lie in the benchmark's folder, the class lists in ta3n_class_lists/ or there
    check_annotations_folder(annotations, NAME, [lists[0][1]], SUBFOLDERS)
    for option, value in (
        ("ucf_fps", ucf_fps),
        ("hmdb_fps", hmdb_fps),
        ("olympic_fps", olympic_fps),
    ):
        if not value > 0:
            raise ManifestError(f"{NAME}: {option} must be a positive frame rate, got {value}")
    fps = {"ucf": ucf_fps, "hmdb": hmdb_fps, "olympic": olympic_fps}
    problems = SourceProblems(NAME)
    drops = Drops()
    class_path = locate(annotations, [class_file], NAME, SUBFOLDERS)
    class_ids = read_class_list(class_path, problems, unique_ids=True)
    sources = [str(class_path)]
    ucf_classes: dict[str, int] | None = None
    try:
        ucf_class_path = locate(annotations, [ucf_class_file], NAME, SUBFOLDERS)
    except ManifestError:
        ucf_class_path = None
    if ucf_class_path is not None:
        ucf_classes = read_class_list(ucf_class_path, problems, unique_ids=False)
        sources.append(str(ucf_class_path))
    small_ids: dict[str, int] | None = None
    if variant == "small":
        small_path = locate(annotations, [SMALL_CLASS_LIST], NAME, SUBFOLDERS)
        small_ids = read_class_list(small_path, problems, unique_ids=True)
        sources.append(str(small_path))
        missing = [name for name in small_ids if name not in class_ids]
        if missing and not problems.about(class_path.name):
            problems.add(
                small_path.name, None, None, f"names {', '.join(missing)}, which {class_file} lacks"
            )
    names = {class_id: name for name, class_id in class_ids.items()}
    # a broken class list is reported with the lists' problems (one run names them all); the
    # rows are not checked against what it gave meanwhile
    checked_names = None if problems.about(class_path.name) else names
    if ucf_class_path is not None and problems.about(ucf_class_path.name):
        ucf_classes = None

    frames: list[pd.DataFrame] = []
    for domain, list_name, split in lists:
        path = locate(annotations, [list_name], NAME, SUBFOLDERS)
        sources.append(str(path))
        table = read_list(path, problems)
        if table is None:
            continue
        frames.append(
            _rows(table, domain, split, fps[domain], checked_names, ucf_classes, problems)
        )
    problems.raise_if_any()
    manifest = pd.concat(frames, ignore_index=True)
    short = (manifest["stop_frame"] < 1).to_numpy()
    drops.add(SHORTER_THAN_ONE_FRAME, int(short.sum()))
    manifest = manifest[~short].reset_index(drop=True)
    class_names = tuple(names[i] for i in range(len(names)))
    if small_ids is not None:
        small = manifest["verb"].map(small_ids)
        drops.add(NOT_IN_SMALL, int(small.isna().sum()))
        manifest = manifest[small.notna()].reset_index(drop=True)
        manifest["verb_class"] = small[small.notna()].astype("int64").to_numpy()
        class_names = tuple(sorted(small_ids, key=small_ids.__getitem__))
    manifest = apply_video_path_template(manifest, video_path_template)
    settings = UCF_OLYMPIC_SETTINGS if variant == "olympic" else UCF_HMDB_SETTINGS
    other = "olympic" if variant == "olympic" else "hmdb"
    return ManifestBuild(
        benchmark=NAME,
        manifest=manifest,
        classes={"verb_class": class_names},
        dropped=drops.as_dict(),
        domains={
            "ucf": f"UCF101 videos ({ucf_fps:g} fps assumed)",
            other: (
                f"HMDB51 videos ({hmdb_fps:g} fps assumed)"
                if other == "hmdb"
                else f"Olympic Sports videos ({olympic_fps:g} fps assumed)"
            ),
        },
        settings={s.name: s for s in settings},
        options={
            "variant": variant,
            "ucf_fps": ucf_fps,
            "hmdb_fps": hmdb_fps,
            "olympic_fps": olympic_fps,
            "video_path_template": video_path_template,
        },
        sources=tuple(sources),
    )


def _rows(
    table: SourceTable,
    domain: str,
    split: str,
    fps: float,
    names: dict[int, str] | None,
    ucf_classes: dict[str, int] | None,
    problems: SourceProblems,
) -> pd.DataFrame:
    """A list's rows; labels are checked against ``names`` (None: not checked)."""
    raw = table.frame
    frames = pd.to_numeric(raw["frames"], errors="coerce")
    bad_frames = (frames.isna() | (frames % 1 != 0) | (frames < 0)).to_numpy()
    problems.add_rows(
        table, bad_frames, "num_frames", lambda i: f"{raw['frames'].iloc[i]!r} is not a frame count"
    )
    labels = pd.to_numeric(raw["label"], errors="coerce")
    bad_labels = (labels.isna() | (labels % 1 != 0)).to_numpy()
    problems.add_rows(
        table, bad_labels, "label", lambda i: f"class id {raw['label'].iloc[i]!r} is not an integer"
    )
    if names is not None:
        unknown = ~bad_labels & ~labels.isin(list(names)).to_numpy()
        problems.add_rows(
            table,
            unknown,
            "label",
            lambda i: (
                f"unknown class id {raw['label'].iloc[i]} (the class list has 0..{len(names) - 1})"
            ),
        )
    if domain == "ucf" and ucf_classes is not None:
        for position, video in enumerate(raw["video"]):
            match = UCF_NAME_PATTERN.match(video)
            if match is None or bad_labels[position]:
                continue
            expected = ucf_classes.get(match.group(1))
            if expected is not None and expected != int(labels.iloc[position]):
                problems.add(
                    table.name,
                    table.row_label(position),
                    "label",
                    f"UCF class {match.group(1)} is class {expected} in the UCF class list, "
                    f"not {int(labels.iloc[position])}",
                )
    count = frames.fillna(0).astype("int64").to_numpy()
    label = labels.fillna(0).astype("int64").to_numpy()
    return pd.DataFrame(
        {
            "uid": raw["video"].to_numpy(),
            "video_id": raw["video"].to_numpy(),
            "domain": domain,
            "split": split,
            "start_sec": 0.0,
            "stop_sec": count / fps,
            "start_frame": 1,
            "stop_frame": count,
            "fps": fps,
            "verb": [(names or {}).get(int(c), "") for c in label],
            "verb_class": label,
        }
    )
