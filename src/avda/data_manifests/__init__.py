"""Manifests: annotation files of each benchmark -> one validated table of action segments.

The benchmark modules imported here register their builders in ``BENCHMARKS``.
"""

from avda.data_manifests import (
    actorshift,
    charades_ego,
    epic55,
    epic55_mmsada,
    epic100,
    generic,
    ucf_hmdb,
)
from avda.data_manifests.benchmarks import (
    BENCHMARKS,
    ManifestBuild,
    build,
    build_manifest,
)
from avda.data_manifests.schema import (
    OPTIONAL_COLUMNS,
    REQUIRED_COLUMNS,
    SPLITS,
    Problem,
    find_problems,
    fingerprint,
    read,
    video_path,
    write,
)
from avda.data_manifests.settings import Setting, resolve_setting, select
from avda.data_manifests.stats import stats, stats_file

__all__ = [
    "BENCHMARKS",
    "ManifestBuild",
    "Setting",
    "actorshift",
    "build",
    "build_manifest",
    "charades_ego",
    "epic55",
    "epic55_mmsada",
    "epic100",
    "generic",
    "resolve_setting",
    "select",
    "stats",
    "stats_file",
    "ucf_hmdb",
    "OPTIONAL_COLUMNS",
    "REQUIRED_COLUMNS",
    "SPLITS",
    "Problem",
    "find_problems",
    "fingerprint",
    "read",
    "video_path",
    "write",
]
