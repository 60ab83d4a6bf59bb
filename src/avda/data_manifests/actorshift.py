"""ActorShift (Zhang et al., CVPR 2022): human actors -> animal actors.

The dataset is released on figshare only (project page of "Audio-Adaptive Activity Recognition
Across Video Domains"); no split files exist in any public repository or in avda's test
data. This builder is therefore the :mod:`generic <avda.data_manifests.generic>`
loader plus what the paper fixes:

* domains ``human`` (1,305 Kinetics-700 videos, source train) and ``animal`` (200 YouTube
  videos: 35 train, unlabelled in adaptation, and 165 test);
* 7 classes, in the paper's order: sleeping, watching tv, eating, drinking, swimming, running,
  opening a door (``class_names`` option to change it);
* top-1 accuracy on ``animal/test``.

The table needs the manifest columns, renamed with ``columns`` when the file names them
differently, e.g. ``columns=uid=clip,video_id=clip,domain=actor,split=subset,
start_sec=start,stop_sec=end,verb=label``. When the table has class names (``verb``) but no
ids, ids are the position of the name in ``class_names`` (case, spaces and ``_`` ignored).
Domain values other than ``human``/``animal`` must be renamed with ``domains=humans=human,...``.
"""

from __future__ import annotations

from pathlib import Path

from avda.data_manifests.benchmarks import ManifestBuild, register
from avda.data_manifests.generic import load_tables
from avda.data_manifests.settings import ACTORSHIFT
from avda.errors import ManifestError

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


def _key(name: object) -> str:
    return " ".join(str(name).replace("_", " ").lower().split())


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
    manifest, files = load_tables(
        annotations, NAME, columns=columns or {}, domains=domains or {}, splits=splits or {}
    )
    found = sorted(manifest["domain"].astype(str).unique())
    unexpected = [d for d in found if d not in DOMAINS]
    if unexpected:
        raise ManifestError(
            f"{NAME}: domain value(s) {', '.join(unexpected)} are neither human nor animal; "
            "rename them with the domains option, e.g. domains=humans=human,animals=animal"
        )
    if "verb_class" in manifest.columns:
        ids = manifest["verb_class"].dropna()
        if len(ids) and int(ids.max()) >= len(class_names):
            raise ManifestError(
                f"{NAME}: class id {int(ids.max())} is outside the {len(class_names)} classes "
                f"{', '.join(class_names)}; pass class_names with the dataset's class list"
            )
    elif "verb" in manifest.columns:
        lookup = {_key(name): index for index, name in enumerate(class_names)}
        keys = manifest["verb"].map(_key, na_action="ignore")
        keys = keys.mask(keys == "")  # an empty name is an unlabelled row
        unknown = sorted({k for k in keys.dropna() if k not in lookup})
        if unknown:
            raise ManifestError(
                f"{NAME}: class name(s) {', '.join(unknown)} are not in {', '.join(class_names)}; "
                "pass class_names with the dataset's class list"
            )
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
