"""Full EPIC-KITCHENS-55 train action labels, one domain per participant (kitchen).

Files (``epic-kitchens-55-annotations``): ``EPIC_train_action_labels.csv`` (28,472 segments,
columns ``uid, participant_id, video_id, narration, start_timestamp, stop_timestamp,
start_frame, stop_frame, verb, verb_class, noun, noun_class, all_nouns, all_noun_classes``),
``EPIC_video_info.csv`` (the camera's fps per video: 59.94, and 29.97/47.95/90 for nine videos;
the manifest's ``fps`` is 60 for all, the rate the frame numbers count at),
``EPIC_verb_classes.csv`` (125 verbs) and ``EPIC_noun_classes.csv`` (352 nouns).

Every row is split ``train`` (the released file is the training set; its test sets have no
public labels). The domain is the participant id; ``participants`` keeps only some kitchens
(the others are counted as dropped, reason ``participant not selected``).
"""

from __future__ import annotations

from pathlib import Path

from avda.data_manifests.benchmarks import ManifestBuild, register
from avda.data_manifests.epic100 import read_video_fps
from avda.data_manifests.epic_common import (
    EPIC_VIDEO_PATH,
    SEGMENT_COLUMNS,
    apply_video_path_template,
    epic_segments,
    usable_references,
)
from avda.data_manifests.settings import Setting
from avda.data_manifests.sources import (
    Drops,
    SourceProblems,
    check_annotations_folder,
    drop_short_segments,
    locate,
    read_class_names,
    read_csv_table,
)
from avda.errors import ConfigError, ManifestError
from avda.registry import unknown_name_message

NAME = "epic55"
NOT_SELECTED = "participant not selected"
REQUIRED_COLUMNS = (
    "uid",
    *SEGMENT_COLUMNS,
    "narration",
    "verb",
    "verb_class",
    "noun",
    "noun_class",
    "all_nouns",
    "all_noun_classes",
)
SUBFOLDERS = ("epic55",)


@register(NAME)
def build(
    annotations: Path,
    *,
    participants: tuple[str, ...] = (),
    video_path_template: str = EPIC_VIDEO_PATH,
) -> ManifestBuild:
    """Manifest of the EPIC-55 training segments with ``domain = participant_id``.

    ``participants``: kitchens to keep (e.g. ``P01,P08,P22``); empty keeps all 28.
    ``video_path_template``: ``video_path`` of a row, formatted from its columns ("" = none).
    """
    check_annotations_folder(annotations, NAME, ["EPIC_train_action_labels.csv"], SUBFOLDERS)
    problems = SourceProblems(NAME)
    drops = Drops()
    labels_path = locate(annotations, ["EPIC_train_action_labels.csv"], NAME, SUBFOLDERS)
    info_path = locate(annotations, ["EPIC_video_info.csv"], NAME, SUBFOLDERS)
    verb_path = locate(annotations, ["EPIC_verb_classes.csv"], NAME, SUBFOLDERS)
    noun_path = locate(annotations, ["EPIC_noun_classes.csv"], NAME, SUBFOLDERS)
    video_fps = read_video_fps(info_path, "video", problems)
    verb_classes = read_class_names(verb_path, "verb_id", "class_key", problems)
    noun_classes = read_class_names(noun_path, "noun_id", "class_key", problems)
    table = read_csv_table(labels_path, REQUIRED_COLUMNS, problems)
    if table is None:  # read_csv_table recorded why
        problems.raise_if_any()
        raise ManifestError(f"{NAME}: {labels_path} cannot be read")
    fps, verbs, nouns = usable_references(
        problems, video_fps, info_path.name, verb_classes, verb_path.name, noun_classes,
        noun_path.name,
    )  # fmt: skip
    manifest = epic_segments(
        table,
        problems,
        uid_column="uid",
        domain=table.frame["participant_id"].astype(str).str.strip(),
        split="train",
        fps=fps,
        video_info_name=info_path.name,
        verb_classes=verbs,
        verb_class_file=verb_path.name,
        noun_classes=nouns,
        noun_class_file=noun_path.name,
        keep_all_nouns=True,
    )
    problems.raise_if_any()  # the class and info files' with the rows'
    known = sorted(manifest["domain"].unique())
    if participants:
        unknown = [p for p in participants if p not in known]
        if unknown:
            raise ConfigError(
                "; ".join(unknown_name_message("participant", p, known) for p in unknown)
            )
        keep = manifest["domain"].isin(participants)
        drops.add(NOT_SELECTED, int((~keep).sum()))
        manifest = manifest[keep].reset_index(drop=True)
    manifest = drop_short_segments(manifest, drops, fps=manifest["fps"].to_numpy())
    manifest = apply_video_path_template(manifest, video_path_template)
    domains = sorted(manifest["domain"].unique())
    return ManifestBuild(
        benchmark=NAME,
        manifest=manifest,
        classes={"verb_class": verb_classes, "noun_class": noun_classes},
        dropped=drops.as_dict(),
        domains={d: f"EPIC-55 kitchen of participant {d}" for d in domains},
        settings=_pair_settings(domains),
        options={"participants": participants, "video_path_template": video_path_template},
        sources=(str(labels_path), str(info_path), str(verb_path), str(noun_path)),
    )


def _pair_settings(domains: list[str]) -> dict[str, Setting]:
    """Every ordered pair of the kept kitchens, when there are at most 8 of them."""
    if len(domains) > 8:
        return {}
    pairs = [Setting((s,), (t,)) for s in domains for t in domains if s != t]
    return {setting.name: setting for setting in pairs}
