"""EPIC-KITCHENS-55 domain splits of MM-SADA (Munro & Damen, CVPR 2020).

Files (``jonmun/MM-SADA_Domain_Adaptation_Splits``, identical to ``MM-SADA-code/Annotations``):
``D{1,2,3}_{train,test}.pkl``, pandas DataFrame pickles with columns ``uid, participant_id,
video_id, narration, start_timestamp, stop_timestamp, start_frame, stop_frame, verb,
verb_class``. Domains are kitchens: D1 = P08, D2 = P01, D3 = P22; 8 verb classes. ``D*_train``
is split ``train`` and ``D*_test`` split ``test`` (the test pickles are the only labelled source
of their segments; MM-SADA has no validation split). The videos run at 59.94 fps; their frame
numbers count at 60.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from avda.data_manifests.benchmarks import ManifestBuild, register
from avda.data_manifests.epic_common import (
    EPIC_FRAME_RATE,
    EPIC_VIDEO_PATH,
    SEGMENT_COLUMNS,
    apply_video_path_template,
    epic_segments,
)
from avda.data_manifests.settings import DG_SETTINGS, MMSADA_PAIRS
from avda.data_manifests.sources import (
    Drops,
    SourceProblems,
    check_annotations_folder,
    drop_short_segments,
    locate,
    read_pickle_table,
)
from avda.errors import ManifestError

NAME = "epic55-mmsada"
PARTICIPANTS: dict[str, str] = {"D1": "P08", "D2": "P01", "D3": "P22"}
VERB_CLASSES: tuple[str, ...] = ("take", "put", "open", "close", "wash", "cut", "mix", "pour")
REQUIRED_COLUMNS = ("uid", *SEGMENT_COLUMNS, "narration", "verb", "verb_class")
SUBFOLDERS = ("epic55_mmsada_splits", "Annotations")


def split_files(annotations: Path, domains: Iterable[str]) -> dict[tuple[str, str], Path]:
    """``{domain}_{train,test}.pkl`` of each of ``domains``; where some are found and others
    not, one error naming the missing ones (the folder is right: a file is missing), not
    locate's 'pass --annotations the folder that holds ...', which names the folder that holds
    them."""
    domains = list(domains)
    found: dict[tuple[str, str], Path] = {}
    missing: list[ManifestError] = []
    for domain in domains:
        for split in ("train", "test"):
            try:
                found[domain, split] = locate(
                    annotations, [f"{domain}_{split}.pkl"], NAME, SUBFOLDERS
                )
            except ManifestError as error:
                missing.append(error)
    if missing and not found:
        raise missing[0]
    if missing:
        names = [f"{d}_{s}.pkl" for d in domains for s in ("train", "test")]
        lacking = [name for name in names if not any(p.name == name for p in found.values())]
        folders = sorted({str(path.parent) for path in found.values()})
        reads = (
            f"all six {', '.join(names)}"
            if len(domains) == len(PARTICIPANTS)
            else f"{', '.join(names)} (the setting's domains {', '.join(domains)})"
        )
        raise ManifestError(
            f"{NAME}: {', '.join(folders)} lacks {', '.join(lacking)}: the build reads {reads}; "
            "put the missing files beside the others (jonmun/MM-SADA_Domain_Adaptation_Splits)"
        )
    return found


@register(NAME)
def build(
    annotations: Path,
    *,
    fps: float = EPIC_FRAME_RATE,
    video_path_template: str = EPIC_VIDEO_PATH,
    domains: tuple[str, ...] | None = None,
) -> ManifestBuild:
    """Manifest of D1/D2/D3 train and test segments.

    ``fps``: the rate every video's frame numbers count at (60: P08, P01 and P22 were recorded
    at 59.94 fps, and their frame numbers count at 60, as all of EPIC-55's).
    ``video_path_template``: ``video_path`` of a row, formatted from its columns ("" = none).
    ``domains``: read only these domains' pickles (``avda manifest build --setting``: the
    setting's; benchmarks.SETTING_DOMAINS); all three where none is given or one is not D1, D2
    or D3 (the setting is then refused naming the benchmark's domains).
    """
    ours = bool(domains) and set(domains) <= set(PARTICIPANTS)
    read = [d for d in PARTICIPANTS if d in domains] if ours else list(PARTICIPANTS)
    check_annotations_folder(annotations, NAME, [f"{read[0]}_train.pkl"], SUBFOLDERS)
    paths = split_files(annotations, read)
    problems = SourceProblems(NAME)
    drops = Drops()
    frames: list[pd.DataFrame] = []
    sources: list[str] = []
    for domain in read:
        participant = PARTICIPANTS[domain]
        for split in ("train", "test"):
            path = paths[domain, split]
            sources.append(str(path))
            table = read_pickle_table(path, REQUIRED_COLUMNS, problems, label_column="uid")
            if table is None:
                continue
            other = table.frame["participant_id"].astype(str).str.strip() != participant
            problems.add_rows(
                table,
                other,
                "participant_id",
                lambda i, t=table, d=domain, p=participant: (
                    f"participant {t.frame['participant_id'].iloc[i]!r} in {d}, which is {p}"
                ),
            )
            frames.append(
                epic_segments(
                    table,
                    problems,
                    uid_column="uid",
                    domain=domain,
                    split=split,
                    fps=fps,
                    verb_classes=VERB_CLASSES,
                    verb_class_file="the MM-SADA class list",
                )
            )
    problems.raise_if_any()
    manifest = drop_short_segments(pd.concat(frames, ignore_index=True), drops, fps=fps)
    manifest = apply_video_path_template(manifest, video_path_template)
    return ManifestBuild(
        benchmark=NAME,
        manifest=manifest,
        classes={"verb_class": VERB_CLASSES},
        dropped=drops.as_dict(),
        domains={d: f"EPIC-55 kitchen {p} (MM-SADA {d})" for d, p in PARTICIPANTS.items()},
        settings={s.name: s for s in (*MMSADA_PAIRS, *DG_SETTINGS)},
        options={"fps": fps, "video_path_template": video_path_template},
        sources=tuple(sources),
    )
